package replication

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// Wire format of the Quasar driver.
//
// Every message the driver hands to Transport.Broadcast has the kind
// quasarKind ("quasar/1") and carries a batch of records, so that under load
// one transport message carries many proposals and votes:
//
//	message     = version:u8 (=1) ‖ count:uvarint ‖ record × count
//	record      = type:u8 ‖ length:uvarint ‖ body[length]
//
//	str         = length:uvarint ‖ bytes
//	frame       = seq:uvarint ‖ org:str ‖ ns:str ‖ op:str ‖ key:str ‖ val:str
//	proposal    = frame ‖ prev:uvarint ‖ n:uvarint ‖ (afterOrg:str ‖ afterNs:str ‖ afterSeq:uvarint) × n ‖ proposer:20
//
//	type 1 proposal     body = proposal
//	type 2 vote         body = blockID:32 ‖ voter:20 ‖ voteType:u8 ‖ signature (rest of body, may be empty)
//	type 3 certificate  body = proposalLen:uvarint ‖ proposal ‖ n:uvarint ‖ voter:20 × n
//	type 4 fetch        body = blockID:32
//	type 5 sync         body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20
//	type 6 digest       body = n:uvarint ‖ (org:str ‖ ns:str ‖ head:uvarint) × n
//	type 7 behind       body = org:str ‖ ns:str ‖ from:uvarint ‖ requester:20
//
// The vote is the documented consensus vote: block ID (32 bytes) ‖ voter
// NodeID (20 bytes: the first 20 bytes of SHA-256 of the validator's string
// ID) ‖ vote type (1 byte, the github.com/luxfi/consensus VoteType: 1 commit,
// 2 cancel) ‖ signature (empty for now). A frame's block ID is not sent with
// a proposal: every receiver derives it, SHA-256(seq as 8 bytes big-endian ‖
// the frame's JSON encoding), so a proposal cannot claim a foreign ID.
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
// fetch asks for a block by ID; sync asks for the accepted frames of a
// namespace after Seq from; digest advertises namespace heads (anti-entropy);
// behind tells requester that its sync asked for frames no longer retained.
//
// Decoded strings and values alias the message buffer: the driver copies
// what it keeps before the transport callback returns.
//
// Decoding treats every byte as hostile: every length is checked against what
// remains before anything is sliced or allocated, a frame above the
// configured limit is refused, and a message that fails anywhere is dropped
// whole (decodeMessage validates the entire batch before the driver acts on
// any record of it).
const (
	quasarKind  = "quasar/1"
	wireVersion = 1

	recProposal    = 1
	recVote        = 2
	recCertificate = 3
	recFetch       = 4
	recSync        = 5
	recDigest      = 6
	recBehind      = 7

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

// depRef is an after-list entry a node holds: the namespace's state on
// this node and the Seq. It replaces the names (nsRef) once a proposal is
// made or owned, so that the apply path follows a pointer instead of
// looking the names up again, and a held entry costs 16 bytes and one
// pointer per reference instead of two strings.
type depRef struct {
	ns  *nsState
	seq uint64
}

// proposal is a proposal record. A decoded one names its after-list in
// after (aliasing the message); a held one (made by propose or owned from
// a decoded one) in deps, with after nil. Both encode alike.
type proposal struct {
	frame    Frame
	prev     uint64
	after    []nsRef
	deps     []depRef
	proposer nodeID
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
	voters []nodeID    // certificate
	ref    nsRef       // sync, behind (seq = from)
	who    nodeID      // sync, behind: requester
	digest []nsRef     // digest (seq = head)
	// Filled by the driver, not the decoder: the block ID and JSON payload
	// of a proposal's or certificate's frame.
	id      [idLen]byte
	payload []byte
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

func appendProposal(b []byte, p *proposal) []byte {
	f := &p.frame
	b = binary.AppendUvarint(b, f.Seq)
	b = appendStr(b, f.OrgID)
	b = appendStr(b, f.Namespace)
	b = appendStr(b, f.Op)
	b = appendStr(b, f.Key)
	b = appendBytes(b, f.Value)
	b = binary.AppendUvarint(b, p.prev)
	b = binary.AppendUvarint(b, uint64(len(p.after)+len(p.deps))) // one is empty
	for _, a := range p.after {
		b = appendStr(b, a.org)
		b = appendStr(b, a.ns)
		b = binary.AppendUvarint(b, a.seq)
	}
	for _, d := range p.deps {
		b = appendStr(b, d.ns.key.org)
		b = appendStr(b, d.ns.key.ns)
		b = binary.AppendUvarint(b, d.seq)
	}
	return append(b, p.proposer[:]...)
}

// beginRecord appends a record header with a placeholder length and returns
// the buffer and the offset where the body starts; endRecord patches the
// length in. Lengths are written as fixed 4-byte-wide uvarints (padded with
// continuation bits), which every uvarint decoder reads.
func beginRecord(b []byte, typ byte) ([]byte, int) {
	b = append(b, typ, 0x80, 0x80, 0x80, 0x00)
	return b, len(b)
}

func endRecord(b []byte, start int) []byte {
	n := len(b) - start
	if n >= 1<<28 {
		panic("replication: record too large") // unreachable: frames are limited far below
	}
	b[start-4] = byte(n) | 0x80
	b[start-3] = byte(n>>7) | 0x80
	b[start-2] = byte(n>>14) | 0x80
	b[start-1] = byte(n >> 21)
	return b
}

func appendProposalRecord(b []byte, p *proposal) []byte {
	b, s := beginRecord(b, recProposal)
	return endRecord(appendProposal(b, p), s)
}

func appendVoteRecord(b []byte, block *[idLen]byte, voter *nodeID, typ byte) []byte {
	b = append(b, recVote, voteLen)
	b = append(b, block[:]...)
	b = append(b, voter[:]...)
	return append(b, typ)
}

func appendCertificateRecord(b []byte, p *proposal, voters []nodeID) []byte {
	b, s := beginRecord(b, recCertificate)
	b = appendBytes(b, appendProposal(nil, p))
	b = binary.AppendUvarint(b, uint64(len(voters)))
	for i := range voters {
		b = append(b, voters[i][:]...)
	}
	return endRecord(b, s)
}

func appendFetchRecord(b []byte, block *[idLen]byte) []byte {
	b = append(b, recFetch, idLen)
	return append(b, block[:]...)
}

func appendSyncRecord(b []byte, typ byte, org, ns string, from uint64, who *nodeID) []byte {
	b, s := beginRecord(b, typ)
	b = appendStr(b, org)
	b = appendStr(b, ns)
	b = binary.AppendUvarint(b, from)
	b = append(b, who[:]...)
	return endRecord(b, s)
}

func appendDigestRecord(b []byte, heads []nsRef) []byte {
	b, s := beginRecord(b, recDigest)
	b = binary.AppendUvarint(b, uint64(len(heads)))
	for _, h := range heads {
		b = appendStr(b, h.org)
		b = appendStr(b, h.ns)
		b = binary.AppendUvarint(b, h.seq)
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
// outlive the message unless their strings are copied (the driver interns
// or clones every string it keeps, see state.onProposal and state.space).
func (d *decoder) str(what string) string {
	b := d.take(d.uvarint(what), what)
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

func (d *decoder) proposal(p *proposal, maxFrame int) {
	f := &p.frame
	f.Seq = d.uvarint("seq")
	f.OrgID = d.str("org")
	f.Namespace = d.str("ns")
	f.Op = d.str("op")
	f.Key = d.str("key")
	if v := d.take(d.uvarint("val"), "val"); len(v) > 0 {
		f.Value = v // aliases the message, like str
	}
	p.prev = d.uvarint("prev")
	n := d.uvarint("after count")
	if d.err == nil && n > uint64(len(d.b))/3 {
		d.fail("after count")
	}
	if d.err == nil && n > 0 {
		p.after = make([]nsRef, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var a nsRef
		a.org = d.str("after org")
		a.ns = d.str("after ns")
		a.seq = d.uvarint("after seq")
		p.after = append(p.after, a)
	}
	p.proposer = d.node("proposer")
	if d.err == nil {
		if f.Seq == 0 || f.Seq <= p.prev {
			d.fail("seq not above prev")
		} else if maxFrame > 0 && f.size() > maxFrame {
			d.fail("frame above limit")
		}
	}
}

// decodeMessage validates a whole message and returns its records, appended
// to recs (reused by the caller). maxFrame bounds a frame's JSON size (0: no
// limit beyond the message's own length).
func decodeMessage(msg []byte, maxFrame int, recs []record) ([]record, error) {
	d := decoder{b: msg}
	if v := d.byte1("version"); d.err == nil && v != wireVersion {
		return recs, fmt.Errorf("%w: unknown version %d", ErrMalformed, v)
	}
	count := d.uvarint("count")
	if d.err == nil && count > uint64(len(d.b))/2 {
		d.fail("record count above message size")
	}
	for i := uint64(0); i < count && d.err == nil; i++ {
		typ := d.byte1("record type")
		body := decoder{b: d.take(d.uvarint("record length"), "record body")}
		if d.err != nil {
			break
		}
		r := record{typ: typ}
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
			for j := uint64(0); j < n && body.err == nil; j++ {
				r.voters = append(r.voters, body.node("certificate voter"))
			}
		case recFetch:
			copy(r.block[:], body.take(idLen, "fetch block"))
		case recSync, recBehind:
			r.ref.org = body.str("sync org")
			r.ref.ns = body.str("sync ns")
			r.ref.seq = body.uvarint("sync from")
			r.who = body.node("sync requester")
		case recDigest:
			n := body.uvarint("digest count")
			if body.err == nil && n > uint64(len(body.b))/3 {
				body.fail("digest count")
			}
			for j := uint64(0); j < n && body.err == nil; j++ {
				var h nsRef
				h.org = body.str("digest org")
				h.ns = body.str("digest ns")
				h.seq = body.uvarint("digest head")
				r.digest = append(r.digest, h)
			}
		default:
			body.fail(fmt.Sprintf("unknown record type %d", typ))
		}
		body.done("record")
		if body.err != nil {
			d.err = body.err
			break
		}
		recs = append(recs, r)
	}
	d.done("message")
	if d.err != nil {
		return recs[:0], d.err
	}
	return recs, nil
}
