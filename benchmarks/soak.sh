#!/usr/bin/env bash
# Soak test (not part of scripts/test): CLIENTS stock socket.io-client
# connections churn for MINUTES against the release server (SQLite, or
# PostgreSQL with DATABASE_URL), then everything must return to baseline.
# See benchmarks/soak.mjs for what the clients do and what is checked.
# Server on core 0, clients on core 1; loopback only.
#
#   benchmarks/soak.sh [MINUTES] [CLIENTS]      # defaults: 5 minutes, 2000
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5} clients=${2:-2000}
cargo build --release -j2 --bin realtime >&2
(cd tests/js && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
port=7143
ulimit -n 65536 2>/dev/null || true
scratch=$(mktemp -d)
# Every client comes from 127.0.0.1: the per-address limits are off. Dropped
# sessions are kept for recovery 60 s (not 10 minutes), so the end of the
# run can see the memory they held come back.
REALTIME__DATABASE__URL="${DATABASE_URL:-sqlite://$scratch/realtime.db}" REALTIME__SERVER__HOST=127.0.0.1 \
  REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
  REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
  REALTIME__RECOVERY__WINDOW_MS=60000 REALTIME__PRESENCE__LEAVE_GRACE_MS=10000 \
  taskset -c "${SERVER_CORE:-0}" target/release/realtime &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
taskset -c "${BENCH_CORE:-1}" node benchmarks/soak.mjs "http://127.0.0.1:$port" "$pid" "$minutes" "$clients"
