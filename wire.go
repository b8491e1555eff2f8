package replication

import (
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
// has the kind quasarKind ("quasar/3") and carries a batch of records, so
// that under load one transport message carries many proposals and votes:
//
//	message     = version:u8 (=3) ‖ count:uvarint ‖ record × count
//	record      = type:u8 ‖ length:uvarint ‖ body[length]
//
//	str         = length:uvarint ‖ bytes
//	frame       = seq:uvarint ‖ org:str ‖ ns:str ‖ op:str ‖ key:str ‖ val:str
//	proposal    = frame ‖ prev:uvarint ‖ n:uvarint ‖ (afterOrg:str ‖ afterNs:str ‖ afterSeq:uvarint) × n ‖ proposer:20
//
//	type 1 proposal     body = proposal
//	type 2 vote         body = blockID:32 ‖ voter:20 ‖ voteType:u8 ‖ signature (rest of body, may be empty)
//	type 3 certificate  body = proposalLen:uvarint ‖ proposal ‖ n:uvarint ‖ voter:20 × n
//	type 4 fetch        body = blockID:32 ‖ requester:20 ‖ asked:20
//	type 5 sync         body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20 ‖ asked:20
//	type 6 digest       body = n:uvarint ‖ (org:str ‖ ns:str ‖ head:uvarint) × n
//	type 7 behind       body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20 ‖ asked:20
//	type 8 read         body = org:str ‖ ns:str ‖ nonce:uvarint ‖ requester:20
//	type 9 read ack     body = org:str ‖ ns:str ‖ nonce:uvarint ‖ requester:20 ‖ replier:20 ‖ head:uvarint ‖
//	                           n:uvarint ‖ (blockID:32 ‖ seq:uvarint ‖ prev:uvarint) × n   (n ≤ 1)
//
// The vote is the documented consensus vote: block ID (32 bytes) ‖ voter
// NodeID (20 bytes: the first 20 bytes of SHA-256 of the validator's string
// ID) ‖ vote type (1 byte, the github.com/luxfi/consensus VoteType: 1 commit,
// 2 cancel) ‖ signature (empty for now).
//
// A proposal is canonical: every uvarint in it takes the fewest bytes, and
// its after list names namespaces in strictly increasing order (by org,
// then ns, bytewise), so each at most once; a proposal that is not is
// malformed. Its block ID is SHA-256(blockIDDomain ‖ proposal), over the
// proposal's bytes as they appear in a proposal or certificate record. A
// block ID is not sent with a proposal: every receiver derives it, so a
// proposal cannot claim a foreign ID, and every node holding the proposal
// encodes the very same bytes again when it relays it. The ID covers the
// frame, the chain position it extends (prev), its after list and its
// proposer: the same frame proposed again (a retry with the same Seq, or
// the same frame from another node) at another position or with another
// after list is another block, and a vote for one never counts for the
// other (S4, S5).
//
// prev is the Seq of the frame this one extends in its namespace's chain (0:
// the start); the after list names frames of the same proposer whose Propose
// calls returned DecisionAccept before this one began (those not already
// implied by an earlier proposal's list, nor by the chain this frame
// extends): every node applies them first (proposer order, S5). The list
// holds at most one frame per namespace, and a frame leaves it once an
// accepted proposal names it, so under a steady load its length is about
// the number of namespaces the proposer writes concurrently.
//
// A certificate is an accepted frame with the validators whose commit votes
// decided it: it is how a node catches up on frames whose votes it missed.
// fetch asks one validator (asked) for a block by ID; sync asks one
// validator for the accepted frames of a namespace after Seq from; only the
// validator asked answers either, and only to the requester. digest
// advertises namespace heads (anti-entropy); behind tells requester that
// the validator it asked (asked) no longer retains the frames after from.
//
// read and read ack serve Barrier: a node asks every validator for the head
// of a namespace and, when it voted commit for a frame on top of that head,
// for that frame (its commit may have made it accepted); a read ack
// answers it, to the requester alone.
//
// Decoded strings, values and lists (after lists, certificate voters,
// digests) alias the message buffer: the driver copies what it keeps before
// the transport callback returns.
//
// Decoding treats every byte as hostile: every length is checked against what
// remains before anything is sliced, a frame above the configured limit is
// refused, and a message that fails anywhere is dropped whole (the driver
// checks the entire message before it acts on any record of it). Decoding
// allocates nothing: lists stay encoded (refList, nodeList) and are walked
// when used, and the driver decodes a message recordChunk records at a
// time, so a small message cannot make a node hold much more than its own
// size, whatever counts it claims.
const (
	quasarKind  = "quasar/3"
	wireVersion = 3 // 3: block IDs over the canonical proposal; fetch and sync name who is asked

	// blockIDDomain prefixes what a block ID hashes.
	blockIDDomain = "replication/quasar block v3\x00"

	recProposal    = 1
	recVote        = 2
	recCertificate = 3
	recFetch       = 4
	recSync        = 5
	recDigest      = 6
	recBehind      = 7
	recRead        = 8
	recReadAck     = 9

	voteCommit = 1 // consensus.VoteCommit
	voteCancel = 2 // consensus.VoteCancel

	nodeIDLen = 20
	idLen     = 32
	voteLen   = idLen + nodeIDLen + 1
)

type nodeID = [nodeIDLen]byte

// nsRef names a frame by its namespace and Seq; accepted frames of a
// namespace have distinct Seqs, so it identifies an accepted frame.
type nsRef struct {
	org, ns string
	seq     uint64
}

// proposal is a proposal record. A decoded one aliases the message: its
// frame's strings and value, its after list (after, still encoded) and its
// canonical bytes (raw), which its block ID hashes and which encode it
// again as they are. A held one (see core.own) aliases a copy of raw, and
// its after list is also resolved to the namespaces this node knows
// (deps; the others are counted in unknown). An own one, while it is made,
// names its after list in deps only, until it is encoded.
type proposal struct {
	frame    Frame
	prev     uint64
	after    refList
	deps     []depRef
	unknown  int // held: after-list entries of namespaces not in deps
	proposer nodeID
	raw      []byte
}

// idBufs recycles the buffers small proposals are hashed from.
var idBufs = sync.Pool{New: func() any { b := make([]byte, 0, idBufLen); return &b }}

// idBufLen bounds the proposals hashed from a copy (no allocation); larger
// ones are hashed in place.
const idBufLen = 4 << 10

// blockIDOf returns the block ID of a proposal whose canonical encoding is
// raw: SHA-256(blockIDDomain ‖ raw).
func blockIDOf(raw []byte) (id [idLen]byte) {
	if len(blockIDDomain)+len(raw) > idBufLen {
		h := sha256.New()
		h.Write([]byte(blockIDDomain))
		h.Write(raw)
		h.Sum(id[:0])
		return id
	}
	bp := idBufs.Get().(*[]byte)
	b := append(append((*bp)[:0], blockIDDomain...), raw...)
	id = sha256.Sum256(b)
	idBufs.Put(bp)
	return id
}

// proposalLen is len(appendProposal(nil, p)) for a proposal without raw.
func proposalLen(p *proposal) int {
	f := &p.frame
	strLen := func(n int) int { return uvarintLen(uint64(n)) + n }
	n := uvarintLen(f.Seq) + strLen(len(f.OrgID)) + strLen(len(f.Namespace)) + strLen(len(f.Op)) +
		strLen(len(f.Key)) + strLen(len(f.Value)) + uvarintLen(p.prev) + nodeIDLen
	if p.after.n > 0 {
		return n + uvarintLen(uint64(p.after.n)) + len(p.after.b)
	}
	n += uvarintLen(uint64(len(p.deps)))
	for _, d := range p.deps {
		n += strLen(len(d.ns.key.org)) + strLen(len(d.ns.key.ns)) + uvarintLen(d.seq)
	}
	return n
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

type vote struct {
	block [idLen]byte
	voter nodeID
	typ   byte
	sig   []byte // aliases the message; never kept
}

// record is one decoded record. Only the fields of its type are set.
type record struct {
	typ    byte
	prop   proposal    // proposal, certificate
	vote   vote        // vote
	block  [idLen]byte // fetch
	voters nodeList    // certificate
	ref    nsRef       // sync, behind (seq = from)
	who    nodeID      // fetch, sync, behind, read, read ack: requester
	to     nodeID      // fetch, sync, behind: the validator asked; read ack: the replier
	nonce  uint64      // read, read ack
	head   uint64      // read ack
	voted  votedRef    // read ack: the frame the replier committed on top of head, if voted.ok
	digest refList     // digest (seq = head)
	// Filled by prepareRecords, not the decoder: the block ID of a
	// proposal's or certificate's frame.
	id [idLen]byte
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

// appendProposal appends p's canonical encoding: raw, if p has it, or
// else its fields (with its after list from after, or from deps).
func appendProposal(b []byte, p *proposal) []byte {
	if p.raw != nil {
		return append(b, p.raw...)
	}
	f := &p.frame
	b = binary.AppendUvarint(b, f.Seq)
	b = appendStr(b, f.OrgID)
	b = appendStr(b, f.Namespace)
	b = appendStr(b, f.Op)
	b = appendStr(b, f.Key)
	b = appendBytes(b, f.Value)
	b = binary.AppendUvarint(b, p.prev)
	if p.after.n > 0 {
		b = binary.AppendUvarint(b, uint64(p.after.n))
	} else {
		b = binary.AppendUvarint(b, uint64(len(p.deps)))
	}
	b = append(b, p.after.b...)
	if p.after.n == 0 {
		for _, d := range p.deps {
			b = appendRef(b, nsRef{d.ns.key.org, d.ns.key.ns, d.seq})
		}
	}
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

func appendProposalRecord(b []byte, p *proposal) []byte {
	b, s := beginRecord(b, recProposal)
	return endRecord(appendProposal(b, p), s)
}

func appendVoteRecord(b []byte, block *[idLen]byte, voter *nodeID, typ byte) []byte {
	b = append(b, recVote, voteLen) // under 128: one length byte
	b = append(b, block[:]...)
	b = append(b, voter[:]...)
	return append(b, typ)
}

func appendCertificateRecord(b []byte, p *proposal, voters nodeList) []byte {
	b, s := beginRecord(b, recCertificate)
	if p.raw != nil {
		b = appendBytes(b, p.raw)
	} else {
		b = appendBytes(b, appendProposal(nil, p))
	}
	b = binary.AppendUvarint(b, uint64(voters.len()))
	b = append(b, voters...)
	return endRecord(b, s)
}

func appendFetchRecord(b []byte, block *[idLen]byte, who, to *nodeID) []byte {
	b = append(b, recFetch, idLen+2*nodeIDLen)
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

// proposal reads a canonical proposal (see the format above).
func (d *decoder) proposal(p *proposal, maxFrame int) {
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
	p.after = d.afterList()
	p.proposer = d.node("proposer")
	if d.err == nil {
		if f.Seq == 0 || f.Seq <= p.prev {
			d.fail("seq not above prev")
		} else if maxFrame > 0 && f.size() > maxFrame {
			d.fail("frame above limit")
		} else if !f.validUTF8() {
			d.fail("frame string not UTF-8")
		}
	}
	if d.err == nil {
		p.raw = start[: len(start)-len(d.b) : len(start)-len(d.b)]
	}
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
	case recProposal:
		body.proposal(&r.prop, maxFrame)
	case recVote:
		copy(r.vote.block[:], body.take(idLen, "vote block"))
		r.vote.voter = body.node("vote voter")
		r.vote.typ = body.byte1("vote type")
		r.vote.sig = body.b
		body.b = nil
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
	case recFetch:
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

// readMessage reads msg's header. maxFrame bounds a frame's JSON size (0:
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
