package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// QuasarReplicator decides frames by the votes of a fixed set of
// validators, counted by the github.com/luxfi/consensus engine
// (consensus.NewPQ). With a single validator it decides every frame
// locally; with n validators, proposals and votes travel over the
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
// the same frames end in the same state. A node proposes one frame per
// namespace at a time: a Propose waits for the node's previous frame there
// to be decided, even if the Propose that made it gave up, so a node never
// competes with its own frames (S6).
//
// Repair: a proposer re-sends its undecided proposals every WitnessAfter to
// the validators it has not heard from; a validator re-sends its vote when
// it sees a proposal again; a node that holds an undecided frame, or sees
// votes for a frame it lacks, asks one peer for it (fetch), and that peer
// answers with the frame or its certificate (the frame with its q commit
// voters). A node also advertises its namespace heads every
// AntiEntropyInterval; a peer that is behind asks one advertiser for the
// missing frames (sync) and gets their certificates, or is told that they
// fell out of the retention window.
//
// Back-pressure: a node whose handlers fall behind cannot slow a quorum of
// other validators down, so it bounds what it queues for them instead
// (MaxApplyBacklog): from the bound until its handlers have worked the
// queue down to half of it, it drops proposals and certificates of frames
// it does not hold yet, without voting, and asks for nothing, as a
// partitioned node would miss them; then it catches up through sync.
//
// # Signed votes
//
// With QuasarConfig.SigningKey and ValidatorKeys, each validator attests
// to the votes it casts: in batches (1,024 votes, or 10 ms after the
// batch's first vote), it signs the root of a Merkle tree over them with a
// hybrid Ed25519 + ML-DSA-65 key, each attestation naming the hash of the
// previous one. Votes themselves stay unsigned: a vote from its voter over
// an authenticated transport counts as before. Certificates relayed for
// repair and catch-up carry each voter's attestation and the Merkle path
// of its vote, and count only if those check; Proof packs the same into a
// proof of acceptance that VerifyProof checks offline. See attest.go.
//
// # Architecture
//
// The protocol is a deterministic state machine, the core (core.go): it
// owns no goroutine, reads no clock, calls no transport and runs no user
// code. QuasarReplicator is its driver: it owns the goroutines, the clock,
// the transport and the user callbacks, feeds the core its inputs
// (proposals, received messages, ticks, applied frames) and carries out its
// outputs (messages to send, frames to apply, decided calls, log lines).
//
// # Threads
//
//   - applyLoop: woken by kick, applies queued frames one at a time and
//     calls OnBehind between them (handlers and OnBehind run without mu
//     held). A Propose caller applies the queue up to its own frame when
//     nobody else is applying (the applying flag), so a single node decides
//     and applies without a goroutine hand-off.
//   - tickLoop: every WitnessAfter/2, feeds the core a tick (repair,
//     retention, digests).
//   - sendLoop: woken by sendKick under load (more than a couple of frames
//     undecided), sends the outbox; with little load the goroutine that
//     gave the core its input sends it itself, saving a hand-off.
//   - Transport callbacks decode outside mu, then feed the core under mu;
//     they never wait for consensus, the disk or handlers.
//   - diskLoop (with a DataDir's archive): answers peers' syncs for frames
//     no longer retained in memory, reading the archive without mu.
//   - signLoop (with a SigningKey): signs this validator's vote batches,
//     each as soon as it is full or 10 ms old, woken by signKick or its
//     timer. It takes mu to take the batches and to install what it made
//     of them, and hashes and signs without it; it alone owns the
//     attestation chain (signer).
//
// With a DataDir (durable.go), the records of each core batch are appended
// under mu; the goroutine that sends messages (sendLoop, whenever a sync is
// due) or returns a Propose outcome first makes them durable: one of them
// at a time writes and fsyncs the log with mu released, the others wait on
// walCond, so concurrent batches share one fsync.
//
// mu guards the core, the flushing and applying flags, the log lines
// not written yet and the data directory's buffers (walState); counters are atomics; handlers are a copy-on-write
// slice. mu is never held while a handler, OnBehind, the Transport or the
// Logger runs. Whoever finds the outbox unsent takes the flushing role and
// sends it, releasing mu around each send, so messages leave in the order
// the core produced them. Close sets closed, cancels the handler context,
// closes closing and waits for the loops and for any handler still
// running; Propose and Proof calls waiting on closing return ErrClosed.
type QuasarReplicator struct {
	cfg    QuasarConfig
	log    *slog.Logger
	tr     Transport
	uni    Unicaster // nil: the Transport only broadcasts
	n, q   int
	byName map[string]int

	handlers atomic.Pointer[[]Handler]
	m        metrics

	closed       atomic.Bool
	closing      chan struct{}
	closeOnce    sync.Once
	closeOnceDir sync.Once
	wg           sync.WaitGroup
	cancel       context.CancelFunc
	applyCtx     context.Context // handlers' ctx: cancelled by Close, marks re-entrant Propose
	kick         chan struct{}   // cap 1: wakes applyLoop
	sendKick     chan struct{}   // cap 1: wakes sendLoop
	signKick     chan struct{}   // cap 1: wakes signLoop (with a SigningKey)

	// mu guards c, flushing, applying, applyOpen, logs and partsCh.
	mu        sync.Mutex
	c         *core
	flushing  bool       // a goroutine is sending the outbox
	applying  bool       // a goroutine is applying frames
	applyOpen bool       // frames may be applied: see Subscribe
	logs      []logEvent // written by unlock, after mu is released
	applyIdle sync.Cond  // on mu: signalled when applying turns false
	// partsCh is closed (and replaced) when a vote part or an own
	// attestation arrives: Proof calls wait on it. With a SigningKey.
	partsCh chan struct{}

	// The data directory (durable.go): see walState for what guards it.
	walState
	walCond sync.Cond // on mu: signalled when a write of the log ends
}

// applyMarker is the key of the value that marks a handler's context.
type applyMarker struct{}

var _ Replicator = (*QuasarReplicator)(nil)

// maxFrameHard bounds a frame's raw size when MaxFrameBytes is negative:
// the wire format's record length holds no more.
const maxFrameHard = 1 << 34

// inlineFlushMax: with more undecided frames than this, sendLoop sends, so
// that more records share each message.
const inlineFlushMax = 2

// NewQuasar starts a replicator for cfg.NodeID. It validates cfg (see
// QuasarConfig.Validate) and starts nothing when it is invalid. ctx bounds
// the start only; use Close to stop the replicator.
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
		byName:   make(map[string]int, len(cfg.Validators)),
		closing:  make(chan struct{}),
		kick:     make(chan struct{}, 1),
		sendKick: make(chan struct{}, 1),
	}
	r.uni, _ = cfg.Transport.(Unicaster)
	r.applyIdle.L = &r.mu
	r.walCond.L = &r.mu
	cc := coreConfig{
		names:        cfg.Validators,
		byNodeID:     make(map[nodeID]int, len(cfg.Validators)),
		q:            cfg.Quorum,
		witness:      int64(cfg.WitnessAfter),
		retainFor:    int64(cfg.RetainFor),
		antiEntropy:  int64(cfg.AntiEntropyInterval),
		retainFrames: cfg.RetainFrames,
		maxFrame:     cfg.MaxFrameBytes,
		maxBacklog:   cfg.MaxApplyBacklog,
		unicast:      r.uni != nil,
		durable:      cfg.DataDir != "",
		archive:      cfg.DataDir != "" && len(cfg.Validators) > 1 && cfg.DiskRetainFrames > 0,
	}
	for i, v := range cfg.Validators {
		id := validatorNodeID(v)
		if _, dup := cc.byNodeID[id]; dup {
			return nil, fmt.Errorf("%w: validators %q collide in NodeID", ErrInvalidConfig, v)
		}
		cc.ids = append(cc.ids, id)
		cc.byNodeID[id] = i
		r.byName[v] = i
		if v == cfg.NodeID {
			cc.self = i
		}
		if cfg.ValidatorKeys != nil && len(cfg.Validators) > 1 {
			cc.keys = append(cc.keys, cfg.ValidatorKeys[v])
		}
	}
	c, err := newCore(cc, &r.m)
	if err != nil {
		return nil, fmt.Errorf("replication: start consensus engine: %w", err)
	}
	r.c = c
	if cfg.DataDir != "" {
		if err := r.openDataDir(); err != nil {
			return nil, err
		}
	} else if r.n > 1 {
		r.log.Warn("no DataDir: votes are kept in memory only; restarting this validator under the same NodeID " +
			"with its state lost could let two frames be accepted at one position")
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
	if r.arch != nil {
		r.wg.Add(1)
		go r.diskLoop()
	}
	r.startSigner()
	return r, nil
}

// validatorNodeID is a validator's 20-byte consensus NodeID: the first 20
// bytes of SHA-256 of its string ID.
func validatorNodeID(v string) (id nodeID) {
	sum := sha256.Sum256([]byte(v))
	copy(id[:], sum[:nodeIDLen])
	return id
}

// Subscribe registers a handler, called for every frame this node applies:
// frames it proposed and frames received from peers alike.
//
// Handlers run one at a time on the applying goroutine, in the order frames
// are accepted (chain order within a namespace, proposer order across). A
// nil handler is ignored. A handler that panics: the panic propagates on
// the goroutine that ran it (a Propose caller, or the driver's apply
// goroutine, which ends the program), the frame counts as applied with an
// error wrapping ErrApply, and the replicator stays usable. Subscribe is
// safe to call concurrently with Propose; a handler added while frames are
// being applied sees the frames applied after it was added.
//
// Nothing is applied before the first Subscribe (or the first Propose or
// Barrier): frames accepted meanwhile, and with a DataDir the frames a
// restart feeds again, wait for it, so that subscribing right after
// NewQuasar misses none. A validator that never subscribes nor proposes
// applies its frames, to no handler, once they reach MaxApplyBacklog.
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
			break
		}
	}
	r.mu.Lock()
	r.openApplyLocked()
	r.unlock()
}

// openApplyLocked lets frames be applied from now on.
func (r *QuasarReplicator) openApplyLocked() {
	if !r.applyOpen {
		r.applyOpen = true
		r.kickApply()
	}
}

// Stats returns the decisions of this node's own Propose calls. Metrics
// returns more.
func (r *QuasarReplicator) Stats() (accepted, rejected, timeouts uint64) {
	return r.m.accepted.Load(), r.m.rejected.Load(), r.m.timeouts.Load()
}

// Close stops the replicator.
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
	for r.applying {
		r.applyIdle.Wait()
	}
	r.unlock()
	r.closeOnceDir.Do(r.closeDataDir)
	return nil
}

// Propose proposes f and waits for its outcome: see the package
// documentation for the outcomes and their errors.
//
// A node proposes one frame per namespace at a time: concurrent Propose
// calls into one namespace queue up locally, each extending the chain the
// previous one decided, rather than reject each other; proposals into
// different namespaces proceed in parallel. The queue also waits for a
// frame whose Propose timed out: its outcome is settled before the next
// frame of the namespace is proposed, so a node never competes with its
// own frames, and such a frame, if it is accepted, is applied before the
// node's next frame there. A frame with an explicit Seq that does not
// exceed the namespace's latest accepted Seq is rejected at once (the slot
// is taken), and so is a frame whose OrgID, Namespace, Op or Key is not
// valid UTF-8 (an application that keeps frames as JSON, where invalid
// bytes become U+FFFD, could not tell it from others). A frame identical to one this
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
	if r.cfg.Observer == nil {
		return r.propose(ctx, f)
	}
	start := time.Now()
	d, err := r.propose(ctx, f)
	r.cfg.Observer.ObservePropose(d, time.Since(start))
	return d, err
}

func (r *QuasarReplicator) propose(ctx context.Context, f Frame) (Decision, error) {
	if r.closed.Load() {
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return r.failed(err)
	}
	if r.walFailed.Load() {
		r.mu.Lock()
		err := r.walErr
		r.unlock()
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", err)
	}
	limit := int64(r.cfg.MaxFrameBytes)
	if limit <= 0 {
		limit = maxFrameHard
	}
	if err := f.checkSize(limit); err != nil {
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", err)
	}
	if !f.validUTF8() {
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", refused("replication: OrgID, Namespace, Op and Key must be valid UTF-8"))
	}
	cl := &call{frame: f, reentrant: ctx.Value(applyMarker{}) == r}
	// The timer covers ProposeWait only: a ctx deadline fires ctx.Done(),
	// so that the error names ctx.Err().
	deadline := time.Now().Add(r.cfg.ProposeWait)
	if len(f.Value) > 0 {
		cl.frame.Value = append([]byte(nil), f.Value...) // the caller may reuse its buffer
	}

	// One critical section proposes, sends, applies (a single node decides
	// at once) and checks the outcome: under load every extra lock
	// hand-off counts.
	r.mu.Lock()
	r.openApplyLocked()
	r.c.propose(mono(), cl)
	self := cl // applies its own frame if it is queued now (a single validator)
	if cl.reentrant {
		self = nil
	}
	r.settleLocked(self)
	if self != nil && !cl.decided && cl.e != nil && cl.e.phase == phaseQueued {
		r.applyLocked(cl)
	}
	if cl.decided {
		return r.decidedLocked(cl)
	}
	cl.wake = make(chan struct{}, 1)
	r.unlock()
	if cl.reentrant {
		r.kickApply()
	}
	return r.wait(ctx, cl, deadline)
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

// wait blocks until cl is decided, the deadline passes, ctx is done or the
// replicator closes. The call is woken when its frame is queued for apply
// (it then applies the queue itself, saving a hand-off to applyLoop) and
// when it is decided.
//
// The caller made cl.wake, under mu, after checking that cl was not
// decided.
func (r *QuasarReplicator) wait(ctx context.Context, cl *call, deadline time.Time) (Decision, error) {
	timer := getTimer(time.Until(deadline))
	defer putTimer(timer)
	var cause error
	for {
		if cause = r.await(ctx, cl.wake, timer); cause != nil {
			break
		}
		r.mu.Lock()
		if !cl.reentrant && !cl.decided {
			r.applyLocked(cl)
		}
		if cl.decided {
			return r.decidedLocked(cl)
		}
		r.unlock()
	}
	r.mu.Lock()
	if cl.decided { // decided while we were giving up: report it
		return r.decidedLocked(cl)
	}
	r.c.abandon(cl)
	r.settleLocked(nil)
	r.unlock()
	r.kickApply() // the frame may sit in the apply queue, counting on us
	return r.failed(cause)
}

// decidedLocked reports decided cl once the durable state its outcome
// depends on is synced. mu is held on entry and released.
func (r *QuasarReplicator) decidedLocked(cl *call) (Decision, error) {
	err := r.persistLocked()
	r.unlock()
	if err != nil {
		return DecisionUndecided, fmt.Errorf("quasar propose: %w", err)
	}
	return r.result(cl)
}

// result reports a decided call; cl is no longer written once decided.
func (r *QuasarReplicator) result(cl *call) (Decision, error) {
	switch cl.decision {
	case DecisionAccept:
		r.m.accepted.Add(1)
		if cl.err != nil {
			return DecisionAccept, fmt.Errorf("quasar propose: %w: %w", ErrApply, cl.err)
		}
		return DecisionAccept, nil
	case DecisionReject:
		r.m.rejected.Add(1)
		return DecisionReject, fmt.Errorf("quasar propose: %w", cl.err)
	case DecisionTimeout:
		r.m.timeouts.Add(1)
		return DecisionTimeout, fmt.Errorf("quasar propose: %w", cl.err)
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

// Barrier waits until this node has applied every frame of the namespace
// (orgID, namespace) whose Propose returned DecisionAccept, on any node,
// before Barrier was called. Reading the application's local state after
// Barrier returns nil is then linearizable: it reflects every write that
// completed before the read began.
//
// It asks every validator for its head of the namespace (and for the frame
// it voted for on top of it, which may have been accepted), waits for
// answers from a quorum, then waits until this node has applied up to the
// highest head reported: a few message round trips when this node is up
// to date. Without a quorum it fails, when ctx ends or after ProposeWait,
// with an error wrapping ErrTimeout (and ctx's error if ctx ended first).
// After Close it returns an error wrapping ErrClosed. Barrier must not be
// called from a handler or OnBehind: it may wait for frames that are
// applied after they return.
func (r *QuasarReplicator) Barrier(ctx context.Context, orgID, namespace string) error {
	if r.closed.Load() {
		return fmt.Errorf("quasar barrier: %w", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("quasar barrier: %w: %w", ErrTimeout, err)
	}
	b := &barrier{key: spaceKey{orgID, namespace}}
	r.mu.Lock()
	r.openApplyLocked()
	r.c.barrier(mono(), b)
	r.settleLocked(nil)
	if b.done {
		r.unlock()
		return nil
	}
	b.wake = make(chan struct{}, 1)
	r.unlock()
	timer := getTimer(r.cfg.ProposeWait)
	defer putTimer(timer)
	for {
		cause := r.await(ctx, b.wake, timer)
		r.mu.Lock()
		done := b.done
		if !done && cause != nil {
			r.c.abandonBarrier(b)
		}
		r.unlock()
		switch {
		case done:
			return nil
		case cause == ErrClosed:
			return fmt.Errorf("quasar barrier: %w", ErrClosed)
		case cause == errProposeWait:
			return fmt.Errorf("quasar barrier: %w: no quorum answered, or this node did not catch up, within %s", ErrTimeout, r.cfg.ProposeWait)
		case cause != nil:
			return fmt.Errorf("quasar barrier: %w: %w", ErrTimeout, cause)
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
	r.c.reset(mono(), spaceKey{org, ns}, seq)
	r.settleLocked(nil)
	r.unlock()
}

// Metrics returns a snapshot of the replicator's counters and gauges, for a
// /cluster diagnostics endpoint.
func (r *QuasarReplicator) Metrics() QuasarMetrics {
	m := r.m.snapshot()
	r.mu.Lock()
	c := r.c
	m.Pending = c.undecided.n
	m.PendingApply = c.pendingApply()
	m.PendingApplyBytes = c.applyLen
	m.Retained = c.retained.n
	m.Namespaces = len(c.spaces)
	r.mu.Unlock()
	m.Validators, m.Quorum = r.n, r.q
	return m
}

var clockStart = time.Now()

// mono is a monotonic clock reading in nanoseconds: the time the driver
// gives the core.
func mono() int64 { return int64(time.Since(clockStart)) }
