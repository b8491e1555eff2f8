package bench

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quasar-replication/replication"
)

// The floor benchmarks measure the one round trip that any quorum of two
// out of three nodes needs, over bare loopback sockets: the proposer's
// message reaches a peer and the peer's answer comes back. A raft leader
// pays this round trip (AppendEntries and its response), and so does a
// Quasar proposer (the proposal and one peer's commit vote). No consensus
// and no transport library runs here, only the kernel, TLS and the
// goroutines reading the sockets, with the message sizes of the library's
// own round-trip benchmarks (BenchmarkMemoryHubRoundTrip3Node and
// BenchmarkTCPRoundTrip3Node in the replication package, which measure the
// same loop through MemoryHub and TCPTransport). They bound from below what
// the sequential comparison benchmarks can reach over TCP.

const (
	floorMessage = 256 + 64 // bytes; about a proposal of a 256-byte value
	floorAnswer  = 53       // bytes; a vote
)

// BenchmarkFloorTCP is one synchronous round trip of a length-prefixed
// message over one plaintext loopback TCP connection, the way raft's
// NetworkTransport sends AppendEntries to one follower: the caller writes
// and then blocks reading the answer on the same connection.
func BenchmarkFloorTCP(b *testing.B) { benchFloorConns(b, 1, nil) }

// BenchmarkFloorTLS is BenchmarkFloorTCP over mutual TLS 1.3 with the
// library's development certificates (GenerateDevCerts, LoadTLSConfig), as
// TCPTransport uses them.
func BenchmarkFloorTLS(b *testing.B) { benchFloorConns(b, 1, floorTLS(b)) }

// BenchmarkFloorTCPBroadcast sends each message to two peers over
// plaintext loopback TCP and returns at the first answer: the kernel and
// scheduler work of one quorum round trip in a three-node cluster, with one
// reader goroutine per connection and nothing else.
func BenchmarkFloorTCPBroadcast(b *testing.B) { benchFloorConns(b, 2, nil) }

// BenchmarkFloorTLSBroadcast is BenchmarkFloorTCPBroadcast over mutual TLS
// 1.3.
func BenchmarkFloorTLSBroadcast(b *testing.B) { benchFloorConns(b, 2, floorTLS(b)) }

// floorTLS returns server and client TLS configurations for two nodes, made
// with the library's development certificates.
func floorTLS(b *testing.B) (wrap *floorWrap) {
	dir := b.TempDir()
	ids := quasarIDs()
	if err := replication.GenerateDevCerts(dir, ids[:2]); err != nil {
		b.Fatal(err)
	}
	load := func(id string) *tls.Config {
		conf, err := devTLS(dir, id)
		if err != nil {
			b.Fatal(err)
		}
		return conf
	}
	server, client := load(ids[0]), load(ids[1])
	client.ServerName = ids[0]
	return &floorWrap{
		server: func(c net.Conn) net.Conn { return tls.Server(c, server) },
		client: func(c net.Conn) net.Conn { return tls.Client(c, client) },
	}
}

// floorWrap puts TLS over both ends of a connection.
type floorWrap struct{ server, client func(net.Conn) net.Conn }

// benchFloorConns times b.N round trips to peers echo servers on loopback,
// each finished by the first answer. With one peer the caller reads the
// answer itself; with more, a reader goroutine per connection passes on the
// answers to the current round. wrap, when not nil, puts TLS over the
// connections.
func benchFloorConns(b *testing.B, peers int, wrap *floorWrap) {
	if wrap == nil {
		plain := func(c net.Conn) net.Conn { return c }
		wrap = &floorWrap{server: plain, client: plain}
	}
	var conns []net.Conn
	var served sync.WaitGroup
	b.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		served.Wait()
	})
	for range peers {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		served.Go(func() { floorEcho(ln, wrap.server) })
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, wrap.client(raw))
	}

	msg := make([]byte, 4+floorMessage)
	binary.BigEndian.PutUint32(msg[:4], floorMessage)
	var roundTrip func()
	if peers == 1 {
		r := bufio.NewReader(conns[0])
		answer := make([]byte, 4+floorAnswer)
		roundTrip = func() {
			if _, err := conns[0].Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(r, answer); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		var round atomic.Uint64
		answers := make(chan struct{}, 1)
		for _, c := range conns {
			served.Go(func() {
				r := bufio.NewReader(c)
				answer := make([]byte, 4+floorAnswer)
				for {
					if _, err := io.ReadFull(r, answer); err != nil {
						return
					}
					if round.CompareAndSwap(binary.BigEndian.Uint64(answer[4:]), 0) {
						answers <- struct{}{}
					}
				}
			})
		}
		var n uint64
		roundTrip = func() {
			n++
			binary.BigEndian.PutUint64(msg[4:], n)
			round.Store(n)
			for _, c := range conns {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			<-answers
		}
	}
	for range 100 {
		roundTrip()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		roundTrip()
	}
}

// floorEcho accepts one connection on ln and answers every length-prefixed
// message with its first floorAnswer bytes (the first 8 carry the round),
// until the connection closes.
func floorEcho(ln net.Listener, wrap func(net.Conn) net.Conn) {
	raw, err := ln.Accept()
	_ = ln.Close()
	if err != nil {
		return
	}
	c := wrap(raw)
	defer c.Close()
	r := bufio.NewReader(c)
	buf := make([]byte, 4+floorMessage)
	for {
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(buf[:4])
		if n > floorMessage {
			return
		}
		if _, err := io.ReadFull(r, buf[4:4+n]); err != nil {
			return
		}
		binary.BigEndian.PutUint32(buf[:4], floorAnswer)
		if _, err := c.Write(buf[:4+floorAnswer]); err != nil {
			return
		}
	}
}
