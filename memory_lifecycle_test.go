package replication

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// This file tests the lifecycle of a MemoryHub: what Close does, and
// that a hub runs goroutines only while it has something to deliver.

func TestHub_CloseIdempotentNoLeak(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	h := NewMemoryHub()
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb := newRecorder(t, b, "k")
	newRecorder(t, c, "k")
	mustBroadcast(t, a, "k", "before")
	require.Equal(t, memRecv{"a", "before"}, rb.next(t))
	// Pending timers, some short enough to fire while Close runs.
	require.NoError(t, h.SetFaults(MemoryFaults{MaxDelay: time.Hour}))
	for range 50 {
		mustBroadcast(t, a, "k", "delayed")
	}
	require.NoError(t, h.SetFaults(MemoryFaults{MaxDelay: time.Millisecond}))
	for range 50 {
		mustBroadcast(t, a, "k", "soon")
	}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { assert.NoError(t, h.Close()) })
	}
	wg.Wait()
	require.NoError(t, h.Close())

	err := a.Broadcast(context.Background(), "k", []byte("after"))
	require.ErrorIs(t, err, ErrClosed)
	d := h.Connect("d")
	require.ErrorIs(t, d.Broadcast(context.Background(), "k", nil), ErrClosed)
	require.Same(t, a, h.Connect("a"))
	assert.Equal(t, []string{"d", "a", "b", "c"}, d.Validators())
}

// A hub that is never closed leaks no goroutine: delivery goroutines and
// delay timers end once there is nothing left to deliver.
func TestHub_DroppedWithoutCloseLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := NewMemoryHub()
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")
	for i := range 100 {
		mustBroadcast(t, a, "k", fmt.Sprint(i))
	}
	for range 100 {
		rb.next(t)
		rc.next(t)
	}
	require.NoError(t, h.SetFaults(MemoryFaults{Seed: 1, MaxDelay: 5 * time.Millisecond, DuplicateRate: 0.5}))
	mustBroadcast(t, a, "k", "delayed")
	require.Equal(t, memRecv{"a", "delayed"}, rb.next(t))
	// h, a, b and c are dropped here, never closed.
}

// A three-node cluster on a hub that is never closed leaks nothing once
// its replicators are closed: what code written against NewMemoryHub and
// Connect alone does.
func TestHub_ClusterWithoutHubCloseLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := NewMemoryHub()
	ids := []string{"a", "b", "c"}
	var rs []*QuasarReplicator
	for _, id := range ids {
		r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: id, Validators: ids, Transport: h.Connect(id)})
		require.NoError(t, err)
		rs = append(rs, r)
	}
	defer func() {
		for _, r := range rs {
			require.NoError(t, r.Close())
		}
	}()
	for i := range 20 {
		d, err := rs[i%3].Propose(context.Background(), put(ids[i%3], "k", fmt.Sprint(i))) // a namespace per writer
		require.NoError(t, err)
		require.Equal(t, DecisionAccept, d)
	}
}
