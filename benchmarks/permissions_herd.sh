#!/usr/bin/env bash
# A thundering herd of subscribes with row-level security on, on
# PostgreSQL: 5,000 distinct users (a JWT each) connect and subscribe at
# once over 100 channels, 200 at a time. Cases, alternated per round on a
# fresh database and server each:
#   open    no policy (row-level security off: decided without a query)
#   rls     a subscribe policy reading a lookup table of the 5,000 users:
#           EXISTS (SELECT 1 FROM public.members m WHERE m.user_id = auth.uid())
# Server on core 0, generator on core 1, PostgreSQL wherever the kernel puts
# it; loopback only.
#
#   scripts/with-postgres benchmarks/permissions_herd.sh [ROUNDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} connections=${2:-5000}
admin_url=${REALTIME_TEST_POSTGRES_URL:?set REALTIME_TEST_POSTGRES_URL or run under scripts/with-postgres}
cargo build --release -j2 --bin realtime --bin realtime-bench >&2
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
port=7143
secret="herd-benchmark-secret-at-least-32-characters"
key="ik_herd_benchmark_key"
out=$(mktemp)
psql=$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)
psql=${psql:-psql}

run_case() { # case
  local case=$1 db url pid
  db="herd_$(date +%s%N)"
  "$psql" -q "$admin_url" -c "CREATE DATABASE $db"
  url="${admin_url%/*}/$db"
  REALTIME__DATABASE__URL="$url" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__AUTH__JWT_SECRET=$secret REALTIME__AUTH__API_KEYS="[\"$key\"]" \
    REALTIME__LIMITS__MAX_CHANNELS_PER_SOCKET=10 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
    taskset -c "$server_core" target/release/realtime &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  if [ "$case" = rls ]; then
    "$psql" -q "$url" -c "
      CREATE TABLE public.members (user_id uuid PRIMARY KEY);
      INSERT INTO public.members
        SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid FROM generate_series(0, $connections - 1) AS i;
      GRANT SELECT ON public.members TO authenticated;
      ANALYZE public.members;"
    curl -sf -X POST "http://127.0.0.1:$port/api/realtime/permissions" -H "x-api-key: $key" \
      -H 'content-type: application/json' \
      -d '{"name":"members","action":"subscribe","roles":["authenticated"],"condition":"EXISTS (SELECT 1 FROM public.members m WHERE m.user_id = auth.uid())"}' >/dev/null
  fi
  local cpu_before cpu_after line checks
  cpu_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  line=$(taskset -c "$bench_core" target/release/realtime-bench --server "127.0.0.1:$port" \
    --api-key "$key" --users-jwt-secret "$secret" \
    conns --connections "$connections" --channels 100 --sources 4 --settle-seconds 0 2>/dev/null)
  cpu_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  checks=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^realtime_permission_checks_total/ {n += $2} END {print n + 0}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$psql" -q "$admin_url" -c "DROP DATABASE $db"
  local cpu
  cpu=$(python3 -c "print(($cpu_after - $cpu_before) / $(getconf CLK_TCK))")
  echo "{\"case\":\"$case\",\"server_cpu_seconds\":$cpu,\"database_checks\":$checks,\"result\":$line}" | tee -a "$out"
}

for _ in $(seq "$rounds"); do
  for case in ${CASES:-open rls}; do run_case "$case"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
cases = list(dict.fromkeys(r["case"] for r in runs))
def med(case, f):
    return statistics.median(f(r) for r in runs if r["case"] == case)
print(f"{'case':8}{'connects+subscribes/s':>24}{'vs ' + cases[0]:>10}{'server cpu s':>14}{'db checks':>11}")
base = med(cases[0], lambda r: r["result"]["connects_per_second"])
for c in cases:
    rate = med(c, lambda r: r["result"]["connects_per_second"])
    cpu = med(c, lambda r: r["server_cpu_seconds"])
    checks = med(c, lambda r: r["database_checks"])
    print(f"{c:8}{rate:24.0f}{rate / base:10.2f}{cpu:14.2f}{checks:11.0f}")
PY
rm -f "$out"
