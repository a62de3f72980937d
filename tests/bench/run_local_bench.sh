#!/usr/bin/env bash
# run_local_bench.sh: the same-node local path (issue 16) against gRPC and
# against the in-process memcpy gather, in one invocation.
#
#   tests/bench/run_local_bench.sh BUILD_DIR [--rounds R (2)] [--seconds S (2)]
#
# Builds nothing. Starts two engram-servers on loopback (--threads 2), one
# with --shm-dir in a fresh directory under /dev/shm (or /tmp), imports the
# same resident table into both (1,000,000 x 128 B, seed 12345), then for
# 256, 4096 and 65536 rows per call, one call in flight, alternates:
#   local: engram-bench against the --shm-dir server (the client's default
#          local=auto reads the mapped file) with --baseline (a memcpy
#          gather of the same rows in the bench process);
#   grpc:  engram-bench against the other server (no files: every lookup
#          goes over gRPC).
# Prints each run and, per size, the medians and the ratios local/memcpy
# and local/grpc; then the --shm-dir server's Lookup count, which stays at
# the few lookups made before the client's first listing arrived.
# Stops what it started on any exit. Serialise with other benchmarks:
#   flock /tmp/engram-bench.lock tests/bench/run_local_bench.sh build
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--rounds R] [--seconds S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
B=$(cd "$1" && pwd); shift
ROUNDS=2 SECS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    *) usage ;;
  esac
done
BASE=/dev/shm; [ -w "$BASE" ] || BASE=/tmp
T=$(mktemp -d /tmp/engram-local-bench.XXXXXX); SHM=$(mktemp -d "$BASE/engram-local-bench.XXXXXX")
P1= P2=
cleanup() {
  for p in $P1 $P2; do [ "$p" -gt 0 ] 2>/dev/null && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T" "$SHM"
}
trap cleanup EXIT
"$B/server/engram-server" --listen 127.0.0.1:0 --port-file "$T/p1" --data "$T/d1" --threads 2 \
  --shm-dir "$SHM" > "$T/l1" 2>&1 & P1=$!
"$B/server/engram-server" --listen 127.0.0.1:0 --port-file "$T/p2" --data "$T/d2" --threads 2 \
  > "$T/l2" 2>&1 & P2=$!
for i in $(seq 100); do [ -s "$T/p1" ] && [ -s "$T/p2" ] && break; sleep 0.1; done
A1=127.0.0.1:$(cat "$T/p1"); A2=127.0.0.1:$(cat "$T/p2")
for a in "$A1" "$A2"; do
  "$B/client/engramctl" --server "$a" import-synthetic --table bench --rows 1000000 \
    --row-bytes 128 --seed 12345 > /dev/null
done
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
for rows in 256 4096 65536; do
  : > "$T/local" ; : > "$T/memcpy" ; : > "$T/grpc"
  for r in $(seq "$ROUNDS"); do
    out=$("$B/tests/bench/engram-bench" --server "$A1" --table bench --rows-per-call "$rows" \
          --inflight 1 --seconds "$SECS" --baseline | grep '^bench:')
    echo "rows=$rows round=$r local $out"
    echo "$out" | field rows_per_s >> "$T/local"
    echo "$out" | field baseline_rows_per_s >> "$T/memcpy"
    out=$("$B/tests/bench/engram-bench" --server "$A2" --table bench --rows-per-call "$rows" \
          --inflight 1 --seconds "$SECS" | grep '^bench:')
    echo "rows=$rows round=$r grpc  $out"
    echo "$out" | field rows_per_s >> "$T/grpc"
  done
  python3 - "$rows" "$T/local" "$T/memcpy" "$T/grpc" <<'PY'
import statistics, sys
rows = sys.argv[1]
l, m, g = ([float(x) for x in open(p).read().split()] for p in sys.argv[2:5])
ml, mm, mg = statistics.median(l), statistics.median(m), statistics.median(g)
per = " ".join(f"{a / b:.3f}" for a, b in zip(l, m))
print(f"rows={rows}: local {ml:,.0f} rows/s, memcpy {mm:,.0f}, grpc {mg:,.0f}; "
      f"local/memcpy {ml / mm:.3f} (per round {per}), local/grpc {ml / mg:.2f}")
PY
done
echo "lookups the --shm-dir server answered (the rest were read locally):"
"$B/client/engramctl" --server "$A1" stats | grep '^/engram.v1.Lookup/Lookup' || true
