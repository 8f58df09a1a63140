#!/usr/bin/env bash
# Time to recover MESSAGES missed messages (benchmarks/recovery.mjs) against
# the release server on SQLite, or on PostgreSQL with DATABASE_URL set.
# Server on core 0, the client on core 1; loopback only.
#
#   benchmarks/recovery.sh [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-10000} rounds=${2:-3}
cargo build --release -j2 --bin realtime >&2
port=7142
scratch=$(mktemp -d)
REALTIME__DATABASE__URL="${DATABASE_URL:-sqlite://$scratch/realtime.db}" REALTIME__SERVER__HOST=127.0.0.1 \
  REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
  REALTIME__LIMITS__PUBLISH_RATE=0 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 taskset -c "${SERVER_CORE:-0}" target/release/realtime &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
taskset -c "${BENCH_CORE:-1}" node benchmarks/recovery.mjs "http://127.0.0.1:$port" "$messages" "$rounds"
