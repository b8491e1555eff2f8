//go:build !unix

package bench

import "time"

// processCPU is not measured on this system: cpu-µs/op is not reported.
func processCPU() time.Duration { return 0 }
