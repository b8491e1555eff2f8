package replication

import (
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

// size is the frame's raw size: the bytes of its names (OrgID, Namespace),
// its Op, its Key and its Value. It is the figure the size limits of both
// drivers are checked against, and what the Quasar driver counts as a
// frame's weight in its memory and apply-backlog bounds.
func (f *Frame) size() int {
	return len(f.OrgID) + len(f.Namespace) + len(f.Op) + len(f.Key) + len(f.Value)
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
