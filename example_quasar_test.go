package replication_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quasar-replication/replication"
)

// A single validator decides every frame through the consensus engine on
// its own: no peer, no polling.
func ExampleQuasarReplicator() {
	hub := replication.NewMemoryHub()
	defer hub.Close()
	r, err := replication.NewQuasar(context.Background(), replication.QuasarConfig{
		NodeID:    "solo",
		Transport: hub.Connect("solo"),
	})
	if err != nil {
		panic(err)
	}
	defer r.Close()

	r.Subscribe(func(_ context.Context, f replication.Frame) error {
		fmt.Printf("apply %s seq=%d %s=%s\n", f.Op, f.Seq, f.FrameKey(), f.Value)
		return nil
	})
	for _, v := range []string{"draft", "final"} {
		d, err := r.Propose(context.Background(), replication.Frame{
			OrgID: "acme", Namespace: "tasks", Op: "put", Key: "t1", Value: []byte(v),
		})
		fmt.Println(d, err)
	}
	fmt.Println(r.Stats())
	// Output:
	// apply put seq=1 acme/tasks/t1=draft
	// accept <nil>
	// apply put seq=2 acme/tasks/t1=final
	// accept <nil>
	// 2 0 0
}

// Three validators on a hub: a frame proposed on one is applied on all, and
// a node cut off from the majority cannot accept anything.
func ExampleQuasarReplicator_cluster() {
	hub := replication.NewMemoryHub()
	defer hub.Close()
	ids := []string{"a", "b", "c"}
	var mu sync.Mutex
	applied := map[string]bool{} // node/key

	var nodes []*replication.QuasarReplicator
	for _, id := range ids {
		r, err := replication.NewQuasar(context.Background(), replication.QuasarConfig{
			NodeID: id, Validators: ids, Transport: hub.Connect(id),
		})
		if err != nil {
			panic(err)
		}
		defer r.Close()
		r.Subscribe(func(_ context.Context, f replication.Frame) error {
			mu.Lock()
			applied[id+"/"+f.Key] = true
			mu.Unlock()
			return nil
		})
		nodes = append(nodes, r)
	}

	d, err := nodes[0].Propose(context.Background(), replication.Frame{OrgID: "acme", Namespace: "tasks", Op: "put", Key: "t1", Value: []byte("x")})
	fmt.Println("a proposes:", d, err)

	hub.Partition([]string{"a", "b"}, []string{"c"})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	d, _ = nodes[2].Propose(ctx, replication.Frame{OrgID: "acme", Namespace: "other", Op: "put", Key: "t2"})
	fmt.Println("c, alone, proposes:", d)
	hub.Heal()

	// The proposer applied t1 before Propose returned; wait for the others.
	// (c's timed-out frame may still be accepted after Heal: a timeout
	// means "outcome unknown".)
	for {
		mu.Lock()
		done := applied["a/t1"] && applied["b/t1"] && applied["c/t1"]
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println("applied everywhere")
	// Output:
	// a proposes: accept <nil>
	// c, alone, proposes: timeout
	// applied everywhere
}

// Validators with signing keys: any node that accepted a frame can prove
// it, and anyone with the validators' public keys can check the proof.
func ExampleVerifyProof() {
	hub := replication.NewMemoryHub()
	defer hub.Close()
	ids := []string{"a", "b", "c"}
	keys := map[string]*replication.SigningKey{}
	public := map[string]replication.PublicKey{}
	for _, id := range ids {
		k, err := replication.GenerateSigningKey() // in production: replication.LoadSigningKey
		if err != nil {
			panic(err)
		}
		keys[id], public[id] = k, k.Public()
	}
	var nodes []*replication.QuasarReplicator
	for _, id := range ids {
		r, err := replication.NewQuasar(context.Background(), replication.QuasarConfig{
			NodeID: id, Validators: ids, Transport: hub.Connect(id),
			SigningKey: keys[id], ValidatorKeys: public,
		})
		if err != nil {
			panic(err)
		}
		defer r.Close()
		nodes = append(nodes, r)
	}
	d, err := nodes[0].Propose(context.Background(), replication.Frame{OrgID: "acme", Namespace: "tasks", Op: "put", Key: "t1", Value: []byte("done")})
	fmt.Println("a proposes:", d, err)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proof, err := nodes[0].Proof(ctx, "acme", "tasks", 1)
	if err != nil {
		panic(err)
	}
	f, err := replication.VerifyProof(public, 2, proof)
	fmt.Printf("verified: %s/%s seq %d %s=%s %v\n", f.OrgID, f.Namespace, f.Seq, f.Key, f.Value, err)
	proof[len(proof)/2] ^= 1
	_, err = replication.VerifyProof(public, 2, proof)
	fmt.Println("one byte changed:", errors.Is(err, replication.ErrInvalidProof))
	// Output:
	// a proposes: accept <nil>
	// verified: acme/tasks seq 1 t1=done <nil>
	// one byte changed: true
}
