package replication

import (
	"encoding/base64"
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
		return refused("%w: %d bytes, limit %d", ErrTooLarge, n, limit)
	}
	return nil
}

// validUTF8 reports whether the frame's strings are valid UTF-8. A frame's
// JSON encoding (the Frame API's) replaces each invalid byte with U+FFFD,
// so frames whose strings differ only in invalid bytes would look alike
// to an application that stores them as JSON: the Quasar driver refuses
// them.
func (f *Frame) validUTF8() bool {
	return utf8.ValidString(f.OrgID) && utf8.ValidString(f.Namespace) &&
		utf8.ValidString(f.Op) && utf8.ValidString(f.Key)
}

// jsonStringLen is the length of s encoded as a JSON string by
// encoding/json (with HTML escaping on: <, > and & become \u003c, \u003e,
// \u0026; invalid UTF-8 becomes \ufffd; U+2028 and U+2029 are escaped).
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
