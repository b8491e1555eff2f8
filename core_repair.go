package replication

import (
	"log/slog"
	"strings"
)

// This file holds repair, anti-entropy and retention: how nodes recover
// what the network lost, and how long they keep what they decided.
//
// Repair. Every WitnessAfter, a proposer re-sends each undecided frame of
// its own to the validators it has not heard from (repairUndecided), until
// the frame is decided: also after its Propose gave up, with backoff,
// unless a later Propose waits for it. A validator holding a frame it
// cannot decide asks one peer for it (fetch); votes for a frame it does not
// hold make it ask one of their voters (repairOrphans). The peer asked
// answers the node that asked, and only it: with a certificate if the frame
// was accepted, else with the proposal and its vote (serve). So one request
// costs one answer, however many validators hold the frame.
//
// Anti-entropy. Every AntiEntropyInterval a node advertises the heads of
// its namespaces (a digest, a batch at a time). A node that is behind asks
// the advertiser for the frames after its head (sync) and gets their
// certificates in chain order, or a behind notice when the advertiser no
// longer retains them: the node then cannot catch up by replication (see
// OnBehind). A digest naming a namespace this node does not know makes it
// ask too (a probe), without making any state for the namespace until
// frames arrive.
//
// Retention. Decided frames are retained, to serve repair and syncs, until
// more than RetainFrames newer ones were retained or RetainFor passed
// (expireRetained). Undecided frames of peers are forgotten after
// RetainFor; this node's votes on forgotten frames are remembered
// (remember). Namespaces with nothing in them are dropped (evictEmpty).

// serve answers for e to validator to (-1: every validator): its
// certificate if accepted, else a block carrying it and this node's vote
// (sendFrameBlock), or this node's vote alone if it was rejected. At most
// once per half WitnessAfter per frame.
func (c *core) serve(now int64, e *entry, to int) {
	if e.served != 0 && now-e.served < c.cfg.witness/2 {
		return
	}
	e.served = now
	c.m.served.Add(1)
	switch {
	case e.phase.accepted():
		c.sendCertificate(now, e, to)
	case e.phase == phaseUndecided:
		c.sendFrameBlock(now, e, to)
	default:
		c.queueVote(e, to)
	}
}

// resendVote re-sends this node's vote on e to validator to (-1: every
// validator), at most once per half WitnessAfter.
func (c *core) resendVote(now int64, e *entry, to int) {
	if e.myVote == 0 || now-e.voted < c.cfg.witness/2 {
		return
	}
	e.voted = now
	c.queueVote(e, to)
}

// requestSync asks a peer for the accepted frames of ns after this node's
// head, at most once per WitnessAfter. hint is a validator likely to hold
// them (the proposer of a frame beyond the head, the sender of a digest),
// or -1.
func (c *core) requestSync(now int64, ns *nsState, hint int) {
	if c.solo || c.backlogged() {
		return // alone, or the answer would be shed: digests ask again later
	}
	if ns.syncRounds > 0 && now-ns.lastSync < c.cfg.witness {
		return
	}
	ns.lastSync = now
	to := c.pickPeer(hint, ns.syncRounds)
	ns.syncRounds++
	c.m.syncRequests.Add(1)
	c.sendSync(recSync, ns.key, ns.head, c.cfg.self, to, to)
}

// requester returns the validator index of a request's requester, if it
// is a validator other than this node and this node is the one asked.
func (c *core) requester(who, to nodeID) (int, bool) {
	if to != c.cfg.ids[c.cfg.self] {
		return 0, false // another validator was asked
	}
	i, ok := c.cfg.byNodeID[who]
	return i, ok && i != c.cfg.self
}

func (c *core) onFetch(now int64, rec *record, from int) {
	req, ok := c.requester(rec.who, rec.to)
	if !ok {
		return
	}
	if e := c.entries[rec.block]; e != nil {
		c.serve(now, e, req)
	} else if b := c.blocks[rec.block]; b != nil {
		c.serveBlock(now, b, req)
	}
}

func (c *core) onSync(now int64, rec *record, from int) {
	req, ok := c.requester(rec.who, rec.to)
	if !ok {
		return
	}
	key := spaceKey{rec.ref.org, rec.ref.ns}
	ns := c.spaces[key]
	if ns == nil || ns.head <= rec.ref.seq {
		return
	}
	e := ns.at(rec.ref.seq)
	if e == nil || !e.phase.accepted() {
		if c.cfg.archive && c.atts == nil {
			// Not retained in memory: the archive may hold it. (It keeps
			// frames, not their signed votes: with signing keys, a
			// certificate from it would count nowhere.)
			if len(c.rd.reads) < maxDiskReads {
				c.rd.reads = append(c.rd.reads, diskRead{key: ns.key, from: rec.ref.seq, to: req})
			}
			return
		}
		c.sendSync(recBehind, key, rec.ref.seq, req, c.cfg.self, req)
		return
	}
	for i := 0; e != nil && e.phase.accepted() && i < syncBatch; i++ {
		c.sendCertificate(now, e, req)
		e = ns.at(e.p.frame.Seq)
	}
}

func (c *core) onDigest(now int64, digest refList, from int) {
	for h := range digest.all() {
		key := spaceKey{h.org, h.ns}
		if ns := c.spaces[key]; ns != nil {
			if h.seq > ns.head {
				c.requestSync(now, ns, from)
			}
			continue
		}
		if h.seq > 0 {
			c.probe(now, key, from)
		}
	}
}

// probeState is a namespace a digest named that this node does not know:
// when it last asked about it, and how many times (which picks whom).
type probeState struct {
	last   int64
	rounds uint32
}

// probe asks hint (or, every other round, another peer in turn) for the
// frames of a namespace this node does not know, at most once per
// WitnessAfter, without making state for it: the frames that come back
// make it. At most maxProbes namespaces are remembered as asked for, the
// oldest forgotten first. key may alias a message: a new probe keeps a
// copy, and an existing one is updated in place (a map assignment would
// store the aliasing key).
func (c *core) probe(now int64, key spaceKey, hint int) {
	if c.solo || c.backlogged() {
		return
	}
	p := c.probes[key]
	if p != nil && now-p.last < c.cfg.witness {
		return
	}
	if p == nil {
		for len(c.probes) >= maxProbes && c.probeAt < len(c.probeQ) {
			delete(c.probes, c.probeQ[c.probeAt]) // a no-op if known since
			c.probeAt++
		}
		if c.probeAt > maxProbes { // compact the queue
			c.probeQ = append(c.probeQ[:0], c.probeQ[c.probeAt:]...)
			c.probeAt = 0
		}
		key = spaceKey{strings.Clone(key.org), strings.Clone(key.ns)}
		c.probeQ = append(c.probeQ, key)
		p = &probeState{}
		c.probes[key] = p
	}
	p.last = now
	to := c.pickPeer(hint, p.rounds)
	p.rounds++
	c.m.syncRequests.Add(1)
	c.sendSync(recSync, key, 0, c.cfg.self, to, to)
}

func (c *core) onBehind(now int64, ref nsRef, who nodeID, from int) {
	if who != c.cfg.ids[c.cfg.self] {
		return
	}
	key := spaceKey{ref.org, ref.ns}
	ns := c.spaces[key]
	if ns == nil {
		if _, asked := c.probes[key]; !asked {
			return
		}
		ns = c.space(now, key)
	}
	if ns.head != ref.seq || ns.behind {
		return // stale, or already reported
	}
	ns.behind = true
	c.m.behind.Add(1)
	c.behindQ = append(c.behindQ, &BehindError{OrgID: ns.key.org, Namespace: ns.key.ns, From: ref.seq, Peer: c.peerName(from)})
	c.wakeAfterWaiters(now, ns)
}

// repairUndecided repairs the undecided frames whose time came.
func (c *core) repairUndecided(now int64) {
	w := c.cfg.witness
	for e := c.undecided.head; e != nil && e.next <= now; e = c.undecided.head {
		ns := e.ns
		waited := e.call != nil || (ns.mine == e && len(ns.turns) > 0)
		if !waited && ns.mine != e && now-e.born > c.cfg.retainFor {
			c.forget(e)
			continue
		}
		e.next = now + w
		if !waited && now < e.repairAt {
			c.relist(e, &c.undecided) // backing off
			continue
		}
		switch {
		case ns.mine == e:
			c.m.resent.Add(1)
			c.sendFrameBlock(now, e, -1)
		case e.p.prev > ns.head:
			c.requestSync(now, ns, e.origin)
		default:
			c.m.fetches.Add(1)
			c.sendFetch(&e.id, c.pickPeer(e.origin, e.repairs))
			e.repairs++
		}
		if e.myVote != 0 {
			e.voted = now
			c.queueVote(e, -1)
		}
		if !waited {
			// Nobody waits for this frame here: repair it with exponential
			// backoff (up to 32 WitnessAfter), so that many frames left
			// undecided by a partition do not flood the network once it
			// heals.
			e.backoff = min(max(2*e.backoff, w), 32*w)
			e.repairAt = now + e.backoff
		}
		c.relist(e, &c.undecided)
	}
}

// expireWaiting drops accepted frames that could not be queued for apply
// within RetainFor because frames before them in their chain never came.
// Frames the head passed meanwhile (a snapshot covered them) and frames
// waiting for their after list stay; only the former leave the list.
func (c *core) expireWaiting(now int64) {
	for e := c.waiting.head; e != nil && now-e.doneAt > c.cfg.retainFor; e = c.waiting.head {
		switch {
		case e.phase == phaseLinked || e.p.prev < e.ns.head:
			c.done(now, e) // linked: queued once its after list is; else passed
		default:
			c.relist(e, nil)
			c.drop(e)
			c.m.droppedUnapplied.Add(1)
			c.logf(slog.LevelError, "forgot an accepted frame that could not be applied (missing predecessors)",
				"org", e.key.org, "ns", e.key.ns, "seq", e.p.frame.Seq)
		}
	}
}

// expireRetained forgets the decided frames past the retention window:
// beyond RetainFrames, or older than RetainFor.
func (c *core) expireRetained(now int64) {
	for e := c.retained.head; e != nil; e = c.retained.head {
		if now-e.doneAt <= c.cfg.retainFor && c.retained.n <= c.cfg.retainFrames {
			return
		}
		c.relist(e, nil)
		c.drop(e)
	}
}

// drop forgets decided frame e (a frame still queued for apply stays in
// the queue).
func (c *core) drop(e *entry) {
	delete(c.entries, e.id)
	c.release(e)
	c.remember(e)
	if e.ns.chain.get(e.p.prev) == e {
		e.ns.chain.del(e.p.prev)
	}
}

// forget drops an undecided frame that stayed undecided for RetainFor. If
// this validator committed to it, the position stays taken (ns.voted keeps
// it) so it never commits a second frame there.
func (c *core) forget(e *entry) {
	e.phase = phaseForgotten
	c.closeEngine(e)
	c.undefer(e)
	e.ns.close(e)
	c.relist(e, nil)
	delete(c.entries, e.id)
	c.release(e)
	c.remember(e)
	c.m.expired.Add(1)
}

// repairOrphans drops votes for unknown blocks held longer than RetainFor
// and asks one voter of each of the others for its block, with backoff.
func (c *core) repairOrphans(now int64) {
	for len(c.orphanQ) > 0 {
		id := c.orphanQ[0]
		o := c.orphans[id]
		if o != nil && now-o.born <= c.cfg.retainFor {
			break
		}
		c.orphanQ = c.orphanQ[1:]
		if o != nil {
			c.m.votesDropped.Add(uint64(len(o.votes)))
			delete(c.orphans, id)
		}
	}
	if c.backlogged() {
		return // the frames would be shed: fetch them once there is room
	}
	for i := range c.orphanQ {
		o := c.orphans[c.orphanQ[i]]
		if o == nil || len(o.votes) == 0 || now < o.nextFetch {
			continue
		}
		voter := int(o.votes[int(o.fetches)%len(o.votes)].voter)
		o.nextFetch = now + c.cfg.witness<<min(o.fetches, 5)
		o.fetches++
		c.m.fetches.Add(1)
		c.sendFetch(&c.orphanQ[i], voter)
	}
}

// sendDigest advertises the heads of a batch of namespaces, every
// AntiEntropyInterval.
func (c *core) sendDigest(now int64) {
	if c.solo || len(c.spaceList) == 0 || now-c.lastDigest < c.cfg.antiEntropy {
		return
	}
	c.lastDigest = now
	heads := make([]nsRef, 0, min(digestBatch, len(c.spaceList)))
	for i := 0; i < len(c.spaceList) && len(heads) < digestBatch; i++ {
		c.digestAt = (c.digestAt + 1) % len(c.spaceList)
		ns := c.spaceList[c.digestAt]
		heads = append(heads, nsRef{org: ns.key.org, ns: ns.key.ns, seq: ns.head})
	}
	c.sendDigestRecord(heads)
}

// evictBatch bounds the namespaces evictEmpty looks at per tick.
const evictBatch = 64

// evictEmpty drops namespaces that hold nothing (nsState.empty) and were
// made more than a WitnessAfter ago: those that references in after lists
// or a behind notice of nothing made. It looks at a batch of the
// namespaces without a head per tick; a namespace that got a Seq never
// becomes empty again and leaves the list.
func (c *core) evictEmpty(now int64) {
	for k := 0; k < evictBatch && len(c.newSpaces) > 0; k++ {
		ns := c.newSpaces[0]
		if now-ns.created <= c.cfg.witness {
			return // the rest is younger still, or was looked at already
		}
		c.newSpaces[0] = nil
		c.newSpaces = c.newSpaces[1:]
		asking := ns.syncRounds > 0 && now-ns.lastSync <= c.cfg.witness
		switch {
		case ns.maxSeen > 0 || ns.head > 0 || ns.evicted:
			// It holds a Seq for good: never empty again.
		case ns.empty() && !asking:
			delete(c.spaces, ns.key)
			ns.evicted = true
		default:
			c.newSpaces = append(c.newSpaces, ns) // look again later
		}
	}
}
