package replication

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
)

// This file holds what the core makes durable and how it comes back from
// it.
//
// With a data directory (coreConfig.durable), the core reports, in each
// ready batch, the records that describe what changed (ready.persist, in
// the log format of wal.go). The driver writes and syncs them before any
// message or decision of the same batch leaves the node (ready.strict), so
// a validator that crashes and restarts never contradicts what it told its
// peers. Applied marks are the exception: they only bound what handlers see
// again after a crash, so they may reach the disk with a later batch.
//
// Records, each a type byte and a payload (strings are uvarint-prefixed,
// numbers uvarints):
//
//	durVote      org ns prev seq id[32] type  a vote this validator cast
//	durAccepted  count voters proposal        a frame accepted here: the NodeIDs of its
//	                                          commit voters (20 bytes each), then its
//	                                          canonical encoding
//	durOwn       proposal                     a frame this node proposed
//	durApplied   org ns seq                   handlers returned for the namespace through seq
//	durReset     org ns seq                   ResetNamespace(org, ns, seq)
//	durReturned  org ns seq                   a Propose of this node returned Accept for seq
//	durHead      org ns head applied maxSeen  a namespace's state (written by compaction)
//	durUnvote    org ns prev id[32]           the frame this validator committed at prev was
//	                                          rejected: the position is free again
//
// The position a validator committed at its head (nsState.voted) is the
// frame of the last durVote commit there not followed by its durUnvote. A
// compaction writes the votes in no particular order, so it writes the
// commits that are not the position's vote followed by their durUnvote,
// and the position's vote last.
//
// The log is the history of these records; restore replays it. Compaction
// (snapshot) replaces the history with the records that describe the
// current state alone. Only votes at positions a namespace has not passed
// matter (see remember), so the log keeps nothing else of the past.
const (
	durVote     byte = 1
	durAccepted byte = 2
	durOwn      byte = 3
	durApplied  byte = 4
	durReset    byte = 5
	durReturned byte = 6
	durHead     byte = 7
	durUnvote   byte = 8
)

// persist appends one record to the batch. strict: the batch's messages
// and decisions must wait until it is synced.
func (c *core) persist(typ byte, payload []byte, strict bool) {
	if !c.cfg.durable || c.restoring {
		return
	}
	c.rd.persist = appendWALRecord(c.rd.persist, typ, payload)
	c.rd.strict = c.rd.strict || strict
}

// takePersist returns the records of the batch being collected and
// removes them from it: the driver takes them ahead of takeReady, so that
// it can sync them before it takes the decisions and messages that depend
// on them. arch locates, in b, the payloads of the accepted frames among
// them (for the archive). Both are valid until the core's next input.
func (c *core) takePersist() (b []byte, strict bool, arch []archiveRef) {
	b, strict, arch = c.rd.persist, c.rd.strict, c.rd.arch
	c.rd.persist, c.rd.strict, c.rd.arch = c.rd.persist[:0], false, c.rd.arch[:0]
	return b, strict, arch
}

// archiveRef locates an accepted frame's durAccepted payload in a batch's
// records: b[lo:hi].
type archiveRef struct {
	key       spaceKey
	prev, seq uint64
	lo, hi    int
}

// diskRead asks the driver for the accepted frames of a namespace's chain
// after position from, from the archive (this node no longer retains them
// in memory), to answer validator to's sync with answerDisk.
type diskRead struct {
	key  spaceKey
	from uint64
	to   int
}

// maxDiskReads bounds the archive reads one batch asks for; more syncs are
// dropped (the requester asks again).
const maxDiskReads = 64

// answerDisk answers the sync that r was made for, with the durAccepted
// payloads the archive returned (in chain order from r.from): their
// certificates, or a behind notice if there are none.
func (c *core) answerDisk(now int64, r diskRead, payloads [][]byte) {
	c.now = now
	sent := 0
	for _, b := range payloads {
		a, err := decodeAccepted(b)
		if err != nil {
			c.logf(slog.LevelError, "an archived frame does not decode", "org", r.key.org, "ns", r.key.ns, "err", err)
			break
		}
		if slot, ok := c.out.begin(r.to); ok {
			c.out.bufs[slot] = appendCertificateRecord(c.out.bufs[slot], &a.p, a.voters, nil)
			c.out.end(slot)
		}
		sent++
	}
	if sent == 0 {
		c.sendSync(recBehind, r.key, r.from, r.to, c.cfg.self, r.to)
	}
	c.m.served.Add(uint64(sent))
}

// decodeAccepted decodes a durAccepted payload. The proposal aliases b.
func decodeAccepted(b []byte) (restoreFrame, error) {
	var a restoreFrame
	d := decoder{b: b}
	k := d.uvarint("voters")
	if k > MaxValidators {
		d.fail("voters")
	}
	a.voters = nodeList(d.take(k*nodeIDLen, "voters"))
	d.proposal(&a.p, 0)
	d.done("accepted frame")
	return a, d.err
}

func appendSeqRecord(b []byte, key spaceKey, seq uint64) []byte {
	b = appendStr(b, key.org)
	b = appendStr(b, key.ns)
	return binary.AppendUvarint(b, seq)
}

// appendVotePayload appends a durVote payload.
func appendVotePayload(b []byte, key spaceKey, prev, seq uint64, id *[idLen]byte, typ byte) []byte {
	b = appendSeqRecord(b, key, prev)
	b = binary.AppendUvarint(b, seq)
	b = append(b, id[:]...)
	return append(b, typ)
}

// appendUnvotePayload appends a durUnvote payload.
func appendUnvotePayload(b []byte, key spaceKey, prev uint64, id *[idLen]byte) []byte {
	return append(appendSeqRecord(b, key, prev), id[:]...)
}

// persistVote records this validator's vote typ on e.
func (c *core) persistVote(e *entry, typ byte) {
	if !c.cfg.durable {
		return
	}
	c.pscratch = appendVotePayload(c.pscratch[:0], e.key, e.p.prev, e.p.frame.Seq, &e.id, typ)
	c.persist(durVote, c.pscratch, true)
}

// persistUnvote records that this validator's commit on e, at e's
// position, no longer takes the position (e was rejected). Not strict: if
// it is lost, the position stays taken after a restart, which delays, and
// never contradicts.
func (c *core) persistUnvote(e *entry) {
	if !c.cfg.durable {
		return
	}
	c.pscratch = appendUnvotePayload(c.pscratch[:0], e.key, e.p.prev, &e.id)
	c.persist(durUnvote, c.pscratch, false)
}

// persistFrame records frame e as accepted (durAccepted) or as this node's
// proposal (durOwn).
func (c *core) persistFrame(typ byte, e *entry) {
	if !c.cfg.durable || c.restoring {
		return
	}
	c.pscratch = c.appendFrame(c.pscratch[:0], typ, e)
	c.persist(typ, c.pscratch, true)
	if typ == durAccepted && c.cfg.archive {
		hi := len(c.rd.persist)
		c.rd.arch = append(c.rd.arch, archiveRef{key: e.key, prev: e.p.prev, seq: e.p.frame.Seq, lo: hi - len(c.pscratch), hi: hi})
	}
}

// appendFrame appends the payload of a durAccepted or durOwn record of e.
func (c *core) appendFrame(b []byte, typ byte, e *entry) []byte {
	if typ == durAccepted {
		b = binary.AppendUvarint(b, uint64(e.nCommit))
		for i := range c.cfg.n() {
			if e.commits.has(i) {
				b = append(b, c.cfg.ids[i][:]...)
			}
		}
	}
	return appendProposal(b, &e.p)
}

// persistSeq records a durApplied, durReset or durReturned record.
func (c *core) persistSeq(typ byte, key spaceKey, seq uint64, strict bool) {
	if !c.cfg.durable {
		return
	}
	c.pscratch = appendSeqRecord(c.pscratch[:0], key, seq)
	c.persist(typ, c.pscratch, strict)
}

// restoreNS is what a log says of one namespace.
type restoreNS struct {
	key spaceKey
	// mark: the Seq through which the handlers' state is (applied marks,
	// reset by ResetNamespace); floor: the head a snapshot or compaction
	// put the namespace at; maxSeen: the highest Seq recorded.
	mark, floor, maxSeen uint64
	own                  *proposal // the last proposal of this node
}

// restoreFrame is a durAccepted record.
type restoreFrame struct {
	p      proposal
	voters nodeList
}

type restoreVote struct {
	key       spaceKey
	prev, seq uint64
	id        [idLen]byte
	typ       byte
}

// restore rebuilds the core from the records of a log (oldest first). It
// runs once, on a new core, before any other input. An error means the log
// holds a record this version cannot read: the caller must not start.
func (c *core) restore(now int64, recs []walRecord) error {
	c.now = now
	c.restoring = true
	defer func() { c.restoring = false }()
	var (
		order    []*restoreNS
		byKey    = map[spaceKey]*restoreNS{}
		accepted []restoreFrame
		votes    []restoreVote
		returned []restoreVote // key and seq only
	)
	get := func(key spaceKey) *restoreNS {
		st := byKey[key]
		if st == nil {
			st = &restoreNS{key: key}
			byKey[key] = st
			order = append(order, st)
		}
		return st
	}
	for i, rec := range recs {
		d := decoder{b: rec.data}
		switch rec.typ {
		case durVote:
			v := restoreVote{key: spaceKey{d.str("org"), d.str("ns")}, prev: d.uvarint("prev"), seq: d.uvarint("seq")}
			copy(v.id[:], d.take(idLen, "block"))
			v.typ = d.byte1("type")
			if d.err == nil && v.typ != voteCommit && v.typ != voteCancel {
				d.fail("vote type")
			}
			votes = append(votes, v)
			get(v.key)
		case durAccepted, durOwn:
			var a restoreFrame
			if rec.typ == durAccepted {
				a, d.err = decodeAccepted(rec.data)
				d.b = nil // decoded whole
			} else {
				d.proposal(&a.p, 0)
				d.done("proposal")
			}
			if d.err != nil {
				break
			}
			st := get(spaceKey{a.p.frame.OrgID, a.p.frame.Namespace})
			st.maxSeen = max(st.maxSeen, a.p.frame.Seq)
			if rec.typ == durAccepted {
				accepted = append(accepted, a)
			} else {
				st.own = &a.p
			}
		case durApplied, durReset, durReturned:
			key := spaceKey{d.str("org"), d.str("ns")}
			seq := d.uvarint("seq")
			if d.err != nil {
				break
			}
			st := get(key)
			switch rec.typ {
			case durApplied:
				st.mark = max(st.mark, seq)
			case durReset:
				// The handlers' state is the snapshot's from here on: frames
				// after seq are applied again, also if they were before.
				st.mark, st.floor = seq, max(st.floor, seq)
			default:
				returned = append(returned, restoreVote{key: key, seq: seq})
			}
		case durUnvote:
			v := restoreVote{key: spaceKey{d.str("org"), d.str("ns")}, prev: d.uvarint("prev")}
			copy(v.id[:], d.take(idLen, "block"))
			if d.err != nil {
				break
			}
			get(v.key)
			v.typ = 0 // marks the unvote
			votes = append(votes, v)
		case durHead:
			key := spaceKey{d.str("org"), d.str("ns")}
			head, applied, seen := d.uvarint("head"), d.uvarint("applied"), d.uvarint("max seen")
			if d.err != nil {
				break
			}
			st := get(key)
			st.floor, st.mark, st.maxSeen = max(st.floor, head), applied, max(st.maxSeen, seen)
		default:
			d.fail("record type")
		}
		if d.err == nil {
			d.done("record")
		}
		if d.err != nil {
			return fmt.Errorf("record %d (type %d): %w", i, rec.typ, d.err)
		}
	}

	// Namespaces, then their chains, from the applied mark: the head is at
	// least there (a frame is applied only once linked), and the first
	// frame after it is linked as if just accepted, which queues it and the
	// rest of the chain for apply. A compaction's floor is the head then:
	// the frames between the mark and it were not applied yet, and the log
	// holds them.
	spaces := make([]*nsState, len(order))
	for i, st := range order {
		ns := c.space(now, st.key)
		ns.head, ns.applied, ns.dispatched = st.mark, st.mark, st.mark
		ns.maxSeen = max(st.maxSeen, st.floor, st.mark)
		if ns.head > 0 {
			c.list(ns)
		}
		spaces[i] = ns
	}
	// Frames already applied are brought back only as many as the memory
	// retention window holds, the newest: to serve peers (older ones are in
	// the archive, if any). The others are needed to apply.
	keepApplied := c.cfg.retainFrames
	keep := make([]bool, len(accepted))
	for i := len(accepted) - 1; i >= 0; i-- {
		p := &accepted[i].p
		ns := c.spaces[spaceKey{p.frame.OrgID, p.frame.Namespace}]
		switch {
		case p.frame.Seq > ns.applied:
			keep[i] = true
		case keepApplied > 0 && !c.solo:
			keep[i] = true
			keepApplied--
		}
	}
	for i := range accepted {
		p := &accepted[i].p
		ns := c.spaces[spaceKey{p.frame.OrgID, p.frame.Namespace}]
		if !keep[i] || ns.chain.get(p.prev) != nil {
			continue // applied and out of the window, or recorded twice
		}
		id, o := c.restoredID(p)
		e := &entry{id: id, key: ns.key, ns: ns, p: *p, phase: phaseAccepted}
		c.own(&e.p, ns, o)
		voters := accepted[i].voters
		for k := range voters.len() {
			if v, ok := c.cfg.byNodeID[voters.at(k)]; ok && !e.commits.has(v) {
				e.commits.add(v)
				e.nCommit++
			}
		}
		c.restoreEntry(now, e)
		if e.commits.has(c.cfg.self) {
			// Its own commit vote counted: attested again, in this
			// process's chain, so that it can still give its part.
			c.attestVote(now, e, voteCommit)
		}
		ns.chain.set(p.prev, e)
		if p.frame.Seq <= ns.applied {
			e.phase = phaseApplied
			c.done(now, e)
		} else {
			c.wait(now, e)
		}
	}
	for i, ns := range spaces {
		if ns.head > 0 {
			c.list(ns)
		}
		if e := ns.chain.get(ns.head); e != nil && e.phase == phaseAccepted {
			c.link(now, ns, e)
		}
		if floor := order[i].floor; ns.head < floor {
			// The log lacks frames this node had linked: never vote below a
			// position passed, and tell the application.
			c.logf(slog.LevelError, "the log lacks accepted frames below the namespace's head; they will not be applied here",
				"org", ns.key.org, "ns", ns.key.ns, "from", ns.head, "head", floor)
			ns.head = floor
			ns.maxSeen = max(ns.maxSeen, floor)
			c.list(ns)
		}
	}

	// Votes at positions not passed: the same vote again if the frame comes
	// back, and the position at the head taken by the commit vote there that
	// no rejection freed.
	for _, v := range votes {
		ns := c.spaces[v.key]
		if v.prev < ns.head {
			continue
		}
		if v.typ == 0 { // durUnvote
			if w := ns.voted; w != nil && w.id == v.id && w.p.prev == v.prev {
				ns.voted = nil
			}
			continue
		}
		ns.maxSeen = max(ns.maxSeen, v.seq)
		c.forgotGen++
		c.forgot[v.id] = forgotVote{typ: v.typ, gen: c.forgotGen, ns: ns, prev: v.prev, seq: v.seq}
		c.forgotQ = append(c.forgotQ, forgotRef{id: v.id, gen: c.forgotGen})
		if v.typ == voteCommit && v.prev == ns.head {
			stub := &entry{id: v.id, key: ns.key, ns: ns, phase: phaseForgotten}
			stub.p.prev, stub.p.frame.Seq = v.prev, v.seq
			ns.voted = stub
		}
	}

	// This node's last proposal in each namespace, if it may still be
	// decided: it is again the frame the next Propose there waits for. From
	// here on, the core records what it does as usual (a single validator
	// accepts such a frame at once).
	c.restoring = false
	var mine []*entry
	for i, st := range order {
		p, ns := st.own, spaces[i]
		if p == nil || p.prev < ns.head {
			continue
		}
		if ns.chain.get(p.prev) != nil {
			continue // accepted
		}
		id, o := c.restoredID(p)
		if c.entries[id] != nil {
			continue // accepted
		}
		e := &entry{id: id, key: ns.key, ns: ns, p: *p, own: true}
		c.own(&e.p, ns, o)
		c.takeAlone(now, e)
		ns.mine = e
		mine = append(mine, e)
	}
	for _, r := range returned {
		ns := c.spaces[r.key]
		if ns.frontierAt == 0 {
			c.frontier = append(c.frontier, ns)
			ns.frontierAt, ns.frontierSeq = len(c.frontier), r.seq
		} else {
			ns.frontierSeq = max(ns.frontierSeq, r.seq)
		}
	}
	if c.solo {
		for _, ns := range spaces {
			ns.chain.reset() // a single validator retains nothing
		}
	}
	for _, e := range mine {
		c.castVote(now, e) // proposed, but the vote was not recorded
	}
	c.settleBarriers()
	return nil
}

// restoredID returns the frame ID of a proposal decoded from the log, and
// its after list held (one hash of the list serves both).
func (c *core) restoredID(p *proposal) ([idLen]byte, *order) {
	aid := afterIDOf(p.after)
	return frameIDOf(p.raw, &aid, &p.proposer), c.newOrder(p.after, aid)
}

// restoreEntry sets what add sets on a frame taken in, for a frame that
// restore brings back already decided.
func (c *core) restoreEntry(now int64, e *entry) {
	c.describe(e)
	c.aloneBlock(e)
	e.born = now
	if !c.solo {
		c.entries[e.id] = e
	}
}

// snapshot appends to b the records that describe the core's durable state
// alone, to replace the log (compaction): each namespace's head and applied
// mark, the accepted frames still retained or not yet applied, this node's
// undecided proposals, its votes at positions not passed, and its frontier.
func (c *core) snapshot(b []byte) []byte {
	keys := make([]spaceKey, 0, len(c.spaces))
	for k := range c.spaces {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b spaceKey) int { return compareRefs(a.org, a.ns, b.org, b.ns) })
	// A frame queued for apply again (ResetNamespace to an older snapshot)
	// lowers the mark below it.
	marks := make(map[*nsState]uint64, len(keys))
	for _, ns := range c.spaces {
		marks[ns] = ns.applied
	}
	for _, e := range c.applyQ[c.applyHead:] {
		if !e.skip && e.p.frame.Seq <= marks[e.ns] {
			marks[e.ns] = min(marks[e.ns], e.p.prev)
		}
	}
	var scratch []byte
	for _, k := range keys {
		ns := c.spaces[k]
		if ns.head == 0 && ns.maxSeen == 0 && ns.applied == 0 {
			continue
		}
		scratch = appendSeqRecord(scratch[:0], k, ns.head)
		scratch = binary.AppendUvarint(scratch, marks[ns])
		scratch = binary.AppendUvarint(scratch, ns.maxSeen)
		b = appendWALRecord(b, durHead, scratch)
	}
	seen := make(map[*entry]bool)
	frame := func(typ byte, e *entry) {
		if seen[e] {
			return
		}
		seen[e] = true
		scratch = c.appendFrame(scratch[:0], typ, e)
		b = appendWALRecord(b, typ, scratch)
	}
	writeVote := func(key spaceKey, prev, seq uint64, id *[idLen]byte, typ byte) {
		scratch = appendVotePayload(scratch[:0], key, prev, seq, id, typ)
		b = appendWALRecord(b, durVote, scratch)
	}
	// vote writes a vote at a position not passed; the position's vote
	// (nsState.voted) is written last, below.
	vote := func(ns *nsState, prev, seq uint64, id *[idLen]byte, typ byte) {
		if prev < ns.head {
			return
		}
		if w := ns.voted; w != nil && w.id == *id && w.p.prev == prev {
			return
		}
		writeVote(ns.key, prev, seq, id, typ)
		if typ == voteCommit && prev == ns.head {
			scratch = appendUnvotePayload(scratch[:0], ns.key, prev, id)
			b = appendWALRecord(b, durUnvote, scratch)
		}
	}
	lists := []*entryList{&c.waiting, &c.retained, &c.undecided}
	for _, l := range lists {
		for e := l.head; e != nil; e = e.nextL {
			if e.phase.accepted() {
				frame(durAccepted, e)
			}
		}
	}
	for _, e := range c.applyQ[c.applyHead:] {
		frame(durAccepted, e)
	}
	for _, k := range keys {
		for _, e := range c.spaces[k].pending {
			frame(durAccepted, e)
		}
	}
	for e := c.undecided.head; e != nil; e = e.nextL {
		if e.own && e.ns.mine == e {
			frame(durOwn, e)
		}
	}
	for _, l := range lists {
		for e := l.head; e != nil; e = e.nextL {
			if e.myVote != 0 {
				vote(e.ns, e.p.prev, e.p.frame.Seq, &e.id, e.myVote)
			}
		}
	}
	for _, ref := range c.forgotQ {
		if v, ok := c.forgot[ref.id]; ok && v.gen == ref.gen {
			vote(v.ns, v.prev, v.seq, &ref.id, v.typ)
		}
	}
	for _, k := range keys {
		if ns := c.spaces[k]; ns.voted != nil && ns.voted.p.prev == ns.head {
			w := ns.voted
			writeVote(ns.key, w.p.prev, w.p.frame.Seq, &w.id, voteCommit)
		}
	}
	for _, ns := range c.frontier {
		b = appendWALRecord(b, durReturned, appendSeqRecord(scratch[:0], ns.key, ns.frontierSeq))
	}
	return b
}
