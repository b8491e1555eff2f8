//go:build unix

package replication

import (
	"syscall"
	"time"
)

// processCPU is the user and system CPU time the process used so far (for
// benchmarks: every node of a test cluster runs in it).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // cannot fail for RUSAGE_SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
