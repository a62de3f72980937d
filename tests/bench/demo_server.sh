# shellcheck shell=bash
# demo_server.sh: sourced by the benchmark scripts that need the Engram
# paper's demo model on a fresh engram-server (run_prefetch_bench.sh,
# run_decode_loop_bench.sh), so both measure against exactly the same setup.
#
#   demo_server_start SCRIPT_NAME BUILD_DIR BENCH_BINARY_NAME
#
# Checks the binaries and the token workload, writes the demo manifest
# (engram_vocab_size [646400, 646400], max_ngram 3, 8 heads per order,
# n_embed_per_ngram 512, bf16, layers [1, 15], pad 2, seed 0, identity
# compression over 129280 ids; generated, never committed), starts
# engram-server on a free loopback port with a temp data dir, --threads 2 and
# a 4 GiB resident budget, stores the manifest and imports both tables with
# seed 1. Sets TOKENS, CTL, BENCH, TMP, ADDR; stop_server and an EXIT trap
# stop the server (reporting its exit status) and remove TMP.

stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  local pid=$SERVER_PID rc=0
  SERVER_PID=
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  echo "server: stopped with SIGTERM, exit status $rc"
}

demo_write_manifest() {
  python3 - "$1" <<'PY'
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
PY
}

demo_server_start() {
  local name=$1 build=$2 bench_name=$3
  local root server_bin budget=$(( 4 << 30 ))
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
  TOKENS=$root/tests/data/workload/tokens.bin
  server_bin=$build/server/engram-server
  CTL=$build/client/engramctl
  BENCH=$build/tests/bench/$bench_name
  for b in "$server_bin" "$CTL" "$BENCH"; do
    [ -x "$b" ] || { echo "$name: missing $b (build first)" >&2; exit 2; }
  done
  [ -r "$TOKENS" ] || { echo "$name: missing $TOKENS" >&2; exit 2; }

  TMP=$(mktemp -d "/tmp/$bench_name.XXXXXX")
  SERVER_PID=
  trap 'stop_server; rm -rf "$TMP"' EXIT
  trap 'exit 130' INT TERM
  demo_write_manifest "$TMP/demo.json"

  "$server_bin" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/port" \
    --threads 2 --resident-budget "$budget" --log-file "$TMP/server.log" &
  SERVER_PID=$!
  for _ in $(seq 200); do
    [ -s "$TMP/port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 2; }
    sleep 0.05
  done
  [ -s "$TMP/port" ] || { echo "$name: server wrote no port" >&2; exit 2; }
  ADDR=127.0.0.1:$(cat "$TMP/port")
  echo "server: $ADDR, data $TMP/data, --threads 2, resident budget $budget bytes"

  "$CTL" --server "$ADDR" put-manifest "$TMP/demo.json"
  local t0
  t0=$(date +%s.%N)
  "$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --manifest demo --seed 1
  echo "import: both tables in $(echo "$(date +%s.%N) - $t0" | bc) s"
  "$CTL" --server "$ADDR" tables
  echo
}
