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

/// The configuration the daemon runs with and the templates filled from it: what a reload replaces, whole.
#[derive(Debug)]
pub struct Current {
    pub config: Arc<Config>,
    pub templates: Arc<Templates>,
    /// Templates filled with a declared stream's own profile, for those whose profile is not the flags'.
    stream_templates: HashMap<String, Arc<Templates>>,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
}

impl Current {
    /// Loads (and so checks) the templates `config` needs: the daemon's, and each declared stream's.
    pub fn build(config: Config) -> Result<Current> {
        let dir = config.pipelines_dir.as_deref();
        let templates = Arc::new(Templates::load(dir, &config.encode)?);
        let mut stream_templates = HashMap::new();
        for d in config.streams.iter().filter(|d| d.encode != config.encode) {
            let t = Templates::load(dir, &d.encode).map_err(|e| {
                crate::error::Error::pipeline(format!("stream '{}': {}", d.name, e.message))
            })?;
            stream_templates.insert(d.name.clone(), Arc::new(t));
        }
        Ok(Current {
            config: Arc::new(config),
            templates,
            stream_templates,
            loaded_at: std::time::SystemTime::now(),
        })
    }

    /// The templates a stream's output is built from.
    pub fn templates_for(&self, name: &str) -> Arc<Templates> {
        self.stream_templates
            .get(name)
            .unwrap_or(&self.templates)
            .clone()
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Read through [`AppState::config`]; replaced by a reload ([`AppState::install`]).
    current: std::sync::RwLock<Arc<Current>>,
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
    /// How the configuration was loaded and reloaded.
    pub reloads: std::sync::Mutex<ReloadStatus>,
}

/// The parts of [`AppState`] made from the configuration it starts with.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub transcodes: Arc<Semaphore>,
    pub clients: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tokens: TokenStore,
    pub hooks: Arc<Hooks>,
    pub ext_auth: Option<ExternalAuth>,
}

/// Reloads so far, and how the last one went.
#[derive(Debug, Default, Clone)]
pub struct ReloadStatus {
    /// Reloads that took effect.
    pub count: u64,
    /// The last reload that failed (when, why); cleared by one that succeeds.
    pub last_error: Option<(std::time::SystemTime, String)>,
}

impl AppState {
    /// The shared state around a configuration and the parts made from it.
    pub fn new(current: Current, p: Parts) -> AppState {
        AppState {
            current: std::sync::RwLock::new(Arc::new(current)),
            registry: p.registry,
            transcodes: p.transcodes,
            clients: p.clients,
            shutdown: p.shutdown,
            tokens: p.tokens,
            auth_failures: FailureLog::default(),
            tasks: TaskTracker::new(),
            connections: CancellationToken::new(),
            metrics: Default::default(),
            pulls: Default::default(),
            view_checks: Default::default(),
            hooks: p.hooks,
            ext_auth: p.ext_auth,
            reloads: Default::default(),
        }
    }

    /// The configuration now (a reload may replace it; what a request read stays as it was).
    pub fn config(&self) -> Arc<Config> {
        self.current().config.clone()
    }

    /// The daemon's templates now.
    pub fn templates(&self) -> Arc<Templates> {
        self.current().templates.clone()
    }

    pub fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new configuration in place; returns the one it replaces.
    pub fn install(&self, next: Current) -> Arc<Current> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, Arc::new(next))
    }

    /// A new stream for `name` (not yet registered), with its hub and empty output pipeline; the session
    /// pushing it, if any, adds its RTP targets; `linger` overrides `--linger`.
    pub fn new_stream(
        &self,
        name: &str,
        session: Option<&Session>,
        linger: Option<std::time::Duration>,
    ) -> Result<Arc<Stream>> {
        let current = self.current();
        let cfg = &current.config;
        let declared = cfg.declared(name);
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
                .flat_map(|s| s.outputs.rtp_udp.iter().copied())
                .chain(declared.iter().flat_map(|d| d.rtp_targets.iter().copied())),
        );
        let output = Output::new(
            name,
            OutputContext {
                templates: current.templates_for(name),
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
            match declared {
                Some(d) => StreamSettings {
                    fallback: d.fallback.clone(),
                    linger: linger.unwrap_or(d.linger),
                    encode: d.encode.clone(),
                    passthrough: d.passthrough,
                },
                None => StreamSettings {
                    fallback: cfg.fallback.clone(),
                    linger: linger.unwrap_or(cfg.linger),
                    encode: cfg.encode.clone(),
                    passthrough: true,
                },
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
