package replication

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"iter"
	"strings"
	"sync"
	"unsafe"
)

// Wire format of the Quasar driver.
//
// Every message the driver sends (Transport.Broadcast, or Unicaster.SendTo)
// has the kind quasarKind ("quasar/5") and carries a batch of records, so
// that under load one transport message carries many blocks and votes:
//
//	message     = version:u8 (=5) ‖ count:uvarint ‖ record × count
//	record      = type:u8 ‖ length:uvarint ‖ body[length]
//
//	str         = length:uvarint ‖ bytes
//	frame       = seq:uvarint ‖ org:str ‖ ns:str ‖ op:str ‖ key:str ‖ val:str
//	after       = n:uvarint ‖ (afterOrg:str ‖ afterNs:str ‖ afterSeq:uvarint) × n
//	slot        = frame ‖ prev:uvarint
//	block       = proposer:20 ‖ after ‖ count:uvarint ‖ slot × count
//	proposal    = slot ‖ after ‖ proposer:20                   (one frame, as a certificate carries it)
//	part        = attestation:32 ‖ leaf:uvarint ‖ n:u8 ‖ hash:32 × n   (one signed vote, see attest.go)
//
//	type 1 block        body = block
//	type 2 vote         body = blockID:32 ‖ voter:20 ‖ count:uvarint ‖ votes[⌈count/4⌉] ‖ signature (rest of body, may be empty)
//	type 3 certificate  body = proposalLen:uvarint ‖ proposal ‖ n:uvarint ‖ voter:20 × n ‖ k:uvarint ‖ part × k   (k = 0 or n)
//	type 4 fetch        body = id:32 ‖ requester:20 ‖ asked:20
//	type 5 sync         body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20 ‖ asked:20
//	type 6 digest       body = n:uvarint ‖ (org:str ‖ ns:str ‖ head:uvarint) × n
//	type 7 behind       body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20 ‖ asked:20
//	type 8 read         body = org:str ‖ ns:str ‖ nonce:uvarint ‖ requester:20
//	type 9 read ack     body = org:str ‖ ns:str ‖ nonce:uvarint ‖ requester:20 ‖ replier:20 ‖ head:uvarint ‖
//	                           n:uvarint ‖ (frameID:32 ‖ seq:uvarint ‖ prev:uvarint) × n   (n ≤ 1)
//	type 10 attestation body = voter:20 ‖ epoch:u64 ‖ index:u64 ‖ prev:32 ‖ count:u32 ‖ root:32 ‖ ed25519:64 ‖ mldsa65:3309
//	type 11 part request body = frameID:32 ‖ requester:20 ‖ asked:20
//	type 12 part        body = frameID:32 ‖ voter:20 ‖ part
//
// # Blocks
//
// A block is the unit a validator proposes and votes on: up to
// maxBlockFrames frames of one proposer (its frames to propose since its
// last block, across namespaces), which share one after list. Each frame
// (slot) names its own chain position: prev, the Seq of the frame it
// extends in its namespace's chain (0: the start). A proposer's after list
// names frames of its own whose Propose calls returned DecisionAccept
// before the block was made: every node applies them before any frame of
// the block (proposer order, S5). The list holds at most one frame per
// namespace, and a frame leaves it once an accepted proposal names it, so
// under a steady load its length is about the number of namespaces the
// proposer writes concurrently: once per block, not once per frame.
//
// A vote is one validator's votes on the frames of one block: for frame i,
// bits 2(i mod 4) and 2(i mod 4)+1 of votes[i/4] hold 0 (no vote yet: the
// frame waits for this validator to reach its position, or was not taken
// in), 1 (commit, the github.com/luxfi/consensus VoteType) or 2 (cancel);
// 3 is not a vote and counts as a bad one, and the unused bits of the last
// byte are zero. count is the block's frame count. A validator sends one
// vote record per block it takes in; a frame it could not vote on at once
// gets its vote in a later record for the same block. Each frame's vote is
// its own: whether a frame is accepted or rejected never depends on the
// other frames of its block. signature is empty.
//
// # Identities
//
// Frames and blocks are named by hashes over their canonical binary
// encoding (the JSON form of Frame is the API's only):
//
//	afterID = SHA-256(afterIDDomain ‖ after)
//	frameID = SHA-256(frameIDDomain ‖ afterID ‖ proposer ‖ slot)
//	blockID = SHA-256(blockIDDomain ‖ frameID × count)   (count ≥ 2)
//	blockID = frameID                                    (count = 1)
//
// A frame ID thus covers the frame, the chain position it extends, its
// after list and its proposer, whatever block carries it: the same frame
// proposed again at another position or with another after list is
// another frame, and a vote for one never counts for the other (S4, S5).
// A block ID covers its frames in order. Neither is sent with a block or a
// certificate: every receiver derives them, so a block cannot claim a
// foreign ID. A certificate's frame travels as a proposal (the frame's
// slot, after list and proposer); a node that holds a frame without the
// block it came in (a certificate, a restart) names it in a block of that
// one frame, whose ID is the frame's. The domains keep a block of several
// frames from sharing an ID with any frame.
//
// A block and a proposal are canonical: every uvarint in them takes the
// fewest bytes, the after list names namespaces in strictly increasing
// order (by org, then ns, bytewise), so each at most once, and a block's
// slots are in strictly increasing bytewise order, so it carries each frame
// at most once; one that is not is malformed. So is a slot whose seq is not
// above its prev.
//
// # Repair and reads
//
// A certificate is an accepted frame with the validators whose commit votes
// decided it: it is how a node catches up on frames whose votes it missed.
// In a cluster with signing keys, it also carries one part per voter (the
// voter's signed attestation of its vote, see attest.go), and counts only
// if q of them check; the attestations the parts name travel as
// attestation records before the certificate, once per message. part
// request asks one validator for its part on a frame, which it answers
// with its attestation and a part record.
// fetch asks one validator (asked) for a block or a frame by ID; sync asks
// one validator for the accepted frames of a namespace after Seq from; only
// the validator asked answers either, and only to the requester. digest
// advertises namespace heads (anti-entropy); behind tells requester that
// the validator it asked (asked) no longer retains the frames after from.
//
// read and read ack serve Barrier: a node asks every validator for the head
// of a namespace and, when it voted commit for a frame on top of that head,
// for that frame (its commit may have made it accepted); a read ack
// answers it, to the requester alone.
//
// # Decoding
//
// Decoded strings, values and lists (after lists, a block's slots,
// certificate voters, digests) alias the message buffer: the driver copies
// what it keeps before the transport callback returns.
//
// Decoding treats every byte as hostile: every length is checked against what
// remains before anything is sliced, a frame above the configured limit is
// refused, and a message that fails anywhere is dropped whole (the driver
// checks the entire message before it acts on any record of it). Decoding
// allocates nothing: lists stay encoded (refList, nodeList, a block's
// slots) and are walked when used, and the driver decodes a message
// recordChunk records at a time, so a small message cannot make a node
// hold much more than its own size, whatever counts it claims.

const (
	quasarKind  = "quasar/5"
	wireVersion = 5 // 4: blocks of frames, one vote record per block; binary frame IDs. 5: signed vote parts

	// The domains that prefix what an ID hashes.
	afterIDDomain = "replication/quasar after v4\x00"
	frameIDDomain = "replication/quasar frame v4\x00"
	blockIDDomain = "replication/quasar block v4\x00"

	recBlock       = 1
	recVote        = 2
	recCertificate = 3
	recFetch       = 4
	recSync        = 5
	recDigest      = 6
	recBehind      = 7
	recRead        = 8
	recReadAck     = 9
	recAttestation = 10
	recPartRequest = 11
	recPart        = 12

	voteCommit = 1 // consensus.VoteCommit
	voteCancel = 2 // consensus.VoteCancel

	nodeIDLen = 20
	idLen     = 32

	// maxBlockFrames and maxBlockBytes bound a block this node makes: it
	// is cut at maxBlockFrames frames, or once its frames' raw bytes reach
	// maxBlockBytes (a block holds one frame at least, however large). A
	// received block of more than maxBlockFrames frames is malformed.
	maxBlockFrames = 512
	maxBlockBytes  = 128 << 10
)

type nodeID = [nodeIDLen]byte

// nsRef names a frame by its namespace and Seq; accepted frames of a
// namespace have distinct Seqs, so it identifies an accepted frame.
type nsRef struct {
	org, ns string
	seq     uint64
}

// proposal is one frame as proposed: the frame, its chain position (prev),
// its proposer's after list and the proposer. raw is its slot's canonical
// bytes (frame ‖ prev), which its frame ID hashes. A decoded one aliases
// the message: its frame's strings and value, raw, and its after list
// (after, still encoded). A held one (see core.own) aliases a copy of raw,
// and shares its after list with the other frames of its block (ord:
// encoded, and resolved to the namespaces this node knows). An own one,
// until its block is made, has neither raw nor ord.
type proposal struct {
	frame    Frame
	prev     uint64
	after    refList // decoded only; a held proposal's is ord.after
	ord      *order  // held only
	proposer nodeID
	raw      []byte
}

// afterList returns p's after list, encoded.
func (p *proposal) afterList() refList {
	if p.ord != nil {
		return p.ord.after
	}
	return p.after
}

// order is the after list of a block's frames, held: encoded (after, its
// ID afterID) and resolved to the namespaces this node knows (deps; the
// entries naming namespaces unknown here are counted in unknown). The
// frames of a block share one.
type order struct {
	after   refList
	afterID [idLen]byte
	deps    []depRef
	unknown int
}

// idBufs recycles the buffers that small inputs are hashed from.
var idBufs = sync.Pool{New: func() any { b := make([]byte, 0, idBufLen); return &b }}

// idBufLen bounds the inputs hashed from a copy (no allocation); larger
// ones are hashed in place.
const idBufLen = 4 << 10

// hashOf returns SHA-256(domain ‖ a ‖ b ‖ c).
func hashOf(domain string, a, b, c []byte) (id [idLen]byte) {
	if len(domain)+len(a)+len(b)+len(c) > idBufLen {
		h := sha256.New()
		h.Write([]byte(domain))
		h.Write(a)
		h.Write(b)
		h.Write(c)
		h.Sum(id[:0])
		return id
	}
	bp := idBufs.Get().(*[]byte)
	buf := append(append(append(append((*bp)[:0], domain...), a...), b...), c...)
	id = sha256.Sum256(buf)
	*bp = buf
	idBufs.Put(bp)
	return id
}

// noAfterID is the ID of the empty after list.
var noAfterID = hashOf(afterIDDomain, []byte{0}, nil, nil)

// afterIDOf returns the ID of an after list: SHA-256(afterIDDomain ‖ n ‖
// entries).
func afterIDOf(l refList) [idLen]byte {
	if l.n == 0 {
		return noAfterID
	}
	var n [binary.MaxVarintLen64]byte
	k := binary.PutUvarint(n[:], uint64(l.n))
	return hashOf(afterIDDomain, n[:k], l.b, nil)
}

// frameIDOf returns the ID of a frame whose slot's canonical encoding is
// raw, proposed with the after list whose ID is afterID.
func frameIDOf(raw []byte, afterID *[idLen]byte, proposer *nodeID) [idLen]byte {
	return hashOf(frameIDDomain, afterID[:], proposer[:], raw)
}

// proposalID returns p's frame ID. p has raw (decoded, or held).
func proposalID(p *proposal) [idLen]byte {
	var aid [idLen]byte
	if p.ord != nil {
		aid = p.ord.afterID
	} else {
		aid = afterIDOf(p.after)
	}
	return frameIDOf(p.raw, &aid, &p.proposer)
}

// blockIDOf returns the ID of the block of the frames ids, in order: the
// frame's own ID for a block of one frame.
func blockIDOf(ids [][idLen]byte) [idLen]byte {
	switch len(ids) {
	case 0:
		return hashOf(blockIDDomain, nil, nil, nil)
	case 1:
		return ids[0]
	}
	return hashOf(blockIDDomain, unsafe.Slice(&ids[0][0], len(ids)*idLen), nil, nil)
}

// singleBlockID returns the ID of the block of frame id alone: id itself.
func singleBlockID(id *[idLen]byte) [idLen]byte { return *id }

// slotLen is len(appendSlot(nil, f, prev)).
func slotLen(f *Frame, prev uint64) int {
	strLen := func(n int) int { return uvarintLen(uint64(n)) + n }
	return uvarintLen(f.Seq) + strLen(len(f.OrgID)) + strLen(len(f.Namespace)) + strLen(len(f.Op)) +
		strLen(len(f.Key)) + strLen(len(f.Value)) + uvarintLen(prev)
}

// appendSlot appends a slot's canonical encoding: frame ‖ prev.
func appendSlot(b []byte, f *Frame, prev uint64) []byte {
	b = binary.AppendUvarint(b, f.Seq)
	b = appendStr(b, f.OrgID)
	b = appendStr(b, f.Namespace)
	b = appendStr(b, f.Op)
	b = appendStr(b, f.Key)
	b = appendBytes(b, f.Value)
	return binary.AppendUvarint(b, prev)
}

// appendAfter appends an after list's encoding: n ‖ entries.
func appendAfter(b []byte, l refList) []byte {
	b = binary.AppendUvarint(b, uint64(l.n))
	return append(b, l.b...)
}

// encodeDeps encodes an own after list, deps in canonical order.
func encodeDeps(deps []depRef) refList {
	var l refList
	for _, d := range deps {
		l.b = appendRef(l.b, nsRef{d.ns.key.org, d.ns.key.ns, d.seq})
	}
	l.n = len(deps)
	return l
}

// compareRefs orders after-list entries as a canonical list holds them.
func compareRefs(aOrg, aNS, bOrg, bNS string) int {
	if c := strings.Compare(aOrg, bOrg); c != 0 {
		return c
	}
	return strings.Compare(aNS, bNS)
}

// refList is a list of n references (org:str ‖ ns:str ‖ seq:uvarint each)
// as encoded. A decoded one was checked entry by entry and aliases the
// message, so decoding a long list allocates nothing.
type refList struct {
	b []byte
	n int
}

// all yields the references in order. The strings alias l's bytes.
func (l refList) all() iter.Seq[nsRef] {
	return func(yield func(nsRef) bool) {
		d := decoder{b: l.b}
		for range l.n {
			org, ns := d.str("org"), d.str("ns")
			if !yield(nsRef{org, ns, d.uvarint("seq")}) {
				return
			}
		}
	}
}

// nodeList is a list of NodeIDs as encoded (nodeIDLen bytes each): a
// certificate's voters.
type nodeList []byte

func (l nodeList) len() int { return len(l) / nodeIDLen }

func (l nodeList) at(i int) (id nodeID) {
	copy(id[:], l[i*nodeIDLen:])
	return id
}

// vote is a decoded vote record: voter's votes on the count frames of a
// block.
type vote struct {
	block [idLen]byte
	voter nodeID
	count int
	bits  []byte // aliases the message
	sig   []byte // aliases the message; never kept
}

// at returns the vote on frame i: 0 (none), voteCommit, voteCancel, or 3
// (not a vote).
func (v *vote) at(i int) byte { return voteBits(v.bits, i) }

// voteBits returns the 2-bit vote on frame i of an encoded vote list.
func voteBits(bits []byte, i int) byte { return bits[i>>2] >> (2 * (i & 3)) & 3 }

// setVoteBits sets the vote on frame i of an encoded vote list.
func setVoteBits(bits []byte, i int, typ byte) { bits[i>>2] |= typ << (2 * (i & 3)) }

// voteBytes is the length of the vote list of a block of count frames.
func voteBytes(count int) int { return (count + 3) / 4 }

// blockRec is a decoded block record: its proposer, its after list, and
// its count slots, still encoded (checked; walk them with slots).
type blockRec struct {
	proposer nodeID
	after    refList
	count    int
	body     []byte
	afterID  [idLen]byte // filled by prepareRecords (also for a certificate's frame)
}

// slots yields the block's frames in order, as proposals aliasing the
// message (see proposal).
func (b *blockRec) slots() iter.Seq2[int, *proposal] {
	return func(yield func(int, *proposal) bool) {
		d := decoder{b: b.body}
		var p proposal
		for i := range b.count {
			p = proposal{after: b.after, proposer: b.proposer}
			d.slotFields(&p) // the decoder checked every slot
			if d.err != nil || !yield(i, &p) {
				return
			}
		}
	}
}

// record is one decoded record. Only the fields of its type are set.
type record struct {
	typ    byte
	blk    blockRec    // block
	prop   proposal    // certificate
	vote   vote        // vote
	block  [idLen]byte // fetch, part request, part: the block or frame
	voters nodeList    // certificate
	parts  partList    // certificate (one per voter, or none), part (one)
	att    []byte      // attestation
	ref    nsRef       // sync, behind (seq = from)
	who    nodeID      // fetch, part request, sync, behind, read, read ack: requester; part: voter
	to     nodeID      // fetch, sync, behind: the validator asked; read ack: the replier
	nonce  uint64      // read, read ack
	head   uint64      // read ack
	voted  votedRef    // read ack: the frame the replier committed on top of head, if voted.ok
	digest refList     // digest (seq = head)
	// Filled by prepareRecords, not the decoder: a certificate's frame ID
	// (id), or a block's ID (id) and its frames' IDs (ids).
	id  [idLen]byte
	ids [][idLen]byte
}

// appendUvarint and friends build records into a reused buffer.

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

func appendRef(b []byte, r nsRef) []byte {
	b = appendStr(b, r.org)
	b = appendStr(b, r.ns)
	return binary.AppendUvarint(b, r.seq)
}

// appendProposal appends the canonical encoding of one frame as a
// certificate carries it: slot ‖ after ‖ proposer (the slot from raw, if p
// has it, else from its fields).
func appendProposal(b []byte, p *proposal) []byte {
	if p.raw != nil {
		b = append(b, p.raw...)
	} else {
		b = appendSlot(b, &p.frame, p.prev)
	}
	b = appendAfter(b, p.afterList())
	return append(b, p.proposer[:]...)
}

// beginRecord appends a record header with a placeholder length and returns
// the buffer and the offset where the body starts; endRecord patches the
// length in. Lengths are written as fixed 5-byte-wide uvarints (padded with
// continuation bits), which every uvarint decoder reads: up to 2^35-1
// bytes, far above any frame the driver lets through (maxFrameHard).
func beginRecord(b []byte, typ byte) ([]byte, int) {
	b = append(b, typ, 0x80, 0x80, 0x80, 0x80, 0x00)
	return b, len(b)
}

func endRecord(b []byte, start int) []byte {
	n := uint64(len(b) - start)
	b[start-5] = byte(n) | 0x80
	b[start-4] = byte(n>>7) | 0x80
	b[start-3] = byte(n>>14) | 0x80
	b[start-2] = byte(n>>21) | 0x80
	b[start-1] = byte(n>>28) & 0x7f
	return b
}

// appendBlockRecord appends a block record of frames es, which share
// their proposer and after list and have raw.
func appendBlockRecord(b []byte, es []*entry) []byte {
	b, s := beginRecord(b, recBlock)
	p := &es[0].p
	b = append(b, p.proposer[:]...)
	b = appendAfter(b, p.afterList())
	b = binary.AppendUvarint(b, uint64(len(es)))
	for _, e := range es {
		b = append(b, e.p.raw...)
	}
	return endRecord(b, s)
}

// appendVoteRecord appends a vote record: voter's votes bits on the count
// frames of block.
func appendVoteRecord(b []byte, block *[idLen]byte, voter *nodeID, count int, bits []byte) []byte {
	b, s := beginRecord(b, recVote)
	b = append(b, block[:]...)
	b = append(b, voter[:]...)
	b = binary.AppendUvarint(b, uint64(count))
	b = append(b, bits...)
	return endRecord(b, s)
}

// appendCertificateRecord appends a certificate of p: its voters and, in a
// cluster with signing keys, one part per voter.
func appendCertificateRecord(b []byte, p *proposal, voters nodeList, parts []votePart) []byte {
	b, s := beginRecord(b, recCertificate)
	b = append(b, 0x80, 0x80, 0x80, 0x80, 0x00) // the proposal's length, patched as a record's
	inner := len(b)
	b = endRecord(appendProposal(b, p), inner)
	b = binary.AppendUvarint(b, uint64(voters.len()))
	b = append(b, voters...)
	b = binary.AppendUvarint(b, uint64(len(parts)))
	for i := range parts {
		b = appendPart(b, &parts[i])
	}
	return endRecord(b, s)
}

// appendPart appends a part: attestation hash ‖ leaf ‖ path.
func appendPart(b []byte, p *votePart) []byte {
	return appendLeafPath(append(b, p.att.hash[:]...), p)
}

// appendLeafPath appends p's place in its attestation's tree: leaf ‖ n ‖
// hash × n (see decoder.leafPath).
func appendLeafPath(b []byte, p *votePart) []byte {
	b = binary.AppendUvarint(b, uint64(p.leaf))
	b = append(b, byte(len(p.path)/hashLen))
	return append(b, p.path...)
}

// appendPartRecord appends voter's part on frame id.
func appendPartRecord(b []byte, id *[idLen]byte, voter *nodeID, p *votePart) []byte {
	b, s := beginRecord(b, recPart)
	b = append(b, id[:]...)
	b = append(b, voter[:]...)
	b = appendPart(b, p)
	return endRecord(b, s)
}

func appendAttestationRecord(b []byte, a *attestation) []byte {
	b, s := beginRecord(b, recAttestation)
	b = append(b, a.raw...)
	return endRecord(b, s)
}

func appendFetchRecord(b []byte, typ byte, block *[idLen]byte, who, to *nodeID) []byte {
	b = append(b, typ, idLen+2*nodeIDLen)
	b = append(b, block[:]...)
	b = append(b, who[:]...)
	return append(b, to[:]...)
}

func appendSyncRecord(b []byte, typ byte, org, ns string, from uint64, who, to *nodeID) []byte {
	b, s := beginRecord(b, typ)
	b = appendStr(b, org)
	b = appendStr(b, ns)
	b = binary.AppendUvarint(b, from)
	b = append(b, who[:]...)
	b = append(b, to[:]...)
	return endRecord(b, s)
}

// votedRef names the frame a validator voted commit for on top of its
// head (a read ack); ok is false when there is none.
type votedRef struct {
	ok        bool
	id        [idLen]byte
	seq, prev uint64
}

func appendReadRecord(b []byte, org, ns string, nonce uint64, who *nodeID) []byte {
	b, s := beginRecord(b, recRead)
	b = appendStr(b, org)
	b = appendStr(b, ns)
	b = binary.AppendUvarint(b, nonce)
	b = append(b, who[:]...)
	return endRecord(b, s)
}

func appendReadAckRecord(b []byte, org, ns string, nonce uint64, who, replier *nodeID, head uint64, voted votedRef) []byte {
	b, s := beginRecord(b, recReadAck)
	b = appendStr(b, org)
	b = appendStr(b, ns)
	b = binary.AppendUvarint(b, nonce)
	b = append(b, who[:]...)
	b = append(b, replier[:]...)
	b = binary.AppendUvarint(b, head)
	if !voted.ok {
		return endRecord(append(b, 0), s)
	}
	b = append(b, 1)
	b = append(b, voted.id[:]...)
	b = binary.AppendUvarint(b, voted.seq)
	b = binary.AppendUvarint(b, voted.prev)
	return endRecord(b, s)
}

func appendDigestRecord(b []byte, heads []nsRef) []byte {
	b, s := beginRecord(b, recDigest)
	b = binary.AppendUvarint(b, uint64(len(heads)))
	for _, h := range heads {
		b = appendRef(b, h)
	}
	return endRecord(b, s)
}

// newMessage starts a message with room for count; finishMessage writes it.
func newMessage(b []byte) []byte {
	return append(b[:0], wireVersion, 0x80, 0x80, 0x80, 0x00)
}

func finishMessage(b []byte, count int) []byte {
	b[1] = byte(count) | 0x80
	b[2] = byte(count>>7) | 0x80
	b[3] = byte(count>>14) | 0x80
	b[4] = byte(count >> 21)
	return b
}

// decoder reads from a byte slice; every read checks what remains.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, what)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// minUvarint reads a uvarint that must take the fewest bytes (canonical
// encodings).
func (d *decoder) minUvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n != uvarintLen(v) {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) take(n uint64, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(what)
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) byte1(what string) byte {
	s := d.take(1, what)
	if s == nil {
		return 0
	}
	return s[0]
}

// str returns a string that aliases the message (no copy): records must not
// outlive the message unless their strings are copied (the core interns
// or clones every string it keeps, see core.own and core.space).
func (d *decoder) str(what string) string {
	return aliasString(d.take(d.uvarint(what), what))
}

// minStr is str with a canonical length.
func (d *decoder) minStr(what string) string {
	return aliasString(d.take(d.minUvarint(what), what))
}

func aliasString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func (d *decoder) node(what string) (id nodeID) {
	copy(id[:], d.take(nodeIDLen, what))
	return id
}

func (d *decoder) done(what string) {
	if d.err == nil && len(d.b) != 0 {
		d.fail(what + ": trailing bytes")
	}
}

// slot reads a canonical slot (frame ‖ prev) into p, and sets p.raw to its
// bytes. maxFrame bounds the frame's raw size (0: none).
func (d *decoder) slot(p *proposal, maxFrame int) {
	if !d.slotFields(p) {
		return
	}
	switch f := &p.frame; {
	case f.Seq == 0 || f.Seq <= p.prev:
		d.fail("seq not above prev")
	case maxFrame > 0 && f.size() > maxFrame:
		d.fail("frame above limit")
	case !f.validUTF8():
		d.fail("frame string not UTF-8")
	}
	if d.err != nil {
		p.raw = nil
	}
}

// slotFields reads a slot's fields, each in its canonical form, into p and
// sets p.raw to its bytes, without checking what the fields say (Seq
// against prev, the size limit, UTF-8): for a slot that decoded once
// already, it is all the decoding there is. It reports whether the bytes
// were read.
func (d *decoder) slotFields(p *proposal) bool {
	start := d.b
	f := &p.frame
	f.Seq = d.minUvarint("seq")
	f.OrgID = d.minStr("org")
	f.Namespace = d.minStr("ns")
	f.Op = d.minStr("op")
	f.Key = d.minStr("key")
	if v := d.take(d.minUvarint("val"), "val"); len(v) > 0 {
		f.Value = v // aliases the message, like str
	}
	p.prev = d.minUvarint("prev")
	if d.err != nil {
		return false
	}
	p.raw = start[: len(start)-len(d.b) : len(start)-len(d.b)]
	return true
}

// proposal reads a canonical proposal (slot ‖ after ‖ proposer).
func (d *decoder) proposal(p *proposal, maxFrame int) {
	d.slot(p, maxFrame)
	p.after = d.afterList()
	p.proposer = d.node("proposer")
}

// block reads a canonical block into b: its slots are checked here, and
// walked again with b.slots.
func (d *decoder) block(b *blockRec, maxFrame int) {
	b.proposer = d.node("block proposer")
	b.after = d.afterList()
	n := d.minUvarint("block count")
	if d.err == nil && (n == 0 || n > maxBlockFrames || n > uint64(len(d.b))/7) { // a slot takes 7 bytes at least
		d.fail("block count")
	}
	if d.err != nil {
		return
	}
	start := d.b
	var p proposal
	var last []byte
	for i := uint64(0); i < n && d.err == nil; i++ {
		d.slot(&p, maxFrame)
		if d.err == nil && i > 0 && bytes.Compare(last, p.raw) >= 0 {
			d.fail("block slots not in increasing order")
		}
		last = p.raw
	}
	if d.err == nil {
		b.count = int(n)
		b.body = start[: len(start)-len(d.b) : len(start)-len(d.b)]
	}
}

// vote reads a vote record's body into v.
func (d *decoder) vote(v *vote) {
	copy(v.block[:], d.take(idLen, "vote block"))
	v.voter = d.node("vote voter")
	n := d.minUvarint("vote count")
	if d.err == nil && (n == 0 || n > maxBlockFrames) {
		d.fail("vote count")
	}
	v.bits = d.take(uint64(voteBytes(int(n))), "votes")
	if d.err != nil {
		return
	}
	v.count = int(n)
	if k := v.count & 3; k != 0 && v.bits[len(v.bits)-1]>>(2*k) != 0 {
		d.fail("votes: padding not zero")
	}
	v.sig = d.b
	d.b = nil
}

// partList is a list of n parts as encoded, checked by the decoder and
// aliasing the message.
type partList struct {
	b []byte
	n int
}

// partRec is a decoded part; path aliases the message.
type partRec struct {
	att  [hashLen]byte
	leaf uint64
	path []byte
}

// next reads the next part of l into p, and reports whether there was one.
func (l *partList) next(p *partRec) bool {
	if l.n == 0 {
		return false
	}
	d := decoder{b: l.b}
	d.part(p)
	l.b, l.n = d.b, l.n-1
	return d.err == nil
}

// part reads one part into p.
func (d *decoder) part(p *partRec) {
	copy(p.att[:], d.take(hashLen, "part attestation"))
	p.leaf, p.path = d.leafPath("part")
}

// leafPath reads a vote's place in its attestation's tree, as a part and
// a proof carry it: leaf ‖ n ‖ hash × n. what names it in errors.
func (d *decoder) leafPath(what string) (leaf uint64, path []byte) {
	leaf = d.minUvarint(what + " leaf")
	n := d.byte1(what + " path length")
	if d.err == nil && (n > maxPathLen || leaf >= attestLeaves) {
		d.fail(what + " path")
	}
	return leaf, d.take(uint64(n)*hashLen, what+" path")
}

// parts reads n parts.
func (d *decoder) parts(n int) partList {
	start := d.b
	var p partRec
	for i := 0; i < n && d.err == nil; i++ {
		d.part(&p)
	}
	if d.err != nil {
		return partList{}
	}
	return partList{b: start[: len(start)-len(d.b) : len(start)-len(d.b)], n: n}
}

// afterList reads a canonical after list: entries in strictly increasing
// (org, ns) order, every length and Seq in its shortest form.
func (d *decoder) afterList() refList {
	n := d.minUvarint("after count")
	if d.err == nil && n > uint64(len(d.b))/3 { // an entry takes 3 bytes at least
		d.fail("after count")
	}
	start := d.b
	var lastOrg, lastNS string
	for i := uint64(0); i < n && d.err == nil; i++ {
		org, ns := d.minStr("after entry"), d.minStr("after entry")
		d.minUvarint("after entry")
		if i > 0 && compareRefs(lastOrg, lastNS, org, ns) >= 0 {
			d.fail("after list not in increasing order")
		}
		lastOrg, lastNS = org, ns
	}
	if d.err != nil || n == 0 {
		return refList{}
	}
	return refList{b: start[: len(start)-len(d.b) : len(start)-len(d.b)], n: int(n)}
}

// refs reads a count and that many references, checking each, and returns
// them as an encoded list aliasing the message. count and entry name them
// in errors.
func (d *decoder) refs(count, entry string) refList {
	n := d.uvarint(count)
	if d.err == nil && n > uint64(len(d.b))/3 { // an entry takes 3 bytes at least
		d.fail(count)
	}
	start := d.b
	for i := uint64(0); i < n && d.err == nil; i++ {
		d.str(entry)
		d.str(entry)
		d.uvarint(entry)
	}
	if d.err != nil || n == 0 {
		return refList{}
	}
	return refList{b: start[: len(start)-len(d.b) : len(start)-len(d.b)], n: int(n)}
}

// record reads one record (type, length, body) into r.
func (d *decoder) record(r *record, maxFrame int) {
	typ := d.byte1("record type")
	body := decoder{b: d.take(d.uvarint("record length"), "record body")}
	if d.err != nil {
		return
	}
	*r = record{typ: typ}
	switch typ {
	case recBlock:
		body.block(&r.blk, maxFrame)
	case recVote:
		body.vote(&r.vote)
	case recCertificate:
		inner := decoder{b: body.take(body.uvarint("certificate proposal length"), "certificate proposal")}
		if body.err == nil {
			inner.proposal(&r.prop, maxFrame)
			inner.done("certificate proposal")
			body.err = inner.err
		}
		n := body.uvarint("certificate voters")
		if body.err == nil && n > uint64(len(body.b))/nodeIDLen {
			body.fail("certificate voter count")
		}
		if n > 0 {
			r.voters = nodeList(body.take(n*nodeIDLen, "certificate voters"))
		}
		if k := body.uvarint("certificate parts"); body.err == nil && k != 0 {
			if k != n {
				body.fail("certificate part count")
			}
			r.parts = body.parts(int(k))
		}
	case recAttestation:
		r.att = body.take(attLen, "attestation")
	case recPart:
		copy(r.block[:], body.take(idLen, "part frame"))
		r.who = body.node("part voter")
		r.parts = body.parts(1)
	case recFetch, recPartRequest:
		copy(r.block[:], body.take(idLen, "fetch block"))
		r.who = body.node("fetch requester")
		r.to = body.node("fetch asked")
	case recSync, recBehind:
		r.ref.org = body.str("sync org")
		r.ref.ns = body.str("sync ns")
		r.ref.seq = body.uvarint("sync from")
		r.who = body.node("sync requester")
		r.to = body.node("sync asked")
	case recDigest:
		r.digest = body.refs("digest count", "digest entry")
	case recRead, recReadAck:
		r.ref.org = body.str("read org")
		r.ref.ns = body.str("read ns")
		r.nonce = body.uvarint("read nonce")
		r.who = body.node("read requester")
		if typ == recRead {
			break
		}
		r.to = body.node("read ack replier")
		r.head = body.uvarint("read ack head")
		switch n := body.uvarint("read ack votes"); {
		case body.err != nil:
		case n == 1:
			v := &r.voted
			v.ok = true
			copy(v.id[:], body.take(idLen, "read ack block"))
			v.seq = body.uvarint("read ack seq")
			v.prev = body.uvarint("read ack position")
			if body.err == nil && v.seq <= v.prev {
				body.fail("read ack seq not above its position")
			}
		case n > 1:
			body.fail("read ack votes")
		}
	default:
		body.fail(fmt.Sprintf("unknown record type %d", typ))
	}
	body.done("record")
	d.err = body.err
}

// recordChunk is how many records the driver decodes and handles at a time.
const recordChunk = 64

// messageReader reads a message's records a few at a time, so that a node
// never holds more decoded records than it asked for, however many a
// message claims.
type messageReader struct {
	d        decoder
	left     uint64 // records not read yet
	maxFrame int
}

// readMessage reads msg's header. maxFrame bounds a frame's raw size (0:
// no limit beyond the message's own length).
func readMessage(msg []byte, maxFrame int) (messageReader, error) {
	m := messageReader{d: decoder{b: msg}, maxFrame: maxFrame}
	if v := m.d.byte1("version"); m.d.err == nil && v != wireVersion {
		return m, fmt.Errorf("%w: unknown version %d", ErrMalformed, v)
	}
	m.left = m.d.uvarint("count")
	if m.d.err == nil && m.left > uint64(len(m.d.b))/2 { // a record takes 2 bytes at least
		m.d.fail("record count above message size")
	}
	if m.left == 0 {
		m.d.done("message")
	}
	return m, m.d.err
}

// more reports whether records remain to be read.
func (m *messageReader) more() bool { return m.left > 0 && m.d.err == nil }

// read appends up to max more records to recs. After the last record it
// checks that nothing trails. On error the message must be dropped whole.
func (m *messageReader) read(recs []record, max int) ([]record, error) {
	start := len(recs)
	for ; max > 0 && m.more(); max-- {
		recs = append(recs, record{})
		m.d.record(&recs[len(recs)-1], m.maxFrame)
		m.left--
	}
	if m.left == 0 {
		m.d.done("message")
	}
	if m.d.err != nil {
		clear(recs[start:]) // drop the aliases of a message being dropped
		return recs[:start], m.d.err
	}
	return recs, nil
}

// checkMessage reads all of msg and keeps nothing: it reports whether the
// whole message is well formed.
func checkMessage(msg []byte, maxFrame int) error {
	m, err := readMessage(msg, maxFrame)
	var scratch [1]record
	for err == nil && m.more() {
		_, err = m.read(scratch[:0], 1)
	}
	return err
}
