package replication

import "sync/atomic"

// QuasarMetrics is a snapshot of a QuasarReplicator's counters (totals since
// NewQuasar) and gauges (current values), for a /cluster diagnostics
// endpoint. Obtain it with (*QuasarReplicator).Metrics.
type QuasarMetrics struct {
	Validators int `json:"validators"`
	Quorum     int `json:"quorum"`

	// Decisions of this node's own Propose calls (as Stats).
	Accepted uint64 `json:"accepted"`
	Rejected uint64 `json:"rejected"`
	Timeouts uint64 `json:"timeouts"`

	// Frames decided on this node, whoever proposed them.
	FramesAccepted uint64 `json:"frames_accepted"`
	FramesRejected uint64 `json:"frames_rejected"`
	// FramesApplied counts frames whose handlers ran here; ApplyErrors
	// counts handler failures among them.
	FramesApplied uint64 `json:"frames_applied"`
	ApplyErrors   uint64 `json:"apply_errors"`
	// BlocksProposed counts the blocks this node proposed, and
	// FramesProposed the frames in them: their ratio is the mean block
	// size.
	BlocksProposed uint64 `json:"blocks_proposed"`
	FramesProposed uint64 `json:"frames_proposed"`

	// VotesReceived counts checked vote records from validators (each
	// carries its voter's votes on the frames of one block). Votes dropped,
	// by reason: voter not a validator, vote type not commit/cancel (or a
	// record whose frame count is not its block's), voter is not the
	// authenticated sender, repeated vote of one voter for one frame.
	// VotesUnknownBlock counts votes for a block not held when they arrived
	// (held aside, counted if the block arrives), and votes on frames of a
	// held block that this node did not take in; VotesDropped counts vote
	// records held aside and never claimed.
	VotesReceived     uint64 `json:"votes_received"`
	VotesUnknownVoter uint64 `json:"votes_unknown_voter"`
	VotesBadType      uint64 `json:"votes_bad_type"`
	VotesWrongSender  uint64 `json:"votes_wrong_sender"`
	VotesDuplicate    uint64 `json:"votes_duplicate"`
	VotesUnknownBlock uint64 `json:"votes_unknown_block"`
	VotesDropped      uint64 `json:"votes_dropped"`

	// Repairs: proposals re-sent by their proposer, fetches for undecided
	// or unknown frames, frames served to peers, namespace syncs asked for,
	// certificates accepted.
	Resent       uint64 `json:"resent"`
	Fetches      uint64 `json:"fetches"`
	Served       uint64 `json:"served"`
	SyncRequests uint64 `json:"sync_requests"`
	Certificates uint64 `json:"certificates"`

	// Messages: sent, send errors, records dropped because more than 64
	// MiB waited to be sent, malformed received, from a sender that
	// is not a validator; proposals (and certificates, which carry the
	// frame) of frames not held, dropped because too many frames are
	// undecided or shed because the apply backlog reached MaxApplyBacklog;
	// proposals conflicting with a held frame of the same ID; bad certificates
	// (an unknown or repeated voter, fewer than a quorum, or naming this
	// validator for a frame it cancelled).
	MessagesSent         uint64 `json:"messages_sent"`
	SendErrors           uint64 `json:"send_errors"`
	OutboxDropped        uint64 `json:"outbox_dropped"`
	Malformed            uint64 `json:"malformed"`
	UnknownSender        uint64 `json:"unknown_sender"`
	ProposalsDropped     uint64 `json:"proposals_dropped"`
	ProposalsShed        uint64 `json:"proposals_shed"`
	ProposalsConflicting uint64 `json:"proposals_conflicting"`
	CertificatesBad      uint64 `json:"certificates_bad"`

	// Stale counts frames for chain positions this node already passed;
	// Expired undecided frames forgotten after RetainFor; Behind the
	// namespaces reported behind the retention window (see OnBehind);
	// DroppedUnapplied accepted frames forgotten before they could be
	// applied; Conflicts broken invariants (must stay 0); Engines the
	// consensus engines started.
	// Superseded counts undecided frames rejected here because another
	// frame was accepted at their chain position; SkippedByReset accepted
	// frames not applied because ResetNamespace covered them.
	Superseded     uint64 `json:"superseded"`
	SkippedByReset uint64 `json:"skipped_by_reset"`
	// Replayed counts frames applied again because ResetNamespace named a
	// snapshot older than what had been applied.
	Replayed uint64 `json:"replayed"`

	Stale            uint64 `json:"stale"`
	Expired          uint64 `json:"expired"`
	Behind           uint64 `json:"behind"`
	DroppedUnapplied uint64 `json:"dropped_unapplied"`
	Conflicts        uint64 `json:"conflicts"`
	Engines          uint64 `json:"engines"`

	// The data directory (QuasarConfig.DataDir): writes of its log that
	// were synced to disk (one per group of batches: see DataDir),
	// compactions of the log, and bytes written.
	LogSyncs       uint64 `json:"log_syncs"`
	LogCompactions uint64 `json:"log_compactions"`
	LogBytes       uint64 `json:"log_bytes"`
	// The archive (see DiskRetainFrames): syncs answered from it, those
	// dropped because too many waited, and its errors (after one, nothing
	// more is archived).
	DiskReads        uint64 `json:"disk_reads"`
	DiskReadsDropped uint64 `json:"disk_reads_dropped"`
	ArchiveErrors    uint64 `json:"archive_errors"`

	// Signing keys (QuasarConfig.SigningKey): attestations this node
	// signed; received attestations that do not decode, name no
	// validator or do not verify; parts (one voter's signed vote, in a
	// certificate or answering a request) that do not check (a certificate
	// with one counts in CertificatesBad too); and pairs of valid
	// attestations one validator signed for one position of its chain,
	// evidence that it equivocated (see Evidence).
	Attestations    uint64 `json:"attestations"`
	AttestationsBad uint64 `json:"attestations_bad"`
	PartsBad        uint64 `json:"parts_bad"`
	Equivocations   uint64 `json:"equivocations"`

	// Gauges: undecided frames held, accepted frames waiting to be
	// applied, the bytes of those of them queued for the handlers that no
	// Propose call of this node waits for (what MaxApplyBacklog bounds),
	// decided frames retained for repair, namespaces known.
	Pending           int `json:"pending"`
	PendingApply      int `json:"pending_apply"`
	PendingApplyBytes int `json:"pending_apply_bytes"`
	Retained          int `json:"retained"`
	Namespaces        int `json:"namespaces"`
}

type metrics struct {
	accepted, rejected, timeouts                   atomic.Uint64
	framesAccepted, framesRejected, applied        atomic.Uint64
	blocksProposed, framesProposed                 atomic.Uint64
	applyErrors                                    atomic.Uint64
	votesReceived, votesUnknownVoter, votesBadType atomic.Uint64
	votesWrongSender, votesDuplicate               atomic.Uint64
	votesUnknownBlock, votesDropped                atomic.Uint64
	resent, fetches, served, syncRequests          atomic.Uint64
	certificates                                   atomic.Uint64
	messagesSent, sendErrors, malformed            atomic.Uint64
	outboxDropped                                  atomic.Uint64
	unknownSender, proposalsDropped, proposalsShed atomic.Uint64
	proposalsConflicting, certificatesBad          atomic.Uint64
	stale, expired, behind, droppedUnapplied       atomic.Uint64
	superseded, skipped, replayed                  atomic.Uint64
	conflicts, engines                             atomic.Uint64
	logSyncs, logCompactions, logBytes             atomic.Uint64
	diskReads, diskReadsDropped, archiveErrors     atomic.Uint64
	attestations, attestationsBad                  atomic.Uint64
	partsBad, equivocations                        atomic.Uint64
}

func (m *metrics) snapshot() QuasarMetrics {
	return QuasarMetrics{
		Accepted: m.accepted.Load(), Rejected: m.rejected.Load(), Timeouts: m.timeouts.Load(),
		FramesAccepted: m.framesAccepted.Load(), FramesRejected: m.framesRejected.Load(),
		FramesApplied: m.applied.Load(), ApplyErrors: m.applyErrors.Load(),
		BlocksProposed: m.blocksProposed.Load(), FramesProposed: m.framesProposed.Load(),
		VotesReceived: m.votesReceived.Load(), VotesUnknownVoter: m.votesUnknownVoter.Load(),
		VotesBadType: m.votesBadType.Load(), VotesWrongSender: m.votesWrongSender.Load(),
		VotesDuplicate: m.votesDuplicate.Load(), VotesUnknownBlock: m.votesUnknownBlock.Load(),
		VotesDropped: m.votesDropped.Load(),
		Resent:       m.resent.Load(), Fetches: m.fetches.Load(), Served: m.served.Load(),
		SyncRequests: m.syncRequests.Load(), Certificates: m.certificates.Load(),
		MessagesSent: m.messagesSent.Load(), SendErrors: m.sendErrors.Load(), Malformed: m.malformed.Load(),
		OutboxDropped: m.outboxDropped.Load(),
		UnknownSender: m.unknownSender.Load(), ProposalsDropped: m.proposalsDropped.Load(),
		ProposalsShed:        m.proposalsShed.Load(),
		ProposalsConflicting: m.proposalsConflicting.Load(), CertificatesBad: m.certificatesBad.Load(),
		Stale: m.stale.Load(), Expired: m.expired.Load(), Behind: m.behind.Load(),
		DroppedUnapplied: m.droppedUnapplied.Load(), Conflicts: m.conflicts.Load(), Engines: m.engines.Load(),
		Superseded: m.superseded.Load(), SkippedByReset: m.skipped.Load(), Replayed: m.replayed.Load(),
		LogSyncs: m.logSyncs.Load(), LogCompactions: m.logCompactions.Load(), LogBytes: m.logBytes.Load(),
		DiskReads: m.diskReads.Load(), DiskReadsDropped: m.diskReadsDropped.Load(), ArchiveErrors: m.archiveErrors.Load(),
		Attestations: m.attestations.Load(), AttestationsBad: m.attestationsBad.Load(),
		PartsBad: m.partsBad.Load(), Equivocations: m.equivocations.Load(),
	}
}
