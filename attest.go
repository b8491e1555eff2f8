package replication

import (
	"encoding/binary"
	"log/slog"
	"sync"
	"time"
)

// Attestations: signed summaries of the votes a validator cast.
//
// A vote travels unsigned: a validator counts a vote only from the voter
// itself, over an authenticated transport, so signing every vote would add
// 60 µs or more per frame for nothing. What signatures are for is the
// votes a node relays: a certificate (an accepted frame and the commit
// votes that decided it, sent for repair and catch-up) and a proof (the
// same, for anyone, offline). Without signatures a validator with valid
// transport credentials could claim that others voted commit.
//
// So each validator with a SigningKey attests, in batches, to the votes it
// cast. Every vote it casts becomes a leaf (leafLen bytes: vote type ‖
// frame ID ‖ Seq ‖ prev, big-endian) of the current batch, in the order
// cast. A batch is cut at attestLeaves votes, or attestWait after its first
// vote; nothing is cut while no vote is cast. The signer (one goroutine of
// the driver, off the protocol lock) builds the batch's Merkle tree
// (merkle.go: RFC 6962, leaf and node hashes domain-separated) and signs
// the attestation header
//
//	voter:20 ‖ epoch:u64 ‖ index:u64 ‖ prev:32 ‖ count:u32 ‖ root:32
//
// with both halves of its hybrid key (Ed25519 and ML-DSA-65, bound to
// this use by signContext). index numbers the validator's attestations
// from 0 within an epoch (a random number drawn when the replicator
// starts: a restart starts a new chain), and prev is the hash of the
// previous attestation of the chain (zero for the first), so that the
// attestations of an epoch form a hash chain. An attestation's hash is
// SHA-256(attDomain ‖ header). An honest validator signs one attestation
// per (epoch, index); two different ones are evidence of equivocation
// that anyone holding the public keys can check (Evidence).
//
// A vote part proves one vote: an attestation (by hash on the wire, in
// full in a proof), the leaf's index, and its Merkle audit path. A node
// checks a part lazily, when a certificate, a part answer or Proof needs
// it: the attestation's signatures once per attestation (cached), the
// path per part. A part counts only for a commit vote, by the validator
// that signed the attestation, on the frame whose ID, Seq and prev the
// receiver derived itself.
//
// State. The core (under the protocol lock) holds the open batch and the
// batches waiting for the signer; an entry points to the batch holding
// this validator's vote on it (entry.att, entry.leaf), so a batch lives as
// long as the frames it attests are retained. The signer's chain (epoch,
// index, prev) belongs to the signer's goroutine alone.

const (
	// attestLeaves and attestWait bound a batch: it is cut at this many
	// votes, or this long after its first one.
	attestLeaves = 1024
	attestWait   = 10 * time.Millisecond

	leafLen      = 1 + idLen + 8 + 8
	attHeaderLen = nodeIDLen + 8 + 8 + hashLen + 4 + hashLen
	attLen       = attHeaderLen + hybridSigSize

	// maxPathLen bounds a decoded audit path: a batch holds at most
	// attestLeaves leaves, so a path has at most 10 hashes.
	maxPathLen = 10

	// maxAttestations bounds the received attestations held (about 3.5
	// KiB each), oldest dropped first; maxEvidence the evidence kept; and
	// maxPartWaits the part requests a batch holds until it is signed.
	maxAttestations = 1024
	maxEvidence     = 64
	maxPartWaits    = 256
)

const attDomain = "replication/quasar attestation v1\x00"

// appendLeaf appends the leaf of a vote: typ ‖ frame ID ‖ seq ‖ prev.
func appendLeaf(b []byte, typ byte, id *[idLen]byte, seq, prev uint64) []byte {
	b = append(b, typ)
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	return binary.BigEndian.AppendUint64(b, prev)
}

// voteLeafHash returns the leaf hash of a vote.
func voteLeafHash(typ byte, id *[idLen]byte, seq, prev uint64) [hashLen]byte {
	var buf [leafLen]byte
	return leafHash(appendLeaf(buf[:0], typ, id, seq, prev))
}

// attestation is a decoded, signed attestation header.
type attestation struct {
	raw          []byte // header ‖ signature (owned)
	hash         [hashLen]byte
	voter        nodeID
	epoch, index uint64
	prev         [hashLen]byte
	count        uint32
	root         [hashLen]byte
	// state: 0 not checked yet, 1 both signatures verify, -1 they do not.
	// Set by checkAttestation (under the protocol lock) or, for an own
	// attestation, by the signer before the core sees it.
	state int8
}

// appendAttHeader appends an attestation header.
func appendAttHeader(b []byte, voter *nodeID, epoch, index uint64, prev *[hashLen]byte, count uint32, root *[hashLen]byte) []byte {
	b = append(b, voter[:]...)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint64(b, index)
	b = append(b, prev[:]...)
	b = binary.BigEndian.AppendUint32(b, count)
	return append(b, root[:]...)
}

// parseAttestation decodes an attestation (header ‖ signature), copying
// it. It checks the layout only; checkAttestation checks the signatures.
func parseAttestation(b []byte) (*attestation, bool) {
	if len(b) != attLen {
		return nil, false
	}
	a := &attestation{raw: append([]byte(nil), b...)}
	h := a.raw
	copy(a.voter[:], h)
	h = h[nodeIDLen:]
	a.epoch = binary.BigEndian.Uint64(h)
	a.index = binary.BigEndian.Uint64(h[8:])
	h = h[16:]
	copy(a.prev[:], h)
	h = h[hashLen:]
	a.count = binary.BigEndian.Uint32(h)
	copy(a.root[:], h[4:])
	if a.count == 0 || a.count > attestLeaves {
		return nil, false
	}
	a.hash = attHash(a.raw[:attHeaderLen])
	return a, true
}

// attHash is an attestation's hash: SHA-256(attDomain ‖ header).
func attHash(header []byte) [hashLen]byte {
	return hashOf(attDomain, header, nil, nil)
}

// verify checks a's signatures under key (not cached).
func (a *attestation) verify(key PublicKey) bool {
	return key.verify(a.raw[:attHeaderLen], a.raw[attHeaderLen:])
}

// proves reports whether the audit path (hashLen bytes per hash) proves
// that leaf hash h is leaf i of a's tree.
func (a *attestation) proves(h [hashLen]byte, i uint64, path []byte) bool {
	if len(path)%hashLen != 0 || len(path)/hashLen > maxPathLen {
		return false
	}
	var hs [maxPathLen][hashLen]byte
	n := len(path) / hashLen
	for k := range n {
		copy(hs[k][:], path[k*hashLen:])
	}
	return merkleVerify(h, i, uint64(a.count), hs[:n], a.root)
}

// attBatch is a batch of this validator's votes.
type attBatch struct {
	first  int64  // when its first vote was cast
	leaves []byte // leafLen bytes each, in the order cast
	// Set by core.attested, once signed: the Merkle tree of the leaves
	// (for the parts' paths) and the attestation.
	tree merkleTree
	att  *attestation
	// waits: part requests that arrived before it was signed.
	waits []partWait
}

type partWait struct {
	id   [idLen]byte
	leaf uint32
	to   int
}

func (b *attBatch) len() int { return len(b.leaves) / leafLen }

// leafBufs recycles the leaves of signed batches: a batch holds its leaves
// until signed, and their Merkle tree from then on.
var leafBufs = sync.Pool{New: func() any { b := make([]byte, 0, attestLeaves*leafLen); return &b }}

// attester is the core's side of attesting: the open batch, and the cut
// ones waiting for the signer.
type attester struct {
	open *attBatch
	cut  []*attBatch
	// kick: the driver should wake the signer (a batch opened, or one was
	// cut because it is full).
	kick bool
}

// attestVote adds this validator's vote typ on e to the open batch. e
// points to it if it is a commit vote (the only kind a part proves).
func (c *core) attestVote(now int64, e *entry, typ byte) {
	if c.att == nil {
		return
	}
	b, i := c.attestLeaf(now, typ, &e.id, e.p.frame.Seq, e.p.prev)
	if typ == voteCommit {
		e.att, e.leaf = b, i
	}
}

// attestLeaf adds the leaf of a vote typ on frame id (Seq seq, position
// prev) to the open batch, and returns the batch and the leaf's index.
func (c *core) attestLeaf(now int64, typ byte, id *[idLen]byte, seq, prev uint64) (*attBatch, uint32) {
	a := c.att
	b := a.open
	if b == nil {
		b = &attBatch{first: now, leaves: *leafBufs.Get().(*[]byte)}
		a.open = b
		a.kick = true
	}
	i := uint32(b.len())
	b.leaves = appendLeaf(b.leaves, typ, id, seq, prev)
	if b.len() >= attestLeaves {
		a.cut = append(a.cut, b)
		a.open = nil
		a.kick = true
	}
	return b, i
}

// takeBatches returns the batches to sign now: those cut full, and the
// open one if attestWait passed since its first vote (or all is set).
func (c *core) takeBatches(now int64, all bool) []*attBatch {
	a := c.att
	if a == nil {
		return nil
	}
	if b := a.open; b != nil && (all || now-b.first >= int64(attestWait)) {
		a.cut = append(a.cut, b)
		a.open = nil
	}
	bs := a.cut
	a.cut = nil
	return bs
}

// nextCut reports when the open batch is due (ok false: there is none).
func (c *core) nextCut() (at int64, ok bool) {
	if c.att == nil || c.att.open == nil {
		return 0, false
	}
	return c.att.open.first + int64(attestWait), true
}

// attested installs what the signer made of batch b, and answers the part
// requests that waited for it.
func (c *core) attested(b *attBatch, tree merkleTree, att *attestation) {
	b.tree, b.att = tree, att
	leaves := b.leaves[:0]
	b.leaves = nil // the tree stands for them from now on
	leafBufs.Put(&leaves)
	c.m.attestations.Add(1)
	for i := range b.waits {
		w := &b.waits[i]
		c.sendPart(&w.id, b, w.leaf, w.to)
	}
	b.waits = nil
	c.partsChanged = true
}

// signer makes attestations: it owns its chain (epoch, index, prev), and
// runs on one goroutine at a time, off the protocol lock.
type signer struct {
	key   *SigningKey
	voter nodeID
	epoch uint64
	index uint64
	prev  [hashLen]byte
}

// sign builds b's Merkle tree and signs its attestation, the next of the
// chain. It reads b.leaves only (the core no longer writes them).
func (s *signer) sign(b *attBatch) (merkleTree, *attestation) {
	n := b.len()
	hashes := make([][hashLen]byte, n)
	for i := range n {
		hashes[i] = leafHash(b.leaves[i*leafLen : (i+1)*leafLen])
	}
	tree := newMerkleTree(hashes)
	root := tree.root()
	raw := make([]byte, 0, attLen)
	raw = appendAttHeader(raw, &s.voter, s.epoch, s.index, &s.prev, uint32(n), &root)
	a := &attestation{voter: s.voter, epoch: s.epoch, index: s.index, prev: s.prev, count: uint32(n), root: root, state: 1}
	a.hash = attHash(raw)
	a.raw = s.key.sign(raw, raw)
	s.index++
	s.prev = a.hash
	return tree, a
}

// ownPart returns this validator's part for its commit vote on e, if
// signed.
func (c *core) ownPart(e *entry) (votePart, bool) {
	b := e.att
	if b == nil || b.att == nil {
		return votePart{}, false
	}
	return c.partOf(b, e.leaf), true
}

// partOf returns this validator's part for leaf of signed batch b.
func (c *core) partOf(b *attBatch, leaf uint32) votePart {
	path := b.tree.path(nil, int(leaf))
	p := votePart{voter: c.cfg.self, att: b.att, leaf: leaf, path: make([]byte, 0, len(path)*hashLen)}
	for i := range path {
		p.path = append(p.path, path[i][:]...)
	}
	return p
}

// votePart is a checked proof of one validator's commit vote on a frame.
type votePart struct {
	voter int
	att   *attestation
	leaf  uint32
	path  []byte // hashLen bytes per hash
}

// attCache holds the attestations received from peers (by hash, checked
// lazily), and, per chain position, the one found valid, to detect
// equivocation.
type attCache struct {
	byHash map[[hashLen]byte]*attestation
	fifo   [][hashLen]byte
	chain  map[chainPos][hashLen]byte
	// evidence: pairs of valid attestations of one validator for one chain
	// position.
	evidence []Evidence
}

type chainPos struct {
	voter        nodeID
	epoch, index uint64
}

// onAttestation keeps a received attestation (unchecked) for the parts
// that name it.
func (c *core) onAttestation(raw []byte) {
	if c.atts == nil {
		return
	}
	a, ok := parseAttestation(raw)
	if !ok {
		c.m.attestationsBad.Add(1)
		return
	}
	if _, known := c.cfg.byNodeID[a.voter]; !known {
		c.m.attestationsBad.Add(1)
		return
	}
	ac := c.atts
	if _, have := ac.byHash[a.hash]; have {
		return
	}
	for len(ac.byHash) >= maxAttestations && len(ac.fifo) > 0 {
		old := ac.byHash[ac.fifo[0]]
		if old != nil && old.state == 1 {
			pos := chainPos{old.voter, old.epoch, old.index}
			if ac.chain[pos] == old.hash {
				delete(ac.chain, pos)
			}
		}
		delete(ac.byHash, ac.fifo[0])
		ac.fifo = ac.fifo[1:]
	}
	ac.byHash[a.hash] = a
	ac.fifo = append(ac.fifo, a.hash)
}

// checkAttestation reports whether a's signatures verify under its
// voter's key, checking them once; a valid attestation that conflicts with
// another valid one of the same chain position is kept as evidence.
func (c *core) checkAttestation(a *attestation) bool {
	if a.state != 0 {
		return a.state > 0
	}
	i := c.cfg.byNodeID[a.voter]
	if !a.verify(c.cfg.keys[i]) {
		a.state = -1
		c.m.attestationsBad.Add(1)
		return false
	}
	a.state = 1
	ac := c.atts
	pos := chainPos{a.voter, a.epoch, a.index}
	if other, ok := ac.chain[pos]; !ok {
		ac.chain[pos] = a.hash
	} else if other != a.hash {
		c.m.equivocations.Add(1)
		if len(ac.evidence) < maxEvidence {
			ev := Evidence{Validator: c.cfg.names[i], Second: a.raw}
			if o := ac.byHash[other]; o != nil {
				ev.First = o.raw
			}
			ac.evidence = append(ac.evidence, ev)
		}
		c.logf(slog.LevelError, "validator signed two attestations for one position of its chain", "validator", c.cfg.names[i], "epoch", a.epoch, "index", a.index)
	}
	return true
}

// checkPart checks a received part of validator voter for a commit vote on
// the frame with ID id, Seq seq and position prev. The attestation must
// have arrived before (in the same message, or an earlier one).
func (c *core) checkPart(id *[idLen]byte, seq, prev uint64, voter int, pr *partRec) (votePart, bool) {
	a := c.atts.byHash[pr.att]
	// The path first: it costs a few hashes, the signatures 0.1 ms.
	if a == nil || a.voter != c.cfg.ids[voter] || pr.leaf >= uint64(a.count) ||
		!a.proves(voteLeafHash(voteCommit, id, seq, prev), pr.leaf, pr.path) || !c.checkAttestation(a) {
		return votePart{}, false
	}
	return votePart{voter: voter, att: a, leaf: uint32(pr.leaf), path: append([]byte(nil), pr.path...)}, true
}

// Evidence is proof that a validator equivocated: two attestations it
// signed for one position (epoch and index) of its chain, each the full
// signed attestation as it travelled. An honest validator never signs two.
// Anyone holding the validator's public key can check it (VerifyEvidence).
type Evidence struct {
	Validator string `json:"validator"`
	First     []byte `json:"first"`
	Second    []byte `json:"second"`
}

// parts returns the checked parts held for accepted e: this validator's
// own (if signed) and those received, at most one per validator.
func (c *core) parts(e *entry) []votePart {
	ps := make([]votePart, 0, c.cfg.q)
	if p, ok := c.ownPart(e); ok {
		ps = append(ps, p)
	}
	for _, p := range e.parts {
		if p.voter != c.cfg.self {
			ps = append(ps, p)
		}
	}
	return ps
}

// addPart keeps a checked part for e, unless its voter has one already.
func (c *core) addPart(e *entry, p votePart) {
	if p.voter == c.cfg.self {
		return
	}
	for _, q := range e.parts {
		if q.voter == p.voter {
			return
		}
	}
	e.parts = append(e.parts, p)
	c.partsChanged = true
}

// askParts asks the validators of which it holds no part on accepted e
// for their parts (those that voted commit answer): at most once per half
// WitnessAfter per frame. It asks them all, not only those whose commit
// votes it counted: a voter that restarted, or forgot the frame, cannot
// answer, and others may have committed too.
func (c *core) askParts(now int64, e *entry) {
	if e.askedParts != 0 && now-e.askedParts < c.cfg.witness/2 {
		return
	}
	e.askedParts = now
	have := voterSet{}
	for _, p := range e.parts {
		have.add(p.voter)
	}
	for i := range c.cfg.n() {
		if i != c.cfg.self && !have.has(i) {
			c.sendAsk(recPartRequest, &e.id, i)
		}
	}
}

// onPartRequest answers a request for this validator's part on a frame
// it committed to: held, or forgotten (a vote remembered, see remember, or
// restored from the log) — a frame need not be held to attest the vote on
// it, only its ID, Seq and position. A vote not in a batch yet (restored
// after a restart) is attested now; a batch not signed yet answers once
// signed.
func (c *core) onPartRequest(now int64, rec *record) {
	req, ok := c.requester(rec.who, rec.to)
	if !ok || c.att == nil {
		return
	}
	id := rec.block
	var (
		b    *attBatch
		leaf uint32
	)
	if e := c.entries[id]; e != nil {
		b, leaf = e.att, e.leaf
	} else if v, ok := c.forgot[id]; ok && v.typ == voteCommit {
		if v.att == nil {
			v.att, v.leaf = c.attestLeaf(now, voteCommit, &id, v.seq, v.prev)
			c.forgot[id] = v
		}
		b, leaf = v.att, v.leaf
	}
	switch {
	case b == nil:
	case b.att == nil:
		if len(b.waits) < maxPartWaits {
			b.waits = append(b.waits, partWait{id: id, leaf: leaf, to: req})
		}
	default:
		c.sendPart(&id, b, leaf, req)
	}
}

func (c *core) onPart(now int64, rec *record, from int) {
	e := c.entries[rec.block]
	voter, ok := c.cfg.byNodeID[rec.who]
	if e == nil || !ok || c.atts == nil {
		return
	}
	var pr partRec
	if !rec.parts.next(&pr) {
		return
	}
	if p, ok := c.checkPart(&e.id, e.p.frame.Seq, e.p.prev, voter, &pr); ok {
		c.addPart(e, p)
	} else {
		c.m.partsBad.Add(1)
	}
}
