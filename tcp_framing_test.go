package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// tcpFrameHeader builds a length prefix, version and kind length by hand, so
// tests can write frames the encoder refuses to produce.
func tcpFrameHeader(length uint32, version, kindLen byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, length)
	return append(b, version, kindLen)
}

func TestTCPFrame_RoundTrip(t *testing.T) {
	cases := []struct {
		name    string
		kind    string
		payload []byte
	}{
		{"empty payload", "vote", nil},
		{"hello kind", "", []byte("node-a")},
		{"binary payload", "block", []byte{0, 1, 2, 0xff, 0xfe}},
		{"max kind", string(bytes.Repeat([]byte{'k'}, tcpMaxKindLen)), []byte("x")},
		{"large payload", "big", bytes.Repeat([]byte{0xab}, 100_000)},
	}
	var stream []byte
	for _, tc := range cases {
		stream = appendTCPFrame(stream, tc.kind, tc.payload)
	}
	r := bytes.NewReader(stream)
	var buf []byte
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kind, payload, b, err := readTCPFrame(r, 1<<20, buf)
			buf = b
			require.NoError(t, err)
			require.Equal(t, tc.kind, string(kind))
			require.Equal(t, len(tc.payload), len(payload))
			if len(tc.payload) > 0 {
				require.Equal(t, tc.payload, payload)
			}
		})
	}
	_, _, _, err := readTCPFrame(r, 1<<20, buf)
	require.ErrorIs(t, err, io.EOF, "clean end of stream at a frame boundary")
}

// TestTCPFrame_Malformed covers bad input: short, truncated, garbage, wrong
// version, wrong lengths and huge length prefixes all give ErrMalformed.
func TestTCPFrame_Malformed(t *testing.T) {
	const limit = 1024
	cases := []struct {
		name      string
		input     []byte
		truncated bool
	}{
		{"short prefix", []byte{0, 0}, true},
		{"length below minimum", tcpFrameHeader(1, tcpFrameVersion, 0)[:5], false},
		{"zero length", []byte{0, 0, 0, 0}, false},
		{"truncated body", append(tcpFrameHeader(10, tcpFrameVersion, 1), 'k', 'x'), true},
		{"prefix only", tcpFrameHeader(10, tcpFrameVersion, 0)[:4], true},
		{"length above limit", tcpFrameHeader(limit+1, tcpFrameVersion, 0), false},
		{"huge length prefix", []byte{0xff, 0xff, 0xff, 0xff, 1, 0}, false},
		{"wrong version", append(tcpFrameHeader(3, 2, 1), 'k'), false},
		{"version zero", append(tcpFrameHeader(3, 0, 1), 'k'), false},
		{"kind overruns frame", append(tcpFrameHeader(3, tcpFrameVersion, 5), 'k'), false},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, buf, err := readTCPFrame(bytes.NewReader(tc.input), limit, nil)
			require.ErrorIs(t, err, ErrMalformed)
			require.Equal(t, tc.truncated, errors.Is(err, io.ErrUnexpectedEOF))
			require.LessOrEqual(t, cap(buf), max(limit, tcpFrameInitialBuf))
		})
	}
}

// tcpErrReader fails every read with err.
type tcpErrReader struct{ err error }

func (r tcpErrReader) Read([]byte) (int, error) { return 0, r.err }

func TestTCPFrame_NetworkErrorIsNotMalformed(t *testing.T) {
	boom := errors.New("connection reset")
	_, _, _, err := readTCPFrame(tcpErrReader{boom}, 1024, nil)
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrMalformed)
}

// TestTCPFrame_BufferGrowsWithData: a length prefix announcing the full
// limit followed by three bytes must not make the decoder allocate the
// announced size (no allocation sized by the attacker).
func TestTCPFrame_BufferGrowsWithData(t *testing.T) {
	const limit = 4 << 20
	in := append(tcpFrameHeader(limit, tcpFrameVersion, 1), 'k', 'x', 'y')
	_, _, buf, err := readTCPFrame(bytes.NewReader(in), limit, nil)
	require.ErrorIs(t, err, ErrMalformed)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.LessOrEqual(t, cap(buf), tcpFrameGrowStep,
		"a peer announcing %d bytes and sending 3 must not make us allocate them", limit)
}

func TestTCPFrame_BufferReuse(t *testing.T) {
	stream := appendTCPFrame(nil, "a", bytes.Repeat([]byte{1}, 10_000))
	stream = appendTCPFrame(stream, "b", []byte("small"))
	r := bytes.NewReader(stream)
	_, _, buf, err := readTCPFrame(r, 1<<20, nil)
	require.NoError(t, err)
	c := cap(buf)
	kind, payload, buf, err := readTCPFrame(r, 1<<20, buf)
	require.NoError(t, err)
	require.Equal(t, "b", string(kind))
	require.Equal(t, "small", string(payload))
	require.Equal(t, c, cap(buf), "the second frame reuses the buffer")
}

// FuzzTCPFrame feeds arbitrary bytes to the frame decoder. It
// must never panic, must fail only with io.EOF or ErrMalformed, must never
// grow its buffer beyond the limit, and every frame it accepts must
// re-encode to exactly the bytes it consumed.
func FuzzTCPFrame(f *testing.F) {
	f.Add(appendTCPFrame(nil, "vote", []byte("payload")))
	f.Add(appendTCPFrame(appendTCPFrame(nil, "", []byte("node-a")), "block", nil))
	f.Add([]byte{0, 0, 0})
	f.Add(tcpFrameHeader(1<<30, tcpFrameVersion, 0))
	f.Add(append(tcpFrameHeader(3, 7, 1), 'k'))
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 12
		r := bytes.NewReader(data)
		var buf []byte
		for {
			off := len(data) - r.Len()
			kind, payload, b, err := readTCPFrame(r, limit, buf)
			buf = b
			if cap(buf) > max(limit, tcpFrameInitialBuf) {
				t.Fatalf("buffer capacity %d exceeds limit %d", cap(buf), limit)
			}
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			consumed := data[off : len(data)-r.Len()]
			if len(consumed)-tcpFramePrefixLen > limit {
				t.Fatalf("accepted a frame of %d bytes above limit %d", len(consumed), limit)
			}
			if re := appendTCPFrame(nil, string(kind), payload); !bytes.Equal(re, consumed) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, consumed)
			}
		}
	})
}
