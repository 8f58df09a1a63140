#!/usr/bin/env bash
# Ours against the peers, side by side in one run (docs/benchmarks.md,
# "Against the peers"): the realtime server on SQLite (and on PostgreSQL
# when REALTIME_TEST_POSTGRES_URL is set), the socketioxide peer and the
# Node socket.io peer (both in memory, the same contract). Every figure
# runs each server in turn on a fresh process (and a fresh database),
# ROUNDS times, alternated; the summary prints medians and our ratio to
# each peer. Server on core 0, realtime-bench on core 1; loopback only;
# every run bounded. Server `ephemeral` (not run unless named in SERVERS)
# is ours on SQLite with the bench channel ephemeral: in memory, the
# peers' contract, which tells the cost of our durability from the cost of
# the rest.
#
#   benchmarks/run.sh [ROUNDS]                                # default 3
#   scripts/with-postgres benchmarks/run.sh [ROUNDS]          # PostgreSQL too
#   SERVERS="sqlite socketioxide" FIGURES="fanout publish4" benchmarks/run.sh 5
#   SERVERS="sqlite ephemeral socketioxide" FIGURES="publish4 publish16" benchmarks/run.sh 3
#
# Figures: fanout (1,000 subscribers x 2,000 messages x 100 B; deliveries
# per second, and per second of server CPU from the first publish to the
# last delivery), latency (the same at a fixed
# 200,000 deliveries/s: p50/p99), publish4 and publish16 (acked publishes,
# 4 and 16 publishers x 32 in flight, 8 s), connects (5,000 clients of
# distinct users over 100 channels: connects + subscribes per second, and
# the server's CPU per connect), connects-alone (the same into 5,000
# one-member channels; not run unless named in FIGURES), memory (RSS per
# idle subscribed WebSocket, 15,000 of them).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
default_servers="sqlite"
[ -n "${REALTIME_TEST_POSTGRES_URL:-}" ] && default_servers+=" postgres"
servers=${SERVERS:-$default_servers socketioxide node}
figures=${FIGURES:-fanout latency publish4 publish16 connects memory}
# The development JWT secret (config.example.toml): ours checks the
# distinct users' tokens; the peers ignore them.
jwt_secret=${JWT_SECRET:-dev-only-insecure-jwt-secret-change-me}
psql=$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -1)
psql=${psql:-psql}
ulimit -n "$(ulimit -Hn)"
out=${OUT:-$(mktemp)}

cargo build --release -j2 --bin realtime --bin realtime-bench >&2
[[ " $servers " == *" socketioxide "* ]] &&
  (cd benchmarks/socketioxide-peer && cargo build --release -j2 >&2)
[[ " $servers " == *" node "* ]] &&
  (cd benchmarks/node-peer && npm ci --no-audit --no-fund --loglevel=error >&2)
bench=target/release/realtime-bench

wait_healthy() { # port
  for _ in $(seq 100); do
    # Every server answers an Engine.IO handshake (the peers have no /health).
    curl -sf --max-time 1 "http://127.0.0.1:$1/socket.io/?EIO=4&transport=polling" >/dev/null && return 0
    sleep 0.1
  done
  echo "server on $1 did not start" >&2
  return 1
}

# Starts SERVER fresh; sets pid, port and the bench's extra arguments.
start_server() { # server
  scratch=$(mktemp -d)
  case $1 in
    sqlite|postgres|ephemeral)
      local url="sqlite://$scratch/realtime.db"
      if [ "$1" = postgres ]; then
        database="bench_$(date +%s%N)"
        "$psql" -q "$REALTIME_TEST_POSTGRES_URL" -c "CREATE DATABASE $database"
        url="${REALTIME_TEST_POSTGRES_URL%/*}/$database"
      fi
      port=7130
      REALTIME__DATABASE__URL=$url REALTIME__SERVER__HOST=127.0.0.1 REALTIME__SERVER__PORT=$port \
        REALTIME__SERVER__WORKERS=1 REALTIME__LOG__LEVEL=error REALTIME__LIMITS__PUBLISH_RATE=0 \
        REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0 \
        REALTIME__AUTH__JWT_SECRET=$jwt_secret \
        taskset -c "$server_core" target/release/realtime >/dev/null &
      extra=()
      # The same server, its bench channel ephemeral: delivered live and
      # never stored, the contract the in-memory peers keep.
      [ "$1" = ephemeral ] && extra=(--ephemeral)
      ;;
    socketioxide)
      port=7132
      taskset -c "$server_core" benchmarks/socketioxide-peer/target/release/socketioxide-peer $port >/dev/null &
      extra=(--no-setup) ;;
    node)
      port=7131
      taskset -c "$server_core" node benchmarks/node-peer/server.mjs $port >/dev/null &
      extra=(--no-setup) ;;
  esac
  pid=$!
  wait_healthy "$port"
}

stop_server() { # server
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$scratch"
  if [ "$1" = postgres ]; then
    "$psql" -q "$REALTIME_TEST_POSTGRES_URL" -c "DROP DATABASE $database" || true
  fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

measure() { # figure server round
  local figure=$1 server=$2 args=()
  start_server "$server"
  case $figure in
    fanout) args=(fanout --subscribers 1000 --messages 2000 --payload 100 --server-pid "$pid") ;;
    latency) args=(fanout --subscribers 1000 --messages 2000 --payload 100 --rate 200) ;;
    publish4) args=(publish --publishers 4 --window 32 --seconds 8) ;;
    publish16) args=(publish --publishers 16 --window 32 --seconds 8) ;;
    # connects-alone: the same clients each in a channel of its own, no
    # member to tell of a join, so what a connect costs without presence
    # frames.
    connects|connects-alone)
      local channels=100
      [ "$figure" = connects-alone ] && channels=5000
      args=(--users-jwt-secret "$jwt_secret" conns --connections 5000 --channels "$channels" --sources 4
        --connect-concurrency 200 --settle-seconds 0) ;;
    # Held 12 s before measuring, every server alike: an idle server's
    # steady state (ours gives freed pages back every 10 s).
    memory) args=(conns --connections 15000 --channels 100 --sources 4 --connect-concurrency 200
      --settle-seconds 12 --server-pid "$pid") ;;
  esac
  local before after line
  before=$(cpu_ticks)
  line=$(taskset -c "$bench_core" "$bench" --server "127.0.0.1:$port" "${extra[@]}" "${args[@]}" 2>/dev/null) || line=null
  after=$(cpu_ticks)
  stop_server "$server"
  local cpu
  cpu=$(python3 -c "print(($after - $before) / $(getconf CLK_TCK))")
  echo "{\"figure\":\"$figure\",\"server\":\"$server\",\"round\":$3,\"server_cpu_seconds\":$cpu,\"result\":$line}" | tee -a "$out"
  # Let the sockets of a connection-heavy run leave TIME_WAIT behind.
  if [ "$figure" = memory ] || [[ "$figure" = connects* ]]; then sleep 3; fi
}

for round in $(seq "$rounds"); do
  for figure in $figures; do
    for server in $servers; do measure "$figure" "$server" "$round"; done
  done
done

python3 - "$out" "$servers" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
servers = sys.argv[2].split()
ours = [s for s in servers if s in ("sqlite", "postgres", "ephemeral")]
peers = [s for s in servers if s not in ours]

def value(run, figure):
    r = run["result"]
    if r is None:
        return None
    if figure == "fanout/s":
        return r["deliveries_per_second"]
    if figure == "fanout per cpu s":
        # The server's CPU from the first publish to the last delivery.
        cpu = r.get("server_cpu_seconds")
        return r["deliveries"] / cpu if cpu else None
    if figure == "fanout lost":
        return r["lost"]
    if figure == "p50 ms @200k/s":
        return r["latency_us"]["p50"] / 1000
    if figure == "p99 ms @200k/s":
        return r["latency_us"]["p99"] / 1000
    if figure.startswith("acked/s"):
        return r["acked_per_second"]
    if figure.startswith("ack p99 ms"):
        return r["ack_latency_us"]["p99"] / 1000
    if figure.startswith("connects/s"):
        return r["connects_per_second"]
    if figure.startswith("connect cpu us"):
        return 1e6 * run["server_cpu_seconds"] / r["connections"] if r.get("connections") else None
    if figure == "bytes/socket":
        return r["server_bytes_per_connection"]

rows = [("fanout/s", "fanout", True), ("fanout per cpu s", "fanout", True), ("fanout lost", "fanout", False),
        ("p50 ms @200k/s", "latency", False), ("p99 ms @200k/s", "latency", False),
        ("acked/s 4x32", "publish4", True), ("ack p99 ms 4x32", "publish4", False),
        ("acked/s 16x32", "publish16", True), ("ack p99 ms 16x32", "publish16", False),
        ("connects/s", "connects", True), ("connect cpu us", "connects", False),
        ("connects/s alone", "connects-alone", True), ("connect cpu us alone", "connects-alone", False),
        ("bytes/socket", "memory", False)]
header = ["figure"] + servers + [f"{o}/{p}" for o in ours for p in peers]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for name, figure, _higher_is_better in rows:
    medians = {}
    for server in servers:
        values = [value(r, name) for r in runs if r["figure"] == figure and r["server"] == server]
        values = [v for v in values if v is not None]
        medians[server] = statistics.median(values) if values else None
    if all(v is None for v in medians.values()):
        continue
    cells = [name] + [("–" if medians[s] is None else f"{medians[s]:,.1f}" if medians[s] < 100 else f"{medians[s]:,.0f}") for s in servers]
    for o in ours:
        for p in peers:
            a, b = medians[o], medians[p]
            cells.append("–" if not a or not b else f"{a / b:.2f}")
    print("| " + " | ".join(cells) + " |")
PY
echo "raw runs: $out" >&2
