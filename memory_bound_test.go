//go:build !race

package replication

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Issue 2/3: memory stays bounded however many frames pass. The engine keeps
// every block it is given, so the driver rotates engines and forgets
// decided frames after the retention window. The heap after runtime.GC()
// must grow by at most 32 MiB after 200,000 proposals of 256-byte values,
// and by about the same after many more (a flat line, not a slope).
//
// This test is excluded from race builds (the race detector's shadow memory
// and slower pace would measure something else); .ci/run runs it without
// -race.
func TestQuasar_MemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("long: proposes over a million frames")
	}
	const limit = 32 << 20
	t.Run("validators=1", func(t *testing.T) {
		r := newTestQuasar(t)
		r.Subscribe(func(context.Context, Frame) error { return nil })
		propose := func(n int) {
			f := Frame{OrgID: "org", Namespace: "ns", Op: "put", Key: "k", Value: make([]byte, 256)}
			for i := 0; i < n; i++ {
				if d, err := r.Propose(context.Background(), f); d != DecisionAccept {
					t.Fatal(d, err)
				}
			}
		}
		requireFlatHeap(t, limit, propose, func() {}, 200_000, 1_000_000)
	})
	for _, signed := range []bool{false, true} {
		t.Run(fmt.Sprintf("validators=3/signed=%v", signed), func(t *testing.T) { threeBounded(t, limit, signed) })
	}
}

// threeBounded is TestQuasar_MemoryBounded for three validators, with
// signing keys if signed (their vote batches and attestations must be
// forgotten with the frames).
func threeBounded(t *testing.T, limit uint64, signed bool) {
	c := newTestCluster(t, 3, clusterOpts{signed: signed})
	for _, n := range c.nodes {
		n.r.Subscribe(func(context.Context, Frame) error { return nil })
	}
	// Count-only replicas: the kvReplica log would grow with the load.
	for _, n := range c.nodes {
		n.kv.discard()
	}
	propose := func(n int) {
		var wg sync.WaitGroup
		const writers = 24
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := Frame{OrgID: "org", Namespace: fmt.Sprintf("ns-%d", w), Op: "put", Key: "k", Value: make([]byte, 256)}
				for i := 0; i < n/writers; i++ {
					if d, err := c.propose(w%3, f); d != DecisionAccept {
						t.Error(d, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	// Measure once every replica applied everything, so that messages
	// still queued in the hub do not count as the replicator's memory.
	settle := func() {
		want := c.nodes[0].r.Metrics().FramesAccepted
		for _, n := range c.nodes {
			n.kv.waitCount(t, int(want), time.Minute)
		}
	}
	requireFlatHeap(t, limit, propose, settle, 200_000, 600_000)
}

// requireFlatHeap runs propose(first) and then propose(total-first), and
// checks the live heap growth after each against limit, and that the second
// growth is not a slope continuing the first.
func requireFlatHeap(t *testing.T, limit uint64, propose func(int), settle func(), first, total int) {
	t.Helper()
	base := liveHeap()
	propose(first)
	settle()
	g1 := int64(liveHeap()) - int64(base)
	propose(total - first)
	settle()
	g2 := int64(liveHeap()) - int64(base)
	t.Logf("live heap growth: %.1f MiB after %d proposals, %.1f MiB after %d",
		float64(g1)/(1<<20), first, float64(g2)/(1<<20), total)
	require.LessOrEqual(t, g1, int64(limit), "heap grew by more than %d MiB after %d proposals", limit>>20, first)
	require.LessOrEqual(t, g2, int64(limit), "heap grew by more than %d MiB after %d proposals", limit>>20, total)
	require.LessOrEqual(t, g2, g1+8<<20, "heap keeps growing with the number of proposals")
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
