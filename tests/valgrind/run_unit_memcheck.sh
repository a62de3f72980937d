#!/usr/bin/env bash
# run_unit_memcheck.sh: every unit test, the cluster client's test
# (tests/integration/test_client_cluster: the client's most intricate
# memory handling) and the same-node path's (test_client_local: mappings,
# gathers, a shortened file's SIGBUS), under valgrind memcheck, failing on
# any memory error and on any definite, indirect or possible leak that
# tests/valgrind/unit.supp does not explain (third-party noise only).
#
#   tests/valgrind/run_unit_memcheck.sh BUILD_DIR
#
# Use a non-sanitizer build (valgrind and ASan do not mix).
# test_client_cluster starts real servers and runs ~30x slower under
# valgrind; its timing-dependent checks allow for that.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
SUPP=$(cd "$(dirname "$0")" && pwd)/unit.supp
command -v valgrind > /dev/null || { echo "run_unit_memcheck.sh: valgrind is not installed" >&2; exit 2; }
LOGS=$(mktemp -d /tmp/engram-memcheck.XXXXXX)
rc=0
for t in "$BUILD"/tests/unit/test_* "$BUILD"/tests/integration/test_client_cluster \
         "$BUILD"/tests/integration/test_client_local; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  start=$(date +%s)
  if valgrind --error-exitcode=9 --leak-check=full --show-leak-kinds=definite,indirect,possible \
       --errors-for-leak-kinds=definite,indirect,possible --suppressions="$SUPP" \
       --log-file="$LOGS/$name.log" "$t" > "$LOGS/$name.out" 2>&1; then
    echo "memcheck $name: clean ($(( $(date +%s) - start )) s)"
  else
    echo "memcheck $name: FAILED (exit $?); valgrind's report:"
    grep -v "^==[0-9]*== *$" "$LOGS/$name.log" | tail -60
    tail -20 "$LOGS/$name.out"
    rc=1
  fi
done
[ "$rc" = 0 ] && rm -rf "$LOGS"
exit "$rc"
