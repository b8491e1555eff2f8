package replication

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/luxfi/consensus"
)

// core is the Quasar protocol as a deterministic state machine. It owns no
// goroutine, reads no clock, calls no transport and runs no user code: the
// driver (QuasarReplicator) or the test simulator feeds it inputs and
// carries out its outputs.
//
// Inputs, each a method:
//
//	propose(now, call)      a Propose call of this node (its frame waits
//	                        for the next seal)
//	seal(now)               the caller is about to send: this node's frames
//	                        proposed since the last seal leave as blocks
//	step(now, from, recs)   a received message, decoded (from: the sender's
//	                        validator index when the transport knows it, else -1)
//	tick(now)               the periodic tick, with the current time
//	applied(now, e, err)    the handlers ran for a frame popApply returned
//	abandon(call)           a Propose call gave up (timeout, ctx, close)
//	reset(now, key, seq)    ResetNamespace
//	barrier(now, b)         a Barrier call (core_read.go)
//	answerDisk(now, r, fs)  frames read from the archive for a diskRead
//	restore(now, recs)      a data directory's log, once, before any other
//
// Outputs, collected until the caller takes them:
//
//   - messages to send (to every validator, or to one), in out: see outbox.
//   - with a data directory, the records that must be durable before those
//     messages leave and the batch's decisions are reported (ready.persist,
//     taken with takePersist; core_durable.go), and the syncs to answer
//     from the archive (ready.reads; the answer comes back as answerDisk).
//   - frames to apply, in order, and behind notices between them:
//     popApply; the caller runs the handlers and reports applied.
//   - the Propose calls decided (ready.decided) and those whose frame was
//     queued for apply (ready.wake), whether other frames were queued
//     (ready.kick), and the Barrier calls finished (ready.barriers):
//     takeReady.
//   - log events (ready.logs): the caller logs them, never the core.
//
// The same inputs in the same order give the same outputs: the core never
// iterates a map where the order could reach an output, and time is only
// what the inputs carry. The consensus engine it calls
// (github.com/luxfi/consensus) is deterministic too.
//
// A core is not safe for concurrent use: the driver guards it with its
// mutex. Its metrics are atomics, read without that mutex.
//
// The protocol is spread over files by concern: core_propose.go (this
// node's own proposals and the order they promise), core_vote.go (the
// voting rule, counting and deciding), core_chain.go (the chain of each
// namespace and the apply queue), core_repair.go (repair, anti-entropy and
// retention), core_block.go (blocks: packing this node's frames, taking in
// peers' blocks, votes per block, the engine), core_read.go (the read
// barrier), core_outbox.go (outgoing messages).
type core struct {
	cfg  coreConfig
	m    *metrics
	solo bool // a single validator: decides alone, sends and retains nothing

	entries   map[[idLen]byte]*entry // the frames held, by frame ID
	blocks    map[[idLen]byte]*block // the blocks holding them, by block ID
	spaces    map[spaceKey]*nsState
	spaceList []*nsState // namespaces with a head, for digests
	newSpaces []*nsState // namespaces made without a head, checked for eviction
	digestAt  int

	// The held frames, by lifecycle: undecided (ordered by next repair),
	// waiting (accepted, not yet queued for apply; ordered by doneAt),
	// retained (decided and done here: rejected, or queued for apply;
	// ordered by doneAt, kept to repair and catch up peers).
	undecided entryList
	waiting   entryList
	retained  entryList
	heldBytes int // bytes of the frames in undecided and waiting that peers proposed
	ep        *epoch

	applyQ    []*entry
	applyHead int
	applyLen  int  // entry.size of the charged frames in applyQ[applyHead:]
	shedding  bool // applyLen reached MaxApplyBacklog and has not fallen to half of it since
	nPending  int  // linked frames waiting in nsState.pending

	out outbox

	orphans map[[idLen]byte]*orphan
	orphanQ [][idLen]byte

	// probes are namespaces a digest named that this node knows nothing
	// of: when this node last asked for their frames. Bounded (maxProbes),
	// so that digests naming many namespaces cost bounded memory.
	probes  map[spaceKey]*probeState
	probeQ  []spaceKey
	probeAt int

	// frontier: the namespaces of own frames whose Propose returned
	// DecisionAccept and that no accepted later proposal names in its
	// after list yet (nsState.frontierSeq, frontierAt). At most one frame
	// per namespace: the namespace chain orders the rest. A slice, not a
	// map: every proposal copies it, so iterating it is the hot path.
	frontier []*nsState
	returned uint64 // Propose calls of this node that returned Accept

	// forgot: this validator's votes on frames it forgot (see remember).
	forgot    map[[idLen]byte]forgotVote
	forgotQ   []forgotRef
	forgotGen uint64
	forgotCap int

	// barriers: this node's read barriers not finished yet (core_read.go);
	// nonce numbers them.
	barriers []*barrier
	nonce    uint64
	// now is the time of the latest input that carried one.
	now int64

	// behindQ: behind notices for OnBehind, handed out by popApply ahead
	// of queued frames (the application may restore a snapshot that
	// covers them).
	behindQ []error

	// opening: own frames waiting to be sealed into a block (seal).
	opening []*entry
	// votesOut: this validator's votes to send with the current input's
	// messages (flushVotes). noOrder: the shared empty after list.
	votesOut []voteOut
	noOrder  *order

	// att: this validator's vote batches (nil without signing keys); atts:
	// the attestations received. partsChanged: a part or an own
	// attestation arrived since takeReady (Proof calls look again).
	att          *attester
	atts         *attCache
	partsChanged bool

	lastDigest int64
	vote       consensus.Vote // scratch for RecordVote (the engine copies it)
	pscratch   []byte         // scratch for encoding durable records
	vbits      []byte         // scratch for vote records
	idScratch  [][idLen]byte  // scratch for block IDs
	added      []*entry       // scratch for onBlock
	keep       []*entry       // scratch for makeBlock
	soloRaw    []byte         // scratch for a single validator's frame encodings
	soloBlock  block          // a single validator's block of one frame (makeBlock)
	one        [1]*entry      // scratch for a block of one frame
	restoring  bool           // restore runs: nothing is recorded

	rd, spare ready // the batch being collected, and the one handed out before
}

// coreConfig is what a core needs of QuasarConfig, with the defaults
// applied.
type coreConfig struct {
	self         int
	ids          []nodeID // validators' consensus NodeIDs, by index
	names        []string // validators' string IDs, by index
	byNodeID     map[nodeID]int
	q            int
	witness      int64 // WitnessAfter, ns
	retainFor    int64 // RetainFor, ns
	antiEntropy  int64 // AntiEntropyInterval, ns
	retainFrames int
	maxFrame     int // 0: the wire format's own limit
	maxBacklog   int // 0: none
	// unicast: the transport can send to one validator (Unicaster). When
	// false, messages to one validator join the broadcast; the records
	// that ask for an answer name who is to answer.
	unicast bool
	// durable: the driver keeps a data directory; the core reports what
	// it must record (ready.persist). archive: it also archives accepted
	// frames beyond the memory window, and answers syncs from there
	// (ready.reads).
	durable bool
	archive bool
	// keys: the validators' public keys, by index, in a cluster with
	// signing keys (attest.go); nil otherwise.
	keys []PublicKey
}

func (c *coreConfig) n() int { return len(c.ids) }

// ready is what the core produced since the caller last took it.
type ready struct {
	// decided: calls whose outcome is set (call.decided).
	decided []*call
	// wake: calls whose frame was queued for apply; the caller may apply
	// the queue up to it on the call's own goroutine.
	wake []*call
	// barriers: Barrier calls finished (barrier.done).
	barriers []*barrier
	// kick: frames were queued for apply that no call in wake covers.
	kick bool
	logs []logEvent
	// persist: records (wal.go's format) to append to the data directory's
	// log (core_durable.go); strict: some of them must be synced before
	// the batch's messages leave and its decisions are reported.
	persist []byte
	strict  bool
	arch    []archiveRef // the accepted frames in persist (see takePersist)
	// reads: syncs to answer from the archive (answerDisk).
	reads []diskRead
}

// logEvent is a log line the core asks the driver to write.
type logEvent struct {
	level slog.Level
	msg   string
	args  []any
}

// maxLogEvents bounds the log events held between two takeReady calls.
const maxLogEvents = 256

func (c *core) logf(level slog.Level, msg string, args ...any) {
	if len(c.rd.logs) < maxLogEvents {
		c.rd.logs = append(c.rd.logs, logEvent{level, msg, args})
	}
}

// takeReady returns what the core produced since the last call, and
// starts a new batch. The batch's slices stay valid until takeReady is
// called twice more: the core reuses their memory for the batch after the
// next.
func (c *core) takeReady() ready {
	c.flushVotes()
	rd := c.rd
	clear(c.spare.decided)
	clear(c.spare.wake)
	clear(c.spare.logs)
	clear(c.spare.barriers)
	clear(c.spare.arch)
	clear(c.spare.reads)
	c.rd = ready{decided: c.spare.decided[:0], wake: c.spare.wake[:0], logs: c.spare.logs[:0], barriers: c.spare.barriers[:0],
		persist: c.spare.persist[:0], arch: c.spare.arch[:0], reads: c.spare.reads[:0]}
	c.spare = rd
	return rd
}

const (
	epochBlocks    = 256       // blocks fed to one engine before a fresh one takes over (its maps stay small)
	maxBatchBytes  = 256 << 10 // a message is cut once it holds this much
	maxOutboxBytes = 64 << 20  // messages waiting to be sent; more are dropped (repair resends)
	maxOrphans     = 4096      // votes for unknown blocks held, by block
	maxUndecided   = 1 << 16   // frames of peers held undecided or waiting; more proposals are dropped
	maxHeldBytes   = 256 << 20 // bytes of those frames
	maxProbes      = 1024      // namespaces named by digests and not known here
	syncBatch      = 256       // certificates per sync answer
	digestBatch    = 256       // namespace heads per digest
)

func newCore(cfg coreConfig, m *metrics) (*core, error) {
	c := &core{
		cfg:       cfg,
		m:         m,
		solo:      cfg.n() == 1,
		entries:   make(map[[idLen]byte]*entry),
		blocks:    make(map[[idLen]byte]*block),
		spaces:    make(map[spaceKey]*nsState),
		orphans:   make(map[[idLen]byte]*orphan),
		probes:    make(map[spaceKey]*probeState),
		forgot:    make(map[[idLen]byte]forgotVote),
		forgotCap: 4 * cfg.retainFrames,
	}
	c.out.init(cfg.n(), cfg.unicast, m)
	if cfg.keys != nil {
		c.att = &attester{}
		c.atts = &attCache{byHash: make(map[[hashLen]byte]*attestation), chain: make(map[chainPos][hashLen]byte)}
	}
	if err := c.newEpoch(); err != nil {
		return nil, err
	}
	return c, nil
}

// newEngine is consensus.NewPQ with Alpha = q: the engine accepts a block
// once q votes were recorded, and the core records only checked commit
// votes, one per validator.
func (c *core) newEngine() (consensus.Engine, error) {
	cfg := consensus.DefaultConfig()
	cfg.Alpha = c.cfg.q
	cfg.K = c.cfg.n()
	cfg.MaxMessageSize = c.cfg.maxFrame
	eng := consensus.NewPQ(cfg)
	if err := eng.Start(context.Background()); err != nil {
		return nil, err
	}
	return eng, nil
}

func (c *core) newEpoch() error {
	eng, err := c.newEngine()
	if err != nil {
		return err
	}
	c.ep = &epoch{eng: eng}
	c.m.engines.Add(1)
	return nil
}

// epoch is one consensus engine. The engine keeps every block it is given,
// so after epochBlocks blocks a fresh engine takes over; an old one is
// garbage once its last undecided block is decided or forgotten.
type epoch struct {
	eng   consensus.Engine
	added int
	last  [idLen]byte
}

// space returns the namespace's state, creating it if needed. key may alias
// a received message: a new namespace keeps copies of its strings.
func (c *core) space(now int64, key spaceKey) *nsState {
	ns := c.spaces[key]
	if ns == nil {
		key = spaceKey{strings.Clone(key.org), strings.Clone(key.ns)}
		ns = &nsState{key: key, created: now}
		c.spaces[key] = ns
		c.newSpaces = append(c.newSpaces, ns)
		delete(c.probes, key) // known now: no longer a probe
	}
	return ns
}

// live returns the current state of the namespace d names, or nil if
// this node no longer knows it: d.ns, unless that namespace was evicted
// since (then it is looked up again).
func (c *core) live(d *depRef) *nsState {
	if d.ns.evicted {
		if ns := c.spaces[d.ns.key]; ns != nil {
			d.ns = ns
		} else {
			return nil
		}
	}
	return d.ns
}

// step handles the records of one received message. from is the sender's
// validator index when the transport authenticated it, else -1. The
// records' id and ids fields must hold the IDs of their blocks and frames
// (see prepareRecords).
func (c *core) step(now int64, from int, recs []record) {
	c.now = now
	for i := range recs {
		c.handle(now, &recs[i], from)
	}
	c.settleBarriers()
}

// settleBarriers finishes the barriers the last input completed.
func (c *core) settleBarriers() {
	if len(c.barriers) > 0 {
		c.checkBarriers(c.now)
	}
}

// handle acts on one record of a received message.
func (c *core) handle(now int64, rec *record, from int) {
	switch rec.typ {
	case recBlock:
		c.onBlock(now, rec, from)
	case recCertificate:
		c.onCertificate(now, rec, from)
	case recAttestation:
		c.onAttestation(rec.att)
	case recPartRequest:
		c.onPartRequest(now, rec)
	case recPart:
		c.onPart(now, rec, from)
	case recVote:
		c.onVote(now, &rec.vote, from)
	case recFetch:
		c.onFetch(now, rec, from)
	case recSync:
		c.onSync(now, rec, from)
	case recDigest:
		c.onDigest(now, rec.digest, from)
	case recBehind:
		c.onBehind(now, rec.ref, rec.who, from)
	case recRead:
		c.onRead(rec, from)
	case recReadAck:
		c.onReadAck(now, rec, from)
	}
}

// prepareRecords computes the IDs of every block (and of its frames) and
// certificate. It needs no core state: the driver runs it before it takes
// its lock. ids is scratch for the frame IDs, which the records then
// alias; it is returned, grown, to be reused once they are handled.
func prepareRecords(recs []record, ids [][idLen]byte) [][idLen]byte {
	for i := range recs {
		switch rec := &recs[i]; rec.typ {
		case recBlock:
			br := &rec.blk
			br.afterID = afterIDOf(br.after)
			start := len(ids)
			for _, p := range br.slots() {
				ids = append(ids, frameIDOf(p.raw, &br.afterID, &br.proposer))
			}
			rec.ids = ids[start:len(ids):len(ids)]
			rec.id = blockIDOf(rec.ids)
		case recCertificate:
			rec.blk.afterID = afterIDOf(rec.prop.after)
			rec.id = frameIDOf(rec.prop.raw, &rec.blk.afterID, &rec.prop.proposer)
		}
	}
	return ids
}

// tick runs the periodic jobs: repair of undecided frames, retention,
// orphan votes, anti-entropy and eviction of empty namespaces.
func (c *core) tick(now int64) {
	c.now = now
	c.repairBarriers(now)
	c.repairUndecided(now)
	c.expireWaiting(now)
	c.expireRetained(now)
	c.repairOrphans(now)
	c.sendDigest(now)
	c.evictEmpty(now)
}

// peerName names validator i for logs and errors ("unknown" for -1).
func (c *core) peerName(i int) string {
	if i < 0 {
		return "unknown"
	}
	return c.cfg.names[i]
}

// pickPeer chooses whom to ask in repair round round: hint (a validator
// likely to hold what is asked for) on even rounds, the other validators
// in turn otherwise. It never returns this node.
func (c *core) pickPeer(hint int, round uint32) int {
	n := c.cfg.n()
	if n == 1 {
		return -1 // alone: nothing is sent
	}
	if hint >= 0 && hint != c.cfg.self && round%2 == 0 {
		return hint
	}
	k := int(round/2) % (n - 1)
	if k >= c.cfg.self {
		k++
	}
	return k
}

func (c *core) String() string {
	return fmt.Sprintf("core(%s: %d namespaces, %d undecided, %d waiting, %d retained, %d to apply)",
		c.cfg.names[c.cfg.self], len(c.spaces), c.undecided.n, c.waiting.n, c.retained.n, c.pendingApply())
}
