package replication

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// memoryQueueLimit is the default bound of a receiver's queue: the number of
// messages waiting for its delivery goroutine to pick them up. The goroutine
// takes them in batches, so a receiver holds at most twice this many
// messages at any time. A message that finds the queue full is dropped and
// counted in MemoryHubStats.Overflow; the protocol repairs the loss like any
// other drop.
const memoryQueueLimit = 1 << 16

// memoryIdle is how long a receiver's delivery goroutine waits for more
// messages before it ends (between one and two of them): long enough that
// a busy hub does not start one per message, short enough that an idle hub
// soon runs none.
const memoryIdle = 50 * time.Millisecond

// MemoryHub coordinates a set of MemoryTransport peers: it routes every
// Broadcast to the other connected nodes and injects faults (partitions,
// disconnects, drops, duplicates, delays) for tests.
//
// Each connected node has a delivery goroutine and a bounded queue of
// 65536 messages (1<<16), so a slow receiver never blocks a sender or the
// other receivers. A message that finds its receiver's queue full is dropped
// and counted in MemoryHubStats.Overflow: a full queue means a handler is
// stuck or far behind, and the protocol repairs lost messages anyway. The
// delivery goroutine takes the queue in batches, so one receiver holds at
// most twice the bound.
//
// A MemoryHub is safe for concurrent use by multiple goroutines. It runs a
// goroutine only while it has messages to deliver (one per receiver with
// messages queued, which ends once the receiver has been idle for
// memoryIdle, and one per delayed message): a hub nobody sends through
// holds none, so a hub you simply drop leaks nothing. Close stops them at
// once and discards what is still queued.
type MemoryHub struct {
	// mu guards the fields below up to topo. It is never held while a
	// handler runs. Lock order: mu, then rngMu; mu, then tmu.
	mu      sync.Mutex
	byID    map[string]*MemoryTransport
	byIndex []*MemoryTransport // by MemoryTransport.idx
	sorted  []*MemoryTransport // by id
	group   []int              // by idx; see memTopology.group
	down    []bool             // by idx: disconnected
	split   bool               // a Partition is in force
	faults  MemoryFaults
	err     error // last fault-setting error, for Err
	closed  bool

	// topo is the current topology, replaced (never modified) under mu
	// whenever a node connects or a fault setting changes, so the hot path
	// reads it without locking.
	topo atomic.Pointer[memTopology]

	// rngMu guards rng, which draws every fault decision.
	rngMu sync.Mutex
	rng   *rand.Rand

	// tmu guards timers and stopped, and orders every h.wg.Add before
	// Close's h.wg.Wait.
	tmu     sync.Mutex
	timers  map[*time.Timer]struct{}
	stopped bool // Close began: no goroutine or timer starts any more

	logger     atomic.Pointer[slog.Logger]
	onDeliver  atomic.Pointer[func(from, to, kind string, payload []byte)]
	queueLimit int // memoryQueueLimit; tests of this package lower it

	closing   atomic.Bool   // set by Close; read by enqueue and run
	done      chan struct{} // closed by Close; wakes every idle run goroutine
	closeOnce sync.Once
	wg        sync.WaitGroup // run goroutines and pending delay timers

	stats struct {
		sent, delivered, dropped, lost, duplicated, overflow, unhandled, handlerErrors atomic.Uint64
	}
}

// MemoryHubStats counts what happened to the messages of a MemoryHub. A
// message is one payload from one sender to one receiver, so a Broadcast
// to three peers counts as three. Once nothing is in flight,
//
//	Sent + Duplicated == Delivered + Dropped + Lost + Overflow + Unhandled
//
// except for the messages still queued or delayed when the hub was closed,
// which are discarded without being counted.
type MemoryHubStats struct {
	Sent          uint64 // messages Broadcast attempted, one per receiver
	Delivered     uint64 // messages handed to a handler (whatever it returned)
	Dropped       uint64 // dropped by MemoryFaults.DropRate
	Lost          uint64 // lost to a partition or a disconnect, at send or at delivery
	Duplicated    uint64 // extra copies made by MemoryFaults.DuplicateRate
	Overflow      uint64 // dropped because the receiver's queue was full
	Unhandled     uint64 // reached a receiver with no handler for the kind
	HandlerErrors uint64 // delivered messages whose handler returned an error
}

// NewMemoryHub returns a hub for in-process replicator tests. It is a
// perfect network until you call SetFaults, Partition or Disconnect, and it
// logs nothing until you call SetLogger.
func NewMemoryHub() *MemoryHub {
	h := &MemoryHub{
		byID:       make(map[string]*MemoryTransport),
		rng:        newFaultRand(0),
		timers:     make(map[*time.Timer]struct{}),
		queueLimit: memoryQueueLimit,
		done:       make(chan struct{}),
	}
	h.logger.Store(slog.New(slog.DiscardHandler))
	h.topo.Store(&memTopology{})
	return h
}

// SetLogger sets the hub's logger. Configuration mistakes (see Err) are
// logged at Error level; handler errors, unhandled kinds and queue
// overflows at Debug level. A nil logger discards everything, which is the
// default.
func (h *MemoryHub) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	h.logger.Store(l)
}

// OnDeliver installs fn, called on the receiver's delivery goroutine just
// before each message is handed to the receiver's handler (after every
// fault and partition check, so exactly for the messages the handler gets).
// Tests use it to observe traffic, such as the votes each node actually
// received. fn must not modify payload and must return promptly; it runs
// for every receiver, possibly concurrently. A nil fn removes the hook.
func (h *MemoryHub) OnDeliver(fn func(from, to, kind string, payload []byte)) {
	if fn == nil {
		h.onDeliver.Store(nil)
		return
	}
	h.onDeliver.Store(&fn)
}

// Stats returns a snapshot of the hub's counters. Counters are read one by
// one while messages may be moving, so they are exact only when the hub is
// quiet.
func (h *MemoryHub) Stats() MemoryHubStats {
	s := &h.stats
	return MemoryHubStats{
		Sent:          s.sent.Load(),
		Delivered:     s.delivered.Load(),
		Dropped:       s.dropped.Load(),
		Lost:          s.lost.Load(),
		Duplicated:    s.duplicated.Load(),
		Overflow:      s.overflow.Load(),
		Unhandled:     s.unhandled.Load(),
		HandlerErrors: s.handlerErrors.Load(),
	}
}

// Err returns the error of the most recent fault-setting call that failed,
// or nil if none did. Partition, Disconnect and Reconnect cannot return an
// error (their signatures are fixed), so when one is given an unknown node
// id, or Partition names an id twice, it changes nothing, logs the error at
// Error level, and records it here. A failing SetFaults records its error
// too. A later successful call does not clear it. The error wraps
// ErrInvalidConfig.
func (h *MemoryHub) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// failLocked records and logs a fault-setting error. h.mu must be held.
func (h *MemoryHub) failLocked(err error) {
	h.err = err
	h.logger.Load().Error("memory hub: ignoring invalid fault setting", "err", err)
}

// Connect attaches node id to the hub and returns its transport, which
// receives the broadcasts of every other connected node and whose
// broadcasts reach them. Connecting an id that is already connected
// returns the existing transport (still disconnected if Disconnect was
// called: use Reconnect). While a Partition is in force, a newly connected
// node is isolated until Heal.
//
// On a closed hub, Connect of a new id returns a transport that is not
// attached and whose Broadcast fails with ErrClosed.
func (h *MemoryHub) Connect(id string) *MemoryTransport {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.byID[id]; ok {
		return t
	}
	t := &MemoryTransport{hub: h, id: id, idx: -1, wake: make(chan struct{}, 1)}
	if h.closed {
		return t
	}
	t.idx = len(h.byIndex)
	h.byID[id] = t
	h.byIndex = append(h.byIndex, t)
	i, _ := slices.BinarySearchFunc(h.sorted, id, func(p *MemoryTransport, id string) int {
		return strings.Compare(p.id, id)
	})
	h.sorted = slices.Insert(h.sorted, i, t)
	g := 0
	if h.split {
		g = isolatedGroup(t.idx)
	}
	h.group = append(h.group, g)
	h.down = append(h.down, false)
	h.publishLocked()

	// Threads: a node's delivery goroutine (t.run) runs while its queue
	// holds messages: enqueue starts it when it finds none running (the
	// running flag, under t.qmu) and wakes it otherwise, and it ends once
	// the queue stayed empty for memoryIdle (or at once on Close). It
	// owns the batch it swapped out of t.queue and calls handlers and the
	// OnDeliver hook with no lock held. Delay timers (deliverAfter) run on
	// timer goroutines and only enqueue. Close stops both: it sets
	// h.stopped (under h.tmu, so no goroutine or timer starts after it),
	// stops every pending timer, and waits for the rest on h.wg; a run
	// goroutine returns after the handler in progress.
	return t
}

// Close stops every delivery goroutine and delay timer of the hub and
// returns once they have all exited. Messages still queued or delayed are
// discarded. Afterwards Broadcast fails with ErrClosed. Close is
// idempotent and every caller waits until shutdown is done; it always
// returns nil.
//
// Do not call Close from a handler or an OnDeliver hook: it would wait for
// the very goroutine that runs it. A handler that never returns makes Close
// wait forever.
func (h *MemoryHub) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		h.publishLocked()
		h.mu.Unlock()
		h.closing.Store(true)
		close(h.done)

		h.tmu.Lock()
		h.stopped = true
		for tm := range h.timers {
			if tm.Stop() {
				h.wg.Done() // its callback will never run
			}
			// Otherwise the callback is running or about to: it finds
			// itself gone from h.timers and calls wg.Done.
		}
		clear(h.timers)
		h.tmu.Unlock()
	})
	h.wg.Wait()
	return nil
}

// memMsg is one message in a receiver's queue.
type memMsg struct {
	from    *MemoryTransport
	kind    string
	payload []byte       // shared by every receiver of the Broadcast
	topo    *memTopology // the snapshot it was sent under
}

// MemoryTransport is a deterministic in-process Transport used by tests and by single-node embedded mode. It implements broadcast as a fan-out across peers registered against the same hub.
//
// Delivery is asynchronous: a handler never runs on the goroutine that
// called Broadcast, so a handler that broadcasts does not recurse. Each node
// has one delivery goroutine that calls its handlers one at a time, in FIFO
// order per sender while the hub injects no delay, and a bounded queue: a
// slow handler delays only its own node, and a message that finds the
// queue full is dropped (MemoryHubStats.Overflow). Broadcast copies the
// payload once and every receiver gets that same copy: handlers must not
// modify it, but may keep it after they return, since the hub never reuses
// it.
//
// A MemoryTransport is safe for concurrent use by multiple goroutines. It
// has no Close of its own: closing its hub stops it.
type MemoryTransport struct {
	hub  *MemoryHub
	id   string
	idx  int           // index in the hub's per-node slices; -1 when not attached
	wake chan struct{} // cap 1: wakes the delivery goroutine waiting for messages

	// handlers is replaced, never modified, under hmu, so the delivery
	// goroutine reads it without locking.
	hmu      sync.Mutex
	handlers atomic.Pointer[map[string]memHandler] // OnReceive handlers are wrapped

	// qmu guards queue (messages not yet taken by the delivery goroutine)
	// and running (a delivery goroutine runs).
	qmu     sync.Mutex
	queue   []memMsg
	running bool
}

var (
	_ Transport   = (*MemoryTransport)(nil)
	_ SenderAware = (*MemoryTransport)(nil)
	_ Unicaster   = (*MemoryTransport)(nil)
)

// LocalID returns this node's id, as given to Connect.
func (t *MemoryTransport) LocalID() string { return t.id }

// Validators returns the id of every node connected to the hub, this node
// first, the rest sorted. Disconnected and partitioned nodes stay in the
// list: they model failures, not membership changes. The caller owns the
// returned slice.
func (t *MemoryTransport) Validators() []string {
	s := t.hub.topo.Load()
	ids := make([]string, 1, len(s.nodes)+1)
	ids[0] = t.id
	for _, p := range s.nodes {
		if p != t {
			ids = append(ids, p.id)
		}
	}
	return ids
}

// OnReceive registers h for the messages of kind, replacing any handler
// registered for that kind with OnReceive or OnReceiveFrom. A nil h removes
// it; messages of a kind without a handler are counted as Unhandled and
// dropped. h runs on this node's delivery goroutine; see MemoryTransport
// for what it may do with payload. Its error is counted and logged at
// Debug level, and delivery goes on.
func (t *MemoryTransport) OnReceive(kind string, h func([]byte) error) {
	if h == nil {
		t.OnReceiveFrom(kind, nil)
		return
	}
	t.OnReceiveFrom(kind, func(_ string, payload []byte) error { return h(payload) })
}

// OnReceiveFrom is OnReceive with the sender's id, as given to Connect. It
// implements SenderAware, and replaces any handler registered for kind
// with OnReceive or OnReceiveFrom.
func (t *MemoryTransport) OnReceiveFrom(kind string, h func(from string, payload []byte) error) {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	m := make(map[string]memHandler)
	if old := t.handlers.Load(); old != nil {
		maps.Copy(m, *old)
	}
	if h == nil {
		delete(m, kind)
	} else {
		m[kind] = h
	}
	t.handlers.Store(&m)
}

// memHandler is the handler registered for one kind.
type memHandler = func(from string, payload []byte) error

// Broadcast queues payload for every other connected node and returns
// without waiting for delivery; it never blocks and ignores its context.
// The payload is copied before Broadcast returns, so you may reuse your
// buffer. Messages to nodes across a partition, and every message of a
// disconnected node, are lost (MemoryHubStats.Lost), and the hub's faults
// apply to the others. After the hub is closed it returns an error that
// wraps ErrClosed.
func (t *MemoryTransport) Broadcast(_ context.Context, kind string, payload []byte) error {
	s := t.hub.topo.Load()
	if s.closed || t.idx < 0 {
		return fmt.Errorf("memory transport %q: broadcast %q: %w", t.id, kind, ErrClosed)
	}
	var cp []byte
	for _, p := range s.nodes {
		if p != t {
			cp = t.send(s, p, kind, payload, cp)
		}
	}
	return nil
}

// SendTo is Broadcast to the one node named to (it implements Unicaster).
// Sending to an ID that is not connected to the hub returns an error
// wrapping ErrInvalidConfig.
func (t *MemoryTransport) SendTo(_ context.Context, to, kind string, payload []byte) error {
	s := t.hub.topo.Load()
	if s.closed || t.idx < 0 {
		return fmt.Errorf("memory transport %q: send %q: %w", t.id, kind, ErrClosed)
	}
	i, ok := slices.BinarySearchFunc(s.nodes, to, func(p *MemoryTransport, id string) int { return strings.Compare(p.id, id) })
	if !ok || s.nodes[i] == t {
		return fmt.Errorf("%w: memory transport %q: send %q: %q is not a peer", ErrInvalidConfig, t.id, kind, to)
	}
	t.send(s, s.nodes[i], kind, payload, nil)
	return nil
}

// send delivers payload to p under topology s: lost across a cut, else
// queued (with s's faults). cp is the copy of payload made for an earlier
// receiver, or nil; send returns the copy it used.
func (t *MemoryTransport) send(s *memTopology, p *MemoryTransport, kind string, payload, cp []byte) []byte {
	h := t.hub
	h.stats.sent.Add(1)
	if !s.link(t.idx, p.idx) {
		h.stats.lost.Add(1)
		return cp
	}
	if cp == nil {
		cp = slices.Clone(payload)
		if cp == nil {
			cp = []byte{}
		}
	}
	m := memMsg{from: t, kind: kind, payload: cp, topo: s}
	if s.faulty {
		h.sendFaulty(p, m, &s.faults)
	} else {
		p.enqueue(m)
	}
	return cp
}

// enqueue appends m to t's queue, or drops it if the queue is full.
func (t *MemoryTransport) enqueue(m memMsg) {
	h := t.hub
	if h.closing.Load() {
		return
	}
	t.qmu.Lock()
	if len(t.queue) >= h.queueLimit {
		t.qmu.Unlock()
		h.stats.overflow.Add(1)
		if l := h.logger.Load(); l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug("memory hub: receiver queue full, message dropped",
				"from", m.from.id, "to", t.id, "kind", m.kind, "limit", h.queueLimit)
		}
		return
	}
	t.queue = append(t.queue, m)
	start, first := !t.running, len(t.queue) == 1
	t.running = true
	t.qmu.Unlock()
	switch {
	case start:
		if !h.spawn(t.run) {
			t.qmu.Lock()
			t.running = false // closed meanwhile: the queue is discarded
			t.qmu.Unlock()
		}
	case first:
		// Only the message that makes the queue non-empty needs to wake
		// the goroutine: it takes the whole queue at once.
		select {
		case t.wake <- struct{}{}:
		default: // a wakeup is already pending
		}
	}
}

// spawn runs fn on a goroutine tied to h.wg, unless Close began.
func (h *MemoryHub) spawn(fn func()) bool {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	if h.stopped {
		return false
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn()
	}()
	return true
}

// run is t's delivery goroutine (see Threads in Connect): it delivers
// what is queued, batch by batch, and returns once the queue stayed empty
// for memoryIdle, or the hub closed.
func (t *MemoryTransport) run() {
	h := t.hub
	var batch []memMsg
	// A ticker, not a timer reset at every wait: waiting is the hot path.
	// The goroutine ends at the first tick that finds it idle since the
	// previous one.
	tick := time.NewTicker(memoryIdle)
	defer tick.Stop()
	busy := true
	for {
		t.qmu.Lock()
		if h.closing.Load() {
			t.running = false
			t.qmu.Unlock()
			return
		}
		if len(t.queue) == 0 {
			t.qmu.Unlock()
			select {
			case <-t.wake:
				continue
			case <-h.done:
				continue // noticed above
			case <-tick.C:
			}
			t.qmu.Lock()
			if !busy && len(t.queue) == 0 {
				t.running = false
				t.qmu.Unlock()
				return
			}
			busy = false
			t.qmu.Unlock()
			continue
		}
		busy = true
		batch, t.queue = t.queue, batch[:0]
		t.qmu.Unlock()
		for i := range batch {
			// Close discards what is queued: it is noticed between two
			// messages, not only between two batches.
			if h.closing.Load() {
				clear(batch)
				t.qmu.Lock()
				t.running = false
				t.qmu.Unlock()
				return
			}
			t.deliver(&batch[i])
		}
		clear(batch) // release payloads and old topologies
		if cap(batch) > 4096 {
			batch = nil // release the memory of a burst
		}
	}
}

// deliver hands m to t's handler if its link held since it was sent.
func (t *MemoryTransport) deliver(m *memMsg) {
	h := t.hub
	if !m.topo.heldSince(m.from.idx, t.idx) {
		h.stats.lost.Add(1)
		return
	}
	var hd memHandler
	ok := false
	if hs := t.handlers.Load(); hs != nil {
		hd, ok = (*hs)[m.kind]
	}
	if !ok {
		h.stats.unhandled.Add(1)
		if l := h.logger.Load(); l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug("memory hub: no handler for kind, message dropped",
				"from", m.from.id, "to", t.id, "kind", m.kind)
		}
		return
	}
	if fn := h.onDeliver.Load(); fn != nil {
		(*fn)(m.from.id, t.id, m.kind, m.payload)
	}
	err := hd(m.from.id, m.payload)
	h.stats.delivered.Add(1)
	if err != nil {
		h.stats.handlerErrors.Add(1)
		if l := h.logger.Load(); l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug("memory hub: handler failed",
				"from", m.from.id, "to", t.id, "kind", m.kind, "err", err)
		}
	}
}
