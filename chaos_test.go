package replication

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// This file is the chaos test of the Quasar driver (issue "Prove it under
// faults"): a checker that records what every node applied and what every
// Propose returned, and verifies SPEC §4 (S1–S5) on it, and TestChaos, a
// seeded randomized workload over 3, 5 and 7 validators under drops,
// duplicates, delays, partitions and disconnects.

// chaosChecker records, per node, every applied frame (it is a Subscribe
// handler that applies puts and dels to a per-node map), every Propose and
// its outcome, and every commit vote delivered to each node (via
// MemoryHub.OnDeliver), and checks the invariants of SPEC §4:
//
//   - S1 agreement: a frame whose Propose returned DecisionReject is applied
//     nowhere (frames are identified by a token unique to each Propose,
//     carried in Frame.Value).
//   - S2 quorum: no node sends a certificate (a frame it accepted, with the
//     voters whose commits decided it) naming fewer than q validators; and
//     when a node applies a frame, it was delivered commit votes (vote
//     records, or voters listed in certificates) of at least q-1
//     validators other than itself; its own vote is never delivered to it,
//     so q-1 others plus itself is the quorum. Checked at apply time, as the
//     hook runs before the handler that could count a vote.
//   - S3 exactly once: no node applies a token, or a (org, ns, seq) slot,
//     twice; after the faults are healed every node applies every frame
//     whose Propose returned DecisionAccept (waitConverged).
//   - S4 one frame per slot: across the cluster, at most one distinct frame
//     is applied per (org, ns, seq).
//   - S5 proposer order: if a node's Propose(x) returned DecisionAccept
//     before its Propose(y) began (start and end stamps of one atomic
//     counter), every node that applied both applied x first. Only accepted
//     x are constrained: a timed-out Propose has an unknown outcome and may
//     be accepted later, after frames proposed meanwhile. A pair applied
//     out of order is traced through the order the proposals gave on the
//     wire (chain positions and after lists, recorded by onDeliver): it is
//     a violation when y's proposals do not order it after x at all, or
//     when they do through frames the node applied itself; only when every
//     such path crosses a frame the node got from a snapshot is it the
//     documented limit of ResetNamespace, counted and reported in the log.
//   - Replicas identical: at the converged instant every node applied the
//     same frames, in the same order per namespace, and holds the same map.
//   - Contract: Propose returns Accept only after the proposer's handlers
//     ran, and each decision comes with its documented error.
//
// Violations are collected, not reported at once, so that a unit test can
// feed the checker synthetic histories (TestChecker_DetectsViolations).
type chaosChecker struct {
	n, q  int
	ids   []string
	byID  map[string]int
	byNID map[nodeID]int
	clock atomic.Int64

	mu        sync.Mutex
	nodes     []*chaosReplica
	delivered []map[blockAt]uint64 // per receiving node: bitmask of delivered commit voters, per block and position
	ops       []*chaosOp
	byToken   map[string]*chaosOp
	slots     map[nsRef]string // slot -> token applied there (S4)
	// orders: per token, the frames its proposal orders it after, as seen
	// on the wire: the chain position it extends (prev) and its after list.
	// S5 violations are traced through them (see excusedByRestore).
	orders map[string]chaosOrder
	// restoreReorders counts S5 orders broken only through a frame a node
	// got from a snapshot (the documented limit of ResetNamespace).
	restoreReorders int
	violations      []string
	changed         chan struct{} // closed and replaced on every apply
	undecoded       int           // delivered quasar messages that failed to decode
	restores        []string      // namespaces restored from a peer after OnBehind
	badCerts        int           // certificates below quorum reported (capped)
	checkedOps      int           // len(ops) when check last ran
}

// chaosReplica is one node's state as its handler built it.
type chaosReplica struct {
	data    map[string]string
	log     []chaosApplied // in apply order
	byToken map[string]int // token -> index in log
	bySlot  map[nsRef]int
	heads   map[spaceKey]uint64 // highest Seq held per namespace
}

type chaosApplied struct {
	token    string
	slot     nsRef
	restored bool // copied from a peer's snapshot (restore), not applied
}

// chaosOrder is what a frame's proposal orders it after: the accepted
// frame at its chain position and the frames named by its after list.
type chaosOrder struct {
	prev  nsRef // seq 0: the namespace's first frame
	after []nsRef
}

// chaosOp is one Propose call.
type chaosOp struct {
	node       int
	token      string
	frame      Frame // as proposed: Seq 0 unless explicit
	start, end int64
	done       bool
	decision   Decision
	err        error
}

func newChaosChecker(ids []string, q int) *chaosChecker {
	c := &chaosChecker{
		n: len(ids), q: q, ids: ids,
		byID:    map[string]int{},
		byNID:   map[nodeID]int{},
		byToken: map[string]*chaosOp{},
		slots:   map[nsRef]string{},
		orders:  map[string]chaosOrder{},
		changed: make(chan struct{}),
	}
	for i, id := range ids {
		c.byID[id] = i
		c.byNID[validatorNodeID(id)] = i
		c.nodes = append(c.nodes, &chaosReplica{data: map[string]string{}, byToken: map[string]int{}, bySlot: map[nsRef]int{}, heads: map[spaceKey]uint64{}})
		c.delivered = append(c.delivered, map[blockAt]uint64{})
	}
	return c
}

func (c *chaosChecker) violatef(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

// onDeliver is the MemoryHub.OnDeliver hook: it records the commit votes
// that reach each node, in vote records and in certificates.
func (c *chaosChecker) onDeliver(from, to, kind string, payload []byte) {
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
	seen := c.delivered[node]
	for i := range recs {
		r := &recs[i]
		if r.typ == recProposal || r.typ == recCertificate {
			c.recordOrder(&r.prop)
		}
		switch r.typ {
		case recVote:
			if r.vote.typ != voteCommit {
				continue
			}
			if v, ok := c.byNID[r.vote.voter]; ok {
				seen[blockAt{r.vote.block, r.vote.prev}] |= 1 << v
			}
		case recCertificate:
			id, _ := r.prop.frame.blockID(nil)
			var voters uint64
			for k := range r.voters.len() {
				if v, ok := c.byNID[r.voters.at(k)]; ok {
					voters |= 1 << v
				}
			}
			seen[blockAt{id, r.prop.prev}] |= voters
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

// recordOrder keeps what p orders its frame after (the first time the
// frame is seen: every copy of a proposal carries the same).
func (c *chaosChecker) recordOrder(p *proposal) {
	token := string(p.frame.Value)
	if _, ok := c.orders[token]; ok {
		return
	}
	f := &p.frame
	o := chaosOrder{prev: nsRef{strings.Clone(f.OrgID), strings.Clone(f.Namespace), p.prev}}
	for a := range p.after.all() {
		o.after = append(o.after, nsRef{strings.Clone(a.org), strings.Clone(a.ns), a.seq})
	}
	c.orders[token] = o
}

// orderedAfter reports whether the proposals seen on the wire order frame
// y after frame x: a path of chain positions and after lists leads from y
// back to x. skip, if not nil, says which frames the path may not cross.
func (c *chaosChecker) orderedAfter(y, x string, skip func(token string) bool) bool {
	seen := map[string]bool{y: true}
	stack := []string{y}
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		o, ok := c.orders[t]
		if !ok {
			continue // never seen on the wire: cannot be traced
		}
		next := o.after
		if o.prev.seq > 0 {
			next = append(slices.Clip(next), o.prev)
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
				stack = append(stack, d)
			}
		}
	}
	return false
}

// handler returns node's Subscribe handler.
func (c *chaosChecker) handler(node int) Handler {
	return func(_ context.Context, f Frame) error {
		c.applied(node, f)
		return nil
	}
}

// applied records that node applied f, checking S2, S3 and S4 at once.
func (c *chaosChecker) applied(node int, f Frame) {
	id, _ := f.blockID(nil)
	token := string(f.Value)
	slot := nsRef{f.OrgID, f.Namespace, f.Seq}
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[node]
	name := c.ids[node]
	// The votes that count are those cast at the position the frame's
	// proposal named (tokens are unique: one proposal per frame).
	at := blockAt{id, c.orders[token].prev.seq}
	if others := bits.OnesCount64(c.delivered[node][at] &^ (1 << node)); others < c.q-1 {
		c.violatef("S2: %s applied %s/%s seq %d (token %q) having been delivered commit votes of %d other validators, quorum %d needs %d",
			name, f.OrgID, f.Namespace, f.Seq, token, others, c.q, c.q-1)
	}
	if i, dup := rep.byToken[token]; dup {
		c.violatef("S3: %s applied token %q twice (first at position %d, again at %d)", name, token, i, len(rep.log))
	}
	if i, dup := rep.bySlot[slot]; dup {
		c.violatef("S3: %s applied slot %s/%s seq %d twice (token %q at position %d, then %q)",
			name, f.OrgID, f.Namespace, f.Seq, rep.log[i].token, i, token)
	}
	if other, taken := c.slots[slot]; taken && other != token {
		c.violatef("S4: slot %s/%s seq %d holds two frames: %q and, on %s, %q", f.OrgID, f.Namespace, f.Seq, other, name, token)
	} else if !taken {
		c.slots[slot] = token
	}
	rep.byToken[token] = len(rep.log)
	rep.bySlot[slot] = len(rep.log)
	rep.log = append(rep.log, chaosApplied{token: token, slot: slot})
	sk := spaceKey{f.OrgID, f.Namespace}
	rep.heads[sk] = max(rep.heads[sk], f.Seq)
	k := string(f.FrameKey())
	switch f.Op {
	case "put":
		rep.data[k] = token
	case "del":
		delete(rep.data, k)
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// restore does what an application does when OnBehind tells it that node
// fell behind the retention window in namespace (org, ns) at the driver's
// head from: it restores the namespace from a snapshot taken at a Seq of at
// least from, here the replica of the node furthest ahead in it (waiting up
// to within for one to get there: the driver's head can be ahead of every
// replica's applied state), and returns the Seq the snapshot was taken at,
// for ResetNamespace. The frames it copies are marked restored: the driver
// must not apply any of them afterwards (an S3 violation), and S5 does not
// constrain them (the driver may order frames of other namespaces before a
// lost one).
func (c *chaosChecker) restore(node int, org, ns string, from uint64, within time.Duration) (uint64, bool) {
	key := spaceKey{org, ns}
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := c.nodes[node]
	var donor int
	var head uint64
	for {
		donor, head = -1, max(rep.heads[key], from-1)
		for i, d := range c.nodes {
			if i != node && d.heads[key] > head {
				donor, head = i, d.heads[key]
			}
		}
		if donor >= 0 {
			break
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
			c.mu.Lock()
		case <-deadline.C:
			c.mu.Lock()
			return 0, false // nobody got there: nothing to restore from
		}
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
		rep.log = append(rep.log, chaosApplied{token: a.token, slot: a.slot, restored: true})
	}
	c.restores = append(c.restores, fmt.Sprintf("%s restored %s/%s from %s: applied up to seq %d, driver head %d, snapshot at %d (log position %d)",
		c.ids[node], org, ns, c.ids[donor], had, from, head, len(rep.log)))
	rep.heads[key] = head
	close(c.changed)
	c.changed = make(chan struct{})
	return head, true
}

// begin records the start of a Propose of f by node; f.Value must be a
// token no other Propose uses.
func (c *chaosChecker) begin(node int, f Frame) *chaosOp {
	op := &chaosOp{node: node, token: string(f.Value), frame: f}
	c.mu.Lock()
	if _, dup := c.byToken[op.token]; dup {
		c.violatef("workload: token %q proposed twice", op.token)
	}
	c.ops = append(c.ops, op)
	c.byToken[op.token] = op
	c.mu.Unlock()
	op.start = c.clock.Add(1)
	return op
}

// end records the outcome of op and checks it against the contract.
func (c *chaosChecker) end(op *chaosOp, d Decision, err error) {
	op2end := c.clock.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	op.end, op.done, op.decision, op.err = op2end, true, d, err
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
	case DecisionTimeout:
		if !errors.Is(err, ErrTimeout) {
			c.violatef("contract: %s Propose %q: Timeout with error %v, want ErrTimeout", name, op.token, err)
		}
	default:
		c.violatef("contract: %s Propose %q: unexpected decision %v (%v)", name, op.token, d, err)
	}
}

// propose runs one recorded Propose.
func (c *chaosChecker) propose(r Replicator, node int, f Frame) Decision {
	op := c.begin(node, f)
	d, err := r.Propose(context.Background(), f)
	c.end(op, d, err)
	return d
}

// convergedLocked reports why the replicas have not converged yet ("" when
// they have): a frame whose Propose returned Accept is missing somewhere, or
// two nodes applied different frames. c.mu must be held.
func (c *chaosChecker) convergedLocked() string {
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

// compareReplicasLocked records a violation for every node whose state or
// per-namespace apply order differs from node 0's. Call it only when the
// replicas have converged. c.mu must be held.
func (c *chaosChecker) compareReplicasLocked() {
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

func (rep *chaosReplica) nsOrder() map[string][]string {
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

// waitConverged waits until the replicas converged (see convergedLocked),
// then compares them at that instant. It returns "" on success, else why
// they did not converge within the deadline.
func (c *chaosChecker) waitConverged(within time.Duration) string {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		why, ch := c.convergedLocked(), c.changed
		if why == "" {
			c.compareReplicasLocked()
		}
		c.mu.Unlock()
		if why == "" {
			return ""
		}
		select {
		case <-ch:
		case <-deadline.C:
			return why
		}
	}
}

// check runs the checks that need the whole history (S1, S5) and returns
// every violation found so far.
func (c *chaosChecker) check() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The whole-history checks run once per history length, so that asking
	// again (for a failure message) does not report them twice.
	if c.checkedOps == len(c.ops) && c.checkedOps > 0 {
		return slices.Clone(c.violations)
	}
	c.checkedOps = len(c.ops)
	for _, op := range c.ops {
		if op.done && op.decision == DecisionReject {
			for i, rep := range c.nodes {
				if _, ok := rep.byToken[op.token]; ok {
					c.violatef("S1: %s applied %q, whose Propose on %s returned Reject (%v)", c.ids[i], op.token, c.ids[op.node], op.err)
				}
			}
		}
	}
	c.checkProposerOrderLocked()
	if c.undecoded > 0 {
		c.violatef("wire: %d delivered messages failed to decode", c.undecoded)
	}
	return slices.Clone(c.violations)
}

// checkProposerOrderLocked checks S5: per proposer, for every y, every x
// accepted before y began must sit before y in every node's apply order. It
// sweeps y by start, keeping the x (accepted, ended before y's start) with
// the largest apply position on each node.
func (c *chaosChecker) checkProposerOrderLocked() {
	byNode := make([][]*chaosOp, c.n)
	for _, op := range c.ops {
		if op.done {
			byNode[op.node] = append(byNode[op.node], op)
		}
	}
	for p, ops := range byNode {
		accepted := slices.Clone(ops)
		accepted = slices.DeleteFunc(accepted, func(o *chaosOp) bool { return o.decision != DecisionAccept })
		slices.SortFunc(accepted, func(a, b *chaosOp) int { return int(a.end - b.end) })
		slices.SortFunc(ops, func(a, b *chaosOp) int { return int(a.start - b.start) })
		for i, rep := range c.nodes {
			var maxX *chaosOp
			maxPos, next := -1, 0
			for _, y := range ops {
				for ; next < len(accepted) && accepted[next].end < y.start; next++ {
					if pos, ok := rep.byToken[accepted[next].token]; ok && pos > maxPos && !rep.log[pos].restored {
						maxPos, maxX = pos, accepted[next]
					}
				}
				if pos, ok := rep.byToken[y.token]; ok && pos < maxPos && !rep.log[pos].restored {
					restored := func(t string) bool {
						at, ok := rep.byToken[t]
						return ok && rep.log[at].restored
					}
					switch {
					case !c.orderedAfter(y.token, maxX.token, nil):
						c.violatef("S5: %s's proposal of %q does not order it after %q, whose Propose returned Accept before its Propose began (%s applied it first, at position %d, before %d)",
							c.ids[p], y.token, maxX.token, c.ids[i], pos, maxPos)
					case c.orderedAfter(y.token, maxX.token, restored):
						c.violatef("S5: %s applied %q (position %d) before %q (position %d), but %s's Propose of the latter returned Accept before the former's began, and the proposals order them",
							c.ids[i], y.token, pos, maxX.token, maxPos, c.ids[p])
					default:
						// Every path of the order runs through a frame this
						// node got from a snapshot, not from replication: the
						// documented limit of ResetNamespace (S5 across a
						// partial restore).
						c.restoreReorders++
					}
				}
			}
		}
	}
}

// stats summarizes the run for the log.
func (c *chaosChecker) stats() (proposed, accepted, rejected, timedOut, applied, restores int) {
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

// TestChaos runs the Quasar driver under a seeded randomized workload and
// fault schedule, and checks SPEC §4 (S1–S5, convergence) with
// chaosChecker. Each seed picks the cluster size (3, 5 or 7 validators:
// 3+2*(seed mod 3)), the timings (WitnessAfter 10-20ms, ProposeWait 1-2s,
// AntiEntropyInterval 50ms), the retention window (RetainFrames 4096, 1024
// or 256: a node away for longer than the window is told so by OnBehind,
// restores the namespace from a peer's replica and calls ResetNamespace, as
// an application would), MaxApplyBacklog (the default, or 2 KiB so that
// nodes shed proposals in bursts and while they catch up) and everything random in its
// case: the workload of
// several proposers at once (two per node in namespaces of their own with
// Seq 0, one per node in namespaces shared by several nodes, and a racer
// that makes two or three nodes propose the same explicit Seq of one
// namespace at once), and a fault schedule mixing drops, duplicates and
// delays (MemoryHub.SetFaults), partitions that come and go
// (Partition/Heal), and nodes disconnected and reconnected. After the load,
// the faults are healed and every node must apply every accepted frame and
// end with the same state; then each node must get a fresh proposal
// accepted (liveness with the whole cluster connected).
//
// By default it runs a fixed set of seeds, a few seconds each (CI). Two
// environment variables change that:
//
//	REPLICATION_CHAOS_SEED=1234      replay seed 1234 only
//	REPLICATION_CHAOS_DURATION=10m   run random seeds for 10 minutes (soak)
//
// for example
//
//	REPLICATION_CHAOS_DURATION=10m go test -run TestChaos -timeout 30m .
//
// Every failure message names its seed. Replaying a seed repeats the same
// workload and fault schedule; goroutine scheduling still differs from run
// to run, so a rare interleaving may need a few replays (-count).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test skipped in -short mode")
	}
	if s := os.Getenv("REPLICATION_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "REPLICATION_CHAOS_SEED")
		runChaosSeed(t, seed)
		return
	}
	if s := os.Getenv("REPLICATION_CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(t, err, "REPLICATION_CHAOS_DURATION")
		soakChaos(t, d)
		return
	}
	for _, seed := range chaosCISeeds {
		runChaosSeed(t, seed)
	}
}

// chaosCISeeds are the seeds CI runs: four per cluster size (about 45s
// under -race on two cores).
var chaosCISeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

func runChaosSeed(t *testing.T, seed uint64) {
	t.Run(fmt.Sprintf("seed=%d,n=%d", seed, chaosSize(seed)), func(t *testing.T) {
		runChaos(t, seed)
	})
}

// soakChaos runs random seeds for d. It goes on after a failing seed, so
// that one soak reports every failing seed it met.
func soakChaos(t *testing.T, d time.Duration) {
	start := time.Now()
	var seeds, frames, proposals int
	var failed []uint64
	for time.Since(start) < d {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seed := binary.LittleEndian.Uint64(b[:]) >> 1
		var res chaosResult
		ok := t.Run(fmt.Sprintf("seed=%d,n=%d", seed, chaosSize(seed)), func(t *testing.T) {
			res = runChaos(t, seed)
		})
		seeds++
		if !ok {
			failed = append(failed, seed)
			continue
		}
		frames += res.frames
		proposals += res.proposals
	}
	t.Logf("soak: %d seeds in %s, %d passed (%d proposals, %d frames applied per node in total), %d failed: %v",
		seeds, time.Since(start).Round(time.Second), seeds-len(failed), proposals, frames, len(failed), failed)
}

func chaosSize(seed uint64) int { return 3 + 2*int(seed%3) }

type chaosResult struct{ proposals, frames int }

// chaosLoad is how long each case runs its workload under faults.
const chaosLoad = 2500 * time.Millisecond

func runChaos(t *testing.T, seed uint64) chaosResult {
	n := chaosSize(seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	witness := time.Duration(10+rng.IntN(11)) * time.Millisecond
	proposeWait := time.Duration(1000+rng.IntN(1001)) * time.Millisecond
	retain := []int{DefaultRetainFrames, 1024, 256}[rng.IntN(3)]
	// MaxApplyBacklog: the default, or for one seed in three 2 KiB (about
	// fifteen frames), so that bursts and catching up after a partition
	// shed proposals. Drawn from a stream of its own, so that the seed's
	// other choices stay what they were before this one existed.
	backlog := 0
	if rand.New(rand.NewPCG(seed, 0xbac)).IntN(3) == 0 {
		backlog = 2 << 10
	}
	t.Logf("chaos seed %d: %d validators, WitnessAfter %s, ProposeWait %s, RetainFrames %d, MaxApplyBacklog %d (replay: REPLICATION_CHAOS_SEED=%d go test -run TestChaos -v .)",
		seed, n, witness, proposeWait, retain, backlog, seed)

	q := n/2 + 1
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i) // as newTestCluster names them
	}
	chk := newChaosChecker(ids, q)
	// A node told that it fell behind the retention window restores the
	// namespace from a peer and resets it, as an application would.
	var (
		cluster  atomic.Pointer[testCluster]
		behind   atomic.Int64
		behindMu sync.Mutex
		unfixed  []string // behind reports with no peer ahead to restore from
	)
	onBehind := func(node int, err error) {
		behind.Add(1)
		var be *BehindError
		if !errors.As(err, &be) || !errors.Is(err, ErrBehind) {
			chk.mu.Lock()
			chk.violatef("behind: %s OnBehind with %v, want a *BehindError wrapping ErrBehind", ids[node], err)
			chk.mu.Unlock()
			return
		}
		if seq, ok := chk.restore(node, be.OrgID, be.Namespace, be.From, 5*time.Second); ok {
			cluster.Load().nodes[node].r.ResetNamespace(be.OrgID, be.Namespace, seq)
			return
		}
		behindMu.Lock()
		unfixed = append(unfixed, fmt.Sprintf("%s: %v", ids[node], err))
		behindMu.Unlock()
	}
	c := newTestCluster(t, n, clusterOpts{
		proposeWait: proposeWait, witnessAfter: witness, antiEntropy: 50 * time.Millisecond,
		retainFrames: retain, maxBacklog: backlog, onBehind: onBehind,
	})
	require.Equal(t, ids, c.ids)
	cluster.Store(c)
	c.hub.OnDeliver(chk.onDeliver)
	for i, node := range c.nodes {
		node.r.Subscribe(chk.handler(i))
	}
	var trace chaosTrace
	fail := func(format string, args ...any) {
		t.Helper()
		t.Logf("fault schedule of seed %d:\n%s", seed, trace.String())
		chk.mu.Lock()
		if len(chk.restores) > 0 {
			t.Logf("restores:\n%s", strings.Join(chk.restores, "\n"))
		}
		chk.mu.Unlock()
		behindMu.Lock()
		if len(unfixed) > 0 {
			t.Logf("behind reports with no peer ahead to restore from: %q", unfixed)
		}
		behindMu.Unlock()
		for _, node := range c.nodes {
			t.Logf("%s metrics: %+v\n%s", node.id, node.r.Metrics(), node.r.debugDump())
		}
		t.Fatalf("seed %d: "+format, append([]any{seed}, args...)...)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	w := 0
	worker := func(node int, body func(rng *rand.Rand, k int)) {
		w++
		wrng := rand.New(rand.NewPCG(seed, uint64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				body(wrng, k)
				time.Sleep(time.Duration(wrng.IntN(10)) * time.Millisecond) // pacing
			}
		}()
	}
	nShared := max(1, n/3)
	for i := range c.nodes {
		r := c.nodes[i].r
		for j := 0; j < 2; j++ {
			worker(i, func(rng *rand.Rand, k int) {
				f := chaosFrame(rng, "org", fmt.Sprintf("own-%d-%d", i, j), fmt.Sprintf("n%d.w%d.%d", i, j, k))
				chk.propose(r, i, f)
			})
		}
		worker(i, func(rng *rand.Rand, k int) {
			f := chaosFrame(rng, "org", fmt.Sprintf("shared-%d", i%nShared), fmt.Sprintf("n%d.s.%d", i, k))
			chk.propose(r, i, f)
		})
	}
	// The racer: two or three nodes propose one explicit Seq of the "race"
	// namespace at once; at most one may win.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rrng := rand.New(rand.NewPCG(seed, 0xace))
		for slot := uint64(1); ; slot++ {
			select {
			case <-stop:
				return
			default:
			}
			racers := rrng.Perm(n)[:2+rrng.IntN(2)]
			var rw sync.WaitGroup
			for _, i := range racers {
				f := Frame{OrgID: "org", Namespace: "race", Seq: slot, Op: "put", Key: "owner",
					Value: fmt.Appendf(nil, "race.s%d.n%d", slot, i)}
				rw.Add(1)
				go func() {
					defer rw.Done()
					chk.propose(c.nodes[i].r, i, f)
				}()
			}
			rw.Wait()
			time.Sleep(time.Duration(rrng.IntN(10)) * time.Millisecond)
		}
	}()

	// The fault schedule runs on this goroutine.
	frng := rand.New(rand.NewPCG(seed, 0xfa17))
	down := make([]bool, n)
	end := time.Now().Add(chaosLoad)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(50+frng.IntN(250)) * time.Millisecond)
		switch a := frng.IntN(10); {
		case a < 3:
			f := MemoryFaults{Seed: frng.Int64(), DropRate: frng.Float64() * 0.2, DuplicateRate: frng.Float64() * 0.2}
			if frng.IntN(2) == 0 {
				f.MaxDelay = time.Duration(frng.IntN(5001)) * time.Microsecond
			}
			require.NoError(t, c.hub.SetFaults(f), "seed %d", seed)
			trace.add("faults drop=%.2f dup=%.2f delay<=%s", f.DropRate, f.DuplicateRate, f.MaxDelay)
		case a < 5:
			perm := frng.Perm(n)
			groups := make([][]string, 2+frng.IntN(2))
			for k, i := range perm {
				g := k % len(groups)
				if k >= len(groups) {
					g = frng.IntN(len(groups))
				}
				groups[g] = append(groups[g], c.ids[i])
			}
			c.hub.Partition(groups...)
			trace.add("partition %v", groups)
		case a < 7:
			c.hub.Heal()
			trace.add("heal")
		case a < 8:
			var up []int
			for i, d := range down {
				if !d {
					up = append(up, i)
				}
			}
			if n-len(up) < n-q {
				i := up[frng.IntN(len(up))]
				down[i] = true
				c.hub.Disconnect(c.ids[i])
				trace.add("disconnect %s", c.ids[i])
			}
		case a < 9:
			for _, i := range frng.Perm(n) {
				if down[i] {
					down[i] = false
					c.hub.Reconnect(c.ids[i])
					trace.add("reconnect %s", c.ids[i])
					break
				}
			}
		default:
			require.NoError(t, c.hub.SetFaults(MemoryFaults{}), "seed %d", seed)
			trace.add("faults off")
		}
	}
	close(stop)
	wg.Wait() // every Propose returned (each within ProposeWait)
	c.hub.Heal()
	for i := range down {
		c.hub.Reconnect(c.ids[i])
	}
	require.NoError(t, c.hub.SetFaults(MemoryFaults{}), "seed %d", seed)
	require.NoError(t, c.hub.Err(), "seed %d", seed)
	trace.add("heal, reconnect all, faults off")

	// violations lists what the checker found so far, for failure messages.
	violations := func() string {
		v := chk.check()
		if len(v) > 20 {
			v = append(v[:20], fmt.Sprintf("… and %d more", len(v)-20))
		}
		return fmt.Sprintf("%d invariant violations:\n%s", len(v), strings.Join(v, "\n"))
	}
	if why := chk.waitConverged(20 * time.Second); why != "" {
		fail("S3: replicas did not converge within 20s after healing: %s\n%s", why, violations())
	}
	// Liveness with everyone connected: a fresh proposal on every node is
	// accepted.
	for i, node := range c.nodes {
		f := Frame{OrgID: "org", Namespace: fmt.Sprintf("final-%d", i), Op: "put", Key: "k", Value: fmt.Appendf(nil, "final.n%d", i)}
		if d := chk.propose(node.r, i, f); d != DecisionAccept {
			fail("liveness: %s's proposal after healing returned %v\n%s", node.id, d, violations())
		}
	}
	if why := chk.waitConverged(20 * time.Second); why != "" {
		fail("S3: replicas did not converge within 20s after the final proposals: %s\n%s", why, violations())
	}
	if v := chk.check(); len(v) > 0 {
		fail("%s", violations())
	}
	for _, node := range c.nodes {
		m := node.r.Metrics()
		if m.Conflicts != 0 || m.DroppedUnapplied != 0 {
			fail("%s metrics report broken invariants: conflicts %d, dropped unapplied %d", node.id, m.Conflicts, m.DroppedUnapplied)
		}
	}
	proposed, accepted, rejected, timedOut, applied, restores := chk.stats()
	hs := c.hub.Stats()
	chk.mu.Lock()
	reorders := chk.restoreReorders
	chk.mu.Unlock()
	var shed uint64
	for _, node := range c.nodes {
		shed += node.r.Metrics().ProposalsShed
	}
	t.Logf("seed %d: %d proposals: %d accepted, %d rejected, %d timed out; %d frames applied per node; %d behind reports, %d namespaces restored, %d proposer orders broken only through a restored frame (documented limit); %d proposals shed for a full apply backlog; hub: %d sent, %d dropped, %d duplicated, %d lost",
		seed, proposed, accepted, rejected, timedOut, applied, behind.Load(), restores, reorders, shed, hs.Sent, hs.Dropped, hs.Duplicated, hs.Lost)
	return chaosResult{proposals: proposed, frames: applied}
}

// chaosFrame is a put (or, one time in four, a del) of one of eight keys,
// carrying token as its value.
func chaosFrame(rng *rand.Rand, org, ns, token string) Frame {
	op := "put"
	if rng.IntN(4) == 0 {
		op = "del"
	}
	return Frame{OrgID: org, Namespace: ns, Op: op, Key: fmt.Sprintf("k%d", rng.IntN(8)), Value: []byte(token)}
}

// chaosTrace is the fault schedule of a run, printed when it fails.
type chaosTrace struct {
	start time.Time
	lines []string
}

func (tr *chaosTrace) add(format string, args ...any) {
	if tr.start.IsZero() {
		tr.start = time.Now()
	}
	tr.lines = append(tr.lines, fmt.Sprintf("%6dms ", time.Since(tr.start).Milliseconds())+fmt.Sprintf(format, args...))
}

func (tr *chaosTrace) String() string { return strings.Join(tr.lines, "\n") }

// TestChecker_DetectsViolations feeds chaosChecker synthetic histories, each
// breaking one invariant, and requires that it reports exactly that: a
// checker that cannot fail proves nothing.
func TestChecker_DetectsViolations(t *testing.T) {
	ids := []string{"node-0", "node-1", "node-2"}
	frame := func(seq uint64, key, token string) Frame {
		return Frame{OrgID: "org", Namespace: "ns", Seq: seq, Op: "put", Key: key, Value: []byte(token)}
	}
	// votes delivers commit votes of voters for f to node to.
	votes := func(c *chaosChecker, to int, f Frame, voters ...int) {
		id, _ := f.blockID(nil)
		msg := newMessage(nil)
		for _, v := range voters {
			voter := validatorNodeID(ids[v])
			msg = appendVoteRecord(msg, f.Seq-1, &id, &voter, voteCommit)
		}
		c.onDeliver(ids[(to+1)%3], ids[to], quasarKind, finishMessage(msg, len(voters)))
	}
	// nodeZeroVotes delivers to node-1 node-0's vote of type typ on f at
	// position prev.
	nodeZeroVotes := func(c *chaosChecker, f Frame, prev uint64, typ byte) {
		id, _ := f.blockID(nil)
		voter := validatorNodeID(ids[0])
		msg := appendVoteRecord(newMessage(nil), prev, &id, &voter, typ)
		c.onDeliver(ids[0], ids[1], quasarKind, finishMessage(msg, 1))
	}
	// quorum delivers to every node the votes that make f's quorum there.
	quorum := func(c *chaosChecker, f Frame) {
		for to := range ids {
			votes(c, to, f, (to+1)%3)
		}
	}
	// propose delivers f's proposal, naming after, to every node.
	propose := func(c *chaosChecker, f Frame, after ...nsRef) {
		msg := encodeMessage([]record{{typ: recProposal, prop: proposal{frame: f, prev: f.Seq - 1, after: refs(after...), proposer: validatorNodeID(ids[0])}}})
		for to := 1; to < len(ids); to++ {
			c.onDeliver(ids[0], ids[to], quasarKind, msg)
		}
	}
	// yBeforeX records node-0's Propose of x returning before its Propose
	// of y began, and node-2 applying y first; named says whether y's
	// proposal, delivered on the wire, names x in its after list.
	yBeforeX := func(c *chaosChecker, named bool) {
		x := Frame{OrgID: "org", Namespace: "n1", Seq: 1, Op: "put", Key: "a", Value: []byte("x")}
		y := Frame{OrgID: "org", Namespace: "n2", Seq: 1, Op: "put", Key: "b", Value: []byte("y")}
		if named {
			propose(c, x)
			propose(c, y, nsRef{"org", "n1", 1})
		}
		quorum(c, x)
		quorum(c, y)
		ox := c.begin(0, x)
		c.applied(0, x)
		c.applied(1, x)
		c.end(ox, DecisionAccept, nil)
		oy := c.begin(0, y)
		c.applied(0, y)
		c.applied(1, y)
		c.applied(2, y) // node-2 applies y before x
		c.applied(2, x)
		c.end(oy, DecisionAccept, nil)
	}
	// accepted records a Propose of f by node that every node applied.
	accepted := func(c *chaosChecker, node int, f Frame) {
		op := c.begin(node, f)
		propose(c, f)
		quorum(c, f)
		for i := range ids {
			c.applied(i, f)
		}
		c.end(op, DecisionAccept, nil)
	}
	cases := []struct {
		name string
		run  func(c *chaosChecker)
		want string // substring of a violation or of the convergence failure; "" for none
	}{
		{"clean history", func(c *chaosChecker) {
			accepted(c, 0, frame(1, "a", "x"))
			accepted(c, 0, frame(2, "a", "y"))
			op := c.begin(1, frame(3, "b", "z"))
			c.end(op, DecisionReject, fmt.Errorf("quasar propose: %w", ErrRejected))
			op = c.begin(2, frame(3, "c", "w"))
			c.end(op, DecisionTimeout, fmt.Errorf("quasar propose: %w", ErrTimeout))
		}, ""},
		{"certificate voters count", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			op := c.begin(0, f)
			msg := appendCertificateRecord(newMessage(nil), &proposal{frame: f},
				nodes(validatorNodeID(ids[0]), validatorNodeID(ids[1])))
			for to := range ids {
				c.onDeliver(ids[(to+1)%3], ids[to], quasarKind, finishMessage(slices.Clone(msg), 1))
				c.applied(to, f)
			}
			c.end(op, DecisionAccept, nil)
		}, ""},
		{"S1 rejected frame applied", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			op := c.begin(0, f)
			c.end(op, DecisionReject, fmt.Errorf("quasar propose: %w", ErrRejected))
			quorum(c, f)
			for i := range ids {
				c.applied(i, f)
			}
		}, "S1:"},
		{"S2 applied without votes", func(c *chaosChecker) {
			c.applied(1, frame(1, "a", "x"))
		}, "S2:"},
		{"S2 own vote does not count", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			votes(c, 1, f, 1)
			c.applied(1, f)
		}, "S2:"},
		{"S2 votes cast at another position do not count", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			propose(c, f) // at position 0
			nodeZeroVotes(c, f, 5, voteCommit)
			c.applied(1, f)
		}, "S2:"},
		{"S2 cancel votes do not count", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			nodeZeroVotes(c, f, 0, voteCancel)
			c.applied(1, f)
		}, "S2:"},
		{"S2 certificate below quorum", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			msg := appendCertificateRecord(newMessage(nil), &proposal{frame: f}, nodes(validatorNodeID(ids[0])))
			c.onDeliver(ids[0], ids[1], quasarKind, finishMessage(msg, 1))
		}, "S2: node-0 sent node-1 a certificate"},
		{"S2 votes for another block do not count", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			votes(c, 1, frame(1, "a", "other"), 0, 2)
			c.applied(1, f)
		}, "S2:"},
		{"S3 frame applied twice", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			accepted(c, 0, f)
			c.applied(2, f)
		}, "S3:"},
		{"S3 slot applied twice", func(c *chaosChecker) {
			f, g := frame(1, "a", "x"), frame(1, "a", "y")
			quorum(c, f)
			quorum(c, g)
			c.applied(2, f)
			c.applied(2, g)
		}, "S3:"},
		{"S3 accepted frame missing on a node", func(c *chaosChecker) {
			f := frame(1, "a", "x")
			op := c.begin(0, f)
			quorum(c, f)
			c.applied(0, f)
			c.applied(1, f)
			c.end(op, DecisionAccept, nil)
		}, "node-2 lacks accepted frame"},
		{"S4 two frames in one slot", func(c *chaosChecker) {
			f, g := frame(1, "a", "x"), frame(1, "a", "y")
			quorum(c, f)
			quorum(c, g)
			c.applied(0, f)
			c.applied(1, g)
		}, "S4:"},
		{"S5 order not given by the proposals", func(c *chaosChecker) {
			yBeforeX(c, false)
		}, "does not order it after"},
		{"S5 order given on the wire and ignored by a node", func(c *chaosChecker) {
			yBeforeX(c, true)
		}, "and the proposals order them"},
		{"S5 order broken only through a restored frame", func(c *chaosChecker) {
			// x, then e (after x), then y (after e): node-2 restores e's
			// namespace from a snapshot, so nothing holds y back from x
			// there: the documented limit, counted but not a violation.
			x := Frame{OrgID: "org", Namespace: "n1", Seq: 1, Op: "put", Key: "a", Value: []byte("x")}
			e := Frame{OrgID: "org", Namespace: "n3", Seq: 1, Op: "put", Key: "c", Value: []byte("e")}
			y := Frame{OrgID: "org", Namespace: "n2", Seq: 1, Op: "put", Key: "b", Value: []byte("y")}
			propose(c, x)
			propose(c, e, nsRef{"org", "n1", 1})
			propose(c, y, nsRef{"org", "n3", 1})
			for _, f := range []Frame{x, e, y} {
				quorum(c, f)
				op := c.begin(0, f)
				c.applied(0, f)
				c.applied(1, f)
				c.end(op, DecisionAccept, nil)
			}
			_, ok := c.restore(2, "org", "n3", 1, time.Second)
			if !ok {
				panic("no donor for the restore")
			}
			c.applied(2, y)
			c.applied(2, x)
			if c.check(); c.restoreReorders != 1 {
				c.violatef("restoreReorders = %d, want 1", c.restoreReorders)
			}
		}, ""},
		{"S5 does not order overlapping calls", func(c *chaosChecker) {
			x := Frame{OrgID: "org", Namespace: "n1", Seq: 1, Op: "put", Key: "a", Value: []byte("x")}
			y := Frame{OrgID: "org", Namespace: "n2", Seq: 1, Op: "put", Key: "b", Value: []byte("y")}
			quorum(c, x)
			quorum(c, y)
			ox, oy := c.begin(0, x), c.begin(0, y)
			c.applied(0, x)
			c.applied(0, y)
			c.applied(1, y)
			c.applied(1, x)
			c.applied(2, x)
			c.applied(2, y)
			c.end(ox, DecisionAccept, nil)
			c.end(oy, DecisionAccept, nil)
		}, ""},
		{"replicas differ", func(c *chaosChecker) {
			f, g := frame(1, "k", "x"), frame(2, "k", "y")
			quorum(c, f)
			quorum(c, g)
			c.applied(0, f)
			c.applied(0, g)
			c.applied(1, f)
			c.applied(1, g)
			c.applied(2, g)
			c.applied(2, f)
		}, "replicas:"},
		{"Accept before the proposer applied", func(c *chaosChecker) {
			op := c.begin(0, frame(1, "a", "x"))
			c.end(op, DecisionAccept, nil)
		}, "contract:"},
		{"Reject without ErrRejected", func(c *chaosChecker) {
			op := c.begin(0, frame(1, "a", "x"))
			c.end(op, DecisionReject, errors.New("nope"))
		}, "contract:"},
		{"undecodable message delivered", func(c *chaosChecker) {
			c.onDeliver(ids[0], ids[1], quasarKind, []byte{9, 9, 9})
		}, "wire:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newChaosChecker(ids, 2)
			tc.run(c)
			var got []string
			if why := c.waitConverged(10 * time.Millisecond); why != "" {
				got = append(got, why)
			}
			got = append(got, c.check()...)
			if tc.want == "" {
				require.Empty(t, got)
				return
			}
			require.NotEmpty(t, got, "the checker missed the violation")
			require.Condition(t, func() bool {
				for _, v := range got {
					if strings.Contains(v, tc.want) {
						return true
					}
				}
				return false
			}, "want a violation containing %q, got %q", tc.want, got)
		})
	}
}

// TestChaos_ResetNamespaceSkipsQueuedFrames replays, deterministically, a
// history the chaos test's restore path can produce: frames of a namespace
// are queued for apply (the handler is busy) when a peer reports that the
// node fell behind there. OnBehind runs before the queued frames, the
// application restores a snapshot at the reported head and calls
// ResetNamespace; the queued frames are covered by the snapshot ("frames up
// to seq are considered applied") and must not be applied again (S3).
func TestChaos_ResetNamespaceSkipsQueuedFrames(t *testing.T) {
	var self atomic.Pointer[QuasarReplicator]
	resets := make(chan uint64, 4)
	r, ids := newLoneValidator(t, QuasarConfig{
		OnBehind: func(err error) {
			var be *BehindError
			if errors.As(err, &be) {
				// Restore a snapshot taken at the reported head.
				self.Load().ResetNamespace(be.OrgID, be.Namespace, be.From)
				resets <- be.From
			}
		},
	})
	self.Store(r)

	var mu sync.Mutex
	var applied []uint64
	started, release := make(chan struct{}), make(chan struct{})
	r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Seq == 1 {
			close(started)
			<-release // the handler is busy while more frames queue up
		}
		mu.Lock()
		applied = append(applied, f.Seq)
		mu.Unlock()
		return nil
	})

	// Frames 1..3 of org/ns arrive as certificates (commit votes of
	// node-1 and node-2): all accepted and queued for apply.
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	var recs []record
	for seq := uint64(1); seq <= 3; seq++ {
		f := Frame{OrgID: "org", Namespace: "ns", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		recs = append(recs, record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: voters.at(0)}, voters: voters})
	}
	require.NoError(t, r.receive(1, encodeMessage(recs)))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("frame 1 was never applied")
	}
	// While frame 1 is being applied, node-1 reports that node-0's sync
	// from head 3 asked for frames it no longer retains.
	behind := record{typ: recBehind, ref: nsRef{"org", "ns", 3}, who: validatorNodeID(ids[0])}
	require.NoError(t, r.receive(1, encodeMessage([]record{behind})))
	close(release)
	select {
	case from := <-resets:
		require.EqualValues(t, 3, from)
	case <-time.After(10 * time.Second):
		t.Fatal("OnBehind was never called")
	}
	// Frame 4 extends the restored head; once it is applied, frames 2 and 3
	// would have been applied before it (one apply goroutine, in order).
	f4 := Frame{OrgID: "org", Namespace: "ns", Seq: 4, Op: "put", Key: "k", Value: []byte("v4")}
	cert := record{typ: recCertificate, prop: proposal{frame: f4, prev: 3, proposer: voters.at(0)}, voters: voters}
	require.NoError(t, r.receive(1, encodeMessage([]record{cert})))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(applied, 4)
	}, 10*time.Second, time.Millisecond, "frame 4 was never applied after the reset")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uint64{1, 4}, applied,
		"frames 2 and 3 were applied after ResetNamespace(org, ns, 3) declared them applied (snapshot restored in OnBehind)")
}

// TestChaos_ForgottenFrameNeedsQuorumAgain replays, deterministically, the
// history behind the S2 violations TestChaos found (certificates naming one
// validator): a decided frame falls out of the retention window, the same
// frame arrives again (a proposer that has not learned the outcome re-sends
// it), and the driver adds its block again to the consensus engine, which
// still holds the votes of the first time. Here the frame was rejected
// (both peers cancelled it); re-added, it must not be accepted on the
// strength of this node's own commit counted twice (S1, S2). Fixed in the
// driver by giving such a block a fresh engine.
func TestChaos_ForgottenFrameNeedsQuorumAgain(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{
		WitnessAfter: 10 * time.Millisecond, RetainFrames: 1,
	})
	applied := make(chan Frame, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		f.Value = bytes.Clone(f.Value)
		applied <- f
		return nil
	})
	n1, n2 := validatorNodeID(ids[1]), validatorNodeID(ids[2])
	send := func(from int, recs ...record) {
		t.Helper()
		require.NoError(t, r.receive(from, encodeMessage(recs)))
	}
	waitApplied := func(want Frame) {
		t.Helper()
		select {
		case f := <-applied:
			require.Equal(t, want, f, "applied frames")
		case <-time.After(10 * time.Second):
			t.Fatalf("%+v was never applied", want)
		}
	}

	// node-1 proposes g; node-0 commits it, node-1 and node-2 cancel it:
	// g is rejected.
	g := Frame{OrgID: "org", Namespace: "lock", Seq: 1, Op: "put", Key: "owner", Value: []byte("g")}
	gid, _ := g.blockID(nil)
	pg := record{typ: recProposal, prop: proposal{frame: g, proposer: n1}}
	send(1, pg)
	send(1, record{typ: recVote, vote: vote{block: gid, voter: n1, typ: voteCancel}})
	send(2, record{typ: recVote, vote: vote{block: gid, voter: n2, typ: voteCancel}})
	require.EqualValues(t, 1, r.Metrics().FramesRejected)

	// Two frames of another namespace are accepted (certificates of
	// node-1 and node-2); with RetainFrames 1, g falls out of the window.
	for seq := uint64(1); seq <= 2; seq++ {
		f := Frame{OrgID: "org", Namespace: "other", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		send(1, record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: n1}, voters: nodes(n1, n2)})
		waitApplied(f)
	}
	require.Eventually(t, func() bool { return r.Metrics().Retained <= 1 }, 10*time.Second, time.Millisecond)

	// node-1 re-sends g (it has not learned that g was rejected).
	send(1, pg)
	m := r.Metrics()
	assert.EqualValues(t, 2, m.FramesAccepted, "a rejected frame was accepted after it was forgotten and re-sent (only node-0's own commit counts for it)")
	// Frames are applied in order: once a later frame is applied, g would
	// have been too.
	f3 := Frame{OrgID: "org", Namespace: "other", Seq: 3, Op: "put", Key: "k", Value: []byte("v3")}
	send(1, record{typ: recCertificate, prop: proposal{frame: f3, prev: 2, proposer: n1}, voters: nodes(n1, n2)})
	waitApplied(f3)
}

// TestChaos_ResetNamespaceBelowHeadKeepsReplicating replays the stall
// TestChaos found after restores: OnBehind reports the namespace behind at
// head h, the application fetches a snapshot, and meanwhile replication
// moves the namespace past the snapshot's Seq (another peer still had the
// frames). ResetNamespace then names a Seq below the driver's head. The
// namespace must keep replicating: the next accepted frame is applied.
func TestChaos_ResetNamespaceBelowHeadKeepsReplicating(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{})
	applied := make(chan uint64, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- f.Seq
		return nil
	})
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	certify := func(seq uint64) {
		t.Helper()
		f := Frame{OrgID: "org", Namespace: "ns", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "v%d", seq)}
		rec := record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, proposer: voters.at(0)}, voters: voters}
		require.NoError(t, r.receive(1, encodeMessage([]record{rec})))
	}
	next := func() uint64 {
		t.Helper()
		select {
		case seq := <-applied:
			return seq
		case <-time.After(5 * time.Second):
			t.Fatal("no frame applied within 5s: the namespace stalled")
			return 0
		}
	}
	for seq := uint64(1); seq <= 3; seq++ {
		certify(seq)
		require.Equal(t, seq, next())
	}
	// The application restored a snapshot taken at seq 2 (older than the
	// driver's head, 3).
	r.ResetNamespace("org", "ns", 2)
	certify(4)
	got := next()
	if got == 3 { // the driver may deliver frame 3 again, the snapshot lacks it
		got = next()
	}
	require.EqualValues(t, 4, got)
	// The backlog gauge counted the frame applied again as it counts any.
	require.Eventually(t, func() bool { return r.Metrics().PendingApplyBytes == 0 }, 5*time.Second, time.Millisecond)
}

// TestChaos_ProposerOrderAcrossRestoredNamespace replays the S5 violations
// TestChaos found after restores. node-1's Propose calls return in the order
// x (namespace a), e (namespace b), y (namespace c); each proposal names
// only the latest frame before it (e names x, y names e), relying on
// transitivity. node-0 missed x for now and is told it fell behind in b;
// it restores b from a snapshot that contains e and resets b. The driver
// then takes y's dependency on e as met and applies y, before x: S5 needs
// x first (x's Propose returned before y's began), e being applied here or
// not.
func TestChaos_ProposerOrderAcrossRestoredNamespace(t *testing.T) {
	t.Skip("known limitation, documented on ResetNamespace: proposer order across namespaces cannot be vouched for across a partial restore (y's link to x runs through e, which this node never received); kept to reproduce it")
	var self atomic.Pointer[QuasarReplicator]
	r, ids := newLoneValidator(t, QuasarConfig{
		OnBehind: func(err error) {
			var be *BehindError
			if errors.As(err, &be) && be.Namespace == "b" {
				self.Load().ResetNamespace("org", "b", 1) // snapshot of b holding e
			}
		},
	})
	self.Store(r)
	applied := make(chan string, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- f.Namespace
		return nil
	})
	n0, n1, n2 := validatorNodeID(ids[0]), validatorNodeID(ids[1]), validatorNodeID(ids[2])
	frame := func(ns string) Frame {
		return Frame{OrgID: "org", Namespace: ns, Seq: 1, Op: "put", Key: "k", Value: []byte(ns)}
	}
	certificate := func(f Frame, after ...nsRef) record {
		return record{typ: recCertificate, prop: proposal{frame: f, after: refs(after...), proposer: n1}, voters: nodes(n1, n2)}
	}
	x := certificate(frame("a"))
	y := certificate(frame("c"), nsRef{"org", "b", 1}) // e = b/1 names a/1
	// node-0's sync of b from 0 is answered: no longer retained.
	behind := record{typ: recBehind, ref: nsRef{"org", "b", 0}, who: n0}
	require.NoError(t, r.receive(1, encodeMessage([]record{behind})))
	require.NoError(t, r.receive(1, encodeMessage([]record{y})))
	require.NoError(t, r.receive(1, encodeMessage([]record{x})))
	order := receiveN(t, applied, 2)
	require.Equal(t, []string{"a", "c"}, order, "S5: y (namespace c) applied before x (namespace a), whose Propose returned before y's began")
}

// TestChaos_ResetNamespaceBelowHeadDropsCoveredPending replays the double
// applies TestChaos found after restores (S3): frames of a namespace are
// linked but wait for a frame of another namespace that their proposer
// ordered first (pending), and the application resets the namespace to a
// snapshot below the driver's head that contains some of them. Those must
// not be applied on top of the snapshot when their dependency arrives.
func TestChaos_ResetNamespaceBelowHeadDropsCoveredPending(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{})
	applied := make(chan string, 16)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- fmt.Sprintf("%s/%d", f.Namespace, f.Seq)
		return nil
	})
	voters := nodes(validatorNodeID(ids[1]), validatorNodeID(ids[2]))
	certify := func(ns string, seq uint64, after ...nsRef) {
		t.Helper()
		f := Frame{OrgID: "org", Namespace: ns, Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "%s%d", ns, seq)}
		rec := record{typ: recCertificate, prop: proposal{frame: f, prev: seq - 1, after: refs(after...), proposer: voters.at(0)}, voters: voters}
		require.NoError(t, r.receive(1, encodeMessage([]record{rec})))
	}
	// a/1 and a/2 are accepted and linked (head 2), but a/1 waits for z/1.
	certify("a", 1, nsRef{"org", "z", 1})
	certify("a", 2)
	require.Equal(t, 2, r.Metrics().PendingApply)
	// The application restores a snapshot of a taken at seq 1.
	r.ResetNamespace("org", "a", 1)
	certify("z", 1)
	got := receiveN(t, applied, 2)
	// Order between z/1 and a/2 is not checked: a/2's link to z/1 ran
	// through a/1, which the snapshot covers (the S5 limit documented on
	// ResetNamespace).
	require.ElementsMatch(t, []string{"z/1", "a/2"}, got, "a/1 is in the snapshot the namespace was reset to: applying it again breaks S3")
	select {
	case s := <-applied:
		t.Fatalf("%s applied after the reset: it is covered by the snapshot (S3)", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestChaos_ForgottenCancelStaysCancel replays the S1 violation TestChaos
// found with a small retention window (seed 7735554100816131037: a frame
// whose Propose returned Reject, 3 of 5 validators having cancelled it,
// then applied on every node). A validator cancels frame e (it committed
// x at the same position), x is rejected (the position is free again), the
// validator forgets e and, after enough other frames, its remembered vote
// on e too, while its head stays below e's position. When e comes back
// (re-sent by a node that still holds it), the validator must not commit
// it: it cancelled e before, and a commit now lets e reach a quorum of
// commits although a quorum of cancels rejected it elsewhere.
func TestChaos_ForgottenCancelStaysCancel(t *testing.T) {
	r, ids := newLoneValidator(t, QuasarConfig{
		WitnessAfter: 10 * time.Millisecond, RetainFrames: 1,
	})
	applied := make(chan string, 64)
	r.Subscribe(func(_ context.Context, f Frame) error {
		applied <- fmt.Sprintf("%s/%d/%s", f.Namespace, f.Seq, f.Value)
		return nil
	})
	n1, n2 := validatorNodeID(ids[1]), validatorNodeID(ids[2])
	send := func(from int, recs ...record) {
		t.Helper()
		require.NoError(t, r.receive(from, encodeMessage(recs)))
	}
	voteRec := func(f Frame, voter nodeID, typ byte) record { // every frame here extends Seq-1
		id, _ := f.blockID(nil)
		return record{typ: recVote, vote: vote{prev: f.Seq - 1, block: id, voter: voter, typ: typ}}
	}
	propRec := func(f Frame, prev uint64, proposer nodeID) record {
		return record{typ: recProposal, prop: proposal{frame: f, prev: prev, proposer: proposer}}
	}
	x := Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("x")}
	e := Frame{OrgID: "org", Namespace: "s", Seq: 1, Op: "put", Key: "k", Value: []byte("e")}

	send(1, propRec(x, 0, n1))                             // node-0 commits x
	send(2, propRec(e, 0, n2), voteRec(e, n2, voteCommit)) // node-0 cancels e
	send(1, voteRec(e, n1, voteCancel))                    // e: 2 cancels, rejected
	send(1, voteRec(x, n1, voteCancel))
	send(2, voteRec(x, n2, voteCancel)) // x rejected: position 0 of s is free
	require.EqualValues(t, 2, r.Metrics().FramesRejected)

	// Frames of another namespace, each voted on by node-0, push e and x
	// out of the retention window and their votes out of its memory.
	for seq := uint64(1); seq <= 12; seq++ {
		o := Frame{OrgID: "org", Namespace: "o", Seq: seq, Op: "put", Key: "k", Value: fmt.Appendf(nil, "o%d", seq)}
		send(1, propRec(o, seq-1, n1), voteRec(o, n1, voteCommit))
		select {
		case got := <-applied:
			require.Equal(t, fmt.Sprintf("o/%d/o%d", seq, seq), got)
		case <-time.After(5 * time.Second):
			t.Fatalf("o/%d was never applied", seq)
		}
		// Let retention run before the next one (tick: WitnessAfter/2).
		require.Eventually(t, func() bool { return r.Metrics().Retained <= 1 }, 5*time.Second, time.Millisecond)
	}

	// e comes back, with node-2's commit (it proposed e).
	send(2, propRec(e, 0, n2), voteRec(e, n2, voteCommit))
	o := Frame{OrgID: "org", Namespace: "o", Seq: 13, Op: "put", Key: "k", Value: []byte("o13")}
	send(1, propRec(o, 12, n1), voteRec(o, n1, voteCommit))
	for {
		select {
		case got := <-applied:
			require.NotEqual(t, "s/1/e", got, "S1: e was applied (node-0 cancelled it, then committed it after forgetting)")
			if got == "o/13/o13" {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("o/13 was never applied")
		}
	}
}

// positionHarness is a lone validator (node-0 of three) fed records by the
// test, which plays node-1 and node-2.
type positionHarness struct {
	t       *testing.T
	r       *QuasarReplicator
	n1, n2  nodeID
	applied chan string
}

func newPositionHarness(t *testing.T, cfg QuasarConfig) *positionHarness {
	r, ids := newLoneValidator(t, cfg)
	h := &positionHarness{t: t, r: r, n1: validatorNodeID(ids[1]), n2: validatorNodeID(ids[2]), applied: make(chan string, 64)}
	r.Subscribe(func(_ context.Context, f Frame) error {
		h.applied <- fmt.Sprintf("%s/%d", f.Value, f.Seq)
		return nil
	})
	return h
}

func (h *positionHarness) send(from int, recs ...record) {
	h.t.Helper()
	require.NoError(h.t, h.r.receive(from, encodeMessage(recs)))
}

func (h *positionHarness) proposal(f Frame, prev uint64, proposer nodeID) record {
	return record{typ: recProposal, prop: proposal{frame: f, prev: prev, proposer: proposer}}
}

func (h *positionHarness) vote(f Frame, prev uint64, voter nodeID, typ byte) record {
	id, _ := f.blockID(nil)
	return record{typ: recVote, vote: vote{prev: prev, block: id, voter: voter, typ: typ}}
}

// requireCommittedHolds: node-0 committed w at position 1 of namespace s;
// x is proposed there too, with node-2's commit, then node-1 commits w. w
// must be the one accepted: node-0's vote on x is a cancel.
func (h *positionHarness) requireCommittedHolds(x, w Frame) {
	h.t.Helper()
	h.send(2, h.proposal(x, 1, h.n2), h.vote(x, 1, h.n2, voteCommit))
	h.send(1, h.vote(w, 1, h.n1, voteCommit))
	require.Equal(h.t, []string{"w/2"}, receiveN(h.t, h.applied, 1), "position 1 holds w")
	require.EqualValues(h.t, 2, h.r.Metrics().FramesAccepted, "x accepted at position 1 too")
}

// myVote returns node-0's vote on the frame f it holds (0: none, or not
// held).
func (h *positionHarness) myVote(f Frame) byte {
	id, _ := f.blockID(nil)
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	if e := h.r.c.entries[id]; e != nil {
		return e.myVote
	}
	return 0
}

func slotFrame(seq uint64, value string) Frame {
	return Frame{OrgID: "org", Namespace: "s", Seq: seq, Op: "put", Key: "k", Value: []byte(value)}
}

// TestChaos_VoteCountsOnlyAtItsPosition (S4): a frame's block ID does not
// name the position it was proposed at, and the very same frame can be
// proposed again at another position after its first attempt failed. A
// commit cast for it at the first position must not count at the second,
// where its voter may have committed another frame: neither as a vote held
// aside before the frame arrived, nor as a late re-send.
func TestChaos_VoteCountsOnlyAtItsPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x, y := slotFrame(10, "x"), slotFrame(1, "y")
	h.send(2, h.vote(x, 0, h.n2, voteCommit)) // x at position 0 never reached node-0
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1), "y took position 0")

	h.send(1, h.proposal(x, 1, h.n1))         // x again, on top of y: node-0 commits it
	h.send(2, h.vote(x, 0, h.n2, voteCommit)) // a late re-send of node-2's old vote
	m := h.r.Metrics()
	require.EqualValues(t, 1, m.FramesAccepted, "x accepted with a vote cast at another position")
	require.EqualValues(t, 2, m.VotesOtherPosition)

	h.send(2, h.vote(x, 1, h.n2, voteCommit)) // node-2's vote at this position counts
	require.Equal(t, []string{"x/10"}, receiveN(t, h.applied, 1))
}

// TestChaos_ForgottenVoteStaysAtItsPosition (S4): a validator that
// committed a frame, forgot it, and then committed another frame at a
// later position must not revive its old commit when the first frame is
// proposed again at that later position.
func TestChaos_ForgottenVoteStaysAtItsPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 50 * time.Millisecond})
	x, y, w := slotFrame(10, "x"), slotFrame(1, "y"), slotFrame(2, "w")
	h.send(1, h.proposal(x, 0, h.n1)) // node-0 commits x at position 0
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, 5*time.Second, time.Millisecond, "x forgotten")

	// y takes position 0 with the others' commits (node-0 cancels it).
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	h.send(2, h.vote(y, 0, h.n2, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))

	h.send(1, h.proposal(w, 1, h.n1)) // node-0 commits w at position 1
	// x comes back on top of y, with node-2's commit there: node-0 must
	// cancel it (it committed w there), not revive its commit from
	// position 0.
	h.requireCommittedHolds(x, w)
}

// TestChaos_ResetAtHeadKeepsVote (S4): restoring a snapshot at the head a
// validator already has does not free the position it committed a frame
// at.
func TestChaos_ResetAtHeadKeepsVote(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	y, w, x := slotFrame(1, "y"), slotFrame(2, "w"), slotFrame(3, "x")
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
	h.send(1, h.proposal(w, 1, h.n1)) // node-0 commits w at position 1
	h.r.ResetNamespace("org", "s", 1)
	h.requireCommittedHolds(x, w)
}

// TestChaos_CertificateNamingOurCancelIsRefused: a certificate that lists
// this validator among the commit voters of a frame it cancelled is a lie,
// and none of its voters count.
func TestChaos_CertificateNamingOurCancelIsRefused(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	y, x := slotFrame(1, "y"), slotFrame(2, "x")
	self := validatorNodeID("node-0")
	h.send(1, h.proposal(y, 0, h.n1)) // node-0 commits y at position 0
	h.send(2, h.proposal(x, 0, h.n2)) // and so cancels x there
	cert := record{typ: recCertificate, prop: proposal{frame: x, proposer: h.n2}, voters: nodes(self, h.n1, h.n2)}
	h.send(2, cert)
	m := h.r.Metrics()
	require.EqualValues(t, 1, m.CertificatesBad)
	require.Zero(t, m.FramesAccepted)
	h.send(1, h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
}

// TestChaos_RetryOfUndecidedFrameKeepsProposerOrder (S5): a Propose of a
// frame identical to an own undecided one waits for it only if no other
// Propose of this node returned Accept since it was made; otherwise that
// frame's after list does not order it after them, and the call returns
// Timeout at once (the earlier attempt may still be accepted).
func TestChaos_RetryOfUndecidedFrameKeepsProposerOrder(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x := slotFrame(5, "x")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	d, err := h.r.Propose(ctx, x) // nobody votes: x stays undecided
	cancel()
	require.Equal(t, DecisionTimeout, d, "%v", err)

	// Another Propose of node-0 returns Accept meanwhile.
	y := Frame{OrgID: "org", Namespace: "b", Seq: 1, Op: "put", Key: "k", Value: []byte("y")}
	res := make(chan Decision, 1)
	go func() { d, _ := h.r.Propose(context.Background(), y); res <- d }()
	require.Eventually(t, func() bool { return h.r.Metrics().Pending == 2 }, contractWait, time.Millisecond)
	h.send(1, h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, DecisionAccept, <-res)
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))

	// The retry of x cannot wait for the old proposal of it.
	go func() { d, _ := h.r.Propose(context.Background(), x); res <- d }()
	select {
	case d = <-res:
	case <-time.After(100 * time.Millisecond):
		h.send(1, h.vote(x, 0, h.n1, voteCommit)) // a retry that waits gets x accepted
		d = <-res
	}
	require.Equal(t, DecisionTimeout, d)
}

// TestChaos_RejectAtOtherPositionKeepsVote (S4): a frame node-0 committed
// at one position and forgot keeps that position taken even when a copy of
// the same frame at another position is rejected.
func TestChaos_RejectAtOtherPositionKeepsVote(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 60 * time.Millisecond})
	y, x, z := slotFrame(1, "y"), slotFrame(5, "x"), slotFrame(2, "z")
	h.send(1, h.proposal(y, 0, h.n1), h.vote(y, 0, h.n1, voteCommit))
	require.Equal(t, []string{"y/1"}, receiveN(t, h.applied, 1))
	h.send(2, h.proposal(x, 1, h.n2)) // node-0 commits x at position 1
	require.Equal(t, byte(voteCommit), h.myVote(x))
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, contractWait, time.Millisecond, "x forgotten")

	// A late copy of x's first attempt, at position 0, is rejected there.
	h.send(2, h.proposal(x, 0, h.n2), h.vote(x, 0, h.n2, voteCancel))
	h.send(1, h.vote(x, 0, h.n1, voteCancel))
	require.EqualValues(t, 1, h.r.Metrics().FramesRejected)

	h.send(1, h.proposal(z, 1, h.n1))
	require.Equal(t, byte(voteCancel), h.myVote(z), "node-0 committed a second frame at position 1")
}

// TestChaos_ForgottenVoteKeptPerPosition (S1): node-0 remembers its vote on
// a forgotten frame per position: the same frame turning up at another
// position neither erases nor replaces it.
func TestChaos_ForgottenVoteKeptPerPosition(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: 10 * time.Millisecond, RetainFor: 60 * time.Millisecond})
	y, x := slotFrame(1, "y"), slotFrame(5, "x")
	h.send(1, h.proposal(y, 0, h.n1)) // node-0 commits y at position 0
	h.send(2, h.proposal(x, 0, h.n2)) // and cancels x there
	h.send(1, h.vote(y, 0, h.n1, voteCancel))
	h.send(2, h.vote(y, 0, h.n2, voteCancel)) // y rejected: position 0 is free again
	require.EqualValues(t, 1, h.r.Metrics().FramesRejected)
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 1 }, contractWait, time.Millisecond, "x@0 forgotten")

	h.send(2, h.proposal(x, 3, h.n2)) // x at another position, then forgotten too
	require.Eventually(t, func() bool { return h.r.Metrics().Expired >= 2 }, contractWait, time.Millisecond, "x@3 forgotten")

	h.send(2, h.proposal(x, 0, h.n2)) // x back at position 0
	require.Equal(t, byte(voteCancel), h.myVote(x), "node-0 cancelled x at position 0, then committed it there")
}

// receiveN returns the next n values applied reports, failing the test
// if it waits more than 5s for one.
func receiveN(t *testing.T, applied <-chan string, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case s := <-applied:
			got = append(got, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("applied %q, then nothing for 5s", got)
		}
	}
	return got
}

// newLoneValidator starts node-0 of the validator set node-0, node-1,
// node-2 on a hub where the other two are connected but silent: the test
// plays their part by handing messages to r.receive. cfg sets the other
// fields; both are closed when the test ends.
func newLoneValidator(t *testing.T, cfg QuasarConfig) (*QuasarReplicator, []string) {
	t.Helper()
	ids := []string{"node-0", "node-1", "node-2"}
	hub := NewMemoryHub()
	t.Cleanup(func() { _ = hub.Close() })
	cfg.NodeID, cfg.Validators, cfg.Transport = ids[0], ids, hub.Connect(ids[0])
	hub.Connect(ids[1])
	hub.Connect(ids[2])
	r, err := NewQuasar(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r, ids
}

// TestChaos_OrphanVotesPerVoterBounded: votes for a block not held yet are
// held at most two positions per voter, so one voter voting at many
// positions cannot crowd out the others' votes.
func TestChaos_OrphanVotesPerVoterBounded(t *testing.T) {
	h := newPositionHarness(t, QuasarConfig{WitnessAfter: time.Hour})
	x := slotFrame(1, "x")
	for prev := range uint64(8) {
		h.send(1, h.vote(x, prev+10, h.n1, voteCommit)) // node-1 at many other positions
	}
	h.send(2, h.vote(x, 0, h.n2, voteCommit))
	h.send(1, h.proposal(x, 0, h.n1)) // node-0 commits x: with node-2's held vote, a quorum
	require.Equal(t, []string{"x/1"}, receiveN(t, h.applied, 1))
	require.EqualValues(t, 6, h.r.Metrics().VotesDropped)
}
