#!/usr/bin/env bash
# Compares two builds of the realtime server on SQLite, alternating them in
# one run (these machines swing by 2x within an hour, so only side-by-side
# medians mean anything). Each round runs fan-out as fast as it goes, then
# 4 and 16 publishers x 32 acked publishes in flight (with the server's CPU
# per acked publish), on a fresh process and database per build. Server on
# core 0, generator on core 1; loopback only.
#
#   benchmarks/ab.sh BASE_DIR NEW_DIR [ROUNDS]
#
# Each DIR holds a `realtime` and a `realtime-bench` binary (for example a
# copy of target/release from before and after a change). Prints one JSON
# line per run, then the medians.
set -euo pipefail
base=$1 new=$2 rounds=${3:-3}
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
port=7140
out=$(mktemp)

# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Clock ticks as seconds.
seconds() { python3 -c "print($1 / $(getconf CLK_TCK))"; }

run_one() { # label, dir
  local label=$1 dir=$2 scratch pid
  scratch=$(mktemp -d)
  # shellcheck disable=SC2046 # the limits' assignments split on purpose
  env REALTIME__DATABASE__URL="sqlite://$scratch/realtime.db" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__LIMITS__PUBLISH_RATE=0 $(limits_off "$dir") taskset -c "$server_core" "$dir/realtime" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local fanout publish cpu_before cpu_after
  cpu_before=$(cpu_ticks "$pid")
  fanout=$(taskset -c "$bench_core" "$dir/realtime-bench" --server "127.0.0.1:$port" \
    fanout --subscribers 1000 --messages 2000 --payload 100 2>/dev/null)
  cpu_after=$(cpu_ticks "$pid")
  local publish4 publish16 cpu4 cpu16 cpu_end
  cpu4=$(cpu_ticks "$pid")
  publish4=$(taskset -c "$bench_core" "$dir/realtime-bench" --server "127.0.0.1:$port" \
    publish --publishers 4 --window 32 --seconds 6 2>/dev/null)
  cpu16=$(cpu_ticks "$pid")
  publish16=$(taskset -c "$bench_core" "$dir/realtime-bench" --server "127.0.0.1:$port" \
    publish --publishers 16 --window 32 --seconds 6 2>/dev/null)
  cpu_end=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$scratch"
  echo "{\"build\":\"$label\",\"fanout\":$fanout,\"fanout_server_cpu_seconds\":$(seconds $((cpu_after - cpu_before))),\"publish4\":$publish4,\"publish4_server_cpu_seconds\":$(seconds $((cpu16 - cpu4))),\"publish\":$publish16,\"publish_server_cpu_seconds\":$(seconds $((cpu_end - cpu16)))}" | tee -a "$out"
}

for round in $(seq "$rounds"); do
  run_one base "$base"
  run_one new "$new"
done

python3 - "$out" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def pick(run, path):
    value = run
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
    return value
for run in runs:
    cpu = run.get("fanout_server_cpu_seconds") or 0
    run["fanout_per_cpu_second"] = run["fanout"]["deliveries"] / cpu if cpu else None
    for key in ("publish4", "publish"):
        cpu, acked = run.get(f"{key}_server_cpu_seconds") or 0, pick(run, f"{key}.acked")
        run[f"{key}_cpu_us_per_acked"] = cpu * 1e6 / acked if acked else None
paths = ["fanout.deliveries_per_second", "fanout_per_cpu_second", "fanout.lost",
         "fanout.latency_us.p99", "publish4.acked_per_second", "publish4_cpu_us_per_acked",
         "publish4.ack_latency_us.p99", "publish.acked_per_second", "publish_cpu_us_per_acked",
         "publish.ack_latency_us.p99"]
for path in paths:
    row = []
    for build in ("base", "new"):
        values = [v for v in (pick(r, path) for r in runs if r["build"] == build) if v is not None]
        row.append(round(statistics.median(values), 1) if values else None)
    if row[0] is None and row[1] is None:
        continue
    print(f"{path:42} base {row[0]!s:>12}  new {row[1]!s:>12}")
EOF
rm -f "$out"
