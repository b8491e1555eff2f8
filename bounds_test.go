package replication

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file tests that what a node holds is bounded, whatever its peers
// send, and that user code that panics wedges nothing.

// A digest naming namespaces this node does not know makes no state for
// them: it asks about them (a bounded number at a time), and only frames
// that come back make a namespace.
func TestQuasar_DigestMakesNoNamespaces(t *testing.T) {
	r, _ := newLoneValidator(t, QuasarConfig{})
	heads := make([]nsRef, 50000)
	for i := range heads {
		heads[i] = nsRef{org: "org", ns: fmt.Sprintf("ns-%05d", i), seq: 7}
	}
	for i := 0; i < len(heads); i += digestBatch {
		require.NoError(t, r.receive(1, encodeMessage([]record{{typ: recDigest, digest: refs(heads[i:min(i+digestBatch, len(heads))]...)}})))
	}
	require.Zero(t, r.Metrics().Namespaces)
	r.mu.Lock()
	probes := len(r.c.probes)
	r.mu.Unlock()
	require.LessOrEqual(t, probes, maxProbes)
}

// RetainFrames is a hard cap on the decided frames a node retains, also
// when an accepted frame waits for a frame before it in its chain: it is
// held apart (until applied, or dropped after RetainFor) and does not stop
// the others from being forgotten.
func TestQuasar_RetainFramesIsACap(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{RetainFrames: 8, WitnessAfter: 10 * time.Millisecond})
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	certify := func(ns string, seq uint64) {
		t.Helper()
		f := Frame{OrgID: "org", Namespace: ns, Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		rec := record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: voters.at(0)}, voters: voters}
		require.NoError(t, r.receive(1, encodeMessage([]record{rec})))
	}
	certify("gap", 2) // accepted, waits for gap/1
	for seq := uint64(1); seq <= 200; seq++ {
		certify("ns", seq)
	}
	require.Eventually(t, func() bool { return r.Metrics().Retained <= 8 }, 5*time.Second, time.Millisecond,
		"retained %d frames, RetainFrames 8", r.Metrics().Retained)
	certify("gap", 1) // gap/2 can be applied now
	require.Eventually(t, func() bool { return r.Metrics().FramesApplied == 202 }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return r.Metrics().Retained <= 8 }, 5*time.Second, time.Millisecond)
}

// The outbox holds at most its limit in bytes: a transport that cannot
// send makes it drop records, counted, as a network would lose them.
func TestOutbox_Bounded(t *testing.T) {
	var m metrics
	var o outbox
	o.init(3, true, &m)
	o.limit = 10 << 10
	p := proposal{frame: Frame{OrgID: "org", Namespace: "ns", Seq: 1, Op: "put", Key: "k", Value: make([]byte, 1000)}}
	rec := blockRecord(p)
	for i := range 100 {
		if slot, ok := o.begin(i%4 - 1); ok {
			o.bufs[slot] = appendRecord(o.bufs[slot], &rec)
			o.end(slot)
		}
	}
	require.LessOrEqual(t, o.bytes, o.limit+1100, "held beyond the limit by more than one record")
	require.Positive(t, m.outboxDropped.Load())
	sent := 0
	for {
		msg, ok := o.pop()
		if !ok {
			break
		}
		_, err := decodeMessage(msg.b, 0, nil)
		require.NoError(t, err)
		sent += len(msg.b)
		o.recycle(msg.b)
	}
	require.Zero(t, o.bytes)
	require.Positive(t, sent)
}

// A namespace left with nothing in it (here: reset to Seq 0 though never
// written) is dropped after a while; one with a head is kept.
func TestCore_EmptyNamespacesEvicted(t *testing.T) {
	c := newTestCore(t, 3, 0)
	now := int64(time.Second)
	c.reset(now, spaceKey{"org", "empty"}, 0)
	c.reset(now, spaceKey{"org", "kept"}, 5)
	require.Len(t, c.spaces, 2)
	c.tick(now + 2*c.cfg.witness)
	require.Len(t, c.spaces, 1)
	require.NotNil(t, c.spaces[spaceKey{"org", "kept"}])
}

// newTestCore is a core of validator self of n (node-0 … node-n-1), with
// WitnessAfter 10ms and otherwise the defaults.
func newTestCore(t *testing.T, n, self int) *core {
	t.Helper()
	cfg := coreConfig{self: self, byNodeID: map[nodeID]int{}, q: n/2 + 1, witness: int64(10 * time.Millisecond),
		retainFor: int64(DefaultRetainFor), antiEntropy: int64(DefaultAntiEntropyInterval), retainFrames: DefaultRetainFrames,
		maxFrame: DefaultMaxFrameBytes, maxBacklog: DefaultMaxApplyBacklog, unicast: true}
	for i := range n {
		id := fmt.Sprintf("node-%d", i)
		cfg.names = append(cfg.names, id)
		cfg.ids = append(cfg.ids, validatorNodeID(id))
		cfg.byNodeID[validatorNodeID(id)] = i
	}
	c, err := newCore(cfg, &metrics{})
	require.NoError(t, err)
	return c
}

// An OnBehind that panics leaves the replicator usable: the panic goes on
// up the goroutine that ran it, applying resumes, and Close returns.
func TestQuasar_OnBehindPanicLeavesReplicatorUsable(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{OnBehind: func(error) { panic("behind") }})
	// node-1 answers a sync of org/ns from 0: no longer retained. The
	// apply goroutine is kept away (the applying flag) so that OnBehind
	// runs, and panics, on this goroutine.
	r.mu.Lock()
	r.applying = true
	r.c.probe(mono(), spaceKey{"org", "ns"}, 1) // as a digest naming it would
	r.unlock()
	behind := record{typ: recBehind, ref: nsRef{"org", "ns", 0}, who: validatorNodeID(ids[0]), to: validatorNodeID(ids[1])}
	require.NoError(t, r.receive(1, encodeMessage([]record{behind})))
	require.PanicsWithValue(t, "behind", func() {
		r.mu.Lock()
		r.applying = false
		r.applyLocked(nil) // panics with mu released (its cleanup releases it)
	})

	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	f := Frame{OrgID: "org", Namespace: "other", Seq: 1, Op: "put", Key: "k", Value: []byte("v")}
	require.NoError(t, r.receive(1, encodeMessage([]record{{typ: recCertificate, prop: proposal{frame: f, proposer: voters.at(0)}, voters: voters}})))
	require.Eventually(t, func() bool { return r.Metrics().FramesApplied == 1 }, 5*time.Second, time.Millisecond, "applying resumed")
	require.EqualValues(t, 1, r.Metrics().Behind)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	d, err := r.Propose(ctx, put("mine", "k", "v")) // nobody else votes: it times out, it does not hang
	require.Equal(t, DecisionTimeout, d, "%v", err)
	done := make(chan struct{})
	go func() { _ = r.Close(); close(done) }()
	requireDone(t, done, "Close after OnBehind panicked")
}
