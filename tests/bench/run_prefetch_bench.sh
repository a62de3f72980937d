#!/usr/bin/env bash
# run_prefetch_bench.sh: runs engram-prefetch-bench against a fresh
# engram-server holding the Engram paper's demo model.
#
#   tests/bench/run_prefetch_bench.sh BUILD_DIR [--seconds S] [--inflight K]
#
# Builds nothing. Writes the demo manifest (the reference's engram_demo_v1
# config: engram_vocab_size [646400, 646400], max_ngram_size 3, 8 heads per
# n-gram order, n_embed_per_ngram 512, bf16, layers [1, 15], pad 2, seed 0,
# compression table = identity over DeepSeek-V3's 129280 ids, generated here
# with python3 and never committed). Starts BUILD_DIR/server/engram-server on
# a free loopback port (--listen 127.0.0.1:0 --port-file) with a temp data
# dir, --threads 2 and a 4 GiB resident budget (both tables, ~1.3 GB each,
# stay in RAM), stores the manifest with `engramctl put-manifest`, imports
# both tables with `engramctl import-synthetic --manifest demo --seed 1`,
# then runs engram-prefetch-bench on the real token workload
# (tests/data/workload/tokens.bin) with --verify-seed 1. Stops the
# server with SIGTERM (and reports its exit status) and removes the temp dir
# on any exit. Exit status: the benchmark's.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--seconds S] [--inflight K]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
SECONDS_EACH=10 INFLIGHT=4
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    *) usage ;;
  esac
done

# The server, the demo model and its tables: shared with the other
# demo-model benchmark (demo_server.sh).
. "$(dirname "$0")/demo_server.sh"
demo_server_start run_prefetch_bench.sh "$BUILD" engram-prefetch-bench

rc=0
"$BENCH" --server "$ADDR" --model demo --tokens "$TOKENS" \
  --seconds "$SECONDS_EACH" --inflight "$INFLIGHT" --verify-seed 1 || rc=$?
echo
stop_server
exit "$rc"
