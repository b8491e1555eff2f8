package replication

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
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
	ctx := context.Background()
	f := Frame{OrgID: "org", Namespace: "ns", Op: "put", Key: "k", Value: benchValue}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchValue)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d, err := r.Propose(ctx, f); d != DecisionAccept {
			b.Fatal(d, err)
		}
	}
	b.StopTimer()
	if applied.Load() != int64(b.N) {
		b.Fatalf("applied %d of %d", applied.Load(), b.N)
	}
}

// benchCluster starts n validators on a MemoryHub, each with a counting
// handler, for the multi-node benchmarks.
func benchCluster(b *testing.B, n int) ([]*QuasarReplicator, *atomic.Int64, func()) {
	hub := NewMemoryHub()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i)
	}
	var applied atomic.Int64
	var rs []*QuasarReplicator
	for _, id := range ids {
		r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: id, Validators: ids, Transport: hub.Connect(id)})
		if err != nil {
			b.Fatal(err)
		}
		r.Subscribe(func(context.Context, Frame) error { applied.Add(1); return nil })
		rs = append(rs, r)
	}
	return rs, &applied, func() {
		for _, r := range rs {
			r.Close()
		}
		hub.Close()
	}
}

func BenchmarkQuasarPropose3Node(b *testing.B) {
	rs, _, stop := benchCluster(b, 3)
	defer stop()
	ctx := context.Background()
	f := Frame{OrgID: "org", Namespace: "ns", Op: "put", Key: "k", Value: benchValue}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchValue)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d, err := rs[0].Propose(ctx, f); d != DecisionAccept {
			b.Fatal(d, err)
		}
	}
}

func BenchmarkQuasarPropose3NodeParallel(b *testing.B) {
	rs, _, stop := benchCluster(b, 3)
	defer stop()
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetBytes(int64(len(benchValue)))
	b.SetParallelism(32) // 64 proposers on this 2-core machine
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1)
		r := rs[int(i)%len(rs)]
		f := Frame{OrgID: "org", Namespace: fmt.Sprintf("ns-%d", i), Op: "put", Key: "k", Value: benchValue}
		for pb.Next() {
			if d, err := r.Propose(ctx, f); d != DecisionAccept {
				b.Error(d, err)
				return
			}
		}
	})
}
