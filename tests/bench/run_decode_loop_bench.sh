#!/usr/bin/env bash
# run_decode_loop_bench.sh: runs engram-decode-loop-bench (an inference
# worker's step loop with and without Engram prefetch) against a fresh
# engram-server holding the Engram paper's demo model.
#
#   tests/bench/run_decode_loop_bench.sh BUILD_DIR [BENCH OPTIONS...]
#
# Builds nothing. Sets up the server with demo_server.sh, as run_prefetch_bench.sh does:
# writes the demo manifest (engram_vocab_size [646400, 646400], max_ngram 3,
# 8 heads per n-gram order, n_embed_per_ngram 512, bf16, layers [1, 15], pad
# 2, seed 0, identity compression table over 129280 ids, generated with
# python3 and never committed), starts BUILD_DIR/server/engram-server on a
# free loopback port with a temp data dir, --threads 2 and a 4 GiB resident
# budget, stores the manifest and imports both tables with `engramctl
# import-synthetic --manifest demo --seed 1`. Then runs
# engram-decode-loop-bench on tests/data/workload/tokens.bin with
# --verify-seed 1 and any further options given (e.g. --steps 50), with
# glibc's heap trimming raised as the README recommends for worker
# processes (GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456; set
# ENGRAM_BENCH_GLIBC_TUNABLES to override, empty for glibc's default). Stops the
# server with SIGTERM (reporting its exit status) and removes the temp dir on
# any exit. Exit status: the benchmark's.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [BENCH OPTIONS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift

# The server, the demo model and its tables: shared with the other
# demo-model benchmark (demo_server.sh).
. "$(dirname "$0")/demo_server.sh"
demo_server_start run_decode_loop_bench.sh "$BUILD" engram-decode-loop-bench

rc=0
TUNABLES=${ENGRAM_BENCH_GLIBC_TUNABLES-glibc.malloc.trim_threshold=268435456}
echo "worker process: GLIBC_TUNABLES=$TUNABLES"
GLIBC_TUNABLES=$TUNABLES "$BENCH" --server "$ADDR" --model demo --tokens "$TOKENS" \
  --verify-seed 1 "$@" || rc=$?
echo
stop_server
exit "$rc"
