#!/usr/bin/env bash
# What a stream costs while it shows its slate, against the same stream transcoding a real-time 640x360 30 fps
# H.264/AAC source: transcast's CPU (user + system, from /proc) over SECS seconds of each, no viewers.
#   scripts/fallback-cost.sh            # SECS=20
# Loopback only, one daemon, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_release_bench
SECS=${SECS:-20}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

gst-launch-1.0 -q \
  videotestsrc num-buffers=$(((SECS + 5) * 30)) pattern=ball background-color=0xff202020 \
  ! video/x-raw,width=640,height=360,framerate=30/1 ! timeoverlay font-desc="Sans 40" \
  ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 bitrate=1500 ! h264parse \
  ! matroskamux name=m ! filesink location="$dir/in.mkv" \
  audiotestsrc num-buffers=$(((SECS + 5) * 44100 / 1024 + 1)) samplesperbuffer=1024 \
  ! audio/x-raw,rate=44100,channels=2 ! audioconvert ! avenc_aac ! aacparse ! m.

target/release/transcast serve --listen "127.0.0.1:$port" --state-dir "$dir/state" --linger 600 \
  >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/v1/streams" >/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
# CPU seconds per wall second over SECS, after a 2 s settling time.
measure() {
  sleep 2
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(ticks)
  sleep "$SECS"
  t1=$(date +%s.%N); c1=$(ticks)
  python3 -c "print(f'{($c1 - $c0) / $hz / ($t1 - $t0) * 100:.1f}')"
}

idle=$(measure)
curl -sf -X POST -H 'content-type: application/json' -d '{"name":"cost","width":640,"height":360}' "http://127.0.0.1:$port/api/v1/streams" >/dev/null
slate=$(measure)
curl -sf -T "$dir/in.mkv" "http://127.0.0.1:$port/live/cost" >/dev/null &
push=$!
live=$(measure)
state=$(curl -sf "http://127.0.0.1:$port/api/v1/streams/cost" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
kill "$push" 2>/dev/null || true
echo "transcast CPU, % of one core over ${SECS} s (640x360 30 fps, VP8+Vorbis out, no viewers):"
echo "  idle daemon:                      $idle"
echo "  stream on its slate:              $slate"
echo "  same stream transcoding a source: $live   (state while measured: $state)"
