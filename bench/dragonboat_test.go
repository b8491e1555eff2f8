package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/logger"
	chantrans "github.com/lni/dragonboat/v3/plugin/chan"
	"github.com/lni/dragonboat/v3/raftio"
	sm "github.com/lni/dragonboat/v3/statemachine"
	"github.com/lni/goutils/vfs"
)

// dragonboatClusterID is the one Raft group (a "shard" in later dragonboat
// versions) that the three NodeHosts replicate.
const dragonboatClusterID = 1

// dragonboatProposeTimeout bounds one SyncPropose, as raftApplyTimeout bounds
// one raft Apply.
const dragonboatProposeTimeout = 10 * time.Second

// dragonboatRTTMillisecond is NodeHostConfig.RTTMillisecond, the length of
// one dragonboat tick. With dragonboatHeartbeatRTT 1 the leader sends a
// heartbeat every 10ms, and with dragonboatElectionRTT 10 a follower that
// hears nothing for 100 to 190ms (randomized) starts an election.
// Heartbeats every millisecond (RTTMillisecond 1, HeartbeatRTT 1,
// ElectionRTT 10) made followers start elections under the 64-proposer load
// on a 2-core machine, and proposals in flight timed out; RTTMillisecond 1
// with HeartbeatRTT 10 and ElectionRTT 100 timed out too, less often. Ticks
// only drive heartbeats, elections and timeouts: the leader replicates a
// proposal at once, not on the next tick.
const (
	dragonboatRTTMillisecond = 10
	dragonboatHeartbeatRTT   = 1
	dragonboatElectionRTT    = 10
)

// dragonboatLoggers are the names of every logger dragonboat v3.3.8 creates
// (logger.GetLogger(name) in its packages).
var dragonboatLoggers = []string{
	"LogDB", "config", "dragonboat", "grpc", "logdb", "pebblekv", "raft",
	"raft-mt", "raftpb", "rocksdb", "rsm", "server", "settings", "tools",
	"transport",
}

var quietDragonboat sync.Once

// silenceDragonboat sets every dragonboat logger to CRITICAL. By default
// they log at INFO to stderr, dozens of lines per cluster; at WARNING, every
// incoming message a full receive queue drops (thousands per 64-proposer
// run); and at ERROR, "send batch failed" when a stopping NodeHost sends to a
// peer that has already stopped.
func silenceDragonboat() {
	quietDragonboat.Do(func() {
		for _, name := range dragonboatLoggers {
			logger.GetLogger(name).SetLevel(logger.CRITICAL)
		}
	})
}

// countingSM is a dragonboat state machine that counts the commands applied
// to it. Snapshots are off (Config.SnapshotEntries 0); SaveSnapshot and
// RecoverFromSnapshot only complete the interface.
type countingSM struct {
	n *atomic.Int64
}

var _ sm.IStateMachine = (*countingSM)(nil)

func (s *countingSM) Update([]byte) (sm.Result, error) {
	s.n.Add(1)
	return sm.Result{}, nil
}

func (s *countingSM) Lookup(any) (any, error) { return s.n.Load(), nil }

func (s *countingSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	_, err := fmt.Fprint(w, s.n.Load())
	return err
}

func (s *countingSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	var n int64
	if _, err := fmt.Fscan(r, &n); err != nil {
		return err
	}
	s.n.Store(n)
	return nil
}

func (s *countingSM) Close() error { return nil }

// chanTransportFactory creates dragonboat's in-process channel transport
// (plugin/chan). The plugin's own ChanTransportFactory panics in Validate,
// which NodeHostConfig.Validate and StartCluster call on every address, so
// this factory accepts the addresses newDragonboatChan hands out.
type chanTransportFactory struct{}

var _ config.TransportFactory = chanTransportFactory{}

func (chanTransportFactory) Create(nhc config.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return chantrans.NewChanTransport(nhc, h, ch)
}

func (chanTransportFactory) Validate(addr string) bool {
	return strings.HasPrefix(addr, dragonboatChanPrefix)
}

// dragonboatChanPrefix starts every channel transport address. The plugin
// registers listeners in one process-wide map, keyed by address, so each
// cluster gets addresses of its own (dragonboatChanSeq).
const dragonboatChanPrefix = "chan-"

var dragonboatChanSeq atomic.Uint64

// dragonboatCluster is three NodeHosts in this process, each running one
// node of Raft group dragonboatClusterID with a countingSM, and each with its
// LogDB (pebble, dragonboat's default) on its own in-memory file system.
type dragonboatCluster struct {
	hosts   []*dragonboat.NodeHost
	counts  []atomic.Int64 // counts[i]: commands applied by node ID i+1
	leader  *dragonboat.NodeHost
	session *client.Session // a NO-OP session: no deduplication, safe for concurrent use

	closeOnce sync.Once
}

var _ cluster = (*dragonboatCluster)(nil)

// newDragonboatChan builds a cluster on dragonboat's channel transport.
func newDragonboatChan(tb testing.TB, _ int) cluster {
	tb.Helper()
	seq := dragonboatChanSeq.Add(1)
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("%s%d-node-%d", dragonboatChanPrefix, seq, i)
	}
	return newDragonboatCluster(tb, addrs, chanTransportFactory{})
}

// newDragonboatTCP builds a cluster on dragonboat's default TCP transport,
// plaintext (MutualTLS off), over loopback.
func newDragonboatTCP(tb testing.TB, _ int) cluster {
	tb.Helper()
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = freeLoopbackAddr(tb)
	}
	return newDragonboatCluster(tb, addrs, nil)
}

// newDragonboatCluster starts one NodeHost per address (with the given
// transport factory, or the default TCP transport if nil), starts node i+1
// of the Raft group on NodeHost i with all three as initial members, and
// waits until every node knows the same leader.
func newDragonboatCluster(tb testing.TB, addrs []string, tf config.TransportFactory) *dragonboatCluster {
	tb.Helper()
	silenceDragonboat()
	c := &dragonboatCluster{counts: make([]atomic.Int64, len(addrs))}
	tb.Cleanup(func() {
		if err := c.close(); err != nil {
			tb.Error(err)
		}
	})
	members := make(map[uint64]dragonboat.Target, len(addrs))
	for i, addr := range addrs {
		members[uint64(i+1)] = addr
	}
	for i, addr := range addrs {
		expert := config.GetDefaultExpertConfig()
		expert.FS = vfs.NewMem()
		expert.TransportFactory = tf
		nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
			NodeHostDir:    "/nodehost",
			RTTMillisecond: dragonboatRTTMillisecond,
			RaftAddress:    addr,
			Expert:         expert,
		})
		if err != nil {
			tb.Fatalf("dragonboat nodehost %d: %v", i, err)
		}
		c.hosts = append(c.hosts, nh)
	}
	for i, nh := range c.hosts {
		cfg := config.Config{
			NodeID:       uint64(i + 1),
			ClusterID:    dragonboatClusterID,
			HeartbeatRTT: dragonboatHeartbeatRTT,
			ElectionRTT:  dragonboatElectionRTT,
		}
		create := func(_, nodeID uint64) sm.IStateMachine {
			return &countingSM{n: &c.counts[nodeID-1]}
		}
		if err := nh.StartCluster(members, false, create, cfg); err != nil {
			tb.Fatalf("dragonboat node %d: %v", i+1, err)
		}
	}
	waitFor(tb, "dragonboat leader elected", func() bool {
		var leader uint64
		for _, nh := range c.hosts {
			id, ok, err := nh.GetLeaderID(dragonboatClusterID)
			if err != nil || !ok || (leader != 0 && id != leader) {
				return false
			}
			leader = id
		}
		c.leader = c.hosts[leader-1]
		return true
	})
	c.session = c.leader.GetNoOPSession(dragonboatClusterID)
	return c
}

// submit proposes benchValue on the leader with a NO-OP session. SyncPropose
// returns once the entry is committed and applied to the leader's state
// machine.
func (c *dragonboatCluster) submit(int) error {
	ctx, cancel := context.WithTimeout(context.Background(), dragonboatProposeTimeout)
	defer cancel()
	_, err := c.leader.SyncPropose(ctx, c.session, benchValue)
	return err
}

func (c *dragonboatCluster) applied() []int64 { return loadCounts(c.counts) }

func (c *dragonboatCluster) started() {}

func (c *dragonboatCluster) report(*testing.B, int) {}

// close stops every NodeHost that was created: Stop stops its nodes, its
// transport, its engine and its LogDB, and waits for their goroutines. Stop
// reports no error (it panics if called twice, hence the Once).
func (c *dragonboatCluster) close() error {
	c.closeOnce.Do(func() {
		for _, nh := range c.hosts {
			nh.Stop()
		}
	})
	return nil
}
