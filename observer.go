package replication

import "time"

// Observer receives the timings of a QuasarReplicator's work, for latency
// metrics (the promexport subpackage implements it with Prometheus
// histograms). Set it in QuasarConfig.Observer. Its methods are called on
// the goroutine that did the work, with no lock of the replicator held;
// they must return quickly and be safe for concurrent use.
type Observer interface {
	// ObservePropose reports a Propose call that returned d after elapsed.
	ObservePropose(d Decision, elapsed time.Duration)
	// ObserveApply reports the handlers of one frame that ran for elapsed
	// (whatever they returned).
	ObserveApply(elapsed time.Duration)
}
