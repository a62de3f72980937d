#!/usr/bin/env bash
# run_ab_bench.sh: A/B of two engram-server binaries on the same machine in
# the same run, for a change made for speed (its commit message quotes it).
#
#   tests/bench/run_ab_bench.sh BUILD_DIR SERVER_A SERVER_B [--rounds N]
#       [--seconds S] [--rows N] [--rows-per-call N] [--inflight K]
#       [--resident-budget BYTES] [--zipf]
#
# Starts both servers (loopback, temp data dirs, --threads 2), imports the
# same synthetic table into each (default 1,000,000 x 128 B, resident), then
# runs BUILD_DIR's engram-bench against A and B alternately for --rounds
# rounds (default 5) of --seconds (default 5) each, so drift and noise of a
# shared machine hit both alike. Prints each round and the median rows/s,
# p99 and server CPU time per million rows (utime+stime from /proc, the
# figure least disturbed by other load) of each side and the ratio B/A.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR SERVER_A SERVER_B [--rounds N] [--seconds S] [--rows N] [--rows-per-call N] [--inflight K] [--resident-budget BYTES]" >&2; exit 2; }
[ $# -ge 3 ] || usage
BUILD=$(cd "$1" && pwd); A=$2; B=$3; shift 3
ROUNDS=5 SECS=5 ROWS=1000000 RPC=4096 INFLIGHT=4 BUDGET=4G
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --rows-per-call) RPC=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --resident-budget) BUDGET=$2; shift 2 ;;
    *) usage ;;
  esac
done
CTL=$BUILD/client/engramctl BENCH=$BUILD/tests/bench/engram-bench
TMP=$(mktemp -d /tmp/engram-ab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
start() {  # start NAME BINARY -> sets ADDR_NAME and PID_NAME
  local name=$1 bin=$2
  "$bin" --data "$TMP/$name" --listen 127.0.0.1:0 --port-file "$TMP/$name.port" --threads 2 \
    --resident-budget "$BUDGET" --log-file "$TMP/$name.log" &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  for _ in $(seq 200); do [ -s "$TMP/$name.port" ] && break; sleep 0.05; done
  [ -s "$TMP/$name.port" ] || { cat "$TMP/$name.log" >&2; exit 2; }
  local addr=127.0.0.1:$(cat "$TMP/$name.port")
  "$CTL" --server "$addr" --deadline-ms 600000 import-synthetic --table ab --rows "$ROWS" \
    --row-bytes 128 --seed 7 > /dev/null
  printf -v "ADDR_$name" '%s' "$addr"
}
start A "$A"; start B "$B"
echo "A: $A ($ADDR_A)"; echo "B: $B ($ADDR_B)"
echo "table: $ROWS rows x 128 B; $RPC rows per call, $INFLIGHT in flight, $ROUNDS rounds of ${SECS}s"
: > "$TMP/results"
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    addr_var=ADDR_$side pid_var=PID_$side
    t0=$(cpu_ticks "${!pid_var}")
    line=$("$BENCH" --server "${!addr_var}" --table ab --rows-per-call "$RPC" --inflight "$INFLIGHT" \
      --seconds "$SECS" --warmup 1 | grep '^bench:')
    rps=$(sed -n 's/.* rows_per_s=\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    t1=$(cpu_ticks "${!pid_var}")
    calls=$(sed -n 's/.* calls=\([0-9]*\).*/\1/p' <<<"$line")
    # CPU seconds per million rows over the whole run (warm-up included).
    cpu=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v c="$calls" -v n="$RPC" -v s="$SECS" -v w=1 \
      'BEGIN{rows=c*n*(s+w)/s; printf "%.4f", (t/hz)/(rows/1e6)}')
    echo "round $r $side rows/s $rps p99_ms $p99 server_cpu_s_per_Mrow $cpu"
    echo "$side $rps $p99 $cpu" >> "$TMP/results"
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ra=$(awk '$1=="A"{print $2}' "$TMP/results" | median); rb=$(awk '$1=="B"{print $2}' "$TMP/results" | median)
pa=$(awk '$1=="A"{print $3}' "$TMP/results" | median); pb=$(awk '$1=="B"{print $3}' "$TMP/results" | median)
echo "median rows/s: A $ra  B $rb  B/A $(awk -v a="$ra" -v b="$rb" 'BEGIN{printf "%.3f", b/a}')"
echo "median p99 ms: A $pa  B $pb  B/A $(awk -v a="$pa" -v b="$pb" 'BEGIN{printf "%.3f", b/a}')"
ca=$(awk '$1=="A"{print $4}' "$TMP/results" | median); cb=$(awk '$1=="B"{print $4}' "$TMP/results" | median)
echo "median server CPU s per M rows: A $ca  B $cb  B/A $(awk -v a="$ca" -v b="$cb" 'BEGIN{printf "%.3f", b/a}')"
