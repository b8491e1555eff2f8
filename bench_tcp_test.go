package replication

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
	sent := tqSent(c)
	benchProposeSequential(b, c.nodes["a"].r)
	benchTQFinish(b, c, applied, sent)
}

// BenchmarkQuasarProposeTCP3NodeParallel: 64 proposers (SetParallelism 32
// on 2 cores), each with its own namespace, spread over the three nodes:
// throughput when many decisions share connections and messages.
func BenchmarkQuasarProposeTCP3NodeParallel(b *testing.B) {
	c, applied := benchTQCluster(b)
	sent := tqSent(c)
	benchProposeParallel(b, []*QuasarReplicator{c.nodes["a"].r, c.nodes["b"].r, c.nodes["c"].r})
	benchTQFinish(b, c, applied, sent)
}
