//! transcast: a live media transcoding proxy. Sources push any container over HTTP; each stream runs through
//! its own GStreamer pipeline (passthrough remux for WebM with web codecs, VP8/Vorbis transcode otherwise) and
//! is fanned out as live WebM to any number of HTTP clients.
//!
//! # Layout
//! Sources feed streams; a stream outlives its sources and feeds its outputs; control sits beside.
//!
//! - [`source`]: what feeds a stream. `source::push` is `PUT`/`POST /live/{name}` (checks, typefind, feeding,
//!   continuation pieces, the push summary); `source::pipeline` demuxes/decodes one source and converts it to
//!   its stream's caps; `source::detect` typefinds.
//! - [`stream`]: a stream's life (state, the switch between sources and the fallback, linger, end);
//!   `stream::output` its own pipeline (per-track appsrc → encoder or passthrough → writer, RTP tap);
//!   `stream::slate` the fallback picture and silence; `stream::pacing` holds input to real time; `stream::attach` what a stream knows of its source;
//!   `stream::registry` name → stream, name rules, 503 on too many.
//! - [`writer`]: live WebM writer that emits blocks in arrival order (no interleaving wait).
//! - [`webm`]: scanner that cuts muxer output into header and per-block chunks, finding join points.
//! - [`hub`]: per-stream fan-out: ring of shared chunks, join points, reader cursors, skip and reap.
//! - [`fanout`]: fan-out threads that write new chunks straight to caught-up watchers' sockets.
//! - [`egress`]: `GET`/`HEAD /live/{name}`: a client's endless WebM response, on the bare socket or through hyper.
//! - [`rtp`]: RTP/UDP rebroadcast through rtpbin: targets changeable at runtime, SDP for receivers.
//! - [`app`]: shared state, startup checks (templates, token store, listener), the server task.
//! - [`http`]: the router and the accept loop (per-connection kill tokens, socket options, shutdown; a
//!   connection whose first request is a watch skips hyper).
//! - [`api`]: the control API (`/api/v1` streams and tokens; `api::compat` for soup-transcoding-proxy's
//!   query strings); `api::dto` holds its JSON wire types.
//! - [`auth`]: address masks, the caller behind trusted proxies, token secrets.
//! - [`tokens`]: token server sessions, persisted atomically under `--state-dir`.
//! - [`metrics`]: `/metrics` in Prometheus text, computed at scrape time.
//! - [`web`]: the status page (`/`) and the watch page (`/watch/{name}`), server-rendered HTML.
//! - [`config`]: the command line, every limit with its default, values the templates are filled with.
//! - [`error`]: the one error type; kind → HTTP status and the JSON error body.
//! - [`templates`]: the `pipelines/*.pipeline` gst-launch fragments, loaded and checked.
//! - [`launchline`]: `transcast pipeline`: the equivalent gst-launch-1.0 line for a file, and running it.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod egress;
pub mod error;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod launchline;
pub mod metrics;
pub mod rtp;
pub mod source;
pub mod stream;
pub mod templates;
pub mod tokens;
pub mod web;
pub mod webm;
pub mod writer;
