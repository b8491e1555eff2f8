package replication

// A multi-process test: three examples/tcp-node processes on loopback with
// mutual TLS, one killed with SIGKILL in the middle of the load.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// procNode is one running tcp-node process and what it printed.
type procNode struct {
	id   string
	cmd  *exec.Cmd
	dump string
	out  *procOutput
	errb *procOutput
	done chan struct{} // closed when cmd.Wait returned
	err  error         // cmd.Wait's result, set before done is closed
}

// procOutput collects a process's output lines; changed is closed and
// replaced whenever a line arrives.
type procOutput struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	changed chan struct{}
}

func newProcOutput() *procOutput { return &procOutput{changed: make(chan struct{})} }

func (o *procOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = append(o.partial, p...)
	for {
		i := strings.IndexByte(string(o.partial), '\n')
		if i < 0 {
			break
		}
		o.lines = append(o.lines, string(o.partial[:i]))
		o.partial = o.partial[i+1:]
	}
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *procOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n") + string(o.partial)
}

// waitLine waits until a line from index from on matches, and returns it
// and the index after it.
func (o *procOutput) waitLine(t *testing.T, from int, within time.Duration, what string, match func(string) bool) (string, int) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		lines, ch := o.lines, o.changed
		o.mu.Unlock()
		for ; from < len(lines); from++ {
			if match(lines[from]) {
				return lines[from], from + 1
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no %s within %s; output so far:\n%s", what, within, o)
		}
	}
}

// procCounts are the counters of a "progress", "load done" or "final" line.
type procCounts struct{ accepted, rejected, timeouts, applied int }

func parseCounts(t *testing.T, line, prefix string) procCounts {
	t.Helper()
	var c procCounts
	rest := strings.TrimPrefix(line, prefix+" ")
	for _, f := range strings.Fields(rest) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil {
			continue
		}
		switch k {
		case "accepted":
			c.accepted = n
		case "rejected":
			c.rejected = n
		case "timeouts":
			c.timeouts = n
		case "applied":
			c.applied = n
		}
	}
	return c
}

// readDump parses a -dump file: sorted "key=value" lines.
func readDump(t *testing.T, file string) map[string]string {
	t.Helper()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		require.True(t, ok, "bad dump line %q", sc.Text())
		m[k] = v
	}
	require.NoError(t, sc.Err())
	return m
}

// requireLoadPrefix checks that dump holds, for namespace ns of the load,
// exactly the keys k000000.. of a prefix of the proposer's frames with
// their values, and returns its length: frames of one namespace are applied
// in order, so a replica never has a hole (the proposer had no timeout or
// rejection in ns, so every frame it proposed was accepted).
func requireLoadPrefix(t *testing.T, dump map[string]string, owner, ns string) int {
	t.Helper()
	n := 0
	for k := range dump {
		if strings.HasPrefix(k, "load/"+ns+"/") {
			n++
		}
	}
	for i := range n {
		key := fmt.Sprintf("load/%s/k%06d", ns, i)
		require.Equal(t, fmt.Sprintf("%s-%d", ns, i), dump[key], "%s: %s (a hole or a wrong value in %s's prefix of %d)", owner, key, ns, n)
	}
	return n
}

// requireScrape scrapes the metrics a tcp-node serves (-metrics; out is
// its stdout) and checks them against its load report: every Propose of
// its load accepted, a peer still connected, the dead one not.
func requireScrape(t *testing.T, out *procOutput, accepted int) {
	t.Helper()
	line, _ := out.waitLine(t, 0, time.Second, "the metrics address", func(l string) bool { return strings.HasPrefix(l, "metrics at ") })
	resp, err := http.Get(strings.TrimPrefix(line, "metrics at "))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, want := range []string{
		fmt.Sprintf(`replication_quasar_propose_seconds_count{outcome="accept"} %d`, accepted),
		`replication_tcp_peer_connected{peer="b"} 1`,
		`replication_tcp_peer_connected{peer="c"} 0`,
		`replication_quasar_validators 3`,
	} {
		require.Contains(t, string(body), want+"\n", "scraped metrics")
	}
}

// procCluster is three tcp-node processes' shared setup: the binary, the
// certificates and the listen addresses.
type procCluster struct {
	ctx   context.Context
	dir   string
	bin   string
	certs string
	ids   []string
	addrs map[string]string
}

// newProcCluster builds tcp-node and writes certificates for a, b and c.
// It skips the test with -short or without a go tool.
func newProcCluster(t *testing.T, ctx context.Context) *procCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs three processes; skipped with -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	pc := &procCluster{ctx: ctx, dir: t.TempDir(), ids: []string{"a", "b", "c"}, addrs: map[string]string{}}
	pc.bin = filepath.Join(pc.dir, "tcp-node")
	build := exec.CommandContext(ctx, gobin, "build", "-o", pc.bin, "./examples/tcp-node")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	pc.certs = filepath.Join(pc.dir, "certs")
	out, err = exec.CommandContext(ctx, pc.bin, "-gen-certs="+pc.certs, "-nodes", "a,b,c").CombinedOutput()
	require.NoError(t, err, "-gen-certs=DIR: %s", out)
	require.Contains(t, string(out), "-id a -listen")
	for _, id := range pc.ids {
		pc.addrs[id] = freeLoopbackAddr(t)
	}
	return pc
}

// start starts node id with the cluster's addresses and certificates and
// the extra arguments, and kills it when the test ends.
func (pc *procCluster) start(t *testing.T, id, dump string, extra ...string) *procNode {
	t.Helper()
	var peers []string
	for _, p := range pc.ids {
		if p != id {
			peers = append(peers, p+"="+pc.addrs[p])
		}
	}
	n := &procNode{id: id, dump: dump, out: newProcOutput(), errb: newProcOutput(), done: make(chan struct{})}
	args := []string{"-id", id, "-listen", pc.addrs[id], "-peers", strings.Join(peers, ","),
		"-cert", filepath.Join(pc.certs, id+".pem"), "-key", filepath.Join(pc.certs, id+"-key.pem"), "-ca", filepath.Join(pc.certs, "ca.pem"),
		"-signing-key", filepath.Join(pc.certs, id+"-signing.key"), "-validator-keys", filepath.Join(pc.certs, "validator-keys.json"),
		"-dump", dump}
	n.cmd = exec.CommandContext(pc.ctx, pc.bin, append(args, extra...)...)
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.errb
	require.NoError(t, n.cmd.Start())
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		<-n.done
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr:\n%s", id, n.out, id, n.errb)
		}
	})
	return n
}

// lastCounts returns the counters of n's last line with prefix.
func (n *procNode) lastCounts(t *testing.T, prefix string) procCounts {
	n.out.mu.Lock()
	defer n.out.mu.Unlock()
	var c procCounts
	for _, l := range n.out.lines {
		if strings.HasPrefix(l, prefix+" ") {
			c = parseCounts(t, l, prefix)
		}
	}
	return c
}

// isProgress matches a progress line with at least min frames accepted.
func isProgress(t *testing.T, min int) func(string) bool {
	return func(l string) bool {
		return strings.HasPrefix(l, "progress ") && parseCounts(t, l, "progress").accepted >= min
	}
}

// TestTCPNode_ProcessKilledMidLoad runs three tcp-node processes with load
// on all three, kills one with SIGKILL mid-load, and checks that the two
// survivors (a majority) keep accepting, lose none of the killed node's
// accepted frames, and hold the same state for the frames both applied.
func TestTCPNode_ProcessKilledMidLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pc := newProcCluster(t, ctx)
	ids := pc.ids
	const load = 4000 // at 800/s: 5s of load
	nodes := map[string]*procNode{}
	for _, id := range ids {
		args := []string{"-load", fmt.Sprint(load), "-rate", "800", "-report", "-anti-entropy", "100ms",
			"-wait-applied", fmt.Sprint(2 * load), "-wait-timeout", "10s"}
		if id == "a" {
			args = append(args, "-metrics", "127.0.0.1:0")
		}
		nodes[id] = pc.start(t, id, filepath.Join(pc.dir, id+".dump"), args...)
	}

	// Wait until the load runs on all three, then kill c.
	for _, id := range ids {
		nodes[id].out.waitLine(t, 0, 20*time.Second, "load progress from "+id, isProgress(t, load/5))
	}
	require.NoError(t, nodes["c"].cmd.Process.Signal(syscall.SIGKILL))
	<-nodes["c"].done
	// Frames c reported accepted before it died: the survivors must have
	// every one of them (S3), although c never returns.
	cLast := nodes["c"].lastCounts(t, "progress")
	t.Logf("killed c after it reported %d frames accepted", cLast.accepted)

	survivors := []string{"a", "b"}
	marks := map[string]int{} // lines from here on were printed after c died
	for _, id := range survivors {
		n := nodes[id]
		n.out.mu.Lock()
		marks[id] = len(n.out.lines)
		n.out.mu.Unlock()
	}
	for _, id := range survivors {
		n := nodes[id]
		line, next := n.out.waitLine(t, marks[id], 10*time.Second, "progress after the kill from "+id, isProgress(t, 0))
		afterKill := parseCounts(t, line, "progress")
		line, _ = n.out.waitLine(t, next, 20*time.Second, "end of load from "+id,
			func(l string) bool { return strings.HasPrefix(l, "load done ") })
		done := parseCounts(t, line, "load done")
		t.Logf("%s: %d accepted when first reported after the kill, %s", id, afterKill.accepted, line)
		require.Greater(t, done.accepted, afterKill.accepted, "%s accepts after c died", id)
		require.Equal(t, load, done.accepted+done.rejected+done.timeouts, "%s decided every proposal", id)
		require.Zero(t, done.rejected, "%s: rejections in its own namespace", id)
		require.Zero(t, done.timeouts, "%s: timeouts with a majority up", id)
		if id == "a" {
			requireScrape(t, nodes[id].out, done.accepted)
		}
		// The validators sign their votes: a proof of the node's last
		// frame, checked with the public keys alone.
		line, _ = n.out.waitLine(t, next, 20*time.Second, "proof from "+id,
			func(l string) bool { return strings.HasPrefix(l, "proof of ") })
		require.Contains(t, line, "verified with the validators' public keys", id)
	}

	// Stop the survivors together (each first waits until it applied the
	// survivors' 2*load frames), then compare their dumps.
	for _, id := range survivors {
		require.NoError(t, nodes[id].cmd.Process.Signal(syscall.SIGTERM))
	}
	dumps := map[string]map[string]string{}
	for _, id := range survivors {
		n := nodes[id]
		select {
		case <-n.done:
		case <-ctx.Done():
			t.Fatalf("%s did not exit", id)
		}
		require.NoError(t, n.err, "%s exit status", id)
		line, _ := n.out.waitLine(t, 0, time.Second, "final report from "+id,
			func(l string) bool { return strings.HasPrefix(l, "final ") })
		final := parseCounts(t, line, "final")
		dumps[id] = readDump(t, n.dump)
		require.Len(t, dumps[id], final.applied, "%s: the load only puts new keys, so one key per applied frame", id)
	}
	for _, id := range survivors {
		for _, ns := range ids {
			got := requireLoadPrefix(t, dumps[id], id, ns)
			switch {
			case ns == id:
				require.Equal(t, load, got, "%s applied all its own frames", id)
			case ns == "c":
				require.GreaterOrEqual(t, got, cLast.accepted, "%s has every frame c reported accepted", id)
			}
		}
	}
	// Same keys, same values: the replicas agree on every frame both applied.
	common := 0
	for k, v := range dumps["a"] {
		if w, ok := dumps["b"][k]; ok {
			require.Equal(t, v, w, "a and b disagree on %s", k)
			common++
		}
	}
	t.Logf("a and b agree on all %d common keys (a holds %d keys, b %d; identical: %t)",
		common, len(dumps["a"]), len(dumps["b"]), common == len(dumps["a"]) && common == len(dumps["b"]))
	require.GreaterOrEqual(t, common, 2*load+cLast.accepted)
}
