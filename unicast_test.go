package replication

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file tests Unicaster, the optional single-peer send of both
// transports: the message reaches the one node named, no other, with its
// sender; an ID that is not a peer is an error.

func TestMemoryTransport_SendTo(t *testing.T) {
	hub := newTestHub(t)
	a, b, c := hub.Connect("a"), hub.Connect("b"), hub.Connect("c")
	rb, rc := newRecorder(t, b, "k"), newRecorder(t, c, "k")
	require.NoError(t, a.SendTo(context.Background(), "b", "k", []byte("to b")))
	require.Equal(t, memRecv{"a", "to b"}, rb.next(t))
	mustBroadcast(t, a, "k", "to all") // FIFO per pair: after "to b"
	require.Equal(t, memRecv{"a", "to all"}, rb.next(t))
	require.Equal(t, memRecv{"a", "to all"}, rc.next(t), "c got only the broadcast")

	require.ErrorIs(t, a.SendTo(context.Background(), "nobody", "k", nil), ErrInvalidConfig)
	require.ErrorIs(t, a.SendTo(context.Background(), "a", "k", nil), ErrInvalidConfig, "itself is no peer")
	hub.Partition([]string{"a"}, []string{"b", "c"})
	require.NoError(t, a.SendTo(context.Background(), "b", "k", []byte("lost")))
	require.Eventually(t, func() bool { return hub.Stats().Lost == 1 }, memWait, time.Millisecond)
	require.NoError(t, hub.Close())
	require.ErrorIs(t, a.SendTo(context.Background(), "b", "k", nil), ErrClosed)
}

func TestTCPTransport_SendTo(t *testing.T) {
	c := newTCPCluster(t, nil, "a", "b", "c")
	c.waitConnected(t)
	inB, inC := newTCPInbox(c.nodes["b"], "k"), newTCPInbox(c.nodes["c"], "k")
	a := c.nodes["a"]
	require.NoError(t, a.SendTo(context.Background(), "b", "k", []byte("to b")))
	require.NoError(t, a.Broadcast(context.Background(), "k", []byte("to all")))
	requireTCPReceives(t, inB, tcpMsg{"a", "to b"})
	requireTCPReceives(t, inB, tcpMsg{"a", "to all"})
	requireTCPReceives(t, inC, tcpMsg{"a", "to all"})
	require.Equal(t, []tcpMsg{{"a", "to all"}}, inC.all(), "c got only the broadcast")

	require.ErrorIs(t, a.SendTo(context.Background(), "nobody", "k", nil), ErrInvalidConfig)
	require.ErrorIs(t, a.SendTo(context.Background(), "a", "k", nil), ErrInvalidConfig, "itself is no peer")
	require.NoError(t, a.Close())
	require.ErrorIs(t, a.SendTo(context.Background(), "b", "k", nil), ErrClosed)
}
