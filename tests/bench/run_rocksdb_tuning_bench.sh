#!/usr/bin/env bash
# run_rocksdb_tuning_bench.sh: runs the RocksDB tuning study
# (engram-rocksdb-tuning-bench) in a temporary directory.
#
#   tests/bench/run_rocksdb_tuning_bench.sh BUILD_DIR [--rows N] [--cache BYTES]
#                                           [--keep DIR] [BENCH OPTIONS...]
#
# Builds nothing. Defaults: 8,000,000 rows x 128 B (about 1 GB of rows, 8x
# the 128 MiB block cache), 3 repetitions. The bench writes one database per
# table layout (about 1.2 GB each, some 10 GB in all) under a temp dir that
# is removed on exit, or under --keep DIR, which is kept so a later run with
# the same --rows skips the writing. Other options go to the bench as they
# are (see `engram-rocksdb-tuning-bench --help`: --seconds, --reps, --only).
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--rows N] [--cache BYTES] [--keep DIR] [BENCH OPTIONS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd); shift
ROWS=8000000 CACHE=128M KEEP= EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h|--help) usage ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
BENCH=$BUILD/tests/bench/engram-rocksdb-tuning-bench
[ -x "$BENCH" ] || { echo "run_rocksdb_tuning_bench.sh: missing $BENCH (build first)" >&2; exit 2; }

if [ -n "$KEEP" ]; then
  DIR=$KEEP
  mkdir -p "$DIR"
else
  DIR=$(mktemp -d /tmp/engram-tuning.XXXXXX)
  trap 'rm -rf "$DIR"' EXIT
fi
trap 'exit 130' INT TERM

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rocksdb: $(dpkg-query -W -f='${Version}' librocksdb-dev 2>/dev/null || echo unknown)"
"$BENCH" --dir "$DIR" --rows "$ROWS" --cache "$CACHE" "${EXTRA[@]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
