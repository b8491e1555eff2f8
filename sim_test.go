package replication

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// This file is the simulator: it runs n validators of the real protocol
// core (core.go) in one goroutine, with virtual time and a simulated
// network, and plays the driver's part for each of them (it applies their
// frames, runs their Propose calls, delivers their messages). Every choice
// comes from one seed: the cluster size and timings, the workload, message
// drops, duplicates, delays and reordering, partitions, disconnected nodes
// and crashed nodes. In about half of the seeds the validators keep a data
// directory (sim_durable_test.go): a crashed node loses its memory and
// what it had not synced, and restarts from its log; in the others it
// stops and later resumes with its memory intact. The invariant checker (checker_test.go) sees every
// delivery, apply and decision, and the run stops at the first step after
// which an invariant is broken. The same seed replays the identical run:
// nothing in it depends on the machine, the clock or the goroutine
// scheduler. TestSim (sim_seeds_test.go) runs it.

// simOpts are the settings of one simulated run, all drawn from its seed.
type simOpts struct {
	n            int
	witness      int64 // WitnessAfter
	proposeWait  int64
	antiEntropy  int64
	retainFor    int64
	retainFrames int
	maxBacklog   int
	proposals    int   // Propose calls of the load phase
	pacing       int64 // a client waits up to this long between two Propose calls
	unicast      bool  // the transport can send to one validator
	senderAware  bool  // the transport tells who sent each message
	durable      bool  // validators keep a data directory; a crash loses memory
	// sealWait: a node seals its open frames into a block up to this long
	// after the first one opened (0: at once), as a driver does while its
	// previous message is on its way; writers: the proposers per node in
	// namespaces of their own. Long waits and many writers make large
	// blocks, across namespaces.
	sealWait int64
	writers  int
	// signed: validators have signing keys (attest.go), and the last one
	// is Byzantine besides: it also sends forged certificates,
	// attestations and replayed messages (sim_byzantine_test.go).
	signed bool
}

func (o simOpts) String() string {
	return fmt.Sprintf("%d validators, WitnessAfter %s, ProposeWait %s, RetainFrames %d, RetainFor %s, MaxApplyBacklog %d, %d proposals paced up to %s, unicast %v, sender-aware %v, durable %v, blocks sealed within %s, %d writers per node, signed with a Byzantine validator %v",
		o.n, time.Duration(o.witness), time.Duration(o.proposeWait), o.retainFrames, time.Duration(o.retainFor), o.maxBacklog,
		o.proposals, time.Duration(o.pacing), o.unicast, o.senderAware, o.durable, time.Duration(o.sealWait), o.writers, o.signed)
}

// simOptsFor draws the settings of seed's run.
func simOptsFor(seed uint64) simOpts {
	rng := rand.New(rand.NewPCG(seed, 0x5e771))
	ms := int64(time.Millisecond)
	o := simOpts{
		n:            3 + 2*int(seed%3),
		witness:      (10 + rng.Int64N(31)) * ms,
		proposeWait:  (500 + rng.Int64N(1501)) * ms,
		antiEntropy:  (50 + rng.Int64N(200)) * ms,
		retainFor:    []int64{60_000, 5_000, 2_000}[rng.IntN(3)] * ms,
		retainFrames: []int{DefaultRetainFrames, 256, 32}[rng.IntN(3)],
		proposals:    200 + rng.IntN(201),
		pacing:       []int64{10, 50, 200}[rng.IntN(3)] * ms,
		unicast:      rng.IntN(4) != 0,
		senderAware:  rng.IntN(4) != 0,
	}
	if rng.IntN(3) == 0 {
		o.maxBacklog = 2 << 10 // about fifteen frames: bursts and catch-ups shed
	}
	o.sealWait = []int64{0, 2, 20}[rng.IntN(3)] * ms
	o.writers = 2
	if rng.IntN(4) == 0 {
		o.writers = 40 // large blocks, across many namespaces
		o.proposals += 400
	}
	// Not drawn from rng, so that the other settings of a seed stay what
	// they were before durability was simulated.
	o.durable = (seed/3)%2 == 1
	o.signed = seed%8 == 5
	return o
}

// Event kinds.
const (
	evDeliver  = iota // a message reaches node
	evTick            // node's periodic tick
	evApply           // node applies one frame (or behind notice) of its queue
	evPropose         // a client of node starts its next Propose
	evDeadline        // a Propose call's ProposeWait passes
	evFault           // the fault schedule's next step
	evRace            // the racer's next round
	evRestore         // node's application tries a snapshot restore again
	evResume          // a crashed node resumes
	evHealed          // after healing: check convergence
	evSeal            // node seals its open frames into a block
	evSign            // node's signer signs its vote batches that are due
	evForge           // the Byzantine validator sends forgeries
)

type simEvent struct {
	at     int64
	seq    uint64 // ties broken by scheduling order
	kind   int
	node   int
	from   int
	msg    []byte
	client *simClient
	call   *call
	bar    *barrier
	behind *BehindError
	forged bool // a forgery of the Byzantine validator: the checker ignores it
}

type eventQueue []*simEvent

func (q eventQueue) Len() int { return len(q) }

func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }

func (q *eventQueue) Push(x any) { *q = append(*q, x.(*simEvent)) }

func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}

// simNode is one validator: its core and what its driver would hold.
type simNode struct {
	i        int
	c        *core
	m        metrics
	crashed  bool
	cut      bool // disconnected from the network
	deaf     bool // receives nothing, but what it sends arrives
	applying bool // an evApply is scheduled
	sealing  bool // an evSeal is scheduled
	signing  bool // an evSign is scheduled
	signer   *signer
	calls    map[*call]*simClient
	reads    map[*barrier]*simClient
	cfg      coreConfig
	disk     simDisk // the data directory (durable runs)
}

// simClient is one proposer of a workload: it proposes one frame after
// the other into its namespace, with Seq 0, or, as one of the racers,
// with an explicit Seq.
type simClient struct {
	node  int
	ns    string
	name  string
	k     int
	sole  bool   // the only writer of ns (S6)
	retry *Frame // a frame to propose as is: a retry after a timeout, or a frame other racers propose too
	read  bool   // a reader: Barrier, then a read, again and again
	rd    *checkedRead
	bar   *barrier
	op    *checkedOp
	call  *call
	final bool // the proposal after healing: must be accepted
}

// simPhase is where a run stands.
type simPhase int

const (
	phaseLoad  simPhase = iota // workload and faults
	phaseHeal                  // network healed: waiting for convergence
	phaseFinal                 // one more proposal per node, then convergence again
	phaseDone
)

type simulator struct {
	seed   uint64
	o      simOpts
	rng    *rand.Rand // the network, the faults and the workload
	now    int64
	seq    uint64
	events eventQueue
	nodes  []*simNode
	ids    []string
	chk    *checker

	group  []int // partition group per node (0: no partition)
	drop   float64
	dup    float64
	delay  [2]int64 // min, max
	phase  simPhase
	begun  int // Propose calls begun
	open   int // Propose calls not yet returned
	finals int // final proposals accepted
	healAt int64
	steps  int
	fail   string
	trace  *simTrace

	delivered, lost, dropped, duplicated int
	// blockOutcomes: per own block, the Propose calls its frames returned
	// Accept and Reject to (for the summary: blocks of mixed outcomes).
	blockOutcomes              map[*block]*[2]int
	restores, racerSlot, reads int
	byz                        *simByzantine // signed runs
}

// simTrace keeps the last events of a run for a failure report, or every
// event when replaying a seed verbosely.
type simTrace struct {
	all   bool
	lines []string
	max   int
}

func (t *simTrace) add(format string, args ...any) {
	if t == nil {
		return
	}
	if !t.all && len(t.lines) >= t.max {
		copy(t.lines, t.lines[len(t.lines)/2:])
		t.lines = t.lines[:len(t.lines)-len(t.lines)/2]
	}
	t.lines = append(t.lines, fmt.Sprintf(format, args...))
}

// newSimulator sets up seed's run. trace, if not nil, records events.
func newSimulator(seed uint64, trace *simTrace) *simulator {
	o := simOptsFor(seed)
	s := &simulator{seed: seed, o: o, rng: rand.New(rand.NewPCG(seed, 0xfa17)), trace: trace, blockOutcomes: map[*block]*[2]int{}}
	for i := range o.n {
		s.ids = append(s.ids, fmt.Sprintf("node-%d", i))
	}
	q := o.n/2 + 1
	s.chk = newChecker(s.ids, q)
	s.group = make([]int, o.n)
	cc := coreConfig{
		names:        s.ids,
		byNodeID:     map[nodeID]int{},
		q:            q,
		witness:      o.witness,
		retainFor:    o.retainFor,
		antiEntropy:  o.antiEntropy,
		retainFrames: o.retainFrames,
		maxFrame:     DefaultMaxFrameBytes,
		maxBacklog:   o.maxBacklog,
		unicast:      o.unicast,
		durable:      o.durable,
		archive:      o.durable,
	}
	for i, id := range s.ids {
		cc.ids = append(cc.ids, validatorNodeID(id))
		cc.byNodeID[validatorNodeID(id)] = i
		if o.signed {
			cc.keys = append(cc.keys, simKey(id).Public())
		}
	}
	s.now = int64(time.Second) // the clock starts above zero, as the driver's does
	for i := range o.n {
		n := &simNode{i: i, calls: map[*call]*simClient{}, reads: map[*barrier]*simClient{}}
		n.cfg = cc
		n.cfg.self = i
		c, err := newCore(n.cfg, &n.m)
		if err != nil {
			panic(err)
		}
		n.c = c
		s.nodes = append(s.nodes, n)
		s.newSigner(n)
		s.at(s.now+s.rng.Int64N(o.witness/2), &simEvent{kind: evTick, node: i})
	}
	// The workload: two proposers per node in namespaces of their own,
	// one per node in namespaces a few nodes share, one per node in the
	// "gap" namespace (explicit Seqs a little above the head, retried
	// after a timeout), and the racer.
	nShared := max(1, o.n/3)
	for i := range o.n {
		for j := range o.writers {
			ns := fmt.Sprintf("own-%d-%d", i, j)
			s.chk.soleWriter("org", ns)
			s.startClient(&simClient{node: i, ns: ns, name: fmt.Sprintf("n%d.w%d", i, j), sole: true})
		}
		s.startClient(&simClient{node: i, ns: fmt.Sprintf("shared-%d", i%nShared), name: fmt.Sprintf("n%d.s", i)})
		s.startClient(&simClient{node: i, ns: "gap", name: fmt.Sprintf("n%d.g", i)})
		s.startClient(&simClient{node: i, ns: fmt.Sprintf("shared-%d", (i+1)%nShared), name: fmt.Sprintf("n%d.r", i), read: true})
	}
	s.at(s.now, &simEvent{kind: evRace})
	if o.signed {
		s.byz = &simByzantine{node: o.n - 1}
		s.at(s.now+int64(50*time.Millisecond), &simEvent{kind: evForge})
	}
	s.at(s.now+s.rng.Int64N(int64(300*time.Millisecond)), &simEvent{kind: evFault})
	return s
}

func (s *simulator) startClient(cl *simClient) {
	s.at(s.now+s.rng.Int64N(int64(10*time.Millisecond)), &simEvent{kind: evPropose, node: cl.node, client: cl})
}

// at schedules ev at time t.
func (s *simulator) at(t int64, ev *simEvent) {
	ev.at = max(t, s.now)
	s.seq++
	ev.seq = s.seq
	heap.Push(&s.events, ev)
}

// run runs the simulation to its end, or to the first broken invariant,
// and returns why it failed ("" if it did not).
func (s *simulator) run() string {
	for s.phase != phaseDone && s.fail == "" && len(s.events) > 0 {
		ev := heap.Pop(&s.events).(*simEvent)
		if ev.at-int64(time.Second) > simMaxTime {
			s.fail = fmt.Sprintf("still in phase %d after %s of virtual time (%d Propose calls begun, %d open)",
				s.phase, time.Duration(simMaxTime), s.begun, s.open)
			break
		}
		s.now = ev.at
		s.step(ev)
		s.steps++
		if v := s.chk.check(); len(v) > 0 {
			s.fail = fmt.Sprintf("step %d (%s): %d invariant violations:\n%s", s.steps, time.Duration(s.now), len(v), strings.Join(v, "\n"))
		}
	}
	if s.fail == "" && s.phase != phaseDone {
		s.fail = "no event left before the run ended"
	}
	return s.fail
}

// step carries out one event.
func (s *simulator) step(ev *simEvent) {
	switch ev.kind {
	case evDeliver:
		s.deliver(ev)
	case evTick:
		n := s.nodes[ev.node]
		s.at(s.now+max(s.o.witness/2, int64(time.Millisecond)), ev)
		if !n.crashed {
			n.c.tick(s.now)
			s.settle(n)
			s.syncAll(n)
		}
	case evApply:
		s.apply(s.nodes[ev.node])
	case evPropose:
		s.propose(ev.client)
	case evDeadline:
		if ev.client != nil && ev.client.read {
			s.readDeadline(ev)
		} else {
			s.deadline(ev)
		}
	case evFault:
		s.faultStep()
	case evRace:
		s.raceStep()
	case evRestore:
		s.restore(s.nodes[ev.node], ev.behind)
	case evResume:
		n := s.nodes[ev.node]
		if !n.crashed {
			break // resumed already (healing resumes crashed nodes at once)
		}
		n.crashed = false
		s.trace.add("%s resume %s", s.clock(), s.ids[n.i])
		if s.o.durable {
			s.reboot(n)
		}
		if n.c.applyBusy() {
			s.scheduleApply(n)
		}
	case evHealed:
		s.healedStep()
	case evSeal:
		n := s.nodes[ev.node]
		if n.crashed {
			s.at(s.now+int64(10*time.Millisecond), ev)
			break
		}
		n.sealing = false
		n.c.seal(s.now)
		s.settle(n)
	case evSign:
		s.sign(s.nodes[ev.node], ev)
	case evForge:
		s.forge()
	}
}

func (s *simulator) clock() string {
	return fmt.Sprintf("%9.3fms", float64(s.now-int64(time.Second))/1e6)
}

// settle carries out what node n's core produced, as the driver does: it
// reports decided calls, schedules the apply queue and sends the outbox.
func (s *simulator) settle(n *simNode) {
	if n.c.sealable() && !n.sealing {
		if s.o.sealWait == 0 {
			n.c.seal(s.now)
		} else {
			n.sealing = true
			s.at(s.now+1+s.rng.Int64N(s.o.sealWait), &simEvent{kind: evSeal, node: n.i})
		}
	}
	rd := n.c.takeReady()
	s.persist(n, &rd) // synced before anything below leaves the node
	for _, cl := range rd.decided {
		s.decided(n, cl)
	}
	for _, b := range rd.barriers {
		s.readDone(n, b)
	}
	if n.c.applyBusy() {
		s.scheduleApply(n)
	}
	for _, l := range rd.logs {
		s.trace.add("%s %s log %s %s %v", s.clock(), s.ids[n.i], l.level, l.msg, l.args)
	}
	s.scheduleSign(n)
	for {
		msg, ok := n.c.out.pop()
		if !ok {
			break
		}
		s.send(n.i, msg)
	}
	if len(rd.reads) > 0 {
		s.answerDisk(n, slices.Clone(rd.reads))
		s.settle(n)
	}
}

// scheduleApply has node n apply its next frame after a short while (its
// handlers take time).
func (s *simulator) scheduleApply(n *simNode) {
	if n.applying {
		return
	}
	n.applying = true
	s.at(s.now+s.rng.Int64N(int64(2*time.Millisecond)), &simEvent{kind: evApply, node: n.i})
}

// send puts a message of node from on the network.
func (s *simulator) send(from int, msg outMsg) { s.sendAs(from, msg, false) }

// sendAs is send, for a forgery if forged.
func (s *simulator) sendAs(from int, msg outMsg, forged bool) {
	for to := range s.o.n {
		if to == from || (msg.to >= 0 && msg.to != to) {
			continue
		}
		if !s.link(from, to) {
			s.lost++
			continue
		}
		if s.drop > 0 && s.rng.Float64() < s.drop {
			s.dropped++
			continue
		}
		copies := 1
		if s.dup > 0 && s.rng.Float64() < s.dup {
			copies = 2
			s.duplicated++
		}
		for range copies {
			d := s.delay[0]
			if s.delay[1] > s.delay[0] {
				d += s.rng.Int64N(s.delay[1] - s.delay[0] + 1)
			}
			s.at(s.now+d, &simEvent{kind: evDeliver, node: to, from: from, msg: msg.b, forged: forged})
		}
	}
}

func (s *simulator) link(a, b int) bool {
	na, nb := s.nodes[a], s.nodes[b]
	return !na.cut && !nb.cut && s.group[a] == s.group[b]
}

func (s *simulator) deliver(ev *simEvent) {
	n := s.nodes[ev.node]
	if n.crashed || n.deaf || !s.link(ev.from, ev.node) {
		s.lost++
		return
	}
	s.delivered++
	if !ev.forged {
		s.chk.onDeliver(s.ids[ev.from], s.ids[ev.node], quasarKind, ev.msg)
	}
	if s.byz != nil && ev.node == s.byz.node {
		s.byz.overhear(ev)
	}
	m, err := readMessage(ev.msg, DefaultMaxFrameBytes)
	var recs []record
	for err == nil && m.more() {
		recs, err = m.read(recs, recordChunk)
	}
	if err != nil {
		s.fail = fmt.Sprintf("%s sent %s a message that does not decode: %v", s.ids[ev.from], s.ids[ev.node], err)
		return
	}
	prepareRecords(recs, nil)
	if s.trace != nil && s.trace.all {
		s.trace.add("%s %s <- %s %s", s.clock(), s.ids[ev.node], s.ids[ev.from], describeRecords(recs))
	}
	from := ev.from
	if !s.o.senderAware {
		from = -1
	}
	n.c.step(s.now, from, recs)
	s.settle(n)
}

// apply applies node n's next frame, as its driver's apply goroutine
// would, or hands a behind notice to the application.
func (s *simulator) apply(n *simNode) {
	n.applying = false
	if n.crashed {
		return // evResume schedules it again
	}
	e, behind := n.c.popApply()
	switch {
	case behind != nil:
		var be *BehindError
		if !errors.As(behind, &be) || !errors.Is(behind, ErrBehind) {
			s.fail = fmt.Sprintf("%s: behind notice %v is not a *BehindError wrapping ErrBehind", s.ids[n.i], behind)
			return
		}
		s.trace.add("%s %s behind %v", s.clock(), s.ids[n.i], behind)
		s.restore(n, be)
	case e != nil:
		if !s.refed(n, e) {
			s.chk.appliedBlock(n.i, e.p.frame, &e.id)
		}
		n.c.applied(e, nil)
	}
	s.settle(n)
}

// restore does what an application does on OnBehind: it restores the
// namespace from a snapshot of a replica further ahead, and calls
// ResetNamespace; with none ahead yet, it tries again a little later.
func (s *simulator) restore(n *simNode, be *BehindError) {
	if n.crashed {
		s.at(s.now+int64(100*time.Millisecond), &simEvent{kind: evRestore, node: n.i, behind: be})
		return
	}
	seq, ok := s.chk.restoreFrom(n.i, be.OrgID, be.Namespace, be.From)
	if !ok {
		s.at(s.now+int64(50*time.Millisecond), &simEvent{kind: evRestore, node: n.i, behind: be})
		return
	}
	s.restores++
	s.trace.add("%s %s restores %s/%s at seq %d", s.clock(), s.ids[n.i], be.OrgID, be.Namespace, seq)
	n.c.reset(s.now, spaceKey{be.OrgID, be.Namespace}, seq)
	s.settle(n)
}

// summary describes a finished run for the log.
func (s *simulator) summary() string {
	proposed, accepted, rejected, timedOut, applied, restores := s.chk.stats()
	boots, refeds, reads := 0, 0, 0
	for _, n := range s.nodes {
		boots += n.disk.boots
		refeds += n.disk.refeds
		reads += n.disk.diskReads
	}
	blocks, frames, mixed, largest := s.blockStats()
	return fmt.Sprintf("seed %d (%s): %d steps, %s virtual; %d proposals: %d accepted, %d rejected, %d timed out; %d reads after a barrier; %d frames applied per node, %d namespaces restored; network: %d delivered, %d lost, %d dropped, %d duplicated; %d restarts from a log, %d frames fed again after them, %d syncs answered from an archive; %d blocks of %d frames (up to %d), %d with frames both accepted and rejected",
		s.seed, s.o, s.steps, time.Duration(s.now-int64(time.Second)).Round(time.Millisecond), proposed, accepted, rejected, timedOut, s.reads, applied, restores,
		s.delivered, s.lost, s.dropped, s.duplicated, boots, refeds, reads, blocks, frames, largest, mixed)
}

// blockStats returns the blocks the validators proposed and the frames in
// them (all runs of a node's core, since it last restarted), how many
// blocks had frames both accepted and rejected (by Propose outcome), and
// the largest block.
func (s *simulator) blockStats() (blocks, frames uint64, mixed, largest int) {
	for _, n := range s.nodes {
		blocks += n.m.blocksProposed.Load()
		frames += n.m.framesProposed.Load()
	}
	for b, o := range s.blockOutcomes {
		largest = max(largest, len(b.frames))
		if o[0] > 0 && o[1] > 0 {
			mixed++
		}
	}
	return blocks, frames, mixed, largest
}

// describeRecords summarizes the records of a message for a trace.
func describeRecords(recs []record) string {
	var parts []string
	for i := range recs {
		r := &recs[i]
		f := &r.prop.frame
		switch r.typ {
		case recBlock:
			var after, frames []string
			for a := range r.blk.after.all() {
				after = append(after, fmt.Sprintf("%s/%d", a.ns, a.seq))
			}
			for _, p := range r.blk.slots() {
				frames = append(frames, fmt.Sprintf("%s/%d@%d %q", p.frame.Namespace, p.frame.Seq, p.prev, p.frame.Value))
			}
			parts = append(parts, fmt.Sprintf("block %x %v after %v", r.id[:4], frames, after))
		case recCertificate:
			parts = append(parts, fmt.Sprintf("certificate %s/%d@%d %q (%d voters, %d parts)", f.Namespace, f.Seq, r.prop.prev, f.Value, r.voters.len(), r.parts.n))
		case recVote:
			parts = append(parts, fmt.Sprintf("vote %x %x", r.vote.block[:4], r.vote.bits))
		case recFetch:
			parts = append(parts, fmt.Sprintf("fetch %x", r.block[:4]))
		case recSync:
			parts = append(parts, fmt.Sprintf("sync %s from %d", r.ref.ns, r.ref.seq))
		case recBehind:
			parts = append(parts, fmt.Sprintf("behind %s from %d", r.ref.ns, r.ref.seq))
		case recDigest:
			parts = append(parts, fmt.Sprintf("digest of %d", r.digest.n))
		case recAttestation:
			parts = append(parts, "attestation")
		case recPartRequest:
			parts = append(parts, fmt.Sprintf("part request %x", r.block[:4]))
		case recPart:
			parts = append(parts, fmt.Sprintf("part %x", r.block[:4]))
		}
	}
	return strings.Join(slices.Compact(parts), ", ")
}
