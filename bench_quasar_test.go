package replication

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// benchValue is the 256-byte value every Propose benchmark uses.
var benchValue = make([]byte, 256)

func BenchmarkQuasarPropose1Node(b *testing.B) {
	hub := NewMemoryHub()
	defer hub.Close()
	r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: "solo", Transport: hub.Connect("solo")})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var applied atomic.Int64
	r.Subscribe(func(context.Context, Frame) error { applied.Add(1); return nil })
	benchProposeSequential(b, r)
	if applied.Load() != int64(b.N) {
		b.Fatalf("applied %d of %d", applied.Load(), b.N)
	}
}

// benchProposeSequential times b.N Propose calls on r, one after the
// other, into one namespace, and stops the timer.
func benchProposeSequential(b *testing.B, r *QuasarReplicator) {
	ctx := context.Background()
	f := Frame{OrgID: "org", Namespace: "ns", Op: "put", Key: "k", Value: benchValue}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchValue)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
			b.Fatal(d, err)
		}
	}
	b.StopTimer()
}

// benchProposeParallel times b.N Propose calls by 64 proposers
// (SetParallelism 32 on this 2-core machine), each with a namespace of its
// own, spread over rs, and stops the timer.
func benchProposeParallel(b *testing.B, rs []*QuasarReplicator) {
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetBytes(int64(len(benchValue)))
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1)
		r := rs[int(i)%len(rs)]
		f := Frame{OrgID: "org", Namespace: fmt.Sprintf("ns-%d", i), Op: "put", Key: "k", Value: benchValue}
		for pb.Next() {
			if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
				b.Error(d, err)
				return
			}
		}
	})
	b.StopTimer()
}

// benchCluster starts n validators on a MemoryHub, each with a counting
// handler, for the multi-node benchmarks; with signed, with signing keys.
// finish checks, after the timed loop, that every node applied every
// frame, and reports the CPU time of the whole process (every node) and
// the bytes delivered between nodes, per frame, over the timed loop.
func benchCluster(b *testing.B, n int, signed bool) (rs []*QuasarReplicator, finish func()) {
	hub := NewMemoryHub()
	ids := make([]string, n)
	var keys map[string]PublicKey
	if signed {
		keys = map[string]PublicKey{}
	}
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i)
		if signed {
			keys[ids[i]] = simKey(ids[i]).Public()
		}
	}
	var wire atomic.Int64
	hub.OnDeliver(func(_, _, _ string, payload []byte) { wire.Add(int64(len(payload))) })
	applied := make([]atomic.Int64, n)
	for i, id := range ids {
		cfg := QuasarConfig{NodeID: id, Validators: ids, Transport: hub.Connect(id), ValidatorKeys: keys}
		if signed {
			cfg.SigningKey = simKey(id)
		}
		r, err := NewQuasar(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		r.Subscribe(func(context.Context, Frame) error { applied[i].Add(1); return nil })
		rs = append(rs, r)
	}
	b.Cleanup(func() {
		for _, r := range rs {
			r.Close()
		}
		hub.Close()
	})
	cpu0, wire0 := processCPU(), wire.Load()
	return rs, func() {
		b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		b.ReportMetric(float64(wire.Load()-wire0)/float64(b.N), "wire-B/op")
		if signed {
			var atts uint64
			for _, r := range rs {
				atts += r.Metrics().Attestations
			}
			// Each validator votes once per frame.
			b.ReportMetric(float64(b.N*n)/float64(max(atts, 1)), "votes/attestation")
		}
		require.Eventually(b, func() bool {
			for i := range applied {
				if applied[i].Load() != int64(b.N) {
					return false
				}
			}
			return true
		}, 10*time.Second, time.Millisecond, "not every node applied exactly the %d frames", b.N)
	}
}

func BenchmarkQuasarPropose3Node(b *testing.B)       { benchSequential(b, 3, false) }
func BenchmarkQuasarPropose3NodeSigned(b *testing.B) { benchSequential(b, 3, true) }

func BenchmarkQuasarPropose3NodeParallel(b *testing.B)       { benchParallel(b, 3, false) }
func BenchmarkQuasarPropose3NodeParallelSigned(b *testing.B) { benchParallel(b, 3, true) }
func BenchmarkQuasarPropose7NodeParallel(b *testing.B)       { benchParallel(b, 7, false) }
func BenchmarkQuasarPropose7NodeParallelSigned(b *testing.B) { benchParallel(b, 7, true) }

func benchSequential(b *testing.B, n int, signed bool) {
	rs, finish := benchCluster(b, n, signed)
	benchProposeSequential(b, rs[0])
	finish()
}

func benchParallel(b *testing.B, n int, signed bool) {
	rs, finish := benchCluster(b, n, signed)
	benchProposeParallel(b, rs)
	finish()
}
