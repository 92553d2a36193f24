//! HTTP: the router (media routes now, the API later) and the accept loop that serves it.
//!
//! The accept loop is ours rather than `axum::serve` for three reasons: each connection gets a cancellation
//! token (in the request extensions as [`ConnInfo`]) so the hub can close a client that never reads — its
//! body is never polled, so nothing else could; socket options (TCP_NODELAY for latency, an optional
//! SO_SNDBUF cap) are set per connection; and shutdown ends endless media responses instead of waiting
//! for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::AppState;
use crate::error::Error;
use crate::{egress, ingest};

/// A request head must arrive within this, so idle or slowloris connections do not pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer cap per connection; also the largest request head (larger → 431).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// After shutdown, connections get this long to finish what they are sending.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Per-connection facts for handlers.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Cancelling it closes the connection.
    pub kill: CancellationToken,
}

/// Every (method, path) the router serves, in the OpenAPI spec's path syntax. The tests hold this list
/// against `api-docs/openapi.yaml` and against the router itself, so a route cannot go undocumented.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/live/{name}"),
    ("head", "/live/{name}"),
    ("put", "/live/{name}"),
    ("post", "/live/{name}"),
    ("get", "/"),
    ("get", "/watch/{name}"),
    ("get", "/metrics"),
    ("get", "/api/v1/streams"),
    ("get", "/api/v1/streams/{name}"),
    ("delete", "/api/v1/streams/{name}"),
    ("get", "/api/v1/streams/{name}/graph"),
    ("get", "/api/v1/streams/{name}/rtp"),
    ("put", "/api/v1/streams/{name}/rtp"),
    ("patch", "/api/v1/streams/{name}/rtp"),
    ("get", "/api/v1/streams/{name}/sdp"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens/{session_id}"),
    ("delete", "/api/v1/tokens/{session_id}"),
    ("post", "/api/add-token"),
    ("delete", "/api/revoke-token"),
    ("get", "/api/list-tokens"),
    ("get", "/api/list-streams"),
    ("delete", "/api/abort-stream"),
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/live/{name}",
            get(egress::watch)
                .head(egress::watch)
                .put(ingest::push)
                .post(ingest::push),
        )
        .route("/", get(crate::web::status))
        .route("/watch/{name}", get(crate::web::watch_page))
        .route("/metrics", get(crate::metrics::scrape))
        .merge(crate::api::router(state.clone()))
        .fallback(|| async { Error::not_found("no such route") })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    send_buffer: usize,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, breathe, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        if send_buffer > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer);
        }
        let kill = shutdown.child_token();
        let info = ConnInfo {
            peer,
            kill: kill.clone(),
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, "connection error: {e}");
                },
                _ = kill.cancelled() => {
                    if shutdown.is_cancelled() {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                    }
                    // Otherwise the hub dropped this client: closing the socket is the point.
                }
            }
        });
    }
}
