package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// This file holds deterministic regression tests, each replaying a history
// that the chaos test or a review found once: a lone validator (node-0 of
// three) is handed the records node-1 and node-2 would send, in the order
// that broke an invariant. These concern retention, snapshots restored
// with ResetNamespace, and behind notices.

// TestChaos_ResetNamespaceSkipsQueuedFrames replays, deterministically, a
// history the chaos test's restore path can produce: frames of a namespace
// are queued for apply (the handler is busy) when a peer reports that the
// node fell behind there. OnBehind runs before the queued frames, the
// application restores a snapshot at the reported head and calls
// ResetNamespace; the queued frames are covered by the snapshot ("frames up
// to seq are considered applied") and must not be applied again (S3).
func TestChaos_ResetNamespaceSkipsQueuedFrames(t *testing.T) {
	var self atomic.Pointer[QuasarReplicator]
	resets := make(chan uint64, 4)
	r, ids := newLoneValidator(t, QuasarConfig{
		OnBehind: func(err error) {
			var be *BehindError
			if errors.As(err, &be) {
				// Restore a snapshot taken at the reported head.
				self.Load().ResetNamespace(be.OrgID, be.Namespace, be.From)
				resets <- be.From
			}
		},
	})
	self.Store(r)

	var mu sync.Mutex
	var applied []uint64
	started, release := make(chan struct{}), make(chan struct{})
	r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Seq == 1 {
			close(started)
			<-release // the handler is busy while more frames queue up
		}
		mu.Lock()
		applied = append(applied, f.Seq)
		mu.Unlock()
		return nil
	})

	// Frames 1..3 of org/ns arrive as certificates (commit votes of
	// node-1 and node-2): all accepted and queued for apply.
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	var recs []record
	for seq := uint64(1); seq <= 3; seq++ {
		f := Frame{OrgID: "org", Namespace: "ns", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		recs = append(recs, record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: voters.at(0)}, voters: voters})
	}
	require.NoError(t, r.receive(1, encodeMessage(recs)))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("frame 1 was never applied")
	}
	// While frame 1 is being applied, node-1 reports that node-0's sync
	// from head 3 asked for frames it no longer retains.
	behind := record{typ: recBehind, ref: nsRef{"org", "ns", 3}, who: validatorNodeID(ids[0])}
	require.NoError(t, r.receive(1, encodeMessage([]record{behind})))
	close(release)
	select {
	case from := <-resets:
		require.EqualValues(t, 3, from)
	case <-time.After(10 * time.Second):
		t.Fatal("OnBehind was never called")
	}
	// Frame 4 extends the restored head; once it is applied, frames 2 and 3
	// would have been applied before it (one apply goroutine, in order).
	f4 := Frame{OrgID: "org", Namespace: "ns", Seq: 4, Op: "put", Key: "k", Value: []byte("v4")}
	cert := record{typ: recCertificate, prop: proposal{frame: f4, prev: 3, proposer: voters.at(0)}, voters: voters}
	require.NoError(t, r.receive(1, encodeMessage([]record{cert})))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(applied, 4)
	}, 10*time.Second, time.Millisecond, "frame 4 was never applied after the reset")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uint64{1, 4}, applied,
		"frames 2 and 3 were applied after ResetNamespace(org, ns, 3) declared them applied (snapshot restored in OnBehind)")
}

// TestChaos_ForgottenFrameNeedsQuorumAgain replays, deterministically, the
// history behind the S2 violations TestChaos found (certificates naming one
// validator): a decided frame falls out of the retention window, the same
// frame arrives again (a proposer that has not learned the outcome re-sends
// it), and the driver adds its block again to the consensus engine, which
// still holds the votes of the first time. Here the frame was rejected
// (both peers cancelled it); re-added, it must not be accepted on the
// strength of this node's own commit counted twice (S1, S2). Fixed in the
// driver by giving such a block a fresh engine.
func TestChaos_ForgottenFrameNeedsQuorumAgain(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{
		WitnessAfter: 10 * time.Millisecond, RetainFrames: 1,
	})
	applied := make(chan Frame, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		f.Value = bytes.Clone(f.Value)
		applied <- f
		return nil
	})
	n1, n2 := validatorNodeID(ids[1]), validatorNodeID(ids[2])
	send := func(from int, recs ...record) {
		t.Helper()
		require.NoError(t, r.receive(from, encodeMessage(recs)))
	}
	waitApplied := func(want Frame) {
		t.Helper()
		select {
		case f := <-applied:
			require.Equal(t, want, f, "applied frames")
		case <-time.After(10 * time.Second):
			t.Fatalf("%+v was never applied", want)
		}
	}

	// node-1 proposes g; node-0 commits it, node-1 and node-2 cancel it:
	// g is rejected.
	g := Frame{OrgID: "org", Namespace: "lock", Seq: 1, Op: "put", Key: "owner", Value: []byte("g")}
	gp := proposal{frame: g, proposer: n1}
	pg := blockRecord(gp)
	gid := singleID(&gp)
	send(1, pg)
	send(1, record{typ: recVote, vote: oneVote(gid, n1, voteCancel)})
	send(2, record{typ: recVote, vote: oneVote(gid, n2, voteCancel)})
	require.EqualValues(t, 1, r.Metrics().FramesRejected)

	// Two frames of another namespace are accepted (certificates of
	// node-1 and node-2); with RetainFrames 1, g falls out of the window.
	for seq := uint64(1); seq <= 2; seq++ {
		f := Frame{OrgID: "org", Namespace: "other", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		send(1, record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: n1}, voters: nodes(n1, n2)})
		waitApplied(f)
	}
	require.Eventually(t, func() bool { return r.Metrics().Retained <= 1 }, 10*time.Second, time.Millisecond)

	// node-1 re-sends g (it has not learned that g was rejected).
	send(1, pg)
	m := r.Metrics()
	assert.EqualValues(t, 2, m.FramesAccepted, "a rejected frame was accepted after it was forgotten and re-sent (only node-0's own commit counts for it)")
	// Frames are applied in order: once a later frame is applied, g would
	// have been too.
	f3 := Frame{OrgID: "org", Namespace: "other", Seq: 3, Op: "put", Key: "k", Value: []byte("v3")}
	send(1, record{typ: recCertificate, prop: proposal{frame: f3, prev: 2, proposer: n1}, voters: nodes(n1, n2)})
	waitApplied(f3)
}

// TestChaos_ResetNamespaceBelowHeadKeepsReplicating replays the stall
// TestChaos found after restores: OnBehind reports the namespace behind at
// head h, the application fetches a snapshot, and meanwhile replication
// moves the namespace past the snapshot's Seq (another peer still had the
// frames). ResetNamespace then names a Seq below the driver's head. The
// namespace must keep replicating: the next accepted frame is applied.
func TestChaos_ResetNamespaceBelowHeadKeepsReplicating(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{})
	applied := make(chan uint64, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- f.Seq
		return nil
	})
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	certify := func(seq uint64) {
		t.Helper()
		f := Frame{OrgID: "org", Namespace: "ns", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		rec := record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: voters.at(0)}, voters: voters}
		require.NoError(t, r.receive(1, encodeMessage([]record{rec})))
	}
	next := func() uint64 {
		t.Helper()
		select {
		case seq := <-applied:
			return seq
		case <-time.After(5 * time.Second):
			t.Fatal("no frame applied within 5s: the namespace stalled")
			return 0
		}
	}
	for seq := uint64(1); seq <= 3; seq++ {
		certify(seq)
		require.Equal(t, seq, next())
	}
	// The application restored a snapshot taken at seq 2 (older than the
	// driver's head, 3).
	r.ResetNamespace("org", "ns", 2)
	certify(4)
	got := next()
	if got == 3 { // the driver may deliver frame 3 again, the snapshot lacks it
		got = next()
	}
	require.EqualValues(t, 4, got)
	// The backlog gauge counted the frame applied again as it counts any.
	require.Eventually(t, func() bool { return r.Metrics().PendingApplyBytes == 0 }, 5*time.Second, time.Millisecond)
}

// TestChaos_ProposerOrderAcrossRestoredNamespace replays the S5 violations
// TestChaos found after restores. node-1's Propose calls return in the order
// x (namespace a), e (namespace b), y (namespace c); each proposal names
// only the latest frame before it (e names x, y names e), relying on
// transitivity. node-0 missed x for now and is told it fell behind in b;
// it restores b from a snapshot that contains e and resets b. The driver
// then takes y's dependency on e as met and applies y, before x: S5 needs
// x first (x's Propose returned before y's began), e being applied here or
// not.
func TestChaos_ProposerOrderAcrossRestoredNamespace(t *testing.T) {
	t.Skip("known limitation, documented on ResetNamespace: proposer order across namespaces cannot be vouched for across a partial restore (y's link to x runs through e, which this node never received); kept to reproduce it")
	var self atomic.Pointer[QuasarReplicator]
	r, ids := newLoneValidator(t, QuasarConfig{
		OnBehind: func(err error) {
			var be *BehindError
			if errors.As(err, &be) && be.Namespace == "b" {
				self.Load().ResetNamespace("org", "b", 1) // snapshot of b holding e
			}
		},
	})
	self.Store(r)
	applied := make(chan string, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- f.Namespace
		return nil
	})
	n0, n1, n2 := validatorNodeID(ids[0]), validatorNodeID(ids[1]), validatorNodeID(ids[2])
	frame := func(ns string) Frame {
		return Frame{OrgID: "org", Namespace: ns, Seq: 1, Op: "put", Key: "k", Value: []byte(ns)}
	}
	certificate := func(f Frame, after ...nsRef) record {
		return record{typ: recCertificate, prop: proposal{frame: f, after: refs(after...), proposer: n1}, voters: nodes(n1, n2)}
	}
	x := certificate(frame("a"))
	y := certificate(frame("c"), nsRef{"org", "b", 1}) // e = b/1 names a/1
	// node-0's sync of b from 0 is answered: no longer retained.
	behind := record{typ: recBehind, ref: nsRef{"org", "b", 0}, who: n0}
	require.NoError(t, r.receive(1, encodeMessage([]record{behind})))
	require.NoError(t, r.receive(1, encodeMessage([]record{y})))
	require.NoError(t, r.receive(1, encodeMessage([]record{x})))
	order := receiveN(t, applied, 2)
	require.Equal(t, []string{"a", "c"}, order, "S5: y (namespace c) applied before x (namespace a), whose Propose returned before y's began")
}

// TestChaos_ResetNamespaceBelowHeadDropsCoveredPending replays the double
// applies TestChaos found after restores (S3): frames of a namespace are
// linked but wait for a frame of another namespace that their proposer
// ordered first (pending), and the application resets the namespace to a
// snapshot below the driver's head that contains some of them. Those must
// not be applied on top of the snapshot when their dependency arrives.
func TestChaos_ResetNamespaceBelowHeadDropsCoveredPending(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{})
	applied := make(chan string, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- fmt.Sprintf("%s/%d", f.Namespace, f.Seq)
		return nil
	})
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	certify := func(ns string, seq uint64, after ...nsRef) {
		t.Helper()
		f := Frame{OrgID: "org", Namespace: ns, Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "%s%d", ns, seq)}
		rec := record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, after: refs(after...), proposer: voters.at(0)}, voters: voters}
		require.NoError(t, r.receive(1, encodeMessage([]record{rec})))
	}
	// a/1 and a/2 are accepted and linked (head 2), but a/1 waits for z/1.
	certify("a", 1, nsRef{"org", "z", 1})
	certify("a", 2)
	require.Equal(t, 2, r.Metrics().PendingApply)
	// The application restores a snapshot of a taken at seq 1.
	r.ResetNamespace("org", "a", 1)
	certify("z", 1)
	got := receiveN(t, applied, 2)
	// Order between z/1 and a/2 is not checked: a/2's link to z/1 ran
	// through a/1, which the snapshot covers (the S5 limit documented on
	// ResetNamespace).
	require.ElementsMatch(t, []string{"z/1", "a/2"}, got, "a/1 is in the snapshot the namespace was reset to: applying it again breaks S3")
	select {
	case s := <-applied:
		t.Fatalf("%s applied after the reset: it is covered by the snapshot (S3)", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestChaos_ForgottenCancelStaysCancel replays the S1 violation TestChaos
// found with a small retention window (seed 7735554100816131037: a frame
// whose Propose returned Reject, 3 of 5 validators having cancelled it,
// then applied on every node). A validator cancels frame e (it committed
// x at the same position), x is rejected (the position is free again), the
// validator forgets e and, after enough other frames, its remembered vote
// on e too, while its head stays below e's position. When e comes back
// (re-sent by a node that still holds it), the validator must not commit
// it: it cancelled e before, and a commit now lets e reach a quorum of
// commits although a quorum of cancels rejected it elsewhere.
func TestChaos_ForgottenCancelStaysCancel(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{
		WitnessAfter: 10 * time.Millisecond, RetainFrames: 1,
	})
	applied := make(chan string, 64)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- fmt.Sprintf("%s/%d/%s", f.Namespace, f.Seq, f.Value)
		return nil
	})
	n1, n2 := validatorNodeID(ids[1]), validatorNodeID(ids[2])
	send := func(from int, recs ...record) {
		t.Helper()
		require.NoError(t, r.receive(from, encodeMessage(recs)))
	}
	proposals := map[string]proposal{} // by value: the last proposal of each frame
	propRec := func(f Frame, prev uint64, proposer nodeID) record {
		p := proposal{frame: f, prev: prev, proposer: proposer}
		proposals[string(f.Value)] = p
		return blockRecord(p)
	}
	voteRec := func(f Frame, voter nodeID, typ byte) record { // for f's last proposal
		p := proposals[string(f.Value)]
		return record{typ: recVote, vote: oneVote(singleID(&p), voter, typ)}
	}
	x := Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("x")}
	e := Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("e")}

	send(1, propRec(x, 0, n1))                             // node-0 commits x
	send(2, propRec(e, 0, n2), voteRec(e, n2, voteCommit)) // node-0 cancels e
	send(1, voteRec(e, n1, voteCancel))                    // e: 2 cancels, rejected
	send(1, voteRec(x, n1, voteCancel))
	send(2, voteRec(x, n2, voteCancel)) // x rejected: position 0 of s is free
	require.EqualValues(t, 2, r.Metrics().FramesRejected)

	// Frames of another namespace, each voted on by node-0, push e and x
	// out of the retention window and their votes out of its memory.
	for seq := uint64(1); seq <= 12; seq++ {
		o := Frame{OrgID: "org", Namespace: "o", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "o%d", seq)}
		send(1, propRec(o, seq-1, n1), voteRec(o, n1, voteCommit))
		select {
		case got := <-applied:
			require.Equal(t, fmt.Sprintf("o/%d/o%d", seq, seq), got)
		case <-time.After(5 * time.Second):
			t.Fatalf("o/%d was never applied", seq)
		}
		// Let retention run before the next one (tick: WitnessAfter/2).
		require.Eventually(t, func() bool { return r.Metrics().Retained <= 1 }, 5*time.Second, time.Millisecond)
	}

	// e comes back, with node-2's commit (it proposed e).
	send(2, propRec(e, 0, n2), voteRec(e, n2, voteCommit))
	o := Frame{OrgID: "org", Namespace: "o", Seq: 13, Op: "put", Key: "k", Value: []byte("o13")}
	send(1, propRec(o, 12, n1), voteRec(o, n1, voteCommit))
	for {
		select {
		case got := <-applied:
			require.NotEqual(t, "s/1/e", got, "S1: e was applied (node-0 cancelled it, then committed it after forgetting)")
			if got == "o/13/o13" {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("o/13 was never applied")
		}
	}
}

// positionHarness is a lone validator (node-0 of three) fed records by the
// test, which plays node-1 and node-2.
