package replication

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// This file holds the driver's side of the core: feeding it received
// messages and ticks, and carrying out what it produces (sending, applying,
// waking Propose calls, logging), on the goroutines listed in
// QuasarReplicator's documentation.

// receive handles one transport message. sender is the validator index of
// an authenticated sender, or -1 when the transport cannot tell.
func (r *QuasarReplicator) receive(sender int, payload []byte) error {
	if r.closed.Load() {
		return ErrClosed
	}
	m, err := readMessage(payload, r.cfg.MaxFrameBytes)
	if err == nil && m.left > recordChunk {
		// Check the whole message before acting on any record of it; the
		// records are then decoded again, a chunk at a time.
		err = checkMessage(payload, r.cfg.MaxFrameBytes)
	}
	rb := recordPool.Get().(*recordBuf)
	defer recordPool.Put(rb)
	for err == nil {
		var recs []record
		if recs, err = m.read(rb.recs[:0], recordChunk); err != nil {
			break // the first chunk is the whole message: nothing was done
		}
		// Hash the frames before taking mu: the IDs are the costliest part
		// of a block and need no shared state.
		rb.ids = prepareRecords(recs, rb.ids[:0])
		r.mu.Lock()
		r.c.step(mono(), sender, recs)
		r.settleLocked(nil)
		r.unlock()
		clear(recs)
		rb.recs = recs[:0]
		if !m.more() {
			return nil
		}
	}
	r.m.malformed.Add(1)
	r.log.Debug("dropped malformed message", "err", err)
	return err
}

// recordBuf is the scratch of one receive call: decoded records and the
// IDs of their frames.
type recordBuf struct {
	recs []record
	ids  [][idLen]byte
}

// recordPool's buffers start small and grow to recordChunk records as
// messages need: a message of one record costs one record.
var recordPool = sync.Pool{New: func() any { return &recordBuf{recs: make([]record, 0, 4)} }}

// settleLocked carries out what the core produced since it was last
// called: it wakes the decided Propose calls, hands the apply queue to a
// goroutine, keeps the log lines for unlock, and sends the outbox (or
// leaves it to sendLoop under load). self, if not nil, is the call of the
// goroutine settling, which applies its frame itself if it was queued. mu
// is held on entry and on return; it is released around each send.
func (r *QuasarReplicator) settleLocked(self *call) {
	r.absorbLocked(self)
	if r.flushing || (!r.c.out.pending() && !r.c.sealable()) {
		return
	}
	if r.c.undecided.n > inlineFlushMax || (r.wal != nil && r.walDone < r.walStrict) {
		// Under load, or when the messages must wait for a sync: sendLoop
		// sends (and syncs first).
		signal(r.sendKick)
		return
	}
	r.flushLocked()
}

// absorbLocked is settleLocked but for sending: it takes what the core
// produced, wakes the decided calls, hands the apply queue on and keeps
// the log lines.
func (r *QuasarReplicator) absorbLocked(self *call) {
	if r.wal != nil {
		// The batch's records join the log's next write. Nothing here waits
		// for it: messages wait in flushLocked, Propose outcomes in
		// decidedLocked, so a transport callback never waits for the disk.
		r.appendLocked()
	}
	rd := r.c.takeReady()
	for _, cl := range rd.decided {
		signal(cl.wake)
	}
	for _, b := range rd.barriers {
		signal(b.wake)
	}
	if !r.applyOpen && r.c.backlogged() {
		// Nobody subscribed, and the queue reached MaxApplyBacklog: a
		// validator without handlers of its own must not stop taking in
		// frames.
		r.logs = append(r.logs, logEvent{slog.LevelWarn, "no handler subscribed and the apply backlog is full: applying frames to no handler", nil})
		r.openApplyLocked()
	}
	for _, dr := range rd.reads {
		select {
		case r.diskReads <- dr:
		default:
			r.m.diskReadsDropped.Add(1) // the requester asks again
		}
	}
	if !r.applying && r.c.applyBusy() {
		woke := false
		for _, cl := range rd.wake {
			switch {
			case cl == self:
				woke = true
			case cl.wake != nil && !cl.decided:
				signal(cl.wake) // its proposer applies it (and what is queued before it)
				woke = true
			}
		}
		if rd.kick || !woke {
			r.kickApply()
		}
	}
	if len(rd.logs) > 0 {
		r.logs = append(r.logs, rd.logs...)
	}
	r.absorbAttestLocked()
}

// unlock releases mu, then writes the log lines the core produced: a
// Logger is never called with mu held.
func (r *QuasarReplicator) unlock() {
	logs := r.logs
	r.logs = nil
	r.mu.Unlock()
	for _, l := range logs {
		r.log.Log(context.Background(), l.level, l.msg, l.args...)
	}
}

// signal wakes whoever waits on ch (cap 1), without blocking. A nil ch is
// ignored.
func signal(ch chan struct{}) {
	if ch == nil {
		return
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// flushLocked sends every message in the outbox, in order, unless another
// goroutine is sending them; mu is held on entry and exit and released
// around each send.
func (r *QuasarReplicator) flushLocked() {
	if r.flushing {
		return
	}
	r.flushing = true
	for {
		if r.c.sealable() {
			// The frames proposed since the last block was sent (while it
			// was being sent, under load) leave as one block.
			r.c.seal(mono())
			r.absorbLocked(nil)
		}
		if r.wal != nil && r.persistLocked() != nil {
			r.c.out.discard() // the durable state these depend on is not on disk
			break
		}
		msg, ok := r.c.out.pop()
		if !ok {
			break
		}
		r.mu.Unlock()
		var err error
		if msg.to < 0 {
			err = r.tr.Broadcast(context.Background(), quasarKind, msg.b)
		} else {
			err = r.uni.SendTo(context.Background(), r.cfg.Validators[msg.to], quasarKind, msg.b)
		}
		if err != nil {
			r.m.sendErrors.Add(1)
			r.log.Debug("send failed", "err", err)
		}
		r.m.messagesSent.Add(1)
		r.mu.Lock()
		r.c.out.recycle(msg.b) // the transport copied it (Transport contract)
	}
	r.flushing = false
}

func (r *QuasarReplicator) sendLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.closing:
			return
		case <-r.sendKick:
			runtime.Gosched() // let the goroutines that kicked us add to the batch
			r.mu.Lock()
			r.flushLocked()
			r.unlock()
		}
	}
}

func (r *QuasarReplicator) kickApply() { signal(r.kick) }

func (r *QuasarReplicator) applyLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.closing:
			return
		case <-r.kick:
			r.drainApply()
		}
	}
}

// drainApply applies queued frames until the queue is empty, unless another
// goroutine is already doing so.
func (r *QuasarReplicator) drainApply() {
	r.mu.Lock()
	r.applyLocked(nil)
	r.unlock()
}

// applyLocked applies queued frames and calls OnBehind for behind notices,
// in the core's order, with mu held (released around every handler and
// OnBehind): all of them, or, for a Propose caller (mine not nil), those
// up to its own frame. A Propose caller leaves the rest to applyLoop, so
// that it is not held past its frame by frames that keep arriving.
func (r *QuasarReplicator) applyLocked(mine *call) {
	if r.applying || !r.applyOpen {
		return
	}
	r.applying = true
	var (
		user    bool   // a handler or OnBehind runs: mu is not held
		running *entry // the frame whose handlers run
	)
	defer func() {
		if !user {
			return // a normal return (or a panic with mu held, which nothing can mend)
		}
		// A handler or OnBehind panicked: the panic goes on up this
		// goroutine (a Propose caller's, or applyLoop's, which ends the
		// program). The frame counts as applied with an error, and
		// applying resumes on applyLoop.
		r.mu.Lock()
		if running != nil {
			r.m.applyErrors.Add(1)
			r.c.applied(running, fmt.Errorf("%w: a handler panicked", ErrApply))
		}
		r.applying = false
		r.applyIdle.Broadcast()
		r.settleLocked(nil)
		r.unlock()
		r.kickApply()
	}()
	for !r.closed.Load() && (mine == nil || !mine.decided) {
		e, behind := r.c.popApply()
		switch {
		case behind != nil:
			r.mu.Unlock()
			user = true
			r.onBehind(behind)
			user = false
			r.mu.Lock()
		case e != nil:
			r.mu.Unlock()
			user, running = true, e
			err := r.apply(e)
			user, running = false, nil
			r.mu.Lock()
			r.c.applied(e, err)
			r.settleLocked(nil)
		default:
			r.applying = false
			r.applyIdle.Broadcast()
			return
		}
	}
	r.applying = false
	r.applyIdle.Broadcast()
	if mine != nil && r.c.applyBusy() {
		r.kickApply()
	}
}

// onBehind reports that this node fell behind the retention window.
func (r *QuasarReplicator) onBehind(err error) {
	r.log.Warn("fell behind the retention window", "err", err)
	if r.cfg.OnBehind != nil {
		r.cfg.OnBehind(err)
	}
}

// apply runs every handler for e's frame, stopping at the first error.
func (r *QuasarReplicator) apply(e *entry) error {
	hs := r.handlers.Load()
	if hs == nil {
		return nil
	}
	if obs := r.cfg.Observer; obs != nil {
		start := time.Now()
		defer func() { obs.ObserveApply(time.Since(start)) }()
	}
	for _, h := range *hs {
		if err := h(r.applyCtx, e.p.frame); err != nil {
			r.m.applyErrors.Add(1)
			r.log.Error("handler failed to apply accepted frame",
				"org", e.p.frame.OrgID, "ns", e.p.frame.Namespace, "seq", e.p.frame.Seq, "err", err)
			return err
		}
	}
	return nil
}

func (r *QuasarReplicator) tickLoop() {
	defer r.wg.Done()
	period := max(r.cfg.WitnessAfter/2, time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-r.closing:
			return
		case <-t.C:
			r.mu.Lock()
			r.c.tick(mono())
			r.settleLocked(nil)
			r.durableTick()
			r.unlock()
		}
	}
}
