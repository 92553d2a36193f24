//! `GET`/`HEAD /live/{name}`: a client watches a stream as one endless WebM response.
//!
//! The body is the client's [`Subscription`]: header, then the cached keyframe group (or the next keyframe
//! cluster), then live chunks, until the stream ends (clean end of the chunked response), the client goes
//! away (hyper drops the body: unregistered), or the reaper or shutdown cancels the connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth;
use crate::error::{Error, Result};
use crate::http::ConnInfo;
use crate::hub::SubscribeError;
use crate::streams;

/// How long a client of a stream that is still starting (typefind, first keyframe) waits for its header.
pub const HEADER_WAIT: Duration = Duration::from_secs(10);

pub async fn watch(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Result<Response> {
    streams::validate_name(&name)?;
    authorize_view(
        &app,
        &name,
        &headers,
        query.get("token").map(String::as_str),
        conn.as_ref().map(|c| c.peer),
    )?;
    let entry = app
        .registry
        .get(&name)
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))?;
    let permit = app.clients.clone().try_acquire_owned().map_err(|_| {
        Error::unavailable(format!(
            "the client limit (--max-clients {}) is reached",
            app.config.max_clients
        ))
    })?;
    let (peer, kill) = match conn {
        Some(axum::Extension(c)) => (Some(c.peer), c.kill),
        None => (None, app.shutdown.child_token()),
    };
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
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
        (
            header::HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if method == Method::HEAD {
        return Ok((headers, Body::empty()).into_response());
    }
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
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// With the token server on, a stream may be watched only when its session exists, has not expired and
/// grants HTTP output; a session that restricts viewing also needs its view key.
fn authorize_view(
    app: &AppState,
    name: &str,
    headers: &HeaderMap,
    token: Option<&str>,
    peer: Option<std::net::SocketAddr>,
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
