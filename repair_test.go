package replication

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// This file tests how repair answers are addressed, on a MemoryHub.

// TestQuasar_CatchUpAnsweredByOneValidator: a node that missed frames asks
// one validator for them, and that validator alone answers it (the other
// holders stay quiet): each request it sends costs at most one certificate
// per missing frame, not one per holder.
func TestQuasar_CatchUpAnsweredByOneValidator(t *testing.T) {
	const frames = 30
	c := newTestCluster(t, 5, clusterOpts{witnessAfter: 20 * time.Millisecond, antiEntropy: 50 * time.Millisecond})
	c.hub.Disconnect("node-4")
	for i := range frames {
		c.requireAccept(0, put("ns", "k", fmt.Sprintf("v%d", i)))
	}
	var (
		mu    sync.Mutex
		certs = map[string]int{} // certificates delivered to node-4, by sender
	)
	c.hub.OnDeliver(func(from, to, kind string, payload []byte) {
		if to != "node-4" || kind != quasarKind {
			return
		}
		recs, err := decodeMessage(payload, 0, nil)
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		for _, r := range recs {
			if r.typ == recCertificate {
				certs[from]++
			}
		}
	})
	c.hub.Reconnect("node-4")
	// Every node, not only node-4: a validator whose vote was not needed
	// may still be learning the last outcomes.
	c.waitAllApplied(frames, 10*time.Second)
	c.requireConverged()
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range certs {
		total += n
	}
	m := c.nodes[4].r.Metrics()
	requests := int(m.SyncRequests + m.Fetches)
	t.Logf("certificates delivered to node-4, by sender: %v, for %d sync requests and %d fetches", certs, m.SyncRequests, m.Fetches)
	require.GreaterOrEqual(t, total, frames)
	// Every one of the four holders answering each request would make it
	// 4 × frames per request.
	require.LessOrEqual(t, total, frames*requests, "certificates for %d missing frames", frames)
}
