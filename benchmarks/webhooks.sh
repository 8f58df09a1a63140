#!/usr/bin/env bash
# Webhook throughput and what webhooks cost acked publishes, on SQLite:
# for each round, a fresh server per case, the cases alternated (these
# machines swing by 2x within an hour; only side-by-side medians count).
# Server on core 0, generator and receiver on core 1; loopback only.
#
#   benchmarks/webhooks.sh [ROUNDS] [SECONDS]
#
# Cases: `none` (the same channels without webhook URLs: the baseline),
# `ok-1` and `ok-100` (a receiver answering 200 at once; 1 or 100
# channels), `hang` (a receiver that never answers) and `refuse` (nothing
# listening). `none`, `ok-16`, `hang` and `refuse` use 16 channels, one per
# publisher, as `realtime-bench publish` does; `ok-16` (a live receiver)
# separates what webhooks cost from what a dead receiver adds. CASES="none hang" runs only
# those.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} seconds=${2:-10}
cargo build --release -j2 --bin realtime --bin realtime-bench >&2
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
port=7141
out=$(mktemp)

run_case() { # case
  local case=$1 scratch pid
  scratch=$(mktemp -d)
  REALTIME__DATABASE__URL="sqlite://$scratch/realtime.db" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__LIMITS__PUBLISH_RATE=0 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 REALTIME__SERVER__SHUTDOWN_GRACE_MS=1000 \
    taskset -c "$server_core" target/release/realtime &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local bench=(taskset -c "$bench_core" target/release/realtime-bench --server "127.0.0.1:$port")
  local line cpu_before cpu_after
  cpu_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  case $case in
    none) line=$("${bench[@]}" webhooks --receiver none --channels 16 --seconds "$seconds" 2>/dev/null) ;;
    ok-1) line=$("${bench[@]}" webhooks --receiver ok --channels 1 --seconds "$seconds" 2>/dev/null) ;;
    ok-100) line=$("${bench[@]}" webhooks --receiver ok --channels 100 --seconds "$seconds" 2>/dev/null) ;;
    ok-16) line=$("${bench[@]}" webhooks --receiver ok --channels 16 --seconds "$seconds" 2>/dev/null) ;;
    hang) line=$("${bench[@]}" webhooks --receiver hang --channels 16 --seconds "$seconds" 2>/dev/null) ;;
    refuse) line=$("${bench[@]}" webhooks --receiver refuse --channels 16 --seconds "$seconds" 2>/dev/null) ;;
  esac
  cpu_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$scratch"
  # Server CPU (utime + stime, in seconds) over the run: steadier than
  # throughput when the machine is busy.
  local cpu
  cpu=$(python3 -c "print(($cpu_after - $cpu_before) / $(getconf CLK_TCK))")
  echo "{\"case\":\"$case\",\"server_cpu_seconds\":$cpu,\"result\":$line}" | tee -a "$out"
}

for _ in $(seq "$rounds"); do
  for case in ${CASES:-none ok-1 ok-100 hang refuse}; do run_case "$case"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def median(case, key, sub=None):
    values = []
    for run in runs:
        if run["case"] != case:
            continue
        value = run["result"].get(key)
        if sub and isinstance(value, dict):
            value = value.get(sub)
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None
for run in runs:
    acked = run["result"].get("acked") or 0
    run["result"]["cpu_us_per_acked"] = run["server_cpu_seconds"] * 1e6 / acked if acked else None
base = median("none", "acked_per_second")
base_cpu = median("none", "cpu_us_per_acked")
print(f"{'case':8} {'acked/s':>10} {'vs none':>8} {'cpu us/acked':>13} {'vs none':>8} {'ack p99 ms':>11} {'webhooks/s':>11} {'missing':>8}")
for case in ["none", "ok-1", "ok-16", "ok-100", "hang", "refuse"]:
    acked = median(case, "acked_per_second")
    if acked is None:
        continue
    cpu = median(case, "cpu_us_per_acked")
    p99 = median(case, "ack_latency_us", "p99")
    hooks = median(case, "webhooks_per_second")
    missing = median(case, "webhooks_missing")
    ratio = f"{acked / base:.2f}" if base else "-"
    cpu_ratio = f"{cpu / base_cpu:.2f}" if cpu and base_cpu else "-"
    print(f"{case:8} {acked:>10.0f} {ratio:>8} {cpu or 0:>13.1f} {cpu_ratio:>8} {(p99 or 0) / 1000:>11.1f} {hooks or 0:>11.0f} {missing if missing is not None else '-':>8}")
PY
rm -f "$out"
