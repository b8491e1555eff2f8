package replication

import (
	"fmt"
	"slices"
	"strings"
)

// This file holds the simulator's data directories. In a durable run
// (simOpts.durable), each node's driver keeps the records its core
// reports: a batch with a strict record is synced before its messages and
// decisions leave (as the driver's group commit does), the others at the
// node's next tick. A crash loses the node's memory and every record not
// synced yet, except a random prefix of them, which may end in the middle
// of a record (a torn write): the restarted node reads its log through the
// real decoder, which must drop the torn tail. The node then restarts from
// its log alone, and its in-flight Propose calls end as if timed out (their
// callers crashed with it). The application's state survives (it is its
// own database): frames it had applied may be fed to it again after a
// restart, and it recognises them by Seq (refed).

// simCompactAt is the log size below which a node never compacts its log;
// above, it compacts once the log is four times the size of its last
// compaction (as the driver does, with a larger minimum).
const simCompactAt = 64 << 10

// simDisk is a node's data directory.
type simDisk struct {
	log     []byte // the log file's records (after the magic), synced
	pending []byte // records not synced yet
	boots   int    // restarts from the log
	// refeed: per namespace, the Seq through which the application had
	// applied frames when the node last crashed. Only frames up to it may
	// be fed to it again.
	refeed    map[spaceKey]uint64
	refeds    int
	compactAt int
	// The archive: accepted frames' payloads by namespace and position,
	// synced with the log (archPending until then).
	arch        map[spaceKey]map[uint64][]byte
	archPending []archiveRecord
	diskReads   int
}

// persist takes the records of a batch; a strict batch is synced at once.
func (s *simulator) persist(n *simNode, rd *ready) {
	if !s.o.durable || len(rd.persist) == 0 {
		return
	}
	for _, a := range rd.arch {
		n.disk.archPending = append(n.disk.archPending, archiveRecord{key: a.key, prev: a.prev, seq: a.seq, data: slices.Clone(rd.persist[a.lo:a.hi])})
	}
	n.disk.pending = append(n.disk.pending, rd.persist...)
	if rd.strict {
		s.syncAll(n)
	}
}

// syncAll syncs every pending record, compacting the log once it outgrew
// simCompactAt.
func (s *simulator) syncAll(n *simNode) {
	d := &n.disk
	if !s.o.durable || len(d.pending) == 0 {
		return
	}
	if d.arch == nil {
		d.arch = map[spaceKey]map[uint64][]byte{}
	}
	for _, a := range d.archPending {
		m := d.arch[a.key]
		if m == nil {
			m = map[uint64][]byte{}
			d.arch[a.key] = m
		}
		m[a.prev] = a.data
	}
	d.archPending = d.archPending[:0]
	if len(d.log)+len(d.pending) > max(simCompactAt, d.compactAt) {
		d.log = n.c.snapshot(d.log[:0:0])
		d.compactAt = 4 * len(d.log)
		s.trace.add("%s %s compacts its log to %d bytes", s.clock(), s.ids[n.i], len(d.log))
	} else {
		d.log = append(d.log, d.pending...)
	}
	d.pending = d.pending[:0]
}

// crash ends node n's process: unsynced records are lost but for a torn
// prefix, and its callers are gone.
func (s *simulator) crash(n *simNode) {
	d := &n.disk
	keep := s.rng.IntN(len(d.pending) + 1)
	d.log = append(d.log, d.pending[:keep]...)
	d.pending = nil
	d.archPending = nil
	d.refeed = s.chk.heads(n.i)
	for _, cl := range byClientName(n.calls) {
		c := n.calls[cl]
		delete(n.calls, cl)
		s.finish(c, DecisionTimeout, fmt.Errorf("quasar propose: %w: the node crashed", ErrTimeout))
	}
	for _, b := range byClientName(n.reads) {
		cl := n.reads[b]
		delete(n.reads, b)
		s.at(s.now+s.rng.Int64N(s.o.pacing), &simEvent{kind: evPropose, node: cl.node, client: cl})
	}
	s.trace.add("%s %s loses its memory (log %d bytes, %d of them unsynced and kept)", s.clock(), s.ids[n.i], len(d.log), keep)
}

// byClientName returns m's keys ordered by their clients' names: a
// deterministic order, as the simulator needs.
func byClientName[K comparable](m map[K]*simClient) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return strings.Compare(m[a].name, m[b].name) })
	return keys
}

// reboot restarts node n from its log.
func (s *simulator) reboot(n *simNode) {
	d := &n.disk
	file := append([]byte(walMagic), d.log...)
	recs, valid, err := decodeWAL(file)
	if err != nil {
		s.fail = fmt.Sprintf("%s: its log does not decode after a crash: %v", s.ids[n.i], err)
		return
	}
	d.log = d.log[:valid-len(walMagic)] // the torn tail is truncated
	c, err := newCore(n.cfg, &n.m)
	if err != nil {
		panic(err)
	}
	if err := c.restore(s.now, recs); err != nil {
		s.fail = fmt.Sprintf("%s: restore from its log failed: %v", s.ids[n.i], err)
		return
	}
	n.c = c
	n.applying = false
	s.newSigner(n)
	d.boots++
	s.trace.add("%s %s restarts from its log (%d records)", s.clock(), s.ids[n.i], len(recs))
	s.settle(n)
}

// answerDisk answers node n's syncs for frames it retains only in its
// archive, as the driver's diskLoop does.
func (s *simulator) answerDisk(n *simNode, reads []diskRead) {
	for _, r := range reads {
		var payloads [][]byte
		m := n.disk.arch[r.key]
		for at := r.from; len(payloads) < syncBatch; {
			b, ok := m[at]
			if !ok {
				break
			}
			payloads = append(payloads, b)
			a, err := decodeAccepted(b)
			if err != nil {
				s.fail = fmt.Sprintf("%s: an archived frame does not decode: %v", s.ids[n.i], err)
				return
			}
			at = a.p.frame.Seq
		}
		n.disk.diskReads++
		n.c.answerDisk(s.now, r, payloads)
	}
}

// refed reports whether e is a frame the application of node n applied
// before its last crash: it recognises it by Seq and skips it. Any other
// frame at that Seq is a violation.
func (s *simulator) refed(n *simNode, e *entry) bool {
	d := &n.disk
	f := &e.p.frame
	if d.refeed == nil || f.Seq > d.refeed[spaceKey{f.OrgID, f.Namespace}] {
		return false
	}
	if !s.chk.appliedAs(n.i, *f) {
		return false
	}
	d.refeds++
	return true
}
