package replication

import (
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSim runs the simulator (sim_test.go) over a fixed set of seeds, each
// a run of a few hundred proposals on 3, 5 or 7 validators (3+2*(seed mod
// 3)) under a fault schedule, checking every invariant after every step,
// then liveness and convergence after healing. Environment variables
// change what it runs:
//
//	REPLICATION_SIM_SEED=1234      replay seed 1234 alone, printing its events
//	REPLICATION_SIM_SEEDS=5000     run seeds 1 to 5000 instead of the default set
//	REPLICATION_SIM_DURATION=30m   run random seeds for 30 minutes (soak)
//
// A failure prints the seed and the command that replays it; the replay is
// the identical run (the simulator depends on nothing but the seed).
func TestSim(t *testing.T) {
	if s := os.Getenv("REPLICATION_SIM_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "REPLICATION_SIM_SEED")
		trace := &simTrace{all: true}
		sim := newSimulator(seed, trace)
		fail := sim.run()
		t.Logf("events of seed %d:\n%s", seed, strings.Join(trace.lines, "\n"))
		if fail != "" {
			t.Fatalf("seed %d: %s", seed, fail)
		}
		t.Log(sim.summary())
		return
	}
	if s := os.Getenv("REPLICATION_SIM_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(t, err, "REPLICATION_SIM_DURATION")
		soakSim(t, d)
		return
	}
	n := simCISeeds
	if s := os.Getenv("REPLICATION_SIM_SEEDS"); s != "" {
		var err error
		n, err = strconv.Atoi(s)
		require.NoError(t, err, "REPLICATION_SIM_SEEDS")
	}
	start := time.Now()
	var next atomic.Uint64
	seeds := uint64(n) + uint64(len(simRegressionSeeds))
	res := runSims(func() (uint64, bool) {
		k := next.Add(1)
		if k > uint64(n) && k <= seeds {
			return simRegressionSeeds[k-uint64(n)-1], true
		}
		return k, k <= uint64(n)
	})
	t.Logf("%d seeds in %s: %d proposals, %d steps", res.seeds, time.Since(start).Round(time.Millisecond), res.proposals, res.steps)
	t.Logf("blocks: %d of %d frames; largest %d frames (seed %d); %d with frames both accepted and rejected (most: %d, seed %d)",
		res.blocks, res.frames, res.largest, res.largestSeed, res.mixed, res.mostMixed, res.mixedSeed)
	if res.signed > 0 {
		st := res.sign
		t.Logf("signed: %d seeds; %d attestations signed; %d signed certificates counted; a Byzantine validator sent %d forgeries: the honest validators dropped %d certificates, %d parts and %d attestations, and found %d equivocations",
			res.signed, st.attestations, st.certificates, st.forgeries, st.certificatesBad, st.partsBad, st.attestationsBad, st.equivocations)
		require.Positive(t, st.certificates, "honest validators caught up with signed certificates")
		require.Positive(t, st.certificatesBad, "forged certificates reached honest validators")
		require.Positive(t, st.equivocations, "equivocations reached honest validators")
	}
	res.report(t)
}

// simCISeeds is how many seeds TestSim runs by default (seeds 1 to 500),
// besides simRegressionSeeds.
const simCISeeds = 500

// simRegressionSeeds are seeds soaks found failing, run every time. (Seeds
// 1, 7, 31, 50 and 78, among the numbered ones, found proposals of one
// frame sharing a block ID.)
var simRegressionSeeds = []uint64{
	// A probe (a digest naming a namespace this node does not know) asked
	// the same peer, which did not know it either, every time: two nodes
	// never caught up (fixed: probes rotate like syncs).
	7972595070740839657,
	493618582360673723,
	// A validator restarted from a compacted log linked its namespace's
	// chain from the head it had then, not from its applied mark: the
	// frames between them, linked but not applied yet, were never applied
	// (fixed: restore links from the mark).
	3149, 4672, 5986,
	// A compacted log lists votes out of the order they were cast, and the
	// restore took the last commit vote at the head's position for the
	// position's vote: a rejected frame's, not the one still undecided. The
	// validator then cancelled its own frame, which it had voted commit for
	// before the crash (fixed: a position freed by a rejection is recorded,
	// and a compaction writes the position's vote last).
	6581105158712905263,
	// Blocks: 80 blocks whose frames were decided both ways (frames of
	// shared namespaces rejected beside accepted ones of their block).
	// Among the CI seeds, seed 8 proposes the largest block (43 frames).
	1280,
	// Signed votes: after a validator restarted from its log, no node could
	// gather a quorum of parts for some frames it had voted for before the
	// crash (its batches were gone, and the others asked only the voters
	// whose votes they had counted), so no certificate for them was ever
	// sent and a node that missed them never converged (fixed: a restored
	// validator attests its commit votes again, and a node asks every
	// validator for parts).
	990222348209286629, 2108004040035941165,
	// Signed votes: a validator that restarted from its log held its
	// commit vote on a frame (remembered) but not the frame, so it could
	// not give its part, and without it no quorum of parts existed: the
	// frame's certificate was never sent (fixed: a part is given for a
	// remembered commit vote too, attested then if need be).
	803069,
}

// simResults sums the runs of several seeds.
type simResults struct {
	mu                      sync.Mutex
	seeds, proposals, steps int
	failed                  []string
	// Blocks: proposed, their frames, those with frames both accepted and
	// rejected, and the seeds with the largest block and the most such.
	blocks, frames       uint64
	mixed                int
	largest, largestSeed uint64
	mostMixed, mixedSeed uint64
	// Signed runs: seeds, forgeries the Byzantine validator sent, and what
	// the honest validators made of them (signStats).
	signed uint64
	sign   signStats
}

// runSims runs the seeds next yields, on one goroutine per CPU (each run
// is single-threaded and deterministic), until next says stop.
func runSims(next func() (uint64, bool)) *simResults {
	res := &simResults{}
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seed, ok := next()
				if !ok {
					return
				}
				trace := &simTrace{max: 400}
				sim := newSimulator(seed, trace)
				fail := sim.run()
				proposed, _, _, _, _, _ := sim.chk.stats()
				blocks, frames, mixed, largest := sim.blockStats()
				res.mu.Lock()
				res.blocks += blocks
				res.frames += frames
				res.mixed += mixed
				if uint64(largest) > res.largest {
					res.largest, res.largestSeed = uint64(largest), seed
				}
				if uint64(mixed) > res.mostMixed {
					res.mostMixed, res.mixedSeed = uint64(mixed), seed
				}
				if sim.byz != nil {
					res.signed++
					res.sign.add(sim.signStats())
				}
				res.seeds++
				res.proposals += proposed
				res.steps += sim.steps
				if fail != "" {
					res.failed = append(res.failed, fmt.Sprintf("seed %d (%s): %s\nlast events:\n%s\nreplay: REPLICATION_SIM_SEED=%d go test -run 'TestSim$' -v .",
						seed, sim.o, fail, strings.Join(trace.lines, "\n"), seed))
				}
				res.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

func (res *simResults) report(t *testing.T) {
	t.Helper()
	for _, f := range res.failed {
		t.Error(f)
	}
}

// soakSim runs random seeds for d and reports every failing one.
func soakSim(t *testing.T, d time.Duration) {
	start := time.Now()
	res := runSims(func() (uint64, bool) {
		var b [8]byte
		_, _ = crand.Read(b[:])
		return binary.LittleEndian.Uint64(b[:]) >> 1, time.Since(start) < d
	})
	t.Logf("soak: %d seeds in %s, %d failed; %d proposals, %d steps",
		res.seeds, time.Since(start).Round(time.Second), len(res.failed), res.proposals, res.steps)
	res.report(t)
}

// TestSim_Deterministic: the same seed gives the same run, event for
// event: what makes a failing seed replayable.
func TestSim_Deterministic(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		digest := func() (uint64, int) {
			trace := &simTrace{all: true}
			sim := newSimulator(seed, trace)
			require.Empty(t, sim.run(), "seed %d", seed)
			h := fnv.New64a()
			for _, l := range trace.lines {
				h.Write([]byte(l))
			}
			return h.Sum64(), sim.steps
		}
		h1, steps1 := digest()
		h2, steps2 := digest()
		require.Equal(t, steps1, steps2, "seed %d: steps", seed)
		require.Equal(t, h1, h2, "seed %d: the two runs differ", seed)
	}
}
