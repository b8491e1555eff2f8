package replication

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newTestQuasar(t *testing.T) *QuasarReplicator {
	t.Helper()
	hub := NewMemoryHub()
	r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: "solo", Transport: hub.Connect("solo")})
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		require.NoError(t, hub.Close())
	})
	return r
}

func TestQuasar_Contract(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		testReplicator(t, func(t *testing.T) Replicator { return newTestQuasar(t) })
	})
	t.Run("three", func(t *testing.T) {
		testReplicator(t, func(t *testing.T) Replicator {
			c := newTestCluster(t, 3, clusterOpts{})
			return c.nodes[0].r
		})
	})
}

// Issue 3: 1, 3, 5 and 7 validators; every node applies every frame.
func TestQuasar_ClusterSizes(t *testing.T) {
	for _, n := range []int{1, 3, 5, 7} {
		t.Run(fmt.Sprintf("validators=%d", n), func(t *testing.T) {
			c := newTestCluster(t, n, clusterOpts{})
			const perNode = 10
			var wg sync.WaitGroup
			for i := range c.nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := 0; k < perNode; k++ {
						d, err := c.propose(i, put(fmt.Sprintf("ns-%d", i), fmt.Sprint(k), "v"))
						assert.NoError(t, err)
						assert.Equal(t, DecisionAccept, d)
					}
				}()
			}
			wg.Wait()
			c.waitAllApplied(n*perNode, 10*time.Second)
			c.requireConverged()
			for _, node := range c.nodes {
				acc, rej, to := node.r.Stats()
				assert.Equal(t, [3]uint64{perNode, 0, 0}, [3]uint64{acc, rej, to}, node.id)
				assert.Zero(t, node.r.Metrics().Conflicts)
			}
		})
	}
}

// S4: two writers racing on one slot: exactly one wins, and the other is
// rejected, on every node.
func TestQuasar_ConflictingSlot(t *testing.T) {
	rejectedAsFrame := 0
	for round := 0; round < 20; round++ {
		c := newTestCluster(t, 3, clusterOpts{})
		a := Frame{OrgID: "org", Namespace: "lock", Seq: 1, Op: "put", Key: "owner", Value: []byte("a")}
		b := a
		b.Value = []byte("b")
		type res struct {
			d   Decision
			err error
		}
		// Delays let both proposals leave before either is decided.
		require.NoError(t, c.hub.SetFaults(MemoryFaults{Seed: int64(round), MinDelay: 2 * time.Millisecond, MaxDelay: 6 * time.Millisecond}))
		start := make(chan struct{})
		ra, rb := make(chan res, 1), make(chan res, 1)
		go func() { <-start; d, err := c.propose(0, a); ra <- res{d, err} }()
		go func() { <-start; d, err := c.propose(1, b); rb <- res{d, err} }()
		close(start)
		x, y := <-ra, <-rb
		accepted, loser := 0, -1
		for i, r := range []res{x, y} {
			switch r.d {
			case DecisionAccept:
				accepted++
				require.NoError(t, r.err)
			case DecisionReject:
				loser = i
				require.ErrorIs(t, r.err, ErrRejected)
			default:
				t.Fatalf("round %d: unexpected decision %v (%v)", round, r.d, r.err)
			}
		}
		// Every validator is up: the third breaks the tie, so one wins.
		require.Equal(t, 1, accepted, "round %d: %v / %v", round, x, y)
		c.waitAllApplied(1, 5*time.Second)
		c.requireConverged()
		// The loser was refused before it was sent (its node had already
		// accepted the winner) or it was rejected by cancel votes: then
		// every node learns them and rejects it too.
		want := c.nodes[loser].r.Metrics().FramesRejected
		for _, n := range c.nodes {
			require.Eventually(t, func() bool { return n.r.Metrics().FramesRejected == want }, 5*time.Second, time.Millisecond,
				"round %d: %s rejected %d frames, want %d", round, n.id, n.r.Metrics().FramesRejected, want)
		}
		rejectedAsFrame += int(want)
		c.close()
	}
	t.Logf("%d of 20 losers were rejected by cancel votes, the others before they were sent", rejectedAsFrame)
	require.Positive(t, rejectedAsFrame, "no race was close enough to send both frames")
}

func TestQuasar_ConfigErrors(t *testing.T) {
	hub := NewMemoryHub()
	defer hub.Close()
	tr := hub.Connect("a")
	cases := []struct {
		name string
		cfg  QuasarConfig
	}{
		{"empty NodeID", QuasarConfig{Transport: tr, Validators: []string{"a"}}},
		{"nil Transport", QuasarConfig{NodeID: "a", Validators: []string{"a"}}},
		{"NodeID not a validator", QuasarConfig{NodeID: "x", Transport: tr, Validators: []string{"a", "b"}}},
		{"duplicate validators", QuasarConfig{NodeID: "a", Transport: tr, Validators: []string{"a", "b", "a"}}},
		{"quorum not a majority", QuasarConfig{NodeID: "a", Transport: tr, Validators: []string{"a", "b", "c", "d"}, Quorum: 2}},
		{"quorum above n", QuasarConfig{NodeID: "a", Transport: tr, Validators: []string{"a", "b", "c"}, Quorum: 4}},
		{"negative wait", QuasarConfig{NodeID: "a", Transport: tr, Validators: []string{"a"}, ProposeWait: -1}},
		{"empty validator", QuasarConfig{NodeID: "a", Transport: tr, Validators: []string{"a", ""}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewQuasar(context.Background(), tc.cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.Nil(t, r)
			require.ErrorIs(t, tc.cfg.Validate(), ErrInvalidConfig)
		})
	}
}

// MaxFrameBytes counts raw bytes: an 800,000-byte value is well within the
// default MiB (its JSON form, base64, would be above it), and one byte over
// the limit is refused.
func TestQuasar_LimitCountsRawBytes(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	big := Frame{OrgID: "o", Namespace: "big", Op: "put", Key: "k", Value: make([]byte, 800_000)}
	c.requireAccept(0, big)
	// Node 2 proposes next in the same namespace: it must know the first
	// frame was accepted, or its frame would compete for the same position.
	c.waitAllApplied(1, 10*time.Second)
	over := Frame{OrgID: "o", Namespace: "big", Op: "put", Key: "k", Value: make([]byte, DefaultMaxFrameBytes-len("obigputk")+1)}
	d, err := c.propose(1, over)
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrTooLarge)
	exact := over
	exact.Value = exact.Value[1:]
	c.requireAccept(2, exact)
	c.waitAllApplied(2, 10*time.Second)
	c.requireConverged()
}

func TestQuasar_TooLarge(t *testing.T) {
	r := newTestQuasar(t)
	var applied int
	r.Subscribe(func(context.Context, Frame) error { applied++; return nil })
	d, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k", Value: make([]byte, DefaultMaxFrameBytes)})
	require.Equal(t, DecisionReject, d)
	require.ErrorIs(t, err, ErrRejected)
	require.ErrorIs(t, err, ErrTooLarge)
	require.Zero(t, applied)
}

func TestQuasar_ApplyErrorOnProposer(t *testing.T) {
	r := newTestQuasar(t)
	boom := errors.New("disk full")
	r.Subscribe(func(context.Context, Frame) error { return boom })
	d, err := r.Propose(context.Background(), put("n", "k", "v"))
	require.Equal(t, DecisionAccept, d)
	require.ErrorIs(t, err, ErrApply)
	require.ErrorIs(t, err, boom)
	require.EqualValues(t, 1, r.Metrics().ApplyErrors)
}

// Liveness: a minority side of a partition accepts nothing and its
// proposals time out, while the majority keeps accepting.
func TestQuasar_MinorityPartitionTimesOut(t *testing.T) {
	c := newTestCluster(t, 5, clusterOpts{proposeWait: 300 * time.Millisecond})
	c.hub.Partition([]string{"node-0", "node-1"}, []string{"node-2", "node-3", "node-4"})
	d, err := c.propose(0, put("minority", "k", "v"))
	require.Equal(t, DecisionTimeout, d)
	require.ErrorIs(t, err, ErrTimeout)
	for i := 0; i < 5; i++ {
		c.requireAccept(2+i%3, put(fmt.Sprintf("majority-%d", i%3), fmt.Sprint(i), "v"))
	}
	require.Zero(t, c.nodes[0].kv.count(), "the minority applied a frame")
	require.Zero(t, c.nodes[1].kv.count(), "the minority applied a frame")
	_, _, timeouts := c.nodes[0].r.Stats()
	require.EqualValues(t, 1, timeouts)

	// After healing, the minority catches up and every replica converges.
	// (The minority's own frame may still be decided either way.)
	c.hub.Heal()
	c.waitAllApplied(5, 10*time.Second)
	require.Eventually(t, func() bool {
		n := c.nodes[2].kv.count()
		for _, node := range c.nodes {
			if node.kv.count() != n {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
	c.requireConverged()
}

// A crashed (disconnected) validator does not stop a majority.
func TestQuasar_CrashedValidatorDoesNotStopMajority(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	c.hub.Disconnect("node-2")
	for i := 0; i < 20; i++ {
		c.requireAccept(i%2, put(fmt.Sprintf("ns-%d", i%2), fmt.Sprint(i), "v"))
	}
	c.waitAllApplied(20, 5*time.Second, 0, 1)
	require.Zero(t, c.nodes[2].kv.count())
	c.hub.Reconnect("node-2")
	c.waitAllApplied(20, 10*time.Second)
	c.requireConverged()
}

// S3 repair: a proposal whose messages were all lost is re-sent every
// WitnessAfter and decided within ProposeWait once the network is back.
func TestQuasar_DroppedProposalIsRepaired(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: 5 * time.Second, witnessAfter: 20 * time.Millisecond})
	c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"})
	res := make(chan error, 1)
	go func() {
		d, err := c.propose(0, put("ns", "k", "v"))
		if err == nil && d != DecisionAccept {
			err = fmt.Errorf("decision %v", d)
		}
		res <- err
	}()
	// Heal once the proposer has re-sent at least twice into the void.
	require.Eventually(t, func() bool { return c.nodes[0].r.Metrics().Resent >= 2 }, 5*time.Second, 5*time.Millisecond)
	c.hub.Heal()
	select {
	case err := <-res:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("repaired proposal not decided")
	}
	c.waitAllApplied(1, 5*time.Second)
	c.requireConverged()
}

// S3 catch-up and S5: a node disconnected while 100 frames were accepted
// applies all of them, in proposer order, soon after it reconnects.
func TestQuasar_DisconnectedNodeCatchesUpInProposerOrder(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	c.hub.Disconnect("node-2")
	var want []string
	for i := 0; i < 100; i++ {
		f := put(fmt.Sprintf("ns-%d", i%4), fmt.Sprint(i), fmt.Sprint(i))
		c.requireAccept(0, f)
		want = append(want, f.Namespace+"/"+f.Key)
	}
	c.hub.Reconnect("node-2")
	c.waitAllApplied(100, 10*time.Second)
	_, applied := c.nodes[2].kv.snapshot()
	var got []string
	for _, f := range applied {
		got = append(got, f.Namespace+"/"+f.Key)
	}
	require.Equal(t, want, got, "node-2 applied the frames out of proposer order")
	c.requireConverged()
	require.Positive(t, c.nodes[2].r.Metrics().Certificates)
}

// A node that fell further behind than the retention window is told so,
// and can resume after restoring a snapshot.
func TestQuasar_FellBehindRetentionWindow(t *testing.T) {
	behind := make(chan error, 4)
	c := newTestCluster(t, 3, clusterOpts{
		retainFrames: 10,
		onBehind: func(node int, err error) {
			if node == 2 {
				behind <- err
			}
		},
	})
	c.hub.Disconnect("node-2")
	for i := 0; i < 50; i++ {
		c.requireAccept(0, put("ns", fmt.Sprint(i), "v"))
	}
	// Retention is enforced periodically: reconnect once the window moved.
	require.Eventually(t, func() bool {
		return c.nodes[0].r.Metrics().Retained <= 10 && c.nodes[1].r.Metrics().Retained <= 10
	}, 5*time.Second, time.Millisecond)
	c.hub.Reconnect("node-2")
	var err error
	select {
	case err = <-behind:
	case <-time.After(10 * time.Second):
		t.Fatal("the lagging node was never told it fell behind")
	}
	require.ErrorIs(t, err, ErrBehind)
	var be *BehindError
	require.ErrorAs(t, err, &be)
	require.Equal(t, "ns", be.Namespace)
	require.EqualValues(t, 0, be.From)
	require.EqualValues(t, 1, c.nodes[2].r.Metrics().Behind)
	// Until it restores, node-2's Propose there fails at once, saying why.
	d, err := c.propose(2, put("ns", "while-behind", "v"))
	require.ErrorIs(t, err, ErrBehind)
	require.ErrorIs(t, err, ErrRejected)
	require.Equal(t, DecisionReject, d)

	// Restore node-2 from node-0's state, then replication resumes.
	data, log := c.nodes[0].kv.snapshot()
	c.nodes[2].kv.mu.Lock()
	c.nodes[2].kv.data = data
	c.nodes[2].kv.mu.Unlock()
	c.nodes[2].r.ResetNamespace("org", "ns", log[len(log)-1].Seq)
	c.requireAccept(1, put("ns", "after-restore", "v"))
	require.Eventually(t, func() bool {
		return len(c.nodes[2].kv.find("ns", "after-restore")) == 1 &&
			len(c.nodes[0].kv.find("ns", "after-restore")) == 1
	}, 5*time.Second, 5*time.Millisecond)
	got, _ := c.nodes[2].kv.snapshot()
	want, _ := c.nodes[0].kv.snapshot()
	require.Equal(t, want, got)
}

// S2: only checked votes count. A voter that is not a validator, a vote
// claiming another validator as voter, a vote type out of range and a
// repeated vote never count; the real vote does.
func TestQuasar_ForgedAndDuplicateVotesNeverCount(t *testing.T) {
	hub := NewMemoryHub()
	t.Cleanup(func() { _ = hub.Close() })
	ids := []string{"node-0", "node-1", "node-2"}
	var rs []*QuasarReplicator
	for _, id := range ids[:2] {
		r, err := NewQuasar(context.Background(), QuasarConfig{
			NodeID: id, Validators: ids, Transport: hub.Connect(id), Quorum: 3,
			ProposeWait: 10 * time.Second, WitnessAfter: time.Hour,
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = r.Close() })
		rs = append(rs, r)
	}
	forger := hub.Connect("node-2")    // a validator's transport, driven by the test
	outsider := hub.Connect("mallory") // not a validator at all

	f := Frame{OrgID: "org", Namespace: "ns", Seq: 1, Op: "put", Key: "k", Value: []byte("v")}
	id := singleID(&proposal{frame: f, proposer: validatorNodeID("node-0")}) // node-0's proposal of f
	res := make(chan Decision, 1)
	go func() { d, _ := rs[0].Propose(context.Background(), f); res <- d }()
	require.Eventually(t, func() bool { return rs[0].Metrics().VotesReceived >= 1 }, 5*time.Second, time.Millisecond)

	sendCount := func(tr *MemoryTransport, voter string, count int, typ byte) {
		v := validatorNodeID(voter)
		msg := finishMessage(appendVoteRecord(newMessage(nil), &id, &v, count, []byte{typ}), 1)
		require.NoError(t, tr.Broadcast(context.Background(), quasarKind, msg))
	}
	send := func(tr *MemoryTransport, voter string, typ byte) { sendCount(tr, voter, 1, typ) }
	send(outsider, "mallory", voteCommit) // not a validator, not a validator's link
	send(forger, "mallory", voteCommit)   // unknown voter
	send(forger, "node-1", voteCommit)    // voter is not the sender
	send(forger, "node-2", 0)             // no vote on the frame
	send(forger, "node-2", 3)             // not a vote type
	sendCount(forger, "node-2", 2, 1)     // a commit on a block of two frames: not this block
	require.Eventually(t, func() bool {
		m := rs[0].Metrics()
		return m.UnknownSender >= 1 && m.VotesUnknownVoter >= 1 && m.VotesWrongSender >= 1 && m.VotesBadType >= 2
	}, 5*time.Second, time.Millisecond)
	select {
	case d := <-res:
		t.Fatalf("decided (%v) without node-2's real vote", d)
	default:
	}
	send(forger, "node-2", voteCommit)
	send(forger, "node-2", voteCommit) // a duplicate
	select {
	case d := <-res:
		require.Equal(t, DecisionAccept, d)
	case <-time.After(10 * time.Second):
		t.Fatal("the real vote did not decide the frame")
	}
	require.Eventually(t, func() bool { return rs[0].Metrics().VotesDuplicate >= 1 }, 5*time.Second, time.Millisecond)
	require.Zero(t, rs[0].Metrics().Conflicts)
}

// The outcomes table: a ctx deadline shorter than ProposeWait is reported as the ctx's
// error, not as ProposeWait elapsing.
func TestQuasar_CtxDeadlineIsTheCause(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"})
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		d, err := c.nodes[0].r.Propose(ctx, put(fmt.Sprintf("ns-%d", i), "k", "v"))
		cancel()
		require.Equal(t, DecisionTimeout, d)
		require.ErrorIs(t, err, ErrTimeout)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
}

// Stats counts every Propose that returned DecisionTimeout, including one
// whose ctx was done before the call.
func TestQuasar_StatsCountEveryTimeout(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := c.nodes[0].r.Propose(canceled, put("ns", "k", "v"))
	require.Equal(t, DecisionTimeout, d)
	require.ErrorIs(t, err, context.Canceled)
	c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	d, _ = c.nodes[0].r.Propose(ctx, put("ns", "k", "v"))
	require.Equal(t, DecisionTimeout, d)
	accepted, rejected, timeouts := c.nodes[0].r.Stats()
	require.Equal(t, [3]uint64{0, 0, 2}, [3]uint64{accepted, rejected, timeouts})
}

// A node proposing on a stale head (it missed the frame accepted at that
// position) is rejected as soon as it learns that frame, even when the
// validator whose vote would cancel it is down, instead of timing out.
func TestQuasar_StaleHeadRejectedNotStuck(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: 5 * time.Second})
	c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"})
	c.requireAccept(2, put("ns", "first", "c"))
	c.waitAllApplied(1, 5*time.Second, 1, 2)
	c.hub.Disconnect("node-2")
	c.hub.Heal()

	start := time.Now()
	d, err := c.propose(0, put("ns", "second", "a"))
	require.Equal(t, DecisionReject, d, "err: %v", err)
	require.ErrorIs(t, err, ErrRejected)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Positive(t, c.nodes[0].r.Metrics().Superseded)

	// A retry builds on the frame it learned, and is accepted.
	c.requireAccept(0, put("ns", "second", "a"))
	c.waitAllApplied(2, 5*time.Second, 0, 1)
	data, _ := c.nodes[0].kv.snapshot()
	require.Equal(t, "c", data["org/ns/first"])
}

// ResetNamespace drops frames of the namespace that are already queued for
// apply and covered by the restored snapshot.
func TestQuasar_ResetNamespaceSkipsQueuedFrames(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	release := make(chan struct{})
	blocked := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var seqs []uint64
	c.nodes[2].r.Subscribe(func(_ context.Context, f Frame) error {
		once.Do(func() { close(blocked); <-release })
		mu.Lock()
		seqs = append(seqs, f.Seq)
		mu.Unlock()
		return nil
	})
	for i := 0; i < 10; i++ {
		c.requireAccept(0, put("x", fmt.Sprint(i), "v"))
	}
	<-blocked
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().FramesAccepted == 10 }, 5*time.Second, time.Millisecond)
	c.nodes[2].r.ResetNamespace("org", "x", 10)
	close(release)
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().SkippedByReset == 9 }, 5*time.Second, time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uint64{1}, seqs, "frames covered by the snapshot were applied on top of it")
}

// A Propose applies the frames queued before its own, then returns: frames
// that keep arriving after it are applyLoop's, however many there are.
func TestQuasar_ProposeNotHeldByLaterFrames(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	startLoad := make(chan struct{})
	var once sync.Once
	c.nodes[0].r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Namespace == "mine" {
			once.Do(func() { close(startLoad) })
			time.Sleep(50 * time.Millisecond) // the load queues up meanwhile
		}
		time.Sleep(2 * time.Millisecond) // slower than the load arrives
		return nil
	})
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startLoad
			for !stop.Load() {
				_, _ = c.nodes[1].r.Propose(context.Background(), put(fmt.Sprintf("load-%d", g), "k", "v"))
			}
		}()
	}
	defer wg.Wait()
	defer stop.Store(true)

	done := make(chan Decision, 1)
	go func() {
		d, _ := c.nodes[0].r.Propose(context.Background(), put("mine", "k", "v"))
		done <- d
	}()
	select {
	case d := <-done:
		require.Equal(t, DecisionAccept, d)
	case <-time.After(contractWait):
		t.Fatalf("Propose still applying other frames after %s (%d pending)", contractWait, c.nodes[0].r.Metrics().PendingApply)
	}
}

// Close returns only once no handler runs, whichever goroutine runs it (the
// apply goroutine, or a proposer applying its own frame).
func TestQuasar_CloseWaitsForRunningHandler(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.nodes[0].r.Subscribe(func(context.Context, Frame) error {
		once.Do(func() { close(entered); <-release })
		return nil
	})
	go func() { _, _ = c.nodes[0].r.Propose(context.Background(), put("ns", "k", "v")) }()
	<-entered
	closed := make(chan struct{})
	go func() { _ = c.nodes[0].r.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	requireDone(t, closed, "Close after the handler returned")
}

// A node told it fell behind in a namespace, whose application does not
// restore it (yet), keeps receiving that namespace's proposals: it holds
// no more of them than are undecided, however many frames pass.
func TestQuasar_BehindNamespaceDoesNotAccumulate(t *testing.T) {
	behind := make(chan error, 16)
	c := newTestCluster(t, 3, clusterOpts{retainFrames: 16, retainFor: 300 * time.Millisecond,
		onBehind: func(node int, err error) {
			if node == 2 {
				select {
				case behind <- err:
				default:
				}
			}
		}})
	c.hub.Disconnect("node-2")
	for range 100 {
		c.requireAccept(0, put("a", "k", "v"))
	}
	require.Eventually(t, func() bool {
		return c.nodes[0].r.Metrics().Retained <= 16 && c.nodes[1].r.Metrics().Retained <= 16
	}, contractWait, time.Millisecond)
	c.hub.Reconnect("node-2")
	c.requireAccept(0, put("a", "k", "v"))
	select {
	case <-behind:
	case <-time.After(contractWait):
		t.Fatal("node-2 was never told it fell behind")
	}
	for range 4000 {
		c.requireAccept(0, put("a", "k", "v"))
	}
	r := c.nodes[2].r
	r.mu.Lock()
	held := len(r.c.spaces[spaceKey{"org", "a"}].deferred)
	r.mu.Unlock()
	require.LessOrEqual(t, held, 64, "deferred proposals held for the namespace node-2 is behind in")
}

// Once a namespace has seen Seq MaxUint64, no Seq is left to assign: a
// Propose with Seq 0 is rejected instead of wrapping to 0.
func TestQuasar_NoSeqLeft(t *testing.T) {
	for _, n := range []int{1, 3} {
		c := newTestCluster(t, n, clusterOpts{})
		last := put("ns", "k", "v")
		last.Seq = math.MaxUint64
		c.requireAccept(0, last)
		d, err := c.propose(0, put("ns", "k", "w"))
		require.Equal(t, DecisionReject, d)
		require.ErrorIs(t, err, ErrRejected)
		c.requireAccept(0, put("other", "k", "v")) // other namespaces are unaffected
	}
}

// A handler that panics on a proposer's goroutine: the panic reaches the
// caller, the frame counts as applied with an error, and the replicator
// stays usable (later frames apply, Close returns).
func TestQuasar_HandlerPanicLeavesReplicatorUsable(t *testing.T) {
	r := newTestQuasar(t)
	var calls atomic.Int32
	r.Subscribe(func(_ context.Context, f Frame) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		return nil
	})
	require.PanicsWithValue(t, "boom", func() { _, _ = r.Propose(context.Background(), put("ns", "k", "v")) })
	d, err := r.Propose(context.Background(), put("ns", "k", "w"))
	require.Equal(t, DecisionAccept, d)
	require.NoError(t, err)
	require.EqualValues(t, 1, r.Metrics().ApplyErrors)
	done := make(chan struct{})
	go func() { _ = r.Close(); close(done) }()
	requireDone(t, done, "Close after a handler panicked")
}

// A frame's JSON encoding (the Frame API's) turns every invalid UTF-8 byte
// into U+FFFD: frames whose strings differ only there would look alike to
// an application that stores them as JSON. Propose refuses them.
func TestQuasar_RefusesInvalidUTF8(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	for _, f := range []Frame{
		{OrgID: "org\xff", Namespace: "ns", Op: "put", Key: "k"},
		{OrgID: "org", Namespace: "ns\xfe", Op: "put", Key: "k"},
		{OrgID: "org", Namespace: "ns", Op: "put\xc0", Key: "k"},
		{OrgID: "org", Namespace: "ns", Op: "put", Key: "k\xff"},
	} {
		d, err := c.propose(0, f)
		require.Equal(t, DecisionReject, d, "%q", f)
		require.ErrorIs(t, err, ErrRejected)
	}
	c.requireAccept(0, put("ns", "k", "v"))
	c.waitAllApplied(1, 5*time.Second)
}

// stuckHandler subscribes to r a handler that blocks on every frame match
// accepts until release is called (at the latest when the test ends,
// before the cluster closes); entered is closed when the first one blocks.
func stuckHandler(t *testing.T, r *QuasarReplicator, match func(Frame) bool) (entered <-chan struct{}, release func()) {
	in, gate := make(chan struct{}), make(chan struct{})
	var once, releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(gate) }) }
	t.Cleanup(release) // runs before newTestCluster's Cleanup closes the nodes
	r.Subscribe(func(_ context.Context, f Frame) error {
		if match(f) {
			once.Do(func() { close(in) })
			<-gate
		}
		return nil
	})
	return in, release
}

// payloadSize is the size of f's JSON encoding with Seq seq: what it
// counts in the apply backlog.
func payloadSize(f Frame, seq uint64) int {
	f.Seq = seq
	return f.size()
}

// A node whose handler is stuck queues at most MaxApplyBacklog bytes of
// frames (plus the few it held undecided when it got there) instead of
// everything the others accept; the others keep accepting, and once its
// handler resumes it obtains every frame accepted meanwhile from its peers
// and applies them all, in order.
func TestQuasar_ApplyBacklogBounded(t *testing.T) {
	const frames, bound = 300, 20
	frame := func(i int) Frame { return put("x", fmt.Sprintf("k%03d", i), "v") }
	size := payloadSize(frame(0), frames) // the largest of the frames (Seq has the most digits)
	c := newTestCluster(t, 3, clusterOpts{maxBacklog: bound * size})
	entered, release := stuckHandler(t, c.nodes[2].r, func(Frame) bool { return true })

	for i := range frames {
		c.requireAccept(0, frame(i))
	}
	<-entered
	c.waitAllApplied(frames, 10*time.Second, 0, 1)
	m := c.nodes[2].r.Metrics()
	require.LessOrEqual(t, m.PendingApplyBytes, (bound+4)*size, "%+v", m)
	require.Positive(t, m.ProposalsShed, "%+v", m)
	require.Zero(t, m.Conflicts)
	// While it sheds, it asks for no frames: the answers would be shed.
	require.Never(t, func() bool { return c.nodes[2].r.Metrics().SyncRequests > m.SyncRequests },
		300*time.Millisecond, 10*time.Millisecond, "sync requested while backlogged (anti-entropy every 50ms)")

	release()
	c.waitAllApplied(frames, 10*time.Second, 2)
	c.requireConverged()
	require.Zero(t, c.nodes[2].r.Metrics().Behind, "the frames were retained by the peers")
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().PendingApplyBytes == 0 }, 5*time.Second, time.Millisecond)
}

// A node's own frames do not count toward MaxApplyBacklog while their
// Propose calls wait for them: however many wait for its handlers, they do
// not make it shed the others'.
func TestQuasar_ApplyBacklogSparesWaitedOwnFrames(t *testing.T) {
	const own = 10
	c := newTestCluster(t, 3, clusterOpts{maxBacklog: 4 * payloadSize(put("own-0", "k", "v"), 1)})
	_, release := stuckHandler(t, c.nodes[2].r, func(Frame) bool { return true })
	var proposers sync.WaitGroup
	for i := range own {
		proposers.Go(func() {
			d, err := c.propose(2, put(fmt.Sprintf("own-%d", i), "k", "v"))
			assert.NoError(t, err)
			assert.Equal(t, DecisionAccept, d)
		})
	}
	// Every own frame is accepted (node-2 and a peer) and waits for
	// node-2's stuck handler.
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().FramesAccepted == own }, 5*time.Second, time.Millisecond)
	require.Zero(t, c.nodes[2].r.Metrics().PendingApplyBytes)

	remote := 0 // bytes of node-0's frames
	for i := range 2 {
		f := put("remote", fmt.Sprint(i), "v")
		c.requireAccept(0, f)
		remote += payloadSize(f, uint64(i+1))
	}
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().FramesAccepted == own+2 }, 5*time.Second, time.Millisecond)
	m := c.nodes[2].r.Metrics()
	require.Zero(t, m.ProposalsShed, "%+v", m)
	require.Equal(t, remote, m.PendingApplyBytes, "%+v", m)

	release()
	proposers.Wait()
	c.waitAllApplied(own+2, 5*time.Second)
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().PendingApplyBytes == 0 }, 5*time.Second, time.Millisecond)
}

// A frame of this node counts toward MaxApplyBacklog once its Propose gave
// up waiting for it.
func TestQuasar_ApplyBacklogCountsAbandonedOwnFrames(t *testing.T) {
	const own = 5
	size := payloadSize(put("own-0", "k", "v"), 1) // every own-i frame has this size
	c := newTestCluster(t, 3, clusterOpts{})
	// node-2's applyLoop gets stuck applying a frame of node-0, so no
	// Propose call of node-2 can apply its own frame.
	entered, release := stuckHandler(t, c.nodes[2].r, func(f Frame) bool { return f.Namespace == "blocker" })
	c.requireAccept(0, put("blocker", "k", "v"))
	<-entered

	var proposers sync.WaitGroup
	for i := range own {
		proposers.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			d, err := c.nodes[2].r.Propose(ctx, put(fmt.Sprintf("own-%d", i), "k", "v"))
			assert.Equal(t, DecisionTimeout, d, "%v", err)
		})
	}
	proposers.Wait()
	// Every call gave up; their frames were accepted and wait, and count.
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().PendingApply == own }, 5*time.Second, time.Millisecond)
	require.Equal(t, own*size, c.nodes[2].r.Metrics().PendingApplyBytes)

	release()
	c.waitAllApplied(own+1, 5*time.Second)
	require.Eventually(t, func() bool { return c.nodes[2].r.Metrics().PendingApplyBytes == 0 }, 5*time.Second, time.Millisecond)
}

// MaxApplyBacklog: zero is the default, negative is no bound.
func TestQuasarConfig_MaxApplyBacklog(t *testing.T) {
	require.Equal(t, DefaultMaxApplyBacklog, QuasarConfig{}.withDefaults().MaxApplyBacklog)
	require.Equal(t, 5, QuasarConfig{MaxApplyBacklog: 5}.withDefaults().MaxApplyBacklog)
	require.Zero(t, QuasarConfig{MaxApplyBacklog: -1}.withDefaults().MaxApplyBacklog, "no bound")
	st := &core{cfg: coreConfig{maxBacklog: QuasarConfig{MaxApplyBacklog: -1}.withDefaults().MaxApplyBacklog}}
	st.applyLen = 1 << 40
	require.False(t, st.backlogged(), "negative means no bound")

	// Shedding starts at the bound and lasts until the backlog is down to
	// half of it.
	st = &core{cfg: coreConfig{maxBacklog: 100}}
	for _, step := range []struct {
		len  int
		shed bool
	}{{0, false}, {99, false}, {100, true}, {120, true}, {51, true}, {50, false}, {99, false}, {100, true}} {
		st.applyLen = step.len
		require.Equal(t, step.shed, st.backlogged(), "backlog %d after the steps before it", step.len)
	}
}
