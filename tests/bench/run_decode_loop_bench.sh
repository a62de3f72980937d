#!/usr/bin/env bash
# run_decode_loop_bench.sh: runs engram-decode-loop-bench (an inference
# worker's step loop with and without Engram prefetch) against a fresh
# engram-server holding the Engram paper's demo model, or with --v41 a model
# of DeepSeek-V4.1-Flash's Engram shapes.
#
#   tests/bench/run_decode_loop_bench.sh BUILD_DIR [--v41] [BENCH OPTIONS...]
#
# Builds nothing. Sets up the server with demo_server.sh, as
# run_prefetch_bench.sh does: writes the manifest (generated with python3,
# never committed; demo_server.sh describes both models), starts
# BUILD_DIR/server/engram-server on a free loopback port with a temp data
# dir, --threads 2 and a resident budget that holds both tables, stores the
# manifest and imports both tables with `engramctl import-synthetic
# --manifest MODEL --seed 1`.
#   default: the demo model (bf16, 16 heads x 128 B, layers [1, 15]); the
#            bench runs once.
#   --v41:   model v41 (mxfp8_e4m3, 24 heads x 264 B, layers [1, 14], at a
#            reduced engram_vocab_size of 200000 per order); the bench runs
#            twice against the same server: raw rows, then --dequant bf16
#            (BF16 [heads, 256] delivered, 512 B a row).
# Each run is engram-decode-loop-bench on tests/data/workload/tokens.bin with
# --verify-seed 1 and any further options given (e.g. --steps 50), with
# glibc's heap trimming raised as the README recommends for worker
# processes (GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456; set
# ENGRAM_BENCH_GLIBC_TUNABLES to override, empty for glibc's default). Stops the
# server with SIGTERM (reporting its exit status) and removes the temp dir on
# any exit. Exit status: the first failing run's, else 0.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--v41] [BENCH OPTIONS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
model=demo
if [ "${1:-}" = --v41 ]; then
  model=v41
  shift
fi

# The server, the model and its tables: shared with the other benchmark of
# the demo model (demo_server.sh).
. "$(dirname "$0")/demo_server.sh"
demo_server_start run_decode_loop_bench.sh "$BUILD" engram-decode-loop-bench "$model"

forms=(raw)
[ "$model" = v41 ] && forms=(raw bf16)

rc=0
TUNABLES=${ENGRAM_BENCH_GLIBC_TUNABLES-glibc.malloc.trim_threshold=268435456}
echo "worker process: GLIBC_TUNABLES=$TUNABLES"
for form in "${forms[@]}"; do
  [ ${#forms[@]} -gt 1 ] && echo "=== form: $form ==="
  r=0
  GLIBC_TUNABLES=$TUNABLES "$BENCH" --server "$ADDR" --model "$model" --tokens "$TOKENS" \
    --verify-seed 1 --dequant "$form" "$@" || r=$?
  [ "$rc" -ne 0 ] || rc=$r
  echo
done
stop_server
exit "$rc"
