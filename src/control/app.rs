//! The daemon: startup checks, the server task, and shutdown. The state it shares is [`crate::state`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::auth::FailureLog;
use crate::control::tokens::TokenStore;
use crate::error::{Error, Result};
use crate::source::pull::{Pull, PullKind};
pub use crate::state::AppState;
use crate::stream::registry::Registry;
use crate::templates::Templates;

/// A started daemon.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The SRT listener's address (`--srt-listen`).
    pub srt_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    pub task: JoinHandle<()>,
}

/// Checks the templates, binds the listener and starts serving. GStreamer must be initialised.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let templates = Arc::new(Templates::load(
        config.pipelines_dir.as_deref(),
        &config.encode,
    )?);
    let tokens = TokenStore::open(&config.state_dir)?;
    for p in &config.pulls {
        crate::stream::registry::validate_name(&p.name)
            .and_then(|()| crate::source::pull::check_url(&p.url))
            .map_err(|e| {
                Error::bad_request(format!("--pull {}={}: {}", p.name, p.url, e.message))
            })?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let state = Arc::new(AppState {
        templates,
        registry: Registry::new(config.max_streams),
        transcodes: Arc::new(Semaphore::new(config.max_transcodes)),
        clients: Arc::new(Semaphore::new(config.max_clients)),
        shutdown: shutdown.clone(),
        tokens,
        auth_failures: FailureLog::default(),
        tasks: TaskTracker::new(),
        connections: CancellationToken::new(),
        metrics: Default::default(),
        pulls: Default::default(),
        view_checks: Default::default(),
        hooks: Arc::new(crate::control::hooks::Hooks::start(
            config.hook_url.as_deref(),
        )),
        ext_auth: config.auth_url.as_deref().map(|url| {
            crate::control::extauth::ExternalAuth::new(
                url,
                config.auth_timeout,
                config.auth_default,
                config.auth_cache,
            )
        }),
        config,
    });
    let _ = state.metrics.set(crate::control::metrics::registry(&state));
    let srt_addr = match state.config.srt_listen {
        Some(a) => Some(crate::source::srt::listen(state.clone(), a).await?.addr),
        None => None,
    };
    for p in &state.config.pulls {
        let pull = Pull::new(&p.name, vec![p.url.clone()], PullKind::Relay, false);
        crate::source::pull::declare(&state, pull)?;
    }
    let router = crate::http::router(state.clone());
    let task = tokio::spawn(crate::http::serve(
        listener,
        router,
        state.clone(),
        shutdown,
    ));
    tracing::info!(
        %addr,
        token_server = state.config.token_server_enabled(),
        pulls = state.config.pulls.len(),
        origins = ?state.config.origins,
        "transcast listening"
    );
    Ok(Running {
        addr,
        srt_addr,
        state,
        task,
    })
}

/// How long shutdown waits for streams to end (their pushes answered, their viewers' responses ended) and
/// for connections to finish what they send, before it closes whatever is left.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the daemon until `shutdown` is cancelled, then shuts down: no new connections; every stream ends
/// (its sources get their JSON answer, its viewers the end of their response); once every tracked task is
/// done, or [`SHUTDOWN_GRACE`] has passed, the remaining connections are closed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let running = start(config, shutdown).await?;
    let _ = running.task.await;
    let state = running.state;
    tracing::info!(
        streams = state.registry.len(),
        "stopped accepting; ending streams"
    );
    state.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tasks.len(),
            "shutdown grace over: closing what is left"
        );
    }
    state.connections.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), state.tasks.wait()).await;
    tracing::info!("shut down");
    Ok(())
}
