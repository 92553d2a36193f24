//! transcast: a live media transcoding proxy. Sources push any container over HTTP; each stream runs through
//! its own GStreamer pipeline (passthrough remux for WebM with web codecs, VP8/Vorbis transcode otherwise) and
//! is fanned out as live WebM to any number of HTTP clients.
//!
//! # Layout
//! Sources feed streams; a stream outlives its sources and feeds its outputs; control sits beside. Config,
//! error kinds and templates sit at the bottom: everything may use them, they use nothing above. No two
//! modules import each other, directly or round a circle: bottom ← `stream` ←
//! `control::{auth, tokens, hooks, extauth}`, `source::pulls` ← [`state`] ← the handlers (`source::push`, `source::srt`, `source::pull`,
//! `output::progressive`, `output::dash`, `control::api`, `control::reload`, `control::web`, `control::metrics`) ← [`http`] ← `control::app`
//! (`tests/layers.rs` checks it).
//!
//! - [`source`]: what feeds a stream. `source::push` is `PUT`/`POST /live/{name}` (checks, feeding,
//!   continuation pieces, the push summary); `source::pull` reads a URL instead (`--pull`, the API, an edge's
//!   on-demand pulls of its origin), with retries and backoff, and `source::pulls` is what is pulled and how it
//!   is doing; the source task typefinds (`source::detect`) and
//!   owns `source::pipeline`, which demuxes/decodes one source and converts it to its stream's caps and hands
//!   its tracks to a `Target`: the stream here, or (`--source-isolation on`) the daemon across a worker
//!   process's pipes: `source::worker` (the `transcast worker` process, and the daemon's handle on it),
//!   `source::wire` (what they say), `source::sandbox` (what a worker takes away from itself).
//! - [`stream`]: a stream's life (state, the switch between sources and the fallback, linger, end);
//!   `stream::output` its own pipeline (per-track appsrc → encoder or passthrough → writer, RTP tap);
//!   `stream::slate` the fallback picture and silence; `stream::pacing` holds input to real time;
//!   `stream::attach` what a stream knows of its source; `stream::writer` the live WebM writer (blocks in
//!   arrival order); `stream::webm` the WebM scanner and builders; `stream::hub` the ring of chunks, join
//!   points, reader cursors, skip and reap; `stream::segments` the DASH segments cut from what the hub
//!   publishes (one init and one Cluster per track and segment); `stream::tracks` the stream with its tracks
//!   apart (each its own WebM, in records, through a hub of its own) for the low-latency player;
//!   `stream::registry` name → stream, 503 on too many.
//! - [`output`]: what reads a hub: `output::progressive` (`GET`/`HEAD /live/{name}`, `?format=tracks` from the
//!   split hub, `?join=`; on an edge it starts
//!   the name's pull and checks viewer keys with the origin), `output::dash` (the manifest, init and media
//!   segments, `/time`, with cache headers) and `output::fanout` (one pool of threads for the process, writing
//!   to caught-up viewers' sockets; the hub keeps who is parked). The RTP/UDP rebroadcast is a tap on the
//!   stream's encoded tracks, so it lives in the stream: `stream::rtp` (rtpbin, targets changeable at runtime,
//!   SDP).
//! - [`state`]: what every handler shares (`AppState`: the running configuration and its templates, which a
//!   reload replaces whole; registry, limits, tokens, pulls; the stream factory, which applies a declared
//!   stream's settings) and what the accept loop tells a handler of its connection (`ConnInfo`).
//! - [`control`]: `control::app` (startup, the server task, shutdown), `control::api` (`/api/v1`,
//!   `api::compat`, `api::dto`), `control::auth`, `control::tokens`, `control::metrics`, `control::web` (the
//!   status and watch pages, and `/player.js`, the low-latency player: `control/player.js`, plain JavaScript
//!   served as it is), `control::hooks` (`--hook-url`: stream and token events out, queued apart from the
//!   media) and `control::extauth` (`--auth-url`: a platform's endpoint decides pushes and views), `control::reload`
//!   (`SIGHUP`, `POST /api/v1/config/reload`: the config file read again and put in place, nobody dropped).
//! - [`http`]: the router and the accept loop (per-connection kill tokens, socket options, shutdown; a
//!   connection whose first request is a watch skips hyper); error kind → HTTP status and the JSON error body.
//! - [`config`]: the command line, every limit with its default, values the templates are filled with; the
//!   rules every layer checks against (address masks, stream names, RTP targets); `config::file` the same
//!   options from a TOML file (`--config`, `transcast check-config`); `config::streams` its `[[stream]]`
//!   tables (declared streams: source, fallback, output profile, RTP targets, keys).
//! - [`error`]: the one error type and its kinds (no HTTP: the media path builds without axum).
//! - [`templates`]: the `pipelines/*.pipeline` gst-launch fragments, loaded and checked.
//! - [`launchline`]: `transcast pipeline`: the equivalent gst-launch-1.0 line for a file, and running it.

pub mod config;
pub mod control;
pub mod error;
pub mod http;
pub mod launchline;
pub mod output;
pub mod source;
pub mod state;
pub mod stream;
pub mod templates;

/// Entry points for the fuzz targets in `fuzz/` (`cargo +nightly fuzz run TARGET`): every parser that reads
/// bytes from outside. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The WebM scanner, fed in two pieces split at `split` (as a socket delivers them).
    pub fn webm(data: &[u8], split: usize) {
        let mut sc = crate::stream::webm::Scanner::new();
        let at = split.min(data.len());
        for piece in [&data[..at], &data[at..]] {
            if sc.push(piece, |_| {}).is_err() {
                return;
            }
        }
    }

    /// The accept loop's reading of a connection's first request head.
    pub fn watch_head(data: &[u8]) {
        crate::http::fuzz_classify(data);
    }

    /// `Content-Range` of a continuation piece.
    pub fn content_range(data: &[u8]) {
        if let Ok(v) = axum::http::HeaderValue::from_bytes(data)
            && let Ok(first) = crate::source::push::parse_content_range(&v)
        {
            let s = v.to_str().expect("parsed, so ASCII");
            assert!(s.contains(&first.to_string()));
        }
    }

    /// Stream names, address masks, URLs and presented keys.
    pub fn names_and_keys(text: &str) {
        if crate::stream::registry::validate_name(text).is_ok() {
            assert!(!text.is_empty() && text.len() <= crate::stream::registry::NAME_MAX_LEN);
            assert!(!text.contains(['/', '%', '\r', '\n']));
        }
        let _ = crate::config::parse_mask(text);
        if crate::config::check_url(text).is_ok() {
            assert!(!text.contains(char::is_control));
        }
        let mut h = axum::http::HeaderMap::new();
        if let Ok(v) = axum::http::HeaderValue::from_str(text) {
            h.insert(axum::http::header::AUTHORIZATION, v);
        }
        let _ = crate::control::auth::presented_key(&h, Some(text));
    }

    /// The token state file loader.
    pub fn token_state(data: &[u8]) {
        let _ = crate::control::tokens::parse_state(data, std::path::Path::new("fuzz"));
    }

    /// A worker's messages to the daemon, read one after another until the end or an error.
    pub fn worker_messages(data: &[u8]) {
        let mut r = data;
        while let Ok(Some(m)) = crate::source::wire::FromWorker::read(&mut r) {
            if let crate::source::wire::FromWorker::Frame(f) = m {
                assert!(f.payload.len() <= crate::source::wire::MAX_MESSAGE);
            }
        }
    }
}
