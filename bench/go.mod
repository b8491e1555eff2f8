module github.com/quasar-replication/replication/bench

go 1.26.1

require (
	github.com/hashicorp/go-hclog v1.6.3
	github.com/hashicorp/raft v1.8.0
	github.com/hashicorp/raft-boltdb/v2 v2.3.1
	github.com/lni/dragonboat/v3 v3.3.8
	github.com/lni/goutils v1.3.0
	github.com/quasar-replication/replication v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
)

require (
	github.com/Microsoft/go-winio v0.6.2 // indirect
	github.com/ProjectZKM/Ziren/crates/go-runtime/zkvm_runtime v0.0.0-20260311194731-d5b7577c683d // indirect
	github.com/VictoriaMetrics/metrics v1.6.2 // indirect
	github.com/armon/go-metrics v0.4.1 // indirect
	github.com/boltdb/bolt v1.3.1 // indirect
	github.com/cloudflare/circl v1.6.3 // indirect
	github.com/cockroachdb/errors v1.12.0 // indirect
	github.com/cockroachdb/logtags v0.0.0-20241215232642-bb51bb14a506 // indirect
	github.com/cockroachdb/pebble v1.1.5 // indirect
	github.com/cockroachdb/redact v1.1.6 // indirect
	github.com/decred/dcrd/dcrec/secp256k1/v4 v4.4.1 // indirect
	github.com/fatih/color v1.18.0 // indirect
	github.com/getsentry/sentry-go v0.40.0 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/golang/snappy v1.0.0 // indirect
	github.com/google/btree v1.1.3 // indirect
	github.com/gorilla/rpc v1.2.1 // indirect
	github.com/hashicorp/errwrap v1.0.0 // indirect
	github.com/hashicorp/go-immutable-radix v1.3.1 // indirect
	github.com/hashicorp/go-metrics v0.7.0 // indirect
	github.com/hashicorp/go-msgpack v0.5.5 // indirect
	github.com/hashicorp/go-msgpack/v2 v2.1.5 // indirect
	github.com/hashicorp/go-multierror v1.0.0 // indirect
	github.com/hashicorp/go-sockaddr v1.0.0 // indirect
	github.com/hashicorp/golang-lru v1.0.2 // indirect
	github.com/hashicorp/memberlist v0.2.2 // indirect
	github.com/holiman/uint256 v1.3.2 // indirect
	github.com/juju/ratelimit v1.0.2-0.20191002062651-f60b32039441 // indirect
	github.com/klauspost/compress v1.20.1 // indirect
	github.com/kr/pretty v0.3.1 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/luxfi/cache v1.2.1 // indirect
	github.com/luxfi/codec v1.1.3 // indirect
	github.com/luxfi/compress v0.0.5 // indirect
	github.com/luxfi/concurrent v0.0.3 // indirect
	github.com/luxfi/consensus v1.22.85 // indirect
	github.com/luxfi/constants v1.4.3 // indirect
	github.com/luxfi/container v0.0.4 // indirect
	github.com/luxfi/crypto v1.17.40 // indirect
	github.com/luxfi/database v1.17.42 // indirect
	github.com/luxfi/geth v1.16.73 // indirect
	github.com/luxfi/ids v1.2.9 // indirect
	github.com/luxfi/log v1.4.1 // indirect
	github.com/luxfi/math v1.2.3 // indirect
	github.com/luxfi/math/big v0.1.0 // indirect
	github.com/luxfi/metric v1.5.0 // indirect
	github.com/luxfi/mock v0.1.1 // indirect
	github.com/luxfi/p2p v1.18.9 // indirect
	github.com/luxfi/sampler v1.0.0 // indirect
	github.com/luxfi/validators v1.0.0 // indirect
	github.com/luxfi/version v1.0.1 // indirect
	github.com/luxfi/warp v1.18.5 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/miekg/dns v1.1.66 // indirect
	github.com/mr-tron/base58 v1.2.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/rogpeppe/go-internal v1.14.1 // indirect
	github.com/sean-/seed v0.0.0-20170313163322-e2103e2c3529 // indirect
	github.com/supranational/blst v0.3.16 // indirect
	github.com/valyala/fastrand v1.0.0 // indirect
	github.com/valyala/histogram v1.0.1 // indirect
	go.etcd.io/bbolt v1.3.5 // indirect
	go.uber.org/mock v0.6.0 // indirect
	golang.org/x/crypto v0.49.0 // indirect
	golang.org/x/exp v0.0.0-20260312153236-7ab1446f8b90 // indirect
	golang.org/x/mod v0.34.0 // indirect
	golang.org/x/net v0.52.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.35.0 // indirect
	golang.org/x/tools v0.43.0 // indirect
	gonum.org/v1/gonum v0.17.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/natefinch/lumberjack.v2 v2.2.1 // indirect
)

replace github.com/quasar-replication/replication => ../

// raft-boltdb/v2 v2.3.1 imports github.com/hashicorp/go-metrics/compat, which
// go-metrics v0.7.0 (required by raft v1.8.0) removed. v0.6.1 is v0.7.0 with
// that package still in it: its other packages are identical.
replace github.com/hashicorp/go-metrics => github.com/hashicorp/go-metrics v0.6.1

// dragonboat v3.3.8 needs the pebble it was released with
// (v0.0.0-20210331181633-27fc006b8bfb, its go.mod's requirement): its vfs
// adapter does not implement the FS interface of later pebbles. The library's
// luxfi dependencies require pebble v1.1.5, which would otherwise be selected,
// but none of the packages this module builds imports pebble except
// dragonboat's.
replace github.com/cockroachdb/pebble => github.com/cockroachdb/pebble v0.0.0-20210331181633-27fc006b8bfb
