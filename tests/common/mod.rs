//! Shared test harness: a real daemon on 127.0.0.1:0, media made by GStreamer test sources (once per test
//! binary), real HTTP clients, and decoders (GStreamer, ffprobe where installed) to check what came out.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use transcast::config::{Config, ServeArgs};

pub const SECONDS: u64 = 3;
pub const FPS: u64 = 30;
pub const FRAMES: u64 = SECONDS * FPS;

pub fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TRANSCAST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// A daemon in this process, stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// The SRT listener (`--srt-listen`).
    pub srt_addr: Option<SocketAddr>,
    pub state: Arc<transcast::state::AppState>,
    shutdown: CancellationToken,
    /// The state directory, unless the caller chose one.
    _state_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts with test defaults (no pacing, generous limits), adjusted by `f`.
    pub async fn start(f: impl FnOnce(&mut ServeArgs)) -> Server {
        Self::try_start(f).await.expect("server starts")
    }

    pub async fn try_start(
        f: impl FnOnce(&mut ServeArgs),
    ) -> Result<Server, transcast::error::Error> {
        init();
        let state_dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            pace: false,
            max_transcodes: Some(64),
            // Most tests check how one push is served and ended; the failover tests turn the slate on.
            fallback: transcast::config::Fallback::None,
            resume_grace: 0.3,
            state_dir: state_dir.path().to_path_buf(),
            ..ServeArgs::default()
        };
        f(&mut args);
        let own_dir = args.state_dir == state_dir.path();
        let config = Config::from_args(args).unwrap();
        let shutdown = CancellationToken::new();
        let running = transcast::control::app::start(config, shutdown.clone()).await?;
        Ok(Server {
            addr: running.addr,
            srt_addr: running.srt_addr,
            state: running.state,
            shutdown,
            _state_dir: own_dir.then_some(state_dir),
        })
    }

    /// Starts from a config file, as `transcast serve --config FILE --listen 127.0.0.1:0 …` would (the
    /// state directory is a new temporary one; `flags` come after and override the file).
    pub async fn start_with_file(file: &std::path::Path, flags: &[&str]) -> Server {
        init();
        let state_dir = tempfile::tempdir().unwrap();
        let mut argv: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            state_dir.path().into(),
        ];
        argv.extend(flags.iter().map(Into::into));
        let (config, _) = transcast::config::file::load(file, &argv).expect("the file loads");
        let shutdown = CancellationToken::new();
        let running = transcast::control::app::start(config, shutdown.clone())
            .await
            .expect("server starts");
        Server {
            addr: running.addr,
            srt_addr: running.srt_addr,
            state: running.state,
            shutdown,
            _state_dir: Some(state_dir),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/live/{name}", self.addr)
    }

    /// Waits (up to 10 s) until a stream has left the registry (ending streams included): a push is
    /// answered when its body is taken, and its stream ends after playing out and --resume-grace.
    pub async fn wait_gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.state.registry.contains(name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {name} did not end"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A loopback port nothing listens on now (bound and let go: whoever is started on it takes it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `kB` field of `/proc/{pid}/status` (`pid` may be `self`): `VmRSS`, `VmHWM` (the peak).
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The body of a `GET` as text (whatever its status).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// POSTs JSON and reads the JSON answer (Null when it is not JSON).
pub async fn post_json(url: &str, body: serde_json::Value) -> serde_json::Value {
    let text = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_default()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Test media

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Media {
    WebmVp8Vorbis,
    MatroskaH264Vorbis,
    Mp4Faststart,
    Mp4Fragmented,
    Mp4MoovAtEnd,
    MpegTs,
    OggTheoraVorbis,
    Flv,
    Mp3,
    OggOpus,
}

impl Media {
    pub const PLAYABLE: [Media; 9] = [
        Media::WebmVp8Vorbis,
        Media::MatroskaH264Vorbis,
        Media::Mp4Faststart,
        Media::Mp4Fragmented,
        Media::MpegTs,
        Media::OggTheoraVorbis,
        Media::Flv,
        Media::Mp3,
        Media::OggOpus,
    ];

    pub fn has_video(self) -> bool {
        !matches!(self, Media::Mp3 | Media::OggOpus)
    }

    fn launch(self, out: &Path) -> String {
        let v = format!(
            "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,width=320,height=240,framerate={FPS}/1"
        );
        // 44.1 kHz in 1024-sample buffers: 130 buffers ≈ 3.02 s.
        let a = "audiotestsrc num-buffers=130 samplesperbuffer=1024 wave=sine ! audio/x-raw,rate=44100,channels=2 ! audioconvert";
        let h264 = "x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse";
        let aac = "avenc_aac ! aacparse";
        let o = out.display();
        match self {
            Media::WebmVp8Vorbis => format!(
                "{v} ! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=400000 ! webmmux name=m ! filesink location={o} {a} ! vorbisenc ! m."
            ),
            Media::MatroskaH264Vorbis => {
                format!(
                    "{v} ! {h264} ! matroskamux name=m ! filesink location={o} {a} ! vorbisenc ! m."
                )
            }
            Media::Mp4Faststart => {
                format!(
                    "{v} ! {h264} ! mp4mux faststart=true name=m ! filesink location={o} {a} ! {aac} ! m."
                )
            }
            Media::Mp4Fragmented => {
                format!(
                    "{v} ! {h264} ! mp4mux fragment-duration=500 name=m ! filesink location={o} {a} ! {aac} ! m."
                )
            }
            Media::Mp4MoovAtEnd => {
                format!("{v} ! {h264} ! mp4mux name=m ! filesink location={o} {a} ! {aac} ! m.")
            }
            Media::MpegTs => {
                format!("{v} ! {h264} ! mpegtsmux name=m ! filesink location={o} {a} ! {aac} ! m.")
            }
            Media::OggTheoraVorbis => {
                format!(
                    "{v} ! theoraenc ! oggmux name=m ! filesink location={o} {a} ! vorbisenc ! m."
                )
            }
            Media::Flv => {
                format!("{v} ! {h264} ! flvmux name=m ! filesink location={o} {a} ! {aac} ! m.")
            }
            Media::Mp3 => format!("{a} ! lamemp3enc ! filesink location={o}"),
            Media::OggOpus => {
                format!("{a} ! audioresample ! opusenc ! oggmux ! filesink location={o}")
            }
        }
    }
}

fn media_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("transcast-media")
            .tempdir()
            .unwrap()
    })
    .path()
}

/// The bytes of a test clip, generated on first use in this test binary.
pub fn media(kind: Media) -> Bytes {
    static CACHE: OnceLock<Mutex<HashMap<Media, Arc<OnceLock<Bytes>>>>> = OnceLock::new();
    let cell = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(kind)
        .or_default()
        .clone();
    cell.get_or_init(|| {
        init();
        let path = media_dir().join(format!("{kind:?}.bin"));
        run_to_eos(&kind.launch(&path));
        Bytes::from(std::fs::read(&path).unwrap())
    })
    .clone()
}

pub fn run_to_eos(launch: &str) {
    let p = gst::parse::launch(launch).unwrap_or_else(|e| panic!("{launch}: {e}"));
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("media generation finishes");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{launch}: {} ({:?})", e.error(), e.debug());
    }
    p.set_state(gst::State::Null).unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// Pushing and watching

#[derive(Debug)]
pub struct PushResult {
    pub status: u16,
    pub json: serde_json::Value,
}

/// Starts a push of `data` whose pace the caller controls through the returned sender.
pub fn push_stream(
    url: &str,
    len: Option<usize>,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<PushResult>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let mut req = client().put(url).body(reqwest::Body::wrap_stream(stream));
    if let Some(len) = len {
        req = req.header(reqwest::header::CONTENT_LENGTH, len);
    }
    let task = tokio::spawn(async move {
        let resp = req.send().await.expect("push request");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        PushResult {
            status,
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        }
    });
    (tx, task)
}

/// Pushes a whole file at once (Content-Length or chunked) and returns the source's answer.
pub async fn push(url: &str, data: Bytes, chunked: bool) -> PushResult {
    let (tx, task) = push_stream(url, (!chunked).then_some(data.len()));
    for c in chunk(&data, 64 << 10) {
        if tx.send(c).await.is_err() {
            break;
        }
    }
    drop(tx);
    task.await.unwrap()
}

/// A chunked push over a bare socket, so a test can cut it mid-body (the client dies, no terminator).
pub async fn raw_push(server: &Server, name: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(
        format!("PUT /live/{name} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    sock
}

/// A push of `clip` that can be lost: a chunked upload over a bare socket, 16 KiB every 250 ms (about real time
/// for the 12 s clips), held open after its last byte. Aborting the task drops the socket mid-body, without the
/// terminator: the source is lost, not finished.
pub async fn losable_push(server: &Server, name: &str, clip: Bytes) -> tokio::task::JoinHandle<()> {
    let mut sock = raw_push(server, name).await;
    tokio::spawn(async move {
        for c in chunk(&clip, 16 << 10) {
            if try_send_chunk(&mut sock, &c).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        std::future::pending::<()>().await;
    })
}

/// One chunk of a [`raw_push`].
pub async fn try_send_chunk(sock: &mut tokio::net::TcpStream, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    sock.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    sock.write_all(data).await?;
    sock.write_all(b"\r\n").await
}

pub async fn send_chunk(sock: &mut tokio::net::TcpStream, data: &[u8]) {
    try_send_chunk(sock, data).await.unwrap();
}

pub fn chunk(data: &Bytes, size: usize) -> Vec<Bytes> {
    (0..data.len())
        .step_by(size)
        .map(|i| data.slice(i..(i + size).min(data.len())))
        .collect()
}

#[derive(Debug)]
pub struct Watched {
    pub content_type: String,
    pub body: Bytes,
}

/// Opens GET on a stream that is (about to be) live, retrying 404s for up to 10 s; resolves once the
/// response head arrived (the client is subscribed).
pub async fn open_watch(url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client().get(url).send().await.expect("GET");
        if resp.status() != 404 || tokio::time::Instant::now() > deadline {
            assert_eq!(resp.status(), 200, "GET {url}");
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn read_all(resp: reqwest::Response) -> Watched {
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.bytes())
        .await
        .expect("stream ends within 60 s")
        .expect("clean end of the response");
    Watched { content_type, body }
}

/// Pushes `data` and watches the stream from its very start: the upload trickles until the watcher is
/// subscribed (so it joins at the first keyframe), then goes at full speed.
pub async fn push_and_watch(url: &str, data: Bytes, chunked: bool) -> (PushResult, Watched) {
    let (tx, push) = push_stream(url, (!chunked).then_some(data.len()));
    let watch_url = url.to_string();
    let watcher = tokio::spawn(async move { open_watch(&watch_url).await });
    let mut pieces = chunk(&data, 1024).into_iter();
    let mut watcher = Some(watcher);
    let mut resp = None;
    for piece in pieces.by_ref() {
        if tx.send(piece).await.is_err() {
            break;
        }
        if let Some(w) = watcher.as_ref() {
            if w.is_finished() {
                resp = Some(watcher.take().unwrap().await.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for piece in pieces {
        if tx.send(piece).await.is_err() {
            break;
        }
    }
    drop(tx);
    let resp = match resp {
        Some(r) => r,
        None => watcher.unwrap().await.unwrap(),
    };
    let watched = read_all(resp).await;
    (push.await.unwrap(), watched)
}

pub fn ebml_headers(data: &[u8]) -> usize {
    data.windows(4).filter(|w| *w == EBML_MAGIC).count()
}

/// Reads a response to its end (or until `limit`), returning what came and whether it ended cleanly.
pub async fn capture(resp: reqwest::Response, limit: Duration) -> (Vec<u8>, bool) {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(b))) => out.extend_from_slice(&b),
            Ok(Some(Err(_))) => return (out, false),
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// `GET /api/v1/streams/{name}` (null when it fails).
pub async fn stream_json(server: &Server, name: &str) -> serde_json::Value {
    client()
        .get(format!("http://{}/api/v1/streams/{name}", server.addr))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap_or_default())
        .unwrap()
}

/// Waits (up to `within`) until the stream's API state is `state`.
pub async fn wait_state(
    server: &Server,
    name: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = stream_json(server, name).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Checking output

#[derive(Debug, Default, Clone)]
pub struct Track {
    pub caps: String,
    /// (pts ns, keyframe, payload)
    pub buffers: Vec<(Option<u64>, bool, Bytes)>,
}

#[derive(Debug, Default)]
pub struct Demuxed {
    pub video: Option<Track>,
    pub audio: Option<Track>,
}

pub fn write_temp(data: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    f
}

/// `filesrc ! ELEMENT` over `data` in a temporary file (kept alive by the returned handle).
fn file_pipeline(
    data: &[u8],
    element: &str,
) -> (gst::Pipeline, gst::Element, tempfile::NamedTempFile) {
    init();
    let file = write_temp(data);
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", file.path())
        .build()
        .unwrap();
    let el = gst::ElementFactory::make(element).build().unwrap();
    pipeline.add_many([&src, &el]).unwrap();
    src.link(&el).unwrap();
    (pipeline, el, file)
}

/// Elementary buffers of a WebM/Matroska file as matroskademux sees them.
pub fn demux(data: &[u8], container_demuxer: &str) -> Demuxed {
    let (pipeline, demux, _file) = file_pipeline(data, container_demuxer);
    let out: Arc<Mutex<Demuxed>> = Default::default();
    let pw = pipeline.downgrade();
    let o = out.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pw.upgrade() else { return };
        // A pad may come before its caps are set: what it can produce is as good to tell its kind.
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps.structure(0).unwrap().name().to_string();
        // async=false: two sinks fed by one demuxer thread would otherwise deadlock in preroll.
        let sink = gst_app::AppSink::builder().sync(false).build();
        sink.set_property("async", false);
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        let video = name.starts_with("video/");
        {
            let mut o = o.lock().unwrap();
            let slot = if video { &mut o.video } else { &mut o.audio };
            *slot = Some(Track {
                caps: caps.to_string(),
                buffers: vec![],
            });
        }
        let o = o.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let b = sample.buffer().unwrap();
                    let data = Bytes::copy_from_slice(&b.map_readable().unwrap());
                    let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    let mut o = o.lock().unwrap();
                    let t = if video {
                        o.video.as_mut()
                    } else {
                        o.audio.as_mut()
                    };
                    t.unwrap()
                        .buffers
                        .push((b.pts().map(|t| t.nseconds()), key, data));
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    });
    run_pipeline(&pipeline);
    std::mem::take(&mut *out.lock().unwrap())
}

#[derive(Debug, Default, Clone)]
pub struct Decoded {
    pub video_frames: u64,
    pub width: i32,
    pub height: i32,
    pub video_pts_monotonic: bool,
    pub audio_ns: u64,
    pub audio_pts_monotonic: bool,
}

/// Decodes a file with decodebin: frame count, size, audio duration, timestamp order.
pub fn decode(data: &[u8]) -> Decoded {
    let (pipeline, dec, _file) = file_pipeline(data, "decodebin");
    let out = Arc::new(Mutex::new(Decoded {
        video_pts_monotonic: true,
        audio_pts_monotonic: true,
        ..Default::default()
    }));
    let pw = pipeline.downgrade();
    let o = out.clone();
    dec.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pw.upgrade() else { return };
        // A pad may come before its caps are set: what it can produce is as good to tell its kind.
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let s = caps.structure(0).unwrap();
        let video = s.name().starts_with("video/");
        if video {
            let mut o = o.lock().unwrap();
            o.width = s.get("width").unwrap_or(0);
            o.height = s.get("height").unwrap_or(0);
        }
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        let o = o.clone();
        let mut last: Option<u64> = None;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let b = sample.buffer().unwrap();
                    let pts = b.pts().map(|t| t.nseconds());
                    let mut o = o.lock().unwrap();
                    if video
                        && o.width == 0
                        && let Some(s) = sample.caps().and_then(|c| c.structure(0))
                    {
                        o.width = s.get("width").unwrap_or(0);
                        o.height = s.get("height").unwrap_or(0);
                    }
                    let monotonic = match (last, pts) {
                        (Some(l), Some(p)) => p >= l,
                        _ => true,
                    };
                    last = pts.or(last);
                    if video {
                        o.video_frames += 1;
                        o.video_pts_monotonic &= monotonic;
                    } else {
                        o.audio_ns += b.duration().map_or(0, |d| d.nseconds());
                        o.audio_pts_monotonic &= monotonic;
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    });
    run_pipeline(&pipeline);
    out.lock().unwrap().clone()
}

fn run_pipeline(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        Some(gst::MessageView::Error(e)) => {
            panic!("decoding failed: {} ({:?})", e.error(), e.debug())
        }
        _ => panic!("decoding timed out"),
    }
}

/// ffprobe's view (codec names and counted frames per stream), or None where ffprobe is not installed.
pub fn ffprobe(data: &[u8]) -> Option<Vec<(String, u64)>> {
    let file = write_temp(data);
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(file.path())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["codec_name"].as_str().unwrap_or("").to_string(),
                    s["nb_read_frames"]
                        .as_str()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                )
            })
            .collect(),
    )
}

pub const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

pub fn tempdir() -> PathBuf {
    media_dir().to_path_buf()
}

/// 12 s clips: long enough to watch from the start and to join 5 s in and still see 3 s advance.
pub fn long_clip(kind: &str) -> Bytes {
    static CLIPS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Bytes>>> =
        OnceLock::new();
    let mut clips = CLIPS.get_or_init(Default::default).lock().unwrap();
    clips
        .entry(kind.to_string())
        .or_insert_with(|| {
            init();
            let dir = tempdir();
            let out = dir.join(format!("long-{kind}"));
            let o = out.display();
            let v = "videotestsrc num-buffers=360 pattern=smpte ! video/x-raw,width=320,height=240,framerate=30/1 ! timeoverlay";
            let a = "audiotestsrc num-buffers=520 samplesperbuffer=1024 ! audio/x-raw,rate=44100 ! audioconvert";
            run_to_eos(&match kind {
                "ts" => format!(
                    "{v} ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse ! mpegtsmux name=m ! filesink location={o} {a} ! avenc_aac ! aacparse ! m."
                ),
                "webm" => format!(
                    "{v} ! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=400000 ! webmmux name=m ! filesink location={o} {a} ! vorbisenc ! m."
                ),
                "opus" => format!("{a} ! audioresample ! opusenc ! oggmux ! filesink location={o}"),
                other => panic!("{other}"),
            });
            Bytes::from(std::fs::read(&out).unwrap())
        })
        .clone()
}

/// A JSON endpoint on a loopback port, as a platform runs one for transcast: records each POSTed body (requests
/// read one after another on a keep-alive connection) and answers what `respond` gives for it, or never (`None`).
pub async fn json_endpoint(
    path: &str,
    respond: fn(&serde_json::Value) -> Option<&'static [u8]>,
) -> (String, std::sync::Arc<Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let request = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|end| {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        (end + 4, len)
                    });
                    let Some((start, len)) =
                        request.filter(|(start, len)| buf.len() >= start + len)
                    else {
                        let mut b = [0u8; 4096];
                        match sock.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let body: Vec<u8> = buf.drain(..start + len).skip(start).collect();
                    let q: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().push(q.clone());
                    let Some(answer) = respond(&q) else {
                        std::future::pending::<()>().await;
                        return;
                    };
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

/// A platform's hook endpoint: records each event, answering 204, or never answering at all.
pub async fn hook_receiver(
    answer: bool,
) -> (String, std::sync::Arc<Mutex<Vec<serde_json::Value>>>) {
    const OK: &[u8] = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
    if answer {
        json_endpoint("/hooks", |_| Some(OK)).await
    } else {
        json_endpoint("/hooks", |_| None).await
    }
}

/// A platform's auth endpoint (`--auth-url`): lets in the key `good` (204), refuses `nope` (403 with a message)
/// and a missing key (401); with `silent`, takes the request and never answers. Each question is recorded.
pub async fn auth_service(silent: bool) -> (String, std::sync::Arc<Mutex<Vec<serde_json::Value>>>) {
    if silent {
        return json_endpoint("/auth", |_| None).await;
    }
    json_endpoint("/auth", |q| {
        Some(match q["key"].as_str() {
            Some("good") => b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            Some(_) => b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 25\r\n\r\n{\"message\": \"not yours\"}\n",
            None => b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
        })
    })
    .await
}
