// Package bench compares the replication library's QuasarReplicator with
// github.com/hashicorp/raft v1.8.0 and github.com/lni/dragonboat/v3 v3.3.8
// on the same workload: three nodes, 256-byte values, one sequential
// proposer or 64 concurrent ones, first over in-process transports and then
// over loopback TCP, and once more in process with every node's log synced
// to disk (raft-boltdb for raft, DataDir for Quasar).
//
// It is a separate module (bench/go.mod) so that raft, dragonboat and their
// dependencies never enter the library's own module graph. The package holds only
// benchmarks and their helpers, in _test.go files; README.md says what is
// measured, how to run it, and the latest figures.
package bench
