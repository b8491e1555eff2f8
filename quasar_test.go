package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// S4: two writers racing on one slot: exactly one wins, on every node.
func TestQuasar_ConflictingSlot(t *testing.T) {
	for round := 0; round < 20; round++ {
		c := newTestCluster(t, 3, clusterOpts{})
		a := Frame{OrgID: "org", Namespace: "lock", Seq: 1, Op: "put", Key: "owner", Value: []byte("a")}
		b := a
		b.Value = []byte("b")
		type res struct {
			d   Decision
			err error
		}
		ra, rb := make(chan res, 1), make(chan res, 1)
		go func() { d, err := c.propose(0, a); ra <- res{d, err} }()
		go func() { d, err := c.propose(1, b); rb <- res{d, err} }()
		x, y := <-ra, <-rb
		accepted := 0
		for _, r := range []res{x, y} {
			switch r.d {
			case DecisionAccept:
				accepted++
				require.NoError(t, r.err)
			case DecisionReject:
				require.ErrorIs(t, r.err, ErrRejected)
			default:
				t.Fatalf("round %d: unexpected decision %v (%v)", round, r.d, r.err)
			}
		}
		require.LessOrEqual(t, accepted, 1, "round %d: both writers won one slot", round)
		if accepted == 1 {
			c.waitAllApplied(1, 5*time.Second)
		}
		c.requireConverged()
		c.close()
	}
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
