#!/usr/bin/env bash
# Ephemeral channels (delivered live, never stored) beside durable ones:
# fan-out (1,000 subscribers x 2,000 messages x 100 B) and acked publishes
# (16 publishers x 32 in flight), a fresh server and database per case, the
# cases alternated. Server on core 0, generator on core 1; loopback only.
# On SQLite by default; on PostgreSQL (where ephemeral messages go through
# NOTIFY to reach every node) with DATABASE=postgres under
# scripts/with-postgres.
#
#   benchmarks/ephemeral.sh [ROUNDS]
#   DATABASE=postgres scripts/with-postgres benchmarks/ephemeral.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release -j2 --bin realtime --bin realtime-bench >&2
port=7143
out=$(mktemp)
database=${DATABASE:-sqlite}
psql=$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)
psql=${psql:-psql}

run_case() { # durable | ephemeral
  local case=$1 scratch pid flag=()
  [ "$case" = ephemeral ] && flag=(--ephemeral)
  scratch=$(mktemp -d)
  local url="sqlite://$scratch/realtime.db"
  if [ "$database" = postgres ]; then
    local admin_url=${REALTIME_TEST_POSTGRES_URL:?run under scripts/with-postgres}
    local db="bench_$(date +%s%N)"
    "$psql" -q "$admin_url" -c "CREATE DATABASE $db"
    url="${admin_url%/*}/$db"
  fi
  REALTIME__DATABASE__URL="$url" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__LIMITS__PUBLISH_RATE=0 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 taskset -c "${SERVER_CORE:-0}" target/release/realtime &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local bench=(taskset -c "${BENCH_CORE:-1}" target/release/realtime-bench --server "127.0.0.1:$port" "${flag[@]}")
  local c0 c1 fanout publish
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  fanout=$("${bench[@]}" fanout --subscribers 1000 --messages 2000 --payload 100 2>/dev/null)
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  publish=$("${bench[@]}" publish --publishers 16 --window 32 --seconds 5 2>/dev/null)
  local stored
  if [ "$database" = postgres ]; then
    stored=$("$psql" -tAq "$url" -c "SELECT count(*) FROM realtime.messages")
  else
    stored=$(sqlite3 "$scratch/realtime.db" "SELECT count(*) FROM messages")
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$scratch"
  local cpu
  cpu=$(python3 -c "print(($c1 - $c0) / $(getconf CLK_TCK))")
  echo "{\"case\":\"$case\",\"fanout_server_cpu_seconds\":$cpu,\"stored_rows\":$stored,\"fanout\":$fanout,\"publish\":$publish}" | tee -a "$out"
}

for _ in $(seq "$rounds"); do
  for case in durable ephemeral; do run_case "$case"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def med(case, f):
    return statistics.median(f(r) for r in runs if r["case"] == case)
print(f"{'case':10}{'fan-out/s':>12}{'per cpu s':>12}{'lost':>6}{'acked/s':>10}{'ack p99 ms':>12}{'stored':>9}")
for c in ("durable", "ephemeral"):
    print(f"{c:10}{med(c, lambda r: r['fanout']['deliveries_per_second']):12.0f}"
          f"{med(c, lambda r: r['fanout']['deliveries'] / r['fanout_server_cpu_seconds']):12.0f}"
          f"{med(c, lambda r: r['fanout']['lost']):6.0f}"
          f"{med(c, lambda r: r['publish']['acked_per_second']):10.0f}"
          f"{med(c, lambda r: r['publish']['ack_latency_us']['p99'] / 1000):12.1f}"
          f"{med(c, lambda r: r['stored_rows']):9.0f}")
PY
rm -f "$out"
