package replication

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLocal_Contract runs the shared Replicator contract (replicator_test.go)
// against LocalReplicator.
func TestLocal_Contract(t *testing.T) {
	testReplicator(t, func(t *testing.T) Replicator {
		r := NewLocal()
		t.Cleanup(func() { _ = r.Close() })
		return r
	})
}

// newTestLocal returns a LocalReplicator closed at the end of the test.
func newTestLocal(t *testing.T) *LocalReplicator {
	t.Helper()
	r := NewLocal()
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// requireQueued waits until n Propose calls wait for their turn on r. It
// reads internal state, so the test knows the calls are queued rather than
// hoping a sleep was long enough.
func requireQueued(t *testing.T, r *LocalReplicator, n int) {
	t.Helper()
	deadline := time.Now().Add(contractWait)
	for {
		r.mu.Lock()
		queued := len(r.wq) - r.wqHead
		r.mu.Unlock()
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued after %s, want %d", queued, contractWait, n)
		}
		runtime.Gosched()
	}
}

// proposeAsync runs Propose on a goroutine and returns its result channel.
func proposeAsync(ctx context.Context, r Replicator, f Frame) <-chan proposeResult {
	ch := make(chan proposeResult, 1)
	go func() {
		d, err := r.Propose(ctx, f)
		ch <- proposeResult{d, err}
	}()
	return ch
}

type proposeResult struct {
	d   Decision
	err error
}

func requireResult(t *testing.T, ch <-chan proposeResult) proposeResult {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(contractWait):
		t.Fatalf("Propose did not return within %s", contractWait)
		return proposeResult{}
	}
}

func TestLocal_SizeLimit(t *testing.T) {
	// §3: a frame larger than the configured limit is rejected with
	// ErrRejected and ErrTooLarge; no handler runs.
	r := newTestLocal(t)
	log := newFrameLog()
	r.Subscribe(log.handle)
	small := Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "small", Value: []byte("x")}
	big := Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "big", Value: make([]byte, 200)}

	requireAccept(t, r, big) // no limit by default

	r.SetMaxFrameBytes(100)
	d, err := r.Propose(context.Background(), big)
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrRejected)
	require.ErrorIs(t, err, ErrTooLarge)
	requireAccept(t, r, small)

	// The limit is the JSON size, Seq as proposed (0 here) included.
	exact := Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "exact"}
	r.SetMaxFrameBytes(exact.size())
	requireAccept(t, r, exact)
	r.SetMaxFrameBytes(exact.size() - 1)
	d, err = r.Propose(context.Background(), exact)
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrTooLarge)

	r.SetMaxFrameBytes(0)
	requireAccept(t, r, big)

	assert.Len(t, log.find("big"), 2)
	assert.Len(t, log.find("exact"), 1)
	acc, rej := r.Stats()
	assert.Equal(t, uint64(4), acc)
	assert.Equal(t, uint64(2), rej)
}

func TestLocal_HandlerErrorRejects(t *testing.T) {
	// §3 (Local): a handler error rejects the frame; err wraps both
	// ErrRejected and the handler's error; later handlers are not called;
	// the rejected frame does not consume its Seq.
	r := newTestLocal(t)
	errApply := errors.New("disk full")
	var calls []string
	r.Subscribe(func(_ context.Context, f Frame) error {
		calls = append(calls, "1:"+f.Key)
		return nil
	})
	r.Subscribe(func(_ context.Context, f Frame) error {
		calls = append(calls, "2:"+f.Key)
		if f.Key == "bad" {
			return errApply
		}
		return nil
	})
	log := newFrameLog()
	r.Subscribe(log.handle)

	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "ok"})
	d, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "bad"})
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrRejected)
	require.ErrorIs(t, err, errApply)
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "after"})

	assert.Equal(t, []string{"1:ok", "2:ok", "1:bad", "2:bad", "1:after", "2:after"}, calls)
	got := log.snapshot()
	require.Len(t, got, 2, "the third handler must not see the rejected frame")
	assert.Equal(t, uint64(1), got[0].Seq)
	assert.Equal(t, uint64(2), got[1].Seq, "the rejected frame's seq is given to the next frame")

	// An explicit Seq rejected by a handler can be proposed again.
	d, err = r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Seq: 9, Op: "put", Key: "bad"})
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, errApply)
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Seq: 9, Op: "put", Key: "nine"})

	// A namespace whose only frame was rejected leaves no state behind.
	_, err = r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "fresh", Op: "put", Key: "bad"})
	require.ErrorIs(t, err, errApply)
	r.mu.Lock()
	_, kept := r.seqs[localKey{"o", "fresh"}]
	r.mu.Unlock()
	assert.False(t, kept, "state kept for a namespace with no accepted frame")

	acc, rej := r.Stats()
	assert.Equal(t, uint64(3), acc)
	assert.Equal(t, uint64(3), rej)
}

func TestLocal_StaleSeqMessage(t *testing.T) {
	r := newTestLocal(t)
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Seq: 3, Op: "put", Key: "k"})
	d, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Seq: 3, Op: "put", Key: "k"})
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrRejected)
	assert.Contains(t, err.Error(), "is taken")
	_, rej := r.Stats()
	assert.Equal(t, uint64(1), rej)
}

func TestLocal_CtxEndsWhileWaiting(t *testing.T) {
	// A caller whose ctx ends while it waits for its turn gets Timeout,
	// and its frame is never applied.
	r := newTestLocal(t)
	log := newFrameLog()
	entered, release := make(chan struct{}), make(chan struct{})
	r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Key == "slow" {
			close(entered)
			<-release
		}
		return nil
	})
	r.Subscribe(log.handle)

	slow := proposeAsync(context.Background(), r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "slow"})
	requireDone(t, entered, "the slow handler")
	ctx, cancel := context.WithCancel(context.Background())
	waiting := proposeAsync(ctx, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "gave-up"})
	requireQueued(t, r, 1)
	cancel()
	res := requireResult(t, waiting)
	require.Equal(t, DecisionTimeout, res.d)
	require.ErrorIs(t, res.err, ErrTimeout)
	require.ErrorIs(t, res.err, context.Canceled)

	close(release)
	res = requireResult(t, slow)
	require.NoError(t, res.err)
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "next"})
	assert.Empty(t, log.find("gave-up"))
	next := log.find("next")
	require.Len(t, next, 1)
	assert.Equal(t, uint64(2), next[0].Seq, "the abandoned frame took no seq")
}

func TestLocal_CloseFailsWaitersAndWaitsForHandler(t *testing.T) {
	// §3: Close fails calls waiting their turn with ErrClosed, promptly,
	// cancels the handlers' context, and returns after the running
	// handler returned.
	r := NewLocal()
	entered, release := make(chan struct{}), make(chan struct{})
	var sawCancel atomic.Bool
	log := newFrameLog()
	r.Subscribe(func(ctx context.Context, f Frame) error {
		if f.Key == "slow" {
			close(entered)
			<-ctx.Done()
			sawCancel.Store(true)
			<-release
		}
		return nil
	})
	r.Subscribe(log.handle)

	slow := proposeAsync(context.Background(), r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "slow"})
	requireDone(t, entered, "the slow handler")
	var waiters []<-chan proposeResult
	for i := range 3 {
		waiters = append(waiters, proposeAsync(context.Background(), r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: fmt.Sprint("w", i)}))
	}
	requireQueued(t, r, 3)

	closed := make(chan struct{})
	go func() {
		assert.NoError(t, r.Close())
		close(closed)
	}()
	for _, w := range waiters {
		res := requireResult(t, w)
		require.Equal(t, DecisionUndecided, res.d)
		require.ErrorIs(t, res.err, ErrClosed)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	default:
	}
	close(release)
	requireDone(t, closed, "Close")
	assert.True(t, sawCancel.Load(), "the handler context was not cancelled")
	res := requireResult(t, slow)
	require.Equal(t, DecisionAccept, res.d, "the frame being applied completes")
	require.NoError(t, res.err)
	require.Len(t, log.snapshot(), 1, "queued frames must not be applied")
	require.NoError(t, r.Close())
}

func TestLocal_ReentrantAppliedRightAfter(t *testing.T) {
	// A handler's Propose is decided at once and applied right after the
	// frame whose handler is running, before callers already waiting.
	r := newTestLocal(t)
	log := newFrameLog()
	entered, release := make(chan struct{}), make(chan struct{})
	r.Subscribe(func(ctx context.Context, f Frame) error {
		if f.Key != "parent" {
			return nil
		}
		close(entered)
		<-release
		for _, k := range []string{"child1", "child2"} {
			d, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: k})
			if d != DecisionAccept || err != nil {
				return fmt.Errorf("child Propose = %v, %v", d, err)
			}
		}
		// A stale explicit Seq is rejected at once, like any other.
		d, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Seq: 1, Op: "put", Key: "stale"})
		if d != DecisionReject || !errors.Is(err, ErrRejected) {
			return fmt.Errorf("stale child Propose = %v, %v", d, err)
		}
		return nil
	})
	r.Subscribe(log.handle)

	parent := proposeAsync(context.Background(), r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "parent"})
	requireDone(t, entered, "the parent's handler")
	waiter := proposeAsync(context.Background(), r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "waiter"})
	requireQueued(t, r, 1)
	close(release)
	for _, ch := range []<-chan proposeResult{parent, waiter} {
		res := requireResult(t, ch)
		require.NoError(t, res.err)
		require.Equal(t, DecisionAccept, res.d)
	}
	var keys []string
	var seqs []uint64
	for _, f := range log.snapshot() {
		keys = append(keys, f.Key)
		seqs = append(seqs, f.Seq)
	}
	assert.Equal(t, []string{"parent", "child1", "child2", "waiter"}, keys)
	assert.Equal(t, []uint64{1, 2, 3, 4}, seqs)
	acc, rej := r.Stats()
	assert.Equal(t, uint64(4), acc)
	assert.Equal(t, uint64(1), rej)
}

func TestLocal_ReentrantApplyErrorReported(t *testing.T) {
	// A handler failing on a frame that was already decided does not undo
	// the decision; the failure goes to OnApplyError, wrapped in ErrApply.
	r := newTestLocal(t)
	errBoom := errors.New("boom")
	type failure struct {
		f   Frame
		err error
	}
	failures := make(chan failure, 1)
	r.OnApplyError(func(f Frame, err error) { failures <- failure{f, err} })
	r.Subscribe(func(ctx context.Context, f Frame) error {
		switch f.Key {
		case "parent":
			_, err := r.Propose(ctx, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "child"})
			return err
		case "child":
			return errBoom
		}
		return nil
	})
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "parent"})
	select {
	case got := <-failures:
		assert.Equal(t, "child", got.f.Key)
		assert.ErrorIs(t, got.err, ErrApply)
		assert.ErrorIs(t, got.err, errBoom)
	case <-time.After(contractWait):
		t.Fatal("OnApplyError not called")
	}
	acc, rej := r.Stats()
	assert.Equal(t, uint64(2), acc)
	assert.Zero(t, rej)
}

func TestLocal_HandlerPanicLeavesReplicatorUsable(t *testing.T) {
	r := newTestLocal(t)
	log := newFrameLog()
	r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Key == "panic" {
			panic("handler bug")
		}
		return nil
	})
	r.Subscribe(log.handle)
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "a"})
	require.PanicsWithValue(t, "handler bug", func() {
		_, _ = r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "panic"})
	})
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "b"})
	got := log.snapshot()
	require.Len(t, got, 2)
	assert.Equal(t, uint64(2), got[1].Seq, "the panicking frame's seq is not consumed")
}

func TestLocal_ManyCallersHandOff(t *testing.T) {
	// More waiting callers than one applier combines (maxCombine): every
	// frame is applied exactly once, seqs are contiguous, nobody hangs.
	r := newTestLocal(t)
	var applied []uint64 // handlers never run concurrently
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied = append(applied, f.Seq)
		runtime.Gosched() // let callers pile up behind the applier
		return nil
	})
	const workers, each = 16, 40
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				d, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k"})
				assert.NoError(t, err)
				assert.Equal(t, DecisionAccept, d)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	requireDone(t, done, "proposals")
	require.Len(t, applied, workers*each)
	for i, s := range applied {
		require.Equal(t, uint64(i+1), s)
	}
	acc, rej := r.Stats()
	assert.Equal(t, uint64(workers*each), acc)
	assert.Zero(t, rej)
}

func TestLocal_SubscribeConcurrentWithPropose(t *testing.T) {
	// Subscribe is safe with Propose; a handler added while frames flow
	// sees every frame accepted after Subscribe returned.
	r := newTestLocal(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k"})
			assert.NoError(t, err)
		}
	})
	logs := make([]*frameLog, 5)
	for i := range logs {
		logs[i] = newFrameLog()
		r.Subscribe(logs[i].handle)
		r.Subscribe(func(ctx context.Context, f Frame) error { return nil })
	}
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "last"})
	close(stop)
	wg.Wait()
	for _, l := range logs {
		assert.Len(t, l.find("last"), 1)
	}
}

func TestLocal_StatsFromHandler(t *testing.T) {
	r := newTestLocal(t)
	var seen uint64
	r.Subscribe(func(context.Context, Frame) error {
		seen, _ = r.Stats() // must not deadlock
		return nil
	})
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "a"})
	requireAccept(t, r, Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "b"})
	assert.Equal(t, uint64(1), seen, "counted after the handlers ran")
}
