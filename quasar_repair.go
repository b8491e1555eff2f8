package replication

import (
	"time"
)

// This file holds the Quasar driver's repair and anti-entropy: answering
// fetches, re-sending votes and proposals, syncing namespaces, the
// periodic tick, and forgetting frames past the retention window while
// remembering this validator's votes on them. These state methods run with
// QuasarReplicator.mu held.

// serve answers for e: its certificate if accepted, else the proposal and
// this node's vote. At most once per half WitnessAfter per frame.
func (st *state) serve(e *entry) {
	now := mono()
	if e.lastServed != 0 && now-e.lastServed < st.witness/2 {
		return
	}
	e.lastServed = now
	st.r.m.served.Add(1)
	switch e.state {
	case stAccepted:
		st.sendCertificate(e)
	case stUndecided:
		st.sendProposal(&e.p)
		if e.myVote != 0 {
			st.sendVote(e)
		}
	default:
		if e.myVote != 0 {
			st.sendVote(e)
		}
	}
}

func (st *state) resendVote(e *entry) {
	if e.myVote == 0 {
		return
	}
	now := mono()
	if now-e.lastVoted < st.witness/2 {
		return
	}
	e.lastVoted = now
	st.sendVote(e)
}

func (st *state) requestSync(ns *nsState) {
	if st.backlogged() {
		return // the answer would be shed; digests ask again later
	}
	now := mono()
	if ns.lastSync != 0 && now-ns.lastSync < st.witness {
		return
	}
	ns.lastSync = now
	st.r.m.syncRequests.Add(1)
	st.sendSync(recSync, ns.key, ns.head, &st.r.ids[st.r.self])
}

func (st *state) onSync(ref nsRef, who nodeID) {
	if who == st.r.ids[st.r.self] {
		return
	}
	key := spaceKey{ref.org, ref.ns}
	ns := st.spaces[key]
	if ns == nil || ns.head <= ref.seq {
		return
	}
	e := ns.at(ref.seq)
	if e == nil || e.state != stAccepted {
		st.sendSync(recBehind, key, ref.seq, &who)
		return
	}
	for i := 0; e != nil && e.state == stAccepted && i < syncBatch; i++ {
		st.sendCertificate(e)
		e = ns.at(e.p.frame.Seq)
	}
}

func (st *state) onBehind(ref nsRef, who nodeID, sender int) {
	if who != st.r.ids[st.r.self] {
		return
	}
	ns := st.space(spaceKey{ref.org, ref.ns})
	if ns.head != ref.seq || ns.behind {
		return // stale, or already reported
	}
	ns.behind = true
	st.r.m.behind.Add(1)
	peer := "unknown"
	if sender >= 0 {
		peer = st.r.cfg.Validators[sender]
	}
	st.behindEvents = append(st.behindEvents, &BehindError{OrgID: ns.key.org, Namespace: ns.key.ns, From: ref.seq, Peer: peer})
	st.wakeAfterWaiters(ns)
}

// tick runs the periodic work: repair, expiry, retention, anti-entropy.
func (st *state) tick(wall time.Time) {
	now := int64(wall.Sub(clockStart))
	m := &st.r.m
	for e := st.undecided.head; e != nil && e.next <= now; e = st.undecided.head {
		st.undecided.remove(e)
		if e.w == nil && now-e.born > st.retainFor {
			st.forget(e)
			continue
		}
		e.next = now + st.witness
		if e.w == nil && now < e.repairAt {
			st.undecided.pushBack(e) // backing off
			continue
		}
		switch ns := e.ns; {
		case e.w != nil:
			m.resent.Add(1)
			st.sendProposal(&e.p)
		case e.p.prev > ns.head:
			st.requestSync(ns)
		default:
			m.fetches.Add(1)
			st.sendFetch(&e.id)
		}
		if e.myVote != 0 {
			e.lastVoted = now
			st.sendVote(e)
		}
		if e.w == nil {
			// Nobody waits for this frame here: repair it with exponential
			// backoff (up to 32 WitnessAfter), so that many frames left
			// undecided by a partition do not flood the network once it
			// heals. A proposer keeps re-sending every WitnessAfter.
			e.backoff = min(max(2*e.backoff, st.witness), 32*st.witness)
			e.repairAt = now + e.backoff
		}
		st.undecided.pushBack(e)
	}
	for e := st.retained.head; e != nil; e = st.retained.head {
		old := now-e.decidedAt > st.retainFor
		if !old && st.retained.n <= st.r.cfg.RetainFrames {
			break
		}
		if e.state == stAccepted && !e.dispatched && !old {
			break // still waiting to be applied: keep it (and what follows)
		}
		st.retained.remove(e)
		delete(st.entries, e.id)
		st.remember(e)
		if e.ns.chain[e.p.prev] == e {
			delete(e.ns.chain, e.p.prev)
		}
		if e.state == stAccepted && !e.dispatched && !e.linked {
			// (A linked frame waits only for frames its proposer ordered
			// before it: it stays queued, and is applied.)
			m.droppedUnapplied.Add(1)
			st.r.log.Error("forgot an accepted frame that could not be applied (missing predecessors)",
				"org", e.key.org, "ns", e.key.ns, "seq", e.p.frame.Seq)
		}
	}
	for len(st.orphanQ) > 0 {
		id := st.orphanQ[0]
		o := st.orphans[id]
		if o != nil && now-o.born <= st.retainFor {
			break
		}
		st.orphanQ = st.orphanQ[1:]
		if o != nil {
			m.votesDropped.Add(uint64(len(o.votes)))
			delete(st.orphans, id)
		}
	}
	// While backlogged, the frames would be shed: fetch them once there is
	// room.
	for i, fetch := 0, !st.backlogged(); fetch && i < len(st.orphanQ); i++ {
		o := st.orphans[st.orphanQ[i]]
		if o == nil || o.fetched {
			continue
		}
		if now-o.born < st.witness/2 {
			break
		}
		o.fetched = true
		m.fetches.Add(1)
		st.sendFetch(&st.orphanQ[i])
	}
	if st.r.n > 1 && now-st.lastDigest >= int64(st.r.cfg.AntiEntropyInterval) && len(st.spaceList) > 0 {
		st.lastDigest = now
		heads := make([]nsRef, 0, min(digestBatch, len(st.spaceList)))
		for i := 0; i < len(st.spaceList) && len(heads) < digestBatch; i++ {
			st.digestAt = (st.digestAt + 1) % len(st.spaceList)
			ns := st.spaceList[st.digestAt]
			heads = append(heads, nsRef{org: ns.key.org, ns: ns.key.ns, seq: ns.head})
		}
		st.out.begin()
		st.out.buf = appendDigestRecord(st.out.buf, heads)
		st.out.end()
	}
}

// forget drops an undecided frame received from a peer that stayed
// undecided for RetainFor. If this validator committed to it, the position
// stays taken (ns.voted keeps it) so it never commits a second frame there.
func (st *state) forget(e *entry) {
	e.forgotten = true
	e.ep = nil
	st.undefer(e)
	e.ns.close(e)
	delete(st.entries, e.id)
	st.remember(e)
	st.r.m.expired.Add(1)
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
func (st *state) remember(e *entry) {
	if e.myVote == 0 || e.p.prev < e.ns.head {
		return // no vote, or a passed position: nothing to protect
	}
	for n := min(len(st.forgotQ), 8); n > 0 && len(st.forgotQ) >= st.forgotCap; n-- { // bounded work per call
		old := st.forgotQ[0]
		st.forgotQ = st.forgotQ[1:]
		v, ok := st.forgot[old.at]
		if !ok || v.gen != old.gen {
			continue // restored or re-forgotten since
		}
		if v.ns.head <= old.at.prev {
			st.forgotQ = append(st.forgotQ, old) // still current: keep
			continue
		}
		delete(st.forgot, old.at)
	}
	st.forgotGen++
	at := blockAt{e.id, e.p.prev}
	st.forgot[at] = forgotVote{typ: e.myVote, gen: st.forgotGen, ns: e.ns}
	st.forgotQ = append(st.forgotQ, forgotRef{at: at, gen: st.forgotGen})
}

type forgotVote struct {
	typ byte
	gen uint64
	ns  *nsState
}

type forgotRef struct {
	at  blockAt
	gen uint64
}

// blockAt is a block at a chain position: what a vote is cast for.
type blockAt struct {
	id   [idLen]byte
	prev uint64
}
