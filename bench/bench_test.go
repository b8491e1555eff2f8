package bench

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// valueSize is the payload of every replicated operation, on both sides.
const valueSize = 256

// parallelProposers is the number of concurrent proposers of the ...Parallel
// benchmarks.
const parallelProposers = 64

// applyWait bounds how long a benchmark waits, after the timed loop, for
// every node to have applied every operation.
const applyWait = 10 * time.Second

// setupWait bounds cluster setup: leader election, connections.
const setupWait = 10 * time.Second

// benchValue is the 256-byte value both systems replicate. Neither side
// modifies it: raft keeps the slice in its log, Quasar copies it.
var benchValue = func() []byte {
	v := make([]byte, valueSize)
	for i := range v {
		v[i] = byte(i)
	}
	return v
}()

// cluster is one three-node system under test, behind the calls the shared
// benchmark loops need, so raft and Quasar run exactly the same loop.
type cluster interface {
	// submit replicates one benchValue on behalf of proposer w (0 <= w <
	// the proposers the cluster was built for) and returns once the
	// system reports it applied: raft's Apply future on the leader, or
	// Quasar's Propose on the proposer's node. Calls with distinct w are
	// made concurrently.
	submit(w int) error
	// applied returns the number of operations each node's state machine
	// has applied so far.
	applied() []int64
	// started is called right before the timed loop, report right after it
	// (timer stopped) with the number of timed operations, to add
	// system-specific metrics.
	started()
	report(b *testing.B, ops int)
	// close stops every node and transport and waits for their
	// goroutines. It is idempotent and tolerates a partly built cluster.
	close() error
}

// newClusterFunc builds a cluster for the given number of proposers and
// registers its close with tb.Cleanup.
type newClusterFunc func(tb testing.TB, proposers int) cluster

// runSequential measures one proposer submitting one operation at a time:
// ns/op is the latency of one replicated operation.
func runSequential(b *testing.B, newCluster newClusterFunc) {
	c := newCluster(b, 1)
	warmUp(b, c, 1)
	base := c.applied()
	b.ReportAllocs()
	b.SetBytes(valueSize)
	c.started()
	cpu0 := processCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.submit(0); err != nil {
			b.Fatalf("op %d of %d: %v", i, b.N, err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu0)
	c.report(b, b.N)
	requireApplied(b, c, base, b.N)
}

// runParallel measures parallelProposers concurrent proposers: ns/op is the
// inverse of the cluster's throughput.
//
// RunParallel starts GOMAXPROCS*p goroutines for b.SetParallelism(p), so p is
// chosen to make that 64; when GOMAXPROCS does not divide 64 the count is
// rounded up to the next multiple of it.
func runParallel(b *testing.B, newCluster newClusterFunc) {
	procs := runtime.GOMAXPROCS(0)
	p := (parallelProposers + procs - 1) / procs
	proposers := p * procs
	c := newCluster(b, proposers)
	warmUp(b, c, proposers)
	base := c.applied()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetBytes(valueSize)
	b.SetParallelism(p)
	c.started()
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(next.Add(1) - 1)
		if w >= proposers {
			b.Errorf("proposer %d started, only %d expected", w, proposers)
			return
		}
		for pb.Next() {
			if err := c.submit(w); err != nil {
				b.Errorf("proposer %d: %v", w, err)
				return
			}
		}
	})
	b.StopTimer()
	if b.Failed() {
		return
	}
	reportCPU(b, cpu0)
	c.report(b, b.N)
	requireApplied(b, c, base, b.N)
}

// loadCounts returns the current values of per-node counters.
func loadCounts(counts []atomic.Int64) []int64 {
	n := make([]int64, len(counts))
	for i := range counts {
		n[i] = counts[i].Load()
	}
	return n
}

// reportCPU adds cpu-µs/op: the CPU time of the whole cluster (all its
// nodes, transports and the proposers, in this process) per operation of
// the timed loop.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	if cpu0 > 0 && b.N > 0 {
		b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
	}
}

// warmUp submits one operation per proposer, untimed, so that connections,
// pipelines and per-namespace state exist before measuring, and waits until
// every node applied them.
func warmUp(tb testing.TB, c cluster, proposers int) {
	tb.Helper()
	base := make([]int64, len(c.applied()))
	for w := 0; w < proposers; w++ {
		if err := c.submit(w); err != nil {
			tb.Fatalf("warm-up, proposer %d: %v", w, err)
		}
	}
	requireApplied(tb, c, base, proposers)
}

// requireApplied waits until every node applied exactly ops operations more
// than base, and fails if one applied more or did not get there in time.
func requireApplied(tb testing.TB, c cluster, base []int64, ops int) {
	tb.Helper()
	deadline := time.Now().Add(applyWait)
	for {
		got := c.applied()
		done := true
		for i := range got {
			switch d := got[i] - base[i]; {
			case d > int64(ops):
				tb.Fatalf("node %d applied %d operations, want exactly %d", i, d, ops)
			case d < int64(ops):
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s, nodes applied %s of %d operations", applyWait, deltas(got, base), ops)
		}
		time.Sleep(time.Millisecond)
	}
}

func deltas(got, base []int64) string {
	d := make([]int64, len(got))
	for i := range got {
		d[i] = got[i] - base[i]
	}
	return fmt.Sprint(d)
}

// waitFor polls cond every millisecond until it holds or setupWait passes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(setupWait)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s", what, setupWait)
		}
		time.Sleep(time.Millisecond)
	}
}
