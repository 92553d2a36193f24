//! Runtime configuration: the `serve` command line, with every limit named and documented, and the
//! values the pipeline templates are filled with.
//!
//! Defaults are embedded, so `transcast serve` with no options is a working daemon on 127.0.0.1:8080.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where a new HTTP client starts reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum JoinMode {
    /// Header, then the cached group of pictures since the last keyframe: playback starts at once.
    #[default]
    Gop,
    /// Header, then wait for the next keyframe cluster: lowest latency, slower start.
    Live,
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
fn parse_fallback(v: &str) -> Result<Fallback, String> {
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

/// Options of `transcast serve`. Each field documents its default; `--help` prints the same text.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TRANSCAST_LISTEN")]
    pub listen: SocketAddr,

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
    #[arg(long = "token-server", value_name = "CIDR", value_parser = crate::control::auth::parse_mask)]
    pub token_server: Vec<ipnet::IpNet>,

    /// Without --token-server: masks whose callers may use the control API. Default: loopback only.
    #[arg(long = "api-allow", value_name = "CIDR", value_parser = crate::control::auth::parse_mask)]
    pub api_allow: Vec<ipnet::IpNet>,

    /// Proxies whose X-Forwarded-For is believed for the address checks (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = crate::control::auth::parse_mask)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// RTP/UDP target `IP:port` every stream is rebroadcast to (repeatable): video RTP on port P, RTCP P+1,
    /// audio RTP P+2, RTCP P+3. More targets come from session tokens and the API.
    #[arg(long = "rtp-target", value_name = "IP:PORT")]
    pub rtp_target: Vec<std::net::SocketAddr>,

    /// Masks RTP/UDP targets must fall in (repeatable), so the daemon cannot be made a UDP reflector.
    /// Default: loopback only.
    #[arg(long = "rtp-allow", value_name = "CIDR", value_parser = crate::control::auth::parse_mask)]
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

    /// Write-coalescing window in milliseconds: clients are woken at most once per window and get everything
    /// published in it in one go. Fewer wake-ups and writes per client (CPU), at up to one window of added
    /// latency. 0 (default) sends every block as it comes.
    #[arg(long, default_value_t = 0)]
    pub coalesce_ms: u64,

    /// Kernel send buffer (SO_SNDBUF) of each accepted connection, bytes; 0 keeps the system default.
    /// Bounds the socket memory a client that stops reading can pin.
    #[arg(long, default_value_t = 0)]
    pub send_buffer: usize,
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

    /// VP8 target bitrate of a transcode, kbit/s.
    #[arg(long, default_value_t = 1500)]
    pub video_kbps: u32,

    /// Seconds between forced keyframes of a transcode (joiners wait at most this long with `--join live`).
    #[arg(long, default_value_t = 1.0)]
    pub keyframe_interval: f64,

    /// Vorbis quality of a transcode, -0.1 to 1.0.
    #[arg(long, default_value_t = 0.3)]
    pub audio_quality: f64,
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
        Ok(EncodeSettings {
            max_width: self.max_width,
            max_height: self.max_height,
            max_fps: self.max_fps,
            video_kbps: self.video_kbps.clamp(50, 50_000),
            keyframe_interval: self.keyframe_interval,
            audio_quality: self.audio_quality,
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
    pub listen: SocketAddr,
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
    pub video_kbps: u32,
    pub keyframe_interval: f64,
    pub audio_quality: f64,
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
            listen: a.listen,
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
            muxer: a.muxer,
            fallback: a.fallback,
            linger: secs("linger", a.linger)?,
            resume_grace: if a.resume_grace == 0.0 {
                Duration::ZERO
            } else {
                secs("resume-grace", a.resume_grace)?
            },
            token_server: a.token_server,
            api_allow: if a.api_allow.is_empty() {
                crate::control::auth::loopback_masks()
            } else {
                a.api_allow
            },
            trusted_proxy: a.trusted_proxy,
            rtp_allow: if a.rtp_allow.is_empty() {
                crate::control::auth::loopback_masks()
            } else {
                a.rtp_allow.clone()
            },
            rtp_targets: {
                let allow = if a.rtp_allow.is_empty() {
                    crate::control::auth::loopback_masks()
                } else {
                    a.rtp_allow.clone()
                };
                crate::stream::rtp::validate_targets(&a.rtp_target, &allow)
                    .map_err(|e| format!("--rtp-target: {}", e.message))?;
                a.rtp_target.clone()
            },
            state_dir: a.state_dir,
        })
    }
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
    fn rejects_nonsense_durations() {
        let a = ServeArgs {
            max_lag: -1.0,
            ..ServeArgs::default()
        };
        assert!(Config::from_args(a).unwrap_err().contains("max-lag"));
    }
}
