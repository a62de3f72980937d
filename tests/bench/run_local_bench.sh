#!/usr/bin/env bash
# run_local_bench.sh: the same-node local path (issue 16) against gRPC and
# against the in-process memcpy gather, in one invocation.
#
#   tests/bench/run_local_bench.sh BUILD_DIR [--rounds R (2)] [--seconds S (2)]
#                                  [--huge DIR]
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
# With --huge DIR (a tmpfs mounted with huge=within_size or huge=always,
# e.g. `mount -t tmpfs -o huge=within_size,size=1G tmpfs DIR`, which
# needs root) a third server keeps its files there, in 2 MiB pages, and a
# third arm reads it the same way:
#   huge:  engram-bench against that server, also with --baseline.
# Prints each run and, per size, the medians and the ratios local/memcpy
# and local/grpc (and huge/memcpy, huge/local); then the --shm-dir server's Lookup count, which stays at
# the few lookups made before the client's first listing arrived.
# Stops what it started on any exit. Serialise with other benchmarks:
#   flock /tmp/engram-bench.lock tests/bench/run_local_bench.sh build
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR [--rounds R] [--seconds S] [--huge DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
B=$(cd "$1" && pwd); shift
ROUNDS=2 SECS=2 HUGE_BASE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --huge) HUGE_BASE=$2; shift 2 ;;
    *) usage ;;
  esac
done
BASE=/dev/shm; [ -w "$BASE" ] || BASE=/tmp
if [ -n "$HUGE_BASE" ]; then
  grep -qs " $(cd "$HUGE_BASE" && pwd) tmpfs .*huge=" /proc/mounts ||
    { echo "$0: --huge $HUGE_BASE is not a tmpfs mounted with huge=" >&2; exit 2; }
fi
T=$(mktemp -d /tmp/engram-local-bench.XXXXXX); SHM=$(mktemp -d "$BASE/engram-local-bench.XXXXXX")
HSHM=
[ -n "$HUGE_BASE" ] && HSHM=$(mktemp -d "$HUGE_BASE/engram-local-bench.XXXXXX")
P1= P2= P3=
cleanup() {
  for p in $P1 $P2 $P3; do [ "$p" -gt 0 ] 2>/dev/null && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T" "$SHM" ${HSHM:+"$HSHM"}
}
trap cleanup EXIT
"$B/server/engram-server" --listen 127.0.0.1:0 --port-file "$T/p1" --data "$T/d1" --threads 2 \
  --shm-dir "$SHM" > "$T/l1" 2>&1 & P1=$!
"$B/server/engram-server" --listen 127.0.0.1:0 --port-file "$T/p2" --data "$T/d2" --threads 2 \
  > "$T/l2" 2>&1 & P2=$!
if [ -n "$HSHM" ]; then
  "$B/server/engram-server" --listen 127.0.0.1:0 --port-file "$T/p3" --data "$T/d3" --threads 2 \
    --shm-dir "$HSHM" > "$T/l3" 2>&1 & P3=$!
else
  echo 0 > "$T/p3"
fi
for i in $(seq 100); do [ -s "$T/p1" ] && [ -s "$T/p2" ] && [ -s "$T/p3" ] && break; sleep 0.1; done
A1=127.0.0.1:$(cat "$T/p1"); A2=127.0.0.1:$(cat "$T/p2"); A3=
[ -n "$HSHM" ] && A3=127.0.0.1:$(cat "$T/p3")
for a in "$A1" "$A2" $A3; do
  "$B/client/engramctl" --server "$a" import-synthetic --table bench --rows 1000000 \
    --row-bytes 128 --seed 12345 > /dev/null
done
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
for rows in 256 4096 65536; do
  : > "$T/local" ; : > "$T/memcpy" ; : > "$T/grpc" ; : > "$T/huge" ; : > "$T/hmemcpy"
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
    if [ -n "$A3" ]; then
      out=$("$B/tests/bench/engram-bench" --server "$A3" --table bench --rows-per-call "$rows" \
            --inflight 1 --seconds "$SECS" --baseline | grep '^bench:')
      echo "rows=$rows round=$r huge  $out"
      echo "$out" | field rows_per_s >> "$T/huge"
      echo "$out" | field baseline_rows_per_s >> "$T/hmemcpy"
    fi
  done
  python3 - "$rows" "$T/local" "$T/memcpy" "$T/grpc" "$T/huge" "$T/hmemcpy" <<'PY'
import statistics, sys
rows = sys.argv[1]
l, m, g, h, hm = ([float(x) for x in open(p).read().split()] for p in sys.argv[2:7])
ml, mm, mg = statistics.median(l), statistics.median(m), statistics.median(g)
per = " ".join(f"{a / b:.3f}" for a, b in zip(l, m))
print(f"rows={rows}: local {ml:,.0f} rows/s, memcpy {mm:,.0f}, grpc {mg:,.0f}; "
      f"local/memcpy {ml / mm:.3f} (per round {per}), local/grpc {ml / mg:.2f}")
if h:
    mh, mhm = statistics.median(h), statistics.median(hm)
    per = " ".join(f"{a / b:.3f}" for a, b in zip(h, hm))
    print(f"rows={rows}: huge {mh:,.0f} rows/s, its memcpy {mhm:,.0f}; huge/memcpy "
          f"{mh / mhm:.3f} (per round {per}), huge/local {mh / ml:.3f}")
PY
done
echo "lookups the --shm-dir server answered (the rest were read locally):"
"$B/client/engramctl" --server "$A1" stats | grep '^/engram.v1.Lookup/Lookup' || true
