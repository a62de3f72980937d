#!/usr/bin/env bash
# Installs the Debian 12 packages engram-store builds, tests and benchmarks
# with. Idempotent: installs only what is missing, so it costs a few dpkg
# queries on a machine that already has everything.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
  librocksdb-dev libjemalloc-dev libcmocka-dev libjansson-dev libutf8proc-dev
  libmicrohttpd-dev libxxhash-dev libssl-dev
  redis-server libhiredis-dev
  protobuf-compiler python3 python3-grpcio python3-protobuf python3-numpy python3-yaml python3-xxhash
  python3-h2                 # tests/integration/abuse_test.py: a raw HTTP/2 client
  python3-dev python3-setuptools python3-pytest python3-venv python3-pip
                             # python/: the engram package's C extension, pip install, pytest
  python3-torch              # python/tests and the PyTorch example (CPU)
  openssl ca-certificates
  valgrind                   # tests/valgrind: the unit tests under memcheck
  clang libclang-rt-14-dev   # tests/fuzz: clang and its libFuzzer runtime
  help2man                   # man pages from the binaries' --help (packaging/)
  dpkg-dev file              # cpack -G DEB: dpkg-shlibdeps, and file to find ELF objects
  binutils                   # tests/install: nm -D and readelf on libengram.so
  prometheus                 # deploy/prometheus: promtool for the rules' tests, and a
                             # real Prometheus scraping a server (integration_prometheus)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
