package replication

import (
	"bytes"
	"fmt"
	"log/slog"
)

// This file holds how a validator takes in frames, votes, counts votes and
// decides: the rules the safety invariants rest on.
//
// The voting rule (S4, one frame per slot). A frame names its chain
// position: prev, the Seq of the accepted frame it extends. A validator
// casts at most one commit vote per position of a namespace
// (nsState.voted), and only at its own head: any other frame there gets a
// cancel vote, a frame beyond its head waits (deferred) until this node
// caught up, and a frame below its head gets no vote. Its vote on a frame
// never changes, also after it forgot the frame (remember). A vote counts
// for a frame by its ID, which names its position: a vote counts only
// there.
//
// Deciding (S1, S2). Only checked votes count: from validators, one per
// validator per frame, from the sender itself when the transport knows the
// sender, for a frame this node holds at the vote's position (votes for a
// block not held yet wait aside, see orphan). Each validator's first commit
// vote on a block goes to the consensus engine (consensus.NewPQ, Alpha =
// q), which accepts the block at q of them; a frame of the block is
// accepted once the engine accepted it and q validators committed the
// frame itself (core_block.go). Cancel votes are counted here, per frame,
// and a frame is rejected once more than n-q validators cancelled it. Both
// cannot happen: they need more than n votes. A certificate (an accepted
// frame with q commit voters, relayed for repair) counts as those voters'
// commit votes.

// add registers a new undecided frame. Its home block (e.blk) is in the
// engine already (startEngine).
func (c *core) add(now int64, e *entry) {
	c.describe(e)
	e.blk.open++
	e.born, e.next = now, now+c.cfg.witness
	if !c.solo {
		c.entries[e.id] = e
		e.ns.open = append(e.ns.open, e)
	}
	c.relist(e, &c.undecided)
	if v, ok := c.forgot[e.id]; ok {
		delete(c.forgot, e.id)
		ns := e.ns
		current := v.typ == voteCommit && e.p.prev == ns.head
		if !current || ns.voted == nil || ns.voted.id == e.id {
			// A frame this validator voted on and forgot: same vote again.
			e.myVote, e.voted = v.typ, now
			if current {
				ns.voted = e
			}
			if v.att != nil {
				e.att, e.leaf = v.att, v.leaf // attested when first held
			} else {
				c.attestVote(now, e, v.typ)
			}
			c.countVote(now, e, c.cfg.self, v.typ)
		}
	}
}

// describe sets what a held frame's bookkeeping derives from its proposal:
// its size, and its proposer's validator index (origin).
func (c *core) describe(e *entry) {
	e.size = e.p.frame.size()
	e.origin = -1
	if i, ok := c.cfg.byNodeID[e.p.proposer]; ok {
		e.origin = i
	}
}

// relist moves e to list to (nil: to none), keeping heldBytes: what the
// peers' frames in undecided and waiting weigh (heldWeight).
func (c *core) relist(e *entry, to *entryList) {
	held := func(l *entryList) bool { return !e.own && (l == &c.undecided || l == &c.waiting) }
	if held(e.inList) {
		c.heldBytes -= heldWeight(e)
	}
	unlist(e)
	if to != nil {
		to.pushBack(e)
		if held(to) {
			c.heldBytes += heldWeight(e)
		}
	}
}

// heldWeight is about the memory a held frame takes: its raw size, and
// what an entry costs beside it (the after list is shared by its block).
func heldWeight(e *entry) int { return e.size + entryOverhead }

// entryOverhead is about the bytes a held frame takes beside its own.
const entryOverhead = 512

// castVote applies this validator's voting rule to e.
func (c *core) castVote(now int64, e *entry) {
	if e.myVote != 0 || e.phase != phaseUndecided {
		return
	}
	ns := e.ns
	var typ byte
	switch {
	case e.p.prev > ns.head:
		// We have not accepted the position yet: catch up first.
		if !e.deferred {
			e.deferred = true
			ns.deferred = append(ns.deferred, e)
		}
		c.requestSync(now, ns, e.origin)
		return
	case e.p.prev < ns.head:
		// The position is passed. Cancel only when we still hold the frame
		// accepted there; a position we no longer remember gets no vote
		// (a vote on forgotten history could contradict one cast then).
		at := ns.at(e.p.prev)
		if at == nil || at == e {
			c.m.stale.Add(1)
			return
		}
		typ = voteCancel
	case ns.voted != nil && ns.voted.id != e.id:
		typ = voteCancel
	default:
		typ = voteCommit
		ns.voted = e
	}
	e.myVote = typ
	e.voted = now
	c.attestVote(now, e, typ)
	c.persistVote(e, typ)
	c.queueVote(e, -1)
	c.countVote(now, e, c.cfg.self, typ)
}

// countVote records a checked vote of validator voter on e.
func (c *core) countVote(now int64, e *entry, voter int, typ byte) {
	if e.commits.has(voter) || e.cancels.has(voter) {
		c.m.votesDuplicate.Add(1)
		return
	}
	if typ == voteCommit {
		e.commits.add(voter)
		e.nCommit++
		if b := e.blk; e.phase == phaseUndecided && b.ep != nil {
			if c.recordEngineVote(b, voter) && int(e.nCommit) >= c.cfg.q {
				c.accept(now, e)
			}
		}
		return
	}
	e.cancels.add(voter)
	e.nCancel++
	if e.phase == phaseUndecided && int(e.nCancel) > c.cfg.n()-c.cfg.q {
		c.reject(now, e)
	}
}

// decided takes e (just accepted or rejected) out of the undecided state.
func (c *core) decided(e *entry) {
	c.closeEngine(e)
	c.undefer(e)
	e.ns.close(e)
}

func (c *core) accept(now int64, e *entry) {
	e.phase = phaseAccepted
	c.persistFrame(durAccepted, e)
	c.decided(e)
	c.m.framesAccepted.Add(1)
	ns := e.ns
	ns.maxSeen = max(ns.maxSeen, e.p.frame.Seq)
	if cl := e.call; cl != nil && cl.reentrant {
		c.decide(cl, DecisionAccept, nil)
	}
	switch at := ns.at(e.p.prev); {
	case at != nil && at != e && at.phase.accepted():
		c.m.conflicts.Add(1)
		c.logf(slog.LevelError, "two frames accepted at one chain position",
			"org", e.key.org, "ns", e.key.ns, "prev", e.p.prev, "seq", e.p.frame.Seq, "other", at.p.frame.Seq)
		c.done(now, e)
	case e.p.prev < ns.head:
		c.m.stale.Add(1) // behind our head (restored past it)
		c.done(now, e)
	default:
		c.wait(now, e)
		if !c.solo {
			ns.chain.set(e.p.prev, e)
		}
		if e.p.prev == ns.head {
			c.link(now, ns, e)
		} else {
			c.requestSync(now, ns, e.origin) // the frames in between are missing here
		}
	}
	if ns.mine == e {
		// After linking: the next own frame extends the chain through e.
		c.releaseNS(now, ns)
	}
}

// wait puts accepted e on the waiting list, until it is queued for apply.
func (c *core) wait(now int64, e *entry) {
	if c.solo {
		c.relist(e, nil)
		return
	}
	e.doneAt = now
	c.relist(e, &c.waiting)
}

// done puts decided e on the retained list: it is kept to repair and catch
// up peers until the retention window passes it.
func (c *core) done(now int64, e *entry) {
	if c.solo {
		c.relist(e, nil) // nobody to repair: nothing is retained
		return
	}
	e.doneAt = now
	c.relist(e, &c.retained)
}

func (c *core) reject(now int64, e *entry) {
	c.rejectErr(now, e, fmt.Errorf("%w: %d of %d validators cancelled %s/%s seq %d (quorum %d)",
		ErrRejected, e.nCancel, c.cfg.n(), e.key.org, e.key.ns, e.p.frame.Seq, c.cfg.q))
}

func (c *core) rejectErr(now int64, e *entry, err error) {
	e.phase = phaseRejected
	c.decided(e)
	c.done(now, e)
	c.m.framesRejected.Add(1)
	ns := e.ns
	if v := ns.voted; v != nil && v.id == e.id && v.p.prev == e.p.prev {
		ns.voted = nil // the position is free again: e can never be accepted
		c.persistUnvote(e)
	}
	if cl := e.call; cl != nil {
		c.decide(cl, DecisionReject, err)
	}
	if ns.mine == e {
		c.releaseNS(now, ns)
	}
}

// closeEngine ends undecided e's claim on its home block's engine block.
func (c *core) closeEngine(e *entry) {
	if b := e.blk; b != nil && b.open > 0 {
		b.open--
		if b.open == 0 {
			b.ep = nil // the engine may go once its other blocks are decided
		}
	}
}

// own makes a decoded proposal (whose strings, value and slot alias the
// message) safe to keep: one copy of its slot's canonical bytes, which the
// frame then aliases (the namespace names are interned), and o, its
// block's after list held.
func (c *core) own(p *proposal, ns *nsState, o *order) {
	raw := bytes.Clone(p.raw)
	d := decoder{b: raw}
	d.slotFields(p) // decodes again what was decoded and checked once
	f := &p.frame
	f.OrgID, f.Namespace = ns.key.org, ns.key.ns
	switch f.Op {
	case "put":
		f.Op = "put"
	case "del":
		f.Op = "del"
	}
	p.after, p.ord = refList{}, o
}

func (c *core) applyCertificate(now int64, e *entry, voters nodeList) {
	m := c.m
	if voters.len() > c.cfg.n() {
		m.certificatesBad.Add(1)
		return
	}
	var seen voterSet
	idx := make([]int, 0, voters.len())
	for k := range voters.len() {
		i, ok := c.cfg.byNodeID[voters.at(k)]
		// A certificate naming this validator, which cancelled the frame,
		// is a lie: an honest one lists commit votes its sender received.
		if !ok || seen.has(i) || (i == c.cfg.self && e.cancels.has(i)) {
			m.certificatesBad.Add(1)
			return
		}
		seen.add(i)
		idx = append(idx, i)
	}
	if len(idx) < c.cfg.q {
		m.certificatesBad.Add(1)
		return
	}
	if e.phase == phaseRejected {
		m.conflicts.Add(1)
		c.logf(slog.LevelError, "certificate for a frame rejected here", "org", e.key.org, "ns", e.key.ns, "seq", e.p.frame.Seq)
		return
	}
	if e.phase != phaseUndecided {
		return
	}
	m.certificates.Add(1)
	for _, i := range idx {
		if e.phase != phaseUndecided {
			break
		}
		if !e.commits.has(i) && !e.cancels.has(i) {
			c.countVote(now, e, i, voteCommit)
		}
	}
}

func (c *core) onVote(now int64, v *vote, from int) {
	m := c.m
	voter, ok := c.cfg.byNodeID[v.voter]
	switch {
	case !ok:
		m.votesUnknownVoter.Add(1)
		return
	case from >= 0 && from != voter:
		m.votesWrongSender.Add(1)
		return
	}
	m.votesReceived.Add(1)
	b := c.blocks[v.block]
	if b == nil {
		c.orphan(now, v, voter)
		return
	}
	if v.count != len(b.frames) {
		m.votesBadType.Add(1)
		return
	}
	for i := range b.frames {
		typ := v.at(i)
		if typ == 0 {
			continue
		}
		if typ != voteCommit && typ != voteCancel {
			m.votesBadType.Add(1)
			continue
		}
		e := b.frames[i]
		if e == nil {
			m.votesUnknownBlock.Add(1)
			continue
		}
		again := e.commits.has(voter) || e.cancels.has(voter)
		c.countVote(now, e, voter, typ)
		if again && e.phase.accepted() {
			// A repeated vote is a re-send: its voter has not learned that
			// the frame was accepted; the certificate tells it. (A rejected
			// frame is served on fetch only: serving it re-sends a vote, and
			// answering repeated votes with votes would echo between
			// decided nodes.)
			c.serve(now, e, voter)
		}
	}
}

// orphan holds the votes received for a block this node does not hold
// (yet): each voter's, merged.
type orphan struct {
	votes     []orphanVote
	born      int64
	nextFetch int64
	fetches   uint32
}

type orphanVote struct {
	voter uint16
	count int
	bits  []byte // a copy
}

// orphan holds a vote for a block this node does not have (yet): it counts
// if the block arrives (countOrphans), and a fetch asks one of its voters
// for the block (repairOrphans).
func (c *core) orphan(now int64, v *vote, voter int) {
	c.m.votesUnknownBlock.Add(1)
	id := v.block
	o := c.orphans[id]
	if o == nil {
		for len(c.orphans) >= maxOrphans && len(c.orphanQ) > 0 {
			old := c.orphanQ[0]
			c.orphanQ = c.orphanQ[1:]
			if x := c.orphans[old]; x != nil {
				c.m.votesDropped.Add(uint64(len(x.votes)))
				delete(c.orphans, old)
			}
		}
		o = &orphan{born: now, nextFetch: now + c.cfg.witness/2}
		c.orphans[id] = o
		c.orphanQ = append(c.orphanQ, id)
	}
	for k := range o.votes {
		x := &o.votes[k]
		if int(x.voter) != voter {
			continue
		}
		if x.count == v.count {
			// A later record of the same voter: each frame's first vote
			// counts.
			for i := range v.count {
				if voteBits(x.bits, i) == 0 {
					setVoteBits(x.bits, i, v.at(i))
				}
			}
		}
		return
	}
	o.votes = append(o.votes, orphanVote{voter: uint16(voter), count: v.count, bits: bytes.Clone(v.bits)})
}

// countOrphans counts the votes held for block b, which just arrived.
func (c *core) countOrphans(now int64, b *block) {
	o := c.orphans[b.id]
	if o == nil {
		return
	}
	delete(c.orphans, b.id)
	for _, x := range o.votes {
		if x.count != len(b.frames) {
			c.m.votesBadType.Add(1)
			continue
		}
		for i, e := range b.frames {
			typ := voteBits(x.bits, i)
			if e == nil || e.phase != phaseUndecided || (typ != voteCommit && typ != voteCancel) {
				continue
			}
			c.countVote(now, e, int(x.voter), typ)
		}
	}
}

// remember keeps this validator's vote on a frame it forgets, so that if the
// frame comes back (a late re-send, a fetch answer) it gets the same vote
// again: a validator that voted cancel and later commit on one frame could
// let one node count the cancel and another the commit, breaking S1. A
// vote is remembered by block and position, as votes count (see wire.go).
//
// Only votes at positions the namespace has not passed matter: a validator
// commits only on top of its head, and a frame at a passed position can
// never be accepted (another frame holds q commits there), so a different
// vote on it is harmless. The memory therefore drops the oldest votes beyond
// forgotCap only once their position is passed; votes at a current position
// are kept whatever their number (they are bounded by the frames racing for
// the heads of the namespaces).
func (c *core) remember(e *entry) {
	if e.myVote == 0 || e.p.prev < e.ns.head {
		return // no vote, or a passed position: nothing to protect
	}
	for n := min(len(c.forgotQ), 8); n > 0 && len(c.forgotQ) >= c.forgotCap; n-- { // bounded work per call
		old := c.forgotQ[0]
		c.forgotQ = c.forgotQ[1:]
		v, ok := c.forgot[old.id]
		if !ok || v.gen != old.gen {
			continue // restored or re-forgotten since
		}
		if v.ns.head <= v.prev {
			c.forgotQ = append(c.forgotQ, old) // still current: keep
			continue
		}
		delete(c.forgot, old.id)
	}
	c.forgotGen++
	c.forgot[e.id] = forgotVote{typ: e.myVote, gen: c.forgotGen, ns: e.ns, prev: e.p.prev, seq: e.p.frame.Seq, att: e.att, leaf: e.leaf}
	c.forgotQ = append(c.forgotQ, forgotRef{id: e.id, gen: c.forgotGen})
}

type forgotVote struct {
	typ  byte
	gen  uint64
	ns   *nsState
	prev uint64 // the position of the block voted on
	seq  uint64 // the Seq of the frame voted on
	// With signing keys: the batch attesting a commit vote, and its leaf
	// there (nil: not attested in this process yet).
	att  *attBatch
	leaf uint32
}

type forgotRef struct {
	id  [idLen]byte
	gen uint64
}
