#!/usr/bin/env bash
# run_hash_bench.sh: engram-hash-bench (C, eh_hash) against the numpy
# baseline (hash_bench_numpy.py, the reference formula vectorised as
# engram_demo_v1.py does it), same config, same real-workload batches, one
# thread each, one after the other in this one invocation.
#
#   tests/bench/run_hash_bench.sh BUILD_DIR [--seconds S (5)] [--batch B (64)]
#                                 [--seq T (4096)]
#
# Builds nothing. The C bench dumps its row ids for the first batch and the
# numpy script checks them (exit 1 on any difference) before timing. Prints
# both outputs verbatim, then the ratio C/numpy in tokens/s.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--seconds S] [--batch B] [--seq T]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
SECS=5 BATCH=64 SEQ=4096
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --seq) SEQ=$2; shift 2 ;;
    *) usage ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$BUILD/tests/bench/engram-hash-bench
[ -x "$BENCH" ] || { echo "run_hash_bench.sh: missing $BENCH (build first)" >&2; exit 2; }
TOKENS=$HERE/../data/workload/tokens.bin
[ -r "$TOKENS" ] || { echo "run_hash_bench.sh: missing $TOKENS" >&2; exit 2; }

TMP=$(mktemp -d /tmp/engram-hash-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "== C: engram-hash-bench"
"$BENCH" --tokens "$TOKENS" --batch "$BATCH" --seq "$SEQ" --seconds "$SECS" \
  --dump "$TMP/rows.u64" | tee "$TMP/c.out"
echo "== numpy: hash_bench_numpy.py"
/usr/bin/python3 "$HERE/hash_bench_numpy.py" --tokens "$TOKENS" --batch "$BATCH" --seq "$SEQ" \
  --seconds "$SECS" --check "$TMP/rows.u64" | tee "$TMP/np.out"

c=$(sed -n 's/^bench: impl=c tokens_per_s=\([0-9]*\).*/\1/p' "$TMP/c.out")
p=$(sed -n 's/^bench: impl=c .*plain_tokens_per_s=\([0-9]*\).*/\1/p' "$TMP/c.out")
n=$(sed -n 's/^bench: impl=numpy tokens_per_s=\([0-9]*\).*/\1/p' "$TMP/np.out")
awk -v c="$c" -v p="$p" -v n="$n" 'BEGIN {
  printf "== ratio: C eh_hash / numpy = %.1fx (tokens/s %.0f / %.0f); C plain %% loops / numpy = %.1fx\n", c / n, c, n, p / n
}'
