package replication

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"
)

// This file holds the faults a MemoryHub injects: partitions, disconnected
// nodes, and drops, duplicates and delays drawn from a seeded source, and
// the topology snapshots that let a message in flight notice a cut.

// MemoryFaults configures the faults a MemoryHub injects into every
// delivery (one message from one sender to one receiver). The zero value is
// a perfect network.
//
// Each delivery is dropped with probability DropRate; a delivery that is not
// dropped is duplicated with probability DuplicateRate; each resulting copy
// is delayed by a duration drawn uniformly from [MinDelay, MaxDelay] (no
// delay when MaxDelay is 0). Delayed messages may be reordered, so FIFO per
// pair holds only while MaxDelay is 0. Every decision comes from one
// math/rand/v2 source seeded with Seed: the same sequence of broadcasts from
// one goroutine gets the same drop and duplicate decisions under the same
// seed. Log the seed in your test so a failure can be replayed.
type MemoryFaults struct {
	Seed          int64
	DropRate      float64       // in [0, 1]
	DuplicateRate float64       // in [0, 1]
	MinDelay      time.Duration // >= 0
	MaxDelay      time.Duration // >= MinDelay
}

// Validate reports whether f can be given to SetFaults. The error wraps
// ErrInvalidConfig and names every offending field with its value.
func (f MemoryFaults) Validate() error {
	var errs []error
	rate := func(name string, v float64) {
		if math.IsNaN(v) || v < 0 || v > 1 {
			errs = append(errs, fmt.Errorf("%w: MemoryFaults.%s %v outside [0, 1]", ErrInvalidConfig, name, v))
		}
	}
	rate("DropRate", f.DropRate)
	rate("DuplicateRate", f.DuplicateRate)
	if f.MinDelay < 0 {
		errs = append(errs, fmt.Errorf("%w: MemoryFaults.MinDelay %s is negative", ErrInvalidConfig, f.MinDelay))
	}
	if f.MaxDelay < 0 {
		errs = append(errs, fmt.Errorf("%w: MemoryFaults.MaxDelay %s is negative", ErrInvalidConfig, f.MaxDelay))
	}
	if f.MaxDelay < f.MinDelay {
		errs = append(errs, fmt.Errorf("%w: MemoryFaults.MaxDelay %s < MinDelay %s", ErrInvalidConfig, f.MaxDelay, f.MinDelay))
	}
	return errors.Join(errs...)
}

func (f MemoryFaults) active() bool {
	return f.DropRate > 0 || f.DuplicateRate > 0 || f.MaxDelay > 0
}

func newFaultRand(seed int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15))
}

// isolatedGroup is the group of a node named in no partition group: a
// negative number of its own, so it shares no group with anyone.
func isolatedGroup(idx int) int { return -(idx + 1) }

// Partition splits the connected nodes into groups: from now on a message
// crosses only between two nodes of the same group, and a connected node
// named in no group is isolated. It replaces any earlier partition, and
// messages already queued or delayed across a new cut are lost when they
// come up for delivery. Disconnected nodes stay disconnected.
//
// An unknown id, or an id named twice, makes Partition change nothing; see
// Err.
func (h *MemoryHub) Partition(groups ...[]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	group := make([]int, len(h.byIndex))
	for i := range group {
		group[i] = isolatedGroup(i)
	}
	named := make(map[string]bool)
	for gi, ids := range groups {
		for _, id := range ids {
			t, ok := h.byID[id]
			if !ok {
				h.failLocked(fmt.Errorf("%w: memory hub Partition: unknown node %q in group %d %q", ErrInvalidConfig, id, gi, ids))
				return
			}
			if named[id] {
				h.failLocked(fmt.Errorf("%w: memory hub Partition: node %q named twice (again in group %d %q)", ErrInvalidConfig, id, gi, ids))
				return
			}
			named[id] = true
			group[t.idx] = gi + 1
		}
	}
	h.group = group
	h.split = true
	h.publishLocked()
}

// Heal removes every partition. It does not reconnect disconnected nodes.
func (h *MemoryHub) Heal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.group)
	h.split = false
	h.publishLocked()
}

// Disconnect simulates a crashed or unplugged node: until Reconnect,
// nothing reaches it and nothing it broadcasts leaves it. Messages to or
// from it are lost, not queued, including those already queued or delayed.
// The node stays in every Validators list. An unknown id changes nothing;
// see Err.
func (h *MemoryHub) Disconnect(id string) { h.setDown("Disconnect", id, true) }

// Reconnect undoes Disconnect: messages sent from now on flow again.
// Reconnecting a node that is not disconnected does nothing. An unknown id
// changes nothing; see Err.
func (h *MemoryHub) Reconnect(id string) { h.setDown("Reconnect", id, false) }

func (h *MemoryHub) setDown(op, id string, down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.byID[id]
	if !ok {
		h.failLocked(fmt.Errorf("%w: memory hub %s: unknown node %q", ErrInvalidConfig, op, id))
		return
	}
	if h.down[t.idx] == down {
		return
	}
	h.down[t.idx] = down
	h.publishLocked()
}

// SetFaults replaces the hub's fault settings and reseeds its random
// source with f.Seed. It applies to messages broadcast from now on; the
// zero MemoryFaults turns faults off. An invalid f (see
// MemoryFaults.Validate) changes nothing and is returned, wrapping
// ErrInvalidConfig.
func (h *MemoryHub) SetFaults(f MemoryFaults) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := f.Validate(); err != nil {
		err = fmt.Errorf("memory hub SetFaults: %w", err)
		h.err = err
		return err
	}
	h.rngMu.Lock()
	h.rng = newFaultRand(f.Seed)
	h.rngMu.Unlock()
	h.faults = f
	h.publishLocked()
	return nil
}

// publishLocked installs a new topology built from the hub's fields and
// links the previous one to it. h.mu must be held.
func (h *MemoryHub) publishLocked() {
	s := &memTopology{
		closed: h.closed,
		nodes:  slices.Clone(h.sorted),
		group:  slices.Clone(h.group),
		down:   slices.Clone(h.down),
		faults: h.faults,
		faulty: h.faults.active(),
	}
	old := h.topo.Load()
	old.next.Store(s)
	h.topo.Store(s)
}

// memTopology is an immutable snapshot of who can reach whom. Snapshots form
// a chain through next, oldest first, so a message that carries the
// snapshot it was sent under can check at delivery that its link stayed up
// through every change since: a message queued before a cut is lost even if
// the cut healed before its delivery, as on a real network.
type memTopology struct {
	next   atomic.Pointer[memTopology]
	closed bool
	nodes  []*MemoryTransport // connected nodes, sorted by id
	// group and down are indexed by MemoryTransport.idx. Two nodes can talk
	// when neither is down and their groups are equal: 0 for everyone
	// without a partition, i+1 for the i-th Partition group, and
	// isolatedGroup for a node named in none.
	group  []int
	down   []bool
	faults MemoryFaults
	faulty bool // faults.active()
}

func (s *memTopology) link(a, b int) bool {
	return !s.down[a] && !s.down[b] && s.group[a] == s.group[b]
}

// heldSince reports whether the link a–b was up in every snapshot after s
// (it is known to be up in s, where the message was sent).
func (s *memTopology) heldSince(a, b int) bool {
	for n := s.next.Load(); n != nil; n = n.next.Load() {
		if n.closed || !n.link(a, b) {
			return false
		}
	}
	return true
}

// sendFaulty applies f to one delivery of m to t.
func (h *MemoryHub) sendFaulty(t *MemoryTransport, m memMsg, f *MemoryFaults) {
	var (
		delays [2]time.Duration
		copies = 1
	)
	h.rngMu.Lock()
	drop := f.DropRate > 0 && h.rng.Float64() < f.DropRate
	if !drop {
		if f.DuplicateRate > 0 && h.rng.Float64() < f.DuplicateRate {
			copies = 2
		}
		if f.MaxDelay > 0 {
			for i := range copies {
				delays[i] = f.MinDelay + time.Duration(h.rng.Int64N(int64(f.MaxDelay-f.MinDelay)+1))
			}
		}
	}
	h.rngMu.Unlock()
	if drop {
		h.stats.dropped.Add(1)
		return
	}
	if copies > 1 {
		h.stats.duplicated.Add(1)
	}
	for _, d := range delays[:copies] {
		if d > 0 {
			h.deliverAfter(d, t, m)
		} else {
			t.enqueue(m)
		}
	}
}

// deliverAfter enqueues m on t after d, on a timer goroutine.
func (h *MemoryHub) deliverAfter(d time.Duration, t *MemoryTransport, m memMsg) {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	if h.stopped {
		return // closed: discarded
	}
	var tm *time.Timer
	h.wg.Add(1)
	tm = time.AfterFunc(d, func() {
		defer h.wg.Done()
		h.tmu.Lock()
		_, pending := h.timers[tm] // tm was set before tmu was released
		delete(h.timers, tm)
		h.tmu.Unlock()
		if pending {
			t.enqueue(m)
		}
	})
	h.timers[tm] = struct{}{}
}
