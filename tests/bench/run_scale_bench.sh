#!/usr/bin/env bash
# run_scale_bench.sh: the once-in-a-while run at the scale of the disk:
# import one large synthetic table, serve its rows cold, restart.
#
#   tests/bench/run_scale_bench.sh BUILD_DIR [--rows N (160M)] [--hot-cache BYTES (2G)]
#       [--block-cache BYTES (256M)] [--seconds S (20)] [--data DIR]
#
# Starts engram-server with nothing resident, a --hot-cache BYTES hot-row
# tier and a --block-cache BYTES RocksDB block cache; imports N rows x 128 B
# (engramctl import-synthetic, seed 7; 160M rows = 20.5 GB) and reports the
# import rate and the size on disk; then engram-bench, 4096 uniform random
# rows per call, 8 in flight, for --seconds, with an untimed verify pass
# (uniform rows over 160M rows are the coldest case: nearly every row is a
# RocksDB read); then SIGTERM and a restart, timing how long the server
# takes to serve again. --data keeps the data directory (default: a temp
# dir, removed at the end). Not run by CI: it takes minutes and 20+ GB.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--rows N] [--hot-cache BYTES] [--block-cache BYTES] [--seconds S] [--data DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
ROWS=160000000 HOT=2G BLOCK=256M SECS=20 DATA=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --hot-cache) HOT=$2; shift 2 ;;
    --block-cache) BLOCK=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    *) usage ;;
  esac
done
TMP=$(mktemp -d /tmp/engram-scale.XXXXXX)
[ -n "$DATA" ] || DATA=$TMP/data
PID=
stop() { [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }; PID=; }
cleanup() { stop; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {
  rm -f "$TMP/port"
  "$BUILD/server/engram-server" --data "$DATA" --listen 127.0.0.1:0 --port-file "$TMP/port" \
    --threads 2 --resident-budget 0 --hot-cache-bytes "$HOT" --block-cache "$BLOCK" \
    --log-file "$TMP/server.log" &
  PID=$!
  local t0=$(date +%s.%N)
  for _ in $(seq 6000); do
    [ -s "$TMP/port" ] && break
    kill -0 "$PID" 2>/dev/null || { tail "$TMP/server.log" >&2; exit 2; }
    sleep 0.05
  done
  ADDR=127.0.0.1:$(cat "$TMP/port")
  echo "server: $ADDR serving after $(echo "$(date +%s.%N) - $t0" | bc) s (hot cache $HOT, block cache $BLOCK, nothing resident)"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), disk free $(df -h "$(dirname "$DATA")" | awk 'NR==2{print $4}')"
start
"$BUILD/client/engramctl" --server "$ADDR" --deadline-ms 36000000 import-synthetic --table scale \
  --rows "$ROWS" --row-bytes 128 --seed 7 --progress-every 30
echo "on disk: $(du -sh "$DATA" | cut -f1)"
"$BUILD/tests/bench/engram-bench" --server "$ADDR" --table scale --inflight 8 --seconds "$SECS" \
  --seed 7 --verify
echo "restart:"
stop
start
"$BUILD/tests/bench/engram-bench" --server "$ADDR" --table scale --inflight 8 --seconds 5 \
  --seed 7 --verify | tail -1
stop
