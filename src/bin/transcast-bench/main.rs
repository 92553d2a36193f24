//! transcast-bench: load generator and meter for the fan-out and transcode paths (loopback only).
//!
//! Starts a `transcast serve` child, pushes real-time-paced streams (VP8+Opus WebM for passthrough, MPEG-TS for
//! transcode; made with GStreamer test sources), ramps GET clients at a bounded rate for a bounded time, and
//! measures per received block: time to first byte and to the first video keyframe, push→client latency
//! (from block timestamps against the push schedule; blocks that existed before a client joined are counted
//! apart as backlog), read stalls over 1 s, throughput, and the server's CPU and RSS from /proc. Prints a
//! table and one JSON line. `--smoke` (50 clients × 5 s) checks every client got decodable data and exits
//! non-zero otherwise; CI runs it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use gst::prelude::*;
use gstreamer as gst;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use transcast::stream::webm::{Event, Scanner, TrackKind};

mod dash;
mod soak;

/// A read gap longer than this while the stream is live counts as a stall.
const STALL: Duration = Duration::from_secs(1);
/// Hard cap on a run, whatever the options say.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_CLIENTS: usize = 20_000;
/// Seconds of media beyond the planned ramp and measurement (pipeline start, a slow ramp).
const RAMP_SLACK_S: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// WebM VP8+Vorbis in: remuxed.
    Passthrough,
    /// Matroska H.264+AAC in: transcoded to VP8/Vorbis. (Matroska rather than MPEG-TS or MP4 so the pusher
    /// can pace by the input's own block timestamps, which makes the latency exact.)
    Transcode,
}

#[derive(Debug, Parser)]
#[command(about = "Load and latency benchmark for transcast (loopback only)")]
struct Args {
    /// 50 clients × 5 s passthrough; exits non-zero unless every client got decodable data.
    #[arg(long)]
    smoke: bool,
    #[arg(long, value_enum, default_value_t = Mode::Passthrough)]
    mode: Mode,
    /// GET clients in all, spread over the streams.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Streams pushed at once.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds of measurement once all clients are connected.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Clients connected per second while ramping.
    #[arg(long, default_value_t = 500)]
    ramp: u32,
    /// Upload with Content-Length instead of chunked.
    #[arg(long)]
    content_length: bool,
    /// Video size of the pushed stream, WxH.
    #[arg(long, default_value = "640x360")]
    size: String,
    /// Video bitrate of the pushed stream, kbit/s.
    #[arg(long, default_value_t = 1500)]
    kbps: u32,
    /// The transcast binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Extra arguments for `transcast serve` (repeatable), e.g. --server-arg=--join=live.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// No transcast: measure what the kernel alone charges for the same writes. One thread writes the stream's
    /// blocks, paced by their timestamps, to `--clients` loopback sockets (everything due within
    /// `--floor-window-ms` as one write, like `--coalesce-ms`); prints that thread's CPU per client-second.
    #[arg(long)]
    floor: bool,
    /// Write window for `--floor`, ms (0: one write per block, like transcast without coalescing).
    #[arg(long, default_value_t = 0)]
    floor_window_ms: u64,
    /// Edges in front of the server (`transcast serve --origin`): `--clients` then watch through the edges, and
    /// `--origin-clients` watch the origin itself, the reference for what a hop adds. Latency is then measured
    /// per video block by its payload (an edge has its own timeline), which also checks every payload is one
    /// that was pushed.
    #[arg(long, default_value_t = 0)]
    edges: usize,
    /// With --edges: one more edge whose origin is the first edge (two hops), which gets its share of clients.
    #[arg(long)]
    chain: bool,
    /// With --edges: clients on the origin itself.
    #[arg(long, default_value_t = 20)]
    origin_clients: usize,
    /// DASH: `--clients` players read the stream's DASH presentation (manifest every second, each new segment
    /// once, from the live edge) instead of its progressive stream; see `dash.rs`.
    #[arg(long)]
    dash: bool,

    /// With --dash: the players go through nginx (Debian's, `scripts/nginx-cache.conf`, started on loopback).
    #[arg(long)]
    dash_nginx: bool,

    /// Soak: this many rounds of viewer churn, pushes of every kind and source flaps against one server, its RSS,
    /// open files and threads sampled after each round once idle; fails when they do not come back (see
    /// `soak.rs`). Takes no other load options.
    #[arg(long, value_name = "ROUNDS")]
    soak: Option<u32>,
    /// Soak: viewer cycles per round.
    #[arg(long, default_value_t = 500)]
    soak_viewers: usize,
    /// Soak: pushes per round (transcode, passthrough, audio-only, refused, cut, stalled in turn).
    #[arg(long, default_value_t = 24)]
    soak_pushes: usize,
    /// Soak: source drops and returns per round.
    #[arg(long, default_value_t = 10)]
    soak_flaps: usize,
    /// Soak: warm-up rounds; the last one's RSS, open files and threads are what the later rounds must come back
    /// to.
    #[arg(long, default_value_t = 1)]
    soak_warmup: usize,
}

/// Bytes no demuxer takes for media (xorshift).
fn garbage(n: usize) -> Bytes {
    let mut x: u32 = 0x2545_f491;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.clients = 50;
        args.duration = 5;
        args.streams = 1;
    }
    anyhow::ensure!(args.clients <= MAX_CLIENTS, "at most {MAX_CLIENTS} clients");
    anyhow::ensure!(
        Duration::from_secs(args.duration) <= MAX_DURATION,
        "at most {MAX_DURATION:?}"
    );
    gst::init()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.floor {
        return rt.block_on(floor(&args));
    }
    if args.dash || args.dash_nginx {
        return rt.block_on(dash::dash(&args));
    }
    if let Some(rounds) = args.soak {
        anyhow::ensure!(
            (2..=1000).contains(&rounds)
                && args.soak_viewers <= 100_000
                && args.soak_pushes <= 1000,
            "--soak takes 2 to 1000 rounds (the first is the warm-up), at most 100000 viewers and 1000 pushes a round"
        );
        anyhow::ensure!(
            (1..rounds as usize).contains(&args.soak_warmup),
            "--soak-warmup must leave at least one round after it"
        );
        return rt.block_on(soak::soak(&args, rounds));
    }
    let report = rt.block_on(run(&args))?;
    println!("{}", report.table());
    println!("{}", serde_json::to_string(&report.json())?);
    if args.smoke {
        report.check_smoke()?;
        eprintln!("smoke: every client got decodable data");
    }
    Ok(())
}

/// Media made with GStreamer test sources, long enough for the run.
fn make_media(mode: Mode, seconds: u64, size: &str, kbps: u32) -> anyhow::Result<Bytes> {
    let (w, h) = size.split_once('x').context("--size is WxH")?;
    let frames = seconds * 30;
    let audio = seconds * 44_100 / 1024 + 1;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("media");
    // Moving noise under a moving ball: VP8 and x264 reach the target bitrate instead of undershooting.
    let v = format!(
        "videotestsrc num-buffers={frames} pattern=ball background-color=0xff202020 ! video/x-raw,width={w},height={h},framerate=30/1 ! timeoverlay font-desc=\"Sans 40\""
    );
    let a = format!(
        "audiotestsrc num-buffers={audio} samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 ! audioconvert"
    );
    let o = out.display();
    let launch = match mode {
        Mode::Passthrough => format!(
            "{v} ! vp8enc deadline=1 cpu-used=16 keyframe-max-dist=30 target-bitrate={}000 end-usage=cbr ! webmmux name=m ! filesink location={o} {a} ! audioresample ! opusenc ! m.",
            kbps
        ),
        Mode::Transcode => format!(
            "{v} ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 bitrate={kbps} ! h264parse ! matroskamux name=m ! filesink location={o} {a} ! avenc_aac ! aacparse ! m."
        ),
    };
    run_to_eos(&gst::parse::launch(&launch)?, 300, "generating media")?;
    Ok(Bytes::from(std::fs::read(&out)?))
}

/// Plays a pipeline to its end (bounded), turning an error message into an error.
fn run_to_eos(p: &gst::Element, timeout_s: u64, what: &str) -> anyhow::Result<()> {
    p.set_state(gst::State::Playing)?;
    let msg = p.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(timeout_s),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    p.set_state(gst::State::Null)?;
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => bail!("{what}: {}", e.error()),
        _ => bail!("{what}: no end within {timeout_s} s"),
    }
}

/// The pieces of an upload and when (from the push start) each is due: the header at once, every block at
/// its own timestamp.
fn schedule(data: &Bytes) -> anyhow::Result<Vec<(Duration, Bytes)>> {
    let mut sc = Scanner::new();
    let mut out = Vec::new();
    let mut first = None;
    sc.push(data, |ev| match ev {
        Event::Header { data, .. } => out.push((Duration::ZERO, data)),
        Event::Chunk(c) => {
            let f = *first.get_or_insert(c.block.pts_ns);
            out.push((
                Duration::from_nanos((c.block.pts_ns - f).max(0) as u64),
                c.data,
            ));
        }
    })?;
    Ok(out)
}

async fn push(
    addr: SocketAddr,
    name: String,
    plan: Arc<Vec<(Duration, Bytes)>>,
    t0: Instant,
    content_length: bool,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let total: usize = plan.iter().map(|p| p.1.len()).sum();
    let head = if content_length {
        format!("PUT /live/{name} HTTP/1.1\r\nHost: bench\r\nContent-Length: {total}\r\n\r\n")
    } else {
        format!("PUT /live/{name} HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n")
    };
    s.write_all(head.as_bytes()).await?;
    for (at, data) in plan.iter() {
        tokio::time::sleep_until((t0 + *at).into()).await;
        if content_length {
            s.write_all(data).await?;
        } else {
            s.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            s.write_all(data).await?;
            s.write_all(b"\r\n").await?;
        }
    }
    if !content_length {
        s.write_all(b"0\r\n\r\n").await?;
    }
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp)).await;
    Ok(())
}

/// Where a client is in the chunked transfer encoding, or a close-delimited body (`Close`).
#[derive(Debug, Clone, Copy)]
enum Framing {
    Close,
    Size,
    Data(usize),
    Crlf,
}

#[derive(Debug, Default)]
struct ClientResult {
    status_ok: bool,
    ttfb: Option<Duration>,
    first_keyframe: Option<Duration>,
    /// Push→client latency of blocks produced after the client joined, µs.
    live_us: Vec<u32>,
    /// Same for blocks that existed when it joined (the keyframe-group burst).
    backlog_us: Vec<u32>,
    stalls: u32,
    bytes: u64,
    connected: Duration,
    header_ok: bool,
    parse_error: Option<String>,
    /// The first client keeps its bytes for a decode check.
    capture: Option<BytesMut>,
    /// Hops from the origin: 0 (the server itself), 1 (an edge), 2 (an edge of an edge).
    tier: usize,
    /// With --edges: video blocks whose payload was never pushed.
    foreign_payloads: u32,
    /// With --edges: (payload key, latency µs) of every live video block, to find each block's first arrival
    /// per hop count.
    arrivals: Vec<(u64, u32)>,
}

/// What identifies a video block's payload across hops (each hop writes its own block and cluster headers):
/// its last bytes and nothing else.
fn payload_key(chunk: &[u8]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    const TAIL: usize = 64;
    (chunk.len() > 2 * TAIL).then(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        chunk[chunk.len() - TAIL..].hash(&mut h);
        h.finish()
    })
}

/// When each pushed video payload is due, from the push start.
fn payload_schedule(data: &Bytes) -> anyhow::Result<HashMap<u64, Duration>> {
    let mut sc = Scanner::new();
    let mut video = None;
    let mut first = None;
    let mut out = HashMap::new();
    sc.push(data, |ev| match ev {
        Event::Header { tracks, .. } => {
            video = tracks
                .iter()
                .find(|t| t.kind == TrackKind::Video)
                .map(|t| t.number);
        }
        Event::Chunk(c) => {
            let f = *first.get_or_insert(c.block.pts_ns);
            if Some(c.block.track) == video
                && let Some(k) = payload_key(&c.data)
            {
                out.insert(k, Duration::from_nanos((c.block.pts_ns - f).max(0) as u64));
            }
        }
    })?;
    Ok(out)
}

/// One GET client: raw HTTP/1.1 (chunked or close-delimited body), every block timestamped as it arrives.
async fn client(
    addr: SocketAddr,
    name: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    capture: bool,
    tier: usize,
    payloads: Option<Arc<HashMap<u64, Duration>>>,
) -> ClientResult {
    let mut r = ClientResult {
        tier,
        ..ClientResult::default()
    };
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return r;
    };
    let _ = s
        .write_all(format!("GET /live/{name} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await;
    let mut buf = BytesMut::with_capacity(64 << 10);
    // Response head.
    let mut framing = Framing::Close;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            r.status_ok = buf.starts_with(b"HTTP/1.1 200");
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if head.contains("\r\ntransfer-encoding: chunked") {
                framing = Framing::Size;
            }
            let _ = buf.split_to(end + 4);
            break;
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return r,
            Ok(_) => {}
        }
    }
    if !r.status_ok {
        return r;
    }
    let mut sc = Scanner::new();
    let mut video_track = None;
    let mut first_pts = None::<i64>;
    let mut last_read = Instant::now();
    let mut body = BytesMut::new();
    let mut cap = capture.then(BytesMut::new);
    'read: while !stop.load(Ordering::Relaxed) {
        // Decode whatever complete chunked framing is buffered.
        loop {
            match framing {
                Framing::Close => {
                    body.extend_from_slice(&buf.split());
                    break;
                }
                Framing::Data(left) => {
                    let n = left.min(buf.len());
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&buf.split_to(n));
                    framing = if n == left {
                        Framing::Crlf
                    } else {
                        Framing::Data(left - n)
                    };
                }
                Framing::Crlf => {
                    if buf.len() < 2 {
                        break;
                    }
                    let _ = buf.split_to(2);
                    framing = Framing::Size;
                }
                Framing::Size => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&buf[..eol]).to_string();
                    let _ = buf.split_to(eol + 2);
                    let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
                        r.parse_error = Some(format!("bad chunk size line {line:?}"));
                        break 'read;
                    };
                    if size == 0 {
                        break 'read;
                    }
                    framing = Framing::Data(size);
                }
            }
        }
        if !body.is_empty() {
            let now = Instant::now();
            r.bytes += body.len() as u64;
            if r.ttfb.is_none() {
                r.ttfb = Some(now - start);
                r.header_ok = body.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]);
            }
            if let Some(c) = cap.as_mut() {
                c.extend_from_slice(&body);
            }
            let joined = start.duration_since(t0);
            let res = sc.push(&body.split(), |ev| match ev {
                Event::Header { tracks, .. } => {
                    video_track = tracks
                        .iter()
                        .find(|t| t.kind == TrackKind::Video)
                        .map(|t| t.number);
                }
                Event::Chunk(c) => {
                    let f = *first_pts.get_or_insert(c.block.pts_ns);
                    let _ = f;
                    let is_video = Some(c.block.track) == video_track;
                    if is_video && c.block.keyframe && r.first_keyframe.is_none() {
                        r.first_keyframe = Some(now - start);
                    }
                    let due = match &payloads {
                        None => Duration::from_nanos(c.block.pts_ns.max(0) as u64),
                        // Through edges: video blocks only, timed by their payload.
                        Some(_) if !is_video => return,
                        Some(p) => match payload_key(&c.data)
                            .and_then(|k| p.get(&k).map(|d| (k, d)))
                        {
                            Some((k, d)) => {
                                let lat = now.duration_since(t0).saturating_sub(*d);
                                if *d >= joined {
                                    r.arrivals
                                        .push((k, lat.as_micros().min(u32::MAX as u128) as u32));
                                }
                                *d
                            }
                            None => {
                                r.foreign_payloads += 1;
                                return;
                            }
                        },
                    };
                    let lat = now.duration_since(t0).saturating_sub(due);
                    let us = lat.as_micros().min(u32::MAX as u128) as u32;
                    if due < joined {
                        r.backlog_us.push(us)
                    } else {
                        r.live_us.push(us)
                    }
                }
            });
            if let Err(e) = res {
                r.parse_error = Some(e.to_string());
                break;
            }
        }
        let read = tokio::time::timeout(Duration::from_millis(200), s.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {
                let now = Instant::now();
                if now - last_read > STALL && r.ttfb.is_some() {
                    r.stalls += 1;
                }
                last_read = now;
            }
            Err(_) => {}
        }
    }
    r.connected = start.elapsed();
    r.capture = cap;
    r
}

fn proc_cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

/// CPU seconds of a process and its children (a daemon and its source workers).
fn tree_cpu_secs(pid: &str) -> f64 {
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            children.extend(list.split_whitespace().map(str::to_string));
        }
    }
    proc_cpu_secs(pid) + children.iter().map(|c| proc_cpu_secs(c)).sum::<f64>()
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn tcp_mem_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "mem")
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _state: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(args: &Args, extra: &[String]) -> anyhow::Result<Server> {
    start_server_with(args, extra, &[], None).await
}

/// [`start_server`] with more environment and its stderr (GStreamer's log) to a file.
async fn start_server_with(
    args: &Args,
    extra: &[String],
    env: &[(&str, &str)],
    stderr: Option<std::fs::File>,
) -> anyhow::Result<Server> {
    let bin = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("transcast"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let state = tempfile::tempdir()?;
    let child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--max-clients",
            "100000",
            "--max-streams",
            "1000",
        ])
        .args(["--max-transcodes", "1000", "--state-dir"])
        .arg(state.path())
        .args(&args.server_args)
        .args(extra)
        .env("TRANSCAST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr.map_or_else(Stdio::inherit, Stdio::from))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        child,
        addr,
        _state: state,
    })
}

/// A first viewer of `name` on an edge: its pull starts now and stays for the edge's --pull-linger.
async fn warm_up(addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET /live/{name} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await??;
    anyhow::ensure!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "edge {addr}: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(())
}

/// `GET` of a JSON API path.
async fn api_get(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    api_get_once(addr, path)
        .await
        .with_context(|| format!("GET {path}"))
}

async fn api_get_once(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut r = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut r)).await??;
    let body = r
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &r[i + 4..])
        .context("no response body")?;
    Ok(serde_json::from_slice(body)?)
}

struct Report {
    edges: usize,
    chain: bool,
    /// Per stream, the origin's API: (relays, viewers).
    origin_view: Vec<(Option<u64>, Option<u64>)>,
    mode: Mode,
    streams: usize,
    clients: Vec<ClientResult>,
    measured: Duration,
    server_cpu: f64,
    client_seconds: f64,
    rss_base_kib: u64,
    rss_loaded_kib: u64,
    tcp_mem_pages: u64,
    tool_cpu: f64,
    first_capture: Option<BytesMut>,
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn pct_d(v: &[Duration], p: f64) -> f64 {
    let mut us: Vec<u32> = v
        .iter()
        .map(|d| d.as_micros().min(u32::MAX as u128) as u32)
        .collect();
    pct(&mut us, p)
}

impl Report {
    fn figures(&self) -> serde_json::Value {
        let ok = self.clients.iter().filter(|c| c.status_ok).count();
        let mut live: Vec<u32> = self
            .clients
            .iter()
            .flat_map(|c| c.live_us.iter().copied())
            .collect();
        // Each client's last quarter of live blocks: whether latency settled (a transcode keeping real time) or
        // kept growing (one falling behind), without the start-up transient.
        let mut end: Vec<u32> = self
            .clients
            .iter()
            .flat_map(|c| c.live_us[c.live_us.len() * 3 / 4..].iter().copied())
            .collect();
        let mut backlog: Vec<u32> = self
            .clients
            .iter()
            .flat_map(|c| c.backlog_us.iter().copied())
            .collect();
        let ttfb: Vec<Duration> = self.clients.iter().filter_map(|c| c.ttfb).collect();
        let key: Vec<Duration> = self
            .clients
            .iter()
            .filter_map(|c| c.first_keyframe)
            .collect();
        let stalls: u32 = self.clients.iter().map(|c| c.stalls).sum();
        let tput: Vec<f64> = self
            .clients
            .iter()
            .filter(|c| c.connected > Duration::ZERO)
            .map(|c| c.bytes as f64 * 8.0 / c.connected.as_secs_f64() / 1000.0)
            .collect();
        let n = self.clients.len().max(1) as f64;
        let tier = |t: usize| {
            let mut v: Vec<u32> = self
                .clients
                .iter()
                .filter(|c| c.tier == t)
                .flat_map(|c| c.live_us.iter().copied())
                .collect();
            (!v.is_empty()).then(|| (pct(&mut v, 0.5), pct(&mut v, 0.99), v.len()))
        };
        let tiers: Vec<_> = (0..3).map(tier).collect();
        // A hop's own cost: for each block, its first arrival at any viewer `b` hops away minus its first
        // arrival at any viewer `a` hops away (without the fan-out to many viewers, which both sides pay).
        let first: Vec<HashMap<u64, u32>> = (0..3)
            .map(|t| {
                let mut m: HashMap<u64, u32> = HashMap::new();
                for c in self.clients.iter().filter(|c| c.tier == t) {
                    for &(k, us) in &c.arrivals {
                        m.entry(k).and_modify(|v| *v = (*v).min(us)).or_insert(us);
                    }
                }
                m
            })
            .collect();
        let hop = |a: usize, b: usize| {
            let mut d: Vec<u32> = first[b]
                .iter()
                .filter_map(|(k, &y)| first[a].get(k).map(|&x| y.saturating_sub(x)))
                .collect();
            if d.is_empty() {
                return serde_json::Value::Null;
            }
            let n = d.len();
            let viewers = match (tiers[a], tiers[b]) {
                (Some(x), Some(y)) => serde_json::json!({"p50": y.0 - x.0, "p99": y.1 - x.1}),
                _ => serde_json::Value::Null,
            };
            serde_json::json!({"p50": pct(&mut d, 0.5), "p99": pct(&mut d, 0.99), "blocks": n, "all_viewers": viewers})
        };
        let edges = serde_json::json!({
            "edges": self.edges,
            "chain": self.chain,
            "latency_by_hops_ms": tiers.iter().enumerate().filter_map(|(i, t)| t.map(|(p50, p99, n)| serde_json::json!({
                "hops": i,
                "clients": self.clients.iter().filter(|c| c.tier == i).count(),
                "p50": p50, "p99": p99, "blocks": n
            }))).collect::<Vec<_>>(),
            "edge_hop_ms": hop(0, 1),
            "second_hop_ms": hop(1, 2),
            "foreign_payloads": self.clients.iter().map(|c| c.foreign_payloads as u64).sum::<u64>(),
            "origin_relays": self.origin_view.iter().map(|v| v.0).collect::<Vec<_>>(),
            "origin_viewers": self.origin_view.iter().map(|v| v.1).collect::<Vec<_>>(),
        });
        serde_json::json!({
            "topology": edges,
            "mode": format!("{:?}", self.mode).to_lowercase(),
            "streams": self.streams,
            "clients": self.clients.len(),
            "http_200": ok,
            "measured_s": self.measured.as_secs_f64(),
            "ttfb_ms": {"p50": pct_d(&ttfb, 0.5), "p95": pct_d(&ttfb, 0.95), "max": pct_d(&ttfb, 1.0)},
            "first_keyframe_ms": {"p50": pct_d(&key, 0.5), "p95": pct_d(&key, 0.95), "max": pct_d(&key, 1.0)},
            "latency_live_ms": {"p50": pct(&mut live, 0.5), "p95": pct(&mut live, 0.95), "p99": pct(&mut live, 0.99), "max": pct(&mut live, 1.0), "blocks": live.len()},
            "latency_end_ms": {"p50": pct(&mut end, 0.5), "p99": pct(&mut end, 0.99), "blocks": end.len()},
            "latency_backlog_ms": {"p50": pct(&mut backlog, 0.5), "max": pct(&mut backlog, 1.0), "blocks": backlog.len()},
            "stalls": stalls,
            "throughput_kbps": {"min": tput.iter().copied().fold(f64::INFINITY, f64::min), "mean": tput.iter().sum::<f64>() / tput.len().max(1) as f64},
            "server_cpu_us_per_client_s": self.server_cpu * 1e6 / self.client_seconds.max(1e-9),
            "server_cpu_s": self.server_cpu,
            "rss_per_client_kib": (self.rss_loaded_kib.saturating_sub(self.rss_base_kib)) as f64 / n,
            "rss_base_mib": self.rss_base_kib as f64 / 1024.0,
            "kernel_tcp_mem_pages": self.tcp_mem_pages,
            "tool_cpu_s": self.tool_cpu,
        })
    }

    fn json(&self) -> serde_json::Value {
        self.figures()
    }

    fn table(&self) -> String {
        let f = self.figures();
        let g = |a: &str, b: &str| f[a][b].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
        let mut out = String::new();
        out.push_str(&format!(
            "transcast-bench: {} × {} clients over {} stream(s), {:.0} s measured\n",
            f["mode"].as_str().unwrap_or(""),
            f["clients"],
            f["streams"],
            f["measured_s"].as_f64().unwrap_or(0.0)
        ));
        out.push_str(&format!(
            "  HTTP 200                 {}/{}\n",
            f["http_200"], f["clients"]
        ));
        out.push_str(&format!(
            "  time to first byte ms    p50 {}  p95 {}  max {}\n",
            g("ttfb_ms", "p50"),
            g("ttfb_ms", "p95"),
            g("ttfb_ms", "max")
        ));
        out.push_str(&format!(
            "  first keyframe ms        p50 {}  p95 {}  max {}\n",
            g("first_keyframe_ms", "p50"),
            g("first_keyframe_ms", "p95"),
            g("first_keyframe_ms", "max")
        ));
        out.push_str(&format!(
            "  latency live ms          p50 {}  p95 {}  p99 {}  max {}  ({} blocks)\n",
            g("latency_live_ms", "p50"),
            g("latency_live_ms", "p95"),
            g("latency_live_ms", "p99"),
            g("latency_live_ms", "max"),
            f["latency_live_ms"]["blocks"]
        ));
        out.push_str(&format!(
            "  latency, last quarter ms p50 {}  p99 {}\n",
            g("latency_end_ms", "p50"),
            g("latency_end_ms", "p99"),
        ));
        out.push_str(&format!(
            "  latency backlog ms       p50 {}  max {}  ({} blocks)\n",
            g("latency_backlog_ms", "p50"),
            g("latency_backlog_ms", "max"),
            f["latency_backlog_ms"]["blocks"]
        ));
        out.push_str(&format!("  stalls (>1 s gaps)       {}\n", f["stalls"]));
        out.push_str(&format!(
            "  throughput kbit/s        min {}  mean {}\n",
            g("throughput_kbps", "min"),
            g("throughput_kbps", "mean")
        ));
        out.push_str(&format!(
            "  server CPU               {:.1} µs per client-second ({:.2} s)\n",
            f["server_cpu_us_per_client_s"].as_f64().unwrap_or(0.0),
            f["server_cpu_s"].as_f64().unwrap_or(0.0)
        ));
        out.push_str(&format!(
            "  server RSS               {:.2} KiB per client (base {:.1} MiB); kernel TCP mem {} pages\n",
            f["rss_per_client_kib"].as_f64().unwrap_or(0.0),
            f["rss_base_mib"].as_f64().unwrap_or(0.0),
            f["kernel_tcp_mem_pages"]
        ));
        out.push_str(&format!(
            "  tool CPU                 {:.2} s",
            f["tool_cpu_s"].as_f64().unwrap_or(0.0)
        ));
        let t = &f["topology"];
        if self.edges > 0 {
            out.push_str(&format!(
                "\n  topology                 origin + {} edge(s){}; server CPU/RSS above are the origin's",
                self.edges,
                if self.chain { " + 1 edge of the first edge" } else { "" }
            ));
            for h in t["latency_by_hops_ms"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\n  video latency, {} hop(s)   p50 {:.1}  p99 {:.1} ms  ({} clients, {} blocks)",
                    h["hops"],
                    h["p50"].as_f64().unwrap_or(f64::NAN),
                    h["p99"].as_f64().unwrap_or(f64::NAN),
                    h["clients"],
                    h["blocks"]
                ));
            }
            for (label, key) in [
                ("an edge hop adds", "edge_hop_ms"),
                ("a second hop adds", "second_hop_ms"),
            ] {
                if let Some(p50) = t[key]["p50"].as_f64() {
                    out.push_str(&format!(
                        "\n  {label:<24} p50 {p50:.1}  p99 {:.1} ms (each block's first arrival; viewers' p50/p99 differ by {:.1}/{:.1})",
                        t[key]["p99"].as_f64().unwrap_or(f64::NAN),
                        t[key]["all_viewers"]["p50"].as_f64().unwrap_or(f64::NAN),
                        t[key]["all_viewers"]["p99"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }
            out.push_str(&format!(
                "\n  payloads never pushed    {}\n  origin relays/viewers    {} / {}",
                t["foreign_payloads"], t["origin_relays"], t["origin_viewers"]
            ));
        }
        out
    }

    /// Smoke criteria: every client got a 200, the WebM header, parsable data with a keyframe, and the first
    /// client's capture decodes with GStreamer. Times are never asserted.
    fn check_smoke(&self) -> anyhow::Result<()> {
        for (i, c) in self.clients.iter().enumerate() {
            anyhow::ensure!(c.status_ok, "client {i}: no 200");
            anyhow::ensure!(
                c.header_ok,
                "client {i}: did not start with the EBML header"
            );
            anyhow::ensure!(c.parse_error.is_none(), "client {i}: {:?}", c.parse_error);
            anyhow::ensure!(c.first_keyframe.is_some(), "client {i}: no video keyframe");
            anyhow::ensure!(!c.live_us.is_empty(), "client {i}: no live blocks");
        }
        if self.edges > 0 {
            for (i, c) in self.clients.iter().enumerate() {
                anyhow::ensure!(
                    c.foreign_payloads == 0,
                    "client {i} ({} hops): {} video payloads that were never pushed",
                    c.tier,
                    c.foreign_payloads
                );
            }
            for (relays, _) in &self.origin_view {
                anyhow::ensure!(
                    *relays == Some(self.edges as u64),
                    "the origin serves {relays:?} relays, not one per edge ({})",
                    self.edges
                );
            }
        }
        let cap = self.first_capture.as_ref().context("no capture")?;
        let frames = decode_frames(cap)?;
        anyhow::ensure!(
            frames > 0,
            "the first client's capture decoded to no frames"
        );
        Ok(())
    }
}

fn decode_frames(data: &[u8]) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.webm");
    std::fs::write(&path, data)?;
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! matroskademux ! vp8dec ! fakesink name=s signal-handoffs=true",
        path.display()
    ))?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n2 = n.clone();
    p.by_name("s").unwrap().connect("handoff", false, move |_| {
        n2.fetch_add(1, Ordering::Relaxed);
        None
    });
    run_to_eos(p.upcast_ref(), 60, "decoding a client's capture")?;
    Ok(n.load(Ordering::Relaxed))
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let tool_cpu0 = proc_cpu_secs("self");
    let ramp_s = (args.clients as f64 / args.ramp.max(1) as f64).ceil() as u64;
    let media_s = args.duration + ramp_s + RAMP_SLACK_S;
    eprintln!("generating {media_s} s of {:?} input...", args.mode);
    let data = make_media(args.mode, media_s, &args.size, args.kbps)?;
    let plan = Arc::new(schedule(&data)?);
    let server = start_server(args, &[]).await?;
    let pid = server.child.id().to_string();
    let addr = server.addr;
    let payloads = (args.edges > 0)
        .then(|| payload_schedule(&data))
        .transpose()?
        .map(Arc::new);

    // Pushes, paced by the bench itself (the server's pacer then has nothing to hold).
    let t0 = Instant::now() + Duration::from_millis(200);
    let names: Vec<String> = (0..args.streams).map(|i| format!("bench{i}")).collect();
    let mut pushers = Vec::new();
    for n in &names {
        pushers.push(tokio::spawn(push(
            addr,
            n.clone(),
            plan.clone(),
            t0,
            args.content_length,
        )));
    }
    // Wait until every stream serves a header, and a second more for the pipeline to settle.
    for n in &names {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(
                format!("HEAD /live/{n} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut r = Vec::new();
            let _ = s.read_to_end(&mut r).await;
            if r.starts_with(b"HTTP/1.1 200") {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "stream {n} did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Edges, each pulling from the origin (and with --chain one pulling from the first edge); every stream is
    // pulled once before the clients come, as a first viewer would.
    let mut edges: Vec<Server> = Vec::new();
    for i in 0..args.edges + usize::from(args.chain && args.edges > 0) {
        let upstream = if i < args.edges { addr } else { edges[0].addr };
        let e = start_server(args, &["--origin".into(), format!("http://{upstream}")]).await?;
        for n in &names {
            warm_up(e.addr, n).await?;
        }
        edges.push(e);
    }
    // Who watches where: (address, tier).
    let mut leaves: Vec<(SocketAddr, usize)> = edges
        .iter()
        .enumerate()
        .map(|(i, e)| (e.addr, if i < args.edges { 1 } else { 2 }))
        .collect();
    if leaves.is_empty() {
        leaves.push((addr, 0));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base = proc_rss_kib(&pid);

    // Ramp the clients (the origin's reference clients first).
    let stop = Arc::new(AtomicBool::new(false));
    let origin_clients = if args.edges > 0 {
        args.origin_clients
    } else {
        0
    };
    let total = args.clients + origin_clients;
    let mut tasks = Vec::with_capacity(total);
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1) as f64);
    let ramp0 = tokio::time::Instant::now();
    for i in 0..total {
        let name = names[i % names.len()].clone();
        let (at, tier) = if i < origin_clients {
            (addr, 0)
        } else {
            leaves[(i - origin_clients) % leaves.len()]
        };
        tasks.push(tokio::spawn(client(
            at,
            name,
            t0,
            stop.clone(),
            i == origin_clients,
            tier,
            payloads.clone(),
        )));
        // Against the ramp's own clock: sleeping `gap` each time would add every oversleep (a millisecond
        // timer on a loaded machine) and stretch a 10 s ramp to 20.
        tokio::time::sleep_until(ramp0 + gap * (i as u32 + 1)).await;
    }
    let ramp_took = ramp0.elapsed();
    anyhow::ensure!(
        ramp_took.as_secs_f64() < ramp_s as f64 + RAMP_SLACK_S as f64 / 2.0,
        "the ramp took {ramp_took:?}, planned {ramp_s} s: the pushed media would end before the measurement does"
    );
    // Measure with everyone connected. The server's CPU includes its source workers' (--source-isolation on),
    // which live as long as their sources.
    let cpu0 = tree_cpu_secs(&pid);
    let m0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let measured = m0.elapsed();
    let server_cpu = tree_cpu_secs(&pid) - cpu0;
    let rss_loaded = proc_rss_kib(&pid);
    let tcp_mem = tcp_mem_pages();
    // What the origin sees: one relay per edge that pulls from it, and its own viewers.
    let mut origin_view = Vec::new();
    if args.edges > 0 {
        for n in &names {
            let v = api_get(addr, &format!("/api/v1/streams/{n}")).await?;
            origin_view.push((
                v["clients"]["relays"].as_u64(),
                v["clients"]["now"].as_u64(),
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await?);
    }
    for p in pushers {
        p.abort();
    }
    let first_capture = clients.iter_mut().find_map(|c| c.capture.take());
    drop(edges);
    drop(server);
    Ok(Report {
        edges: args.edges,
        chain: args.chain && args.edges > 0,
        origin_view,
        mode: args.mode,
        streams: args.streams,
        client_seconds: measured.as_secs_f64()
            * clients.iter().filter(|c| c.status_ok).count() as f64,
        clients,
        measured,
        server_cpu,
        rss_base_kib: rss_base,
        rss_loaded_kib: rss_loaded,
        tcp_mem_pages: tcp_mem,
        tool_cpu: proc_cpu_secs("self") - tool_cpu0,
        first_capture,
    })
}

/// CPU seconds of the calling thread (user + system, which includes the loopback receive processing the
/// kernel runs inside the thread's `write` calls).
fn thread_cpu_secs() -> f64 {
    proc_cpu_secs("thread-self")
}

/// `--floor`: the kernel's cost of the write pattern transcast produces, with nothing of transcast in it.
async fn floor(args: &Args) -> anyhow::Result<()> {
    let media_s = args.duration + 2;
    eprintln!("generating {media_s} s of passthrough input...");
    let data = make_media(Mode::Passthrough, media_s, &args.size, args.kbps)?;
    let plan = schedule(&data)?;
    // Group the blocks into writes: one per block, or everything due within a window.
    let window = Duration::from_millis(args.floor_window_ms);
    let mut writes: Vec<(Duration, Vec<u8>)> = Vec::new();
    for (at, bytes) in plan {
        let due = if window.is_zero() {
            at
        } else {
            let w = window.as_nanos();
            Duration::from_nanos(((at.as_nanos() / w + 1) * w) as u64)
        };
        match writes.last_mut() {
            Some((d, buf)) if *d == due => buf.extend_from_slice(&bytes),
            _ => writes.push((due, bytes.to_vec())),
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(args.clients);
    let mut sockets = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let c = TcpStream::connect(addr).await?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        sockets.push(s);
        readers.push(tokio::spawn(async move {
            let mut c = c;
            let mut buf = vec![0u8; 64 << 10];
            while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
        }));
    }
    let duration = Duration::from_secs(args.duration);
    let clients = args.clients;
    let writer = std::thread::spawn(move || -> anyhow::Result<(f64, usize, usize)> {
        use std::io::Write;
        let start = Instant::now();
        let cpu0 = thread_cpu_secs();
        let (mut n, mut bytes) = (0usize, 0usize);
        for (due, buf) in &writes {
            if *due > duration {
                break;
            }
            if let Some(wait) = (start + *due).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for s in sockets.iter_mut() {
                s.write_all(buf)?;
            }
            n += 1;
            bytes += buf.len();
        }
        let cpu = thread_cpu_secs() - cpu0;
        drop(sockets);
        Ok((cpu, n, bytes))
    });
    let (cpu, n, bytes) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    for r in readers {
        let _ = r.await;
    }
    let secs = args.duration as f64;
    let us = cpu * 1e6 / (secs * clients as f64);
    println!(
        "kernel floor: {clients} loopback sockets, {:.1} writes/s each of {:.0} B on average, window {} ms",
        n as f64 / secs,
        bytes as f64 / n.max(1) as f64,
        args.floor_window_ms
    );
    println!(
        "  writer CPU               {us:.1} µs per client-second ({cpu:.2} s), {:.2} µs per write",
        cpu * 1e6 / (n * clients).max(1) as f64
    );
    println!(
        "{}",
        serde_json::json!({"floor": true, "clients": clients, "window_ms": args.floor_window_ms,
            "writes_per_s": n as f64 / secs, "bytes_per_write": bytes as f64 / n.max(1) as f64,
            "cpu_us_per_client_s": us})
    );
    Ok(())
}
