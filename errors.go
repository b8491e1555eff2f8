package replication

import "errors"

// ErrRejected and ErrTimeout normalize Replicator failure modes.
var (
	ErrRejected = errors.New("replication: frame rejected by quorum")
	ErrTimeout  = errors.New("replication: consensus timeout")
)

// Further sentinels. Every failure of the package's own making wraps one
// of them; a failure that comes from elsewhere (a ctx ending, a listener
// that cannot bind) wraps that error instead. Match with errors.Is, never by
// comparing strings.
var (
	// ErrClosed is returned by Propose (with DecisionUndecided) once the
	// replicator or transport is closed, including for calls that were in
	// flight when Close began.
	ErrClosed = errors.New("replication: closed")

	// ErrApply wraps a handler's error when the cluster accepted a frame
	// but a local handler failed to apply it. The decision stands
	// (DecisionAccept); the failure is counted and logged.
	ErrApply = errors.New("replication: handler failed to apply accepted frame")

	// ErrTooLarge marks a frame above the configured size limit. It is
	// always returned together with ErrRejected; nothing was sent.
	ErrTooLarge = errors.New("replication: frame too large")

	// ErrInvalidConfig wraps every configuration error returned by the
	// constructors and Validate methods.
	ErrInvalidConfig = errors.New("replication: invalid config")

	// ErrBehind reports that this node missed frames that no peer retains
	// any more: it cannot catch up by replication and must restore a
	// snapshot. See QuasarConfig.OnBehind and BehindError.
	ErrBehind = errors.New("replication: fell behind the retention window")

	// ErrMalformed marks a message that failed to decode. Decoders return
	// it; the driver and transports count and drop such messages.
	ErrMalformed = errors.New("replication: malformed message")
)
