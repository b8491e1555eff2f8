package replication

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// This file holds the TCP transport's authentication tests: mutual TLS
// refusals, bad input before and after the handshake, the post-quantum key
// exchange, plaintext mode, and the bounds on handshakes in flight.

// tcpRequireRefusedBothWays waits until a and impostor have each refused
// the other at least twice, then checks that nothing was delivered.
func tcpRequireRefusedBothWays(t *testing.T, a, impostor *TCPTransport) {
	t.Helper()
	inA, inImp := newTCPInbox(a, "k"), newTCPInbox(impostor, "k")
	ctx := context.Background()
	require.NoError(t, a.Broadcast(ctx, "k", []byte("secret")))
	require.NoError(t, impostor.Broadcast(ctx, "k", []byte("forged")))
	require.Eventually(t, func() bool {
		return a.Stats().HandshakeFailures >= 2 && impostor.Stats().HandshakeFailures >= 2
	}, tcpWait, tcpPoll, "a: %+v impostor: %+v", a.Stats(), impostor.Stats())
	require.Empty(t, inA.all())
	require.Empty(t, inImp.all())
	require.Zero(t, a.Stats().Received)
	require.Zero(t, impostor.Stats().Received)
}

// TestTCPTransport_RefusesUntrustedCA: a node whose certificate comes from
// another CA is refused in both directions.
func TestTCPTransport_RefusesUntrustedCA(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	good, evil := tcpCerts(t, "a", "b"), tcpCerts(t, "a", "b")
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	a := newTCPTest(t, tcpTestConfig("a", addrA, map[string]string{"b": addrB}, tcpTLS(t, good, "a")))
	b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, tcpTLS(t, evil, "b")))
	tcpRequireRefusedBothWays(t, a, b)
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
}

// TestTCPTransport_RefusesWrongNodeID: a valid certificate for "x" at the
// address of peer "b" is refused when a dials it (not the peer expected),
// and x is refused when it dials a (not a configured peer).
func TestTCPTransport_RefusesWrongNodeID(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := tcpCerts(t, "a", "b", "x")
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	a := newTCPTest(t, tcpTestConfig("a", addrA, map[string]string{"b": addrB}, tcpTLS(t, dir, "a")))
	x := newTCPTest(t, tcpTestConfig("x", addrB, map[string]string{"a": addrA}, tcpTLS(t, dir, "x")))
	tcpRequireRefusedBothWays(t, a, x)
	require.NoError(t, a.Close())
	require.NoError(t, x.Close())
}

// tcpDialAs opens a TLS connection to addr presenting node id's certificate
// from dir, the way a peer (or an impostor holding a peer's key) would.
func tcpDialAs(t *testing.T, dir, id, serverID, addr string) *tls.Conn {
	t.Helper()
	cfg := tcpTLS(t, dir, id)
	cfg.ServerName = serverID // the dev certificates carry the node ID as DNS SAN
	conn, err := (&tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: tcpWait}}).Dial("tcp", addr)
	require.NoError(t, err)
	return conn.(*tls.Conn)
}

// tcpRequireClosedByPeer reads from conn until the other side closes it.
func tcpRequireClosedByPeer(t *testing.T, conn net.Conn) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(tcpWait)))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok {
		require.False(t, ne.Timeout(), "the transport should have closed the connection")
	}
}

// TestTCPTransport_RefusesBadInput covers bad input on the wire: plaintext
// and garbage against the TLS listener, and authenticated peers that send
// an oversized length prefix, garbage, a wrong version or a stray hello.
// Each is disconnected and counted, nothing panics, and another peer's
// messages still flow.
func TestTCPTransport_RefusesBadInput(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const limit = 1024
	c := newTCPCluster(t, func(cfg *TCPConfig) { cfg.MaxMessageBytes = limit }, "a", "b", "c")
	a := c.nodes["a"]
	inA := newTCPInbox(a, "k")
	// b's transport is gone; the tests below dial a with b's certificate.
	// Wait for the handshakes first, so that closing b cannot fail one.
	c.waitConnected(t)
	require.NoError(t, c.nodes["b"].Close())

	rng := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	garbage[0] = 0x7f // a length prefix far above the limit

	cases := []struct {
		name      string
		tls       bool   // complete a TLS handshake as b first
		send      []byte // then send this
		handshake bool   // counted as handshake failure (else malformed)
	}{
		{"plaintext client", false, appendTCPFrame(nil, "", []byte("b")), true},
		{"garbage before handshake", false, garbage, true},
		{"length prefix above limit", true, tcpFrameHeader(limit+1, tcpFrameVersion, 1), false},
		{"huge length prefix", true, tcpFrameHeader(0xffffffff, tcpFrameVersion, 1), false},
		{"garbage after handshake", true, garbage, false},
		{"wrong version", true, append(tcpFrameHeader(3, 9, 1), 'k'), false},
		{"hello after handshake", true, appendTCPFrame(nil, "", []byte("c")), false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := a.Stats()
			var conn net.Conn
			if tc.tls {
				conn = tcpDialAs(t, c.dir, "b", "a", c.addrs["a"])
			} else {
				var err error
				conn, err = net.DialTimeout("tcp", c.addrs["a"], tcpWait)
				require.NoError(t, err)
			}
			defer conn.Close()
			_, _ = conn.Write(tc.send) // may fail if a already hung up
			tcpRequireClosedByPeer(t, conn)

			require.Eventually(t, func() bool {
				st := a.Stats()
				if tc.handshake {
					return st.HandshakeFailures > before.HandshakeFailures
				}
				return st.Malformed > before.Malformed
			}, tcpWait, tcpPoll)

			// The others are unaffected.
			msg := fmt.Sprint("still here ", i)
			require.NoError(t, c.nodes["c"].Broadcast(context.Background(), "k", []byte(msg)))
			requireTCPReceives(t, inA, tcpMsg{"c", msg})
		})
	}
	for _, n := range c.nodes {
		require.NoError(t, n.Close())
	}
}

// TestTCPTransport_RefusesUntrustedClient: a client with a certificate from
// another CA, dialing directly, is refused during the handshake.
func TestTCPTransport_RefusesUntrustedClient(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := newTCPCluster(t, nil, "a", "b")
	evil := tcpCerts(t, "b")
	cfg := tcpTLS(t, evil, "b")
	cfg.InsecureSkipVerify = true // the impostor does not care who a is
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: tcpWait}, "tcp", c.addrs["a"], cfg)
	if err == nil { // TLS 1.3: the client may finish before the server refuses it
		_, _ = conn.Write(appendTCPFrame(nil, "k", []byte("forged")))
		tcpRequireClosedByPeer(t, conn)
		_ = conn.Close()
	}
	require.Eventually(t, func() bool { return c.nodes["a"].Stats().HandshakeFailures >= 1 }, tcpWait, tcpPoll)
	require.Zero(t, c.nodes["a"].Stats().Received)
	for _, n := range c.nodes {
		require.NoError(t, n.Close())
	}
}

// TestTCPTransport_PostQuantumKeyExchange: connections negotiate TLS 1.3
// with Go's default hybrid post-quantum key exchange, X25519MLKEM768.
func TestTCPTransport_PostQuantumKeyExchange(t *testing.T) {
	c := newTCPCluster(t, nil, "a", "b")
	b := c.nodes["b"]
	// Dial a with the exact client config b's writer uses for a.
	var cfg *tls.Config
	for _, p := range b.peers {
		if p.id == "a" {
			cfg = p.tlsConfig
		}
	}
	require.NotNil(t, cfg)
	require.Nil(t, cfg.CurvePreferences)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: tcpWait}, "tcp", c.addrs["a"], cfg)
	require.NoError(t, err)
	defer conn.Close()
	cs := conn.ConnectionState()
	require.Equal(t, uint16(tls.VersionTLS13), cs.Version)
	require.Equal(t, tls.X25519MLKEM768, cs.CurveID, "got %v", cs.CurveID)
	require.Equal(t, "a", cs.PeerCertificates[0].Subject.CommonName)
}

// TestTCPTransport_HandshakeFloodEvictsOldest: connections that stall
// their handshake hold at most MaxHandshakes slots, a new one closing the
// oldest; and while such a flood goes on, a real peer still gets in.
func TestTCPTransport_HandshakeFloodEvictsOldest(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := tcpCerts(t, "a", "b")
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	cfg := tcpTestConfig("a", addrA, map[string]string{"b": addrB}, tcpTLS(t, dir, "a"))
	cfg.MaxHandshakes = 8
	cfg.HandshakeTimeout = time.Minute // stalled connections keep their slots
	a := newTCPTest(t, cfg)
	inA := newTCPInbox(a, "k")

	var mu sync.Mutex
	var stalled []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range stalled {
			_ = conn.Close()
		}
	}()
	stall := func() net.Conn { // may run on the flood goroutine: no require
		conn, err := net.DialTimeout("tcp", addrA, tcpWait)
		if !assert.NoError(t, err) {
			return nil
		}
		mu.Lock()
		stalled = append(stalled, conn)
		mu.Unlock()
		return conn
	}
	first := stall()
	for range cfg.MaxHandshakes - 1 {
		stall()
	}
	require.Never(t, func() bool { return a.Stats().Shed > 0 }, 100*time.Millisecond, tcpPoll)
	stall() // one more: the first makes room
	tcpRequireClosedByPeer(t, first)
	require.Eventually(t, func() bool { return a.Stats().Shed == 1 }, tcpWait, tcpPoll)

	// A flood that keeps every slot taken does not keep b out: b's
	// handshake completes before MaxHandshakes newer connections come.
	stop := make(chan struct{})
	var flood sync.WaitGroup
	flood.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				stall()
			}
		}
	})
	b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, tcpTLS(t, dir, "b")))
	require.Eventually(t, func() bool { return b.Stats().Peers["a"].Connected }, tcpWait, tcpPoll)
	require.NoError(t, b.Broadcast(context.Background(), "k", []byte("in")))
	requireTCPReceives(t, inA, tcpMsg{"b", "in"})
	close(stop)
	flood.Wait()
	st := a.Stats()
	require.Greater(t, st.Shed, uint64(1), "%+v", st)
	require.Zero(t, st.HandshakeFailures, "evicted connections count as shed, not as failed handshakes: %+v", st)
	require.NoError(t, b.Close())
	require.NoError(t, a.Close())
}

// TestTCPTransport_MaxHandshakesSparesEstablished: a connection leaves the
// handshaking set once authenticated, so newer connections never evict it,
// even with a single slot.
func TestTCPTransport_MaxHandshakesSparesEstablished(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := newTCPCluster(t, func(cfg *TCPConfig) {
		cfg.MaxHandshakes = 1
		cfg.HandshakeTimeout = time.Minute
	}, "a", "b", "c")
	c.waitConnected(t) // b and c may evict each other's first try at a
	a := c.nodes["a"]
	shed := a.Stats().Shed
	reconnects := map[string]uint64{"b": c.nodes["b"].Stats().Reconnects, "c": c.nodes["c"].Stats().Reconnects}

	// Two stalled connections: the second evicts the first, and neither
	// evicts b's or c's established connection to a.
	for range 2 {
		conn, err := net.DialTimeout("tcp", c.addrs["a"], tcpWait)
		require.NoError(t, err)
		defer conn.Close()
	}
	require.Eventually(t, func() bool { return a.Stats().Shed == shed+1 }, tcpWait, tcpPoll)
	inA := newTCPInbox(a, "k")
	for _, id := range []string{"b", "c"} {
		require.NoError(t, c.nodes[id].Broadcast(context.Background(), "k", []byte(id)))
		requireTCPReceives(t, inA, tcpMsg{id, id})
		require.Equal(t, reconnects[id], c.nodes[id].Stats().Reconnects, "%s's connection to a was cut", id)
	}
	require.Never(t, func() bool { return a.Stats().Shed > shed+1 }, 100*time.Millisecond, tcpPoll)
	for _, n := range c.nodes {
		require.NoError(t, n.Close())
	}
}

// TestTCPTransport_Insecure: plaintext mode for loopback tests works, and a
// hello naming an unknown node or a missing hello is refused.
func TestTCPTransport_Insecure(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
	a := newTCPTest(t, tcpTestConfig("a", addrA, map[string]string{"b": addrB}, nil))
	b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"a": addrA}, nil))
	inA, inB := newTCPInbox(a, "k"), newTCPInbox(b, "k")
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("to b")))
	require.NoError(t, b.Broadcast(context.Background(), "k", []byte("to a")))
	requireTCPReceives(t, inB, tcpMsg{"a", "to b"})
	requireTCPReceives(t, inA, tcpMsg{"b", "to a"})

	for i, first := range [][]byte{
		appendTCPFrame(nil, "", []byte("stranger")), // unknown node
		appendTCPFrame(nil, "k", []byte("hi")),      // no hello
		tcpFrameHeader(1<<20, tcpFrameVersion, 0),   // hello above its limit
	} {
		conn, err := net.DialTimeout("tcp", addrA, tcpWait)
		require.NoError(t, err)
		_, _ = conn.Write(first)
		tcpRequireClosedByPeer(t, conn)
		require.NoError(t, conn.Close())
		require.Eventually(t, func() bool { return a.Stats().HandshakeFailures == uint64(i+1) }, tcpWait, tcpPoll)
	}
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
}

// TestTCPTransport_HandshakeTimeout: a client that connects and says nothing
// is disconnected after HandshakeTimeout.
func TestTCPTransport_HandshakeTimeout(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := tcpCerts(t, "a", "b")
	cfg := tcpTestConfig("a", "127.0.0.1:0", map[string]string{"b": tcpFreeAddr(t)}, tcpTLS(t, dir, "a"))
	cfg.HandshakeTimeout = 100 * time.Millisecond
	a := newTCPTest(t, cfg)
	conn, err := net.DialTimeout("tcp", a.Addr().String(), tcpWait)
	require.NoError(t, err)
	defer conn.Close()
	tcpRequireClosedByPeer(t, conn)
	require.Eventually(t, func() bool { return a.Stats().HandshakeFailures == 1 }, tcpWait, tcpPoll)
	require.NoError(t, a.Close())
}

// TestTCPTransport_RefusedDialerKnowsIt: with TLS 1.3 a dialer's handshake
// completes before the peer checks its certificate, so the dialer waits for
// the peer's acceptance byte: a dialer its peer refuses counts handshake
// failures, never counts itself connected, and counts nothing as sent.
func TestTCPTransport_RefusedDialerKnowsIt(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			dir := tcpCerts(t, "a", "b", "c")
			conf := func(id string) *tls.Config {
				if insecure {
					return nil
				}
				return tcpTLS(t, dir, id)
			}
			addrA, addrB := tcpFreeAddr(t), tcpFreeAddr(t)
			a := newTCPTest(t, tcpTestConfig("a", addrA, map[string]string{"b": addrB}, conf("a")))
			// b knows only c: it refuses a.
			b := newTCPTest(t, tcpTestConfig("b", addrB, map[string]string{"c": tcpFreeAddr(t)}, conf("b")))
			for range 20 {
				require.NoError(t, a.Broadcast(context.Background(), "k", []byte("x")))
			}
			require.Eventually(t, func() bool {
				return a.Stats().HandshakeFailures >= 2 && b.Stats().HandshakeFailures >= 2
			}, tcpWait, tcpPoll, "a: %+v b: %+v", a.Stats(), b.Stats())
			st := a.Stats()
			require.Zero(t, st.Sent, "%+v", st)
			require.Zero(t, st.Reconnects, "%+v", st)
			require.False(t, st.Peers["b"].Connected)
			require.Zero(t, b.Stats().Received)
			require.NoError(t, a.Close())
			require.NoError(t, b.Close())
		})
	}
}

// tcpIssueCert signs a certificate for the given names with the dev CA in
// dir, as a careless CA might, and returns it as a tls.Certificate.
func tcpIssueCert(t *testing.T, dir, cn string, dnsNames ...string) tls.Certificate {
	t.Helper()
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTCPTransport_RefusesCertificateNamingTwoNodes: a certificate from the
// cluster CA that names two configured nodes could pass for either, so it
// is refused both when it dials a node and when a node dials it.
func TestTCPTransport_RefusesCertificateNamingTwoNodes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := tcpCerts(t, "a", "b", "c")
	two := tcpIssueCert(t, dir, "b", "b", "c")
	evil := tcpTLS(t, dir, "b")
	evil.Certificates = []tls.Certificate{two}

	addrB := tcpFreeAddr(t)
	a := newTCPTest(t, tcpTestConfig("a", "127.0.0.1:0", map[string]string{"b": addrB, "c": tcpFreeAddr(t)}, tcpTLS(t, dir, "a")))

	// Inbound: the certificate dials a.
	cfg := evil.Clone()
	cfg.ServerName = "a"
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: tcpWait}, "tcp", a.Addr().String(), cfg)
	if err == nil { // TLS 1.3: the client finishes first; the refusal follows
		tcpRequireClosedByPeer(t, conn)
		_ = conn.Close()
	}
	require.Eventually(t, func() bool { return a.Stats().HandshakeFailures >= 1 }, tcpWait, tcpPoll)

	// Outbound: a dials the certificate at b's address.
	ln, err := tls.Listen("tcp", addrB, &tls.Config{Certificates: []tls.Certificate{two}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13})
	require.NoError(t, err)
	stop := tcpFakePeer(t, ln, func(c net.Conn) { _ = c.Close() })
	before := a.Stats().HandshakeFailures
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("secret")))
	require.Eventually(t, func() bool { return a.Stats().HandshakeFailures >= before+2 }, tcpWait, tcpPoll, "%+v", a.Stats())
	require.Zero(t, a.Stats().Sent)
	require.NoError(t, a.Close())
	stop()
}
