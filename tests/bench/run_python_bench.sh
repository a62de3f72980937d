#!/usr/bin/env bash
# run_python_bench.sh: the Python client against the C client in one run
# (python_bench.py), on a fresh engram-server holding the demo model.
#
#   tests/bench/run_python_bench.sh BUILD_DIR [python_bench.py options]
#
# Builds nothing. Starts the server and imports the demo model's two tables
# (engramctl import-synthetic --seed 1) exactly as run_prefetch_bench.sh does
# (demo_server.sh), then runs python_bench.py with $PYTHON (default
# python3; it needs numpy) and PYTHONPATH=BUILD_DIR/python, giving it the
# C benchmarks of the same build (engram-bench, engram-prefetch-bench) to
# run in between its own measurements. The timed part holds
# /tmp/engram-bench.lock (flock), so benchmarks of other people on this
# machine do not run at the same time. Stops the server (SIGTERM, exit
# status reported) and removes the temp dir on any exit. Exit status: the
# benchmark's.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [python_bench.py options]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -x "$BUILD/tests/bench/engram-bench" ] ||
  { echo "$0: missing $BUILD/tests/bench/engram-bench" >&2; exit 2; }
[ -d "$BUILD/python/engram" ] ||
  { echo "$0: missing $BUILD/python/engram (build engram_python)" >&2; exit 2; }

. "$HERE/demo_server.sh"
demo_server_start run_python_bench.sh "$BUILD" engram-prefetch-bench

rc=0
flock /tmp/engram-bench.lock env PYTHONPATH="$BUILD/python" "$PYTHON" "$HERE/python_bench.py" \
  --server "$ADDR" --table demo.l1 --model demo --tokens "$TOKENS" \
  --c-lookup-bench "$BUILD/tests/bench/engram-bench" \
  --c-prefetch-bench "$BENCH" "$@" || rc=$?
echo
stop_server
exit "$rc"
