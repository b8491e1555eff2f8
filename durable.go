package replication

import (
	"fmt"
	"log/slog"
)

// This file holds the driver's side of durability: the data directory's log
// (wal.go), written with group commit.
//
// The core reports what changed in each batch (ready.persist); settleLocked
// appends it to walBuf under mu. Before a message leaves the node or a
// Propose returns, everything appended before it that the core marked
// strict is synced (syncLocked). One goroutine at a time writes (the
// syncing flag): it takes walBuf, releases mu, writes and fsyncs, and takes
// mu again; goroutines that need the sync meanwhile wait on walCond (on
// mu) and are covered by the next write, so a burst of batches shares one
// fsync. Applied marks are not strict: they reach the disk with the next
// sync, at the latest at the next tick or at Close.
//
// The log is compacted when it outgrows compactAt: the writer replaces it
// with the core's snapshot (core.snapshot, taken under mu, so it covers
// every record in walBuf).
//
// A failed write or sync is final (walErr): a file whose fsync failed
// cannot be trusted to hold what was written. From then on nothing more is
// sent and every Propose fails.

// minCompact is the log size below which it is never compacted.
const minCompact = 64 << 20

// walState is the durable part of QuasarReplicator; mu guards it.
type walState struct {
	wal       *walFile // nil: in memory only
	walBuf    []byte   // records appended since the last write
	walSpare  []byte   // walBuf's previous buffer, reused
	walSeq    uint64   // batches appended
	walStrict uint64   // walSeq of the last batch with a strict record
	walDone   uint64   // walSeq through which the log is synced
	syncing   bool     // a goroutine writes the log
	walErr    error    // the write or sync that failed, for good
	compactAt int64
}

// openDataDir opens cfg.DataDir's log and restores the core from it.
func (r *QuasarReplicator) openDataDir() error {
	w, recs, torn, err := openWAL(r.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("replication: data directory: %w", err)
	}
	if torn > 0 {
		r.log.Warn("truncated an interrupted write at the end of the log", "file", w.path(), "bytes", torn)
	}
	if err := r.c.restore(mono(), recs); err != nil {
		w.close()
		return fmt.Errorf("replication: data directory: %s: %w: %w", w.path(), errWALCorrupt, err)
	}
	r.wal = w
	r.compactAt = max(minCompact, 4*w.size())
	if len(recs) > 0 {
		r.log.Info("restored durable state", "file", w.path(), "records", len(recs))
	}
	return nil
}

// appendLocked takes the durable records the core produced so far.
func (r *QuasarReplicator) appendLocked() {
	b, strict := r.c.takePersist()
	if len(b) == 0 {
		return
	}
	r.walBuf = append(r.walBuf, b...)
	r.walSeq++
	if strict {
		r.walStrict = r.walSeq
	}
}

// persistLocked appends the core's durable records and syncs the strict
// ones, until none is left: other goroutines may step the core while this
// one waits for the disk. On return (mu held, nothing released since the
// last check) the core's batch holds no record that is not synced, so its
// decisions and messages may leave.
func (r *QuasarReplicator) persistLocked() error {
	if r.wal == nil {
		return nil
	}
	for {
		r.appendLocked()
		if err := r.syncLocked(false); err != nil {
			return err
		}
		if len(r.c.rd.persist) == 0 {
			return nil
		}
	}
}

// syncLocked returns once every strict record appended so far is synced
// (all records, if all is set), or the log failed. mu is held on entry and
// on return; it is released while this goroutine writes or waits.
func (r *QuasarReplicator) syncLocked(all bool) error {
	if r.wal == nil {
		return nil
	}
	target := r.walStrict
	if all {
		target = r.walSeq
	}
	for r.walDone < target && r.walErr == nil {
		if r.syncing {
			r.walCond.Wait()
			continue
		}
		r.writeLocked()
	}
	return r.walErr
}

// writeLocked writes and syncs walBuf, or replaces the log with a snapshot
// when it outgrew compactAt. mu is held on entry and on return.
func (r *QuasarReplicator) writeLocked() {
	r.syncing = true
	buf, upto := r.walBuf, r.walSeq
	r.walBuf = r.walSpare[:0]
	var snap []byte
	if r.wal.size()+int64(len(buf)) > r.compactAt {
		snap = r.c.snapshot(nil)
	}
	r.mu.Unlock()
	var err error
	if snap != nil {
		err = r.wal.rewrite(snap)
	} else if len(buf) > 0 {
		err = r.wal.writeSync(buf)
	}
	r.mu.Lock()
	r.walSpare = buf[:0]
	r.syncing = false
	r.m.logSyncs.Add(1)
	switch {
	case err != nil:
		r.walErr = fmt.Errorf("%w: writing the data directory failed: %w", ErrClosed, err)
		r.walFailed.Store(true)
		r.logs = append(r.logs, logEvent{slog.LevelError, "writing the durable state failed: the node stops sending and proposing", []any{"file", r.wal.path(), "err", err}})
	case snap != nil:
		r.compactAt = max(minCompact, 4*int64(len(snap)))
		r.walDone = upto
		r.m.logCompactions.Add(1)
		r.m.logBytes.Add(uint64(len(snap)))
	default:
		r.walDone = upto
		r.m.logBytes.Add(uint64(len(buf)))
	}
	r.walCond.Broadcast()
}

// closeDataDir syncs what is left and releases the data directory. Close
// calls it once nothing else runs.
func (r *QuasarReplicator) closeDataDir() {
	if r.wal == nil {
		return
	}
	r.mu.Lock()
	r.appendLocked()
	r.syncLocked(true)
	r.unlock()
	if err := r.wal.close(); err != nil {
		r.log.Error("closing the data directory", "err", err)
	}
}

// durableTick syncs applied marks that no strict batch carried along.
func (r *QuasarReplicator) durableTick() {
	if r.wal == nil {
		return
	}
	r.appendLocked()
	if r.walDone < r.walSeq && !r.syncing {
		r.syncLocked(true)
	}
}
