package replication

// TCP framing: how TCPTransport cuts its byte streams into messages.
//
// Every message on a TCPTransport connection is one frame:
//
//	+----------------+---------+----------+-------------+-------------------+
//	| length (4)     | version | kind len | kind        | payload           |
//	| uint32, BE     | 1 byte  | 1 byte k | k bytes     | length-2-k bytes  |
//	+----------------+---------+----------+-------------+-------------------+
//
// length counts every byte after the prefix (version, kind length, kind and
// payload), so the smallest frame has length 2. The version is
// tcpFrameVersion (1); any other value is refused. A kind is 0..255 bytes:
// the empty kind is reserved for the plaintext hello frame (payload = the
// sender's node ID, see TCPConfig.Insecure) and is never delivered to a
// handler; Broadcast refuses it.
//
// The one byte that travels the other way: once the accepting side has
// authenticated the dialer (TLS handshake and certificate identity, or the
// hello), it writes tcpAccepted (0x01). The dialer waits for it, within
// HandshakeTimeout, before it sends anything: with TLS 1.3 a client's
// handshake completes before the server has checked the client's
// certificate, so without it a dialer that the peer refuses would believe
// itself connected and lose what it sends.
//
// The decoder treats its input as hostile: the length prefix is
// checked against the configured limit before anything is allocated, and the
// body is read into a buffer that grows only as bytes actually arrive, so a
// peer that announces a large frame and sends nothing costs nothing, and no
// buffer ever exceeds the limit. Every decoding failure wraps ErrMalformed;
// a clean end of stream at a frame boundary is io.EOF.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// tcpFrameVersion is the only frame version this package reads and
	// writes.
	tcpFrameVersion = 1
	// tcpFramePrefixLen is the size of the big-endian length prefix.
	tcpFramePrefixLen = 4
	// tcpAccepted is the byte the accepting side writes once it has
	// authenticated the dialer.
	tcpAccepted = 0x01
	// tcpFrameMinBody is the smallest valid length: version + kind length.
	tcpFrameMinBody = 2
	// tcpMaxKindLen is the longest kind a frame can carry.
	tcpMaxKindLen = 255
	// tcpFrameInitialBuf is the capacity readTCPFrame starts with when it is
	// given a smaller buffer. It does not depend on the input.
	tcpFrameInitialBuf = 512
	// tcpFrameGrowStep is the smallest capacity a growing buffer moves to.
	tcpFrameGrowStep = 4096
)

// tcpFrameBodyLen returns the value of the length prefix of a frame carrying
// kind and payload.
func tcpFrameBodyLen(kind string, payload []byte) int {
	return tcpFrameMinBody + len(kind) + len(payload)
}

// appendTCPFrame appends the frame for (kind, payload) to dst and returns the
// extended slice. The caller must have checked that len(kind) <= 255 and that
// tcpFrameBodyLen(kind, payload) fits the peer's limit (Broadcast does);
// appendTCPFrame itself does not fail.
func appendTCPFrame(dst []byte, kind string, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(tcpFrameBodyLen(kind, payload)))
	dst = append(dst, tcpFrameVersion, byte(len(kind)))
	dst = append(dst, kind...)
	return append(dst, payload...)
}

// readTCPFrame reads one frame from r. limit is the largest length prefix
// accepted; buf is a scratch buffer that readTCPFrame may reuse (nil is fine).
//
// It returns the frame's kind and payload, both aliasing the returned buffer
// buf2, which the caller should pass to the next call: kind and payload are
// valid only until then. buf2 never has a capacity above
// max(limit, cap(buf), 512).
//
// Errors: io.EOF when r ends cleanly before the first byte of a frame; an
// error wrapping ErrMalformed for a length prefix above limit or below 2, a
// wrong version, a kind length that overruns the frame, or a stream that
// ends inside a frame (also wrapping io.ErrUnexpectedEOF); any other error
// from r is returned wrapped as it is (a network failure is not malformed
// input).
func readTCPFrame(r io.Reader, limit int, buf []byte) (kind, payload, buf2 []byte, err error) {
	if cap(buf) < tcpFramePrefixLen {
		buf = make([]byte, 0, tcpFrameInitialBuf)
	}
	prefix := buf[:tcpFramePrefixLen]
	if _, err := io.ReadFull(r, prefix); err != nil {
		if err == io.EOF {
			return nil, nil, buf, io.EOF
		}
		return nil, nil, buf, frameReadError("length prefix", err)
	}
	n := binary.BigEndian.Uint32(prefix)
	if limit < 0 || uint64(n) > uint64(limit) {
		return nil, nil, buf, fmt.Errorf("%w: tcp frame length %d exceeds limit %d", ErrMalformed, n, limit)
	}
	if n < tcpFrameMinBody {
		return nil, nil, buf, fmt.Errorf("%w: tcp frame length %d below minimum %d", ErrMalformed, n, tcpFrameMinBody)
	}
	body, buf, err := readTCPFrameBody(r, buf, int(n))
	if err != nil {
		return nil, nil, buf, err
	}
	if v := body[0]; v != tcpFrameVersion {
		return nil, nil, buf, fmt.Errorf("%w: tcp frame version %d, want %d", ErrMalformed, v, tcpFrameVersion)
	}
	k := int(body[1])
	if tcpFrameMinBody+k > len(body) {
		return nil, nil, buf, fmt.Errorf("%w: tcp frame kind length %d overruns frame length %d", ErrMalformed, k, n)
	}
	return body[tcpFrameMinBody : tcpFrameMinBody+k], body[tcpFrameMinBody+k:], buf, nil
}

// readTCPFrameBody reads exactly n bytes into buf, growing it (doubling, at
// most to n) only as data arrives, and returns them as body == buf[:n].
func readTCPFrameBody(r io.Reader, buf []byte, n int) (body, buf2 []byte, err error) {
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			c := min(n, max(2*cap(buf), tcpFrameGrowStep))
			grown := make([]byte, len(buf), c)
			copy(grown, buf)
			buf = grown
		}
		end := min(cap(buf), n)
		m, err := io.ReadFull(r, buf[len(buf):end])
		buf = buf[:len(buf)+m]
		if err != nil {
			return nil, buf, frameReadError("body", err)
		}
	}
	return buf, buf, nil
}

// frameReadError classifies a read error inside a frame: a stream that ends
// early is malformed input, anything else is a transport failure.
func frameReadError(part string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: tcp frame truncated in %s: %w", ErrMalformed, part, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("replication: tcp frame read %s: %w", part, err)
}
