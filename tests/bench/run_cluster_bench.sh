#!/usr/bin/env bash
# run_cluster_bench.sh: runs engram-cluster-bench against local engram-server
# processes it starts itself, in two phases.
#
#   tests/bench/run_cluster_bench.sh BUILD_DIR [--seconds S] [--hedge-seconds S]
#
# Builds nothing. Every server gets its own temp data dir, a fixed loopback
# port picked free just before (python3), --port-file to wait on and a 1 GiB
# resident budget.
#
# Phase 1, throughput: writes a small demo-like manifest "cb"
# (engram_vocab_size [100003, 100019], max_ngram 3, 8 heads per order,
# n_embed_per_ngram 512 -> D 64, bf16 = 128-byte rows, layers [1, 15],
# identity compression over 129280 ids; ~1.6 M rows, 205 MB per layer) and
# starts three deployments: one server --threads 1, one server --threads 2,
# and a 3-shard x 1-replica cluster (map JSON, --cluster MAP --shard I,
# --threads 1). Each gets `engramctl put-manifest` and `import-synthetic
# --manifest cb --seed 1` (the cluster from its first address: engramctl
# streams every shard its rows). Then one engram-cluster-bench throughput run
# over the three targets (prefill B 1 x T 4096, both layers, tokens from
# tests/data/workload/tokens.bin) with --verify-seed 1. Those servers
# are stopped before phase 2.
#
# Phase 2, hedging: a 3-shard x 2-replica cluster (--threads 1 each), a
# plain table hb (600000 rows x 128 B, seed 5) imported from one address,
# then engram-cluster-bench hedge with the client opened on shard 1 replica
# 0 and --stall-pid = shard 0 replica 1 (SIGSTOP 50 ms every 1000 ms, done by
# the bench's own thread).
#
# On any exit every server still running is sent SIGCONT (one may be
# stopped) then SIGTERM, its exit status is reported, and the temp dir goes.
# Exit status: the first failing benchmark's, else 0.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cb_manifest.sh"

usage() { echo "usage: $0 BUILD_DIR [--seconds S] [--hedge-seconds S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
TP_SECONDS=3 HEDGE_SECONDS=6
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) TP_SECONDS=$2; shift 2 ;;
    --hedge-seconds) HEDGE_SECONDS=$2; shift 2 ;;
    *) usage ;;
  esac
done

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
TOKENS=$ROOT/tests/data/workload/tokens.bin
SERVER_BIN=$BUILD/server/engram-server
CTL=$BUILD/client/engramctl
BENCH=$BUILD/tests/bench/engram-cluster-bench
for b in "$SERVER_BIN" "$CTL" "$BENCH"; do
  [ -x "$b" ] || { echo "run_cluster_bench.sh: missing $b (build first)" >&2; exit 2; }
done
[ -r "$TOKENS" ] || { echo "run_cluster_bench.sh: missing $TOKENS" >&2; exit 2; }

TMP=$(mktemp -d /tmp/engram-cluster-bench.XXXXXX)
declare -A PID=()    # name -> pid of a running server
declare -A ADDR=()   # name -> 127.0.0.1:port
declare -A PORT=()   # name -> its fixed port, chosen before it starts

# Stops one server: SIGCONT first (the bench may have left it stopped).
stop_server() {
  local name=$1 pid=${PID[$1]} rc=0
  unset "PID[$name]"
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  echo "server $name: stopped with SIGTERM, exit status $rc"
}
stop_all() {
  local name
  for name in $(printf '%s\n' "${!PID[@]}" | sort); do stop_server "$name"; done
}
cleanup() { stop_all; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME THREADS [--cluster MAP --shard I]: port in ADDR[NAME].
start_server() {
  local name=$1 threads=$2; shift 2
  local dir=$TMP/$name port=${PORT[$name]}
  mkdir -p "$dir"
  "$SERVER_BIN" --data "$dir/data" --listen "127.0.0.1:$port" --port-file "$dir/port" \
    --threads "$threads" --resident-budget 1G --log-file "$dir/server.log" "$@" &
  PID[$name]=$!
  ADDR[$name]=127.0.0.1:$port
}

wait_ready() {
  local name
  for name in "$@"; do
    for _ in $(seq 400); do
      [ -s "$TMP/$name/port" ] && break
      kill -0 "${PID[$name]}" 2>/dev/null || { cat "$TMP/$name/server.log" >&2; exit 2; }
      sleep 0.05
    done
    [ -s "$TMP/$name/port" ] || { echo "run_cluster_bench.sh: $name wrote no port" >&2; exit 2; }
  done
}

# write_map FILE SHARDS REPLICAS PREFIX: servers PREFIXs<i>r<j>.
write_map() {
  local file=$1 shards=$2 reps=$3 prefix=$4 s r sep=
  printf '{"name": "%s", "placement": "mod", "shards": [' "$prefix" > "$file"
  for s in $(seq 0 $((shards - 1))); do
    printf '%s{"replicas": [' "$sep" >> "$file"
    for r in $(seq 0 $((reps - 1))); do
      PORT[${prefix}s${s}r${r}]=$(free_port)
      printf '%s"127.0.0.1:%s"' "$([ "$r" = 0 ] || echo ', ')" "${PORT[${prefix}s${s}r${r}]}" >> "$file"
    done
    printf ']}' >> "$file"
    sep=', '
  done
  printf ']}\n' >> "$file"
}

# start_cluster PREFIX SHARDS REPLICAS: one --threads 1 server per replica.
start_cluster() {
  local prefix=$1 shards=$2 reps=$3 s r names=()
  write_map "$TMP/$prefix.json" "$shards" "$reps" "$prefix"
  for s in $(seq 0 $((shards - 1))); do
    for r in $(seq 0 $((reps - 1))); do
      start_server "${prefix}s${s}r${r}" 1 --cluster "$TMP/$prefix.json" --shard "$s"
      names+=("${prefix}s${s}r${r}")
    done
  done
  wait_ready "${names[@]}"
  echo "cluster $prefix: $shards shards x $reps replicas, map $(cat "$TMP/$prefix.json")"
}

timed() {   # timed LABEL CMD...: runs CMD, prints its wall time
  local t0 label=$1; shift
  t0=$(date +%s.%N)
  "$@"
  echo "$label: $(echo "$(date +%s.%N) - $t0" | bc) s"
}

import_model() {   # import_model NAME: manifest cb with seed 1 from ADDR[NAME]
  "$CTL" --server "${ADDR[$1]}" put-manifest "$TMP/cb.json" > /dev/null
  timed "import cb via $1 (${ADDR[$1]})" \
    "$CTL" --server "${ADDR[$1]}" --deadline-ms 600000 import-synthetic --manifest cb --seed 1
}

write_cb_manifest "$TMP/cb.json"

echo "== phase 1: throughput, 1 server (--threads 1, --threads 2) vs 3 shards (--threads 1 each)"
PORT[one_t1]=$(free_port); PORT[one_t2]=$(free_port)
start_server one_t1 1
start_server one_t2 2
wait_ready one_t1 one_t2
echo "servers: one_t1 ${ADDR[one_t1]} --threads 1, one_t2 ${ADDR[one_t2]} --threads 2"
start_cluster tp 3 1
import_model one_t1
import_model one_t2
import_model tps0r0
"$CTL" --server "${ADDR[tps0r0]}" tables
echo

rc=0
"$BENCH" throughput --model cb --tokens "$TOKENS" --seconds "$TP_SECONDS" --rounds 2 \
  --inflight 2 --verify-seed 1 \
  --target "1-server-t1=${ADDR[one_t1]}" --target "1-server-t2=${ADDR[one_t2]}" \
  --target "3-shards-t1=${ADDR[tps0r0]}" || rc=$?
echo
stop_all
[ "$rc" = 0 ] || exit "$rc"

echo
echo "== phase 2: hedging, 3 shards x 2 replicas (--threads 1 each), replica hds0r1 stalled"
start_cluster hd 3 2
timed "import hb" "$CTL" --server "${ADDR[hds0r0]}" import-synthetic --table hb \
  --rows 600000 --row-bytes 128 --seed 5
echo "client opened on hds1r0 ${ADDR[hds1r0]}; stalled: hds0r1 ${ADDR[hds0r1]} pid ${PID[hds0r1]}"
echo
"$BENCH" hedge --server "${ADDR[hds1r0]}" --table hb --seed 5 --threads 2 \
  --rows-per-call 512 --seconds "$HEDGE_SECONDS" --stall-pid "${PID[hds0r1]}" \
  --stall-ms 50 --stall-every-ms 1000 --hedge-percentile 95 --hedge-min-ms 2 || rc=$?
echo
stop_all
exit "$rc"
