//! `--soak ROUNDS`: bounded rounds of everything that comes and goes on a server, with its resources sampled after
//! each round once it is idle again: RSS, open files, threads. It fails when, after the first (warm-up) round,
//! RSS grows more than 5 % + 2 MiB, or open files or threads end above the warm-up's level.
//!
//! GStreamer's `leaks` tracer is asked (SIGUSR1) after each round which pipelines are alive: none may be.
//!
//! A round: a live stream that viewers churn on (full reads, closes right after the head, half-sent heads, HEADs,
//! clients that never read), pushes of every kind (transcode, passthrough, audio-only, refused, cut mid-upload,
//! stalled), and a stream whose source drops and comes back (`--soak-flaps` times). Everything is on loopback and
//! bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use gstreamer as gst;

use super::{
    Args, Mode, api_get, garbage, make_media, proc_rss_kib, push, run_to_eos, schedule,
    start_server_with,
};

/// Viewer cycles running at once.
const VIEWERS_AT_ONCE: usize = 128;
/// Pushes running at once.
const PUSHES_AT_ONCE: usize = 4;
/// Bound on any one step of a round (a push's answer, a viewer's cycle).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the wait for the server to be idle after a round.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The part of a round's time bound that does not grow with its counts.
const ROUND_BASE: Duration = Duration::from_secs(60);
/// Bound on the wait for open files and threads to come back after a round (tokio's idle blocking threads live
/// 10 s).
const SETTLE: Duration = Duration::from_secs(12);
/// How long open files and threads must hold still before a sample counts: a sample taken while a stream's
/// last threads wind down would make a loose reference (the warm-up) or a false alarm (a later round).
const STABLE: Duration = Duration::from_secs(1);

/// What the server holds once a round's streams are gone.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: u64,
    /// GStreamer pipelines alive, by the `leaks` tracer.
    pipelines: usize,
}

/// Asks the server's `leaks` tracer (SIGUSR1) which GStreamer pipelines are alive: the `object-alive` lines it
/// logs in answer.
async fn alive_pipelines(pid: &str, log: &std::path::Path) -> anyhow::Result<usize> {
    let before = std::fs::read(log)?.len();
    let status = std::process::Command::new("kill")
        .args(["-USR1", pid])
        .status()?;
    anyhow::ensure!(status.success(), "kill -USR1 {pid}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = std::fs::read(log)?;
    let new = String::from_utf8_lossy(&all[before.min(all.len())..]);
    Ok(new
        .lines()
        .filter(|l| l.contains("object-alive") && l.contains("GstPipeline"))
        .count())
}

fn sample(pid: &str) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Sample {
        rss_kib: proc_rss_kib(pid),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        threads,
        pipelines: 0,
    }
}

/// The test media of a soak, made once.
struct Media {
    /// VP8+Opus WebM, the live stream viewers churn on (paced by the tool).
    live: Arc<Vec<(Duration, Bytes)>>,
    passthrough: Bytes,
    transcode: Bytes,
    audio_only: Bytes,
}

fn make_audio_only(seconds: u64) -> anyhow::Result<Bytes> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("a.ogg");
    let n = seconds * 48_000 / 1024 + 1;
    let line = format!(
        "audiotestsrc num-buffers={n} samplesperbuffer=1024 ! audio/x-raw,rate=48000 ! audioconvert ! opusenc ! oggmux ! filesink location={}",
        out.display()
    );
    run_to_eos(&gst::parse::launch(&line)?, 60, "generating audio")?;
    Ok(Bytes::from(std::fs::read(&out)?))
}

/// A push of `data` with Content-Length: its answer's status, or 0 when the connection failed. `cut`: send only
/// the first half and drop the connection; `stall`: send the first half and then nothing (the server's
/// `--source-timeout` ends it).
async fn push_once(addr: SocketAddr, name: &str, data: &Bytes, cut: bool, stall: bool) -> u16 {
    let go = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "PUT /live/{name} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        )
        .await?;
        let part = if cut || stall {
            data.len() / 2
        } else {
            data.len()
        };
        s.write_all(&data[..part]).await?;
        if cut {
            return Ok::<u16, std::io::Error>(0);
        }
        let mut r = Vec::new();
        s.read_to_end(&mut r).await?;
        Ok(std::str::from_utf8(r.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    };
    tokio::time::timeout(STEP_TIMEOUT, go)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0)
}

/// One viewer cycle of kind `k` on `name`.
async fn viewer(addr: SocketAddr, name: &str, k: usize) {
    let go = async {
        let mut s = TcpStream::connect(addr).await?;
        match k % 5 {
            // A full read for a while, then gone.
            0 => {
                s.write_all(format!("GET /live/{name} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes())
                    .await?;
                let mut b = vec![0u8; 16 << 10];
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until {
                    let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
                    if matches!(r, Ok(Ok(0) | Err(_))) {
                        break;
                    }
                }
            }
            // Gone right after the response head.
            1 => {
                s.write_all(format!("GET /live/{name} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes())
                    .await?;
                let mut b = [0u8; 256];
                let _ = s.read(&mut b).await?;
            }
            // Half a request head, then gone.
            2 => {
                s.write_all(format!("GET /live/{name} HTTP/1.1\r\nHo").as_bytes())
                    .await?;
            }
            // A HEAD.
            3 => {
                s.write_all(
                    format!(
                        "HEAD /live/{name} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
                let mut r = Vec::new();
                s.read_to_end(&mut r).await?;
            }
            // Never reads: the server keeps its slot until --max-lag, then drops it; this side gives up first.
            _ => {
                s.write_all(format!("GET /live/{name} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes())
                    .await?;
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(STEP_TIMEOUT, go).await;
}

/// A chunked push that sends `data`'s first `upto` bytes and then drops: a source lost mid-body.
async fn flap(addr: SocketAddr, name: &str, data: &Bytes, upto: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("PUT /live/{name} HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    for c in data[..upto.min(data.len())].chunks(16 << 10) {
        s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
        s.write_all(c).await?;
        s.write_all(b"\r\n").await?;
    }
    // Until the stream is live on it, then the connection drops without a terminator.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let v = api_get(addr, &format!("/api/v1/streams/{name}"))
            .await
            .with_context(|| format!("flap {name}: its state"))?;
        if v["state"] == "live" {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "flap {name}: never live: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server lists no stream.
async fn idle(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        let v = api_get(addr, "/api/v1/streams")
            .await
            .context("listing streams")?;
        if v.as_array().is_some_and(|a| a.is_empty()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "streams still listed {IDLE_TIMEOUT:?} after the round: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts of what a round did.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    viewers: usize,
    pushes: usize,
    answered: usize,
    flaps: usize,
}

async fn round(addr: SocketAddr, args: &Args, media: &Media, r: u32) -> anyhow::Result<Done> {
    let mut done = Done::default();
    // The live stream viewers churn on, paced by this tool from its own timestamps.
    let live = format!("live{r}");
    let pusher = tokio::spawn(push(
        addr,
        live.clone(),
        media.live.clone(),
        Instant::now(),
        false,
    ));
    let deadline = Instant::now() + STEP_TIMEOUT;
    while api_get(addr, &format!("/api/v1/streams/{live}")).await?["output"]["content_type"]
        .is_null()
    {
        anyhow::ensure!(Instant::now() < deadline, "the live stream did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let viewers = {
        let gate = Arc::new(Semaphore::new(VIEWERS_AT_ONCE));
        let mut tasks = Vec::new();
        for k in 0..args.soak_viewers {
            let permit = gate.clone().acquire_owned().await?;
            let live = live.clone();
            tasks.push(tokio::spawn(async move {
                viewer(addr, &live, k).await;
                drop(permit);
            }));
        }
        tasks
    };
    // Pushes of every kind, a few at once.
    let kinds = 6;
    let gate = Arc::new(Semaphore::new(PUSHES_AT_ONCE));
    let mut pushes = Vec::new();
    for i in 0..args.soak_pushes {
        let permit = gate.clone().acquire_owned().await?;
        let (data, cut, stall, expect) = match i % kinds {
            0 => (media.transcode.clone(), false, false, 200),
            1 => (media.passthrough.clone(), false, false, 200),
            2 => (media.audio_only.clone(), false, false, 200),
            3 => (garbage(64 << 10), false, false, 415),
            4 => (media.transcode.clone(), true, false, 0),
            // Answered once --source-timeout ends it; how is the server's business.
            _ => (media.passthrough.clone(), false, true, 0),
        };
        let name = format!("p{r}x{i}");
        pushes.push(tokio::spawn(async move {
            let got = push_once(addr, &name, &data, cut, stall).await;
            drop(permit);
            (got, expect)
        }));
    }
    for v in viewers {
        v.await?;
        done.viewers += 1;
    }
    for p in pushes {
        let (got, expect) = p.await?;
        done.pushes += 1;
        if got != 0 {
            done.answered += 1;
        }
        anyhow::ensure!(
            got == expect || expect == 0,
            "a push answered {got}, expected {expect}"
        );
    }
    pusher.abort();
    // A source that drops and comes back, --soak-flaps times, with the stream on its slate in between.
    let name = format!("flap{r}");
    for _ in 0..args.soak_flaps {
        flap(addr, &name, &media.passthrough, media.passthrough.len() / 2).await?;
        // The drop is seen at once; the next source comes once the stream is on its slate.
        let deadline = Instant::now() + STEP_TIMEOUT;
        while api_get(addr, &format!("/api/v1/streams/{name}")).await?["state"] != "fallback" {
            anyhow::ensure!(Instant::now() < deadline, "{name} did not fall back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.flaps += 1;
    }
    Ok(done)
}

pub async fn soak(args: &Args, rounds: u32) -> anyhow::Result<()> {
    let round_media_s = 8 + (args.soak_viewers as u64 / 200);
    eprintln!("generating soak media...");
    let live = make_media(Mode::Passthrough, round_media_s, "320x240", 300)?;
    let media = Media {
        live: Arc::new(schedule(&live)?),
        passthrough: make_media(Mode::Passthrough, 1, "320x240", 300)?,
        transcode: make_media(Mode::Transcode, 1, "320x240", 300)?,
        audio_only: make_audio_only(1)?,
    };
    let extra: Vec<String> = [
        "--no-pace",
        "--max-lag",
        "1",
        "--source-timeout",
        "1",
        "--linger",
        "1",
        "--resume-grace",
        "0.2",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // GStreamer's `leaks` tracer, asked on SIGUSR1 which pipelines are alive, once the server is idle.
    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("gst.log");
    let server = start_server_with(
        args,
        &extra,
        &[
            ("GST_TRACERS", "leaks(filters=GstPipeline)"),
            ("GST_LEAKS_TRACER_SIG", "1"),
            ("GST_DEBUG", "GST_TRACER:7"),
            ("GST_DEBUG_NO_COLOR", "1"),
        ],
        Some(std::fs::File::create(&log_path)?),
    )
    .await?;
    let pid = server.child.id().to_string();
    let addr = server.addr;
    let mut samples: Vec<Sample> = Vec::new();
    let mut total = Done::default();
    let t0 = Instant::now();
    for r in 1..=rounds {
        // Every step is bounded; this bounds the round as a whole, so a soak that wedges fails instead of hanging.
        let bound = ROUND_BASE
            + Duration::from_millis(50)
                * (args.soak_viewers + 100 * args.soak_pushes + 200 * args.soak_flaps) as u32;
        let d = tokio::time::timeout(bound, round(addr, args, &media, r))
            .await
            .map_err(|_| anyhow::anyhow!("round {r} did not finish within {bound:?}"))?
            .with_context(|| format!("round {r}"))?;
        idle(addr).await.with_context(|| format!("round {r}"))?;
        // Let the last responses, pipelines and their threads wind down: up to SETTLE for the open files and
        // threads to be back at the warm-up's level (the warm-up itself gets a second).
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A stream leaves the registry a moment before its pipelines are gone: wait (up to SETTLE) until none
        // is alive and, after the warm-up, open files and threads are back at its level.
        let warm = samples.get(args.soak_warmup - 1).copied();
        let until = Instant::now() + SETTLE;
        // Since when open files and threads have been what they are now.
        let mut still: Option<(Instant, usize, u64)> = None;
        let s = loop {
            let mut s = sample(&pid);
            s.pipelines = alive_pipelines(&pid, &log_path).await?;
            let since = match still {
                Some((t, fds, threads)) if fds == s.fds && threads == s.threads => t,
                _ => Instant::now(),
            };
            still = Some((since, s.fds, s.threads));
            let settled = s.pipelines == 0
                && since.elapsed() >= STABLE
                && warm.is_none_or(|w| s.fds <= w.fds && s.threads <= w.threads);
            if settled || Instant::now() >= until {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        total.viewers += d.viewers;
        total.pushes += d.pushes;
        total.answered += d.answered;
        total.flaps += d.flaps;
        println!(
            "round {r:>3}: {:>6} viewer cycles, {:>4} pushes ({} answered), {:>4} flaps | RSS {:>7.1} MiB, {:>4} fds, {:>3} threads, {} pipelines | {:.0} s",
            d.viewers,
            d.pushes,
            d.answered,
            d.flaps,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            s.pipelines,
            t0.elapsed().as_secs_f64()
        );
        samples.push(s);
    }
    // The last warm-up round is the reference: allocator caches and GStreamer's registries fill during the first.
    let warm = samples[args.soak_warmup - 1];
    let last = *samples.last().expect("at least one round");
    let rss_cap = warm.rss_kib + warm.rss_kib / 20 + 2048;
    let verdict = serde_json::json!({
        "rounds": rounds,
        "viewer_cycles": total.viewers,
        "pushes": total.pushes,
        "flaps": total.flaps,
        "rss_mib": samples.iter().map(|s| (s.rss_kib as f64 / 102.4).round() / 10.0).collect::<Vec<_>>(),
        "fds": samples.iter().map(|s| s.fds).collect::<Vec<_>>(),
        "threads": samples.iter().map(|s| s.threads).collect::<Vec<_>>(),
        "pipelines_alive": samples.iter().map(|s| s.pipelines).collect::<Vec<_>>(),
        "seconds": t0.elapsed().as_secs(),
    });
    println!("{verdict}");
    anyhow::ensure!(
        last.rss_kib <= rss_cap,
        "RSS grew from {} KiB after the warm-up round to {} KiB (allowed: {rss_cap})",
        warm.rss_kib,
        last.rss_kib
    );
    anyhow::ensure!(
        last.fds <= warm.fds,
        "open files: {} after the warm-up round, {} at the end",
        warm.fds,
        last.fds
    );
    anyhow::ensure!(
        last.threads <= warm.threads,
        "threads: {} after the warm-up round, {} at the end",
        warm.threads,
        last.threads
    );
    let leaked: Vec<usize> = samples.iter().map(|s| s.pipelines).collect();
    anyhow::ensure!(
        leaked.iter().all(|&n| n == 0),
        "GStreamer pipelines alive once the server was idle, per round: {leaked:?}"
    );
    eprintln!(
        "soak: RSS, open files, threads came back after every round, and no pipeline outlived its stream"
    );
    Ok(())
}
