//! The daemon: startup checks, the server task, and shutdown. The state it shares is [`crate::state`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::tokens::TokenStore;
use crate::error::{Error, Result};
pub use crate::state::AppState;
use crate::state::{Current, Parts};
use crate::stream::registry::Registry;

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
    crate::control::reload::check_pulls(&config)?;
    let current = Current::build(config)?;
    let config = current.config.clone();
    let tokens = TokenStore::open(&config.state_dir)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let state = Arc::new(AppState::new(
        current,
        Parts {
            registry: Registry::new(config.max_streams),
            transcodes: Arc::new(Semaphore::new(config.max_transcodes)),
            clients: Arc::new(Semaphore::new(config.max_clients)),
            shutdown: shutdown.clone(),
            tokens,
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
        },
    ));
    let _ = state.metrics.set(crate::control::metrics::registry(&state));
    let srt_addr = match config.srt_listen {
        Some(a) => Some(crate::source::srt::listen(state.clone(), a).await?.addr),
        None => None,
    };
    crate::control::reload::declare_pulls(&state, &config)?;
    let router = crate::http::router(state.clone());
    let task = tokio::spawn(crate::http::serve(
        listener,
        router,
        state.clone(),
        shutdown,
    ));
    tracing::info!(
        %addr,
        token_server = config.token_server_enabled(),
        pulls = config.pulls.len(),
        origins = ?config.origins,
        "transcast listening"
    );
    Ok(Running {
        addr,
        srt_addr,
        state,
        task,
    })
}

/// `SIGHUP` reloads the configuration file (`systemctl reload`).
async fn reload_on_hangup(state: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: reload through the API only");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = crate::control::reload::reload(&state).await;
    }
}

/// How long shutdown waits for streams to end (their pushes answered, their viewers' responses ended) and
/// for connections to finish what they send, before it closes whatever is left.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the daemon until `shutdown` is cancelled, then shuts down: no new connections; every stream ends
/// (its sources get their JSON answer, its viewers the end of their response); once every tracked task is
/// done, or [`SHUTDOWN_GRACE`] has passed, the remaining connections are closed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let running = start(config, shutdown).await?;
    let hangups = tokio::spawn(reload_on_hangup(running.state.clone()));
    let _ = running.task.await;
    hangups.abort();
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
