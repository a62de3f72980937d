#!/usr/bin/env bash
# run_soak.sh: a long mixed load against a 2-shard x 2-replica cluster,
# recording every server's RSS and the lookups' p99 every 10 s. Not in CI.
#
#   tests/soak/run_soak.sh BUILD_DIR [--minutes M (10)] [--warmup-minutes W (2)]
#                          [--samples FILE]
#
# Starts 4 engram-servers on loopback (a cluster map of 2 shards x 2
# replicas, --threads 1, resident budget 260 MiB, hot cache 64 MiB, block
# cache 8 MiB, metrics on each), stores a demo-shaped manifest (vocab
# [50021, 50023], 3-gram, 8 heads, 128-byte rows, identity compression;
# ~800 K rows per layer) and imports its two tables, a 1M x 128 B table
# `soak.t` (these three are resident) and a 2M x 128 B table `soak.cold`
# that does not fit the resident budget, so it is served by RocksDB through
# the hot cache. Then, until M minutes have passed, in 10 s rounds:
#   - engram-bench against the cluster (libengram routes by shard) on
#     soak.t (4096 rows per call, 4 in flight, 8 s) and at the same time on
#     soak.cold (2 in flight), each followed by an untimed check of its
#     calls' bytes against the synthetic rule (any mismatch is a wrong byte);
#   - engram-prefetch-bench on the real token workload, decode and prefill,
#     with its byte check (--verify-seed);
#   - a scrape of every server's /metrics and `engramctl stats --json`;
#   - VmRSS and jemalloc's allocated bytes of every server (--samples FILE
#     keeps every sample with jemalloc's resident/mapped and the block
#     cache's usage and the hot cache's rows held and capacity);
# and every 60 s a re-import of soak.t (same seed: a new version with the
# same bytes, so the checks stay valid across the switch).
#
# Verdict: PASS when, on every server, the median RSS of the last minute is
# less than 1% above the median of the first minute after the warm-up, no
# byte was wrong and no round failed; exit status 0 on PASS. Medians over a
# whole import cycle, because single samples swing by +-2% with the
# import's phase (jemalloc keeps freed pages for its 10 s decay). The
# warm-up must fill the caches: the hot cache's rows are allocated when it
# is made but become resident as its slots fill, which soak.cold's lookups
# do within the first rounds (without them it filled only from lookups of
# retained versions during re-imports, and RSS rose for many minutes).
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--minutes M] [--warmup-minutes W] [--samples FILE]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
MINUTES=10 WARMUP=2 SAMPLES_OUT=/dev/null
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) SAMPLES_OUT=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --warmup-minutes) WARMUP=$2; shift 2 ;;
    *) usage ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
TOKENS=$HERE/../data/workload/tokens.bin
SERVER=$BUILD/server/engram-server CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-bench PBENCH=$BUILD/tests/bench/engram-prefetch-bench
for b in "$SERVER" "$CTL" "$BENCH" "$PBENCH" "$TOKENS"; do
  [ -e "$b" ] || { echo "run_soak.sh: missing $b" >&2; exit 2; }
done
TMP=$(mktemp -d /tmp/engram-soak.XXXXXX)
PIDS=() BG=()
cleanup() {
  for p in "${BG[@]}" "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${BG[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a ADDR MPORT
for i in 0 1 2 3; do ADDR[$i]=127.0.0.1:$(free_port); MPORT[$i]=$(free_port); done
cat > "$TMP/cluster.json" <<JSON
{"name": "soak", "placement": "mod", "shards": [
  {"replicas": ["${ADDR[0]}", "${ADDR[1]}"]},
  {"replicas": ["${ADDR[2]}", "${ADDR[3]}"]}]}
JSON
for i in 0 1 2 3; do
  "$SERVER" --data "$TMP/s$i" --listen "${ADDR[$i]}" --cluster "$TMP/cluster.json" \
    --shard $(( i / 2 )) --threads 1 --resident-budget 260M --hot-cache-bytes 64M \
    --block-cache 8M --metrics-listen "127.0.0.1:${MPORT[$i]}" --log-file "$TMP/s$i.log" &
  PIDS+=($!)
done
for i in 0 1 2 3; do
  for _ in $(seq 200); do "$CTL" --server "${ADDR[$i]}" health > /dev/null 2>&1 && break; sleep 0.05; done
done
/usr/bin/python3 - "$TMP/soak.json" <<'PY'
import json, sys
json.dump({"name": "soak", "engram_vocab_size": [50021, 50023], "max_ngram_size": 3,
           "n_embed_per_ngram": 512, "n_head_per_ngram": 8, "layer_ids": [1, 15], "pad_id": 2,
           "seed": 0, "dtype": "bf16", "compression": {"lookup_table": list(range(129280))},
           "tables": {"1": "soak.l1", "15": "soak.l15"}}, open(sys.argv[1], "w"))
PY
"$CTL" --server "${ADDR[0]}" put-manifest "$TMP/soak.json" > /dev/null
"$CTL" --server "${ADDR[0]}" --deadline-ms 600000 import-synthetic --manifest soak --seed 1 > /dev/null
"$CTL" --server "${ADDR[0]}" --deadline-ms 600000 import-synthetic --table soak.t --rows 1000000 \
  --row-bytes 128 --seed 5 > /dev/null
"$CTL" --server "${ADDR[0]}" --deadline-ms 600000 import-synthetic --table soak.cold --rows 2000000 \
  --row-bytes 128 --seed 9 > /dev/null
echo "cluster: 2 shards x 2 replicas (${ADDR[*]}); tables soak.l1, soak.l15, soak.t (resident) and soak.cold (RocksDB + hot cache) imported"
echo "run: $MINUTES min, warm-up $WARMUP min, samples every 10 s, soak.t re-imported every 60 s"

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
printf "%6s %9s %9s %9s %9s %10s %9s %6s %8s\n" t_s rss0_MB rss1_MB rss2_MB rss3_MB rows/s p99_ms wrong reimp
START=$(date +%s) LAST_IMPORT=$START WRONG=0 REIMPORTS=0 FAILS=0
: > "$TMP/samples"
while [ $(( $(date +%s) - START )) -lt $(( MINUTES * 60 )) ]; do
  now=$(date +%s)
  if [ $(( now - LAST_IMPORT )) -ge 60 ]; then
    "$CTL" --server "${ADDR[0]}" --deadline-ms 600000 import-synthetic --table soak.t \
      --rows 1000000 --row-bytes 128 --seed 5 > "$TMP/reimport.out" 2>&1 &
    BG+=($!)
    LAST_IMPORT=$now REIMPORTS=$(( REIMPORTS + 1 ))
  fi
  "$PBENCH" --server "${ADDR[1]}" --model soak --tokens "$TOKENS" --seconds 1 --warmup 0.2 \
    --verify-seed 1 > "$TMP/pbench.out" 2>&1 &
  pb=$!
  "$BENCH" --server "${ADDR[3]}" --table soak.cold --inflight 2 --seconds 8 --warmup 0.5 \
    --seed 9 --verify --verify-calls 16 > "$TMP/cold.out" 2>&1 &
  cb=$!
  line=$("$BENCH" --server "${ADDR[2]}" --table soak.t --inflight 4 --seconds 8 --warmup 0.5 \
    --seed 5 --verify --verify-calls 64 2>&1 | grep '^bench:' || true)
  crc=0; wait "$cb" || crc=$?
  cmism=$(sed -n 's/.* mismatches=\([0-9]*\).*/\1/p' "$TMP/cold.out")
  [ "$crc" = 0 ] && [ -n "$cmism" ] || { FAILS=$(( FAILS + 1 )); tail -3 "$TMP/cold.out"; }
  WRONG=$(( WRONG + ${cmism:-0} ))
  prc=0; wait "$pb" || prc=$?
  [ "$prc" = 0 ] || { FAILS=$(( FAILS + 1 )); [ "$prc" = 1 ] && WRONG=$(( WRONG + 1 )); tail -3 "$TMP/pbench.out"; }
  rps=$(sed -n 's/.* rows_per_s=\([0-9]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  mism=$(sed -n 's/.* mismatches=\([0-9]*\).*/\1/p' <<<"$line")
  [ -n "$rps" ] || { FAILS=$(( FAILS + 1 )); rps=0 p99=NA mism=0; }
  WRONG=$(( WRONG + ${mism:-0} ))
  for i in 0 1 2 3; do
    curl -sf "http://127.0.0.1:${MPORT[$i]}/metrics" > /dev/null || FAILS=$(( FAILS + 1 ))
    "$CTL" --server "${ADDR[$i]}" stats --json > "$TMP/stats$i.json" || FAILS=$(( FAILS + 1 ))
  done
  t=$(( $(date +%s) - START ))
  r=() a=()
  for i in 0 1 2 3; do
    r+=("$(rss_kb "${PIDS[$i]}")")
    a+=("$(jq -r '(.memory.allocated // 0) / 1024 | floor' "$TMP/stats$i.json" 2>/dev/null || echo 0)")
  done
  echo "$t ${r[*]} ${a[*]}" >> "$TMP/samples"
  echo "$t ${r[*]} ${a[*]} $(for i in 0 1 2 3; do jq -c '[.memory.resident, .memory.mapped, .rocksdb.block_cache_usage, .hot_cache.rows_held, .hot_cache.capacity_rows]' "$TMP/stats$i.json" 2>/dev/null; done | tr '\n' ' ')" >> "$SAMPLES_OUT"
  printf "%6d %9.1f %9.1f %9.1f %9.1f %10s %9s %6d %8d\n" "$t" \
    "$(echo "${r[0]}/1024" | bc -l)" "$(echo "${r[1]}/1024" | bc -l)" \
    "$(echo "${r[2]}/1024" | bc -l)" "$(echo "${r[3]}/1024" | bc -l)" "$rps" "$p99" "$WRONG" "$REIMPORTS"
done
for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
BG=()
echo
echo "re-imports: $REIMPORTS; failed rounds or scrapes: $FAILS; wrong bytes: $WRONG"
verdict=PASS
/usr/bin/python3 - "$TMP/samples" $(( WARMUP * 60 )) "${ADDR[@]}" <<'PY2' || verdict=MISS
import statistics, sys
rows = [[float(x) for x in line.split()] for line in open(sys.argv[1]) if line.strip()]
warm, addrs, end, ok = float(sys.argv[2]), sys.argv[3:], rows[-1][0] if rows else 0, True
for i, addr in enumerate(addrs):
    def window(lo, hi, col):
        return [r[col] / 1024 for r in rows if lo <= r[0] < hi]
    first, last = window(warm, warm + 60, 1 + i), window(end - 59, end + 1, 1 + i)
    post = [(r[0], r[1 + i] / 1024) for r in rows if r[0] >= warm]
    if len(first) < 3 or len(last) < 3 or first[0] == last[0]:
        print(f"server {i} ({addr}): too few samples after the warm-up"); ok = False; continue
    a, b = statistics.median(first), statistics.median(last)
    tm = sum(t for t, _ in post) / len(post); vm = sum(v for _, v in post) / len(post)
    slope = sum((t - tm) * (v - vm) for t, v in post) / sum((t - tm) ** 2 for t, _ in post)
    al = [statistics.median(window(warm, warm + 60, 5 + i)), statistics.median(window(end - 59, end + 1, 5 + i))]
    g = 100 * (b - a) / a
    print(f"server {i} ({addr}): RSS median {a:.1f} MB in the first minute after the warm-up, "
          f"{b:.1f} MB in the last: {g:+.2f}%; least-squares slope {3600 * slope:+.1f} MB/h; "
          f"range {min(v for _, v in post):.1f}-{max(v for _, v in post):.1f} MB; "
          f"jemalloc allocated {al[0]:.1f} -> {al[1]:.1f} MB")
    ok = ok and g < 1.0
sys.exit(0 if ok else 1)
PY2
[ "$WRONG" = 0 ] && [ "$FAILS" = 0 ] || verdict=MISS
echo "soak: $verdict (median RSS of the last minute < 1% above the first minute after the warm-up on every server, 0 wrong bytes, no failed round)"
[ "$verdict" = PASS ]
