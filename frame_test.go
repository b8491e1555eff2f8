package replication

import (
	"encoding/json"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/require"
)

func TestFrame_FrameKey(t *testing.T) {
	f := Frame{OrgID: "acme", Namespace: "tasks", Key: "t/1"}
	require.Equal(t, "acme/tasks/t/1", string(f.FrameKey()))
}

// The size limits count a frame's JSON encoding: Frame.size must agree
// with encoding/json on every input, or a frame would be refused by one
// node's limit and not another's.
func TestFrame_SizeMatchesEncodingJSON(t *testing.T) {
	cases := []Frame{
		{},
		{OrgID: "o", Namespace: "n", Seq: 1, Op: "put", Key: "k", Value: []byte("v")},
		{OrgID: "<&>", Namespace: "\u2028\u2029", Key: "\x00\x01\x1f\x7f\"\\\b\f\n\r\t", Value: []byte{}},
		{OrgID: "\xff\xfe", Namespace: "héllo ☃", Key: "\xed\xa0\x80", Seq: 1<<64 - 1},
	}
	for _, f := range cases {
		requireJSONSize(t, f)
	}
	check := func(org, ns, op, key string, seq uint64, val []byte) bool {
		f := Frame{OrgID: org, Namespace: ns, Seq: seq, Op: op, Key: key, Value: val}
		want, err := json.Marshal(f)
		require.NoError(t, err)
		return f.size() == len(want)
	}
	require.NoError(t, quick.Check(check, &quick.Config{MaxCount: 2000}))
}

func FuzzFrameSize(f *testing.F) {
	f.Add("o", "n", "put", "k", uint64(7), []byte("v"))
	f.Add("\xff<", "\u2028", "", "\x00", uint64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, org, ns, op, key string, seq uint64, val []byte) {
		requireJSONSize(t, Frame{OrgID: org, Namespace: ns, Seq: seq, Op: op, Key: key, Value: val})
	})
}

func requireJSONSize(t *testing.T, f Frame) {
	t.Helper()
	want, err := json.Marshal(f)
	require.NoError(t, err)
	require.Equal(t, len(want), f.size())
}
