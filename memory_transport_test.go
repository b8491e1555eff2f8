package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const memWait = 5 * time.Second // deadline for events that should take microseconds

func newTestHub(t *testing.T) *MemoryHub {
	t.Helper()
	h := NewMemoryHub()
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	return h
}

// memRecv is one message as a handler saw it.
type memRecv struct {
	from, payload string
}

// recorder collects what one node's handler receives.
type recorder struct {
	mu  sync.Mutex
	got []memRecv
	ch  chan memRecv // every message, in order; buffered generously
}

func newRecorder(t *testing.T, tr *MemoryTransport, kind string) *recorder {
	t.Helper()
	r := &recorder{ch: make(chan memRecv, 1<<14)}
	tr.OnReceiveFrom(kind, func(from string, p []byte) error {
		m := memRecv{from, string(p)}
		r.mu.Lock()
		r.got = append(r.got, m)
		r.mu.Unlock()
		r.ch <- m
		return nil
	})
	return r
}

func (r *recorder) all() []memRecv {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]memRecv(nil), r.got...)
}

func (r *recorder) payloads() []string {
	var ps []string
	for _, m := range r.all() {
		ps = append(ps, m.payload)
	}
	return ps
}

// next waits for the next message.
func (r *recorder) next(t *testing.T) memRecv {
	t.Helper()
	select {
	case m := <-r.ch:
		return m
	case <-time.After(memWait):
		t.Fatal("no message within deadline")
		return memRecv{}
	}
}

func mustBroadcast(t *testing.T, tr *MemoryTransport, kind, payload string) {
	t.Helper()
	require.NoError(t, tr.Broadcast(context.Background(), kind, []byte(payload)))
}

// requireQuiet waits until every message sent has been accounted for, and
// returns the final counters.
func requireQuiet(t *testing.T, h *MemoryHub) MemoryHubStats {
	t.Helper()
	var s MemoryHubStats
	require.Eventually(t, func() bool {
		s = h.Stats()
		return s.Sent+s.Duplicated == s.Delivered+s.Dropped+s.Lost+s.Overflow+s.Unhandled
	}, memWait, time.Millisecond, "hub never went quiet: %+v", s)
	return s
}

func TestMemoryTransport_DeliversToEveryOtherNode(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	ra, rb, rc := newRecorder(t, a, "k"), newRecorder(t, b, "k"), newRecorder(t, c, "k")

	mustBroadcast(t, a, "k", "hello")
	require.Equal(t, memRecv{"a", "hello"}, rb.next(t))
	require.Equal(t, memRecv{"a", "hello"}, rc.next(t))
	s := requireQuiet(t, h)
	assert.Empty(t, ra.all(), "a broadcast reaches the sender itself")
	assert.Equal(t, MemoryHubStats{Sent: 2, Delivered: 2}, s)
}

func TestHub_ConnectSameIDReturnsExisting(t *testing.T) {
	h := newTestHub(t)
	a := h.Connect("a")
	require.Same(t, a, h.Connect("a"))
	h.Connect("b")
	require.Equal(t, []string{"a", "b"}, a.Validators())
}

// The Transport contract: FIFO per (sender, receiver) pair.
func TestMemoryTransport_FIFOPerPair(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb := newRecorder(t, b, "k")
	const n = 2000
	var wg sync.WaitGroup
	for _, tr := range []*MemoryTransport{a, c} {
		wg.Go(func() {
			for i := range n {
				assert.NoError(t, tr.Broadcast(context.Background(), "k", []byte(strconv.Itoa(i))))
			}
		})
	}
	wg.Wait()
	requireQuiet(t, h)

	next := map[string]int{}
	for _, m := range rb.all() {
		require.Equal(t, strconv.Itoa(next[m.from]), m.payload, "out of order from %s", m.from)
		next[m.from]++
	}
	require.Equal(t, map[string]int{"a": n, "c": n}, next)
}

func TestHub_PartitionHeals(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")

	h.Partition([]string{"a", "b"}, []string{"c"})
	require.NoError(t, h.Err())
	mustBroadcast(t, a, "k", "during")
	require.Equal(t, memRecv{"a", "during"}, rb.next(t))
	mustBroadcast(t, c, "k", "from c") // reaches nobody
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(3), s.Lost, "a→c and c→a, c→b are cut")
	assert.Empty(t, rc.all())

	h.Heal()
	mustBroadcast(t, a, "k", "healed")
	require.Equal(t, memRecv{"a", "healed"}, rb.next(t))
	require.Equal(t, memRecv{"a", "healed"}, rc.next(t))
	mustBroadcast(t, c, "k", "c again")
	require.Equal(t, memRecv{"c", "c again"}, rb.next(t))
}

func TestHub_PartitionIsolatesUnnamedNodes(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")
	h.Partition([]string{"a", "b"})
	d := h.Connect("d") // connected during the partition: isolated too
	rd := newRecorder(t, d, "k")

	mustBroadcast(t, a, "k", "1")
	mustBroadcast(t, c, "k", "2")
	mustBroadcast(t, d, "k", "3")
	require.Equal(t, memRecv{"a", "1"}, rb.next(t))
	requireQuiet(t, h)
	assert.Len(t, rb.all(), 1)
	assert.Empty(t, rc.all())
	assert.Empty(t, rd.all())

	h.Heal()
	mustBroadcast(t, d, "k", "4")
	require.Equal(t, memRecv{"d", "4"}, rc.next(t))
}

// blockingNode registers a handler on tr that announces each message on
// entered and then waits for release.
func blockingNode(tr *MemoryTransport, kind string) (entered chan string, release chan struct{}) {
	entered, release = make(chan string, 1<<14), make(chan struct{})
	tr.OnReceive(kind, func(p []byte) error {
		entered <- string(p)
		<-release
		return nil
	})
	return entered, release
}

func waitEntered(t *testing.T, entered chan string) string {
	t.Helper()
	select {
	case p := <-entered:
		return p
	case <-time.After(memWait):
		t.Fatal("handler not entered within deadline")
		return ""
	}
}

// A message queued before a cut is lost at delivery, even if the cut healed
// before its turn came, as on a real network.
func TestHub_PartitionLosesQueuedMessages(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	entered, release := blockingNode(b, "k")

	mustBroadcast(t, a, "k", "first")
	require.Equal(t, "first", waitEntered(t, entered)) // b is busy with it
	mustBroadcast(t, a, "k", "queued")
	h.Partition([]string{"a"}, []string{"b"})
	h.Heal()
	mustBroadcast(t, a, "k", "after")
	close(release)

	require.Equal(t, "after", waitEntered(t, entered))
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(1), s.Lost)
	assert.Equal(t, uint64(2), s.Delivered)
}

func TestHub_DisconnectLosesNotQueues(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")

	h.Disconnect("b")
	require.NoError(t, h.Err())
	mustBroadcast(t, a, "k", "to nobody at b")
	mustBroadcast(t, b, "k", "from the dead")
	require.Equal(t, memRecv{"a", "to nobody at b"}, rc.next(t))
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(3), s.Lost, "a→b, b→a, b→c")
	assert.Equal(t, []string{"b", "a", "c"}, b.Validators(), "a disconnected node stays a validator")

	h.Reconnect("b")
	mustBroadcast(t, a, "k", "back")
	// Nothing was queued for b while it was away: "back" is its first message.
	require.Equal(t, memRecv{"a", "back"}, rb.next(t))
	require.Equal(t, memRecv{"a", "back"}, rc.next(t))
	mustBroadcast(t, b, "k", "b speaks")
	require.Equal(t, memRecv{"b", "b speaks"}, rc.next(t))
	requireQuiet(t, h)
	assert.Equal(t, []string{"back"}, rb.payloads())
}

func TestHub_DisconnectLosesQueuedMessages(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	entered, release := blockingNode(b, "k")

	mustBroadcast(t, a, "k", "first")
	require.Equal(t, "first", waitEntered(t, entered))
	mustBroadcast(t, a, "k", "queued")
	h.Disconnect("b")
	h.Reconnect("b")
	mustBroadcast(t, a, "k", "after")
	close(release)

	require.Equal(t, "after", waitEntered(t, entered))
	assert.Equal(t, uint64(1), requireQuiet(t, h).Lost)
}

func TestHub_ReconnectUnknownAndRepeatedCalls(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	rb := newRecorder(t, b, "k")
	h.Reconnect("b") // not disconnected: no-op
	h.Disconnect("b")
	h.Disconnect("b")
	h.Reconnect("b")
	require.NoError(t, h.Err())
	mustBroadcast(t, a, "k", "x")
	require.Equal(t, memRecv{"a", "x"}, rb.next(t))
}

// seededRun sends n numbered messages from a under faults f and returns what
// b and c received, in order.
func seededRun(t *testing.T, f MemoryFaults, n int) (gotB, gotC []string) {
	t.Helper()
	h := newTestHub(t)
	require.NoError(t, h.SetFaults(f))
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")
	for i := range n {
		mustBroadcast(t, a, "k", strconv.Itoa(i))
	}
	requireQuiet(t, h)
	return rb.payloads(), rc.payloads()
}

func TestHub_FaultsAreSeeded(t *testing.T) {
	f := MemoryFaults{Seed: 42, DropRate: 0.3, DuplicateRate: 0.3}
	t.Logf("faults %+v", f)
	b1, c1 := seededRun(t, f, 300)
	b2, c2 := seededRun(t, f, 300)
	require.Equal(t, b1, b2)
	require.Equal(t, c1, c2)
	assert.NotEqual(t, b1, c1, "decisions are drawn per delivery, not per broadcast")
	assert.Less(t, len(b1), 300+150, "some messages dropped")
	assert.Greater(t, len(b1), 150, "not everything dropped")

	f.Seed = 43
	b3, _ := seededRun(t, f, 300)
	assert.NotEqual(t, b1, b3, "another seed, other decisions")
}

func TestHub_DropRateOne(t *testing.T) {
	h := newTestHub(t)
	require.NoError(t, h.SetFaults(MemoryFaults{DropRate: 1}))
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")
	for i := range 100 {
		mustBroadcast(t, a, "k", strconv.Itoa(i))
	}
	s := requireQuiet(t, h)
	assert.Equal(t, MemoryHubStats{Sent: 200, Dropped: 200}, s)
	assert.Empty(t, rb.all())
	assert.Empty(t, rc.all())

	require.NoError(t, h.SetFaults(MemoryFaults{})) // back to a perfect network
	mustBroadcast(t, a, "k", "through")
	require.Equal(t, memRecv{"a", "through"}, rb.next(t))
}

func TestHub_DuplicateRateOne(t *testing.T) {
	h := newTestHub(t)
	require.NoError(t, h.SetFaults(MemoryFaults{Seed: 7, DuplicateRate: 1}))
	a, b := h.Connect("a"), h.Connect("b")
	rb := newRecorder(t, b, "k")
	for i := range 3 {
		mustBroadcast(t, a, "k", strconv.Itoa(i))
	}
	s := requireQuiet(t, h)
	assert.Equal(t, MemoryHubStats{Sent: 3, Duplicated: 3, Delivered: 6}, s)
	assert.Equal(t, []string{"0", "0", "1", "1", "2", "2"}, rb.payloads(), "without delay, copies stay in order")
}

func TestHub_DelayReorders(t *testing.T) {
	h := newTestHub(t)
	f := MemoryFaults{Seed: 3, MaxDelay: 20 * time.Millisecond}
	t.Logf("faults %+v", f)
	require.NoError(t, h.SetFaults(f))
	a, b := h.Connect("a"), h.Connect("b")
	rb := newRecorder(t, b, "k")
	const n = 200
	want := make([]string, n)
	for i := range n {
		want[i] = strconv.Itoa(i)
		mustBroadcast(t, a, "k", want[i])
	}
	requireQuiet(t, h)
	got := rb.payloads()
	assert.ElementsMatch(t, want, got, "a delay loses nothing")
	assert.NotEqual(t, want, got, "uniform delays over 20ms reorder 200 messages")
}

func TestHub_DelayRespectsMinimum(t *testing.T) {
	h := newTestHub(t)
	const d = 30 * time.Millisecond
	require.NoError(t, h.SetFaults(MemoryFaults{MinDelay: d, MaxDelay: d}))
	a, b := h.Connect("a"), h.Connect("b")
	rb := newRecorder(t, b, "k")
	start := time.Now()
	mustBroadcast(t, a, "k", "late")
	rb.next(t)
	assert.GreaterOrEqual(t, time.Since(start), d)
}

// A message delayed across a partition is lost when its timer fires.
func TestHub_DelayedMessageLostAcrossPartition(t *testing.T) {
	h := newTestHub(t)
	require.NoError(t, h.SetFaults(MemoryFaults{MinDelay: 20 * time.Millisecond, MaxDelay: 20 * time.Millisecond}))
	a, b := h.Connect("a"), h.Connect("b")
	rb := newRecorder(t, b, "k")
	mustBroadcast(t, a, "k", "delayed")
	h.Partition([]string{"a"}, []string{"b"})
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(1), s.Lost)
	assert.Empty(t, rb.all())
}

func TestHub_SetFaultsRejectsBadValues(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name    string
		f       MemoryFaults
		mention string // the offending value, as the error shows it
	}{
		{"drop NaN", MemoryFaults{DropRate: math.NaN()}, "DropRate NaN"},
		{"drop negative", MemoryFaults{DropRate: -0.1}, "DropRate -0.1"},
		{"drop above one", MemoryFaults{DropRate: 1.5}, "DropRate 1.5"},
		{"drop infinite", MemoryFaults{DropRate: math.Inf(1)}, "DropRate +Inf"},
		{"duplicate NaN", MemoryFaults{DuplicateRate: math.NaN()}, "DuplicateRate NaN"},
		{"duplicate negative", MemoryFaults{DuplicateRate: -1}, "DuplicateRate -1"},
		{"duplicate above one", MemoryFaults{DuplicateRate: 2}, "DuplicateRate 2"},
		{"min delay negative", MemoryFaults{MinDelay: -ms, MaxDelay: ms}, "MinDelay -1ms"},
		{"max delay negative", MemoryFaults{MaxDelay: -ms}, "MaxDelay -1ms"},
		{"max below min", MemoryFaults{MinDelay: 5 * ms, MaxDelay: 2 * ms}, "MaxDelay 2ms < MinDelay 5ms"},
		{"min without max", MemoryFaults{MinDelay: ms}, "MaxDelay 0s < MinDelay 1ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t)
			a, b := h.Connect("a"), h.Connect("b")
			rb := newRecorder(t, b, "k")
			require.NoError(t, h.SetFaults(MemoryFaults{DuplicateRate: 1}))

			err := h.SetFaults(tc.f)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.ErrorContains(t, err, tc.mention)
			require.ErrorIs(t, h.Err(), ErrInvalidConfig)

			// The previous settings still hold.
			mustBroadcast(t, a, "k", "x")
			requireQuiet(t, h)
			assert.Equal(t, []string{"x", "x"}, rb.payloads())
		})
	}

	valid := []struct {
		name string
		f    MemoryFaults
	}{
		{"zero", MemoryFaults{}},
		{"rates at bounds", MemoryFaults{DropRate: 1, DuplicateRate: 0}},
		{"fixed delay", MemoryFaults{MinDelay: ms, MaxDelay: ms}},
		{"negative seed", MemoryFaults{Seed: -5, DropRate: 0.5}},
	}
	for _, tc := range valid {
		t.Run("valid "+tc.name, func(t *testing.T) {
			require.NoError(t, tc.f.Validate())
			require.NoError(t, NewMemoryHub().SetFaults(tc.f)) // no node: nothing to close
		})
	}
}

// lockedBuffer is an io.Writer safe for the hub's concurrent logging.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestHub_UnknownIDReported(t *testing.T) {
	cases := []struct {
		name    string
		call    func(h *MemoryHub)
		mention string
	}{
		{"partition unknown", func(h *MemoryHub) { h.Partition([]string{"a"}, []string{"b", "zed"}) }, `"zed"`},
		{"partition twice in a group", func(h *MemoryHub) { h.Partition([]string{"a", "a"}) }, `"a" named twice`},
		{"partition twice across groups", func(h *MemoryHub) { h.Partition([]string{"a"}, []string{"a", "b"}) }, `"a" named twice`},
		{"disconnect unknown", func(h *MemoryHub) { h.Disconnect("zed") }, `Disconnect: unknown node "zed"`},
		{"reconnect unknown", func(h *MemoryHub) { h.Reconnect("zed") }, `Reconnect: unknown node "zed"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t)
			var logs lockedBuffer
			h.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
			a, b := h.Connect("a"), h.Connect("b")
			rb := newRecorder(t, b, "k")
			require.NoError(t, h.Err())

			tc.call(h)
			require.ErrorIs(t, h.Err(), ErrInvalidConfig)
			require.ErrorContains(t, h.Err(), tc.mention)
			assert.Contains(t, logs.String(), "level=ERROR")

			// Nothing changed: a still reaches b.
			mustBroadcast(t, a, "k", "x")
			require.Equal(t, memRecv{"a", "x"}, rb.next(t))
		})
	}
}

func TestMemoryTransport_PayloadCopied(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	entered, release := blockingNode(b, "k")
	buf := []byte("original")
	require.NoError(t, a.Broadcast(context.Background(), "k", buf))
	copy(buf, "MUTATED!") // before delivery if the handler is slow
	close(release)
	require.Equal(t, "original", waitEntered(t, entered))
}

// The Transport contract: a handler that broadcasts never recurses into
// itself.
func TestMemoryTransport_NoRecursion(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	const rounds = 1000
	var depth, maxDepth atomic.Int32
	done := make(chan struct{})
	for _, tr := range []*MemoryTransport{a, b} {
		tr.OnReceive("ping", func(p []byte) error {
			d := depth.Add(1)
			defer depth.Add(-1)
			for {
				m := maxDepth.Load()
				if d <= m || maxDepth.CompareAndSwap(m, d) {
					break
				}
			}
			n, err := strconv.Atoi(string(p))
			if !assert.NoError(t, err) {
				return err
			}
			if n == rounds {
				close(done)
				return nil
			}
			return tr.Broadcast(context.Background(), "ping", []byte(strconv.Itoa(n+1)))
		})
	}
	mustBroadcast(t, a, "ping", "1")
	select {
	case <-done:
	case <-time.After(memWait):
		t.Fatal("ping-pong did not finish")
	}
	// Handlers of a and b may overlap (they run on two goroutines), but a
	// handler never runs inside another handler's Broadcast.
	assert.LessOrEqual(t, maxDepth.Load(), int32(2))
}

func TestMemoryTransport_SlowReceiverDoesNotBlock(t *testing.T) {
	h := newTestHub(t)
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	entered, release := blockingNode(b, "k")
	rc := newRecorder(t, c, "k")

	const n = 1000
	for i := range n {
		mustBroadcast(t, a, "k", strconv.Itoa(i)) // never waits for b
	}
	for i := range n {
		require.Equal(t, strconv.Itoa(i), rc.next(t).payload)
	}
	require.Equal(t, "0", waitEntered(t, entered))
	assert.Equal(t, uint64(n), h.Stats().Delivered, "b is still stuck in its first message")

	close(release)
	for i := 1; i < n; i++ {
		require.Equal(t, strconv.Itoa(i), waitEntered(t, entered))
	}
	assert.Equal(t, uint64(0), requireQuiet(t, h).Overflow)
}

func TestHub_QueueOverflowDropsAndCounts(t *testing.T) {
	h := newTestHub(t)
	h.queueLimit = 4
	a, b := h.Connect("a"), h.Connect("b")
	entered, release := blockingNode(b, "k")

	mustBroadcast(t, a, "k", "0")
	require.Equal(t, "0", waitEntered(t, entered)) // taken off the queue
	for i := 1; i <= 7; i++ {
		mustBroadcast(t, a, "k", strconv.Itoa(i))
	}
	assert.Equal(t, uint64(3), h.Stats().Overflow, "messages 5, 6, 7 find the queue full")
	close(release)
	for i := 1; i <= 4; i++ {
		require.Equal(t, strconv.Itoa(i), waitEntered(t, entered))
	}
	s := requireQuiet(t, h)
	assert.Equal(t, MemoryHubStats{Sent: 8, Delivered: 5, Overflow: 3}, s)
}

func TestMemoryTransport_ValidatorsSelfFirst(t *testing.T) {
	h := newTestHub(t)
	c, a, b := h.Connect("c"), h.Connect("a"), h.Connect("b")
	assert.Equal(t, []string{"a", "b", "c"}, a.Validators())
	assert.Equal(t, []string{"b", "a", "c"}, b.Validators())
	assert.Equal(t, []string{"c", "a", "b"}, c.Validators())
	assert.Equal(t, "c", c.LocalID())

	h.Connect("aa")
	assert.Equal(t, []string{"c", "a", "aa", "b"}, c.Validators())

	v := c.Validators()
	v[1] = "mutated"
	assert.Equal(t, []string{"c", "a", "aa", "b"}, c.Validators(), "the caller owns the slice")
}

func TestMemoryTransport_SenderAware(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	var sa SenderAware = b
	from := make(chan string, 4)
	plain := make(chan string, 4)
	sa.OnReceiveFrom("k", func(f string, p []byte) error { from <- f + ":" + string(p); return nil })
	mustBroadcast(t, a, "k", "1")
	require.Equal(t, "a:1", <-from)

	// OnReceive replaces OnReceiveFrom for the kind, and vice versa.
	b.OnReceive("k", func(p []byte) error { plain <- string(p); return nil })
	mustBroadcast(t, a, "k", "2")
	require.Equal(t, "2", <-plain)
	b.OnReceiveFrom("k", func(f string, p []byte) error { from <- f + ":" + string(p); return nil })
	mustBroadcast(t, a, "k", "3")
	require.Equal(t, "a:3", <-from)
	requireQuiet(t, h)
	assert.Empty(t, plain)

	// A nil handler removes it.
	b.OnReceiveFrom("k", nil)
	mustBroadcast(t, a, "k", "4")
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(1), s.Unhandled)
	assert.Empty(t, from)
}

func TestMemoryTransport_HandlerErrorDoesNotStopDelivery(t *testing.T) {
	h := newTestHub(t)
	a, b := h.Connect("a"), h.Connect("b")
	got := make(chan string, 4)
	b.OnReceive("k", func(p []byte) error {
		got <- string(p)
		return errors.New("boom")
	})
	mustBroadcast(t, a, "k", "1")
	mustBroadcast(t, a, "k", "2")
	require.Equal(t, "1", <-got)
	require.Equal(t, "2", <-got)
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(2), s.HandlerErrors)
	assert.Equal(t, uint64(2), s.Delivered)
}

func TestHub_OnDeliverSeesWhatHandlersGet(t *testing.T) {
	h := newTestHub(t)
	var mu sync.Mutex
	seen := map[string]int{}
	h.OnDeliver(func(from, to, kind string, p []byte) {
		mu.Lock()
		seen[fmt.Sprintf("%s→%s %s %s", from, to, kind, p)]++
		mu.Unlock()
	})
	a, b, c := h.Connect("a"), h.Connect("b"), h.Connect("c")
	newRecorder(t, b, "vote")
	newRecorder(t, c, "vote")
	h.Disconnect("c")
	mustBroadcast(t, a, "vote", "v1")
	mustBroadcast(t, a, "nohandler", "x")
	requireQuiet(t, h)
	mu.Lock()
	assert.Equal(t, map[string]int{"a→b vote v1": 1}, seen)
	mu.Unlock()

	h.OnDeliver(nil)
	h.Reconnect("c")
	mustBroadcast(t, a, "vote", "v2")
	requireQuiet(t, h)
	mu.Lock()
	assert.Len(t, seen, 1)
	mu.Unlock()
}

func TestHub_StatsBalanceUnderChaos(t *testing.T) {
	h := newTestHub(t)
	f := MemoryFaults{Seed: 11, DropRate: 0.2, DuplicateRate: 0.2, MaxDelay: 2 * time.Millisecond}
	t.Logf("faults %+v", f)
	require.NoError(t, h.SetFaults(f))
	nodes := []*MemoryTransport{h.Connect("a"), h.Connect("b"), h.Connect("c"), h.Connect("d")}
	for _, n := range nodes {
		n.OnReceive("k", func([]byte) error { return nil })
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			for j := range 300 {
				switch j {
				case 100:
					if i == 0 {
						h.Partition([]string{"a", "b"}, []string{"c", "d"})
					}
				case 200:
					if i == 0 {
						h.Heal()
						h.Disconnect("d")
					}
				}
				assert.NoError(t, n.Broadcast(context.Background(), "k", []byte("x")))
			}
		})
	}
	wg.Wait()
	s := requireQuiet(t, h)
	assert.Equal(t, uint64(4*300*3), s.Sent)
	assert.NotZero(t, s.Dropped)
	assert.NotZero(t, s.Duplicated)
	assert.NotZero(t, s.Lost)
}

// BenchmarkMemoryTransport_Broadcast measures a 256-byte broadcast from one
// node to two peers, through to both handlers. "roundtrip" waits for both
// deliveries after each Broadcast (the latency a vote sees); "pipelined"
// waits every 1024 broadcasts (the throughput of a busy proposer).
func BenchmarkMemoryTransport_Broadcast(b *testing.B) {
	for _, mode := range []struct {
		name   string
		window int
	}{{"roundtrip", 1}, {"pipelined", 1024}} {
		b.Run(mode.name, func(b *testing.B) {
			h := NewMemoryHub()
			defer h.Close()
			a := h.Connect("a")
			var wg sync.WaitGroup
			for _, id := range []string{"b", "c"} {
				h.Connect(id).OnReceive("k", func([]byte) error { wg.Done(); return nil })
			}
			payload := bytes.Repeat([]byte{'x'}, 256)
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			i := 0
			for b.Loop() {
				if i%mode.window == 0 {
					wg.Wait()
					wg.Add(2 * mode.window)
				}
				i++
				if err := a.Broadcast(ctx, "k", payload); err != nil {
					b.Fatal(err)
				}
			}
			// Complete the last window so every Done has its Add.
			for ; i%mode.window != 0; i++ {
				if err := a.Broadcast(ctx, "k", payload); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			if s := h.Stats(); s.Delivered != s.Sent {
				b.Fatalf("not everything delivered: %+v", s)
			}
		})
	}
}
