// Command cluster runs three QuasarReplicator validators in one process,
// connected by a MemoryHub, each applying accepted frames into its own
// in-memory key-value replica. It drives a write load, checks that the
// replicas are identical, then partitions one node away to show the quorum
// at work: the majority keeps accepting, the minority's proposal times out,
// and after the partition heals the lagging node catches up.
//
//	go run ./examples/cluster [-frames 20000] [-ns 4] [-writers 4] [-v]
//
// It exits with status 1 if the replicas diverge or the cluster does not
// behave as a majority quorum should.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/quasar-replication/replication"
)

// replica is one node's state: a key-value map built by its Subscribe
// handler. mu guards data and applied.
type replica struct {
	mu      sync.Mutex
	data    map[string]string
	applied int
}

// apply is the Subscribe handler. The replicator calls it once per accepted
// frame, never concurrently with itself, in the same namespace order on
// every node.
func (r *replica) apply(_ context.Context, f replication.Frame) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := string(f.FrameKey())
	switch f.Op {
	case "put":
		r.data[k] = string(f.Value) // string() copies: Value is not ours to keep
	case "del":
		delete(r.data, k)
	}
	r.applied++
	return nil
}

func (r *replica) snapshot() (map[string]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.data), r.applied
}

func (r *replica) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

type node struct {
	id string
	r  *replication.QuasarReplicator
	kv *replica
}

// failed is set when a check fails; main exits with status 1.
var failed bool

func check(ok bool, format string, args ...any) {
	if ok {
		fmt.Printf("  ok    "+format+"\n", args...)
		return
	}
	failed = true
	fmt.Printf("  FAIL  "+format+"\n", args...)
}

func main() {
	frames := flag.Int("frames", 20000, "frames to propose in the load phase")
	namespaces := flag.Int("ns", 4, "namespaces written to")
	writers := flag.Int("writers", 0, "writer goroutines (0: one per namespace)")
	verbose := flag.Bool("v", false, "log the replicators' warnings to stderr")
	flag.Parse()
	if *writers <= 0 {
		*writers = *namespaces
	}
	if *frames <= 0 || *namespaces <= 0 {
		fmt.Fprintln(os.Stderr, "cluster: -frames and -ns must be positive")
		os.Exit(2)
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}

	hub := replication.NewMemoryHub()
	defer hub.Close()
	ids := []string{"n1", "n2", "n3"}
	var nodes []*node
	for _, id := range ids {
		r, err := replication.NewQuasar(context.Background(), replication.QuasarConfig{
			NodeID:              id,
			Validators:          ids,
			Transport:           hub.Connect(id),
			AntiEntropyInterval: 100 * time.Millisecond, // catch up quickly in the demo
			Logger:              logger,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
			os.Exit(1)
		}
		defer r.Close()
		n := &node{id: id, r: r, kv: &replica{data: map[string]string{}}}
		r.Subscribe(n.kv.apply)
		nodes = append(nodes, n)
	}
	m := nodes[0].r.Metrics()
	fmt.Printf("cluster: %d Quasar validators %v on one MemoryHub, quorum %d\n\n", m.Validators, ids, m.Quorum)

	// Phase 1: load. Namespace i is written by node i%3 only, as a shard
	// manager gives each shard one owner; writers sharing a namespace share
	// its owner, so their proposals queue up instead of racing.
	fmt.Printf("1. load: %d frames (puts, every 4th a delete) from %d writers into %d namespaces\n",
		*frames, *writers, *namespaces)
	lat := make([][]time.Duration, *writers)
	g, ctx := errgroup.WithContext(context.Background())
	start := time.Now()
	for w := range *writers {
		ns := w % *namespaces
		owner := nodes[ns%len(nodes)]
		count := *frames / *writers
		if w < *frames%*writers {
			count++
		}
		g.Go(func() error {
			for i := range count {
				f := replication.Frame{OrgID: "acme", Namespace: fmt.Sprintf("ns-%d", ns),
					Op: "put", Key: fmt.Sprintf("w%d-k%d", w, i%256), Value: fmt.Appendf(nil, "v%d", i)}
				if i%4 == 3 {
					f.Op, f.Key, f.Value = "del", fmt.Sprintf("w%d-k%d", w, (i-1)%256), nil
				}
				t0 := time.Now()
				d, err := owner.r.Propose(ctx, f)
				lat[w] = append(lat[w], time.Since(t0))
				if d == replication.DecisionUndecided {
					return fmt.Errorf("writer %d: %w", w, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
	elapsed := time.Since(start)
	all := slices.Sorted(slices.Values(slices.Concat(lat...)))
	fmt.Printf("  proposed %d frames in %s: %.0f frames/s, Propose latency p50 %s p99 %s max %s\n",
		len(all), elapsed.Round(time.Millisecond), float64(len(all))/elapsed.Seconds(),
		pct(all, 0.50), pct(all, 0.99), all[len(all)-1].Round(time.Microsecond))
	var accepted uint64
	for _, n := range nodes {
		a, _, _ := n.r.Stats()
		accepted += a
	}
	check(accepted == uint64(*frames), "%d of %d proposals accepted", accepted, *frames)
	converge(nodes, int(accepted), 10*time.Second)
	report(nodes)

	// Phase 2: partition n3 away from n1 and n2.
	const majorityFrames = 500
	fmt.Printf("\n2. partition {n1 n2} | {n3}\n")
	hub.Partition([]string{"n1", "n2"}, []string{"n3"})
	before := nodes[2].kv.count()
	var majAccepted int
	for i := range majorityFrames {
		f := replication.Frame{OrgID: "acme", Namespace: "ns-0", Op: "put",
			Key: fmt.Sprintf("partition-k%d", i), Value: []byte("written by the majority")}
		if d, _ := nodes[i%2].r.Propose(context.Background(), f); d == replication.DecisionAccept {
			majAccepted++
		}
	}
	check(majAccepted == majorityFrames, "majority side (n1, n2) accepted %d of %d frames", majAccepted, majorityFrames)
	tctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	t0 := time.Now()
	d, err := nodes[2].r.Propose(tctx, replication.Frame{OrgID: "acme", Namespace: "ns-0", Op: "put",
		Key: "minority-write", Value: []byte("written by n3 alone")})
	cancel()
	check(d == replication.DecisionTimeout && errors.Is(err, replication.ErrTimeout),
		"minority side (n3) proposal: %s after %s (%v)", d, time.Since(t0).Round(time.Millisecond), err)
	check(nodes[2].kv.count() == before, "n3 applied nothing while cut off (%d frames behind)",
		nodes[0].kv.count()-nodes[2].kv.count())

	// Phase 3: heal; n3 catches up by anti-entropy.
	fmt.Printf("\n3. heal: n3 catches up on what it missed\n")
	hub.Heal()
	t0 = time.Now()
	converge(nodes, nodes[0].kv.count(), 10*time.Second)
	fmt.Printf("  n3 caught up in %s (sync requests %d, certificates accepted %d)\n",
		time.Since(t0).Round(time.Millisecond), nodes[2].r.Metrics().SyncRequests, nodes[2].r.Metrics().Certificates)
	// A timeout means "outcome unknown": say what became of n3's frame.
	data, _ := nodes[2].kv.snapshot()
	if _, ok := data["acme/ns-0/minority-write"]; ok {
		fmt.Println("  n3's timed-out frame was accepted after the heal and applied everywhere")
	} else {
		fmt.Println("  n3's timed-out frame was not accepted: the majority had taken its slot in ns-0")
	}
	report(nodes)

	for _, n := range nodes {
		_ = n.r.Close()
	}
	if failed {
		fmt.Println("\nFAILED")
		os.Exit(1)
	}
	fmt.Println("\nall checks passed")
}

// converge waits until every node applied at least want frames and all
// applied the same number, then checks that the replicas are identical.
func converge(nodes []*node, want int, within time.Duration) {
	deadline := time.Now().Add(within)
	for {
		counts := make([]int, len(nodes))
		same := true
		for i, n := range nodes {
			counts[i] = n.kv.count()
			same = same && counts[i] >= want && counts[i] == counts[0]
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			check(false, "replicas did not converge within %s: applied %v, want %d each", within, counts, want)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	ref, refCount := nodes[0].kv.snapshot()
	for _, n := range nodes[1:] {
		data, count := n.kv.snapshot()
		if count != refCount || !maps.Equal(ref, data) {
			check(false, "replica %s (%d frames, %d keys) differs from %s (%d frames, %d keys)",
				n.id, count, len(data), nodes[0].id, refCount, len(ref))
			return
		}
	}
	check(true, "all %d replicas identical: %d frames applied, %d keys", len(nodes), refCount, len(ref))
}

// report prints each node's applied count and its decision counters.
func report(nodes []*node) {
	fmt.Printf("  %-4s %8s %6s | own proposals: %8s %8s %8s | frames decided here: %8s %8s\n",
		"node", "applied", "keys", "accepted", "rejected", "timeouts", "accepted", "rejected")
	for _, n := range nodes {
		data, applied := n.kv.snapshot()
		a, rj, to := n.r.Stats()
		m := n.r.Metrics()
		fmt.Printf("  %-4s %8d %6d | %23d %8d %8d | %29d %8d\n",
			n.id, applied, len(data), a, rj, to, m.FramesAccepted, m.FramesRejected)
	}
}

// pct returns the p-quantile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(p * float64(len(sorted)-1))
	return sorted[i].Round(time.Microsecond)
}
