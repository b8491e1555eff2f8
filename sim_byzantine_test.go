package replication

import (
	"crypto/sha256"
	"fmt"
	"time"
)

// Signed runs of the simulator: every validator has a signing key, and its
// signer signs its vote batches as the driver's signLoop does (evSign: as
// soon as a batch is full, or attestWait after its first vote). The last
// validator is Byzantine besides: its core runs the protocol, and it also
// sends, every few tens of milliseconds of the load phase, forgeries
// (evForge): certificates for frames nobody proposed, whose parts name
// attestations nobody sent, attestations it signed in other validators'
// names, its own attestation passed off as others', two attestations for
// one position of its chain (equivocation) and attestations that do not
// decode; and it replays messages of other validators it received. The
// checker ignores the forgeries (an honest node must never count them: a
// frame applied on the strength of one breaks S2, which the checker
// reports) and sees replays as the duplicates they are.

// simKey is validator id's signing key in the simulator.
func simKey(id string) *SigningKey {
	seed := sha256.Sum256([]byte("sim signing key " + id))
	k, err := NewSigningKey(seed[:])
	if err != nil {
		panic(err)
	}
	return k
}

// newSigner gives node n a signer with a fresh chain, as a replicator
// starting (or restarting) does.
func (s *simulator) newSigner(n *simNode) {
	n.signing = false
	if n.c.att == nil {
		return
	}
	n.signer = &signer{key: simKey(s.ids[n.i]), voter: n.cfg.ids[n.i], epoch: s.rng.Uint64()}
}

// scheduleSign schedules node n's next evSign, if a batch is open and none
// is scheduled.
func (s *simulator) scheduleSign(n *simNode) {
	if n.c.att == nil || n.signing {
		return
	}
	at, ok := n.c.nextCut()
	if len(n.c.att.cut) > 0 {
		at, ok = s.now, true
	}
	if ok {
		n.signing = true
		s.at(at, &simEvent{kind: evSign, node: n.i})
	}
}

func (s *simulator) sign(n *simNode, ev *simEvent) {
	if n.crashed {
		s.at(s.now+int64(10*time.Millisecond), ev)
		return
	}
	n.signing = false
	for _, b := range n.c.takeBatches(s.now, false) {
		tree, att := n.signer.sign(b)
		n.c.attested(b, tree, att)
	}
	s.settle(n)
}

// simAttest signs, with key, an attestation claiming voter at chain
// position (epoch, index) of the given leaves.
func simAttest(key *SigningKey, voter nodeID, epoch, index uint64, leaves ...[]byte) (merkleTree, *attestation) {
	batch := &attBatch{}
	for _, l := range leaves {
		batch.leaves = append(batch.leaves, l...)
	}
	s := &signer{key: key, voter: voter, epoch: epoch, index: index}
	return s.sign(batch)
}

// simByzantine is what the Byzantine validator keeps besides its core.
type simByzantine struct {
	node  int
	heard [][]byte // messages of other validators, to replay
	round int
}

// overhear keeps some of the messages the Byzantine validator receives.
func (b *simByzantine) overhear(ev *simEvent) {
	if ev.forged || len(b.heard) >= 16 {
		return
	}
	b.heard = append(b.heard, ev.msg)
}

// forge sends the Byzantine validator's next forgeries.
func (s *simulator) forge() {
	if s.phase != phaseLoad {
		return
	}
	s.at(s.now+int64(20*time.Millisecond)+s.rng.Int64N(int64(80*time.Millisecond)), &simEvent{kind: evForge})
	b := s.byz
	bn := s.nodes[b.node]
	if bn.crashed {
		return
	}
	b.round++
	key := simKey(s.ids[b.node])
	self := validatorNodeID(s.ids[b.node])
	honest := func() nodeID { return validatorNodeID(s.ids[s.rng.IntN(b.node)]) }

	// A frame nobody proposed, at a position some frames of the workload
	// hold.
	ns := []string{"gap", "shared-0", fmt.Sprintf("own-0-%d", s.rng.IntN(s.o.writers))}[s.rng.IntN(3)]
	f := Frame{OrgID: "org", Namespace: ns, Seq: 1 + uint64(s.rng.IntN(20)), Op: "put", Key: "forged", Value: []byte(fmt.Sprint("forged ", b.round))}
	p := proposal{frame: f, prev: f.Seq - 1, proposer: self}
	p.raw = appendSlot(nil, &p.frame, p.prev)
	id := proposalID(&p)
	commit := appendLeaf(nil, voteCommit, &id, f.Seq, p.prev)
	attest := func(voter nodeID, epoch, index uint64, leaves ...[]byte) *attestation {
		_, a := simAttest(key, voter, epoch, index, leaves...)
		return a
	}
	q := s.o.n/2 + 1
	voters := make([]nodeID, q)
	parts := make([]votePart, q)
	var recs []byte
	k := 0
	switch b.round % 5 {
	case 0: // parts naming attestations nobody sent
		for i := range q {
			voters[i] = honest()
			parts[i] = votePart{att: &attestation{hash: sha256.Sum256([]byte{byte(i), byte(b.round)})}}
		}
	case 1: // attestations signed in others' names
		for i := range q {
			voters[i] = validatorNodeID(s.ids[i])
			a := attest(voters[i], s.rng.Uint64(), 0, commit)
			recs, k = appendAttestationRecord(recs, a), k+1
			parts[i] = votePart{att: a}
		}
	case 2: // its own valid attestation, as every voter's part
		a := attest(self, s.rng.Uint64(), 0, commit)
		recs, k = appendAttestationRecord(recs, a), k+1
		for i := range q {
			voters[i] = validatorNodeID(s.ids[i])
			parts[i] = votePart{att: a}
		}
		voters[q-1] = self
	case 3: // equivocation: two attestations for one chain position
		epoch := s.rng.Uint64()
		a1 := attest(self, epoch, 0, commit)
		h2, a2 := simAttest(key, self, epoch, 0, commit, commit)
		for i := range q {
			voters[i] = validatorNodeID(s.ids[i])
			parts[i] = votePart{att: a1}
		}
		voters[0] = self
		// Two certificates, each naming one of them first: a node checks
		// both (and finds the second voter's part false).
		recs = appendAttestationRecord(appendAttestationRecord(recs, a1), a2)
		recs = append(recs, certificate(&p, voters, parts)...)
		parts[0] = ownPart(a2, h2, 1) // its own vote checks: the signatures are checked
		k += 3
	case 4: // an attestation that does not decode, and a replay
		recs, k = appendAttestationRecord(recs, &attestation{raw: make([]byte, attLen)}), k+1
		if len(b.heard) > 0 {
			s.sendAs(b.node, outMsg{to: -1, b: b.heard[s.rng.IntN(len(b.heard))]}, false)
		}
		for i := range q {
			voters[i] = honest()
			parts[i] = votePart{att: &attestation{}}
		}
	}
	recs = append(recs, certificate(&p, voters, parts)...)
	s.trace.add("%s %s forges a certificate of %s/%d (kind %d)", s.clock(), s.ids[b.node], ns, f.Seq, b.round%5)
	s.sendAs(b.node, outMsg{to: -1, b: finishMessage(append(newMessage(nil), recs...), k+1)}, true)
}

// signStats sums what signed runs did.
type signStats struct {
	forgeries, attestations, certificates, certificatesBad, partsBad, attestationsBad, equivocations uint64
}

func (a *signStats) add(b signStats) {
	a.forgeries += b.forgeries
	a.attestations += b.attestations
	a.certificates += b.certificates
	a.certificatesBad += b.certificatesBad
	a.partsBad += b.partsBad
	a.attestationsBad += b.attestationsBad
	a.equivocations += b.equivocations
}

// signStats returns the forgeries the Byzantine validator sent, the
// attestations every validator signed, and what the honest validators
// dropped and found.
func (s *simulator) signStats() signStats {
	st := signStats{forgeries: uint64(s.byz.round)}
	for _, n := range s.nodes {
		st.attestations += n.m.attestations.Load()
		if n.i == s.byz.node {
			continue
		}
		st.certificates += n.m.certificates.Load()
		st.certificatesBad += n.m.certificatesBad.Load()
		st.partsBad += n.m.partsBad.Load()
		st.attestationsBad += n.m.attestationsBad.Load()
		st.equivocations += n.m.equivocations.Load()
	}
	return st
}
