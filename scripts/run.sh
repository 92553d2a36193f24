#!/usr/bin/env bash
# Sets up this machine (Debian 12 with Rust) and runs the daemon on 127.0.0.1:8080 with the embedded
# defaults. Extra arguments go to `transcast serve` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_packages "${RUNTIME_PACKAGES[@]}"
cargo build --release --locked
cat <<'TXT'
==> transcast on http://127.0.0.1:8080 (unless --listen says otherwise)
    push:  curl -T clip.mp4 http://127.0.0.1:8080/live/cam1
           ffmpeg -re -i in.mkv -c copy -f matroska -method PUT http://127.0.0.1:8080/live/cam2
    watch: http://127.0.0.1:8080/live/cam1   (Firefox/Chromium, VLC, ffplay)
TXT
exec target/release/transcast serve "$@"
