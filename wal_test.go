package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// walSampleRecords returns records of various types and sizes, with empty
// and all-zero data among them. The last one is all zero but for its
// header, the case most likely to be mistaken for a zero-filled tail.
func walSampleRecords() []walRecord {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	return []walRecord{
		{typ: 1, data: []byte("alpha")},
		{typ: 0, data: nil},
		{typ: 2, data: []byte{}},
		{typ: 3, data: random(300)},
		{typ: 0xff, data: random(1000)},
		{typ: 0, data: make([]byte, 3)},
		{typ: 7, data: []byte{0}},
		{typ: 0, data: nil},
	}
}

// encodeWALRecords returns the encoding of recs, without the magic.
func encodeWALRecords(recs []walRecord) []byte {
	var b []byte
	for _, r := range recs {
		b = appendWALRecord(b, r.typ, r.data)
	}
	return b
}

// walLog returns a whole log file holding recs.
func walLog(recs []walRecord) []byte {
	return append([]byte(walMagic), encodeWALRecords(recs)...)
}

// requireWALRecords fails the test unless got holds the records of want,
// telling nil data and empty data apart from neither.
func requireWALRecords(t testing.TB, want, got []walRecord, msgAndArgs ...any) {
	t.Helper()
	require.Len(t, got, len(want), msgAndArgs...)
	for i := range want {
		require.Equal(t, want[i].typ, got[i].typ, msgAndArgs...)
		require.True(t, bytes.Equal(want[i].data, got[i].data), msgAndArgs...)
	}
}

// walBoundaries returns the offsets at which the records of a log holding
// recs end, starting with the end of the magic.
func walBoundaries(recs []walRecord) []int {
	ends := []int{len(walMagic)}
	for _, r := range recs {
		ends = append(ends, ends[len(ends)-1]+walHeaderSize+1+len(r.data))
	}
	return ends
}

// wholeBefore returns how many records of a log with record ends ends lie
// wholly within its first cut bytes, and the length of their prefix.
func wholeBefore(ends []int, cut int) (n, valid int) {
	if cut < len(walMagic) {
		return 0, 0
	}
	for n+1 < len(ends) && ends[n+1] <= cut {
		n++
	}
	return n, ends[n]
}

func openWALT(t testing.TB, dir string) (*walFile, []walRecord, int64) {
	t.Helper()
	w, recs, torn, err := openWAL(dir)
	require.NoError(t, err)
	t.Cleanup(func() { w.close() })
	return w, recs, torn
}

func TestWALRoundTrip(t *testing.T) {
	dir := t.TempDir()
	recs := walSampleRecords()

	w, got, torn := openWALT(t, dir)
	require.Empty(t, got)
	require.Zero(t, torn)
	require.Equal(t, int64(len(walMagic)), w.size())
	require.Equal(t, filepath.Join(dir, "wal.log"), w.path())

	require.NoError(t, w.writeSync(encodeWALRecords(recs[:3])))
	require.NoError(t, w.writeSync(encodeWALRecords(recs[3:4])))
	require.NoError(t, w.writeSync(encodeWALRecords(recs[4:])))
	want := walLog(recs)
	require.Equal(t, int64(len(want)), w.size())
	require.NoError(t, w.close())

	onDisk, err := os.ReadFile(filepath.Join(dir, "wal.log"))
	require.NoError(t, err)
	require.Equal(t, want, onDisk)

	w, got, torn = openWALT(t, dir)
	require.Zero(t, torn)
	requireWALRecords(t, recs, got)
	require.Equal(t, int64(len(want)), w.size())
}

func TestWALCreatesDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	openWALT(t, dir)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.True(t, fi.IsDir())
	if runtime.GOOS != "windows" {
		require.Zero(t, fi.Mode().Perm()&0o077, "data directory mode %v", fi.Mode().Perm())
	}
}

func TestWALDecodeTruncated(t *testing.T) {
	recs := walSampleRecords()
	log := walLog(recs)
	ends := walBoundaries(recs)
	for cut := 0; cut <= len(log); cut++ {
		got, valid, err := decodeWAL(log[:cut])
		require.NoError(t, err, "cut at %d", cut)
		n, wantValid := wholeBefore(ends, cut)
		require.Equal(t, wantValid, valid, "cut at %d", cut)
		requireWALRecords(t, recs[:n], got, "cut at %d", cut)
	}
}

func TestWALOpenTruncated(t *testing.T) {
	recs := walSampleRecords()
	log := walLog(recs)
	ends := walBoundaries(recs)

	// Every record boundary and its neighbours, plus a stride through the
	// records' bodies.
	cuts := map[int]bool{0: true, 1: true, len(walMagic) - 1: true}
	for _, e := range ends {
		for _, d := range []int{-1, 0, 1, walHeaderSize - 1, walHeaderSize, walHeaderSize + 1} {
			if c := e + d; c >= 0 && c <= len(log) {
				cuts[c] = true
			}
		}
	}
	for c := 0; c <= len(log); c += 97 {
		cuts[c] = true
	}
	extra := walRecord{typ: 9, data: []byte("appended after recovery")}

	for cut := range cuts {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "wal.log")
			require.NoError(t, os.WriteFile(name, log[:cut], 0o600))

			n, valid := wholeBefore(ends, cut)
			w, got, torn := openWALT(t, dir)
			requireWALRecords(t, recs[:n], got)
			require.Equal(t, int64(cut-valid), torn)

			wantSize := max(valid, len(walMagic))
			require.Equal(t, int64(wantSize), w.size())
			fi, err := os.Stat(name)
			require.NoError(t, err)
			require.Equal(t, int64(wantSize), fi.Size(), "file not truncated to its valid length")

			require.NoError(t, w.writeSync(appendWALRecord(nil, extra.typ, extra.data)))
			require.NoError(t, w.close())

			_, got, torn = openWALT(t, dir)
			require.Zero(t, torn)
			requireWALRecords(t, append(recs[:n:n], extra), got)
		})
	}
}

func TestWALDecodeFlipped(t *testing.T) {
	recs := walSampleRecords()
	log := walLog(recs)
	masks := []byte{0xff, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80}
	b := make([]byte, len(log))
	for i := range log {
		for _, m := range masks {
			copy(b, log)
			b[i] ^= m
			got, valid, err := decodeWAL(b)
			if err != nil {
				require.ErrorIs(t, err, errWALCorrupt, "byte %d ^ %#x", i, m)
				require.Contains(t, err.Error(), "offset ", "byte %d ^ %#x", i, m)
				continue
			}
			// A change that goes unnoticed must change nothing.
			require.Equal(t, len(b), valid, "byte %d ^ %#x: records lost without an error", i, m)
			requireWALRecords(t, recs, got, "byte %d ^ %#x", i, m)
		}
	}
}

func TestWALOpenCorrupt(t *testing.T) {
	recs := walSampleRecords()
	log := walLog(recs)
	ends := walBoundaries(recs)
	cases := map[string]int{
		"magic":              3,
		"first header":       ends[0] + 1,
		"middle payload":     ends[3] + walHeaderSize + 5,
		"last header":        ends[len(ends)-2] + 8,
		"last payload byte":  len(log) - 1,
		"middle header sums": ends[4] + 10,
	}
	for name, at := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "wal.log")
			b := bytes.Clone(log)
			b[at] ^= 0x01
			require.NoError(t, os.WriteFile(file, b, 0o600))

			_, _, _, err := openWAL(dir)
			require.ErrorIs(t, err, errWALCorrupt)
			require.Contains(t, err.Error(), file)
			require.Contains(t, err.Error(), "offset ")

			// The file is left alone, and the lock was released: a second
			// attempt fails the same way, not with errDirLocked.
			_, _, _, err = openWAL(dir)
			require.ErrorIs(t, err, errWALCorrupt)
			onDisk, rerr := os.ReadFile(file)
			require.NoError(t, rerr)
			require.Equal(t, b, onDisk)
		})
	}
}

func TestWALZeroTail(t *testing.T) {
	recs := walSampleRecords()
	log := walLog(recs)
	dir := t.TempDir()
	name := filepath.Join(dir, "wal.log")
	require.NoError(t, os.WriteFile(name, append(bytes.Clone(log), make([]byte, 4096)...), 0o600))

	w, got, torn := openWALT(t, dir)
	requireWALRecords(t, recs, got)
	require.Equal(t, int64(4096), torn)
	require.Equal(t, int64(len(log)), w.size())
	fi, err := os.Stat(name)
	require.NoError(t, err)
	require.Equal(t, int64(len(log)), fi.Size())
}

// walHeader returns a record header whose own check passes, claiming a
// payload of length bytes whose checksum is zero.
func walHeader(length uint32) []byte {
	h := make([]byte, walHeaderSize)
	binary.LittleEndian.PutUint32(h[0:4], length)
	binary.LittleEndian.PutUint32(h[8:12], crc32.Checksum(h[:8], walCRC))
	return h
}

func TestWALDecodeTails(t *testing.T) {
	log := walLog(walSampleRecords()[:2])
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	torn := map[string]struct {
		b     []byte
		valid int
	}{
		"zero tail":                 {join(log, make([]byte, 100)), len(log)},
		"short zero tail":           {join(log, make([]byte, 5)), len(log)},
		"exactly twelve zero bytes": {join(log, make([]byte, walHeaderSize)), len(log)},
		"short garbage tail":        {join(log, []byte("RPLWAL1")), len(log)},
		"payload past end":          {join(log, walHeader(100), []byte("short")), len(log)},
		"maximum length past end":   {join(log, walHeader(maxWALRecord)), len(log)},
		"record then zeros":         {join(log, appendWALRecord(nil, 1, []byte("x")), make([]byte, 30)), len(log) + walHeaderSize + 2},
		"partial record":            {join(log, appendWALRecord(nil, 1, []byte("xyz"))[:walHeaderSize+2]), len(log)},
		"magic only":                {[]byte(walMagic), len(walMagic)},
		"magic prefix":              {[]byte(walMagic[:3]), 0},
		"empty":                     {[]byte{}, 0},
	}
	for name, c := range torn {
		_, valid, err := decodeWAL(c.b)
		require.NoError(t, err, name)
		require.Equal(t, c.valid, valid, name)
	}

	corrupt := map[string][]byte{
		"zero length":          join(log, walHeader(0)),
		"length above maximum": join(log, walHeader(maxWALRecord+1)),
		"length all ones":      join(log, walHeader(0xffffffff)),
		"garbage header":       join(log, bytes.Repeat([]byte{0xab}, 40)),
		"header then zeros":    join(log, []byte{5, 0, 0, 0, 1}, make([]byte, 50)),
		"zeros then garbage":   join(log, make([]byte, 50), []byte{1}),
		"wrong magic":          []byte("RPLWAL3\n"),
		"format 1":             append([]byte(walMagicV1), appendWALRecord(nil, 1, []byte("x"))...),
		"short non-prefix":     []byte("RPX"),
		"no magic":             appendWALRecord(nil, 1, []byte("x")),
	}
	for name, b := range corrupt {
		recs, valid, err := decodeWAL(b)
		require.ErrorIs(t, err, errWALCorrupt, name)
		require.Nil(t, recs, name)
		require.Zero(t, valid, name)
	}
}

// A log of an earlier format is refused with a message that says so, not
// read with the IDs of this one (its votes would name no frame).
func TestWALRefusesFormat1(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "wal.log"), append([]byte(walMagicV1), appendWALRecord(nil, 1, []byte("x"))...), 0o600))
	_, _, _, err := openWAL(dir)
	require.ErrorIs(t, err, errWALCorrupt)
	require.ErrorContains(t, err, "earlier version")
}

func TestWALRepairsTornCreation(t *testing.T) {
	for _, content := range []string{"", "R", walMagic[:len(walMagic)-1]} {
		dir := t.TempDir()
		name := filepath.Join(dir, "wal.log")
		require.NoError(t, os.WriteFile(name, []byte(content), 0o600))
		w, recs, torn := openWALT(t, dir)
		require.Empty(t, recs)
		require.Equal(t, int64(len(content)), torn, "%q", content)
		require.NoError(t, w.writeSync(appendWALRecord(nil, 1, []byte("x"))))
		require.NoError(t, w.close())
		_, recs, torn = openWALT(t, dir)
		require.Zero(t, torn)
		requireWALRecords(t, []walRecord{{typ: 1, data: []byte("x")}}, recs, "%q", content)
	}
}

// requireWALDirFiles fails the test unless dir holds exactly the files
// names.
func requireWALDirFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	require.ElementsMatch(t, names, got)
}

func TestWALRewrite(t *testing.T) {
	dir := t.TempDir()
	recs := walSampleRecords()
	w, _, _ := openWALT(t, dir)
	require.NoError(t, w.writeSync(encodeWALRecords(recs)))

	replacement := []walRecord{{typ: 5, data: []byte("snapshot")}, {typ: 6, data: nil}}
	require.NoError(t, w.rewrite(encodeWALRecords(replacement)))
	require.Equal(t, int64(len(walLog(replacement))), w.size())

	// Appends after the rewrite land in the new file.
	after := walRecord{typ: 7, data: []byte("after")}
	require.NoError(t, w.writeSync(appendWALRecord(nil, after.typ, after.data)))
	want := append(replacement, after)
	onDisk, err := os.ReadFile(w.path())
	require.NoError(t, err)
	require.Equal(t, walLog(want), onDisk)
	require.NoError(t, w.close())
	requireWALDirFiles(t, dir, "LOCK", "wal.log")

	w, got, torn := openWALT(t, dir)
	require.Zero(t, torn)
	requireWALRecords(t, want, got)

	// Rewriting to nothing leaves an empty log.
	require.NoError(t, w.rewrite(nil))
	require.NoError(t, w.close())
	_, got, _ = openWALT(t, dir)
	require.Empty(t, got)
	requireWALDirFiles(t, dir, "LOCK", "wal.log")
}

func TestWALRemovesLeftoverTemp(t *testing.T) {
	dir := t.TempDir()
	recs := walSampleRecords()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "wal.log"), walLog(recs), 0o600))
	// A rewrite that a crash interrupted before its rename.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "wal.log.tmp"), walLog(recs[:1])[:20], 0o600))

	_, got, torn := openWALT(t, dir)
	require.Zero(t, torn)
	requireWALRecords(t, recs, got)
	requireWALDirFiles(t, dir, "LOCK", "wal.log")
}

func TestWALRefusesMalformedBatch(t *testing.T) {
	dir := t.TempDir()
	w, _, _ := openWALT(t, dir)
	good := appendWALRecord(nil, 1, []byte("good"))
	bad := map[string][]byte{
		"raw data":        []byte("not a record at all"),
		"cut record":      good[:len(good)-1],
		"trailing bytes":  append(bytes.Clone(good), 0),
		"oversize record": walHeader(maxWALRecord + 1),
	}
	for name, b := range bad {
		require.Error(t, w.writeSync(b), name)
		require.Error(t, w.rewrite(b), name)
	}
	// Nothing was written, and the refusals were not sticky.
	require.Equal(t, int64(len(walMagic)), w.size())
	require.NoError(t, w.writeSync(good))
	require.NoError(t, w.close())
	_, got, torn := openWALT(t, dir)
	require.Zero(t, torn)
	requireWALRecords(t, []walRecord{{typ: 1, data: []byte("good")}}, got)
}

func TestWALDirLock(t *testing.T) {
	if !dirLockSupported {
		t.Skip("no directory lock on " + runtime.GOOS)
	}
	dir := t.TempDir()
	w, _, _, err := openWAL(dir)
	require.NoError(t, err)
	require.NoError(t, w.writeSync(appendWALRecord(nil, 1, []byte("x"))))

	_, _, _, err = openWAL(dir)
	require.ErrorIs(t, err, errDirLocked)
	require.Contains(t, err.Error(), dir)

	// The failed attempt left the log alone.
	require.NoError(t, w.writeSync(appendWALRecord(nil, 2, []byte("y"))))
	require.NoError(t, w.close())
	require.NoError(t, w.close(), "close is idempotent")
	require.ErrorIs(t, w.writeSync(appendWALRecord(nil, 3, nil)), ErrClosed)
	require.ErrorIs(t, w.rewrite(nil), ErrClosed)

	w2, recs, _ := openWALT(t, dir)
	requireWALRecords(t, []walRecord{{typ: 1, data: []byte("x")}, {typ: 2, data: []byte("y")}}, recs)
	require.NoError(t, w2.close())
}

// walLockHelperEnv names the directory that TestDirLockHelperProcess, run
// as a child process, tries to open.
const walLockHelperEnv = "REPLICATION_WAL_LOCK_HELPER_DIR"

// TestDirLockHelperProcess is not a test of its own: TestDirLockOtherProcess
// runs it in a child process, to open a log from another process.
func TestDirLockHelperProcess(t *testing.T) {
	dir := os.Getenv(walLockHelperEnv)
	if dir == "" {
		t.Skip("run by TestDirLockOtherProcess only")
	}
	w, _, _, err := openWAL(dir)
	switch {
	case errors.Is(err, errDirLocked):
		fmt.Println("RESULT locked")
	case err != nil:
		t.Fatal(err)
	default:
		fmt.Println("RESULT opened")
		require.NoError(t, w.close())
	}
}

func TestDirLockOtherProcess(t *testing.T) {
	if !dirLockSupported {
		t.Skip("no directory lock on " + runtime.GOOS)
	}
	dir := t.TempDir()
	child := func() string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestDirLockHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), walLockHelperEnv+"="+dir)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		for line := range strings.Lines(string(out)) {
			if r, ok := strings.CutPrefix(line, "RESULT "); ok {
				return strings.TrimSpace(r)
			}
		}
		t.Fatalf("no result from the child process:\n%s", out)
		return ""
	}

	w, _, _ := openWALT(t, dir)
	require.Equal(t, "locked", child())
	require.NoError(t, w.close())
	require.Equal(t, "opened", child())
}

func TestWALStickyError(t *testing.T) {
	dir := t.TempDir()
	w, _, _ := openWALT(t, dir)
	first := walRecord{typ: 1, data: []byte("durable")}
	require.NoError(t, w.writeSync(appendWALRecord(nil, first.typ, first.data)))
	size := w.size()

	// Make the next write fail, as a failing disk would.
	require.NoError(t, w.f.Close())
	rec := appendWALRecord(nil, 2, []byte("lost"))
	err := w.writeSync(rec)
	require.Error(t, err)
	require.Equal(t, size, w.size())

	// Every later write fails the same way, even one that could succeed.
	for range 3 {
		require.True(t, err == w.writeSync(rec), "writeSync after a failure")
		require.True(t, err == w.rewrite(nil), "rewrite after a failure")
	}
	w.close() // closes the file a second time: its error does not matter

	// Reopening recovers what reached the disk.
	_, got, _ := openWALT(t, dir)
	requireWALRecords(t, []walRecord{first}, got)
}

func TestWALAllocs(t *testing.T) {
	data := make([]byte, 300)
	dst := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		dst = appendWALRecord(dst[:0], 1, data)
	})
	require.Zero(t, allocs, "appendWALRecord into a large enough dst")

	recs := walSampleRecords()
	log := walLog(recs)
	allocs = testing.AllocsPerRun(100, func() {
		if _, _, err := decodeWAL(log); err != nil {
			panic(err)
		}
	})
	// Only the records slice, grown by doubling.
	require.LessOrEqual(t, allocs, float64(bits.Len(uint(len(recs)))+1))
}

func FuzzWALDecode(f *testing.F) {
	recs := walSampleRecords()
	log := walLog(recs)
	f.Add([]byte{})
	f.Add([]byte(walMagic))
	f.Add(log)
	f.Add(log[:len(log)-3])
	f.Add(append(bytes.Clone(log), make([]byte, 64)...))
	flipped := bytes.Clone(log)
	flipped[len(walMagic)+2] ^= 0x10
	f.Add(flipped)

	extra := appendWALRecord(nil, 9, []byte("extra"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, valid, err := decodeWAL(b)
		if err != nil {
			require.ErrorIs(t, err, errWALCorrupt)
			require.Nil(t, recs)
			return
		}
		require.GreaterOrEqual(t, valid, 0)
		require.LessOrEqual(t, valid, len(b))
		if valid == 0 {
			// Not even the magic is whole: a creation that was interrupted.
			require.Empty(t, recs)
			require.True(t, strings.HasPrefix(walMagic, string(b)))
			return
		}

		// The records are exactly the valid prefix.
		enc := []byte(walMagic)
		for _, r := range recs {
			enc = appendWALRecord(enc, r.typ, r.data)
		}
		require.Equal(t, b[:valid], enc)

		// The rest is a tail that only an interrupted write leaves.
		tail := b[valid:]
		if len(tail) >= walHeaderSize && !allZero(tail) {
			length, _, ok := parseWALHeader(tail)
			require.True(t, ok, "torn tail with a bad header")
			require.True(t, length >= 1 && length <= maxWALRecord)
			require.Greater(t, int(length), len(tail)-walHeaderSize, "whole record in a torn tail")
		}

		// Truncating the tail and appending gives one record more.
		more := append(bytes.Clone(b[:valid]), extra...)
		got, valid2, err := decodeWAL(more)
		require.NoError(t, err)
		require.Equal(t, len(more), valid2)
		requireWALRecords(t, append(recs, walRecord{typ: 9, data: []byte("extra")}), got)
	})
}

func BenchmarkWALWriteSync(b *testing.B) {
	w, _, _, err := openWAL(b.TempDir())
	require.NoError(b, err)
	defer w.close()
	batch := appendWALRecord(nil, 1, make([]byte, 300-walHeaderSize-1))
	b.ReportAllocs()
	b.SetBytes(int64(len(batch)))
	for b.Loop() {
		if err := w.writeSync(batch); err != nil {
			b.Fatal(err)
		}
	}
}
