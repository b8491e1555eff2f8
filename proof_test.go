package replication

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// proofFixture is a proof made without a cluster: validators node-0 to
// node-<n-1> with sim keys, a frame, and the attestations of q of them,
// each over a batch of leaves votes of which the frame's commit vote is
// one (so that its path is not empty).
type proofFixture struct {
	keys  map[string]PublicKey
	frame Frame
	p     proposal
	parts []votePart
	proof []byte
}

func newProofFixture(n, q, leaves int) *proofFixture {
	fx := &proofFixture{keys: map[string]PublicKey{}}
	fx.frame = Frame{OrgID: "org", Namespace: "ns", Seq: 8, Op: "put", Key: "k", Value: []byte("value")}
	fx.p = proposal{frame: fx.frame, prev: 7, after: refs(nsRef{"org", "other", 3}), proposer: validatorNodeID("node-0")}
	fx.p.raw = appendSlot(nil, &fx.p.frame, fx.p.prev)
	id := proposalID(&fx.p)
	for i := range n {
		name := fmt.Sprintf("node-%d", i)
		key := simKey(name)
		fx.keys[name] = key.Public()
		if i >= q {
			continue
		}
		b := &attBatch{}
		at := (i * 7) % leaves
		for k := range leaves {
			if k == at {
				b.leaves = appendLeaf(b.leaves, voteCommit, &id, fx.p.frame.Seq, fx.p.prev)
				continue
			}
			other := [idLen]byte{byte(k), byte(k >> 8)}
			b.leaves = appendLeaf(b.leaves, voteCommit, &other, uint64(k+1), uint64(k))
		}
		s := &signer{key: key, voter: validatorNodeID(name), epoch: 1, index: uint64(i)}
		tree, a := s.sign(b)
		path := tree.path(nil, at)
		pt := votePart{voter: i, att: a, leaf: uint32(at)}
		for _, h := range path {
			pt.path = append(pt.path, h[:]...)
		}
		fx.parts = append(fx.parts, pt)
	}
	fx.proof = appendProof(nil, &fx.p, fx.parts)
	return fx
}

func TestVerifyProof_Offline(t *testing.T) {
	fx := newProofFixture(3, 2, 100)
	f, err := VerifyProof(fx.keys, 2, fx.proof)
	require.NoError(t, err)
	require.Equal(t, fx.frame, f)

	// The returned frame does not alias the proof.
	f.Value[0] = 'X'
	_, err = VerifyProof(fx.keys, 2, fx.proof)
	require.NoError(t, err)

	// A voter named twice.
	twice := appendProof(nil, &fx.p, []votePart{fx.parts[0], fx.parts[0]})
	_, err = VerifyProof(fx.keys, 2, twice)
	require.ErrorIs(t, err, ErrInvalidProof)
	require.Contains(t, err.Error(), "twice")
	// One voter short of the quorum.
	short := appendProof(nil, &fx.p, fx.parts[:1])
	_, err = VerifyProof(fx.keys, 2, short)
	require.ErrorIs(t, err, ErrInvalidProof)
	// Another frame, at another position, or with another after list.
	for _, change := range []func(p *proposal){
		func(p *proposal) { p.frame.Value = []byte("other") },
		func(p *proposal) { p.prev = 6 },
		func(p *proposal) { p.frame.Seq = 9 },
		func(p *proposal) { p.after = refList{} },
		func(p *proposal) { p.proposer = validatorNodeID("node-1") },
	} {
		p := fx.p
		change(&p)
		p.raw = appendSlot(nil, &p.frame, p.prev)
		_, err = VerifyProof(fx.keys, 2, appendProof(nil, &p, fx.parts))
		require.ErrorIs(t, err, ErrInvalidProof)
	}
}

// FuzzVerifyProof: no input makes VerifyProof panic, and an input it
// accepts is the fixture's proof (the fuzzer cannot sign).
func FuzzVerifyProof(f *testing.F) {
	fx := newProofFixture(3, 2, 5)
	f.Add(fx.proof)
	f.Add(fx.proof[:len(fx.proof)-1])
	f.Add(appendProof(nil, &fx.p, fx.parts[:1]))
	f.Add(appendProof(nil, &fx.p, []votePart{fx.parts[1], fx.parts[0]}))
	f.Add([]byte{proofVersion})
	f.Fuzz(func(t *testing.T, proof []byte) {
		got, err := VerifyProof(fx.keys, 2, proof)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidProof)
			return
		}
		require.Equal(t, fx.frame, got)
	})
}

// BenchmarkVerifyProof checks a proof of a quorum of 2 (of 3 validators),
// whose votes were attested in batches of 1,024.
func BenchmarkVerifyProof(b *testing.B) {
	fx := newProofFixture(3, 2, attestLeaves)
	b.ReportAllocs()
	b.SetBytes(int64(len(fx.proof)))
	for b.Loop() {
		if _, err := VerifyProof(fx.keys, 2, fx.proof); err != nil {
			b.Fatal(err)
		}
	}
}

// signedCertificate encodes the fixture's frame as a certificate with its
// attestations, as a validator relays it.
func (fx *proofFixture) signedCertificate() []byte {
	var recs []byte
	var voters nodeList
	for _, pt := range fx.parts {
		recs = appendAttestationRecord(recs, pt.att)
		id := validatorNodeID(fmt.Sprintf("node-%d", pt.voter))
		voters = append(voters, id[:]...)
	}
	recs = appendCertificateRecord(recs, &fx.p, voters, fx.parts)
	return finishMessage(append(newMessage(nil), recs...), len(fx.parts)+1)
}

// FuzzSignedReceive: a validator with signing keys takes in any message
// of certificates, attestations and parts without breaking, and applies a
// frame from them only if the message holds valid attestations of commit
// votes on it by a quorum (the fuzzer cannot sign: the seeds' are the only
// valid ones).
func FuzzSignedReceive(f *testing.F) {
	fx := newProofFixture(3, 2, 5)
	fx.p.after = refList{} // the frame applies without waiting for another namespace
	fx.p.prev, fx.p.frame.Seq = 0, 1
	fx = reattest(fx)
	cert := fx.signedCertificate()
	f.Add(int8(1), cert)
	f.Add(int8(-1), cert[:len(cert)-1])
	f.Add(int8(2), finishMessage(append(newMessage(nil), appendAttestationRecord(nil, fx.parts[0].att)...), 1))
	id := proposalID(&fx.p)
	f.Add(int8(1), finishMessage(appendPartRecord(newMessage(nil), &id, &[nodeIDLen]byte{}, &fx.parts[0]), 1))
	f.Fuzz(func(t *testing.T, sender int8, msg []byte) {
		ids := []string{"node-0", "node-1", "node-2"}
		r, _, applied, recvErr := receiveOnce(t, ids, QuasarConfig{SigningKey: simKey(ids[0]), ValidatorKeys: fx.keys}, sender, msg)
		recs, decErr := decodeMessage(msg, DefaultMaxFrameBytes, nil)
		require.Zero(t, r.Metrics().Conflicts)
		if decErr != nil {
			require.ErrorIs(t, recvErr, ErrMalformed)
			require.Empty(t, applied)
			return
		}
		prepareRecords(recs, nil)
		backed := signedFrames(fx.keys, 2, recs)
		for i := range recs {
			if recs[i].typ == recBlock || recs[i].typ == recVote {
				return // direct votes decide too: FuzzQuasarReceive checks those
			}
		}
		for _, f := range applied {
			require.True(t, backed[nsRef{f.OrgID, f.Namespace, f.Seq}], "applied %s/%s seq %d without a quorum of signed votes", f.OrgID, f.Namespace, f.Seq)
		}
	})
}

// signedFrames returns the frames (by namespace and Seq) of the certificates in
// recs that carry valid attestations, in recs, of q validators' commit
// votes on them: checked here without the package's caches.
func signedFrames(keys map[string]PublicKey, q int, recs []record) map[nsRef]bool {
	names := map[nodeID]string{}
	for name := range keys {
		names[validatorNodeID(name)] = name
	}
	atts := map[[hashLen]byte]*attestation{}
	backed := map[nsRef]bool{}
	for i := range recs {
		rec := &recs[i]
		switch rec.typ {
		case recAttestation:
			if a, ok := parseAttestation(rec.att); ok {
				atts[a.hash] = a
			}
		case recCertificate:
			leaf := voteLeafHash(voteCommit, &rec.id, rec.prop.frame.Seq, rec.prop.prev)
			voters := map[string]bool{}
			parts := rec.parts
			var pr partRec
			for k := 0; k < rec.voters.len() && parts.next(&pr); k++ {
				a := atts[pr.att]
				name, ok := names[rec.voters.at(k)]
				if a != nil && ok && a.voter == rec.voters.at(k) && pr.leaf < uint64(a.count) && a.proves(leaf, pr.leaf, pr.path) && a.verify(keys[name]) {
					voters[name] = true
				}
			}
			if len(voters) >= q {
				f := &rec.prop.frame
				backed[nsRef{f.OrgID, f.Namespace, f.Seq}] = true
			}
		}
	}
	return backed
}

// reattest makes fx's attestations again, for its proposal as it now is.
func reattest(fx *proofFixture) *proofFixture {
	out := newProofFixture(3, 2, 5)
	out.p = fx.p
	out.p.raw = appendSlot(nil, &out.p.frame, out.p.prev)
	out.frame = out.p.frame
	id := proposalID(&out.p)
	for i := range out.parts {
		b := &attBatch{leaves: appendLeaf(nil, voteCommit, &id, out.p.frame.Seq, out.p.prev)}
		name := fmt.Sprintf("node-%d", i)
		s := &signer{key: simKey(name), voter: validatorNodeID(name), epoch: 2, index: uint64(i)}
		_, a := s.sign(b)
		out.parts[i] = votePart{voter: i, att: a}
	}
	out.proof = appendProof(nil, &out.p, out.parts)
	return out
}

// A certificate with valid attestations of a quorum is applied; the same
// with one signature byte changed is dropped and counted.
func TestSigned_ReceiveCertificate(t *testing.T) {
	fx := newProofFixture(3, 2, 5)
	fx.p.after, fx.p.prev, fx.p.frame.Seq = refList{}, 0, 1
	fx = reattest(fx)
	for _, tamper := range []bool{false, true} {
		ids := []string{"node-0", "node-1", "node-2"}
		hub := NewMemoryHub()
		tr := hub.Connect(ids[0])
		r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: ids[0], Validators: ids, Transport: tr,
			SigningKey: simKey(ids[0]), ValidatorKeys: fx.keys})
		require.NoError(t, err)
		kv := newKVReplica()
		r.Subscribe(kv.apply)
		msg := fx.signedCertificate()
		if tamper {
			msg[len(newMessage(nil))+10+attHeaderLen] ^= 1 // the first attestation's Ed25519 signature
		}
		require.NoError(t, r.receive(1, msg))
		r.applyAll()
		m := r.Metrics()
		if tamper {
			require.Zero(t, kv.count())
			require.EqualValues(t, 1, m.CertificatesBad)
			require.EqualValues(t, 1, m.AttestationsBad)
		} else {
			require.Equal(t, 1, kv.count())
			require.EqualValues(t, 1, m.Certificates)
			require.Zero(t, m.CertificatesBad)
		}
		require.NoError(t, r.Close())
		require.NoError(t, hub.Close())
	}
}

// FuzzVerifyEvidence: no input makes VerifyEvidence panic, and nothing but
// two attestations of one chain position signed with the key passes (the
// fuzzer cannot sign: only the seed's pair does).
func FuzzVerifyEvidence(f *testing.F) {
	key := simKey("node-2")
	id := validatorNodeID("node-2")
	leaf := appendLeaf(nil, voteCommit, &[idLen]byte{1}, 2, 1)
	_, a := simAttest(key, id, 7, 0, leaf)
	_, b := simAttest(key, id, 7, 0, leaf, leaf)
	f.Add(a.raw, b.raw)
	f.Add(a.raw, a.raw)
	f.Add(a.raw[:attLen-1], b.raw)
	f.Fuzz(func(t *testing.T, first, second []byte) {
		err := VerifyEvidence(key.Public(), Evidence{Validator: "node-2", First: first, Second: second})
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidProof)
			return
		}
		x, _ := parseAttestation(first)
		y, _ := parseAttestation(second)
		require.Equal(t, x.index, y.index)
		require.NotEqual(t, x.hash, y.hash)
	})
}
