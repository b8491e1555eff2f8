package replication

import (
	"fmt"
	"strings"
)

// debugDump describes a replicator's namespace state (tests only).
func (r *QuasarReplicator) debugDump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c.debugDump() + fmt.Sprintf("  flushing=%v applying=%v kick pending=%d sendKick pending=%d\n",
		r.flushing, r.applying, len(r.kick), len(r.sendKick))
}

// debugDump describes a core's state (tests only). It visits namespaces
// in map order: its output is for people, not for comparisons.
func (c *core) debugDump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s; outbox %d bytes, %d cut\n", c, c.out.bytes, len(c.out.full))
	for _, e := range c.applyQ[c.applyHead:] {
		w := "none"
		if cl := e.call; cl != nil {
			w = fmt.Sprintf("call(wake=%v decided=%v reentrant=%v)", cl.wake != nil, cl.decided, cl.reentrant)
		}
		fmt.Fprintf(&b, "  queued %s/%s seq=%d skip=%v phase=%s %s\n", e.key.org, e.key.ns, e.p.frame.Seq, e.skip, e.phase, w)
	}
	for _, ns := range c.spaces {
		fmt.Fprintf(&b, "ns %s/%s head=%d dispatched=%d maxSeen=%d behind=%v mine=%v turns=%d pending=%d deferred=%d open=%d voted=%v\n",
			ns.key.org, ns.key.ns, ns.head, ns.dispatched, ns.maxSeen, ns.behind, ns.mine != nil, len(ns.turns), len(ns.pending), len(ns.deferred), len(ns.open), ns.voted != nil)
		if len(ns.pending) > 0 {
			e := ns.pending[0]
			fmt.Fprintf(&b, "   front pending seq=%d prev=%d after=%d refs\n", e.p.frame.Seq, e.p.prev, len(e.p.ord.deps))
			for _, a := range e.p.ord.deps {
				d := a.ns
				fmt.Fprintf(&b, "     dep %s/%s need %d: head=%d dispatched=%d behind=%v evicted=%v\n", d.key.org, d.key.ns, a.seq, d.head, d.dispatched, d.behind, d.evicted)
			}
			if e.p.ord.unknown > 0 {
				fmt.Fprintf(&b, "     and %d namespaces not known here\n", e.p.ord.unknown)
			}
		}
		for prev, e := range ns.chain.all() {
			if e.p.prev >= ns.head && e.phase == phaseAccepted {
				fmt.Fprintf(&b, "   unlinked accepted at prev=%d seq=%d\n", prev, e.p.frame.Seq)
			}
		}
	}
	return b.String()
}

// applyAll applies every frame queued for apply, waiting for a goroutine
// that is applying to finish first (tests only).
func (r *QuasarReplicator) applyAll() {
	r.mu.Lock()
	for r.applying {
		r.applyIdle.Wait()
	}
	r.applyLocked(nil)
	r.unlock()
}
