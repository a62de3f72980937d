#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, into build-fuzz) and runs each for S
# seconds on a scratch copy of its committed seeds (tests/fuzz/corpus/T),
# so the seeds stay as committed; prints the executions each target
# reached. Exits non-zero if any target crashed, naming the input that did
# it (kept in build-fuzz/fuzz-artifacts/T/; logs in build-fuzz/fuzz-logs/).
#
#   bash tests/fuzz/run_fuzz.sh                       # 30 s each (CI)
#   bash tests/fuzz/run_fuzz.sh --seconds 3600 --jobs 2
#   bash tests/fuzz/run_fuzz.sh --seconds 60 npy manifest   # some targets
#
# --jobs N runs N targets at once (one process each).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_EACH=30 JOBS=1 TARGETS=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "run_fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
ALL=(lookup_request lookup_response import manifest cluster tokenizer safetensors npy)
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

bash scripts/install-deps.sh
B=$ROOT/build-fuzz
CC=clang cmake -S . -B "$B" -DENGRAM_FUZZ=ON -DENGRAM_TESTS=OFF >/dev/null
cmake --build "$B" -j"$(nproc)" --target $(printf 'fuzz_%s ' "${TARGETS[@]}") >/dev/null

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$B/fuzz-logs" "$B/fuzz-artifacts"

# One target: scratch corpus, fixed time, 10 s per input at most (a slower
# input is a hang worth reporting), stats at the end.
run_one() {
  local t=$1 art="$B/fuzz-artifacts/$1/"
  rm -rf "$art" && mkdir -p "$art" "$WORK/$t/corpus" "$WORK/$t/tmp"
  cp -r "$ROOT/tests/fuzz/corpus/$t/." "$WORK/$t/corpus/"
  TMPDIR="$WORK/$t/tmp" "$B/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art" "$WORK/$t/corpus" \
    >"$B/fuzz-logs/$t.log" 2>&1
}

# Waits for the oldest running target when JOBS are already running.
declare -A PID
running=()
for t in "${TARGETS[@]}"; do
  if [ ${#running[@]} -ge "$JOBS" ]; then
    wait "${PID[${running[0]}]}" || true
    running=("${running[@]:1}")
  fi
  run_one "$t" & PID[$t]=$!
  running+=("$t")
done

failed=0
printf '%-16s %14s %10s  %s\n' target execs exec/s result
for t in "${TARGETS[@]}"; do
  rc=0
  wait "${PID[$t]}" || rc=$?
  log=$B/fuzz-logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crash=$(find "$B/fuzz-artifacts/$t" -type f | head -1)
  if [ "$rc" -ne 0 ] || [ -n "$crash" ]; then
    failed=1
    printf '%-16s %14s %10s  CRASHED: %s (log %s)\n' "$t" "${execs:-?}" "${rate:-?}" "${crash:-no input saved}" "$log"
  else
    printf '%-16s %14s %10s  ok\n' "$t" "${execs:-?}" "${rate:-?}"
  fi
done
exit $failed
