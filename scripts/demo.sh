#!/usr/bin/env bash
# The main job on an embedded default: installs what is missing, builds,
# starts engram-server on a local data dir, imports a demo table (65536
# synthetic bf16 rows of dim 64, i.e. 128-byte rows like the reference
# Engram config), looks rows up and verifies them; then puts a small Engram
# model's manifest, creates its tables, hashes token ids into row ids and
# prefetches them; then runs a tiny DeepSeek-V4.1-shaped model end to end
# (a generated checkpoint in V4.1's layout -> import -> verify -> hash with a
# DEAD token -> prefetch -> BF16, printing a few dequantized values); runs a
# few lines of Python through the engram package; and stops the server.
# KEEP_RUNNING=1 leaves the server running and prints how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh

DEMO=${DEMO_DIR:-.demo}
mkdir -p "$DEMO"
rm -f "$DEMO/port"
SERVER=build/server/engram-server
CTL=build/client/engramctl

"$SERVER" --data "$DEMO/data" --listen 127.0.0.1:${PORT:-0} --port-file "$DEMO/port" \
  --log-file "$DEMO/server.log" &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null && wait "$pid" || true; }
[ "${KEEP_RUNNING:-0}" = 1 ] || trap stop EXIT
for _ in $(seq 200); do [ -s "$DEMO/port" ] && break; sleep 0.05; done
[ -s "$DEMO/port" ] || { echo "demo: server did not start; see $DEMO/server.log" >&2; exit 1; }
ADDR=127.0.0.1:$(cat "$DEMO/port")
echo "== engram-server (pid $pid) serving $DEMO/data on $ADDR"

echo "== importing table demo: 65536 rows x 64 bf16 (128 bytes), seed 42"
"$CTL" --server "$ADDR" import-synthetic --table demo --rows 65536 --row-bytes 128 \
  --dim 64 --dtype bf16 --seed 42
echo "== tables"
"$CTL" --server "$ADDR" tables
echo "== lookup rows 0, 1, 65535 (each line cut to 80 columns)"
"$CTL" --server "$ADDR" lookup --table demo 0 1 65535 | cut -c1-80
echo "== verify 4096 random rows and the edges against the synthetic rule"
"$CTL" --server "$ADDR" verify-synthetic --table demo --seed 42 --samples 4096

echo "== an Engram model: manifest deploy/examples/tiny-model.json (2 layers x 8 heads, 32-dim bf16)"
"$CTL" --server "$ADDR" put-manifest deploy/examples/tiny-model.json
"$CTL" --server "$ADDR" import-synthetic --manifest tiny --seed 7
echo "== row ids the reference hashing gives for tokens 1 5 9 300 44 (layer 1, [T, heads])"
echo "1 5 9 300 44" | "$CTL" hash --manifest deploy/examples/tiny-model.json --layer 1
echo "== prefetch those tokens for layers 1 and 15 and check every row"
printf '1 5 9 300 44\n17 17 17 17\n' | "$CTL" --server "$ADDR" prefetch --model tiny --layer 1,15 --verify-seed 7

echo "== DeepSeek-V4.1's shape: deploy/examples/tiny-deepseek-v4.1.json (4-grams, 8 heads,"
echo "   264-byte mxfp8_e4m3 rows, DEAD tokens, layers 1 and 14) from a checkpoint in V4.1's layout"
python3 tests/integration/make_v41_checkpoint.py "$DEMO/v41-checkpoint" --seed 41
"$CTL" --server "$ADDR" put-manifest deploy/examples/tiny-deepseek-v4.1.json
for layer in 1 14; do
  "$CTL" --server "$ADDR" import --manifest tiny-v41 --layer "$layer" \
    --checkpoint "$DEMO/v41-checkpoint" --progress-every 0
done
"$CTL" --server "$ADDR" verify --table tiny-v41.l14 --checkpoint "$DEMO/v41-checkpoint" --layer 14
echo "== row ids of tokens 1 5 -1 9 300 (-1 is DEAD: its position and the look-back across it pad)"
echo "1 5 -1 9 300" | "$CTL" hash --manifest deploy/examples/tiny-deepseek-v4.1.json --layer 1 \
  | tr ' ' '\n' | awk '{ printf "%s%s", $0, (NR % 24 ? " " : "\n") }' | cut -c1-100
echo "== prefetch them for layers 1 and 14, dequantized to BF16; the first values of each layer"
echo "1 5 -1 9 300" | "$CTL" --server "$ADDR" prefetch --model tiny-v41 --layer 1,14 \
  --dequant bf16 --show 8

if [ -d build/python/engram ]; then
  echo "== the same from Python (the engram package, build/python)"
  PYTHONPATH=build/python /usr/bin/python3 - "$ADDR" <<'PY'
import sys
import engram

with engram.Client(sys.argv[1]) as client:
    rows = client.lookup("demo", [0, 1, 65535])
    print("lookup demo [0, 1, 65535]:", rows.shape, rows.dtype, "row 0 starts", rows[0, :8].tolist())
    model = client.model("tiny-v41")
    print(model)
    with model.prefetch([[1, 5, -1, 9, 300]], dtype="float32") as p:
        layer14 = p.wait_layer(14)
    print("layer 14, token 0, column 0, first values:", layer14[0, 0, 0, :4].tolist())
PY
fi

if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "== server left running on $ADDR (pid $pid); stop it with: kill $pid"
else
  echo "== stopping the server (log: $DEMO/server.log)"
fi
