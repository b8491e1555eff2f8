package bench

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
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

// raftDiskConfig is raftConfig with DefaultConfig's HeartbeatTimeout and
// ElectionTimeout (1s) and LeaderLeaseTimeout (500ms), for nodes whose stores
// sync to disk. On this shared VM one sync now and then takes longer than
// 50ms; with raftConfig's 50ms timeouts the leader then stepped down
// ("failed to contact quorum of nodes"), about once in 300 clusters, and an
// Apply in flight failed with "leadership lost while committing log". The
// longer timeouts cost only a longer first election during setup; like the
// short ones, they do not change the leader's path from Apply to its FSM.
func raftDiskConfig(id string) *raft.Config {
	conf := raftConfig(id)
	def := raft.DefaultConfig()
	conf.HeartbeatTimeout = def.HeartbeatTimeout
	conf.ElectionTimeout = def.ElectionTimeout
	conf.LeaderLeaseTimeout = def.LeaderLeaseTimeout
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

// raftCluster is three raft nodes with a discarding snapshot store. The
// log and stable stores are in memory, or raft-boltdb files (see
// newRaftBolt); the transport is in memory or TCP.
type raftCluster struct {
	rafts  []*raft.Raft
	trans  []raft.Transport // closed by Shutdown once the raft exists
	stores []raftStore      // closed after the rafts, when they are io.Closers
	fsms   []*countingFSM
	leader *raft.Raft

	syncs0 uint64 // fdatasync calls of all bolt stores when the timed loop started

	closeOnce sync.Once
	closeErr  error
}

var _ cluster = (*raftCluster)(nil)

// raftStore is what a raft node keeps its log and its stable state in; the
// benchmarks use one store for both.
type raftStore interface {
	raft.LogStore
	raft.StableStore
}

// newRaftStoreFunc returns node i's store.
type newRaftStoreFunc func(i int) (raftStore, error)

// inmemStore is raft.NewInmemStore for every node: nothing is written to
// disk.
func inmemStore(int) (raftStore, error) { return raft.NewInmemStore(), nil }

// newRaftCluster bootstraps a cluster over the given transports (one per
// node), with the stores newStore returns and the configuration newConfig
// returns for each node ID, and waits until it has a leader. It takes
// ownership of the transports and of the stores.
func newRaftCluster(tb testing.TB, trans []raft.Transport, newStore newRaftStoreFunc, newConfig func(id string) *raft.Config) *raftCluster {
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
	// Every node's stores receive the same initial configuration before any
	// raft starts, as in raft's own test clusters (MakeCluster in raft's
	// testing.go); the first election then picks the leader. Bootstrapping
	// running rafts instead races with the first election: a node that
	// already heard from a candidate refuses to bootstrap.
	confs := make([]*raft.Config, len(trans))
	for i, tr := range trans {
		store, err := newStore(i)
		if err != nil {
			tb.Fatalf("raft node %d store: %v", i, err)
		}
		c.stores = append(c.stores, store)
		confs[i] = newConfig(string(servers[i].ID))
		err = raft.BootstrapCluster(confs[i], store, store, raft.NewDiscardSnapshotStore(), tr, raft.Configuration{Servers: servers})
		if err != nil {
			tb.Fatalf("bootstrap raft node %d: %v", i, err)
		}
	}
	for i, tr := range trans {
		fsm := &countingFSM{}
		r, err := raft.NewRaft(confs[i], fsm, c.stores[i], c.stores[i], raft.NewDiscardSnapshotStore(), tr)
		if err != nil {
			tb.Fatalf("raft node %d: %v", i, err)
		}
		c.rafts = append(c.rafts, r)
		c.fsms = append(c.fsms, fsm)
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

// newRaftInmem builds a cluster on raft.InmemTransport, connected all to
// all, with in-memory stores.
func newRaftInmem(tb testing.TB, _ int) cluster {
	tb.Helper()
	return newRaftCluster(tb, inmemTransports(), inmemStore, raftConfig)
}

// newRaftBolt builds a cluster on raft.InmemTransport, like newRaftInmem,
// whose nodes keep their log and stable state in raft-boltdb files in a
// temporary directory, with fsync on (bbolt syncs every write transaction
// before it returns), and the timeouts of raftDiskConfig.
func newRaftBolt(tb testing.TB, _ int) cluster {
	tb.Helper()
	dir := tb.TempDir()
	return newRaftCluster(tb, inmemTransports(), func(i int) (raftStore, error) {
		s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, fmt.Sprintf("node-%d.db", i)), NoSync: false})
		if err != nil {
			return nil, err
		}
		return &boltStore{BoltStore: s}, nil
	}, raftDiskConfig)
}

// inmemTransports returns three raft.InmemTransports connected all to all.
func inmemTransports() []raft.Transport {
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
	return ts
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
	return newRaftCluster(tb, ts, inmemStore, raftConfig)
}

// boltStore is a raft-boltdb store that counts its write transactions. Each
// of StoreLog, StoreLogs, DeleteRange, Set and SetUint64 is one bbolt write
// transaction, and bbolt v1.3.5 commits a write transaction with two
// fdatasync calls (one after the data pages, one after the meta page) when
// NoSync is off. Neither bbolt nor raft counts syncs itself: bbolt's
// Stats().TxStats.Write counts page writes, not syncs.
type boltStore struct {
	*raftboltdb.BoltStore
	commits atomic.Uint64
}

// boltSyncsPerCommit is the number of fdatasync calls of one bbolt write
// transaction.
const boltSyncsPerCommit = 2

func (s *boltStore) StoreLog(l *raft.Log) error {
	return s.count(s.BoltStore.StoreLog(l))
}

func (s *boltStore) StoreLogs(ls []*raft.Log) error {
	return s.count(s.BoltStore.StoreLogs(ls))
}

func (s *boltStore) DeleteRange(lo, hi uint64) error {
	return s.count(s.BoltStore.DeleteRange(lo, hi))
}

func (s *boltStore) Set(k, v []byte) error { return s.count(s.BoltStore.Set(k, v)) }

func (s *boltStore) SetUint64(k []byte, v uint64) error {
	return s.count(s.BoltStore.SetUint64(k, v))
}

// count counts one committed write transaction, unless it failed.
func (s *boltStore) count(err error) error {
	if err == nil {
		s.commits.Add(1)
	}
	return err
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

// syncs returns the fdatasync calls of all nodes' bolt stores so far, and
// false if the stores are in memory.
func (c *raftCluster) syncs() (uint64, bool) {
	var n uint64
	bolt := false
	for _, s := range c.stores {
		if bs, ok := s.(*boltStore); ok {
			n += boltSyncsPerCommit * bs.commits.Load()
			bolt = true
		}
	}
	return n, bolt
}

func (c *raftCluster) started() { c.syncs0, _ = c.syncs() }

// report adds, for bolt stores, syncs/op: fdatasync calls of all three nodes
// per operation.
func (c *raftCluster) report(b *testing.B, ops int) {
	if n, ok := c.syncs(); ok {
		b.ReportMetric(float64(n-c.syncs0)/float64(ops), "syncs/op")
	}
}

// close shuts every node down; Shutdown().Error() also closes the node's
// transport. Transports whose raft was never created are closed directly.
// The stores are closed last, once no raft uses them.
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
		for _, s := range c.stores {
			if cl, ok := s.(io.Closer); ok {
				errs = append(errs, cl.Close())
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
