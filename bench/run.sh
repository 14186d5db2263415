#!/bin/bash
# jobgate against its peers: a thin wrapper over bench.py (see README.md).
#   bench/run.sh [BUILD_DIR] [bench.py options]      (make bench: bench/run.sh build)
# The environment variables of README.md (BENCH_SECONDS, BENCH_ROUNDS, BENCH_ONLY,
# BENCH_SCENARIOS, BENCH_SMOKE, ...) pass through.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=build
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then build=$1; shift; fi
[ -d "$build" ] || { echo "bench: no build directory '$build'" >&2; exit 1; }
exec /usr/bin/python3 "$here/bench.py" --build "$build" "$@"
