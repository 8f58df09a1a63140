# Helpers shared by the benchmark scripts that compare two builds.

# The per-address connection limits must be off (every bench socket comes
# from 127.0.0.1), but builds from before they existed refuse the keys.
limits_off() { # dir
  local probe
  probe=$(mktemp -d)
  if REALTIME__DATABASE__URL="sqlite://$probe/probe.db" REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 \
      "$1/realtime" migrate >/dev/null 2>&1; then
    echo "REALTIME__LIMITS__MAX_SOCKETS_PER_ADDRESS=0 REALTIME__LIMITS__CONNECT_RATE_PER_ADDRESS=0"
  fi
  rm -rf "$probe"
}

