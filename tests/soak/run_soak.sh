#!/usr/bin/env bash
# run_soak.sh: a long mixed load against a 2-shard x 2-replica cluster,
# recording every server's RSS and the lookups' p99 every 10 s. Not in CI.
#
#   tests/soak/run_soak.sh BUILD_DIR [--minutes M (10)] [--warmup-minutes W (2)]
#
# Starts 4 engram-servers on loopback (a cluster map of 2 shards x 2
# replicas, --threads 1, metrics on each), stores a demo-shaped manifest
# (vocab [50021, 50023], 3-gram, 8 heads, 128-byte rows, identity
# compression; ~800 K rows per layer) and imports its two tables, plus a
# 1M x 128 B table `soak.t`. Then, until M minutes have passed, in 10 s
# rounds:
#   - engram-bench against the cluster (libengram routes by shard): 4096
#     rows per call, 4 in flight, 8 s, then an untimed check of 64 calls'
#     bytes against the synthetic rule (any mismatch is a wrong byte);
#   - engram-prefetch-bench on the real token workload, decode and prefill,
#     with its byte check (--verify-seed);
#   - a scrape of every server's /metrics and `engramctl stats --json`;
#   - VmRSS of every server;
# and every 60 s a re-import of soak.t (same seed: a new version with the
# same bytes, so the checks stay valid across the switch).
# At the end: the samples, the RSS growth of each server from the end of
# the warm-up to the end, the wrong-byte count, and PASS when every server
# grew < 1% and no byte was wrong. Exit status 0 on PASS.
#
# RSS growth compares samples taken at the same phase: the last sample
# before each re-import (50 s after the previous one, its buffers freed),
# the first such after W minutes against the last. Right after an import
# jemalloc still holds its freed pages for its 10 s decay, so samples
# across phases differ by tens of MB with nothing leaked. The block cache
# is 8 MiB so that it is full (it fills with each new version's index and
# filter blocks) well within the warm-up.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--minutes M] [--warmup-minutes W]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
MINUTES=10 WARMUP=2
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --warmup-minutes) WARMUP=$2; shift 2 ;;
    *) usage ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
TOKENS=$HERE/../../../shared/testdata/workload/tokens.bin
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
    --shard $(( i / 2 )) --threads 1 --resident-budget 512M --hot-cache-bytes 64M \
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
echo "cluster: 2 shards x 2 replicas (${ADDR[*]}); tables soak.l1, soak.l15, soak.t imported"
echo "run: $MINUTES min, warm-up $WARMUP min, samples every 10 s, soak.t re-imported every 60 s"

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
printf "%6s %9s %9s %9s %9s %10s %9s %6s %8s\n" t_s rss0_MB rss1_MB rss2_MB rss3_MB rows/s p99_ms wrong reimp
START=$(date +%s) LAST_IMPORT=$START WRONG=0 REIMPORTS=0 FAILS=0
: > "$TMP/samples"; : > "$TMP/pre"
while [ $(( $(date +%s) - START )) -lt $(( MINUTES * 60 )) ]; do
  now=$(date +%s)
  if [ $(( now - LAST_IMPORT )) -ge 60 ]; then
    tail -1 "$TMP/samples" >> "$TMP/pre"
    "$CTL" --server "${ADDR[0]}" --deadline-ms 600000 import-synthetic --table soak.t \
      --rows 1000000 --row-bytes 128 --seed 5 > "$TMP/reimport.out" 2>&1 &
    BG+=($!)
    LAST_IMPORT=$now REIMPORTS=$(( REIMPORTS + 1 ))
  fi
  "$PBENCH" --server "${ADDR[1]}" --model soak --tokens "$TOKENS" --seconds 1 --warmup 0.2 \
    --verify-seed 1 > "$TMP/pbench.out" 2>&1 &
  pb=$!
  line=$("$BENCH" --server "${ADDR[2]}" --table soak.t --inflight 4 --seconds 8 --warmup 0.5 \
    --seed 5 --verify --verify-calls 64 2>&1 | grep '^bench:' || true)
  prc=0; wait "$pb" || prc=$?
  [ "$prc" = 0 ] || { FAILS=$(( FAILS + 1 )); [ "$prc" = 1 ] && WRONG=$(( WRONG + 1 )); tail -3 "$TMP/pbench.out"; }
  rps=$(sed -n 's/.* rows_per_s=\([0-9]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  mism=$(sed -n 's/.* mismatches=\([0-9]*\).*/\1/p' <<<"$line")
  [ -n "$rps" ] || { FAILS=$(( FAILS + 1 )); rps=0 p99=NA mism=0; }
  WRONG=$(( WRONG + ${mism:-0} ))
  for i in 0 1 2 3; do
    curl -sf "http://127.0.0.1:${MPORT[$i]}/metrics" > /dev/null || FAILS=$(( FAILS + 1 ))
    "$CTL" --server "${ADDR[$i]}" stats --json > /dev/null || FAILS=$(( FAILS + 1 ))
  done
  t=$(( $(date +%s) - START ))
  r=(); for i in 0 1 2 3; do r+=("$(rss_kb "${PIDS[$i]}")"); done
  echo "$t ${r[*]}" >> "$TMP/samples"
  printf "%6d %9.1f %9.1f %9.1f %9.1f %10s %9s %6d %8d\n" "$t" \
    "$(echo "${r[0]}/1024" | bc -l)" "$(echo "${r[1]}/1024" | bc -l)" \
    "$(echo "${r[2]}/1024" | bc -l)" "$(echo "${r[3]}/1024" | bc -l)" "$rps" "$p99" "$WRONG" "$REIMPORTS"
done
for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
BG=()
echo
echo "re-imports: $REIMPORTS; failed rounds or scrapes: $FAILS; wrong bytes: $WRONG"
verdict=PASS
for i in 0 1 2 3; do
  g=$(awk -v w=$(( WARMUP * 60 )) -v c=$(( i + 2 )) '
    $1 >= w { if (!n++) a = $c; b = $c }
    END { if (n < 2) print "NA"; else printf "%.2f", 100 * (b - a) / a }' "$TMP/pre")
  echo "server $i (${ADDR[$i]}): RSS growth after warm-up ${g}% (pre-import samples: $(awk -v w=$(( WARMUP * 60 )) -v c=$(( i + 2 )) '$1 >= w {printf "%.1f ", $c / 1024}' "$TMP/pre")MB)"
  if [ "$g" = NA ] || awk -v g="$g" 'BEGIN{exit !(g >= 1.0)}'; then verdict=MISS; fi
done
[ "$WRONG" = 0 ] && [ "$FAILS" = 0 ] || verdict=MISS
echo "soak: $verdict (RSS growth < 1% on every server after warm-up, 0 wrong bytes, no failed round)"
[ "$verdict" = PASS ]
