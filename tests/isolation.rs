//! `--source-isolation on`: each source is demuxed and decoded in a `transcast worker` process of its own. The
//! media is the same as in process; a worker that crashes or runs out of its memory ends its source only; a worker
//! is locked down.

mod common;

use std::time::Duration;

use common::*;
use transcast::config::{Fallback, Isolation, ServeArgs};

fn isolated(a: &mut ServeArgs) {
    a.source_isolation = Isolation::On;
    a.worker_exe = Some(env!("CARGO_BIN_EXE_transcast").into());
}

/// The workers feeding `name` now: their pids, found by their command line (`transcast worker --stream NAME`).
fn workers_of(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(3)
            .any(|w| w == [&b"worker"[..], b"--stream", name.as_bytes()])
        {
            pids.push(pid);
        }
    }
    pids
}

/// `kill -SIG PID`.
fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_plays_through_a_worker() {
    let server = Server::start(isolated).await;
    for (i, kind) in [
        Media::Mp4Faststart,
        Media::WebmVp8Vorbis,
        Media::MpegTs,
        Media::OggOpus,
    ]
    .into_iter()
    .enumerate()
    {
        let url = server.url(&format!("iso{i}"));
        let (pushed, watched) = push_and_watch(&url, media(kind), i % 2 == 0).await;
        assert_eq!(pushed.status, 200, "{kind:?}: {}", pushed.json);
        let d = decode(&watched.body);
        if kind.has_video() {
            assert!(
                d.video_frames.abs_diff(FRAMES) <= 3,
                "{kind:?}: {} pictures",
                d.video_frames
            );
            assert!(d.video_pts_monotonic, "{kind:?}");
        }
        if kind != Media::Mp4Faststart {
            assert!(
                d.audio_ns > (SECONDS - 1) * 1_000_000_000,
                "{kind:?}: {} ns",
                d.audio_ns
            );
        }
        let expected = if kind == Media::WebmVp8Vorbis {
            "passthrough"
        } else {
            "transcode"
        };
        assert_eq!(pushed.json["mode"], expected, "{kind:?}");
    }
    // Something that is no media at all: refused as in process.
    let garbage = bytes::Bytes::from(vec![0x5a; 64 << 10]);
    let r = push(&server.url("junk"), garbage, false).await;
    assert_eq!(r.status, 415, "{}", r.json);
}

/// Three streams with viewers; one stream's worker is killed with SIGABRT (what an assertion or a failed
/// allocation in a decoder does): that stream shows its slate, the other two play on without a gap, and a new
/// push takes the first back. (Not SIGSEGV from outside: Rust's runtime takes a process's first SIGSEGV to tell
/// a stack overflow apart and, for anything else, lets the fault happen again with the default action, so a
/// real segmentation fault kills the worker but a `kill -SEGV` is absorbed once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_ends_its_source_only() {
    let server = Server::start(|a| {
        isolated(a);
        a.pace = true;
        a.fallback = Fallback::Slate;
    })
    .await;
    let clip = long_clip("webm");
    let mut pushes = Vec::new();
    let mut viewers = Vec::new();
    for name in ["a", "b", "c"] {
        pushes.push(losable_push(&server, name, clip.clone()).await);
        wait_state(&server, name, "live", Duration::from_secs(10)).await;
        viewers.push(tokio::spawn(capture(
            open_watch(&server.url(name)).await,
            Duration::from_secs(9),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = workers_of("a");
    assert_eq!(pids.len(), 1, "one worker for stream a: {pids:?}");
    assert_eq!(workers_of("b").len(), 1);
    // The worker is locked down: no new privileges, a seccomp filter, its address-space limit.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[0])).unwrap();
    let address_space = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert!(
        address_space.contains(&(2048u64 << 20).to_string()),
        "{address_space}"
    );

    signal(pids[0], "ABRT");
    let a = wait_state(&server, "a", "fallback", Duration::from_secs(5)).await;
    assert_eq!(a["failovers"], 1, "{a}");
    let metrics = get_text(&format!("http://{}/metrics", server.addr)).await;
    let deaths: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("transcast_source_worker_deaths_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // At least this one (the process's other tests may add theirs).
    assert!(deaths >= 1.0, "/metrics counts the death: {deaths}");
    for name in ["b", "c"] {
        assert_eq!(stream_json(&server, name).await["state"], "live", "{name}");
    }
    // The uplink of a is still open but its worker is gone: a new push takes the stream back.
    pushes[0].abort();
    let again = losable_push(&server, "a", clip.clone()).await;
    let back = wait_state(&server, "a", "live", Duration::from_secs(10)).await;
    assert_eq!(back["resumes"], 1, "{back}");

    let mut bodies = Vec::new();
    for v in viewers {
        bodies.push(v.await.unwrap().0);
    }
    for (name, body) in ["a", "b", "c"].iter().zip(&bodies) {
        assert_eq!(ebml_headers(body), 1, "{name}: one response, one header");
        let d = decode(body);
        assert!(d.video_pts_monotonic, "{name}");
        assert!(d.video_frames > 150, "{name}: {} pictures", d.video_frames);
    }
    for (name, body) in [("b", &bodies[1]), ("c", &bodies[2])] {
        // Every picture of the 9 s the viewer watched: nothing missing around the crash.
        let d = demux(body, "matroskademux");
        let pts: Vec<u64> = d
            .video
            .unwrap()
            .buffers
            .iter()
            .filter_map(|b| b.0)
            .collect();
        let gap = pts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            gap < 100_000_000,
            "{name}: a gap of {gap} ns between pictures"
        );
    }
    again.abort();
    for p in pushes {
        p.abort();
    }
}

/// A picture too large for the worker's memory limit ends its worker, not the daemon: the push is answered
/// with the reason and the daemon's peak memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_picture_ends_in_its_own_worker_at_its_limit() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.mp4");
    run_to_eos(&format!(
        "videotestsrc num-buffers=2 pattern=ball ! video/x-raw,width=8000,height=8000,framerate=1/1 \
         ! x264enc speed-preset=ultrafast ! mp4mux faststart=true ! filesink location={}",
        path.display()
    ));
    let huge = bytes::Bytes::from(std::fs::read(&path).unwrap());
    let server = Server::start(|a| {
        isolated(a);
        a.max_input_pixels = 8000 * 8000;
        a.max_input_dimension = 8000;
        a.source_memory_limit = 1024;
    })
    .await;
    let peak_before = proc_status_kib("self", "VmHWM");
    let r = push(&server.url("huge"), huge, false).await;
    assert_eq!(r.status, 415, "{}", r.json);
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("worker"), "{message}");
    let peak_after = proc_status_kib("self", "VmHWM");
    assert!(
        peak_after < peak_before + (200 << 10),
        "the daemon's peak RSS went from {peak_before} to {peak_after} KiB"
    );
    // The daemon serves on.
    let (pushed, watched) =
        push_and_watch(&server.url("next"), media(Media::Mp4Faststart), true).await;
    assert_eq!(pushed.status, 200);
    assert!(decode(&watched.body).video_frames > 0);
}

/// A pull is a source like a push: it runs in a worker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_runs_in_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("pulled.ts");
    std::fs::write(&clip, long_clip("ts")).unwrap();
    let server = Server::start(|a| {
        isolated(a);
        a.pace = true;
        a.pull = vec![transcast::config::PullArg {
            name: "pulled".into(),
            url: format!("file://{}", clip.display()),
        }];
    })
    .await;
    wait_state(&server, "pulled", "live", Duration::from_secs(10)).await;
    assert_eq!(
        workers_of("pulled").len(),
        1,
        "the pull's source has its worker"
    );
    let (body, _) = capture(
        open_watch(&server.url("pulled")).await,
        Duration::from_secs(3),
    )
    .await;
    let d = decode(&body);
    assert!(d.video_frames > 30, "{} pictures in 3 s", d.video_frames);
}

/// A worker that stops answering (here stopped with SIGSTOP; a deadlock looks the same) is ended after
/// `--source-timeout` of silence, and its stream falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_is_ended() {
    let server = Server::start(|a| {
        isolated(a);
        a.pace = true;
        a.fallback = Fallback::Slate;
        a.source_timeout = 2.0;
    })
    .await;
    let push = losable_push(&server, "hung", long_clip("webm")).await;
    wait_state(&server, "hung", "live", Duration::from_secs(10)).await;
    let pids = workers_of("hung");
    assert_eq!(pids.len(), 1);
    signal(pids[0], "STOP");
    let s = wait_state(&server, "hung", "fallback", Duration::from_secs(8)).await;
    assert_eq!(s["failovers"], 1, "{s}");
    // The stopped worker was killed, not left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while workers_of("hung").contains(&pids[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung worker is gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    push.abort();
}
