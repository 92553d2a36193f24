//! `--srt-listen ADDR`: SRT callers (OBS's "Custom" service, `ffmpeg … srt://`, GStreamer's `srtsink`) push
//! MPEG-TS, each to the stream its `streamid` names; many callers share the one UDP port.
//!
//! ```text
//!  caller ─ handshake ─► streamid → name (+ key), the same checks as a push; a refusal is an SRT reject
//!                        reason carrying the HTTP status a push would get (401, 403, 409, 503...)
//!         ─ accepted  ─► push::start_source (as a push) ─► SrtSocket as a Body ─► push::spawn_feed ─► source
//! ```
//!
//! An SRT connection has no "end of upload": whether the caller stops, is killed or its network goes, the
//! source is lost and the stream shows its fallback until a source returns (a silent peer is noticed after
//! SRT's 5 s peer-idle timeout, or `--source-timeout`).
//!
//! SRT comes from `srt-tokio`, a Rust implementation: GStreamer's `srtsrc` in listener mode serves one
//! caller per port, and libsrt through FFI would be the crate's only unsafe code.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use futures_util::StreamExt;
use srt_tokio::SrtListener;
use srt_tokio::access::{RejectReason, ServerRejectReason};
use srt_tokio::options::{ByteCount, PacketSize};

use crate::control::extauth::Action;
use crate::error::{Error, Kind, Result};
use crate::source::push;
use crate::state::AppState;
use crate::stream::attach::End;
use crate::stream::registry;

/// How a caller presents its key, for the error that says it is missing.
const KEY_HOW: &str = "put it in the streamid: publish:NAME:KEY or #!::r=NAME,m=publish,s=KEY";

/// What a caller's `streamid` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub name: String,
    pub key: Option<String>,
}

/// `publish:NAME`, `publish:NAME:KEY`, or the SRT access control syntax `#!::r=NAME,m=publish[,s=KEY]` (other
/// keys such as `u=` are ignored). Reading (`m=request`) is not offered over SRT.
pub fn parse_streamid(s: &str) -> Result<StreamId> {
    let usage = || {
        Error::bad_request(format!(
            "streamid {s:?}: expected publish:NAME, publish:NAME:KEY or #!::r=NAME,m=publish[,s=KEY]"
        ))
    };
    if let Some(rest) = s.strip_prefix("#!::") {
        let (mut name, mut key, mut mode) = (None, None, None);
        for pair in rest.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(usage)?;
            match k {
                "r" => name = Some(v),
                "s" => key = Some(v),
                "m" => mode = Some(v),
                _ => {}
            }
        }
        if mode != Some("publish") {
            return Err(Error::bad_request(format!(
                "streamid {s:?}: only m=publish is served over SRT (watch over HTTP: GET /live/NAME)"
            )));
        }
        return Ok(StreamId {
            name: name.ok_or_else(usage)?.to_string(),
            key: key.filter(|k| !k.is_empty()).map(str::to_string),
        });
    }
    let rest = s.strip_prefix("publish:").ok_or_else(usage)?;
    let (name, key) = match rest.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (rest, None),
    };
    Ok(StreamId {
        name: name.to_string(),
        key: key.filter(|k| !k.is_empty()).map(str::to_string),
    })
}

/// A running listener; closed when the daemon shuts down.
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
}

/// Binds the SRT listener and serves callers until `app.shutdown`.
pub async fn listen(app: Arc<AppState>, addr: SocketAddr) -> Result<Listener> {
    let fail = |e: std::io::Error| Error::internal(format!("--srt-listen {addr}: {e}"));
    let socket = tokio::net::UdpSocket::bind(addr).await.map_err(fail)?;
    let bound = socket.local_addr().map_err(fail)?;
    let (mut listener, mut incoming) = SrtListener::builder()
        .socket(socket)
        .set(|o| {
            // MPEG-TS over SRT: seven 188-byte packets a message, as ffmpeg and srtsink send.
            o.sender.max_payload_size = PacketSize(1316);
            o.receiver.buffer_size = ByteCount(8 << 20);
        })
        .bind(bound)
        .await
        .map_err(fail)?;
    let shutdown = app.shutdown.clone();
    let tasks = app.tasks.clone();
    // The callers' own tasks, so the listener closes after them: srt-tokio's connections spin (logging a
    // warning each turn) while their shared UDP socket is closed under them.
    let callers = tokio_util::task::TaskTracker::new();
    tasks.spawn(async move {
        loop {
            let request = tokio::select! {
                r = incoming.incoming().next() => r,
                _ = shutdown.cancelled() => None,
            };
            let Some(request) = request else { break };
            let app = app.clone();
            callers.spawn(async move {
                let peer = request.remote();
                let streamid = request
                    .stream_id()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let id = match check_caller(&app, peer, &streamid) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(%peer, streamid = %streamid.escape_debug(), code = e.kind.code(), "SRT caller refused: {}", e.message);
                        let _ = request.reject(reject_reason(&e)).await;
                        return;
                    }
                };
                let span = tracing::info_span!("srt", stream = %id.name, %peer);
                let served = tracing::Instrument::instrument(serve_caller(&app, request, peer, &id), span.clone()).await;
                span.in_scope(|| match served {
                    Ok(end) => tracing::info!(?end, "SRT caller gone"),
                    Err(e) => tracing::warn!(code = e.kind.code(), "SRT caller refused: {}", e.message),
                });
            });
        }
        callers.close();
        callers.wait().await;
        listener.close().await;
    });
    tracing::info!(addr = %bound, "SRT listening");
    Ok(Listener { addr: bound })
}

/// The checks a caller passes before its handshake is answered: its streamid, name and key, and whether the
/// name is held by another source.
fn check_caller(app: &AppState, peer: SocketAddr, streamid: &str) -> Result<StreamId> {
    let id = parse_streamid(streamid)?;
    registry::validate_name(&id.name)?;
    push::authorize_key(app, &id.name, Some(peer.ip()), id.key.as_deref(), KEY_HOW)?;
    if app
        .registry
        .get(&id.name)
        .is_some_and(|s| !s.is_ended() && s.is_taken())
    {
        return Err(Error::new(
            Kind::Busy,
            format!("stream '{}' is already being pushed", id.name),
        ));
    }
    Ok(id)
}

/// The SRT reject reason for a refusal: the access-control codes of the SRT spec are the HTTP statuses a
/// push would get (libsrt shows them as 1400 + …: `SRT_REJX_UNAUTHORIZED` is 1401).
fn reject_reason(e: &Error) -> RejectReason {
    RejectReason::Server(match e.kind {
        Kind::BadRequest => ServerRejectReason::BadRequest,
        Kind::Unauthorized => ServerRejectReason::Unauthorized,
        Kind::Forbidden => ServerRejectReason::Forbidden,
        Kind::NotFound => ServerRejectReason::Notfound,
        Kind::Busy => ServerRejectReason::Conflict,
        Kind::UnsupportedMedia => ServerRejectReason::NotSupMedia,
        Kind::Unavailable => ServerRejectReason::Down,
        Kind::BadGateway | Kind::GatewayTimeout => ServerRejectReason::Gateway,
        Kind::BadOffset | Kind::Pipeline | Kind::Internal => {
            ServerRejectReason::InternalServerError
        }
    })
}

/// Serves one caller: after external auth, its handshake is accepted and its bytes are a source of the
/// stream its streamid names, until it leaves.
async fn serve_caller(
    app: &Arc<AppState>,
    request: srt_tokio::ConnectionRequest,
    peer: SocketAddr,
    id: &StreamId,
) -> Result<End> {
    if let Some(a) = &app.ext_auth
        && let Err(e) = a
            .check(Action::Push, &id.name, Some(peer.ip()), id.key.as_deref())
            .await
    {
        let _ = request.reject(reject_reason(&e)).await;
        return Err(e);
    }
    let session = push::authorize_key(app, &id.name, Some(peer.ip()), id.key.as_deref(), KEY_HOW)?;
    let started = push::start_source(
        app,
        &id.name,
        session,
        Some(peer),
        Some(format!("srt://{peer}")),
    );
    let (stream, feeder) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = request.reject(reject_reason(&e)).await;
            return Err(e);
        }
    };
    let socket = match request.accept(None).await {
        Ok(s) => s,
        Err(e) => {
            stream.release(feeder.id);
            return Err(Error::bad_request(format!("SRT handshake failed: {e}")));
        }
    };
    tracing::info!("SRT caller pushing");
    // The caller leaving, however it leaves, is a loss (an error at the end of the body): live SRT has no
    // clean end of input.
    let gone =
        futures_util::stream::once(async { Err(std::io::Error::other("the SRT caller left")) });
    let bytes = socket.map(|r| r.map(|(_, b)| b)).chain(gone);
    let mut body = Body::from_stream(bytes);
    Ok(push::spawn_feed(app, &stream, &feeder, &mut body).await)
}
