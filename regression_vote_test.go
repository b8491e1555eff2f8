package replication

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file holds deterministic regression tests of the voting rule (S4)
// and of how votes count (S1, S2): a lone validator (node-0 of three) is
// handed the records node-1 and node-2 would send, in an order that broke
// an invariant once.

type positionHarness struct {
	t       *testing.T
	r       *QuasarReplicator
	n1, n2  nodeID
	applied chan string
	// proposers: who proposed each frame (by value), for the block IDs of
	// votes; node-1 unless proposal said otherwise.
	proposers map[string]nodeID
}

func newPositionHarness(t *testing.T, cfg QuasarConfig) *positionHarness {
	r, ids := newLoneValidator(t, cfg)
	h := &positionHarness{t: t, r: r, n1: validatorNodeID(ids[1]), n2: validatorNodeID(ids[2]), applied: make(chan string, 64),
		proposers: map[string]nodeID{}}
	r.Subscribe(func(_ context.Context, f Frame) error {
		h.applied <- fmt.Sprintf("%s/%d", f.Value, f.Seq)
		return nil
	})
	return h
}

func (h *positionHarness) send(from int, recs ...record) {
	h.t.Helper()
	require.NoError(h.t, h.r.receive(from, encodeMessage(recs)))
}

func (h *positionHarness) proposal(f Frame, prev uint64, proposer nodeID) record {
	h.proposers[string(f.Value)] = proposer
	return blockRecord(proposal{frame: f, prev: prev, proposer: proposer})
}

// frame is the frame ID of f proposed at position prev by its proposer.
func (h *positionHarness) frame(f Frame, prev uint64) [idLen]byte {
	proposer, ok := h.proposers[string(f.Value)]
	if !ok {
		proposer = h.n1
	}
	return frameID(&proposal{frame: f, prev: prev, proposer: proposer})
}

// block is the ID of the block of f alone, proposed at position prev by its
// proposer: what the votes of the test name.
func (h *positionHarness) block(f Frame, prev uint64) [idLen]byte {
	id := h.frame(f, prev)
	return singleBlockID(&id)
}

func (h *positionHarness) vote(f Frame, prev uint64, voter nodeID, typ byte) record {
	return record{typ: recVote, vote: oneVote(h.block(f, prev), voter, typ)}
}

// requireCommittedHolds: node-0 committed w at position 1 of namespace s;
// x is proposed there too, with node-2's commit, then node-1 commits w. w
// must be the one accepted: node-0's vote on x is a cancel.
func (h *positionHarness) requireCommittedHolds(x, w Frame) {
	h.t.Helper()
	h.send(2, h.proposal(x, 1, h.n2), h.vote(x, 1, h.n2, voteCommit))
	h.send(1, h.vote(w, 1, h.n1, voteCommit))
	require.Equal(h.t, []string{"w/2"}, receiveN(h.t, h.applied, 1), "position 1 holds w")
	require.EqualValues(h.t, 2, h.r.Metrics().FramesAccepted, "x accepted at position 1 too")
}

// myVote returns node-0's vote on frame f proposed at position prev (0:
// none, or not held).
func (h *positionHarness) myVote(f Frame, prev uint64) byte {
	id := h.frame(f, prev)
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	if e := h.r.c.entries[id]; e != nil {
		return e.myVote
	}
	return 0
}

func slotFrame(seq uint64, value string) Frame {
	return Frame{OrgID: "org", Namespace: "s", Seq: seq, Op: "put", Key: "k", Value: []byte(value)}
}

// TestChaos_VoteCountsOnlyAtItsPosition (S4): the very same frame can be
// proposed again at another position after its first attempt failed; its
// block ID names the position, so a commit cast for it at the first
// position does not count at the second, where its voter may have
// committed another frame: neither as a vote held aside before the frame
// arrived, nor as a late re-send.
func TestChaos_VoteCountsOnlyAtItsPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x, y := slotFrame(10, "x"), slotFrame(1, "y")
	h.send(2, h.vote(x, 0, h.n2, voteCommit)) // x at position 0 never reached node-0
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1), "y took position 0")

	h.send(1, h.proposal(x, 1, h.n1))         // x again, on top of y: node-0 commits it
	h.send(2, h.vote(x, 0, h.n2, voteCommit)) // a late re-send of node-2's old vote
	m := h.r.Metrics()
	require.EqualValues(t, 1, m.FramesAccepted, "x accepted with a vote cast at another position")
	require.EqualValues(t, 2, m.VotesUnknownBlock, "votes for x at position 0: a block node-0 does not hold")

	h.send(2, h.vote(x, 1, h.n2, voteCommit)) // node-2's vote at this position counts
	require.Equal(t, []string{"x/10"}, receiveN(t, h.applied, 1))
}

// TestChaos_ForgottenVoteStaysAtItsPosition (S4): a validator that
// committed a frame, forgot it, and then committed another frame at a
// later position must not revive its old commit when the first frame is
// proposed again at that later position.
func TestChaos_ForgottenVoteStaysAtItsPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 50 * time.Millisecond})
	x, y, w := slotFrame(10, "x"), slotFrame(1, "y"), slotFrame(2, "w")
	h.send(1, h.proposal(x, 0, h.n1)) // node-0 commits x at position 0
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, 5*time.Second, time.Millisecond, "x forgotten")

	// y takes position 0 with the others' commits (node-0 cancels it).
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	h.send(2, h.vote(y, 0, h.n2, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))

	h.send(1, h.proposal(w, 1, h.n1)) // node-0 commits w at position 1
	// x comes back on top of y, with node-2's commit there: node-0 must
	// cancel it (it committed w there), not revive its commit from
	// position 0.
	h.requireCommittedHolds(x, w)
}

// TestChaos_ResetAtHeadKeepsVote (S4): restoring a snapshot at the head a
// validator already has does not free the position it committed a frame
// at.
func TestChaos_ResetAtHeadKeepsVote(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	y, w, x := slotFrame(1, "y"), slotFrame(2, "w"), slotFrame(3, "x")
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
	h.send(1, h.proposal(w, 1, h.n1)) // node-0 commits w at position 1
	h.r.ResetNamespace("org", "s", 1)
	h.requireCommittedHolds(x, w)
}

// TestChaos_CertificateNamingOurCancelIsRefused: a certificate that lists
// this validator among the commit voters of a frame it cancelled is a lie,
// and none of its voters count.
func TestChaos_CertificateNamingOurCancelIsRefused(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	y, x := slotFrame(1, "y"), slotFrame(2, "x")
	self := validatorNodeID("node-0")
	h.send(1, h.proposal(y, 0, h.n1)) // node-0 commits y at position 0
	h.send(2, h.proposal(x, 0, h.n2)) // and so cancels x there
	cert := record{typ: recCertificate, prop: proposal{frame: x, proposer: h.n2}, voters: nodes(self, h.n1, h.n2)}
	h.send(2, cert)
	m := h.r.Metrics()
	require.EqualValues(t, 1, m.CertificatesBad)
	require.Zero(t, m.FramesAccepted)
	h.send(1, h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
}

// TestChaos_RetryOfUndecidedFrameKeepsProposerOrder (S5): a Propose of a
// frame identical to an own undecided one waits for it only if no other
// Propose of this node returned Accept since it was made; otherwise that
// frame's after list does not order it after them, and the call returns
// Timeout at once (the earlier attempt may still be accepted).
func TestChaos_RetryOfUndecidedFrameKeepsProposerOrder(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x := slotFrame(5, "x")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	d, err := h.r.Propose(ctx, x) // nobody votes: x stays undecided
	cancel()
	require.Equal(t, DecisionTimeout, d, "%v", err)

	// Another Propose of node-0 returns Accept meanwhile.
	y := Frame{OrgID: "org", Namespace: "b", Seq: 1, Op: "put", Key: "k", Value: []byte("y")}
	h.proposers["x"], h.proposers["y"] = validatorNodeID("node-0"), validatorNodeID("node-0")
	res := make(chan Decision, 1)
	go func() { d, _ := h.r.Propose(context.Background(), y); res <- d }()
	require.Eventually(t, func() bool { return h.r.Metrics().Pending == 2 }, contractWait, time.Millisecond)
	h.send(1, h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, DecisionAccept, <-res)
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))

	// The retry of x cannot wait for the old proposal of it.
	go func() { d, _ := h.r.Propose(context.Background(), x); res <- d }()
	select {
	case d = <-res:
	case <-time.After(100 * time.Millisecond):
		h.send(1, h.vote(x, 0, h.n1, voteCommit)) // a retry that waits gets x accepted
		d = <-res
	}
	require.Equal(t, DecisionTimeout, d)
}

// TestChaos_RejectAtOtherPositionKeepsVote (S4): a frame node-0 committed
// at one position and forgot keeps that position taken even when a copy of
// the same frame at another position is rejected.
func TestChaos_RejectAtOtherPositionKeepsVote(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 60 * time.Millisecond})
	y, x, z := slotFrame(1, "y"), slotFrame(5, "x"), slotFrame(2, "z")
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
	h.send(2, h.proposal(x, 1, h.n2)) // node-0 commits x at position 1
	require.Equal(t, byte(voteCommit), h.myVote(x, 1))
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, contractWait, time.Millisecond, "x forgotten")

	// A late copy of x's first attempt, at position 0, is rejected there.
	h.send(2, h.proposal(x, 0, h.n2), h.vote(x, 0, h.n2, voteCancel))
	h.send(1, h.vote(x, 0, h.n1, voteCancel))
	require.EqualValues(t, 1, h.r.Metrics().FramesRejected)

	h.send(1, h.proposal(z, 1, h.n1))
	require.Equal(t, byte(voteCancel), h.myVote(z, 1), "node-0 committed a second frame at position 1")
}

// TestChaos_ForgottenVoteKeptPerPosition (S1): node-0 remembers its vote on
// a forgotten frame per position: the same frame turning up at another
// position neither erases nor replaces it.
func TestChaos_ForgottenVoteKeptPerPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 60 * time.Millisecond})
	y, x := slotFrame(1, "y"), slotFrame(5, "x")
	h.send(1, h.proposal(y, 0, h.n1)) // node-0 commits y at position 0
	h.send(2, h.proposal(x, 0, h.n2)) // and cancels x there
	h.send(1, h.vote(y, 0, h.n1, voteCancel))
	h.send(2, h.vote(y, 0, h.n2, voteCancel)) // y rejected: position 0 is free again
	require.EqualValues(t, 1, h.r.Metrics().FramesRejected)
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, contractWait, time.Millisecond, "x@0 forgotten")

	h.send(2, h.proposal(x, 3, h.n2)) // x at another position, then forgotten too
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 2 }, contractWait, time.Millisecond, "x@3 forgotten")

	h.send(2, h.proposal(x, 0, h.n2)) // x back at position 0
	require.Equal(t, byte(voteCancel), h.myVote(x, 0), "node-0 cancelled x at position 0, then committed it there")
}

// receiveN returns the next n values applied reports, failing the test
// if it waits more than 5s for one.
func receiveN(t *testing.T, applied <-chan string, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case s := <-applied:
			got = append(got, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("applied %q, then nothing for 5s", got)
		}
	}
	return got
}

// newLoneValidator starts node-0 of the validator set node-0, node-1,
// node-2 on a hub where the other two are connected but silent: the test
// plays their part by handing messages to r.receive. cfg sets the other
// fields; both are closed when the test ends.
func newLoneValidator(t *testing.T, cfg QuasarConfig) (*QuasarReplicator, []string) {
	t.Helper()
	ids := []string{"node-0", "node-1", "node-2"}
	hub := NewMemoryHub()
	t.Cleanup(func() { _ = hub.Close() })
	cfg.NodeID, cfg.Validators, cfg.Transport = ids[0], ids, hub.Connect(ids[0])
	hub.Connect(ids[1])
	hub.Connect(ids[2])
	r, err := NewQuasar(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	r.Subscribe(func(context.Context, Frame) error { return nil }) // frames are applied only once a handler is
	return r, ids
}

// TestChaos_HeldVotesCountForTheirBlockOnly: votes for a block not held yet
// wait aside, by block: votes of a voter for the same frame at other
// positions (other blocks) neither count for it nor crowd out the votes
// of others for it.
func TestChaos_HeldVotesCountForTheirBlockOnly(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x := slotFrame(1, "x")
	for prev := range uint64(8) {
		h.send(1, h.vote(x, prev+10, h.n1, voteCommit)) // node-1 at many other positions
	}
	h.send(2, h.vote(x, 0, h.n2, voteCommit))
	h.send(1, h.proposal(x, 0, h.n1)) // node-0 commits x: with node-2's held vote, a quorum
	require.Equal(t, []string{"x/1"}, receiveN(t, h.applied, 1))
	m := h.r.Metrics()
	require.EqualValues(t, 9, m.VotesUnknownBlock)
	require.EqualValues(t, 1, m.FramesAccepted)
	require.Zero(t, m.VotesDropped)
}
