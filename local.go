package replication

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
)

// LocalReplicator is the single-node passthrough. Every Propose is decided
// synchronously, with no consensus, and an accepted frame is fanned out to
// local subscribers — the same code path the quasar driver uses on accept,
// so callers cannot tell the difference.
//
// A frame is accepted when its sequence number extends its namespace, it
// fits the size limit, and every handler applied it; it is rejected
// otherwise (see Propose). Handlers run on the goroutine of a Propose
// caller, one frame at a time, in acceptance order.
//
// A LocalReplicator starts no goroutines. All its methods are safe for
// concurrent use by multiple goroutines, and Propose and Stats may be called
// from a handler (see Propose for what a handler's Propose returns).
type LocalReplicator struct {
	// handlers is replaced, never modified (copy on write), so an apply
	// reads it without a lock. subMu serialises the writers.
	handlers atomic.Pointer[[]Handler]
	subMu    sync.Mutex

	onApplyErr atomic.Pointer[func(Frame, error)]
	maxBytes   atomic.Int64
	accepted   atomic.Uint64
	rejected   atomic.Uint64

	// hctx is the context handlers receive: it carries localCtxKey{} with
	// value r (so a Propose from a handler is recognised) and is cancelled
	// when Close starts.
	hctx    context.Context
	cancel  context.CancelFunc
	drained chan struct{} // closed by the last applier once closed is set

	closeOnce sync.Once

	// mu guards seqs, lastKey, lastNS, rq, rqHead, wq, wqHead, applying and
	// closed. It is never held while a handler runs.
	mu sync.Mutex
	// seqs holds, per namespace, the highest Seq accepted or reserved
	// there: one counter per namespace, whatever the number of frames.
	seqs map[localKey]*localNS
	// lastKey and lastNS cache the namespace of the previous claim: a
	// string comparison instead of hashing both strings when frames of
	// one namespace follow each other.
	lastKey localKey
	lastNS  *localNS
	// rq holds the frames proposed by handlers (re-entrant proposals):
	// already decided and sequenced, applied before any waiter's frame.
	rq     []Frame
	rqHead int
	// wq holds the Propose calls waiting for their turn, in arrival order.
	wq     []*localWaiter
	wqHead int
	// applying is set while one goroutine (the applier) runs handlers and
	// drains rq and wq. Only the applier claims sequence numbers for
	// frames that are not re-entrant, so seq order is apply order.
	applying bool
	closed   bool
}

var _ Replicator = (*LocalReplicator)(nil)

// localKey identifies a namespace. A struct key avoids building a string per
// Propose.
type localKey struct{ org, ns string }

// localNS is the state kept per namespace.
type localNS struct {
	hwm uint64 // highest Seq accepted (or reserved by the running apply)
}

// localCtxKey is the context key of the marker put in the handler context.
type localCtxKey struct{}

// localWaiter is a Propose call waiting for its turn. Fields other than f
// and done are guarded by mu until done is closed, then owned by the waiter.
type localWaiter struct {
	f         Frame
	done      chan struct{}
	dec       Decision
	err       error
	taken     bool // dequeued: the waiter's ctx is no longer honoured
	abandoned bool // the waiter gave up (ctx done) before it was taken
	lead      bool // the waiter is handed the applier role
	barrier   bool // a Barrier: it has no frame, and is done once it is taken
}

// maxCombine bounds how many waiting frames an applier applies on behalf of
// other callers before it hands the applier role to the next waiter, so
// that no caller stays stuck applying other callers' frames forever.
const maxCombine = 32

// NewLocal returns a single-node Replicator.
//
// It has no size limit (see SetMaxFrameBytes) and starts no goroutines;
// call Close when done so that handlers see their context cancelled.
func NewLocal() *LocalReplicator {
	r := &LocalReplicator{
		seqs:    make(map[localKey]*localNS),
		drained: make(chan struct{}),
	}
	r.hctx, r.cancel = context.WithCancel(context.WithValue(context.Background(), localCtxKey{}, r))
	return r
}

// SetMaxFrameBytes sets the largest frame Propose accepts, measured as the
// frame's raw size: the bytes of its OrgID, Namespace, Op, Key and Value,
// as QuasarConfig.MaxFrameBytes counts them. A
// larger frame is rejected with DecisionReject and an error matching both
// ErrRejected and ErrTooLarge; no handler is called. n <= 0 removes the
// limit, which is the default.
//
// It is safe to call concurrently with Propose; calls that already passed
// the check are not affected.
func (r *LocalReplicator) SetMaxFrameBytes(n int) {
	r.maxBytes.Store(int64(max(n, 0)))
}

// OnApplyError registers fn to be told when a handler fails on a frame
// whose Propose already returned DecisionAccept: a frame proposed by a
// handler (see Propose), which is decided before it is applied. As on
// QuasarReplicator, the decision stands; fn receives the frame and the
// handler's error, wrapped with ErrApply. fn runs on the applying
// goroutine, after the handlers, and must not call Close. A nil fn restores
// the default, which logs the failure with slog.Default.
//
// It is safe for concurrent use.
func (r *LocalReplicator) OnApplyError(fn func(f Frame, err error)) {
	if fn == nil {
		r.onApplyErr.Store(nil)
		return
	}
	r.onApplyErr.Store(&fn)
}

// Propose immediately decides and dispatches: it does not wait for any
// consensus, only for the handlers of frames accepted before this one. It
// returns:
//
//   - (DecisionTimeout, err) with errors.Is(err, ErrTimeout) and
//     errors.Is(err, ctx.Err()) when ctx is already done, or ends while the
//     call waits for another frame's handlers to finish; the frame is then
//     not applied. Once the frame's turn has come, ctx is no longer
//     consulted: the frame is applied and the call returns its decision.
//   - (DecisionUndecided, err) with errors.Is(err, ErrClosed) once Close
//     has started, including for calls waiting their turn when it starts;
//     their frames are not applied.
//   - (DecisionReject, err) with errors.Is(err, ErrRejected) and
//     errors.Is(err, ErrTooLarge) for a frame above SetMaxFrameBytes.
//   - (DecisionReject, err) with errors.Is(err, ErrRejected) when f.Seq is
//     not 0 and not above the highest Seq accepted so far in f's
//     (OrgID, Namespace): the slot is taken. This is the
//     one-frame-per-slot fence QuasarReplicator applies too (a frame must
//     extend its namespace), and it needs one counter per namespace.
//   - (DecisionReject, err) when a handler returns an error: err wraps
//     ErrRejected and the handler's error, the remaining handlers are not
//     called, and the namespace's high-water mark does not move (the next
//     assigned Seq is the one this frame had, unless a handler already
//     proposed a later frame of the same namespace).
//   - (DecisionAccept, nil) after every handler applied the frame. A frame
//     with Seq 0 is given the namespace's highest Seq plus one.
//
// Handlers run one frame at a time, in acceptance order, on the goroutine
// of one of the Propose callers; they receive the replicator's context, not
// ctx. A handler may call Propose on its own replicator, passing on the
// context it received (or one derived from it): that call is decided at
// once — sequenced, checked and counted — and returns (DecisionAccept, nil)
// before the frame is applied; the frame is applied right after the frame
// whose handler is running, before any other caller's frame. Its Value is
// copied, so the handler may reuse its buffer. A handler failing on such a
// frame does not undo the decision (see OnApplyError). A handler that
// proposes with any other context waits for its own turn, which comes only
// after the handler returned: the call blocks until that context ends (for
// ever with context.Background).
//
// A handler that panics: the panic propagates on the goroutine that ran the
// handler (a Propose caller, not necessarily the frame's proposer), the frame
// is rejected, and the replicator stays usable.
//
// Propose is safe for concurrent use. The replicator does not keep the
// frame's Value after Propose returns (a handler's Propose keeps a copy).
func (r *LocalReplicator) Propose(ctx context.Context, f Frame) (Decision, error) {
	if err := ctx.Err(); err != nil {
		if r.isClosed() {
			return DecisionUndecided, ErrClosed
		}
		return DecisionTimeout, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	if err := f.checkSize(r.maxBytes.Load()); err != nil {
		if r.isClosed() {
			return DecisionUndecided, ErrClosed
		}
		r.rejected.Add(1)
		return DecisionReject, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return DecisionUndecided, ErrClosed
	}
	if r.applying {
		return r.wait(ctx, f) // unlocks mu
	}
	r.applying = true
	return r.lead(&f) // unlocks mu
}

// isClosed reports whether Close was called: Propose checks it first on
// its error paths, so that a closed replicator always answers ErrClosed.
func (r *LocalReplicator) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// wait handles a Propose made while another goroutine applies. mu is held on
// entry and released.
func (r *LocalReplicator) wait(ctx context.Context, f Frame) (Decision, error) {
	if ctx.Value(localCtxKey{}) == r {
		// A handler's Propose: waiting would deadlock, so decide now.
		if _, _, err := r.claimLocked(&f); err != nil {
			r.mu.Unlock()
			r.rejected.Add(1)
			return DecisionReject, err
		}
		f.Value = bytes.Clone(f.Value)
		r.rq = append(r.rq, f)
		r.mu.Unlock()
		r.accepted.Add(1)
		return DecisionAccept, nil
	}
	w := &localWaiter{f: f, done: make(chan struct{})}
	if !r.queue(ctx, w) {
		return DecisionTimeout, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
	if w.lead {
		r.mu.Lock()
		return r.lead(&w.f)
	}
	return w.dec, w.err
}

// queue puts w in the wait queue and waits until the applier is done with
// it (w.done). It reports false, having abandoned w, if ctx ended before
// the applier took w; once taken, w is waited for whatever ctx does. mu is
// held on entry and released.
func (r *LocalReplicator) queue(ctx context.Context, w *localWaiter) bool {
	r.wq = append(r.wq, w)
	r.mu.Unlock()
	select {
	case <-w.done:
		return true
	case <-ctx.Done():
		r.mu.Lock()
		if !w.taken {
			w.abandoned = true
			r.mu.Unlock()
			return false
		}
		r.mu.Unlock()
		<-w.done
		return true
	}
}

// claimLocked checks f.Seq against its namespace, assigns one when it is 0,
// and reserves it. It returns the namespace state and its previous
// high-water mark, for rollbackLocked.
func (r *LocalReplicator) claimLocked(f *Frame) (*localNS, uint64, error) {
	ns := r.lastNS
	if ns == nil || r.lastKey.org != f.OrgID || r.lastKey.ns != f.Namespace {
		k := localKey{f.OrgID, f.Namespace}
		if ns = r.seqs[k]; ns == nil {
			ns = new(localNS)
			r.seqs[k] = ns
		}
		r.lastKey, r.lastNS = k, ns
	}
	prev := ns.hwm
	switch {
	case f.Seq == 0 && prev == math.MaxUint64:
		return nil, 0, refused("replication: namespace %q/%q has no sequence number left", f.OrgID, f.Namespace)
	case f.Seq == 0:
		f.Seq = prev + 1
	case f.Seq <= prev:
		return nil, 0, refused("replication: slot %q/%q seq %d is taken (latest accepted seq is %d)", f.OrgID, f.Namespace, f.Seq, prev)
	}
	ns.hwm = f.Seq
	return ns, prev, nil
}

// rollbackLocked undoes claimLocked for a rejected frame, unless a later
// frame of the namespace was reserved meanwhile (by a handler's Propose).
func (r *LocalReplicator) rollbackLocked(f *Frame, ns *localNS, prev uint64) {
	if ns.hwm != f.Seq {
		return
	}
	ns.hwm = prev
	if prev == 0 {
		delete(r.seqs, localKey{f.OrgID, f.Namespace})
		if r.lastNS == ns {
			r.lastKey, r.lastNS = localKey{}, nil
		}
	}
}

// lead runs the applier role: it applies f, then the queued frames, then
// gives the role up. mu is held on entry (with applying set) and released.
func (r *LocalReplicator) lead(f *Frame) (dec Decision, err error) {
	var (
		cur     *localWaiter // waiter whose frame is being applied, if any
		curF    = f          // frame being applied with a claim to undo
		curNS   *localNS
		curPrev uint64
		settled bool
	)
	defer func() {
		if !settled { // a handler panicked: leave the replicator usable
			r.abortApply(cur, curF, curNS, curPrev)
		}
	}()

	if r.closed { // handed the role after Close started
		dec, err = DecisionUndecided, ErrClosed
		curF = nil
	} else if curNS, curPrev, err = r.claimLocked(f); err != nil {
		r.rejected.Add(1)
		dec = DecisionReject
		curF = nil
	}
	r.mu.Unlock()
	if curF != nil {
		dec, err = r.apply(f, curNS, curPrev)
	}

	// Drain: frames proposed by handlers first, then waiting callers.
	combined := 0
	r.mu.Lock()
	for {
		cur, curF = nil, nil
		if r.rqHead < len(r.rq) {
			rf := r.rq[r.rqHead]
			r.rq[r.rqHead] = Frame{}
			if r.rqHead++; r.rqHead == len(r.rq) {
				r.rq, r.rqHead = r.rq[:0], 0
			}
			r.mu.Unlock()
			if herr := r.runHandlers(&rf); herr != nil {
				r.reportApplyError(rf, herr)
			}
			r.mu.Lock()
			continue
		}
		w := r.popWaiterLocked()
		if w == nil {
			break
		}
		w.taken = true
		if w.barrier {
			close(w.done) // every frame queued before it was applied
			continue
		}
		if combined == maxCombine {
			w.lead = true
			settled = true
			r.mu.Unlock()
			close(w.done)
			return dec, err
		}
		combined++
		cur = w
		ns, prev, cerr := r.claimLocked(&w.f)
		r.mu.Unlock()
		if cerr != nil {
			r.rejected.Add(1)
			w.dec, w.err = DecisionReject, cerr
		} else {
			curF, curNS, curPrev = &w.f, ns, prev
			w.dec, w.err = r.apply(&w.f, ns, prev)
		}
		close(w.done)
		r.mu.Lock()
	}
	r.applying = false
	if r.closed {
		close(r.drained)
	}
	settled = true
	r.mu.Unlock()
	return dec, err
}

// apply runs the handlers on a claimed frame and records the outcome.
func (r *LocalReplicator) apply(f *Frame, ns *localNS, prev uint64) (Decision, error) {
	if err := r.runHandlers(f); err != nil {
		r.mu.Lock()
		r.rollbackLocked(f, ns, prev)
		r.mu.Unlock()
		r.rejected.Add(1)
		return DecisionReject, refused("replication: a handler failed to apply the frame: %w", err)
	}
	r.accepted.Add(1)
	return DecisionAccept, nil
}

// runHandlers calls every handler on f, stopping at the first error.
func (r *LocalReplicator) runHandlers(f *Frame) error {
	hs := r.handlers.Load()
	if hs == nil {
		return nil
	}
	for _, h := range *hs {
		if err := h(r.hctx, *f); err != nil {
			return err
		}
	}
	return nil
}

// popWaiterLocked dequeues the next waiter that has not given up.
func (r *LocalReplicator) popWaiterLocked() *localWaiter {
	for r.wqHead < len(r.wq) {
		w := r.wq[r.wqHead]
		r.wq[r.wqHead] = nil
		if r.wqHead++; r.wqHead == len(r.wq) {
			r.wq, r.wqHead = r.wq[:0], 0
		}
		if !w.abandoned {
			return w
		}
	}
	return nil
}

// abortApply runs while a handler's panic unwinds the applier: the frame
// being applied is rejected (its waiter, if any, is told so), and the
// applier role goes to the next waiter, or is given up.
func (r *LocalReplicator) abortApply(cur *localWaiter, f *Frame, ns *localNS, prev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f != nil && ns != nil {
		r.rollbackLocked(f, ns, prev)
	}
	if cur != nil {
		r.rejected.Add(1)
		cur.dec, cur.err = DecisionReject, refused("replication: a handler panicked applying the frame")
		close(cur.done)
	}
	for {
		w := r.popWaiterLocked()
		if w == nil {
			break
		}
		w.taken = true
		if w.barrier {
			close(w.done) // a Barrier has no frame to apply: it cannot lead
			continue
		}
		w.lead = true
		close(w.done)
		return
	}
	r.applying = false
	if r.closed {
		close(r.drained)
	}
}

// reportApplyError reports a handler's failure on an already decided frame.
func (r *LocalReplicator) reportApplyError(f Frame, err error) {
	err = fmt.Errorf("%w: %w", ErrApply, err)
	if fn := r.onApplyErr.Load(); fn != nil {
		(*fn)(f, err)
		return
	}
	slog.Default().Error("replication: local handler failed on a decided frame",
		"org", f.OrgID, "ns", f.Namespace, "seq", f.Seq, "op", f.Op, "key", f.Key, "err", err)
}

// Subscribe appends an applier; thread-safe with Propose.
//
// Handlers are called in the order they were subscribed, for every frame
// accepted after Subscribe returns (a frame whose handlers are already
// running is not affected). A nil h is ignored. Subscribe may be called from
// a handler and after Close.
func (r *LocalReplicator) Subscribe(h Handler) {
	if h == nil {
		return
	}
	r.subMu.Lock()
	defer r.subMu.Unlock()
	var hs []Handler
	if old := r.handlers.Load(); old != nil {
		hs = make([]Handler, len(*old), len(*old)+1)
		copy(hs, *old)
	}
	hs = append(hs, h)
	r.handlers.Store(&hs)
}

// Close stops the replicator. It cancels the context handlers receive,
// fails the Propose calls waiting for their turn with ErrClosed (their
// frames are not applied), lets the handlers already running finish (and
// the frames that they proposed, which were already accepted, be applied),
// and returns once no handler runs any more. Later Propose calls return
// (DecisionUndecided, ErrClosed).
//
// Close is idempotent and safe for concurrent use: every call waits until
// the replicator has stopped, and returns nil. It must not be called from a
// handler, since it waits for the handlers to return.
func (r *LocalReplicator) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		r.mu.Lock()
		r.closed = true
		for w := r.popWaiterLocked(); w != nil; w = r.popWaiterLocked() {
			w.taken = true
			w.dec, w.err = DecisionUndecided, ErrClosed
			close(w.done)
		}
		busy := r.applying
		r.mu.Unlock()
		if busy {
			<-r.drained
		}
	})
	return nil
}

// Barrier waits until every frame whose Propose returned DecisionAccept
// before Barrier was called has been applied: at once, unless a handler is
// running, since a Propose returns Accept only after its frame was applied
// except the Propose of a handler, whose frame is applied after that
// handler returns. Then Barrier waits for those frames (for the current
// applier to get to it). It takes the namespace for symmetry with
// QuasarReplicator.Barrier; a LocalReplicator has one order for all.
//
// It returns an error wrapping ErrTimeout (and ctx's error) if ctx ends
// first, and ErrClosed after Close. Called from a handler, it cannot wait
// for frames applied after that handler returns: it returns nil if there
// are none, else an error wrapping ErrTimeout.
func (r *LocalReplicator) Barrier(ctx context.Context, orgID, namespace string) error {
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return fmt.Errorf("local barrier: %w", ErrClosed)
	case !r.applying:
		r.mu.Unlock()
		return nil
	case ctx.Value(localCtxKey{}) == r:
		pending := r.rqHead < len(r.rq)
		r.mu.Unlock()
		if pending {
			return fmt.Errorf("local barrier: %w: called from a handler, which frames proposed by handlers are applied after", ErrTimeout)
		}
		return nil
	}
	w := &localWaiter{barrier: true, done: make(chan struct{})}
	if !r.queue(ctx, w) {
		return fmt.Errorf("local barrier: %w: %w", ErrTimeout, ctx.Err())
	}
	if w.err != nil {
		return fmt.Errorf("local barrier: %w", w.err) // ErrClosed
	}
	return nil
}

// Stats returns counters used by /v1/tasks/cluster.
//
// accepted counts the frames accepted, rejected the frames rejected for any
// reason (stale Seq, size limit, handler error); calls that ended with
// ErrClosed or on their ctx count in neither. It is safe for concurrent use,
// including from a handler.
func (r *LocalReplicator) Stats() (accepted, rejected uint64) {
	return r.accepted.Load(), r.rejected.Load()
}
