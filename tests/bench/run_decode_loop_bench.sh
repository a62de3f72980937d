#!/usr/bin/env bash
# run_decode_loop_bench.sh: runs engram-decode-loop-bench (an inference
# worker's step loop with and without Engram prefetch) against a fresh
# engram-server holding the Engram paper's demo model.
#
#   tests/bench/run_decode_loop_bench.sh BUILD_DIR [BENCH OPTIONS...]
#
# Builds nothing. Sets up the server exactly as run_prefetch_bench.sh does:
# writes the demo manifest (engram_vocab_size [646400, 646400], max_ngram 3,
# 8 heads per n-gram order, n_embed_per_ngram 512, bf16, layers [1, 15], pad
# 2, seed 0, identity compression table over 129280 ids, generated with
# python3 and never committed), starts BUILD_DIR/server/engram-server on a
# free loopback port with a temp data dir, --threads 2 and a 4 GiB resident
# budget, stores the manifest and imports both tables with `engramctl
# import-synthetic --manifest demo --seed 1`. Then runs
# engram-decode-loop-bench on shared/testdata/workload/tokens.bin with
# --verify-seed 1 and any further options given (e.g. --steps 50). Stops the
# server with SIGTERM (reporting its exit status) and removes the temp dir on
# any exit. Exit status: the benchmark's.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [BENCH OPTIONS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
TOKENS=$ROOT/../shared/testdata/workload/tokens.bin
SERVER_BIN=$BUILD/server/engram-server
CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-decode-loop-bench
for b in "$SERVER_BIN" "$CTL" "$BENCH"; do
  [ -x "$b" ] || { echo "run_decode_loop_bench.sh: missing $b (build first)" >&2; exit 2; }
done
[ -r "$TOKENS" ] || { echo "run_decode_loop_bench.sh: missing $TOKENS" >&2; exit 2; }

TMP=$(mktemp -d /tmp/engram-decode-loop-bench.XXXXXX)
SERVER_PID=
stop_server() {
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

python3 - "$TMP/demo.json" <<'EOF'
import json, sys
manifest = {
    "name": "demo",
    "engram_vocab_size": [646400, 646400], "max_ngram_size": 3,
    "n_embed_per_ngram": 512, "n_head_per_ngram": 8,
    "layer_ids": [1, 15], "pad_id": 2, "seed": 0, "dtype": "bf16",
    "compression": {"lookup_table": list(range(129280))},
    "tables": {"1": "demo.l1", "15": "demo.l15"},
}
with open(sys.argv[1], "w") as f:
    json.dump(manifest, f)
EOF

BUDGET=$(( 4 << 30 ))
"$SERVER_BIN" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  --threads 2 --resident-budget "$BUDGET" --log-file "$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 200); do
  [ -s "$TMP/port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 2; }
  sleep 0.05
done
[ -s "$TMP/port" ] || { echo "run_decode_loop_bench.sh: server wrote no port" >&2; exit 2; }
ADDR=127.0.0.1:$(cat "$TMP/port")
echo "server: $ADDR, data $TMP/data, --threads 2, resident budget $BUDGET bytes"

"$CTL" --server "$ADDR" put-manifest "$TMP/demo.json"
t0=$(date +%s.%N)
"$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --manifest demo --seed 1
echo "import: both tables in $(echo "$(date +%s.%N) - $t0" | bc) s"
"$CTL" --server "$ADDR" tables
echo

rc=0
"$BENCH" --server "$ADDR" --model demo --tokens "$TOKENS" \
  --verify-seed 1 "$@" || rc=$?
echo
stop_server
exit "$rc"
