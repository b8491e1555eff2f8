package replication

// TCPTransport: the network Transport.
//
// # Connections
//
// Every ordered pair of nodes uses its own connection: node a sends to b only
// over the connection a dialed to b, and receives from b only over the
// connection b dialed to a. So each pair of nodes holds two TCP connections,
// one per direction, as hashicorp/raft's NetworkTransport pools outbound
// connections and serves inbound ones separately. This keeps each connection
// one-way and simple (a writer on one end, a reader on the other, no
// request/response matching, no tie-breaking when both sides dial at once),
// and makes the sender of every inbound message the identity that
// authenticated the connection.
//
// # Threads
//
// Goroutines of a TCPTransport, all started by NewTCPTransport or by the
// accept loop, all tied to t.wg, so Close returns only after every one of
// them exited:
//
//   - accept loop (one): owns the listener and its shed-log state. It
//     accepts connections and starts a reader for each; when MaxHandshakes
//     connections are handshaking already, it first closes the oldest of
//     them (t.handshaking, under mu), whose reader then ends at once. On a
//     temporary error it retries with capped exponential backoff. Close
//     closes the listener, which ends it.
//   - per-peer writer (one per configured peer): owns the peer's outbound
//     connection, its bufio.Writer and its backoff state. It dials (with
//     backoff and jitter, capped), then drains the peer's send queue
//     (bounded in messages by SendQueue and in bytes by SendQueueBytes)
//     onto the connection, batching whatever is queued into one flush. On a
//     write error or when the peer closes the connection it redials. Close
//     cancels t.ctx (which wakes it from the queue, the dial and the backoff
//     sleep) and closes its connection (which interrupts a blocked write).
//   - per-outbound-connection watcher (one per live outbound connection,
//     started and waited for by the writer): reads and discards from the
//     outbound connection, only to notice promptly when the peer closes it.
//     It ends when the connection is closed.
//   - per-inbound-connection reader (one per accepted connection): owns the
//     connection and its read buffer. It runs the handshake under a
//     deadline (TLS, or the plaintext hello), then reads frames and calls the
//     handler registered for each kind, one at a time, in arrival order.
//     Close closes its connection, which ends it.
//
// Locks: mu guards conns, inbound and shutdown; hmu guards handlers. They are
// never held together, and never while calling a handler or doing I/O.

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// TCPTransport is the network Transport: it sends each Broadcast to every
// configured peer over mutually authenticated TLS 1.3 (or, for loopback
// tests only, plaintext) TCP connections, one outbound connection per peer,
// with length-prefixed frames (see tcp_framing.go), bounded per-peer queues
// and reconnection with backoff. A slow or dead peer only loses its own
// messages: Broadcast never waits for a peer.
//
// Delivery is best effort (the Transport contract): messages are dropped when a peer's
// queue is full, when a connection breaks with messages in flight, and when
// no handler is registered for their kind. Messages from one sender are
// delivered in the order they were sent, one at a time, on the reader
// goroutine of that sender's connection; messages from different senders
// may be delivered concurrently.
//
// TCPTransport implements Transport, SenderAware and Unicaster. All methods are safe
// for concurrent use by multiple goroutines.
type TCPTransport struct {
	cfg       TCPConfig // filled and validated; read-only after construction
	log       *slog.Logger
	ln        net.Listener
	serverTLS *tls.Config // nil when Insecure
	peers     []*tcpPeer  // sorted by id; read-only after construction
	peerIDs   map[string]bool

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the Threads list but the watchers

	closed    atomic.Bool
	closeOnce sync.Once

	// mu guards conns, handshaking, inbound and shutdown.
	mu          sync.Mutex
	conns       map[net.Conn]struct{}  // raw TCP connections open in either direction
	handshaking []*tcpHandshake        // inbound connections still handshaking, oldest first
	inbound     map[string]*tcpInbound // current authenticated inbound connection per peer
	shutdown    bool                   // set by Close; no connection is tracked after it

	// hmu guards handlers.
	hmu      sync.RWMutex
	handlers map[string]func(from string, payload []byte) error

	received          atomic.Uint64
	malformed         atomic.Uint64
	handshakeFailures atomic.Uint64
	shed              atomic.Uint64
	dialFailures      atomic.Uint64
	unhandled         atomic.Uint64
	handlerErrors     atomic.Uint64
}

// tcpPeer is the sending side of one peer. queue and the counters are shared
// between Broadcast and the peer's writer; everything else is read-only.
type tcpPeer struct {
	id        string
	addr      string
	tlsConfig *tls.Config // client config expecting id; nil when Insecure
	queue     chan []byte // framed messages, shared read-only between queues

	// queuedBytes is the length of the messages in queue: Broadcast adds a
	// message's length before it queues it (and takes it back when it
	// drops the message), the writer subtracts it when it takes the
	// message out.
	queuedBytes atomic.Int64

	connected  atomic.Bool
	sent       atomic.Uint64
	dropped    atomic.Uint64
	reconnects atomic.Uint64
}

// tcpHandshake is an inbound connection that is handshaking. evicted is set
// (under TCPTransport.mu) when the accept loop closes it to make room.
type tcpHandshake struct {
	raw     net.Conn
	evicted bool
}

// tcpInbound is an authenticated inbound connection; done is closed when its
// reader has finished delivering.
type tcpInbound struct {
	raw  net.Conn
	done chan struct{}
}

// Compile-time checks that TCPTransport provides the interfaces the drivers
// use.
var (
	_ Transport   = (*TCPTransport)(nil)
	_ SenderAware = (*TCPTransport)(nil)
	_ Unicaster   = (*TCPTransport)(nil)
)

// NewTCPTransport copies cfg, fills the defaults, validates the copy, starts
// listening on cfg.Listen and starts the accept loop and one writer per peer
// (see Threads in tcp_transport.go). Connections to peers are established in
// the background; Broadcast may be called at once (messages queue until the
// peer is reachable).
//
// Errors wrap ErrInvalidConfig for a bad config, or the listen error.
func NewTCPTransport(cfg TCPConfig) (*TCPTransport, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "tcp-transport", "node", cfg.NodeID)

	t := &TCPTransport{
		cfg:      cfg,
		log:      log,
		peerIDs:  make(map[string]bool, len(cfg.Peers)),
		conns:    make(map[net.Conn]struct{}),
		inbound:  make(map[string]*tcpInbound),
		handlers: make(map[string]func(string, []byte) error),
	}
	for id, addr := range cfg.Peers {
		t.peerIDs[id] = true
		p := &tcpPeer{id: id, addr: addr, queue: make(chan []byte, cfg.SendQueue)}
		if cfg.TLS != nil {
			p.tlsConfig = t.clientTLSConfig(id)
		}
		t.peers = append(t.peers, p)
	}
	sort.Slice(t.peers, func(i, j int) bool { return t.peers[i].id < t.peers[j].id })
	if cfg.TLS != nil {
		t.serverTLS = t.newServerTLSConfig()
	} else {
		log.Warn("plaintext TCP transport: peers are NOT authenticated; use only for loopback tests")
	}

	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("replication: tcp listen %s: %w", cfg.Listen, err)
	}
	t.ln = ln
	t.ctx, t.cancel = context.WithCancel(context.Background())

	t.wg.Add(1 + len(t.peers))
	go t.acceptLoop()
	for _, p := range t.peers {
		go t.writeLoop(p)
	}
	log.Debug("tcp transport listening", "addr", ln.Addr().String(), "peers", len(t.peers))
	return t, nil
}

// Addr returns the address the transport listens on (with the actual port
// when cfg.Listen had port 0). Safe for concurrent use, also after Close.
func (t *TCPTransport) Addr() net.Addr { return t.ln.Addr() }

// LocalID returns TCPConfig.NodeID. Safe for concurrent use.
func (t *TCPTransport) LocalID() string { return t.cfg.NodeID }

// Validators returns this node's ID first, then the configured peer IDs in
// sorted order. The caller owns the returned slice. Safe for concurrent use.
func (t *TCPTransport) Validators() []string {
	ids := make([]string, 0, 1+len(t.peers))
	ids = append(ids, t.cfg.NodeID)
	for _, p := range t.peers {
		ids = append(ids, p.id)
	}
	return ids
}

// Broadcast frames (kind, payload) once and queues the frame for every peer,
// without blocking: a peer whose queue is full loses the message (counted in
// TCPStats.Dropped), the others still get it. The payload is copied into the
// frame before Broadcast returns, so the caller may reuse it. A nil error
// means queued, not delivered.
//
// Errors: ErrClosed after Close; ctx's error if ctx is already done;
// ErrTooLarge if the frame would exceed MaxMessageBytes or kind exceeds 255
// bytes; ErrMalformed if kind is empty (the empty kind is reserved). Safe for
// concurrent use.
func (t *TCPTransport) Broadcast(ctx context.Context, kind string, payload []byte) error {
	msg, err := t.frame("broadcast", ctx, kind, payload)
	if err != nil || msg == nil {
		return err
	}
	for _, p := range t.peers {
		t.enqueue(p, msg)
	}
	return nil
}

// SendTo is Broadcast to the one peer named to (it implements Unicaster).
// Sending to an ID that is not a configured peer returns an error wrapping
// ErrInvalidConfig. Safe for concurrent use.
func (t *TCPTransport) SendTo(ctx context.Context, to, kind string, payload []byte) error {
	i, ok := slices.BinarySearchFunc(t.peers, to, func(p *tcpPeer, id string) int { return cmp.Compare(p.id, id) })
	if !ok {
		return fmt.Errorf("%w: tcp send: %q is not a peer", ErrInvalidConfig, to)
	}
	msg, err := t.frame("send", ctx, kind, payload)
	if err != nil || msg == nil {
		return err
	}
	t.enqueue(t.peers[i], msg)
	return nil
}

// frame checks a message and frames it; a nil frame with a nil error means
// there is no peer to send it to.
func (t *TCPTransport) frame(op string, ctx context.Context, kind string, payload []byte) ([]byte, error) {
	if t.closed.Load() {
		return nil, fmt.Errorf("replication: tcp %s: %w", op, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("replication: tcp %s: %w", op, err)
	}
	switch {
	case kind == "":
		return nil, fmt.Errorf("%w: tcp %s: empty kind", ErrMalformed, op)
	case len(kind) > tcpMaxKindLen:
		return nil, fmt.Errorf("%w: tcp %s: kind of %d bytes exceeds %d", ErrTooLarge, op, len(kind), tcpMaxKindLen)
	}
	if n := tcpFrameBodyLen(kind, payload); n > t.cfg.MaxMessageBytes {
		return nil, fmt.Errorf("%w: tcp %s: message of %d bytes exceeds MaxMessageBytes %d", ErrTooLarge, op, n, t.cfg.MaxMessageBytes)
	}
	if len(t.peers) == 0 {
		return nil, nil
	}
	return appendTCPFrame(make([]byte, 0, tcpFramePrefixLen+tcpFrameBodyLen(kind, payload)), kind, payload), nil
}

// enqueue queues framed msg for p without blocking, or drops it when p's
// queue is full in messages or in bytes.
func (t *TCPTransport) enqueue(p *tcpPeer, msg []byte) {
	n := int64(len(msg))
	if p.queuedBytes.Add(n) > int64(t.cfg.SendQueueBytes) {
		p.queuedBytes.Add(-n)
		t.drop(p)
		return
	}
	select {
	case p.queue <- msg:
	default:
		p.queuedBytes.Add(-n)
		t.drop(p)
	}
}

// drop counts a message dropped for p because its queue is full, in
// messages or in bytes, and logs the first one.
func (t *TCPTransport) drop(p *tcpPeer) {
	if p.dropped.Add(1) == 1 {
		t.log.Warn("tcp send queue full, dropping messages", "peer", p.id,
			"queue", cap(p.queue), "queue_bytes", t.cfg.SendQueueBytes)
	}
}

// OnReceive registers h for messages of kind, replacing any handler
// registered for kind with OnReceive or OnReceiveFrom; a nil h removes it.
// See OnReceiveFrom for how handlers are called. Safe for concurrent use.
func (t *TCPTransport) OnReceive(kind string, h func(payload []byte) error) {
	if h == nil {
		t.OnReceiveFrom(kind, nil)
		return
	}
	t.OnReceiveFrom(kind, func(_ string, payload []byte) error { return h(payload) })
}

// OnReceiveFrom registers h for messages of kind, replacing any handler
// registered for kind; a nil h removes it. from is the node ID the sender
// authenticated with (its certificate; in Insecure mode, its unverified
// hello). Messages of a kind without a handler are dropped and counted.
//
// h runs on the reader goroutine of the sender's connection: calls for one
// sender are sequential and in send order, calls for different senders may
// run concurrently. h must return promptly, since that sender's messages
// wait meanwhile, and must not keep payload after it returns (the buffer is
// reused), nor call Close (which waits for h to return). A non-nil error
// from h is counted and logged at Debug; the connection stays up. Safe for
// concurrent use.
func (t *TCPTransport) OnReceiveFrom(kind string, h func(from string, payload []byte) error) {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	if h == nil {
		delete(t.handlers, kind)
		return
	}
	t.handlers[kind] = h
}

// handler returns the handler for kind (nil if none) without allocating.
func (t *TCPTransport) handler(kind []byte) func(string, []byte) error {
	t.hmu.RLock()
	defer t.hmu.RUnlock()
	return t.handlers[string(kind)]
}

// Close stops the transport: it closes the listener and every connection,
// stops every goroutine, and returns once all of them have exited. Messages
// still queued are dropped. Close is idempotent: every call waits for the
// shutdown to finish and returns nil. After Close, Broadcast returns
// ErrClosed. Safe for concurrent use, but do not call Close from a handler:
// it would wait for the very reader goroutine that runs it.
func (t *TCPTransport) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		t.cancel()
		_ = t.ln.Close()
		t.mu.Lock()
		t.shutdown = true
		conns := make([]net.Conn, 0, len(t.conns))
		for c := range t.conns {
			conns = append(conns, c)
		}
		t.mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	t.wg.Wait()
	return nil
}

// TCPStats is a snapshot of a TCPTransport's counters, all counted since
// construction. It is a plain value owned by the caller of Stats.
type TCPStats struct {
	Sent              uint64 // frames written and flushed to peers
	Received          uint64 // well-formed frames read from peers
	Dropped           uint64 // frames dropped because a peer's send queue was full (SendQueue or SendQueueBytes)
	Malformed         uint64 // inbound connections closed for a malformed frame
	HandshakeFailures uint64 // connections refused: TLS handshake, identity or hello failures, both directions
	Shed              uint64 // inbound connections closed while handshaking, to make room for newer ones (MaxHandshakes)
	DialFailures      uint64 // failed attempts to open a TCP connection to a peer
	Reconnects        uint64 // outbound connections established after a peer's first one
	Unhandled         uint64 // frames dropped because no handler was registered for their kind
	HandlerErrors     uint64 // frames whose handler returned an error

	// Peers has one entry per configured peer.
	Peers map[string]TCPPeerStats
}

// TCPPeerStats is the sending side of one peer in TCPStats. It is a plain
// value owned by the caller of Stats.
type TCPPeerStats struct {
	Connected   bool   // an outbound connection to the peer is up
	Queued      int    // messages waiting in the peer's send queue
	QueuedBytes int64  // their length in bytes: at most SendQueueBytes, plus messages of Broadcast calls in progress
	Sent        uint64 // frames written and flushed to the peer
	Dropped     uint64 // frames dropped because the queue was full (SendQueue or SendQueueBytes)
	Reconnects  uint64 // outbound connections established after the first
}

// Stats returns a snapshot of the transport's counters. The counters are
// read one by one, so a snapshot taken under load may be slightly
// inconsistent across fields. Safe for concurrent use, also after Close.
func (t *TCPTransport) Stats() TCPStats {
	s := TCPStats{
		Received:          t.received.Load(),
		Malformed:         t.malformed.Load(),
		HandshakeFailures: t.handshakeFailures.Load(),
		Shed:              t.shed.Load(),
		DialFailures:      t.dialFailures.Load(),
		Unhandled:         t.unhandled.Load(),
		HandlerErrors:     t.handlerErrors.Load(),
		Peers:             make(map[string]TCPPeerStats, len(t.peers)),
	}
	for _, p := range t.peers {
		ps := TCPPeerStats{
			Connected:   p.connected.Load(),
			Queued:      len(p.queue),
			QueuedBytes: p.queuedBytes.Load(),
			Sent:        p.sent.Load(),
			Dropped:     p.dropped.Load(),
			Reconnects:  p.reconnects.Load(),
		}
		s.Sent += ps.Sent
		s.Dropped += ps.Dropped
		s.Reconnects += ps.Reconnects
		s.Peers[p.id] = ps
	}
	return s
}

// track registers a raw connection so Close can close it. It returns false
// (and the caller must close c) once Close has started.
func (t *TCPTransport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.trackLocked(c)
}

// trackLocked is track with mu held.
func (t *TCPTransport) trackLocked(c net.Conn) bool {
	if t.shutdown {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

// untrackClose closes a raw connection and forgets it.
func (t *TCPTransport) untrackClose(c net.Conn) {
	_ = c.Close()
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// sleep waits for d or until Close; it reports whether the transport is
// still open.
func (t *TCPTransport) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-t.ctx.Done():
		return false
	}
}

// backoff returns the wait before reconnection attempt n (0-based): the
// capped exponential delay d with jitter drawn from [d/2, d].
func (t *TCPTransport) backoff(n int) time.Duration {
	d := t.cfg.MaxBackoff
	if n < 62 {
		if e := t.cfg.MinBackoff << n; e > 0 && e < d {
			d = e
		}
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// acceptLoop is the accept loop goroutine (see Threads).
func (t *TCPTransport) acceptLoop() {
	defer t.wg.Done()
	var delay time.Duration
	var shedLogged time.Time // when a shed connection was last logged
	shedSince := 0           // connections shed since then
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, tcpAcceptMinBackoff), tcpAcceptMaxBackoff)
			t.log.Warn("tcp accept failed, retrying", "err", err, "delay", delay)
			if !t.sleep(delay) {
				return
			}
			continue
		}
		delay = 0
		hs, evicted, ok := t.trackHandshake(c)
		if !ok {
			_ = c.Close()
			return
		}
		if evicted != nil {
			// MaxHandshakes connections were handshaking already: the
			// oldest makes room. Someone who floods the port with
			// connections that never finish their handshake then holds at
			// most MaxHandshakes goroutines and buffers, and cannot keep a
			// peer out: a peer's handshake is evicted only if MaxHandshakes
			// newer connections arrive before it completes.
			_ = evicted.Close()
			t.shed.Add(1)
			shedSince++
			if now := time.Now(); now.Sub(shedLogged) >= time.Second {
				t.log.Warn("tcp too many connections handshaking, closing the oldest",
					"max_handshakes", t.cfg.MaxHandshakes, "shed", shedSince)
				shedLogged, shedSince = now, 0
			}
		}
		t.wg.Add(1)
		go t.readLoop(hs)
	}
}

// trackHandshake registers an accepted connection (see track) as
// handshaking. If MaxHandshakes connections were handshaking already, it
// unregisters the oldest and returns it as evicted, for the caller to close.
// ok is false (and the caller must close c) once Close has started.
func (t *TCPTransport) trackHandshake(c net.Conn) (hs *tcpHandshake, evicted net.Conn, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.trackLocked(c) {
		return nil, nil, false
	}
	if len(t.handshaking) >= t.cfg.MaxHandshakes {
		old := t.handshaking[0]
		old.evicted = true
		evicted = old.raw
		t.handshaking[0] = nil
		t.handshaking = t.handshaking[1:]
	}
	hs = &tcpHandshake{raw: c}
	t.handshaking = append(t.handshaking, hs)
	return hs, evicted, true
}

// endHandshake unregisters hs, whose handshake ended (a second call does
// nothing); it reports whether hs had been evicted meanwhile.
func (t *TCPTransport) endHandshake(hs *tcpHandshake) (evicted bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if hs.evicted {
		return true
	}
	for i, x := range t.handshaking {
		if x == hs {
			t.handshaking = slices.Delete(t.handshaking, i, i+1)
			break
		}
	}
	return false
}

// refuse counts and logs a connection refused during the handshake.
func (t *TCPTransport) refuse(dir, peer string, remote net.Addr, err error) {
	t.handshakeFailures.Add(1)
	if t.ctx.Err() != nil {
		return // shutting down: not the peer's fault
	}
	t.log.Warn("tcp peer refused", "dir", dir, "peer", peer, "remote", remote.String(), "err", err)
}

// readLoop is a per-inbound-connection reader goroutine (see Threads).
func (t *TCPTransport) readLoop(hs *tcpHandshake) {
	raw := hs.raw
	defer t.wg.Done()
	defer t.untrackClose(raw)

	conn, from, buf, ok := t.serverHandshake(hs)
	if !ok {
		t.endHandshake(hs)
		return
	}

	// One inbound connection per peer: a newer one replaces an older one,
	// which is closed first and allowed to finish its current delivery, so
	// the handlers never see one sender's messages concurrently.
	me := &tcpInbound{raw: raw, done: make(chan struct{})}
	defer close(me.done)
	t.mu.Lock()
	old := t.inbound[from]
	t.inbound[from] = me
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		if t.inbound[from] == me {
			delete(t.inbound, from)
		}
		t.mu.Unlock()
	}()
	if old != nil {
		_ = old.raw.Close()
		<-old.done
	}
	t.log.Info("tcp peer connected", "peer", from, "dir", "in", "remote", raw.RemoteAddr().String())

	br := bufio.NewReaderSize(conn, tcpReadBufferSize)
	for {
		kind, payload, b, err := readTCPFrame(br, t.cfg.MaxMessageBytes, buf)
		buf = b
		if err == nil && len(kind) == 0 {
			err = fmt.Errorf("%w: unexpected hello frame", ErrMalformed)
		}
		if err != nil {
			switch {
			case errors.Is(err, ErrMalformed):
				t.malformed.Add(1)
				t.log.Warn("tcp malformed frame, disconnecting peer", "peer", from, "err", err)
			case t.ctx.Err() == nil:
				t.log.Info("tcp peer disconnected", "peer", from, "dir", "in", "err", err)
			}
			return
		}
		t.received.Add(1)
		h := t.handler(kind)
		if h == nil {
			t.unhandled.Add(1)
			continue
		}
		if err := h(from, payload); err != nil {
			t.handlerErrors.Add(1)
			t.log.Debug("tcp handler failed", "peer", from, "kind", string(kind), "err", err)
		}
	}
}

// serverHandshake authenticates the dialer of an inbound connection (TLS,
// or the plaintext hello) under HandshakeTimeout and sends it the
// acceptance byte. It returns what to read from (the TLS connection, or
// raw) and the peer's node ID, with the read buffer the hello used; ok is
// false when the peer was refused or the connection lost.
func (t *TCPTransport) serverHandshake(hs *tcpHandshake) (conn net.Conn, from string, buf []byte, ok bool) {
	raw := hs.raw
	conn = raw
	refuse := func(peer string, err error) {
		t.mu.Lock()
		evicted := hs.evicted
		t.mu.Unlock()
		if !evicted { // an evicted one is counted in Shed instead
			t.refuse("inbound", peer, raw.RemoteAddr(), err)
		}
	}
	_ = raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	if t.serverTLS != nil {
		tc := tls.Server(raw, t.serverTLS)
		if err := tc.Handshake(); err != nil {
			refuse("", fmt.Errorf("tls handshake: %w", err))
			return nil, "", nil, false
		}
		// VerifyConnection already checked that the certificate names a
		// configured peer.
		from, _ = t.inboundPeerID(tc.ConnectionState().PeerCertificates[0])
		conn = tc
	} else {
		var kind, payload []byte
		var err error
		kind, payload, buf, err = readTCPFrame(raw, tcpHelloLimit, buf)
		switch {
		case err != nil:
			refuse("", fmt.Errorf("hello: %w", err))
			return nil, "", nil, false
		case len(kind) != 0:
			refuse("", fmt.Errorf("%w: first frame has kind %q, want hello", ErrMalformed, kind))
			return nil, "", nil, false
		case !t.peerIDs[string(payload)]:
			refuse(string(payload), errors.New("hello names no configured peer"))
			return nil, "", nil, false
		}
		from = string(payload)
	}
	// Authenticated: from here on no newer connection may evict it. (One
	// that was evicted a moment ago is closed already.)
	if t.endHandshake(hs) {
		return nil, "", nil, false
	}
	if _, err := conn.Write([]byte{tcpAccepted}); err != nil {
		t.log.Debug("tcp inbound connection lost before it was accepted", "peer", from, "err", err)
		return nil, "", nil, false
	}
	_ = raw.SetDeadline(time.Time{})
	return conn, from, buf, true
}

// writeLoop is a per-peer writer goroutine (see Threads).
func (t *TCPTransport) writeLoop(p *tcpPeer) {
	defer t.wg.Done()
	bw := bufio.NewWriterSize(nil, tcpWriteBufferSize)
	everConnected := false
	attempt := 0
	for t.ctx.Err() == nil {
		conn, raw, err := t.dial(p)
		if err != nil {
			if t.ctx.Err() != nil {
				return
			}
			if attempt == 0 {
				// Once per outage at Info; every retry at Debug.
				t.log.Info("tcp peer unreachable, retrying with backoff", "peer", p.id, "addr", p.addr, "err", err)
			} else {
				t.log.Debug("tcp dial failed", "peer", p.id, "addr", p.addr, "attempt", attempt, "err", err)
			}
			if !t.sleep(t.backoff(attempt)) {
				return
			}
			attempt++
			continue
		}
		if everConnected {
			p.reconnects.Add(1)
		}
		everConnected = true
		p.connected.Store(true)
		t.log.Info("tcp peer connected", "peer", p.id, "dir", "out", "addr", p.addr)

		start := time.Now()
		err = t.serveOutbound(p, conn, raw, bw)
		p.connected.Store(false)
		if t.ctx.Err() != nil {
			return
		}
		t.log.Info("tcp peer disconnected", "peer", p.id, "dir", "out", "err", err)
		// A connection that broke at once (say, the peer refused our
		// certificate after the TLS 1.3 handshake completed on our side)
		// keeps escalating the backoff; a long-lived one starts afresh.
		if time.Since(start) > t.cfg.MaxBackoff {
			attempt = 0
		}
		if !t.sleep(t.backoff(attempt)) {
			return
		}
		attempt++
	}
}

// dial opens, tracks and authenticates a connection to p. conn is what to
// write to (the TLS connection, or raw in Insecure mode).
func (t *TCPTransport) dial(p *tcpPeer) (conn, raw net.Conn, err error) {
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	raw, err = d.DialContext(t.ctx, "tcp", p.addr)
	if err != nil {
		t.dialFailures.Add(1)
		return nil, nil, fmt.Errorf("replication: tcp dial %s (%s): %w", p.id, p.addr, err)
	}
	if !t.track(raw) {
		_ = raw.Close()
		return nil, nil, fmt.Errorf("replication: tcp dial %s: %w", p.id, ErrClosed)
	}
	_ = raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	conn = raw
	if p.tlsConfig != nil {
		tc := tls.Client(raw, p.tlsConfig)
		if err := tc.Handshake(); err != nil {
			t.untrackClose(raw)
			err = fmt.Errorf("replication: tcp tls handshake with %s (%s): %w", p.id, p.addr, err)
			t.refuse("outbound", p.id, raw.RemoteAddr(), err)
			return nil, nil, err
		}
		conn = tc
	} else {
		hello := appendTCPFrame(nil, "", []byte(t.cfg.NodeID))
		if _, err := raw.Write(hello); err != nil {
			t.untrackClose(raw)
			return nil, nil, fmt.Errorf("replication: tcp hello to %s (%s): %w", p.id, p.addr, err)
		}
	}
	// Wait for the peer to accept us (see tcpAccepted): a peer that refuses
	// our certificate or hello closes the connection (with a TLS alert)
	// instead.
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil || ack[0] != tcpAccepted {
		t.untrackClose(raw)
		if err == nil {
			err = fmt.Errorf("%w: acceptance byte %#x", ErrMalformed, ack[0])
		}
		err = fmt.Errorf("replication: tcp peer %s (%s) did not accept us: %w", p.id, p.addr, err)
		t.refuse("outbound", p.id, raw.RemoteAddr(), err)
		return nil, nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return conn, raw, nil
}

// serveOutbound drains p's queue onto conn until the connection fails, the
// peer closes it, or the transport closes. It always closes raw and waits
// for its watcher before returning.
func (t *TCPTransport) serveOutbound(p *tcpPeer, conn, raw net.Conn, bw *bufio.Writer) error {
	peerGone := make(chan struct{})
	go func() { // the watcher (see Threads)
		defer close(peerGone)
		var b [256]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				return
			}
		}
	}()
	defer func() {
		t.untrackClose(raw)
		<-peerGone
	}()

	bw.Reset(conn)
	for {
		var msg []byte
		select {
		case <-t.ctx.Done():
			return ErrClosed
		case <-peerGone:
			return errors.New("connection closed by peer")
		case msg = <-p.queue:
		}
		p.queuedBytes.Add(-int64(len(msg)))
		// The deadline bounds each write that reaches the socket (a Write
		// that overflows the buffer, and the Flush), not the whole batch: a
		// peer that keeps reading is never cut off for being sent a lot.
		n := 0
		var err error
		for more := true; more; {
			if len(msg) > bw.Available() {
				_ = raw.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
			}
			if _, err = bw.Write(msg); err != nil {
				break
			}
			n++
			more = false
			if n < tcpMaxBatch {
				select {
				case msg = <-p.queue:
					p.queuedBytes.Add(-int64(len(msg)))
					more = true
				default:
				}
			}
		}
		if err == nil {
			_ = raw.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
			err = bw.Flush()
		}
		if err != nil {
			return fmt.Errorf("replication: tcp write to %s: %w", p.id, err)
		}
		p.sent.Add(uint64(n))
	}
}
