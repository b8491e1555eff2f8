package replication

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setArchiveSegmentBytes sets archiveSegmentBytes to n for the rest of the
// test. Archives read it when they are opened.
func setArchiveSegmentBytes(t testing.TB, n int64) {
	t.Helper()
	old := archiveSegmentBytes
	archiveSegmentBytes = n
	t.Cleanup(func() { archiveSegmentBytes = old })
}

// openArchiveT opens the archive in dir, failing the test on error, and
// closes it when the test ends.
func openArchiveT(t testing.TB, dir string) *frameArchive {
	t.Helper()
	a, err := openArchive(dir)
	require.NoError(t, err)
	t.Cleanup(func() { a.close() })
	return a
}

// archivePayload returns the payload that the tests archive for frame seq
// of key: distinct for every frame, and size bytes long if size is larger
// than its prefix.
func archivePayload(key spaceKey, seq uint64, size int) []byte {
	p := fmt.Appendf(nil, "%s/%s/%d;", key.org, key.ns, seq)
	for i := len(p); i < size; i++ {
		p = append(p, byte(seq)+byte(i))
	}
	return p
}

// archiveChainRecords returns the records of n frames of key that form a
// chain from position from: prev from+i and seq from+i+1.
func archiveChainRecords(key spaceKey, from uint64, n, size int) []archiveRecord {
	recs := make([]archiveRecord, n)
	for i := range recs {
		seq := from + uint64(i) + 1
		recs[i] = archiveRecord{key: key, prev: seq - 1, seq: seq, data: archivePayload(key, seq, size)}
	}
	return recs
}

// appendArchiveBatches appends recs in batches of at most batch records.
func appendArchiveBatches(t testing.TB, a *frameArchive, recs []archiveRecord, batch int) {
	t.Helper()
	for len(recs) > 0 {
		n := min(batch, len(recs))
		require.NoError(t, a.append(recs[:n]))
		recs = recs[n:]
	}
}

// payloadsOf returns the payloads of recs.
func payloadsOf(recs []archiveRecord) [][]byte {
	out := make([][]byte, len(recs))
	for i, r := range recs {
		out[i] = r.data
	}
	return out
}

// archiveSegments returns the names of the segment files in dir, in
// order.
func archiveSegments(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if _, ok := parseArchiveSegmentName(e.Name()); ok {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names
}

// readArchiveT reads a chain, failing the test on error.
func readArchiveT(t testing.TB, a *frameArchive, key spaceKey, from uint64, max int) [][]byte {
	t.Helper()
	got, err := a.read(key, from, max)
	require.NoError(t, err)
	return got
}

// requireArchiveCorrupt fails the test unless err wraps errWALCorrupt and
// names path.
func requireArchiveCorrupt(t testing.TB, err error, path string) {
	t.Helper()
	require.ErrorIs(t, err, errWALCorrupt)
	require.Contains(t, err.Error(), path)
}

// flipByte inverts the bits of the byte at off in the file at path.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

var (
	archiveKeyA = spaceKey{org: "acme", ns: "orders"}
	archiveKeyB = spaceKey{org: "acme", ns: "users"}
	archiveKeyC = spaceKey{org: "other", ns: "orders"}
)

func TestArchiveAppendRead(t *testing.T) {
	setArchiveSegmentBytes(t, 1024)
	dir := filepath.Join(t.TempDir(), "archive")
	a := openArchiveT(t, dir)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.True(t, fi.IsDir())
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	require.Zero(t, a.frames())

	recsA := archiveChainRecords(archiveKeyA, 0, 100, 40)
	// The chain of B misses position 20: the frame that extends it.
	recsB := archiveChainRecords(archiveKeyB, 0, 50, 10)
	recsB = slices.Delete(recsB, 20, 21)
	archived := 0 // the records of B appended so far
	appendB := func() {
		n := min(3, len(recsB)-archived)
		require.NoError(t, a.append(recsB[archived:archived+n]))
		archived += n
	}
	for i := 0; i < 100; i += 7 {
		require.NoError(t, a.append(recsA[i:min(i+7, 100)]))
		appendB()
	}
	for archived < len(recsB) {
		appendB()
	}
	require.NoError(t, a.sync())
	require.Greater(t, len(archiveSegments(t, dir)), 3)
	require.Equal(t, 100+49, a.frames())

	check := func(a *frameArchive) {
		t.Helper()
		require.Equal(t, payloadsOf(recsA), readArchiveT(t, a, archiveKeyA, 0, 1000), "whole chain")
		require.Equal(t, payloadsOf(recsA[40:]), readArchiveT(t, a, archiveKeyA, 40, 1000), "from the middle")
		require.Equal(t, payloadsOf(recsA[40:50]), readArchiveT(t, a, archiveKeyA, 40, 10), "max")
		require.Equal(t, payloadsOf(recsA[99:]), readArchiveT(t, a, archiveKeyA, 99, 10), "last frame")
		require.Nil(t, readArchiveT(t, a, archiveKeyA, 100, 10), "past the head")
		require.Nil(t, readArchiveT(t, a, archiveKeyA, 0, 0), "max 0")
		require.Equal(t, payloadsOf(recsB[:20]), readArchiveT(t, a, archiveKeyB, 0, 1000), "gap")
		require.Nil(t, readArchiveT(t, a, archiveKeyB, 20, 1000), "missing position")
		require.Equal(t, payloadsOf(recsB[20:]), readArchiveT(t, a, archiveKeyB, 21, 1000), "after the gap")
		require.Nil(t, readArchiveT(t, a, archiveKeyC, 0, 1000), "unknown namespace")
		require.Nil(t, readArchiveT(t, a, spaceKey{org: "acme"}, 0, 1000), "unknown namespace")
	}
	check(a)

	// read returns copies, and append does not keep the caller's payloads.
	got := readArchiveT(t, a, archiveKeyA, 0, 1)
	got[0][0] ^= 0xff
	recsA[0].data[0] ^= 0xff
	require.NotEqual(t, recsA[0].data, readArchiveT(t, a, archiveKeyA, 0, 1)[0])
	recsA[0].data[0] ^= 0xff
	check(a)

	require.NoError(t, a.close())
	b := openArchiveT(t, dir)
	require.Equal(t, 100+49, b.frames())
	check(b)

	// Appends continue in the last segment, and reads see them.
	segs := archiveSegments(t, dir)
	more := archiveChainRecords(archiveKeyA, 100, 5, 40)
	require.NoError(t, b.append(more))
	require.Equal(t, payloadsOf(append(slices.Clone(recsA), more...)), readArchiveT(t, b, archiveKeyA, 0, 1000))
	require.Equal(t, segs, archiveSegments(t, dir)[:len(segs)])
}

func TestArchiveReplace(t *testing.T) {
	setArchiveSegmentBytes(t, 512)
	dir := t.TempDir()
	a := openArchiveT(t, dir)
	recs := archiveChainRecords(archiveKeyA, 0, 30, 30)
	appendArchiveBatches(t, a, recs, 4)
	require.Equal(t, 30, a.frames())

	// A newer frame at position 5 that extends it the same way.
	newer := archiveRecord{key: archiveKeyA, prev: 5, seq: 6, data: []byte("newer")}
	require.NoError(t, a.append([]archiveRecord{newer}))
	require.Equal(t, 30, a.frames())
	want := payloadsOf(recs)
	want[5] = newer.data
	require.Equal(t, want, readArchiveT(t, a, archiveKeyA, 0, 100))

	// A newer frame at position 10 that leads elsewhere: the chain
	// follows it and ends where nothing is archived.
	fork := archiveRecord{key: archiveKeyA, prev: 10, seq: 1000, data: []byte("fork")}
	require.NoError(t, a.append([]archiveRecord{fork}))
	require.Equal(t, 30, a.frames())
	require.Equal(t, append(slices.Clone(want[:10]), fork.data), readArchiveT(t, a, archiveKeyA, 0, 100))

	// A frame before the chain's start is inserted, not appended.
	first := archiveRecord{key: archiveKeyA, prev: 1 << 40, seq: 0, data: []byte("wraps")}
	early := archiveRecord{key: archiveKeyB, prev: 7, seq: 8, data: []byte("b8")}
	earlier := archiveRecord{key: archiveKeyB, prev: 3, seq: 7, data: []byte("b7")}
	require.NoError(t, a.append([]archiveRecord{early, earlier, first}))
	require.Equal(t, 33, a.frames())
	require.Equal(t, [][]byte{earlier.data, early.data}, readArchiveT(t, a, archiveKeyB, 3, 100))

	// The chain from 1<<40 leads to 0 and on around to 10, then to 1000;
	// it does not run forever.
	cycle := archiveRecord{key: archiveKeyA, prev: 1000, seq: 1 << 40, data: []byte("cycle")}
	require.NoError(t, a.append([]archiveRecord{cycle}))
	got := readArchiveT(t, a, archiveKeyA, 1<<40, 1<<30)
	require.LessOrEqual(t, len(got), 32)

	check := func(a *frameArchive) {
		t.Helper()
		require.Equal(t, 34, a.frames())
		require.Equal(t, append(slices.Clone(want[:10]), fork.data, cycle.data), readArchiveT(t, a, archiveKeyA, 0, 12))
		require.Equal(t, want[11:], readArchiveT(t, a, archiveKeyA, 11, 100))
		require.Equal(t, [][]byte{earlier.data, early.data}, readArchiveT(t, a, archiveKeyB, 3, 100))
		// has: the position indexed with that Seq, by the newest record.
		require.True(t, a.has(archiveKeyA, 10, 1000))
		require.False(t, a.has(archiveKeyA, 10, 11), "replaced by the fork")
		require.True(t, a.has(archiveKeyB, 3, 7))
		require.False(t, a.has(archiveKeyB, 4, 5), "not archived")
		require.False(t, a.has(spaceKey{"none", "none"}, 0, 1))
	}
	check(a)
	require.NoError(t, a.close())
	check(openArchiveT(t, dir))
}

func TestArchiveTornTail(t *testing.T) {
	setArchiveSegmentBytes(t, 512)
	dir := t.TempDir()
	a := openArchiveT(t, dir)
	recs := archiveChainRecords(archiveKeyA, 0, 40, 30)
	appendArchiveBatches(t, a, recs, 3)
	require.NoError(t, a.sync())
	require.NoError(t, a.close())
	segs := archiveSegments(t, dir)
	require.Greater(t, len(segs), 2)
	last := filepath.Join(dir, segs[len(segs)-1])

	// Cut the last record of the last segment in half.
	fi, err := os.Stat(last)
	require.NoError(t, err)
	require.Greater(t, fi.Size(), int64(len(walMagic)))
	require.NoError(t, os.Truncate(last, fi.Size()-10))

	a = openArchiveT(t, dir)
	require.Equal(t, 39, a.frames())
	require.Equal(t, payloadsOf(recs[:39]), readArchiveT(t, a, archiveKeyA, 0, 100))
	fi2, err := os.Stat(last)
	require.NoError(t, err)
	require.Equal(t, fi.Size()-int64(walHeaderSize+1+len(appendArchiveData(nil, &recs[39]))), fi2.Size())

	// The lost frame can be archived again, after the truncated tail.
	require.NoError(t, a.append(recs[39:]))
	require.NoError(t, a.sync())
	require.NoError(t, a.close())
	a = openArchiveT(t, dir)
	require.Equal(t, payloadsOf(recs), readArchiveT(t, a, archiveKeyA, 0, 100))
	require.NoError(t, a.close())

	// A zero-filled tail is torn as well.
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(make([]byte, 100))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	a = openArchiveT(t, dir)
	require.Equal(t, payloadsOf(recs), readArchiveT(t, a, archiveKeyA, 0, 100))
	require.NoError(t, a.close())

	// A last segment whose creation was interrupted is initialized.
	next := filepath.Join(dir, archiveSegmentName(uint32(len(segs)+5)))
	require.NoError(t, os.WriteFile(next, []byte(walMagic[:3]), 0o600))
	a = openArchiveT(t, dir)
	require.Equal(t, 40, a.frames())
	b, err := os.ReadFile(next)
	require.NoError(t, err)
	require.Equal(t, walMagic, string(b))
	more := archiveChainRecords(archiveKeyA, 40, 1, 30)
	require.NoError(t, a.append(more))
	require.NoError(t, a.close())
	b, err = os.ReadFile(next)
	require.NoError(t, err)
	require.Greater(t, len(b), len(walMagic))
}

func TestArchiveCorrupt(t *testing.T) {
	setArchiveSegmentBytes(t, 512)
	// build returns a fresh archive directory of several segments.
	build := func(t *testing.T) (string, []string) {
		dir := t.TempDir()
		a, err := openArchive(dir)
		require.NoError(t, err)
		appendArchiveBatches(t, a, archiveChainRecords(archiveKeyA, 0, 40, 30), 3)
		require.NoError(t, a.sync())
		require.NoError(t, a.close())
		segs := archiveSegments(t, dir)
		require.Greater(t, len(segs), 2)
		for i := range segs {
			segs[i] = filepath.Join(dir, segs[i])
		}
		return dir, segs
	}
	firstRecord := int64(len(walMagic))

	t.Run("flip in an older segment", func(t *testing.T) {
		for _, off := range []int64{0, firstRecord, firstRecord + 4, firstRecord + walHeaderSize + 3} {
			dir, segs := build(t)
			flipByte(t, segs[0], off)
			_, err := openArchive(dir)
			requireArchiveCorrupt(t, err, segs[0])
		}
	})
	t.Run("flip in the last segment", func(t *testing.T) {
		dir, segs := build(t)
		flipByte(t, segs[len(segs)-1], firstRecord+walHeaderSize+3)
		_, err := openArchive(dir)
		requireArchiveCorrupt(t, err, segs[len(segs)-1])
	})
	t.Run("torn older segment", func(t *testing.T) {
		dir, segs := build(t)
		fi, err := os.Stat(segs[1])
		require.NoError(t, err)
		require.NoError(t, os.Truncate(segs[1], fi.Size()-3))
		_, err = openArchive(dir)
		requireArchiveCorrupt(t, err, segs[1])
	})
	t.Run("empty older segment", func(t *testing.T) {
		dir, segs := build(t)
		require.NoError(t, os.Truncate(segs[0], 0))
		_, err := openArchive(dir)
		requireArchiveCorrupt(t, err, segs[0])
	})
	t.Run("flip detected on read", func(t *testing.T) {
		dir, segs := build(t)
		a := openArchiveT(t, dir)
		// The first record of the second segment, in its payload.
		flipByte(t, segs[1], firstRecord+walHeaderSize+20)
		_, err := a.read(archiveKeyA, 0, 100)
		requireArchiveCorrupt(t, err, segs[1])
		// The chain before the damaged record reads.
		got, err := a.read(archiveKeyA, 0, 1)
		require.NoError(t, err)
		require.Len(t, got, 1)

		// A damaged header is detected too.
		flipByte(t, segs[2], firstRecord+1)
		e := a.chains[archiveKeyA]
		i := slices.IndexFunc(e.entries, func(e archiveEntry) bool { return e.seg == a.segs[2].num })
		require.GreaterOrEqual(t, i, 0)
		_, err = a.read(archiveKeyA, e.entries[i].prev, 1)
		requireArchiveCorrupt(t, err, segs[2])
	})
	t.Run("truncated under a reader", func(t *testing.T) {
		dir, segs := build(t)
		a := openArchiveT(t, dir)
		require.NoError(t, os.Truncate(segs[0], firstRecord+5))
		_, err := a.read(archiveKeyA, 0, 1)
		requireArchiveCorrupt(t, err, segs[0])
	})
}

func TestArchiveGarbageSegment(t *testing.T) {
	record := func(typ byte, data string) []byte {
		return append([]byte(walMagic), appendWALRecord(nil, typ, []byte(data))...)
	}
	cases := map[string][]byte{
		"random":          []byte("this is not an archive segment at all"),
		"bad header":      append([]byte(walMagic), bytes.Repeat([]byte{0xa5}, 40)...),
		"unknown type":    record(2, "\x01a\x01b\x00\x01"),
		"truncated org":   record(archiveFrame, "\x05ab"),
		"huge org length": record(archiveFrame, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
		"missing seq":     record(archiveFrame, "\x01a\x01b\x07"),
		"bad varint":      record(archiveFrame, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80"),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, archiveSegmentName(7))
			require.NoError(t, os.WriteFile(path, content, 0o600))
			var a *frameArchive
			var err error
			require.NotPanics(t, func() { a, err = openArchive(dir) })
			require.Nil(t, a)
			requireArchiveCorrupt(t, err, path)
		})
	}

	// Random contents, with and without the magic, never panic: they are
	// either refused as corrupt or hold a torn tail that is removed.
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 300 {
		b := make([]byte, rng.IntN(200))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%2 == 0 {
			b = append([]byte(walMagic), b...)
		}
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, archiveSegmentName(1)), b, 0o600))
		var a *frameArchive
		var err error
		require.NotPanics(t, func() { a, err = openArchive(dir) })
		if err != nil {
			require.ErrorIs(t, err, errWALCorrupt)
			continue
		}
		require.NoError(t, a.close())
	}
}

func TestArchiveIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"frames-1.log", "frames-000000001.log", "frames-00000001.log.tmp", "LOCK", "frames-abcdefgh.log"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("junk"), 0o600))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, archiveSegmentName(9)), 0o700))
	a := openArchiveT(t, dir)
	require.NoError(t, a.append(archiveChainRecords(archiveKeyA, 0, 3, 10)))
	require.Equal(t, 3, a.frames())
	_, ok := parseArchiveSegmentName("frames-00000001.log")
	require.True(t, ok)
}

func TestArchiveTrimCount(t *testing.T) {
	setArchiveSegmentBytes(t, 1024)
	dir := t.TempDir()
	a := openArchiveT(t, dir)
	recs := archiveChainRecords(archiveKeyA, 0, 200, 40)
	appendArchiveBatches(t, a, recs, 5)
	// A newer frame for position 0, in the current segment, outlives the
	// segment of the older one.
	newer := archiveRecord{key: archiveKeyA, prev: 0, seq: 1, data: []byte("newer")}
	require.NoError(t, a.append([]archiveRecord{newer}))
	require.NoError(t, a.sync())
	segs := archiveSegments(t, dir)
	require.Greater(t, len(segs), 5)
	require.Equal(t, 200, a.frames())

	now := time.Now()
	require.NoError(t, a.trim(100, 0, now))
	n := a.frames()
	require.LessOrEqual(t, n, 100)
	require.Greater(t, n, 80, "deletes no more segments than needed")
	left := archiveSegments(t, dir)
	require.Equal(t, segs[len(segs)-len(left):], left, "deletes the oldest segments")

	// The frames of the deleted segments are gone; the others read.
	require.Equal(t, [][]byte{newer.data}, readArchiveT(t, a, archiveKeyA, 0, 100))
	require.Nil(t, readArchiveT(t, a, archiveKeyA, 1, 100))
	first := uint64(200 - n + 1)
	require.Nil(t, readArchiveT(t, a, archiveKeyA, first-1, 100))
	require.Equal(t, payloadsOf(recs[first:]), readArchiveT(t, a, archiveKeyA, first, 1000))

	// Within the bound: nothing to do.
	require.NoError(t, a.trim(n, 0, now))
	require.Equal(t, n, a.frames())
	require.NoError(t, a.trim(0, 0, now))
	require.Equal(t, n, a.frames())

	// The current segment is never deleted.
	require.NoError(t, a.trim(1, 0, now))
	require.Equal(t, []string{segs[len(segs)-1]}, archiveSegments(t, dir))
	n = a.frames()
	require.Positive(t, n)
	require.Equal(t, [][]byte{newer.data}, readArchiveT(t, a, archiveKeyA, 0, 100))

	// The archive reopens in the same state, and appends continue.
	require.NoError(t, a.close())
	a = openArchiveT(t, dir)
	require.Equal(t, n, a.frames())
	require.Equal(t, [][]byte{newer.data}, readArchiveT(t, a, archiveKeyA, 0, 100))
	more := archiveChainRecords(archiveKeyA, 200, 20, 40)
	appendArchiveBatches(t, a, more, 5)
	require.Equal(t, payloadsOf(more), readArchiveT(t, a, archiveKeyA, 200, 100))
	require.Greater(t, len(archiveSegments(t, dir)), 1)
}

func TestArchiveTrimAge(t *testing.T) {
	setArchiveSegmentBytes(t, 1024)
	dir := t.TempDir()
	a := openArchiveT(t, dir)
	recs := archiveChainRecords(archiveKeyA, 0, 100, 40)
	appendArchiveBatches(t, a, recs, 5)
	require.NoError(t, a.sync())
	segs := archiveSegments(t, dir)
	require.Greater(t, len(segs), 4)

	now := time.Now()
	old := now.Add(-2 * time.Hour)
	for _, name := range segs[:2] {
		require.NoError(t, os.Chtimes(filepath.Join(dir, name), old, old))
	}
	total := a.frames()
	require.NoError(t, a.trim(0, time.Hour, now))
	require.Equal(t, segs[2:], archiveSegments(t, dir))
	n := a.frames()
	require.Less(t, n, total)
	require.Nil(t, readArchiveT(t, a, archiveKeyA, 0, 100))
	first := uint64(total - n)
	require.Equal(t, payloadsOf(recs[first:]), readArchiveT(t, a, archiveKeyA, first, 1000))

	// Both bounds: the count deletes the segments that the age does not.
	require.NoError(t, a.trim(n-1, time.Hour, now))
	require.Equal(t, segs[3:], archiveSegments(t, dir))

	// Segment age survives a restart; the current segment stays however
	// old it is.
	require.NoError(t, a.close())
	for _, name := range segs[3:] {
		require.NoError(t, os.Chtimes(filepath.Join(dir, name), old, old))
	}
	a = openArchiveT(t, dir)
	require.NoError(t, a.trim(0, time.Hour, now))
	require.Equal(t, segs[len(segs)-1:], archiveSegments(t, dir))
	require.Positive(t, a.frames())
	require.Equal(t, payloadsOf(recs[100-a.frames():]), readArchiveT(t, a, archiveKeyA, uint64(100-a.frames()), 1000))
}

func TestArchiveConcurrent(t *testing.T) {
	setArchiveSegmentBytes(t, 4096)
	a := openArchiveT(t, t.TempDir())
	keys := []spaceKey{archiveKeyA, archiveKeyB, archiveKeyC}
	const frames = 600
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := 0; i < frames; i += 16 {
			var batch []archiveRecord
			for _, k := range keys {
				batch = append(batch, archiveChainRecords(k, uint64(i), min(16, frames-i), 100)...)
			}
			if !assert.NoError(t, a.append(batch)) {
				return
			}
			if i%64 == 0 {
				assert.NoError(t, a.sync())
				assert.NoError(t, a.trim(frames, 0, time.Now()))
			}
		}
	})
	for r := range 4 {
		wg.Go(func() {
			key := keys[r%len(keys)]
			for {
				select {
				case <-done:
					return
				default:
				}
				from := uint64(r * 37 % frames)
				got, err := a.read(key, from, 50)
				if !assert.NoError(t, err) {
					return
				}
				for i, p := range got {
					if !assert.Equal(t, archivePayload(key, from+uint64(i)+1, 100), p) {
						return
					}
				}
				_ = a.frames()
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		got := readArchiveT(t, a, k, frames-10, 100)
		require.Len(t, got, 10)
	}
}

func TestArchiveClosed(t *testing.T) {
	a, err := openArchive(t.TempDir())
	require.NoError(t, err)
	require.NoError(t, a.append(archiveChainRecords(archiveKeyA, 0, 3, 10)))
	require.NoError(t, a.close())
	require.NoError(t, a.close())
	require.ErrorIs(t, a.append(archiveChainRecords(archiveKeyA, 3, 1, 10)), ErrClosed)
	require.ErrorIs(t, a.sync(), ErrClosed)
	_, err = a.read(archiveKeyA, 0, 10)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, a.trim(1, time.Hour, time.Now()), ErrClosed)
	require.Zero(t, a.frames())
}

func TestArchiveStickyError(t *testing.T) {
	a := openArchiveT(t, t.TempDir())
	require.NoError(t, a.append(archiveChainRecords(archiveKeyA, 0, 3, 10)))
	// Close the current segment's file under the archive: its writes fail.
	require.NoError(t, a.current().f.Close())
	err := a.append(archiveChainRecords(archiveKeyA, 3, 2, 10))
	require.Error(t, err)
	require.ErrorIs(t, a.append(archiveChainRecords(archiveKeyA, 5, 1, 10)), err)
	require.ErrorIs(t, a.sync(), err)
	require.Equal(t, 3, a.frames())
}

func TestArchiveTooLarge(t *testing.T) {
	dir := t.TempDir()
	a := openArchiveT(t, dir)
	big := archiveRecord{key: archiveKeyA, prev: 1, seq: 2, data: make([]byte, maxWALRecord)}
	small := archiveChainRecords(archiveKeyA, 0, 1, 10)
	err := a.append([]archiveRecord{small[0], big})
	require.Error(t, err)
	require.False(t, errors.Is(err, errWALCorrupt))
	require.Zero(t, a.frames(), "nothing of the batch is written")
	// The error is not sticky.
	require.NoError(t, a.append(small))
	require.NoError(t, a.sync())
	require.Equal(t, 1, a.frames())
	require.NoError(t, a.close())
	a = openArchiveT(t, dir)
	require.Equal(t, payloadsOf(small), readArchiveT(t, a, archiveKeyA, 0, 10))
}

func TestArchiveRecordLen(t *testing.T) {
	for _, r := range []archiveRecord{
		{},
		{key: archiveKeyA, prev: 127, seq: 128, data: []byte("x")},
		{key: spaceKey{org: strings.Repeat("o", 200), ns: "n"}, prev: 1<<64 - 1, seq: 1 << 63},
		{key: archiveKeyB, prev: 1 << 14, seq: 1<<21 - 1, data: make([]byte, 1000)},
	} {
		require.Equal(t, 1+len(appendArchiveData(nil, &r)), archiveRecordLen(&r))
	}
}

func TestArchiveSegmentNames(t *testing.T) {
	for _, num := range []uint32{0, 1, 12345678, 99999999, 100000000, 1<<32 - 1} {
		name := archiveSegmentName(num)
		require.True(t, strings.HasPrefix(name, "frames-"))
		got, ok := parseArchiveSegmentName(name)
		require.True(t, ok, name)
		require.Equal(t, num, got)
	}
	require.Equal(t, "frames-00000042.log", archiveSegmentName(42))
	for _, name := range []string{"frames-42.log", "frames-4294967296.log", "frames-+0000042.log", "frames-00000042.log.tmp", "x-00000042.log"} {
		_, ok := parseArchiveSegmentName(name)
		require.False(t, ok, name)
	}
}

func BenchmarkArchiveAppend(b *testing.B) {
	a, err := openArchive(b.TempDir())
	require.NoError(b, err)
	defer a.close()
	const batchSize = 16
	batch := make([]archiveRecord, batchSize)
	for i := range batch {
		batch[i] = archiveRecord{key: archiveKeyA, data: make([]byte, 300)}
	}
	seq := uint64(0)
	b.ReportAllocs()
	b.SetBytes(batchSize * 300)
	for b.Loop() {
		for i := range batch {
			batch[i].prev = seq
			seq++
			batch[i].seq = seq
		}
		if err := a.append(batch); err != nil {
			b.Fatal(err)
		}
	}
}
