//! `GET`/`HEAD /live/{name}`: a client watches a stream as one endless WebM response.
//!
//! The body is the client's [`Subscription`]: header, then the cached keyframe group (or the next keyframe
//! cluster), then live chunks, until the stream ends (clean end of the response), the client goes away
//! (unregistered on drop), or the reaper or shutdown cancels the connection.
//!
//! Two ways in, one set of checks ([`admit`]): a connection whose first request is `GET /live/...` is served
//! by [`serve_raw`] straight on the socket (the accept loop in `http.rs` reads that head itself); `HEAD` and
//! watches later on a keep-alive connection go through hyper and [`watch`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use tokio_util::sync::CancellationToken;

use crate::control::app::AppState;
use crate::control::auth;
use crate::error::{Error, Result};
use crate::http::ConnInfo;
use crate::output::fanout::MAX_IOVECS;
use crate::stream::hub::{SubscribeError, Subscription};
use crate::stream::registry as streams;
use crate::stream::webm::TrackKind;

/// How long a client of a stream that is still starting (typefind, first keyframe) waits for its header.
pub const HEADER_WAIT: Duration = Duration::from_secs(10);

/// A client admitted to a stream: its reader, its `--max-clients` slot (held for the connection's life) and the
/// content type to announce.
#[derive(Debug)]
pub struct Admitted {
    pub sub: Subscription,
    pub permit: OwnedSemaphorePermit,
    pub content_type: &'static str,
}

/// Everything a watch request is checked for, shared by the raw fast path ([`serve_raw`]) and the axum handler:
/// name, view authorisation, the stream, the client limit, and the header wait.
pub async fn admit(
    app: &AppState,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    kill: CancellationToken,
) -> Result<Admitted> {
    let entry = find(app, name, token, headers, peer)?;
    let permit = app.clients.clone().try_acquire_owned().map_err(|_| {
        Error::unavailable(format!(
            "the client limit (--max-clients {}) is reached",
            app.config.max_clients
        ))
    })?;
    let sub = entry
        .hub
        .subscribe(peer, kill, HEADER_WAIT)
        .await
        .map_err(|e| match e {
            SubscribeError::Ended => {
                Error::not_found(format!("stream '{name}' ended before it produced media"))
            }
            SubscribeError::Timeout => {
                Error::unavailable(format!("stream '{name}' has produced no media yet"))
            }
        })?;
    let content_type = if sub.has_video() {
        "video/webm"
    } else {
        "audio/webm"
    };
    Ok(Admitted {
        sub,
        permit,
        content_type,
    })
}

/// The stream a watch (or HEAD) names, after the name and view checks.
fn find(
    app: &AppState,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Arc<crate::stream::Stream>> {
    streams::validate_name(name)?;
    authorize_view(app, name, headers, token, peer)?;
    app.registry
        .get(name)
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))
}

/// `HEAD`: what a watch would get, without becoming a viewer: no client slot, not counted, no wait for the
/// header (a stream without media yet is 503 at once).
fn head(
    app: &AppState,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Response> {
    let stream = find(
        app,
        name,
        query.get("token").map(String::as_str),
        headers,
        peer,
    )?;
    let tracks = stream.hub.tracks();
    if tracks.is_empty() {
        return Err(Error::unavailable(format!(
            "stream '{name}' has produced no media yet"
        )));
    }
    let content_type = if tracks.iter().any(|t| t.kind == TrackKind::Video) {
        "video/webm"
    } else {
        "audio/webm"
    };
    Ok(watch_response(content_type))
}

fn watch_response(content_type: &'static str) -> Response {
    let mut response = Response::new(Body::empty());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (k, v) in WATCH_HEADERS {
        h.insert(k, HeaderValue::from_static(v));
    }
    response
}

/// Response headers of a watch, after the content type.
const WATCH_HEADERS: [(&str, &str); 3] = [
    ("cache-control", "no-cache, no-store"),
    ("access-control-allow-origin", "*"),
    ("x-content-type-options", "nosniff"),
];

/// The axum handler: `HEAD`, and `GET`s that arrive on a connection already used for another request (the
/// accept loop sends a connection's first `GET /live/...` to [`serve_raw`]).
pub async fn watch(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Result<Response> {
    let (peer, kill) = match conn {
        Some(axum::Extension(c)) => (Some(c.peer), c.kill),
        None => (None, app.shutdown.child_token()),
    };
    if method == Method::HEAD {
        return head(&app, &name, &query, &headers, peer);
    }
    let Admitted {
        sub,
        permit,
        content_type,
    } = admit(
        &app,
        &name,
        query.get("token").map(String::as_str),
        &headers,
        peer,
        kill,
    )
    .await?;
    let mut response = watch_response(content_type);
    tracing::debug!(stream = %name, ?peer, "client joined");
    let kill: CancellationToken = sub.kill_token().clone();
    let stream = futures_util::stream::unfold((sub, permit), move |(mut sub, permit)| {
        let kill = kill.clone();
        async move {
            let data = tokio::select! {
                biased;
                _ = kill.cancelled() => None,
                d = sub.next() => d,
            }?;
            Some((Ok::<_, Infallible>(data), (sub, permit)))
        }
    });
    *response.body_mut() = Body::from_stream(stream);
    Ok(response)
}

/// A client's write queue as it starts, and as it is trimmed back to once caught up.
const QUEUE_CAPACITY: usize = 4;

/// Serves an admitted client straight on its socket, without hyper: a close-delimited `HTTP/1.1 200`
/// response (`Connection: close`, as Icecast does), then every batch the hub has ready in one vectored write.
/// Once the client has caught up with the live edge its socket is parked with one of the stream's fan-out
/// threads (`fanout`), which writes new chunks to it directly; it comes back here when it cannot keep up.
/// This is the path nearly every watcher takes, so it is kept lean: no chunked framing, no per-block flush,
/// no per-connection read buffer (hyper's are 8 KiB and more), no task wake-up per chunk while caught up.
pub async fn serve_raw(socket: TcpStream, admitted: Admitted, name: &str) {
    let Admitted {
        mut sub,
        permit,
        content_type,
    } = admitted;
    let kill = sub.kill_token().clone();
    let peer = socket.peer_addr().ok();
    let socket = Arc::new(socket);
    tracing::debug!(stream = %name, ?peer, "client joined");
    let mut head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n");
    for (k, v) in WATCH_HEADERS {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut queue = VecDeque::with_capacity(QUEUE_CAPACITY);
    queue.push_back(Bytes::from(head));
    let pump = async {
        loop {
            if queue.is_empty() {
                // A joiner's first batches (its keyframe group) grow it; most of a client's life it holds a
                // chunk or two, and clients are many.
                if queue.capacity() > 4 * QUEUE_CAPACITY {
                    queue.shrink_to(QUEUE_CAPACITY);
                }
                if let Some(parked) = sub.park(&socket) {
                    match parked.await {
                        Ok(resume) => queue.extend(sub.resume(resume?)),
                        // The shard let go without a word: only for a cancelled connection.
                        Err(_) => return Ok(false),
                    }
                    continue;
                }
                if !sub.next_batch(&mut queue).await {
                    return Ok(true);
                }
            }
            write_some(&socket, &mut queue).await?;
        }
    };
    let ended: std::io::Result<bool> = tokio::select! {
        biased;
        _ = kill.cancelled() => Ok(false),
        r = pump => r,
    };
    match ended {
        // The stream ended: a clean end of the response.
        Ok(true) => {
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
        }
        // Reaper or shutdown: dropping the socket is the point.
        Ok(false) => {}
        Err(e) => tracing::debug!(stream = %name, ?peer, "client gone: {e}"),
    }
    drop(permit);
}

/// One `writev` of the queue's front (up to [`MAX_IOVECS`] chunks), once the socket can take some; drops what
/// was written.
async fn write_some(socket: &TcpStream, queue: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    let slices: Vec<IoSlice<'_>> = queue
        .iter()
        .take(MAX_IOVECS)
        .map(|b| IoSlice::new(b))
        .collect();
    // `poll_write_ready` rather than `writable()`: the latter's future carries a waiter node, about 150 bytes
    // more in every client's task.
    let mut n = std::future::poll_fn(|cx| {
        loop {
            std::task::ready!(socket.poll_write_ready(cx))?;
            match socket.try_write_vectored(&slices) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        }
    })
    .await?;
    drop(slices);
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    while n > 0 {
        let front = queue
            .front_mut()
            .expect("written bytes came from the queue");
        if n >= front.len() {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
    Ok(())
}

/// With the token server on, a stream may be watched only when its session exists, has not expired and
/// grants HTTP output; a session that restricts viewing also needs its view key.
fn authorize_view(
    app: &AppState,
    name: &str,
    headers: &HeaderMap,
    token: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<()> {
    if !app.config.token_server_enabled() {
        return Ok(());
    }
    let session = app
        .tokens
        .get(name)
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))?;
    if session.expired(time::OffsetDateTime::now_utc()) {
        return Err(Error::unauthorized(format!(
            "the session of '{name}' has expired"
        )));
    }
    if !session.outputs.http {
        return Err(Error::forbidden(format!(
            "session '{name}' has no HTTP output"
        )));
    }
    if let Some(hash) = &session.view_key_sha256 {
        let ok = auth::presented_key(headers, token).is_some_and(|k| auth::secret_matches(k, hash));
        if !ok {
            let ip = peer.map(|p| auth::client_ip(p, headers, &app.config.trusted_proxy));
            app.auth_failures.record(
                ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                &format!("view of '{name}' without its view key"),
            );
            return Err(Error::unauthorized(format!(
                "watching '{name}' needs its view key (?token=KEY)"
            )));
        }
    }
    Ok(())
}
