package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// contractWait bounds every wait of the contract suite. It is a deadline
// for "never hangs" checks, never a sleep: each test waits on a channel and
// fails if the deadline passes first.
const contractWait = 10 * time.Second

// frameLog is a Handler that records a copy of every frame it is given.
type frameLog struct {
	mu     sync.Mutex
	frames []Frame
	seen   chan struct{} // receives a token per frame, if not nil
}

func newFrameLog() *frameLog { return &frameLog{seen: make(chan struct{}, 1024)} }

func (l *frameLog) handle(_ context.Context, f Frame) error {
	f.Value = append([]byte(nil), f.Value...) // the Handler contract: copy what you keep
	l.mu.Lock()
	l.frames = append(l.frames, f)
	l.mu.Unlock()
	select {
	case l.seen <- struct{}{}:
	default:
	}
	return nil
}

func (l *frameLog) snapshot() []Frame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Frame(nil), l.frames...)
}

// find returns the frames recorded with the given key.
func (l *frameLog) find(key string) []Frame {
	var out []Frame
	for _, f := range l.snapshot() {
		if f.Key == key {
			out = append(out, f)
		}
	}
	return out
}

// waitForKey waits until the log holds a frame with the given key.
func (l *frameLog) waitForKey(t *testing.T, key string) Frame {
	t.Helper()
	deadline := time.After(contractWait)
	for {
		if fs := l.find(key); len(fs) > 0 {
			return fs[0]
		}
		select {
		case <-l.seen:
		case <-deadline:
			t.Fatalf("frame with key %q not applied within %s", key, contractWait)
		}
	}
}

// requireAccept proposes f and requires (DecisionAccept, nil).
func requireAccept(t *testing.T, r Replicator, f Frame) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), contractWait)
	defer cancel()
	d, err := r.Propose(ctx, f)
	require.NoError(t, err, "Propose(%+v)", f)
	require.Equal(t, DecisionAccept, d, "Propose(%+v)", f)
}

// requireDone waits for done to be closed, failing after contractWait.
func requireDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(contractWait):
		t.Fatalf("%s did not finish within %s", what, contractWait)
	}
}

// testReplicator is the contract every Replicator driver satisfies: the
// driver-independent rows of the outcomes table and the guarantees of the
// package documentation ("What subscribers get", "Outcomes", "Sequence
// numbers"). newR returns a fresh,
// open replicator that has no handler yet and whose cleanup (Close) is
// already registered with t.Cleanup; it is called once per subtest.
//
// Driver-specific behaviour (size limits, what a handler error does, Stats)
// is tested next to each driver.
func testReplicator(t *testing.T, newR func(t *testing.T) Replicator) {
	t.Run("AcceptAppliesBeforeReturn", func(t *testing.T) {
		// §3: Propose returns Accept only after this node's handlers ran.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k", Value: []byte("v")})
		got := log.snapshot()
		require.Len(t, got, 1, "handler must have run before Propose returned")
		assert.Equal(t, "o", got[0].OrgID)
		assert.Equal(t, "n", got[0].Namespace)
		assert.Equal(t, "put", got[0].Op)
		assert.Equal(t, "k", got[0].Key)
		assert.Equal(t, []byte("v"), got[0].Value)
		assert.NotZero(t, got[0].Seq, "an assigned Seq is never 0")
	})

	t.Run("SequentialProposalsAppliedInOrder", func(t *testing.T) {
		// §3: handlers are called in the order frames are accepted; S5.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		const n = 20
		for i := range n {
			requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: fmt.Sprint(i)})
		}
		got := log.snapshot()
		require.Len(t, got, n)
		for i, f := range got {
			assert.Equal(t, fmt.Sprint(i), f.Key, "frame %d applied out of order", i)
		}
	})

	t.Run("HandlersInOrderNeverConcurrent", func(t *testing.T) {
		// §3: handlers of one replicator are called one at a time, in
		// acceptance order; every handler sees every frame.
		r := newR(t)
		var inFlight, maxInFlight atomic.Int32
		enter := func() {
			n := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
		}
		type call struct {
			handler int
			key     string
			seq     uint64
		}
		var mu sync.Mutex
		var calls []call // in call order
		for _, id := range []int{1, 2} {
			r.Subscribe(func(_ context.Context, f Frame) error {
				enter()
				defer inFlight.Add(-1)
				mu.Lock()
				calls = append(calls, call{id, f.Key, f.Seq})
				mu.Unlock()
				return nil
			})
		}
		const workers, each = 4, 25
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), contractWait)
				defer cancel()
				for i := range each {
					d, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: fmt.Sprintf("w%d-%d", w, i)})
					if d != DecisionAccept || err != nil {
						errs <- fmt.Errorf("Propose = %v, %v", d, err)
					}
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		requireDone(t, done, "concurrent proposals")
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		assert.Equal(t, int32(1), maxInFlight.Load(), "handlers ran concurrently")
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, calls, 2*workers*each)
		var lastSeq uint64
		keys := map[string]bool{}
		for i := 0; i < len(calls); i += 2 {
			c1, c2 := calls[i], calls[i+1]
			require.Equal(t, 1, c1.handler, "call %d", i)
			require.Equal(t, call{2, c1.key, c1.seq}, c2, "handler 2 must get the frame handler 1 got, right after it")
			require.Greater(t, c1.seq, lastSeq, "frames of one namespace applied out of seq order")
			lastSeq = c1.seq
			require.False(t, keys[c1.key], "frame %s applied twice", c1.key)
			keys[c1.key] = true
		}
	})

	t.Run("SeqAssignedIncreasingPerNamespace", func(t *testing.T) {
		// §3: Seq 0 means assign one; assigned numbers are strictly
		// increasing per (OrgID, Namespace).
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		for i := range 6 {
			ns := []string{"a", "b"}[i%2]
			requireAccept(t, r, Frame{OrgID: "o", Namespace: ns, Op: "put", Key: fmt.Sprint(i)})
		}
		requireAccept(t, r, Frame{OrgID: "o2", Namespace: "a", Op: "put", Key: "other-org"})
		last := map[[2]string]uint64{}
		for _, f := range log.snapshot() {
			k := [2]string{f.OrgID, f.Namespace}
			require.Greater(t, f.Seq, last[k], "seq of %s/%s not increasing", f.OrgID, f.Namespace)
			last[k] = f.Seq
		}
	})

	t.Run("SeqIndependentAcrossNamespaces", func(t *testing.T) {
		// doc.go: at most one frame per (OrgID, Namespace, Seq); the same
		// Seq in another namespace or org is another slot.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		for _, f := range []Frame{
			{OrgID: "o", Namespace: "a", Seq: 7, Op: "put", Key: "o/a"},
			{OrgID: "o", Namespace: "b", Seq: 7, Op: "put", Key: "o/b"},
			{OrgID: "o2", Namespace: "a", Seq: 7, Op: "put", Key: "o2/a"},
		} {
			requireAccept(t, r, f)
		}
		require.Len(t, log.snapshot(), 3)
		for _, f := range log.snapshot() {
			assert.Equal(t, uint64(7), f.Seq, "explicit Seq must be kept")
		}
	})

	t.Run("StaleSeqRejected", func(t *testing.T) {
		// S4 and the Local fence: a frame must extend its namespace.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Seq: 10, Op: "migration.lock", Key: "first"})
		for _, seq := range []uint64{10, 5, 1} {
			ctx, cancel := context.WithTimeout(context.Background(), contractWait)
			d, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Seq: seq, Op: "migration.lock", Key: "stale"})
			cancel()
			require.ErrorIs(t, err, ErrRejected, "seq %d", seq)
			require.Equal(t, DecisionReject, d, "seq %d", seq)
		}
		assert.Empty(t, log.find("stale"), "a rejected frame must not be applied")
		// Seq 0 is assigned above every seq seen for the namespace.
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "next"})
		next := log.find("next")
		require.Len(t, next, 1)
		assert.Greater(t, next[0].Seq, uint64(10))
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Seq: next[0].Seq + 5, Op: "put", Key: "jump"})
	})

	t.Run("CtxDoneBeforeCall", func(t *testing.T) {
		// §3: ctx cancelled or past its deadline: Timeout, and err
		// matches both ErrTimeout and ctx.Err().
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel2()
		for name, ctx := range map[string]context.Context{"canceled": canceled, "deadline": expired} {
			t.Run(name, func(t *testing.T) {
				d, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k"})
				require.Equal(t, DecisionTimeout, d)
				require.ErrorIs(t, err, ErrTimeout)
				require.ErrorIs(t, err, ctx.Err())
			})
		}
		assert.Empty(t, log.snapshot(), "no frame may be applied")
	})

	t.Run("ClosedBeforeCall", func(t *testing.T) {
		// §3: replicator closed: Undecided and ErrClosed, promptly, even
		// for a call that would otherwise time out or be refused.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		require.NoError(t, r.Close())
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		f := Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k"}
		tooLarge := f
		tooLarge.Value = make([]byte, 2*DefaultMaxFrameBytes)
		for name, call := range map[string]struct {
			ctx context.Context
			f   Frame
		}{"live ctx": {context.Background(), f}, "ctx done": {canceled, f}, "frame above limit": {context.Background(), tooLarge}} {
			t.Run(name, func(t *testing.T) {
				d, err := r.Propose(call.ctx, call.f)
				require.Equal(t, DecisionUndecided, d)
				require.ErrorIs(t, err, ErrClosed)
			})
		}
		assert.Empty(t, log.snapshot())
	})

	t.Run("CloseIdempotent", func(t *testing.T) {
		// §3: Close is idempotent; every caller gets the same result.
		r := newR(t)
		for range 3 {
			require.NoError(t, r.Close())
		}
		r2 := newR(t)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Go(func() { errs[i] = r2.Close() })
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		requireDone(t, done, "concurrent Close")
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.NoError(t, r2.Close())
	})

	t.Run("CloseWhileProposing", func(t *testing.T) {
		// §3: Close fails in-flight Propose calls with ErrClosed,
		// promptly; none hangs, and every accepted frame was applied.
		r := newR(t)
		var applied atomic.Int64
		busy := make(chan struct{})
		var busyOnce sync.Once
		r.Subscribe(func(context.Context, Frame) error {
			if applied.Add(1) == 50 {
				busyOnce.Do(func() { close(busy) })
			}
			return nil
		})
		const workers = 8
		var wg sync.WaitGroup
		var accepted atomic.Int64
		bad := make(chan string, workers)
		for w := range workers {
			wg.Go(func() {
				for i := 0; ; i++ {
					d, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: fmt.Sprintf("w%d-%d", w, i)})
					switch {
					case d == DecisionAccept && err == nil:
						accepted.Add(1)
					case d == DecisionUndecided && errors.Is(err, ErrClosed):
						return
					default:
						bad <- fmt.Sprintf("Propose = %v, %v", d, err)
						return
					}
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		requireDone(t, busy, "the first 50 applies")
		closed := make(chan struct{})
		go func() {
			assert.NoError(t, r.Close())
			close(closed)
		}()
		requireDone(t, closed, "Close")
		requireDone(t, done, "Propose calls in flight at Close")
		close(bad)
		for msg := range bad {
			t.Error(msg)
		}
		assert.LessOrEqual(t, accepted.Load(), applied.Load(), "an accepted frame was not applied")
	})

	t.Run("NilHandlerIgnored", func(t *testing.T) {
		r := newR(t)
		r.Subscribe(nil)
		log := newFrameLog()
		r.Subscribe(log.handle)
		r.Subscribe(nil)
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k"})
		require.Len(t, log.snapshot(), 1)
	})

	t.Run("HandlerMayPropose", func(t *testing.T) {
		// §3: a handler may call Propose on its own replicator (with the
		// context it received) without deadlocking. The caller's buffer
		// may be reused once Propose returns.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		childRes := make(chan error, 1)
		r.Subscribe(func(ctx context.Context, f Frame) error {
			if f.Key != "parent" {
				return nil
			}
			buf := []byte("child-value")
			d, err := r.Propose(ctx, Frame{OrgID: f.OrgID, Namespace: f.Namespace, Op: "put", Key: "child", Value: buf})
			copy(buf, "XXXXXXXXXXX") // reuse the buffer once Propose returned
			if err == nil && d != DecisionAccept {
				err = fmt.Errorf("decision %v", d)
			}
			childRes <- err
			return nil
		})
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "parent"})
		select {
		case err := <-childRes:
			require.NoError(t, err, "the handler's Propose")
		case <-time.After(contractWait):
			t.Fatal("the handler's Propose did not return")
		}
		child := log.waitForKey(t, "child")
		assert.Equal(t, "child-value", string(child.Value), "the handler saw a buffer mutated after Propose returned")
		parent := log.find("parent")
		require.Len(t, parent, 1)
		assert.Greater(t, child.Seq, parent[0].Seq, "the child is accepted after its parent")
		assert.Len(t, log.find("child"), 1, "applied exactly once")
	})

	t.Run("CallerMayReuseValue", func(t *testing.T) {
		// Mutating the Value after Propose returned does not change what a
		// handler saw, nor what is applied for later frames.
		r := newR(t)
		log := newFrameLog()
		r.Subscribe(log.handle)
		buf := []byte("aaaa")
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "1", Value: buf})
		copy(buf, "bbbb")
		requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "2", Value: buf})
		copy(buf, "cccc")
		got := log.snapshot()
		require.Len(t, got, 2)
		assert.Equal(t, "aaaa", string(got[0].Value))
		assert.Equal(t, "bbbb", string(got[1].Value))
	})

	t.Run("DecisionString", func(t *testing.T) {
		for d, want := range map[Decision]string{
			DecisionUndecided: "undecided",
			DecisionAccept:    "accept",
			DecisionReject:    "reject",
			DecisionTimeout:   "timeout",
			Decision(9):       "Decision(9)",
		} {
			assert.Equal(t, want, d.String())
		}
	})
}
