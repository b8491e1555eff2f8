package replication

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// proofOf waits for node i's proof of the frame at ns/seq.
func (c *testCluster) proofOf(i int, ns string, seq uint64) []byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := c.nodes[i].r.Proof(ctx, "org", ns, seq)
	require.NoError(c.t, err)
	return p
}

func TestSigned_ProofOnEveryNode(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true})
	f := Frame{OrgID: "org", Namespace: "n", Op: "put", Key: "k", Value: []byte("v")}
	c.requireAccept(0, f)
	c.requireAccept(0, put("n", "k2", "v2"))
	c.waitAllApplied(2, 10*time.Second)
	for i := range c.nodes {
		proof := c.proofOf(i, "n", 1)
		got, err := VerifyProof(c.keys, 2, proof)
		require.NoError(t, err, "node %d", i)
		f.Seq = 1
		require.Equal(t, f, got)
		// The proof holds for the cluster's quorum and above.
		_, err = VerifyProof(c.keys, 3, proof)
		require.ErrorIs(t, err, ErrInvalidProof, "a proof of 2 votes is not one of 3")
	}
	for i := range c.nodes {
		require.Zero(t, c.nodes[i].r.Metrics().PartsBad)
		require.Positive(t, c.nodes[i].r.Metrics().Attestations)
	}
}

func TestSigned_ProofErrors(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true})
	c.requireAccept(0, put("n", "k", "v"))
	_, err := c.nodes[0].r.Proof(context.Background(), "org", "n", 2)
	require.ErrorIs(t, err, ErrNoProof)
	_, err = c.nodes[0].r.Proof(context.Background(), "org", "other", 1)
	require.ErrorIs(t, err, ErrNoProof)

	u := newTestCluster(t, 3, clusterOpts{})
	u.requireAccept(0, put("n", "k", "v"))
	_, err = u.nodes[0].r.Proof(context.Background(), "org", "n", 1)
	require.ErrorIs(t, err, ErrNoProof)
}

// Every byte of a proof counts: flipping any, dropping any or adding one
// makes it fail; so do a quorum that is not a majority of the keys, keys
// missing a voter, and another cluster's keys.
func TestSigned_ProofTamper(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true})
	c.requireAccept(1, Frame{OrgID: "org", Namespace: "n", Op: "put", Key: "k", Value: []byte("value")})
	c.waitAllApplied(1, 10*time.Second)
	proof := c.proofOf(2, "n", 1)
	_, err := VerifyProof(c.keys, 2, proof)
	require.NoError(t, err)

	bad := func(p []byte, what string) {
		t.Helper()
		_, err := VerifyProof(c.keys, 2, p)
		require.ErrorIs(t, err, ErrInvalidProof, what)
	}
	// Each byte outside the signatures, and every 61st inside them (each
	// costs a signature check).
	sigs := 0
	for i := range proof {
		inSig := isSignatureByte(proof, i)
		if inSig {
			sigs++
			if sigs%61 != 0 {
				continue
			}
		}
		p := append([]byte(nil), proof...)
		p[i] ^= 0x01
		bad(p, "flipped byte")
	}
	for n := 0; n < len(proof); n += 1 + n/50 {
		bad(proof[:n], "truncated")
	}
	bad(append(append([]byte(nil), proof...), 0), "a byte added")

	_, err = VerifyProof(c.keys, 1, proof)
	require.ErrorIs(t, err, ErrInvalidProof, "quorum 1 of 3")
	// Keys missing one validator: the proof fails when it is one of the
	// proof's two voters.
	failed := 0
	for drop := range c.keys {
		missing := maps.Clone(c.keys)
		delete(missing, drop)
		if _, err := VerifyProof(missing, 2, proof); err != nil {
			require.ErrorIs(t, err, ErrInvalidProof)
			require.Contains(t, err.Error(), "not in keys")
			failed++
		}
	}
	require.Equal(t, 2, failed, "the proof names two voters")
	other := map[string]PublicKey{}
	for id := range c.keys {
		other[id] = simKey("other " + id).Public()
	}
	_, err = VerifyProof(other, 2, proof)
	require.ErrorIs(t, err, ErrInvalidProof, "another cluster's keys")
	_, err = VerifyProof(nil, 0, proof)
	require.ErrorIs(t, err, ErrInvalidProof)
}

// isSignatureByte reports whether byte i of a well-formed proof lies in
// an attestation's signature.
func isSignatureByte(proof []byte, i int) bool {
	d := decoder{b: proof[1:]}
	d.take(d.minUvarint("len"), "proposal")
	k := d.minUvarint("k")
	for range k {
		start := len(proof) - len(d.b)
		d.take(attLen, "att")
		if i >= start+attHeaderLen && i < start+attLen {
			return true
		}
		d.minUvarint("leaf")
		d.take(uint64(d.byte1("n"))*hashLen, "path")
	}
	return false
}

// A validator whose votes were missed catches up with certificates, which
// carry their voters' signed votes, and they check.
func TestSigned_CatchUpWithCertificates(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true})
	c.hub.Partition([]string{"node-0", "node-1"}, []string{"node-2"})
	for i := range 20 {
		c.requireAccept(i%2, put("n", string(rune('a'+i)), "v"))
	}
	c.hub.Heal()
	c.waitAllApplied(20, 20*time.Second)
	c.requireConverged()
	m := c.nodes[2].r.Metrics()
	require.Positive(t, m.Certificates, "node-2 caught up with certificates")
	for i := range c.nodes {
		m := c.nodes[i].r.Metrics()
		require.Zero(t, m.CertificatesBad, "node %d", i)
		require.Zero(t, m.PartsBad, "node %d", i)
		require.Zero(t, m.Conflicts, "node %d", i)
	}
}

func TestSigned_ConfigErrors(t *testing.T) {
	hub := NewMemoryHub()
	defer hub.Close()
	tr := hub.Connect("a")
	ka, kb := simKey("a"), simKey("b")
	keys := map[string]PublicKey{"a": ka.Public(), "b": kb.Public()}
	cases := []struct {
		name string
		cfg  QuasarConfig
	}{
		{"key without map", QuasarConfig{SigningKey: ka}},
		{"map without key", QuasarConfig{ValidatorKeys: keys}},
		{"key of another validator", QuasarConfig{SigningKey: kb, ValidatorKeys: keys}},
		{"map misses a validator", QuasarConfig{SigningKey: ka, ValidatorKeys: map[string]PublicKey{"a": ka.Public()}}},
		{"map names a stranger", QuasarConfig{SigningKey: ka, ValidatorKeys: map[string]PublicKey{"a": ka.Public(), "b": kb.Public(), "x": kb.Public()}}},
		{"zero key", QuasarConfig{SigningKey: ka, ValidatorKeys: map[string]PublicKey{"a": ka.Public(), "b": {}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.NodeID, cfg.Transport, cfg.Validators = "a", tr, []string{"a", "b"}
			r, err := NewQuasar(context.Background(), cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.Nil(t, r)
		})
	}
}

// byzantine is validator node-2 of a cluster whose other validators run:
// it holds node-2's transport credentials and key, and sends what it likes.
type byzantine struct {
	t   *testing.T
	tr  *MemoryTransport
	key *SigningKey
	id  nodeID
}

func newByzantine(t *testing.T, c *testCluster) *byzantine {
	b := &byzantine{t: t, tr: c.hub.Connect("node-2"), key: simKey("node-2"), id: validatorNodeID("node-2")}
	b.tr.OnReceive(quasarKind, func([]byte) error { return nil })
	return b
}

// attest signs an attestation of the given leaves at chain position
// (epoch, index), claiming voter.
func (b *byzantine) attest(voter nodeID, epoch, index uint64, leaves ...[]byte) (merkleTree, *attestation) {
	return simAttest(b.key, voter, epoch, index, leaves...)
}

// ownPart is the part of leaf i of attestation a, whose Merkle tree is
// tree.
func ownPart(a *attestation, tree merkleTree, i int) votePart {
	p := votePart{att: a, leaf: uint32(i)}
	for _, h := range tree.path(nil, i) {
		p.path = append(p.path, h[:]...)
	}
	return p
}

// send broadcasts records (already encoded) as one message.
func (b *byzantine) send(n int, records []byte) {
	msg := finishMessage(append(newMessage(nil), records...), n)
	require.NoError(b.t, b.tr.Broadcast(context.Background(), quasarKind, msg))
}

// certificate encodes a certificate of p naming voters, with parts.
func certificate(p *proposal, voters []nodeID, parts []votePart) []byte {
	var l nodeList
	for i := range voters {
		l = append(l, voters[i][:]...)
	}
	return appendCertificateRecord(nil, p, l, parts)
}

// A validator with valid transport credentials cannot make others accept
// a frame nobody voted for: certificates it forges (parts naming unknown
// attestations, attestations it signed in others' names, attestations of
// its own vote passed off as others', paths that do not lead to the
// frame) are dropped and counted; its equivocation (two attestations for
// one position of its chain) becomes evidence anyone can check.
func TestSigned_ByzantineCertificatesNotCounted(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true})
	require.NoError(t, c.nodes[2].r.Close()) // node-2 turns Byzantine
	byz := newByzantine(t, c)
	c.requireAccept(0, put("n", "k", "honest"))

	forged := proposal{frame: Frame{OrgID: "org", Namespace: "n", Seq: 2, Op: "put", Key: "k", Value: []byte("forged")}, prev: 1, proposer: byz.id}
	forged.raw = appendSlot(nil, &forged.frame, forged.prev)
	id := proposalID(&forged)
	commit := appendLeaf(nil, voteCommit, &id, 2, 1)
	ids := []nodeID{validatorNodeID("node-0"), validatorNodeID("node-1"), byz.id}

	// 1. Parts naming attestations nobody sent.
	unknown := votePart{att: &attestation{hash: [hashLen]byte{1}}, leaf: 0}
	byz.send(1, certificate(&forged, ids[:2], []votePart{unknown, unknown}))

	// 2. Attestations of node-0's and node-1's commit votes, signed with
	// node-2's key.
	var recs []byte
	var parts []votePart
	for _, v := range ids[:2] {
		_, a := byz.attest(v, 1, 0, commit)
		recs = appendAttestationRecord(recs, a)
		parts = append(parts, votePart{att: a, leaf: 0})
	}
	byz.send(3, append(recs, certificate(&forged, ids[:2], parts)...))

	// 3. Its own valid attestation, given as node-0's part.
	_, own := byz.attest(byz.id, 1, 0, commit)
	mine := votePart{att: own, leaf: 0}
	byz.send(2, append(appendAttestationRecord(nil, own), certificate(&forged, []nodeID{ids[0], byz.id}, []votePart{mine, mine})...))

	// 4. Two valid attestations of its own commit vote on the frame, for
	// the same position of its chain (equivocation), each with a part
	// that checks, beside a part of node-1's that does not.
	other := appendLeaf(nil, voteCommit, &[idLen]byte{9}, 2, 1)
	h1, a1 := byz.attest(byz.id, 7, 0, commit)
	h2, a2 := byz.attest(byz.id, 7, 0, other, commit)
	for _, p := range []votePart{ownPart(a1, h1, 0), ownPart(a2, h2, 1)} {
		byz.send(2, append(appendAttestationRecord(nil, p.att), certificate(&forged, []nodeID{byz.id, byz.id}, []votePart{p, p})...))
		byz.send(2, append(appendAttestationRecord(nil, p.att), certificate(&forged, []nodeID{byz.id, ids[1]}, []votePart{p, p})...))
	}

	// 5. Malformed attestations, and votes replayed in others' names.
	byz.send(1, appendAttestationRecord(nil, &attestation{raw: make([]byte, attLen)}))
	bits := []byte{voteCommit}
	byz.send(1, appendVoteRecord(nil, &id, &ids[0], 1, bits))

	// Node-0 and node-1 keep deciding, and never accept the forged frame.
	c.requireAccept(1, put("n2", "k", "after"))
	for i := range 2 {
		r := c.nodes[i].r
		require.Eventually(t, func() bool { return r.Metrics().Equivocations >= 1 }, 10*time.Second, time.Millisecond,
			"node %d saw both attestations", i)
		m := r.Metrics()
		require.GreaterOrEqual(t, m.CertificatesBad, uint64(6), "node %d", i)
		require.Positive(t, m.AttestationsBad, "node %d", i)
		require.Zero(t, m.Certificates, "node %d counted a forged certificate", i)
		require.Zero(t, m.Conflicts, "node %d", i)
		for _, f := range c.nodes[i].kv.find("n", "k") {
			require.Equal(t, "honest", string(f.Value), "node %d applied a forged frame", i)
		}
		evs := r.Evidence()
		require.Len(t, evs, 1)
		require.Equal(t, "node-2", evs[0].Validator)
		require.NoError(t, VerifyEvidence(c.keys["node-2"], evs[0]), "evidence checks with node-2's public key")
		require.ErrorIs(t, VerifyEvidence(c.keys["node-1"], evs[0]), ErrInvalidProof, "not with another's")
		same := evs[0]
		same.Second = same.First
		require.ErrorIs(t, VerifyEvidence(c.keys["node-2"], same), ErrInvalidProof, "one attestation twice")
		other := evs[0]
		other.Validator = "node-1"
		require.ErrorIs(t, VerifyEvidence(c.keys["node-2"], other), ErrInvalidProof, "naming another validator")
	}
}

// Without signing keys the same forgery works: the threat the keys remove.
func TestUnsigned_ForgedCertificateCounts(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	require.NoError(t, c.nodes[2].r.Close())
	byz := newByzantine(t, c)
	c.requireAccept(0, put("n", "k", "honest"))
	c.waitAllApplied(1, 10*time.Second, 0, 1)
	forged := proposal{frame: Frame{OrgID: "org", Namespace: "n", Seq: 2, Op: "put", Key: "k", Value: []byte("forged")}, prev: 1, proposer: byz.id}
	byz.send(1, certificate(&forged, []nodeID{validatorNodeID("node-0"), validatorNodeID("node-1")}, nil))
	c.waitAllApplied(2, 10*time.Second, 0, 1)
	require.Equal(t, "forged", string(c.nodes[0].kv.find("n", "k")[1].Value))
}

// BenchmarkAttestVote is what signing adds per vote a validator casts:
// recording the vote's leaf (under the protocol lock), and, per batch of
// batch votes, hashing the leaves, building the Merkle tree and signing
// (off the lock). A frame costs n of these in a cluster of n validators.
func BenchmarkAttestVote(b *testing.B) {
	for _, batch := range []int{attestLeaves, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			c := &core{att: &attester{}, m: &metrics{}}
			s := &signer{key: simKey("node-0"), voter: validatorNodeID("node-0")}
			e := &entry{myVote: voteCommit}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				e.id[0], e.id[1], e.id[2] = byte(i), byte(i>>8), byte(i>>16)
				e.p.frame.Seq = uint64(i)
				i++
				c.attestVote(0, e, voteCommit)
				if i%batch == 0 {
					for _, bt := range c.takeBatches(0, true) {
						tree, a := s.sign(bt)
						c.attested(bt, tree, a)
					}
				}
			}
		})
	}
}

// A validator restarted from its data directory attests again the commit
// votes of the frames it restores (a new chain): proofs still work on it,
// and with its part.
func TestSigned_ProofAfterRestart(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{signed: true, durable: true})
	c.requireAccept(0, put("n", "k", "v"))
	c.waitAllApplied(1, 10*time.Second)
	c.restart(1)
	c.hub.Disconnect("node-2") // node-1's own part is needed for a quorum
	proof := c.proofOf(1, "n", 1)
	f, err := VerifyProof(c.keys, 2, proof)
	require.NoError(t, err)
	require.Equal(t, "v", string(f.Value))
	proof = c.proofOf(0, "n", 1) // node-0 asks node-1 for its part
	_, err = VerifyProof(c.keys, 2, proof)
	require.NoError(t, err)
}
