#!/usr/bin/env bash
# Fuzzes transcast's parsers of outside bytes with cargo-fuzz (libFuzzer, nightly Rust): the WebM scanner, the
# accept loop's request-head reader, Content-Range, names/masks/URLs/keys, and the token state file loader.
# Seeds come from media made here with GStreamer and from typical requests. Each target runs SECONDS (default 60):
#   scripts/fuzz.sh 15      # what CI runs
#   scripts/fuzz.sh 1200    # the long run in the README
# A crash stops the script with libFuzzer's report and the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds="${1:-60}"
ensure_packages "${RUNTIME_PACKAGES[@]}"
export PATH="$HOME/.cargo/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

targets=(webm_scanner watch_head content_range names_and_keys token_state worker_messages)
corpus=fuzz/corpus
for t in "${targets[@]}"; do mkdir -p "$corpus/$t"; done

# Seeds: WebM as transcast writes and reads it, request heads as clients send them, and the rest.
c="$corpus/webm_scanner"
[ -s "$c/vp8-vorbis.webm" ] || gst-launch-1.0 -q videotestsrc num-buffers=20 ! video/x-raw,width=160,height=120 \
  ! vp8enc deadline=1 keyframe-max-dist=10 ! webmmux name=m ! filesink location="$c/vp8-vorbis.webm" \
  audiotestsrc num-buffers=10 ! audioconvert ! vorbisenc ! m.
[ -s "$c/opus.webm" ] || gst-launch-1.0 -q audiotestsrc num-buffers=10 ! audioconvert ! audioresample ! opusenc \
  ! webmmux ! filesink location="$c/opus.webm"
printf 'GET /live/cam1 HTTP/1.1\r\nHost: x\r\n\r\n' > "$corpus/watch_head/plain"
printf 'GET /live/cam1?token=abc&x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: transcast/0.1.0 (relay)\r\nRange: bytes=0-\r\n\r\n' \
  > "$corpus/watch_head/relay"
printf 'GET /live/a%%20b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n' > "$corpus/watch_head/odd"
printf 'bytes 0-1023/*' > "$corpus/content_range/star"
printf 'bytes 602112-1048575/1048576' > "$corpus/content_range/total"
printf 'cam1' > "$corpus/names_and_keys/name"
printf '10.0.0.0/8' > "$corpus/names_and_keys/mask"
printf 'srt://127.0.0.1:9000?mode=caller' > "$corpus/names_and_keys/url"
printf '{"version":1,"sessions":[{"session_id":"cam1","origin":"native","inputs":["any"],"outputs":{"http":true,"rtp_udp":["127.0.0.1:5004"]},"expires_at":null,"created_at":"2026-11-27T10:00:00Z","push_key_sha256":"00","view_key_sha256":null}]}' \
  > "$corpus/token_state/one"

printf '\x0a\x00\x00\x00\x42{"track":0,"kind":"video","caps":"video/x-vp8","passthrough":true}\x0d\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x10\x00' \
  > "$corpus/worker_messages/track-consumed"
echo "==> cargo +nightly fuzz build"
cargo +nightly fuzz build -O 2>&1 | tail -n 2
for t in "${targets[@]}"; do
  echo "==> $t, ${seconds} s"
  cargo +nightly fuzz run -O "$t" "$corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | grep -E '^(stat::number_of_executed_units|Done|==[0-9]+==ERROR|SUMMARY)' || true
  if ls fuzz/artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t crashed; inputs in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: no crashes"
