package replication

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file tests blocks at the core: how a validator packs its frames,
// votes on a block frame by frame, and decides each frame on its own.

// sent returns the records core c has sent since the last call, decoded
// and with their IDs (prepareRecords).
func sent(t *testing.T, c *core) []record {
	t.Helper()
	c.takeReady()
	var recs []record
	for {
		msg, ok := c.out.pop()
		if !ok {
			break
		}
		got, err := decodeMessage(msg.b, 0, nil)
		require.NoError(t, err)
		recs = append(recs, got...)
	}
	prepareRecords(recs, nil)
	return recs
}

// ofType returns the records of type typ.
func ofType(recs []record, typ byte) []record {
	var out []record
	for _, r := range recs {
		if r.typ == typ {
			out = append(out, r)
		}
	}
	return out
}

// stepAs hands core c the records recs as sent by validator from, through
// the wire format.
func stepAs(c *core, from int, recs ...record) {
	got, err := decodeMessage(encodeMessage(recs), 0, nil)
	if err != nil {
		panic(err)
	}
	prepareRecords(got, nil)
	c.step(c.now+1, from, got)
}

// votesOf returns the votes of a vote record, frame by frame.
func votesOf(v *vote) []byte {
	out := make([]byte, v.count)
	for i := range out {
		out[i] = v.at(i)
	}
	return out
}

// The frames proposed before a seal leave as one block, across namespaces,
// with one vote record for all of them; a block is cut at maxBlockFrames.
func TestBlock_SealPacksFramesAcrossNamespaces(t *testing.T) {
	c := newTestCore(t, 3, 0)
	for i := range 5 {
		c.propose(1, &call{frame: put(fmt.Sprintf("ns-%d", i), "k", "v")})
	}
	require.Empty(t, ofType(sent(t, c), recBlock), "nothing leaves before the seal")
	c.seal(2)
	recs := sent(t, c)
	blocks, votes := ofType(recs, recBlock), ofType(recs, recVote)
	require.Len(t, blocks, 1)
	require.Equal(t, 5, blocks[0].blk.count)
	require.Len(t, votes, 1, "one vote record per block")
	require.Equal(t, blocks[0].id, votes[0].vote.block)
	require.Equal(t, []byte{voteCommit, voteCommit, voteCommit, voteCommit, voteCommit}, votesOf(&votes[0].vote))
	require.EqualValues(t, 1, c.m.blocksProposed.Load())
	require.EqualValues(t, 5, c.m.framesProposed.Load())

	for i := range maxBlockFrames + 3 {
		c.propose(3, &call{frame: put(fmt.Sprintf("many-%d", i), "k", "v")})
	}
	c.seal(4)
	blocks = ofType(sent(t, c), recBlock)
	require.Len(t, blocks, 2)
	require.Equal(t, maxBlockFrames, blocks[0].blk.count)
	require.Equal(t, 3, blocks[1].blk.count)
}

// A block's frames share one after list: a frame of this node whose
// Propose returned Accept is named once per block, and orders every frame
// of it.
func TestBlock_OneAfterListPerBlock(t *testing.T) {
	c := newTestCore(t, 3, 0)
	first := &call{frame: put("first", "k", "v"), reentrant: true} // decided at acceptance
	c.propose(1, first)
	c.seal(1)
	block := ofType(sent(t, c), recBlock)[0]
	stepAs(c, 1, record{typ: recVote, vote: vote{block: block.id, voter: c.cfg.ids[1], count: 1, bits: []byte{voteCommit}}})
	require.True(t, first.decided)
	require.Equal(t, DecisionAccept, first.decision)

	for i := range 3 {
		c.propose(2, &call{frame: put(fmt.Sprintf("next-%d", i), "k", "v")})
	}
	c.seal(3)
	blocks := ofType(sent(t, c), recBlock)
	require.Len(t, blocks, 1)
	var after []nsRef
	for a := range blocks[0].blk.after.all() {
		after = append(after, a)
	}
	require.Equal(t, []nsRef{{"org", "first", 1}}, after)
}

// Each frame's outcome is its own: in one block, a frame at a position this
// validator committed to another frame gets its cancel and is rejected,
// while the others are accepted.
func TestBlock_FrameOutcomesAreIndependent(t *testing.T) {
	c := newTestCore(t, 3, 0)
	n1, n2 := c.cfg.ids[1], c.cfg.ids[2]
	w := proposal{frame: Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("w")}, proposer: n2}
	stepAs(c, 2, blockRecord(w)) // node-0 commits w at position 0 of s
	x := proposal{frame: Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("x")}, proposer: n1}
	y := proposal{frame: Frame{OrgID: "org", Namespace: "t", Seq: 1, Op: "put", Key: "k", Value: []byte("y")}, proposer: n1}
	z := proposal{frame: Frame{OrgID: "org", Namespace: "u", Seq: 1, Op: "put", Key: "k", Value: []byte("z")}, proposer: n1}
	sent(t, c)
	recs := []record{blockRecord(x, y, z)}
	prepareRecords(recs, nil)
	blk := recs[0]
	stepAs(c, 1, blk)
	votes := ofType(sent(t, c), recVote)
	require.Len(t, votes, 1)
	require.Equal(t, []byte{voteCancel, voteCommit, voteCommit}, votesOf(&votes[0].vote))

	// node-1 commits its three frames; node-2 cancels x (it committed w)
	// and commits the others.
	id := blk.id
	stepAs(c, 1, record{typ: recVote, vote: vote{block: id, voter: n1, count: 3, bits: []byte{voteCommit | voteCommit<<2 | voteCommit<<4}}})
	stepAs(c, 2, record{typ: recVote, vote: vote{block: id, voter: n2, count: 3, bits: []byte{voteCancel | voteCommit<<2 | voteCommit<<4}}})
	phases := map[string]phase{}
	for _, p := range []proposal{x, y, z} {
		e := c.entries[frameID(&p)]
		require.NotNil(t, e)
		phases[string(p.frame.Value)] = e.phase
	}
	require.Equal(t, phaseRejected, phases["x"])
	require.True(t, phases["y"].accepted(), "y: %s", phases["y"])
	require.True(t, phases["z"].accepted(), "z: %s", phases["z"])
	require.EqualValues(t, 2, c.m.framesAccepted.Load())
	require.EqualValues(t, 1, c.m.framesRejected.Load())
	require.Zero(t, c.m.conflicts.Load())
}

// A frame beyond this validator's head gets no vote with the others of its
// block; once the validator catches up, its vote follows in a record of
// its own for the same block. Votes sent for a block before the block
// arrived count once it does.
func TestBlock_LateVotesNameTheSameBlock(t *testing.T) {
	c := newTestCore(t, 3, 0)
	n1, n2 := c.cfg.ids[1], c.cfg.ids[2]
	ahead := proposal{frame: Frame{OrgID: "org", Namespace: "s", Seq: 2, Op: "put", Key: "k", Value: []byte("ahead")}, prev: 1, proposer: n1}
	now := proposal{frame: Frame{OrgID: "org", Namespace: "t", Seq: 1, Op: "put", Key: "k", Value: []byte("now")}, proposer: n1}
	blk := blockRecord(now, ahead) // in increasing order: seq 1 before seq 2
	id := blockIDOf([][idLen]byte{frameID(&now), frameID(&ahead)})
	// node-2's votes on both frames arrive before the block: held aside.
	stepAs(c, 2, record{typ: recVote, vote: vote{block: id, voter: n2, count: 2, bits: []byte{voteCommit | voteCommit<<2}}})
	require.EqualValues(t, 1, c.m.votesUnknownBlock.Load())
	sent(t, c)
	stepAs(c, 1, blk)
	votes := ofType(sent(t, c), recVote)
	require.Len(t, votes, 1)
	require.Equal(t, id, votes[0].vote.block)
	require.Equal(t, []byte{voteCommit, 0}, votesOf(&votes[0].vote), "no vote yet on the frame beyond the head")
	require.True(t, c.entries[frameID(&now)].phase.accepted(), "node-2's held vote and node-0's make a quorum")

	// The frame at seq 1 of s arrives as a certificate: node-0 reaches
	// position 1 and votes on the frame it deferred.
	first := proposal{frame: Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("first")}, proposer: n2}
	stepAs(c, 2, record{typ: recCertificate, prop: first, voters: nodes(n1, n2)})
	votes = ofType(sent(t, c), recVote)
	require.Len(t, votes, 1)
	require.Equal(t, id, votes[0].vote.block)
	require.Equal(t, []byte{0, voteCommit}, votesOf(&votes[0].vote), "the deferred frame's vote alone")
	require.True(t, c.entries[frameID(&ahead)].phase.accepted())
}

// chainIndex behaves as a map from position to frame, whatever the order
// of sets and deletes (it is tuned for increasing sets and oldest-first
// deletes, and must stay right otherwise).
func TestChainIndex_MatchesAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var c chainIndex
	ref := map[uint64]*entry{}
	next := uint64(0)
	for step := range 200_000 {
		switch k := rng.IntN(10); {
		case k < 5: // the common case: a new position above the others
			next += 1 + uint64(rng.IntN(3))
			e := &entry{}
			c.set(next, e)
			ref[next] = e
		case k < 6: // anywhere
			p := uint64(rng.IntN(int(next) + 1))
			e := &entry{}
			c.set(p, e)
			ref[p] = e
		case k < 9: // drop the oldest
			var oldest uint64
			found := false
			for p := range c.all() {
				oldest, found = p, true
				break
			}
			if found {
				c.del(oldest)
				delete(ref, oldest)
			}
		default: // drop anywhere
			p := uint64(rng.IntN(int(next) + 1))
			c.del(p)
			delete(ref, p)
		}
		if step%997 == 0 || step == 199_999 {
			require.Equal(t, len(ref), c.len())
			prev, first := uint64(0), true
			for p, e := range c.all() {
				require.True(t, first || p > prev, "positions in order")
				require.Same(t, ref[p], e)
				prev, first = p, false
			}
			for p := range uint64(next + 2) {
				require.Same(t, ref[p], c.get(p), "position %d", p)
			}
		}
	}
}

// A block names each frame once: its slots are in strictly increasing
// bytewise order. A block carrying one frame twice (or out of order) is
// malformed and refused whole; were it taken in, one frame ID would get
// two entries.
func TestBlock_FrameTwiceIsMalformed(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x, y := slotFrame(1, "x"), slotFrame(2, "y")
	px := proposal{frame: x, proposer: h.n1}
	py := proposal{frame: y, prev: 1, proposer: h.n1}
	for name, rec := range map[string]record{
		"twice":        blockRecord(px, px),
		"out of order": blockRecord(py, px),
	} {
		err := h.r.receive(1, encodeMessage([]record{rec}))
		require.ErrorIs(t, err, ErrMalformed, name)
	}
	m := h.r.Metrics()
	require.EqualValues(t, 2, m.Malformed)
	require.Zero(t, m.Pending, "nothing taken in")
	require.NoError(t, h.r.receive(1, encodeMessage([]record{blockRecord(px, py)})), "in order")
	require.Eventually(t, func() bool { return h.r.Metrics().Pending == 2 }, contractWait, time.Millisecond)
}

// A frame held here is linked into a bounded number of other blocks: a
// peer that makes up blocks out of frames this node holds gets no memory
// for them beyond that.
func TestBlock_OtherBlocksOfAFrameAreBounded(t *testing.T) {
	c := newTestCore(t, 3, 0)
	n1 := c.cfg.ids[1]
	var ps []proposal
	for i := range 8 {
		ps = append(ps, proposal{frame: Frame{OrgID: "org", Namespace: fmt.Sprintf("ns-%d", i), Seq: 1, Op: "put", Key: "k"}, proposer: n1})
	}
	stepAs(c, 1, blockRecord(ps...))
	first := c.entries[frameID(&ps[0])]
	require.NotNil(t, first)
	for i := 1; i < len(ps); i++ {
		stepAs(c, 1, blockRecord(ps[0], ps[i])) // ns-0 sorts first
	}
	stepAs(c, 1, blockRecord(ps[0]))
	require.Len(t, first.more, maxMoreBlocks)
	require.LessOrEqual(t, len(c.blocks), 1+len(ps)-1+1, "blocks held")
}
