//! Hostile and odd input, as broken encoders and attackers send it, pushed paced as users push: every push gets an
//! answer, whatever output it produced decodes with timestamps that never go back, and another stream's viewer
//! meanwhile gets its whole stream.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::*;

/// Runs ffmpeg quietly; panics unless it succeeds.
fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MPEG-TS clip twice in a row, its timestamps starting at `first` seconds and then at `second`: a jump
/// as an encoder restart (back to zero) or a skipped stretch (hours ahead) makes it.
fn ts_with_jump(name: &str, first: u32, second: u32) -> Bytes {
    let dir = tempdir();
    let clip = dir.join("hostile-clip.ts");
    std::fs::write(&clip, media(Media::MpegTs)).unwrap();
    let mut out = Vec::new();
    for (i, offset) in [first, second].into_iter().enumerate() {
        let part = dir.join(format!("{name}-{i}.ts"));
        let (clip, part) = (clip.display().to_string(), part.display().to_string());
        ffmpeg(&[
            "-i",
            &clip,
            "-c",
            "copy",
            "-output_ts_offset",
            &offset.to_string(),
            "-f",
            "mpegts",
            &part,
        ]);
        out.extend(std::fs::read(&part).unwrap());
    }
    Bytes::from(out)
}

/// H.264 with B-frames, as OBS's x264 sends it (with AAC, in FLV as over RTMP).
fn bframes_flv() -> Bytes {
    let out = tempdir().join("bframes.flv");
    run_to_eos(&format!(
        "videotestsrc num-buffers=90 pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=veryfast bframes=2 b-adapt=false key-int-max=60 ! h264parse ! flvmux name=m \
         ! filesink location={} audiotestsrc num-buffers=130 samplesperbuffer=1024 ! audioconvert ! avenc_aac \
         ! aacparse ! m.",
        out.display()
    ));
    Bytes::from(std::fs::read(&out).unwrap())
}

/// `data` with `len` bytes overwritten at `at` (a fraction of its length).
fn corrupt(data: &Bytes, at: f64, len: usize) -> Bytes {
    let mut v = data.to_vec();
    let start = (v.len() as f64 * at) as usize;
    for b in v.iter_mut().skip(start).take(len) {
        *b = !*b;
    }
    Bytes::from(v)
}

/// The WebM clip with its first SimpleBlock's size rewritten to 2 GiB (an 8-byte EBML size): a demuxer that
/// believed it would wait for, or allocate, 2 GiB.
fn webm_with_huge_element() -> Bytes {
    let mut v = media(Media::WebmVp8Vorbis).to_vec();
    let cluster = v
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .expect("a cluster");
    let block = cluster
        + v[cluster..]
            .iter()
            .position(|&b| b == 0xA3)
            .expect("a SimpleBlock");
    // The size that follows the ID: replaced by 0x01 00 00 00 80 00 00 00 (2^31), whatever its length was.
    let len = v[block + 1].leading_zeros() as usize + 1;
    v.splice(block + 1..block + 1 + len, [0x01, 0, 0, 0, 0x80, 0, 0, 0]);
    Bytes::from(v)
}

/// Pushes `data` (chunked) while a viewer watches the stream from its start, if it ever has one: the push's
/// answer, and the viewer's whole response.
async fn push_and_maybe_watch(url: &str, data: Bytes) -> (PushResult, Option<Bytes>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = Arc::new(AtomicBool::new(false));
    let (tx, push) = push_stream(url, None);
    let watcher = {
        let (url, done) = (url.to_string(), done.clone());
        tokio::spawn(async move {
            loop {
                let r = client().get(&url).send().await.unwrap();
                if r.status() == 200 {
                    let body = tokio::time::timeout(std::time::Duration::from_secs(60), r.bytes());
                    return body.await.ok().and_then(Result::ok);
                }
                if done.load(Ordering::Acquire) {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    // The first bytes, then a moment for the viewer to be there from the start.
    let mut pieces = chunk(&data, 16 << 10).into_iter();
    if let Some(first) = pieces.next() {
        let _ = tx.send(first).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for c in pieces {
        if tx.send(c).await.is_err() {
            break;
        }
    }
    drop(tx);
    let pushed = push.await.unwrap();
    done.store(true, Ordering::Release);
    (pushed, watcher.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_odd_input_gets_an_answer_and_monotonic_output() {
    let server = Server::start(|a| a.pace = true).await;
    // A bystander: a stream watched from start to end while the rest goes on.
    let by_url = server.url("bystander");
    let bystander =
        tokio::spawn(async move { push_and_watch(&by_url, long_clip("webm"), true).await });

    let cases: Vec<(&str, Bytes)> = vec![
        ("back-to-zero", ts_with_jump("back", 3600, 0)),
        ("hours-ahead", ts_with_jump("ahead", 0, 36_000)),
        ("obs-bframes", bframes_flv()),
        ("corrupt-ogg", corrupt(&media(Media::OggOpus), 0.4, 300)),
        ("corrupt-ts", corrupt(&media(Media::MpegTs), 0.5, 4000)),
        ("huge-element", webm_with_huge_element()),
        (
            "truncated-mp4",
            media(Media::Mp4Faststart).slice(..media(Media::Mp4Faststart).len() / 2),
        ),
    ];
    for (name, data) in cases {
        let t = tokio::time::Instant::now();
        let (pushed, watched) = push_and_maybe_watch(&server.url(name), data).await;
        assert!(
            pushed.status == 200 || pushed.status == 415,
            "{name}: {} {}",
            pushed.status,
            pushed.json
        );
        assert!(pushed.json.is_object(), "{name}: a JSON answer");
        // Paced: about the clip's length (two for the jumps), not the length of a jump.
        assert!(t.elapsed().as_secs() < 20, "{name}: took {:?}", t.elapsed());
        if let Some(body) = watched.filter(|b| !b.is_empty()) {
            let d = decode(&body);
            assert!(
                d.video_pts_monotonic && d.audio_pts_monotonic,
                "{name}: output timestamps go back"
            );
            if name != "corrupt-ogg" && name != "truncated-mp4" {
                assert!(d.video_frames > 0, "{name}: no picture came out");
            }
        }
        server.wait_gone(name).await;
    }
    let (pushed, watched) = bystander.await.unwrap();
    assert_eq!(pushed.status, 200);
    let d = decode(&watched.body);
    assert!(
        d.video_frames >= 330,
        "the bystander got {} pictures",
        d.video_frames
    );
}

/// `data` with about one byte in `per` flipped, at positions from a seeded xorshift (the same every run).
fn mutate(data: &Bytes, seed: u32, per: usize) -> Bytes {
    let mut x = seed | 1;
    let mut v = data.to_vec();
    let n = (v.len() / per).max(1);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let i = x as usize % v.len();
        v[i] ^= (x >> 24) as u8 | 1;
    }
    Bytes::from(v)
}

/// Mutated copies of every test medium (bytes flipped here and there, or cut short) pushed through the real
/// daemon, unpaced: each gets a JSON answer, and a stream watched meanwhile plays to its end undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_media_never_disturbs_another_stream() {
    mutated_media(false).await;
}

/// The same with each source in a worker process (`--source-isolation on`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_media_in_workers_never_disturbs_another_stream() {
    mutated_media(true).await;
}

async fn mutated_media(isolated: bool) {
    let server = Server::start(|a| {
        if isolated {
            a.source_isolation = transcast::config::Isolation::On;
            a.worker_exe = Some(env!("CARGO_BIN_EXE_transcast").into());
        }
    })
    .await;
    // A bystander whose upload trickles along with the mutations, so it is live through all of them.
    let clip = long_clip("webm");
    let (by_tx, by_push) = push_stream(&server.url("bystander"), None);
    // Trickled until its viewer is subscribed, so the viewer is there before the first picture and gets them all.
    let mut by_pieces = chunk(&clip, 1 << 10).into_iter();
    let by_url = server.url("bystander");
    let subscribing = tokio::spawn(async move { open_watch(&by_url).await });
    while !subscribing.is_finished() {
        by_tx.send(by_pieces.next().unwrap()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let by_watch = tokio::spawn(read_all(subscribing.await.unwrap()));
    let mut answered = 0;
    for (i, kind) in Media::PLAYABLE.into_iter().enumerate() {
        let clean = media(kind);
        for (j, data) in [
            mutate(&clean, 0x9e37_79b9 ^ i as u32, 200),
            mutate(&clean, 0x85eb_ca6b ^ i as u32, 2000),
            clean.slice(..clean.len() / 3),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("m{i}x{j}");
            let r = push(&server.url(&name), data, j % 2 == 0).await;
            assert!(
                [200, 415].contains(&r.status) && r.json.is_object(),
                "{kind:?} mutation {j}: {} {}",
                r.status,
                r.json
            );
            answered += 1;
            server.wait_gone(&name).await;
            for piece in by_pieces.by_ref().take(16) {
                by_tx.send(piece).await.unwrap();
            }
        }
    }
    assert_eq!(answered, 27);
    for piece in by_pieces {
        by_tx.send(piece).await.unwrap();
    }
    drop(by_tx);
    assert_eq!(by_push.await.unwrap().status, 200);
    let d = decode(&by_watch.await.unwrap().body);
    assert_eq!(d.video_frames, 360, "the bystander saw every picture");
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic);
}

/// Clips of the MPEG-TS kind at the given sizes, one after the other in one upload (an encoder whose output
/// size changes mid-stream). `tracks`: `av`, or `a` for audio only.
fn ts_sequence(name: &str, parts: &[(u32, u32, &str)]) -> Bytes {
    let mut out = Vec::new();
    for (i, (w, h, tracks)) in parts.iter().enumerate() {
        let path = tempdir().join(format!("{name}-{i}.ts"));
        let a = "audiotestsrc num-buffers=90 samplesperbuffer=1024 ! audio/x-raw,rate=44100 ! audioconvert ! avenc_aac ! aacparse ! m.";
        let v = format!(
            "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,width={w},height={h},framerate=30/1 \
             ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse ! m. "
        );
        run_to_eos(&format!(
            "mpegtsmux name=m ! filesink location={} {}{a}",
            path.display(),
            if *tracks == "av" { v.as_str() } else { "" }
        ));
        out.extend(std::fs::read(&path).unwrap());
    }
    Bytes::from(out)
}

/// What users' encoders do mid-stream: change the picture size. The stream keeps its size (every picture scaled
/// to it); its output decodes, time never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_changes_mid_stream_keep_the_stream_playing() {
    let server = Server::start(|a| a.pace = true).await;
    let resized = ts_sequence(
        "resized",
        &[(320, 240, "av"), (640, 360, "av"), (176, 144, "av")],
    );
    let (pushed, watched) = push_and_watch(&server.url("resized"), resized, true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    let d = decode(&watched.body);
    assert_eq!(
        (d.width, d.height),
        (320, 240),
        "the stream keeps its first size"
    );
    assert!(d.video_frames >= 150, "{} pictures of 180", d.video_frames);
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic);
}

/// An encoder that starts with audio only and then adds its camera: a new MPEG-TS program with audio and video.
/// The stream was announced audio-only, so it stays so; its audio goes on across the change (the new program's
/// audio takes the old one's place) and the push ends with its input, not at a play-out bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_input_that_gains_video_keeps_its_audio_going() {
    let server = Server::start(|a| a.pace = true).await;
    let data = ts_sequence("gains-video", &[(0, 0, "a"), (320, 240, "av")]);
    let started = std::time::Instant::now();
    let (pushed, watched) = push_and_watch(&server.url("gains"), data, true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    let d = decode(&watched.body);
    assert_eq!(d.video_frames, 0, "an audio-only stream stays audio-only");
    // Two parts of 90 buffers of 1024 samples at 44.1 kHz: about 4.2 s of audio.
    assert!(
        d.audio_ns > 3_800_000_000,
        "{} ms of audio: the second part's audio was lost",
        d.audio_ns / 1_000_000
    );
    assert!(d.audio_pts_monotonic);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(12),
        "the stream ended {:?} after its start: it waited for a play-out bound",
        started.elapsed()
    );
}

/// A push to a name whose previous push has just been answered (an encoder restarted at once): the new one is
/// taken at once, and a viewer keeps one response with both in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_the_same_name_again_at_once_continues_the_stream() {
    let server = Server::start(|a| a.resume_grace = 2.0).await;
    let url = server.url("again");
    let (first, watched) = {
        let watcher_url = url.clone();
        let (tx, push) = push_stream(&url, None);
        let clip = media(Media::WebmVp8Vorbis);
        let mut pieces = chunk(&clip, 1 << 10).into_iter();
        let subscribing = tokio::spawn(async move { open_watch(&watcher_url).await });
        while !subscribing.is_finished() {
            tx.send(pieces.next().unwrap()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let watching = tokio::spawn(read_all(subscribing.await.unwrap()));
        for p in pieces {
            tx.send(p).await.unwrap();
        }
        drop(tx);
        (push.await.unwrap(), watching)
    };
    assert_eq!(first.status, 200, "{}", first.json);
    let second = push(&url, media(Media::WebmVp8Vorbis), false).await;
    assert_eq!(second.status, 200, "{}", second.json);
    let body = watched.await.unwrap().body;
    assert_eq!(ebml_headers(&body), 1, "one response, one header");
    let d = decode(&body);
    // The second clip whole, and the first up to where the second replaced it (a source still playing out is
    // replaced at once: an encoder that restarted has its newest picture on air). How much of the first made it
    // before the second took over depends on the machine's load (94 pictures once in a CI rehearsal, beside the
    // workers' mutated-media run): what must hold is pictures of both in the one response.
    assert!(
        d.video_frames > FRAMES,
        "{} pictures of two clips",
        d.video_frames
    );
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic);
}
