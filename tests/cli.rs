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

/// A `transcast serve` child process; killed on drop if still running.
struct Daemon {
    child: std::process::Child,
    addr: String,
    /// Its log lines after the one that gave its address.
    log: std::sync::mpsc::Receiver<String>,
    /// Its log lines up to that one.
    early: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str], state: &std::path::Path) -> Daemon {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .args(extra)
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
    let mut early = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the daemon logs its address");
        if let Some(i) = line.find("addr=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_string();
        }
        early.push(line);
    };
    Daemon {
        child,
        addr,
        log: rx,
        early,
    }
}

fn sigterm_and_wait(d: &mut Daemon, within: Duration) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            return s;
        }
        assert!(t0.elapsed() < within, "the daemon stops on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_streams_and_stops_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let mut d = serve(&["--no-pace"], state.path());
    let url = format!("http://{}/live/cli", d.addr);
    let (pushed, watched) = push_and_watch(&url, media(Media::OggTheoraVorbis), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert!(decode(&watched.body).video_frames >= FRAMES * 85 / 100);
    let status = sigterm_and_wait(&mut d, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

/// SIGTERM with a live push and a viewer: the push gets its JSON answer, the viewer the clean end of its
/// response, and the daemon exits within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_live_pushes_and_ends_viewers_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let mut d = serve(&[], state.path());
    let url = format!("http://{}/live/live", d.addr);
    let clip = long_clip("ts");
    let (tx, pushed) = push_stream(&url, None);
    // Half the clip, and the upload held open: a live source.
    for c in chunk(&clip, 16 << 10)
        .into_iter()
        .take(clip.len() / 2 / (16 << 10))
    {
        tx.send(c).await.unwrap();
    }
    let viewer = tokio::spawn({
        let url = url.clone();
        async move {
            let resp = open_watch(&url).await;
            tokio::time::timeout(Duration::from_secs(20), resp.bytes()).await
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = sigterm_and_wait(&mut d, Duration::from_secs(8));
        drop(d);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    let answer = pushed.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the push got its answer: {}",
        answer.json
    );
    assert_eq!(answer.json["end"], "aborted", "{}", answer.json);
    let body = viewer
        .await
        .unwrap()
        .expect("the viewer's response ends")
        .expect("and ends cleanly");
    assert!(body.starts_with(&EBML_MAGIC));
    assert!(decode(&body).video_frames > 30, "what was live plays");
    drop(tx);
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

/// Whatever a client sends is logged escaped: a CR or LF in a stream name, a session id or a URL, percent-encoded in
/// a path or raw in JSON, cannot start a log line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_input_cannot_forge_a_log_line() {
    let state = tempfile::tempdir().unwrap();
    let d = serve(&[], state.path());
    let base = format!("http://{}", d.addr);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let forged = "%0d%0aFORGED%20line";
    let mut answers = Vec::new();
    for (method, path, body) in [
        (
            "PUT",
            format!("/live/x{forged}"),
            Some("not media".to_string()),
        ),
        ("GET", format!("/live/x{forged}"), None),
        ("HEAD", format!("/live/x{forged}"), None),
        ("GET", format!("/api/v1/streams/x{forged}"), None),
        ("DELETE", format!("/api/v1/streams/x{forged}"), None),
        (
            "GET",
            format!("/api/v1/streams/x{forged}/sdp?target=127.0.0.1:5000{forged}"),
            None,
        ),
        (
            "POST",
            "/api/v1/streams".into(),
            Some(r#"{"name":"x\r\nFORGED line"}"#.into()),
        ),
        (
            "POST",
            "/api/v1/streams".into(),
            Some(r#"{"name":"ok","pull":"http://127.0.0.1:1/\r\nFORGED line"}"#.into()),
        ),
        (
            "POST",
            "/api/v1/tokens".into(),
            Some(r#"{"session_id":"x\nFORGED line"}"#.into()),
        ),
        ("POST", format!("/api/add-token?sessionid=x{forged}"), None),
    ] {
        let mut req = c.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let status = req.send().await.unwrap().status().as_u16();
        answers.push((method, path, status));
    }
    for (method, path, status) in &answers {
        assert!((400..500).contains(status), "{method} {path}: {status}");
    }
    // Everything it logged about them, and a little more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines: Vec<String> = d.log.try_iter().collect();
    for l in &lines {
        assert!(
            !l.trim_start().starts_with("FORGED"),
            "a forged log line: {l:?}\nall: {lines:#?}"
        );
    }
}

/// The worst input the defaults accept, 1080p60 H.264, uploaded as fast as the network goes and transcoded (paced)
/// while watched: the daemon's peak stays bounded. Raw pictures wait for the pacer only once scaled to the
/// stream's size and rate (720p30); held at the decoder's 1080p60 (60 pictures of 3 MB a second, and more while the
/// pacer waits), this 10 s clip took the daemon to 925 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_accepted_input_transcodes_in_bounded_memory() {
    init();
    let clip = tempdir().join("1080p60.mp4");
    run_to_eos(&format!(
        "videotestsrc num-buffers=600 pattern=ball ! video/x-raw,width=1920,height=1080,framerate=60/1 \
         ! x264enc speed-preset=ultrafast key-int-max=60 bitrate=8000 ! h264parse ! mp4mux faststart=true name=m \
         ! filesink location={} audiotestsrc num-buffers=470 samplesperbuffer=1024 ! audioconvert ! avenc_aac \
         ! aacparse ! m.",
        clip.display()
    ));
    let data = bytes::Bytes::from(std::fs::read(&clip).unwrap());
    let state = tempfile::tempdir().unwrap();
    let d = serve(&[], state.path());
    let url = format!("http://{}/live/big", d.addr);
    let (pushed, watched) = push_and_watch(&url, data, false).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert_eq!(pushed.json["mode"], "transcode");
    let out = decode(&watched.body);
    assert_eq!(
        (out.width, out.height),
        (1280, 720),
        "scaled to the output cap"
    );
    let peak_mib = proc_status_kib(&d.child.id().to_string(), "VmHWM") / 1024;
    assert!(
        peak_mib < 400,
        "one 1080p60 transcode took the daemon to {peak_mib} MiB"
    );
    eprintln!("1080p60 transcode: daemon peak {peak_mib} MiB");
}

/// `transcast check-config` passes the example in the repository, and refuses a bad file with the key and its
/// line, exiting 1.
/// `transcast check-config FILE`: (exit code, stdout, stderr).
fn check_config(file: &tempfile::NamedTempFile) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(file.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_passes_the_example_and_names_a_bad_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/transcast.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": ok (") && stdout.contains("sha256"),
        "{stdout}"
    );
    // The example's declared streams, uncommented, pass too.
    let text = std::fs::read_to_string(example).unwrap();
    let (flags, streams) = text.split_at(text.find("# [[stream]]").unwrap());
    let uncommented: String = streams
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l).trim_end_matches('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let (code, stdout, stderr) =
        check_config(&write_temp(format!("{flags}{uncommented}").as_bytes()));
    assert!(
        code == Some(0) && stdout.contains("2 declared streams"),
        "{stdout} {stderr}"
    );
    // A declared stream's bad value, unknown key, or a name declared twice: the line and the stream named.
    for (text, expected) in [
        (
            "max-lag = 3\n\n[[stream]]\nname = \"a\"\nmax-fps = 1000\n",
            ":3: stream 'a': max-fps must be within 1..240",
        ),
        ("[[stream]]\nname = \"a\"\nmax-fsp = 10\n", "max-fsp"),
        (
            "[[stream]]\nname = \"a\"\n[[stream]]\nname = \"a\"\n",
            ":3: stream 'a': declared twice",
        ),
        (
            "[[stream]]\nname = \"a\"\npush-key = \"short\"\n",
            "push-key must be at least 16 characters",
        ),
    ] {
        let (code, _, stderr) = check_config(&write_temp(text.as_bytes()));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    let bad = write_temp(b"listen = \"127.0.0.1:8080\"\nmax-clients = 100\nsegment-window = 1\n");
    let (code, _, stderr) = check_config(&bad);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(":3: key 'segment-window'"), "{stderr}");
    // Templates are part of the configuration: a directory that is not there, or a template that does not load.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("video-encode.pipeline"),
        "vp8enc no-such-property=1",
    )
    .unwrap();
    for (pipelines, why) in [
        (dir.path().join("missing"), "not a directory"),
        (dir.path().to_path_buf(), "video-encode.pipeline"),
    ] {
        let text = format!(
            "max-lag = 3\npipelines = {:?}\n",
            pipelines.display().to_string()
        );
        let (code, _, stderr) = check_config(&write_temp(text.as_bytes()));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
}

/// `serve --config FILE`: the file's settings apply (here `max-streams = 1`: a second stream is refused), flags
/// override it (the file's `listen` is a port nobody may bind, the flag's is free), and the log says which file
/// (and which version of it) is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_its_config_file_and_flags_override_it() {
    let state = tempfile::tempdir().unwrap();
    let file = write_temp(b"listen = \"192.0.2.1:1\"\nmax-streams = 1\nno-pace = true\n");
    let path = file.path().to_str().unwrap().to_string();
    let mut d = serve(&["--config", &path], state.path());
    // A live source that stays: a chunked upload held open after its first megabyte.
    let mut first = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        first
            .write_all(b"PUT /live/one HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
    }
    let clip = long_clip("webm");
    try_send_chunk(&mut first, &clip[..clip.len().min(1 << 20)])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let r = push(
            &format!("http://{}/live/two", d.addr),
            media(Media::WebmVp8Vorbis),
            false,
        )
        .await;
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        second.status, 503,
        "max-streams = 1 from the file: {}",
        second.json
    );
    assert!(
        second.json.to_string().contains("max-streams"),
        "{}",
        second.json
    );
    drop(first);
    let _ = sigterm_and_wait(&mut d, Duration::from_secs(10));
    assert!(
        d.early
            .iter()
            .any(|l| l.contains("configuration file loaded") && l.contains("sha256=")),
        "{:?}",
        d.early
    );
}

/// The log, read from a pipe (as journald or a file gets it), has no colour codes; `--log-format json` makes it
/// one JSON object per line.
#[test]
fn logs_are_plain_off_a_terminal_and_json_when_asked() {
    for format in ["text", "json"] {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                format,
                "--state-dir",
            ])
            .arg(state.path())
            .env_remove("NO_COLOR")
            .env("TRANSCAST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(lines.next().expect("the daemon logs").unwrap());
        }
        let _ = child.kill();
        let _ = child.wait();
        for line in &seen {
            assert!(!line.contains('\u{1b}'), "{format}: {line:?}");
            if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                assert!(
                    v["level"].is_string() && v["fields"]["message"].is_string(),
                    "{v}"
                );
            }
        }
    }
}

/// `kill -HUP` (what `systemctl reload` sends) reloads the file: `GET /api/v1/config` shows the new hash and
/// declared streams; a broken file keeps the running configuration and the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_a_broken_one_changes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transcast.toml");
    std::fs::write(&file, "max-clients = 100\n").unwrap();
    let mut d = serve(&["--config", file.to_str().unwrap()], state.path());
    let config = |addr: String| async move {
        let v: serde_json::Value =
            serde_json::from_str(&get_text(&format!("http://{addr}/api/v1/config")).await).unwrap();
        v
    };
    let first = config(d.addr.clone()).await;
    assert_eq!(first["reloads"], 0, "{first}");
    let hup = |d: &Daemon| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &d.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(
        &file,
        "max-clients = 200\n[[stream]]\nname = \"stage\"\nmax-width = 640\n",
    )
    .unwrap();
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let v = config(d.addr.clone()).await;
        if v["reloads"] == 1 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second["reloads"], 1, "{second}");
    assert_eq!(second["streams"], serde_json::json!(["stage"]));
    assert_ne!(second["sha256"], first["sha256"]);

    std::fs::write(&file, "max-clients = \"many\"\n").unwrap();
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        let v = config(d.addr.clone()).await;
        if !v["last_error"].is_null() || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = third["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("transcast.toml:1: key 'max-clients'"),
        "{third}"
    );
    assert_eq!(
        third["sha256"], second["sha256"],
        "the running configuration stays"
    );
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon runs on");
    let logged: Vec<String> = d.log.try_iter().collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("configuration not reloaded")),
        "{logged:?}"
    );
    let _ = sigterm_and_wait(&mut d, Duration::from_secs(10));
}

/// `scripts/transcast.service` is a unit systemd accepts (every key known and well formed, the binary there),
/// whose reload is the SIGHUP tested above and whose start line is `serve --config`.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/transcast.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/transcast serve --config "),
        "{exec}"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transcast.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/transcast", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
