// Package replication is the consensus-replication boundary for the Tasks
// shard manager. Drivers (local, quasar) implement Replicator; the shard
// manager calls Propose before committing every mutation and installs
// Subscribe handlers to apply frames received from peers.
//
// The Decision values mirror github.com/luxfi/consensus core/types so the
// quasar driver can pass them through without reshaping.
//
// # Choosing a driver
//
//   - LocalReplicator (NewLocal): one process, no consensus. Propose applies
//     the frame to the local handlers and returns. Use it for embedded,
//     single-node deployments and in unit tests of code that takes a
//     Replicator.
//   - QuasarReplicator (NewQuasar): frames are decided by votes of a fixed
//     validator set, counted by the github.com/luxfi/consensus engine
//     (consensus.NewPQ). With one validator it decides every frame locally;
//     with n validators a frame needs commit votes from a quorum of them.
//   - MemoryHub / MemoryTransport: an in-process Transport for tests and
//     single-process clusters, with fault injection (partitions,
//     disconnects, drops, duplicates, delays).
//   - TCPTransport (NewTCPTransport): the network Transport, mutual TLS,
//     one connection per peer, bounded queues, reconnect with backoff.
//
// # Architecture
//
// QuasarReplicator is two layers. Its protocol is a deterministic state
// machine, the core: it owns no goroutine, reads no clock, calls no
// transport and runs no user code; given the same inputs (proposals,
// received messages, ticks carrying the time, applied frames) in the same
// order, it produces the same outputs (messages to send, frames to apply,
// decided calls). The driver around it owns the goroutines, the clock, the
// transport and the user callbacks, and never runs user code or blocks
// while it holds its lock (see QuasarReplicator for its threads). The
// package's tests run many cores in one goroutine, in virtual time, under a
// network and faults drawn from one seed, and check every invariant after
// every step; a failing seed replays exactly
// (REPLICATION_SIM_SEED=N go test -run 'TestSim$' -v).
//
// # Lifecycle
//
// Construct a driver, Subscribe the handlers that apply frames to your
// state, then call Propose for every mutation. Close stops the driver: it is
// idempotent, fails in-flight Propose calls with ErrClosed, and returns only
// after every goroutine the driver started has exited.
//
// # Restarts
//
// A QuasarReplicator with QuasarConfig.DataDir keeps its votes, the frames
// it accepted and how far its handlers applied each namespace on disk,
// synced before anything that depends on them leaves the node, so it can be
// restarted (also after a crash, also with the whole cluster) without
// breaking any guarantee. After a crash it may feed its handlers again the
// last frames they applied: keep each namespace's last applied Seq with
// your state and skip frames at or below it. Without a DataDir a validator
// of a multi-validator cluster must not restart under the same NodeID.
//
// # What subscribers get
//
// Handlers of one replicator are called one at a time, never concurrently,
// in the order frames are accepted on that node. Propose returns
// DecisionAccept only after this node's handlers ran for the frame. A
// handler receives a context that is cancelled when the replicator closes;
// a handler that calls Propose on its own replicator must pass that context
// on (see Propose on each driver for why).
//
// # Outcomes
//
//	accepted and applied      (DecisionAccept, nil)
//	rejected                  (DecisionReject, err)    errors.Is(err, ErrRejected)
//	not decided in time       (DecisionTimeout, err)   errors.Is(err, ErrTimeout)
//	ctx done first            (DecisionTimeout, err)   errors.Is(err, ErrTimeout) && errors.Is(err, ctx.Err())
//	replicator closed         (DecisionUndecided, err) errors.Is(err, ErrClosed)
//	frame above size limit    (DecisionReject, err)    errors.Is(err, ErrRejected) && errors.Is(err, ErrTooLarge)
//
// A timeout means "outcome unknown": the frame may still be accepted later,
// and then it is applied on every node like any other accepted frame.
//
// # Sequence numbers
//
// A frame with Seq == 0 gets one assigned: assigned sequence numbers are
// strictly increasing per (OrgID, Namespace) on a node and higher than any
// sequence number that node has seen for that namespace. At most one frame
// is accepted per (OrgID, Namespace, Seq).
package replication

import (
	"context"
	"fmt"
)

// Decision is the consensus outcome for a proposed frame.
type Decision uint8

// The decisions, in the order of github.com/luxfi/consensus core/types.
const (
	DecisionUndecided Decision = iota
	DecisionAccept
	DecisionReject
	DecisionTimeout
)

// String returns the decision's lower-case name ("accept", …).
func (d Decision) String() string {
	switch d {
	case DecisionUndecided:
		return "undecided"
	case DecisionAccept:
		return "accept"
	case DecisionReject:
		return "reject"
	case DecisionTimeout:
		return "timeout"
	}
	return fmt.Sprintf("Decision(%d)", uint8(d))
}

// Handler applies an accepted frame to the local shard.
//
// Handlers of one replicator are never called concurrently with each other.
// The frame's Value must not be modified; it may be shared with other
// handlers and, on QuasarReplicator, with the replication machinery, so
// copy it if you keep it beyond the call.
type Handler func(ctx context.Context, f Frame) error

// Replicator is the interface every driver implements. Propose blocks until
// the cluster decides; Subscribe registers an applier called for every
// accepted frame including those originated locally (so a single code path
// persists, regardless of leader).
//
// Every method is safe for concurrent use by multiple goroutines.
type Replicator interface {
	// Propose ships frame through consensus and returns the decision.
	Propose(ctx context.Context, frame Frame) (Decision, error)
	// Subscribe registers a handler invoked once per accepted frame.
	Subscribe(h Handler)
	// Close releases driver resources.
	Close() error
}

// Transport carries the messages of a QuasarReplicator between validators:
// MemoryTransport in process, TCPTransport over the network, or your own.
//
// Delivery is best effort: a Transport may drop, delay, duplicate or reorder
// messages, and the quorum protocol copes. A Transport must never deliver a
// payload that a later change to the sender's buffer could alter (copy it or
// serialize it before Broadcast returns), and handlers registered with
// OnReceive must not keep the payload slice after they return unless the
// Transport documents otherwise. Implementations must be safe for concurrent
// use. Optional capabilities are separate interfaces, found by type
// assertion: SenderAware, Unicaster.
type Transport interface {
	// Broadcast sends payload to every other validator. It must return
	// promptly, without waiting for delivery: a slow or dead peer must not
	// hold it up. An error means the message was not sent (the protocol
	// repairs the loss like any other).
	Broadcast(ctx context.Context, kind string, payload []byte) error
	// OnReceive registers h for inbound messages of kind, replacing any
	// handler registered for it. h must return promptly; its error is the
	// Transport's to count or log.
	OnReceive(kind string, h func(payload []byte) error)
	// Validators returns the validator set, this node first. A
	// QuasarReplicator whose QuasarConfig.Validators is empty uses it.
	Validators() []string
	// LocalID returns this node's stable ID.
	LocalID() string
}

// SenderAware is an optional interface of a Transport that can tell who
// sent each message (an authenticated TLS peer, a hub connection). When the
// Transport given to NewQuasar implements it, the driver registers its
// handler with OnReceiveFrom instead of OnReceive and drops every vote whose
// voter is not the sender. Both MemoryTransport and TCPTransport implement
// it.
type SenderAware interface {
	OnReceiveFrom(kind string, h func(from string, payload []byte) error)
}

// Unicaster is an optional interface of a Transport that can send a
// message to one validator instead of all of them. When the Transport given
// to NewQuasar implements it, the driver sends answers to the node that
// asked (repair and catch-up) and re-sends a proposal only to the
// validators that have not voted on it; otherwise it broadcasts them, and
// the validators they are not meant for ignore them. Both MemoryTransport
// and TCPTransport implement it.
//
// SendTo follows Broadcast's contract: best effort, it returns promptly,
// and the payload may be reused once it returns. Sending to an ID that is
// not a peer of the Transport returns an error.
type Unicaster interface {
	SendTo(ctx context.Context, to, kind string, payload []byte) error
}
