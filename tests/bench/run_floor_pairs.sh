#!/usr/bin/env bash
# run_floor_pairs.sh: engram-server against engram-floor-server (the least a
# gRPC-core server can do to answer a Lookup, tests/bench/floor_server.c) in
# alternating rounds, for the lookup path's cost above the transport.
#
#   tests/bench/run_floor_pairs.sh BUILD_DIR [--server BIN] [--base BIN]
#       [--rounds N (5)] [--seconds S (5)] [--rows N (1000000)]
#       [--rows-per-call N (4096)] [--inflight K (8)] [--threads N (2)]
#       [--perf DIR]
#
# Starts on loopback, each with --threads N: BUILD_DIR's engram-floor-server
# (or none of it changed: the floor is the bench's own), the engram-server
# under test (--server, default BUILD_DIR's) and, with --base, an older
# engram-server binary as a third side, for an A/B against the floor in the
# same run. Each engram-server imports the same synthetic table the floor
# generates (ROWS x 128 B, seed 7, resident). Then --rounds rounds of
# --seconds each of BUILD_DIR's engram-bench against every side; the side
# that goes first rotates from round to round, so the drift of a shared
# machine hits every side alike. Prints each run, then per side the median
# rows/s and server CPU seconds per million rows (utime+stime from
# /proc/PID/stat over the run, warm-up included), and per round the ratio
# of each engram-server to the floor with the median and range of those
# ratios (and server/base when --base is given).
#
# --perf DIR: afterwards, one more run per side under `perf record -g -p
# PID` (the server's threads only), written to DIR/SIDE.perf.data.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--server BIN] [--base BIN] [--rounds N] [--seconds S] [--rows N] [--rows-per-call N] [--inflight K] [--threads N] [--perf DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
SERVER=$BUILD/server/engram-server BASE= ROUNDS=5 SECS=5 ROWS=1000000 RPC=4096 INFLIGHT=8
THREADS=2 PERF_DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --rows-per-call) RPC=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --perf) PERF_DIR=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    *) usage ;;
  esac
done
CTL=$BUILD/client/engramctl BENCH=$BUILD/tests/bench/engram-bench
FLOOR=$BUILD/tests/bench/engram-floor-server
for b in "$CTL" "$BENCH" "$FLOOR" "$SERVER" ${BASE:+"$BASE"}; do
  [ -x "$b" ] || { echo "run_floor_pairs.sh: missing $b (build first)" >&2; exit 2; }
done
TABLE=pairs SEED=7
TMP=$(mktemp -d /tmp/engram-floor-pairs.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # wait_port FILE PID LOG
  for _ in $(seq 600); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "run_floor_pairs.sh: no port in $1:" >&2; cat "$3" >&2; exit 2
}
start_engram() {  # start_engram SIDE BINARY
  local side=$1 bin=$2
  "$bin" --data "$TMP/$side" --listen 127.0.0.1:0 --port-file "$TMP/$side.port" \
    --threads "$THREADS" --resident-budget 4G --log-file "$TMP/$side.log" &
  PIDS+=($!); printf -v "PID_$side" '%s' "$!"
  wait_port "$TMP/$side.port" "$!" "$TMP/$side.log"
  local addr=127.0.0.1:$(cat "$TMP/$side.port")
  "$CTL" --server "$addr" --deadline-ms 600000 import-synthetic --table "$TABLE" --rows "$ROWS" \
    --row-bytes 128 --seed "$SEED" > /dev/null
  printf -v "ADDR_$side" '%s' "$addr"
}
"$FLOOR" --listen 127.0.0.1:0 --port-file "$TMP/floor.port" --threads "$THREADS" \
  --table "$TABLE" --rows "$ROWS" --row-bytes 128 --seed "$SEED" 2> "$TMP/floor.log" &
PIDS+=($!); PID_floor=$!
wait_port "$TMP/floor.port" "$PID_floor" "$TMP/floor.log"
ADDR_floor=127.0.0.1:$(cat "$TMP/floor.port")
SIDES=(floor server)
start_engram server "$SERVER"
if [ -n "$BASE" ]; then start_engram base "$BASE"; SIDES+=(base); fi

echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "floor:  $FLOOR ($ADDR_floor)"
echo "server: $SERVER ($ADDR_server)"
[ -z "$BASE" ] || echo "base:   $BASE ($ADDR_base)"
echo "table: $ROWS rows x 128 B resident; $RPC rows per call, $INFLIGHT in flight, --threads $THREADS, $ROUNDS rounds of ${SECS}s"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run_side() {  # run_side SIDE ROUND -> one line in results
  local side=$1 r=$2 addr_var=ADDR_$1 pid_var=PID_$1
  local t0 t1 line rps p99 calls cpu
  t0=$(cpu_ticks "${!pid_var}")
  line=$("$BENCH" --server "${!addr_var}" --table "$TABLE" --rows-per-call "$RPC" \
    --inflight "$INFLIGHT" --seconds "$SECS" --warmup 1 | grep '^bench:')
  t1=$(cpu_ticks "${!pid_var}")
  rps=$(sed -n 's/.* rows_per_s=\([0-9]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  calls=$(sed -n 's/.* calls=\([0-9]*\).*/\1/p' <<<"$line")
  # Rows served over the whole run, the warm-up's at the timed rate.
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v c="$calls" -v n="$RPC" -v s="$SECS" \
    'BEGIN{rows=c*n*(s+1)/s; printf "%.4f", (t/hz)/(rows/1e6)}')
  printf 'round %d %-6s rows/s %9d p99_ms %7s server_cpu_s_per_Mrow %s\n' "$r" "$side" "$rps" "$p99" "$cpu"
  echo "$r $side $rps $p99 $cpu" >> "$TMP/results"
}
: > "$TMP/results"
ns=${#SIDES[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((ns - 1))); do
    run_side "${SIDES[$(( (r - 1 + k) % ns ))]}" "$r"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {printf "%.4g\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v s="$1" -v c="$2" '$2==s{print $c}' "$TMP/results"; }
echo
for side in "${SIDES[@]}"; do
  printf '%-6s median rows/s %9.0f  p99_ms %7s  server_cpu_s_per_Mrow %s\n' "$side" \
    "$(col "$side" 3 | median)" "$(col "$side" 4 | median)" "$(col "$side" 5 | median)"
done
ratios() {  # ratios NUM DEN COLUMN: per-round NUM/DEN
  awk -v a="$1" -v b="$2" -v c="$3" '$2==a{x[$1]=$c} $2==b{y[$1]=$c}
    END{for (r in x) if (y[r] > 0) printf "%d %.4f\n", r, x[r]/y[r]}' "$TMP/results" | sort -n
}
report() {  # report NUM DEN LABEL
  local rs
  rs=$(ratios "$1" "$2" 3)
  echo "$3 rows/s per round: $(awk '{printf "%s ", $2}' <<<"$rs")"
  echo "$3 rows/s: median $(awk '{print $2}' <<<"$rs" | median) (min $(awk '{print $2}' <<<"$rs" | sort -g | head -1), max $(awk '{print $2}' <<<"$rs" | sort -g | tail -1)); CPU per Mrow: median $(ratios "$1" "$2" 5 | awk '{print $2}' | median)"
}
report server floor "server/floor"
[ -z "$BASE" ] || { report base floor "base/floor  "; report server base "server/base "; }

if [ -n "$PERF_DIR" ]; then
  for side in "${SIDES[@]}"; do
    pid_var=PID_$side addr_var=ADDR_$side
    perf record -g -p "${!pid_var}" -o "$PERF_DIR/$side.perf.data" -- sleep "$((SECS + 1))" \
      2> "$TMP/perf.$side.log" &
    "$BENCH" --server "${!addr_var}" --table "$TABLE" --rows-per-call "$RPC" \
      --inflight "$INFLIGHT" --seconds "$SECS" --warmup 1 | grep '^bench:' | sed "s/^/perf $side /"
    wait $!
  done
  echo "perf: $PERF_DIR/{$(IFS=,; echo "${SIDES[*]}")}.perf.data"
fi
