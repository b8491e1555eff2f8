package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quasar-replication/replication"
)

// quasarCluster is three QuasarReplicator validators, majority quorum (2 of
// 3), default QuasarConfig otherwise (but for DataDir, when durable), each
// with a handler that counts the frames it applies.
type quasarCluster struct {
	nodes   []*replication.QuasarReplicator
	counts  []atomic.Int64
	frames  []replication.Frame // frames[w]: proposer w's frame, namespace "ns-<w>"
	closers []func() error      // the transports or hub, closed after the nodes
	durable bool                // every node has a DataDir

	sent0   uint64 // messages sent by all nodes when the timed loop started
	syncs0  uint64 // log syncs of all nodes when the timed loop started
	blocks0 uint64 // blocks proposed by all nodes when the timed loop started
	frames0 uint64 // frames proposed in them

	closeOnce sync.Once
	closeErr  error
}

var _ cluster = (*quasarCluster)(nil)

// newQuasarCluster starts one validator per transport. Proposer w proposes
// on node w%3 into its own namespace "ns-<w>": one writer per namespace, the
// model the replicator is built for. If dataDir is not empty, validator id
// keeps its durable log in dataDir/id; otherwise its state is in memory
// only.
func newQuasarCluster(tb testing.TB, proposers int, ids []string, trs []replication.Transport, closers []func() error, dataDir string) *quasarCluster {
	tb.Helper()
	c := &quasarCluster{counts: make([]atomic.Int64, len(ids)), closers: closers, durable: dataDir != ""}
	tb.Cleanup(func() {
		if err := c.close(); err != nil {
			tb.Error(err)
		}
	})
	for i, id := range ids {
		cfg := replication.QuasarConfig{
			NodeID:     id,
			Validators: ids,
			Transport:  trs[i],
		}
		if c.durable {
			cfg.DataDir = filepath.Join(dataDir, id)
		}
		r, err := replication.NewQuasar(context.Background(), cfg)
		if err != nil {
			tb.Fatalf("quasar node %s: %v", id, err)
		}
		n := &c.counts[i]
		r.Subscribe(func(context.Context, replication.Frame) error {
			n.Add(1)
			return nil
		})
		c.nodes = append(c.nodes, r)
	}
	for w := 0; w < proposers; w++ {
		c.frames = append(c.frames, replication.Frame{
			OrgID:     "bench",
			Namespace: fmt.Sprintf("ns-%d", w),
			Op:        "put",
			Key:       "k",
			Value:     benchValue,
		})
	}
	return c
}

func quasarIDs() []string { return []string{"node-0", "node-1", "node-2"} }

// newQuasarMemory builds a cluster on one replication.MemoryHub (no faults).
func newQuasarMemory(tb testing.TB, proposers int) cluster {
	tb.Helper()
	return newQuasarHub(tb, proposers, "")
}

// newQuasarDurable builds a cluster on one replication.MemoryHub, like
// newQuasarMemory, whose validators keep their durable log (QuasarConfig.DataDir)
// in a temporary directory: each syncs its log before a message or a Propose
// outcome that depends on it leaves the node.
func newQuasarDurable(tb testing.TB, proposers int) cluster {
	tb.Helper()
	return newQuasarHub(tb, proposers, tb.TempDir())
}

// newQuasarHub builds a cluster on one replication.MemoryHub (no faults),
// with its validators' DataDirs under dataDir ("" for none).
func newQuasarHub(tb testing.TB, proposers int, dataDir string) cluster {
	tb.Helper()
	ids := quasarIDs()
	hub := replication.NewMemoryHub()
	trs := make([]replication.Transport, len(ids))
	for i, id := range ids {
		trs[i] = hub.Connect(id)
	}
	return newQuasarCluster(tb, proposers, ids, trs, []func() error{hub.Close}, dataDir)
}

// newQuasarTCP builds a cluster on replication.TCPTransport over loopback
// with mutual TLS 1.3 (dev certificates from GenerateDevCerts, key exchange
// X25519MLKEM768, Go's default), default TCPConfig otherwise, and waits
// until every node is connected to every peer.
func newQuasarTCP(tb testing.TB, proposers int) cluster {
	tb.Helper()
	ids := quasarIDs()
	dir := tb.TempDir()
	if err := replication.GenerateDevCerts(dir, ids); err != nil {
		tb.Fatal(err)
	}
	addrs := make(map[string]string, len(ids))
	for _, id := range ids {
		addrs[id] = freeLoopbackAddr(tb)
	}
	var trs []*replication.TCPTransport
	closeAll := func() error {
		var errs []error
		for _, tr := range trs {
			errs = append(errs, tr.Close())
		}
		return errors.Join(errs...)
	}
	for _, id := range ids {
		tlsConf, err := devTLS(dir, id)
		if err != nil {
			_ = closeAll()
			tb.Fatal(err)
		}
		peers := make(map[string]string, len(ids)-1)
		for other, addr := range addrs {
			if other != id {
				peers[other] = addr
			}
		}
		tr, err := replication.NewTCPTransport(replication.TCPConfig{NodeID: id, Listen: addrs[id], Peers: peers, TLS: tlsConf})
		if err != nil {
			_ = closeAll()
			tb.Fatalf("tcp transport %s: %v", id, err)
		}
		trs = append(trs, tr)
	}
	ts := make([]replication.Transport, len(trs))
	for i, tr := range trs {
		ts[i] = tr
	}
	c := newQuasarCluster(tb, proposers, ids, ts, []func() error{closeAll}, "")
	waitFor(tb, "quasar tcp transports connected", func() bool {
		for _, tr := range trs {
			for _, p := range tr.Stats().Peers {
				if !p.Connected {
					return false
				}
			}
		}
		return true
	})
	return c
}

// devTLS loads the TLS configuration of node id from a GenerateDevCerts
// directory.
func devTLS(dir, id string) (*tls.Config, error) {
	return replication.LoadTLSConfig(
		filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem"), filepath.Join(dir, "ca.pem"))
}

// freeLoopbackAddr returns a loopback address whose port was free a moment
// ago: TCPConfig.Peers needs every address before the transports exist.
func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		tb.Fatal(err)
	}
	return addr
}

// submit proposes proposer w's frame on node w%3. Propose returns
// DecisionAccept once a quorum committed the frame and the proposing node's
// handlers applied it.
func (c *quasarCluster) submit(w int) error {
	d, err := c.nodes[w%len(c.nodes)].Propose(context.Background(), c.frames[w])
	if d != replication.DecisionAccept {
		return fmt.Errorf("decision %s: %w", d, err)
	}
	return err
}

func (c *quasarCluster) applied() []int64 { return loadCounts(c.counts) }

// counters returns the messages sent, the log syncs, the blocks proposed
// and the frames in them, of all nodes so far.
func (c *quasarCluster) counters() (sent, syncs, blocks, frames uint64) {
	for _, r := range c.nodes {
		m := r.Metrics()
		sent += m.MessagesSent
		syncs += m.LogSyncs
		blocks += m.BlocksProposed
		frames += m.FramesProposed
	}
	return sent, syncs, blocks, frames
}

func (c *quasarCluster) started() { c.sent0, c.syncs0, c.blocks0, c.frames0 = c.counters() }

// report adds frames/s (accepted frames per second of the timed loop),
// msgs/frame (transport messages sent by all nodes per frame: proposals,
// votes and repairs, several of which share a message under load) and, for
// a durable cluster, syncs/op (log syncs of all nodes per frame: one fsync
// each, except when a sync compacts the log; a burst of changes shares one),
// and frames/block (the mean number of frames per block proposed).
func (c *quasarCluster) report(b *testing.B, ops int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(ops)/s, "frames/s")
	}
	sent, syncs, blocks, frames := c.counters()
	b.ReportMetric(float64(sent-c.sent0)/float64(ops), "msgs/frame")
	if blocks > c.blocks0 {
		b.ReportMetric(float64(frames-c.frames0)/float64(blocks-c.blocks0), "frames/block")
	}
	if c.durable {
		b.ReportMetric(float64(syncs-c.syncs0)/float64(ops), "syncs/op")
	}
}

// close closes the replicators, then the transports or hub.
func (c *quasarCluster) close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, r := range c.nodes {
			errs = append(errs, r.Close())
		}
		for _, cl := range c.closers {
			errs = append(errs, cl())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
