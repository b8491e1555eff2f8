package replication

import (
	"cmp"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of QuasarConfig, applied to zero-valued fields.
const (
	DefaultProposeWait         = 2 * time.Second
	DefaultWitnessAfter        = 100 * time.Millisecond
	DefaultMaxFrameBytes       = 1 << 20
	DefaultRetainFrames        = 4096
	DefaultRetainFor           = time.Minute
	DefaultAntiEntropyInterval = time.Second
	DefaultMaxApplyBacklog     = 64 << 20
	DefaultDiskRetainFrames    = 1 << 20
	DefaultDiskRetainFor       = 24 * time.Hour

	// MaxValidators bounds the validator set: vote bookkeeping keeps one bit
	// per validator in a fixed-size set.
	MaxValidators = 256
)

// QuasarConfig pins the post-quantum engine to a validator set.
//
// NewQuasar copies the config, fills the defaults into the copy and
// validates it; the caller's value is never modified.
type QuasarConfig struct {
	// NodeID is this validator's stable ID. Required; it must appear in
	// Validators.
	NodeID string
	// Validators is the fixed validator set, as string IDs (host:port
	// strings or any other stable names). Empty means
	// Transport.Validators(). Duplicates are refused.
	Validators []string // host:port strings; LocalID must appear here
	// Transport carries proposals and votes between validators. Required,
	// also for a single validator (it is then never used to send).
	Transport Transport
	// ProposeWait bounds how long Propose waits for a decision before it
	// returns DecisionTimeout. Default 2s.
	ProposeWait time.Duration // default 2s
	// WitnessAfter is the repair period: every WitnessAfter, a proposer
	// re-sends its undecided proposals to the validators it has not heard
	// from (with a growing backoff, up to 32 WitnessAfter, once no Propose
	// waits for them), and a validator asks one peer for the outcome of
	// frames it holds undecided. Default 100ms.
	WitnessAfter time.Duration

	// Quorum is the number of distinct validators whose commit votes accept
	// a frame. 0 means a majority, len(Validators)/2+1. Values that are not
	// a majority (<= n/2) or above n are refused: two disjoint quorums
	// could then accept conflicting frames.
	Quorum int
	// MaxFrameBytes limits a frame's raw size: the bytes of its OrgID,
	// Namespace, Op, Key and Value (what the wire format carries, without
	// its few length prefixes). A larger frame is
	// rejected by Propose before anything is sent, and dropped when
	// received. 0 means DefaultMaxFrameBytes (1 MiB); negative means no
	// limit but the wire format's own, 16 GiB.
	MaxFrameBytes int
	// RetainFrames and RetainFor bound the window of decided frames a node
	// keeps to repair and catch up its peers: a decided frame is forgotten
	// once more than RetainFrames newer ones were decided or it was decided
	// longer than RetainFor ago, whichever comes first (an accepted frame
	// counts from when it was queued for apply). Undecided frames
	// received from peers are forgotten after RetainFor too. A node that
	// was away for longer than the window is told so via OnBehind.
	// Defaults 4096 frames and 1 minute.
	RetainFrames int
	RetainFor    time.Duration
	// AntiEntropyInterval is how often a node advertises the heads of its
	// namespaces, so that peers that missed frames ask for them. Default 1s.
	AntiEntropyInterval time.Duration
	// MaxApplyBacklog bounds, in bytes of their raw size (see
	// MaxFrameBytes), the accepted
	// frames that wait on this node for its handlers. A node whose handlers
	// fall behind cannot slow down a quorum of others, so instead of
	// queueing without bound it stops taking in proposals and certificates
	// of frames it does not hold yet once the backlog reaches the bound,
	// until it has fallen to half of it (counted in
	// Metrics().ProposalsShed): it does not vote on them and asks for no
	// missing frames meanwhile, as if it were partitioned away. Then it
	// obtains the frames accepted meanwhile from its peers (anti-entropy),
	// or, if they no longer retain them, is told so via OnBehind. The bound
	// is soft: frames it already holds are still accepted and queued (those
	// undecided when the bound was reached, those waiting for a missing
	// frame before them or for the frames their proposer ordered before
	// them, and frames applied again after ResetNamespace). A frame of its
	// own does not count while its Propose call waits for it (that call
	// holds back its writer by itself), only once the call gave up. 0 means
	// DefaultMaxApplyBacklog (64 MiB); negative means no bound.
	MaxApplyBacklog int
	// OnBehind, when set, is called (on the apply goroutine, between
	// frames) when a peer reports that this node asked for frames it no
	// longer retains: the error wraps ErrBehind and is a *BehindError
	// naming the namespace. The node cannot catch up on that namespace by
	// replication; restore a snapshot and call ResetNamespace. Every
	// occurrence is also counted in Metrics().Behind and logged. Like a
	// handler, OnBehind holds up applying while it runs: it must not call
	// Close, nor wait for a Propose of this replicator (whose frame cannot
	// be applied before OnBehind returns; such a Propose times out).
	OnBehind func(err error)
	// Logger receives the driver's logs. Nil means silent.
	Logger *slog.Logger
	// Observer, when set, receives the latency of every Propose (by
	// outcome) and of every frame's handlers. Nil means none.
	Observer Observer
	// DataDir, when set, is the directory (created if missing) where this
	// validator keeps its durable state: the votes it cast, the frames it
	// accepted within the retention window, its undecided proposals, and
	// how far its handlers applied each namespace. Every change is synced
	// before a message or a Propose outcome that depends on it leaves the
	// node, so a validator restarted on its DataDir never contradicts what
	// it told its peers, continues its namespaces where they were, and
	// re-feeds its handlers only frames they had not returned from (none
	// after a graceful Close; after a crash, possibly the last few: handlers
	// can recognise them by Seq). The directory is locked: a second
	// replicator that opens it fails. NewQuasar fails, naming the file, if
	// the state is corrupt; a write interrupted by a crash is truncated.
	//
	// Empty keeps the state in memory only. A validator of a cluster of
	// more than one must then never restart under the same NodeID with its
	// state lost: it could vote for a second frame in a position where it
	// had voted for another, and let two frames be accepted there.
	DataDir string
	// DiskRetainFrames and DiskRetainFor bound the archive: with a DataDir
	// (and more than one validator), every frame accepted is also kept on
	// disk, in DataDir/archive, far longer than in memory (RetainFrames,
	// RetainFor), so that a peer that was down for hours catches up from
	// this node without restoring a snapshot. Whole archive files are
	// deleted once they hold only frames beyond DiskRetainFrames newer ones
	// or older than DiskRetainFor. Defaults 1,048,576 frames and 24 hours;
	// negative DiskRetainFrames keeps no archive (peers then catch up only
	// within the memory window). The archive's index costs about 40 bytes
	// of memory per archived frame.
	DiskRetainFrames int
	DiskRetainFor    time.Duration

	// SigningKey and ValidatorKeys make votes transferable: with them, each
	// validator signs attestations of the votes it casts (in batches, off
	// the hot path), certificates relayed for repair and catch-up count
	// only if their voters' signatures check, and Proof returns a proof of
	// acceptance that VerifyProof checks offline. Both or neither must be
	// set, on every validator of the cluster. ValidatorKeys holds the
	// public key of every validator (and of no one else); this node's
	// entry must be SigningKey.Public(). See the package documentation,
	// "Signed votes".
	SigningKey    *SigningKey
	ValidatorKeys map[string]PublicKey
}

// withDefaults returns a copy of c with every zero field defaulted.
func (c QuasarConfig) withDefaults() QuasarConfig {
	if len(c.Validators) == 0 && c.Transport != nil {
		c.Validators = c.Transport.Validators()
	}
	c.Validators = append([]string(nil), c.Validators...)
	c.ProposeWait = cmp.Or(c.ProposeWait, DefaultProposeWait)
	c.WitnessAfter = cmp.Or(c.WitnessAfter, DefaultWitnessAfter)
	c.Quorum = cmp.Or(c.Quorum, len(c.Validators)/2+1)
	switch {
	case c.MaxFrameBytes == 0:
		c.MaxFrameBytes = DefaultMaxFrameBytes
	case c.MaxFrameBytes < 0:
		c.MaxFrameBytes = 0 // no limit (the driver checks only a positive limit)
	}
	c.RetainFrames = cmp.Or(c.RetainFrames, DefaultRetainFrames)
	c.RetainFor = cmp.Or(c.RetainFor, DefaultRetainFor)
	c.AntiEntropyInterval = cmp.Or(c.AntiEntropyInterval, DefaultAntiEntropyInterval)
	c.DiskRetainFrames = cmp.Or(c.DiskRetainFrames, DefaultDiskRetainFrames)
	c.DiskRetainFor = cmp.Or(c.DiskRetainFor, DefaultDiskRetainFor)
	switch {
	case c.MaxApplyBacklog == 0:
		c.MaxApplyBacklog = DefaultMaxApplyBacklog
	case c.MaxApplyBacklog < 0:
		c.MaxApplyBacklog = 0 // no bound (the driver checks only a positive one)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports whether the config, with its defaults applied, can start
// a QuasarReplicator. Every error wraps ErrInvalidConfig.
func (c QuasarConfig) Validate() error {
	return c.withDefaults().validate()
}

func (c QuasarConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	n := len(c.Validators)
	switch {
	case c.NodeID == "":
		return bad("empty NodeID")
	case c.Transport == nil:
		return bad("nil Transport")
	case n == 0:
		return bad("no validators")
	case n > MaxValidators:
		return bad("%d validators, at most %d", n, MaxValidators)
	case c.Quorum <= n/2 || c.Quorum > n:
		return bad("Quorum %d with %d validators: must be in [%d, %d]", c.Quorum, n, n/2+1, n)
	case c.ProposeWait < 0 || c.WitnessAfter < 0 || c.RetainFor < 0 || c.AntiEntropyInterval < 0 || c.DiskRetainFor < 0:
		return bad("negative duration (ProposeWait %s, WitnessAfter %s, RetainFor %s, AntiEntropyInterval %s, DiskRetainFor %s)",
			c.ProposeWait, c.WitnessAfter, c.RetainFor, c.AntiEntropyInterval, c.DiskRetainFor)
	case c.RetainFrames < 0:
		return bad("negative RetainFrames %d", c.RetainFrames)
	}
	seen := make(map[string]bool, n)
	self := false
	for _, v := range c.Validators {
		if v == "" {
			return bad("empty validator ID")
		}
		if seen[v] {
			return bad("duplicate validator %q", v)
		}
		seen[v] = true
		self = self || v == c.NodeID
	}
	if !self {
		return bad("NodeID %q is not among Validators %q", c.NodeID, c.Validators)
	}
	return c.validateKeys(seen)
}

// validateKeys checks SigningKey and ValidatorKeys against the validators
// (validators: the set of their IDs).
func (c QuasarConfig) validateKeys(validators map[string]bool) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	switch {
	case c.SigningKey == nil && c.ValidatorKeys == nil:
		return nil
	case c.SigningKey == nil:
		return bad("ValidatorKeys without a SigningKey")
	case c.ValidatorKeys == nil:
		return bad("SigningKey without ValidatorKeys")
	}
	for _, v := range c.Validators {
		k, ok := c.ValidatorKeys[v]
		if !ok || k.IsZero() {
			return bad("ValidatorKeys has no key for validator %q", v)
		}
	}
	for v := range c.ValidatorKeys {
		if !validators[v] {
			return bad("ValidatorKeys names %q, which is not a validator", v)
		}
	}
	if !c.ValidatorKeys[c.NodeID].Equal(c.SigningKey.Public()) {
		return bad("SigningKey's public key %s is not ValidatorKeys[%q] %s", c.SigningKey.Public(), c.NodeID, c.ValidatorKeys[c.NodeID])
	}
	return nil
}

// BehindError reports that this node asked a peer for the frames of a
// namespace after Seq From, and the peer no longer retains them. It wraps
// ErrBehind.
type BehindError struct {
	OrgID, Namespace string
	From             uint64 // this node's head of the namespace
	Peer             string // the validator that reported it
}

func (e *BehindError) Error() string {
	return fmt.Sprintf("replication: namespace %s/%s: frames after seq %d are no longer retained by %s: restore a snapshot",
		e.OrgID, e.Namespace, e.From, e.Peer)
}

// Unwrap makes errors.Is(err, ErrBehind) hold.
func (e *BehindError) Unwrap() error { return ErrBehind }
