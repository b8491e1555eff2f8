package bench

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// raftApplyTimeout is the timeout passed to Apply: how long it may wait to
// enqueue the command on the leader (not how long replication may take).
const raftApplyTimeout = 10 * time.Second

// raftConfig is raft's DefaultConfig with the short timeouts raft's own test
// suite uses for in-memory clusters (inmemConfig in raft's testing.go):
// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout 50ms, so the
// leader is elected in milliseconds, and CommitTimeout 5ms, so followers
// learn the commit index soon after an idle period. None of these change the
// leader's path from Apply to its FSM under load: the leader replicates a new
// entry at once and commits it when a majority has it. Everything else is
// DefaultConfig: MaxAppendEntries 64, BatchApplyCh off (the leader still
// drains up to MaxAppendEntries waiting Apply calls into one batch).
func raftConfig(id string) *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id)
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.Logger = hclog.NewNullLogger()
	return conf
}

// countingFSM counts the commands applied to it.
type countingFSM struct {
	n atomic.Int64
}

func (f *countingFSM) Apply(*raft.Log) any {
	f.n.Add(1)
	return nil
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) {
	return countSnapshot(f.n.Load()), nil
}

func (f *countingFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var n int64
	if _, err := fmt.Fscan(rc, &n); err != nil {
		return err
	}
	f.n.Store(n)
	return nil
}

// countSnapshot is a countingFSM snapshot: the count, in decimal.
type countSnapshot int64

func (s countSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := fmt.Fprint(sink, int64(s)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (countSnapshot) Release() {}

// raftCluster is three raft nodes with in-memory log and stable stores and
// a discarding snapshot store; only the transport differs between the
// in-memory and TCP variants.
type raftCluster struct {
	rafts  []*raft.Raft
	trans  []raft.Transport // closed by Shutdown once the raft exists
	fsms   []*countingFSM
	leader *raft.Raft

	closeOnce sync.Once
	closeErr  error
}

var _ cluster = (*raftCluster)(nil)

// newRaftCluster bootstraps a cluster over the given transports (one per
// node) and waits until it has a leader. It takes ownership of the
// transports.
func newRaftCluster(tb testing.TB, trans []raft.Transport) *raftCluster {
	tb.Helper()
	c := &raftCluster{trans: trans}
	tb.Cleanup(func() {
		if err := c.close(); err != nil {
			tb.Error(err)
		}
	})
	var servers []raft.Server
	for i, tr := range trans {
		servers = append(servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(fmt.Sprintf("node-%d", i)),
			Address:  tr.LocalAddr(),
		})
	}
	for i, tr := range trans {
		store := raft.NewInmemStore()
		fsm := &countingFSM{}
		r, err := raft.NewRaft(raftConfig(string(servers[i].ID)), fsm, store, store, raft.NewDiscardSnapshotStore(), tr)
		if err != nil {
			tb.Fatalf("raft node %d: %v", i, err)
		}
		c.rafts = append(c.rafts, r)
		c.fsms = append(c.fsms, fsm)
	}
	// Bootstrapping every node with the same configuration is allowed; the
	// first election then picks the leader.
	for i, r := range c.rafts {
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			tb.Fatalf("bootstrap raft node %d: %v", i, err)
		}
	}
	waitFor(tb, "raft leader elected", func() bool {
		for _, r := range c.rafts {
			if r.State() == raft.Leader {
				c.leader = r
				return true
			}
		}
		return false
	})
	return c
}

// newRaftInmem builds a cluster on raft.InmemTransport, connected all to all.
func newRaftInmem(tb testing.TB, _ int) cluster {
	tb.Helper()
	var addrs []raft.ServerAddress
	var trans []*raft.InmemTransport
	for i := 0; i < 3; i++ {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("node-%d", i)))
		addrs = append(addrs, addr)
		trans = append(trans, tr)
	}
	for i, tr := range trans {
		for j, peer := range trans {
			if i != j {
				tr.Connect(addrs[j], peer)
			}
		}
	}
	ts := make([]raft.Transport, len(trans))
	for i, tr := range trans {
		ts[i] = tr
	}
	return newRaftCluster(tb, ts)
}

// newRaftTCP builds a cluster on raft.NewTCPTransport bound to loopback
// port 0. raft's TCP transport is plaintext: no TLS, no authentication.
func newRaftTCP(tb testing.TB, _ int) cluster {
	tb.Helper()
	var ts []raft.Transport
	for i := 0; i < 3; i++ {
		tr, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, hclog.NewNullLogger())
		if err != nil {
			for _, t := range ts {
				_ = t.(*raft.NetworkTransport).Close()
			}
			tb.Fatalf("raft tcp transport %d: %v", i, err)
		}
		ts = append(ts, tr)
	}
	return newRaftCluster(tb, ts)
}

// submit applies one command on the leader. Apply's future returns once the
// entry is committed and applied to the leader's FSM.
func (c *raftCluster) submit(int) error {
	return c.leader.Apply(benchValue, raftApplyTimeout).Error()
}

func (c *raftCluster) applied() []int64 {
	n := make([]int64, len(c.fsms))
	for i, f := range c.fsms {
		n[i] = f.n.Load()
	}
	return n
}

func (c *raftCluster) started()               {}
func (c *raftCluster) report(*testing.B, int) {}

// close shuts every node down; Shutdown().Error() also closes the node's
// transport. Transports whose raft was never created are closed directly.
//
// NetworkTransport.Close stops the listener but leaves the pooled outbound
// connections open, so each peer's handler goroutine for them stays blocked
// in Read; CloseStreams closes them.
func (c *raftCluster) close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, r := range c.rafts {
			errs = append(errs, r.Shutdown().Error())
		}
		for _, tr := range c.trans[len(c.rafts):] {
			if wc, ok := tr.(raft.WithClose); ok {
				errs = append(errs, wc.Close())
			}
		}
		for _, tr := range c.trans {
			if nt, ok := tr.(*raft.NetworkTransport); ok {
				nt.CloseStreams()
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
