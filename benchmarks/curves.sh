#!/usr/bin/env bash
# How the cost of fan-out grows with the work (docs/benchmarks.md, "How
# cost grows"): deliveries/s and deliveries per second of server CPU for
# one channel of 10, 100, 1,000 and 10,000 subscribers, and for 1, 100 and
# 1,000 busy channels of 10 subscribers and one publisher each. The
# realtime server on SQLite, a fresh process per case, the cases
# alternated ROUNDS times, medians. Server on core 0, realtime-bench on
# core 1; loopback only; every run bounded. (10,000 busy channels need
# 110,000 sockets in the generator: past this machine's 20,000 descriptors
# per process.) A channel of 10,000 needs more than the default limits:
# 10,001 members with the publisher, and while the generator connects
# (reading nobody's frames yet) each early member is sent a join per later
# one, more than its default 4,096-packet queue.
#
#   benchmarks/curves.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
ulimit -n "$(ulimit -Hn)"
cargo build --release -j2 --bin realtime --bin realtime-bench >&2
out=$(mktemp)
port=7161

run_case() { # name, then fanout arguments
  local name=$1 scratch pid line
  shift
  scratch=$(mktemp -d)
  REALTIME__DATABASE__URL="sqlite://$scratch/realtime.db" REALTIME__SERVER__HOST=127.0.0.1 \
    REALTIME__SERVER__PORT=$port REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error \
    REALTIME__LIMITS__PUBLISH_RATE=0 REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 \
    REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
    REALTIME__LIMITS__MAX_PRESENCE_MEMBERS=20000 REALTIME__ENGINEIO__MAX_BUFFERED_PACKETS=16384 \
    taskset -c "${SERVER_CORE:-0}" target/release/realtime >/dev/null &
  pid=$!
  for _ in $(seq 100); do curl -sf --max-time 1 "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  line=$(taskset -c "${BENCH_CORE:-1}" target/release/realtime-bench --server "127.0.0.1:$port" \
    fanout --payload 100 --connect-concurrency 200 --server-pid "$pid" "$@" 2>/dev/null) || line=null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$scratch"
  echo "{\"case\":\"$name\",\"result\":$line}" | tee -a "$out"
  sleep 2 # let the sockets leave TIME_WAIT behind
}

for _ in $(seq "$rounds"); do
  run_case "1 channel x 10" --subscribers 10 --messages 100000
  run_case "1 channel x 100" --subscribers 100 --messages 10000
  run_case "1 channel x 1,000" --subscribers 1000 --messages 2000
  run_case "1 channel x 10,000" --subscribers 10000 --messages 200
  run_case "100 channels x 10" --channels 100 --publishers 100 --subscribers 1000 --messages 100000
  run_case "1,000 channels x 10" --channels 1000 --publishers 1000 --subscribers 10000 --messages 100000
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print("| case | deliveries | deliveries/s | per server CPU second | lost | p99 ms |")
print("|---|---|---|---|---|---|")
for case in dict.fromkeys(r["case"] for r in runs):
    rs = [r["result"] for r in runs if r["case"] == case and r["result"]]
    if not rs:
        print(f"| {case} | failed | | | | |")
        continue
    med = lambda f: statistics.median(f(r) for r in rs)
    per_cpu = [r["deliveries"] / r["server_cpu_seconds"] for r in rs if r.get("server_cpu_seconds")]
    print(f"| {case} | {med(lambda r: r['deliveries']):,.0f} | {med(lambda r: r['deliveries_per_second']):,.0f}"
          f" | {statistics.median(per_cpu) if per_cpu else 0:,.0f} | {med(lambda r: r['lost']):,.0f}"
          f" | {med(lambda r: r['latency_us']['p99']) / 1000:,.1f} |")
PY
rm -f "$out"
