package replication

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file is the chaos test: the real driver (goroutines, MemoryHub,
// wall-clock timers) under a seeded randomized workload and fault
// schedule, checked by the shared invariant checker (checker_test.go). It
// is the second net behind the simulator (sim_test.go): it runs what the
// simulator cannot (the driver's goroutines, locks and timers), but its
// interleavings depend on the machine, so a seed does not replay exactly.
// What it asserts does not depend on the machine's speed: the invariants,
// and progress after healing, where only a cluster that stops making
// progress fails, however slowly it goes.

// TestChaos runs the Quasar driver under a seeded randomized workload and
// fault schedule, and checks the invariants (S1–S6, convergence) with
// checker. Each seed picks the cluster size (3, 5 or 7 validators:
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
// accepted (liveness with the whole cluster connected). Both waits fail
// only when the cluster makes no progress for chaosStall: a slow machine
// is not a failure.
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

// chaosCISeeds are the seeds CI runs: two per cluster size (the simulator
// runs hundreds).
var chaosCISeeds = []uint64{1, 2, 3, 4, 5, 11}

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
	chk := newChecker(ids, q)
	// A node told that it fell behind the retention window restores the
	// namespace from a peer and resets it, as an application would. It
	// waits for a peer to get ahead of it, until the run ends.
	var (
		cluster atomic.Pointer[testCluster]
		behind  atomic.Int64
		ending  = make(chan struct{})
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
		for {
			chk.mu.Lock()
			ch := chk.changed
			chk.mu.Unlock()
			if seq, ok := chk.restoreFrom(node, be.OrgID, be.Namespace, be.From); ok {
				cluster.Load().nodes[node].r.ResetNamespace(be.OrgID, be.Namespace, seq)
				return
			}
			select {
			case <-ch:
			case <-ending:
				return
			}
		}
	}
	c := newTestCluster(t, n, clusterOpts{
		proposeWait: proposeWait, witnessAfter: witness, antiEntropy: 50 * time.Millisecond,
		retainFrames: retain, maxBacklog: backlog, onBehind: onBehind,
	})
	require.Equal(t, ids, c.ids)
	cluster.Store(c)
	c.hub.OnDeliver(chk.onDeliver)
	defer close(ending)
	for i, node := range c.nodes {
		node.r.Subscribe(func(_ context.Context, f Frame) error {
			chk.applied(i, f)
			return nil
		})
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
			ns := fmt.Sprintf("own-%d-%d", i, j)
			chk.soleWriter("org", ns)
			worker(i, func(rng *rand.Rand, k int) {
				f := chaosFrame(rng, "org", ns, fmt.Sprintf("n%d.w%d.%d", i, j, k))
				chaosPropose(chk, r, i, f)
			})
		}
		worker(i, func(rng *rand.Rand, k int) {
			f := chaosFrame(rng, "org", fmt.Sprintf("shared-%d", i%nShared), fmt.Sprintf("n%d.s.%d", i, k))
			chaosPropose(chk, r, i, f)
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
					chaosPropose(chk, c.nodes[i].r, i, f)
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
	if why := chaosConverge(chk); why != "" {
		fail("S3: replicas stopped converging after healing: %s\n%s", why, violations())
	}
	// Liveness with everyone connected: a fresh proposal on every node is
	// accepted. A timeout (outcome unknown) is retried with a new frame as
	// long as the cluster makes progress; a rejection breaks S6.
	for i, node := range c.nodes {
		ns := fmt.Sprintf("final-%d", i)
		chk.soleWriter("org", ns)
		for k, last := 0, chaosProgress(chk); ; k++ {
			f := Frame{OrgID: "org", Namespace: ns, Op: "put", Key: "k", Value: fmt.Appendf(nil, "final.n%d.%d", i, k)}
			d := chaosPropose(chk, node.r, i, f)
			if d == DecisionAccept {
				break
			}
			if d != DecisionTimeout || !last.moved(chk) {
				fail("liveness: %s's proposal after healing returned %v, and the cluster made no progress for %s\n%s", node.id, d, chaosStall, violations())
			}
		}
	}
	if why := chaosConverge(chk); why != "" {
		fail("S3: replicas stopped converging after the final proposals: %s\n%s", why, violations())
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

// chaosPropose runs one Propose of f by node, recorded by chk.
func chaosPropose(chk *checker, r Replicator, node int, f Frame) Decision {
	op := chk.begin(node, f)
	d, err := r.Propose(context.Background(), f)
	chk.end(op, d, err)
	return d
}

// chaosStall is how long the cluster may go without applying any frame
// while it should converge, before the chaos test calls it stuck.
const chaosStall = 30 * time.Second

// chaosMark is the number of frames applied when a wait began.
type chaosMark struct {
	applies int
	at      time.Time
}

func chaosProgress(chk *checker) *chaosMark {
	chk.mu.Lock()
	defer chk.mu.Unlock()
	return &chaosMark{chk.applies, time.Now()}
}

// moved reports whether a frame was applied since the mark, or the stall
// period has not passed yet; it moves the mark forward on progress.
func (m *chaosMark) moved(chk *checker) bool {
	chk.mu.Lock()
	applies := chk.applies
	chk.mu.Unlock()
	if applies != m.applies {
		m.applies, m.at = applies, time.Now()
		return true
	}
	return time.Since(m.at) < chaosStall
}

// chaosConverge waits until the replicas converged (see
// checker.convergedLocked), then compares them at that instant. It returns
// "" on success, else why they had not converged when they stopped making
// progress for chaosStall.
func chaosConverge(chk *checker) string {
	mark := chaosProgress(chk)
	for {
		chk.mu.Lock()
		why, ch := chk.convergedLocked(), chk.changed
		if why == "" {
			chk.compareReplicasLocked()
		}
		chk.mu.Unlock()
		if why == "" {
			return ""
		}
		if !mark.moved(chk) {
			return why
		}
		select {
		case <-ch:
		case <-time.After(time.Second):
		}
	}
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
