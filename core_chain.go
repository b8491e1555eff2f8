package replication

import (
	"fmt"
	"slices"
)

// This file holds the chain of each namespace and the apply queue.
//
// Accepted frames of a namespace are linked into its chain in order: a
// frame is linked when the frame it extends (its prev) is this node's head,
// and then becomes the head (S3: a frame is applied only at its chain
// position, which is passed once). A linked frame waits for the frames its
// proposer ordered before it (its after list, S5) to be queued, then goes
// to the apply queue. The driver pops the queue in order and runs the
// handlers (popApply, applied). ResetNamespace moves a namespace to a
// snapshot's Seq: queued frames the snapshot covers are skipped, and if
// replication had passed it, the frames after it are applied again.

// applyBehind is a behind notice waiting in the apply queue (see popApply).
type applyBehind = error

// link appends accepted frames to the namespace chain, starting with e.
func (c *core) link(now int64, ns *nsState, e *entry) {
	for e != nil {
		e.phase = phaseLinked
		c.rejectCompetitors(now, ns, e)
		ns.head = e.p.frame.Seq
		ns.maxSeen = max(ns.maxSeen, ns.head)
		ns.voted = nil
		ns.behind = false
		c.list(ns)
		c.enqueueApply(now, ns, e)
		c.reevaluate(now, ns)
		nx := ns.at(ns.head)
		if nx == nil || nx.phase != phaseAccepted {
			return
		}
		e = nx
	}
}

// list puts ns in core.spaceList (it has a head to advertise).
func (c *core) list(ns *nsState) {
	if !ns.listed {
		ns.listed = true
		c.spaceList = append(c.spaceList, ns)
	}
}

// rejectCompetitors rejects the undecided frames that compete with the
// accepted frame e for its position. They can never be accepted: q
// validators committed e there, each commits one frame per position, so
// at most n-q < q commits remain for any other. Rejecting now tells their
// proposer at once instead of leaving it to time out when the votes that
// would cancel them cannot arrive (a validator down).
func (c *core) rejectCompetitors(now int64, ns *nsState, e *entry) {
	for i := 0; i < len(ns.open); {
		x := ns.open[i]
		if x.p.prev != e.p.prev || x.id == e.id || x.phase != phaseUndecided {
			i++
			continue
		}
		c.m.superseded.Add(1)
		// rejectErr removes x from ns.open (swapping the last one in at i).
		c.rejectErr(now, x, fmt.Errorf("%w: %s/%s seq %d: another frame (seq %d) was accepted on top of seq %d",
			ErrRejected, x.key.org, x.key.ns, x.p.frame.Seq, e.p.frame.Seq, e.p.prev))
	}
}

// undefer takes e (decided or forgotten) out of its namespace's deferred
// list: it is skipped there at once, and the list is compacted once most
// of it is such dead entries, so a namespace that stays behind does not
// accumulate them.
func (c *core) undefer(e *entry) {
	if !e.deferred {
		return
	}
	e.deferred = false
	ns := e.ns
	ns.deferredDead++
	if 2*ns.deferredDead > len(ns.deferred) {
		live := ns.deferred[:0]
		for _, d := range ns.deferred {
			if d.deferred {
				live = append(live, d)
			}
		}
		clear(ns.deferred[len(live):])
		ns.deferred, ns.deferredDead = live, 0
	}
}

// reevaluate votes on deferred proposals whose position was reached.
func (c *core) reevaluate(now int64, ns *nsState) {
	if len(ns.deferred) == 0 {
		return
	}
	list := ns.deferred
	ns.deferred, ns.deferredDead = nil, 0
	for _, d := range list {
		if !d.deferred {
			continue
		}
		d.deferred = false
		c.castVote(now, d)
	}
}

func (c *core) enqueueApply(now int64, ns *nsState, e *entry) {
	if len(ns.pending) == 0 && c.afterOK(e) {
		c.dispatch(now, ns, e)
		return
	}
	ns.pending = append(ns.pending, e)
	c.nPending++
	if len(ns.pending) == 1 {
		c.waitAfter(now, ns, e)
	}
}

// afterOK reports whether every frame that e's proposer ordered before it
// was queued for apply here (or its namespace is known to be lost).
func (c *core) afterOK(e *entry) bool {
	o := e.p.ord
	if o.unknown > 0 && !c.resolveDeps(o) {
		return false // a namespace this node does not know: nothing queued there
	}
	for i := range o.deps {
		if !c.depOK(&o.deps[i]) {
			return false
		}
	}
	return true
}

// resolveDeps resolves an after list (o.after) to the namespaces this node
// knows (o.deps), unless it is resolved already, and reports whether every
// namespace it names is known. Only a list naming a namespace this node
// did not know when it took the list in has one to resolve.
func (c *core) resolveDeps(o *order) bool {
	if o.unknown == 0 {
		return true
	}
	deps := o.deps[:0]
	unknown := 0
	for a := range o.after.all() {
		if ns := c.spaces[spaceKey{a.org, a.ns}]; ns != nil {
			deps = append(deps, depRef{ns, a.seq})
		} else if a.seq > 0 {
			unknown++
		}
	}
	o.deps, o.unknown = deps, unknown
	return unknown == 0
}

// depOK reports whether the frame a names was queued for apply here (or
// its namespace is known to be lost).
func (c *core) depOK(a *depRef) bool {
	dep := c.live(a)
	return dep != nil && (dep.dispatched >= a.seq || dep.behind)
}

// waitAfter registers ns, whose pending head e waits for its after list,
// with the first namespace e still waits for, and asks for that
// namespace's frames if this node lacks them.
func (c *core) waitAfter(now int64, ns *nsState, e *entry) {
	o := e.p.ord
	if !c.resolveDeps(o) {
		for a := range o.after.all() {
			if c.spaces[spaceKey{a.org, a.ns}] == nil && a.seq > 0 {
				dep := c.space(now, spaceKey{a.org, a.ns}) // known from now on
				dep.afterWaiters = append(dep.afterWaiters, ns)
				c.requestSync(now, dep, e.origin)
				return
			}
		}
	}
	for i := range o.deps {
		a := &o.deps[i]
		if !c.depOK(a) {
			dep := c.live(a)
			if dep == nil {
				dep = c.space(now, a.ns.key) // evicted meanwhile: known from now on
				a.ns = dep
			}
			dep.afterWaiters = append(dep.afterWaiters, ns)
			if dep.head < a.seq {
				c.requestSync(now, dep, e.origin)
			}
			return
		}
	}
}

// dispatch queues linked e for apply.
func (c *core) dispatch(now int64, ns *nsState, e *entry) {
	e.phase = phaseQueued
	c.applyQ = append(c.applyQ, e)
	c.charge(e)
	c.done(now, e)
	if cl := e.call; cl != nil && !cl.reentrant {
		c.rd.wake = append(c.rd.wake, cl) // its proposer may apply it (and what is queued before it)
	} else {
		c.rd.kick = true
	}
	ns.dispatched = max(ns.dispatched, e.p.frame.Seq)
	c.wakeAfterWaiters(now, ns)
}

func (c *core) wakeAfterWaiters(now int64, ns *nsState) {
	if len(ns.afterWaiters) == 0 {
		return
	}
	ws := ns.afterWaiters
	ns.afterWaiters = nil
	for _, w := range ws {
		c.drainPending(now, w)
	}
}

func (c *core) drainPending(now int64, ns *nsState) {
	for len(ns.pending) > 0 {
		e := ns.pending[0]
		if !c.afterOK(e) {
			c.waitAfter(now, ns, e)
			return
		}
		ns.pending[0] = nil
		ns.pending = ns.pending[1:]
		c.nPending--
		c.dispatch(now, ns, e)
	}
	ns.pending = nil
}

// popApply returns what the driver must do next, in order: a behind
// notice for OnBehind (behind != nil), or a frame whose handlers must run
// (e != nil; report it with applied), or nothing. Frames a ResetNamespace
// covered are passed over here: they count as applied.
func (c *core) popApply() (e *entry, behind applyBehind) {
	if len(c.behindQ) > 0 {
		behind = c.behindQ[0]
		c.behindQ[0] = nil
		c.behindQ = c.behindQ[1:]
		return nil, behind
	}
	for c.applyHead < len(c.applyQ) {
		e = c.applyQ[c.applyHead]
		c.applyQ[c.applyHead] = nil
		c.applyHead++
		if e.charged {
			c.applyLen -= e.size
			e.charged = false
		}
		if c.applyHead == len(c.applyQ) {
			c.applyQ, c.applyHead = c.applyQ[:0], 0
		}
		if !e.skip {
			return e, nil
		}
		c.m.skipped.Add(1) // covered by a restored snapshot
		c.finishApply(e, nil)
	}
	c.settleBarriers()
	return nil, nil
}

// applied records that the handlers ran for e, a frame popApply returned;
// err is the first handler error.
func (c *core) applied(e *entry, err error) {
	c.m.applied.Add(1)
	c.finishApply(e, err)
	c.settleBarriers()
}

func (c *core) finishApply(e *entry, err error) {
	e.phase = phaseApplied
	e.ns.applied = max(e.ns.applied, e.p.frame.Seq)
	c.persistSeq(durApplied, e.key, e.p.frame.Seq, false)
	if cl := e.call; cl != nil {
		c.decide(cl, DecisionAccept, err)
	}
}

// pendingApply is the number of accepted frames this node has not applied
// yet (queued, or linked and waiting for their after list).
func (c *core) pendingApply() int { return len(c.applyQ) - c.applyHead + c.nPending }

// applyBusy reports whether popApply has something to return.
func (c *core) applyBusy() bool { return len(c.behindQ) > 0 || c.applyHead < len(c.applyQ) }

// charge counts queued frame e in the apply backlog (see backlogged),
// unless a Propose call of this node waits for it.
func (c *core) charge(e *entry) {
	if e.call != nil || e.charged {
		return
	}
	e.charged = true
	c.applyLen += e.size
}

// backlogged reports whether this node sheds proposals of frames it does
// not hold (and asks for none): from the moment the frames queued for its
// handlers reach MaxApplyBacklog bytes until they fall to half of it. What
// counts:
//   - only queued frames, not those waiting for frames their proposer
//     ordered before them (ns.pending): those may wait for frames still to
//     be received, which shedding would then keep out for good;
//   - not the frames a Propose call of this node waits for (charge): local
//     writers are held back by their own calls, and could otherwise keep
//     the backlog at the bound by themselves and shut out every frame of
//     the others. A frame whose Propose gave up (timeout, ctx) counts from
//     then on (abandon).
func (c *core) backlogged() bool {
	limit := c.cfg.maxBacklog
	switch {
	case limit <= 0:
		return false
	case c.applyLen >= limit:
		c.shedding = true
	case c.applyLen <= limit/2:
		c.shedding = false
	}
	return c.shedding
}

// reset handles ResetNamespace: the application restored the namespace
// from a snapshot taken at Seq seq.
func (c *core) reset(now int64, key spaceKey, seq uint64) {
	c.now = now
	defer c.settleBarriers()
	ns := c.space(now, key)
	c.persistSeq(durReset, key, seq, true)
	// Frames already queued for apply that the snapshot contains must not
	// be applied on top of it.
	for _, e := range c.applyQ[c.applyHead:] {
		if e.ns == ns && e.p.frame.Seq <= seq {
			e.skip = true
		}
	}
	// So must the linked frames still waiting for their turn.
	kept := ns.pending[:0]
	for _, e := range ns.pending {
		if e.p.frame.Seq > seq {
			kept = append(kept, e)
		} else {
			c.nPending--
			e.skip = true
			c.m.skipped.Add(1)
			c.finishApply(e, nil)
			c.done(now, e)
		}
	}
	clear(ns.pending[len(kept):])
	ns.pending = kept
	// Whatever the snapshot covers counts as applied, also for the frames
	// that wait for it (their proposer ordered them after it).
	ns.dispatched = max(ns.dispatched, seq)
	ns.applied = max(ns.applied, seq)
	ns.behind = false
	if seq < ns.head {
		c.replay(ns, seq)
	} else {
		if seq > ns.head {
			ns.voted = nil // a new position; at the same head the vote stands (S4)
		}
		ns.head = seq
		ns.maxSeen = max(ns.maxSeen, seq)
		if seq > 0 {
			c.list(ns)
		}
		if e := ns.at(seq); e != nil && e.phase == phaseAccepted {
			c.link(now, ns, e)
		}
		c.reevaluate(now, ns)
	}
	if mine := ns.mine; mine != nil && mine.p.prev < ns.head {
		// This node's frame was proposed at a position the snapshot
		// passed: the next one must not wait for it.
		c.releaseNS(now, ns)
	}
	c.drainPending(now, ns)
	c.wakeAfterWaiters(now, ns)
}

// replay handles a ResetNamespace to a snapshot older than this node's head
// (replication moved on while the application fetched it): the frames
// after seq that were applied here are applied again, in chain order, ahead
// of anything queued, so the application's state catches up with the head.
// If some of them are no longer retained, the namespace is reported behind
// again (the application needs a newer snapshot).
func (c *core) replay(ns *nsState, seq uint64) {
	var again []*entry
	last := seq
	for e := ns.at(seq); e != nil && e.phase == phaseApplied; e = ns.at(last) {
		again = append(again, e)
		last = e.p.frame.Seq
	}
	if last < ns.applied {
		c.m.behind.Add(1)
		c.behindQ = append(c.behindQ, &BehindError{
			OrgID: ns.key.org, Namespace: ns.key.ns, From: seq, Peer: c.cfg.names[c.cfg.self],
		})
	}
	if len(again) == 0 {
		return
	}
	for _, e := range again {
		e.phase, e.skip = phaseQueued, false
		c.charge(e)
	}
	c.m.replayed.Add(uint64(len(again)))
	c.applyQ = slices.Concat(again, c.applyQ[c.applyHead:])
	c.applyHead = 0
	c.rd.kick = true
}
