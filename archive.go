package replication

// This file implements the frame archive: an on-disk record of every
// accepted frame, kept for a much longer window than the frames held in
// memory, from which a node that was down for a long time can be caught
// up.
//
// # File format
//
// The archive is a directory of segment files named frames-NNNNNNNN.log,
// where NNNNNNNN is the segment's number, in decimal, at least eight
// digits wide. Numbers increase in the order the segments were created;
// the segment with the highest number is the current one, to which
// frames are appended. Each segment has the format of the log (wal.go):
// the magic "RPLWAL2\n", then checksummed records. Every record describes
// one frame; its type byte is archiveFrame (1) and its data is
//
//	uvarint len(org) ‖ org ‖ uvarint len(ns) ‖ ns ‖ uvarint prev ‖ uvarint seq ‖ payload
//
// where org and ns name the frame's namespace, prev is the Seq of the
// frame it extends, seq is its own Seq, and the payload, which runs to the
// end of the record, is opaque to the archive. A segment is started when
// the current one has reached archiveSegmentBytes, so a segment exceeds
// that size by at most one record.
//
// # Recovery
//
// Opening the archive decodes every segment. A torn tail of the current
// segment (an append that a crash interrupted) is truncated. Every other
// segment was synced in full before its successor was created, so damage
// anywhere else, as well as a record that fails its checksums anywhere, is
// corruption, which openArchive reports rather than repairs.
//
// # Design
//
// Old frames are discarded by deleting whole segments, oldest first: the
// files are append-only, nothing is ever rewritten, and trimming costs one
// unlink per segment, however many frames it drops. Appends are not
// synced: every archived frame is also in the main log, which is synced,
// until the main log is compacted, and the caller syncs the archive before
// it compacts the main log, so a crash loses no frame that the node still
// needs to serve. The index is held in memory: for each namespace, a
// slice of entries {prev, seq, segment number, offset, length} sorted by
// prev, searched by binary search. Frames are almost always archived in
// increasing prev order, so inserting an entry is almost always an append
// to the slice. An entry takes 32 bytes, and a slice's spare capacity at
// most as much again, so the index costs at most 64 bytes per archived
// frame, plus a map entry per namespace; the payloads stay on disk, and a
// read fetches each one with a single positioned read.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// archiveFrame is the type of a segment record that holds an archived
// frame.
const archiveFrame byte = 1

// archiveSegmentBytes is the size at which the archive's current segment
// is closed for appends and a new one started. It is read when an archive
// is opened.
var archiveSegmentBytes int64 = 64 << 20

const (
	// archiveNamePrefix and archiveNameSuffix surround a segment's
	// number in its file name.
	archiveNamePrefix = "frames-"
	archiveNameSuffix = ".log"

	// archiveKeepBuffer is the largest buffer that the archive keeps for
	// reuse between calls.
	archiveKeepBuffer = 1 << 20
)

// archiveRecord is one accepted frame to archive: its namespace, chain position
// (prev: the Seq of the frame it extends), its Seq, and an opaque payload.
type archiveRecord struct {
	key       spaceKey
	prev, seq uint64
	data      []byte
}

// archiveEntry locates the record of one archived frame.
type archiveEntry struct {
	prev, seq uint64
	off       int64  // the offset of the record's header in its segment
	seg       uint32 // the segment's number
	n         uint32 // the record's length, header included
}

// archiveChain is the index of one namespace: its entries, sorted by prev,
// with no two entries for one prev.
type archiveChain struct {
	entries []archiveEntry
}

// find returns the index of the entry whose prev is prev, or the index at
// which such an entry would be inserted and false.
func (c *archiveChain) find(prev uint64) (int, bool) {
	return slices.BinarySearchFunc(c.entries, prev, func(e archiveEntry, p uint64) int {
		switch {
		case e.prev < p:
			return -1
		case e.prev > p:
			return 1
		}
		return 0
	})
}

// archiveSegment is one segment file of an archive.
type archiveSegment struct {
	num  uint32
	path string
	f    *os.File
	size int64 // the length of its valid contents, which new records follow
	live int   // the number of index entries that point into it
}

// archiveSpan locates one encoded record in a batch being appended.
type archiveSpan struct {
	off, n int
}

// frameArchive is the archive of accepted frames kept in a directory: an
// append-only sequence of segment files and an in-memory index of the
// frames they hold.
//
// A frameArchive is safe for concurrent use. It has a single mutex, and
// its methods read and write files while holding it, so callers should
// not call them while holding locks of their own.
type frameArchive struct {
	mu       sync.Mutex
	dir      string
	segBytes int64 // archiveSegmentBytes when the archive was opened

	// segs are the segment files, in increasing order of number. The
	// last one is the current segment.
	segs   []*archiveSegment
	chains map[spaceKey]*archiveChain
	n      int // the number of index entries

	dirty    bool  // the current segment was written since it was last synced
	dirDirty bool  // a segment was created or removed since the directory was last synced
	err      error // sticky: set once a write or sync failed
	closed   bool

	// Buffers reused between calls.
	buf     []byte        // the encoded batch being appended
	scratch []byte        // the data of one record being encoded
	spans   []archiveSpan // the records of buf
	rbuf    []byte        // one record being read
}

// archiveSegmentName returns the file name of segment num.
func archiveSegmentName(num uint32) string {
	return fmt.Sprintf("%s%08d%s", archiveNamePrefix, num, archiveNameSuffix)
}

// parseArchiveSegmentName returns the number of the segment whose file
// name is name, and whether name is such a name, as archiveSegmentName
// spells it.
func parseArchiveSegmentName(name string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, archiveNamePrefix)
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, archiveNameSuffix)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || archiveSegmentName(uint32(v)) != name {
		return 0, false
	}
	return uint32(v), true
}

// appendArchiveData appends the data of the record of r (everything but
// the type byte) to dst.
func appendArchiveData(dst []byte, r *archiveRecord) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(r.key.org)))
	dst = append(dst, r.key.org...)
	dst = binary.AppendUvarint(dst, uint64(len(r.key.ns)))
	dst = append(dst, r.key.ns...)
	dst = binary.AppendUvarint(dst, r.prev)
	dst = binary.AppendUvarint(dst, r.seq)
	return append(dst, r.data...)
}

// archiveRecordLen returns the length of the payload (type byte and data)
// of the record of r.
func archiveRecordLen(r *archiveRecord) int {
	uvarintLen := func(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }
	return 1 + uvarintLen(uint64(len(r.key.org))) + len(r.key.org) +
		uvarintLen(uint64(len(r.key.ns))) + len(r.key.ns) +
		uvarintLen(r.prev) + uvarintLen(r.seq) + len(r.data)
}

// decodeArchiveData decodes the data of a frame record. The slices it
// returns alias b. ok is false if b is malformed.
func decodeArchiveData(b []byte) (org, ns []byte, prev, seq uint64, payload []byte, ok bool) {
	bytesField := func() ([]byte, bool) {
		v, k := binary.Uvarint(b)
		if k <= 0 || v > uint64(len(b)-k) {
			return nil, false
		}
		s := b[k : k+int(v)]
		b = b[k+int(v):]
		return s, true
	}
	uintField := func() (uint64, bool) {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, false
		}
		b = b[k:]
		return v, true
	}
	if org, ok = bytesField(); !ok {
		return nil, nil, 0, 0, nil, false
	}
	if ns, ok = bytesField(); !ok {
		return nil, nil, 0, 0, nil, false
	}
	if prev, ok = uintField(); !ok {
		return nil, nil, 0, 0, nil, false
	}
	if seq, ok = uintField(); !ok {
		return nil, nil, 0, 0, nil, false
	}
	return org, ns, prev, seq, b, true
}

// openArchive opens (creating if missing, 0o700) the archive in dir: segment files
// named "frames-%08d.log". It reads every segment, rebuilding the index; a torn tail of
// the last segment is truncated (and the segment synced); any other damage (a torn or
// corrupt record in an older segment, a corrupt record anywhere) fails with an error
// wrapping errWALCorrupt that names the file. The caller decides what to do with a
// damaged archive; it may, for one, move it aside and open a new one.
//
// Files in dir whose names are not segment names are ignored. If dir holds
// no segment, a first one is created.
func openArchive(dir string) (_ *frameArchive, err error) {
	created := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("replication: create archive directory: %w", err)
	}
	if created {
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, fmt.Errorf("replication: create archive directory %s: %w", dir, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("replication: open archive: %w", err)
	}
	var nums []uint32
	for _, e := range ents {
		if num, ok := parseArchiveSegmentName(e.Name()); ok && !e.IsDir() {
			nums = append(nums, num)
		}
	}
	slices.Sort(nums)

	a := &frameArchive{
		dir:      dir,
		segBytes: archiveSegmentBytes,
		chains:   make(map[spaceKey]*archiveChain),
	}
	defer func() {
		if err != nil {
			a.closeFiles()
		}
	}()
	// intern makes the namespaces of the records of a segment share
	// their strings, and spares an allocation per record.
	interned := make(map[string]string)
	intern := func(b []byte) string {
		if s, ok := interned[string(b)]; ok {
			return s
		}
		s := string(b)
		interned[s] = s
		return s
	}
	var buf []byte
	for i, num := range nums {
		last := i == len(nums)-1
		seg := &archiveSegment{num: num, path: filepath.Join(dir, archiveSegmentName(num))}
		flag := os.O_RDONLY
		if last {
			flag = os.O_RDWR
		}
		if seg.f, err = os.OpenFile(seg.path, flag, 0); err != nil {
			return nil, fmt.Errorf("replication: open archive segment: %w", err)
		}
		a.segs = append(a.segs, seg)
		fi, err := seg.f.Stat()
		if err != nil {
			return nil, fmt.Errorf("replication: open archive segment: %w", err)
		}
		size := fi.Size()
		if int64(int(size)) != size {
			return nil, fmt.Errorf("replication: open archive segment %s: %d bytes do not fit in memory", seg.path, size)
		}
		buf = slices.Grow(buf[:0], int(size))[:size]
		if _, err := seg.f.ReadAt(buf, 0); err != nil {
			return nil, fmt.Errorf("replication: read archive segment: %w", err)
		}
		recs, valid, err := decodeWAL(buf)
		if err != nil {
			var ce *walCorruptError
			if errors.As(err, &ce) {
				ce.path = seg.path
			}
			return nil, err
		}
		if valid == 0 || int64(valid) < size {
			if !last {
				reason := "torn record in a segment that is not the last"
				if valid == 0 {
					reason = "incomplete magic in a segment that is not the last"
				}
				return nil, &walCorruptError{path: seg.path, offset: valid, reason: reason}
			}
			if err := a.repairTail(seg, valid); err != nil {
				return nil, err
			}
		}
		seg.size = int64(max(valid, len(walMagic)))
		off := len(walMagic)
		for _, r := range recs {
			if r.typ != archiveFrame {
				return nil, &walCorruptError{path: seg.path, offset: off, reason: fmt.Sprintf("unknown record type %d", r.typ)}
			}
			org, ns, prev, seq, _, ok := decodeArchiveData(r.data)
			if !ok {
				return nil, &walCorruptError{path: seg.path, offset: off, reason: "malformed frame record"}
			}
			n := walHeaderSize + 1 + len(r.data)
			a.index(spaceKey{org: intern(org), ns: intern(ns)}, archiveEntry{
				prev: prev, seq: seq, off: int64(off), seg: num, n: uint32(n),
			}, seg)
			off += n
		}
	}
	if len(a.segs) == 0 {
		if err := a.createSegment(0); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// repairTail truncates the torn tail of seg, the last segment, to its first
// valid bytes, writing the magic again if not even the magic is whole, and
// syncs it.
func (a *frameArchive) repairTail(seg *archiveSegment, valid int) error {
	if err := seg.f.Truncate(int64(valid)); err != nil {
		return fmt.Errorf("replication: truncate torn archive segment: %w", err)
	}
	if valid == 0 {
		if _, err := seg.f.WriteAt([]byte(walMagic), 0); err != nil {
			return fmt.Errorf("replication: initialize archive segment: %w", err)
		}
	}
	if err := seg.f.Sync(); err != nil {
		return fmt.Errorf("replication: truncate torn archive segment: %w", err)
	}
	if valid == 0 {
		// The segment's creation was interrupted, so its directory
		// entry may not be durable either.
		a.dirDirty = true
	}
	return nil
}

// createSegment creates segment num, writes its magic, and makes it the
// current segment. Neither the segment nor the directory is synced.
func (a *frameArchive) createSegment(num uint32) error {
	path := filepath.Join(a.dir, archiveSegmentName(num))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("replication: create archive segment: %w", err)
	}
	a.dirDirty = true
	if _, err := f.WriteAt([]byte(walMagic), 0); err != nil {
		f.Close()
		return fmt.Errorf("replication: initialize archive segment %s: %w", path, err)
	}
	a.segs = append(a.segs, &archiveSegment{num: num, path: path, f: f, size: int64(len(walMagic))})
	a.dirty = true
	return nil
}

// current returns the current segment.
func (a *frameArchive) current() *archiveSegment { return a.segs[len(a.segs)-1] }

// segment returns segment num, or nil if the archive has none.
func (a *frameArchive) segment(num uint32) *archiveSegment {
	i, ok := slices.BinarySearchFunc(a.segs, num, func(s *archiveSegment, n uint32) int {
		switch {
		case s.num < n:
			return -1
		case s.num > n:
			return 1
		}
		return 0
	})
	if !ok {
		return nil
	}
	return a.segs[i]
}

// index adds e, the entry of a record of key in seg, to the index,
// replacing the entry of the same position if there is one.
func (a *frameArchive) index(key spaceKey, e archiveEntry, seg *archiveSegment) {
	c := a.chains[key]
	if c == nil {
		c = &archiveChain{}
		a.chains[key] = c
	}
	seg.live++
	if n := len(c.entries); n == 0 || c.entries[n-1].prev < e.prev {
		c.entries = append(c.entries, e)
		a.n++
		return
	}
	i, found := c.find(e.prev)
	if !found {
		c.entries = slices.Insert(c.entries, i, e)
		a.n++
		return
	}
	if old := a.segment(c.entries[i].seg); old != nil {
		old.live--
	}
	c.entries[i] = e
}

// usable returns the error that a write must fail with, if any.
func (a *frameArchive) usable() error {
	if a.err != nil {
		return a.err
	}
	if a.closed {
		return fmt.Errorf("%w: archive %s", ErrClosed, a.dir)
	}
	return nil
}

// append writes the records to the current segment, without syncing it,
// and indexes them. Before each write it starts a new segment if the
// current one has reached archiveSegmentBytes. A record whose namespace and
// prev are already indexed replaces the old index entry: the newest
// record of a position wins.
//
// A frame whose record would exceed maxWALRecord is refused, and nothing
// of the batch is written. If a write fails, the segment's state on disk is
// unknown, so the error is sticky: this and every later append and sync
// return it, and the archive must be reopened. The records written before
// the failure stay indexed.
func (a *frameArchive) append(recs []archiveRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	buf, spans := a.buf[:0], a.spans[:0]
	defer func() {
		if cap(buf) <= archiveKeepBuffer {
			a.buf = buf
		}
		if cap(a.scratch) > archiveKeepBuffer {
			a.scratch = nil
		}
		a.spans = spans
	}()
	for i := range recs {
		r := &recs[i]
		if n := archiveRecordLen(r); n > maxWALRecord {
			return fmt.Errorf("replication: archive %s: frame %d of namespace %s/%s needs a record of %d bytes, more than the limit of %d",
				a.dir, r.seq, r.key.org, r.key.ns, n, maxWALRecord)
		}
		a.scratch = appendArchiveData(a.scratch[:0], r)
		start := len(buf)
		buf = appendWALRecord(buf, archiveFrame, a.scratch)
		spans = append(spans, archiveSpan{off: start, n: len(buf) - start})
	}

	for i := 0; i < len(recs); {
		cur := a.current()
		if cur.size >= a.segBytes && cur.size > int64(len(walMagic)) {
			if err := a.rotate(); err != nil {
				return err
			}
			cur = a.current()
		}
		// Take records while the segment, with the records taken so
		// far, is below the limit: at least one.
		j := i + 1
		for j < len(recs) && cur.size+int64(spans[j].off-spans[i].off) < a.segBytes {
			j++
		}
		chunk := buf[spans[i].off : spans[j-1].off+spans[j-1].n]
		if _, err := cur.f.WriteAt(chunk, cur.size); err != nil {
			a.err = fmt.Errorf("replication: write archive segment: %w", err)
			return a.err
		}
		a.dirty = true
		base := cur.size - int64(spans[i].off)
		cur.size += int64(len(chunk))
		for k := i; k < j; k++ {
			r := &recs[k]
			a.index(r.key, archiveEntry{
				prev: r.prev, seq: r.seq, off: base + int64(spans[k].off), seg: cur.num, n: uint32(spans[k].n),
			}, cur)
		}
		i = j
	}
	return nil
}

// rotate syncs the current segment, and the directory if needed, and
// starts a new segment. Syncing first makes every segment but the last
// whole on disk, which is what recovery relies on. A failure is sticky.
func (a *frameArchive) rotate() error {
	if err := a.syncLocked(); err != nil {
		return err
	}
	cur := a.current()
	if cur.num == math.MaxUint32 {
		a.err = fmt.Errorf("replication: archive %s: segment numbers exhausted", a.dir)
		return a.err
	}
	if err := a.createSegment(cur.num + 1); err != nil {
		a.err = err
		return a.err
	}
	return nil
}

// sync syncs the current segment, and the directory if a segment was
// created or removed since the last sync. A failure is sticky, as for
// append.
func (a *frameArchive) sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	return a.syncLocked()
}

func (a *frameArchive) syncLocked() error {
	if a.dirty {
		cur := a.current()
		if err := cur.f.Sync(); err != nil {
			a.err = fmt.Errorf("replication: sync archive segment %s: %w", cur.path, err)
			return a.err
		}
		a.dirty = false
	}
	if a.dirDirty {
		if err := syncDir(a.dir); err != nil {
			a.err = fmt.Errorf("replication: sync archive directory %s: %w", a.dir, err)
			return a.err
		}
		a.dirDirty = false
	}
	return nil
}

// read returns copies of the payloads of the chain of key from position from: the
// record whose prev is from, then the one whose prev is that record's seq, and so on,
// up to max records, stopping at the first position not archived. If the position
// from is not archived, or max is not positive, read returns nil and no error.
//
// A record that fails its checksums, or does not hold the frame that the
// index says it does, fails the read with an error wrapping errWALCorrupt
// that names the segment file. A chain that leads back to a position it
// has passed ends there.
func (a *frameArchive) read(key spaceKey, from uint64, max int) ([][]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, fmt.Errorf("%w: archive %s", ErrClosed, a.dir)
	}
	c := a.chains[key]
	if c == nil || max <= 0 {
		return nil, nil
	}
	var out [][]byte
	pos := from
	// A chain without cycles visits each entry at most once.
	for steps := 0; len(out) < max && steps < len(c.entries); steps++ {
		i, ok := c.find(pos)
		if !ok {
			break
		}
		e := c.entries[i]
		p, err := a.readEntry(key, e)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		pos = e.seq
	}
	return out, nil
}

// has reports whether the archive indexes the frame of key at position
// prev with Seq seq. It reads nothing: openArchive checked every record.
func (a *frameArchive) has(key spaceKey, prev, seq uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.chains[key]
	if c == nil {
		return false
	}
	i, ok := c.find(prev)
	return ok && c.entries[i].seq == seq
}

// readEntry reads, checks and decodes the record that e locates, and
// returns a copy of its payload.
func (a *frameArchive) readEntry(key spaceKey, e archiveEntry) ([]byte, error) {
	seg := a.segment(e.seg)
	if seg == nil {
		return nil, fmt.Errorf("replication: archive %s: frame %d of namespace %s/%s is indexed in segment %d, which does not exist",
			a.dir, e.seq, key.org, key.ns, e.seg)
	}
	corrupt := func(reason string) error {
		return &walCorruptError{path: seg.path, offset: int(e.off), reason: reason}
	}
	need := int(e.n)
	if need <= walHeaderSize {
		return nil, corrupt("record too short")
	}
	if cap(a.rbuf) < need {
		a.rbuf = make([]byte, need)
	}
	b := a.rbuf[:need]
	if cap(a.rbuf) > archiveKeepBuffer {
		a.rbuf = nil
	}
	if _, err := seg.f.ReadAt(b, e.off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, corrupt("record extends past the end of the file")
		}
		return nil, fmt.Errorf("replication: read archive segment %s: %w", seg.path, err)
	}
	length, sum, ok := parseWALHeader(b)
	switch {
	case !ok:
		return nil, corrupt("record header checksum mismatch")
	case int64(length) != int64(need-walHeaderSize):
		return nil, corrupt(fmt.Sprintf("record length %d, want %d", length, need-walHeaderSize))
	}
	payload := b[walHeaderSize:]
	if crc32.Checksum(payload, walCRC) != sum {
		return nil, corrupt("record payload checksum mismatch")
	}
	if payload[0] != archiveFrame {
		return nil, corrupt(fmt.Sprintf("unknown record type %d", payload[0]))
	}
	org, ns, prev, seq, data, ok := decodeArchiveData(payload[1:])
	if !ok {
		return nil, corrupt("malformed frame record")
	}
	if string(org) != key.org || string(ns) != key.ns || prev != e.prev || seq != e.seq {
		return nil, corrupt("record does not hold the frame indexed at its offset")
	}
	return bytes.Clone(data), nil
}

// trim deletes whole segments, oldest first, and never the current one: while the
// archive holds more than maxFrames frames, and while the oldest segment was last
// written before now-maxAge, judged by the segment file's modification time, which
// survives restarts. It drops the index entries that point into the deleted segments;
// an entry for the same position that points into a later segment stays. A maxFrames
// or maxAge that is not positive disables that bound.
//
// A segment whose file cannot be removed is dropped from the archive all
// the same, and trim returns the error; the file is read again the next
// time the archive is opened.
func (a *frameArchive) trim(maxFrames int, maxAge time.Duration, now time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("%w: archive %s", ErrClosed, a.dir)
	}
	var (
		del     int   // the number of segments to delete
		dropped int   // the index entries that point into them
		err     error // the first failure
	)
	cutoff := now.Add(-maxAge)
	for del < len(a.segs)-1 {
		seg := a.segs[del]
		doomed := maxFrames > 0 && a.n-dropped > maxFrames
		if !doomed && maxAge > 0 {
			fi, serr := seg.f.Stat()
			if serr != nil {
				err = fmt.Errorf("replication: trim archive: %w", serr)
				break
			}
			doomed = fi.ModTime().Before(cutoff)
		}
		if !doomed {
			break
		}
		dropped += seg.live
		del++
	}
	if del == 0 {
		return err
	}
	for _, seg := range a.segs[:del] {
		cerr := seg.f.Close()
		if rerr := os.Remove(seg.path); rerr != nil && err == nil {
			err = fmt.Errorf("replication: trim archive: %w", rerr)
		}
		if cerr != nil && err == nil {
			err = fmt.Errorf("replication: trim archive: close %s: %w", seg.path, cerr)
		}
	}
	clear(a.segs[:del])
	a.segs = slices.Delete(a.segs, 0, del)
	a.dirDirty = true

	// Every remaining segment has a higher number than every deleted one.
	first := a.segs[0].num
	for key, c := range a.chains {
		c.entries = slices.DeleteFunc(c.entries, func(e archiveEntry) bool { return e.seg < first })
		switch {
		case len(c.entries) == 0:
			delete(a.chains, key)
		case len(c.entries) < cap(c.entries)/4:
			c.entries = slices.Clone(c.entries)
		}
	}
	a.n -= dropped
	return err
}

// frames returns the number of frames indexed: at most one for each
// position of each namespace.
func (a *frameArchive) frames() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// close closes every segment file and drops the index. It does not sync:
// a caller that needs the appended frames durable calls sync first.
// Idempotent.
func (a *frameArchive) close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	err := a.closeFiles()
	a.chains = nil
	a.n = 0
	a.buf, a.scratch, a.spans, a.rbuf = nil, nil, nil, nil
	return err
}

// closeFiles closes the files of every segment and returns the first
// error.
func (a *frameArchive) closeFiles() error {
	var err error
	for _, seg := range a.segs {
		if seg.f == nil {
			continue
		}
		if cerr := seg.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("replication: close archive segment %s: %w", seg.path, cerr)
		}
		seg.f = nil
	}
	return err
}
