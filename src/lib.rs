//! transcast: a live media transcoding proxy. Sources push any container over HTTP; each stream runs through
//! its own GStreamer pipeline (passthrough remux for WebM with web codecs, VP8/Vorbis transcode otherwise) and
//! is fanned out as live WebM to any number of HTTP clients.
//!
//! # Layout
//! - [`app`]: shared state, startup checks (templates, token store, listener), the server task.
//! - [`api`]: the control API (`/api/v1` streams and tokens; `api::compat` for soup-transcoding-proxy's
//!   query strings); `api::dto` holds its JSON wire types.
//! - [`auth`]: address masks, the caller behind trusted proxies, token secrets.
//! - [`tokens`]: token server sessions, persisted atomically under `--state-dir`.
//! - [`metrics`]: `/metrics` in Prometheus text, computed at scrape time.
//! - [`web`]: the status page (`/`) and the watch page (`/watch/{name}`), server-rendered HTML.
//! - [`config`]: the command line, every limit with its default, values the templates are filled with.
//! - [`error`]: the one error type; kind → HTTP status and the JSON error body.
//! - [`http`]: the router and the accept loop (per-connection kill tokens, socket options, shutdown; a
//!   connection whose first request is a watch skips hyper).
//! - [`ingest`]: `PUT`/`POST /live/{name}`: checks, typefind, feeding the pipeline, the push summary.
//! - [`egress`]: `GET`/`HEAD /live/{name}`: a client's endless WebM response, on the bare socket or through hyper.
//! - [`detect`]: typefind of the first bytes, supported containers, the MP4 `moov` check.
//! - [`templates`]: the `pipelines/*.pipeline` gst-launch fragments, loaded and checked.
//! - [`pipeline`]: one stream's pipeline, linked around dynamic pads; pacing and frame-drop probes.
//! - [`rtp`]: RTP/UDP rebroadcast through rtpbin: targets changeable at runtime, SDP for receivers.
//! - [`pacing`]: real-time pacing of input that arrives too fast, without letting delay pile up.
//! - [`webm`]: scanner that cuts muxer output into header and per-block chunks, finding join points.
//! - [`writer`]: live WebM writer that emits blocks in arrival order (no interleaving wait), per-track appsinks.
//! - [`hub`]: per-stream fan-out: ring of shared chunks, join points, reader cursors, skip and reap.
//! - [`fanout`]: shard tasks that write new chunks straight to caught-up watchers' sockets.
//! - [`streams`]: registry of live streams (name → entry), name rules, 409/503 on push.
//! - [`launchline`]: `transcast pipeline`: the equivalent gst-launch-1.0 line for a file, and running it.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod detect;
pub mod egress;
pub mod error;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod launchline;
pub mod metrics;
pub mod pacing;
pub mod pipeline;
pub mod rtp;
pub mod streams;
pub mod templates;
pub mod tokens;
pub mod web;
pub mod webm;
pub mod writer;
