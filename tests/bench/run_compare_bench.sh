#!/usr/bin/env bash
# run_compare_bench.sh: engram-server against Redis, in-process RocksDB, the
# transport's floor and a memcpy gather, in one command and one table.
#
#   tests/bench/run_compare_bench.sh BUILD_DIR [--seconds S] [--quick]
#                                    [--inflight K] [--threads N]
#
# Builds nothing. On loopback, with a temp dir, it starts:
#  - engram-server (--threads N, default 2) with a resident budget that
#    holds the hot table and not the cold one, --hot-cache-bytes 128M and
#    --block-cache 32M, and imports with engramctl the hot table (bench.hot:
#    4M rows x 128 B, seed 12345, held resident) and then the cold one
#    (demo.l1: the demo model's layer-1 table, ~10.3M rows x 128 B = 1.3 GB,
#    seed 1, ~8x the 160 MiB of cache, so NOT resident). One server serves
#    both: tiers are per table, and a second server would only double the
#    imports and the RAM;
#  - engram-floor-server (--threads N) holding the hot table's rows;
#  - redis-server (Debian's, --save "" --appendonly no) on a free port,
#    when installed (engram-compare-bench loads the hot rows into it);
# then runs engram-compare-bench (default 3 s per cell after 1 s of warm-up,
# 8 s for the cold table's cells so every system's caches reach the
# workload's steady state; batches of 256, 4096 and 65536 rows; --quick:
# 0.5 s after 0.25 s (1 s cold), a
# 1M-row hot table and no 65536-row batches, a smoke run of a minute or
# two, most of it the imports), and stops everything it started on any exit (trap EXIT), by
# PID. The bench process runs with glibc's heap trimming raised
# (GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456), the setting the
# README recommends for worker processes; it applies alike to every
# in-process client (libengram, hiredis, RocksDB, memcpy).
# Exit status: the bench's (0: every cell ran and verified).
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--seconds S] [--quick] [--inflight K] [--threads N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
SECS=3 WARMUP=1 COLD_WARMUP=8 HOT_ROWS=$((4 << 20)) STREAM=$((16 << 20)) INFLIGHT=4 THREADS=2
BATCHES=256,4096,65536
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --quick) SECS=0.5 WARMUP=0.25 COLD_WARMUP=1 HOT_ROWS=$((1 << 20)) STREAM=$((4 << 20)) BATCHES=256,4096; shift ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) usage ;;
  esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOKENS=$HERE/../data/workload/tokens.bin
SERVER_BIN=$BUILD/server/engram-server
CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-compare-bench
FLOOR=$BUILD/tests/bench/engram-floor-server
for b in "$SERVER_BIN" "$CTL" "$BENCH" "$FLOOR"; do
  [ -x "$b" ] || { echo "run_compare_bench.sh: missing $b (build first)" >&2; exit 2; }
done
[ -r "$TOKENS" ] || { echo "run_compare_bench.sh: missing $TOKENS" >&2; exit 2; }

ROW_BYTES=128 HOT_SEED=12345 COLD_SEED=1
HOT_CACHE=$((128 << 20)) BLOCK_CACHE=$((32 << 20))
BUDGET=$(( HOT_ROWS * ROW_BYTES + (64 << 20) ))   # the hot table fits, the cold one does not

TMP=$(mktemp -d /tmp/engram-compare-bench.XXXXXX)
PIDS=()
stop_all() {
  local pid rc
  for pid in "${PIDS[@]}"; do
    rc=0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || rc=$?
    echo "stopped pid $pid ($(cat "$TMP/name.$pid" 2>/dev/null || echo ?)), exit status $rc"
  done
  PIDS=()
}
trap 'stop_all; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# Waits for a port file written by the process named $2 (pid $3).
wait_port() {
  local file=$1 name=$2 pid=$3 log=$4
  for _ in $(seq 600); do
    [ -s "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$name died:" >&2; cat "$log" >&2; exit 2; }
    sleep 0.05
  done
  echo "run_compare_bench.sh: $name wrote no port" >&2
  exit 2
}

started() { PIDS+=("$1"); echo "$2" > "$TMP/name.$1"; }

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, load average $(cut -d' ' -f1-3 /proc/loadavg)"

"$SERVER_BIN" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/engram.port" \
  --threads "$THREADS" --resident-budget "$BUDGET" --hot-cache-bytes "$HOT_CACHE" \
  --block-cache "$BLOCK_CACHE" --log-file "$TMP/server.log" &
started $! engram-server
wait_port "$TMP/engram.port" engram-server $! "$TMP/server.log"
ADDR=127.0.0.1:$(cat "$TMP/engram.port")
echo "engram-server: $ADDR, --threads $THREADS, --resident-budget $BUDGET, --hot-cache-bytes $HOT_CACHE, --block-cache $BLOCK_CACHE"

COLD_ROWS=$("$BENCH" --demo-rows)
t0=$(date +%s.%N)
"$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --table bench.hot \
  --rows "$HOT_ROWS" --row-bytes "$ROW_BYTES" --seed "$HOT_SEED"
"$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --table demo.l1 \
  --rows "$COLD_ROWS" --row-bytes "$ROW_BYTES" --seed "$COLD_SEED" --dim 64 --dtype bf16
echo "import: both tables in $(echo "$(date +%s.%N) - $t0" | bc) s"

"$FLOOR" --listen 127.0.0.1:0 --port-file "$TMP/floor.port" --threads "$THREADS" \
  --table bench.hot --rows "$HOT_ROWS" --row-bytes "$ROW_BYTES" --seed "$HOT_SEED" \
  2> "$TMP/floor.log" &
started $! engram-floor-server
wait_port "$TMP/floor.port" engram-floor-server $! "$TMP/floor.log"
FLOOR_ADDR=127.0.0.1:$(cat "$TMP/floor.port")
echo "engram-floor-server: $FLOOR_ADDR, --threads $THREADS"

REDIS_ARGS=()
if ! "$BENCH" --has-redis; then
  echo "redis: left out: engram-compare-bench was built without hiredis (install libhiredis-dev, re-run cmake)"
elif ! command -v redis-server > /dev/null; then
  echo "redis: left out: redis-server is not installed (Debian package redis-server)"
else
  RPORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no --daemonize no \
    --dir "$TMP" --logfile "$TMP/redis.log" &
  started $! redis-server
  for _ in $(seq 200); do
    redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
  done
  echo "redis: $(redis-server --version | cut -d' ' -f1-3), 127.0.0.1:$RPORT, --save \"\" --appendonly no"
  REDIS_ARGS=(--redis "127.0.0.1:$RPORT")
fi
echo

rc=0
echo "client process: GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456"
GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456 \
"$BENCH" --engram "$ADDR" --floor "$FLOOR_ADDR" "${REDIS_ARGS[@]}" \
  --rocksdb-dir "$TMP/rocksdb" --tokens "$TOKENS" --cold-cache $((HOT_CACHE + BLOCK_CACHE)) \
  --seconds "$SECS" --warmup "$WARMUP" --cold-warmup "$COLD_WARMUP" --inflight "$INFLIGHT" --hot-rows "$HOT_ROWS" \
  --hot-seed "$HOT_SEED" --cold-seed "$COLD_SEED" --stream-rows "$STREAM" --batches "$BATCHES" \
  || rc=$?
echo
stop_all
exit "$rc"
