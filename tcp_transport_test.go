package replication

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// tcpWait bounds events that should take milliseconds on loopback; it is
// generous because the race detector and shared CI cores slow TLS down.
const tcpWait = 15 * time.Second

// tcpPoll is how often require.Eventually re-checks.
const tcpPoll = 5 * time.Millisecond

// tcpFreeAddr returns a loopback address with a port that was free a moment
// ago, so a cluster's addresses can be known before its nodes exist.
func tcpFreeAddr(t testing.TB) string {
	t.Helper()
	return freeLoopbackAddr(t)
}

// freeLoopbackAddr returns a loopback address with a free port for a
// listener the test starts later. The port is not one the kernel picks
// itself (port 0 listeners, and the local port of every outbound
// connection, come from the ephemeral range, 32768 and up on Linux): one
// taken from that range could be given to a connection between this check
// and the bind ("address already in use", seen once in ten full runs).
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			require.NoError(t, ln.Close())
			return addr
		}
	}
	t.Fatal("no free port between 20000 and 32000 on loopback")
	return ""
}

// tcpCerts writes dev certificates for ids into a fresh temp dir.
func tcpCerts(t testing.TB, ids ...string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, GenerateDevCerts(dir, ids))
	return dir
}

// tcpTLS loads the TLS config of node id from a tcpCerts directory.
func tcpTLS(t testing.TB, dir, id string) *tls.Config {
	t.Helper()
	cfg, err := LoadTLSConfig(filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem"), filepath.Join(dir, "ca.pem"))
	require.NoError(t, err)
	return cfg
}

// tcpTestConfig is a TLS config with short backoffs for tests.
func tcpTestConfig(id, listen string, peers map[string]string, tlsConf *tls.Config) TCPConfig {
	return TCPConfig{
		NodeID:       id,
		Listen:       listen,
		Peers:        peers,
		TLS:          tlsConf,
		Insecure:     tlsConf == nil,
		MinBackoff:   5 * time.Millisecond,
		MaxBackoff:   50 * time.Millisecond,
		WriteTimeout: 2 * time.Second,
	}
}

// newTCPTest starts a transport that is closed when the test ends.
func newTCPTest(t testing.TB, cfg TCPConfig) *TCPTransport {
	t.Helper()
	tr, err := NewTCPTransport(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tr.Close()) })
	return tr
}

// tcpCluster is a set of transports that all know each other.
type tcpCluster struct {
	dir   string
	addrs map[string]string
	nodes map[string]*TCPTransport
}

// peersOf returns the peer map of id: every other node's address.
func (c *tcpCluster) peersOf(id string) map[string]string {
	peers := make(map[string]string, len(c.addrs)-1)
	for other, addr := range c.addrs {
		if other != id {
			peers[other] = addr
		}
	}
	return peers
}

// newTCPCluster starts one mutual-TLS transport per id on loopback.
// tweak, if not nil, adjusts each node's config.
func newTCPCluster(t testing.TB, tweak func(*TCPConfig), ids ...string) *tcpCluster {
	t.Helper()
	c := &tcpCluster{dir: tcpCerts(t, ids...), addrs: map[string]string{}, nodes: map[string]*TCPTransport{}}
	for _, id := range ids {
		c.addrs[id] = tcpFreeAddr(t)
	}
	for _, id := range ids {
		cfg := tcpTestConfig(id, c.addrs[id], c.peersOf(id), tcpTLS(t, c.dir, id))
		if tweak != nil {
			tweak(&cfg)
		}
		c.nodes[id] = newTCPTest(t, cfg)
	}
	return c
}

// waitConnected waits until every node has an outbound connection to every
// peer, so no handshake is still in flight.
func (c *tcpCluster) waitConnected(t testing.TB) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, n := range c.nodes {
			for _, p := range n.Stats().Peers {
				if !p.Connected {
					return false
				}
			}
		}
		return true
	}, tcpWait, tcpPoll, "cluster never fully connected")
}

// tcpMsg is one delivered message.
type tcpMsg struct {
	from, payload string
}

// tcpInbox records what a transport delivers for one kind.
type tcpInbox struct {
	mu   sync.Mutex
	msgs []tcpMsg
}

func newTCPInbox(tr *TCPTransport, kind string) *tcpInbox {
	in := &tcpInbox{}
	tr.OnReceiveFrom(kind, func(from string, payload []byte) error {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.msgs = append(in.msgs, tcpMsg{from, string(payload)})
		return nil
	})
	return in
}

func (in *tcpInbox) all() []tcpMsg {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]tcpMsg(nil), in.msgs...)
}

func (in *tcpInbox) has(m tcpMsg) bool {
	for _, got := range in.all() {
		if got == m {
			return true
		}
	}
	return false
}

// requireTCPReceives waits until in has m.
func requireTCPReceives(t *testing.T, in *tcpInbox, m tcpMsg) {
	t.Helper()
	require.Eventually(t, func() bool { return in.has(m) }, tcpWait, tcpPoll,
		"never received %+v; got %+v", m, in.all())
}

// TestTCPTransport_MutualTLSBroadcast checks the Transport contract on three nodes:
// broadcasts flow in every direction and each carries its authenticated
// sender.
func TestTCPTransport_MutualTLSBroadcast(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ids := []string{"a", "b", "c"}
	c := newTCPCluster(t, nil, ids...)
	inboxes := map[string]*tcpInbox{}
	for _, id := range ids {
		inboxes[id] = newTCPInbox(c.nodes[id], "vote")
	}

	for _, id := range ids {
		payload := []byte("hello from " + id)
		require.NoError(t, c.nodes[id].Broadcast(context.Background(), "vote", payload))
		copy(payload, "XXXXX") // the transport must have copied it
	}
	for _, to := range ids {
		for _, from := range ids {
			if from != to {
				requireTCPReceives(t, inboxes[to], tcpMsg{from, "hello from " + from})
			}
		}
	}
	for _, id := range ids {
		require.Len(t, inboxes[id].all(), 2, "node %s gets nothing from itself, nothing twice", id)
	}

	a := c.nodes["a"]
	require.Equal(t, "a", a.LocalID())
	require.Equal(t, []string{"a", "b", "c"}, a.Validators())
	require.Equal(t, []string{"b", "a", "c"}, c.nodes["b"].Validators())
	// Sent counts a batch once its write returned, which may be after the
	// peer read it.
	require.Eventually(t, func() bool { return a.Stats().Sent == 2 }, tcpWait, tcpPoll, "sent: %+v", a.Stats())
	st := a.Stats()
	require.Equal(t, uint64(2), st.Received)
	require.Zero(t, st.Dropped)
	require.Zero(t, st.Malformed)
	require.Zero(t, st.HandshakeFailures)
	require.True(t, st.Peers["b"].Connected)
	require.True(t, st.Peers["c"].Connected)

	for _, id := range ids {
		require.NoError(t, c.nodes[id].Close())
	}
}

// TestTCPTransport_FIFOPerSender checks that one sender's messages arrive in
// the order it sent them, and that OnReceive (without sender) works too.
func TestTCPTransport_FIFOPerSender(t *testing.T) {
	c := newTCPCluster(t, nil, "a", "b")
	var mu sync.Mutex
	var got []string
	c.nodes["b"].OnReceive("seq", func(p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, string(p))
		return nil
	})
	const n = 500
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprint(i)
		require.NoError(t, c.nodes["a"].Broadcast(context.Background(), "seq", []byte(want[i])))
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n
	}, tcpWait, tcpPoll)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, want, got)
}

// TestTCPTransport_UnhandledAndHandlerErrors checks the counters for
// messages nobody handles and handlers that fail.
func TestTCPTransport_UnhandledAndHandlerErrors(t *testing.T) {
	c := newTCPCluster(t, nil, "a", "b")
	b := c.nodes["b"]
	b.OnReceive("fails", func([]byte) error { return fmt.Errorf("nope") })
	b.OnReceive("removed", func([]byte) error { return nil })
	b.OnReceive("removed", nil)
	ctx := context.Background()
	require.NoError(t, c.nodes["a"].Broadcast(ctx, "fails", nil))
	require.NoError(t, c.nodes["a"].Broadcast(ctx, "removed", nil))
	require.NoError(t, c.nodes["a"].Broadcast(ctx, "nobody", nil))
	require.Eventually(t, func() bool {
		st := b.Stats()
		return st.Received == 3 && st.Unhandled == 2 && st.HandlerErrors == 1
	}, tcpWait, tcpPoll, "%+v", b.Stats())
}

// TestTCPTransport_ReconnectAfterRestart: a peer that closes and comes back
// on the same address is redialed and messages flow both ways again.
func TestTCPTransport_ReconnectAfterRestart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := newTCPCluster(t, nil, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	inA, inB := newTCPInbox(a, "k"), newTCPInbox(b, "k")
	ctx := context.Background()
	require.NoError(t, a.Broadcast(ctx, "k", []byte("before")))
	requireTCPReceives(t, inB, tcpMsg{"a", "before"})

	require.NoError(t, b.Close())
	require.Eventually(t, func() bool { return !a.Stats().Peers["b"].Connected }, tcpWait, tcpPoll,
		"a notices that b went away")

	b2 := newTCPTest(t, tcpTestConfig("b", c.addrs["b"], c.peersOf("b"), tcpTLS(t, c.dir, "b")))
	inB2 := newTCPInbox(b2, "k")
	require.NoError(t, b2.Broadcast(ctx, "k", []byte("b is back")))
	requireTCPReceives(t, inA, tcpMsg{"b", "b is back"})

	// Messages a broadcast while b was down may or may not arrive (best
	// effort); keep sending until one does.
	i := 0
	require.Eventually(t, func() bool {
		i++
		require.NoError(t, a.Broadcast(ctx, "k", []byte(fmt.Sprint("after ", i))))
		return len(inB2.all()) > 0
	}, tcpWait, 20*time.Millisecond)
	require.Positive(t, a.Stats().Peers["b"].Reconnects)
	require.Positive(t, a.Stats().Reconnects)
	require.True(t, a.Stats().Peers["b"].Connected)

	require.NoError(t, a.Close())
	require.NoError(t, b2.Close())
}

// tcpSlowPeer is a TLS server holding node id's certificate that completes
// handshakes and then never reads: a stuck peer.
func tcpSlowPeer(t *testing.T, dir, id string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tcpTLS(t, dir, id))
	require.NoError(t, err)
	tcpFakePeer(t, ln, func(net.Conn) {}) // never reads; closed at cleanup
	return ln.Addr().String()
}

// tcpFakePeer accepts TLS connections on ln until stop (or the test's
// cleanup): it completes each handshake, accepts the dialer as a transport
// does (the tcpAccepted byte), then hands the connection to serve. stop
// closes ln and every connection, and waits for its goroutines.
func tcpFakePeer(t *testing.T, ln net.Listener, serve func(net.Conn)) (stop func()) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if conn.(*tls.Conn).Handshake() == nil {
					_, _ = conn.Write([]byte{tcpAccepted})
					serve(conn)
				}
			}()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = ln.Close()
			mu.Lock()
			for _, c := range conns {
				_ = c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestTCPTransport_SlowPeerDoesNotBlock: a peer that never reads
// and a peer that is down cost Broadcast nothing; a healthy peer still gets
// every message the queue could hold, and the stuck ones' drops are counted.
func TestTCPTransport_SlowPeerDoesNotBlock(t *testing.T) {
	dir := tcpCerts(t, "a", "b", "slow", "dead")
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	peers := map[string]string{"b": addrB, "slow": tcpSlowPeer(t, dir, "slow"), "dead": tcpFreeAddr(t)}
	cfgA := tcpTestConfig("a", addrA, peers, tcpTLS(t, dir, "a"))
	cfgA.WriteTimeout = 500 * time.Millisecond
	a := newTCPTest(t, cfgA)
	b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, tcpTLS(t, dir, "b")))
	inB := newTCPInbox(b, "ping")
	require.Eventually(t, func() bool { return a.Stats().Peers["slow"].Connected }, tcpWait, tcpPoll)

	payload := make([]byte, 16<<10)
	const n = 3000 // 48 MiB: far more than socket buffers and the queue hold
	start := time.Now()
	for range n {
		require.NoError(t, a.Broadcast(context.Background(), "bulk", payload))
	}
	elapsed := time.Since(start)
	require.Less(t, elapsed, 5*time.Second, "%d broadcasts took %s", n, elapsed)

	i := 0
	require.Eventually(t, func() bool {
		i++
		require.NoError(t, a.Broadcast(context.Background(), "ping", []byte(fmt.Sprint(i))))
		return len(inB.all()) > 0
	}, tcpWait, 20*time.Millisecond, "b stays reachable")

	st := a.Stats()
	require.Positive(t, st.Peers["slow"].Dropped, "%+v", st)
	require.Positive(t, st.Peers["dead"].Dropped, "%+v", st)
	require.Positive(t, st.DialFailures)
	require.Equal(t, st.Peers["slow"].Dropped+st.Peers["dead"].Dropped+st.Peers["b"].Dropped, st.Dropped)
}

// TestTCPTransport_SendQueueBytes: a peer that is down holds at most
// SendQueueBytes of queued messages however many are broadcast (a bound
// that fits exactly k messages keeps k), and at most SendQueue messages; the
// rest are dropped and counted without being charged to the byte count.
// When the peer comes up it receives exactly the queued ones, and the byte
// count returns to zero.
func TestTCPTransport_SendQueueBytes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	payload := make([]byte, 1500)
	size := int64(tcpFramePrefixLen + tcpFrameBodyLen("k", payload))
	for _, tc := range []struct {
		name       string
		queue      int   // SendQueue
		queueBytes int64 // SendQueueBytes
		kept       int64
	}{
		{"bytes bound", 1000, 6 * size, 6},
		{"bytes bound between two sizes", 1000, 7*size - 1, 6},
		{"message bound", 2, 6 * size, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tcpCerts(t, "a", "b")
			addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
			cfg := tcpTestConfig("a", addrA, map[string]string{"b": addrB}, tcpTLS(t, dir, "a"))
			cfg.MaxMessageBytes, cfg.SendQueue, cfg.SendQueueBytes = 2000, tc.queue, int(tc.queueBytes)
			a := newTCPTest(t, cfg)

			const n = 20
			for i := range n {
				payload[0] = byte(i)
				require.NoError(t, a.Broadcast(context.Background(), "k", payload))
			}
			st := a.Stats().Peers["b"]
			require.False(t, st.Connected)
			require.EqualValues(t, tc.kept, st.Queued, "%+v", st)
			require.Equal(t, tc.kept*size, st.QueuedBytes, "%+v", st)
			require.EqualValues(t, n-tc.kept, st.Dropped, "%+v", st)

			b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, tcpTLS(t, dir, "b")))
			inB := newTCPInbox(b, "k")
			require.Eventually(t, func() bool { return len(inB.all()) == int(tc.kept) }, tcpWait, tcpPoll)
			for i, m := range inB.all() {
				require.EqualValues(t, i, m.payload[0], "the first messages were kept, in order")
			}
			require.Eventually(t, func() bool { return a.Stats().Peers["b"].QueuedBytes == 0 }, tcpWait, tcpPoll)
			require.NoError(t, a.Broadcast(context.Background(), "k", []byte("after")))
			requireTCPReceives(t, inB, tcpMsg{"a", "after"})
			// Sent counts a batch once its write returned, which may be
			// after the peer read it.
			require.Eventually(t, func() bool { return a.Stats().Peers["b"].Sent == uint64(tc.kept+1) }, tcpWait, tcpPoll,
				"sent: %+v", a.Stats().Peers["b"])
			require.NoError(t, b.Close())
			require.NoError(t, a.Close())
		})
	}
}

// TestTCPTransport_BroadcastErrors checks what Broadcast refuses.
func TestTCPTransport_BroadcastErrors(t *testing.T) {
	cfg := tcpTestConfig("a", "127.0.0.1:0", map[string]string{"b": tcpFreeAddr(t)}, nil)
	cfg.MaxMessageBytes = 100
	a := newTCPTest(t, cfg)
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	require.NoError(t, a.Broadcast(ctx, "k", make([]byte, 100-2-1)), "exactly at the limit")
	require.ErrorIs(t, a.Broadcast(ctx, "k", make([]byte, 100-2)), ErrTooLarge)
	require.ErrorIs(t, a.Broadcast(ctx, string(make([]byte, 256)), nil), ErrTooLarge)
	require.ErrorIs(t, a.Broadcast(ctx, "", nil), ErrMalformed)
	require.ErrorIs(t, a.Broadcast(cancelled, "k", nil), context.Canceled)
}

// TestTCPTransport_SingleNode: with no peers Broadcast sends nothing and
// succeeds.
func TestTCPTransport_SingleNode(t *testing.T) {
	a := newTCPTest(t, tcpTestConfig("solo", "127.0.0.1:0", nil, nil))
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("x")))
	require.Equal(t, []string{"solo"}, a.Validators())
	require.Empty(t, a.Stats().Peers)
}

// TestTCPTransport_CloseIdempotent: Close may be called many times, from
// many goroutines; all return nil after shutdown, and Broadcast then fails
// with ErrClosed (doc.go, Lifecycle).
func TestTCPTransport_CloseIdempotent(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := newTCPCluster(t, nil, "a", "b")
	a := c.nodes["a"]
	in := newTCPInbox(c.nodes["b"], "k")
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("x")))
	requireTCPReceives(t, in, tcpMsg{"a", "x"})

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { require.NoError(t, a.Close()) })
	}
	wg.Wait()
	require.NoError(t, a.Close())
	require.ErrorIs(t, a.Broadcast(context.Background(), "k", nil), ErrClosed)
	require.NotNil(t, a.Addr())
	_ = a.Stats()
	require.NoError(t, c.nodes["b"].Close())
}

// TestTCPTransport_ListenError: a busy address is reported, nothing leaks.
func TestTCPTransport_ListenError(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = NewTCPTransport(tcpTestConfig("a", ln.Addr().String(), nil, nil))
	require.Error(t, err)
}

func TestTCPConfig_Validate(t *testing.T) {
	dir := tcpCerts(t, "a")
	good := tcpTLS(t, dir, "a")
	base := func() TCPConfig {
		return TCPConfig{NodeID: "a", Listen: "127.0.0.1:0", Peers: map[string]string{"b": "127.0.0.1:1"}, TLS: good}
	}
	cases := []struct {
		name  string
		tweak func(*TCPConfig)
		ok    bool
	}{
		{"valid TLS", func(*TCPConfig) {}, true},
		{"valid insecure", func(c *TCPConfig) { c.TLS, c.Insecure = nil, true }, true},
		{"valid no peers", func(c *TCPConfig) { c.Peers = nil }, true},
		{"valid PQ curve preferences", func(c *TCPConfig) {
			c.TLS = good.Clone()
			c.TLS.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
		}, true},
		{"empty NodeID", func(c *TCPConfig) { c.NodeID = "" }, false},
		{"empty Listen", func(c *TCPConfig) { c.Listen = "" }, false},
		{"peers contain self", func(c *TCPConfig) { c.Peers["a"] = "127.0.0.1:2" }, false},
		{"empty peer ID", func(c *TCPConfig) { c.Peers[""] = "127.0.0.1:2" }, false},
		{"empty peer address", func(c *TCPConfig) { c.Peers["c"] = "" }, false},
		{"peer address without port", func(c *TCPConfig) { c.Peers["c"] = "localhost" }, false},
		{"Listen without port", func(c *TCPConfig) { c.Listen = "127.0.0.1" }, false},
		{"Insecure NodeID beyond the hello", func(c *TCPConfig) {
			c.TLS, c.Insecure, c.NodeID = nil, true, strings.Repeat("n", tcpMaxHelloID+1)
		}, false},
		{"Insecure peer ID beyond the hello", func(c *TCPConfig) {
			c.TLS, c.Insecure = nil, true
			c.Peers[strings.Repeat("p", tcpMaxHelloID+1)] = "127.0.0.1:2"
		}, false},
		{"certificate of another node", func(c *TCPConfig) { c.NodeID, c.Peers = "c", map[string]string{"b": "127.0.0.1:1"} }, false},
		{"certificate naming a peer too", func(c *TCPConfig) { c.NodeID, c.Peers = "c", map[string]string{"a": "127.0.0.1:1"} }, false},
		{"neither TLS nor Insecure", func(c *TCPConfig) { c.TLS = nil }, false},
		{"both TLS and Insecure", func(c *TCPConfig) { c.Insecure = true }, false},
		{"TLS without certificate", func(c *TCPConfig) { c.TLS = &tls.Config{RootCAs: good.RootCAs} }, false},
		{"TLS with server certificate only", func(c *TCPConfig) {
			c.TLS = &tls.Config{RootCAs: good.RootCAs, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &good.Certificates[0], nil }}
		}, false},
		{"TLS without RootCAs", func(c *TCPConfig) { c.TLS = &tls.Config{Certificates: good.Certificates} }, false},
		{"TLS 1.2 max", func(c *TCPConfig) { c.TLS = good.Clone(); c.TLS.MaxVersion = tls.VersionTLS12 }, false},
		{"classical-only curves", func(c *TCPConfig) {
			c.TLS = good.Clone()
			c.TLS.CurvePreferences = []tls.CurveID{tls.X25519}
		}, false},
		{"negative MaxMessageBytes", func(c *TCPConfig) { c.MaxMessageBytes = -1 }, false},
		{"huge MaxMessageBytes", func(c *TCPConfig) { c.MaxMessageBytes = maxTCPMessageBytes + 1 }, false},
		{"negative SendQueue", func(c *TCPConfig) { c.SendQueue = -1 }, false},
		{"negative SendQueueBytes", func(c *TCPConfig) { c.SendQueueBytes = -1 }, false},
		{"SendQueueBytes below the largest message", func(c *TCPConfig) {
			c.MaxMessageBytes, c.SendQueueBytes = 1000, 1000+tcpFramePrefixLen-1
		}, false},
		{"SendQueueBytes holding the largest message", func(c *TCPConfig) {
			c.MaxMessageBytes, c.SendQueueBytes = 1000, 1000+tcpFramePrefixLen
		}, true},
		{"SendQueueBytes below the default MaxMessageBytes", func(c *TCPConfig) { c.SendQueueBytes = 1 << 20 }, false},
		{"negative MaxHandshakes", func(c *TCPConfig) { c.MaxHandshakes = -1 }, false},
		{"negative DialTimeout", func(c *TCPConfig) { c.DialTimeout = -time.Second }, false},
		{"negative HandshakeTimeout", func(c *TCPConfig) { c.HandshakeTimeout = -time.Second }, false},
		{"negative MinBackoff", func(c *TCPConfig) { c.MinBackoff = -time.Second }, false},
		{"negative MaxBackoff", func(c *TCPConfig) { c.MaxBackoff = -time.Second }, false},
		{"negative WriteTimeout", func(c *TCPConfig) { c.WriteTimeout = -time.Second }, false},
		{"MinBackoff above MaxBackoff", func(c *TCPConfig) { c.MinBackoff, c.MaxBackoff = 2*time.Second, time.Second }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.tweak(&cfg)
			err := cfg.Validate()
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidConfig)
			tr, err := NewTCPTransport(cfg)
			require.ErrorIs(t, err, ErrInvalidConfig, "the constructor validates too")
			require.Nil(t, tr)
		})
	}

	t.Run("defaults applied before validation", func(t *testing.T) {
		cfg := base()
		cfg.MinBackoff = DefaultTCPMaxBackoff + time.Second // above the default max
		require.ErrorIs(t, cfg.Validate(), ErrInvalidConfig, "Validate judges as the constructor does")
		_, err := NewTCPTransport(cfg)
		require.ErrorIs(t, err, ErrInvalidConfig)
	})
	t.Run("SendQueueBytes defaults to at least the largest message", func(t *testing.T) {
		cfg := base()
		cfg.MaxMessageBytes = 128 << 20
		tr := newTCPTest(t, cfg)
		require.Equal(t, tcpFramePrefixLen+128<<20, tr.cfg.SendQueueBytes)
	})
	t.Run("caller's config untouched", func(t *testing.T) {
		cfg := base()
		tr := newTCPTest(t, cfg)
		require.Zero(t, cfg.SendQueue)
		require.Equal(t, DefaultTCPSendQueue, tr.cfg.SendQueue)
		require.Equal(t, DefaultTCPMaxMessageBytes, tr.cfg.MaxMessageBytes)
		require.Equal(t, DefaultTCPSendQueueBytes, tr.cfg.SendQueueBytes)
		require.Equal(t, DefaultTCPMaxHandshakes, tr.cfg.MaxHandshakes)
		cfg.Peers["c"] = "127.0.0.1:3"
		require.Equal(t, []string{"a", "b"}, tr.Validators(), "Peers was copied")
	})
}

// BenchmarkTCPTransport_Broadcast measures Broadcast from one node to two
// peers over mutual TLS on loopback, up to delivery: at most window
// messages are in flight per receiver, and the benchmark waits for the last
// one, so the figure is sustained throughput, not enqueueing.
func BenchmarkTCPTransport_Broadcast(b *testing.B) {
	for _, size := range []int{64, 1024, 16 << 10} {
		b.Run(fmt.Sprintf("peers=2/payload=%d", size), func(b *testing.B) {
			c := newTCPCluster(b, nil, "a", "b", "c")
			const window = 256 // below SendQueue, so nothing is dropped
			semB, semC := make(chan struct{}, window), make(chan struct{}, window)
			c.nodes["b"].OnReceive("bench", func([]byte) error { <-semB; return nil })
			c.nodes["c"].OnReceive("bench", func([]byte) error { <-semC; return nil })
			a := c.nodes["a"]
			payload := make([]byte, size)
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for range b.N {
				semB <- struct{}{}
				semC <- struct{}{}
				if err := a.Broadcast(ctx, "bench", payload); err != nil {
					b.Fatal(err)
				}
			}
			for range window { // wait, timed, until everything was delivered
				semB <- struct{}{}
				semC <- struct{}{}
			}
			b.StopTimer()
			if d := a.Stats().Dropped; d != 0 {
				b.Fatalf("%d messages dropped", d)
			}
		})
	}
}

// TestTCPTransport_SteadyReaderNotCutOff: WriteTimeout bounds each write
// to the socket, not a whole batch: a peer that takes longer than
// WriteTimeout to read a backlog, but keeps reading, is never disconnected
// and gets every message.
func TestTCPTransport_SteadyReaderNotCutOff(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	cfgA := tcpTestConfig("a", addrA, map[string]string{"b": addrB}, nil)
	cfgA.WriteTimeout = 300 * time.Millisecond
	a := newTCPTest(t, cfgA)
	b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, nil))
	var got atomic.Int64
	b.OnReceive("bulk", func([]byte) error {
		time.Sleep(10 * time.Millisecond) // about 25 MiB/s: 100 messages take a second
		got.Add(1)
		return nil
	})
	require.Eventually(t, func() bool { return a.Stats().Peers["b"].Connected }, tcpWait, tcpPoll)
	const n = 100
	payload := make([]byte, 256<<10) // 25 MiB in all: more than socket buffers hold
	for range n {
		require.NoError(t, a.Broadcast(context.Background(), "bulk", payload))
	}
	require.Eventually(t, func() bool { return got.Load() == n }, 4*tcpWait, tcpPoll, "%d of %d delivered; %+v", got.Load(), n, a.Stats())
	require.Zero(t, a.Stats().Reconnects)
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
}
