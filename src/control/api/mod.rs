//! The control API: streams (list, details, abort, graph) and the token server under `/api/v1`, and
//! soup-transcoding-proxy's query-string API under `/api` ([`compat`]).
//!
//! Every route here answers only callers in the control masks: `--token-server` when the token server is
//! on, else `--api-allow` (loopback by default). The address is the peer's, or `X-Forwarded-For` from a
//! `--trusted-proxy`.

pub mod compat;
pub mod dto;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::control::auth;
use crate::control::tokens::{self, Origin, Outputs, Session};
use crate::error::{Error, Result};
use crate::source::pull::{Pull, PullKind};
use crate::state::AppState;
use crate::state::ConnInfo;
use crate::stream::Stream;
use crate::stream::registry as streams;
use dto::*;

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/streams", get(list_streams).post(create_stream))
        .route(
            "/api/v1/streams/{name}",
            get(get_stream).delete(abort_stream),
        )
        .route("/api/v1/streams/{name}/graph", get(stream_graph))
        .route(
            "/api/v1/streams/{name}/rtp",
            get(get_rtp).put(put_rtp).patch(patch_rtp),
        )
        .route("/api/v1/streams/{name}/sdp", get(stream_sdp))
        .route("/api/v1/pulls", get(list_pulls))
        .route("/api/v1/config", get(get_config))
        .route("/api/v1/config/reload", axum::routing::post(reload_config))
        .route("/api/v1/tokens", get(list_tokens).post(add_token))
        .route(
            "/api/v1/tokens/{session_id}",
            get(get_token).delete(revoke_token),
        )
        .merge(compat::router())
        .route_layer(middleware::from_fn_with_state(
            state,
            require_control_caller,
        ))
}

/// Refuses callers outside the control masks with 403.
async fn require_control_caller(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(conn) = req.extensions().get::<ConnInfo>() else {
        return Error::forbidden("caller address unknown").into_response();
    };
    let ip = auth::client_ip(conn.peer, req.headers(), &app.config().trusted_proxy);
    if !crate::config::allowed(app.config().control_masks(), ip) {
        tracing::warn!(%ip, path = %req.uri().path(), "control API call from outside the allowed masks");
        return Error::forbidden(format!("{ip} may not use the control API")).into_response();
    }
    next.run(req).await
}

/// The running configuration: where it came from, when, and how reloads went.
fn config_info(app: &AppState) -> ConfigInfo {
    let current = app.current();
    let status = app
        .reloads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let config = &current.config;
    ConfigInfo {
        file: config.source.as_ref().map(|s| s.path.display().to_string()),
        sha256: config.source.as_ref().map(|s| s.sha256.clone()),
        loaded_at: rfc3339(OffsetDateTime::from(current.loaded_at)),
        reloads: status.count,
        last_error: status.last_error.map(|(at, message)| ReloadError {
            at: rfc3339(OffsetDateTime::from(at)),
            message,
        }),
        streams: config.streams.iter().map(|d| d.name.clone()).collect(),
    }
}

async fn get_config(State(app): State<Arc<AppState>>) -> Json<ConfigInfo> {
    Json(config_info(&app))
}

/// Reloads the configuration file (as `SIGHUP` does); a bad file keeps the running configuration and
/// answers why.
async fn reload_config(State(app): State<Arc<AppState>>) -> Result<Json<ReloadAnswer>> {
    let report = crate::control::reload::reload(&app).await?;
    Ok(Json(ReloadAnswer {
        report,
        config: config_info(&app),
    }))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn stream_info(e: &Stream) -> StreamInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let tracks = e.hub.tracks();
    let video = tracks
        .iter()
        .find(|t| t.kind == crate::stream::webm::TrackKind::Video);
    let mode = e.mode();
    let source = e.source();
    let attached = e.has_source();
    let rates = *e.rates.lock().unwrap();
    let stats = &e.hub.stats;
    StreamInfo {
        name: e.name.clone(),
        state: e.state(),
        mode,
        source: source.as_ref().filter(|_| attached).map(|s| SourceDto {
            peer: s.peer.map(|p| p.to_string()),
            url: s.url.clone(),
            since: rfc3339(OffsetDateTime::from(s.since)),
        }),
        failovers: e.counters.failovers.load(Relaxed),
        resumes: e.counters.resumes.load(Relaxed),
        fallback_seconds: (e.fallback_seconds() * 1000.0).round() / 1000.0,
        input: InputInfo {
            container: source.as_ref().and_then(|s| s.container),
            codecs: source.map(|s| s.codecs).unwrap_or_default(),
        },
        output: OutputInfo {
            content_type: (!tracks.is_empty()).then_some(if video.is_some() {
                "video/webm"
            } else {
                "audio/webm"
            }),
            codecs: tracks.iter().map(|t| t.codec_name()).collect(),
            width: video.and_then(|v| v.width),
            height: video.and_then(|v| v.height),
        },
        started_at: rfc3339(OffsetDateTime::from(e.started_at)),
        bytes_in: e.bytes_in.load(Relaxed),
        bytes_out: stats.bytes_sent.load(Relaxed),
        bytes_published: stats.bytes_published.load(Relaxed),
        bitrate_in_bps: rates.bitrate_in_bps,
        bitrate_out_bps: rates.bitrate_out_bps,
        clients: ClientStats {
            now: stats.clients_now.load(Relaxed),
            total: stats.clients_total.load(Relaxed),
            dropped: stats.dropped.load(Relaxed),
            skipped: stats.skips.load(Relaxed),
            relays: stats.relays_now.load(Relaxed),
        },
        dash: {
            let d = &e.hub.segments;
            DashInfo {
                segments: d.stats.published.load(Relaxed),
                segment_requests: d.stats.segments_served.load(Relaxed),
                max_segment_hits: d.max_hits(),
                manifest_requests: d.stats.manifests.load(Relaxed),
                init_requests: d.stats.inits.load(Relaxed),
                not_found: d.stats.not_found.load(Relaxed),
            }
        },
        encoder_realtime_factor: rates
            .realtime_factor
            .filter(|_| mode == crate::stream::Mode::Transcode),
        media_zero_unix_ms: e.media_zero_unix_ms(),
        frames_dropped: e.frames_dropped(),
        rtp_targets: e.rtp().targets().iter().map(ToString::to_string).collect(),
        pull: None,
    }
}

pub fn pull_info(p: &Pull) -> PullInfo {
    let st = p.status();
    PullInfo {
        name: p.name.clone(),
        kind: p.kind,
        urls: p.urls.clone(),
        on_demand: p.on_demand,
        state: st.state,
        url: st.url,
        connections: st.connections,
        failures: st.failures,
        last_error: st.last_error,
        last_status: st.last_status,
        retry_at: st.retry_at.map(|t| rfc3339(OffsetDateTime::from(t))),
    }
}

/// A stream's info with its pull's, if it has one.
fn stream_with_pull(app: &AppState, e: &Stream) -> StreamInfo {
    let mut info = stream_info(e);
    info.pull = app.pulls.get(&e.name).map(|p| pull_info(&p));
    info
}

async fn list_pulls(State(app): State<Arc<AppState>>) -> Json<Vec<PullInfo>> {
    Json(app.pulls.list().iter().map(|p| pull_info(p)).collect())
}

fn entry(app: &AppState, name: &str) -> Result<Arc<Stream>> {
    streams::validate_name(name)?;
    app.registry
        .get(name)
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))
}

async fn list_streams(State(app): State<Arc<AppState>>) -> Json<Vec<StreamInfo>> {
    Json(
        app.registry
            .list()
            .iter()
            .map(|e| stream_with_pull(&app, e))
            .collect(),
    )
}

async fn get_stream(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<StreamInfo>> {
    let e = entry(&app, &name)?;
    Ok(Json(stream_with_pull(&app, &e)))
}

/// Creates a stream without a source: it shows its slate until a push arrives (with the token server, the
/// push of the session of that name), and ends after its linger.
async fn create_stream(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Json<NewStream>, axum::extract::rejection::JsonRejection>,
) -> Result<Response> {
    let Json(req) = body.map_err(|e| Error::bad_request(e.body_text()))?;
    streams::validate_name(&req.name)?;
    if let Some(url) = &req.pull {
        return create_pull(&app, &req, url);
    }
    if req.on_demand {
        return Err(Error::bad_request("on_demand goes with pull"));
    }
    let linger = req
        .linger
        .map(|l| {
            if l.is_finite() && l > 0.0 && l <= 86_400.0 {
                Ok(std::time::Duration::from_secs_f64(l))
            } else {
                Err(Error::bad_request(
                    "linger must be a number of seconds in (0, 86400]",
                ))
            }
        })
        .transpose()?;
    let enc = &app.config().encode;
    let (width, height) = (req.width.unwrap_or(640), req.height.unwrap_or(360));
    if !(16..=enc.max_width).contains(&width) || !(16..=enc.max_height).contains(&height) {
        return Err(Error::bad_request(format!(
            "width and height must be 16..={} and 16..={} (--max-width, --max-height)",
            enc.max_width, enc.max_height
        )));
    }
    if !app.config().fallback.enabled() {
        return Err(Error::bad_request(
            "with --fallback none a stream without a source has nothing to show",
        ));
    }
    let session = if app.config().token_server_enabled() {
        Some(app.tokens.get(&req.name).ok_or_else(|| {
            Error::not_found(format!(
                "no session '{}': with the token server, a stream is created for a session",
                req.name
            ))
        })?)
    } else {
        None
    };
    let (stream, reservation) = app.registry.open(&req.name, || {
        app.new_stream(&req.name, session.as_ref(), linger)
    })?;
    let Some(reservation) = reservation else {
        return Err(Error::new(
            crate::error::Kind::Busy,
            format!("stream '{}' exists already", req.name),
        ));
    };
    app.tasks.spawn(stream.clone().run(reservation));
    if let Err(e) = stream.start_on_fallback(width, height) {
        stream.end();
        return Err(e);
    }
    tracing::info!(stream = %req.name, "created through the API");
    Ok((StatusCode::CREATED, Json(stream_info(&stream))).into_response())
}

/// `POST /api/v1/streams` with `pull`: declares a pull (started now unless `on_demand`). Its stream appears
/// once the URL delivers; until then the pull's state says how it is going.
fn create_pull(app: &Arc<AppState>, req: &NewStream, url: &str) -> Result<Response> {
    if req.linger.is_some() || req.width.is_some() || req.height.is_some() {
        return Err(Error::bad_request(
            "a pulled stream takes its size from its input: linger, width and height go without pull",
        ));
    }
    crate::source::pull::check_url(url)?;
    if app.config().token_server_enabled() && app.tokens.get(&req.name).is_none() {
        return Err(Error::not_found(format!(
            "no session '{}': with the token server, a stream is created for a session",
            req.name
        )));
    }
    if app.registry.get(&req.name).is_some() {
        return Err(Error::new(
            crate::error::Kind::Busy,
            format!("stream '{}' exists already", req.name),
        ));
    }
    let pull = crate::source::pull::declare(
        app,
        Pull::new(
            &req.name,
            vec![url.to_string()],
            PullKind::Relay,
            req.on_demand,
        ),
    )?;
    tracing::info!(stream = %req.name, %url, on_demand = req.on_demand, "pull created through the API");
    Ok((StatusCode::CREATED, Json(pull_info(&pull))).into_response())
}

/// Aborts a stream: its source connection is closed and every client gets a clean end.
/// A pulled stream's pull is removed with it (else it would pull the stream again).
async fn abort_stream(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    streams::validate_name(&name)?;
    let pull = app.pulls.remove(&name);
    let e = match (entry(&app, &name), &pull) {
        (Ok(e), _) => e,
        (Err(_), Some(_)) => {
            tracing::info!(stream = %name, "pull removed through the API");
            return Ok(StatusCode::NO_CONTENT);
        }
        (Err(e), None) => return Err(e),
    };
    tracing::info!(stream = %name, "aborted through the API");
    e.abort.cancel();
    Ok(StatusCode::NO_CONTENT)
}

async fn stream_graph(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response> {
    let e = entry(&app, &name)?;
    let dot = e.dot();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/vnd.graphviz; charset=utf-8"),
        )],
        dot,
    )
        .into_response())
}

fn token_info(app: &AppState, s: &Session) -> TokenInfo {
    TokenInfo {
        session_id: s.session_id.clone(),
        origin: s.origin,
        inputs: s.inputs.clone(),
        outputs: OutputsInfo {
            http: s.outputs.http,
            rtp_udp: s.outputs.rtp_udp.iter().map(ToString::to_string).collect(),
        },
        expires_at: s.expires_at.map(rfc3339),
        created_at: rfc3339(s.created_at),
        view_restricted: s.view_key_sha256.is_some(),
        expired: s.expired(OffsetDateTime::now_utc()),
        live: app.registry.get(&s.session_id).is_some(),
    }
}

/// Parses `IP:port` targets and checks them against `--rtp-allow` (403 outside).
pub fn parse_rtp_targets(app: &AppState, targets: &[String]) -> Result<Vec<std::net::SocketAddr>> {
    let parsed = targets
        .iter()
        .map(|t| crate::stream::rtp::parse_target(t))
        .collect::<Result<Vec<_>>>()?;
    crate::config::check_rtp_targets(&parsed, &app.config().rtp_allow)?;
    Ok(parsed)
}

fn rtp_of(app: &AppState, name: &str) -> Result<Arc<Stream>> {
    entry(app, name)
}

fn targets_json(t: &[std::net::SocketAddr]) -> Json<RtpTargets> {
    Json(RtpTargets {
        targets: t.iter().map(ToString::to_string).collect(),
    })
}

async fn get_rtp(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<RtpTargets>> {
    Ok(targets_json(&rtp_of(&app, &name)?.rtp().targets()))
}

/// Replaces a live stream's RTP/UDP targets.
async fn put_rtp(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: std::result::Result<Json<RtpTargets>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RtpTargets>> {
    let Json(req) = body.map_err(|e| Error::bad_request(e.body_text()))?;
    let shared = rtp_of(&app, &name)?;
    let targets = crate::stream::rtp::merge_targets(&[], parse_rtp_targets(&app, &req.targets)?);
    shared.rtp().set_targets(targets.clone());
    tracing::info!(stream = %name, ?targets, "RTP targets replaced");
    Ok(targets_json(&targets))
}

/// Adds and removes RTP/UDP targets of a live stream.
async fn patch_rtp(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: std::result::Result<Json<RtpPatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RtpTargets>> {
    let Json(req) = body.map_err(|e| Error::bad_request(e.body_text()))?;
    let shared = rtp_of(&app, &name)?;
    let add = parse_rtp_targets(&app, &req.add)?;
    let remove = req
        .remove
        .iter()
        .map(|t| crate::stream::rtp::parse_target(t))
        .collect::<Result<Vec<_>>>()?;
    let targets = shared.rtp().edit_targets(|current| {
        let kept: Vec<_> = current
            .into_iter()
            .filter(|t| !remove.contains(t))
            .collect();
        crate::stream::rtp::merge_targets(&kept, add)
    });
    tracing::info!(stream = %name, ?targets, "RTP targets edited");
    Ok(targets_json(&targets))
}

/// An SDP for one RTP target (default: the first), for ffplay/ffmpeg or a GStreamer receiver.
async fn stream_sdp(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response> {
    let shared = rtp_of(&app, &name)?;
    let target = match q.get("target") {
        Some(t) => crate::stream::rtp::parse_target(t)?,
        None => *shared
            .rtp()
            .targets()
            .first()
            .ok_or_else(|| Error::not_found(format!("stream '{name}' has no RTP targets")))?,
    };
    // Like the RTP routes: nothing is described for a target the daemon may not send to.
    crate::config::check_rtp_targets(&[target], &app.config().rtp_allow)?;
    let sdp = shared.rtp().sdp(&name, target)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/sdp"),
        )],
        sdp,
    )
        .into_response())
}

/// Persists a session off the async workers (the store fsyncs).
pub async fn store_add(app: &Arc<AppState>, session: Session) -> Result<()> {
    let id = session.session_id.clone();
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.tokens.add(session))
        .await
        .map_err(|e| Error::internal(e.to_string()))??;
    app.hooks.emit("token_added", &id, serde_json::json!({}));
    Ok(())
}

/// Revokes a session and aborts its live stream, if any.
pub async fn store_revoke(app: &Arc<AppState>, id: &str) -> Result<Session> {
    let a = app.clone();
    let key = id.to_string();
    let old = tokio::task::spawn_blocking(move || a.tokens.revoke(&key))
        .await
        .map_err(|e| Error::internal(e.to_string()))??;
    app.hooks.emit("token_revoked", id, serde_json::json!({}));
    if let Some(e) = app.registry.get(id) {
        tracing::info!(stream = %id, "session revoked: aborting its stream");
        e.abort.cancel();
    }
    Ok(old)
}

async fn add_token(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<TokenCreated>)> {
    let Json(req) = body.map_err(|e| Error::bad_request(e.body_text()))?;
    streams::validate_name(&req.session_id)?;
    tokens::validate_inputs(&req.inputs)?;
    let expires_at = req
        .expires_at
        .as_deref()
        .map(|t| OffsetDateTime::parse(t, &Rfc3339))
        .transpose()
        .map_err(|e| Error::bad_request(format!("expires_at is not RFC 3339: {e}")))?;
    let push_key = auth::new_secret();
    let view_key = req.view_restricted.then(auth::new_secret);
    let session = Session {
        session_id: req.session_id.clone(),
        origin: Origin::Native,
        inputs: req.inputs,
        outputs: Outputs {
            http: req.outputs.http,
            rtp_udp: parse_rtp_targets(&app, &req.outputs.rtp_udp)?,
        },
        expires_at,
        created_at: OffsetDateTime::now_utc(),
        push_key_sha256: Some(auth::hash_secret(&push_key)),
        view_key_sha256: view_key.as_deref().map(auth::hash_secret),
    };
    store_add(&app, session).await?;
    tracing::info!(session = %req.session_id, "session added");
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            session_id: req.session_id,
            push_key,
            view_key,
        }),
    ))
}

async fn list_tokens(State(app): State<Arc<AppState>>) -> Json<Vec<TokenInfo>> {
    Json(
        app.tokens
            .list()
            .iter()
            .map(|s| token_info(&app, s))
            .collect(),
    )
}

async fn get_token(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>> {
    let s = app
        .tokens
        .get(&id)
        .ok_or_else(|| Error::not_found(format!("no session '{id}'")))?;
    Ok(Json(token_info(&app, &s)))
}

async fn revoke_token(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    store_revoke(&app, &id).await?;
    tracing::info!(session = %id, "session revoked");
    Ok(StatusCode::NO_CONTENT)
}
