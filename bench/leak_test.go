package bench

import (
	"testing"

	"go.uber.org/goleak"
)

// TestClusters_CloseLeavesNoGoroutines starts every kind of cluster the
// benchmarks use, replicates a few operations, closes it, and checks that no
// goroutine it started is left running, so one benchmark cannot slow down
// the next.
func TestClusters_CloseLeavesNoGoroutines(t *testing.T) {
	for _, tc := range []struct {
		name string
		new  newClusterFunc
	}{
		{"raft-inmem", newRaftInmem},
		{"raft-tcp", newRaftTCP},
		{"quasar-memory", newQuasarMemory},
		{"quasar-tcp", newQuasarTCP},
		{"raft-bolt", newRaftBolt},
		{"quasar-durable", newQuasarDurable},
		{"dragonboat-chan", newDragonboatChan},
		{"dragonboat-tcp", newDragonboatTCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			c := tc.new(t, 6)
			warmUp(t, c, 6)
			if err := c.close(); err != nil {
				t.Fatal(err)
			}
			goleak.VerifyNone(t, ignore)
		})
	}
}
