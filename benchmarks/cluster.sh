#!/usr/bin/env bash
# Several nodes on one PostgreSQL database (docs/benchmarks.md, "Several
# nodes"), alternated ROUNDS times, each case on a fresh database:
#
#   alone      one node: fan-out, fixed-rate latency, acked publishes
#   same       two nodes, subscribers and publisher on node A (B idle)
#   across     two nodes, subscribers on node B, publisher on node A
#   ephemeral  as across, on an ephemeral channel (relayed by NOTIFY)
#   three      three nodes, acked publishes spread over the three
#
# then the NOTIFY ceiling of this PostgreSQL (pgbench: commits/s that each
# notify, with a listener, against commits that do not).
#
#   scripts/with-postgres benchmarks/cluster.sh DIR [ROUNDS]
#
# DIR holds `realtime` and `realtime-bench`. Servers on core 0 (all nodes
# share it: the machine has two cores, so this measures what coordination
# costs, not how far nodes scale), generators on core 1, PostgreSQL where
# the kernel puts it; loopback only, every run bounded.
set -euo pipefail
dir=$1 rounds=${2:-3}
admin_url=${REALTIME_TEST_POSTGRES_URL:?set REALTIME_TEST_POSTGRES_URL or run under scripts/with-postgres}
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)")
psql=$pgbin/psql
out=$(mktemp)
ulimit -n 20000

pids=()
start_node() { # url port
  REALTIME__DATABASE__URL=$1 REALTIME__SERVER__HOST=127.0.0.1 REALTIME__SERVER__PORT=$2 \
    REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error REALTIME__LIMITS__PUBLISH_RATE=0 \
    REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
    taskset -c "$server_core" "$dir/realtime" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2/health" >/dev/null && return 0; sleep 0.1; done
  echo "node on $2 did not start" >&2; return 1
}
stop_nodes() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
bench() { taskset -c "$bench_core" "$dir/realtime-bench" "$@" 2>/dev/null; }

run_case() { # case
  local case=$1 db url fanout latency publish
  db="bench_$(date +%s%N)"
  "$psql" -q "$admin_url" -c "CREATE DATABASE $db"
  url="${admin_url%/*}/$db"
  start_node "$url" 7151
  case $case in
    alone)
      fanout=$(bench --server 127.0.0.1:7151 fanout --subscribers 1000 --messages 2000 --payload 100)
      latency=$(bench --server 127.0.0.1:7151 fanout --subscribers 1000 --messages 2000 --rate 200)
      publish=$(bench --server 127.0.0.1:7151 publish --publishers 16 --window 32 --seconds 8) ;;
    same|across|ephemeral)
      start_node "$url" 7152
      local subscribers=127.0.0.1:7151 flag=()
      [ "$case" != same ] && subscribers=127.0.0.1:7152
      [ "$case" = ephemeral ] && flag=(--ephemeral)
      fanout=$(bench "${flag[@]}" --server "$subscribers" fanout --subscribers 1000 --messages 2000 --payload 100 \
        --publish-server 127.0.0.1:7151)
      latency=$(bench "${flag[@]}" --server "$subscribers" fanout --subscribers 1000 --messages 2000 --rate 200 \
        --publish-server 127.0.0.1:7151)
      publish=$(bench "${flag[@]}" --server 127.0.0.1:7151 publish --publishers 16 --window 32 --seconds 8) ;;
    three)
      start_node "$url" 7152
      start_node "$url" 7153
      fanout=null latency=null
      local files=() port benches=()
      for port in 7151 7152 7153; do
        files+=("$(mktemp)")
        bench --server "127.0.0.1:$port" publish --publishers 5 --window 32 --seconds 8 >"${files[-1]}" &
        benches+=($!)
      done
      wait "${benches[@]}"
      publish=$(python3 -c '
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
print(json.dumps({"acked_per_second": sum(r["acked_per_second"] for r in runs),
                  "failed": sum(r["failed"] for r in runs),
                  "ack_p99_us": max(r["ack_latency_us"]["p99"] for r in runs)}))' "${files[@]}")
      rm -f "${files[@]}" ;;
  esac
  stop_nodes
  "$psql" -q "$admin_url" -c "DROP DATABASE $db"
  echo "{\"case\":\"$case\",\"fanout\":$fanout,\"latency\":$latency,\"publish\":$publish}" | tee -a "$out"
}

for _ in $(seq "$rounds"); do
  for case in ${CASES:-alone same across three}; do run_case "$case"; done
done

python3 - "$out" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
print("| case | fan-out deliveries/s | lost | p50 / p99 ms at 200,000 deliveries/s | acked publishes/s | ack p99 ms |")
print("|---|---|---|---|---|---|")
for case in ["alone", "same", "across", "ephemeral", "three"]:
    rows = [r for r in runs if r["case"] == case]
    if not rows:
        continue
    fan = [r["fanout"] for r in rows if r["fanout"]]
    lat = [r["latency"] for r in rows if r["latency"]]
    pub = [r["publish"] for r in rows]
    def fmt(value, scale=1, digits=0):
        return "–" if value is None else f"{value / scale:,.{digits}f}"
    p99 = median([p.get("ack_p99_us", p.get("ack_latency_us", {}).get("p99")) for p in pub])
    print(f"| {case} | {fmt(median([f['deliveries_per_second'] for f in fan]), 1e6, 2)} M"
          f" | {fmt(median([f['lost'] for f in fan]))}"
          f" | {fmt(median([l['latency_us']['p50'] for l in lat]), 1000, 1)} / {fmt(median([l['latency_us']['p99'] for l in lat]), 1000, 1)}"
          f" | {fmt(median([p['acked_per_second'] for p in pub]))} | {fmt(p99, 1000, 1)} |")
EOF

# The NOTIFY ceiling: commits/s of 1 and 3 clients that each notify, with
# one listener, against the same commits without a notification.
db="ceiling_$(date +%s%N)"
"$psql" -q "$admin_url" -c "CREATE DATABASE $db"
url="${admin_url%/*}/$db"
notify=$(mktemp) plain=$(mktemp)
echo "SELECT pg_notify('ceiling', :client_id::text);" >"$notify"
echo "SELECT 1;" >"$plain"
(echo "LISTEN ceiling;"; sleep 30) | "$psql" -q "$url" >/dev/null &
listener=$!
sleep 0.5
echo "| clients | commits/s with NOTIFY | without |"
echo "|---|---|---|"
for clients in 1 3; do
  with=$(taskset -c "$bench_core" "$pgbin/pgbench" -n -f "$notify" -c "$clients" -j "$clients" -T 5 "$url" 2>/dev/null \
    | awk '/^tps/ {print int($3)}')
  without=$(taskset -c "$bench_core" "$pgbin/pgbench" -n -f "$plain" -c "$clients" -j "$clients" -T 5 "$url" 2>/dev/null \
    | awk '/^tps/ {print int($3)}')
  echo "| $clients | $with | $without |"
done
kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true
"$psql" -q "$admin_url" -c "DROP DATABASE $db"
rm -f "$notify" "$plain" "$out"
