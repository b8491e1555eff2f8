package replication

import (
	"fmt"
	"strings"
)

// debugDump describes a replicator's namespace state (tests only).
func (r *QuasarReplicator) debugDump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "outbox flushing=%v count=%d full=%d bytes=%d; applying=%v applyQ=%d; undecided=%d\n",
		r.st.out.flushing, r.st.out.count, len(r.st.out.full), len(r.st.out.buf), r.st.applying,
		len(r.st.applyQ)-r.st.applyHead, r.st.undecided.n)
	for _, e := range r.st.applyQ[r.st.applyHead:] {
		w := "none"
		if e.w != nil {
			w = fmt.Sprintf("waiter(wake=%v resolved=%v reentrant=%v)", e.w.wake != nil, e.w.resolved, e.w.reentrant)
		}
		fmt.Fprintf(&b, "  queued %s/%s seq=%d skip=%v applied=%v %s\n", e.key.org, e.key.ns, e.p.frame.Seq, e.skip, e.applied, w)
	}
	fmt.Fprintf(&b, "  kick pending=%d needKick=%v sendKick pending=%d\n", len(r.kick), r.st.needKick, len(r.sendKick))
	for _, ns := range r.st.spaces {
		fmt.Fprintf(&b, "ns %s/%s head=%d dispatched=%d maxSeen=%d behind=%v busy=%v pending=%d deferred=%d open=%d voted=%v\n",
			ns.key.org, ns.key.ns, ns.head, ns.dispatched, ns.maxSeen, ns.behind, ns.busy, len(ns.pending), len(ns.deferred), len(ns.open), ns.voted != nil)
		if len(ns.pending) > 0 {
			e := ns.pending[0]
			fmt.Fprintf(&b, "   front pending seq=%d prev=%d after=%d refs\n", e.p.frame.Seq, e.p.prev, len(e.p.deps))
			for _, a := range e.p.deps {
				d := a.ns
				fmt.Fprintf(&b, "     dep %s/%s need %d: head=%d dispatched=%d behind=%v\n", d.key.org, d.key.ns, a.seq, d.head, d.dispatched, d.behind)
			}
		}
		for prev, e := range ns.chain {
			if e.p.prev >= ns.head && !e.linked {
				fmt.Fprintf(&b, "   unlinked accepted at prev=%d seq=%d\n", prev, e.p.frame.Seq)
			}
		}
	}
	return b.String()
}
