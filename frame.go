package replication

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Frame is the wire envelope a Shard ships through consensus. The payload
// is the application-level mutation; ShardKey routes the frame to the right
// namespace shard on apply.
type Frame struct {
	OrgID     string `json:"org"`
	Namespace string `json:"ns"`
	Seq       uint64 `json:"seq"`
	Op        string `json:"op"`  // "put" | "del"
	Key       string `json:"key"` // canonical key (no org prefix)
	Value     []byte `json:"val,omitempty"`
}

// FrameKey returns "OrgID/Namespace/Key". It is exported for
// /v1/tasks/cluster diagnostics.
func (f Frame) FrameKey() []byte {
	b := make([]byte, 0, len(f.OrgID)+len(f.Namespace)+len(f.Key)+2)
	b = append(b, f.OrgID...)
	b = append(b, '/')
	b = append(b, f.Namespace...)
	b = append(b, '/')
	return append(b, f.Key...)
}

// size is the number of bytes the frame occupies in its JSON encoding: the
// figure that the size limits of both drivers are checked against.
func (f *Frame) size() int {
	n := len(`{"org":,"ns":,"seq":,"op":,"key":}`) +
		jsonStringLen(f.OrgID) + jsonStringLen(f.Namespace) + uintLen(f.Seq) +
		jsonStringLen(f.Op) + jsonStringLen(f.Key)
	if len(f.Value) > 0 {
		n += len(`,"val":""`) + base64.StdEncoding.EncodedLen(len(f.Value))
	}
	return n
}

// checkSize returns an error wrapping ErrRejected and ErrTooLarge when the
// frame's size is above limit; a limit of 0 or less means none.
func (f *Frame) checkSize(limit int64) error {
	if limit <= 0 {
		return nil
	}
	if n := f.size(); int64(n) > limit {
		return fmt.Errorf("%w: %w: %d bytes, limit %d", ErrRejected, ErrTooLarge, n, limit)
	}
	return nil
}

// validUTF8 reports whether the frame's strings are valid UTF-8. The JSON
// encoding, and so the block ID, replaces each invalid byte with U+FFFD:
// frames whose strings differ only in invalid bytes would share a block ID
// while carrying different contents, so the Quasar driver refuses them.
func (f *Frame) validUTF8() bool {
	return utf8.ValidString(f.OrgID) && utf8.ValidString(f.Namespace) &&
		utf8.ValidString(f.Op) && utf8.ValidString(f.Key)
}

// appendJSON appends the frame's JSON encoding to dst. The output is byte for
// byte what encoding/json.Marshal produces for a Frame (a property test checks
// it), without reflection: the block ID is a hash of these bytes, so every
// node must derive exactly the same ones.
func (f *Frame) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"org":`...)
	dst = appendJSONString(dst, f.OrgID)
	dst = append(dst, `,"ns":`...)
	dst = appendJSONString(dst, f.Namespace)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, f.Seq, 10)
	dst = append(dst, `,"op":`...)
	dst = appendJSONString(dst, f.Op)
	dst = append(dst, `,"key":`...)
	dst = appendJSONString(dst, f.Key)
	if len(f.Value) > 0 {
		dst = append(dst, `,"val":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, f.Value)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// blockID is the consensus block ID of a frame: SHA-256 of its Seq as 8
// bytes big-endian followed by its JSON encoding. scratch is reused to avoid
// an allocation per frame; the (possibly grown) buffer is returned.
func (f *Frame) blockID(scratch []byte) (id [32]byte, buf []byte) {
	buf = binary.BigEndian.AppendUint64(scratch[:0], f.Seq)
	buf = f.appendJSON(buf)
	return sha256.Sum256(buf), buf
}

// block returns the frame's block ID and its JSON encoding (the block's
// payload), built in one allocation of exactly the right size.
func (f *Frame) block() (id [32]byte, payload []byte) {
	id, buf := f.blockID(make([]byte, 0, 8+f.size()))
	return id, buf[8:]
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string exactly as encoding/json does
// with HTML escaping on: <, > and & become \u003c, \u003e, \u0026; invalid
// UTF-8 becomes \ufffd; U+2028 and U+2029 are escaped.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe(b) {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonStringLen is len(appendJSONString(nil, s)) without building it.
func jsonStringLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case jsonSafe(b):
				n++
			case b == '\\', b == '"', b == '\b', b == '\f', b == '\n', b == '\r', b == '\t':
				n += 2
			default:
				n += 6
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 6
		case r == '\u2028' || r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}

func jsonSafe(b byte) bool {
	return b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
}

func uintLen(v uint64) int {
	n := 1
	for v >= 10 {
		v /= 10
		n++
	}
	return n
}
