package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/luxfi/consensus"
)

// This file holds the Quasar driver's protocol state machine. Every method
// of state runs with QuasarReplicator.mu held and never blocks: it updates
// state, appends records to the outbox and frames to the apply queue, and
// leaves sending and applying to its caller.

type spaceKey struct{ org, ns string }

const (
	stUndecided = iota
	stAccepted
	stRejected
)

const (
	epochBlocks    = 256       // blocks fed to one engine before a fresh one takes over (its maps stay small)
	inlineFlushMax = 2         // above this many undecided frames, sendLoop sends
	maxBatchBytes  = 256 << 10 // a message is cut once it holds this much
	maxOrphans     = 4096      // votes for unknown blocks held, by block
	maxUndecided   = 1 << 16   // undecided frames held; more proposals are dropped
	syncBatch      = 256       // certificates per sync answer
	digestBatch    = 256       // namespace heads per digest
)

var errBusy = errors.New("namespace busy")

var clockStart = time.Now()

// mono is a monotonic clock reading in nanoseconds.
func mono() int64 { return int64(time.Since(clockStart)) }

type voterSet [MaxValidators / 64]uint64

func (s *voterSet) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s *voterSet) add(i int)      { s[i>>6] |= 1 << (i & 63) }

// waiter is a Propose call waiting for its frame.
type waiter struct {
	// wake is made by the waiter when it has to block (cap 1, never
	// closed): signalled when its frame is queued for apply and when the
	// waiter is resolved.
	wake      chan struct{}
	resolved  bool
	decision  Decision
	err       error
	reentrant bool
	e         *entry
}

// turn is a Propose call waiting for its namespace to be free.
type turn struct {
	ch      chan struct{}
	granted bool
	key     spaceKey
}

// entry is a frame this node holds.
type entry struct {
	id     [idLen]byte
	p      proposal
	key    spaceKey
	ns     *nsState
	state  uint8
	myVote byte

	linked, dispatched, deferred, forgotten bool
	skip                                    bool // queued for apply, but a ResetNamespace covers it
	applied                                 bool // handlers ran (or skip)

	commits, cancels voterSet
	nCommit, nCancel int

	ep *epoch  // engine holding the block while undecided
	w  *waiter // the local Propose waiting for it, if any

	born, next, decidedAt, lastServed, lastVoted int64
	repairAt, backoff                            int64 // repair backoff (tick)

	prevL, nextL *entry // in state.undecided or state.retained
}

type entryList struct {
	head, tail *entry
	n          int
}

func (l *entryList) pushBack(e *entry) {
	e.prevL, e.nextL = l.tail, nil
	if l.tail != nil {
		l.tail.nextL = e
	} else {
		l.head = e
	}
	l.tail = e
	l.n++
}

func (l *entryList) remove(e *entry) {
	if e.prevL != nil {
		e.prevL.nextL = e.nextL
	} else {
		l.head = e.nextL
	}
	if e.nextL != nil {
		e.nextL.prevL = e.prevL
	} else {
		l.tail = e.prevL
	}
	e.prevL, e.nextL = nil, nil
	l.n--
}

// epoch is one consensus engine. The engine keeps every block it is given,
// so after epochBlocks blocks a fresh engine takes over; an old one is
// garbage once its last undecided block is decided or forgotten.
type epoch struct {
	eng   consensus.Engine
	added int
	last  [idLen]byte
}

// nsState is what a node knows of one namespace.
type nsState struct {
	key spaceKey
	// head is the Seq of the last accepted frame of the chain that this
	// node holds without gaps; voting and proposing build on it.
	head uint64
	// dispatched is the Seq of the last frame queued for apply; applied of
	// the last frame applied (or covered by ResetNamespace).
	dispatched uint64
	applied    uint64
	maxSeen    uint64
	// voted is the frame this validator committed on top of head, if any.
	voted *entry
	// deferred: proposals on top of a position beyond head; voted on once
	// head reaches it.
	deferred []*entry
	// pending: linked frames waiting for frames of other namespaces that
	// their proposer ordered before them.
	pending      []*entry
	afterWaiters []*nsState
	// busy: an own proposal is in flight (inflight) or a turn was granted.
	busy     bool
	inflight *entry
	turns    []*turn
	lastSync int64
	behind   bool
	listed   bool
	// frontierSeq is the Seq of this namespace's frame in state.frontier,
	// at index frontierAt-1 (0: not in it).
	frontierSeq uint64
	frontierAt  int
	// chain holds the accepted frames this node retains, by the Seq they
	// extend (their position): how links are followed and syncs served.
	chain map[uint64]*entry
	// open: the namespace's undecided frames, so that the frames competing
	// for a position are rejected as soon as another frame is accepted
	// there.
	open []*entry
}

// close removes e from the open list.
func (ns *nsState) close(e *entry) {
	for i, x := range ns.open {
		if x == e {
			last := len(ns.open) - 1
			ns.open[i] = ns.open[last]
			ns.open[last] = nil
			ns.open = ns.open[:last]
			return
		}
	}
}

func (ns *nsState) at(prev uint64) *entry {
	return ns.chain[prev] // nil map reads are fine
}

type outbox struct {
	buf, spare []byte
	count      int
	full       [][]byte
	flushing   bool
}

type orphan struct {
	voters, types []uint16
	born          int64
	fetched       bool
}

type state struct {
	r         *QuasarReplicator
	solo      bool // a single validator: decides alone, retains nothing
	witness   int64
	retainFor int64

	entries   map[[idLen]byte]*entry
	spaces    map[spaceKey]*nsState
	spaceList []*nsState // namespaces with a head, for digests
	digestAt  int
	undecided entryList // ordered by next
	retained  entryList // decided, ordered by decidedAt
	ep        *epoch

	applyQ    []*entry
	applyHead int
	applying  bool
	needKick  bool
	nPending  int

	out outbox

	orphans map[[idLen]byte]*orphan
	orphanQ [][idLen]byte

	// frontier: the namespaces of own frames whose Propose returned
	// DecisionAccept and that no accepted later proposal names in its
	// after list yet (nsState.frontierSeq, frontierAt). At most one frame
	// per namespace: the namespace chain orders the rest. A slice, not a
	// map: every proposal copies it, so iterating it is the hot path.
	frontier []*nsState

	// forgot: this validator's votes on frames it forgot (see remember).
	forgot    map[[idLen]byte]forgotVote
	forgotQ   []forgotRef
	forgotGen uint64
	forgotCap int

	behindEvents []error
	lastDigest   int64
	vote         consensus.Vote
}

func (st *state) init(r *QuasarReplicator) {
	st.r = r
	st.solo = r.n == 1
	st.witness = int64(r.cfg.WitnessAfter)
	st.retainFor = int64(r.cfg.RetainFor)
	st.entries = make(map[[idLen]byte]*entry)
	st.spaces = make(map[spaceKey]*nsState)
	st.orphans = make(map[[idLen]byte]*orphan)
	st.forgot = make(map[[idLen]byte]forgotVote)
	st.forgotCap = 4 * r.cfg.RetainFrames
}

func (st *state) newEpoch(ctx context.Context) error {
	eng, err := st.r.newEngine(ctx)
	if err != nil {
		return err
	}
	st.ep = &epoch{eng: eng}
	st.r.m.engines.Add(1)
	return nil
}

// space returns the namespace's state, creating it if needed. key may alias
// a received message: a new namespace keeps copies of its strings.
func (st *state) space(key spaceKey) *nsState {
	ns := st.spaces[key]
	if ns == nil {
		key = spaceKey{strings.Clone(key.org), strings.Clone(key.ns)}
		ns = &nsState{key: key}
		st.spaces[key] = ns
	}
	return ns
}

// own makes a decoded proposal (whose strings and value alias the message)
// safe to keep: namespace names are interned, the rest copied.
func (st *state) own(p *proposal, ns *nsState) {
	f := &p.frame
	f.OrgID, f.Namespace = ns.key.org, ns.key.ns
	switch f.Op {
	case "put":
		f.Op = "put"
	case "del":
		f.Op = "del"
	default:
		f.Op = strings.Clone(f.Op)
	}
	f.Key = strings.Clone(f.Key)
	if len(f.Value) > 0 {
		f.Value = bytes.Clone(f.Value)
	}
	if len(p.after) > 0 {
		p.deps = make([]depRef, len(p.after))
		for i, a := range p.after {
			p.deps[i] = depRef{st.space(spaceKey{a.org, a.ns}), a.seq}
		}
		p.after = nil
	}
}

// propose starts an own proposal. granted says the caller holds a turn.
func (st *state) propose(f *Frame, reentrant, granted bool) (*waiter, error) {
	key := spaceKey{f.OrgID, f.Namespace}
	ns := st.space(key)
	if ns.busy && !granted {
		return nil, errBusy
	}
	ns.busy = true
	seq := f.Seq
	if seq == 0 {
		seq = max(ns.maxSeen, ns.head) + 1
	} else if seq <= ns.head {
		st.releaseNS(ns)
		return nil, fmt.Errorf("%w: slot %s/%s seq %d is taken (latest accepted seq %d)",
			ErrRejected, f.OrgID, f.Namespace, seq, ns.head)
	}
	f.Seq = seq
	ns.maxSeen = max(ns.maxSeen, seq)
	id, payload := f.block()
	if e := st.entries[id]; e != nil && !st.solo {
		// The very same frame (content and Seq) is already held: wait for
		// it, unless it cannot be accepted on top of our head.
		if e.state == stRejected || e.p.prev != ns.head || e.w != nil {
			st.releaseNS(ns)
			return nil, fmt.Errorf("%w: an identical frame %s/%s seq %d was already proposed",
				ErrRejected, f.OrgID, f.Namespace, seq)
		}
		w := &waiter{reentrant: reentrant, e: e}
		e.w, ns.inflight = w, e
		return w, nil
	}
	e := &entry{id: id, key: key, ns: ns}
	e.p.frame = *f
	e.p.prev = ns.head
	for _, dep := range st.frontier {
		if dep == ns && dep.frontierSeq <= ns.head {
			continue // e extends the chain through it
		}
		if e.p.deps == nil {
			e.p.deps = make([]depRef, 0, len(st.frontier))
		}
		e.p.deps = append(e.p.deps, depRef{dep, dep.frontierSeq})
	}
	e.p.proposer = st.r.ids[st.r.self]
	w := &waiter{reentrant: reentrant, e: e}
	e.w, ns.inflight = w, e
	st.add(e, payload)
	st.sendProposal(&e.p)
	st.castVote(e)
	return w, nil
}

func (st *state) queueTurn(key spaceKey) *turn {
	ns := st.space(key)
	t := &turn{ch: make(chan struct{}), key: key}
	ns.turns = append(ns.turns, t)
	return t
}

// abandonTurn withdraws a turn whose Propose gave up.
func (st *state) abandonTurn(t *turn) {
	ns := st.spaces[t.key]
	if t.granted {
		st.releaseNS(ns)
		return
	}
	for i, x := range ns.turns {
		if x == t {
			ns.turns = append(ns.turns[:i], ns.turns[i+1:]...)
			return
		}
	}
}

// releaseNS ends an own proposal's hold on its namespace, handing it to the
// next queued Propose.
func (st *state) releaseNS(ns *nsState) {
	ns.inflight = nil
	if len(ns.turns) == 0 {
		ns.busy = false
		return
	}
	t := ns.turns[0]
	ns.turns[0] = nil
	ns.turns = ns.turns[1:]
	t.granted = true
	close(t.ch)
}

// abandon detaches a waiter whose Propose gave up (timeout, ctx, close).
func (st *state) abandon(w *waiter) {
	e := w.e
	if e.w == w {
		e.w = nil
	}
	if e.ns.inflight == e {
		st.releaseNS(e.ns)
	}
}

func (st *state) resolve(w *waiter, d Decision, err error) {
	w.resolved, w.decision, w.err = true, d, err
	w.signal()
	if d == DecisionAccept {
		// The Propose returns Accept: later proposals of this node are
		// applied after this frame everywhere (S5).
		e := w.e
		for _, a := range e.p.deps {
			if dep := a.ns; dep.frontierAt != 0 && dep.frontierSeq <= a.seq {
				st.leaveFrontier(dep)
			}
		}
		if ns := e.ns; ns.frontierAt == 0 {
			st.frontier = append(st.frontier, ns)
			ns.frontierAt, ns.frontierSeq = len(st.frontier), e.p.frame.Seq
		} else {
			ns.frontierSeq = max(ns.frontierSeq, e.p.frame.Seq)
		}
	}
}

// leaveFrontier removes ns from state.frontier.
func (st *state) leaveFrontier(ns *nsState) {
	i, last := ns.frontierAt-1, len(st.frontier)-1
	moved := st.frontier[last]
	st.frontier[i], moved.frontierAt = moved, i+1
	st.frontier[last] = nil
	st.frontier = st.frontier[:last]
	ns.frontierAt, ns.frontierSeq = 0, 0
}

func (w *waiter) signal() {
	if w.wake != nil {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// takeKick reports (and clears) whether applyLoop must be woken: frames were
// queued for apply that no blocked proposer was told to apply.
func (st *state) takeKick() bool {
	k := st.needKick
	st.needKick = false
	return k
}

// add registers a new undecided entry and its block.
// add registers a new undecided entry; payload is the frame's JSON (the
// block's payload), owned by the engine from now on.
func (st *state) add(e *entry, payload []byte) {
	// A block ID the current engine has seen before (a forgotten frame that
	// came back) must go to a fresh engine: the engine keeps the votes it
	// recorded for a block and would count them again.
	if st.ep.added >= epochBlocks || st.ep.eng.GetStatus(e.id) != consensus.StatusUnknown {
		if err := st.newEpoch(context.Background()); err != nil {
			st.r.log.Error("starting a new consensus engine failed; keeping the current one", "err", err)
		}
	}
	ep := st.ep
	ep.added++
	_ = ep.eng.Add(context.Background(), &consensus.Block{
		ID: e.id, ParentID: ep.last, Height: uint64(ep.added), Payload: payload,
	})
	ep.last = e.id
	e.ep = ep
	now := mono()
	e.born, e.next = now, now+st.witness
	if !st.solo {
		st.entries[e.id] = e
		e.ns.open = append(e.ns.open, e)
	}
	st.undecided.pushBack(e)
	if v, ok := st.forgot[e.id]; ok {
		// A frame this validator voted on and forgot: same vote again.
		delete(st.forgot, e.id)
		e.myVote, e.lastVoted = v.typ, now
		st.countVote(e, st.r.self, v.typ)
	}
	if o := st.orphans[e.id]; o != nil {
		delete(st.orphans, e.id)
		for i := range o.voters {
			if e.state != stUndecided {
				break
			}
			st.countVote(e, int(o.voters[i]), byte(o.types[i]))
		}
	}
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
	if e.state == stUndecided && e.nCancel > st.r.n-st.r.q {
		st.reject(e)
	}
}

// decided moves e from the undecided list to the retained list.
func (st *state) decided(e *entry) {
	e.ep = nil
	e.deferred = false
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
	if ns.voted != nil && ns.voted.id == e.id {
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

// reevaluate votes on deferred proposals whose position was reached.
func (st *state) reevaluate(ns *nsState) {
	if len(ns.deferred) == 0 {
		return
	}
	list := ns.deferred
	ns.deferred = nil
	for _, d := range list {
		if !d.deferred {
			continue
		}
		d.deferred = false
		st.castVote(d)
	}
}

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
	if st.applyHead == len(st.applyQ) {
		st.applyQ, st.applyHead = st.applyQ[:0], 0
	}
	return e
}

func (st *state) pendingApply() int { return len(st.applyQ) - st.applyHead + st.nPending }

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

// handle acts on one record of a received message.
func (st *state) handle(rec *record, sender int) {
	switch rec.typ {
	case recProposal:
		st.onProposal(&rec.prop, nil, rec.id, rec.payload)
	case recCertificate:
		st.onProposal(&rec.prop, rec.voters, rec.id, rec.payload)
	case recVote:
		st.onVote(&rec.vote, sender)
	case recFetch:
		if e := st.entries[rec.block]; e != nil {
			st.serve(e)
		}
	case recSync:
		st.onSync(rec.ref, rec.who)
	case recDigest:
		for _, h := range rec.digest {
			if ns := st.space(spaceKey{h.org, h.ns}); h.seq > ns.head {
				st.requestSync(ns)
			}
		}
	case recBehind:
		st.onBehind(rec.ref, rec.who, sender)
	}
}

// onProposal handles a received proposal or certificate. id and payload
// are the frame's block ID and JSON, computed by the receiving goroutine
// before it took mu.
func (st *state) onProposal(p *proposal, cert []nodeID, id [idLen]byte, payload []byte) {
	m := &st.r.m
	e := st.entries[id]
	if e == nil {
		if st.undecided.n >= maxUndecided {
			m.proposalsDropped.Add(1)
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
		st.applyCertificate(e, cert)
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

func (st *state) applyCertificate(e *entry, voters []nodeID) {
	m := &st.r.m
	var seen voterSet
	idx := make([]int, 0, len(voters))
	for _, v := range voters {
		i, ok := st.r.byNodeID[v]
		if !ok || seen.has(i) {
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
		st.orphan(v.block, voter, v.typ)
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
// if the block arrives, and a fetch asks for the block.
func (st *state) orphan(id [idLen]byte, voter int, typ byte) {
	st.r.m.votesUnknownBlock.Add(1)
	o := st.orphans[id]
	if o == nil {
		for len(st.orphans) >= maxOrphans && len(st.orphanQ) > 0 {
			old := st.orphanQ[0]
			st.orphanQ = st.orphanQ[1:]
			if x := st.orphans[old]; x != nil {
				st.r.m.votesDropped.Add(uint64(len(x.voters)))
				delete(st.orphans, old)
			}
		}
		o = &orphan{born: mono()}
		st.orphans[id] = o
		st.orphanQ = append(st.orphanQ, id)
	}
	if len(o.voters) < st.r.n {
		o.voters = append(o.voters, uint16(voter))
		o.types = append(o.types, uint16(typ))
	}
}

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
		ns.head = seq
		ns.maxSeen = max(ns.maxSeen, seq)
		ns.voted = nil
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
	}
	st.r.m.replayed.Add(uint64(len(again)))
	q := make([]*entry, 0, len(again)+len(st.applyQ)-st.applyHead)
	q = append(q, again...)
	q = append(q, st.applyQ[st.applyHead:]...)
	st.applyQ, st.applyHead = q, 0
	st.needKick = true
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
		if e.state == stAccepted && !e.dispatched {
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
			m.votesDropped.Add(uint64(len(o.voters)))
			delete(st.orphans, id)
		}
	}
	for i := range st.orphanQ {
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
	e.ns.close(e)
	delete(st.entries, e.id)
	st.remember(e)
	st.r.m.expired.Add(1)
}

// remember keeps this validator's vote on a frame it forgets, so that if the
// frame comes back (a late re-send, a fetch answer) it gets the same vote
// again: a validator that voted cancel and later commit on one frame could
// let one node count the cancel and another the commit, breaking S1.
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
		v, ok := st.forgot[old.id]
		if !ok || v.gen != old.gen {
			continue // restored or re-forgotten since
		}
		if v.ns.head <= v.prev {
			st.forgotQ = append(st.forgotQ, old) // still current: keep
			continue
		}
		delete(st.forgot, old.id)
	}
	st.forgotGen++
	st.forgot[e.id] = forgotVote{typ: e.myVote, gen: st.forgotGen, ns: e.ns, prev: e.p.prev}
	st.forgotQ = append(st.forgotQ, forgotRef{id: e.id, gen: st.forgotGen})
}

type forgotVote struct {
	typ  byte
	gen  uint64
	ns   *nsState
	prev uint64
}

type forgotRef struct {
	id  [idLen]byte
	gen uint64
}

// Outbox: records are appended to the current message; a message is cut at
// maxBatchBytes. Nothing is sent with a single validator.

func (o *outbox) begin() {
	if o.count == 0 {
		o.buf = newMessage(o.buf)
	}
}

func (o *outbox) end() {
	o.count++
	if len(o.buf) >= maxBatchBytes {
		o.full = append(o.full, finishMessage(o.buf, o.count))
		o.buf, o.count = nil, 0
	}
}

func (st *state) sendProposal(p *proposal) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendProposalRecord(st.out.buf, p)
	st.out.end()
}

func (st *state) sendVote(e *entry) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendVoteRecord(st.out.buf, &e.id, &st.r.ids[st.r.self], e.myVote)
	st.out.end()
}

func (st *state) sendCertificate(e *entry) {
	if st.r.n == 1 {
		return
	}
	voters := make([]nodeID, 0, e.nCommit)
	for i := 0; i < st.r.n; i++ {
		if e.commits.has(i) {
			voters = append(voters, st.r.ids[i])
		}
	}
	st.out.begin()
	st.out.buf = appendCertificateRecord(st.out.buf, &e.p, voters)
	st.out.end()
}

func (st *state) sendFetch(id *[idLen]byte) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendFetchRecord(st.out.buf, id)
	st.out.end()
}

func (st *state) sendSync(typ byte, key spaceKey, from uint64, who *nodeID) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendSyncRecord(st.out.buf, typ, key.org, key.ns, from, who)
	st.out.end()
}
