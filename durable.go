package replication

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"
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
//
// The archive (archive.go, DiskRetainFrames) keeps every accepted frame
// for far longer than memory does. The writer appends the batch's accepted
// frames to it after each write of the log, without a sync of its own: the
// log holds them too until it is compacted, and the writer syncs the
// archive before it compacts. A peer's sync for frames this node no longer
// retains in memory becomes a diskRead, which diskLoop reads from the
// archive (without mu) and hands back to the core (answerDisk). An archive
// error is logged and counted, and archiving stops; the protocol goes on
// (peers that fell behind further than memory then get a behind notice).

// minCompact is the log size below which it is never compacted (a
// variable: tests lower it).
var minCompact int64 = 64 << 20

// walState is the durable part of QuasarReplicator. mu guards it, except
// arch and diskReads, set once at start, archTrim, which only the writer
// (the goroutine that set syncing) and Close touch, and the atomics.
type walState struct {
	wal       *walFile    // nil: in memory only
	walBuf    []byte      // records appended since the last write
	walSpare  []byte      // walBuf's previous buffer, reused
	walSeq    uint64      // batches appended
	walStrict uint64      // walSeq of the last batch with a strict record
	walDone   uint64      // walSeq through which the log is synced
	syncing   bool        // a goroutine writes the log
	walErr    error       // the write or sync that failed, for good
	walFailed atomic.Bool // walErr is set: read by Propose without mu
	compactAt int64

	arch        *frameArchive   // nil: no archive
	archFailed  atomic.Bool     // an archive operation failed: archiving stopped
	archPending []archiveRecord // accepted frames to archive with the next write
	archTrim    time.Time       // when the archive was last trimmed (by the writer)
	diskReads   chan diskRead   // syncs to answer from the archive (diskLoop)
}

// archiveTrimEvery is how often the writer trims the archive.
const archiveTrimEvery = time.Second

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
	if r.c.cfg.archive {
		if err := r.openArchive(recs); err != nil {
			w.close()
			return fmt.Errorf("replication: data directory: %w", err)
		}
	}
	return nil
}

// openArchive opens DataDir/archive and archives the log's accepted frames
// it lacks (those the writer had not archived when the node stopped).
func (r *QuasarReplicator) openArchive(recs []walRecord) error {
	a, err := openArchive(filepath.Join(r.cfg.DataDir, "archive"))
	if err != nil {
		return err
	}
	var missing []archiveRecord
	for _, rec := range recs {
		if rec.typ != durAccepted {
			continue
		}
		fr, err := decodeAccepted(rec.data)
		if err != nil {
			continue // restore checked every record already
		}
		key := spaceKey{fr.p.frame.OrgID, fr.p.frame.Namespace}
		if a.has(key, fr.p.prev, fr.p.frame.Seq) {
			continue
		}
		missing = append(missing, archiveRecord{key: key, prev: fr.p.prev, seq: fr.p.frame.Seq, data: rec.data})
	}
	if len(missing) > 0 {
		if err := errors.Join(a.append(missing), a.sync()); err != nil {
			a.close()
			return err
		}
	}
	r.arch = a
	r.diskReads = make(chan diskRead, maxDiskReads)
	return nil
}

// appendLocked takes the durable records the core produced so far.
func (r *QuasarReplicator) appendLocked() {
	b, strict, arch := r.c.takePersist()
	if len(b) == 0 {
		return
	}
	if r.arch != nil {
		for _, a := range arch {
			r.archPending = append(r.archPending, archiveRecord{key: a.key, prev: a.prev, seq: a.seq, data: bytes.Clone(b[a.lo:a.hi])})
		}
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
	arch := r.archPending
	r.archPending = nil
	var snap []byte
	if r.wal.size()+int64(len(buf)) > r.compactAt {
		snap = r.c.snapshot(nil)
	}
	r.mu.Unlock()
	var err error
	if snap != nil {
		// The archive first: the new log no longer holds every frame.
		r.archive(arch, true)
		if err = r.wal.rewrite(snap); err != nil && r.wal.usable() == nil {
			// The old log is still in use, whole: append to it, and try to
			// compact again once it grew as much again.
			r.log.Error("compacting the log failed; it keeps growing until a later compaction succeeds", "file", r.wal.path(), "err", err)
			snap = nil
			err = r.wal.writeSync(buf)
		}
	} else if len(buf) > 0 {
		err = r.wal.writeSync(buf)
		r.archive(arch, false)
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
		if r.wal.size() > r.compactAt {
			r.compactAt = 2 * r.wal.size() // a compaction failed: not again at once
		}
	}
	r.walCond.Broadcast()
}

// archive appends accepted frames to the archive (and syncs it, with
// sync), and trims it now and then. It runs on the writer, without mu. An
// error stops archiving for good.
func (r *QuasarReplicator) archive(recs []archiveRecord, sync bool) {
	a := r.arch
	if a == nil || r.archFailed.Load() {
		return
	}
	var err error
	if len(recs) > 0 {
		err = a.append(recs)
	}
	if err == nil && sync {
		err = a.sync()
	}
	if now := time.Now(); err == nil && now.Sub(r.archTrim) >= archiveTrimEvery {
		r.archTrim = now
		err = a.trim(r.cfg.DiskRetainFrames, r.cfg.DiskRetainFor, now)
	}
	if err != nil {
		r.archFailed.Store(true)
		r.m.archiveErrors.Add(1)
		r.log.Error("archiving accepted frames failed: archiving stops; peers that fell behind further than the memory window will be told so", "err", err)
	}
}

// diskLoop answers syncs from the archive, one at a time.
func (r *QuasarReplicator) diskLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.closing:
			return
		case dr := <-r.diskReads:
			var payloads [][]byte
			if !r.archFailed.Load() {
				var err error
				if payloads, err = r.arch.read(dr.key, dr.from, syncBatch); err != nil {
					r.m.archiveErrors.Add(1)
					r.log.Error("reading the archive failed", "err", err)
				}
			}
			r.m.diskReads.Add(1)
			r.mu.Lock()
			r.c.answerDisk(mono(), dr, payloads)
			r.settleLocked(nil)
			r.unlock()
		}
	}
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
	if a := r.arch; a != nil {
		r.archive(nil, true)
		if err := a.close(); err != nil {
			r.log.Error("closing the archive", "err", err)
		}
	}
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
