package replication

import (
	"testing"
)

func TestLocal_Contract(t *testing.T) {
	testReplicator(t, func(t *testing.T) Replicator {
		r := NewLocal()
		t.Cleanup(func() { _ = r.Close() })
		return r
	})
}
