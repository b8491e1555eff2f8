package replication

import (
	"context"
	"fmt"
	"testing"
)

// benchLocal returns a LocalReplicator with one no-op handler that counts
// the frames it applied, so a benchmark can check it measured real applies.
func benchLocal(b *testing.B) (*LocalReplicator, *uint64) {
	b.Helper()
	r := NewLocal()
	b.Cleanup(func() { _ = r.Close() })
	applied := new(uint64)
	r.Subscribe(func(context.Context, Frame) error {
		*applied++ // handlers never run concurrently
		return nil
	})
	return r, applied
}

// BenchmarkLocalPropose measures one Propose, from the call to its handler
// having applied the frame: sequential callers, one namespace, Seq assigned.
func BenchmarkLocalPropose(b *testing.B) {
	r, applied := benchLocal(b)
	ctx := context.Background()
	f := Frame{OrgID: "org", Namespace: "tasks", Op: "put", Key: "k", Value: make([]byte, 256)}
	b.ReportAllocs()
	b.SetBytes(int64(len(f.Value)))
	for b.Loop() {
		if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
			b.Fatalf("Propose = %v, %v", d, err)
		}
	}
	b.StopTimer()
	if acc, _ := r.Stats(); *applied != acc {
		b.Fatalf("applied %d frames, accepted %d", *applied, acc)
	}
}

// BenchmarkLocalProposeNamespaces is BenchmarkLocalPropose with frames
// spread round-robin over 16 namespaces, so consecutive frames never share
// one (the per-namespace lookup is not cached).
func BenchmarkLocalProposeNamespaces(b *testing.B) {
	r, applied := benchLocal(b)
	ctx := context.Background()
	frames := make([]Frame, 16)
	for i := range frames {
		frames[i] = Frame{OrgID: "org", Namespace: fmt.Sprintf("tasks-%02d", i), Op: "put", Key: "k", Value: make([]byte, 256)}
	}
	b.ReportAllocs()
	b.SetBytes(256)
	i := 0
	for b.Loop() {
		if d, err := r.Propose(ctx, frames[i%len(frames)]); d != DecisionAccept || err != nil {
			b.Fatalf("Propose = %v, %v", d, err)
		}
		i++
	}
	b.StopTimer()
	if acc, _ := r.Stats(); *applied != acc {
		b.Fatalf("applied %d frames, accepted %d", *applied, acc)
	}
}

// BenchmarkLocalProposeParallel is BenchmarkLocalPropose with GOMAXPROCS
// callers proposing to the same namespace at once: it measures the
// contended path (waiting, handing frames to the applier).
func BenchmarkLocalProposeParallel(b *testing.B) {
	r, applied := benchLocal(b)
	f := Frame{OrgID: "org", Namespace: "tasks", Op: "put", Key: "k", Value: make([]byte, 256)}
	b.ReportAllocs()
	b.SetBytes(int64(len(f.Value)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
				b.Errorf("Propose = %v, %v", d, err)
				return
			}
		}
	})
	b.StopTimer()
	if acc, _ := r.Stats(); *applied != acc {
		b.Fatalf("applied %d frames, accepted %d", *applied, acc)
	}
}
