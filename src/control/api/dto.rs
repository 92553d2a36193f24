//! JSON wire types of the API, apart from the internal types they are built from. `api-docs/openapi.yaml`
//! describes exactly these.

use serde::{Deserialize, Serialize};

use crate::stream::{Mode, State};

#[derive(Debug, Serialize)]
pub struct StreamInfo {
    pub name: String,
    /// `starting`, `live` (a source on air), `fallback` (showing the slate), `ended`.
    pub state: State,
    pub mode: Mode,
    /// The source feeding the stream now (absent while on the fallback).
    pub source: Option<SourceDto>,
    /// Times the stream lost its source and switched to its fallback.
    pub failovers: u64,
    /// Times a source came back while the stream was on its fallback.
    pub resumes: u64,
    /// Seconds spent on the fallback.
    pub fallback_seconds: f64,
    pub input: InputInfo,
    pub output: OutputInfo,
    /// RFC 3339.
    pub started_at: String,
    pub bytes_in: u64,
    /// Bytes sent to clients, all clients together.
    pub bytes_out: u64,
    /// Bytes of WebM the stream has published: one copy of its output (what `bitrate_out_bps` is a rate of).
    pub bytes_published: u64,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    pub clients: ClientStats,
    pub dash: DashInfo,
    /// Media seconds produced per wall-clock second over the last second (transcodes only).
    pub encoder_realtime_factor: Option<f64>,
    /// Unix time (ms, fractional) at which the current source delivered stream time 0: a player's delay behind
    /// the source is now − this − its playhead (`currentTime` × 1000). Absent before a source was on air; kept
    /// from the last source while on the fallback.
    pub media_zero_unix_ms: Option<f64>,
    pub frames_dropped: u64,
    pub rtp_targets: Vec<String>,
    /// The pull that feeds the stream, if it is pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullInfo>,
}

/// A pull: what it reads and how it is doing.
#[derive(Debug, Serialize)]
pub struct PullInfo {
    pub name: String,
    /// `relay` (`--pull`, the API: retried after any end) or `edge` (from `--origin`: ends with the origin's
    /// stream).
    pub kind: crate::source::pull::PullKind,
    /// The URL it reads (for an edge, one per origin, in the order tried).
    pub urls: Vec<String>,
    /// Starts with its first viewer, closes `--pull-linger` after the last one left.
    pub on_demand: bool,
    /// `idle`, `connecting`, `live`, `retrying`, `stopped`.
    pub state: crate::source::pull::PullState,
    /// The URL of the current or last attempt.
    pub url: String,
    pub connections: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// HTTP status of the last failed attempt, when it got one.
    pub last_status: Option<u16>,
    /// RFC 3339: when it tries again.
    pub retry_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SourceDto {
    /// The pushing connection's address.
    pub peer: Option<String>,
    /// The URL a pull reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// RFC 3339: when this source attached.
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct InputInfo {
    pub container: Option<&'static str>,
    pub codecs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct OutputInfo {
    pub content_type: Option<&'static str>,
    pub codecs: Vec<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
}

/// The stream's DASH presentation: what was cut and what was served.
#[derive(Debug, Serialize)]
pub struct DashInfo {
    /// Segments completed so far.
    pub segments: u64,
    /// Media segments served (a cache in front should keep this near `segments` per representation).
    pub segment_requests: u64,
    /// Most times any kept segment was served.
    pub max_segment_hits: u64,
    pub manifest_requests: u64,
    pub init_requests: u64,
    pub not_found: u64,
}

#[derive(Debug, Serialize)]
pub struct ClientStats {
    pub now: usize,
    pub total: u64,
    /// Disconnected for staying behind longer than `--max-lag`.
    pub dropped: u64,
    /// Times a client that fell behind was moved forward to a newer keyframe.
    pub skipped: u64,
    /// Edges relaying the stream now (not counted in `now`).
    pub relays: usize,
}

/// `POST /api/v1/streams`: a stream that shows its slate until a source pushes to it, or (with `pull`) a
/// stream transcast reads from a URL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewStream {
    pub name: String,
    /// A URL to read the stream from (`http://`, `https://`, `srt://`, `udp://`, `rtsp://`, `file://`).
    pub pull: Option<String>,
    /// With `pull`: start it with the first viewer and close it `--pull-linger` after the last one.
    #[serde(default)]
    pub on_demand: bool,
    /// Seconds it waits for a source before it ends (default `--linger`).
    pub linger: Option<f64>,
    /// Picture size of the stream (every source is scaled to it); default 640×360, at most
    /// `--max-width`×`--max-height`.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub session_id: String,
    #[serde(default = "any_input")]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: NewOutputs,
    /// RFC 3339.
    pub expires_at: Option<String>,
    #[serde(default)]
    pub view_restricted: bool,
}

fn any_input() -> Vec<String> {
    vec!["any".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOutputs {
    #[serde(default = "yes")]
    pub http: bool,
    #[serde(default)]
    pub rtp_udp: Vec<String>,
}

impl Default for NewOutputs {
    fn default() -> Self {
        NewOutputs {
            http: true,
            rtp_udp: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize)]
pub struct TokenCreated {
    pub session_id: String,
    pub push_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenInfo {
    pub session_id: String,
    pub origin: crate::control::tokens::Origin,
    pub inputs: Vec<String>,
    pub outputs: OutputsInfo,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub view_restricted: bool,
    pub expired: bool,
    /// A stream of this session is being pushed now.
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct OutputsInfo {
    pub http: bool,
    pub rtp_udp: Vec<String>,
}

/// soup-transcoding-proxy's `list-tokens` entry.
#[derive(Debug, Serialize)]
pub struct CompatToken {
    pub sessionid: String,
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// soup-transcoding-proxy's `list-streams` entry.
#[derive(Debug, Serialize)]
pub struct CompatStream {
    pub sessionid: String,
    pub mode: Mode,
    pub clients: usize,
}

#[derive(Debug, Serialize)]
pub struct CompatOk {
    pub sessionid: String,
    pub status: &'static str,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpTargets {
    /// `IP:port` base ports (video P/P+1, audio P+2/P+3).
    pub targets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpPatch {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `GET /api/v1/config`.
#[derive(Debug, Serialize)]
pub struct ConfigInfo {
    /// The config file (`--config`), if any.
    pub file: Option<String>,
    /// SHA-256 of the file as the running configuration read it.
    pub sha256: Option<String>,
    pub loaded_at: String,
    /// Reloads that took effect since the start.
    pub reloads: u64,
    /// The last reload that failed, until one succeeds.
    pub last_error: Option<ReloadError>,
    /// Names of the declared streams (`[[stream]]`).
    pub streams: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ReloadError {
    pub at: String,
    pub message: String,
}

/// `POST /api/v1/config/reload`.
#[derive(Debug, Serialize)]
pub struct ReloadAnswer {
    #[serde(flatten)]
    pub report: crate::control::reload::Report,
    pub config: ConfigInfo,
}
