package replication

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// This file is the invariant checker shared by the simulator (sim_test.go)
// and the chaos test over real goroutines (chaos_test.go). It records, per
// node, every applied frame (it is fed by a Subscribe handler, or by the
// simulator's apply step), every Propose and its outcome, and every commit
// vote delivered to each node (fed by MemoryHub.OnDeliver, or by the
// simulator's network), and checks the package's invariants as each event
// arrives:
//
//   - S1 agreement: a frame whose Propose returned DecisionReject is applied
//     nowhere (frames are identified by a token unique to each Propose,
//     carried in Frame.Value).
//   - S2 quorum: no node sends a certificate (a frame it accepted, with the
//     voters whose commits decided it) naming fewer than q validators; and
//     when a node applies a frame, it was delivered commit votes (vote
//     records, or voters listed in certificates) of at least q-1
//     validators other than itself, at the frame's position; its own vote
//     is never delivered to it, so q-1 others plus itself is the quorum.
//   - S3 exactly once: no node applies a token, or a (org, ns, seq) slot,
//     twice; after the faults are healed every node applies every frame
//     whose Propose returned DecisionAccept (converged).
//   - S4 one frame per slot: across the cluster, at most one distinct frame
//     is applied per (org, ns, seq).
//   - S5 proposer order: if a node's Propose(x) returned DecisionAccept
//     before its Propose(y) began (start and end stamps of one logical
//     clock), every node that applied both applied x first. A pair applied
//     out of order is traced through the order the proposals gave on the
//     wire (chain positions and after lists, recorded by onDeliver): it is
//     a violation when y's proposals do not order it after x at all, or
//     when they do through frames the node applied itself; only when every
//     such path crosses a frame the node got from a snapshot is it the
//     documented limit of ResetNamespace, counted in restoreReorders.
//     Within a namespace the chain orders a node's frames, also those whose
//     Propose timed out; replicas apply each namespace in one order (see
//     compareReplicasLocked).
//   - S6 no self-inflicted rejection: no Propose with Seq 0 into a
//     namespace that only one node writes (soleWriter) returns Reject.
//   - Replicas identical: at the converged instant every node applied the
//     same frames, in the same order per namespace, and holds the same map.
//   - Contract: Propose returns Accept only after the proposer's handlers
//     ran, and each decision comes with its documented error.
//
// Violations are collected, not reported at once, so that a unit test can
// feed the checker synthetic histories (TestChecker_DetectsViolations).
// The checker is safe for concurrent use (the chaos test calls it from
// many goroutines); the simulator calls it from one.
type checker struct {
	n, q  int
	ids   []string
	byID  map[string]int
	byNID map[nodeID]int
	clock atomic.Int64

	mu        sync.Mutex
	nodes     []*replica
	delivered []map[[idLen]byte]uint64 // per receiving node: bitmask of delivered commit voters, per block
	ops       []*checkedOp
	byToken   map[string]*checkedOp
	slots     map[nsRef]string // slot -> token applied there (S4)
	// slotBlock: slot -> the block applied there, when the caller told
	// (appliedBlock): which proposal of a frame proposed more than once won.
	slotBlock map[nsRef][idLen]byte
	// orders: per token, the frames its proposals order it after, as seen
	// on the wire: the chain position it extends (prev) and its after list,
	// one per block (a frame proposed more than once has several). S5
	// violations are traced through them (see orderedAfter).
	orders map[string][]wireOrder
	// soleWriters: namespaces written by one node only (S6).
	soleWriters map[spaceKey]bool
	// retried: tokens proposed by several Propose calls (the very same
	// frame retried, or written by several nodes: see beginShared), with
	// all their ops.
	retried map[string][]*checkedOp
	// restoreReorders counts S5 orders broken only through a frame a node
	// got from a snapshot (the documented limit of ResetNamespace).
	restoreReorders int
	// Votes seen on the wire, per frame (by frame ID): the validators that sent a commit
	// (or were named in a certificate) and those that sent a cancel; and
	// the blocks some node applied. A validator that votes both ways on a
	// frame that is applied broke its word (S1): a vote never changes, also
	// across restarts. (Both ways on a block never applied is harmless: a
	// frame at a position another frame took.)
	commitVoters, cancelVoters map[[idLen]byte]uint64
	appliedBlocks              map[[idLen]byte]bool
	// blockFrames: the frames of each block seen on the wire (and of each
	// frame alone); pendingVotes: votes seen for blocks not seen yet.
	blockFrames   map[[idLen]byte][][idLen]byte
	pendingVotes  map[[idLen]byte][]wireVote
	flipsReported int
	violations    []string
	changed       chan struct{} // closed and replaced on every apply
	undecoded     int           // delivered quasar messages that failed to decode
	restores      []string      // namespaces restored from a peer after OnBehind
	badCerts      int           // certificates below quorum reported (capped)
	applies       int           // frames applied, all nodes
}

// replica is one node's state as its handler built it.
type replica struct {
	data    map[string]string
	log     []appliedFrame // in apply order
	byToken map[string]int // token -> index in log
	bySlot  map[nsRef]int
	heads   map[spaceKey]uint64 // highest Seq held per namespace
	// started: per proposer, the ops this node applied (not restored),
	// sorted by start: what the S5 check looks up when an earlier op's
	// frame arrives.
	started [][]*checkedOp
}

type appliedFrame struct {
	token    string
	slot     nsRef
	restored bool // copied from a peer's snapshot (restore), not applied
}

// wireOrder is what a frame's proposal orders it after: the accepted
// frame at its chain position and the frames named by its after list.
type wireOrder struct {
	id    [idLen]byte // the proposal's block ID
	prev  nsRef       // seq 0: the namespace's first frame
	after []nsRef
}

// checkedOp is one Propose call.
type checkedOp struct {
	node       int
	token      string
	frame      Frame // as proposed: Seq 0 unless explicit
	start, end int64
	done       bool
	decision   Decision
	err        error
}

func newChecker(ids []string, q int) *checker {
	c := &checker{
		n: len(ids), q: q, ids: ids,
		byID:        map[string]int{},
		byNID:       map[nodeID]int{},
		byToken:     map[string]*checkedOp{},
		slots:       map[nsRef]string{},
		slotBlock:   map[nsRef][idLen]byte{},
		orders:      map[string][]wireOrder{},
		soleWriters: map[spaceKey]bool{},
		retried:     map[string][]*checkedOp{},
		changed:     make(chan struct{}),

		commitVoters:  map[[idLen]byte]uint64{},
		cancelVoters:  map[[idLen]byte]uint64{},
		appliedBlocks: map[[idLen]byte]bool{},
		blockFrames:   map[[idLen]byte][][idLen]byte{},
		pendingVotes:  map[[idLen]byte][]wireVote{},
	}
	for i, id := range ids {
		c.byID[id] = i
		c.byNID[validatorNodeID(id)] = i
		c.nodes = append(c.nodes, &replica{
			data: map[string]string{}, byToken: map[string]int{}, bySlot: map[nsRef]int{}, heads: map[spaceKey]uint64{},
			started: make([][]*checkedOp, len(ids)),
		})
		c.delivered = append(c.delivered, map[[idLen]byte]uint64{})
	}
	return c
}

func (c *checker) violatef(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

// soleWriter declares that only one node proposes into (org, ns), always
// with Seq 0: none of its Propose calls may return Reject (S6).
func (c *checker) soleWriter(org, ns string) {
	c.mu.Lock()
	c.soleWriters[spaceKey{org, ns}] = true
	c.mu.Unlock()
}

// onDeliver is the MemoryHub.OnDeliver hook (the simulator calls it too):
// it records the commit votes that reach each node, in vote records and in
// certificates, and the order each proposal gives its frame.
func (c *checker) onDeliver(from, to, kind string, payload []byte) {
	if kind != quasarKind {
		return
	}
	recs, err := decodeMessage(payload, 0, nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.undecoded++ // the driver never sends these; reported by check
		return
	}
	node, ok := c.byID[to]
	if !ok {
		return
	}
	prepareRecords(recs, nil)
	for i := range recs {
		r := &recs[i]
		switch r.typ {
		case recBlock:
			for k, p := range r.blk.slots() {
				c.recordOrder(r.ids[k], p)
			}
			c.learnBlock(r.id, r.ids)
		case recVote:
			v, ok := c.byNID[r.vote.voter]
			if !ok {
				continue
			}
			wv := wireVote{node: node, voter: v, count: r.vote.count, bits: bytes.Clone(r.vote.bits)}
			if frames, ok := c.blockFrames[r.vote.block]; ok {
				c.countWireVote(wv, frames)
			} else {
				c.pendingVotes[r.vote.block] = append(c.pendingVotes[r.vote.block], wv)
			}
		case recCertificate:
			id := r.id
			c.recordOrder(id, &r.prop)
			c.learnBlock(singleBlockID(&id), [][idLen]byte{id})
			var voters uint64
			for k := range r.voters.len() {
				if v, ok := c.byNID[r.voters.at(k)]; ok {
					voters |= 1 << v
				}
			}
			c.delivered[node][id] |= voters
			c.commitVoters[id] |= voters
			c.checkFlips(id)
			// A certificate claims the frame was accepted: an honest node
			// sends one only with the commit votes of a quorum.
			if k := bits.OnesCount64(voters); k < c.q && c.badCerts < 20 {
				c.badCerts++
				c.violatef("S2: %s sent %s a certificate for %s/%s seq %d (prev %d) naming %d validators, quorum %d",
					from, to, r.prop.frame.OrgID, r.prop.frame.Namespace, r.prop.frame.Seq, r.prop.prev, k, c.q)
			}
		}
	}
}

// wireVote is a vote record seen on the wire: voter's votes on a block,
// delivered to node.
type wireVote struct {
	node, voter int
	count       int
	bits        []byte
}

// learnBlock records which frames block id carries (and the block of each
// of them alone), and counts the votes seen for it before.
func (c *checker) learnBlock(id [idLen]byte, frames [][idLen]byte) {
	learn := func(id [idLen]byte, frames [][idLen]byte) {
		if _, ok := c.blockFrames[id]; ok {
			return
		}
		c.blockFrames[id] = frames
		for _, wv := range c.pendingVotes[id] {
			c.countWireVote(wv, frames)
		}
		delete(c.pendingVotes, id)
	}
	learn(id, slices.Clone(frames))
	for _, f := range frames {
		learn(singleBlockID(&f), [][idLen]byte{f})
	}
}

// countWireVote records the votes of wv on the frames of its block.
func (c *checker) countWireVote(wv wireVote, frames [][idLen]byte) {
	if wv.count != len(frames) {
		return // a node ignores it too
	}
	for i, f := range frames {
		switch voteBits(wv.bits, i) {
		case voteCommit:
			c.delivered[wv.node][f] |= 1 << wv.voter
			c.commitVoters[f] |= 1 << wv.voter
		case voteCancel:
			c.cancelVoters[f] |= 1 << wv.voter
		default:
			continue
		}
		c.checkFlips(f)
	}
}

// checkFlips reports validators that voted both ways on block, once some
// node applied it (see checker.commitVoters).
func (c *checker) checkFlips(block [idLen]byte) {
	flips := c.commitVoters[block] & c.cancelVoters[block]
	if flips == 0 || !c.appliedBlocks[block] || c.flipsReported >= 20 {
		return
	}
	c.flipsReported++
	var who []string
	for i := range c.n {
		if flips&(1<<i) != 0 {
			who = append(who, c.ids[i])
		}
	}
	c.violatef("S1: %v voted both commit and cancel on block %x, which was applied", who, block[:4])
}

// recordOrder keeps what proposal p (block id) orders its frame after, the
// first time the block is seen: every copy of it carries the same.
func (c *checker) recordOrder(id [idLen]byte, p *proposal) {
	token := string(p.frame.Value)
	if slices.ContainsFunc(c.orders[token], func(o wireOrder) bool { return o.id == id }) {
		return
	}
	f := &p.frame
	o := wireOrder{id: id, prev: nsRef{strings.Clone(f.OrgID), strings.Clone(f.Namespace), p.prev}}
	for a := range p.after.all() {
		o.after = append(o.after, nsRef{strings.Clone(a.org), strings.Clone(a.ns), a.seq})
	}
	c.orders[token] = append(c.orders[token], o)
}

// orderedAfter reports whether the proposals seen on the wire order frame
// y after frame x: a path of chain positions and after lists leads from y
// back to x. skip, if not nil, says which frames the path may not cross.
func (c *checker) orderedAfter(y, x string, skip func(token string) bool) bool {
	seen := map[string]bool{y: true}
	type step struct {
		token string
		slot  nsRef // where it was applied (zero for y)
	}
	stack := []step{{token: y}}
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		// A frame proposed more than once (retried, or by several nodes)
		// is ordered by the proposal that was accepted, when the caller
		// told which (appliedBlock); else by any of its proposals.
		id, known := c.slotBlock[t.slot]
		var next []nsRef
		for _, o := range c.orders[t.token] {
			if known && o.id != id {
				continue
			}
			next = append(next, o.after...)
			if o.prev.seq > 0 {
				next = append(next, o.prev)
			}
		}
		for _, ref := range next {
			d, ok := c.slots[ref]
			if !ok || seen[d] {
				continue
			}
			if d == x {
				return true
			}
			seen[d] = true
			if skip == nil || !skip(d) {
				stack = append(stack, step{d, ref})
			}
		}
	}
	return false
}

// applied records that node applied f, checking S1 to S5 at once.
func (c *checker) applied(node int, f Frame) { c.appliedBlock(node, f, nil) }

// appliedBlock is applied, for a caller that knows which block the node
// accepted the frame as (nil: any block of the frame may be the one).
func (c *checker) appliedBlock(node int, f Frame, block *[idLen]byte) {
	token := string(f.Value)
	slot := nsRef{f.OrgID, f.Namespace, f.Seq}
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[node]
	name := c.ids[node]
	// The votes that count are those for a block of the frame: with q-1
	// other validators' commits delivered here for one of them.
	others := 0
	for _, o := range c.orders[token] {
		if block == nil || *block == o.id {
			others = max(others, bits.OnesCount64(c.delivered[node][o.id]&^(1<<node)))
		}
	}
	if others < c.q-1 {
		c.violatef("S2: %s applied %s/%s seq %d (token %q) having been delivered commit votes of %d other validators for any block of it, quorum %d needs %d",
			name, f.OrgID, f.Namespace, f.Seq, token, others, c.q, c.q-1)
	}
	if i, dup := rep.byToken[token]; dup {
		c.violatef("S3: %s applied token %q twice (first at position %d, again at %d)", name, token, i, len(rep.log))
	}
	if i, dup := rep.bySlot[slot]; dup {
		c.violatef("S3: %s applied slot %s/%s seq %d twice (token %q at position %d, then %q)",
			name, f.OrgID, f.Namespace, f.Seq, rep.log[i].token, i, token)
	}
	if block != nil {
		if !c.appliedBlocks[*block] {
			c.appliedBlocks[*block] = true
			c.checkFlips(*block)
		}
		if id, ok := c.slotBlock[slot]; ok && id != *block {
			c.violatef("S4: slot %s/%s seq %d holds two blocks (token %q, on %s the other)", f.OrgID, f.Namespace, f.Seq, token, name)
		}
		c.slotBlock[slot] = *block
	}
	if other, taken := c.slots[slot]; taken && other != token {
		c.violatef("S4: slot %s/%s seq %d holds two frames: %q and, on %s, %q", f.OrgID, f.Namespace, f.Seq, other, name, token)
	} else if !taken {
		c.slots[slot] = token
	}
	op := c.byToken[token]
	if c.retried[token] != nil {
		op = nil // checked once its attempts ended (see check); no order is promised
	}
	if op != nil && op.done && op.decision == DecisionReject {
		c.violatef("S1: %s applied %q, whose Propose on %s returned Reject (%v)", name, token, c.ids[op.node], op.err)
	}
	if op != nil {
		c.checkOrderAt(rep, name, op)
	}
	rep.byToken[token] = len(rep.log)
	rep.bySlot[slot] = len(rep.log)
	rep.log = append(rep.log, appliedFrame{token: token, slot: slot})
	if op != nil {
		started := rep.started[op.node]
		i := sort.Search(len(started), func(i int) bool { return started[i].start > op.start })
		rep.started[op.node] = slices.Insert(started, i, op)
	}
	sk := spaceKey{f.OrgID, f.Namespace}
	rep.heads[sk] = max(rep.heads[sk], f.Seq)
	k := string(f.FrameKey())
	switch f.Op {
	case "put":
		rep.data[k] = token
	case "del":
		delete(rep.data, k)
	}
	c.applies++
	close(c.changed)
	c.changed = make(chan struct{})
}

// checkOrderAt checks S5 as rep applies x's frame: no frame of x's
// proposer whose Propose began after x's returned Accept may have been
// applied here already (unless the proposals order it after x only through
// frames this node got from a snapshot: the documented limit).
func (c *checker) checkOrderAt(rep *replica, name string, x *checkedOp) {
	if !x.done || x.decision != DecisionAccept {
		return // x's Propose has not returned Accept (yet): nothing began after it
	}
	started := rep.started[x.node]
	i := sort.Search(len(started), func(i int) bool { return started[i].start > x.end })
	for _, y := range started[i:] {
		if c.retried[y.token] != nil {
			continue
		}
		restored := func(t string) bool {
			at, ok := rep.byToken[t]
			return ok && rep.log[at].restored
		}
		switch {
		case !c.orderedAfter(y.token, x.token, nil):
			c.violatef("S5: %s's proposal of %q does not order it after %q, whose Propose returned Accept before its Propose began (%s applied it first)",
				c.ids[x.node], y.token, x.token, name)
		case c.orderedAfter(y.token, x.token, restored):
			c.violatef("S5: %s applied %q before %q, but %s's Propose of the latter returned Accept before the former's began, and the proposals order them",
				name, y.token, x.token, c.ids[x.node])
		default:
			// Every path of the order runs through a frame this node got
			// from a snapshot, not from replication: the documented limit
			// of ResetNamespace (S5 across a partial restore).
			c.restoreReorders++
		}
	}
}

// restoreFrom does what an application does when OnBehind tells it that
// node fell behind the retention window in namespace (org, ns) at the
// driver's head from: it restores the namespace from a snapshot taken at a
// Seq of at least from, here the replica of the node furthest ahead in it,
// and returns the Seq the snapshot was taken at, for ResetNamespace. It
// returns false when no replica is there yet (the driver's head can be
// ahead of every replica's applied state): try again later. The frames it
// copies are marked restored: the driver must not apply any of them
// afterwards (an S3 violation), and S5 does not constrain them (the driver
// may order frames of other namespaces before a lost one).
func (c *checker) restoreFrom(node int, org, ns string, from uint64) (uint64, bool) {
	key := spaceKey{org, ns}
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[node]
	donor, head := -1, rep.heads[key] // a donor is ahead of this replica…
	if from > 0 {
		head = max(head, from-1) // …and holds at least the driver's head
	}
	for i, d := range c.nodes {
		if i != node && d.heads[key] > head {
			donor, head = i, d.heads[key]
		}
	}
	if donor < 0 {
		return 0, false
	}
	d := c.nodes[donor]
	prefix := org + "/" + ns + "/"
	maps.DeleteFunc(rep.data, func(k, _ string) bool { return strings.HasPrefix(k, prefix) })
	for k, v := range d.data {
		if strings.HasPrefix(k, prefix) {
			rep.data[k] = v
		}
	}
	had := rep.heads[key]
	for _, a := range d.log {
		if a.slot.org != org || a.slot.ns != ns || a.slot.seq <= had {
			continue
		}
		if _, dup := rep.byToken[a.token]; dup {
			continue
		}
		rep.byToken[a.token] = len(rep.log)
		rep.bySlot[a.slot] = len(rep.log)
		rep.log = append(rep.log, appliedFrame{token: a.token, slot: a.slot, restored: true})
	}
	c.restores = append(c.restores, fmt.Sprintf("%s restored %s/%s from %s: applied up to seq %d, driver head %d, snapshot at %d (log position %d)",
		c.ids[node], org, ns, c.ids[donor], had, from, head, len(rep.log)))
	rep.heads[key] = head
	close(c.changed)
	c.changed = make(chan struct{})
	return head, true
}

// heads returns the highest Seq node's replica holds, per namespace.
func (c *checker) heads(node int) map[spaceKey]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.nodes[node].heads)
}

// appliedAs reports whether node applied f (not restored it from a
// snapshot) at f's slot before: a frame fed to it again after a restart.
// A different frame there is a violation.
func (c *checker) appliedAs(node int, f Frame) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[node]
	i, ok := rep.bySlot[nsRef{f.OrgID, f.Namespace, f.Seq}]
	if !ok || rep.log[i].restored {
		return false
	}
	if a := rep.log[i]; a.token != string(f.Value) {
		c.violatef("S4: %s was fed %s/%s seq %d as %q after a restart, having applied %q there",
			c.ids[node], f.OrgID, f.Namespace, f.Seq, f.Value, a.token)
	}
	return true
}

// begin records the start of a Propose of f by node; f.Value must be a
// token no other Propose uses.
func (c *checker) begin(node int, f Frame) *checkedOp {
	op := &checkedOp{node: node, token: string(f.Value), frame: f}
	c.mu.Lock()
	if _, dup := c.byToken[op.token]; dup {
		c.violatef("workload: token %q proposed twice", op.token)
	}
	c.ops = append(c.ops, op)
	c.byToken[op.token] = op
	op.start = c.clock.Add(1)
	c.mu.Unlock()
	return op
}

// maxHead returns the highest Seq any replica applied in (org, ns).
func (c *checker) maxHead(org, ns string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var head uint64
	for _, rep := range c.nodes {
		head = max(head, rep.heads[spaceKey{org, ns}])
	}
	return head
}

// checkedRead is a Barrier, then a read of the node's own state: when it
// began, the frames of its namespace it must see.
type checkedRead struct {
	node   int
	ns     spaceKey
	tokens []string // frames of ns whose Propose returned Accept before the read began
}

// beginRead records the start of a Barrier of node on (org, ns).
func (c *checker) beginRead(node int, org, ns string) *checkedRead {
	c.mu.Lock()
	defer c.mu.Unlock()
	rd := &checkedRead{node: node, ns: spaceKey{org, ns}}
	for _, op := range c.ops {
		if op.done && op.decision == DecisionAccept && op.frame.OrgID == org && op.frame.Namespace == ns {
			rd.tokens = append(rd.tokens, op.token)
		}
	}
	c.clock.Add(1)
	return rd
}

// endRead checks a Barrier that returned nil: the node applied (or got
// from a snapshot) every frame its namespace had when the read began, so
// that a read of its state is linearizable.
func (c *checker) endRead(rd *checkedRead) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[rd.node]
	for _, token := range rd.tokens {
		if _, ok := rep.byToken[token]; !ok {
			c.violatef("read: %s's Barrier on %s/%s returned before it applied %q, whose Propose returned Accept before the Barrier began",
				c.ids[rd.node], rd.ns.org, rd.ns.ns, token)
		}
	}
}

// beginShared records the start of a Propose by node of a frame that
// other Propose calls propose too, byte for byte (same token, same
// explicit Seq): a retry after a timeout, or several nodes writing the
// same frame. The frame may win at another chain position than an earlier
// attempt, where no vote of that attempt may count (S4). S1 holds for the
// token as a whole (applied nowhere if every attempt returned Reject); S5
// does not constrain it.
func (c *checker) beginShared(node int, f Frame) *checkedOp {
	op := &checkedOp{node: node, token: string(f.Value), frame: f}
	c.mu.Lock()
	defer c.mu.Unlock()
	if first := c.byToken[op.token]; first != nil {
		if !reflect.DeepEqual(first.frame, f) || f.Seq == 0 {
			c.violatef("workload: %q proposed again as a different frame, or without an explicit Seq", op.token)
			return op
		}
		if c.retried[op.token] == nil {
			c.retried[op.token] = []*checkedOp{first}
		}
	} else {
		c.byToken[op.token] = op
	}
	c.retried[op.token] = append(c.retried[op.token], op)
	c.ops = append(c.ops, op)
	op.start = c.clock.Add(1)
	return op
}

// end records the outcome of op and checks it against the contract, S1
// and S6.
func (c *checker) end(op *checkedOp, d Decision, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	op.end, op.done, op.decision, op.err = c.clock.Add(1), true, d, err
	name := c.ids[op.node]
	switch d {
	case DecisionAccept:
		if err != nil {
			c.violatef("contract: %s Propose %q: Accept with error %v", name, op.token, err)
		}
		if _, ok := c.nodes[op.node].byToken[op.token]; !ok {
			c.violatef("contract: %s Propose %q returned Accept before its handlers applied the frame", name, op.token)
		}
	case DecisionReject:
		if !errors.Is(err, ErrRejected) {
			c.violatef("contract: %s Propose %q: Reject with error %v, want ErrRejected", name, op.token, err)
		}
		for i, rep := range c.nodes {
			if _, ok := rep.byToken[op.token]; ok && c.retried[op.token] == nil {
				c.violatef("S1: %s applied %q, whose Propose on %s returned Reject (%v)", c.ids[i], op.token, name, err)
			}
		}
		if f := op.frame; f.Seq == 0 && c.soleWriters[spaceKey{f.OrgID, f.Namespace}] {
			c.violatef("S6: %s, the only writer of %s/%s, had %q rejected: %v", name, f.OrgID, f.Namespace, op.token, err)
		}
	case DecisionTimeout:
		if !errors.Is(err, ErrTimeout) {
			c.violatef("contract: %s Propose %q: Timeout with error %v, want ErrTimeout", name, op.token, err)
		}
	default:
		c.violatef("contract: %s Propose %q: unexpected decision %v (%v)", name, op.token, d, err)
	}
}

// convergedLocked reports why the replicas have not converged yet ("" when
// they have): a frame whose Propose returned Accept is missing somewhere, or
// two nodes applied different frames. c.mu must be held.
func (c *checker) convergedLocked() string {
	for _, op := range c.ops {
		if !op.done || op.decision != DecisionAccept {
			continue
		}
		for i, rep := range c.nodes {
			if _, ok := rep.byToken[op.token]; !ok {
				return fmt.Sprintf("%s lacks accepted frame %q (proposed by %s)", c.ids[i], op.token, c.ids[op.node])
			}
		}
	}
	ref := c.nodes[0]
	for i, rep := range c.nodes[1:] {
		if len(rep.log) != len(ref.log) {
			return fmt.Sprintf("%s applied %d frames, %s %d", c.ids[i+1], len(rep.log), c.ids[0], len(ref.log))
		}
		for tok := range rep.byToken {
			if _, ok := ref.byToken[tok]; !ok {
				return fmt.Sprintf("%s applied %q, %s did not", c.ids[i+1], tok, c.ids[0])
			}
		}
	}
	return ""
}

// converged is convergedLocked; when the replicas have converged, it also
// compares them (compareReplicasLocked).
func (c *checker) converged() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	why := c.convergedLocked()
	if why == "" {
		c.compareReplicasLocked()
	}
	return why
}

// compareReplicasLocked records a violation for every node whose state or
// per-namespace apply order differs from node 0's. Call it only when the
// replicas have converged. c.mu must be held.
func (c *checker) compareReplicasLocked() {
	ref := c.nodes[0]
	refOrder := ref.nsOrder()
	for i, rep := range c.nodes[1:] {
		if !maps.Equal(ref.data, rep.data) {
			c.violatef("replicas: state of %s differs from %s: %s", c.ids[i+1], c.ids[0], mapDiff(ref.data, rep.data))
		}
		order := rep.nsOrder()
		for ns, seqs := range refOrder {
			if !slices.Equal(seqs, order[ns]) {
				c.violatef("replicas: %s applied namespace %s as %v, %s as %v", c.ids[i+1], ns, order[ns], c.ids[0], seqs)
			}
		}
	}
}

func (rep *replica) nsOrder() map[string][]string {
	out := map[string][]string{}
	for _, a := range rep.log {
		k := a.slot.org + "/" + a.slot.ns
		out[k] = append(out[k], a.token)
	}
	return out
}

func mapDiff(a, b map[string]string) string {
	var diffs []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", k, v, w))
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing vs %q", k, w))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("… %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

// check returns every violation found so far, with the checks that need
// the whole history: messages that failed to decode, and S1 for retried
// frames (every attempt returned Reject, yet the frame was applied).
func (c *checker) check() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := slices.Clone(c.violations)
	if c.undecoded > 0 {
		v = append(v, fmt.Sprintf("wire: %d delivered messages failed to decode", c.undecoded))
	}
	for token, ops := range c.retried {
		if !slices.ContainsFunc(ops, func(op *checkedOp) bool { return !op.done || op.decision != DecisionReject }) {
			for i, rep := range c.nodes {
				if _, ok := rep.byToken[token]; ok {
					v = append(v, fmt.Sprintf("S1: %s applied %q, whose %d Propose attempts all returned Reject", c.ids[i], token, len(ops)))
				}
			}
		}
	}
	return v
}

// stats summarizes the run for the log.
func (c *checker) stats() (proposed, accepted, rejected, timedOut, applied, restores int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	restores = len(c.restores)
	for _, op := range c.ops {
		proposed++
		switch op.decision {
		case DecisionAccept:
			accepted++
		case DecisionReject:
			rejected++
		case DecisionTimeout:
			timedOut++
		}
	}
	return proposed, accepted, rejected, timedOut, len(c.nodes[0].log), restores
}
