package replication

import (
	"bytes"
	"context"
	"log/slog"
	"slices"

	"github.com/luxfi/consensus"
)

// This file holds blocks: how this node packs its own frames into blocks,
// takes in the blocks and certificates of its peers, sends its votes one
// record per block, and keeps the engine block of each block.
//
// Making blocks. A Propose call's frame joins core.opening (start); the
// driver seals the open frames into blocks when it is about to send
// (seal): at once when nothing is being sent, or, while a previous message
// is on its way, as soon as it has left, with every frame proposed
// meanwhile. No timer delays an idle proposer. A block takes up to
// maxBlockFrames frames or maxBlockBytes of them, across namespaces (at
// most one frame per namespace: one own frame per namespace is undecided
// at a time), and one after list for all: the proposer's frontier when the
// block is made, which orders every frame of the block after every frame
// of this node whose Propose returned Accept before.
//
// Voting. castVote queues this validator's vote on a frame (queueVote);
// takeReady sends the votes queued by one input as one vote record per
// block and destination (flushVotes). A frame whose position this
// validator has not reached yet gets its vote later, in a record of its
// own for the same block.
//
// Counting. A vote record counts for the frames of a block this node
// holds (block.frames); for a block it does not hold, it waits aside
// (orphan) until the block arrives. The engine is fed one block per block
// (startEngine) and each validator's first commit vote on it; each frame
// is accepted once the engine accepted its home block and q validators
// committed the frame itself (countVote).

// open opens cl's frame on top of the namespace's head, to be proposed
// with the next block. The namespace has no own undecided frame.
func (c *core) open(now int64, ns *nsState, cl *call) {
	e := &entry{key: ns.key, ns: ns, own: true, returned: c.returned}
	e.p.frame = cl.frame
	e.p.prev = ns.head
	e.p.proposer = c.cfg.ids[c.cfg.self]
	e.call, cl.e = cl, e
	ns.mine = e
	c.opening = append(c.opening, e)
	if c.solo {
		c.seal(now) // nothing is sent: nothing to wait for
	}
}

// sealable reports whether own frames wait to be sealed into a block.
func (c *core) sealable() bool { return len(c.opening) > 0 }

// seal makes blocks of the frames opened since the last seal and proposes
// them. The driver calls it before it sends the outbox.
func (c *core) seal(now int64) {
	c.now = now
	for len(c.opening) > 0 {
		es := c.opening
		c.opening = nil
		var all *order // the frontier, for blocks of several frames
		for len(es) > 0 {
			k, size := 0, 0
			for k < len(es) && k < maxBlockFrames && (k == 0 || size+es[k].p.frame.size() <= maxBlockBytes) {
				size += es[k].p.frame.size()
				k++
			}
			o := all
			if k == 1 {
				o = c.frontierOrder(es[0])
			} else if o == nil {
				all = c.frontierOrder(nil)
				o = all
			}
			c.makeBlock(now, es[:k], o)
			es = es[k:]
		}
	}
	c.settleBarriers()
}

// frontierOrder returns the after list of a block made now: the frontier,
// in canonical order. For a block of frame alone (nil: a block of several
// frames), it leaves out alone's namespace when alone extends its chain
// through the frame the frontier names there: every node applies the
// namespace in chain order, so naming it adds nothing.
func (c *core) frontierOrder(alone *entry) *order {
	var o *order
	for _, dep := range c.frontier {
		if alone != nil && dep == alone.ns && dep.frontierSeq <= alone.p.prev {
			continue
		}
		if o == nil {
			o = &order{deps: make([]depRef, 0, len(c.frontier))}
		}
		o.deps = append(o.deps, depRef{dep, dep.frontierSeq})
	}
	if o == nil {
		return c.emptyOrder()
	}
	slices.SortFunc(o.deps, func(a, b depRef) int {
		return compareRefs(a.ns.key.org, a.ns.key.ns, b.ns.key.org, b.ns.key.ns)
	})
	o.after = encodeDeps(o.deps)
	o.afterID = afterIDOf(o.after)
	return o
}

// makeBlock proposes own frames es as one block with after list o.
func (c *core) makeBlock(now int64, es []*entry, o *order) {
	keep := c.keep[:0]
	for _, e := range es {
		e.p.ord = o
		if c.solo {
			// Never sent: only its ID is needed (a durable record
			// encodes the frame from its fields).
			c.soloRaw = appendSlot(c.soloRaw[:0], &e.p.frame, e.p.prev)
			e.id = frameIDOf(c.soloRaw, &o.afterID, &e.p.proposer)
		} else {
			e.p.raw = appendSlot(make([]byte, 0, slotLen(&e.p.frame, e.p.prev)), &e.p.frame, e.p.prev)
			e.id = frameIDOf(e.p.raw, &o.afterID, &e.p.proposer)
		}
		e.returned = c.returned
		if held := c.entries[e.id]; held != nil {
			c.heldAgain(now, e, held)
			continue
		}
		keep = append(keep, e)
	}
	if len(keep) == 0 {
		return
	}
	// A block's slots are in increasing bytewise order (wire.go): it then
	// carries each frame once, which every receiver can check.
	if len(keep) > 1 {
		slices.SortFunc(keep, func(a, b *entry) int { return bytes.Compare(a.p.raw, b.p.raw) })
		keep = slices.CompactFunc(keep, func(a, b *entry) bool {
			if a.id != b.id {
				return false
			}
			c.heldAgain(now, b, a) // the same frame twice (ResetNamespace released a namespace meanwhile)
			return true
		})
	}
	ids := c.idScratch[:0]
	for _, e := range keep {
		ids = append(ids, e.id)
	}
	c.idScratch = ids[:0]
	var b *block
	if c.solo && len(keep) == 1 {
		// A single validator decides its frame here, before this returns
		// (its own vote is a quorum), and never looks at the block again
		// but to close its engine claim: one block serves every frame.
		b = &c.soloBlock
		*b = block{id: ids[0]}
		b.frames = b.alone[:]
	} else {
		b = newBlock(blockIDOf(ids), len(keep))
	}
	copy(b.frames, keep)
	clear(keep)
	c.keep = keep[:0]
	b.live = len(b.frames)
	for i, e := range b.frames {
		e.blk, e.idx = b, i
	}
	if !c.solo {
		c.blocks[b.id] = b
	}
	c.m.blocksProposed.Add(1)
	c.m.framesProposed.Add(uint64(len(b.frames)))
	c.startEngine(b)
	for _, e := range b.frames {
		c.persistFrame(durOwn, e)
		c.add(now, e)
	}
	c.sendBlock(b, -1)
	for _, e := range b.frames {
		c.castVote(now, e)
	}
}

// heldAgain handles own frame e, just identified, when the very same
// proposal (frame, position, after list) was made before and is still
// held: it is the same frame, with the same votes. A Propose waiting for e
// waits for held instead, if held is undecided and nobody waits for it;
// otherwise it is rejected.
func (c *core) heldAgain(now int64, e *entry, held *entry) {
	ns := e.ns
	cl := e.call
	e.call = nil
	if held.phase == phaseUndecided && held.own && held.call == nil {
		if ns.mine == e {
			ns.mine = held
		}
		if cl != nil {
			held.call, cl.e = cl, held
		}
		return
	}
	if cl != nil {
		cl.e = nil
		f := &e.p.frame
		c.decide(cl, DecisionReject, refused("replication: %s/%s seq %d: this very proposal was decided already (%s)",
			f.OrgID, f.Namespace, f.Seq, held.phase))
	}
	if ns.mine == e {
		c.releaseNS(now, ns)
	}
}

// startEngine feeds block b to the consensus engine, for the frames whose
// home block it is, unless it is there already.
func (c *core) startEngine(b *block) {
	if b.ep != nil {
		return
	}
	// A block ID the current engine has seen before (a block that came
	// back) must go to a fresh engine: the engine keeps the votes it
	// recorded for a block and would count them again.
	if c.ep.added >= epochBlocks || c.ep.eng.GetStatus(b.id) != consensus.StatusUnknown {
		if err := c.newEpoch(); err != nil {
			c.logf(slog.LevelError, "starting a new consensus engine failed; keeping the current one", "err", err)
		}
	}
	ep := c.ep
	ep.added++
	// The block carries no payload: the core holds the frames, and the
	// engine keeps every block it is given until the epoch is dropped.
	_ = ep.eng.Add(context.Background(), &consensus.Block{ID: b.id, ParentID: ep.last, Height: uint64(ep.added)})
	ep.last = b.id
	b.ep = ep
	b.engVoted = voterSet{}
}

// recordEngineVote records validator voter's commit on b in the engine,
// once, and reports whether the engine accepted b.
func (c *core) recordEngineVote(b *block, voter int) bool {
	if !b.engVoted.has(voter) {
		b.engVoted.add(voter)
		v := &c.vote
		*v = consensus.Vote{BlockID: b.id, VoteType: consensus.VoteCommit, Voter: consensus.NodeID(c.cfg.ids[voter])}
		if err := b.ep.eng.RecordVote(context.Background(), v); err != nil {
			c.logf(slog.LevelError, "engine refused a vote", "err", err)
			return false
		}
	}
	return b.ep.eng.IsAccepted(b.id)
}

// maxMoreBlocks bounds the blocks besides its home block that a held frame
// is linked into (entry.more): a frame travels in the block it was proposed
// in, and, after a certificate or a restart, in a block of its own; a peer
// that makes up more blocks of frames held here gets no memory for them.
const maxMoreBlocks = 4

// newBlock returns a block of count frames, none held yet.
func newBlock(id [idLen]byte, count int) *block {
	b := &block{id: id}
	if count == 1 {
		b.frames = b.alone[:]
	} else {
		b.frames = make([]*entry, count)
	}
	return b
}

// emptyOrder returns the shared empty after list.
func (c *core) emptyOrder() *order {
	if c.noOrder == nil {
		c.noOrder = &order{afterID: noAfterID}
	}
	return c.noOrder
}

// newOrder returns a held after list: a copy of after (whose ID is
// afterID), resolved to the namespaces this node knows.
func (c *core) newOrder(after refList, afterID [idLen]byte) *order {
	if after.n == 0 {
		return c.emptyOrder()
	}
	o := &order{after: refList{b: bytes.Clone(after.b), n: after.n}, afterID: afterID, unknown: after.n}
	c.resolveDeps(o)
	return o
}

// canTake reports whether this node takes in one more frame of a peer,
// counting the refusals.
func (c *core) canTake() bool {
	if c.undecided.n+c.waiting.n >= maxUndecided || c.heldBytes >= maxHeldBytes {
		c.m.proposalsDropped.Add(1)
		return false
	}
	if c.backlogged() {
		c.m.proposalsShed.Add(1)
		return false
	}
	return true
}

// onBlock handles a received block. rec.id and rec.ids hold its ID and
// its frames' IDs (prepareRecords).
func (c *core) onBlock(now int64, rec *record, from int) {
	br := &rec.blk
	if len(rec.ids) != br.count {
		return // not prepared: cannot happen
	}
	b := c.blocks[rec.id]
	fresh := b == nil
	if fresh {
		b = newBlock(rec.id, br.count)
	}
	var o *order
	added := c.added[:0]
	for i, p := range br.slots() {
		if b.frames[i] != nil {
			continue
		}
		if e := c.entries[rec.ids[i]]; e != nil {
			if len(e.more) >= maxMoreBlocks {
				continue // honest peers send a frame in a block or two: this block names it for nothing
			}
			b.frames[i] = e
			b.live++
			e.more = append(e.more, blockRef{b, i})
			continue
		}
		if !c.canTake() {
			continue
		}
		if o == nil {
			o = c.newOrder(br.after, br.afterID)
		}
		ns := c.space(now, spaceKey{p.frame.OrgID, p.frame.Namespace})
		e := &entry{id: rec.ids[i], key: ns.key, ns: ns, p: *p}
		c.own(&e.p, ns, o)
		ns.maxSeen = max(ns.maxSeen, e.p.frame.Seq)
		e.blk, e.idx = b, i
		b.frames[i] = e
		b.live++
		added = append(added, e)
	}
	if b.live == 0 {
		return // nothing of it taken in
	}
	if fresh {
		c.blocks[b.id] = b
	}
	if len(added) > 0 {
		c.startEngine(b)
		for _, e := range added {
			c.add(now, e)
		}
	}
	clear(added)
	c.added = added[:0]
	c.countOrphans(now, b)
	for _, e := range b.frames {
		if e != nil {
			c.offered(now, e, false, from)
		}
	}
}

// onCertificate handles a received certificate. rec.id holds its frame's
// ID (prepareRecords). With signing keys, it counts only if every part it
// carries checks, for q distinct voters at least.
func (c *core) onCertificate(now int64, rec *record, from int) {
	e := c.entries[rec.id]
	var parts []votePart
	if c.atts != nil {
		if e != nil && e.phase.accepted() {
			return // nothing to count: not worth the signatures
		}
		var ok bool
		if parts, ok = c.checkCertificate(rec); !ok {
			c.m.certificatesBad.Add(1)
			return
		}
	}
	if e == nil {
		if !c.canTake() {
			return
		}
		p := &rec.prop
		ns := c.space(now, spaceKey{p.frame.OrgID, p.frame.Namespace})
		e = &entry{id: rec.id, key: ns.key, ns: ns, p: *p}
		c.own(&e.p, ns, c.newOrder(p.after, rec.blk.afterID))
		ns.maxSeen = max(ns.maxSeen, e.p.frame.Seq)
		c.takeAlone(now, e)
	}
	for _, p := range parts {
		c.addPart(e, p)
	}
	c.applyCertificate(now, e, rec.voters)
	c.offered(now, e, true, from)
}

// checkCertificate checks a certificate's parts: one per voter, each
// checking, for q distinct validators at least.
func (c *core) checkCertificate(rec *record) ([]votePart, bool) {
	n := rec.voters.len()
	if n < c.cfg.q || n > c.cfg.n() || rec.parts.n != n {
		return nil, false
	}
	parts := make([]votePart, 0, n)
	var seen voterSet
	var pr partRec
	for k := range n {
		i, ok := c.cfg.byNodeID[rec.voters.at(k)]
		if !ok || seen.has(i) || !rec.parts.next(&pr) {
			return nil, false
		}
		seen.add(i)
		p, ok := c.checkPart(&rec.id, rec.prop.frame.Seq, rec.prop.prev, i, &pr)
		if !ok {
			c.m.partsBad.Add(1)
			return nil, false
		}
		parts = append(parts, p)
	}
	return parts, true
}

// takeAlone takes in frame e, held without the block it was proposed in
// (a certificate, a restart), as an undecided frame whose home block is
// the block of e alone.
func (c *core) takeAlone(now int64, e *entry) {
	b := c.aloneBlock(e)
	c.startEngine(b)
	c.add(now, e)
	c.countOrphans(now, b)
}

// aloneBlock makes the block of e alone e's home block.
func (c *core) aloneBlock(e *entry) *block {
	b := newBlock(singleBlockID(&e.id), 1)
	b.frames[0], b.live = e, 1
	e.blk, e.idx = b, 0
	if !c.solo {
		c.blocks[b.id] = b
	}
	return b
}

// offered handles a frame that a peer offered in a block or a
// certificate (cert).
func (c *core) offered(now int64, e *entry, cert bool, from int) {
	switch {
	case e.phase == phaseUndecided && e.myVote == 0:
		c.castVote(now, e)
	case e.phase == phaseUndecided:
		c.resendVote(now, e, from)
	case cert:
	case e.phase.accepted():
		c.serve(now, e, from) // someone is still proposing a frame decided here
	default:
		c.resendVote(now, e, from)
	}
}

// release drops e from the blocks that hold it (e is forgotten), and the
// blocks left holding nothing.
func (c *core) release(e *entry) {
	c.unslot(e.blk, e.idx)
	for _, r := range e.more {
		c.unslot(r.b, r.i)
	}
	e.more = nil
}

func (c *core) unslot(b *block, i int) {
	if b == nil || b.frames[i] == nil {
		return
	}
	b.frames[i] = nil
	b.live--
	if b.live == 0 {
		c.unblock(b)
	}
}

// unblock forgets block b.
func (c *core) unblock(b *block) {
	if c.blocks[b.id] == b {
		delete(c.blocks, b.id)
	}
}

// complete reports whether this node holds every frame of b (and can
// therefore send b as it is).
func (b *block) complete() bool { return b.live == len(b.frames) }

// queueVote queues this validator's vote on e, for validator to (-1: every
// validator); flushVotes sends it.
func (c *core) queueVote(e *entry, to int) {
	if e.myVote != 0 && !c.solo {
		c.votesOut = append(c.votesOut, voteOut{e, to})
	}
}

type voteOut struct {
	e  *entry
	to int
}

// flushVotes sends the votes queued since the last call: one record per
// block and destination, naming each frame's home block.
func (c *core) flushVotes() {
	for i := range c.votesOut {
		v := c.votesOut[i]
		if v.e == nil {
			continue
		}
		b, to := v.e.blk, v.to
		bits := c.vbits[:0]
		bits = append(bits, make([]byte, voteBytes(len(b.frames)))...)
		for j := i; j < len(c.votesOut); j++ {
			w := &c.votesOut[j]
			if w.e != nil && w.e.blk == b && w.to == to {
				if voteBits(bits, w.e.idx) == 0 {
					setVoteBits(bits, w.e.idx, w.e.myVote)
				}
				w.e = nil
			}
		}
		c.sendVoteRecord(&b.id, len(b.frames), bits, to)
		c.vbits = bits[:0]
	}
	clear(c.votesOut)
	c.votesOut = c.votesOut[:0]
}

// sendFrameBlock sends, to validator to (-1: every validator), a block
// carrying undecided e and this node's votes on it: e's home block if this
// node holds all of it (at most once per half WitnessAfter to each
// destination), else the block of e alone.
func (c *core) sendFrameBlock(now int64, e *entry, to int) {
	if b := e.blk; b.complete() {
		if b.served != 0 && now-b.served < c.cfg.witness/2 && (b.servedTo < 0 || b.servedTo == to) {
			return // sent there already (serve asks once per frame: the block's frames would repeat it)
		}
		b.served, b.servedTo = now, to
		c.sendBlock(b, to)
		c.sendBlockVotes(b, to)
		return
	}
	c.one[0] = e
	if slot, ok := c.out.begin(to); ok {
		c.out.bufs[slot] = appendBlockRecord(c.out.bufs[slot], c.one[:])
		c.out.end(slot)
	}
	c.one[0] = nil
	if e.myVote != 0 {
		id := singleBlockID(&e.id)
		c.sendVoteRecord(&id, 1, []byte{e.myVote}, to)
	}
}

// sendBlockVotes sends this node's votes on the frames of b.
func (c *core) sendBlockVotes(b *block, to int) {
	bits := c.vbits[:0]
	bits = append(bits, make([]byte, voteBytes(len(b.frames)))...)
	voted := false
	for i, e := range b.frames {
		if e != nil && e.myVote != 0 {
			setVoteBits(bits, i, e.myVote)
			voted = true
		}
	}
	if voted {
		c.sendVoteRecord(&b.id, len(b.frames), bits, to)
	}
	c.vbits = bits[:0]
}

// serveBlock answers a fetch for block b: b itself with this node's votes,
// if this node holds all of it, else what it holds of it, frame by frame.
func (c *core) serveBlock(now int64, b *block, to int) {
	if b.complete() {
		for _, e := range b.frames {
			if e.phase == phaseUndecided {
				c.sendFrameBlock(now, e, to)
				return
			}
		}
	}
	for _, e := range b.frames {
		if e != nil {
			c.serve(now, e, to)
		}
	}
}
