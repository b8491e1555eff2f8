package replication

import (
	"fmt"
	"time"
)

// This file holds the simulator's workload and fault schedule: the
// clients that propose and read, the racer, the faults that come and go,
// and the end of a run (healing, convergence, the final proposals).

// propose starts client cl's next Propose (or, for a reader, Barrier).
func (s *simulator) propose(cl *simClient) {
	n := s.nodes[cl.node]
	if n.crashed {
		s.at(s.now+int64(10*time.Millisecond), &simEvent{kind: evPropose, node: cl.node, client: cl})
		return
	}
	if cl.read {
		s.read(n, cl)
		return
	}
	if !cl.final && (s.phase != phaseLoad || s.begun >= s.o.proposals) && cl.retry == nil {
		return // the load is over for this client
	}
	var f Frame
	if cl.retry != nil {
		f, cl.retry = *cl.retry, nil
		cl.op = s.chk.beginShared(cl.node, f)
	} else {
		f = Frame{OrgID: "org", Namespace: cl.ns, Op: "put", Key: fmt.Sprintf("k%d", s.rng.IntN(8)),
			Value: fmt.Appendf(nil, "%s.%d", cl.name, cl.k)}
		if s.rng.IntN(4) == 0 {
			f.Op = "del"
		}
		switch cl.ns {
		case "race":
			f.Seq = uint64(s.racerSlot)
		case "gap":
			f.Seq = s.chk.maxHead("org", "gap") + 1 + uint64(s.rng.IntN(3))
		}
		cl.k++
		cl.op = s.chk.begin(cl.node, f)
	}
	s.begun++
	s.open++
	cl.call = &call{frame: f}
	n.calls[cl.call] = cl
	s.trace.add("%s %s propose %s/%s seq %d %q", s.clock(), s.ids[n.i], f.OrgID, f.Namespace, f.Seq, f.Value)
	s.at(s.now+s.o.proposeWait, &simEvent{kind: evDeadline, node: cl.node, client: cl, call: cl.call})
	n.c.propose(s.now, cl.call)
	s.settle(n)
}

// read starts a reader's Barrier on node n.
func (s *simulator) read(n *simNode, cl *simClient) {
	if s.phase != phaseLoad {
		return
	}
	cl.rd = s.chk.beginRead(n.i, "org", cl.ns)
	cl.bar = &barrier{key: spaceKey{"org", cl.ns}}
	n.reads[cl.bar] = cl
	s.at(s.now+s.o.proposeWait, &simEvent{kind: evDeadline, node: cl.node, client: cl, bar: cl.bar})
	n.c.barrier(s.now, cl.bar)
	s.settle(n)
}

// readDone ends a reader's Barrier that returned nil: its read must see
// every frame accepted before it began.
func (s *simulator) readDone(n *simNode, b *barrier) {
	cl := n.reads[b]
	if cl == nil {
		return
	}
	delete(n.reads, b)
	s.trace.add("%s %s read %s: done", s.clock(), s.ids[n.i], cl.ns)
	s.chk.endRead(cl.rd)
	s.reads++
	s.at(s.now+s.rng.Int64N(s.o.pacing), &simEvent{kind: evPropose, node: cl.node, client: cl})
}

// readDeadline ends a reader's Barrier that timed out.
func (s *simulator) readDeadline(ev *simEvent) {
	n, cl := s.nodes[ev.node], ev.client
	if n.reads[ev.bar] == nil {
		return // done already
	}
	if n.crashed {
		s.at(s.now+int64(10*time.Millisecond), ev)
		return
	}
	delete(n.reads, ev.bar)
	n.c.abandonBarrier(ev.bar)
	s.trace.add("%s %s read %s: timed out", s.clock(), s.ids[n.i], cl.ns)
	s.at(s.now+s.rng.Int64N(s.o.pacing), &simEvent{kind: evPropose, node: cl.node, client: cl})
}

// decided ends the Propose of call cl of node n.
func (s *simulator) decided(n *simNode, cl *call) {
	c := n.calls[cl]
	if c == nil {
		return
	}
	delete(n.calls, cl)
	if e := cl.e; e != nil && e.blk != nil && cl.decision != DecisionTimeout {
		o := s.blockOutcomes[e.blk]
		if o == nil {
			o = &[2]int{}
			s.blockOutcomes[e.blk] = o
		}
		if cl.decision == DecisionAccept {
			o[0]++
		} else {
			o[1]++
		}
	}
	var err error
	switch cl.decision {
	case DecisionReject, DecisionTimeout:
		err = fmt.Errorf("quasar propose: %w", cl.err)
	case DecisionAccept:
		if cl.err != nil {
			err = fmt.Errorf("quasar propose: %w: %w", ErrApply, cl.err)
		}
	}
	s.finish(c, cl.decision, err)
}

// deadline ends a Propose whose ProposeWait passed, as the driver does.
func (s *simulator) deadline(ev *simEvent) {
	n := s.nodes[ev.node]
	c := n.calls[ev.call]
	if c == nil {
		return // decided already
	}
	if n.crashed { // the caller is stopped too
		s.at(s.now+int64(10*time.Millisecond), ev)
		return
	}
	delete(n.calls, ev.call)
	n.c.abandon(ev.call)
	s.settle(n)
	s.finish(c, DecisionTimeout, fmt.Errorf("quasar propose: %w: not decided within %s", ErrTimeout, time.Duration(s.o.proposeWait)))
}

func (s *simulator) finish(c *simClient, d Decision, err error) {
	s.trace.add("%s %s %s %q: %v", s.clock(), s.ids[c.node], d, c.op.token, err)
	s.chk.end(c.op, d, err)
	s.open--
	c.call = nil
	if c.final {
		if d != DecisionAccept {
			s.fail = fmt.Sprintf("liveness: %s's proposal after healing, with every node connected, returned %v: %v", s.ids[c.node], d, err)
			return
		}
		s.finals++
		return
	}
	if s.phase == phaseLoad && s.begun >= s.o.proposals && s.open == 0 {
		s.heal()
		return
	}
	switch {
	case (c.ns == "race" || c.ns == "gap") && d == DecisionTimeout && s.rng.IntN(2) == 0:
		// Retry the very same frame (same Seq), sometimes after this node
		// forgot the first attempt: it may be proposed at another chain
		// position, where no vote of the first attempt may count (S4).
		f := c.op.frame
		c.retry = &f
		wait := s.rng.Int64N(s.o.pacing)
		if s.rng.IntN(2) == 0 {
			wait += s.o.retainFor
		}
		s.at(s.now+wait, &simEvent{kind: evPropose, node: c.node, client: c})
	case c.ns != "race":
		s.at(s.now+s.rng.Int64N(s.o.pacing), &simEvent{kind: evPropose, node: c.node, client: c})
	}
}

// raceStep makes two or three nodes propose the same explicit Seq of the
// "race" namespace at once: at most one may win.
func (s *simulator) raceStep() {
	if s.phase != phaseLoad || s.begun >= s.o.proposals {
		return
	}
	s.racerSlot++
	// One round in three, the racers propose one and the same frame: at
	// different chain positions when their heads differ.
	var same *Frame
	if s.rng.IntN(3) == 0 {
		same = &Frame{OrgID: "org", Namespace: "race", Seq: uint64(s.racerSlot), Op: "put", Key: "owner", Value: fmt.Appendf(nil, "race.s%d.same", s.racerSlot)}
	}
	for _, i := range s.rng.Perm(s.o.n)[:2+s.rng.IntN(2)] {
		s.at(s.now, &simEvent{kind: evPropose, node: i, client: &simClient{node: i, ns: "race", name: fmt.Sprintf("race.s%d.n%d", s.racerSlot, i), retry: same}})
	}
	s.at(s.now+s.rng.Int64N(int64(50*time.Millisecond)), &simEvent{kind: evRace})
}

// faultStep takes the fault schedule one step further.
func (s *simulator) faultStep() {
	if s.phase != phaseLoad {
		return
	}
	s.at(s.now+int64(50*time.Millisecond)+s.rng.Int64N(int64(250*time.Millisecond)), &simEvent{kind: evFault})
	n, q := s.o.n, s.o.n/2+1
	switch a := s.rng.IntN(13); {
	case a < 3:
		s.drop, s.dup = s.rng.Float64()*0.2, s.rng.Float64()*0.2
		s.delay = [2]int64{0, 0}
		if s.rng.IntN(2) == 0 {
			s.delay[1] = s.rng.Int64N(int64(20 * time.Millisecond))
		}
		s.trace.add("%s faults drop=%.2f dup=%.2f delay<=%s", s.clock(), s.drop, s.dup, time.Duration(s.delay[1]))
	case a < 5:
		k := 2 + s.rng.IntN(2)
		for i, node := range s.rng.Perm(n) {
			g := i % k
			if i >= k {
				g = s.rng.IntN(k)
			}
			s.group[node] = g + 1
		}
		s.trace.add("%s partition %v", s.clock(), s.group)
	case a < 7:
		clear(s.group)
		s.trace.add("%s heal", s.clock())
	case a < 10: // disconnect (7), crash (8) or deafen (9) a node, if few enough are down
		down := 0
		for _, x := range s.nodes {
			if x.cut || x.crashed || x.deaf {
				down++
			}
		}
		if down >= n-q {
			break
		}
		x := s.nodes[s.rng.IntN(n)]
		switch {
		case a < 8:
			x.cut = true
			s.trace.add("%s disconnect %s", s.clock(), s.ids[x.i])
		case a < 9 && !x.crashed:
			x.crashed = true
			s.at(s.now+s.rng.Int64N(int64(2*time.Second)), &simEvent{kind: evResume, node: x.i})
			s.trace.add("%s crash %s", s.clock(), s.ids[x.i])
			if s.o.durable {
				s.crash(x)
			}
		case a == 9:
			x.deaf = true
			s.trace.add("%s deafen %s", s.clock(), s.ids[x.i])
		}
	case a < 11:
		for _, i := range s.rng.Perm(n) {
			if x := s.nodes[i]; x.cut || x.deaf {
				x.cut, x.deaf = false, false
				s.trace.add("%s reconnect %s", s.clock(), s.ids[i])
				break
			}
		}
	default:
		s.drop, s.dup, s.delay = 0, 0, [2]int64{}
		s.trace.add("%s faults off", s.clock())
	}
}

// heal ends the load: every fault is removed, every node connected and
// running; the replicas must converge.
func (s *simulator) heal() {
	s.phase = phaseHeal
	clear(s.group)
	s.drop, s.dup, s.delay = 0, 0, [2]int64{}
	for _, n := range s.nodes {
		n.cut, n.deaf = false, false
		if n.crashed {
			s.at(s.now, &simEvent{kind: evResume, node: n.i})
		}
	}
	s.healAt = s.now
	s.trace.add("%s heal, reconnect all, faults off", s.clock())
	s.at(s.now+int64(10*time.Millisecond), &simEvent{kind: evHealed})
}

// simMaxTime bounds a run in virtual time: the load takes seconds, and
// each later phase at most simConverge.
const simMaxTime = int64(10 * time.Minute)

// simConverge bounds, in virtual time, how long the replicas may take to
// converge after healing: far above what repair needs (anti-entropy
// intervals and repair backoff of at most 32 WitnessAfter).
const simConverge = int64(60 * time.Second)

// healedStep checks convergence after healing, then runs the final
// proposals (one per node, in a namespace it wrote alone, each of which
// must be accepted), then checks convergence again.
func (s *simulator) healedStep() {
	if why := s.chk.converged(); why != "" {
		if s.now-s.healAt > simConverge {
			s.fail = fmt.Sprintf("S3/liveness: replicas did not converge within %s of healing: %s", time.Duration(simConverge), why)
			return
		}
		s.at(s.now+int64(10*time.Millisecond), &simEvent{kind: evHealed})
		return
	}
	switch s.phase {
	case phaseHeal:
		s.phase = phaseFinal
		s.healAt = s.now
		// Into a namespace each node wrote alone under faults: its next
		// proposal there is accepted, also right after its own timeouts
		// (S6).
		for i := range s.o.n {
			ns := fmt.Sprintf("own-%d-0", i)
			s.at(s.now, &simEvent{kind: evPropose, node: i, client: &simClient{node: i, ns: ns, name: fmt.Sprintf("final.n%d", i), sole: true, final: true}})
		}
		s.at(s.now+int64(10*time.Millisecond), &simEvent{kind: evHealed})
	case phaseFinal:
		if s.finals < s.o.n || s.open > 0 {
			if s.now-s.healAt > simConverge {
				s.fail = fmt.Sprintf("liveness: %d of %d final proposals accepted within %s", s.finals, s.o.n, time.Duration(simConverge))
				return
			}
			s.at(s.now+int64(10*time.Millisecond), &simEvent{kind: evHealed})
			return
		}
		for _, n := range s.nodes {
			if m := n.m.snapshot(); m.Conflicts != 0 {
				s.fail = fmt.Sprintf("%s reports %d conflicts (two frames accepted at one position)", s.ids[n.i], m.Conflicts)
				return
			}
		}
		s.phase = phaseDone
	}
}
