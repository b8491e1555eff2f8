package replication

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// A proof that a frame was accepted (Proof, VerifyProof):
//
//	proof = version:u8 (=1) ‖ proposalLen:uvarint ‖ proposal ‖ k:uvarint ‖
//	        (attestation ‖ leaf:uvarint ‖ n:u8 ‖ hash:32 × n) × k
//
// proposal is the frame as a certificate carries it (wire.go: slot ‖ after
// ‖ proposer), from which the verifier derives the frame ID; attestation
// is a signed attestation in full (attest.go), leaf the index of the
// voter's commit vote on the frame in it, and the hashes its Merkle audit
// path. Every uvarint takes its shortest form and nothing may trail, so a
// proof has one encoding: any modified, missing or added byte makes it
// fail.

const proofVersion = 1

// appendProof appends the proof of held, accepted p with parts (from
// distinct validators).
func appendProof(b []byte, p *proposal, parts []votePart) []byte {
	b = append(b, proofVersion)
	prop := appendProposal(nil, p)
	b = binary.AppendUvarint(b, uint64(len(prop)))
	b = append(b, prop...)
	b = binary.AppendUvarint(b, uint64(len(parts)))
	for i := range parts {
		b = appendLeafPath(append(b, parts[i].att.raw...), &parts[i])
	}
	return b
}

// VerifyProof checks a proof returned by Proof, offline: that validators
// holding at least quorum of keys (by validator ID) signed attestations of
// their commit votes on the frame it carries. It returns the frame (with
// its Seq). keys must be the cluster's validator set, and quorum more than
// half of it (the cluster's QuasarConfig.Quorum); a smaller quorum is
// refused, as is a voter missing from keys, a voter named twice, and any
// modified or missing byte. Every error wraps ErrInvalidProof.
//
// VerifyProof checks two signatures (Ed25519 and ML-DSA-65) per voter in
// the proof: about 0.1 ms per voter.
func VerifyProof(keys map[string]PublicKey, quorum int, proof []byte) (Frame, error) {
	bad := func(format string, args ...any) (Frame, error) {
		return Frame{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalidProof}, args...)...)
	}
	if quorum <= len(keys)/2 || quorum > len(keys) {
		return bad("quorum %d with %d keys: must be in [%d, %d]", quorum, len(keys), len(keys)/2+1, len(keys))
	}
	byNode := make(map[nodeID]string, len(keys))
	for name, k := range keys {
		if k.IsZero() {
			return bad("no key for validator %q", name)
		}
		byNode[validatorNodeID(name)] = name
	}
	d := decoder{b: proof}
	if v := d.byte1("proof version"); d.err == nil && v != proofVersion {
		return bad("unknown version %d", v)
	}
	var p proposal
	inner := decoder{b: d.take(d.minUvarint("proof proposal length"), "proof proposal")}
	if d.err == nil {
		inner.proposal(&p, 0)
		inner.done("proof proposal")
		d.err = inner.err
	}
	k := d.minUvarint("proof votes")
	if d.err == nil && k > uint64(len(d.b))/attLen {
		d.fail("proof votes")
	}
	if d.err != nil {
		return bad("%v", d.err)
	}
	id := proposalID(&p)
	leaf := voteLeafHash(voteCommit, &id, p.frame.Seq, p.prev)
	seen := make(map[string]bool, k)
	for range k {
		a, ok := parseAttestation(d.take(attLen, "proof attestation"))
		i, path := d.leafPath("proof")
		if d.err != nil {
			return bad("%v", d.err)
		}
		if !ok {
			return bad("malformed attestation")
		}
		name, known := byNode[a.voter]
		switch {
		case !known:
			return bad("a vote of a validator not in keys")
		case seen[name]:
			return bad("validator %q named twice", name)
		case i >= uint64(a.count) || !a.proves(leaf, i, path):
			return bad("validator %q's attestation does not hold a commit vote on the frame", name)
		case !a.verify(keys[name]):
			return bad("validator %q's attestation signature does not verify", name)
		}
		seen[name] = true
	}
	d.done("proof")
	if d.err != nil {
		return bad("%v", d.err)
	}
	if len(seen) < quorum {
		return bad("%d voters, quorum %d", len(seen), quorum)
	}
	f := p.frame
	f.OrgID, f.Namespace = strings.Clone(f.OrgID), strings.Clone(f.Namespace)
	f.Op, f.Key = strings.Clone(f.Op), strings.Clone(f.Key)
	if f.Value != nil {
		f.Value = append([]byte(nil), f.Value...)
	}
	return f, nil
}

// VerifyEvidence checks equivocation evidence (QuasarReplicator.Evidence)
// offline with the accused validator's public key: both attestations must
// be well formed, signed with key, name the same validator, and sit at the
// same position (epoch and index) of its chain with different contents,
// which an honest validator never signs. Every error wraps
// ErrInvalidProof.
func VerifyEvidence(key PublicKey, ev Evidence) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: evidence: "+format, append([]any{ErrInvalidProof}, args...)...)
	}
	a, ok1 := parseAttestation(ev.First)
	b, ok2 := parseAttestation(ev.Second)
	switch {
	case !ok1 || !ok2:
		return bad("malformed attestation")
	case a.voter != b.voter || a.epoch != b.epoch || a.index != b.index:
		return bad("the attestations are not of one position of one chain")
	case a.hash == b.hash:
		return bad("the attestations are the same")
	case a.voter != validatorNodeID(ev.Validator):
		return bad("the attestations are not validator %q's", ev.Validator)
	case !a.verify(key) || !b.verify(key):
		return bad("a signature does not verify under the key")
	}
	return nil
}
