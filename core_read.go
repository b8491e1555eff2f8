package replication

import "slices"

// This file holds the read barrier (QuasarReplicator.Barrier): how a node
// makes sure it has applied every frame of a namespace that was accepted
// anywhere before the barrier began, so that a read of its local state
// afterwards is linearizable.
//
// The node asks every validator (a read record) for its head of the
// namespace and, if it voted commit for a frame on top of that head, for
// that frame; its own answer counts too. Once q validators answered, it
// waits until it has applied the namespace up to the highest head
// reported, and until each frame reported as voted for is decided here
// (and applied, if accepted), fetching those it does not hold from the
// validator that reported them.
//
// Why that suffices: a frame x whose Propose returned Accept before the
// barrier began holds commits from q validators. Any q validators that
// answer the barrier share one of them, v, with those (2q > n). v answered
// after the barrier began, so after it committed x at x's position: its
// head is at x's Seq or beyond (it linked x, the only frame accepted
// there), or its head is x's position and its vote there is x. Either way
// the barrier waits for x.

// barrier is a Barrier call the core tracks. The driver makes it and keeps
// wake; the core sets done and reports it in ready.barriers.
type barrier struct {
	key   spaceKey
	nonce uint64

	acks    voterSet
	nAcks   int
	head    uint64       // the highest head reported
	pending []pendingRef // frames reported as voted for on top of a head
	armed   bool         // q validators answered
	next    int64        // when the request, or the fetches, go out again
	rounds  uint32
	done    bool

	wake chan struct{} // the driver's (the core never touches it)
}

// pendingRef is a frame a validator reported it voted commit for.
type pendingRef struct {
	votedRef
	from int // the validator that reported it
}

// barrier starts a Barrier of this node on namespace b.key. Its outcome
// comes in ready.barriers, possibly at once (a single validator).
func (c *core) barrier(now int64, b *barrier) {
	c.now = now
	c.nonce++
	b.nonce = c.nonce
	c.barriers = append(c.barriers, b)
	ns := c.spaces[b.key]
	c.ack(now, b, c.cfg.self, c.headOf(ns), c.votedOf(ns))
	if !b.done {
		c.sendRead(now, b)
	}
}

// headOf is ns's head (0 for a namespace this node does not know).
func (c *core) headOf(ns *nsState) uint64 {
	if ns == nil {
		return 0
	}
	return ns.head
}

// votedOf names the frame this validator committed on top of ns's head.
func (c *core) votedOf(ns *nsState) votedRef {
	if ns == nil || ns.voted == nil || ns.voted.p.prev != ns.head {
		return votedRef{}
	}
	e := ns.voted
	return votedRef{ok: true, id: e.id, seq: e.p.frame.Seq, prev: e.p.prev}
}

// sendRead asks every validator for its answer to b, and again every
// WitnessAfter until q answered.
func (c *core) sendRead(now int64, b *barrier) {
	b.next = now + c.cfg.witness
	if slot, ok := c.out.begin(-1); ok {
		c.out.bufs[slot] = appendReadRecord(c.out.bufs[slot], b.key.org, b.key.ns, b.nonce, &c.cfg.ids[c.cfg.self])
		c.out.end(slot)
	}
}

// onRead answers a read record: this validator's head of the namespace and
// its vote on top of it, to the requester.
func (c *core) onRead(rec *record, from int) {
	req, ok := c.cfg.byNodeID[rec.who]
	if !ok || req == c.cfg.self || (from >= 0 && from != req) {
		return
	}
	ns := c.spaces[spaceKey{rec.ref.org, rec.ref.ns}]
	if slot, ok := c.out.begin(req); ok {
		c.out.bufs[slot] = appendReadAckRecord(c.out.bufs[slot], rec.ref.org, rec.ref.ns, rec.nonce,
			&rec.who, &c.cfg.ids[c.cfg.self], c.headOf(ns), c.votedOf(ns))
		c.out.end(slot)
	}
}

// onReadAck counts an answer to one of this node's barriers.
func (c *core) onReadAck(now int64, rec *record, from int) {
	replier, ok := c.cfg.byNodeID[rec.to]
	if !ok || rec.who != c.cfg.ids[c.cfg.self] || (from >= 0 && from != replier) {
		return
	}
	for _, b := range c.barriers {
		if b.nonce == rec.nonce && b.key.org == rec.ref.org && b.key.ns == rec.ref.ns {
			c.ack(now, b, replier, rec.head, rec.voted)
			return
		}
	}
}

// ack records validator v's answer to b.
func (c *core) ack(now int64, b *barrier, v int, head uint64, voted votedRef) {
	if b.armed || b.acks.has(v) {
		return
	}
	b.acks.add(v)
	b.nAcks++
	b.head = max(b.head, head)
	if voted.ok {
		b.pending = append(b.pending, pendingRef{voted, v})
	}
	if b.nAcks >= c.cfg.q {
		b.armed = true
		b.next = now // fetch what is missing at once
		c.checkBarrier(now, b)
	}
}

// checkBarriers finishes the armed barriers whose frames were applied.
func (c *core) checkBarriers(now int64) {
	for _, b := range c.barriers {
		if b.armed {
			c.checkBarrier(now, b)
		}
	}
	c.barriers = slices.DeleteFunc(c.barriers, func(b *barrier) bool { return b.done })
}

// checkBarrier finishes armed barrier b if this node applied the
// namespace up to the highest head reported and decided every frame
// reported as voted for; otherwise it asks for what it lacks, at most
// once per WitnessAfter.
func (c *core) checkBarrier(now int64, b *barrier) {
	ns := c.spaces[b.key]
	var applied, head uint64
	if ns != nil {
		applied, head = ns.applied, ns.head
	}
	ask := now >= b.next
	done := applied >= b.head
	if !done && ask && ns != nil && head < b.head {
		c.requestSync(now, ns, -1)
	}
	for _, p := range b.pending {
		if applied >= p.seq {
			continue // the chain passed the frame's Seq: applied if it was accepted
		}
		e := c.entries[p.id]
		if e != nil && e.phase == phaseRejected {
			continue
		}
		done = false
		if e == nil && ask {
			c.m.fetches.Add(1)
			c.sendFetch(&p.id, p.from)
		}
	}
	if ask {
		b.next = now + c.cfg.witness
	}
	if done {
		b.done = true
		c.rd.barriers = append(c.rd.barriers, b)
	}
}

// abandonBarrier drops a barrier whose caller gave up.
func (c *core) abandonBarrier(b *barrier) {
	c.barriers = slices.DeleteFunc(c.barriers, func(x *barrier) bool { return x == b })
}

// repairBarriers re-sends the requests of barriers still missing answers.
func (c *core) repairBarriers(now int64) {
	for _, b := range c.barriers {
		if !b.armed && now >= b.next {
			b.rounds++
			c.sendRead(now, b)
		}
	}
	c.checkBarriers(now)
}
