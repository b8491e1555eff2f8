package promexport_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/quasar-replication/replication"
	"github.com/quasar-replication/replication/promexport"
)

// scrape serves reg over HTTP, as /metrics would, and returns the body.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// requireLine requires a metric line of exactly that text (name, labels
// and value).
func requireLine(t *testing.T, body, line string) {
	t.Helper()
	for l := range strings.Lines(body) {
		if strings.TrimSpace(l) == line {
			return
		}
	}
	require.Failf(t, "missing metric line", "%q not in:\n%s", line, body)
}

func TestCollector_Quasar(t *testing.T) {
	hub := replication.NewMemoryHub()
	defer hub.Close()
	ids := []string{"a", "b", "c"}
	m := promexport.New()
	var rs []*replication.QuasarReplicator
	for _, id := range ids {
		cfg := replication.QuasarConfig{NodeID: id, Validators: ids, Transport: hub.Connect(id)}
		if id == "a" {
			cfg.Observer = m
		}
		r, err := replication.NewQuasar(context.Background(), cfg)
		require.NoError(t, err)
		defer r.Close()
		r.Subscribe(func(context.Context, replication.Frame) error { return nil })
		rs = append(rs, r)
	}
	m.Watch(rs[0])
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	for i := range 5 {
		d, err := rs[0].Propose(context.Background(), replication.Frame{OrgID: "o", Namespace: "n", Op: "put", Key: "k", Value: []byte(fmt.Sprint(i))})
		require.NoError(t, err)
		require.Equal(t, replication.DecisionAccept, d)
	}
	d, _ := rs[0].Propose(context.Background(), replication.Frame{OrgID: "o", Namespace: "n", Seq: 1, Op: "put", Key: "k"})
	require.Equal(t, replication.DecisionReject, d)

	body := scrape(t, reg)
	requireLine(t, body, `replication_quasar_propose_seconds_count{outcome="accept"} 5`)
	requireLine(t, body, `replication_quasar_propose_seconds_count{outcome="reject"} 1`)
	requireLine(t, body, `replication_quasar_apply_seconds_count 5`)
	requireLine(t, body, `replication_quasar_accepted_total 5`)
	requireLine(t, body, `replication_quasar_frames_applied_total 5`)
	requireLine(t, body, `replication_quasar_validators 3`)
	requireLine(t, body, `replication_quasar_quorum 2`)
	requireLine(t, body, `replication_quasar_pending 0`)
	require.NotContains(t, body, "replication_tcp_", "no transport watched")
}

func TestCollector_TCP(t *testing.T) {
	// A free port below the kernel's ephemeral range (32768 and up), where
	// no outbound connection can take it between this check and the bind.
	free := func() string {
		for range 100 {
			addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
			if ln, err := net.Listen("tcp", addr); err == nil {
				require.NoError(t, ln.Close())
				return addr
			}
		}
		t.Fatal("no free port")
		return ""
	}
	addrA, addrB := free(), free()
	a, err := replication.NewTCPTransport(replication.TCPConfig{NodeID: "a", Listen: addrA, Peers: map[string]string{"b": addrB}, Insecure: true})
	require.NoError(t, err)
	defer a.Close()
	b, err := replication.NewTCPTransport(replication.TCPConfig{NodeID: "b", Listen: addrB, Peers: map[string]string{"a": addrA}, Insecure: true})
	require.NoError(t, err)
	defer b.Close()
	got := make(chan struct{}, 1)
	b.OnReceive("k", func([]byte) error { got <- struct{}{}; return nil })
	require.Eventually(t, func() bool { return a.Stats().Peers["b"].Connected }, 10*time.Second, time.Millisecond)
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("hello")))
	<-got
	// The sender counts a frame once its write and flush returned, which
	// may be after the receiver has it.
	require.Eventually(t, func() bool { return a.Stats().Sent == 1 }, 10*time.Second, time.Millisecond)

	m := promexport.New()
	m.WatchTCP(a)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	body := scrape(t, reg)
	requireLine(t, body, `replication_tcp_peer_connected{peer="b"} 1`)
	requireLine(t, body, `replication_tcp_peer_sent_total{peer="b"} 1`)
	requireLine(t, body, `replication_tcp_sent_total 1`)
	requireLine(t, body, `replication_tcp_handshake_failures_total 0`)
	require.NotContains(t, body, "replication_quasar_frames", "no replicator watched")
}
