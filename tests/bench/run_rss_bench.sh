#!/usr/bin/env bash
# run_rss_bench.sh: checks the server's memory bound, RSS <= 1.1 x (resident
# bytes + cache budget) + 64 MB, under lookups that fill every cache.
#
#   tests/bench/run_rss_bench.sh BUILD_DIR [--config "RESIDENT HOT BLOCK BIG_ROWS"]...
#                                [--seconds S]
#
# Definitions (all in bytes; 1 MB here = 2^20 B, the unit of the server's
# byte options):
#   resident bytes = the bytes of the tables the server holds resident (rows
#                    x row bytes of each table listed RESIDENT yes), not the
#                    --resident-budget, which may be larger than what is used;
#   cache budget   = --hot-cache-bytes + --block-cache;
#   bound          = 1.1 x (resident bytes + cache budget) + 64 MiB.
# For each configuration (default two: "512M 256M 64M 12000000" and
# "0 1G 128M 16000000"), it starts BUILD_DIR/server/engram-server on a free
# loopback port with a temp data dir, --threads 2, --resident-budget
# RESIDENT, --hot-cache-bytes HOT and --block-cache BLOCK; imports with
# engramctl import-synthetic a 128-byte-row table filling 90% of RESIDENT
# (held resident; none when RESIDENT is 0) and a BIG_ROWS-row table that does
# not fit (served by the hot cache and RocksDB); then runs engram-bench
# (4 in flight) against the big table for S seconds (default 40: long enough
# for uniform lookups to fill both caches) and against the resident one for
# 5 s. A sampler reads VmRSS and VmHWM from /proc/PID/status every 0.5 s
# throughout. It prints RSS at each phase, the peak, the server's own
# figures (engramctl stats --json: hot cache, block cache, jemalloc) and
# PASS or MISS of the peak RSS (VmHWM) against the bound; the exit status
# is 1 when any configuration misses. Stops each server with SIGTERM and
# removes the temp dir on any exit.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--config \"RESIDENT HOT BLOCK BIG_ROWS\"]... [--seconds S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
CONFIGS=() SECS=40
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIGS+=("$2"); shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=("512M 256M 64M 12000000" "0 1G 128M 16000000")

SERVER_BIN=$BUILD/server/engram-server
CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-bench
for b in "$SERVER_BIN" "$CTL" "$BENCH"; do
  [ -x "$b" ] || { echo "run_rss_bench.sh: missing $b (build first)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/engram-rss.XXXXXX)
SERVER_PID= SAMPLER_PID=
stop_server() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; fi
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

bytes() {   # 512M, 1G, 64K or a plain number -> bytes
  local v=$1
  case "$v" in
    *K|*k) echo $(( ${v%?} << 10 )) ;;
    *M|*m) echo $(( ${v%?} << 20 )) ;;
    *G|*g) echo $(( ${v%?} << 30 )) ;;
    *) echo "$v" ;;
  esac
}
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }   # kB
mib() { echo "scale=1; $1 / 1048576" | bc; }

FAILED=0
for cfg in "${CONFIGS[@]}"; do
  read -r RES HOT BLK BIG <<<"$cfg"
  RESB=$(bytes "$RES") HOTB=$(bytes "$HOT") BLKB=$(bytes "$BLK")
  D=$TMP/run.$RANDOM
  mkdir -p "$D"
  echo "== config: --resident-budget $RES ($RESB) --hot-cache-bytes $HOT ($HOTB) --block-cache $BLK ($BLKB), big table $BIG rows x 128 B"
  "$SERVER_BIN" --data "$D/data" --listen 127.0.0.1:0 --port-file "$D/port" --threads 2 \
    --resident-budget "$RESB" --hot-cache-bytes "$HOTB" --block-cache "$BLKB" \
    --log-file "$D/server.log" &
  SERVER_PID=$!
  for _ in $(seq 200); do
    [ -s "$D/port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$D/server.log" >&2; exit 2; }
    sleep 0.05
  done
  [ -s "$D/port" ] || { echo "run_rss_bench.sh: server wrote no port" >&2; exit 2; }
  ADDR=127.0.0.1:$(cat "$D/port")
  echo "server: $ADDR, pid $SERVER_PID, RSS at start $(kb "$SERVER_PID" VmRSS) kB"
  # The sampler: "seconds_since_start phase VmRSS_kB VmHWM_kB" every 0.5 s.
  echo start > "$D/phase"
  ( t0=$(date +%s.%N)
    while kill -0 "$SERVER_PID" 2>/dev/null; do
      echo "$(echo "$(date +%s.%N) - $t0" | bc) $(cat "$D/phase") $(kb "$SERVER_PID" VmRSS) $(kb "$SERVER_PID" VmHWM)" >> "$D/rss.log"
      sleep 0.5
    done ) 2>/dev/null &
  SAMPLER_PID=$!

  echo import > "$D/phase"
  RES_ROWS=$(( RESB * 9 / 10 / 128 ))
  if [ "$RES_ROWS" -gt 0 ]; then
    "$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --table res \
      --rows "$RES_ROWS" --row-bytes 128 --seed 1 | head -1
  fi
  "$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --table big \
    --rows "$BIG" --row-bytes 128 --seed 2 | head -1
  "$CTL" --server "$ADDR" tables
  echo "after import: VmRSS $(kb "$SERVER_PID" VmRSS) kB, VmHWM $(kb "$SERVER_PID" VmHWM) kB"

  echo lookup-big > "$D/phase"
  "$BENCH" --server "$ADDR" --table big --inflight 4 --seconds "$SECS" | grep '^bench:'
  if [ "$RES_ROWS" -gt 0 ]; then
    echo lookup-res > "$D/phase"
    "$BENCH" --server "$ADDR" --table res --inflight 4 --seconds 5 | grep '^bench:'
  fi
  echo after > "$D/phase"
  sleep 2
  "$CTL" --server "$ADDR" stats --json > "$D/stats.json"
  RSS=$(kb "$SERVER_PID" VmRSS) HWM=$(kb "$SERVER_PID" VmHWM)
  stop_server
  grep -h 'hot_cache_created' "$D/server.log" || true

  # Resident bytes: what the server holds resident (ROWS x ROW_BYTES of
  # each table listed RESIDENT yes).
  RESIDENT_BYTES=0
  [ "$RES_ROWS" -gt 0 ] && RESIDENT_BYTES=$(( RES_ROWS * 128 ))
  BOUND=$(echo "1.1 * ($RESIDENT_BYTES + $HOTB + $BLKB) + 67108864" | bc | cut -d. -f1)
  echo "RSS samples (s phase VmRSS_kB VmHWM_kB), every 10th and the last:"
  awk 'NR % 10 == 1' "$D/rss.log"; tail -1 "$D/rss.log"
  PEAK_SAMPLED=$(awk 'BEGIN{m=0} $3 > m {m=$3} END{print m}' "$D/rss.log")
  echo "server figures after the lookups (engramctl stats --json):"
  /usr/bin/python3 - "$D/stats.json" <<'PY'
import json, sys
def walk(o, p=""):
    if isinstance(o, dict):
        for k, v in o.items(): yield from walk(v, p + "." + k if p else k)
    elif isinstance(o, list):
        for i, v in enumerate(o): yield from walk(v, f"{p}[{i}]")
    else:
        yield p, o
for k, v in walk(json.load(open(sys.argv[1]))):
    if any(w in k.lower() for w in ("table", "rows_hot", "rows_rocksdb", "rows_resident",
                                    "block_cache", "memory.")) and not any(
            w in k for w in (".window.", ".total.", ".errors", "latency")):
        print(f"  {k} = {v}")
PY
  echo "resident bytes $RESIDENT_BYTES ($(mib "$RESIDENT_BYTES") MiB) + cache budget $(( HOTB + BLKB )) ($(mib $(( HOTB + BLKB ))) MiB; hot $HOTB + block $BLKB)"
  echo "bound 1.1 x (resident + cache budget) + 64 MiB = $BOUND B ($(mib "$BOUND") MiB)"
  echo "VmRSS at the end $RSS kB ($(mib $(( RSS * 1024 ))) MiB), peak sampled VmRSS $PEAK_SAMPLED kB, VmHWM $HWM kB ($(mib $(( HWM * 1024 ))) MiB)"
  if [ $(( HWM * 1024 )) -le "$BOUND" ]; then
    echo "result: PASS (VmHWM is $(echo "scale=3; $HWM * 1024 / $BOUND" | bc) of the bound)"
  else
    echo "result: MISS (VmHWM is $(echo "scale=3; $HWM * 1024 / $BOUND" | bc) of the bound, over by $(mib $(( HWM * 1024 - BOUND ))) MiB)"
    FAILED=1
  fi
  echo
done
exit $FAILED
