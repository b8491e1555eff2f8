package replication

// This file holds the apply pipeline of the Quasar driver: accepted frames
// wait for the frames their proposer ordered before them (after lists, S5),
// are dispatched to the apply queue in chain order, and are replayed or
// skipped when the application restores a namespace (ResetNamespace).
// These state methods run with QuasarReplicator.mu held.

func (st *state) enqueueApply(ns *nsState, e *entry) {
	if len(ns.pending) == 0 && st.afterOK(e) {
		st.dispatch(ns, e)
		return
	}
	ns.pending = append(ns.pending, e)
	st.nPending++
	if len(ns.pending) == 1 {
		st.waitAfter(ns, e)
	}
}

// afterOK reports whether every frame that e's proposer ordered before it
// was queued for apply here (or its namespace is known to be lost).
func (st *state) afterOK(e *entry) bool {
	for _, a := range e.p.deps {
		if ns := a.ns; ns.dispatched < a.seq && !ns.behind {
			return false
		}
	}
	return true
}

func (st *state) waitAfter(ns *nsState, e *entry) {
	for _, a := range e.p.deps {
		if dep := a.ns; dep.dispatched < a.seq && !dep.behind {
			dep.afterWaiters = append(dep.afterWaiters, ns)
			if dep.head < a.seq {
				st.requestSync(dep)
			}
			return
		}
	}
}

func (st *state) dispatch(ns *nsState, e *entry) {
	e.dispatched = true
	st.applyQ = append(st.applyQ, e)
	e.queued = true
	st.charge(e)
	if w := e.w; w != nil && !w.reentrant && w.wake != nil && !st.applying {
		w.signal() // its proposer applies it (and whatever is queued before it)
	} else {
		st.needKick = true
	}
	ns.dispatched = max(ns.dispatched, e.p.frame.Seq)
	st.wakeAfterWaiters(ns)
}

func (st *state) wakeAfterWaiters(ns *nsState) {
	if len(ns.afterWaiters) == 0 {
		return
	}
	ws := ns.afterWaiters
	ns.afterWaiters = nil
	for _, w := range ws {
		st.drainPending(w)
	}
}

func (st *state) drainPending(ns *nsState) {
	for len(ns.pending) > 0 {
		e := ns.pending[0]
		if !st.afterOK(e) {
			st.waitAfter(ns, e)
			return
		}
		ns.pending[0] = nil
		ns.pending = ns.pending[1:]
		st.nPending--
		st.dispatch(ns, e)
	}
}

func (st *state) popApply() *entry {
	if st.applyHead >= len(st.applyQ) {
		return nil
	}
	e := st.applyQ[st.applyHead]
	st.applyQ[st.applyHead] = nil
	st.applyHead++
	e.queued = false
	if e.charged {
		st.applyLen -= e.size
		e.charged = false
	}
	if st.applyHead == len(st.applyQ) {
		st.applyQ, st.applyHead = st.applyQ[:0], 0
	}
	return e
}

func (st *state) pendingApply() int { return len(st.applyQ) - st.applyHead + st.nPending }

// charge counts queued frame e in the apply backlog (see backlogged),
// unless a Propose call of this node waits for it.
func (st *state) charge(e *entry) {
	if e.w != nil || e.charged {
		return
	}
	e.charged = true
	st.applyLen += e.size
}

// backlogged reports whether this node sheds proposals of frames it does
// not hold (and asks for none): from the moment the frames queued for its
// handlers reach MaxApplyBacklog bytes until they fall to half of it. What
// counts:
//   - only dispatched frames, not those waiting for frames their proposer
//     ordered before them (ns.pending): those may wait for frames still to
//     be received, which shedding would then keep out for good;
//   - not the frames a Propose call of this node waits for (charge): local
//     writers are held back by their own calls, and could otherwise keep
//     the backlog at the bound by themselves and shut out every frame of
//     the others. A frame whose Propose gave up (timeout, ctx) counts from
//     then on (abandon).
func (st *state) backlogged() bool {
	limit := st.r.cfg.MaxApplyBacklog // after withDefaults: 0 means no bound
	switch {
	case limit <= 0:
		return false
	case st.applyLen >= limit:
		st.shedding = true
	case st.applyLen <= limit/2:
		st.shedding = false
	}
	return st.shedding
}

// applied records that e's handlers ran (err is the first handler error).
func (st *state) applied(e *entry, err error) {
	e.applied = true
	e.ns.applied = max(e.ns.applied, e.p.frame.Seq)
	if !e.skip {
		st.r.m.applied.Add(1)
	}
	if w := e.w; w != nil {
		e.w = nil
		st.resolve(w, DecisionAccept, err)
	}
}

func (st *state) resetNamespace(key spaceKey, seq uint64) {
	ns := st.space(key)
	// Frames already queued for apply that the snapshot contains must not
	// be applied on top of it.
	for _, e := range st.applyQ[st.applyHead:] {
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
			st.nPending--
			e.skip, e.applied = true, true
			st.r.m.skipped.Add(1)
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
		st.replay(ns, seq)
	} else {
		if seq > ns.head {
			ns.voted = nil // a new position; at the same head the vote stands (S4)
		}
		ns.head = seq
		ns.maxSeen = max(ns.maxSeen, seq)
		if !ns.listed {
			ns.listed = true
			st.spaceList = append(st.spaceList, ns)
		}
		if e := ns.at(seq); e != nil && e.state == stAccepted && !e.linked {
			st.link(ns, e)
		}
		st.reevaluate(ns)
	}
	st.drainPending(ns)
	st.wakeAfterWaiters(ns)
}

// replay handles a ResetNamespace to a snapshot older than this node's head
// (replication moved on while the application fetched it): the frames
// after seq that were applied here are applied again, in chain order, ahead
// of anything queued, so the application's state catches up with the head.
// If some of them are no longer retained, the namespace is reported behind
// again (the application needs a newer snapshot).
func (st *state) replay(ns *nsState, seq uint64) {
	var again []*entry
	last := seq
	for e := ns.at(seq); e != nil && e.state == stAccepted && e.linked && e.applied; e = ns.at(last) {
		again = append(again, e)
		last = e.p.frame.Seq
	}
	if last < ns.applied {
		st.r.m.behind.Add(1)
		st.behindEvents = append(st.behindEvents, &BehindError{
			OrgID: ns.key.org, Namespace: ns.key.ns, From: seq, Peer: st.r.cfg.NodeID,
		})
	}
	if len(again) == 0 {
		return
	}
	for _, e := range again {
		e.applied = false
		e.queued = true
		st.charge(e)
	}
	st.r.m.replayed.Add(uint64(len(again)))
	q := make([]*entry, 0, len(again)+len(st.applyQ)-st.applyHead)
	q = append(q, again...)
	q = append(q, st.applyQ[st.applyHead:]...)
	st.applyQ, st.applyHead = q, 0
	st.needKick = true
}
