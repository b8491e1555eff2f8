package replication

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestTCPNode_KilledAndRestartedOnDataDir runs three tcp-node processes
// with -data under load, kills c with SIGKILL mid-load and restarts it on
// its data directory, then does the same to b. Every node must end with the
// same frames: a restarted node loses none of the frames it reported
// accepted, catches up on those it missed, and applies each frame once (a
// frame fed again after the crash is recognised by its Seq, and must be
// the frame applied there before).
func TestTCPNode_KilledAndRestartedOnDataDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pc := newProcCluster(t, ctx)
	const load = 3000 // at 600/s: 5s of load
	data := func(id string) string { return filepath.Join(pc.dir, "data-"+id) }
	dump := func(id string) string { return filepath.Join(pc.dir, id+".dump") }
	common := []string{"-report", "-anti-entropy", "100ms"}
	nodes := map[string]*procNode{}
	for _, id := range pc.ids {
		nodes[id] = pc.start(t, id, dump(id), append(common, "-data", data(id), "-load", fmt.Sprint(load), "-rate", "600")...)
	}
	for _, id := range pc.ids {
		nodes[id].out.waitLine(t, 0, 30*time.Second, "load progress from "+id, isProgress(t, load/6))
	}

	killed := map[string]procCounts{}
	for _, id := range []string{"c", "b"} {
		n := nodes[id]
		require.NoError(t, n.cmd.Process.Signal(syscall.SIGKILL))
		<-n.done
		killed[id] = n.lastCounts(t, "progress")
		t.Logf("killed %s after it reported %d frames accepted", id, killed[id].accepted)
		nodes[id] = pc.start(t, id, dump(id), append(common, "-data", data(id), "-serve")...)
		line, _ := nodes[id].out.waitLine(t, 0, 10*time.Second, id+"'s restart", func(l string) bool { return strings.HasPrefix(l, "state in ") })
		t.Logf("%s restarted: %s", id, line)
		// Back before the next kill, so that a quorum stays up.
		nodes[id].out.waitLine(t, 0, 30*time.Second, "progress of the restarted "+id, func(l string) bool {
			return strings.HasPrefix(l, "progress ") && parseCounts(t, l, "progress").applied > killed[id].applied
		})
	}
	line, _ := nodes["a"].out.waitLine(t, 0, 60*time.Second, "a's end of load", func(l string) bool { return strings.HasPrefix(l, "load done ") })
	done := parseCounts(t, line, "load done")
	t.Logf("a: %s", line)
	require.Equal(t, load, done.accepted+done.rejected+done.timeouts)
	require.Zero(t, done.rejected, "a: rejections in its own namespace")

	// With the load over, the replicas converge: wait until all three
	// report the same number of frames applied.
	require.Eventually(t, func() bool {
		a, b, c := nodes["a"].lastCounts(t, "progress"), nodes["b"].lastCounts(t, "progress"), nodes["c"].lastCounts(t, "progress")
		return a.applied > 0 && a.applied == b.applied && b.applied == c.applied
	}, 60*time.Second, 100*time.Millisecond, "the replicas did not converge")

	dumps := map[string]map[string]string{}
	for _, id := range pc.ids {
		n := nodes[id]
		require.NoError(t, n.cmd.Process.Signal(syscall.SIGTERM))
		select {
		case <-n.done:
		case <-ctx.Done():
			t.Fatalf("%s did not exit", id)
		}
		require.NoError(t, n.err, "%s exit status", id)
		line, _ := n.out.waitLine(t, 0, time.Second, "final report from "+id, func(l string) bool { return strings.HasPrefix(l, "final ") })
		t.Logf("%s: %s", id, line)
		require.Contains(t, line, " conflicts=0", "%s was fed a different frame at a Seq it had applied", id)
		dumps[id] = readDump(t, n.dump)
		require.Len(t, dumps[id], parseCounts(t, line, "final").applied, "%s: the load only puts new keys, so one key per frame applied once", id)
	}
	for _, id := range pc.ids {
		require.Equal(t, dumps["a"], dumps[id], "%s's state differs from a's", id)
	}
	require.GreaterOrEqual(t, requireLoadPrefix(t, dumps["a"], "a", "a"), done.accepted)
	for id, k := range killed {
		require.GreaterOrEqual(t, requireLoadPrefix(t, dumps["a"], "a", id), k.accepted, "frames %s reported accepted before it was killed", id)
	}
}
