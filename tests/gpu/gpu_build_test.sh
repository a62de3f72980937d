#!/usr/bin/env bash
# gpu_build_test.sh: the ctest gpu_decode_bench_build (tests/gpu/CMakeLists.txt).
#
#   gpu_build_test.sh BINARY        check a built engram-gpu-decode-bench
#   gpu_build_test.sh --skip WHY    print why it was not built; exit 77 (ctest: skipped)
#
# With a binary, on any machine, GPU or not:
#   1. --check-only exits 0 and names the CUDA runtime it was built with
#      (it touches no GPU);
#   2. --help prints the usage and exits 2, as every bench tool does;
#   3. a real run (tokens file that does not exist, server never reached)
#      exits 3 with "no CUDA device: ..." on a machine without a GPU or
#      driver, or, where there is a GPU, gets past it (calibrating the
#      spin kernel) and exits 2 naming the missing tokens file. Anything
#      else (a crash, a hang, another status) fails.
set -u

if [ "${1:-}" = --skip ]; then
  echo "gpu_decode_bench_build skipped: ${2:-no reason given}"
  exit 77
fi
[ $# -eq 1 ] || { echo "usage: $0 BINARY | --skip WHY" >&2; exit 2; }
bin=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin is not built"

out=$("$bin" --check-only 2>&1); rc=$?
echo "$out"
[ "$rc" -eq 0 ] || fail "--check-only exited $rc"
grep -q 'check only: built with CUDA runtime [0-9]' <<<"$out" || fail "--check-only said no runtime version"

out=$("$bin" --help 2>&1); rc=$?
[ "$rc" -eq 2 ] || fail "--help exited $rc, not 2"
grep -q '^usage: engram-gpu-decode-bench' <<<"$out" || fail "--help printed no usage"

missing=/nonexistent/engram-gpu-decode-bench-tokens.bin
out=$(timeout 60 "$bin" --server 127.0.0.1:1 --model none --tokens "$missing" 2>&1); rc=$?
echo "$out"
case $rc in
  3) grep -q '^engram-gpu-decode-bench: no CUDA device: ' <<<"$out" ||
       fail "exit 3 without the 'no CUDA device:' message"
     echo "no GPU here: exit 3 with the message, as designed" ;;
  2) grep -q "$missing" <<<"$out" || fail "exit 2 but not for the missing tokens file"
     echo "a GPU is here: opened and calibrated, then refused the missing tokens file" ;;
  *) fail "a run without a usable setup exited $rc (want 3 without a GPU, 2 with one)" ;;
esac
echo "ok"
