#!/usr/bin/env bash
# Benchmark transcast on this machine (loopback only): builds release, raises the open-file limit, and runs
# transcast-bench with the given options (see `transcast-bench --help`), e.g.
#   scripts/bench.sh --clients 1000 --duration 20
#   scripts/bench.sh --mode transcode --clients 100
#   scripts/bench.sh --streams 8 --clients 80 --mode transcode
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_release_bench
exec target/release/transcast-bench "$@"
