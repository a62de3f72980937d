#!/usr/bin/env bash
# run_bench.sh: runs engram-bench against a fresh engram-server.
#
#   tests/bench/run_bench.sh BUILD_DIR [--rows N] [--row-bytes B]
#                            [--seconds S] [--inflight "1 4 8"] [--seed S]
#
# Builds nothing. Starts BUILD_DIR/server/engram-server on a free loopback
# port (--listen 127.0.0.1:0 --port-file) with a temporary data dir and a
# resident budget large enough to hold the table in RAM, imports a synthetic
# table with engramctl import-synthetic (default 1,000,000 rows x 128 bytes =
# 128 MB), then runs engram-bench once per in-flight depth (default 1, 4, 8),
# each for --seconds (default 10) with --baseline and an untimed --verify
# pass. Stops the server with SIGTERM and removes the temp dir on any exit.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--rows N] [--row-bytes B] [--seconds S] [--inflight \"1 4 8\"] [--seed S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
ROWS=1000000 ROW_BYTES=128 SECONDS_EACH=10 INFLIGHT="1 4 8" SEED=12345
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --row-bytes) ROW_BYTES=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    *) usage ;;
  esac
done

SERVER_BIN=$BUILD/server/engram-server
CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-bench
for b in "$SERVER_BIN" "$CTL" "$BENCH"; do
  [ -x "$b" ] || { echo "run_bench.sh: missing $b (build first)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/engram-bench.XXXXXX)
SERVER_PID=
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid=$SERVER_PID rc=0
  SERVER_PID=
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  echo "server: stopped with SIGTERM, exit status $rc"
}
cleanup() { stop_server; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Twice the table (and at least 64 MiB), so it is held resident.
BUDGET=$(( ROWS * ROW_BYTES * 2 + (64 << 20) ))
"$SERVER_BIN" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  --resident-budget "$BUDGET" --log-file "$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 200); do
  [ -s "$TMP/port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 2; }
  sleep 0.05
done
[ -s "$TMP/port" ] || { echo "run_bench.sh: server wrote no port" >&2; exit 2; }
ADDR=127.0.0.1:$(cat "$TMP/port")
echo "server: $ADDR, data $TMP/data, resident budget $BUDGET bytes"

t0=$(date +%s.%N)
"$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --table bench \
  --rows "$ROWS" --row-bytes "$ROW_BYTES" --seed "$SEED"
echo "import: $ROWS rows x $ROW_BYTES B in $(echo "$(date +%s.%N) - $t0" | bc) s"

for k in $INFLIGHT; do
  echo
  "$BENCH" --server "$ADDR" --table bench --inflight "$k" \
    --seconds "$SECONDS_EACH" --baseline --seed "$SEED" --verify
done
echo
stop_server
