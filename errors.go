package replication

import (
	"errors"
	"fmt"
)

// ErrRejected and ErrTimeout normalize Replicator failure modes.
// errors.Is(err, ErrRejected) holds for every rejection: a quorum's (the
// message then names the votes), and a frame a replicator refused by
// itself, without a vote (too large, a taken Seq, a LocalReplicator
// handler's failure): the message then says what happened.
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

	// ErrNoProof is returned by Proof when it cannot make a proof: no
	// signing keys, or the frame is not accepted on this node or no
	// longer retained.
	ErrNoProof = errors.New("replication: no proof")

	// ErrInvalidProof wraps every error of VerifyProof.
	ErrInvalidProof = errors.New("replication: invalid proof")
)

// refusal is an error that matches ErrRejected (errors.Is) without a
// quorum having voted: a frame this node refuses itself (too large, a
// taken slot, a handler of LocalReplicator that failed). Its message says
// what happened, not "rejected by quorum"; cause, if not nil, is matched
// too.
type refusal struct {
	msg   string
	cause error
}

func (e *refusal) Error() string        { return e.msg }
func (e *refusal) Is(target error) bool { return target == ErrRejected }
func (e *refusal) Unwrap() error        { return e.cause }

// refused returns a refusal whose message is format's, and whose cause is
// the error of a %w verb in it, if any.
func refused(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &refusal{msg: err.Error(), cause: errors.Unwrap(err)}
}
