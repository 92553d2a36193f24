#!/usr/bin/env bash
# Benchmark transcast on this machine (loopback only): builds release, raises the open-file limit, and runs
# transcast-bench with the given options (see `transcast-bench --help`), e.g.
#   scripts/bench.sh --clients 1000 --duration 20
#   scripts/bench.sh --mode transcode --clients 100
#   scripts/bench.sh --streams 8 --clients 80 --mode transcode
# or, with `--player`, how far behind a live source headless Chromium and Firefox show it, with /player.js and with
# a plain <video> (the `player_latency` benchmark in tests/browsers.rs; PLAYER_BENCH_SECONDS, default 60 per run;
# PLAYER_BENCH_ONLY=chromium|firefox): a table on stdout, target/bench/player.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
if [[ "${1:-}" == "--player" ]]; then
    ensure_packages "${RUNTIME_PACKAGES[@]}" ffmpeg
    ensure_browsers
    exec cargo test --release --test browsers player_latency -- --ignored --nocapture
fi
prepare_release_bench
exec target/release/transcast-bench "$@"
