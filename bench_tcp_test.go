package replication

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tcpBenchValue is the 256-byte value of the TCP Propose benchmarks.
var tcpBenchValue = make([]byte, 256)

// benchTQCluster starts three Quasar validators over mutual-TLS
// TCPTransports on loopback, each counting the frames it applies, and
// waits until every node is connected to every peer.
func benchTQCluster(b *testing.B) (*tqCluster, map[string]*atomic.Int64) {
	b.Helper()
	applied := map[string]*atomic.Int64{"a": {}, "b": {}, "c": {}}
	c := newTQCluster(b, tqOpts{wrap: func(id string, _ Handler) Handler {
		n := applied[id]
		return func(context.Context, Frame) error { n.Add(1); return nil }
	}}, "a", "b", "c")
	require.Eventually(b, func() bool {
		for _, n := range c.nodes {
			for _, p := range n.tr.Stats().Peers {
				if !p.Connected {
					return false
				}
			}
		}
		return true
	}, tqWait, 5*time.Millisecond, "cluster never fully connected")
	return c, applied
}

// benchTQFinish stops the timer, checks that every node applied every
// frame (the benchmark claims replication, not only a local decision), and
// reports the transport messages sent per frame.
func benchTQFinish(b *testing.B, c *tqCluster, applied map[string]*atomic.Int64, sentBefore uint64) {
	b.StopTimer()
	require.Eventually(b, func() bool {
		for _, n := range applied {
			if n.Load() < int64(b.N) {
				return false
			}
		}
		return true
	}, tqWait, time.Millisecond, "not every node applied all %d frames", b.N)
	b.ReportMetric(float64(tqSent(c)-sentBefore)/float64(b.N), "msgs/op")
}

// tqSent is the number of transport messages the cluster's nodes sent.
func tqSent(c *tqCluster) (sent uint64) {
	for _, n := range c.nodes {
		sent += n.tr.Stats().Sent
	}
	return sent
}

// BenchmarkQuasarProposeTCP3Node: one proposer, one Propose at a time,
// three validators over loopback TLS: the latency of a decision (a round
// trip to a quorum and the local apply).
func BenchmarkQuasarProposeTCP3Node(b *testing.B) {
	c, applied := benchTQCluster(b)
	r := c.nodes["a"].r
	ctx := context.Background()
	f := Frame{OrgID: "org", Namespace: "ns", Op: "put", Key: "k", Value: tcpBenchValue}
	sent := tqSent(c)
	b.ReportAllocs()
	b.SetBytes(int64(len(tcpBenchValue)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
			b.Fatal(d, err)
		}
	}
	benchTQFinish(b, c, applied, sent)
}

// BenchmarkQuasarProposeTCP3NodeParallel: 64 proposers (SetParallelism 32
// on 2 cores), each with its own namespace, spread over the three nodes:
// throughput when many decisions share connections and messages.
func BenchmarkQuasarProposeTCP3NodeParallel(b *testing.B) {
	c, applied := benchTQCluster(b)
	rs := []*QuasarReplicator{c.nodes["a"].r, c.nodes["b"].r, c.nodes["c"].r}
	ctx := context.Background()
	var next atomic.Int64
	sent := tqSent(c)
	b.ReportAllocs()
	b.SetBytes(int64(len(tcpBenchValue)))
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1)
		r := rs[int(i)%len(rs)]
		f := Frame{OrgID: "org", Namespace: fmt.Sprintf("ns-%d", i), Op: "put", Key: "k", Value: tcpBenchValue}
		for pb.Next() {
			if d, err := r.Propose(ctx, f); d != DecisionAccept || err != nil {
				b.Error(d, err)
				return
			}
		}
	})
	benchTQFinish(b, c, applied, sent)
}
