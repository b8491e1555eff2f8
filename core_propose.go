package replication

import (
	"bytes"
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
	c.now = now
	f := &cl.frame
	ns := c.space(now, spaceKey{f.OrgID, f.Namespace})
	if f.Seq != 0 && ns.mine != nil && ns.mine.call == nil && sameFrame(&ns.mine.p.frame, f) {
		c.attachRetry(ns.mine, cl)
		return
	}
	if ns.mine != nil || len(ns.turns) > 0 {
		cl.queued = true
		ns.turns = append(ns.turns, cl)
		if mine := ns.mine; mine != nil && mine.call == nil {
			mine.repairAt, mine.backoff = 0, 0 // someone waits for it again: repair it at once
		}
		return
	}
	c.start(now, ns, cl)
}

// attachRetry handles a Propose of the very frame (with an explicit Seq)
// that this node's undecided frame e in the namespace holds, and that no
// call waits for: a retry after a timeout. The call waits for e, unless
// another Propose of this node returned Accept since e was proposed: e's
// after list does not order it after that one (S5), so the call returns
// Timeout at once.
func (c *core) attachRetry(e *entry, cl *call) {
	if e.returned != c.returned {
		f := &cl.frame
		c.decide(cl, DecisionTimeout, fmt.Errorf("%w: %s/%s seq %d: %w", ErrTimeout, f.OrgID, f.Namespace, f.Seq, errUnordered))
		return
	}
	e.call, cl.e = cl, e
}

// sameFrame reports whether a and b are the same frame, byte for byte.
func sameFrame(a, b *Frame) bool {
	return a.Seq == b.Seq && a.OrgID == b.OrgID && a.Namespace == b.Namespace &&
		a.Op == b.Op && a.Key == b.Key && bytes.Equal(a.Value, b.Value)
}

// start proposes cl's frame on top of the namespace's head, with this
// node's next block (see open). The namespace has no own undecided frame.
func (c *core) start(now int64, ns *nsState, cl *call) {
	f := &cl.frame
	if ns.behind {
		// Its peers no longer hold the frames this node lacks: a frame on
		// top of its head would only be cancelled.
		c.decide(cl, DecisionReject, refused("%w: namespace %s/%s: the frames after seq %d are missing here and peers no longer retain them; "+
			"restore a snapshot and call ResetNamespace", ErrBehind, f.OrgID, f.Namespace, ns.head))
		return
	}
	seq := f.Seq
	if seq == 0 {
		seq = max(ns.maxSeen, ns.head) + 1
		if seq == 0 { // a Seq of MaxUint64 was seen: none is left to assign
			c.decide(cl, DecisionReject, refused("replication: namespace %q/%q has no sequence number left (seq %d was seen)",
				f.OrgID, f.Namespace, uint64(math.MaxUint64)))
			return
		}
	} else if seq <= ns.head {
		c.decide(cl, DecisionReject, refused("replication: slot %s/%s seq %d is taken (latest accepted seq %d)",
			f.OrgID, f.Namespace, seq, ns.head))
		return
	}
	f.Seq = seq
	ns.maxSeen = max(ns.maxSeen, seq)
	c.open(now, ns, cl)
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
	c.persistSeq(durReturned, e.key, e.p.frame.Seq, true)
	deps := e.p.ord.deps
	for i := range deps {
		// Namespaces in the frontier are never evicted: d.ns is current.
		if dep := deps[i].ns; dep != nil && dep.frontierAt != 0 && dep.frontierSeq <= deps[i].seq {
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
