package replication_test

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/quasar-replication/replication"
)

// ExampleLocalReplicator proposes two mutations, reads them back through a
// Subscribe handler, shows the one-frame-per-slot fence, and closes.
func ExampleLocalReplicator() {
	r := replication.NewLocal()
	defer r.Close()

	var mu sync.Mutex
	state := map[string]string{}
	r.Subscribe(func(_ context.Context, f replication.Frame) error {
		mu.Lock()
		defer mu.Unlock()
		state[f.Key] = string(f.Value) // string() copies: Value is not ours to keep
		fmt.Printf("applied %s seq=%d %s=%s\n", f.Op, f.Seq, f.Key, f.Value)
		return nil
	})

	ctx := context.Background()
	for _, kv := range [][2]string{{"a", "1"}, {"b", "2"}} {
		d, err := r.Propose(ctx, replication.Frame{OrgID: "acme", Namespace: "tasks", Op: "put", Key: kv[0], Value: []byte(kv[1])})
		fmt.Println(d, err)
	}

	// Seq 2 of acme/tasks is taken: a second writer on that slot loses.
	d, err := r.Propose(ctx, replication.Frame{OrgID: "acme", Namespace: "tasks", Seq: 2, Op: "put", Key: "a", Value: []byte("x")})
	fmt.Println(d, errors.Is(err, replication.ErrRejected))

	mu.Lock()
	fmt.Println(state)
	mu.Unlock()
	accepted, rejected := r.Stats()
	fmt.Println("accepted", accepted, "rejected", rejected)

	fmt.Println(r.Close())
	d, err = r.Propose(ctx, replication.Frame{OrgID: "acme", Namespace: "tasks", Op: "del", Key: "a"})
	fmt.Println(d, errors.Is(err, replication.ErrClosed))
	// Output:
	// applied put seq=1 a=1
	// accept <nil>
	// applied put seq=2 b=2
	// accept <nil>
	// reject true
	// map[a:1 b:2]
	// accepted 2 rejected 1
	// <nil>
	// undecided true
}

// ExampleDecision_String prints every decision.
func ExampleDecision_String() {
	for _, d := range []replication.Decision{
		replication.DecisionUndecided,
		replication.DecisionAccept,
		replication.DecisionReject,
		replication.DecisionTimeout,
	} {
		fmt.Println(d)
	}
	// Output:
	// undecided
	// accept
	// reject
	// timeout
}
