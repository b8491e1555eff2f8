package replication

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// This file tests Barrier: after it returns nil, the node has applied
// every frame of the namespace accepted anywhere before it began.

// A node that missed frames (its handler was stuck while the others wrote)
// returns from Barrier only once it applied them.
func TestQuasar_BarrierWaitsForFramesAcceptedElsewhere(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	entered, release := stuckHandler(t, c.nodes[2].r, func(f Frame) bool { return f.Namespace == "ns" })
	for i := range 5 {
		c.requireAccept(0, put("ns", "k", fmt.Sprint(i)))
	}
	<-entered
	done := make(chan error, 1)
	go func() { done <- c.nodes[2].r.Barrier(context.Background(), "org", "ns") }()
	select {
	case err := <-done:
		t.Fatalf("Barrier returned (%v) while node-2 had not applied the namespace", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	require.NoError(t, <-done)
	_, log := c.nodes[2].kv.snapshot()
	require.Len(t, log, 5, "node-2 applied every frame accepted before the Barrier")
}

// Without a quorum, Barrier times out; with one again, it succeeds.
func TestQuasar_BarrierNeedsAQuorum(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: 200 * time.Millisecond})
	c.requireAccept(0, put("ns", "k", "v"))
	c.hub.Partition([]string{"node-2"}, []string{"node-0", "node-1"})
	err := c.nodes[2].r.Barrier(context.Background(), "org", "ns")
	require.ErrorIs(t, err, ErrTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = c.nodes[2].r.Barrier(ctx, "org", "ns")
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	require.NoError(t, c.nodes[0].r.Barrier(context.Background(), "org", "ns"), "node-0 and node-1 are a quorum")
	c.hub.Heal()
	require.NoError(t, c.nodes[2].r.Barrier(context.Background(), "org", "ns"))
	require.Len(t, c.nodes[2].kv.find("ns", "k"), 1)
	require.NoError(t, c.nodes[2].r.Barrier(context.Background(), "org", "never-written"))

	require.NoError(t, c.nodes[2].r.Close())
	require.ErrorIs(t, c.nodes[2].r.Barrier(context.Background(), "org", "ns"), ErrClosed)
}

func TestQuasar_BarrierSingleNode(t *testing.T) {
	r := newTestQuasar(t)
	requireAccept(t, r, put("ns", "k", "v"))
	require.NoError(t, r.Barrier(context.Background(), "org", "ns"))
}

func TestLocal_Barrier(t *testing.T) {
	r := newTestLocal(t)
	require.NoError(t, r.Barrier(context.Background(), "org", "ns"), "nothing applying")
	// A handler's own Propose is applied after it returns: a Barrier
	// begun meanwhile waits for it.
	inHandler, release := make(chan struct{}), make(chan struct{})
	var applied atomic.Int32
	r.Subscribe(func(ctx context.Context, f Frame) error {
		applied.Add(1)
		if f.Key == "first" {
			_, err := r.Propose(ctx, put("ns", "second", "v"))
			require.NoError(t, err)
			require.ErrorIs(t, r.Barrier(ctx, "org", "ns"), ErrTimeout, "from a handler, with a frame of a handler pending")
			close(inHandler)
			<-release
		}
		return nil
	})
	go func() { _, _ = r.Propose(context.Background(), put("ns", "first", "v")) }()
	<-inHandler
	done := make(chan error, 1)
	go func() { done <- r.Barrier(context.Background(), "org", "ns") }()
	select {
	case err := <-done:
		t.Fatalf("Barrier returned (%v) before the handler's frame was applied", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-done)
	require.EqualValues(t, 2, applied.Load())
	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Barrier(context.Background(), "org", "ns"), ErrClosed)
}

// TestQuasar_BarrierReadsAreLinearizable checks, with the porcupine
// linearizability checker, a register written through Propose by every
// node and read on every node through Barrier and the node's own state,
// under message drops, duplicates and delays and a partition that comes
// and goes. A write that timed out may take effect any time after it
// began; a rejected one never does; a Barrier that failed reads nothing.
func TestQuasar_BarrierReadsAreLinearizable(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a workload under faults")
	}
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runLinearizability(t, seed) })
	}
}

// regOp is a register operation: a write of value, or a read (of value).
type regOp struct {
	write bool
	value string
}

var registerModel = porcupine.Model{
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regOp)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	Equal: func(a, b any) bool { return a == b },
}

func runLinearizability(t *testing.T, seed uint64) {
	c := newTestCluster(t, 3, clusterOpts{proposeWait: time.Second})
	require.NoError(t, c.hub.SetFaults(MemoryFaults{Seed: int64(seed), DropRate: 0.1, DuplicateRate: 0.05, MaxDelay: 2 * time.Millisecond}))
	var (
		clock   atomic.Int64
		mu      sync.Mutex
		history []porcupine.Operation
		wg      sync.WaitGroup
		counts  [4]atomic.Int64 // writes accepted, writes unknown, reads, barriers failed
	)
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
	}
	for i, node := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for k := range 40 {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				if rng.IntN(5) < 3 {
					v := fmt.Sprintf("n%d.%d", i, k)
					call := clock.Add(1)
					d, err := node.r.Propose(ctx, put("lin", "x", v))
					ret := clock.Add(1)
					switch {
					case d == DecisionAccept && err == nil:
						counts[0].Add(1)
						record(porcupine.Operation{ClientId: i, Input: regOp{write: true, value: v}, Call: call, Return: ret})
					case d == DecisionTimeout:
						counts[1].Add(1) // may take effect any time after it began
						record(porcupine.Operation{ClientId: i, Input: regOp{write: true, value: v}, Call: call, Return: math.MaxInt64})
					case !errors.Is(err, ErrRejected):
						t.Errorf("write: %v %v", d, err)
					}
				} else {
					call := clock.Add(1)
					if err := node.r.Barrier(ctx, "org", "lin"); err != nil {
						require.ErrorIs(t, err, ErrTimeout)
						counts[3].Add(1)
					} else {
						node.kv.mu.Lock()
						v := node.kv.data["org/lin/x"]
						node.kv.mu.Unlock()
						ret := clock.Add(1)
						counts[2].Add(1)
						record(porcupine.Operation{ClientId: i, Input: regOp{}, Output: v, Call: call, Return: ret})
					}
				}
				cancel()
			}
		}()
	}
	// A partition comes and goes meanwhile.
	frng := rand.New(rand.NewPCG(seed, 0xfa))
	for range 6 {
		time.Sleep(time.Duration(20+frng.IntN(60)) * time.Millisecond)
		perm := frng.Perm(3)
		c.hub.Partition([]string{c.ids[perm[0]]}, []string{c.ids[perm[1]], c.ids[perm[2]]})
		time.Sleep(time.Duration(20+frng.IntN(60)) * time.Millisecond)
		c.hub.Heal()
	}
	wg.Wait()
	t.Logf("seed %d: %d writes accepted, %d unknown, %d reads, %d barriers failed",
		seed, counts[0].Load(), counts[1].Load(), counts[2].Load(), counts[3].Load())
	require.Positive(t, counts[2].Load(), "no read succeeded")
	res := porcupine.CheckOperationsTimeout(registerModel, history, time.Minute)
	require.Equal(t, porcupine.Ok, res, "history of %d operations is not linearizable", len(history))
}
