// Command embedded is a tiny in-memory key-value store on a
// LocalReplicator: every mutation goes through Propose and is applied by a
// Subscribe handler, the same shape a clustered store has with
// QuasarReplicator.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"maps"
	"slices"
	"sync"

	"github.com/quasar-replication/replication"
)

// store is the replicated state: a map applied from accepted frames.
// mu guards data.
type store struct {
	mu   sync.Mutex
	data map[string]string
}

// apply is the Subscribe handler: it runs once per accepted frame, never
// concurrently with itself.
func (s *store) apply(_ context.Context, f replication.Frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch f.Op {
	case "put":
		s.data[f.Key] = string(f.Value) // copies: Value is not ours to keep
	case "del":
		delete(s.data, f.Key)
	default:
		return fmt.Errorf("unknown op %q", f.Op) // rejects the frame
	}
	return nil
}

func (s *store) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out string
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		out += fmt.Sprintf("  %s = %s\n", k, s.data[k])
	}
	return out
}

func main() {
	r := replication.NewLocal()
	defer r.Close()
	s := &store{data: map[string]string{}}
	r.Subscribe(s.apply)

	ctx := context.Background()
	propose := func(f replication.Frame) {
		f.OrgID, f.Namespace = "acme", "tasks"
		d, err := r.Propose(ctx, f)
		seq := "auto"
		if f.Seq != 0 {
			seq = fmt.Sprint(f.Seq)
		}
		fmt.Printf("%-6s %-7s seq=%-4s -> %s", f.Op, f.Key, seq, d)
		if err != nil {
			fmt.Printf(" (%v)", err)
		}
		fmt.Println()
	}

	propose(replication.Frame{Op: "put", Key: "task-1", Value: []byte("todo")})
	propose(replication.Frame{Op: "put", Key: "task-2", Value: []byte("todo")})
	propose(replication.Frame{Op: "put", Key: "task-1", Value: []byte("done")})
	propose(replication.Frame{Op: "del", Key: "task-2"})
	// A writer that still believes seq 2 is free loses: one frame per slot.
	propose(replication.Frame{Seq: 2, Op: "put", Key: "task-2", Value: []byte("stale")})
	// The handler rejects what it cannot apply.
	propose(replication.Frame{Op: "rename", Key: "task-1"})
	propose(replication.Frame{Seq: 10, Op: "put", Key: "task-3", Value: []byte("todo")})

	fmt.Print("state:\n", s)
	accepted, rejected := r.Stats()
	fmt.Printf("accepted=%d rejected=%d\n", accepted, rejected)

	if err := r.Close(); err != nil {
		log.Fatal(err)
	}
	_, err := r.Propose(ctx, replication.Frame{OrgID: "acme", Namespace: "tasks", Op: "put", Key: "late"})
	fmt.Println("after Close:", errors.Is(err, replication.ErrClosed))
}
