#!/usr/bin/env bash
# Acked publishes per second on PostgreSQL, two builds alternated in one
# run, plus the new build on a database that also has InsForge's per-row
# NOTIFY trigger (`trg_message_notify`, which an InsForge database already
# has: every row the server inserts then pays a pg_notify). Each run gets a
# fresh server process and a fresh database. Server on core 0, generator on
# core 1, PostgreSQL wherever the kernel puts it; loopback only.
#
#   scripts/with-postgres benchmarks/postgres_publish.sh BASE_DIR NEW_DIR [ROUNDS] [SECONDS]
#
# Each DIR holds a `realtime` and a `realtime-bench` binary. Needs
# REALTIME_TEST_POSTGRES_URL (an admin URL; scripts/with-postgres sets
# one). CASES="new new+notify" runs only those.
set -euo pipefail
base=$1 new=$2 rounds=${3:-3} seconds=${4:-8}
admin_url=${REALTIME_TEST_POSTGRES_URL:?set REALTIME_TEST_POSTGRES_URL or run under scripts/with-postgres}
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
port=7142
out=$(mktemp)
psql=$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)
psql=${psql:-psql}

# InsForge's trigger, as its migration 017 creates it.
insforge_notify="
CREATE OR REPLACE FUNCTION realtime.notify_on_message_insert() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN PERFORM pg_notify('realtime_message', NEW.id::text); RETURN NEW; END \$\$;
CREATE TRIGGER trg_message_notify AFTER INSERT ON realtime.messages
  FOR EACH ROW EXECUTE FUNCTION realtime.notify_on_message_insert();"

# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"

run_case() { # case
  local case=$1 dir db url pid
  case $case in base) dir=$base ;; *) dir=$new ;; esac
  db="bench_$(date +%s%N)"
  "$psql" -q "$admin_url" -c "CREATE DATABASE $db"
  url="${admin_url%/*}/$db"
  # shellcheck disable=SC2046 # the limits' assignments split on purpose
  env REALTIME__DATABASE__URL="$url" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__LIMITS__PUBLISH_RATE=0 $(limits_off "$dir") taskset -c "$server_core" "$dir/realtime" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  if [ "$case" = "new+notify" ]; then "$psql" -q "$url" -c "$insforge_notify"; fi
  local cpu_before cpu_after line
  cpu_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  line=$(taskset -c "$bench_core" "$dir/realtime-bench" --server "127.0.0.1:$port" \
    publish --publishers 16 --window 32 --seconds "$seconds" 2>/dev/null)
  cpu_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$psql" -q "$admin_url" -c "DROP DATABASE $db"
  local cpu
  cpu=$(python3 -c "print(($cpu_after - $cpu_before) / $(getconf CLK_TCK))")
  echo "{\"case\":\"$case\",\"server_cpu_seconds\":$cpu,\"result\":$line}" | tee -a "$out"
}

for _ in $(seq "$rounds"); do
  for case in ${CASES:-base new new+notify}; do run_case "$case"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
cases = list(dict.fromkeys(r["case"] for r in runs))
def med(case, f):
    return statistics.median(f(r) for r in runs if r["case"] == case)
rate = {c: med(c, lambda r: r["result"]["acked_per_second"]) for c in cases}
cpu = {c: med(c, lambda r: r["server_cpu_seconds"] * 1e6 / max(r["result"]["acked"], 1)) for c in cases}
p99 = {c: med(c, lambda r: r["result"]["ack_latency_us"]["p99"] / 1000) for c in cases}
first = cases[0]
print(f"{'case':12}{'acked/s':>10}{'vs ' + first:>12}{'cpu us/acked':>14}{'ack p99 ms':>12}")
for c in cases:
    print(f"{c:12}{rate[c]:10.0f}{rate[c] / rate[first]:12.2f}{cpu[c]:14.1f}{p99[c]:12.1f}")
PY
rm -f "$out"
