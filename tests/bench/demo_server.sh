# shellcheck shell=bash
# demo_server.sh: sourced by the benchmark scripts that need an Engram model
# on a fresh engram-server (run_prefetch_bench.sh, run_decode_loop_bench.sh),
# so they all measure against exactly the same setup.
#
#   demo_server_start SCRIPT_NAME BUILD_DIR BENCH_BINARY_NAME [MODEL]
#
# BENCH_BINARY_NAME is a binary in BUILD_DIR/tests/bench, or, for one built
# elsewhere, its path under BUILD_DIR (tests/gpu/engram-gpu-decode-bench,
# for tests/gpu/run_gpu_decode_bench.sh).
# MODEL (default demo) picks the manifest, written by python3 at run time and
# never committed:
#   demo  the Engram paper's demo model: engram_vocab_size [646400, 646400],
#         max_ngram 3, 8 heads per order, n_embed_per_ngram 512, bf16,
#         layers [1, 15], pad 2, seed 0, identity compression over 129280
#         ids; 2 tables of ~10.3M rows x 128 B (1.3 GB each); 4 GiB resident
#         budget.
#   v41   DeepSeek-V4.1-Flash's Engram shapes: max_ngram 4, 8 heads per
#         order (24 columns), n_embed_per_ngram 2048 (dim 256), mxfp8_e4m3
#         (264-byte rows), dead_tokens, layers [1, 14], pad 2, seed 0, but
#         engram_vocab_size [200000] * 3 instead of 16,000,000: ~4.8M rows x
#         264 B (1.27 GB) per table, about the demo tables' bytes, so both
#         fit this machine's RAM (the real 101 GB tables would not). The
#         vocabulary size changes which rows are read (cache behaviour), not
#         the work per token. Compression: 129280 ids onto exactly 99092
#         compressed ids (id < 99092 is itself, the rest id - 30188), so the
#         hash multipliers, which derive from that count, are V4.1's real
#         ones; the real table comes from the V4.1 tokenizer, not fetched
#         here. 6 GiB resident budget (both tables 2.5 GB, plus room).
# Checks the binaries and the token workload, writes the manifest, starts
# engram-server on a free loopback port with a temp data dir, --threads 2 and
# the model's resident budget, stores the manifest and imports both tables
# with `engramctl import-synthetic --seed 1` (typed rows for mxfp8_e4m3).
# With ENGRAM_BENCH_SHM=1 the server also gets --shm-dir under /dev/shm (or
# under ENGRAM_BENCH_SHM_BASE, e.g. a tmpfs mounted with huge=within_size
# for 2 MiB pages), so the benchmark's client reads the resident tables
# through the same-node local path (issue 16). Sets TOKENS, CTL, BENCH, TMP, ADDR, MODEL;
# stop_server and an EXIT trap stop the server (reporting its exit status)
# and remove TMP (and the shm directory).

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

v41_write_manifest() {
  python3 - "$1" <<'PY'
import json, sys
# first-appearance ordered, exactly 99092 compressed ids (V4.1's count)
lut = [i if i < 99092 else i - 30188 for i in range(129280)]
assert max(lut) + 1 == 99092
manifest = {
    "name": "v41",
    "engram_vocab_size": [200000] * 3, "max_ngram_size": 4,
    "n_embed_per_ngram": 2048, "n_head_per_ngram": 8,
    "layer_ids": [1, 14], "pad_id": 2, "seed": 0, "dtype": "mxfp8_e4m3",
    "dead_tokens": True,
    "compression": {"lookup_table": lut},
    "tables": {"1": "v41.l1", "14": "v41.l14"},
}
with open(sys.argv[1], "w") as f:
    json.dump(manifest, f)
PY
}

demo_server_start() {
  local name=$1 build=$2 bench_name=$3
  local root server_bin budget
  MODEL=${4:-demo}
  case $MODEL in
    demo) budget=$(( 4 << 30 )) ;;
    v41) budget=$(( 6 << 30 )) ;;
    *) echo "$name: unknown model $MODEL (demo or v41)" >&2; exit 2 ;;
  esac
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
  TOKENS=$root/tests/data/workload/tokens.bin
  server_bin=$build/server/engram-server
  CTL=$build/client/engramctl
  case $bench_name in
    */*) BENCH=$build/$bench_name; bench_name=${bench_name##*/} ;;
    *) BENCH=$build/tests/bench/$bench_name ;;
  esac
  for b in "$server_bin" "$CTL" "$BENCH"; do
    [ -x "$b" ] || { echo "$name: missing $b (build first)" >&2; exit 2; }
  done
  [ -r "$TOKENS" ] || { echo "$name: missing $TOKENS" >&2; exit 2; }

  TMP=$(mktemp -d "/tmp/$bench_name.XXXXXX")
  SERVER_PID=
  # ENGRAM_BENCH_SHM=1: the server keeps its resident tables in files under
  # /dev/shm (--shm-dir, issue 16), so a client on this host (local=auto,
  # the default) reads them without gRPC.
  SHM_DIR=
  shm_args=()
  if [ "${ENGRAM_BENCH_SHM:-0}" = 1 ]; then
    shm_base=${ENGRAM_BENCH_SHM_BASE:-/dev/shm}; [ -w "$shm_base" ] || shm_base=/tmp
    SHM_DIR=$(mktemp -d "$shm_base/$bench_name.XXXXXX")
    shm_args=(--shm-dir "$SHM_DIR")
  fi
  trap 'stop_server; rm -rf "$TMP" ${SHM_DIR:+"$SHM_DIR"}' EXIT
  trap 'exit 130' INT TERM
  "${MODEL}_write_manifest" "$TMP/$MODEL.json"

  "$server_bin" --data "$TMP/data" --listen 127.0.0.1:0 --port-file "$TMP/port" \
    --threads 2 --resident-budget "$budget" --log-file "$TMP/server.log" "${shm_args[@]}" &
  SERVER_PID=$!
  for _ in $(seq 200); do
    [ -s "$TMP/port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 2; }
    sleep 0.05
  done
  [ -s "$TMP/port" ] || { echo "$name: server wrote no port" >&2; exit 2; }
  ADDR=127.0.0.1:$(cat "$TMP/port")
  echo "server: $ADDR, data $TMP/data, --threads 2, resident budget $budget bytes"

  "$CTL" --server "$ADDR" put-manifest "$TMP/$MODEL.json"
  local t0
  t0=$(date +%s.%N)
  "$CTL" --server "$ADDR" --deadline-ms 600000 import-synthetic --manifest "$MODEL" --seed 1
  echo "import: both tables in $(echo "$(date +%s.%N) - $t0" | bc) s"
  "$CTL" --server "$ADDR" tables
  echo
}
