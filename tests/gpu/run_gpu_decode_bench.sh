#!/usr/bin/env bash
# run_gpu_decode_bench.sh: runs engram-gpu-decode-bench (the decode-loop
# benchmark with each layer's compute a kernel on a real GPU, issue 16)
# against a fresh engram-server holding the Engram paper's demo model, or
# with --v41 a model of DeepSeek-V4.1-Flash's Engram shapes, once over gRPC
# and once through the same-node path.
#
#   tests/gpu/run_gpu_decode_bench.sh BUILD_DIR [--v41] [BENCH OPTIONS...]
#
# Builds nothing; needs BUILD_DIR/tests/gpu/engram-gpu-decode-bench (built
# where CMake found nvcc: tests/gpu/CMakeLists.txt) and a CUDA device. The
# server is set up exactly as run_decode_loop_bench.sh sets it up, by
# tests/bench/demo_server.sh (manifest written by python3, engram-server on
# a free loopback port with a temp data dir, --threads 2, the model's
# resident budget, both tables imported with `engramctl import-synthetic
# --manifest MODEL --seed 1`), with ENGRAM_BENCH_SHM=1 set unless the
# caller set it otherwise, so the server also gets --shm-dir and the
# same-node run has files to map.
# Then, per form (raw; with --v41 also --dequant bf16), the bench runs twice
# against the same server, on tests/data/workload/tokens.bin with
# --verify-seed 1 and any further options given (e.g. --steps 50):
#   --local off      every row over gRPC;
#   --local require  every row from the server's mapped files (a prefetch
#                    that cannot be served so fails rather than fall back).
# The worker process gets GLIBC_TUNABLES as run_decode_loop_bench.sh gives
# it (ENGRAM_BENCH_GLIBC_TUNABLES overrides, empty for glibc's default).
# A first run that finds no CUDA device (exit 3) ends the script there with
# that status. Stops the server with SIGTERM and removes the temp dirs on
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

export ENGRAM_BENCH_SHM=${ENGRAM_BENCH_SHM:-1}
. "$(dirname "$0")/../bench/demo_server.sh"
demo_server_start run_gpu_decode_bench.sh "$BUILD" tests/gpu/engram-gpu-decode-bench "$model"

forms=(raw)
[ "$model" = v41 ] && forms=(raw bf16)

rc=0
TUNABLES=${ENGRAM_BENCH_GLIBC_TUNABLES-glibc.malloc.trim_threshold=268435456}
echo "worker process: GLIBC_TUNABLES=$TUNABLES; server --shm-dir: ${SHM_DIR:-none}"
for form in "${forms[@]}"; do
  for local in off require; do
    echo "=== form: $form, --local $local ($([ $local = off ] && echo gRPC || echo same-node)) ==="
    r=0
    GLIBC_TUNABLES=$TUNABLES "$BENCH" --server "$ADDR" --model "$model" --tokens "$TOKENS" \
      --verify-seed 1 --dequant "$form" --local "$local" "$@" || r=$?
    echo
    if [ "$r" -eq 3 ]; then
      echo "run_gpu_decode_bench.sh: no CUDA device on this machine; nothing measured" >&2
      exit 3
    fi
    [ "$rc" -ne 0 ] || rc=$r
  done
done
stop_server
exit "$rc"
