package replication

import (
	"context"
	"fmt"

	"github.com/luxfi/consensus"
)

// This file holds how a validator votes, counts votes and decides frames:
// the voting rule, acceptance and rejection, chain linking, and the
// handling of received records. Like every state method, these run with
// QuasarReplicator.mu held and never block.

// orphan holds the votes received for a block this node does not hold
// (yet), each with the position it was cast at.
type orphan struct {
	votes   []orphanVote
	born    int64
	fetched bool
}

type orphanVote struct {
	prev  uint64 // the position it was cast at
	voter uint16
	typ   byte
}

// castVote applies this validator's voting rule to e.
func (st *state) castVote(e *entry) {
	if e.myVote != 0 || e.state != stUndecided || e.forgotten {
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
		st.requestSync(ns)
		return
	case e.p.prev < ns.head:
		// The position is passed. Cancel only when we still hold the frame
		// accepted there; a position we no longer remember gets no vote
		// (a vote on forgotten history could contradict one cast then).
		at := ns.at(e.p.prev)
		if at == nil || at == e {
			st.r.m.stale.Add(1)
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
	e.lastVoted = mono()
	st.sendVote(e)
	st.countVote(e, st.r.self, typ)
}

// countVote records a checked vote of validator voter on e.
func (st *state) countVote(e *entry, voter int, typ byte) {
	if e.commits.has(voter) || e.cancels.has(voter) {
		st.r.m.votesDuplicate.Add(1)
		return
	}
	if typ == voteCommit {
		e.commits.add(voter)
		e.nCommit++
		if e.state == stUndecided && e.ep != nil {
			// The engine copies the vote, so one scratch Vote serves all.
			v := &st.vote
			*v = consensus.Vote{BlockID: e.id, VoteType: consensus.VoteCommit, Voter: consensus.NodeID(st.r.ids[voter])}
			if err := e.ep.eng.RecordVote(context.Background(), v); err != nil {
				st.r.log.Error("engine refused a vote", "err", err)
				return
			}
			if e.ep.eng.IsAccepted(e.id) {
				st.accept(e)
			}
		}
		return
	}
	e.cancels.add(voter)
	e.nCancel++
	if e.state == stUndecided && int(e.nCancel) > st.r.n-st.r.q {
		st.reject(e)
	}
}

// decided moves e from the undecided list to the retained list.
func (st *state) decided(e *entry) {
	e.ep = nil
	st.undefer(e)
	st.undecided.remove(e)
	e.ns.close(e)
	if st.solo {
		return // nobody to repair: nothing is retained
	}
	e.decidedAt = mono()
	st.retained.pushBack(e)
}

func (st *state) accept(e *entry) {
	e.state = stAccepted
	st.decided(e)
	st.r.m.framesAccepted.Add(1)
	ns := e.ns
	ns.maxSeen = max(ns.maxSeen, e.p.frame.Seq)
	if w := e.w; w != nil && w.reentrant {
		e.w = nil
		st.resolve(w, DecisionAccept, nil)
	}
	if ns.inflight == e {
		st.releaseNS(ns)
	}
	if at := ns.at(e.p.prev); at != nil && at != e && at.state == stAccepted {
		st.r.m.conflicts.Add(1)
		st.r.log.Error("two frames accepted at one chain position",
			"org", e.key.org, "ns", e.key.ns, "prev", e.p.prev, "seq", e.p.frame.Seq, "other", at.p.frame.Seq)
		return
	}
	if !st.solo {
		if ns.chain == nil {
			ns.chain = make(map[uint64]*entry)
		}
		ns.chain[e.p.prev] = e
	}
	switch {
	case e.p.prev == ns.head:
		st.link(ns, e)
	case e.p.prev > ns.head:
		st.requestSync(ns) // the frames in between are missing here
	default:
		st.r.m.stale.Add(1) // behind our head (restored past it)
	}
}

func (st *state) reject(e *entry) {
	st.rejectErr(e, fmt.Errorf("%w: %d of %d validators cancelled %s/%s seq %d (quorum %d)",
		ErrRejected, e.nCancel, st.r.n, e.key.org, e.key.ns, e.p.frame.Seq, st.r.q))
}

func (st *state) rejectErr(e *entry, err error) {
	e.state = stRejected
	st.decided(e)
	st.r.m.framesRejected.Add(1)
	ns := e.ns
	if v := ns.voted; v != nil && v.id == e.id && v.p.prev == e.p.prev {
		ns.voted = nil // the position is free again: e can never be accepted
	}
	if w := e.w; w != nil {
		e.w = nil
		st.resolve(w, DecisionReject, err)
	}
	if ns.inflight == e {
		st.releaseNS(ns)
	}
}

// link appends accepted frames to the namespace chain, starting with e.
func (st *state) link(ns *nsState, e *entry) {
	for e != nil {
		e.linked = true
		st.rejectCompetitors(ns, e)
		ns.head = e.p.frame.Seq
		ns.maxSeen = max(ns.maxSeen, ns.head)
		ns.voted = nil
		ns.behind = false
		if !ns.listed {
			ns.listed = true
			st.spaceList = append(st.spaceList, ns)
		}
		st.enqueueApply(ns, e)
		st.reevaluate(ns)
		nx := ns.at(ns.head)
		if nx == nil || nx.state != stAccepted || nx.linked {
			return
		}
		e = nx
	}
}

// rejectCompetitors rejects the undecided frames that compete with the
// accepted frame e for its position. They can never be accepted: q
// validators committed e there, each commits one frame per position, so
// at most n-q < q commits remain for any other. Rejecting now tells their
// proposer at once instead of leaving it to time out when the votes that
// would cancel them cannot arrive (a validator down).
func (st *state) rejectCompetitors(ns *nsState, e *entry) {
	for i := 0; i < len(ns.open); {
		x := ns.open[i]
		if x.p.prev != e.p.prev || x.id == e.id || x.state != stUndecided {
			i++
			continue
		}
		st.r.m.superseded.Add(1)
		// reject removes x from ns.open (swapping the last one in at i).
		st.rejectErr(x, fmt.Errorf("%w: %s/%s seq %d: another frame (seq %d) was accepted on top of seq %d",
			ErrRejected, x.key.org, x.key.ns, x.p.frame.Seq, e.p.frame.Seq, e.p.prev))
	}
}

// undefer takes e (decided or forgotten) out of its namespace's deferred
// list: it is skipped there at once, and the list is compacted once most
// of it is such dead entries, so a namespace that stays behind does not
// accumulate them.
func (st *state) undefer(e *entry) {
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
func (st *state) reevaluate(ns *nsState) {
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
		st.castVote(d)
	}
}

// handle acts on one record of a received message.
func (st *state) handle(rec *record, sender int) {
	switch rec.typ {
	case recProposal:
		st.onProposal(&rec.prop, nil, rec.id, rec.payload)
	case recCertificate:
		st.onProposal(&rec.prop, &rec.voters, rec.id, rec.payload)
	case recVote:
		st.onVote(&rec.vote, sender)
	case recFetch:
		if e := st.entries[rec.block]; e != nil {
			st.serve(e)
		}
	case recSync:
		st.onSync(rec.ref, rec.who)
	case recDigest:
		for h := range rec.digest.all() {
			if ns := st.space(spaceKey{h.org, h.ns}); h.seq > ns.head {
				st.requestSync(ns)
			}
		}
	case recBehind:
		st.onBehind(rec.ref, rec.who, sender)
	}
}

// onProposal handles a received proposal, or a certificate (cert: its
// voters; nil for a proposal). id and payload are the frame's block ID and
// JSON, computed by the receiving goroutine before it took mu.
func (st *state) onProposal(p *proposal, cert *nodeList, id [idLen]byte, payload []byte) {
	m := &st.r.m
	e := st.entries[id]
	if e == nil {
		if st.undecided.n >= maxUndecided {
			m.proposalsDropped.Add(1)
			return
		}
		if st.backlogged() {
			m.proposalsShed.Add(1)
			return
		}
		ns := st.space(spaceKey{p.frame.OrgID, p.frame.Namespace})
		e = &entry{id: id, key: ns.key, ns: ns, p: *p}
		st.own(&e.p, ns)
		ns.maxSeen = max(ns.maxSeen, p.frame.Seq)
		st.add(e, payload)
	} else if e.p.prev != p.prev {
		m.proposalsConflicting.Add(1)
		return
	}
	if cert != nil {
		st.applyCertificate(e, *cert)
	}
	switch {
	case e.state == stUndecided && e.myVote == 0:
		st.castVote(e)
	case e.state == stUndecided:
		st.resendVote(e)
	case cert == nil && e.state == stAccepted:
		st.serve(e) // someone is still proposing a frame decided here
	case cert == nil:
		st.resendVote(e)
	}
}

func (st *state) applyCertificate(e *entry, voters nodeList) {
	m := &st.r.m
	if voters.len() > st.r.n {
		m.certificatesBad.Add(1)
		return
	}
	var seen voterSet
	idx := make([]int, 0, voters.len())
	for k := range voters.len() {
		i, ok := st.r.byNodeID[voters.at(k)]
		// A certificate naming this validator, which cancelled the frame,
		// is a lie: an honest one lists commit votes its sender received.
		if !ok || seen.has(i) || (i == st.r.self && e.cancels.has(i)) {
			m.certificatesBad.Add(1)
			return
		}
		seen.add(i)
		idx = append(idx, i)
	}
	if len(idx) < st.r.q {
		m.certificatesBad.Add(1)
		return
	}
	if e.state == stRejected {
		m.conflicts.Add(1)
		st.r.log.Error("certificate for a frame rejected here", "org", e.key.org, "ns", e.key.ns, "seq", e.p.frame.Seq)
		return
	}
	if e.state == stAccepted {
		return
	}
	m.certificates.Add(1)
	for _, i := range idx {
		if e.state != stUndecided {
			break
		}
		if !e.commits.has(i) && !e.cancels.has(i) {
			st.countVote(e, i, voteCommit)
		}
	}
}

func (st *state) onVote(v *vote, sender int) {
	m := &st.r.m
	voter, ok := st.r.byNodeID[v.voter]
	switch {
	case !ok:
		m.votesUnknownVoter.Add(1)
		return
	case v.typ != voteCommit && v.typ != voteCancel:
		m.votesBadType.Add(1)
		return
	case sender >= 0 && sender != voter:
		m.votesWrongSender.Add(1)
		return
	}
	m.votesReceived.Add(1)
	e := st.entries[v.block]
	if e == nil {
		st.orphan(v, voter)
		return
	}
	if e.p.prev != v.prev {
		m.votesOtherPosition.Add(1) // cast for this frame at another position
		return
	}
	again := e.commits.has(voter) || e.cancels.has(voter)
	st.countVote(e, voter, v.typ)
	if again && e.state == stAccepted {
		// A repeated vote is a re-send: its voter has not learned that the
		// frame was accepted; the certificate tells it. (A rejected frame
		// is served on fetch only: serving it re-sends a vote, and answering
		// repeated votes with votes would echo between decided nodes.)
		st.serve(e)
	}
}

// orphan holds a vote for a block this node does not have (yet): it counts
// if the block arrives at the vote's position, and a fetch asks for the
// block.
func (st *state) orphan(v *vote, voter int) {
	st.r.m.votesUnknownBlock.Add(1)
	id := v.block
	o := st.orphans[id]
	if o == nil {
		for len(st.orphans) >= maxOrphans && len(st.orphanQ) > 0 {
			old := st.orphanQ[0]
			st.orphanQ = st.orphanQ[1:]
			if x := st.orphans[old]; x != nil {
				st.r.m.votesDropped.Add(uint64(len(x.votes)))
				delete(st.orphans, old)
			}
		}
		o = &orphan{born: mono()}
		st.orphans[id] = o
		st.orphanQ = append(st.orphanQ, id)
	}
	held := 0 // this voter's votes held for the block
	for _, x := range o.votes {
		if int(x.voter) == voter {
			if x.prev == v.prev {
				return // a re-send: the first counts
			}
			held++
		}
	}
	if held >= 2 { // room for each voter at two positions: no voter crowds out the others
		st.r.m.votesDropped.Add(1)
		return
	}
	o.votes = append(o.votes, orphanVote{prev: v.prev, voter: uint16(voter), typ: v.typ})
}
