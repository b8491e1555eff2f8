// Package promexport exports the metrics of a QuasarReplicator, and of a
// TCPTransport, to Prometheus. It lives apart from package replication so
// that importing replication does not pull in the Prometheus client.
//
// A Collector is two things: the replication.Observer that times Propose
// calls and frame applies (latency histograms), and a prometheus.Collector
// that reads the replicator's Metrics and the transport's Stats at every
// scrape (counters and gauges). Use it like this:
//
//	m := promexport.New()
//	cfg.Observer = m
//	r, err := replication.NewQuasar(ctx, cfg)
//	...
//	m.Watch(r)
//	m.WatchTCP(tr) // if the transport is a *replication.TCPTransport
//	prometheus.MustRegister(m)
//	http.Handle("/metrics", promhttp.Handler())
//
// The metrics, all prefixed replication_:
//
//	quasar_propose_seconds{outcome}   histogram of Propose latency by outcome
//	                                  (accept, reject, timeout, undecided)
//	quasar_apply_seconds              histogram of one frame's handlers
//	quasar_<field>_total              each counter of replication.QuasarMetrics
//	quasar_<field>                    each gauge of it (pending, pending_apply,
//	                                  pending_apply_bytes, retained, namespaces,
//	                                  validators, quorum)
//	tcp_<field>_total                 each counter of replication.TCPStats
//	tcp_peer_connected{peer}          1 while an outbound connection is up
//	tcp_peer_queued{peer}, tcp_peer_queued_bytes{peer}
//	tcp_peer_sent_total{peer}, tcp_peer_dropped_total{peer},
//	tcp_peer_reconnects_total{peer}
//
// <field> is the field's JSON name in QuasarMetrics (votes_received, …),
// and the TCPStats field name in snake case (handshake_failures, …).
//
// A Collector is safe for concurrent use by multiple goroutines.
package promexport

import (
	"reflect"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quasar-replication/replication"
)

const namespace = "replication"

// Collector times a replicator's work and exports its metrics. Make one
// with New.
type Collector struct {
	propose *prometheus.HistogramVec
	apply   prometheus.Histogram

	quasar atomic.Pointer[replication.QuasarReplicator]
	tcp    atomic.Pointer[replication.TCPTransport]

	quasarDescs []fieldDesc // one per field of QuasarMetrics
	tcpDescs    []fieldDesc // one per counter of TCPStats
	peer        struct {
		connected, queued, queuedBytes, sent, dropped, reconnects *prometheus.Desc
	}
}

// fieldDesc maps a struct field to a metric.
type fieldDesc struct {
	index int
	desc  *prometheus.Desc
	kind  prometheus.ValueType
}

var (
	_ replication.Observer = (*Collector)(nil)
	_ prometheus.Collector = (*Collector)(nil)
)

// quasarGauges are the fields of QuasarMetrics that are gauges, not
// counters.
var quasarGauges = map[string]bool{
	"pending": true, "pending_apply": true, "pending_apply_bytes": true,
	"retained": true, "namespaces": true, "validators": true, "quorum": true,
}

// New returns a Collector that watches nothing yet (see Watch, WatchTCP);
// its histograms fill as soon as it is a replicator's Observer.
func New() *Collector {
	buckets := prometheus.ExponentialBuckets(50e-6, 2, 18) // 50µs to ~6.5s
	c := &Collector{
		propose: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "quasar", Name: "propose_seconds",
			Help:    "Latency of QuasarReplicator.Propose, by outcome.",
			Buckets: buckets,
		}, []string{"outcome"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "quasar", Name: "apply_seconds",
			Help:    "Time the handlers of one accepted frame took.",
			Buckets: buckets,
		}),
	}
	mt := reflect.TypeFor[replication.QuasarMetrics]()
	for i := range mt.NumField() {
		f := mt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		kind := prometheus.CounterValue
		metric := name + "_total"
		if quasarGauges[name] {
			kind, metric = prometheus.GaugeValue, name
		}
		c.quasarDescs = append(c.quasarDescs, fieldDesc{i, prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "quasar", metric), "QuasarMetrics."+f.Name+" of replication.QuasarReplicator.", nil, nil), kind})
	}
	tt := reflect.TypeFor[replication.TCPStats]()
	for i := range tt.NumField() {
		f := tt.Field(i)
		if f.Type.Kind() != reflect.Uint64 {
			continue // Peers: per-peer metrics below
		}
		c.tcpDescs = append(c.tcpDescs, fieldDesc{i, prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "tcp", snake(f.Name)+"_total"), "TCPStats."+f.Name+" of replication.TCPTransport.", nil, nil),
			prometheus.CounterValue})
	}
	peerDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "tcp", "peer_"+name), help, []string{"peer"}, nil)
	}
	c.peer.connected = peerDesc("connected", "1 while an outbound connection to the peer is up.")
	c.peer.queued = peerDesc("queued", "Messages waiting in the peer's send queue.")
	c.peer.queuedBytes = peerDesc("queued_bytes", "Bytes waiting in the peer's send queue.")
	c.peer.sent = peerDesc("sent_total", "Frames written and flushed to the peer.")
	c.peer.dropped = peerDesc("dropped_total", "Frames dropped because the peer's send queue was full.")
	c.peer.reconnects = peerDesc("reconnects_total", "Outbound connections to the peer established after the first.")
	return c
}

// snake turns a Go field name into snake case: HandshakeFailures becomes
// handshake_failures.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Watch makes the Collector export r's Metrics at every scrape (replacing
// any replicator watched before).
func (c *Collector) Watch(r *replication.QuasarReplicator) { c.quasar.Store(r) }

// WatchTCP makes the Collector export t's Stats at every scrape (replacing
// any transport watched before).
func (c *Collector) WatchTCP(t *replication.TCPTransport) { c.tcp.Store(t) }

// ObservePropose implements replication.Observer.
func (c *Collector) ObservePropose(d replication.Decision, elapsed time.Duration) {
	c.propose.WithLabelValues(d.String()).Observe(elapsed.Seconds())
}

// ObserveApply implements replication.Observer.
func (c *Collector) ObserveApply(elapsed time.Duration) {
	c.apply.Observe(elapsed.Seconds())
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.propose.Describe(ch)
	c.apply.Describe(ch)
	for _, f := range c.quasarDescs {
		ch <- f.desc
	}
	for _, f := range c.tcpDescs {
		ch <- f.desc
	}
	for _, d := range []*prometheus.Desc{c.peer.connected, c.peer.queued, c.peer.queuedBytes, c.peer.sent, c.peer.dropped, c.peer.reconnects} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the histograms, and the
// watched replicator's and transport's figures as of now.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.propose.Collect(ch)
	c.apply.Collect(ch)
	if r := c.quasar.Load(); r != nil {
		v := reflect.ValueOf(r.Metrics())
		for _, f := range c.quasarDescs {
			ch <- prometheus.MustNewConstMetric(f.desc, f.kind, number(v.Field(f.index)))
		}
	}
	if t := c.tcp.Load(); t != nil {
		s := t.Stats()
		v := reflect.ValueOf(s)
		for _, f := range c.tcpDescs {
			ch <- prometheus.MustNewConstMetric(f.desc, f.kind, number(v.Field(f.index)))
		}
		for id, p := range s.Peers {
			connected := 0.0
			if p.Connected {
				connected = 1
			}
			ch <- prometheus.MustNewConstMetric(c.peer.connected, prometheus.GaugeValue, connected, id)
			ch <- prometheus.MustNewConstMetric(c.peer.queued, prometheus.GaugeValue, float64(p.Queued), id)
			ch <- prometheus.MustNewConstMetric(c.peer.queuedBytes, prometheus.GaugeValue, float64(p.QueuedBytes), id)
			ch <- prometheus.MustNewConstMetric(c.peer.sent, prometheus.CounterValue, float64(p.Sent), id)
			ch <- prometheus.MustNewConstMetric(c.peer.dropped, prometheus.CounterValue, float64(p.Dropped), id)
			ch <- prometheus.MustNewConstMetric(c.peer.reconnects, prometheus.CounterValue, float64(p.Reconnects), id)
		}
	}
}

// number is an integer field's value as a float.
func number(v reflect.Value) float64 {
	if v.CanUint() {
		return float64(v.Uint())
	}
	return float64(v.Int())
}
