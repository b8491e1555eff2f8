package replication

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// A frame refused without a quorum having voted (too large, a taken slot,
// a local handler's failure) matches ErrRejected, and its message says
// what happened rather than "rejected by quorum".
func TestErrors_RefusalsSayWhatHappened(t *testing.T) {
	r := NewLocal()
	t.Cleanup(func() { _ = r.Close() })
	r.SetMaxFrameBytes(64)
	boom := errors.New("disk full")
	r.Subscribe(func(_ context.Context, f Frame) error {
		if f.Key == "fail" {
			return boom
		}
		return nil
	})
	q := newTestQuasar(t)
	cases := []struct {
		name string
		run  func() error
		is   []error
		says string
	}{
		{"too large", func() error {
			_, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k", Value: make([]byte, 100)})
			return err
		}, []error{ErrRejected, ErrTooLarge}, "frame too large"},
		{"local handler failed", func() error {
			_, err := r.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "fail"})
			return err
		}, []error{ErrRejected, boom}, "handler failed to apply the frame: disk full"},
		{"slot taken", func() error {
			if _, err := q.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Seq: 5, Op: "put", Key: "k"}); err != nil {
				return err
			}
			_, err := q.Propose(context.Background(), Frame{OrgID: "o", Namespace: "n", Seq: 5, Op: "put", Key: "k"})
			return err
		}, []error{ErrRejected}, "seq 5 is taken"},
		{"not UTF-8", func() error {
			_, err := q.Propose(context.Background(), Frame{OrgID: "o\xff", Namespace: "n", Op: "put", Key: "k"})
			return err
		}, []error{ErrRejected}, "must be valid UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			require.Error(t, err)
			for _, target := range tc.is {
				require.ErrorIs(t, err, target)
			}
			require.Contains(t, err.Error(), tc.says)
			require.NotContains(t, err.Error(), "quorum")
		})
	}
}
