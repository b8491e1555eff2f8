package replication

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFrame_FrameKey(t *testing.T) {
	f := Frame{OrgID: "acme", Namespace: "tasks", Key: "t/1"}
	require.Equal(t, "acme/tasks/t/1", string(f.FrameKey()))
}

// The size limits count a frame's raw bytes: its names, Op, Key and Value,
// whatever characters they hold (nothing is escaped or base64-encoded).
func TestFrame_SizeCountsRawBytes(t *testing.T) {
	cases := []struct {
		f    Frame
		want int
	}{
		{Frame{}, 0},
		{Frame{OrgID: "o", Namespace: "n", Seq: 1<<64 - 1, Op: "put", Key: "k", Value: []byte("v")}, 7},
		{Frame{OrgID: "<&>", Namespace: "\u2028", Key: "\x00\\\"", Value: []byte{0xff, 0, '"'}}, 3 + 3 + 3 + 3},
		{Frame{OrgID: "acme", Namespace: "tasks", Op: "put", Key: "t/1", Value: make([]byte, 800_000)}, 800_015},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, tc.f.size(), "%+q", tc.f)
	}
}

// FuzzFrameSize: size is the sum of the raw lengths, and the frame's wire
// encoding (its slot) costs at most a few length prefixes more.
func FuzzFrameSize(f *testing.F) {
	f.Add("o", "n", "put", "k", uint64(7), []byte("v"))
	f.Add("\xff<", "\u2028", "", "\x00", uint64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, org, ns, op, key string, seq uint64, val []byte) {
		fr := Frame{OrgID: org, Namespace: ns, Seq: seq, Op: op, Key: key, Value: val}
		require.Equal(t, len(org)+len(ns)+len(op)+len(key)+len(val), fr.size())
		wire := len(appendSlot(nil, &fr, 0))
		require.Equal(t, slotLen(&fr, 0), wire)
		require.LessOrEqual(t, fr.size(), wire)
		require.LessOrEqual(t, wire, fr.size()+7*binary.MaxVarintLen64)
	})
}
