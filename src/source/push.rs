//! `PUT`/`POST /live/{name}`: a source uploads a stream (Content-Length or chunked), or continues one
//! (`Content-Range: bytes N-M/*`, the pieces souphttpclientsink sends), and gets a JSON summary.
//!
//! ```text
//!  body frames ─► head (typefind) ─► Feed::Data ─► source task ─► appsrc (bounded: the task waits) ─► ...
//!                                    ▲ a full feed stops reading the socket, TCP throttles the sender
//! ```
//!
//! Checks run 400 (name) → 401 (token) → 409 (busy) / 503 (limits) → 415 (type); a continuation whose
//! offset is not where the input is gets 416 naming the expected offset. A push is answered when its body
//! has been taken (and, for a new source, once its media has reached the stream or failed): the source
//! then plays out, waits `--resume-grace` for a continuation, and ends the stream unless one comes. Any
//! error answered while the source is still uploading first drains a bounded part of the body, so that
//! curl and ffmpeg read the JSON instead of a connection reset.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::auth;
use crate::control::extauth::Action;
use crate::control::tokens::Session;
use crate::error::{Error, Kind, Result};
use crate::source::SourceContext;
use crate::state::AppState;
use crate::state::ConnInfo;
use crate::stream::attach::{End, Feed, Feeder};
use crate::stream::registry;
use crate::stream::{Mode, Stream};

/// After an error, read at most this much of the rest of the upload before closing ...
pub const DRAIN_MAX_BYTES: usize = 1 << 20;
/// ... or for at most this long: enough for curl/ffmpeg to finish a small upload and read the answer.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);
/// Bound on the wait, after a new source's body is complete, for its media to reach the stream (or fail):
/// a file whose `moov` comes last starts only now, and decodes within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// ... unless its pipeline has taken every byte and sat idle this long: it needs more input to go on (the
/// first of souphttpclientsink's pieces can be 16 KiB), which only comes after this answer.
pub const STARVED_AFTER: Duration = Duration::from_millis(300);

#[derive(Debug, Serialize)]
pub struct PushSummary {
    pub stream: String,
    pub end: End,
    pub mode: Mode,
    pub input: &'static str,
    /// Input bytes the source has taken so far (over all its pieces): where a continuation starts.
    pub bytes_in: u64,
    /// Bytes of WebM the stream has published so far: one copy of its output, whatever the number of viewers
    /// (the API's `bytes_out` is what was sent to all viewers together).
    pub bytes_published: u64,
    pub media_duration_ms: u64,
    pub frames_dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a push presents to be let in.
struct Credentials {
    ip: Option<std::net::IpAddr>,
    headers: axum::http::HeaderMap,
    token: Option<String>,
}

pub async fn push(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    conn: Option<axum::Extension<ConnInfo>>,
    req: Request,
) -> Response {
    let peer = conn.as_ref().map(|c| c.peer);
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let creds = Credentials {
        ip: peer.map(|p| auth::client_ip(p, req.headers(), &app.config().trusted_proxy)),
        headers: req.headers().clone(),
        token: query.get("token").cloned(),
    };
    let range = req.headers().get(header::CONTENT_RANGE).cloned();
    let mut body = req.into_body();
    // The name goes into the span only once it is known to be clean (no CR/LF to forge a log line).
    let span = match crate::stream::registry::validate_name(&name) {
        Ok(()) => tracing::info_span!("push", stream = %name, peer = ?peer),
        Err(_) => tracing::info_span!("push", stream = "(invalid)", peer = ?peer),
    };
    let mut polled = false;
    let result = tracing::Instrument::instrument(
        async {
            let range = range.as_ref().map(parse_content_range).transpose()?;
            if let Some(a) = &app.ext_auth {
                crate::stream::registry::validate_name(&name)?;
                let key = auth::presented_key(&creds.headers, creds.token.as_deref());
                a.check(Action::Push, &name, creds.ip, key).await?;
            }
            match range {
                Some(offset) => {
                    continuation(&app, &name, &creds, offset, &mut body, &mut polled).await
                }
                None => run(&app, &name, &creds, peer, &mut body, &mut polled).await,
            }
        },
        span.clone(),
    )
    .await;
    match result {
        Ok(summary) => {
            // souphttpclientsink sends tens of pieces a second: only a new source's answer is worth a line.
            if range.is_some() {
                span.in_scope(|| tracing::debug!(end = ?summary.end, bytes_in = summary.bytes_in, "piece taken"));
            } else {
                span.in_scope(|| tracing::info!(end = ?summary.end, bytes_in = summary.bytes_in, media_ms = summary.media_duration_ms, "push answered"));
            }
            let aborted = summary.end == End::Aborted;
            let mut resp = Json(summary).into_response();
            if aborted {
                // The source may still be uploading: the connection ends with this answer.
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            resp
        }
        Err(e) => {
            span.in_scope(|| tracing::warn!(code = e.kind.code(), "push refused: {}", e.message));
            // A client still waiting for 100-continue has sent no body: nothing to drain.
            if polled || !expects_continue {
                drain(&mut body).await;
            }
            e.into_response()
        }
    }
}

/// The first byte of `Content-Range: bytes N-M/*` (or `/TOTAL`).
pub(crate) fn parse_content_range(v: &header::HeaderValue) -> Result<u64> {
    let bad = || {
        Error::bad_request("Content-Range must be 'bytes N-M/*' (or 'bytes N-M/TOTAL') with N <= M")
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let rest = s.strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, _total) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok(a)
}

/// Reads and discards up to [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`] of what is left of an upload.
async fn drain(body: &mut Body) {
    let deadline = Instant::now() + DRAIN_MAX_TIME;
    let mut n = 0usize;
    while n < DRAIN_MAX_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => n += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

/// What the source did while we waited for its next bytes.
enum Input {
    Data(Bytes),
    End,
    Timeout,
    Failed(String),
}

async fn next_input(body: &mut Body, timeout: Duration) -> Input {
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Input::Timeout,
            Ok(None) => return Input::End,
            Ok(Some(Err(e))) => return Input::Failed(e.to_string()),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if d.is_empty() => continue,
                Ok(d) => return Input::Data(d),
                Err(_) => continue, // trailers
            },
        }
    }
}

/// A new source for `name`: the stream is opened (or created), the push claims it, and its body is fed to
/// the source's task (which typefinds it and starts its pipeline) until it ends.
async fn run(
    app: &Arc<AppState>,
    name: &str,
    creds: &Credentials,
    peer: Option<std::net::SocketAddr>,
    body: &mut Body,
    polled: &mut bool,
) -> Result<PushSummary> {
    registry::validate_name(name)?;
    let session = authorize(app, name, creds)?;
    let (stream, feeder) = start_source(app, name, session, peer, None)?;
    *polled = true;
    let end = spawn_feed(app, &stream, &feeder, body).await;
    if end != End::Aborted {
        // The answer says whether the source's media made it: wait until it reached the stream or failed,
        // or its pipeline starves for input.
        wait_settled(&feeder).await;
    }
    if let Some(e) = feeder.status.borrow().failed.clone() {
        if e.kind != Kind::BadRequest {
            app.registry
                .totals
                .pipeline_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        return Err(e);
    }
    let input = stream
        .source()
        .and_then(|s| s.container)
        .unwrap_or("unknown");
    Ok(summary(&stream, &feeder, end, input))
}

/// Opens (or creates) the stream `name` and claims it for a new source whose bytes are then fed with
/// [`spawn_feed`]: the source task typefinds them and starts its pipeline. `url` says where a source that is
/// not an HTTP push comes from (the API shows it); such a source's clean end is a loss (it has no
/// continuation pieces: the stream falls back and waits for the next one).
pub(crate) fn start_source(
    app: &Arc<AppState>,
    name: &str,
    session: Option<Session>,
    peer: Option<std::net::SocketAddr>,
    url: Option<String>,
) -> Result<(Arc<Stream>, Arc<Feeder>)> {
    let cfg = app.config();
    let (stream, reservation) = app
        .registry
        .open(name, || app.new_stream(name, session.as_ref(), None))?;
    if let Some(r) = reservation {
        app.tasks.spawn(stream.clone().run(r));
    }
    let (feeder, rx) = stream.claim()?;
    app.tasks.spawn(crate::source::run(
        stream.clone(),
        feeder.clone(),
        rx,
        SourceContext {
            templates: app.templates(),
            pace: cfg.pace,
            resume_grace: cfg.resume_grace,
            session,
            peer,
            end_falls_back: url.is_some(),
            url,
            limits: cfg.input_limits,
            workers: cfg.workers.clone(),
        },
    ));
    Ok((stream, feeder))
}

/// Waits (within [`START_TIMEOUT`]) until a source's media reached its stream, it failed or ended, or its
/// pipeline has had nothing queued for [`STARVED_AFTER`].
async fn wait_settled(feeder: &Feeder) {
    const LOOK: Duration = Duration::from_millis(20);
    let mut status = feeder.status.subscribe();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut idle = Duration::ZERO;
    while Instant::now() < deadline && idle < STARVED_AFTER {
        {
            let s = status.borrow_and_update();
            if s.started || s.failed.is_some() || s.ended.is_some() {
                return;
            }
        }
        let _ = tokio::time::timeout(LOOK, status.changed()).await;
        idle = if feeder.starved() {
            idle + LOOK
        } else {
            Duration::ZERO
        };
    }
}

/// A piece that continues the current source's input at `offset`.
async fn continuation(
    app: &Arc<AppState>,
    name: &str,
    creds: &Credentials,
    offset: u64,
    body: &mut Body,
    polled: &mut bool,
) -> Result<PushSummary> {
    registry::validate_name(name)?;
    authorize(app, name, creds)?;
    let stream = app.registry.get(name).filter(|s| !s.is_ended());
    let feeder = stream.as_ref().and_then(|s| s.feeder());
    let (Some(stream), Some(feeder)) = (stream, feeder) else {
        return Err(Error::new(
            Kind::BadOffset,
            format!(
                "stream '{name}' has no input to continue at byte {offset}: start it with a push \
                 without Content-Range (expected offset 0)"
            ),
        ));
    };
    feeder.continue_at(offset).map_err(|expected| {
        Error::new(
            Kind::BadOffset,
            format!(
                "stream '{name}' continues at byte {expected}, not {offset} (or another piece is being \
                 sent)"
            ),
        )
    })?;
    *polled = true;
    stream
        .counters
        .continuations
        .fetch_add(1, Ordering::Relaxed);
    let end = spawn_feed(app, &stream, &feeder, body).await;
    let input = stream
        .source()
        .and_then(|s| s.container)
        .unwrap_or("unknown");
    Ok(summary(&stream, &feeder, end, input))
}

/// Feeds the request's body from a task of its own, so the input is ended properly (complete, or lost) even
/// when hyper drops this request's future: a client that closes the connection after its last byte
/// without reading the answer (ffmpeg does) still ends its input cleanly.
pub(crate) async fn spawn_feed(
    app: &Arc<AppState>,
    stream: &Arc<Stream>,
    feeder: &Arc<Feeder>,
    body: &mut Body,
) -> End {
    let body = std::mem::replace(body, Body::empty());
    let tasks = app.tasks.clone();
    let (app, stream, feeder) = (app.clone(), stream.clone(), feeder.clone());
    let task = tasks.spawn(async move {
        let mut body = body;
        let tx = feeder.sender();
        let end = feed(&app, &stream, &feeder, &tx, &mut body).await;
        feeder.release();
        if feeder.status.borrow().failed.is_some() {
            // Refused while the client may still be uploading: read a bounded part of the rest, so curl and
            // ffmpeg read the JSON answer instead of a connection reset.
            drain(&mut body).await;
        }
        end
    });
    task.await.unwrap_or(End::InputError)
}

/// Sends a body (a request's, or a pull's) to its source task until it ends: `Eos` when complete (the task
/// then waits for a continuation), else how it was lost (the task then detaches the source and the stream
/// falls back).
pub async fn feed(
    app: &Arc<AppState>,
    stream: &Arc<Stream>,
    feeder: &Feeder,
    tx: &mpsc::Sender<Feed>,
    body: &mut Body,
) -> End {
    let mut complete = false;
    let timeout = app.config().source_timeout;
    loop {
        let data = match complete {
            true => {
                // Released first, so the source task, which closes the input only when no request feeds it,
                // finds it free whatever its grace.
                feeder.release();
                let _ = tx.send(Feed::Complete).await;
                return End::Eos;
            }
            false => {
                let input = tokio::select! {
                    i = next_input(body, timeout) => i,
                    _ = feeder.gone.cancelled() => return End::Aborted,
                };
                match input {
                    Input::Data(d) => d,
                    Input::End => {
                        complete = true;
                        continue;
                    }
                    Input::Timeout => {
                        tracing::warn!("no data from the source for {timeout:?}: it is lost");
                        let _ = tx.send(Feed::Lost(End::SourceTimeout)).await;
                        return End::SourceTimeout;
                    }
                    Input::Failed(e) => {
                        tracing::warn!("upload broke off: {e}");
                        let _ = tx.send(Feed::Lost(End::InputError)).await;
                        return End::InputError;
                    }
                }
            }
        };
        let len = data.len();
        let sent = tokio::select! {
            r = tx.send(Feed::Data(data)) => r.is_ok(),
            _ = feeder.gone.cancelled() => return End::Aborted,
        };
        if !sent {
            // The source task is done (its demuxer found the end of the media, or it failed): what is left
            // of the body is not needed.
            let ended = feeder.status.borrow().ended;
            return ended.unwrap_or(End::Eos);
        }
        feeder.bytes_in.fetch_add(len as u64, Ordering::AcqRel);
        stream.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }
}

fn summary(stream: &Stream, feeder: &Feeder, end: End, input: &'static str) -> PushSummary {
    let end = if stream.abort.is_cancelled() {
        End::Aborted
    } else {
        end
    };
    PushSummary {
        stream: stream.name.clone(),
        end,
        mode: stream.mode(),
        input,
        bytes_in: feeder.bytes_in.load(Ordering::Acquire),
        bytes_published: stream.hub.stats.bytes_published.load(Ordering::Relaxed),
        media_duration_ms: stream.hub.media_duration().as_millis() as u64,
        frames_dropped: stream.frames_dropped(),
        message: None,
    }
}

/// With the token server on, a push needs a live session for its name and, unless it is a compat session,
/// the session's push key. Failures are 401 and logged (rate-limited) with the caller's address.
fn authorize(app: &AppState, name: &str, creds: &Credentials) -> Result<Option<Session>> {
    let key = auth::presented_key(&creds.headers, creds.token.as_deref());
    authorize_key(
        app,
        name,
        creds.ip,
        key,
        "send Authorization: Bearer KEY or ?token=KEY",
    )
}

/// The token server's check of a new source for `name` presenting `key` (`how` says how a key is sent).
pub(crate) fn authorize_key(
    app: &AppState,
    name: &str,
    ip: Option<std::net::IpAddr>,
    key: Option<&str>,
    how: &str,
) -> Result<Option<Session>> {
    let config = app.config();
    let ip = ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let fail = |needs: &str, why: &str| {
        app.auth_failures
            .record(ip, &format!("push to '{name}': {why}"));
        Error::unauthorized(format!("pushing '{name}' needs {needs} ({why})"))
    };
    let check = |hash: &str, needs: &str| match key {
        Some(k) if auth::secret_matches(k, hash) => Ok(()),
        Some(_) => Err(fail(needs, "wrong key")),
        None => Err(fail(needs, &format!("no key: {how}"))),
    };
    // A stream the config file declares with a push key takes that key (the token server's session, if
    // any, still gives its rules).
    let declared_key = config
        .declared(name)
        .and_then(|d| d.push_key_sha256.as_deref());
    if let Some(hash) = declared_key {
        check(hash, "its push key")?;
    }
    if !config.token_server_enabled() {
        return Ok(None);
    }
    let token = "a valid session token";
    let Some(session) = app.tokens.get(name) else {
        return Err(fail(token, "no such session, or it was revoked"));
    };
    if session.expired(time::OffsetDateTime::now_utc()) {
        return Err(fail(token, "the session has expired"));
    }
    if let Some(hash) = session
        .push_key_sha256
        .as_deref()
        .filter(|_| declared_key.is_none())
    {
        check(hash, token)?;
    }
    Ok(Some(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_pieces() {
        let v = |s: &str| parse_content_range(&header::HeaderValue::from_str(s).unwrap());
        assert_eq!(v("bytes 602112-1048575/*").unwrap(), 602112);
        assert_eq!(v("bytes 0-9/10").unwrap(), 0);
        for bad in [
            "bytes 5-1/*",
            "bytes */10",
            "items 0-1/*",
            "bytes 0-/*",
            "bytes 1-2",
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
    }
}
