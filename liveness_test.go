package replication

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLiveness_Faults measures liveness under a lossy network (README,
// Liveness): 5 validators, 10% of deliveries dropped and each delayed by
// 0–5 ms, every node proposing one frame after the other in a namespace of
// its own, for 1.5s with the test's WitnessAfter (20ms) and 1.5s with the
// default (100ms), the repair period that a lost message costs. It reports
// the share of proposals accepted within ProposeWait (2s) and their p50/p99
// latency:
//
//	go test -run TestLiveness -v .
//
// It fails only when liveness is clearly broken (fewer than 90% accepted,
// or a proposal rejected although nobody competes for its namespace), so
// that the figures stay informative on a loaded machine.
func TestLiveness_Faults(t *testing.T) {
	if testing.Short() {
		t.Skip("liveness figures skipped in -short mode")
	}
	for _, witness := range []time.Duration{20 * time.Millisecond, DefaultWitnessAfter} {
		t.Run(fmt.Sprintf("WitnessAfter=%s", witness), func(t *testing.T) {
			measureLiveness(t, witness)
		})
	}
}

func measureLiveness(t *testing.T, witness time.Duration) {
	const (
		validators  = 5
		load        = 1500 * time.Millisecond
		proposeWait = 2 * time.Second
		seed        = 20260101
	)
	c := newTestCluster(t, validators, clusterOpts{proposeWait: proposeWait, witnessAfter: witness, antiEntropy: 50 * time.Millisecond})
	faults := MemoryFaults{Seed: seed, DropRate: 0.10, MaxDelay: 5 * time.Millisecond}
	require.NoError(t, c.hub.SetFaults(faults))
	t.Logf("seed %d: %d validators, drop %.0f%%, delay 0-%s, WitnessAfter %s, ProposeWait %s, %s of load",
		seed, validators, faults.DropRate*100, faults.MaxDelay, witness, proposeWait, load)

	type sample struct {
		d       Decision
		latency time.Duration
	}
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
	)
	end := time.Now().Add(load)
	for i, node := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; time.Now().Before(end); k++ {
				f := put(fmt.Sprintf("live-%d", i), fmt.Sprintf("k%d", k%16), fmt.Sprint(k))
				start := time.Now()
				d, _ := node.r.Propose(context.Background(), f)
				lat := time.Since(start)
				mu.Lock()
				samples = append(samples, sample{d, lat})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	var accepted, rejected, timedOut int
	var lats []time.Duration
	for _, s := range samples {
		switch s.d {
		case DecisionAccept:
			accepted++
			lats = append(lats, s.latency)
		case DecisionReject:
			rejected++
		default:
			timedOut++
		}
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration {
		if len(lats) == 0 {
			return 0
		}
		return lats[min(len(lats)-1, int(p*float64(len(lats))))]
	}
	share := float64(accepted) / float64(max(1, len(samples)))
	hs := c.hub.Stats()
	t.Logf("liveness: %d proposals, %.1f%% accepted within ProposeWait (%d rejected, %d timed out); accepted latency p50 %s, p99 %s, max %s",
		len(samples), share*100, rejected, timedOut, pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
	t.Logf("hub: %d deliveries sent, %d dropped (%.1f%%)", hs.Sent, hs.Dropped, 100*float64(hs.Dropped)/float64(max(1, hs.Sent)))
	require.NotEmpty(t, samples)
	require.Zero(t, rejected, "seed %d: proposals rejected in uncontended namespaces", seed)
	require.GreaterOrEqual(t, share, 0.90, "seed %d: liveness under 10%% drops", seed)
}
