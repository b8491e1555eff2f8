// Command tcp-node runs one QuasarReplicator validator over TCPTransport
// (mutual TLS), applying accepted frames into a key-value map: in memory,
// or with -data DIR kept in DIR with the validator's durable state, so a
// node can be killed and restarted.
// Start one process per validator; see README.md for a three-terminal
// quick start.
//
//	tcp-node -gen-certs[=DIR] -nodes a,b,c   write dev certificates, print the commands
//	tcp-node -id a -listen 127.0.0.1:7001 -peers b=127.0.0.1:7002,c=127.0.0.1:7003 \
//	    -cert DIR/a.pem -key DIR/a-key.pem -ca DIR/ca.pem \
//	    -signing-key DIR/a-signing.key -validator-keys DIR/validator-keys.json [-load N] [-report]
//
// With -signing-key and -validator-keys (which -gen-certs writes too), the
// validators sign their votes (QuasarConfig.SigningKey): with -load and
// -report, the node then asks for a proof that its last frame was
// accepted and checks it with the public keys alone.
//
// Without -load it reads commands from stdin, one per line ("put KEY VALUE",
// "del KEY", "get KEY"), prints the decision of each, and prints every
// frame the node applies, whoever proposed it. With -load N it
// proposes N puts into namespace "<id>" one after the other, then keeps
// serving its peers until SIGINT or SIGTERM; with -serve and no -load it
// only serves. On exit it optionally waits
// until -wait-applied frames were applied and writes its state to -dump.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quasar-replication/replication"
	"github.com/quasar-replication/replication/promexport"
)

// kv is the node's state, built by the Subscribe handler. mu guards every
// field.
//
// With -data, it is also the application's durable state: every applied
// frame is appended to DIR/kv.log, with its Seq, and reloaded on start. The
// replicator feeds handlers again, after a crash, the last frames whose
// apply it had not recorded yet; the handler recognises them by Seq (seqs:
// the last Seq applied per namespace) and skips them (refed), after
// checking that they are the frames it applied (conflicts must stay 0).
// The file is written, not synced: a killed process loses nothing of it,
// a power loss may (a real application commits its state and the Seq
// together, durably).
type kv struct {
	mu        sync.Mutex
	data      map[string]string
	applied   int
	seqs      map[string]uint64
	refed     int
	conflicts int
	file      *os.File
}

func newKV() *kv {
	return &kv{data: map[string]string{}, seqs: map[string]uint64{}}
}

func (s *kv) apply(_ context.Context, f replication.Frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns := f.OrgID + "/" + f.Namespace
	if f.Seq <= s.seqs[ns] {
		s.refed++
		if v, ok := s.data[string(f.FrameKey())]; f.Op == "put" && (!ok || v != string(f.Value)) {
			s.conflicts++
			fmt.Printf("CONFLICT: %s seq %d fed again as put %s=%s, state holds %q\n", ns, f.Seq, f.Key, f.Value, v)
		}
		return nil
	}
	s.set(ns, f.Seq, f.Op, f.FrameKey(), f.Value)
	if s.file != nil {
		if _, err := fmt.Fprintf(s.file, "%d %q %q %q %q\n", f.Seq, ns, f.Op, f.FrameKey(), f.Value); err != nil {
			return fmt.Errorf("kv.log: %w", err)
		}
	}
	return nil
}

// set applies one frame to the map. mu is held.
func (s *kv) set(ns string, seq uint64, op string, key, value []byte) {
	switch op {
	case "put":
		s.data[string(key)] = string(value)
	case "del":
		delete(s.data, string(key))
	}
	s.seqs[ns] = seq
	s.applied++
}

// open loads DIR/kv.log and appends to it from then on.
func (s *kv) open(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	name := filepath.Join(dir, "kv.log")
	if b, err := os.ReadFile(name); err == nil {
		for i, line := range strings.Split(string(b), "\n") {
			if line == "" {
				continue
			}
			var (
				seq                uint64
				ns, op, key, value string
			)
			if _, err := fmt.Sscanf(line, "%d %q %q %q %q", &seq, &ns, &op, &key, &value); err != nil {
				return fmt.Errorf("%s line %d: %w", name, i+1, err)
			}
			s.set(ns, seq, op, []byte(key), []byte(value))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	s.file = f
	return nil
}

// printApplied prints a frame this node applied (interactive mode).
func printApplied(_ context.Context, f replication.Frame) error {
	switch f.Op {
	case "put":
		fmt.Printf("applied %s/%s seq %d: put %s=%s\n", f.OrgID, f.Namespace, f.Seq, f.Key, f.Value)
	default:
		fmt.Printf("applied %s/%s seq %d: %s %s\n", f.OrgID, f.Namespace, f.Seq, f.Op, f.Key)
	}
	return nil
}

func (s *kv) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

func (s *kv) get(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	return v, ok
}

// dump writes the state as sorted "key=value" lines.
func (s *kv) dump(file string) error {
	s.mu.Lock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		fmt.Fprintf(&b, "%s=%s\n", k, s.data[k])
	}
	s.mu.Unlock()
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

var (
	id          = flag.String("id", "", "this node's ID (must match its certificate)")
	listen      = flag.String("listen", "", "host:port to listen on")
	peersFlag   = flag.String("peers", "", "the other validators: id=host:port,id=host:port")
	certFile    = flag.String("cert", "", "this node's certificate (PEM)")
	keyFile     = flag.String("key", "", "this node's private key (PEM)")
	caFile      = flag.String("ca", "", "the CA certificate that signs every node (PEM)")
	signingKey  = flag.String("signing-key", "", "this validator's vote signing key (with -validator-keys)")
	pubKeys     = flag.String("validator-keys", "", "every validator's public signing key, JSON (with -signing-key)")
	insecure    = flag.Bool("insecure", false, "plaintext TCP, NO authentication (loopback only)")
	load        = flag.Int("load", 0, "propose N puts into namespace <id>, then serve until signalled")
	rate        = flag.Int("rate", 0, "with -load, at most this many proposals per second (0: no limit)")
	report      = flag.Bool("report", false, "print progress, decisions, stats and latency")
	dumpFile    = flag.String("dump", "", "on exit, write the key-value state to this file")
	waitApplied = flag.Int("wait-applied", 0, "on exit, first wait until this many frames were applied")
	waitFor     = flag.Duration("wait-timeout", 30*time.Second, "bound for -wait-applied and for waiting for peers")
	antiEntropy = flag.Duration("anti-entropy", 0, "QuasarConfig.AntiEntropyInterval (0: the default, 1s)")
	verbose     = flag.Bool("v", false, "log at Debug level (default Info: peer connections, warnings)")
	genCerts    = &certsDir{}
	nodesFlag   = flag.String("nodes", "a,b,c", "with -gen-certs, the node IDs")
	metricsAddr = flag.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (port 0: any)")
	dataDir     = flag.String("data", "", "keep the validator's durable state and the key-value state in this directory")
	serve       = flag.Bool("serve", false, "without -load: serve peers until signalled (do not read stdin)")
)

func init() {
	flag.Var(genCerts, "gen-certs", "write dev certificates (into "+defaultCertsDir+", or =DIR) and exit")
}

// defaultCertsDir is where -gen-certs writes: ignored by git.
const defaultCertsDir = "examples/tcp-node/certs"

// certsDir is the -gen-certs flag: alone it means defaultCertsDir,
// -gen-certs=DIR names another directory.
type certsDir struct{ dir string }

func (c *certsDir) String() string   { return c.dir }
func (c *certsDir) IsBoolFlag() bool { return true }
func (c *certsDir) Set(s string) error {
	switch s {
	case "true":
		c.dir = defaultCertsDir
	case "false", "":
		c.dir = ""
	default:
		c.dir = s
	}
	return nil
}

func main() {
	flag.Parse()
	if genCerts.dir != "" {
		exitOn(generate(genCerts.dir, strings.Split(*nodesFlag, ",")))
		return
	}
	exitOn(run())
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcp-node:", err)
		os.Exit(1)
	}
}

// generate writes dev certificates and prints how to start each node.
func generate(dir string, nodes []string) error {
	if err := replication.GenerateDevCerts(dir, nodes); err != nil {
		return err
	}
	abs, _ := filepath.Abs(dir)
	addrs := make([]string, len(nodes))
	for i := range nodes {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", 7001+i)
	}
	fmt.Printf("wrote development certificates (NOT for production) to %s\nstart one node per terminal:\n\n", abs)
	for i, n := range nodes {
		var peers []string
		for j, p := range nodes {
			if j != i {
				peers = append(peers, p+"="+addrs[j])
			}
		}
		fmt.Printf("go run ./examples/tcp-node -id %s -listen %s -peers %s \\\n    -cert %s -key %s -ca %s \\\n    -signing-key %s -validator-keys %s\n\n",
			n, addrs[i], strings.Join(peers, ","), filepath.Join(abs, n+".pem"),
			filepath.Join(abs, n+"-key.pem"), filepath.Join(abs, "ca.pem"),
			filepath.Join(abs, n+"-signing.key"), filepath.Join(abs, "validator-keys.json"))
	}
	return nil
}

func run() error {
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	peers, err := parsePeers(*peersFlag)
	if err != nil {
		return err
	}
	cfg := replication.TCPConfig{NodeID: *id, Listen: *listen, Peers: peers, Logger: logger}
	if *insecure {
		for _, addr := range append(slices.Collect(maps.Values(peers)), *listen) {
			if !isLoopback(addr) {
				return fmt.Errorf("-insecure is refused for %s: plaintext is only allowed on loopback", addr)
			}
		}
		fmt.Fprintln(os.Stderr, "WARNING: -insecure: plaintext TCP, peers are NOT authenticated and traffic is NOT encrypted. Loopback tests only.")
		cfg.Insecure = true
	} else {
		if cfg.TLS, err = replication.LoadTLSConfig(*certFile, *keyFile, *caFile); err != nil {
			return fmt.Errorf("%w (use -cert, -key and -ca; -gen-certs DIR writes dev certificates)", err)
		}
	}
	tr, err := replication.NewTCPTransport(cfg)
	if err != nil {
		return err
	}
	defer tr.Close()

	validators := append(slices.Sorted(maps.Keys(peers)), *id)
	slices.Sort(validators)
	qcfg := replication.QuasarConfig{
		NodeID: *id, Validators: validators, Transport: tr, AntiEntropyInterval: *antiEntropy, Logger: logger,
	}
	if err := loadSigningKeys(&qcfg); err != nil {
		return err
	}
	state := newKV()
	if *dataDir != "" {
		qcfg.DataDir = filepath.Join(*dataDir, "replication")
		if err := state.open(*dataDir); err != nil {
			return err
		}
		defer state.file.Close()
		fmt.Printf("state in %s: %d frames applied before\n", *dataDir, state.count())
	}
	var prom *promexport.Collector
	if *metricsAddr != "" {
		prom = promexport.New()
		qcfg.Observer = prom
	}
	r, err := replication.NewQuasar(context.Background(), qcfg)
	if err != nil {
		return err
	}
	defer r.Close()
	if prom != nil {
		stopMetrics, err := serveMetrics(prom, r, tr)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	r.Subscribe(state.apply)
	if *load == 0 && !*serve {
		r.Subscribe(printApplied)
	}
	m := r.Metrics()
	fmt.Printf("node %s listening on %s, validators %v, quorum %d\n", *id, tr.Addr(), validators, m.Quorum)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var lat []time.Duration
	if *load > 0 {
		if err := waitPeers(ctx, tr, m.Quorum-1); err != nil {
			return err
		}
		lat = runLoad(ctx, r, state)
		if *report && qcfg.SigningKey != nil && ctx.Err() == nil {
			proveLast(ctx, r, state, qcfg.ValidatorKeys, m.Quorum)
		}
		if ctx.Err() == nil {
			fmt.Println("serving peers until SIGINT or SIGTERM")
			serveProgress(ctx, r, state)
		}
	} else if *serve {
		fmt.Println("serving peers until SIGINT or SIGTERM")
		serveProgress(ctx, r, state)
	} else {
		lat = runStdin(ctx, r, state)
	}
	stop() // a second signal kills the process
	fmt.Println("shutting down")
	if *waitApplied > 0 {
		deadline := time.Now().Add(*waitFor)
		for state.count() < *waitApplied && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Printf("applied %d frames (waited for %d)\n", state.count(), *waitApplied)
	}
	if *report {
		printReport(r, tr, state, lat)
	}
	if *dumpFile != "" {
		if err := state.dump(*dumpFile); err != nil {
			return err
		}
	}
	return errors.Join(r.Close(), tr.Close())
}

// loadSigningKeys sets cfg's signing keys from -signing-key and
// -validator-keys, which go together.
func loadSigningKeys(cfg *replication.QuasarConfig) error {
	if (*signingKey == "") != (*pubKeys == "") {
		return errors.New("-signing-key and -validator-keys go together")
	}
	if *signingKey == "" {
		return nil
	}
	var err error
	if cfg.SigningKey, err = replication.LoadSigningKey(*signingKey); err != nil {
		return err
	}
	cfg.ValidatorKeys, err = replication.LoadValidatorKeys(*pubKeys)
	return err
}

// proveLast asks for a proof that this node's last frame was accepted,
// and checks it as anyone holding the public keys could.
func proveLast(ctx context.Context, r *replication.QuasarReplicator, state *kv, keys map[string]replication.PublicKey, quorum int) {
	state.mu.Lock()
	seq := state.seqs["load/"+*id]
	state.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, *waitFor)
	defer cancel()
	proof, err := r.Proof(pctx, "load", *id, seq)
	if err != nil {
		fmt.Printf("proof of %s/%d: %v\n", *id, seq, err)
		return
	}
	f, err := replication.VerifyProof(keys, quorum, proof)
	if err != nil {
		fmt.Printf("proof of %s/%d: does not verify: %v\n", *id, seq, err)
		return
	}
	fmt.Printf("proof of %s/%d (%s=%q): %d bytes, verified with the validators' public keys\n", f.Namespace, f.Seq, f.Key, f.Value, len(proof))
}

// serveMetrics serves Prometheus metrics (the replicator's, the
// transport's, and the Go runtime's) at http://-metrics/metrics.
func serveMetrics(prom *promexport.Collector, r *replication.QuasarReplicator, tr *replication.TCPTransport) (stop func(), err error) {
	prom.Watch(r)
	prom.WatchTCP(tr)
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", *metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("-metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("metrics at http://%s/metrics\n", ln.Addr())
	return func() { _ = srv.Close() }, nil
}

// waitPeers waits until outbound connections to n peers are up, so a load
// started before the other nodes does not time out.
func waitPeers(ctx context.Context, tr *replication.TCPTransport, n int) error {
	deadline := time.Now().Add(*waitFor)
	for said := false; ; said = true {
		up := 0
		for _, p := range tr.Stats().Peers {
			if p.Connected {
				up++
			}
		}
		if up >= n {
			return nil
		}
		if !said {
			fmt.Printf("waiting for %d peer(s) to be reachable\n", n-up)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of the %d peers needed for a quorum are reachable", up, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runLoad proposes -load puts into namespace <id>, one after the other.
func runLoad(ctx context.Context, r *replication.QuasarReplicator, state *kv) []time.Duration {
	lat := make([]time.Duration, 0, *load)
	var tick <-chan time.Time
	if *rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(*rate))
		defer t.Stop()
		tick = t.C
	}
	progress := time.Now()
	start := time.Now()
	for i := 0; i < *load && ctx.Err() == nil; i++ {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				continue
			}
		}
		f := replication.Frame{OrgID: "load", Namespace: *id, Op: "put",
			Key: fmt.Sprintf("k%06d", i), Value: fmt.Appendf(nil, "%s-%d", *id, i)}
		t0 := time.Now()
		_, err := r.Propose(ctx, f)
		lat = append(lat, time.Since(t0))
		if err != nil && !errors.Is(err, replication.ErrApply) {
			fmt.Printf("propose %s: %v\n", f.Key, err)
		}
		if *report && time.Since(progress) >= 250*time.Millisecond {
			progress = time.Now()
			a, rj, to := r.Stats()
			fmt.Printf("progress accepted=%d rejected=%d timeouts=%d applied=%d\n", a, rj, to, state.count())
		}
	}
	a, rj, to := r.Stats()
	fmt.Printf("load done accepted=%d rejected=%d timeouts=%d in %s\n", a, rj, to, time.Since(start).Round(time.Millisecond))
	return lat
}

// serveProgress waits for ctx, printing progress lines with -report.
func serveProgress(ctx context.Context, r *replication.QuasarReplicator, state *kv) {
	if !*report {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a, rj, to := r.Stats()
			fmt.Printf("progress accepted=%d rejected=%d timeouts=%d applied=%d\n", a, rj, to, state.count())
		}
	}
}

// runStdin reads "put KEY VALUE", "del KEY" and "get KEY" lines until EOF
// or a signal. Keys live in namespace "kv" shared by every node, so two
// nodes writing at the same moment race for the same slot: one of them is
// rejected and may retry.
func runStdin(ctx context.Context, r *replication.QuasarReplicator, state *kv) []time.Duration {
	lines := make(chan string)
	go func() { // ends at EOF; at exit it may stay blocked on stdin, harmlessly
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	fmt.Println(`commands: "put KEY VALUE", "del KEY", "get KEY"`)
	var lat []time.Duration
	for {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-ctx.Done():
		}
		if !ok {
			return lat
		}
		f := replication.Frame{OrgID: "demo", Namespace: "kv"}
		switch fields := strings.Fields(line); {
		case len(fields) == 0:
			continue
		case fields[0] == "put" && len(fields) >= 3:
			f.Op, f.Key, f.Value = "put", fields[1], []byte(strings.Join(fields[2:], " "))
		case fields[0] == "del" && len(fields) == 2:
			f.Op, f.Key = "del", fields[1]
		case fields[0] == "get" && len(fields) == 2:
			v, found := state.get("demo/kv/" + fields[1])
			fmt.Printf("%s = %q (present: %t)\n", fields[1], v, found)
			continue
		default:
			fmt.Printf("unknown command %q\n", line)
			continue
		}
		t0 := time.Now()
		d, err := r.Propose(ctx, f)
		lat = append(lat, time.Since(t0))
		if err != nil {
			fmt.Printf("%s %s: %s (%v)\n", f.Op, f.Key, d, err)
		} else {
			fmt.Printf("%s %s: %s in %s\n", f.Op, f.Key, d, time.Since(t0).Round(time.Microsecond))
		}
	}
}

func printReport(r *replication.QuasarReplicator, tr *replication.TCPTransport, state *kv, lat []time.Duration) {
	a, rj, to := r.Stats()
	m := r.Metrics()
	state.mu.Lock()
	refed, conflicts := state.refed, state.conflicts
	state.mu.Unlock()
	fmt.Printf("final accepted=%d rejected=%d timeouts=%d applied=%d refed=%d conflicts=%d\n", a, rj, to, state.count(), refed, conflicts)
	fmt.Printf("frames decided here: accepted=%d rejected=%d; repairs: resent=%d fetches=%d sync=%d certificates=%d behind=%d\n",
		m.FramesAccepted, m.FramesRejected, m.Resent, m.Fetches, m.SyncRequests, m.Certificates, m.Behind)
	ts := tr.Stats()
	fmt.Printf("transport: sent=%d received=%d dropped=%d reconnects=%d handshake-failures=%d\n",
		ts.Sent, ts.Received, ts.Dropped, ts.Reconnects, ts.HandshakeFailures)
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))].Round(time.Microsecond) }
		fmt.Printf("propose latency: n=%d p50=%s p99=%s max=%s\n", len(lat), q(0.5), q(0.99), q(1))
	}
}

func parsePeers(s string) (map[string]string, error) {
	peers := map[string]string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		name, addr, ok := strings.Cut(p, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("bad -peers entry %q: want id=host:port", p)
		}
		peers[name] = addr
	}
	return peers, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}
