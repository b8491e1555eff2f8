package replication

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// driver and transport must release what it started (doc.go, Lifecycle).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
