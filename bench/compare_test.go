package bench

import "testing"

// The benchmarks come in pairs, raft first, in the order they run with
// -bench . so each pair is measured back to back. The sequential pairs
// measure latency (ns/op of one proposer); the Parallel pairs measure
// throughput (ns/op = 1/throughput with 64 proposers).

// BenchmarkRaftApply3Node is the latency of one Apply on the leader of a
// three-node raft cluster with in-memory stores and InmemTransport, one
// proposer at a time.
func BenchmarkRaftApply3Node(b *testing.B) { runSequential(b, newRaftInmem) }

// BenchmarkQuasarPropose3Node is the latency of one Propose on node 0 of a
// three-validator Quasar cluster on a MemoryHub, one proposer at a time.
func BenchmarkQuasarPropose3Node(b *testing.B) { runSequential(b, newQuasarMemory) }

// BenchmarkRaftApply3NodeParallel is the throughput of 64 concurrent Apply
// callers on the leader of the in-memory raft cluster.
func BenchmarkRaftApply3NodeParallel(b *testing.B) { runParallel(b, newRaftInmem) }

// BenchmarkQuasarPropose3NodeParallel is the throughput of 64 concurrent
// proposers spread over the three Quasar nodes on a MemoryHub, each in its
// own namespace.
func BenchmarkQuasarPropose3NodeParallel(b *testing.B) { runParallel(b, newQuasarMemory) }

// BenchmarkRaftApplyTCP3Node is BenchmarkRaftApply3Node over raft's TCP
// transport on loopback. That transport is PLAINTEXT (no TLS, no
// authentication), while BenchmarkQuasarProposeTCP3Node pays for mutual TLS
// 1.3 with X25519MLKEM768 key exchange.
func BenchmarkRaftApplyTCP3Node(b *testing.B) { runSequential(b, newRaftTCP) }

// BenchmarkQuasarProposeTCP3Node is BenchmarkQuasarPropose3Node over
// TCPTransport on loopback with mutual TLS 1.3 (X25519MLKEM768 key
// exchange).
func BenchmarkQuasarProposeTCP3Node(b *testing.B) { runSequential(b, newQuasarTCP) }

// BenchmarkRaftApplyTCP3NodeParallel is BenchmarkRaftApply3NodeParallel over
// raft's plaintext TCP transport on loopback.
func BenchmarkRaftApplyTCP3NodeParallel(b *testing.B) { runParallel(b, newRaftTCP) }

// BenchmarkQuasarProposeTCP3NodeParallel is
// BenchmarkQuasarPropose3NodeParallel over mutual-TLS TCPTransport on
// loopback.
func BenchmarkQuasarProposeTCP3NodeParallel(b *testing.B) { runParallel(b, newQuasarTCP) }

// BenchmarkRaftApplyBolt3Node is BenchmarkRaftApply3Node with each node's log
// and stable state in a raft-boltdb file, fsync on (two fdatasync calls per
// bbolt write transaction), still over InmemTransport.
func BenchmarkRaftApplyBolt3Node(b *testing.B) { runSequential(b, newRaftBolt) }

// BenchmarkQuasarProposeDurable3Node is BenchmarkQuasarPropose3Node with a
// DataDir on each validator: every node syncs its log before a vote, a
// proposal or a Propose outcome that depends on it leaves the node.
func BenchmarkQuasarProposeDurable3Node(b *testing.B) { runSequential(b, newQuasarDurable) }

// BenchmarkRaftApplyBolt3NodeParallel is BenchmarkRaftApply3NodeParallel
// with the raft-boltdb stores of BenchmarkRaftApplyBolt3Node.
func BenchmarkRaftApplyBolt3NodeParallel(b *testing.B) { runParallel(b, newRaftBolt) }

// BenchmarkQuasarProposeDurable3NodeParallel is
// BenchmarkQuasarPropose3NodeParallel with the DataDirs of
// BenchmarkQuasarProposeDurable3Node.
func BenchmarkQuasarProposeDurable3NodeParallel(b *testing.B) { runParallel(b, newQuasarDurable) }

// The dragonboat benchmarks run the same loops on
// github.com/lni/dragonboat/v3 v3.3.8: three NodeHosts in this process, one
// Raft group, each node's LogDB on an in-memory file system, every proposer
// on the leader.

// BenchmarkDragonboatPropose3Node is the latency of one SyncPropose on the
// leader of a three-node dragonboat cluster on its in-process channel
// transport (plugin/chan), one proposer at a time.
func BenchmarkDragonboatPropose3Node(b *testing.B) { runSequential(b, newDragonboatChan) }

// BenchmarkDragonboatPropose3NodeParallel is the throughput of 64 concurrent
// SyncPropose callers on the leader of the channel-transport dragonboat
// cluster.
func BenchmarkDragonboatPropose3NodeParallel(b *testing.B) { runParallel(b, newDragonboatChan) }

// BenchmarkDragonboatProposeTCP3Node is BenchmarkDragonboatPropose3Node over
// dragonboat's default TCP transport on loopback, PLAINTEXT (MutualTLS off),
// like raft's.
func BenchmarkDragonboatProposeTCP3Node(b *testing.B) { runSequential(b, newDragonboatTCP) }

// BenchmarkDragonboatProposeTCP3NodeParallel is
// BenchmarkDragonboatPropose3NodeParallel over dragonboat's plaintext TCP
// transport on loopback.
func BenchmarkDragonboatProposeTCP3NodeParallel(b *testing.B) { runParallel(b, newDragonboatTCP) }
