package replication_test

import (
	"context"
	"fmt"
	"slices"

	"github.com/quasar-replication/replication"
)

// Three nodes on one hub exchange a message, then c is partitioned away:
// its messages and the messages to it are lost until Heal.
func ExampleMemoryHub() {
	hub := replication.NewMemoryHub()
	defer hub.Close()
	ctx := context.Background()

	received := make(chan string)
	nodes := []*replication.MemoryTransport{hub.Connect("a"), hub.Connect("b"), hub.Connect("c")}
	for _, n := range nodes {
		n.OnReceiveFrom("greet", func(from string, payload []byte) error {
			received <- fmt.Sprintf("%s got %q from %s", n.LocalID(), payload, from)
			return nil
		})
	}
	a, c := nodes[0], nodes[2]
	// collect waits for n deliveries; handlers run on one goroutine per
	// node, so sort to print them in a stable order.
	collect := func(n int) {
		got := make([]string, n)
		for i := range got {
			got[i] = <-received
		}
		slices.Sort(got)
		for _, g := range got {
			fmt.Println(g)
		}
	}

	fmt.Println("validators seen by c:", c.Validators())
	_ = a.Broadcast(ctx, "greet", []byte("hello"))
	collect(2)

	hub.Partition([]string{"a", "b"}, []string{"c"})
	_ = c.Broadcast(ctx, "greet", []byte("anyone?")) // lost: c is alone
	_ = a.Broadcast(ctx, "greet", []byte("just us")) // reaches b only
	collect(1)
	fmt.Println("lost:", hub.Stats().Lost)

	hub.Heal()
	_ = c.Broadcast(ctx, "greet", []byte("back"))
	collect(2)

	// Output:
	// validators seen by c: [c a b]
	// b got "hello" from a
	// c got "hello" from a
	// b got "just us" from a
	// lost: 3
	// a got "back" from c
	// b got "back" from c
}
