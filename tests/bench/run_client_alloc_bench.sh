#!/usr/bin/env bash
# run_client_alloc_bench.sh: what the client process's allocator costs a
# lookup, in one run: engram-bench (libengram) against one server, under
# glibc's default malloc, glibc with heap trimming raised, and jemalloc.
#
#   tests/bench/run_client_alloc_bench.sh BUILD_DIR [--rounds N] [--seconds S]
#
# Why: gRPC reads every reply into freshly malloc'd buffers; glibc gives the
# memory of a freed 512 KB reply back to the kernel (heap trimming), so the
# next reply page-faults it in again. The three configurations run
# alternately for --rounds rounds (default 3) of --seconds (default 4), 4096
# rows per call, 4 in flight, 1M x 128 B resident table; the client's page
# faults are counted with `perf stat -e page-faults` when perf is there.
# Prints each run and the medians per configuration.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--rounds N] [--seconds S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
ROUNDS=3 SECS=4
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    *) usage ;;
  esac
done
JE=$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -1 || true)
TRIM=glibc.malloc.trim_threshold=268435456
TMP=$(mktemp -d /tmp/engram-alloc.XXXXXX)
PID=
cleanup() { [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BUILD/server/engram-server" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  --threads 2 --resident-budget 1G --log-file "$TMP/server.log" &
PID=$!
for _ in $(seq 200); do [ -s "$TMP/port" ] && break; sleep 0.05; done
ADDR=127.0.0.1:$(cat "$TMP/port")
"$BUILD/client/engramctl" --server "$ADDR" import-synthetic --table alloc --rows 1000000 \
  --row-bytes 128 --seed 3 > /dev/null
HAVE_PERF=0
perf stat -e page-faults -x, -o /dev/null true 2>/dev/null && HAVE_PERF=1
echo "server $ADDR; 1M x 128 B resident; 4096 rows/call, 4 in flight; $ROUNDS rounds of ${SECS}s"
[ -n "$JE" ] || echo "(jemalloc not found: that configuration is skipped)"

run() {  # run NAME ENV... -> one result line
  local name=$1; shift
  local out
  if [ "$HAVE_PERF" = 1 ]; then
    out=$(env "$@" perf stat -e page-faults -x, -o "$TMP/pf" "$BUILD/tests/bench/engram-bench" \
      --server "$ADDR" --table alloc --inflight 4 --seconds "$SECS" --warmup 1 | grep '^bench:')
  else
    out=$(env "$@" "$BUILD/tests/bench/engram-bench" --server "$ADDR" --table alloc --inflight 4 \
      --seconds "$SECS" --warmup 1 | grep '^bench:')
  fi
  local rps calls faults=NA per=NA
  rps=$(sed -n 's/.* rows_per_s=\([0-9]*\).*/\1/p' <<<"$out")
  calls=$(sed -n 's/.* calls=\([0-9]*\).*/\1/p' <<<"$out")
  if [ "$HAVE_PERF" = 1 ]; then
    faults=$(grep page-faults "$TMP/pf" | cut -d, -f1)
    # calls counts the timed seconds only; the warm-up second adds its share.
    per=$(awk -v f="$faults" -v c="$calls" -v s="$SECS" 'BEGIN{printf "%.1f", f / (c * (s + 1) / s)}')
  fi
  echo "$name rows/s $rps faults/call $per"
  echo "$name $rps $per" >> "$TMP/results"
}
for r in $(seq "$ROUNDS"); do
  run glibc-default MALLOC_UNUSED=1
  run glibc-trim256M "GLIBC_TUNABLES=$TRIM"
  [ -z "$JE" ] || run jemalloc "LD_PRELOAD=$JE"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=$(awk '$1=="glibc-default"{print $2}' "$TMP/results" | median)
echo
printf "%-16s %14s %8s %12s\n" config "rows/s (med)" "x glibc" "faults/call"
for c in glibc-default glibc-trim256M jemalloc; do
  grep -q "^$c " "$TMP/results" || continue
  m=$(awk -v c="$c" '$1==c{print $2}' "$TMP/results" | median)
  f=$(awk -v c="$c" '$1==c{print $3}' "$TMP/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf "%-16s %14s %8.2f %12s\n" "$c" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN{print a/b}')" "$f"
done
