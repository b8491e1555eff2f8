package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/luxfi/consensus"
)

// This file holds the Quasar driver's protocol state: its types, and how a
// node starts its own proposals and feeds blocks to the engine. Every
// method of state runs with QuasarReplicator.mu held and never blocks: it
// updates state, appends records to the outbox and frames to the apply
// queue, and leaves sending and applying to its caller. The other state
// methods are in quasar_votes.go (voting, deciding, received records),
// quasar_apply.go (apply order and ResetNamespace), quasar_repair.go
// (repair, anti-entropy, retention) and quasar_outbox.go (outgoing
// records).

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

// errUnordered: an identical frame is undecided, and a Propose waiting for
// it could not be ordered after this node's proposals that returned since
// it was made (see propose).
var errUnordered = errors.New("unordered")

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

	own      bool   // proposed by this node
	returned uint64 // own: state.returned when it was proposed

	linked, dispatched, deferred, forgotten bool
	skip                                    bool // queued for apply, but a ResetNamespace covers it
	applied                                 bool // handlers ran (or skip)
	queued                                  bool // in applyQ[applyHead:]
	charged                                 bool // queued, and its size is in state.applyLen (see backlogged)

	commits, cancels voterSet
	nCommit, nCancel uint16 // at most MaxValidators
	size             int    // bytes of the frame's JSON encoding (the block payload)

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
	deferred     []*entry
	deferredDead int // entries of deferred no longer deferred (see undefer)
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
	// depPass and depAt: the after list being owned (state.depPass) names
	// this namespace at deps[depAt].
	depPass uint64
	depAt   int
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

type state struct {
	r         *QuasarReplicator
	solo      bool // a single validator: decides alone, retains nothing
	witness   int64
	retainFor int64

	entries   map[[idLen]byte]*entry
	spaces    map[spaceKey]*nsState
	spaceList []*nsState // namespaces with a head, for digests
	depPass   uint64     // counts own calls, to spot a namespace an after list names twice
	digestAt  int
	undecided entryList // ordered by next
	retained  entryList // decided, ordered by decidedAt
	ep        *epoch

	applyQ    []*entry
	applyLen  int  // entry.size of the charged frames in applyQ[applyHead:]
	shedding  bool // applyLen reached MaxApplyBacklog and has not fallen to half of it since
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
	returned uint64 // Propose calls of this node that returned Accept

	// forgot: this validator's votes on frames it forgot (see remember).
	forgot    map[blockAt]forgotVote
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
	st.forgot = make(map[blockAt]forgotVote)
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
	if p.after.n > 0 {
		// One reference per namespace, its highest Seq, as a proposer
		// sends them: a list naming a namespace over and over costs no
		// more than naming it once.
		st.depPass++
		p.deps = make([]depRef, 0, min(p.after.n, 16))
		for a := range p.after.all() {
			ns := st.space(spaceKey{a.org, a.ns})
			if ns.depPass == st.depPass {
				p.deps[ns.depAt].seq = max(p.deps[ns.depAt].seq, a.seq)
				continue
			}
			ns.depPass, ns.depAt = st.depPass, len(p.deps)
			p.deps = append(p.deps, depRef{ns, a.seq})
		}
		p.after = refList{}
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
		if seq == 0 { // a Seq of MaxUint64 was seen: none is left to assign
			st.releaseNS(ns)
			return nil, fmt.Errorf("%w: namespace %q/%q has no sequence number left (seq %d was seen)",
				ErrRejected, f.OrgID, f.Namespace, uint64(math.MaxUint64))
		}
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
		if !e.own || e.returned != st.returned {
			// Its after list was made before Propose calls of this node
			// returned Accept (or by another node): waiting for it would
			// not order this call after them (S5).
			st.releaseNS(ns)
			return nil, errUnordered
		}
		w := &waiter{reentrant: reentrant, e: e}
		e.w, ns.inflight = w, e
		return w, nil
	}
	e := &entry{id: id, key: key, ns: ns, own: true, returned: st.returned}
	e.p.frame = *f
	e.p.prev = ns.head
	for _, dep := range st.frontier {
		if dep == ns && dep.frontierSeq <= ns.head {
			// e extends the chain through that frame: every node applies
			// the namespace in chain order, so naming it adds nothing.
			continue
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
		if e.queued {
			st.charge(e) // nobody waits for it any more: it counts
		}
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
		st.returned++
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
	e.size = len(payload)
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
	if v, ok := st.forgot[blockAt{e.id, e.p.prev}]; ok {
		delete(st.forgot, blockAt{e.id, e.p.prev})
		ns := e.ns
		current := v.typ == voteCommit && e.p.prev == ns.head
		if !current || ns.voted == nil || ns.voted.id == e.id {
			// A frame this validator voted on at this position and forgot:
			// same vote again. (Remembered by block and position: at
			// another position the vote is cast afresh, by the voting
			// rule, and a commit counts at one position only.)
			e.myVote, e.lastVoted = v.typ, now
			if current {
				ns.voted = e
			}
			st.countVote(e, st.r.self, v.typ)
		}
	}
	if o := st.orphans[e.id]; o != nil {
		delete(st.orphans, e.id)
		for _, x := range o.votes {
			switch {
			case x.prev != e.p.prev:
				st.r.m.votesOtherPosition.Add(1)
			case e.state == stUndecided:
				st.countVote(e, int(x.voter), x.typ)
			}
		}
	}
}
