package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/luxfi/consensus"
)

// QuasarReplicator drives consensus.NewPQ with WAL frames as block payloads.
// On a single-node validator set the engine accepts every frame after a
// self-vote; with more validators, proposals and votes travel over the
// Transport and a frame is accepted once commit votes from a quorum of
// distinct validators were recorded in the engine.
//
// It is safe for concurrent use by multiple goroutines.
//
// # Protocol
//
// Frames of one namespace (OrgID, Namespace) form a chain: a proposal names
// the Seq of the accepted frame it extends (prev). A validator casts a commit
// vote for at most one frame on top of each chain position, and only when it
// has accepted that position itself; any other frame for the position, or a
// frame whose Seq does not exceed the position, gets a cancel vote. A frame is
// accepted with q commit votes and rejected once more than n-q validators
// cancelled it, so no frame is both (S1), and two frames can never both be
// accepted at one position or with one Seq (S4). Every node applies a
// namespace's frames in chain order and a proposer's frames after the frames
// of its earlier, already returned, Propose calls (S5), so replicas that apply
// the same frames end in the same state.
//
// Repair: a proposer re-broadcasts its undecided proposals every
// WitnessAfter until ProposeWait; a validator re-sends its vote when it sees
// a proposal again; a node that holds an undecided frame after WitnessAfter,
// or sees votes for a frame it lacks, asks for it (fetch) and is answered
// with the frame or its certificate (the frame with its q commit voters). A
// node also advertises its namespace heads every AntiEntropyInterval; a peer
// that is behind asks for the missing frames (sync) and gets their
// certificates, or is told that they fell out of the retention window.
//
// Back-pressure: a node whose handlers fall behind cannot slow a quorum of
// other validators down, so it bounds what it queues for them instead
// (MaxApplyBacklog): from the bound until its handlers have worked the
// queue down to half of it, it drops proposals and certificates of frames
// it does not hold yet, without voting, and asks for nothing, as a
// partitioned node would miss them; then it catches up through sync.
//
// # Threads
//
//   - applyLoop: woken by kick, applies queued accepted frames one at a
//     time (handlers run without mu held). A Propose caller applies inline
//     when nobody else is applying (the applying flag, under mu), so a single
//     node decides and applies without a goroutine hand-off.
//   - tickLoop: every WitnessAfter/2, re-sends, asks for undecided frames,
//     forgets frames past the retention window, and sends digests.
//   - sendLoop: woken by sendKick under load (more than a couple of frames
//     undecided), sends the outbox; with little load the goroutine that
//     added a record sends it itself, saving a hand-off.
//   - Transport callbacks decode outside mu, then take mu to update state;
//     they never wait for consensus or run handlers, and never block on
//     anything but mu. A Propose caller whose frame is ready is woken and
//     applies the queue itself.
//
// mu guards all protocol state (entries, namespaces, chain index, queues,
// outbox, the engine epochs: everything in state); counters are atomics;
// handlers are a copy-on-write slice. Outgoing records are batched in the
// outbox and sent by whichever goroutine finds it unsent (the flushing flag,
// under mu, which is released around each Broadcast), so many votes share
// one transport message under load. Close sets closed, cancels the handler
// context, closes closing and waits for the three loops; Propose calls
// waiting on closing return ErrClosed.
type QuasarReplicator struct {
	cfg      QuasarConfig
	log      *slog.Logger
	tr       Transport
	n, q     int
	self     int
	ids      []nodeID
	byNodeID map[nodeID]int
	byName   map[string]int
	maxFrame int

	handlers atomic.Pointer[[]Handler]
	m        metrics

	closed    atomic.Bool
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	cancel    context.CancelFunc
	applyCtx  context.Context // handlers' ctx: cancelled by Close, marks re-entrant Propose
	kick      chan struct{}   // cap 1: wakes applyLoop
	sendKick  chan struct{}   // cap 1: wakes sendLoop

	mu        sync.Mutex
	applyIdle sync.Cond // on mu: signalled when st.applying turns false
	st        state     // guarded by mu
}

// applyMarker is the key of the value that marks a handler's context.
type applyMarker struct{}

var (
	_ Replicator = (*QuasarReplicator)(nil)
)

// NewQuasar wires consensus.NewPQ to the supplied transport and starts the engine.
// Returns once the genesis block is in place.
//
// It validates cfg (see QuasarConfig.Validate) and starts nothing when it
// is invalid. ctx bounds the start only; use Close to stop the replicator.
func NewQuasar(ctx context.Context, cfg QuasarConfig) (*QuasarReplicator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("replication: new quasar: %w", err)
	}
	r := &QuasarReplicator{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.NodeID),
		tr:       cfg.Transport,
		n:        len(cfg.Validators),
		q:        cfg.Quorum,
		maxFrame: cfg.MaxFrameBytes,
		byNodeID: make(map[nodeID]int, len(cfg.Validators)),
		byName:   make(map[string]int, len(cfg.Validators)),
		closing:  make(chan struct{}),
		kick:     make(chan struct{}, 1),
		sendKick: make(chan struct{}, 1),
	}
	r.applyIdle.L = &r.mu
	for i, v := range cfg.Validators {
		id := validatorNodeID(v)
		if _, dup := r.byNodeID[id]; dup {
			return nil, fmt.Errorf("%w: validators %q collide in NodeID", ErrInvalidConfig, v)
		}
		r.ids = append(r.ids, id)
		r.byNodeID[id] = i
		r.byName[v] = i
		if v == cfg.NodeID {
			r.self = i
		}
	}
	r.st.init(r)
	if err := r.st.newEpoch(ctx); err != nil {
		return nil, fmt.Errorf("replication: start consensus engine: %w", err)
	}
	life, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.applyCtx = context.WithValue(life, applyMarker{}, r)

	if sa, ok := cfg.Transport.(SenderAware); ok {
		sa.OnReceiveFrom(quasarKind, func(from string, payload []byte) error {
			sender, known := r.byName[from]
			if !known {
				r.m.unknownSender.Add(1)
				return fmt.Errorf("%w: message from non-validator %q", ErrMalformed, from)
			}
			return r.receive(sender, payload)
		})
	} else {
		cfg.Transport.OnReceive(quasarKind, func(payload []byte) error {
			return r.receive(-1, payload)
		})
	}
	r.wg.Add(3)
	go r.applyLoop()
	go r.tickLoop()
	go r.sendLoop()
	return r, nil
}

// validatorNodeID is a validator's 20-byte consensus NodeID: the first 20
// bytes of SHA-256 of its string ID.
func validatorNodeID(v string) (id nodeID) {
	sum := sha256.Sum256([]byte(v))
	copy(id[:], sum[:nodeIDLen])
	return id
}

// Subscribe registers an applier; called both for self-proposed frames (after engine accept) and for frames received from peers.
//
// Handlers run one at a time on the applying goroutine, in the order frames
// are accepted (chain order within a namespace, proposer order across). A
// nil handler is ignored. A handler that panics: the panic propagates on
// the goroutine that ran it (a Propose caller, or the driver's apply
// goroutine, which ends the program), the frame counts as applied with an
// error wrapping ErrApply, and the replicator stays usable. Subscribe is safe to call concurrently with
// Propose; a handler added while frames are being applied sees the frames
// applied after it was added.
func (r *QuasarReplicator) Subscribe(h Handler) {
	if h == nil {
		return
	}
	for {
		old := r.handlers.Load()
		var hs []Handler
		if old != nil {
			hs = append(hs, *old...)
		}
		hs = append(hs, h)
		if r.handlers.CompareAndSwap(old, &hs) {
			return
		}
	}
}

// Stats returns counters used by /v1/tasks/cluster: the decisions of this
// node's own Propose calls.
func (r *QuasarReplicator) Stats() (accepted, rejected, timeouts uint64) {
	return r.m.accepted.Load(), r.m.rejected.Load(), r.m.timeouts.Load()
}

// Close stops the engine.
//
// It stops the replicator's goroutines and fails every in-flight Propose
// with ErrClosed (DecisionUndecided); it does not close the Transport. A
// handler already running (on the apply goroutine, or on a proposer's
// goroutine) finishes; no other starts, and Close returns once none runs.
// Close is idempotent and safe for concurrent use: every call waits until
// shutdown is complete and returns nil. It must not be called from a
// handler or from OnBehind, since it waits for them to return.
func (r *QuasarReplicator) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		r.cancel()
		close(r.closing)
	})
	r.wg.Wait()
	r.mu.Lock()
	for r.st.applying {
		r.applyIdle.Wait()
	}
	r.mu.Unlock()
	return nil
}

// Propose builds a Block whose payload is the JSON-encoded frame, adds it to the engine,
// broadcasts it to peers, and waits for the engine to mark it accepted.
// Self-vote happens immediately so single-node configurations terminate
// without external traffic.
//
// The outcomes are those of the package documentation. Proposals of one node
// in one namespace are proposed one after the other (each extends the chain
// the previous one decided), so concurrent Propose calls into one namespace
// queue up locally rather than reject each other; proposals into different
// namespaces proceed in parallel. A frame with an explicit Seq that does not
// exceed the namespace's latest accepted Seq is rejected at once (the slot is
// taken), and so is a frame whose OrgID, Namespace, Op or Key is not valid
// UTF-8 (its block ID, a hash of its JSON, where invalid bytes become
// U+FFFD, would not tell it from others). A frame identical to one this
// node proposed earlier that is still undecided (a retry after a timeout)
// waits for that proposal, unless another Propose of this node returned
// Accept since it was made: that proposal is not ordered after it (S5), so
// the call returns DecisionTimeout at once; the earlier proposal may still
// be accepted.
//
// A handler that calls Propose on its own replicator must pass the context it
// received: such a call returns DecisionAccept as soon as the frame is
// accepted, and the frame is applied after the handler that proposed it
// returns (waiting for its apply would deadlock the apply goroutine).
func (r *QuasarReplicator) Propose(ctx context.Context, f Frame) (Decision, error) {
	if r.closed.Load() {
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return r.failed(err)
	}
	if err := f.checkSize(int64(r.maxFrame)); err != nil {
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", err)
	}
	if !f.validUTF8() {
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w: OrgID, Namespace, Op and Key must be valid UTF-8", ErrRejected)
	}
	reentrant := ctx.Value(applyMarker{}) == r
	// The timer covers ProposeWait only: a ctx deadline fires ctx.Done(),
	// so that the error names ctx.Err() (SPEC §3).
	deadline := time.Now().Add(r.cfg.ProposeWait)
	if len(f.Value) > 0 {
		f.Value = append([]byte(nil), f.Value...) // the caller may reuse its buffer
	}

	r.mu.Lock()
	w, err := r.st.propose(&f, reentrant, false)
	if err == errBusy {
		// Another Propose of this node is in flight in this namespace:
		// wait for its decision, then propose on top of it.
		turn := r.st.queueTurn(spaceKey{f.OrgID, f.Namespace})
		r.mu.Unlock()
		if d, err := r.waitTurn(ctx, turn, deadline); err != nil {
			return d, err
		}
		r.mu.Lock()
		w, err = r.st.propose(&f, reentrant, true)
	}
	if err == errUnordered {
		r.mu.Unlock()
		r.m.timeouts.Add(1)
		return DecisionTimeout, fmt.Errorf("quasar propose: %w: an identical frame %s/%s seq %d proposed earlier is still undecided "+
			"(it may yet be accepted), and waiting for it would not order it after this node's proposals that returned since",
			ErrTimeout, f.OrgID, f.Namespace, f.Seq)
	}
	if err != nil {
		r.mu.Unlock()
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", err)
	}
	// One critical section sends, applies (a single node decides at once)
	// and checks the outcome: under load every extra lock hand-off counts.
	r.sendLocked()
	if !reentrant {
		r.applyLocked(w)
	}
	if w.resolved {
		r.mu.Unlock()
		return r.result(w)
	}
	w.wake = make(chan struct{}, 1)
	r.mu.Unlock()
	if reentrant {
		r.kickApply()
	}
	return r.wait(ctx, w, deadline)
}

// waitTurn waits until the namespace is free for this proposal.
func (r *QuasarReplicator) waitTurn(ctx context.Context, t *turn, deadline time.Time) (Decision, error) {
	timer := getTimer(time.Until(deadline))
	defer putTimer(timer)
	cause := r.await(ctx, t.ch, timer)
	if cause == nil {
		return DecisionUndecided, nil
	}
	r.mu.Lock()
	r.st.abandonTurn(t)
	r.mu.Unlock()
	return r.failed(cause)
}

// await waits for a signal on ch and returns nil, or returns why the wait
// for it ended first: ErrClosed, ctx's error, or timeoutCause when the
// ProposeWait timer fired.
func (r *QuasarReplicator) await(ctx context.Context, ch <-chan struct{}, timer *time.Timer) error {
	select {
	case <-ch:
		return nil
	case <-r.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return timeoutCause(ctx)
	}
}

func (r *QuasarReplicator) failed(cause error) (Decision, error) {
	switch {
	case cause == ErrClosed:
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", ErrClosed)
	case cause == errProposeWait:
		r.m.timeouts.Add(1)
		return DecisionTimeout, fmt.Errorf("quasar propose: %w: not decided within %s", ErrTimeout, r.cfg.ProposeWait)
	default:
		r.m.timeouts.Add(1)
		return DecisionTimeout, fmt.Errorf("quasar propose: %w: %w", ErrTimeout, cause)
	}
}

// wait blocks until w is resolved, the deadline passes, ctx is done or the
// replicator closes. The waiter is woken when its frame is ready to apply
// (it then applies the queue itself, saving a hand-off to applyLoop) and
// when it is resolved.
//
// The caller made w.wake, under mu, after checking that w was not resolved.
func (r *QuasarReplicator) wait(ctx context.Context, w *waiter, deadline time.Time) (Decision, error) {
	timer := getTimer(time.Until(deadline))
	defer putTimer(timer)
	var cause error
	for {
		if cause = r.await(ctx, w.wake, timer); cause != nil {
			break
		}
		r.mu.Lock()
		if !w.reentrant {
			r.applyLocked(w)
		}
		resolved := w.resolved
		r.mu.Unlock()
		if resolved {
			return r.result(w)
		}
	}
	r.mu.Lock()
	if w.resolved { // decided while we were giving up: report it
		r.mu.Unlock()
		return r.result(w)
	}
	r.st.abandon(w)
	r.mu.Unlock()
	r.kickApply() // the frame may sit in the apply queue, counting on us
	return r.failed(cause)
}

// result reports a resolved waiter; w is no longer written once resolved.
func (r *QuasarReplicator) result(w *waiter) (Decision, error) {
	switch w.decision {
	case DecisionAccept:
		r.m.accepted.Add(1)
		if w.err != nil {
			return DecisionAccept, fmt.Errorf("quasar propose: %w: %w", ErrApply, w.err)
		}
		return DecisionAccept, nil
	case DecisionReject:
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", w.err)
	default:
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", ErrClosed)
	}
}

var errProposeWait = errors.New("ProposeWait elapsed")

// timeoutCause is why the ProposeWait timer fired: ctx, if it ended at the
// same moment (errors.Is(err, ctx.Err()) must then hold), else ProposeWait.
func timeoutCause(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return errProposeWait
}

// timerPool recycles the timers of waiting Propose calls. Since Go 1.23 a
// stopped or reset timer never delivers a stale tick, so reuse is safe.
var timerPool sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timerPool.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timerPool.Put(t)
}

// receive handles one transport message. sender is the validator index of
// an authenticated sender, or -1 when the transport cannot tell.
func (r *QuasarReplicator) receive(sender int, payload []byte) error {
	if r.closed.Load() {
		return ErrClosed
	}
	m, err := readMessage(payload, r.maxFrame)
	if err == nil && m.left > recordChunk {
		// Check the whole message before acting on any record of it; the
		// records are then decoded again, a chunk at a time.
		err = checkMessage(payload, r.maxFrame)
	}
	rb := recordPool.Get().(*[]record)
	defer recordPool.Put(rb)
	for err == nil {
		var recs []record
		if recs, err = m.read((*rb)[:0], recordChunk); err != nil {
			break // the first chunk is the whole message: nothing was done
		}
		r.handleChunk(sender, recs)
		clear(recs)
		*rb = recs[:0]
		if !m.more() {
			return nil
		}
	}
	r.m.malformed.Add(1)
	r.log.Debug("dropped malformed message", "err", err)
	return err
}

// handleChunk acts on decoded records of one message.
func (r *QuasarReplicator) handleChunk(sender int, recs []record) {
	// Hash the frames before taking mu: the block ID is the costliest part
	// of a proposal and needs no shared state.
	for i := range recs {
		if rec := &recs[i]; rec.typ == recProposal || rec.typ == recCertificate {
			rec.id, rec.payload = rec.prop.frame.block()
		}
	}
	r.mu.Lock()
	for i := range recs {
		r.st.handle(&recs[i], sender)
	}
	kick := r.st.takeKick()
	r.sendLocked()
	r.mu.Unlock()
	if kick {
		r.kickApply()
	}
}

var recordPool = sync.Pool{New: func() any { s := make([]record, 0, recordChunk); return &s }}

// flush sends the outbox unless another goroutine is already sending it.
// Under load (more than inlineFlushMax frames undecided) it leaves the work
// to sendLoop instead: by the time that goroutine runs, more records have
// joined the message, so one transport message carries many of them.
func (r *QuasarReplicator) flush() {
	r.mu.Lock()
	r.sendLocked()
	r.mu.Unlock()
}

// sendLocked is flush with mu held (released around each Broadcast).
func (r *QuasarReplicator) sendLocked() {
	o := &r.st.out
	if o.flushing || (o.count == 0 && len(o.full) == 0) {
		return
	}
	if r.st.undecided.n > inlineFlushMax {
		select {
		case r.sendKick <- struct{}{}:
		default:
		}
		return
	}
	r.flushLocked()
}

// flushLocked sends every queued message; mu is held on entry and exit and
// released around each Broadcast.
func (r *QuasarReplicator) flushLocked() {
	o := &r.st.out
	if o.flushing {
		return
	}
	o.flushing = true
	for {
		var msg []byte
		if len(o.full) > 0 {
			msg = o.full[0]
			o.full = o.full[1:]
		} else if o.count > 0 {
			msg = finishMessage(o.buf, o.count)
			o.buf, o.count = o.spare, 0
			o.spare = nil
		} else {
			break
		}
		r.mu.Unlock()
		if err := r.tr.Broadcast(context.Background(), quasarKind, msg); err != nil {
			r.m.sendErrors.Add(1)
			r.log.Debug("broadcast failed", "err", err)
		}
		r.m.messagesSent.Add(1)
		r.mu.Lock()
		if cap(msg) <= maxBatchBytes*2 {
			o.spare = msg[:0] // Broadcast copied it (Transport contract)
		}
	}
	o.flushing = false
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
			r.mu.Unlock()
		}
	}
}

func (r *QuasarReplicator) kickApply() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

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
	r.mu.Unlock()
}

// applyLocked applies queued frames with mu held (released around handlers
// and OnBehind): all of them, or, for a proposer (mine not nil), those up
// to its own frame. A proposer leaves the rest to applyLoop, so that its
// Propose is not held past its frame by frames that keep arriving.
func (r *QuasarReplicator) applyLocked(mine *waiter) {
	if r.st.applying {
		return
	}
	r.st.applying = true
	var running *entry // the frame whose handlers run (mu not held)
	defer func() {
		if running == nil {
			return
		}
		// A handler panicked: the panic goes on up this goroutine (a
		// Propose caller's, or applyLoop's, which ends the program). The
		// frame counts as applied with an error, and applying resumes.
		r.m.applyErrors.Add(1)
		r.mu.Lock()
		r.st.applied(running, fmt.Errorf("%w: a handler panicked", ErrApply))
		r.st.applying = false
		r.applyIdle.Broadcast()
		r.mu.Unlock()
		r.kickApply()
	}()
	for !r.closed.Load() && (mine == nil || !mine.resolved) {
		if len(r.st.behindEvents) > 0 {
			evs := r.st.behindEvents
			r.st.behindEvents = nil
			r.mu.Unlock()
			for _, err := range evs {
				r.log.Warn("fell behind the retention window", "err", err)
				if r.cfg.OnBehind != nil {
					r.cfg.OnBehind(err)
				}
			}
			r.mu.Lock()
			continue
		}
		e := r.st.popApply()
		if e == nil {
			break
		}
		var err error
		if e.skip {
			r.m.skipped.Add(1) // covered by a restored snapshot
		} else {
			r.mu.Unlock()
			running = e
			err = r.apply(e)
			running = nil
			r.mu.Lock()
		}
		r.st.applied(e, err)
	}
	r.st.applying = false
	r.applyIdle.Broadcast()
	if mine != nil && (r.st.applyHead < len(r.st.applyQ) || len(r.st.behindEvents) > 0) {
		r.kickApply()
	}
}

// apply runs every handler for e's frame, stopping at the first error.
func (r *QuasarReplicator) apply(e *entry) error {
	hs := r.handlers.Load()
	if hs == nil {
		return nil
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
	period := r.cfg.WitnessAfter / 2
	if period < time.Millisecond {
		period = time.Millisecond
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-r.closing:
			return
		case now := <-t.C:
			r.mu.Lock()
			r.st.tick(now)
			r.sendLocked()
			r.mu.Unlock()
			r.kickApply()
		}
	}
}

// ResetNamespace tells the replicator that the application restored the
// namespace (OrgID, Namespace) from a snapshot taken at Seq seq (the Seq of
// the last frame the snapshot contains). Frames of the namespace up to seq
// are considered applied (queued ones are skipped), replication continues
// after it, and the namespace's behind state is cleared. Use it after
// OnBehind.
//
// If replication had already gone past seq here, the frames after seq that
// were applied are applied again (in order, before anything else), so that
// the restored state catches up; if some of them are no longer retained,
// OnBehind is called again and a newer snapshot is needed.
//
// Proposer order across namespaces (S5) cannot be vouched for across a
// restore: frames that their proposer ordered after frames the snapshot
// contains may be applied before frames of other namespaces that came
// earlier still. Restore snapshots of every namespace taken at one moment
// to keep it.
func (r *QuasarReplicator) ResetNamespace(org, ns string, seq uint64) {
	r.mu.Lock()
	r.st.resetNamespace(spaceKey{org, ns}, seq)
	r.mu.Unlock()
	r.flush()
	r.kickApply()
}

// Metrics returns a snapshot of the replicator's counters and gauges, for a
// /cluster diagnostics endpoint.
func (r *QuasarReplicator) Metrics() QuasarMetrics {
	m := r.m.snapshot()
	r.mu.Lock()
	m.Pending = r.st.undecided.n
	m.PendingApply = r.st.pendingApply()
	m.PendingApplyBytes = r.st.applyLen
	m.Retained = r.st.retained.n
	m.Namespaces = len(r.st.spaces)
	r.mu.Unlock()
	m.Validators, m.Quorum = r.n, r.q
	return m
}

// newEngine is consensus.NewPQ with Alpha = q: the engine accepts a block
// once q votes were recorded, and the driver records only checked commit
// votes, one per validator.
func (r *QuasarReplicator) newEngine(ctx context.Context) (consensus.Engine, error) {
	cfg := consensus.DefaultConfig()
	cfg.Alpha = r.q
	cfg.K = r.n
	cfg.MaxMessageSize = r.maxFrame
	eng := consensus.NewPQ(cfg)
	if err := eng.Start(ctx); err != nil {
		return nil, err
	}
	return eng, nil
}
