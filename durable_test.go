package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A validator restarted on its DataDir remembers what it voted: the frame
// accepted with its vote stays the only one at that position, also when
// the validator then forms a quorum with the one node that never saw it.
// Without a DataDir, the restarted validator voted for the second frame too
// and two frames were accepted at seq 1, for good.
func TestDurable_RestartedValidatorKeepsItsVotes(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{durable: true, proposeWait: time.Second})
	a, b, z := c.ids[0], c.ids[1], c.ids[2]
	c.hub.Partition([]string{a, b}, []string{z})
	c.requireAccept(0, put("n", "k", "x"))
	c.waitAllApplied(1, 10*time.Second, 0, 1)

	c.restart(1)
	c.hub.Partition([]string{b, z}, []string{a})
	d, err := c.propose(2, put("n", "k", "y"))
	require.NotEqual(t, DecisionAccept, d, "a second frame was accepted at seq 1: %v", err)

	c.hub.Heal()
	c.waitAllApplied(1, 10*time.Second)
	c.requireConverged()
	for _, n := range c.nodes {
		got := n.kv.find("n", "k")
		require.Len(t, got, 1, "%s applied %d frames at n/k", n.id, len(got))
		assert.Equal(t, "x", string(got[0].Value), n.id)
		assert.Zero(t, n.r.Metrics().Conflicts, n.id)
	}
}

// After a graceful Close, a restarted validator feeds its handlers nothing
// again, and its namespaces continue where they were: two of three
// validators restarted at once still hold the cluster's frames, and a new
// frame gets the next Seq on every node.
func TestDurable_RestartContinuesWithoutReapplying(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{durable: true})
	for i := range 6 {
		c.requireAccept(i%3, put("n", "k", string(rune('a'+i))))
	}
	c.waitAllApplied(6, 10*time.Second)

	for _, i := range []int{1, 2} {
		require.NoError(t, c.nodes[i].r.Close())
	}
	for _, i := range []int{1, 2} {
		r, err := c.start(i)
		require.NoError(t, err)
		c.nodes[i].r = r
	}
	c.hub.Disconnect(c.ids[0]) // the restarted pair must decide alone
	c.requireAccept(1, put("n", "k", "g"))
	c.hub.Reconnect(c.ids[0])
	c.waitAllApplied(7, 10*time.Second)
	c.requireConverged()
	for _, n := range c.nodes {
		_, log := n.kv.snapshot()
		require.Len(t, log, 7, "%s applied a frame twice or missed one", n.id)
		assert.Equal(t, uint64(7), log[6].Seq, n.id)
	}
}

// A single validator with a DataDir continues its namespaces after a
// restart and feeds its handlers nothing twice.
func TestDurable_SingleValidatorRestart(t *testing.T) {
	dir := t.TempDir()
	kv := newKVReplica()
	start := func() *QuasarReplicator {
		hub := NewMemoryHub()
		t.Cleanup(func() { hub.Close() })
		r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: "solo", Transport: hub.Connect("solo"), DataDir: dir})
		require.NoError(t, err)
		r.Subscribe(kv.apply)
		return r
	}
	r := start()
	for i := range 5 {
		d, err := r.Propose(context.Background(), put("n", "k", string(rune('a'+i))))
		require.NoError(t, err)
		require.Equal(t, DecisionAccept, d)
	}
	require.NoError(t, r.Close())
	r = start()
	defer r.Close()
	d, err := r.Propose(context.Background(), put("n", "k", "f"))
	require.NoError(t, err)
	require.Equal(t, DecisionAccept, d)
	_, log := kv.snapshot()
	require.Len(t, log, 6)
	assert.Equal(t, uint64(6), log[5].Seq)
}

// soloConfig is a single validator's config on DataDir dir; its hub closes
// with the test.
func soloConfig(t *testing.T, dir string) QuasarConfig {
	hub := NewMemoryHub()
	t.Cleanup(func() { hub.Close() })
	return QuasarConfig{NodeID: "solo", Transport: hub.Connect("solo"), DataDir: dir}
}

// A DataDir is used by one replicator at a time.
func TestDurable_DataDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	cfg := soloConfig(t, dir)
	r, err := NewQuasar(context.Background(), cfg)
	require.NoError(t, err)
	_, err = NewQuasar(context.Background(), cfg)
	require.ErrorIs(t, err, errDirLocked)
	require.ErrorContains(t, err, dir)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	r, err = NewQuasar(context.Background(), cfg)
	require.NoError(t, err, "Close releases the directory")
	require.NoError(t, r.Close())
}

// A log whose records fail their checksums refuses to start, naming the
// file; an interrupted write at its end is truncated and the node starts.
func TestDurable_CorruptLogRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	cfg := soloConfig(t, dir)
	r, err := NewQuasar(context.Background(), cfg)
	require.NoError(t, err)
	for i := range 3 {
		_, err := r.Propose(context.Background(), put("n", "k", string(rune('a'+i))))
		require.NoError(t, err)
	}
	require.NoError(t, r.Close())
	path := filepath.Join(dir, "wal.log")
	good, err := os.ReadFile(path)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(path, good[:len(good)-3], 0o600))
	r, err = NewQuasar(context.Background(), cfg)
	require.NoError(t, err, "a torn tail is truncated")
	require.NoError(t, r.Close())

	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0x40
	require.NoError(t, os.WriteFile(path, bad, 0o600))
	_, err = NewQuasar(context.Background(), cfg)
	require.ErrorIs(t, err, errWALCorrupt)
	require.ErrorContains(t, err, path)
}

// fuzzRecords splits b into log records: a type byte, a uvarint length and
// that many payload bytes each, so that the fuzzer reaches the record
// decoders without having to forge the log's checksums.
func fuzzRecords(b []byte) []walRecord {
	var recs []walRecord
	for len(b) > 1 {
		typ := b[0]
		n, k := binary.Uvarint(b[1:])
		if k <= 0 || n > uint64(len(b)-1-k) {
			break
		}
		recs = append(recs, walRecord{typ: typ, data: b[1+k : 1+k+int(n)]})
		b = b[1+k+int(n):]
	}
	return recs
}

func appendFuzzRecords(b []byte, recs []walRecord) []byte {
	for _, r := range recs {
		b = append(b, r.typ)
		b = binary.AppendUvarint(b, uint64(len(r.data)))
		b = append(b, r.data...)
	}
	return b
}

// FuzzRestore feeds restore arbitrary records: it must never panic, and a
// core it restored must run, and its snapshot must restore again.
func FuzzRestore(f *testing.F) {
	// Seeds: the logs of a durable simulated run's nodes.
	s := newSimulator(4, nil)
	s.run()
	for _, n := range s.nodes {
		n.c.tick(s.now)
		recs, _, err := decodeWAL(append([]byte(walMagic), n.c.snapshot(nil)...))
		require.NoError(f, err)
		f.Add(appendFuzzRecords(nil, recs[:min(len(recs), 40)]))
	}
	cfg := s.nodes[0].cfg
	f.Fuzz(func(t *testing.T, b []byte) {
		var m metrics
		c, err := newCore(cfg, &m)
		require.NoError(t, err)
		if c.restore(int64(time.Second), fuzzRecords(b)) != nil {
			return
		}
		c.tick(int64(2 * time.Second))
		c.propose(int64(2*time.Second), &call{frame: put("n", "k", "v")})
		for e, _ := c.popApply(); e != nil; e, _ = c.popApply() {
			c.applied(e, nil)
		}
		c.takeReady()
		recs, _, err := decodeWAL(append([]byte(walMagic), c.snapshot(nil)...))
		require.NoError(t, err)
		c2, err := newCore(cfg, &m)
		require.NoError(t, err)
		require.NoError(t, c2.restore(int64(3*time.Second), recs), "a snapshot must restore")
	})
}

// A validator that was away for longer than its peers' memory window
// catches up from their archives, without a snapshot and without being
// told it fell behind.
func TestDurable_CatchUpFromArchive(t *testing.T) {
	behind := make(chan error, 4)
	c := newTestCluster(t, 3, clusterOpts{durable: true, retainFrames: 10, onBehind: func(_ int, err error) { behind <- err }})
	c.hub.Disconnect("node-2")
	for i := range 50 {
		c.requireAccept(i%2, put("ns", fmt.Sprint(i), "v"))
	}
	require.Eventually(t, func() bool {
		return c.nodes[0].r.Metrics().Retained <= 10 && c.nodes[1].r.Metrics().Retained <= 10
	}, 10*time.Second, 5*time.Millisecond, "the memory window did not move")
	c.hub.Reconnect("node-2")
	c.waitAllApplied(50, 20*time.Second)
	c.requireConverged()
	require.Empty(t, behind, "node-2 was told it fell behind")
	require.Positive(t, c.nodes[0].r.Metrics().DiskReads+c.nodes[1].r.Metrics().DiskReads, "no sync was answered from an archive")
}

// After the whole cluster restarted, a validator that was away while frames
// were accepted gets them from its peers' durable state.
func TestDurable_WholeClusterRestartCatchesUpTheAbsent(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{durable: true})
	c.requireAccept(0, put("ns", "first", "v"))
	c.waitAllApplied(1, 10*time.Second)
	c.hub.Disconnect("node-2")
	for i := range 20 {
		c.requireAccept(i%2, put("ns", fmt.Sprint(i), "v"))
	}
	c.waitAllApplied(21, 10*time.Second, 0, 1)
	for _, n := range c.nodes {
		require.NoError(t, n.r.Close())
	}
	c.hub.Reconnect("node-2")
	for i := range c.nodes {
		r, err := c.start(i)
		require.NoError(t, err)
		c.nodes[i].r = r
	}
	c.waitAllApplied(21, 20*time.Second)
	c.requireAccept(2, put("ns", "after", "v"))
	c.waitAllApplied(22, 10*time.Second)
	c.requireConverged()
}

// Compacted logs restore: with compaction at a few KiB, validators restart
// (one of them after others wrote on) and converge, applying nothing twice.
func TestDurable_CompactedLogsRestore(t *testing.T) {
	old := minCompact
	minCompact = 4 << 10
	t.Cleanup(func() { minCompact = old })
	c := newTestCluster(t, 3, clusterOpts{durable: true, retainFrames: 16})
	for i := range 120 {
		c.requireAccept(i%3, put(fmt.Sprint("ns", i%4), fmt.Sprint(i), "v"))
	}
	c.waitAllApplied(120, 10*time.Second)
	for _, n := range c.nodes {
		require.Positive(t, n.r.Metrics().LogCompactions, "%s never compacted its log", n.id)
	}
	c.restart(0)
	require.NoError(t, c.nodes[1].r.Close())
	for i := range 30 {
		c.requireAccept(2*(i%2), put(fmt.Sprint("ns", i%4), fmt.Sprint("late", i), "v"))
	}
	r, err := c.start(1)
	require.NoError(t, err)
	c.nodes[1].r = r
	c.waitAllApplied(150, 20*time.Second)
	c.requireConverged()
	for _, n := range c.nodes {
		_, log := n.kv.snapshot()
		require.Len(t, log, 150, "%s applied a frame twice or missed one", n.id)
	}
}

// A validator of a cluster of more than one started without a DataDir
// says, at Warn level, that it must not restart under its ID.
func TestDurable_WarnsWithoutDataDir(t *testing.T) {
	var logs bytes.Buffer
	hub := NewMemoryHub()
	defer hub.Close()
	r, err := NewQuasar(context.Background(), QuasarConfig{
		NodeID: "a", Validators: []string{"a", "b", "c"}, Transport: hub.Connect("a"),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Contains(t, logs.String(), "level=WARN msg=\"no DataDir")
}

// Frames accepted before the first Subscribe wait for it: a validator
// started after the others (or restarted on its DataDir, with frames to
// feed again) loses none of them to a window with no handler.
func TestQuasar_NothingAppliedBeforeFirstSubscribe(t *testing.T) {
	hub := NewMemoryHub()
	defer hub.Close()
	ids := []string{"a", "b", "c"}
	var rs []*QuasarReplicator
	for _, id := range ids[:2] {
		r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: id, Validators: ids, Transport: hub.Connect(id),
			WitnessAfter: 10 * time.Millisecond, AntiEntropyInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		defer r.Close()
		r.Subscribe(func(context.Context, Frame) error { return nil })
		rs = append(rs, r)
	}
	for i := range 5 {
		d, err := rs[0].Propose(context.Background(), put("ns", fmt.Sprint(i), "v"))
		require.NoError(t, err)
		require.Equal(t, DecisionAccept, d)
	}
	late, err := NewQuasar(context.Background(), QuasarConfig{NodeID: "c", Validators: ids, Transport: hub.Connect("c"),
		WitnessAfter: 10 * time.Millisecond, AntiEntropyInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	defer late.Close()
	require.Eventually(t, func() bool { return late.Metrics().FramesAccepted == 5 }, 10*time.Second, time.Millisecond,
		"the late validator did not catch up")
	require.Zero(t, late.Metrics().FramesApplied, "frames were applied with no handler subscribed")
	kv := newKVReplica()
	late.Subscribe(kv.apply)
	kv.waitCount(t, 5, 10*time.Second)
}
