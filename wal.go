package replication

// This file implements the log that a data directory keeps: an
// append-only file of checksummed records, which survives a crash in the
// middle of a write and refuses to start from a file that was damaged
// otherwise.
//
// # File format
//
// The log is the file wal.log in its data directory. It starts with the
// 8-byte magic "RPLWAL2\n" (format 2), followed by zero or more records. A record is
// a 12-byte header followed by its payload:
//
//	offset  size  field
//	0       4     L: the payload's length, a little-endian uint32
//	4       4     the CRC-32C (Castagnoli) of the payload, little-endian
//	8       4     the CRC-32C of header bytes 0 to 7, little-endian
//	12      L     the payload: the record's type byte, then its data
//
// Since the payload holds at least the type byte, L is at least 1; it is
// at most maxWALRecord. The header checks itself, so a damaged length is
// detected before it is used to find the next record.
//
// # Recovery
//
// A crash while a record is being appended can leave a torn tail: part of
// the record, or, on file systems that extend a file before they write
// its data, a run of zero bytes. A torn tail never held an acknowledged
// record (every write is synced before it is acknowledged), so it is
// removed on open. Any other damage is corruption: it may have destroyed
// acknowledged records, so it is reported and never repaired silently.
//
// The file is decoded from the start. An empty file, or a strict prefix of
// the magic, is a creation that a crash interrupted: it is torn, and the
// magic is written again. Any other file that does not start with the
// magic is corrupt. Then, at the start of each record:
//
//  1. Fewer than 12 bytes remain: they are a torn tail.
//  2. All remaining bytes are zero: they are a torn tail.
//  3. The header's own check fails: the file is corrupt. A damaged
//     length must not be taken for a torn write, which would drop every
//     later record.
//  4. The header is valid, but L is 0 or above maxWALRecord: the file is
//     corrupt.
//  5. The header is valid, but the payload extends past the end of the
//     file: the record from its header on is a torn tail.
//  6. The payload's check fails: the file is corrupt.
//
// Cutting a valid log at any offset thus leaves a file from which exactly
// the records before the cut are recovered. Changing any single byte of a
// valid log that has no torn tail is detected as corruption. CRC-32C
// detects every error confined to 32 consecutive bits. Nor can such a
// change make a record look like a zero-filled tail: that would take a
// record that is zero in all bytes but one, so with a length field of one
// nonzero byte, zero data, and two checksums of zero, and no length up to
// maxWALRecord gives such checksums.
//
// Rewriting the log (walFile.rewrite) writes a new file beside it, syncs
// it, and renames it over the log, so that a crash leaves either the old
// log or the new one, each whole. A crash before the rename leaves the
// temporary file behind; opening the log removes it.
//
// # Locking
//
// A walFile holds a lock on its directory (the file LOCK in it) for as
// long as it is open, so that two processes, or two walFiles in one
// process, never append to one log. On systems with flock(2) the lock is
// an advisory flock lock, which the system releases when its holder
// exits, even by a crash; elsewhere, no lock is taken (see lockDir).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
)

const (
	// walMagic starts every log file. Format 2 names frames by the IDs of
	// wire format 4 (wire.go); a format 1 log (walMagicV1) names them by
	// IDs this version no longer derives, so it is refused, not misread.
	walMagic   = "RPLWAL2\n"
	walMagicV1 = "RPLWAL1\n"

	// walHeaderSize is the size of a record's header.
	walHeaderSize = 12

	// maxWALRecord is the largest payload (type byte and data) of a
	// record, in bytes.
	maxWALRecord = 64 << 20

	// walFileName and walTempName are the names of the log and of the
	// temporary file that rewrite renames over it, in the data directory.
	walFileName = "wal.log"
	walTempName = "wal.log.tmp"
)

// walCRC is the CRC-32C (Castagnoli) table of the log's checksums.
var walCRC = crc32.MakeTable(crc32.Castagnoli)

var (
	// errWALCorrupt marks a log that is damaged other than by an
	// interrupted write. Such a log must be restored or inspected by hand:
	// it is never repaired automatically.
	errWALCorrupt = errors.New("replication: corrupt log")

	// errDirLocked marks a data directory whose log another walFile, in
	// this process or in another one, holds open.
	errDirLocked = errors.New("replication: data directory locked")
)

// walCorruptError reports where a log is corrupt and why. It matches
// errWALCorrupt (errors.Is).
type walCorruptError struct {
	path   string // the log file's path; empty if not known
	offset int    // the offset of the damaged magic or record
	reason string
}

func (e *walCorruptError) Error() string {
	if e.path == "" {
		return fmt.Sprintf("%v: offset %d: %s", errWALCorrupt, e.offset, e.reason)
	}
	return fmt.Sprintf("%v %s: offset %d: %s", errWALCorrupt, e.path, e.offset, e.reason)
}

func (e *walCorruptError) Unwrap() error { return errWALCorrupt }

// walRecord is one record of a log: a type the caller defines and its payload.
type walRecord struct {
	typ  byte
	data []byte
}

// appendWALRecord appends the framed, checksummed encoding of one record to dst.
// It allocates only to grow dst.
//
// Callers must keep len(data) below maxWALRecord. A larger record is
// encoded with a length that writeSync and rewrite refuse, since it could
// never be read back.
func appendWALRecord(dst []byte, typ byte, data []byte) []byte {
	n := 1 + len(data)
	length := uint32(math.MaxUint32)
	if uint64(n) <= math.MaxUint32 {
		length = uint32(n)
	}
	start := len(dst)
	dst = slices.Grow(dst, walHeaderSize+n)
	dst = dst[:start+walHeaderSize]
	dst = append(dst, typ)
	dst = append(dst, data...)
	h := dst[start : start+walHeaderSize]
	binary.LittleEndian.PutUint32(h[0:4], length)
	binary.LittleEndian.PutUint32(h[4:8], crc32.Checksum(dst[start+walHeaderSize:], walCRC))
	binary.LittleEndian.PutUint32(h[8:12], crc32.Checksum(h[:8], walCRC))
	return dst
}

// parseWALHeader returns the payload length and payload checksum that the
// header at the start of b (at least walHeaderSize bytes) holds, and
// whether the header's own check passes.
func parseWALHeader(b []byte) (length, sum uint32, ok bool) {
	h := b[:walHeaderSize]
	length = binary.LittleEndian.Uint32(h[0:4])
	sum = binary.LittleEndian.Uint32(h[4:8])
	ok = crc32.Checksum(h[:8], walCRC) == binary.LittleEndian.Uint32(h[8:12])
	return length, sum, ok
}

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// decodeWAL decodes a whole log file's contents. It returns the records (data may
// alias b), and valid: the length of the prefix that holds them. valid < len(b) with
// a nil error means the tail from valid on is torn (an interrupted write) and may
// be truncated. A non-nil error means corruption that must not be repaired
// silently; it wraps errWALCorrupt and names the byte offset.
//
// A valid of 0 means that not even the magic is whole: b is empty or a
// strict prefix of the magic. Otherwise valid is at least the magic's
// length. On error, recs is nil and valid is 0. decodeWAL allocates
// nothing but the records slice (and, on error, the error).
func decodeWAL(b []byte) (recs []walRecord, valid int, err error) {
	if len(b) < len(walMagic) {
		if string(b) != walMagic[:len(b)] {
			return nil, 0, &walCorruptError{offset: 0, reason: "bad magic"}
		}
		return nil, 0, nil
	}
	if string(b[:len(walMagic)]) != walMagic {
		if string(b[:len(walMagicV1)]) == walMagicV1 {
			return nil, 0, &walCorruptError{offset: 0, reason: "written by an earlier version of this package (log format 1); this version reads format 2 and cannot convert it"}
		}
		return nil, 0, &walCorruptError{offset: 0, reason: "bad magic"}
	}
	off := len(walMagic)
	for off < len(b) {
		rest := b[off:]
		if len(rest) < walHeaderSize {
			break // rule 1: a torn header
		}
		length, sum, ok := parseWALHeader(rest)
		if !ok {
			// An all-zero header never passes its check (the CRC-32C of
			// eight zero bytes is not zero), so testing for a zero-filled
			// tail here, rather than at every record, gives the same
			// result in linear time.
			if allZero(rest) {
				break // rule 2: a file extended but not written
			}
			return nil, 0, &walCorruptError{offset: off, reason: "record header checksum mismatch"}
		}
		if length == 0 || length > maxWALRecord {
			return nil, 0, &walCorruptError{offset: off, reason: fmt.Sprintf("record length %d out of range [1, %d]", length, maxWALRecord)}
		}
		if int(length) > len(rest)-walHeaderSize {
			break // rule 5: a torn payload
		}
		end := walHeaderSize + int(length)
		payload := rest[walHeaderSize:end:end]
		if crc32.Checksum(payload, walCRC) != sum {
			return nil, 0, &walCorruptError{offset: off, reason: "record payload checksum mismatch"}
		}
		recs = append(recs, walRecord{typ: payload[0], data: payload[1:]})
		off += end
	}
	return recs, off, nil
}

// checkWALBatch reports whether b is a sequence of whole records as
// appendWALRecord makes them, judged by their headers. It guards the log
// against a write that would make it unreadable.
func checkWALBatch(b []byte) error {
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < walHeaderSize {
			return fmt.Errorf("offset %d: %d bytes left, short of a record header", off, len(rest))
		}
		length, _, ok := parseWALHeader(rest)
		switch {
		case !ok:
			return fmt.Errorf("offset %d: record header checksum mismatch", off)
		case length == 0 || length > maxWALRecord:
			return fmt.Errorf("offset %d: record length %d out of range [1, %d]", off, length, maxWALRecord)
		case int(length) > len(rest)-walHeaderSize:
			return fmt.Errorf("offset %d: record of %d bytes extends past the end", off, length)
		}
		off += walHeaderSize + int(length)
	}
	return nil
}

// walFile is the log of one data directory.
//
// Its methods must not be called concurrently with each other, except
// size and path, which may be called at any time.
type walFile struct {
	dir    string
	name   string // the log file's path
	f      *os.File
	unlock func() error // releases the directory lock
	n      atomic.Int64 // the log's length
	err    error        // sticky: set once a write or sync failed
	closed bool
}

// openWAL locks dir (creating it, mode 0o700, if missing), opens or creates the log file
// in it (name it "wal.log"), decodes it, truncates a torn tail (and fsyncs), and returns
// the records. A directory locked by another walFile (in this or another process) fails
// with an error wrapping errDirLocked that names the directory. Corruption fails with an
// error wrapping errWALCorrupt that names the file path and the offset; the lock is
// released on every error path. torn reports how many bytes were truncated (0: none).
//
// The records' data share one buffer, which belongs to the caller. A
// leftover temporary file of an interrupted rewrite is removed.
func openWAL(dir string) (w *walFile, recs []walRecord, torn int64, err error) {
	created := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("replication: create data directory: %w", err)
	}
	if created {
		// Make the new directory's entry durable, lest a crash lose the
		// log along with the directory.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: create data directory %s: %w", dir, err)
		}
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, nil, 0, err
	}
	wf := &walFile{dir: dir, name: filepath.Join(dir, walFileName), unlock: unlock}
	defer func() {
		if err != nil {
			wf.close()
		}
	}()

	if err := os.Remove(filepath.Join(dir, walTempName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, 0, fmt.Errorf("replication: remove leftover temporary log: %w", err)
	}
	wf.f, err = os.OpenFile(wf.name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("replication: open log: %w", err)
	}
	fi, err := wf.f.Stat()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("replication: open log: %w", err)
	}
	size := fi.Size()
	if int64(int(size)) != size {
		return nil, nil, 0, fmt.Errorf("replication: open log %s: %d bytes do not fit in memory", wf.name, size)
	}
	buf := make([]byte, size)
	if _, err := wf.f.ReadAt(buf, 0); err != nil {
		return nil, nil, 0, fmt.Errorf("replication: read log: %w", err)
	}
	recs, valid, err := decodeWAL(buf)
	if err != nil {
		var ce *walCorruptError
		if errors.As(err, &ce) {
			ce.path = wf.name
		}
		return nil, nil, 0, err
	}
	torn = size - int64(valid)
	switch {
	case valid == 0:
		// The file is new, or its creation was interrupted: write the
		// magic, and make the file's entry in the directory durable.
		if err := wf.f.Truncate(0); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: truncate torn log: %w", err)
		}
		if _, err := wf.f.WriteAt([]byte(walMagic), 0); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: initialize log: %w", err)
		}
		if err := wf.f.Sync(); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: initialize log: %w", err)
		}
		if err := syncDir(dir); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: initialize log %s: %w", wf.name, err)
		}
		wf.n.Store(int64(len(walMagic)))
	case torn > 0:
		if err := wf.f.Truncate(int64(valid)); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: truncate torn log: %w", err)
		}
		if err := wf.f.Sync(); err != nil {
			return nil, nil, 0, fmt.Errorf("replication: truncate torn log: %w", err)
		}
		wf.n.Store(int64(valid))
	default:
		wf.n.Store(int64(valid))
	}
	return wf, recs, torn, nil
}

// usable returns the error that a write must fail with, if any.
func (w *walFile) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("%w: log %s", ErrClosed, w.name)
	}
	return nil
}

// writeSync appends b (one or more records made by appendWALRecord) to the log and
// fsyncs it. Callers never call it concurrently with itself or with rewrite.
//
// The records of b are not written atomically: a crash during writeSync
// may leave any prefix of them in the log, followed by a torn tail.
//
// A b that is not a sequence of whole records is refused, and nothing is
// written. If the write or the sync fails, the log's state on disk is
// unknown (Linux, for one, may drop the unsynced data and report the
// failure once only), so the error is sticky: this and every later
// writeSync and rewrite return it, and the log must be reopened, which
// recovers what reached the disk.
func (w *walFile) writeSync(b []byte) error {
	if err := w.usable(); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	if err := checkWALBatch(b); err != nil {
		return fmt.Errorf("replication: log %s: refusing malformed records: %w", w.name, err)
	}
	n := w.n.Load()
	if _, err := w.f.WriteAt(b, n); err != nil {
		w.err = fmt.Errorf("replication: write log: %w", err)
		return w.err
	}
	if err := w.f.Sync(); err != nil {
		w.err = fmt.Errorf("replication: sync log: %w", err)
		return w.err
	}
	w.n.Store(n + int64(len(b)))
	return nil
}

// rewrite replaces the whole log with b (a complete set of records): it writes a
// temporary file in the same directory, fsyncs it, renames it over the log, fsyncs the
// directory, and continues appending to the new file. A crash at any point leaves
// either the old log or the new one, whole.
//
// b holds records only: rewrite writes the magic itself. A b that is not a
// sequence of whole records is refused. If rewrite fails before the
// rename, the old log stays in use and the error is not sticky; a failure
// to sync the directory after it is sticky, as for writeSync.
//
// On Windows, where a file that is open cannot be renamed over, the
// rename fails: rewrite returns an error and the old log stays in use.
func (w *walFile) rewrite(b []byte) error {
	if err := w.usable(); err != nil {
		return err
	}
	if err := checkWALBatch(b); err != nil {
		return fmt.Errorf("replication: log %s: refusing malformed records: %w", w.name, err)
	}
	tmp := filepath.Join(w.dir, walTempName)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replication: rewrite log: %w", err)
	}
	discard := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("replication: rewrite log: %w", err)
	}
	if _, err := f.WriteAt([]byte(walMagic), 0); err != nil {
		return discard(err)
	}
	if _, err := f.WriteAt(b, int64(len(walMagic))); err != nil {
		return discard(err)
	}
	if err := f.Sync(); err != nil {
		return discard(err)
	}
	if err := os.Rename(tmp, w.name); err != nil {
		return discard(err)
	}
	// From here on the new file is the log, whatever happens.
	old := w.f
	w.f = f
	w.n.Store(int64(len(walMagic) + len(b)))
	old.Close() // its contents are superseded; a failure to close loses nothing
	if err := syncDir(w.dir); err != nil {
		w.err = fmt.Errorf("replication: rewrite log %s: %w", w.name, err)
		return w.err
	}
	return nil
}

// size is the log's current length in bytes.
//
// After a failed writeSync it is the length before that write.
func (w *walFile) size() int64 { return w.n.Load() }

// path is the log file's path (for errors and logs).
func (w *walFile) path() string { return w.name }

// close closes the file and releases the directory lock. Idempotent.
//
// Every write was synced when it returned, so close writes nothing.
func (w *walFile) close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	var err error
	if w.f != nil {
		if cerr := w.f.Close(); cerr != nil {
			err = fmt.Errorf("replication: close log: %w", cerr)
		}
		w.f = nil
	}
	if uerr := w.unlock(); uerr != nil && err == nil {
		err = fmt.Errorf("replication: unlock data directory %s: %w", w.dir, uerr)
	}
	return err
}

// syncDir flushes dir's entries (a created or renamed file) to stable
// storage. Windows provides no way to do so through package os; there,
// syncDir does nothing, and the durability of those entries rests on the
// file system.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
