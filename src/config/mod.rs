//! Runtime configuration: the `serve` command line, with every limit named and documented, and the
//! values the pipeline templates are filled with.
//!
//! Defaults are embedded, so `transcast serve` with no options is a working daemon on 127.0.0.1:8080.

pub mod file;
pub mod streams;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ipnet::IpNet;

/// Where a new HTTP client starts reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum JoinMode {
    /// Header, then the cached group of pictures since the last keyframe: playback starts at once.
    #[default]
    Gop,
    /// Header, then wait for the next keyframe cluster: lowest latency, slower start.
    Live,
}

/// What `--auth-url`'s failures (no answer, an error, another status) mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuthDefault {
    /// Refuse (503): nobody gets in while the auth service is down.
    #[default]
    Deny,
    /// Let the client through (and log it): the service being down stops nobody.
    Allow,
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Lines for people (colours only on a terminal, and never with `NO_COLOR` set).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The video codec of a transcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 (`video-encode.pipeline`): every browser, least CPU.
    #[default]
    Vp8,
    /// VP9 (`video-encode-vp9.pipeline`): fewer bits for the same picture, about twice the CPU.
    Vp9,
}

/// The audio codec of a transcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodec {
    /// Vorbis (`audio-encode.pipeline`), quality-based (`--audio-quality`).
    #[default]
    Vorbis,
    /// Opus (`audio-encode-opus.pipeline`), at `--audio-kbps`: lower delay, what WebRTC speaks.
    Opus,
}

/// Where a source's bytes are demuxed and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Isolation {
    /// In the daemon's process.
    #[default]
    Off,
    /// In a worker process of its own (`transcast worker`), locked down and limited: a crash or a blow-up in a
    /// demuxer or decoder ends that source only.
    On,
}

/// Which WebM writer a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Muxer {
    /// transcast's writer: blocks go out as they arrive (no interleaving wait).
    #[default]
    Direct,
    /// GStreamer's `webmmux` (the `mux.pipeline` template): holds each block until every track has data.
    Webmmux,
}

/// What a stream shows while it has no source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fallback {
    /// A generated picture that names the stream and says it waits for its source, plus silence.
    #[default]
    Slate,
    /// A media file, looped, converted to the stream's caps.
    File(PathBuf),
    /// Nothing: the stream ends when its source is lost.
    None,
}

impl Fallback {
    /// Whether a stream can outlive its source.
    pub fn enabled(&self) -> bool {
        *self != Fallback::None
    }
}

/// `slate`, `none`, or the path of a readable file.
pub(crate) fn parse_fallback(v: &str) -> Result<Fallback, String> {
    match v {
        "slate" => Ok(Fallback::Slate),
        "none" => Ok(Fallback::None),
        path => {
            let p = PathBuf::from(path);
            std::fs::File::open(&p).map_err(|e| {
                format!("--fallback {path}: {e} (use slate, none, or a media file)")
            })?;
            Ok(Fallback::File(p))
        }
    }
}

/// `--pull NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullArg {
    pub name: String,
    pub url: String,
}

/// `NAME=URL` with a `scheme://` URL (the name is checked with the stream name rules at startup).
fn parse_pull(v: &str) -> Result<PullArg, String> {
    let (name, url) = v
        .split_once('=')
        .ok_or_else(|| format!("--pull {v}: expected NAME=URL"))?;
    check_url(url).map_err(|e| format!("--pull {v}: {e}"))?;
    Ok(PullArg {
        name: name.to_string(),
        url: url.to_string(),
    })
}

/// An origin is another transcast (or anything serving `/live/NAME` the same way) over plain HTTP.
fn parse_hook_url(v: &str) -> Result<String, String> {
    check_url(v).map_err(|e| format!("--hook-url {v}: {e}"))?;
    if !v.starts_with("http://") {
        return Err(format!(
            "--hook-url {v}: an http:// URL (for TLS, a local proxy in front of the endpoint)"
        ));
    }
    Ok(v.to_string())
}

fn parse_origin(v: &str) -> Result<String, String> {
    check_url(v).map_err(|e| format!("--origin {v}: {e}"))?;
    if !v.starts_with("http://") {
        return Err(format!(
            "--origin {v}: an origin is an http:// URL (put TLS in front of the edges, not between them)"
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// A URL with a scheme, no whitespace or control characters.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("a URL starts with scheme:// (http://, srt://, udp://...)".into());
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() {
        return Err("a URL starts with scheme:// and names a host or path".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL has no spaces or control characters".into());
    }
    Ok(())
}

/// Options of `transcast serve`. Each field documents its default; `--help` prints the same text.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML file whose keys are these flags without their dashes (`max-clients = 5000`; see
    /// transcast.example.toml). Flags and their environment variables override it.
    #[arg(long, value_name = "FILE", env = file::ENV)]
    pub config: Option<PathBuf>,

    /// Log format: `text` (colours only on a terminal, never with NO_COLOR) or `json` (one object per line).
    /// The level comes from TRANSCAST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TRANSCAST_LISTEN")]
    pub listen: SocketAddr,

    /// Address of an SRT listener (off by default): callers (OBS, `ffmpeg -f mpegts srt://…`, `srtsink`) push
    /// MPEG-TS to the stream their streamid names, `publish:NAME` (`publish:NAME:KEY` with the token server)
    /// or `#!::r=NAME,m=publish[,s=KEY]`; many callers share the port. Needs libsrt 1.5 (libsrt1.5-gnutls).
    #[arg(long, value_name = "ADDR")]
    pub srt_listen: Option<SocketAddr>,

    /// Directory of pipeline templates (`*.pipeline`) that override the embedded ones, file by file.
    #[arg(long, env = "TRANSCAST_PIPELINES")]
    pub pipelines: Option<PathBuf>,

    /// Where new clients start: `gop` (cached keyframe group, instant start) or `live` (next keyframe).
    #[arg(long, value_enum, default_value_t = JoinMode::Gop)]
    pub join: JoinMode,

    /// Seconds a client may stay behind the live edge before it is disconnected. A client that falls
    /// behind is first moved forward to the newest keyframe cluster.
    #[arg(long, default_value_t = 5.0)]
    pub max_lag: f64,

    /// Maximum number of concurrently pushed streams (503 beyond).
    #[arg(long, default_value_t = 64)]
    pub max_streams: usize,

    /// Maximum number of concurrent GET clients over all streams (503 beyond).
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,

    /// Maximum number of concurrently transcoding streams (503 beyond). Passthrough streams do not count.
    /// Default: twice the number of CPUs.
    #[arg(long)]
    pub max_transcodes: Option<usize>,

    /// Seconds a source may send nothing before its stream is ended, so a dead source frees its name.
    #[arg(long, default_value_t = 10.0)]
    pub source_timeout: f64,

    /// Pace input that arrives faster than real time (a file upload) to real time. `--no-pace` turns it
    /// off (output as fast as the input comes; useful for tests and batch conversion).
    #[arg(long = "no-pace", action = clap::ArgAction::SetFalse)]
    pub pace: bool,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Byte cap of the keyframe group cached for joiners; a stream whose group is larger makes new
    /// clients wait for the next keyframe instead.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_gop_bytes: usize,

    /// Enables the token server: only callers in these masks (CIDR or address, repeatable, IPv4/IPv6) may use
    /// the token and stream-control API, and pushing a stream needs a session token.
    #[arg(long = "token-server", value_name = "CIDR", value_parser = parse_mask)]
    pub token_server: Vec<ipnet::IpNet>,

    /// Without --token-server: masks whose callers may use the control API. Default: loopback only.
    #[arg(long = "api-allow", value_name = "CIDR", value_parser = parse_mask)]
    pub api_allow: Vec<ipnet::IpNet>,

    /// Proxies whose X-Forwarded-For is believed for the address checks (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_mask)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// RTP/UDP target `IP:port` every stream is rebroadcast to (repeatable): video RTP on port P, RTCP P+1,
    /// audio RTP P+2, RTCP P+3. More targets come from session tokens and the API.
    #[arg(long = "rtp-target", value_name = "IP:PORT")]
    pub rtp_target: Vec<std::net::SocketAddr>,

    /// Masks RTP/UDP targets must fall in (repeatable), so the daemon cannot be made a UDP reflector.
    /// Default: loopback only.
    #[arg(long = "rtp-allow", value_name = "CIDR", value_parser = parse_mask)]
    pub rtp_allow: Vec<ipnet::IpNet>,

    /// Directory for persistent state (token sessions). Created if missing.
    #[arg(long, default_value = "transcast-state", env = "TRANSCAST_STATE_DIR")]
    pub state_dir: PathBuf,

    /// WebM writer: `direct` (transcast's, blocks go out as they arrive) or `webmmux` (GStreamer's muxer from
    /// the `mux.pipeline` template, which holds each block until every track has data: about 14 ms more latency
    /// with audio and video).
    #[arg(long, value_enum, default_value_t = Muxer::Direct)]
    pub muxer: Muxer,

    /// What a stream shows when its source is lost (connection reset or closed mid-body, --source-timeout,
    /// an input or decode error): `slate` (a generated picture naming the stream, plus silence, at the
    /// stream's size and rate), FILE (any media file transcast can read, looped and converted to the stream's
    /// size and rate), or `none` (the stream ends with its source, as a plain proxy does).
    #[arg(long, default_value = "slate", value_parser = parse_fallback, value_name = "slate|none|FILE")]
    pub fallback: Fallback,

    /// Seconds a stream stays on its fallback waiting for its source before it ends for every viewer.
    #[arg(long, default_value_t = 30.0)]
    pub linger: f64,

    /// Seconds a stream whose upload ended cleanly (Content-Length reached, or the chunked terminator) waits
    /// for a continuation (`Content-Range: bytes N-M/*`, as souphttpclientsink sends) before it ends. 0 ends
    /// it as soon as the input is played out.
    #[arg(long, default_value_t = 2.0)]
    pub resume_grace: f64,

    /// A stream read from a URL, always on (repeatable): `NAME=URL`. Any byte stream GStreamer reads
    /// (`http://`, `https://`, `srt://`, `udp://` MPEG-TS, `file://`) in any container transcast reads from a
    /// push, or `rtsp://` (its streams remuxed to Matroska). A pull that fails or ends is retried with backoff (1 s doubling to 10 s, with jitter)
    /// while its stream shows its fallback.
    #[arg(long = "pull", value_name = "NAME=URL", value_parser = parse_pull)]
    pub pull: Vec<PullArg>,

    /// Edge mode: the origin to relay streams from (`http://host:port`; repeatable, tried in order, the next
    /// one when one fails). A watch of a name this server does not have pulls `ORIGIN/live/NAME` on demand,
    /// remuxed as it comes, and shares it with every viewer of that name here.
    #[arg(long = "origin", value_name = "URL", value_parser = parse_origin)]
    pub origin: Vec<String>,

    /// The key this edge presents to its origins (`Authorization: Bearer KEY`), so it may relay streams whose
    /// session needs a view key; it then checks each of its own viewers' keys with the origin.
    #[arg(long, env = "TRANSCAST_ORIGIN_KEY", hide_env_values = true)]
    pub origin_key: Option<String>,

    /// A platform's endpoint (`http://`) that gets a JSON POST on every stream start, source loss and
    /// return, stream end and token session added or revoked. Queued and retried apart from the media: a
    /// slow or dead endpoint delays nothing.
    #[arg(long, value_name = "URL", value_parser = parse_hook_url)]
    pub hook_url: Option<String>,

    /// A platform's endpoint (`http://`) that decides who may push and watch: it gets a JSON POST
    /// `{"action": "push"|"view", "stream", "ip", "key"}` per new source and per watch, after transcast's own
    /// checks; 2xx lets the client in, 401/403 refuses it.
    #[arg(long, value_name = "URL", value_parser = parse_hook_url)]
    pub auth_url: Option<String>,

    /// Seconds `--auth-url` has to answer.
    #[arg(long, default_value_t = 2.0)]
    pub auth_timeout: f64,

    /// What a failure of `--auth-url` (no answer, an error, another status) means: `deny` (503) or `allow`.
    #[arg(long, value_enum, default_value_t = AuthDefault::Deny)]
    pub auth_default: AuthDefault,

    /// Seconds an answer of `--auth-url` is kept for the same action, stream, address and key.
    #[arg(long, default_value_t = 5.0)]
    pub auth_cache: f64,

    /// On an origin: the key its edges present (their `--origin-key`). It stands in for any stream's view key.
    #[arg(long, env = "TRANSCAST_EDGE_KEY", hide_env_values = true)]
    pub edge_key: Option<String>,

    /// Seconds a viewer of an edge waits for an on-demand pull to deliver its first media (then 504, or 404 when
    /// the origin has no such stream).
    #[arg(long, default_value_t = 10.0)]
    pub pull_start_timeout: f64,

    /// Seconds an on-demand pull stays open after its last viewer left.
    #[arg(long, default_value_t = 20.0)]
    pub pull_linger: f64,

    /// Largest input picture, in pixels (width × height), a source may bring; larger input is refused with 415
    /// before a decoder allocates for it. Default: 1920×1088.
    #[arg(long, default_value_t = 1920 * 1088)]
    pub max_input_pixels: u64,

    /// Largest input width or height.
    #[arg(long, default_value_t = 4096)]
    pub max_input_dimension: u32,

    /// Highest input frame rate a source may declare (with a picture of `--max-input-pixels`: a 1080p60 source);
    /// smaller pictures may be as much faster (the bound is on pixels per second).
    #[arg(long, default_value_t = 60)]
    pub max_input_fps: u32,

    /// Write-coalescing window in milliseconds: clients are woken at most once per window and get everything
    /// published in it in one go. Fewer wake-ups and writes per client (CPU), at up to one window of added
    /// latency. 0 (default) sends every block as it comes.
    #[arg(long, default_value_t = 0)]
    pub coalesce_ms: u64,

    /// Target length of a stream's DASH segments (`/live/{name}/manifest.mpd`), seconds: a segment ends at the
    /// first video keyframe this long after its start (a passthrough source's keyframes decide; audio-only
    /// streams are cut by time).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub segment_seconds: f64,

    /// `Access-Control-Allow-Origin` of media answers (the live stream, DASH manifests and segments): `*` lets
    /// players on any site use them.
    #[arg(long, default_value = "*", value_name = "ORIGIN")]
    pub cors_origin: String,

    /// DASH segments listed in a stream's manifest (older ones answer 404).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=600))]
    pub segment_window: u32,

    /// Kernel send buffer (SO_SNDBUF) of each accepted connection, bytes; 0 keeps the system default.
    /// Bounds the socket memory a client that stops reading can pin.
    #[arg(long, default_value_t = 0)]
    pub send_buffer: usize,

    /// Where sources are demuxed and decoded: `off` (in the daemon) or `on` (each in a worker process of its
    /// own, with no network, no file writes, no new processes and `--source-memory-limit`).
    #[arg(long, value_enum, default_value_t = Isolation::Off)]
    pub source_isolation: Isolation,

    /// Address space of a source's worker process, MiB (`--source-isolation on`); past it the source fails and
    /// its stream falls back.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    pub source_memory_limit: u64,

    /// The binary workers run (`transcast worker`); default: this one. For tests that run the daemon inside
    /// another program.
    #[arg(long, hide = true, value_name = "PATH")]
    pub worker_exe: Option<PathBuf>,
}

/// Transcode settings, shared by `serve` and `pipeline`.
#[derive(Debug, Clone, Args)]
pub struct EncodeArgs {
    /// Largest output width of a transcode; larger input is scaled down keeping its aspect ratio.
    #[arg(long, default_value_t = 1280)]
    pub max_width: u32,

    /// Largest output height of a transcode.
    #[arg(long, default_value_t = 720)]
    pub max_height: u32,

    /// Highest output frame rate of a transcode; faster input drops frames.
    #[arg(long, default_value_t = 30)]
    pub max_fps: u32,

    /// Video codec of a transcode: `vp8` or `vp9`.
    #[arg(long, value_enum, default_value_t = VideoCodec::Vp8)]
    pub video_codec: VideoCodec,

    /// Video target bitrate of a transcode, kbit/s.
    #[arg(long, default_value_t = 1500)]
    pub video_kbps: u32,

    /// Seconds between forced keyframes of a transcode (joiners wait at most this long with `--join live`).
    #[arg(long, default_value_t = 1.0)]
    pub keyframe_interval: f64,

    /// Audio codec of a transcode: `vorbis` or `opus`.
    #[arg(long, value_enum, default_value_t = AudioCodec::Vorbis)]
    pub audio_codec: AudioCodec,

    /// Vorbis quality of a transcode, -0.1 to 1.0.
    #[arg(long, default_value_t = 0.3)]
    pub audio_quality: f64,

    /// Opus bitrate of a transcode, kbit/s (6 to 510).
    #[arg(long, default_value_t = 96)]
    pub audio_kbps: u32,
}

impl EncodeArgs {
    pub fn settings(&self) -> Result<EncodeSettings, String> {
        if !(16..=7680).contains(&self.max_width) || !(16..=4320).contains(&self.max_height) {
            return Err("--max-width/--max-height must be within 16..7680 x 16..4320".into());
        }
        if !(1..=240).contains(&self.max_fps) {
            return Err("--max-fps must be within 1..240".into());
        }
        if !(-0.1..=1.0).contains(&self.audio_quality) {
            return Err("--audio-quality must be within -0.1..1.0".into());
        }
        if !(self.keyframe_interval.is_finite()
            && self.keyframe_interval > 0.0
            && self.keyframe_interval <= 60.0)
        {
            return Err("--keyframe-interval must be within 0..60 seconds".into());
        }
        if !(6..=510).contains(&self.audio_kbps) {
            return Err("--audio-kbps must be within 6..510".into());
        }
        Ok(EncodeSettings {
            max_width: self.max_width,
            max_height: self.max_height,
            max_fps: self.max_fps,
            video_codec: self.video_codec,
            video_kbps: self.video_kbps.clamp(50, 50_000),
            keyframe_interval: self.keyframe_interval,
            audio_codec: self.audio_codec,
            audio_quality: self.audio_quality,
            audio_kbps: self.audio_kbps,
        })
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        Wrapper::parse_from(["transcast"]).args
    }
}

/// Validated configuration handed to [`crate::control::app`].
#[derive(Debug, Clone)]
pub struct Config {
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    pub srt_listen: Option<SocketAddr>,
    pub pipelines_dir: Option<PathBuf>,
    pub join: JoinMode,
    pub max_lag: Duration,
    pub max_streams: usize,
    pub max_clients: usize,
    pub max_transcodes: usize,
    pub source_timeout: Duration,
    pub pace: bool,
    pub encode: EncodeSettings,
    pub max_gop_bytes: usize,
    pub send_buffer: usize,
    pub coalesce: Duration,
    pub segments: crate::stream::segments::SegmentConfig,
    pub cors_origin: String,
    pub muxer: Muxer,
    pub fallback: Fallback,
    pub linger: Duration,
    pub resume_grace: Duration,
    /// Token server masks; empty = token server off.
    pub token_server: Vec<ipnet::IpNet>,
    /// Control API masks when the token server is off.
    pub api_allow: Vec<ipnet::IpNet>,
    pub trusted_proxy: Vec<ipnet::IpNet>,
    pub state_dir: PathBuf,
    /// RTP/UDP targets of every stream.
    pub rtp_targets: Vec<std::net::SocketAddr>,
    pub rtp_allow: Vec<ipnet::IpNet>,
    /// Always-on pulls.
    pub pulls: Vec<PullArg>,
    /// Edge mode: origins in the order they are tried (no trailing slash); empty = not an edge.
    pub origins: Vec<String>,
    pub origin_key: Option<String>,
    pub edge_key: Option<String>,
    pub hook_url: Option<String>,
    pub auth_url: Option<String>,
    pub auth_timeout: Duration,
    pub auth_default: AuthDefault,
    pub auth_cache: Duration,
    pub pull_start_timeout: Duration,
    pub pull_linger: Duration,
    pub input_limits: InputLimits,
    /// `--source-isolation on`: how workers run; None: sources run in the daemon.
    pub workers: Option<WorkerSettings>,
    /// `[[stream]]` tables of the config file.
    pub streams: Vec<streams::DeclaredStream>,
    /// The file and command line this came from, which a reload reads again.
    pub source: Option<ConfigSource>,
}

/// How a source's worker process runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    pub exe: PathBuf,
    /// Address space limit, bytes.
    pub memory: u64,
    /// A worker that says nothing this long (it sends a heartbeat every second) is hung: `--source-timeout`.
    pub hang_after: Duration,
}

/// Where a configuration came from: a reload reads the file again, with the same command line over it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// What followed `serve` on the command line.
    pub argv: Vec<std::ffi::OsString>,
    /// SHA-256 of the file as it was read.
    pub sha256: String,
}

impl Config {
    /// The declared stream of this name.
    pub fn declared(&self, name: &str) -> Option<&streams::DeclaredStream> {
        self.streams.iter().find(|d| d.name == name)
    }
}

/// What a source's video may be, checked from its caps before anything decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub max_pixels: u64,
    pub max_dimension: u32,
    pub max_fps: u32,
}

impl Default for InputLimits {
    fn default() -> Self {
        Config::default().input_limits
    }
}

impl InputLimits {
    /// Checks a picture size and (if known, nonzero) frame rate: the reason it is refused, naming the limit.
    pub fn check(&self, width: u32, height: u32, fps: Option<f64>) -> Result<(), String> {
        if width > self.max_dimension || height > self.max_dimension {
            return Err(format!(
                "the input video is {width}×{height}; at most {} pixels either way are accepted (--max-input-dimension)",
                self.max_dimension
            ));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(format!(
                "the input video is {width}×{height} ({pixels} pixels); at most {} are accepted (--max-input-pixels)",
                self.max_pixels
            ));
        }
        let rate_cap = self.max_pixels as f64 * f64::from(self.max_fps);
        if let Some(fps) = fps.filter(|f| f.is_finite() && *f > 0.0)
            && pixels as f64 * fps > rate_cap
        {
            return Err(format!(
                "the input video is {width}×{height} at {fps:.0} fps; at most {} pixels a second are accepted \
                 (--max-input-pixels × --max-input-fps)",
                rate_cap as u64
            ));
        }
        Ok(())
    }
}

impl Config {
    pub fn token_server_enabled(&self) -> bool {
        !self.token_server.is_empty()
    }

    /// Who may call the control API.
    pub fn control_masks(&self) -> &[ipnet::IpNet] {
        if self.token_server_enabled() {
            &self.token_server
        } else {
            &self.api_allow
        }
    }
}

/// The operator-chosen values the templates are filled with (never client input).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeSettings {
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
    pub video_codec: VideoCodec,
    pub video_kbps: u32,
    pub keyframe_interval: f64,
    pub audio_codec: AudioCodec,
    pub audio_quality: f64,
    pub audio_kbps: u32,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        Config::default().encode
    }
}

impl EncodeSettings {
    /// `{placeholder}` → value pairs for the templates.
    pub fn placeholders(&self) -> Vec<(&'static str, String)> {
        let keyframe_frames = ((self.max_fps as f64) * self.keyframe_interval)
            .round()
            .max(1.0) as u32;
        vec![
            ("max_width", self.max_width.to_string()),
            ("max_height", self.max_height.to_string()),
            ("max_fps", self.max_fps.to_string()),
            (
                "video_bitrate",
                (u64::from(self.video_kbps) * 1000).to_string(),
            ),
            ("keyframe_frames", keyframe_frames.to_string()),
            ("audio_quality", format!("{:.2}", self.audio_quality)),
            ("audio_bitrate", (self.audio_kbps * 1000).to_string()),
        ]
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_args(ServeArgs::default()).expect("defaults are valid")
    }
}

impl Config {
    pub fn from_args(a: ServeArgs) -> Result<Config, String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "--{name} must be a positive number of seconds, got {v}"
                ))
            }
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Config {
            log_format: a.log_format,
            listen: a.listen,
            srt_listen: a.srt_listen,
            pipelines_dir: a.pipelines,
            join: a.join,
            max_lag: secs("max-lag", a.max_lag)?,
            max_streams: a.max_streams.max(1),
            max_clients: a.max_clients.max(1),
            max_transcodes: a.max_transcodes.unwrap_or(2 * cpus),
            source_timeout: secs("source-timeout", a.source_timeout)?,
            pace: a.pace,
            encode: a.encode.settings()?,
            max_gop_bytes: a.max_gop_bytes,
            send_buffer: a.send_buffer,
            coalesce: Duration::from_millis(a.coalesce_ms.min(1000)),
            cors_origin: if !a.cors_origin.is_empty()
                && a.cors_origin.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                a.cors_origin.clone()
            } else {
                return Err(format!(
                    "--cors-origin must be `*` or an origin (printable ASCII), got {:?}",
                    a.cors_origin
                ));
            },
            segments: crate::stream::segments::SegmentConfig {
                target: secs("segment-seconds", a.segment_seconds)?,
                window: a.segment_window as usize,
            },
            muxer: a.muxer,
            fallback: a.fallback,
            linger: secs("linger", a.linger)?,
            resume_grace: if a.resume_grace == 0.0 {
                Duration::ZERO
            } else {
                secs("resume-grace", a.resume_grace)?
            },
            token_server: {
                if !a.token_server.is_empty() && !a.api_allow.is_empty() {
                    return Err(
                        "--api-allow has no effect with --token-server: the token server's masks decide who may \
                         use the control API (put every caller in --token-server)"
                            .into(),
                    );
                }
                a.token_server
            },
            api_allow: if a.api_allow.is_empty() {
                loopback_masks()
            } else {
                a.api_allow
            },
            trusted_proxy: a.trusted_proxy,
            rtp_allow: if a.rtp_allow.is_empty() {
                loopback_masks()
            } else {
                a.rtp_allow.clone()
            },
            rtp_targets: {
                let allow = if a.rtp_allow.is_empty() {
                    loopback_masks()
                } else {
                    a.rtp_allow.clone()
                };
                check_rtp_targets(&a.rtp_target, &allow)
                    .map_err(|e| format!("--rtp-target: {}", e.message))?;
                a.rtp_target.clone()
            },
            state_dir: a.state_dir,
            pulls: a.pull,
            origins: a.origin,
            origin_key: a.origin_key.filter(|k| !k.is_empty()),
            edge_key: a.edge_key.filter(|k| !k.is_empty()),
            hook_url: a.hook_url,
            auth_url: a.auth_url,
            auth_timeout: secs("auth-timeout", a.auth_timeout)?,
            auth_default: a.auth_default,
            auth_cache: secs("auth-cache", a.auth_cache)?,
            pull_start_timeout: secs("pull-start-timeout", a.pull_start_timeout)?,
            pull_linger: secs("pull-linger", a.pull_linger)?,
            input_limits: InputLimits {
                max_pixels: a.max_input_pixels.max(16 * 16),
                max_dimension: a.max_input_dimension.max(16),
                max_fps: a.max_input_fps.max(1),
            },
            workers: match a.source_isolation {
                Isolation::Off => None,
                Isolation::On => Some(WorkerSettings {
                    exe: match a.worker_exe {
                        Some(p) => p,
                        None => std::env::current_exe().map_err(|e| {
                            format!("--source-isolation on: this binary's path: {e}")
                        })?,
                    },
                    memory: a.source_memory_limit.clamp(64, 1 << 20) << 20,
                    hang_after: secs("source-timeout", a.source_timeout)?,
                }),
            },
            streams: Vec::new(),
            source: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Values every layer checks against: address masks, stream names, RTP targets. Here, at the bottom, so the
// control API, the streams and the command line share one rule each without importing one another.

/// Parses `CIDR` or a bare address (a /32 or /128).
pub fn parse_mask(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or CIDR mask"))
}

pub fn loopback_masks() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
}

/// Whether `ip` falls in any of `masks` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn allowed(masks: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    masks.iter().any(|m| m.contains(&ip))
}

/// Stream names: what fits a URL path segment and a GStreamer object name unescaped.
pub const NAME_MAX_LEN: usize = 64;

pub fn validate_name(name: &str) -> Result<(), crate::error::Error> {
    let ok = (1..=NAME_MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::bad_request(format!(
            "invalid stream name: use 1 to {NAME_MAX_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

/// Checks RTP targets: an allowed address, and a base port leaving room for P+3 (RTP and RTCP of two tracks).
pub fn check_rtp_targets(
    targets: &[SocketAddr],
    allow: &[IpNet],
) -> Result<(), crate::error::Error> {
    for t in targets {
        if t.port() == 0 || t.port() > u16::MAX - 3 {
            return Err(crate::error::Error::bad_request(format!(
                "RTP target {t}: the port must be 1..65532 (P to P+3 are used)"
            )));
        }
        if !allowed(allow, t.ip()) {
            return Err(crate::error::Error::forbidden(format!(
                "RTP target {t} is outside --rtp-allow; the daemon only sends UDP where it is allowed to"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_8080() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.pace);
        assert_eq!(c.join, JoinMode::Gop);
        assert_eq!(c.source_timeout, Duration::from_secs(10));
    }

    #[test]
    fn keyframe_distance_follows_fps_and_interval() {
        let mut e = Config::default().encode;
        e.max_fps = 25;
        e.keyframe_interval = 2.0;
        let p = e.placeholders();
        assert!(p.contains(&("keyframe_frames", "50".to_string())));
    }

    #[test]
    fn rtp_targets_outside_rtp_allow_stop_startup() {
        let a = ServeArgs {
            rtp_target: vec!["203.0.113.5:5000".parse().unwrap()],
            ..ServeArgs::default()
        };
        assert!(Config::from_args(a).unwrap_err().contains("--rtp-target"));
        let a = ServeArgs {
            rtp_target: vec!["203.0.113.5:5000".parse().unwrap()],
            rtp_allow: vec!["203.0.113.0/24".parse().unwrap()],
            ..ServeArgs::default()
        };
        assert!(Config::from_args(a).is_ok());
    }

    #[test]
    fn fallback_is_slate_none_or_a_readable_file() {
        assert_eq!(parse_fallback("slate"), Ok(Fallback::Slate));
        assert_eq!(parse_fallback("none"), Ok(Fallback::None));
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            parse_fallback(f.path().to_str().unwrap()),
            Ok(Fallback::File(f.path().to_path_buf()))
        );
        let e = parse_fallback("/nonexistent/bars.webm").unwrap_err();
        assert!(e.contains("slate, none, or a media file"), "{e}");
        assert_eq!(Config::default().fallback, Fallback::Slate);
    }

    #[test]
    fn pulls_and_origins_need_urls() {
        assert_eq!(
            parse_pull("lobby=srt://127.0.0.1:9000?mode=caller"),
            Ok(PullArg {
                name: "lobby".into(),
                url: "srt://127.0.0.1:9000?mode=caller".into()
            })
        );
        assert!(parse_pull("lobby").unwrap_err().contains("NAME=URL"));
        assert!(
            parse_pull("lobby=/tmp/x.ts")
                .unwrap_err()
                .contains("scheme://")
        );
        assert!(parse_pull("a=http://x/ y").is_err());
        assert_eq!(
            parse_origin("http://10.0.0.1:8080/"),
            Ok("http://10.0.0.1:8080".into())
        );
        assert!(
            parse_origin("srt://10.0.0.1:9000")
                .unwrap_err()
                .contains("http://")
        );
    }

    #[test]
    fn input_limits_name_what_they_refuse() {
        let l = InputLimits::default();
        assert!(l.check(1920, 1080, Some(60.0)).is_ok());
        assert!(l.check(1080, 1920, None).is_ok());
        assert!(l.check(1280, 720, Some(120.0)).is_ok());
        assert!(
            l.check(8000, 8000, None)
                .unwrap_err()
                .contains("--max-input-dimension")
        );
        assert!(
            l.check(2560, 1440, Some(30.0))
                .unwrap_err()
                .contains("--max-input-pixels")
        );
        assert!(
            l.check(1920, 1080, Some(120.0))
                .unwrap_err()
                .contains("--max-input-fps")
        );
    }

    #[test]
    fn api_allow_with_the_token_server_stops_startup() {
        let a = ServeArgs {
            token_server: vec!["10.0.0.0/8".parse().unwrap()],
            api_allow: vec!["192.0.2.0/24".parse().unwrap()],
            ..ServeArgs::default()
        };
        assert!(
            Config::from_args(a)
                .unwrap_err()
                .contains("--api-allow has no effect")
        );
    }

    #[test]
    fn rejects_nonsense_durations() {
        let a = ServeArgs {
            max_lag: -1.0,
            ..ServeArgs::default()
        };
        assert!(Config::from_args(a).unwrap_err().contains("max-lag"));
    }
}
