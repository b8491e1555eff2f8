package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file holds regression tests of a node's own proposals, through the
// public API on a MemoryHub.

// TestQuasar_SoleWriterNotRejectedAfterTimeout (S6, S5): a node that is the
// only writer of a namespace is never rejected there because of its own
// earlier timeout. Three validators, node-2 down. node-0 proposes x;
// node-1 receives it and commits it, but a partition blip cuts node-0 off
// before node-1's vote reaches it, and node-0's Propose(x) times out. After
// the blip node-0 and node-1 form a quorum: node-0's next five proposals in
// the namespace are all accepted, after x (which node-1 accepted: it held
// node-0's commit and its own).
//
// Before the fix node-0 proposed y at x's position, where it had voted
// commit for its own x: it cancelled its own y, node-1 (which had moved
// past x) cancelled it too, and every later frame of the namespace was
// rejected until node-2 came back.
func TestQuasar_SoleWriterNotRejectedAfterTimeout(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: 10 * time.Second, witnessAfter: 20 * time.Millisecond})
	c.hub.Disconnect("node-2")
	var blip sync.Once
	c.hub.OnDeliver(func(from, to, kind string, payload []byte) {
		if from == "node-0" && to == "node-1" {
			// node-1 gets x; its vote back will not reach node-0.
			blip.Do(func() { c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"}) })
		}
	})
	x := put("mine", "k", "x")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	d, err := c.nodes[0].r.Propose(ctx, x)
	cancel()
	require.Equal(t, DecisionTimeout, d, "%v", err)
	require.ErrorIs(t, err, ErrTimeout)

	c.hub.OnDeliver(nil)
	c.hub.Heal() // node-2 stays down
	for i := range 5 {
		f := put("mine", "k", fmt.Sprintf("y%d", i))
		d, err := c.propose(0, f)
		require.NoError(t, err, "proposal %d after the blip", i)
		require.Equal(t, DecisionAccept, d, "proposal %d after the blip", i)
	}
	accepted, rejected, timeouts := c.nodes[0].r.Stats()
	require.Zero(t, rejected, "rejections of the only writer")
	require.EqualValues(t, 5, accepted)
	require.EqualValues(t, 1, timeouts, "x's")

	// x was accepted too (node-1 held a quorum for it), and every node up
	// applies the namespace in proposal order: x first.
	c.waitAllApplied(6, 10*time.Second, 0, 1)
	for _, i := range []int{0, 1} {
		got := c.nodes[i].kv.find("mine", "k")
		var values []string
		for _, f := range got {
			values = append(values, string(f.Value))
		}
		require.Equal(t, []string{"x", "y0", "y1", "y2", "y3", "y4"}, values, "%s's order", c.ids[i])
	}
}

// TestQuasar_NextProposalWaitsForUndecidedOwnFrame: a Propose into a
// namespace where this node's previous frame is undecided (its Propose
// timed out) waits for that frame instead of competing with it; when the
// previous frame is decided, the next one extends the chain through it.
func TestQuasar_NextProposalWaitsForUndecidedOwnFrame(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: 10 * time.Second})
	c.hub.Partition([]string{"node-0"}, []string{"node-1", "node-2"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	d, err := c.nodes[0].r.Propose(ctx, put("ns", "k", "x"))
	cancel()
	require.Equal(t, DecisionTimeout, d, "%v", err)

	// The next Propose is queued behind x while node-0 is cut off...
	res := make(chan error, 1)
	go func() {
		d, err := c.propose(0, put("ns", "k", "y"))
		if err == nil && d != DecisionAccept {
			err = errors.New(d.String())
		}
		res <- err
	}()
	require.Eventually(t, func() bool { return c.nodes[0].r.Metrics().Pending == 1 }, 5*time.Second, time.Millisecond,
		"y is not proposed while x is undecided")
	select {
	case err := <-res:
		t.Fatalf("y decided while node-0 was cut off: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	// ...and accepted after x once it is back.
	c.hub.Heal()
	require.NoError(t, <-res)
	c.waitAllApplied(2, 10*time.Second)
	c.requireConverged()
	_, log := c.nodes[1].kv.snapshot()
	require.Equal(t, []uint64{1, 2}, perNamespace(log)["org/ns"])
	require.Equal(t, "x", string(log[0].Value))
}
