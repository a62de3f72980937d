#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, integration
# against real servers, Python interop). Exits non-zero on any failure.
# ENGRAM_SANITIZE=1 builds into build-asan with ASan+UBSan instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ENGRAM_SANITIZE:-0}" = 1 ]; then
  export BUILD_DIR=build-asan BUILD_TYPE=Debug
  bash scripts/build.sh -DENGRAM_SANITIZE=ON
else
  export BUILD_DIR=${BUILD_DIR:-build}
  bash scripts/build.sh
fi
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 600
