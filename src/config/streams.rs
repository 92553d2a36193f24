//! Declared streams: the config file's `[[stream]]` tables. A name with its own source (a pull), fallback and
//! linger, output profile (size, rate, codecs, bitrates, passthrough or not), RTP targets and keys:
//!
//! ```toml
//! [[stream]]
//! name = "lobby"
//! pull = "rtsp://10.0.0.5/stream"   # pulled (always, or with on-demand = true while watched)
//! max-width = 640                    # the profile: any of the transcode flags, per stream
//! video-codec = "vp9"
//! passthrough = false                # transcode even WebM with web codecs
//!
//! [[stream]]
//! name = "stage"                     # push only: a push to it uses this profile and needs this key
//! push-key = "long-random-secret"
//! fallback = "/srv/holding.webm"
//! ```
//!
//! Undeclared names work as before, with the daemon's flags. A profile applies when the stream starts: a
//! stream that is live or on its fallback keeps the encoders its viewers' header names.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AudioCodec, Config, EncodeArgs, EncodeSettings, Fallback, VideoCodec};

/// One `[[stream]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamTable {
    pub name: String,
    /// A URL to read (any `--pull` URL).
    pub pull: Option<String>,
    /// With `pull`: read only while someone watches (and `--pull-linger` after).
    #[serde(default)]
    pub on_demand: bool,
    /// `slate`, `none` or a file (as `--fallback`).
    pub fallback: Option<String>,
    /// Seconds on the fallback before the stream ends (as `--linger`).
    pub linger: Option<f64>,
    /// Whether WebM with web codecs may pass through untouched (default true); false transcodes it.
    pub passthrough: Option<bool>,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
    pub max_fps: Option<u32>,
    pub video_codec: Option<VideoCodec>,
    pub video_kbps: Option<u32>,
    pub keyframe_interval: Option<f64>,
    pub audio_codec: Option<AudioCodec>,
    pub audio_quality: Option<f64>,
    pub audio_kbps: Option<u32>,
    /// RTP/UDP targets of this stream (within `--rtp-allow`), besides `--rtp-target`'s.
    #[serde(default)]
    pub rtp_target: Vec<SocketAddr>,
    /// A push (HTTP or SRT) must present this key; without the token server too.
    pub push_key: Option<String>,
    /// A viewer must present this key (`?token=` or `Authorization: Bearer`).
    pub view_key: Option<String>,
}

/// A declared stream, checked and resolved against the daemon's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredStream {
    pub name: String,
    pub pull: Option<String>,
    pub on_demand: bool,
    pub fallback: Fallback,
    pub linger: Duration,
    pub passthrough: bool,
    pub encode: EncodeSettings,
    pub rtp_targets: Vec<SocketAddr>,
    pub push_key_sha256: Option<String>,
    pub view_key_sha256: Option<String>,
}

impl DeclaredStream {
    /// Resolves a table: what it leaves out comes from `config` (the flags and top-level keys).
    pub fn resolve(t: &StreamTable, config: &Config) -> Result<DeclaredStream, String> {
        crate::config::validate_name(&t.name).map_err(|e| e.message)?;
        if let Some(url) = &t.pull {
            crate::config::check_url(url).map_err(|e| format!("pull = {url:?}: {e}"))?;
        } else if t.on_demand {
            return Err("on-demand needs a pull URL".into());
        }
        let e = &config.encode;
        let encode = EncodeArgs {
            max_width: t.max_width.unwrap_or(e.max_width),
            max_height: t.max_height.unwrap_or(e.max_height),
            max_fps: t.max_fps.unwrap_or(e.max_fps),
            video_codec: t.video_codec.unwrap_or(e.video_codec),
            video_kbps: t.video_kbps.unwrap_or(e.video_kbps),
            keyframe_interval: t.keyframe_interval.unwrap_or(e.keyframe_interval),
            audio_codec: t.audio_codec.unwrap_or(e.audio_codec),
            audio_quality: t.audio_quality.unwrap_or(e.audio_quality),
            audio_kbps: t.audio_kbps.unwrap_or(e.audio_kbps),
        }
        .settings()
        .map_err(|m| m.replace("--", ""))?;
        let fallback = match &t.fallback {
            Some(f) => {
                super::parse_fallback(f).map_err(|m| m.replace("--fallback ", "fallback "))?
            }
            None => config.fallback.clone(),
        };
        let linger = match t.linger {
            Some(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                    "linger must be a positive number of seconds, got {s}"
                ));
            }
            None => config.linger,
        };
        super::check_rtp_targets(&t.rtp_target, &config.rtp_allow)
            .map_err(|e| format!("rtp-target: {}", e.message))?;
        let key = |k: &Option<String>, what: &str| match k {
            Some(k) if k.len() < 16 => Err(format!("{what} must be at least 16 characters")),
            Some(k) => Ok(Some(format!("{:x}", Sha256::digest(k.as_bytes())))),
            None => Ok(None),
        };
        Ok(DeclaredStream {
            name: t.name.clone(),
            pull: t.pull.clone(),
            on_demand: t.on_demand,
            fallback,
            linger,
            passthrough: t.passthrough.unwrap_or(true),
            encode,
            rtp_targets: t.rtp_target.clone(),
            push_key_sha256: key(&t.push_key, "push-key")?,
            view_key_sha256: key(&t.view_key, "view-key")?,
        })
    }
}
