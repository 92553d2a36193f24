//! The `transcast` binary itself: `serve` as a user runs it, and `pipeline` as a debugging aid.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_transcast");

#[test]
fn serve_help_explains_every_option() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--listen",
        "--pipelines",
        "--join",
        "--max-lag",
        "--max-streams",
        "--max-clients",
        "--max-transcodes",
        "--source-timeout",
        "--no-pace",
        "--max-width",
        "--max-fps",
        "--max-gop-bytes",
    ] {
        assert!(help.contains(opt), "serve --help lacks {opt}:\n{help}");
    }
    assert!(
        help.contains("127.0.0.1:8080"),
        "default listen address documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_streams_and_stops_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-pace",
            "--state-dir",
        ])
        .arg(state.path())
        .env("TRANSCAST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the daemon logs its address");
        if let Some(i) = line.find("addr=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}/live/cli");
    let (pushed, watched) = push_and_watch(&url, media(Media::OggTheoraVorbis), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert!(decode(&watched.body).video_frames >= FRAMES * 85 / 100);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the daemon stops on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn pipeline_command_prints_a_line_that_gst_launch_runs_and_run_runs_it() {
    init();
    let dir = tempfile::tempdir().unwrap();
    for (kind, passthrough) in [(Media::MpegTs, false), (Media::WebmVp8Vorbis, true)] {
        let input = dir.path().join(format!("{kind:?}.in"));
        std::fs::write(&input, media(kind)).unwrap();
        let out_run = dir.path().join(format!("{kind:?}-run.webm"));
        let out = Command::new(BIN)
            .args(["pipeline", "--run", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out_run)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(line.starts_with("gst-launch-1.0 -e filesrc"), "{line}");
        assert_eq!(line.contains("vp8enc"), !passthrough, "{line}");
        let d = decode(&std::fs::read(&out_run).unwrap());
        assert!(
            (FRAMES * 85 / 100..=FRAMES + 2).contains(&d.video_frames),
            "{kind:?} via --run: {} frames",
            d.video_frames
        );

        // The printed line, pasted into a shell, writes the same kind of output.
        if Command::new("gst-launch-1.0")
            .arg("--version")
            .output()
            .is_ok()
        {
            let out_sh = dir.path().join(format!("{kind:?}-sh.webm"));
            let line = line.replace(
                &out_run.display().to_string(),
                &out_sh.display().to_string(),
            );
            let st = Command::new("sh")
                .arg("-c")
                .arg(line.trim())
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            let t = demux(&std::fs::read(&out_sh).unwrap(), "matroskademux");
            assert!(t.video.unwrap().caps.starts_with("video/x-vp8"));
            assert!(t.audio.unwrap().caps.starts_with("audio/x-vorbis"));
        }
    }
}

#[test]
fn pipeline_command_refuses_garbage_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("junk");
    std::fs::write(&input, "definitely not media\n".repeat(1000)).unwrap();
    let out = Command::new(BIN)
        .args(["pipeline", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not supported") || err.contains("recognise"),
        "{err}"
    );
}
