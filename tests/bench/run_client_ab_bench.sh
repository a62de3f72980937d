#!/usr/bin/env bash
# run_client_ab_bench.sh: two builds of the client, A (before) and B (after),
# against the same servers, in alternating rounds of one invocation: rows/s
# and the client process's CPU per row (getrusage of the bench process:
# user + system, every thread).
#
#   tests/bench/run_client_ab_bench.sh BUILD_A BUILD_B [--rounds R (5)]
#       [--seconds S (5)] [--only prefetch|lookup]
#
# Builds nothing. Servers come from BUILD_B (the same server code is
# assumed; only the client differs). Starts:
#   - a 3-shard x 2-replica cluster (--threads 1 each, the map and model
#     "cb" of run_cluster_bench.sh: bf16 128-byte rows, layers 1 and 15,
#     imported with seed 1 from the first address);
#   - one unclustered server (--threads 2) with table "bench" (1,000,000
#     rows x 128 B, seed 12345), as run_bench.sh.
# Then, for each round (A first in odd rounds, B first in even ones):
#   prefetch: engram-cluster-bench throughput through the cluster (prefill
#     B 1 x T 4096, both layers, 2 in flight, --warmup 0);
#   lookup: engram-bench, 4096 uniform rows per call, 8 in flight, on the
#     single server (--warmup 0).
# With no warm-up the process's CPU covers the timed window plus a few ms
# of start-up, the same for A and B. Prints each run, then per benchmark
# the median rows/s and CPU us per 1000 rows of A and B and B/A.
# Serialise with other benchmarks: flock /tmp/engram-bench.lock ...
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cb_manifest.sh"

usage() { echo "usage: $0 BUILD_A BUILD_B [--rounds R] [--seconds S] [--only prefetch|lookup]" >&2; exit 2; }
[ $# -ge 2 ] || usage
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd); shift 2
ROUNDS=5 SECS=5 ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --only) ONLY=$2; [ "$ONLY" = prefetch ] || [ "$ONLY" = lookup ] || usage; shift 2 ;;
    *) usage ;;
  esac
done

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
TOKENS=$ROOT/tests/data/workload/tokens.bin
SERVER_BIN=$B/server/engram-server
CTL=$B/client/engramctl
for b in "$SERVER_BIN" "$CTL" "$A/tests/bench/engram-cluster-bench" "$A/tests/bench/engram-bench" \
         "$B/tests/bench/engram-cluster-bench" "$B/tests/bench/engram-bench"; do
  [ -x "$b" ] || { echo "run_client_ab_bench.sh: missing $b (build first)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/engram-client-ab.XXXXXX)
declare -A PID=() ADDR=() PORT=()
stop_all() {
  local name rc
  for name in $(printf '%s\n' "${!PID[@]}" | sort); do
    rc=0
    kill -TERM "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" || rc=$?
    echo "server $name: stopped with SIGTERM, exit status $rc"
    unset "PID[$name]"
  done
}
cleanup() { stop_all; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start_server() {   # start_server NAME THREADS BUDGET [ARGS...]
  local name=$1 threads=$2 budget=$3; shift 3
  local dir=$TMP/$name
  mkdir -p "$dir"
  "$SERVER_BIN" --data "$dir/data" --listen "127.0.0.1:${PORT[$name]}" --port-file "$dir/port" \
    --threads "$threads" --resident-budget "$budget" --log-file "$dir/server.log" "$@" &
  PID[$name]=$!
  ADDR[$name]=127.0.0.1:${PORT[$name]}
}
wait_ready() {
  local name
  for name in "$@"; do
    for _ in $(seq 400); do
      [ -s "$TMP/$name/port" ] && break
      kill -0 "${PID[$name]}" 2>/dev/null || { cat "$TMP/$name/server.log" >&2; exit 2; }
      sleep 0.05
    done
    [ -s "$TMP/$name/port" ] || { echo "run_client_ab_bench.sh: $name wrote no port" >&2; exit 2; }
  done
}

# The 3 x 2 cluster.
names=()
printf '{"name": "ab", "placement": "mod", "shards": [' > "$TMP/map.json"
for s in 0 1 2; do
  printf '%s{"replicas": [' "$([ $s = 0 ] || echo ', ')" >> "$TMP/map.json"
  for r in 0 1; do
    PORT[s${s}r${r}]=$(free_port)
    printf '%s"127.0.0.1:%s"' "$([ $r = 0 ] || echo ', ')" "${PORT[s${s}r${r}]}" >> "$TMP/map.json"
  done
  printf ']}' >> "$TMP/map.json"
done
printf ']}\n' >> "$TMP/map.json"
for s in 0 1 2; do
  for r in 0 1; do
    start_server "s${s}r${r}" 1 1G --cluster "$TMP/map.json" --shard "$s"
    names+=("s${s}r${r}")
  done
done
PORT[one]=$(free_port)
start_server one 2 2G
wait_ready "${names[@]}" one
write_cb_manifest "$TMP/cb.json"
"$CTL" --server "${ADDR[s0r0]}" put-manifest "$TMP/cb.json" > /dev/null
"$CTL" --server "${ADDR[s0r0]}" --deadline-ms 600000 import-synthetic --manifest cb --seed 1 > /dev/null
"$CTL" --server "${ADDR[one]}" --deadline-ms 600000 import-synthetic --table bench \
  --rows 1000000 --row-bytes 128 --seed 12345 > /dev/null
echo "cluster 3 x 2: $(cat "$TMP/map.json"); single server ${ADDR[one]}"
echo "A: $A"
echo "B: $B"
echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# run.py LABEL CMD...: runs CMD, prints its bench line and the process's
# CPU (wait4's rusage); appends "LABEL rows_per_s cpu_us_per_krow" to results.
cat > "$TMP/run.py" <<'PY'
import os, re, subprocess, sys
label, cmd = sys.argv[1], sys.argv[2:]
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
out = p.stdout.read()
_, status, ru = os.wait4(p.pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.stderr.write(out)
    sys.exit("run.py: %s exited %d" % (label, os.waitstatus_to_exitcode(status)))
line = [l for l in out.splitlines() if l.startswith("bench: ")][-1]
kv = dict(re.findall(r"(\w+)=(\S+)", line))
rows = float(kv["rows_per_s"]) * float(kv["seconds"])
cpu = ru.ru_utime + ru.ru_stime
per = cpu / rows * 1e9          # us per 1000 rows
print("%-10s rows/s %10.0f  cpu %.2f s (user %.2f sys %.2f)  cpu us/krow %.2f  p50 %s ms p99 %s ms"
      % (label, float(kv["rows_per_s"]), cpu, ru.ru_utime, ru.ru_stime, per, kv["p50_ms"], kv["p99_ms"]))
with open(os.environ["RESULTS"], "a") as f:
    f.write("%s %s %.4f\n" % (label, kv["rows_per_s"], per))
PY
export RESULTS=$TMP/results
run_side() {   # run_side A|B BUILD
  [ "$ONLY" = lookup ] || python3 "$TMP/run.py" "prefetch-$1" "$2/tests/bench/engram-cluster-bench" \
    throughput --model cb --tokens "$TOKENS" --target "c=${ADDR[s0r0]}" --seconds "$SECS" \
    --rounds 1 --warmup 0 --inflight 2
  [ "$ONLY" = prefetch ] || python3 "$TMP/run.py" "lookup-$1" "$2/tests/bench/engram-bench" \
    --server "${ADDR[one]}" --table bench --rows-per-call 4096 --inflight 8 --seconds "$SECS" \
    --warmup 0
}
# untimed: both clients once, so page cache and connections are warm
run_side A "$A" > /dev/null
run_side B "$B" > /dev/null
: > "$RESULTS"
for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r"
  if [ $((r % 2)) = 1 ]; then run_side A "$A"; run_side B "$B"; else run_side B "$B"; run_side A "$A"; fi
done
echo
python3 - "$RESULTS" <<'PY'
import statistics, sys
res = {}
for line in open(sys.argv[1]):
    label, rps, per = line.split()
    res.setdefault(label, []).append((float(rps), float(per)))
for bench in ("prefetch", "lookup"):
    if bench + "-A" not in res:
        continue
    a, b = res[bench + "-A"], res[bench + "-B"]
    ra, rb = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    ca, cb = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
    ratios = sorted(y[0] / x[0] for x, y in zip(a, b))
    print("%-8s rows/s A %.0f B %.0f B/A %.3f (per round %s); cpu us/krow A %.2f B %.2f B/A %.3f"
          % (bench, ra, rb, rb / ra, " ".join("%.3f" % r for r in ratios), ca, cb, cb / ca))
PY
