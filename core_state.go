package replication

import (
	"cmp"
	"fmt"
	"iter"
	"slices"
)

// This file holds the types of the protocol core's state: the frames a node
// holds (entry) and their lifecycle (phase), what it knows of each
// namespace (nsState), and the Propose calls it tracks (call). See core.go
// for the core itself.

// spaceKey names a namespace.
type spaceKey struct{ org, ns string }

// phase is where a held frame stands in its lifecycle. A frame moves
// forward only, except that ResetNamespace may queue an applied frame
// again (replay):
//
//	undecided ─┬─> rejected
//	           ├─> accepted ─> linked ─> queued ─> applied
//	           └─> forgotten
//
// An undecided frame is voted on and its votes counted; it may also be
// deferred (see entry.deferred) while this node has not reached its chain
// position. An accepted frame waits for the frames before it in its
// namespace's chain; a linked frame is in the chain and waits for the frames
// its proposer ordered before it (its after list); a queued frame waits in
// the apply queue; an applied frame's handlers ran (or a ResetNamespace
// covered it). A forgotten frame stayed undecided for RetainFor and was
// dropped.
type phase uint8

const (
	phaseUndecided phase = iota
	phaseRejected
	phaseAccepted
	phaseLinked
	phaseQueued
	phaseApplied
	phaseForgotten
)

var phaseNames = [...]string{"undecided", "rejected", "accepted", "linked", "queued", "applied", "forgotten"}

func (p phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// accepted reports whether a frame in phase p was accepted.
func (p phase) accepted() bool { return p >= phaseAccepted && p <= phaseApplied }

// voterSet is a set of validator indexes.
type voterSet [MaxValidators / 64]uint64

func (s *voterSet) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s *voterSet) add(i int)      { s[i>>6] |= 1 << (i & 63) }

// entry is a frame this node holds.
type entry struct {
	id    [idLen]byte
	p     proposal
	key   spaceKey
	ns    *nsState
	phase phase
	// myVote is this validator's vote on the frame at its position (0:
	// none yet).
	myVote byte
	// own: proposed by this node. returned: core.returned when it was
	// proposed (see core.propose).
	own      bool
	returned uint64
	// deferred: undecided, in ns.deferred, waiting for this node to reach
	// its position before voting.
	deferred bool
	// skip: queued, but covered by a ResetNamespace: counts as applied
	// without running handlers.
	skip bool
	// charged: queued, and its size counts in core.applyLen (see
	// core.backlogged).
	charged bool

	commits, cancels voterSet
	nCommit, nCancel uint16 // at most MaxValidators
	size             int    // the frame's raw size (Frame.size)

	// blk is the frame's home block: the block this node took it in with
	// (or made it in), which its engine block and this validator's votes
	// name; idx is its index there. more: the other blocks this node holds
	// that carry it (a block received again in another composition).
	blk  *block
	idx  int
	more []blockRef
	call *call // the Propose call of this node waiting for it, if any

	// With signing keys (attest.go): att is the batch attesting this
	// validator's vote on the frame, leaf its index there; parts the
	// checked parts of other validators' commit votes held for it;
	// askedParts when this node last asked for them.
	att        *attBatch
	leaf       uint32
	parts      []votePart
	askedParts int64

	born     int64 // when this node took it in
	next     int64 // undecided: when it is next repaired (order of core.undecided)
	doneAt   int64 // when it entered core.waiting or core.retained
	served   int64 // when this node last answered for it
	voted    int64 // when this node last sent its vote on it
	repairAt int64 // repair backoff of frames nobody here waits for
	backoff  int64
	repairs  uint32 // repair rounds: picks whom a fetch asks
	// origin is the proposer's validator index (-1: not a validator).
	origin int
	// In at most one of core.undecided, core.waiting and core.retained.
	prevL, nextL *entry
	inList       *entryList
}

// block is a block this node holds: the frames it carries, by index (nil:
// not held here, never taken in or forgotten since), so that a vote record
// naming the block counts for them.
//
// The block is also the unit of the consensus engine, for the frames whose
// home block it is: one engine block, to which each validator's first
// commit vote on any of those frames is recorded (engVoted). The engine
// accepts the block at q such validators; a frame of it is accepted once
// the engine accepted the block and q validators committed that frame
// itself (countVote), so each frame's outcome is its own. The engine is
// kept while some of those frames are undecided (open).
type block struct {
	id       [idLen]byte
	frames   []*entry
	alone    [1]*entry // frames' array for a block of one frame
	live     int       // frames not nil
	ep       *epoch
	engVoted voterSet
	open     int   // undecided frames whose home block this is
	served   int64 // when this node last sent the block, and to whom (-1: every validator)
	servedTo int
}

// blockRef is a frame's place in a block that is not its home block.
type blockRef struct {
	b *block
	i int
}

// entryList is an intrusive doubly linked list of entries.
type entryList struct {
	head, tail *entry
	n          int
}

func (l *entryList) pushBack(e *entry) {
	e.prevL, e.nextL, e.inList = l.tail, nil, l
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
	e.prevL, e.nextL, e.inList = nil, nil, nil
	l.n--
}

// unlist removes e from whichever list holds it.
func unlist(e *entry) {
	if e.inList != nil {
		e.inList.remove(e)
	}
}

// nsState is what a node knows of one namespace.
type nsState struct {
	key spaceKey
	// head is the Seq of the last accepted frame of the chain that this
	// node holds without gaps; voting and proposing build on it.
	head uint64
	// dispatched is the Seq of the last frame queued for apply; applied of
	// the last frame applied (or covered by ResetNamespace). maxSeen is
	// the highest Seq seen (assigned Seqs go above it).
	dispatched uint64
	applied    uint64
	maxSeen    uint64
	// voted is the frame this validator committed on top of head, if any:
	// the S4 rule (see core_vote.go).
	voted *entry
	// deferred: proposals on top of a position beyond head; voted on once
	// head reaches it. deferredDead counts the entries no longer deferred
	// (see undefer).
	deferred     []*entry
	deferredDead int
	// pending: linked frames waiting for frames of other namespaces that
	// their proposer ordered before them; afterWaiters: the namespaces
	// whose pending head waits for this one.
	pending      []*entry
	afterWaiters []*nsState
	// mine is this node's own undecided frame in the namespace, if any;
	// turns are the Propose calls of this node waiting for it to be
	// decided, in arrival order (one own frame per namespace at a time, so
	// that a node's next frame never competes with its previous one).
	mine  *entry
	turns []*call
	// Repair of the namespace: when a sync was last asked for, how many
	// rounds so far (picks whom to ask).
	lastSync   int64
	syncRounds uint32
	behind     bool
	listed     bool // in core.spaceList (it has a head)
	// frontierSeq is the Seq of this namespace's frame in core.frontier,
	// at index frontierAt-1 (0: not in it).
	frontierSeq uint64
	frontierAt  int
	// chain holds the accepted frames this node retains, by the Seq they
	// extend (their position): how links are followed and syncs served.
	chain chainIndex
	// open: the namespace's undecided frames, so that the frames competing
	// for a position are rejected as soon as another frame is accepted
	// there.
	open []*entry
	// evicted: the namespace was empty and core.spaces dropped it; a
	// depRef still pointing here resolves to the live state (core.live).
	evicted bool
	// created is when the namespace was created (eviction grace).
	created int64
}

// empty reports whether ns holds nothing worth keeping: no head, no
// frames, no votes, no waiters. Such a namespace can be dropped and made
// again without changing the protocol's behaviour.
func (ns *nsState) empty() bool {
	return ns.head == 0 && ns.maxSeen == 0 && ns.applied == 0 && ns.dispatched == 0 &&
		!ns.behind && ns.voted == nil && ns.mine == nil && len(ns.turns) == 0 &&
		len(ns.deferred) == 0 && len(ns.pending) == 0 && len(ns.afterWaiters) == 0 &&
		ns.chain.len() == 0 && len(ns.open) == 0 && ns.frontierAt == 0 && !ns.listed
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

func (ns *nsState) at(prev uint64) *entry { return ns.chain.get(prev) }

// chainIndex maps chain positions (prev) to the accepted frames a node
// retains there. Positions are added mostly in increasing order and
// dropped mostly oldest first, so it is a sorted slice searched by
// position, not a map: a map with that churn fills with deleted slots
// that every lookup probes past.
type chainIndex struct {
	slots []chainSlot // sorted by prev; slots[:head] are dropped
	head  int
}

type chainSlot struct {
	prev uint64
	e    *entry
}

// find returns where prev is, or would be inserted, in slots[head:].
func (c *chainIndex) find(prev uint64) (int, bool) {
	i, ok := slices.BinarySearchFunc(c.slots[c.head:], prev, func(s chainSlot, p uint64) int { return cmp.Compare(s.prev, p) })
	return c.head + i, ok
}

func (c *chainIndex) len() int { return len(c.slots) - c.head }

// get returns the frame at position prev, or nil.
func (c *chainIndex) get(prev uint64) *entry {
	if n := len(c.slots); n > c.head && c.slots[n-1].prev == prev {
		return c.slots[n-1].e // the newest: the common case
	}
	if i, ok := c.find(prev); ok {
		return c.slots[i].e
	}
	return nil
}

// set puts e at position prev.
func (c *chainIndex) set(prev uint64, e *entry) {
	if n := len(c.slots); n == c.head || c.slots[n-1].prev < prev {
		c.slots = append(c.slots, chainSlot{prev, e})
		return
	}
	i, ok := c.find(prev)
	if ok {
		c.slots[i].e = e
		return
	}
	c.slots = slices.Insert(c.slots, i, chainSlot{prev, e})
}

// del removes position prev.
func (c *chainIndex) del(prev uint64) {
	i, ok := c.find(prev)
	if !ok {
		return
	}
	if i > c.head {
		c.slots = slices.Delete(c.slots, i, i+1)
		return
	}
	c.slots[i] = chainSlot{}
	c.head++
	switch n := len(c.slots) - c.head; {
	case n == 0:
		c.slots, c.head = c.slots[:0], 0
	case c.head >= 32 && c.head >= n:
		// Move the live slots down, and let a slice that shrank a lot go.
		k := copy(c.slots, c.slots[c.head:])
		clear(c.slots[k:])
		c.slots, c.head = c.slots[:k], 0
		if cap(c.slots) > 64 && k < cap(c.slots)/4 {
			c.slots = slices.Clone(c.slots)
		}
	}
}

// reset drops every position.
func (c *chainIndex) reset() { *c = chainIndex{} }

// all yields the positions and their frames in order.
func (c *chainIndex) all() iter.Seq2[uint64, *entry] {
	return func(yield func(uint64, *entry) bool) {
		for _, s := range c.slots[c.head:] {
			if !yield(s.prev, s.e) {
				return
			}
		}
	}
}

// call is a Propose call the core tracks. The driver makes it and keeps
// wake; the core sets the outcome and reports the call in ready.decided
// (and in ready.wake when its frame is queued for apply).
type call struct {
	frame     Frame
	reentrant bool // made from a handler: decided at acceptance, applied later

	// Set by the core.
	e        *entry // the frame proposed for it (nil while it waits its turn)
	queued   bool   // waiting its turn in e's namespace (nsState.turns)
	decided  bool
	decision Decision
	err      error

	// wake belongs to the driver (the core never touches it).
	wake chan struct{}
}

// depRef is an after-list entry a node holds, resolved: the namespace's
// state on this node and the Seq, so that the apply path follows a pointer
// instead of looking the name up again (see proposal.deps).
type depRef struct {
	ns  *nsState
	seq uint64
}
