#!/usr/bin/env bash
# run_scale_bench.sh: the once-in-a-while run at the scale of the disk:
# import one large synthetic table, serve its rows cold, restart.
#
#   tests/bench/run_scale_bench.sh BUILD_DIR [--rows N (160M)] [--hot-cache BYTES (2G)]
#       [--block-cache BYTES (256M)] [--seconds S (20)] [--data DIR]
#   tests/bench/run_scale_bench.sh BUILD_DIR --v41 [--vocab V (4000000)] [--steps D,P (32,8)]
#       [--hot-cache BYTES (3G)] [--block-cache BYTES (512M)] [--seconds S (10)] [--data DIR]
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
#
# --v41: DeepSeek-V4.1-Flash's layer-1 table at a quarter of its rows. A
# manifest with V4.1's config (max_ngram_size 4, 8 heads per order,
# n_embed_per_ngram 2048, mxfp8_e4m3 264-byte rows, DEAD tokens, pad 2,
# seed 0, a compression table over 129,280 ids onto exactly 99,092, so the
# multipliers are V4.1's) but layer_ids [1] and engram_vocab_size [V]*3
# (V = 4M: the sum of 24 primes just above 4M = 96M rows, 25.3 GB; the
# real tables have 384M) is written by python3 (never committed), stored
# with put-manifest and imported with `import-synthetic --manifest v41q
# --seed 7`. Reported: import wall time, rows/s, MB/s; bytes on disk per
# row, and the SST files' data, index and filter bytes (sst_dump, from
# rocksdb-tools, when installed); the server's VmHWM after the import;
# the restart (SIGTERM to exit, then start until the port file exists and
# a lookup answers); then engram-prefetch-bench (decode and prefill shapes,
# the real token workload tests/data/workload/tokens.bin, --no-gather,
# --verify-seed 7; D decode steps and P prefill chunks per run, each run
# of a shape on other steps: --decode-steps D --prefill-steps P) twice,
# on exactly the same steps: COLD (the first pass after the
# restart: the hot tier empty, and the SST files dropped from the OS page
# cache, `dd iflag=nocache` on those files only, so a miss reads the disk)
# and HOT (the same workload again), each with the hot tier's hits and
# misses over the pass (engramctl stats) and the page cache's share of the
# files (fincore); then, the files dropped again, --seconds of engram-bench's uniform
# rows (the coldest case) and engramctl verify-synthetic of 65,536 random
# rows; then the restarted server's VmHWM. The last lines are a `summary:`
# of every figure.
set -euo pipefail
usage() {
  echo "usage: $0 BUILD_DIR [--rows N] [--hot-cache BYTES] [--block-cache BYTES] [--seconds S] [--data DIR]" >&2
  echo "       $0 BUILD_DIR --v41 [--vocab V] [--steps D,P] [--hot-cache BYTES] [--block-cache BYTES] [--seconds S] [--data DIR]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROWS=160000000 HOT='' BLOCK='' SECS='' DATA='' V41=0 VOCAB=4000000 STEPS=32,8
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --hot-cache) HOT=$2; shift 2 ;;
    --block-cache) BLOCK=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --v41) V41=1; shift ;;
    --vocab) VOCAB=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    *) usage ;;
  esac
done
# The V4.1 run's RAM tier: 3 GiB of hot rows (~9.4 M of 264 B) and a block
# cache that holds the ~3.5 B per row of filters and index (96 M rows).
if [ "$V41" = 1 ]; then
  HOT=${HOT:-3G} BLOCK=${BLOCK:-512M} SECS=${SECS:-10}
else
  HOT=${HOT:-2G} BLOCK=${BLOCK:-256M} SECS=${SECS:-20}
fi
CTL=$BUILD/client/engramctl
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
  local t0
  t0=$(date +%s.%N)
  for _ in $(seq 6000); do
    [ -s "$TMP/port" ] && break
    kill -0 "$PID" 2>/dev/null || { tail "$TMP/server.log" >&2; exit 2; }
    sleep 0.05
  done
  ADDR=127.0.0.1:$(cat "$TMP/port")
  echo "server: $ADDR serving after $(echo "$(date +%s.%N) - $t0" | bc) s (hot cache $HOT, block cache $BLOCK, nothing resident)"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), disk free $(df -h "$(dirname "$DATA")" | awk 'NR==2{print $4}')"

if [ "$V41" = 0 ]; then
  start
  "$CTL" --server "$ADDR" --deadline-ms 36000000 import-synthetic --table scale \
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
  exit 0
fi

# ---- --v41 ------------------------------------------------------------------
# Calls that read cold rows wait on this VM's few thousand random reads/s:
# a 98,304-row prefill chunk takes tens of seconds, past the 10 s default.
MODEL=v41q TABLE=v41q.l1 DEADLINE=600000
TOKENS=$ROOT/tests/data/workload/tokens.bin
[ -r "$TOKENS" ] || { echo "$0: missing $TOKENS" >&2; exit 2; }
SUMMARY=()
sum() { SUMMARY+=("$1"); }
now() { date +%s.%N; }
# The server's VmHWM / VmRSS in MiB.
mem() { awk -v k="$1:" '$1 == k {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }

python3 - "$TMP/$MODEL.json" "$VOCAB" <<'PY'
import json, sys
# V4.1's compressed vocabulary has 99,092 ids, and the multipliers depend on
# that count: ids below it map to themselves, the rest fold onto them, so
# the ids appear first in order 0..99091 as the reference numbers them.
m = {"name": "v41q", "engram_vocab_size": [int(sys.argv[2])] * 3,
     "max_ngram_size": 4, "n_embed_per_ngram": 2048, "n_head_per_ngram": 8,
     "layer_ids": [1], "pad_id": 2, "seed": 0, "dtype": "mxfp8_e4m3",
     "dead_tokens": True,
     "compression": {"lookup_table": [i if i < 99092 else i % 99092
                                      for i in range(129280)]},
     "tables": {"1": "v41q.l1"}}
json.dump(m, open(sys.argv[1], "w"))
PY
# The layer's synthetic seed: manifest_synthetic_seed(7, 1), for verify-synthetic.
LSEED=$(python3 -c '
M = (1 << 64) - 1
z = (7 ^ (1 * 0xD1B54A32D192ED03)) + 0x9E3779B97F4A7C15 & M
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & M
z = (z ^ (z >> 27)) * 0x94D049BB133111EB & M
print(z ^ (z >> 31))')

start
"$CTL" --server "$ADDR" put-manifest "$TMP/$MODEL.json"
t0=$(now)
"$CTL" --server "$ADDR" --deadline-ms 36000000 import-synthetic --manifest "$MODEL" --seed 7 \
  --progress-every 30
t1=$(now)
rows=$("$CTL" --server "$ADDR" table "$TABLE" | awk '$1 == "rows:" {print $2}')
rb=$("$CTL" --server "$ADDR" table "$TABLE" | awk '$1 == "row_bytes:" {print $2}')
sum "$(awk -v r="$rows" -v b="$rb" -v t="$(echo "$t1 - $t0" | bc)" 'BEGIN {
  printf "import: %d rows x %d B (%.2f GB) in %.1f s: %.0f rows/s, %.1f MB/s", r, b, r * b / 1e9,
    t, r / t, r * b / 1e6 / t }')"
echo "${SUMMARY[-1]}"
sum "server peak RSS after the import: VmHWM $(mem VmHWM) MiB (VmRSS $(mem VmRSS) MiB)"
echo "${SUMMARY[-1]}"
disk=$(du -sb "$DATA" | cut -f1)
sum "$(awk -v d="$disk" -v r="$rows" -v b="$rb" 'BEGIN {
  printf "on disk: %.0f bytes (%.2f GB), %.1f B per row (rows are %d B)", d, d / 1e9, d / r, b }')"
echo "${SUMMARY[-1]}"
# Filters and index: what --block-cache must hold for every cold read.
if command -v sst_dump >/dev/null; then
  sum "$(sst_dump --file="$DATA" --show_properties 2>/dev/null | awk -v rows="$rows" '
    /data block size:/ {d += $NF} /index block size/ {i += $NF} /filter block size:/ {f += $NF}
    /# data blocks:/ {n += $NF}
    END {printf "SST files: data %.0f B, index %.0f B (%.2f B/row), filter %.0f B (%.2f B/row), %d data blocks (%.1f rows/block)",
         d, i, i / rows, f, f / rows, n, rows / n}')"
else
  sum "SST files: sst_dump not installed (apt-get install rocksdb-tools) for the index and filter bytes"
fi
echo "${SUMMARY[-1]}"

echo "restart:"
t0=$(now)
stop
t1=$(now)
start
until "$CTL" --server "$ADDR" lookup --table "$TABLE" 0 >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || { tail "$TMP/server.log" >&2; exit 2; }
  sleep 0.01
done
sum "$(awk -v a="$t0" -v b="$t1" -v c="$(now)" 'BEGIN {
  printf "restart: SIGTERM to exit %.2f s; start to serving %.2f s (port file, a lookup answered)",
    b - a, c - b }')"
echo "${SUMMARY[-1]}"

stats() { "$CTL" --server "$ADDR" stats --json >"$TMP/stats.$1.json"; }
# Hot-tier hits and misses, and the table's rows by tier, between two snapshots.
delta() {
  python3 - "$TMP/stats.$1.json" "$TMP/stats.$2.json" "$TABLE" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def table(d):
    return next((t for t in d["tables"] if t["table"] == sys.argv[3]), {})
h = {k: b["hot_cache"][k] - a["hot_cache"][k] for k in ("hits", "misses")}
ta, tb = table(a), table(b)
r = {k: tb.get(k, 0) - ta.get(k, 0) for k in ("rows_hot", "rows_rocksdb")}
n = h["hits"] + h["misses"]
print("hot tier %d hits, %d misses (hit ratio %.3f); rows hot %d, RocksDB %d; %d rows held"
      % (h["hits"], h["misses"], h["hits"] / n if n else 0, r["rows_hot"], r["rows_rocksdb"],
         b["hot_cache"]["rows_held"]))
PY
}
# How much of the SST files the OS page cache holds, and dropping them from it
# (fadvise DONTNEED on these files only), so that a cold read is a disk read.
paged() {
  fincore --bytes --noheadings --raw -o RES "$DATA"/*.sst 2>/dev/null |
    awk -v d="$disk" '{r += $1} END {printf "%.1f of %.1f GB of SST files in the page cache", r / 1e9, d / 1e9}'
}
unpage() {
  local before
  before=$(paged)
  for f in "$DATA"/*.sst; do dd if="$f" iflag=nocache count=0 status=none; done
  echo "page cache: $before; dropped them: $(paged)"
}
# One prefetch pass; keeps its `bench:` lines and the tier figures.
prefetch_pass() {
  local name=$1
  echo "$name pass:"
  if [ "$name" = COLD ]; then sum "$name: $(unpage)"; else sum "$name: $(paged)"; fi
  echo "${SUMMARY[-1]}"
  stats "$name.0"
  "$BUILD/tests/bench/engram-prefetch-bench" --server "$ADDR" --model "$MODEL" --tokens "$TOKENS" \
    --seconds "$SECS" --decode-steps "${STEPS%,*}" --prefill-steps "${STEPS#*,}" --no-gather \
    --verify-seed 7 --deadline-ms "$DEADLINE" |
    tee "$TMP/$name.out" || sum "$name: engram-prefetch-bench FAILED (exit status $?)"
  stats "$name.1"
  awk -v n="$name" '/^bench: scenario=(decode|prefill)/ {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      printf "%s %s: steps %d..%d, %s steps/s, %s tokens/s, %.0f rows/s (%.0f unique), p50 %s ms, p99 %s ms\n",
        n, f["scenario"], f["first_step"], f["first_step"] + f["steps"] - 1, f["steps_per_s"], f["tokens_per_s"], f["steps_per_s"] * f["rows_per_step"],
        f["steps_per_s"] * f["unique_rows_per_step"], f["p50_ms"], f["p99_ms"] }
    /^bench: scenario=verify/ {print n " " $2 " " $4 " " $5}' "$TMP/$name.out" > "$TMP/$name.sum"
  while read -r l; do sum "$l"; done < "$TMP/$name.sum"
  sum "$name: $(delta "$name.0" "$name.1")"
  echo "${SUMMARY[-1]}"
}
prefetch_pass COLD
prefetch_pass HOT

echo "uniform rows:"
sum "uniform: $(unpage)"
echo "${SUMMARY[-1]}"
stats U.0
"$BUILD/tests/bench/engram-bench" --server "$ADDR" --table "$TABLE" --inflight 8 \
  --seconds "$SECS" --deadline-ms "$DEADLINE" | tee "$TMP/uniform.out" ||
  sum "uniform: engram-bench FAILED (exit status $?)"
stats U.1
sum "$(awk '/^bench:/ {for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  printf "uniform: %s rows/call, %s in flight: %.0f rows/s, p50 %s ms", f["rows_per_call"],
    f["inflight"], f["rows_per_s"], f["p50_ms"]}' "$TMP/uniform.out")"
sum "uniform: $(delta U.0 U.1)"
"$CTL" --server "$ADDR" --deadline-ms "$DEADLINE" verify-synthetic --table "$TABLE" \
  --seed "$LSEED" --samples 65536 || sum "verify-synthetic FAILED (exit status $?)"
sum "server peak RSS at the end (restarted server): VmHWM $(mem VmHWM) MiB (VmRSS $(mem VmRSS) MiB)"
stop
echo
printf 'summary: %s\n' "${SUMMARY[@]}"
