package replication

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// This file holds how the core starts this node's own proposals and what
// it promises their callers:
//
//   - One own frame per namespace at a time. A Propose into a namespace
//     where this node's previous frame is still undecided waits for that
//     frame to be decided (nsState.mine, nsState.turns), even when the
//     Propose that made it has given up. The next frame then extends the
//     chain through the previous one if it was accepted. A node that is the
//     only writer of a namespace therefore never competes with its own
//     frames: its commit vote for a frame whose Propose timed out never
//     turns into a cancel vote on its next frame (S6), and a timed-out
//     frame, if it is accepted, is applied before the node's next frame
//     there (S5).
//   - Proposer order across namespaces (S5): once a Propose returned
//     Accept, every later proposal of this node names its frame in an
//     after list (core.frontier), and every node applies it first.

// errUnordered: an identical frame is undecided, and a Propose waiting for
// it could not be ordered after this node's proposals that returned since
// it was made (see attach).
var errUnordered = errors.New("an identical frame proposed earlier is still undecided (it may yet be accepted), " +
	"and waiting for it would not order it after this node's proposals that returned since")

// propose handles a Propose call of this node: it proposes cl.frame, or
// queues the call behind this node's undecided frame in its namespace. The
// outcome comes in ready.decided, possibly at once.
func (c *core) propose(now int64, cl *call) {
	f := &cl.frame
	ns := c.space(now, spaceKey{f.OrgID, f.Namespace})
	if f.Seq > ns.head && c.attachRetry(now, ns, cl) {
		return
	}
	if ns.mine != nil || len(ns.turns) > 0 {
		cl.queued = true
		ns.turns = append(ns.turns, cl)
		return
	}
	c.start(now, ns, cl)
}

// attachRetry handles a Propose of a frame (with an explicit Seq above the
// namespace's head) that is identical to one this node holds: a retry
// after a timeout waits for the undecided original. It reports whether it
// decided or attached the call.
func (c *core) attachRetry(now int64, ns *nsState, cl *call) bool {
	if c.solo {
		return false // nothing is held
	}
	id, _ := cl.frame.blockID(nil)
	e := c.entries[id]
	if e == nil {
		return false
	}
	f := &cl.frame
	switch {
	case e.phase != phaseUndecided || e.p.prev != ns.head || e.call != nil:
		c.decide(cl, DecisionReject, fmt.Errorf("%w: an identical frame %s/%s seq %d was already proposed",
			ErrRejected, f.OrgID, f.Namespace, f.Seq))
	case !e.own || e.returned != c.returned:
		// Its after list was made before Propose calls of this node
		// returned Accept (or by another node): waiting for it would not
		// order this call after them (S5).
		c.decide(cl, DecisionTimeout, fmt.Errorf("%w: %s/%s seq %d: %w", ErrTimeout, f.OrgID, f.Namespace, f.Seq, errUnordered))
	default:
		e.call, cl.e = cl, e
	}
	return true
}

// start proposes cl's frame on top of the namespace's head. The namespace
// has no own undecided frame.
func (c *core) start(now int64, ns *nsState, cl *call) {
	f := &cl.frame
	explicit := f.Seq != 0
	seq := f.Seq
	if seq == 0 {
		seq = max(ns.maxSeen, ns.head) + 1
		if seq == 0 { // a Seq of MaxUint64 was seen: none is left to assign
			c.decide(cl, DecisionReject, fmt.Errorf("%w: namespace %q/%q has no sequence number left (seq %d was seen)",
				ErrRejected, f.OrgID, f.Namespace, uint64(math.MaxUint64)))
			return
		}
	} else if seq <= ns.head {
		c.decide(cl, DecisionReject, fmt.Errorf("%w: slot %s/%s seq %d is taken (latest accepted seq %d)",
			ErrRejected, f.OrgID, f.Namespace, seq, ns.head))
		return
	}
	f.Seq = seq
	ns.maxSeen = max(ns.maxSeen, seq)
	// An identical frame held here (a peer's, or an own frame at another
	// position) must not be proposed again under the same block ID. With
	// an assigned Seq there is none: it is above every Seq seen here.
	if explicit && c.attachRetry(now, ns, cl) {
		return
	}
	e := &entry{key: ns.key, ns: ns, own: true, returned: c.returned}
	e.id, _ = f.blockID(nil)
	e.p.frame = *f
	e.p.prev = ns.head
	for _, dep := range c.frontier {
		if dep == ns && dep.frontierSeq <= ns.head {
			// e extends the chain through that frame: every node applies
			// the namespace in chain order, so naming it adds nothing.
			continue
		}
		if e.p.deps == nil {
			e.p.deps = make([]depRef, 0, len(c.frontier))
		}
		e.p.deps = append(e.p.deps, depRef{dep, dep.frontierSeq})
	}
	e.p.proposer = c.cfg.ids[c.cfg.self]
	e.call, cl.e = cl, e
	ns.mine = e
	c.add(now, e)
	c.sendProposal(&e.p, -1)
	c.castVote(now, e)
}

// releaseNS ends the hold of ns.mine on the namespace (it was decided, or
// its position was passed) and starts the calls queued behind it.
func (c *core) releaseNS(now int64, ns *nsState) {
	ns.mine = nil
	for ns.mine == nil && len(ns.turns) > 0 {
		cl := ns.turns[0]
		ns.turns[0] = nil
		ns.turns = ns.turns[1:]
		cl.queued = false
		c.start(now, ns, cl)
	}
	if len(ns.turns) == 0 {
		ns.turns = nil
	}
}

// abandon detaches a call whose Propose gave up (timeout, ctx, close). Its
// frame, if proposed, stays this node's frame in the namespace until it is
// decided: the next call there waits for it.
func (c *core) abandon(cl *call) {
	if cl.decided {
		return
	}
	if cl.queued {
		ns := c.spaces[spaceKey{cl.frame.OrgID, cl.frame.Namespace}]
		if i := slices.Index(ns.turns, cl); i >= 0 {
			ns.turns = slices.Delete(ns.turns, i, i+1)
		}
		cl.queued = false
		return
	}
	if e := cl.e; e != nil && e.call == cl {
		e.call = nil
		if e.phase == phaseQueued {
			c.charge(e) // nobody waits for it any more: it counts
		}
	}
}

// decide sets cl's outcome and reports it in ready.decided.
func (c *core) decide(cl *call, d Decision, err error) {
	cl.decided, cl.decision, cl.err = true, d, err
	if e := cl.e; e != nil && e.call == cl {
		e.call = nil
	}
	c.rd.decided = append(c.rd.decided, cl)
	if d == DecisionAccept {
		c.returnedAccept(cl.e)
	}
}

// returnedAccept records that the Propose of own frame e returns Accept:
// later proposals of this node are applied after e everywhere (S5).
func (c *core) returnedAccept(e *entry) {
	c.returned++
	for i := range e.p.deps {
		if dep := e.p.deps[i].ns; !dep.evicted && dep.frontierAt != 0 && dep.frontierSeq <= e.p.deps[i].seq {
			c.leaveFrontier(dep)
		}
	}
	if ns := e.ns; ns.frontierAt == 0 {
		c.frontier = append(c.frontier, ns)
		ns.frontierAt, ns.frontierSeq = len(c.frontier), e.p.frame.Seq
	} else {
		ns.frontierSeq = max(ns.frontierSeq, e.p.frame.Seq)
	}
}

// leaveFrontier removes ns from core.frontier.
func (c *core) leaveFrontier(ns *nsState) {
	i, last := ns.frontierAt-1, len(c.frontier)-1
	moved := c.frontier[last]
	c.frontier[i], moved.frontierAt = moved, i+1
	c.frontier[last] = nil
	c.frontier = c.frontier[:last]
	ns.frontierAt, ns.frontierSeq = 0, 0
}
