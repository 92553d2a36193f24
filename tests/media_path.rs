//! The core data path end to end: every input container in, live WebM out, checked by real decoders.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Checks a watched stream that joined at the start of a `kind` push.
fn check_output(kind: Media, watched: &Watched, how: &str) {
    let ctx = format!("{kind:?} pushed {how}");
    assert!(
        watched.body.starts_with(&EBML_MAGIC),
        "{ctx}: output starts with the EBML header"
    );
    let expected_type = if kind.has_video() {
        "video/webm"
    } else {
        "audio/webm"
    };
    assert_eq!(watched.content_type, expected_type, "{ctx}");

    let tracks = demux(&watched.body, "matroskademux");
    let d = decode(&watched.body);
    if kind.has_video() {
        let v = tracks
            .video
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: no video track"));
        assert!(v.caps.starts_with("video/x-vp8"), "{ctx}: {}", v.caps);
        assert!(v.buffers[0].1, "{ctx}: first video frame is a keyframe");
        assert!(
            (FRAMES * 85 / 100..=FRAMES + 2).contains(&d.video_frames),
            "{ctx}: {} frames decoded, expected about {FRAMES}",
            d.video_frames
        );
        assert_eq!((d.width, d.height), (320, 240), "{ctx}");
        assert!(d.video_pts_monotonic, "{ctx}: video timestamps go forward");
    } else {
        assert!(tracks.video.is_none(), "{ctx}: audio-only stays audio-only");
    }
    let a = tracks
        .audio
        .as_ref()
        .unwrap_or_else(|| panic!("{ctx}: no audio track"));
    assert!(a.caps.starts_with("audio/x-vorbis"), "{ctx}: {}", a.caps);
    let secs = d.audio_ns as f64 / 1e9;
    assert!(
        (2.5..=3.3).contains(&secs),
        "{ctx}: {secs:.2} s of audio decoded, expected about 3"
    );
    assert!(d.audio_pts_monotonic, "{ctx}: audio timestamps go forward");

    if let Some(streams) = ffprobe(&watched.body) {
        let codecs: Vec<&str> = streams.iter().map(|(c, _)| c.as_str()).collect();
        let expected: &[&str] = if kind.has_video() {
            &["vp8", "vorbis"]
        } else {
            &["vorbis"]
        };
        assert_eq!(codecs, expected, "{ctx}: ffprobe codecs");
        if kind.has_video() {
            assert!(
                streams[0].1 >= FRAMES * 85 / 100,
                "{ctx}: ffprobe counted {} frames",
                streams[0].1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_container_plays_as_webm_pushed_with_content_length_and_chunked() {
    // The one unpaced batch: 18 pushes as fast as they decode. The other media tests run paced, as users run.
    let server = Server::start(|a| a.pace = false).await;
    let jobs: Vec<(Media, bool)> = Media::PLAYABLE
        .iter()
        .flat_map(|&m| [(m, false), (m, true)])
        .collect();
    // Generate the clips first (in parallel threads), then push a few streams at a time.
    std::thread::scope(|s| {
        for m in Media::PLAYABLE {
            s.spawn(move || media(m));
        }
    });
    let results = futures_util::stream::iter(jobs.into_iter().enumerate())
        .map(|(i, (kind, chunked))| {
            let url = server.url(&format!("s{i}"));
            async move {
                let (pushed, watched) = push_and_watch(&url, media(kind), chunked).await;
                (kind, chunked, pushed, watched)
            }
        })
        .buffer_unordered(3)
        .collect::<Vec<_>>()
        .await;
    for (kind, chunked, pushed, watched) in results {
        let how = if chunked {
            "chunked"
        } else {
            "with Content-Length"
        };
        assert_eq!(pushed.status, 200, "{kind:?} {how}: {}", pushed.json);
        assert_eq!(pushed.json["end"], "eos", "{kind:?} {how}: {}", pushed.json);
        let mode = if kind == Media::WebmVp8Vorbis {
            "passthrough"
        } else {
            "transcode"
        };
        assert_eq!(pushed.json["mode"], mode, "{kind:?} {how}");
        assert_eq!(pushed.json["bytes_in"], media(kind).len(), "{kind:?} {how}");
        // One copy of the output, by the time of the answer (which can come before the writer's first bytes):
        // at most what the viewer from the start got.
        let published = pushed.json["bytes_published"].as_u64().unwrap();
        assert!(
            published <= watched.body.len() as u64,
            "{kind:?} {how}: {published} of {}",
            watched.body.len()
        );
        check_output(kind, &watched, how);
    }
    assert!(
        server.state.registry.is_empty(),
        "every stream freed its name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_keeps_vp8_payloads_byte_for_byte() {
    let server = Server::start(|a| a.pace = true).await;
    let input = media(Media::WebmVp8Vorbis);
    let (pushed, watched) = push_and_watch(&server.url("pass"), input.clone(), true).await;
    assert_eq!(pushed.json["mode"], "passthrough");
    let inn = demux(&input, "matroskademux").video.unwrap();
    let out = demux(&watched.body, "matroskademux").video.unwrap();
    assert_eq!(out.buffers.len(), inn.buffers.len());
    for (i, (a, b)) in inn.buffers.iter().zip(&out.buffers).enumerate() {
        assert_eq!(a.2, b.2, "VP8 frame {i} re-encoded");
        assert_eq!(a.1, b.1, "keyframe flag of frame {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_starts_with_header_and_keyframe_and_decodes() {
    // Pacing on: the push lasts about as long as the clip, so a joiner can arrive mid-stream.
    let server = Server::start(|a| a.pace = true).await;
    for (i, kind) in [Media::WebmVp8Vorbis, Media::MpegTs]
        .into_iter()
        .enumerate()
    {
        let url = server.url(&format!("late{i}"));
        let (tx, push) = push_stream(&url, None);
        let data = media(kind);
        let feeder = tokio::spawn(async move {
            for c in chunk(&data, 16 << 10) {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
        });
        let _first = open_watch(&url).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let watched = read_all(open_watch(&url).await).await;
        feeder.await.unwrap();
        assert_eq!(push.await.unwrap().status, 200);
        assert!(
            watched.body.starts_with(&EBML_MAGIC),
            "{kind:?}: EBML header first"
        );
        let v = demux(&watched.body, "matroskademux").video.unwrap();
        assert!(
            v.buffers[0].1,
            "{kind:?}: a joiner's first video frame is a keyframe"
        );
        let first_pts = v.buffers[0].0.unwrap();
        assert!(
            first_pts >= 900_000_000,
            "{kind:?}: joined mid-stream (first frame at {first_pts} ns)"
        );
        let d = decode(&watched.body);
        assert!(
            d.video_frames >= 15 && d.video_frames < FRAMES,
            "{kind:?}: {} frames",
            d.video_frames
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_faster_than_real_time_is_paced() {
    let server = Server::start(|a| a.pace = true).await;
    let data = media(Media::WebmVp8Vorbis);
    let t0 = Instant::now();
    // The push is answered once its body is taken; the stream plays it out in real time, and its viewers'
    // responses end with it.
    let (pushed, _) = push_and_watch(&server.url("paced"), data, false).await;
    let took = t0.elapsed();
    assert_eq!(pushed.status, 200);
    // Up to a second of lead is allowed; the rest plays out in real time. A lower bound only: slowness
    // of this machine cannot make it fail.
    assert!(
        took >= Duration::from_millis(1700),
        "a {SECONDS} s clip went through in {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_at_once_play_independently() {
    let server = Server::start(|a| a.pace = true).await;
    let (one, two) = (server.url("one"), server.url("two"));
    let (a, b) = tokio::join!(
        push_and_watch(&one, media(Media::WebmVp8Vorbis), true),
        push_and_watch(&two, media(Media::Mp4Faststart), false),
    );
    assert_eq!((a.0.status, b.0.status), (200, 200));
    check_output(Media::WebmVp8Vorbis, &a.1, "alongside another stream");
    check_output(Media::Mp4Faststart, &b.1, "alongside another stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_dropped_and_does_not_slow_others() {
    let server = Server::start(|a| {
        a.pace = true;
        a.max_lag = 1.0;
        a.send_buffer = 8 << 10;
    })
    .await;
    let url = server.url("stall");
    let (tx, push) = push_stream(&url, None);
    let data = media(Media::WebmVp8Vorbis);
    let feeder = tokio::spawn(async move {
        for c in chunk(&data, 16 << 10) {
            let _ = tx.send(c).await;
        }
    });
    let normal = open_watch(&url).await;
    // A raw client with a tiny receive buffer that sends its request and never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(server.addr).await.unwrap();
    stalled
        .write_all(format!("GET /live/stall HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .await
        .unwrap();
    let normal = read_all(normal).await;
    feeder.await.unwrap();
    assert_eq!(push.await.unwrap().status, 200);
    // The reader that keeps up got the whole stream from its join point and it decodes.
    let d = decode(&normal.body);
    assert!(
        d.video_frames >= FRAMES * 2 / 3,
        "normal client decoded {} frames",
        d.video_frames
    );
    // The stalled one was cut off: reading now finds what the socket buffers held, then the end.
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "the server closed the stalled connection");
    assert!(
        got.len() < normal.body.len(),
        "stalled client got {} of {} bytes",
        got.len(),
        normal.body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_that_disconnects_mid_stream_ends_clients_cleanly() {
    let server = Server::start(|a| a.pace = true).await;
    let data = media(Media::Mp4Fragmented);
    let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(b"PUT /live/cut HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let watcher = tokio::spawn({
        let url = server.url("cut");
        async move { read_all(open_watch(&url).await).await }
    });
    for c in chunk(&data.slice(..data.len() / 2), 4096) {
        sock.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .await
            .unwrap();
        sock.write_all(&c).await.unwrap();
        sock.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The viewer is subscribed before the cut (under load its first GET can come after half the clip is up).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream_json(&server, "cut").await["clients"]["now"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the viewer never joined"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sock); // no terminating chunk: the source vanished
    let watched = watcher.await.unwrap();
    assert!(watched.body.starts_with(&EBML_MAGIC));
    let d = decode(&watched.body);
    assert!(d.video_frames > 0, "what arrived before the cut plays");
    assert!(server.state.registry.is_empty(), "the name is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_reports_the_content_type() {
    let server = Server::start(|a| a.pace = true).await;
    let url = server.url("radio");
    let (tx, push) = push_stream(&url, None);
    let data = media(Media::OggOpus);
    let feeder = tokio::spawn(async move {
        for c in chunk(&data, 8 << 10) {
            let _ = tx.send(c).await;
        }
    });
    let _watch = open_watch(&url).await;
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "audio/webm");
    feeder.await.unwrap();
    push.await.unwrap();
}

/// HEAD is cheap: it takes no client slot, is not counted as a viewer, and does not wait for media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_not_a_viewer() {
    let server = Server::start(|a| {
        a.pace = true;
        a.max_clients = 1;
    })
    .await;
    let url = server.url("peek");
    let (tx, push) = push_stream(&url, None);
    let data = media(Media::MpegTs);
    // Two TS packets: the stream exists, no media yet.
    tx.send(data.slice(..376)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.state.registry.get("peek").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the push opened its stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = std::time::Instant::now();
    let early = client().head(&url).send().await.unwrap();
    assert_eq!(early.status(), 503, "no media yet");
    assert!(t0.elapsed() < Duration::from_secs(2), "answered at once");
    let rest = data.slice(376..);
    let feeder = tokio::spawn(async move {
        for c in chunk(&rest, 8 << 10) {
            let _ = tx.send(c).await;
        }
    });
    let _watch = open_watch(&url).await; // the only client slot
    for _ in 0..3 {
        let head = client().head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD needs no client slot");
        assert_eq!(head.headers()["content-type"], "video/webm");
    }
    let s = server.state.registry.get("peek").unwrap();
    assert_eq!(
        s.hub
            .stats
            .clients_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "HEADs are not viewers"
    );
    feeder.await.unwrap();
    push.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_input_ends_the_stream_cleanly() {
    let server = Server::start(|a| a.pace = true).await;
    let data = media(Media::MpegTs);
    let half = data.slice(..data.len() / 2);
    let (pushed, watched) = push_and_watch(&server.url("trunc"), half, false).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert_eq!(
        pushed.json["end"], "eos",
        "the whole (short) body was taken"
    );
    assert_eq!(pushed.json["bytes_in"], data.len() / 2);
    let d = decode(&watched.body);
    assert!(
        d.video_frames > 10 && d.video_frames < FRAMES,
        "{} frames",
        d.video_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_chunked_matroska_put_plays() {
    if std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("ffmpeg not installed: skipped");
        return;
    }
    let server = Server::start(|a| a.pace = true).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    std::fs::write(&input, media(Media::Mp4Faststart)).unwrap();
    let url = server.url("ffmpeg");
    let pusher = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            std::process::Command::new("ffmpeg")
                .args([
                    "-hide_banner",
                    "-nostdin",
                    "-loglevel",
                    "error",
                    "-re",
                    "-i",
                ])
                .arg(&input)
                .args(["-c", "copy", "-f", "matroska", "-method", "PUT", &url])
                .output()
                .unwrap()
        }
    });
    let watched = read_all(open_watch(&url).await).await;
    let out = pusher.await.unwrap();
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(watched.content_type, "video/webm");
    let d = decode(&watched.body);
    assert!(d.video_frames >= FPS, "{} frames", d.video_frames);
    assert!(d.audio_ns > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_output_is_capped_in_size_and_rate() {
    let server = Server::start(|a| {
        a.encode.max_width = 160;
        a.encode.max_height = 100;
        a.encode.max_fps = 15;
    })
    .await;
    let (pushed, watched) =
        push_and_watch(&server.url("small"), media(Media::Mp4Faststart), true).await;
    assert_eq!(pushed.status, 200);
    let d = decode(&watched.body);
    // 320x240 scaled into 160x100 keeping the 4:3 picture.
    assert!(
        d.width <= 160 && d.height <= 100,
        "{}x{}",
        d.width,
        d.height
    );
    assert!(d.width >= 120 && d.height >= 90, "{}x{}", d.width, d.height);
    let expected = SECONDS * 15;
    assert!(
        d.video_frames.abs_diff(expected) <= 3,
        "{} frames at 15 fps",
        d.video_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_to_vp9_and_opus_plays() {
    let server = Server::start(|a| {
        a.encode.video_codec = transcast::config::VideoCodec::Vp9;
        a.encode.audio_codec = transcast::config::AudioCodec::Opus;
        a.encode.audio_kbps = 48;
    })
    .await;
    let (pushed, watched) =
        push_and_watch(&server.url("nine"), media(Media::Mp4Faststart), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    let streams = ffprobe(&watched.body).expect("ffprobe reads it");
    let codecs: Vec<&str> = streams.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codecs, ["vp9", "opus"], "{streams:?}");
    let d = decode(&watched.body);
    assert!(
        d.video_frames.abs_diff(FRAMES) <= 3,
        "{} frames",
        d.video_frames
    );
    assert!(
        d.audio_ns > (SECONDS - 1) * 1_000_000_000,
        "{} ns of audio",
        d.audio_ns
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_that_cannot_keep_real_time_drops_frames_and_says_so() {
    // A video-encode template whose encoder takes 70 ms a frame: at 30 fps it falls behind real time.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("video-encode.pipeline"),
        "queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000 ! videoconvert \
         ! vp8enc deadline=1 keyframe-max-dist=30 ! identity sleep-time=70000",
    )
    .unwrap();
    let server = Server::start(|a| {
        a.pace = true;
        a.pipelines = Some(dir.path().to_path_buf());
    })
    .await;
    let (pushed, watched) =
        push_and_watch(&server.url("slow"), media(Media::Mp4Faststart), false).await;
    assert_eq!(pushed.status, 200);
    // The push is answered when its body is taken; the drops are counted as the stream plays it out.
    server.wait_gone("slow").await;
    let dropped = server
        .state
        .registry
        .totals
        .frames_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "{}", pushed.json);
    let d = decode(&watched.body);
    assert!(
        d.video_frames > 0 && d.video_frames + dropped >= FRAMES - 2,
        "{} decoded, {dropped} dropped",
        d.video_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_answers_503() {
    let server = Server::start(|a| {
        a.max_clients = 1;
        a.pace = true;
    })
    .await;
    let url = server.url("full");
    let (tx, push) = push_stream(&url, None);
    tx.send(media(Media::WebmVp8Vorbis).slice(..30_000))
        .await
        .unwrap();
    let first = open_watch(&url).await;
    let second = client().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    let e: serde_json::Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "limit_reached", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-clients 1"),
        "{e}"
    );
    // The slot frees when the first client leaves.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = client().get(&url).send().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 503);
        assert!(std::time::Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tx);
    push.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_output_timestamps_follow_the_input() {
    let server = Server::start(|a| a.pace = true).await;
    let input = media(Media::WebmVp8Vorbis);
    let (_, watched) = push_and_watch(&server.url("ts"), input.clone(), false).await;
    let inn = demux(&input, "matroskademux");
    let out = demux(&watched.body, "matroskademux");
    for (i, o) in [
        (inn.video.unwrap(), out.video.unwrap()),
        (inn.audio.unwrap(), out.audio.unwrap()),
    ] {
        let a: Vec<_> = i.buffers.iter().map(|b| b.0).collect();
        let b: Vec<_> = o.buffers.iter().map(|b| b.0).collect();
        assert_eq!(a, b, "{} timestamps", i.caps);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_rate_reader_is_moved_to_keyframes_then_dropped_while_others_play() {
    let server = Server::start(|a| {
        a.pace = true;
        a.max_lag = 2.0;
        a.send_buffer = 8 << 10;
    })
    .await;
    let data = long_clip("webm");
    let rate = data.len() as f64 / 12.0; // bytes per second of the stream
    let url = server.url("slowpoke");
    let normal = tokio::spawn({
        let (url, data) = (url.clone(), data.clone());
        async move { push_and_watch(&url, data, false).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A reader with a small window that takes half the stream's rate.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(server.addr).await.unwrap();
    slow.write_all(b"GET /live/slowpoke HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let per_tick = (rate / 2.0 / 10.0) as usize; // every 100 ms
    let mut buf = vec![0u8; per_tick.max(1)];
    let (mut got, started) = (0usize, Instant::now());
    let mut skipped_seen = false;
    let closed = loop {
        assert!(started.elapsed() < Duration::from_secs(30), "bounded");
        if let Some(e) = server.state.registry.get("slowpoke") {
            skipped_seen |= e.hub.stats.skips.load(std::sync::atomic::Ordering::Relaxed) > 0;
        }
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.state.registry.get("slowpoke").is_none() && got > 0 {
            // The stream is over; whatever is left is an orderly end, not a drop.
            break false;
        }
    };
    let (pushed, watched) = normal.await.unwrap();
    assert!(
        skipped_seen,
        "the half-rate reader was moved forward to a newer keyframe"
    );
    assert!(
        closed,
        "the half-rate reader was disconnected after --max-lag (read {got} bytes)"
    );
    assert!(got < data.len(), "it never got the whole stream");
    assert_eq!(pushed.json["end"], "eos");
    let dropped = server
        .state
        .registry
        .totals
        .clients_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1, "counted as dropped");
    let d = decode(&watched.body);
    assert!(
        d.video_frames >= 350,
        "the reader that keeps up got everything: {} frames",
        d.video_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_window_still_delivers_every_frame() {
    let server = Server::start(|a| {
        a.coalesce_ms = 40;
        a.pace = true;
    })
    .await;
    let input = media(Media::WebmVp8Vorbis);
    let (pushed, watched) = push_and_watch(&server.url("batched"), input.clone(), false).await;
    assert_eq!(pushed.status, 200);
    let inn = demux(&input, "matroskademux").video.unwrap();
    let out = demux(&watched.body, "matroskademux").video.unwrap();
    assert_eq!(out.buffers.len(), inn.buffers.len());
    assert_eq!(decode(&watched.body).video_frames, FRAMES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webmmux_writer_still_plays() {
    let server = Server::start(|a| a.muxer = transcast::config::Muxer::Webmmux).await;
    for (i, kind) in [Media::WebmVp8Vorbis, Media::Mp4Faststart]
        .into_iter()
        .enumerate()
    {
        let (pushed, watched) =
            push_and_watch(&server.url(&format!("mux{i}")), media(kind), true).await;
        assert_eq!(pushed.status, 200);
        check_output(kind, &watched, "through webmmux");
    }
}
