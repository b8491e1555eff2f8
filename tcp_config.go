package replication

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"
)

// This file holds TCPTransport's configuration: TCPConfig, its defaults
// and its validation.

// Defaults used by NewTCPTransport for zero TCPConfig fields.
const (
	// DefaultTCPMaxMessageBytes is the default TCPConfig.MaxMessageBytes:
	// 4 MiB per frame.
	DefaultTCPMaxMessageBytes = 4 << 20
	// DefaultTCPSendQueue is the default TCPConfig.SendQueue: messages
	// queued per peer before Broadcast starts dropping for that peer.
	DefaultTCPSendQueue = 1024
	// DefaultTCPSendQueueBytes is the default TCPConfig.SendQueueBytes:
	// 64 MiB of messages queued per peer (or MaxMessageBytes, when that is
	// larger).
	DefaultTCPSendQueueBytes = 64 << 20
	// DefaultTCPMaxHandshakes is the default TCPConfig.MaxHandshakes.
	DefaultTCPMaxHandshakes = 64
	// DefaultTCPDialTimeout is the default TCPConfig.DialTimeout.
	DefaultTCPDialTimeout = 2 * time.Second
	// DefaultTCPHandshakeTimeout is the default TCPConfig.HandshakeTimeout.
	DefaultTCPHandshakeTimeout = 5 * time.Second
	// DefaultTCPMinBackoff is the default TCPConfig.MinBackoff.
	DefaultTCPMinBackoff = 50 * time.Millisecond
	// DefaultTCPMaxBackoff is the default TCPConfig.MaxBackoff.
	DefaultTCPMaxBackoff = 2 * time.Second
	// DefaultTCPWriteTimeout is the default TCPConfig.WriteTimeout.
	DefaultTCPWriteTimeout = 5 * time.Second

	// maxTCPMessageBytes is the largest MaxMessageBytes Validate accepts.
	maxTCPMessageBytes = 1 << 30
	// tcpHelloLimit bounds the plaintext hello frame (kind "" and a node
	// ID), independently of MaxMessageBytes.
	tcpHelloLimit = tcpFrameMinBody + tcpMaxHelloID
	tcpMaxHelloID = 1024
	// tcpReadBufferSize and tcpWriteBufferSize size the bufio buffers of a
	// connection.
	tcpReadBufferSize  = 32 << 10
	tcpWriteBufferSize = 64 << 10
	// tcpMaxBatch bounds how many queued messages a writer buffers before
	// it flushes.
	tcpMaxBatch = 256
	// tcpAcceptMinBackoff and tcpAcceptMaxBackoff bound the accept loop's
	// retry delay after a failed Accept.
	tcpAcceptMinBackoff = 5 * time.Millisecond
	tcpAcceptMaxBackoff = time.Second
)

// TCPConfig configures a TCPTransport. The zero value of every tuning field
// means "use the default"; NewTCPTransport fills defaults into its own copy
// (with its own copy of Peers and clones of TLS) and never modifies the
// caller's config, so you may reuse or change it afterwards. A TCPConfig is a
// plain value: reading it from several goroutines is safe, writing it
// concurrently is not.
type TCPConfig struct {
	// NodeID is this node's ID, as named by its certificate. Required.
	NodeID string

	// Listen is the host:port the transport listens on for connections
	// from peers, for example "10.0.0.1:7946" or "127.0.0.1:0" (port 0
	// picks a free port; see TCPTransport.Addr). Required.
	Listen string

	// Peers maps the node ID of every other validator to its host:port.
	// It must not contain NodeID. An empty map makes a single-node
	// transport whose Broadcast sends nothing.
	Peers map[string]string

	// TLS is the mutual-TLS configuration: Certificates (this node's
	// certificate, whose Subject CommonName or a DNS SAN is NodeID, and
	// which names no peer),
	// RootCAs (the CA that signs peer certificates, used to check peers
	// this node dials; required, the system roots are never used) and
	// ClientCAs (used to check peers that dial this node; nil means
	// RootCAs). LoadTLSConfig builds one.
	//
	// A peer's certificate must chain to the CA and name, in its CommonName
	// or in a DNS SAN, the node ID expected (the peer dialed, or any
	// configured peer for inbound connections) and no other configured
	// node: a certificate that names two could pass for either, and is
	// refused. Names that are not node IDs (say, a host name) are ignored.
	// The transport works on a clone and sets MinVersion to TLS 1.3,
	// ClientAuth to RequireAndVerifyClientCert, SessionTicketsDisabled,
	// ServerName (the peer's node ID), clears GetConfigForClient (which
	// would bypass these settings), and replaces hostname verification by
	// the node-ID check above (InsecureSkipVerify plus its own chain
	// verification in VerifyConnection; a VerifyConnection you set still
	// runs afterwards).
	// Leave CurvePreferences nil so Go's default post-quantum hybrid key
	// exchange (X25519MLKEM768) is used; Validate refuses preferences
	// without it.
	//
	// Exactly one of TLS and Insecure must be set.
	TLS *tls.Config

	// Insecure selects plaintext TCP with no authentication at all: each
	// dialer announces its node ID (at most 1 KiB) in a hello frame and is
	// believed. It is
	// UNSAFE outside loopback tests: anyone who can reach the port can
	// impersonate any validator and read every message. Refused together
	// with TLS.
	Insecure bool

	// MaxMessageBytes is the largest frame (version, kind and payload: the
	// value of the length prefix) sent or accepted. Broadcast refuses
	// larger messages with ErrTooLarge; a peer that announces a larger
	// frame is disconnected and counted as malformed. Zero means
	// DefaultTCPMaxMessageBytes (4 MiB); at most 1 GiB.
	MaxMessageBytes int

	// SendQueue is the number of messages queued per peer. When a peer's
	// queue is full (the peer is slow, down, or unreachable) Broadcast
	// drops the message for that peer and counts it. Zero means
	// DefaultTCPSendQueue (1024).
	SendQueue int

	// SendQueueBytes bounds the bytes of the messages queued per peer, so
	// that a dead peer holds at most this much memory however large the
	// messages are: a message that would take a peer's queue beyond it is
	// dropped for that peer and counted, like one that finds the queue
	// full. Zero means DefaultTCPSendQueueBytes (64 MiB), or
	// MaxMessageBytes plus its 4-byte prefix when that is larger; a value
	// below that is refused, since a message of the largest size could
	// never be queued.
	SendQueueBytes int

	// MaxHandshakes bounds the inbound connections that are handshaking
	// (TLS, or the plaintext hello) at once. Anyone who can reach the port
	// can open connections and stall their handshakes until
	// HandshakeTimeout; when MaxHandshakes are handshaking, a new
	// connection makes the oldest of them close (counted in
	// TCPStats.Shed), so such a flood costs bounded memory and goroutines.
	// Evicting the oldest rather than refusing the newest keeps peers able
	// to connect during a flood: a peer's handshake is cut short only if
	// MaxHandshakes newer connections arrive before it completes (it then
	// redials with backoff). Zero means DefaultTCPMaxHandshakes (64).
	MaxHandshakes int

	// DialTimeout bounds establishing the TCP connection to a peer. Zero
	// means DefaultTCPDialTimeout (2s).
	DialTimeout time.Duration

	// HandshakeTimeout bounds the TLS handshake (or the plaintext hello)
	// on both outbound and inbound connections; a peer that does not
	// complete it in time is disconnected and counted. Zero means
	// DefaultTCPHandshakeTimeout (5s).
	HandshakeTimeout time.Duration

	// MinBackoff and MaxBackoff bound the delay between attempts to
	// (re)connect to a peer: it starts at MinBackoff, doubles on each
	// failure up to MaxBackoff, and each wait is drawn uniformly from
	// [d/2, d] (jitter). Zero means DefaultTCPMinBackoff (50ms) and
	// DefaultTCPMaxBackoff (2s); MinBackoff must not exceed MaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// WriteTimeout bounds each write to a peer's socket (a buffer's worth
	// of queued messages, or less); a peer that does not take it in time is
	// disconnected and redialed. Zero means DefaultTCPWriteTimeout (5s).
	WriteTimeout time.Duration

	// Logger receives connection events: Warn for refused peers
	// (handshake failures, wrong identity, which anyone who can reach the
	// port can trigger), malformed frames and the first queue overflow of
	// each peer; Info for each peer connection up or down (either
	// direction) and the first failed dial of an outage; Debug for every
	// further dial failure. Nil means silent.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with defaults filled in and Peers copied.
func (c TCPConfig) withDefaults() TCPConfig {
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, DefaultTCPMaxMessageBytes)
	c.SendQueue = cmp.Or(c.SendQueue, DefaultTCPSendQueue)
	c.SendQueueBytes = cmp.Or(c.SendQueueBytes, max(DefaultTCPSendQueueBytes, tcpFramePrefixLen+c.MaxMessageBytes))
	c.MaxHandshakes = cmp.Or(c.MaxHandshakes, DefaultTCPMaxHandshakes)
	c.DialTimeout = cmp.Or(c.DialTimeout, DefaultTCPDialTimeout)
	c.HandshakeTimeout = cmp.Or(c.HandshakeTimeout, DefaultTCPHandshakeTimeout)
	c.MinBackoff = cmp.Or(c.MinBackoff, DefaultTCPMinBackoff)
	c.MaxBackoff = cmp.Or(c.MaxBackoff, DefaultTCPMaxBackoff)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, DefaultTCPWriteTimeout)
	peers := make(map[string]string, len(c.Peers))
	for id, addr := range c.Peers {
		peers[id] = addr
	}
	c.Peers = peers
	return c
}

// Validate reports whether c is usable, exactly as NewTCPTransport judges
// it. Zero tuning fields are valid (they mean the defaults). Every error
// wraps ErrInvalidConfig and names the offending values. Validate does not
// modify c and is safe for concurrent use.
func (c TCPConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: tcp: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.NodeID == "" {
		return bad("empty NodeID")
	}
	if c.Listen == "" {
		return bad("empty Listen address for node %q", c.NodeID)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("Listen address %q: %v", c.Listen, err)
	}
	for id, addr := range c.Peers {
		switch {
		case id == "":
			return bad("Peers contains an empty node ID (address %q)", addr)
		case id == c.NodeID:
			return bad("Peers contains NodeID %q itself", id)
		case addr == "":
			return bad("empty address for peer %q", id)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return bad("address of peer %q: %v", id, err)
		}
		if c.Insecure && len(id) > tcpMaxHelloID {
			return bad("peer ID of %d bytes exceeds the %d an Insecure hello carries", len(id), tcpMaxHelloID)
		}
	}
	if c.Insecure && len(c.NodeID) > tcpMaxHelloID {
		return bad("NodeID of %d bytes exceeds the %d an Insecure hello carries", len(c.NodeID), tcpMaxHelloID)
	}
	switch {
	case c.TLS == nil && !c.Insecure:
		return bad("neither TLS nor Insecure set")
	case c.TLS != nil && c.Insecure:
		return bad("both TLS and Insecure set")
	}
	if c.TLS != nil {
		if len(c.TLS.Certificates) == 0 && (c.TLS.GetCertificate == nil || c.TLS.GetClientCertificate == nil) {
			return bad("TLS config has no certificate for node %q (set Certificates, or both GetCertificate and GetClientCertificate)", c.NodeID)
		}
		if len(c.TLS.Certificates) > 0 {
			leaf, err := tlsLeaf(&c.TLS.Certificates[0])
			if err != nil {
				return bad("TLS certificate of node %q: %v", c.NodeID, err)
			}
			if !certNamesNode(leaf, c.NodeID) {
				return bad("TLS certificate names %q, not NodeID %q", certNodeNames(leaf), c.NodeID)
			}
			for _, name := range certNodeNames(leaf) {
				if _, ok := c.Peers[name]; ok {
					return bad("TLS certificate of node %q also names peer %q (peers refuse it)", c.NodeID, name)
				}
			}
		}
		if c.TLS.RootCAs == nil {
			return bad("TLS config has no RootCAs (peer certificates are never checked against system roots)")
		}
		if c.TLS.MaxVersion != 0 && c.TLS.MaxVersion < tls.VersionTLS13 {
			return bad("TLS MaxVersion %#x below TLS 1.3", c.TLS.MaxVersion)
		}
		if len(c.TLS.CurvePreferences) > 0 && !slices.Contains(c.TLS.CurvePreferences, tls.X25519MLKEM768) {
			return bad("TLS CurvePreferences %v lack X25519MLKEM768 (leave them nil)", c.TLS.CurvePreferences)
		}
	}
	if c.MaxMessageBytes < 0 || c.MaxMessageBytes > maxTCPMessageBytes {
		return bad("MaxMessageBytes %d not in 0..%d", c.MaxMessageBytes, maxTCPMessageBytes)
	}
	if c.SendQueue < 0 {
		return bad("negative SendQueue %d", c.SendQueue)
	}
	if c.SendQueueBytes < 0 {
		return bad("negative SendQueueBytes %d", c.SendQueueBytes)
	}
	// Judged against MaxMessageBytes as NewTCPTransport will use it.
	if largest := tcpFramePrefixLen + cmp.Or(c.MaxMessageBytes, DefaultTCPMaxMessageBytes); c.SendQueueBytes != 0 && c.SendQueueBytes < largest {
		return bad("SendQueueBytes %d below %d, the largest message with its prefix (MaxMessageBytes %d; a zero one is its default)",
			c.SendQueueBytes, largest, cmp.Or(c.MaxMessageBytes, DefaultTCPMaxMessageBytes))
	}
	if c.MaxHandshakes < 0 {
		return bad("negative MaxHandshakes %d", c.MaxHandshakes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"DialTimeout", c.DialTimeout},
		{"HandshakeTimeout", c.HandshakeTimeout},
		{"MinBackoff", c.MinBackoff},
		{"MaxBackoff", c.MaxBackoff},
		{"WriteTimeout", c.WriteTimeout},
	} {
		if d.v < 0 {
			return bad("negative %s %s", d.name, d.v)
		}
	}
	// Compared as NewTCPTransport will use them: a zero one is its default.
	if lo, hi := cmp.Or(c.MinBackoff, DefaultTCPMinBackoff), cmp.Or(c.MaxBackoff, DefaultTCPMaxBackoff); lo > hi {
		return bad("MinBackoff %s > MaxBackoff %s (a zero one is its default)", lo, hi)
	}
	return nil
}
