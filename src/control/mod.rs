//! Control: names, tokens, limits and what operators see. It tells streams what to do and reads their
//! state from the registry; it never sits in the media path.
//!
//! - [`app`]: shared state, startup checks (templates, token store, listener), the server task, the stream
//!   factory.
//! - [`api`]: the control API (`/api/v1` streams and tokens; `api::compat` for soup-transcoding-proxy's query
//!   strings); `api::dto` holds its JSON wire types.
//! - [`auth`]: address masks, the caller behind trusted proxies, token secrets.
//! - [`tokens`]: token server sessions, persisted atomically under `--state-dir`.
//! - [`metrics`]: `/metrics` in Prometheus text, computed at scrape time.
//! - [`reload`]: `SIGHUP` and `POST /api/v1/config/reload`: the config file read again and put in place
//!   without dropping anyone.
//! - [`web`]: the status page (`/`) and the watch page (`/watch/{name}`), server-rendered HTML.

pub mod api;
pub mod app;
pub mod auth;
pub mod extauth;
pub mod hooks;
pub mod metrics;
pub mod reload;
pub mod tokens;
pub mod web;
