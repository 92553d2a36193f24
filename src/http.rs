//! HTTP: the router (media routes and the API) and the accept loop that serves it.
//!
//! The accept loop is ours rather than `axum::serve` for four reasons: each connection gets a cancellation
//! token (in the request extensions as [`ConnInfo`]) so the hub can close a client that never reads — its
//! body is never polled, so nothing else could; socket options (TCP_NODELAY for latency, an optional
//! SO_SNDBUF cap) are set per connection; shutdown ends endless media responses instead of waiting for them;
//! and watchers, nearly every connection a busy server has, skip hyper: the loop reads each connection's first
//! request head itself (`sniff`), serves a plain `GET /live/{name}` with [`progressive::serve_raw`], and hands
//! everything else to hyper with the bytes it read replayed (`Prefixed`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::{Error, Kind};
use crate::output::progressive;
use crate::source::push;
use crate::state::{AppState, ConnInfo};

/// A request head must arrive within this, so idle or slowloris connections do not pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer cap per connection; also the largest request head (larger → 431).
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Every (method, path) the router serves, in the OpenAPI spec's path syntax. The tests hold this list
/// against `api-docs/openapi.yaml` and against the router itself, so a route cannot go undocumented.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/live/{name}"),
    ("get", "/live/{name}/manifest.mpd"),
    ("get", "/live/{name}/{instance}/{rep}/{file}"),
    ("get", "/time"),
    ("head", "/live/{name}"),
    ("put", "/live/{name}"),
    ("post", "/live/{name}"),
    ("get", "/"),
    ("get", "/watch/{name}"),
    ("get", "/player.js"),
    ("get", "/metrics"),
    ("get", "/api/v1/streams"),
    ("post", "/api/v1/streams"),
    ("get", "/api/v1/streams/{name}"),
    ("delete", "/api/v1/streams/{name}"),
    ("get", "/api/v1/streams/{name}/graph"),
    ("get", "/api/v1/streams/{name}/rtp"),
    ("put", "/api/v1/streams/{name}/rtp"),
    ("patch", "/api/v1/streams/{name}/rtp"),
    ("get", "/api/v1/streams/{name}/sdp"),
    ("get", "/api/v1/pulls"),
    ("get", "/api/v1/config"),
    ("post", "/api/v1/config/reload"),
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
            get(progressive::watch)
                .head(progressive::watch)
                .put(push::push)
                .post(push::push),
        )
        .route(
            "/live/{name}/manifest.mpd",
            get(crate::output::dash::manifest),
        )
        .route(
            "/live/{name}/{instance}/{rep}/{file}",
            get(crate::output::dash::media),
        )
        .route("/time", get(crate::output::dash::time))
        .route("/", get(crate::control::web::status))
        .route("/watch/{name}", get(crate::control::web::watch_page))
        .route("/player.js", get(crate::control::web::player_js))
        .route("/metrics", get(crate::control::metrics::scrape))
        .merge(crate::control::api::router(state.clone()))
        .fallback(|| async { Error::not_found("no such route") })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled. A connection whose first request is
/// `GET /live/{name}` is served by [`progressive::serve_raw`] on the bare socket; every other goes to hyper.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let send_buffer = state.config().send_buffer;
    loop {
        let (mut stream, peer) = tokio::select! {
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
        // Not the shutdown token: on shutdown a viewer's response ends with its stream, and the connection
        // is closed only after that (or after the grace).
        let kill = state.connections.child_token();
        let info = ConnInfo {
            peer,
            kill: kill.clone(),
        };
        let router = router.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let state = state.clone();
        let tasks = state.tasks.clone();
        tasks.spawn(async move {
            let mut head = BytesMut::new();
            let sniffed = tokio::select! {
                r = tokio::time::timeout(HEADER_READ_TIMEOUT, sniff(&mut stream, &mut head)) => r,
                _ = kill.cancelled() => return,
            };
            match sniffed {
                Ok(Ok(Sniffed::Watch {
                    name,
                    query,
                    headers,
                })) => {
                    drop(head);
                    watch_raw(stream, &state, &name, &query, &headers, info).await;
                    return;
                }
                Ok(Ok(Sniffed::Other)) => {}
                // Gone, or no request head within the timeout (hyper would close it the same way).
                Ok(Err(_)) | Err(_) => return,
            }
            let io = Prefixed {
                prefix: head.freeze(),
                io: stream,
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            // On shutdown: finish the request in flight (a push gets its answer), close when idle.
            let mut graceful = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection error: {e}");
                        }
                        break;
                    }
                    _ = shutdown.cancelled(), if !graceful => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    // The hub dropped this client, or shutdown's grace is over: closing the socket is the point.
                    _ = kill.cancelled() => break,
                }
            }
        });
    }
}

/// What the first request head on a connection is.
#[derive(Debug)]
enum Sniffed {
    /// A plain `GET /live/{name}[?token=KEY&...]` without a body: the raw fast path.
    Watch {
        name: String,
        query: String,
        headers: HeaderMap,
    },
    /// Anything else, including watches with percent-encoding or odd framing: hyper and the router decide.
    Other,
}

const WATCH_PREFIX: &[u8] = b"GET /live/";
/// Headers the fast path parses; a request with more goes to hyper.
const MAX_SNIFF_HEADERS: usize = 64;

/// Reads the connection's first request head into `buf` far enough to tell whether it is a watch. Stops at
/// the first byte that rules it out, so other requests reach hyper as they came (`buf` is replayed).
async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Sniffed> {
    loop {
        if let Some(s) = classify(buf) {
            return Ok(s);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Ok(Sniffed::Other);
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// What a connection's first bytes are, as far as they go: `None` while they may still become a watch's head.
fn classify(buf: &[u8]) -> Option<Sniffed> {
    let n = buf.len().min(WATCH_PREFIX.len());
    if buf[..n] != WATCH_PREFIX[..n] {
        return Some(Sniffed::Other);
    }
    if n < WATCH_PREFIX.len() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_SNIFF_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Some(watch_request(&req)),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Sniffed::Other),
    }
}

/// For the fuzzer: classifies `buf` as the accept loop would, and checks what a watch's head yields (a name the
/// router would also take, a token without a separator in it).
#[doc(hidden)]
pub fn fuzz_classify(buf: &[u8]) {
    if let Some(Sniffed::Watch { name, query, .. }) = classify(buf) {
        assert!(!name.contains(['%', '/', '?']), "{name:?}");
        if let Ok(o) = progressive::WatchOptions::parse(query_pairs(&query)) {
            assert!(o.token.is_none_or(|t| !t.contains('&')), "token");
        }
    }
}

/// A parsed head the fast path can serve exactly as the router would, or [`Sniffed::Other`].
fn watch_request(req: &httparse::Request<'_, '_>) -> Sniffed {
    let Some(target) = req.path.and_then(|p| p.strip_prefix("/live/")) else {
        return Sniffed::Other;
    };
    let (name, query) = target.split_once('?').unwrap_or((target, ""));
    // Escapes and form encoding are left to the router's extractors.
    if name.contains(['%', '/']) || query.contains(['%', '+']) {
        return Sniffed::Other;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Sniffed::Other;
        };
        headers.append(k, v);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    // A relay (another transcast) gets hyper's chunked response, whose terminator tells a clean end.
    if has_body || headers.contains_key(header::EXPECT) || progressive::is_relay(&headers) {
        return Sniffed::Other;
    }
    Sniffed::Watch {
        name: name.to_string(),
        query: query.to_string(),
        headers,
    }
}

/// A query's `key=value` pairs (without escapes: the fast path leaves those to the router).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// Admits a raw-path watcher and serves it, or answers its error (JSON, as the router would) and closes.
async fn watch_raw(
    mut stream: TcpStream,
    state: &Arc<AppState>,
    name: &str,
    query: &str,
    headers: &HeaderMap,
    info: ConnInfo,
) {
    let admitted = match progressive::WatchOptions::parse(query_pairs(query)) {
        Ok(options) => {
            progressive::admit(state, name, &options, headers, Some(info.peer), info.kill).await
        }
        Err(e) => Err(e),
    };
    match admitted {
        Ok(admitted) => progressive::serve_raw(stream, admitted, name).await,
        Err(e) => {
            let response = e.into_response();
            let (parts, body) = response.into_parts();
            let Ok(body) = axum::body::to_bytes(body, 1 << 16).await else {
                return;
            };
            let mut head = format!(
                "HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                parts.status,
                body.len()
            );
            for (k, v) in &parts.headers {
                if k != header::CONTENT_LENGTH && k != header::CONNECTION {
                    head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
                }
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// A socket whose first bytes were already read (by [`sniff`]): they are read again first.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.prefix.len());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Errors as HTTP answers. Internal and pipeline failures (500) carry a generic message, the detail goes to the
// log; a reached limit (503) names the limit.

/// The HTTP status of an error kind.
pub fn status(kind: Kind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        // Limits (503) say which limit; only genuine internal failures are hidden.
        let message = if matches!(self.kind, Kind::Pipeline | Kind::Internal) {
            tracing::error!(code = self.kind.code(), "internal error: {}", self.message);
            "internal error, see the server log"
        } else {
            &self.message
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind.code(),
                message,
            },
        };
        (status(self.kind), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status and JSON body an error answers with.
    async fn answer(e: Error) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn server_errors_hide_details() {
        let (status, v) = answer(Error::pipeline("element /pipeline0/vp8enc0 exploded")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["code"], "pipeline_error");
        assert!(!v["error"]["message"].as_str().unwrap().contains("vp8enc"));
    }

    #[tokio::test]
    async fn limit_errors_name_the_limit() {
        let (status, v) = answer(Error::unavailable(
            "the client limit (--max-clients 2) is reached",
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], "limit_reached");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--max-clients 2")
        );
    }

    #[tokio::test]
    async fn client_errors_keep_message() {
        let (status, v) = answer(Error::unsupported("not a media file")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(v["error"]["code"], "unsupported_media");
        assert_eq!(v["error"]["message"], "not a media file");
    }
}
