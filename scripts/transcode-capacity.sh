#!/usr/bin/env bash
# Concurrent real-time 640x360 30 fps transcodes (H.264/AAC Matroska in, VP8/Vorbis out) on this machine:
# a bare gst-launch-1.0 of the very pipeline transcast runs (the line `transcast pipeline --input` prints, into
# `fakesink sync=true` instead of a file) against transcast itself (transcast-bench --mode transcode, one client
# per stream), for each count of streams given:
#   scripts/transcode-capacity.sh 8 16 20 24
# gst-launch keeps real time when every process's "Execution ended after" (PLAYING to EOS, so process start-up
# and plugin loading are left out) is within the clip's length + 1 s (the pipeline's 1 s queues); transcast when
# push→client latency settles under 1 s (p99 over each client's last quarter of the run, leaving out the
# start-up transient of N pipelines starting at once) with no read stalls. Bounded: clip of SECS
# (default 20) seconds, at most 64 streams.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_release_bench
[ "$#" -gt 0 ] || set -- 8 16 24
SECS=${SECS:-20}
dir=$(mktemp -d)
trap 'pkill -f "filesrc location=$dir/" 2>/dev/null || true; rm -rf "$dir"' EXIT

gst-launch-1.0 -q \
  videotestsrc num-buffers=$((SECS * 30)) pattern=ball background-color=0xff202020 \
  ! video/x-raw,width=640,height=360,framerate=30/1 ! timeoverlay font-desc="Sans 40" \
  ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 bitrate=1500 ! h264parse \
  ! matroskamux name=m ! filesink location="$dir/in.mkv" \
  audiotestsrc num-buffers=$((SECS * 44100 / 1024 + 1)) samplesperbuffer=1024 \
  ! audio/x-raw,rate=44100,channels=2 ! audioconvert ! avenc_aac ! aacparse ! m.
line=$(target/release/transcast pipeline --input "$dir/in.mkv" | sed 's/filesink location=out.webm/fakesink sync=true/')
echo "gst-launch line: $line"
echo
echo "| streams | gst-launch-1.0: slowest PLAYING→EOS (s) | kept real time | transcast: latency p99, last quarter (ms) | stalls | kept real time |"
echo "|---|---|---|---|---|---|"
for n in "$@"; do
  [ "$n" -ge 1 ] && [ "$n" -le 64 ] || { echo "stream counts are 1..64" >&2; exit 1; }
  rm -f "$dir"/wall.*
  pids=()
  for i in $(seq "$n"); do
    (
      out=$(eval "timeout $((SECS * 3)) $line" 2>&1 || true)
      # "Execution ended after 0:00:20.123456789" → seconds; a run that never ended counts as 999.
      t=$(sed -n 's/^Execution ended after \([0-9]*\):\([0-9]*\):\([0-9.]*\)$/\1 \2 \3/p' <<<"$out" | tail -1)
      if [ -n "$t" ]; then awk '{ print $1 * 3600 + $2 * 60 + $3 }' <<<"$t"; else echo 999; fi >"$dir/wall.$i"
    ) &
    pids+=("$!")
  done
  wait "${pids[@]}"
  slowest=$(sort -n "$dir"/wall.* | tail -1)
  gst_ok=$(awk -v m="$slowest" -v s="$SECS" 'BEGIN { print (m <= s + 1) ? "yes" : "no" }')
  json=$(target/release/transcast-bench --mode transcode --streams "$n" --clients "$n" --duration $((SECS - 5)) 2>/dev/null | tail -1)
  read -r p99 stalls ok < <(python3 -c '
import json, sys
j = json.loads(sys.argv[1])
p99 = j["latency_end_ms"]["p99"]
ok = j["http_200"] == j["clients"] and j["stalls"] == 0 and p99 is not None and p99 < 1000
print(p99, j["stalls"], "yes" if ok else "no")' "$json")
  printf '| %s | %.1f | %s | %s | %s | %s |\n' "$n" "$slowest" "$gst_ok" "$p99" "$stalls" "$ok"
done
