package replication

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clusterOpts tunes newTestCluster. Zero values pick test-friendly defaults.
type clusterOpts struct {
	quorum       int
	proposeWait  time.Duration
	witnessAfter time.Duration
	retainFrames int
	retainFor    time.Duration
	antiEntropy  time.Duration
	maxBacklog   int
	onBehind     func(node int, err error)
	durable      bool // each node keeps a DataDir (restart brings it back)
	signed       bool // validators have signing keys (simKey)
}

// testCluster is n Quasar validators on one MemoryHub, each applying frames
// into its own key-value replica.
type testCluster struct {
	t     *testing.T
	o     clusterOpts
	hub   *MemoryHub
	ids   []string
	nodes []*testNode
	keys  map[string]PublicKey // with signed
}

type testNode struct {
	id  string
	dir string // DataDir ("" in memory)
	tr  *MemoryTransport
	r   *QuasarReplicator
	kv  *kvReplica
}

// kvReplica is the state a node's handler builds: puts and deletes into a
// map, plus the log of applied frames in apply order.
type kvReplica struct {
	mu      sync.Mutex
	data    map[string]string
	applied []Frame
	noLog   bool          // count only: for tests that push millions of frames
	n       int           // frames applied
	changed chan struct{} // closed and replaced on every apply
}

// discard makes the replica keep no log (count only), so long-running tests
// measure the replicator's memory, not the test's.
func (kv *kvReplica) discard() {
	kv.mu.Lock()
	kv.noLog = true
	kv.mu.Unlock()
}

func newKVReplica() *kvReplica {
	return &kvReplica{data: map[string]string{}, changed: make(chan struct{})}
}

func (kv *kvReplica) apply(_ context.Context, f Frame) error {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	k := string(f.FrameKey())
	switch f.Op {
	case "put":
		kv.data[k] = string(f.Value)
	case "del":
		delete(kv.data, k)
	}
	kv.n++
	if !kv.noLog {
		f.Value = append([]byte(nil), f.Value...)
		kv.applied = append(kv.applied, f)
	}
	close(kv.changed)
	kv.changed = make(chan struct{})
	return nil
}

func (kv *kvReplica) snapshot() (map[string]string, []Frame) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return maps.Clone(kv.data), append([]Frame(nil), kv.applied...)
}

// find returns the applied frames of a namespace with the given key.
func (kv *kvReplica) find(ns, key string) []Frame {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	var out []Frame
	for _, f := range kv.applied {
		if f.Namespace == ns && f.Key == key {
			out = append(out, f)
		}
	}
	return out
}

func (kv *kvReplica) count() int {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return kv.n
}

// waitCount waits until the replica applied at least n frames.
func (kv *kvReplica) waitCount(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		kv.mu.Lock()
		got, ch := kv.n, kv.changed
		kv.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("replica applied %d frames, want %d within %s", got, n, within)
		}
	}
}

func newTestCluster(t *testing.T, n int, o clusterOpts) *testCluster {
	t.Helper()
	if o.proposeWait == 0 {
		o.proposeWait = 5 * time.Second
	}
	if o.witnessAfter == 0 {
		o.witnessAfter = 20 * time.Millisecond
	}
	if o.antiEntropy == 0 {
		o.antiEntropy = 50 * time.Millisecond
	}
	c := &testCluster{t: t, o: o, hub: NewMemoryHub()}
	for i := 0; i < n; i++ {
		c.ids = append(c.ids, fmt.Sprintf("node-%d", i))
	}
	if o.signed {
		c.keys = make(map[string]PublicKey, n)
		for _, id := range c.ids {
			c.keys[id] = simKey(id).Public()
		}
	}
	for _, id := range c.ids {
		node := &testNode{id: id, tr: c.hub.Connect(id), kv: newKVReplica()}
		if o.durable {
			node.dir = filepath.Join(t.TempDir(), id)
		}
		c.nodes = append(c.nodes, node)
	}
	for i := range c.nodes {
		r, err := c.start(i)
		require.NoError(t, err)
		c.nodes[i].r = r
	}
	t.Cleanup(c.close)
	return c
}

// start starts a replicator for node i, on its transport and DataDir, its
// replica subscribed.
func (c *testCluster) start(i int) (*QuasarReplicator, error) {
	o, node := c.o, c.nodes[i]
	var onBehind func(error)
	if o.onBehind != nil {
		onBehind = func(err error) { o.onBehind(i, err) }
	}
	var key *SigningKey
	if o.signed {
		key = simKey(node.id)
	}
	r, err := NewQuasar(context.Background(), QuasarConfig{
		NodeID:              node.id,
		Validators:          c.ids,
		Transport:           node.tr,
		Quorum:              o.quorum,
		ProposeWait:         o.proposeWait,
		WitnessAfter:        o.witnessAfter,
		RetainFrames:        o.retainFrames,
		RetainFor:           o.retainFor,
		AntiEntropyInterval: o.antiEntropy,
		MaxApplyBacklog:     o.maxBacklog,
		OnBehind:            onBehind,
		DataDir:             node.dir,
		SigningKey:          key,
		ValidatorKeys:       c.keys,
	})
	if err != nil {
		return nil, err
	}
	r.Subscribe(node.kv.apply)
	return r, nil
}

// restart closes node i's replicator and starts a new one in its place
// (on its DataDir, if it has one), as a process restart would. The
// replica (the application's state) stays.
func (c *testCluster) restart(i int) {
	c.t.Helper()
	require.NoError(c.t, c.nodes[i].r.Close())
	r, err := c.start(i)
	require.NoError(c.t, err)
	c.nodes[i].r = r
}

func (c *testCluster) close() {
	for _, n := range c.nodes {
		require.NoError(c.t, n.r.Close())
	}
	require.NoError(c.t, c.hub.Close())
}

func (c *testCluster) propose(i int, f Frame) (Decision, error) {
	return c.nodes[i].r.Propose(context.Background(), f)
}

func (c *testCluster) requireAccept(i int, f Frame) {
	c.t.Helper()
	d, err := c.propose(i, f)
	require.NoError(c.t, err)
	require.Equal(c.t, DecisionAccept, d)
}

// waitAllApplied waits until every node listed (all when none) applied at
// least n frames.
func (c *testCluster) waitAllApplied(n int, within time.Duration, nodes ...int) {
	c.t.Helper()
	if len(nodes) == 0 {
		for i := range c.nodes {
			nodes = append(nodes, i)
		}
	}
	for _, i := range nodes {
		c.nodes[i].kv.waitCount(c.t, n, within)
	}
}

// requireConverged checks that every node holds the same key-value state
// and applied the same frames, in the same order per namespace.
func (c *testCluster) requireConverged() {
	c.t.Helper()
	data0, log0 := c.nodes[0].kv.snapshot()
	for _, n := range c.nodes[1:] {
		data, log := n.kv.snapshot()
		require.Equal(c.t, data0, data, "state of %s differs from %s", n.id, c.nodes[0].id)
		require.Equal(c.t, perNamespace(log0), perNamespace(log), "applied frames of %s differ from %s", n.id, c.nodes[0].id)
	}
}

func perNamespace(log []Frame) map[string][]uint64 {
	out := map[string][]uint64{}
	for _, f := range log {
		k := f.OrgID + "/" + f.Namespace
		out[k] = append(out[k], f.Seq)
	}
	return out
}

func put(ns, key, val string) Frame {
	return Frame{OrgID: "org", Namespace: ns, Op: "put", Key: key, Value: []byte(val)}
}
