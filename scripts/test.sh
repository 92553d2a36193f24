#!/usr/bin/env bash
# Sets up this machine (Debian 12 with Rust) for the tests and runs them: format check, clippy with
# warnings as errors, the whole test suite (unit and integration, real pipelines and sockets), and a short
# run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TEST_PACKAGES=(
  # Test media generation and checks: x264enc (ugly), avenc_aac (libav), decoders; ffprobe/ffmpeg and curl
  # as real clients.
  ffmpeg
  curl
  # A plain HTTP file server and GStreamer's RTSP server for the pull tests (python3 -m http.server,
  # tests/data/rtsp-server.py).
  python3
  python3-gi
  gir1.2-gst-rtsp-server-1.0
  # A cache in front of the DASH segments (tests/dash.rs runs scripts/nginx-cache.conf).
  nginx
  # systemd-analyze checks scripts/transcast.service (tests/cli.rs).
  systemd
)
ensure_packages "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
ensure_rust_tools
ensure_browsers
# dash.js and Shaka Player from the npm registry (pinned), for the DASH case of tests/browsers.rs, which serves
# them from target/js: installed here, never while the tests run.
command -v npm >/dev/null || ensure_packages nodejs npm
for pkg in dashjs@5.2.1 shaka-player@5.2.12; do
  name=${pkg%@*} version=${pkg##*@}
  if ! grep -qs "\"version\": \"$version\"" "target/js/node_modules/$name/package.json"; then
    echo "==> npm install $pkg into target/js"
    npm install --prefix target/js --no-save --no-audit --no-fund --ignore-scripts dashjs@5.2.1 shaka-player@5.2.12
  fi
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets
echo "==> fuzzing, 15 s per target (scripts/fuzz.sh)"
bash scripts/fuzz.sh 15
