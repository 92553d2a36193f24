//! Streams outlive their sources: a viewer keeps one response (one header, timestamps that never go back)
//! while its source is killed and pushed again, a stream on its fallback shows the slate until `--linger`
//! runs out, and souphttpclientsink's series of `Content-Range` PUTs makes one continuous stream.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use transcast::config::Fallback;

/// Video frame times and decode errors of a capture, as ffprobe and ffmpeg see them.
struct Probed {
    video_pts: Vec<f64>,
    /// Whether each picture (in `video_pts` order) is a keyframe.
    video_key: Vec<bool>,
    audio_frames: usize,
    decode_errors: String,
}

fn probe(data: &[u8]) -> Probed {
    let file = tempdir().join(format!("capture-{:x}.webm", rand_u64()));
    std::fs::write(&file, data).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "frame=media_type,key_frame,pts_time",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut video_pts = Vec::new();
    let mut video_key = Vec::new();
    let mut audio_frames = 0;
    for line in text.lines() {
        let mut f = line.split(',');
        match (f.next(), f.next(), f.next()) {
            (Some("video"), Some(k), Some(t)) => {
                video_key.push(k == "1");
                video_pts.push(t.parse().unwrap());
            }
            (Some("audio"), _, _) => audio_frames += 1,
            _ => {}
        }
    }
    let dec = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let _ = std::fs::remove_file(&file);
    Probed {
        video_pts,
        video_key,
        audio_frames,
        decode_errors: String::from_utf8_lossy(&dec.stderr).into_owned(),
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Starts a push of the first `chunks` 16 KiB pieces of `data` over a bare socket (cut it by dropping it), a
/// viewer capturing the stream, and waits until the stream is live.
async fn cuttable_push(
    server: &Server,
    name: &str,
    data: &bytes::Bytes,
    chunks: usize,
) -> (
    tokio::net::TcpStream,
    tokio::task::JoinHandle<(Vec<u8>, bool)>,
) {
    let url = server.url(name);
    let mut sock = raw_push(server, name).await;
    let viewer =
        tokio::spawn(async move { capture(open_watch(&url).await, Duration::from_secs(60)).await });
    for c in chunk(data, 16 << 10).into_iter().take(chunks) {
        send_chunk(&mut sock, &c).await;
    }
    wait_state(server, name, "live", Duration::from_secs(10)).await;
    (sock, viewer)
}

fn ffmpeg_push(file: &std::path::Path, url: &str, seconds: Option<u32>) -> std::process::Child {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-re", "-i"]).arg(file);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    // ffmpeg's default for http:// is a chunked POST, what OBS's custom FFmpeg output sends.
    cmd.args(["-c", "copy", "-f", "mpegts", url])
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ffmpeg_source_falls_back_and_resumes_in_one_response() {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = Fallback::Slate;
        a.resume_grace = 1.0;
    })
    .await;
    let url = server.url("cam1");
    let clip = tempdir().join("failover-cam1.ts");
    std::fs::write(&clip, long_clip("ts")).unwrap();

    let mut first = ffmpeg_push(&clip, &url, None);
    let viewer = open_watch(&url).await;
    let watching = tokio::spawn(capture(viewer, Duration::from_secs(60)));
    wait_state(&server, "cam1", "live", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    first.kill().unwrap(); // SIGKILL: the uplink drops mid-body
    let _ = first.wait();

    // ffmpeg's socket is gone at once, so the loss is known at once: the switch follows within a second.
    let on_slate = wait_state(&server, "cam1", "fallback", Duration::from_secs(1)).await;
    assert_eq!(on_slate["failovers"], 1, "{on_slate}");
    assert!(on_slate["source"].is_null(), "{on_slate}");
    let page = get_text(&format!("http://{}/", server.addr)).await;
    assert!(
        page.contains("on its fallback, waiting for its source · failovers: 1"),
        "the status page shows the stream on its fallback"
    );
    // A viewer that joins during the fallback starts with a header and a keyframe, and plays the slate.
    let joiner = tokio::spawn(capture(open_watch(&url).await, Duration::from_millis(2500)));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let second = tokio::task::spawn_blocking({
        let clip = clip.clone();
        let url = url.clone();
        move || ffmpeg_push(&clip, &url, Some(3)).wait().unwrap()
    });
    let back = wait_state(&server, "cam1", "live", Duration::from_secs(5)).await;
    assert_eq!(back["resumes"], 1, "{back}");
    assert!(back["source"]["peer"].is_string(), "{back}");
    assert!(second.await.unwrap().success());

    let (body, clean) = watching.await.unwrap();
    assert!(clean, "the stream's end ends the viewer's response cleanly");
    assert_eq!(ebml_headers(&body), 1, "one response, one header");
    let p = probe(&body);
    assert!(p.decode_errors.trim().is_empty(), "{}", p.decode_errors);
    assert!(
        p.video_pts.windows(2).all(|w| w[1] > w[0]),
        "video timestamps strictly increase"
    );
    let span = p.video_pts.last().unwrap() - p.video_pts[0];
    // 5 s of source, 4 s of slate, 3 s of source again.
    assert!(span > 10.5, "pictures for the whole time: {span:.2} s");
    let fps = p.video_pts.len() as f64 / span;
    assert!((25.0..=31.0).contains(&fps), "{fps:.1} fps");
    let max_gap = p
        .video_pts
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    assert!(max_gap < 0.2, "largest gap between pictures {max_gap:.3} s");
    assert!(p.audio_frames > 0, "audio carried on");
    // The source is colour bars, the slate dark: each switch lands on a keyframe (a join point too).
    let luma = luma_by_time(&body);
    let switches: Vec<f64> = luma
        .windows(2)
        .filter(|w| (w[0].1 > 60.0) != (w[1].1 > 60.0))
        .map(|w| w[1].0)
        .collect();
    assert!(switches.len() >= 2, "source → slate → source: {switches:?}");
    for t in &switches {
        let i = p
            .video_pts
            .iter()
            .position(|p| (p - t).abs() < 1e-3)
            .unwrap();
        assert!(
            p.video_key[i],
            "the picture at the switch at {t:.3} s is a keyframe"
        );
    }

    let (joined, _) = joiner.await.unwrap();
    assert!(joined.starts_with(&EBML_MAGIC));
    let d = decode(&joined);
    assert!(d.video_frames >= 30, "the joiner saw the slate: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_ends_every_viewer_cleanly_when_linger_runs_out() {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = Fallback::Slate;
        a.linger = 1.5;
    })
    .await;
    let data = media(Media::MpegTs);
    // Two thirds of the clip, then the source vanishes without finishing its body.
    let (sock, viewer) =
        cuttable_push(&server, "gone", &data, data.len() * 2 / 3 / (16 << 10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sock);
    wait_state(&server, "gone", "fallback", Duration::from_secs(3)).await;
    let (body, clean) = viewer.await.unwrap();
    assert!(clean, "linger expiry ends the response cleanly");
    assert_eq!(ebml_headers(&body), 1);
    let d = decode(&body);
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic, "{d:?}");
    // At most two seconds of source went out, then 1.5 s of slate.
    assert!(d.video_frames >= 60, "{d:?}");
    server.wait_gone("gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_none_ends_the_stream_with_its_source() {
    let server = Server::start(|a| a.fallback = Fallback::None).await;
    let (sock, viewer) = cuttable_push(&server, "plain", &media(Media::MpegTs), 8).await;
    // "live" comes with the first buffer, which may be audio: on a loaded machine the first picture comes a moment
    // later.
    let stream = server.state.registry.get("plain").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stream.hub.has_join_point() {
        assert!(tokio::time::Instant::now() < deadline, "no media published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    drop(sock);
    let (body, clean) = viewer.await.unwrap();
    assert!(clean);
    assert!(decode(&body).video_frames > 0);
    server.wait_gone("plain").await;
}

/// souphttpclientsink sends a live stream as fixed-length PUTs, the later ones with `Content-Range`: they
/// make one continuous input, decoded whole: a transcoded stream (H.264 in Matroska) and a passthrough one
/// (VP8 in WebM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn souphttpclientsink_pieces_make_one_stream() {
    const PICTURES: u64 = 150;
    let server = Server::start(|a| a.resume_grace = 2.0).await;
    let mut pushes = Vec::new();
    for (name, encode) in [
        // (Not mpegtsmux: souphttpclientsink leaves out the buffers mpegtsmux flags as headers, so even a
        // plain HTTP server that concatenates the pieces gets H.264 without its parameter sets.)
        (
            "soup-mkv",
            "x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse \
             ! matroskamux streamable=true",
        ),
        (
            "soup-webm",
            "vp8enc deadline=1 keyframe-max-dist=30 ! webmmux streamable=true",
        ),
    ] {
        let url = server.url(name);
        let viewer = tokio::spawn({
            let url = url.clone();
            async move { capture(open_watch(&url).await, Duration::from_secs(60)).await }
        });
        let line = format!(
            "videotestsrc is-live=true num-buffers={PICTURES} pattern=ball \
             ! video/x-raw,width=320,height=240,framerate=30/1 ! {encode} \
             ! souphttpclientsink location={url}"
        );
        let gst = tokio::task::spawn_blocking(move || {
            Command::new("gst-launch-1.0")
                .args(["-q", "-e"])
                .args(line.split_whitespace())
                .stdin(Stdio::null())
                .status()
                .expect("gst-launch-1.0 runs")
        });
        pushes.push((name, viewer, gst));
    }
    for (name, viewer, gst) in pushes {
        assert!(gst.await.unwrap().success(), "{name}: gst-launch");
        let (body, clean) = viewer.await.unwrap();
        assert!(clean, "{name}");
        assert_eq!(ebml_headers(&body), 1, "{name}");
        let d = decode(&body);
        assert_eq!(
            d.video_frames, PICTURES,
            "{name}: every picture, none lost between pieces"
        );
        assert!(d.video_pts_monotonic, "{name}");
    }
    let metrics = client()
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let continuations: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("transcast_continuations_total "))
        .expect("continuations counted")
        .parse()
        .unwrap();
    assert!(
        continuations >= 10,
        "the pieces came as continuations: {continuations}"
    );
}

/// A first piece too short to typefind (two MPEG-TS packets, as mpegtsmux starts) waits for its
/// continuation; a piece at the wrong offset gets 416 naming the right one; the right one continues the
/// same input, and the viewer decodes the whole clip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_continue_one_input_and_wrong_offsets_get_416() {
    let server = Server::start(|a| a.resume_grace = 5.0).await;
    let url = server.url("pieces");
    let data = media(Media::MpegTs);
    let viewer = tokio::spawn({
        let url = url.clone();
        async move { capture(open_watch(&url).await, Duration::from_secs(30)).await }
    });
    let first = push(&url, data.slice(..376), false).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["bytes_in"], 376);
    let put = |range: String, body: bytes::Bytes| {
        client()
            .put(&url)
            .header("content-range", range)
            .body(body)
            .send()
    };
    let wrong = put(format!("bytes 100-{}/*", data.len() - 1), data.slice(100..))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 416);
    let v: serde_json::Value = serde_json::from_slice(&wrong.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "bad_offset");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("continues at byte 376"), "{msg}");
    let right = put(format!("bytes 376-{}/*", data.len() - 1), data.slice(376..))
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&right.bytes().await.unwrap()).unwrap();
    assert_eq!(v["bytes_in"], data.len(), "{v}");
    let (body, clean) = viewer.await.unwrap();
    assert!(clean);
    assert_eq!(
        decode(&body).video_frames,
        FRAMES,
        "the two pieces are one input"
    );
    // A continuation of a stream that does not exist says where to start.
    let none = client()
        .put(server.url("nothing"))
        .header("content-range", "bytes 10-20/*")
        .body(vec![0u8; 11])
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 416);
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A source that flaps, 20 losses and returns in a row, with viewers connected: none of them is
/// disconnected, each keeps one header and forward-going time, and the daemon's open files and memory come
/// back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_source_keeps_every_viewer_and_leaks_nothing() {
    const CYCLES: u64 = 20;
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = Fallback::Slate;
        a.linger = 60.0;
    })
    .await;
    let url = server.url("flap");
    let data = media(Media::MpegTs);
    let mut viewers = Vec::new();
    let mut baseline = None;
    for cycle in 1..=CYCLES {
        let mut sock = raw_push(&server, "flap").await;
        for c in chunk(&data, 16 << 10).into_iter().take(4) {
            send_chunk(&mut sock, &c).await;
        }
        let v = wait_state(&server, "flap", "live", Duration::from_secs(10)).await;
        assert_eq!(v["resumes"], cycle - 1, "{v}");
        if cycle == 1 {
            for _ in 0..3 {
                let resp = open_watch(&url).await;
                viewers.push(tokio::spawn(capture(resp, Duration::from_secs(120))));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(sock);
        let v = wait_state(&server, "flap", "fallback", Duration::from_secs(5)).await;
        assert_eq!(v["failovers"], cycle, "{v}");
        assert_eq!(v["clients"]["now"], 3, "no viewer was dropped: {v}");
        if cycle == 5 {
            // Warmed up: plugins loaded, per-thread arenas made.
            baseline = Some((open_files(), proc_status_kib("self", "VmRSS")));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (files0, rss0) = baseline.unwrap();
    let (files1, rss1) = (open_files(), proc_status_kib("self", "VmRSS"));
    assert!(
        files1 <= files0 + 4,
        "open files {files0} after 5 cycles, {files1} after {CYCLES}"
    );
    assert!(
        rss1 <= rss0 + 48 * 1024,
        "RSS {rss0} KiB after 5 cycles, {rss1} KiB after {CYCLES}"
    );
    eprintln!("flapping: open files {files0} -> {files1}, RSS {rss0} -> {rss1} KiB");
    let abort = client()
        .delete(format!("http://{}/api/v1/streams/flap", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(abort.status(), 204);
    for v in viewers {
        let (body, clean) = v.await.unwrap();
        assert!(clean, "the viewer stayed until the stream ended");
        assert_eq!(ebml_headers(&body), 1);
        let d = decode(&body);
        assert!(d.video_pts_monotonic && d.audio_pts_monotonic, "{d:?}");
        assert!(d.video_frames > 100, "{d:?}");
    }
    server.wait_gone("flap").await;
}

/// A passthrough stream (VP8 from WebM, written as it came) falls back to a slate encoded in VP8, takes the
/// same source back at its first keyframe with the input's own payloads, and then takes a source in another
/// format (H.264 in MPEG-TS), encoded into VP8 at the stream's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_stream_falls_back_and_takes_sources_back() {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = Fallback::Slate;
        a.resume_grace = 0.5;
    })
    .await;
    let url = server.url("pass");
    let (sock, viewer) = cuttable_push(&server, "pass", &long_clip("webm"), 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = stream_json(&server, "pass").await;
    assert_eq!(v["output"]["codecs"][0], "vp8", "{v}");
    drop(sock);
    wait_state(&server, "pass", "fallback", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The same kind of source again: spliced at its first keyframe, not re-encoded.
    let again = media(Media::WebmVp8Vorbis);
    let mut sock = raw_push(&server, "pass").await;
    for c in chunk(&again, 16 << 10) {
        send_chunk(&mut sock, &c).await;
    }
    let v = wait_state(&server, "pass", "live", Duration::from_secs(5)).await;
    assert_eq!(v["resumes"], 1, "{v}");
    // Cut before its end (no terminator), so the stream falls back again instead of ending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(sock);
    wait_state(&server, "pass", "fallback", Duration::from_secs(5)).await;

    // Another format: H.264 in MPEG-TS, encoded into the stream's VP8 at its size.
    let r = push(&url, media(Media::MpegTs), false).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let (body, clean) = viewer.await.unwrap();
    assert!(clean);
    assert_eq!(ebml_headers(&body), 1);
    let d = decode(&body);
    assert_eq!((d.width, d.height), (320, 240));
    assert!(d.video_pts_monotonic, "{d:?}");

    // The resumed WebM's pictures are the input's own, byte for byte, from its first keyframe on.
    let out = demux(&body, "matroskademux").video.unwrap();
    let inn = demux(&again, "matroskademux").video.unwrap();
    let payloads: Vec<&bytes::Bytes> = out.buffers.iter().map(|b| &b.2).collect();
    let start = payloads
        .iter()
        .position(|p| **p == inn.buffers[0].2)
        .expect("the resumed source's first keyframe is in the output as it came");
    let spliced = inn
        .buffers
        .iter()
        .zip(&payloads[start..])
        .take_while(|(i, o)| i.2 == ***o)
        .count();
    assert!(
        spliced >= 30,
        "{spliced} pictures passed through as they came"
    );
}

/// Average luma of each picture of a capture, by its time (ffmpeg's signalstats).
fn luma_by_time(data: &[u8]) -> Vec<(f64, f64)> {
    let file = tempdir().join(format!("luma-{:x}.webm", rand_u64()));
    std::fs::write(&file, data).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args([
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut t = None;
    let mut v = Vec::new();
    for line in text.lines() {
        if let Some(p) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pts_time:"))
        {
            t = p.parse().ok();
        } else if let (Some(y), Some(time)) = (line.strip_prefix("lavfi.signalstats.YAVG="), t) {
            v.push((time, y.parse().unwrap()));
        }
    }
    v
}

/// `--fallback FILE`: while the source is gone the stream plays that file, looped, converted to its caps; a
/// new push takes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_file_loops_until_the_source_returns() {
    init();
    // Two seconds of colour bars: bright, where the source (a ball on black) and the slate are dark.
    let file = tempdir().join("fallback-bars.webm");
    run_to_eos(&format!(
        "videotestsrc num-buffers=60 pattern=smpte ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! vp8enc deadline=1 ! webmmux name=m ! filesink location={} \
         audiotestsrc num-buffers=90 samplesperbuffer=1024 ! audioconvert ! vorbisenc ! m.",
        file.display()
    ));
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = Fallback::File(file.clone());
    })
    .await;
    let url = server.url("filler");
    let data = media(Media::MpegTs);
    let (sock, viewer) = cuttable_push(&server, "filler", &data, 4).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(sock);
    wait_state(&server, "filler", "fallback", Duration::from_secs(3)).await;
    // Longer than the file: it loops.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let r = push(&url, data.clone(), false).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let (body, clean) = viewer.await.unwrap();
    assert!(clean);
    assert_eq!(ebml_headers(&body), 1);
    let d = decode(&body);
    assert_eq!(
        (d.width, d.height),
        (320, 240),
        "the file is scaled to the stream"
    );
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic, "{d:?}");
    let luma = luma_by_time(&body);
    let bright = luma.iter().filter(|(_, y)| *y > 60.0).count();
    // About 4.5 s of bars at 30 fps, at least two loops of the 2 s file.
    assert!(bright >= 100, "{bright} bright pictures of {}", luma.len());
    let last_bright = luma.iter().rev().find(|(_, y)| *y > 60.0).unwrap().0;
    assert!(
        luma.iter().any(|(t, y)| *t > last_bright && *y < 40.0),
        "the returning source follows the file"
    );
}
