//! The daemon's shared state, which every handler gets (`State<Arc<AppState>>`), and what the accept loop
//! tells handlers about a connection. It sits below the handlers (`source::push`, `source::pull`,
//! `output::progressive`, `control::api`) and above the streams: it holds data from those layers and no
//! handler code, so no import goes both ways.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::auth::FailureLog;
use crate::control::extauth::ExternalAuth;
use crate::control::hooks::Hooks;
use crate::control::tokens::{Session, TokenStore};
use crate::error::Result;
use crate::source::pulls::Pulls;
use crate::stream::hub::{Hub, HubConfig};
use crate::stream::output::{Output, OutputContext};
use crate::stream::registry::Registry;
use crate::stream::{Stream, StreamSettings};
use crate::templates::Templates;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub templates: Arc<Templates>,
    pub registry: Arc<Registry>,
    /// Free transcode slots (`--max-transcodes`).
    pub transcodes: Arc<Semaphore>,
    /// Free client slots (`--max-clients`).
    pub clients: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Token server sessions (persisted under `--state-dir`).
    pub tokens: TokenStore,
    pub auth_failures: FailureLog,
    /// Every connection, stream and source task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled last on shutdown: closes connections still open after the streams have ended.
    pub connections: CancellationToken,
    /// Set once at startup (the registry's collector needs the state's address).
    pub metrics: std::sync::OnceLock<prometheus_client::registry::Registry>,
    /// Declared pulls (`--pull`, the API) and an edge's on-demand pulls.
    pub pulls: Pulls,
    /// An edge's recent answers from its origin on whether a viewer key may watch a stream.
    pub view_checks: ViewChecks,
    /// `--hook-url`: stream and token events to a platform's endpoint.
    pub hooks: Arc<Hooks>,
    /// `--auth-url`: a platform's endpoint that decides who may push and watch.
    pub ext_auth: Option<ExternalAuth>,
}

impl AppState {
    /// A new stream for `name` (not yet registered), with its hub and empty output pipeline; the session
    /// pushing it, if any, adds its RTP targets; `linger` overrides `--linger`.
    pub fn new_stream(
        &self,
        name: &str,
        session: Option<&Session>,
        linger: Option<std::time::Duration>,
    ) -> Result<Arc<Stream>> {
        let cfg = &self.config;
        let hub = Hub::new(
            name,
            HubConfig {
                join: cfg.join,
                max_lag: cfg.max_lag,
                max_gop_bytes: cfg.max_gop_bytes,
                coalesce: cfg.coalesce,
                segments: cfg.segments,
            },
        );
        let rtp_targets = crate::stream::rtp::merge_targets(
            &cfg.rtp_targets,
            session
                .iter()
                .flat_map(|s| s.outputs.rtp_udp.iter().copied()),
        );
        let output = Output::new(
            name,
            OutputContext {
                templates: self.templates.clone(),
                transcodes: self.transcodes.clone(),
                pace: cfg.pace,
                rtp_targets,
                muxer: cfg.muxer,
            },
            hub.clone(),
        )?;
        let stream = Stream::new(
            name,
            hub,
            output,
            StreamSettings {
                fallback: cfg.fallback.clone(),
                linger: linger.unwrap_or(cfg.linger),
                encode: cfg.encode.clone(),
            },
            self.shutdown.child_token(),
        );
        self.hooks.follow(name, stream.watch_state());
        Ok(stream)
    }
}

/// Per-connection facts for handlers.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Cancelling it closes the connection.
    pub kill: CancellationToken,
}

/// (stream, SHA-256 of the viewer's key).
pub(crate) type ViewKey = (String, Option<String>);

/// An edge's recent answers from its origin: who may watch what, and since when it knows.
#[derive(Debug, Default)]
pub struct ViewChecks {
    pub(crate) map:
        std::sync::Mutex<HashMap<ViewKey, (tokio::time::Instant, crate::error::Result<()>)>>,
}
