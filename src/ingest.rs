//! `PUT`/`POST /live/{name}`: a source uploads a stream (Content-Length or chunked) and gets a JSON summary
//! when it ends.
//!
//! ```text
//!  body frames ─► head (typefind) ─► StreamPipeline.appsrc (bounded: AppSrcSink waits) ─► ... ─► hub
//!                                     ▲ backpressure stops reading the socket, TCP throttles the sender
//! ```
//!
//! Checks run 400 (name) → 409 (busy) / 503 (limits) → 415 (type). The same task watches the pipeline's bus,
//! so one stream's error ends that stream only. Any error answered while the source is still uploading first
//! drains a bounded part of the body, so that curl and ffmpeg read the JSON instead of a connection reset.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gst::prelude::*;
use gstreamer as gst;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth;
use crate::detect::{self, Probe};
use crate::error::{Error, Result};
use crate::http::ConnInfo;
use crate::hub::{Hub, HubConfig};
use crate::pipeline::{self, PipelineContext, StreamPipeline};
use crate::streams::{self, StreamEntry};
use crate::tokens::Session;

/// After an error, read at most this much of the rest of the upload before closing ...
pub const DRAIN_MAX_BYTES: usize = 1 << 20;
/// ... or for at most this long: enough for curl/ffmpeg to finish a small upload and read the answer.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);
/// Bound on the wait for the pipeline to drain after the upload ends (pacing plays out what is queued:
/// appsrc + queues + a second of lead is well under this).
pub const EOS_TIMEOUT: Duration = Duration::from_secs(60);
/// After the output is complete, how long the RTP side gets to send its RTCP BYE.
pub const RTCP_BYE_GRACE: Duration = Duration::from_millis(500);

/// How a push ended, as the source sees it in the JSON summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The upload ended and the pipeline drained.
    Eos,
    /// Nothing arrived for `--source-timeout`.
    SourceTimeout,
    /// The input broke off or failed to decode after media had started (truncated file, corrupt data).
    InputError,
    /// Aborted by the operator or the daemon shutting down.
    Aborted,
}

#[derive(Debug, Serialize)]
pub struct PushSummary {
    pub stream: String,
    pub end: End,
    pub mode: pipeline::Mode,
    pub input: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
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
        ip: peer.map(|p| auth::client_ip(p, req.headers(), &app.config.trusted_proxy)),
        headers: req.headers().clone(),
        token: query.get("token").cloned(),
    };
    let mut body = req.into_body();
    let span = tracing::info_span!("push", stream = %name, peer = ?peer);
    let mut polled = false;
    let result = tracing::Instrument::instrument(
        run(&app, &name, &creds, &mut body, &mut polled),
        span.clone(),
    )
    .await;
    match result {
        Ok(summary) => {
            span.in_scope(|| tracing::info!(end = ?summary.end, bytes_in = summary.bytes_in, media_ms = summary.media_duration_ms, "push ended"));
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

/// Wraps upload bytes for the appsrc without copying. The caps ride along because appsrc's sample API wants
/// them on every sample (they are the same object each time, so this is a pointer compare).
fn sample(data: Bytes, caps: &gst::Caps) -> gst::Sample {
    gst::Sample::builder()
        .buffer(&gst::Buffer::from_slice(data))
        .caps(caps)
        .build()
}

/// `polled` is set once the body is read: from then on hyper has sent `100 Continue` and the client is
/// uploading, so an error must drain.
async fn run(
    app: &Arc<AppState>,
    name: &str,
    creds: &Credentials,
    body: &mut Body,
    polled: &mut bool,
) -> Result<PushSummary> {
    streams::validate_name(name)?;
    let session = authorize(app, name, creds)?;
    let cfg = &app.config;
    let hub = Hub::new(
        name,
        HubConfig {
            join: cfg.join,
            max_lag: cfg.max_lag,
            max_gop_bytes: cfg.max_gop_bytes,
            coalesce: cfg.coalesce,
        },
    );
    let abort = app.shutdown.child_token();
    let reservation = app.registry.reserve(name, hub.clone(), abort.clone())?;
    let entry = reservation.entry.clone();
    tokio::spawn(streams::sample_rates(Arc::downgrade(&entry)));
    // Whatever happens next, readers get a clean end.
    let _finish = FinishOnDrop(hub.clone());

    // Typefind the head of the upload.
    *polled = true;
    let mut head = BytesMut::new();
    let detected = loop {
        let input = tokio::select! {
            i = next_input(body, cfg.source_timeout) => i,
            _ = abort.cancelled() => return Err(if app.shutdown.is_cancelled() {
                Error::unavailable("the server is shutting down")
            } else {
                Error::new(crate::error::Kind::Busy, "the stream was aborted")
            }),
        };
        let complete = match input {
            Input::Data(d) => {
                entry.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
                head.extend_from_slice(&d);
                false
            }
            Input::End => true,
            Input::Timeout => {
                return Err(Error::bad_request(
                    "the source sent no data within --source-timeout",
                ));
            }
            Input::Failed(e) => {
                return Err(Error::bad_request(format!(
                    "reading the upload failed: {e}"
                )));
            }
        };
        match detect::probe(&head, complete) {
            Probe::NeedMore => continue,
            Probe::Found(d) => break (d, complete),
            Probe::Unsupported(m) => return Err(Error::unsupported(m)),
        }
    };
    let (detected, mut complete) = detected;
    if let Some(s) = &session
        && !s.allows_input(detected.container)
    {
        return Err(Error::unsupported(format!(
            "session '{name}' may push only {}; this input is {}",
            s.inputs.join(", "),
            detected.container.name()
        )));
    }
    let _ = entry.container.set(detected.container);
    tracing::info!(input = detected.container.name(), caps = %detected.caps, "stream starting");

    let permit = if detected.container.is_matroska() {
        None
    } else {
        Some(app.transcodes.clone().try_acquire_owned().map_err(|_| {
            Error::unavailable(format!(
                "the transcode limit (--max-transcodes {}) is reached",
                cfg.max_transcodes
            ))
        })?)
    };
    let rtp_targets = crate::rtp::merge_targets(
        &cfg.rtp_targets,
        session
            .iter()
            .flat_map(|s| s.outputs.rtp_udp.iter().copied()),
    );
    let ctx = PipelineContext {
        templates: app.templates.clone(),
        transcodes: app.transcodes.clone(),
        pace: cfg.pace,
        rtp_targets,
        muxer: cfg.muxer,
    };
    let pipeline = StreamPipeline::start(name, &detected, ctx, hub.clone(), permit)?;
    let _ = entry.pipeline.set(pipeline.shared.clone());
    tokio::spawn(hub.clone().run_reaper());
    tokio::spawn(hub.clone().run_coalescer());

    let mut bus = pipeline.bus().stream();
    let mut sink = pipeline.input();
    let mut pending = Some(head.freeze());
    let mut end = None;
    let mut failure: Option<(String, String)> = None;
    // Some demuxers know where the media ends (qtdemux reads it from `moov`) and finish the pipeline before
    // the upload is over: that is a normal end.
    let mut drained = false;

    // Feed the upload until it ends, times out, is aborted or the pipeline fails.
    while end.is_none() {
        if pending.is_some() {
            // Wait for room in the appsrc with `poll_ready`, which is cancel-safe (a bus message may win the
            // race), then hand the buffer over synchronously: `SinkExt::send` would lose it when cancelled.
            tokio::select! {
                r = std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)) => {
                    let pushed = r.is_ok() && sink.start_send_unpin(sample(pending.take().expect("checked"), &detected.caps)).is_ok();
                    if !pushed {
                        // Flushing: the pipeline is stopping; its bus says why.
                        pending = None;
                        complete = true;
                    }
                },
                msg = bus.next() => match bus_event(msg, name) {
                    Some(BusEvent::Eos | BusEvent::OutputEos) => { drained = true; end = Some(End::Eos); }
                    Some(BusEvent::Failed(path, text)) => { failure = Some((path, text)); break; }
                    None => {}
                },
                _ = abort.cancelled() => { end = Some(End::Aborted); }
            }
            continue;
        }
        if complete {
            break;
        }
        tokio::select! {
            input = next_input(body, cfg.source_timeout) => match input {
                Input::Data(d) => {
                    entry.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
                    pending = Some(d);
                }
                Input::End => complete = true,
                Input::Timeout => {
                    tracing::warn!("no data from the source for {:?}: ending the stream", cfg.source_timeout);
                    end = Some(End::SourceTimeout);
                }
                Input::Failed(e) => {
                    tracing::warn!("upload broke off: {e}");
                    end = Some(End::InputError);
                }
            },
            msg = bus.next() => match bus_event(msg, name) {
                Some(BusEvent::Eos | BusEvent::OutputEos) => { drained = true; end = Some(End::Eos); }
                Some(BusEvent::Failed(path, text)) => { failure = Some((path, text)); break; }
                None => {}
            },
            _ = abort.cancelled() => end = Some(End::Aborted),
        }
    }

    // Drain: EOS into the pipeline, wait for it to come out (or fail).
    if failure.is_none() && !drained && end != Some(End::Aborted) {
        pipeline.end_of_stream();
        let deadline = Instant::now() + EOS_TIMEOUT;
        loop {
            tokio::select! {
                msg = bus.next() => match bus_event(msg, name) {
                    Some(BusEvent::Eos | BusEvent::OutputEos) => break,
                    Some(BusEvent::Failed(path, text)) => { failure = Some((path, text)); break; }
                    None => {}
                },
                _ = abort.cancelled() => { end = Some(End::Aborted); break; }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("pipeline did not drain within {EOS_TIMEOUT:?}");
                    break;
                }
            }
        }
    }

    // Give the RTP side a moment to send its RTCP BYE (the pipeline EOS follows it); a session that never
    // sent anything has no BYE to send, so this is bounded rather than awaited.
    if failure.is_none() && end != Some(End::Aborted) {
        let _ = tokio::time::timeout(RTCP_BYE_GRACE, async {
            while let Some(m) = bus.next().await {
                if matches!(m.view(), gst::MessageView::Eos(_)) {
                    break;
                }
            }
        })
        .await;
    }

    let started = hub.published_chunks() > 0;
    if failure.is_some() {
        app.registry
            .totals
            .pipeline_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    if let Some((path, message)) = &failure {
        if !started {
            return Err(pipeline::early_error(&pipeline.shared, path, message));
        }
        tracing::warn!(element = %path, "stream ended by an input error: {message}");
    }
    let end = match (end, &failure) {
        (Some(e), _) => e,
        (None, Some(_)) => End::InputError,
        (None, None) if !started => {
            return Err(Error::unsupported(
                "the input ended before any audio or video could be decoded from it",
            ));
        }
        (None, None) => End::Eos,
    };
    let summary = summary(&entry, &pipeline, end, failure.map(|f| f.1));
    drop(pipeline);
    Ok(summary)
}

fn summary(
    entry: &StreamEntry,
    pipeline: &StreamPipeline,
    end: End,
    message: Option<String>,
) -> PushSummary {
    PushSummary {
        stream: entry.name.clone(),
        end,
        mode: pipeline.mode(),
        input: entry.container.get().map_or("unknown", |c| c.name()),
        bytes_in: entry.bytes_in.load(Ordering::Relaxed),
        bytes_out: entry.hub.stats.bytes_published.load(Ordering::Relaxed),
        media_duration_ms: entry.hub.media_duration().as_millis() as u64,
        frames_dropped: pipeline.shared.frames_dropped.load(Ordering::Relaxed),
        message,
    }
}

/// Bus messages that end the feeding of a stream.
enum BusEvent {
    /// The whole pipeline is done, RTCP BYE included.
    Eos,
    /// The muxer output (what HTTP clients get) is complete.
    OutputEos,
    /// (element path, message).
    Failed(String, String),
}

/// Logs a bus message and says whether it ends the stream.
fn bus_event(msg: Option<gst::Message>, name: &str) -> Option<BusEvent> {
    let Some(msg) = msg else {
        return Some(BusEvent::Failed(
            String::new(),
            "pipeline bus closed".into(),
        ));
    };
    match msg.view() {
        gst::MessageView::Error(err) => {
            let (path, text) = pipeline::describe_error(err);
            tracing::warn!(stream = name, element = %path, debug = ?err.debug(), "pipeline error: {text}");
            Some(BusEvent::Failed(path, text))
        }
        gst::MessageView::Eos(_) => Some(BusEvent::Eos),
        gst::MessageView::Application(a)
            if a.structure()
                .is_some_and(|s| s.name() == pipeline::OUTPUT_EOS) =>
        {
            Some(BusEvent::OutputEos)
        }
        gst::MessageView::Warning(w) => {
            let path = w
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default();
            tracing::debug!(stream = name, element = %path, "pipeline warning: {}", w.error());
            None
        }
        _ => None,
    }
}

struct FinishOnDrop(Arc<Hub>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// With the token server on, a push needs a live session for its name and, unless it is a compat session,
/// the session's push key. Failures are 401 and logged (rate-limited) with the caller's address.
fn authorize(app: &AppState, name: &str, creds: &Credentials) -> Result<Option<Session>> {
    if !app.config.token_server_enabled() {
        return Ok(None);
    }
    let ip = creds.ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let fail = |why: &str| {
        app.auth_failures
            .record(ip, &format!("push to '{name}': {why}"));
        Error::unauthorized(format!(
            "pushing '{name}' needs a valid session token ({why})"
        ))
    };
    let Some(session) = app.tokens.get(name) else {
        return Err(fail("no such session, or it was revoked"));
    };
    if session.expired(time::OffsetDateTime::now_utc()) {
        return Err(fail("the session has expired"));
    }
    if let Some(hash) = &session.push_key_sha256 {
        match auth::presented_key(&creds.headers, creds.token.as_deref()) {
            Some(k) if auth::secret_matches(k, hash) => {}
            Some(_) => return Err(fail("wrong key")),
            None => return Err(fail("no key: send Authorization: Bearer KEY or ?token=KEY")),
        }
    }
    Ok(Some(session))
}
