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

use clap::ValueEnum;

use crate::config::JoinMode;
use crate::control::auth;
use crate::control::extauth::Action;
use crate::error::{Error, Kind, Result};
use crate::output::fanout::MAX_IOVECS;
use crate::source::pull::{Pull, PullState, RELAY_AGENT_PREFIX};
use crate::state::AppState;
use crate::state::ConnInfo;
use crate::stream::hub::{CHUNKED_END, SubscribeError, Subscription};
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
    /// `Access-Control-Allow-Origin` (`--cors-origin`).
    pub cors_origin: String,
}

/// What a watch asks for in its query besides the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// `?token=`: a view key.
    pub token: Option<String>,
    /// `?format=tracks`: the tracks apart, in records (what `/player.js` reads; [`crate::stream::tracks`]).
    pub split: bool,
    /// `?join=gop|live`: where this reader starts, instead of `--join`.
    pub join: Option<JoinMode>,
}

impl WatchOptions {
    /// From a query's pairs (the last of a key wins, as the router's map); unknown values are refused.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<WatchOptions> {
        let mut o = WatchOptions::default();
        for (k, v) in pairs {
            match k {
                "token" => o.token = Some(v.to_string()),
                "format" => {
                    o.split = match v {
                        "webm" => false,
                        crate::stream::tracks::FORMAT => true,
                        _ => {
                            return Err(Error::bad_request(format!(
                                "unknown format '{v}': webm (the default) or {}",
                                crate::stream::tracks::FORMAT
                            )));
                        }
                    }
                }
                "join" => {
                    o.join = Some(JoinMode::from_str(v, true).map_err(|_| {
                        Error::bad_request(format!("unknown join '{v}': gop or live"))
                    })?)
                }
                _ => {}
            }
        }
        Ok(o)
    }

    pub fn from_map(query: &HashMap<String, String>) -> Result<WatchOptions> {
        WatchOptions::parse(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Everything a watch request is checked for, shared by the raw fast path ([`serve_raw`]) and the axum handler:
/// name, view authorisation, the stream, the client limit, and the header wait.
pub async fn admit(
    app: &Arc<AppState>,
    name: &str,
    options: &WatchOptions,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    kill: CancellationToken,
) -> Result<Admitted> {
    let token = options.token.as_deref();
    let entry = find_or_pull(app, name, token, headers, peer).await?;
    let permit = app.clients.clone().try_acquire_owned().map_err(|_| {
        Error::unavailable(format!(
            "the client limit (--max-clients {}) is reached",
            app.config().max_clients
        ))
    })?;
    // The split hub has its header before the stream's: waiting on the stream's waits for both.
    let hub = match (&entry.hub.split, options.split) {
        (Some(split), true) => {
            entry
                .hub
                .wait_header(HEADER_WAIT)
                .await
                .map_err(|e| no_header(name, e))?;
            split
        }
        _ => &entry.hub,
    };
    let join = options.join.unwrap_or(app.config().join);
    let sub = hub
        .subscribe_as(join, peer, kill, HEADER_WAIT)
        .await
        .map_err(|e| no_header(name, e))?;
    let content_type = if options.split {
        crate::stream::tracks::CONTENT_TYPE
    } else if sub.has_video() {
        "video/webm"
    } else {
        "audio/webm"
    };
    Ok(Admitted {
        sub,
        permit,
        content_type,
        cors_origin: app.config().cors_origin.clone(),
    })
}

fn no_header(name: &str, e: SubscribeError) -> Error {
    match e {
        SubscribeError::Ended => {
            Error::not_found(format!("stream '{name}' ended before it produced media"))
        }
        SubscribeError::Timeout => {
            Error::unavailable(format!("stream '{name}' has produced no media yet"))
        }
    }
}

/// The stream a watch names, after the name and view checks (an edge with an origin key asks its origin
/// whether the viewer's key may watch it). A name this server does not have but can pull (an edge; a
/// declared on-demand pull) starts its pull and waits for its first media, up to `--pull-start-timeout`.
pub(crate) async fn find_or_pull(
    app: &Arc<AppState>,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Arc<crate::stream::Stream>> {
    check(app, name, token, headers, peer)?;
    if let Some(a) = &app.ext_auth {
        let ip = peer.map(|p| auth::client_ip(p, headers, &app.config().trusted_proxy));
        a.check(Action::View, name, ip, auth::presented_key(headers, token))
            .await?;
    }
    check_with_origin(app, name, auth::presented_key(headers, token)).await?;
    if let Some(s) = app.registry.get(name) {
        return Ok(s);
    }
    match crate::source::pull::want(app, name) {
        Some(pull) => await_pull(app, name, &pull).await,
        None => Err(Error::not_found(format!("no live stream named '{name}'"))),
    }
}

/// Waits until a pull's stream has media (or the pull says the upstream has no such stream, refused it, or
/// the start timeout is over).
async fn await_pull(
    app: &Arc<AppState>,
    name: &str,
    pull: &Arc<Pull>,
) -> Result<Arc<crate::stream::Stream>> {
    const LOOK: Duration = Duration::from_millis(50);
    let timeout = app.config().pull_start_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = pull.watch_status();
    loop {
        if let Some(s) = app.registry.get(name).filter(|s| s.hub.has_header()) {
            return Ok(s);
        }
        let st = status.borrow_and_update().clone();
        let why = st.last_error.clone().unwrap_or_default();
        match (st.state, st.last_status) {
            (PullState::Retrying | PullState::Stopped, Some(404)) => {
                return Err(Error::not_found(format!(
                    "no live stream named '{name}' here or upstream ({why})"
                )));
            }
            (PullState::Retrying, Some(401 | 403)) => {
                return Err(Error::new(
                    Kind::BadGateway,
                    format!("the upstream refused to relay '{name}' to this server ({why})"),
                ));
            }
            (PullState::Stopped, _) => {
                return Err(Error::not_found(format!("stream '{name}' has ended")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!("; last error: {why}")
            };
            return Err(Error::new(
                Kind::GatewayTimeout,
                format!(
                    "stream '{name}' did not start within --pull-start-timeout ({timeout:?}){why}"
                ),
            ));
        }
        // Keeps an on-demand pull open while viewers wait for it.
        crate::source::pull::want(app, name);
        let _ = tokio::time::timeout(LOOK, status.changed()).await;
    }
}

/// How long an edge trusts its origin's answer on a viewer key.
pub const VIEW_CHECK_TTL: Duration = Duration::from_secs(5);
/// Answers kept at most (the cache is cleared when full).
const VIEW_CHECK_MAX: usize = 10_000;

/// On an edge that relays with an origin key (so it can pull streams that need a view key), a viewer may
/// watch only what its origin would let it watch: the edge asks (`HEAD ORIGIN/live/NAME?token=KEY`, without
/// its own key) and keeps the answer for [`VIEW_CHECK_TTL`].
async fn check_with_origin(app: &AppState, name: &str, key: Option<&str>) -> Result<()> {
    if app.config().origins.is_empty() || app.config().origin_key.is_none() {
        return Ok(());
    }
    let cache_key = (name.to_string(), key.map(auth::hash_secret));
    if let Some((at, r)) = app.view_checks.map.lock().unwrap().get(&cache_key)
        && at.elapsed() < VIEW_CHECK_TTL
    {
        return r.clone();
    }
    let query = key.map_or(String::new(), |k| format!("?token={}", percent_encode(k)));
    let mut last = Error::new(Kind::BadGateway, "no origin answered");
    for origin in &app.config().origins {
        let url = format!("{origin}/live/{name}{query}");
        let answer = match crate::source::pull::head(&url, None).await {
            // 503: the stream exists (or may), it has no media yet: the key passed.
            Ok(s) if (200..300).contains(&s) || s == 503 => Ok(()),
            Ok(401) => Err(Error::unauthorized(format!(
                "watching '{name}' needs its view key (?token=KEY); the origin refused this one"
            ))),
            Ok(403) => Err(Error::forbidden(format!(
                "the origin does not allow watching '{name}'"
            ))),
            Ok(404) => return Err(Error::not_found(format!("no live stream named '{name}'"))),
            Ok(s) => {
                last = Error::new(Kind::BadGateway, format!("{url} answered {s}"));
                continue;
            }
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut map = app.view_checks.map.lock().unwrap();
        if map.len() >= VIEW_CHECK_MAX {
            map.clear();
        }
        map.insert(cache_key, (tokio::time::Instant::now(), answer.clone()));
        return answer;
    }
    Err(Error::new(
        Kind::BadGateway,
        format!(
            "cannot check the view key of '{name}' with any origin: {}",
            last.message
        ),
    ))
}

/// Percent-encodes everything but unreserved characters (a key in a query string).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a request comes from another transcast relaying the stream (an edge).
pub fn is_relay(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with(RELAY_AGENT_PREFIX))
}

/// The name and this server's own view checks, for watches and HEADs.
fn check(
    app: &AppState,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<()> {
    streams::validate_name(name)?;
    authorize_view(app, name, headers, token, peer)
}

/// The stream a HEAD names, after the name and view checks: what is here now (a HEAD starts no pull).
fn find(
    app: &AppState,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Arc<crate::stream::Stream>> {
    check(app, name, token, headers, peer)?;
    app.registry
        .get(name)
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))
}

/// `HEAD`: what a watch would get, without becoming a viewer: no client slot, not counted, no wait for the
/// header (a stream without media yet is 503 at once).
fn head(
    app: &AppState,
    name: &str,
    options: &WatchOptions,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Response> {
    let stream = find(app, name, options.token.as_deref(), headers, peer)?;
    let tracks = stream.hub.tracks();
    if tracks.is_empty() {
        return Err(Error::unavailable(format!(
            "stream '{name}' has produced no media yet"
        )));
    }
    let content_type = if options.split {
        crate::stream::tracks::CONTENT_TYPE
    } else if tracks.iter().any(|t| t.kind == TrackKind::Video) {
        "video/webm"
    } else {
        "audio/webm"
    };
    Ok(watch_response(content_type, &app.config().cors_origin))
}

fn watch_response(content_type: &'static str, cors_origin: &str) -> Response {
    let mut response = Response::new(Body::empty());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (k, v) in WATCH_HEADERS {
        h.insert(k, HeaderValue::from_static(v));
    }
    if let Ok(v) = HeaderValue::from_str(cors_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    response
}

/// Response headers of a watch, after the content type.
const WATCH_HEADERS: [(&str, &str); 2] = [
    ("cache-control", "no-cache, no-store"),
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
    let options = WatchOptions::from_map(&query)?;
    if method == Method::HEAD {
        return head(&app, &name, &options, &headers, peer);
    }
    let Admitted {
        mut sub,
        permit,
        content_type,
        cors_origin,
    } = admit(&app, &name, &options, &headers, peer, kill).await?;
    let mut response = watch_response(content_type, &cors_origin);
    if is_relay(&headers) {
        // Relays come this way (the accept loop leaves them to hyper): their response is chunked, so an edge
        // can tell the stream's end (the terminator) from a broken connection.
        sub.mark_relay();
        tracing::info!(stream = %name, ?peer, "relay joined");
    } else {
        tracing::debug!(stream = %name, ?peer, "client joined");
    }
    let kill: CancellationToken = sub.kill_token().clone();
    // A relay's response ends with the chunked terminator only when the stream really ended. When this daemon
    // is shutting down (an origin restart), the stream's end is not the stream's: the response breaks off
    // instead, so an edge keeps its viewers on its fallback and pulls again.
    let relay = sub.is_relay().then(|| app.shutdown.clone());
    let stream = futures_util::stream::unfold(Some((sub, permit)), move |state| {
        let kill = kill.clone();
        let relay = relay.clone();
        async move {
            let (mut sub, permit) = state?;
            let data = tokio::select! {
                biased;
                _ = kill.cancelled() => None,
                d = sub.next() => d,
            };
            match data {
                Some(d) => Some((Ok(d), Some((sub, permit)))),
                None if relay.is_some_and(|s| s.is_cancelled()) => Some((
                    Err(std::io::Error::other(
                        "shutting down: the stream continues elsewhere",
                    )),
                    None,
                )),
                None => None,
            }
        }
    });
    *response.body_mut() = Body::from_stream(stream);
    Ok(response)
}

/// A client's write queue as it starts, and as it is trimmed back to once caught up.
const QUEUE_CAPACITY: usize = 4;

/// Serves an admitted client straight on its socket, without hyper: an `HTTP/1.1 200` response in chunked
/// transfer coding (chunks framed once by the hub, for every client) with `Connection: close`, then every batch
/// the hub has ready in one vectored write, and the last chunk when the stream ends.
/// Once the client has caught up with the live edge its socket is parked with one of the stream's shards, which
/// a fan-out thread (`fanout`) serves, writing new chunks to it directly; it comes back here when it cannot
/// keep up.
/// This is the path nearly every watcher takes, so it is kept lean: no per-client framing, no per-block flush,
/// no per-connection read buffer (hyper's are 8 KiB and more), no task wake-up per chunk while caught up.
pub async fn serve_raw(socket: TcpStream, admitted: Admitted, name: &str) {
    let Admitted {
        mut sub,
        permit,
        content_type,
        cors_origin,
    } = admitted;
    let kill = sub.kill_token().clone();
    let peer = socket.peer_addr().ok();
    let socket = Arc::new(socket);
    tracing::debug!(stream = %name, ?peer, "client joined");
    // Chunked, so that a client can tell the stream's end (the last chunk) from a broken connection; and
    // `Connection: close`, as Icecast sends it, since nothing else is read from this connection.
    sub.use_chunked_framing();
    let mut head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n");
    for (k, v) in WATCH_HEADERS {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // Checked at startup to be a header value (no CR or LF).
    head.push_str(&format!("access-control-allow-origin: {cors_origin}\r\n"));
    head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
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
                if let Some(parking) = sub.park(&socket) {
                    if let Some(index) = parking.start_shard {
                        crate::output::fanout::start(sub.hub(), index);
                    }
                    match parking.resume.await {
                        Ok(resume) => queue.extend(sub.resume(resume?)),
                        // The shard let go without a word: only for a cancelled connection.
                        Err(_) => return Ok(false),
                    }
                    continue;
                }
                if !sub.next_batch(&mut queue).await {
                    // The stream's end: the last chunk, then the connection closes.
                    queue.push_back(Bytes::from_static(CHUNKED_END));
                    while !queue.is_empty() {
                        write_some(&socket, &mut queue).await?;
                    }
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

/// A stream the config file declares with a view key needs it. With the token server on, a stream may be
/// watched only when its session exists, has not expired and grants HTTP output; a session that restricts
/// viewing also needs its view key.
fn authorize_view(
    app: &AppState,
    name: &str,
    headers: &HeaderMap,
    token: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<()> {
    let config = app.config();
    // An edge's key (`--edge-key`) stands in for any view key: the edge checks its own viewers' keys here.
    let edge = config.edge_key.as_deref().map(auth::hash_secret);
    let view_key = |hash: &str| {
        let ok = auth::presented_key(headers, token).is_some_and(|k| {
            auth::secret_matches(k, hash)
                || edge.as_ref().is_some_and(|e| auth::secret_matches(k, e))
        });
        if ok {
            return Ok(());
        }
        let ip = peer.map(|p| auth::client_ip(p, headers, &config.trusted_proxy));
        app.auth_failures.record(
            ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            &format!("view of '{name}' without its view key"),
        );
        Err(Error::unauthorized(format!(
            "watching '{name}' needs its view key (?token=KEY)"
        )))
    };
    if let Some(hash) = config
        .declared(name)
        .and_then(|d| d.view_key_sha256.as_deref())
    {
        view_key(hash)?;
    }
    if !config.token_server_enabled() {
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
        view_key(hash)?;
    }
    Ok(())
}
