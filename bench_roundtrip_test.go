package replication

import (
	"context"
	"testing"
)

// The round-trip benchmarks measure the floor under a sequential Propose on
// three nodes: the transport work and goroutine hand-offs of its critical
// path, with no consensus at all. A sequential Propose on node a needs its
// proposal to reach a peer (a → b), that peer's vote to come back (b → a),
// and the receiving goroutine to wake the waiting caller: here, node a
// broadcasts a ping, every peer answers each ping with a pong broadcast,
// and the caller waits for the first pong, exactly as Propose waits for
// the first vote that completes its quorum.

// benchRoundTrip runs the ping/pong loop over three connected transports.
func benchRoundTrip(b *testing.B, a, peer1, peer2 Transport) {
	ctx := context.Background()
	payload := make([]byte, 256+64) // about a proposal's size
	pong := make(chan struct{}, 1)
	for _, p := range []Transport{peer1, peer2} {
		p.OnReceive("rt-ping", func(m []byte) error {
			return p.Broadcast(ctx, "rt-pong", m[:53]) // a vote's size
		})
	}
	a.OnReceive("rt-pong", func([]byte) error {
		select {
		case pong <- struct{}{}:
		default:
		}
		return nil
	})
	roundTrip := func() {
		if err := a.Broadcast(ctx, "rt-ping", payload); err != nil {
			b.Fatal(err)
		}
		<-pong
	}
	roundTrip() // warm-up: connections and queues in place
	// Both peers answer every ping: drain the second pong of the warm-up
	// before timing so that the loop measures one round trip per op.
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		roundTrip()
		// The slower peer's pong may still arrive: drop it, as Propose
		// ignores a vote after its frame is decided.
		select {
		case <-pong:
		default:
		}
	}
}

// BenchmarkMemoryHubRoundTrip3Node: the hand-off floor of
// BenchmarkQuasarPropose3Node, on the same MemoryHub.
func BenchmarkMemoryHubRoundTrip3Node(b *testing.B) {
	hub := NewMemoryHub()
	b.Cleanup(func() { _ = hub.Close() })
	benchRoundTrip(b, hub.Connect("a"), hub.Connect("b"), hub.Connect("c"))
}

// BenchmarkTCPRoundTrip3Node: the floor of BenchmarkQuasarProposeTCP3Node,
// over the same mutual-TLS loopback transports.
func BenchmarkTCPRoundTrip3Node(b *testing.B) {
	c := newTCPCluster(b, nil, "a", "b", "c")
	c.waitConnected(b)
	benchRoundTrip(b, c.nodes["a"], c.nodes["b"], c.nodes["c"])
}
