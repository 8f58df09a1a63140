#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: the realtime server on SQLite and on
# PostgreSQL and the Node socket.io peer, each pinned to core 0, with
# realtime-bench pinned to core 1. Loopback only; every run is bounded.
#
#   benchmarks/run.sh            # everything (needs PostgreSQL and npm)
#   benchmarks/run.sh sqlite     # one target: sqlite | postgres | node
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j2 --bin realtime --bin realtime-bench >&2
bench=target/release/realtime-bench
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
ulimit -n 20000

wait_healthy() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done
  echo "server on $1 did not start" >&2; return 1
}

run_bench() { # label, then realtime-bench arguments
  local label=$1; shift
  echo "== $label: realtime-bench $*" >&2
  local line
  line=$(taskset -c "$bench_core" "$bench" "$@" 2>/dev/null)
  echo "{\"run\":\"$label\",\"result\":$line}"
}

start_realtime() { # database url, scratch dir; sets $pid
  (cd "$2" && REALTIME__DATABASE__URL=$1 REALTIME__SERVER__HOST=127.0.0.1 REALTIME__SERVER__PORT=7130 \
    REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error REALTIME__LIMITS__PUBLISH_RATE=0 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
    exec taskset -c "$server_core" "$OLDPWD/target/release/realtime") &
  pid=$!
  wait_healthy 7130
}

stop_realtime() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

realtime_suite() { # label, database url
  local label=$1 url=$2 dir pid
  dir=$(mktemp -d)
  start_realtime "$url" "$dir"
  for run in 1 2 3; do
    run_bench "$label fanout max #$run" fanout --subscribers 1000 --messages 2000 --payload 100
  done
  run_bench "$label fanout 200k/s" fanout --subscribers 1000 --messages 2000 --payload 100 --rate 200
  run_bench "$label publish" publish --publishers 16 --window 32 --seconds 10
  stop_realtime
  # Memory per connection is measured on a fresh process: a heap that
  # earlier runs grew would hide what connections cost.
  for channels in 100 15000; do
    start_realtime "$url" "$dir"
    run_bench "$label conns ($channels channels)" conns --connections 15000 --sources 4 --server-pid "$pid" --connect-concurrency 200 --channels "$channels"
    stop_realtime
    sleep 5 # let the previous run's sockets leave TIME_WAIT behind
  done
  rm -rf "$dir"
}

node_suite() {
  (cd benchmarks/node-peer && npm ci --no-audit --no-fund --loglevel=error >&2)
  taskset -c "$server_core" node benchmarks/node-peer/server.mjs 7131 >/dev/null &
  local pid=$!
  sleep 1
  for run in 1 2 3; do
    run_bench "node fanout max #$run" --server 127.0.0.1:7131 --no-setup fanout --subscribers 1000 --messages 2000 --payload 100
  done
  run_bench "node fanout 200k/s" --server 127.0.0.1:7131 --no-setup fanout --subscribers 1000 --messages 2000 --payload 100 --rate 200
  kill "$pid"; wait "$pid" 2>/dev/null || true
  taskset -c "$server_core" node benchmarks/node-peer/server.mjs 7131 >/dev/null &
  pid=$!
  sleep 1
  run_bench "node conns" --server 127.0.0.1:7131 --no-setup conns --connections 15000 --sources 4 --server-pid "$pid" --connect-concurrency 200
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

target=${1:-all}
case $target in
  sqlite) realtime_suite sqlite "sqlite://realtime.db" ;;
  postgres) scripts/with-postgres bash -c "$(declare -f wait_healthy run_bench start_realtime stop_realtime realtime_suite); bench=$bench server_core=$server_core bench_core=$bench_core; realtime_suite postgres \"\$REALTIME_TEST_POSTGRES_URL\"" ;;
  node) node_suite ;;
  all)
    realtime_suite sqlite "sqlite://realtime.db"
    "$0" postgres
    node_suite
    ;;
  *) echo "usage: $0 [sqlite|postgres|node|all]" >&2; exit 2 ;;
esac
