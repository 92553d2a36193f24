//! Pull sources: transcast reads a stream from a URL instead of waiting for a push. A pull is a push whose
//! bytes transcast fetches itself: the same source task typefinds them, the same pipeline demuxes (passthrough)
//! or decodes (transcode) them, and the stream treats it like any other source.
//!
//! ```text
//!  --pull NAME=URL, POST /api/v1/streams {pull}     ─┐                     ┌─ http:// : hyper client
//!  edge: GET /live/NAME here, ORIGIN/live/NAME there ─┴─► pull task: open ─┤
//!                                                                          └─ other schemes: GStreamer URI source
//!                                                                             (srt, udp, https, file) ─► appsink
//!                                                                             (rtsp: depayload, parse, Matroska)
//!     ─► bytes ─► Feeder ─► source task (typefind, pipeline) ─► Stream
//!     on failure or end: the stream shows its fallback; retry after 1 s, doubling to 10 s, with jitter
//! ```
//!
//! Two kinds. A **relay** (`--pull`, the API) is retried after any end, so a file served over HTTP plays in a
//! loop and a live source that drops comes back. An **edge** pull (`--origin`) follows its origin: a clean
//! end of the origin's response (the chunked terminator) is the end of the stream there, so it ends here too;
//! a broken one (origin restart, network) is a loss, retried while the edge's viewers see the fallback.
//! On-demand pulls (every edge pull; relays created with `on_demand`) start with their first viewer and close
//! `--pull-linger` after their last one left.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::error::{Error, Kind as ErrorKind, Result};
use crate::source::SourceContext;
pub use crate::source::pulls::{Pull, PullKind, PullState, PullStatus, Pulls};
use crate::state::AppState;
use crate::stream::Stream;
use crate::stream::attach::End;

/// First wait before a retry; it doubles after each failed attempt up to [`RETRY_MAX`], plus up to a quarter
/// of jitter so pulls that failed together do not retry together.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// Bound on connecting and getting the response head of an HTTP pull.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an on-demand pull looks at its viewer count.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Bytes of an upstream's error body kept for the message.
const ERROR_BODY_MAX: usize = 4096;
/// Byte buffers a GStreamer URI source may have queued for the source task.
const GST_QUEUE: usize = 8;

/// What a relay announces itself as (`User-Agent`), so an origin counts it as a relay, not a viewer.
pub fn user_agent() -> String {
    format!("{RELAY_AGENT_PREFIX}{} (relay)", env!("CARGO_PKG_VERSION"))
}

/// The `User-Agent` prefix of a transcast relay.
pub const RELAY_AGENT_PREFIX: &str = "transcast/";

/// Starts an always-on pull's task, unless it runs.
pub fn start(app: &Arc<AppState>, pull: &Arc<Pull>) {
    if Pulls::mark_running(pull) {
        app.tasks.spawn(run(app.clone(), pull.clone()));
    }
}

/// Declares a pull (409 when the name has one); an always-on pull starts at once.
pub fn declare(app: &Arc<AppState>, pull: Pull) -> Result<Arc<Pull>> {
    let pull = app.pulls.add(pull)?;
    if !pull.on_demand {
        start(app, &pull);
    }
    Ok(pull)
}

/// A viewer wants `name`: its on-demand pull (an edge makes one for any name) is started if it is not running,
/// and kept open. None when nothing here can pull the name.
pub fn want(app: &Arc<AppState>, name: &str) -> Option<Arc<Pull>> {
    let (pull, spawn) = app
        .pulls
        .want(name, &app.config().origins, app.config().max_streams)?;
    if spawn {
        app.tasks.spawn(run(app.clone(), pull.clone()));
    }
    Some(pull)
}

/// Checks a pull's URL against what this GStreamer can read (an `http://` URL is read by transcast itself).
pub fn check_url(url: &str) -> Result<()> {
    crate::config::check_url(url).map_err(Error::bad_request)?;
    if url.starts_with("http://") {
        return Ok(());
    }
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let Ok(src) = gst::Element::make_from_uri(gst::URIType::Src, url, None) else {
        return Err(Error::bad_request(format!(
            "cannot pull {scheme}:// URLs: no GStreamer source reads them here (http, https, srt, udp, rtsp and file do)"
        )));
    };
    if src.static_pad("src").is_none() && !src.has_property("latency") {
        return Err(Error::bad_request(format!(
            "cannot pull {scheme}:// URLs: their source is neither a byte stream nor RTSP"
        )));
    }
    Ok(())
}

/// How one attempt ended.
enum Attempt {
    /// The pull was removed, or the daemon is shutting down: stop.
    Stopped,
    /// An on-demand pull's viewers are gone: close its stream, and go idle unless one came back.
    Idle,
    /// An edge's origin ended the stream cleanly: so does the edge.
    Ended,
    /// Try again. `delivered`: its media had reached the stream (the backoff starts over).
    Failed {
        error: Error,
        status: Option<u16>,
        delivered: bool,
    },
}

/// A pull's life: attempts with backoff until it is removed, goes idle, or (an edge) its origin ends the
/// stream.
async fn run(app: Arc<AppState>, pull: Arc<Pull>) {
    let linger = app.config().pull_linger;
    let mut backoff = RETRY_MIN;
    let mut index = 0usize;
    // Failed attempts since one last delivered (or since the last backoff).
    let mut round = 0usize;
    tracing::info!(stream = %pull.name, kind = ?pull.kind, url = %pull.url(0), "pull starting");
    loop {
        if pull.stop.is_cancelled() || app.shutdown.is_cancelled() {
            break;
        }
        if pull.idle(linger) && app.pulls.may_stop_idle(&pull, linger) {
            tracing::info!(stream = %pull.name, "no viewer for --pull-linger: pull closed");
            end_own_stream(&app, &pull);
            pull.status.send_modify(|s| {
                s.state = PullState::Idle;
                s.retry_at = None;
            });
            return;
        }
        let url = pull.url(index);
        pull.status.send_modify(|s| {
            s.state = PullState::Connecting;
            s.url = url.clone();
            s.retry_at = None;
        });
        match attempt(&app, &pull, &url).await {
            Attempt::Stopped => {
                end_own_stream(&app, &pull);
                break;
            }
            Attempt::Idle => {
                end_own_stream(&app, &pull);
                continue;
            }
            Attempt::Ended => {
                tracing::info!(stream = %pull.name, %url, "the origin ended the stream");
                break;
            }
            Attempt::Failed {
                error,
                status,
                delivered,
            } => {
                // An edge asked for a name its origins do not have: the viewer has its 404, and a pull left retrying
                // would only knock on the origin for a name nobody can watch. (One that delivered before keeps
                // trying: that is its origin restarting.)
                if pull.kind == PullKind::Edge
                    && status == Some(404)
                    && pull.status.borrow().connections == 0
                    && round + 1 >= pull.urls.len()
                {
                    pull.status.send_modify(|s| {
                        s.state = PullState::Stopped;
                        s.failures += 1;
                        s.last_error = Some(error.message.clone());
                        s.last_status = status;
                    });
                    tracing::info!(stream = %pull.name, "no origin has this stream: pull closed");
                    break;
                }
                if delivered {
                    backoff = RETRY_MIN;
                    round = 0;
                }
                round += 1;
                if pull.urls.len() > 1 {
                    // The next origin in the list at once; the backoff only after the whole list failed.
                    index += 1;
                    if round < pull.urls.len() {
                        tracing::warn!(stream = %pull.name, %url, status, "pull failed, trying the next: {}", error.message);
                        pull.status.send_modify(|s| {
                            s.failures += 1;
                            s.last_error = Some(error.message.clone());
                            s.last_status = status;
                        });
                        continue;
                    }
                }
                round = 0;
                let wait = jitter(backoff);
                tracing::warn!(stream = %pull.name, %url, status, retry_in = ?wait, "pull failed: {}", error.message);
                pull.status.send_modify(|s| {
                    s.state = PullState::Retrying;
                    s.failures += 1;
                    s.last_error = Some(error.message.clone());
                    s.last_status = status;
                    s.retry_at = Some(SystemTime::now() + wait);
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = pull.stop.cancelled() => {}
                    _ = app.shutdown.cancelled() => {}
                }
                if !delivered {
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
    pull.status.send_modify(|s| {
        s.state = PullState::Stopped;
        s.retry_at = None;
    });
    app.pulls.finished(&pull);
    tracing::info!(stream = %pull.name, "pull stopped");
}

/// `d` plus up to a quarter of it, at random.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map_or(0, |_| u16::from_le_bytes(b));
    d + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 4.0)
}

/// Ends the pull's stream if the pull is what feeds it (or nothing does): a push that took the name is left
/// alone. A pull a reload retired lets its stream fall back instead, as for a lost source: its viewers stay
/// until the stream's linger runs out.
fn end_own_stream(app: &AppState, pull: &Pull) {
    let Some(stream) = app.registry.get(&pull.name) else {
        return;
    };
    let ours = pull.last_source.load(Ordering::Relaxed);
    if pull.retired.load(Ordering::Relaxed) {
        stream.detach(ours, crate::stream::Detach::Lost);
    } else if stream.feeder().is_none_or(|f| f.id == ours) {
        stream.end();
    }
}

/// Opens the URL, attaches a new source to the stream (creating the stream), and feeds it until the input
/// ends, fails, or the pull stops.
async fn attempt(app: &Arc<AppState>, pull: &Arc<Pull>, url: &str) -> Attempt {
    let failed = |error: Error, status: Option<u16>| Attempt::Failed {
        error,
        status,
        delivered: false,
    };
    let opened = tokio::select! {
        r = open(app, pull, url) => r,
        _ = pull.stop.cancelled() => return Attempt::Stopped,
        _ = app.shutdown.cancelled() => return Attempt::Stopped,
        _ = idle(app, pull, None) => return Attempt::Idle,
    };
    let mut body = match opened {
        Ok(b) => b,
        Err((e, status)) => return failed(e, status),
    };
    let (stream, reservation) = match app
        .registry
        .open(&pull.name, || app.new_stream(&pull.name, None, None))
    {
        Ok(x) => x,
        Err(e) => return failed(e, None),
    };
    if let Some(r) = reservation {
        app.tasks.spawn(stream.clone().run(r));
    }
    let (feeder, rx) = match stream.claim() {
        Ok(x) => x,
        Err(e) => return failed(e, None),
    };
    feeder.seal();
    pull.last_source.store(feeder.id, Ordering::Relaxed);
    app.tasks.spawn(crate::source::run(
        stream.clone(),
        feeder.clone(),
        rx,
        SourceContext {
            templates: app.templates(),
            // An edge's input is its origin's live output, bursts of a joiner's keyframe group included:
            // holding those to real time would keep the edge a group behind. A relay may read a file.
            pace: app.config().pace && pull.kind == PullKind::Relay,
            resume_grace: Duration::ZERO,
            session: None,
            peer: None,
            url: Some(url.to_string()),
            end_falls_back: pull.kind == PullKind::Relay,
            limits: app.config().input_limits,
            workers: app.config().workers.clone(),
        },
    ));
    pull.status.send_modify(|s| {
        s.state = PullState::Live;
        s.connections += 1;
    });
    tracing::info!(stream = %pull.name, %url, "pull connected");
    let tx = feeder.sender();
    let end = tokio::select! {
        end = crate::source::push::feed(app, &stream, &feeder, &tx, &mut body) => end,
        _ = pull.stop.cancelled() => return Attempt::Stopped,
        _ = idle(app, pull, Some(&stream)) => return Attempt::Idle,
    };
    feeder.release();
    if !(end == End::Eos && pull.kind == PullKind::Edge) {
        // The source task plays out what it was given before it lets go of the stream: the next attempt starts
        // after that, not over it.
        let mut status = feeder.status.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(crate::source::EOS_TIMEOUT, status.wait_for(|s| s.ended.is_some())) => {}
            _ = pull.stop.cancelled() => return Attempt::Stopped,
            _ = app.shutdown.cancelled() => return Attempt::Stopped,
        }
    }
    let delivered = feeder.status.borrow().on_air;
    if let Some(e) = feeder.status.borrow().failed.clone() {
        return Attempt::Failed {
            error: e,
            status: None,
            delivered,
        };
    }
    let error = match end {
        End::Eos if pull.kind == PullKind::Edge => {
            // The source task plays out what it has, then ends the stream: viewers get a clean end.
            return Attempt::Ended;
        }
        End::Eos => Error::bad_request("the input ended"),
        End::SourceTimeout => Error::bad_request(format!(
            "no data for {:?} (--source-timeout)",
            app.config().source_timeout
        )),
        End::InputError => Error::bad_request("the input broke off"),
        End::Aborted => Error::bad_request("the stream was ended or taken over"),
    };
    Attempt::Failed {
        error,
        status: None,
        delivered,
    }
}

/// Resolves once an on-demand pull has had no viewer for `--pull-linger` (never for an always-on one).
async fn idle(app: &AppState, pull: &Pull, stream: Option<&Arc<Stream>>) {
    if !pull.on_demand {
        return std::future::pending().await;
    }
    let linger = app.config().pull_linger;
    loop {
        tokio::time::sleep(IDLE_CHECK).await;
        if stream.is_some_and(|s| s.hub.client_count() > 0) {
            pull.seen();
        } else if pull.idle(linger) {
            return;
        }
    }
}

/// The input of one attempt as a body of bytes, or why it could not be opened (with the HTTP status).
async fn open(
    app: &AppState,
    pull: &Pull,
    url: &str,
) -> std::result::Result<Body, (Error, Option<u16>)> {
    if url.starts_with("http://") {
        let key = match pull.kind {
            PullKind::Edge => app.config().origin_key.clone(),
            PullKind::Relay => None,
        };
        open_http(url, key.as_deref()).await
    } else {
        open_gst(url).map_err(|e| (e, None))
    }
}

fn http_client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // One connection per pull: a pooled idle connection is of no use to an endless response.
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector)
    })
}

/// A request to an upstream transcast (or any HTTP server): `User-Agent` names transcast, `key` goes in
/// `Authorization`.
fn upstream_request(
    method: hyper::Method,
    url: &str,
    key: Option<&str>,
) -> std::result::Result<hyper::Request<Empty<Bytes>>, Error> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::USER_AGENT, user_agent());
    if let Some(k) = key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
    }
    req.body(Empty::new())
        .map_err(|e| Error::bad_request(format!("bad URL {url}: {e}")))
}

/// GETs `url`; a non-2xx answer is an error carrying its status and, from a transcast, its JSON message.
async fn open_http(
    url: &str,
    key: Option<&str>,
) -> std::result::Result<Body, (Error, Option<u16>)> {
    let req = upstream_request(hyper::Method::GET, url, key).map_err(|e| (e, None))?;
    let resp = match tokio::time::timeout(CONNECT_TIMEOUT, http_client().request(req)).await {
        Err(_) => {
            return Err((
                Error::new(
                    ErrorKind::GatewayTimeout,
                    format!("{url} did not answer within {CONNECT_TIMEOUT:?}"),
                ),
                None,
            ));
        }
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            return Err((
                Error::new(ErrorKind::BadGateway, format!("{url}: {msg}")),
                None,
            ));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(Body::new(resp.into_body()));
    }
    let body = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::Limited::new(resp.into_body(), ERROR_BODY_MAX).collect(),
    )
    .await;
    let detail = body
        .ok()
        .and_then(|b| b.ok())
        .map(|b| upstream_message(&b.to_bytes()))
        .unwrap_or_default();
    Err((
        Error::new(
            ErrorKind::BadGateway,
            format!("{url} answered {status}{detail}"),
        ),
        Some(status.as_u16()),
    ))
}

/// `: message` from a transcast JSON error body, else nothing.
fn upstream_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .map(|m| format!(": {}", crate::error::printable(m)))
        })
        .unwrap_or_default()
}

/// The answer of an upstream to a `HEAD`: its status, or why there was none.
pub async fn head(url: &str, key: Option<&str>) -> std::result::Result<u16, Error> {
    let req = upstream_request(hyper::Method::HEAD, url, key)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, http_client().request(req)).await {
        Ok(Ok(r)) => Ok(r.status().as_u16()),
        Ok(Err(e)) => Err(Error::new(ErrorKind::BadGateway, format!("{url}: {e}"))),
        Err(_) => Err(Error::new(
            ErrorKind::GatewayTimeout,
            format!("{url} did not answer within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

/// Reads a URL with the GStreamer source for its scheme (`srtsrc`, `udpsrc`, `souphttpsrc`, `filesrc`...)
/// into an appsink, as a body of bytes. The pipeline lives as long as the body; its errors end the body with
/// an error, its EOS ends it cleanly.
fn open_gst(url: &str) -> Result<Body> {
    check_url(url)?;
    let src = gst::Element::make_from_uri(gst::URIType::Src, url, None)
        .map_err(|e| Error::bad_request(format!("cannot read {url}: {e}")))?;
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(GST_QUEUE as u32)
        .build();
    let pipeline = gst::Pipeline::new();
    pipeline.add_many([&src, sink.upcast_ref()])?;
    if src.static_pad("src").is_some() {
        src.link(&sink)?;
    } else {
        remux(&pipeline, &src, sink.upcast_ref())?;
    }
    let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(GST_QUEUE);
    let tx = Arc::new(Mutex::new(Some(tx)));
    let on_sample = tx.clone();
    let on_eos = tx.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
                let map = buffer
                    .into_mapped_buffer_readable()
                    .map_err(|_| gst::FlowError::Error)?;
                let bytes = Bytes::from_owner(map);
                let sender = on_sample.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // A streaming thread of the source, not a runtime thread: blocking here is the backpressure.
                match sender.map(|t| t.blocking_send(Ok(bytes))) {
                    Some(Ok(())) => Ok(gst::FlowSuccess::Ok),
                    _ => Err(gst::FlowError::Flushing),
                }
            })
            .eos(move |_| {
                on_eos.lock().unwrap_or_else(|e| e.into_inner()).take();
            })
            .build(),
    );
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let on_error = tx;
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Error(err) = msg.view() {
            let text = format!("{}", err.error());
            if let Some(t) = on_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = t.try_send(Err(std::io::Error::other(text)));
            }
        }
        gst::BusSyncReply::Drop
    });
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        let _ = pipeline.set_state(gst::State::Null);
        Error::bad_request(format!("cannot read {url}"))
    })?;
    let guard = crate::stream::output::NullOnDrop(pipeline);
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let item = rx.recv().await?;
        Some((item, (rx, guard)))
    });
    Ok(Body::from_stream(stream))
}

/// What an RTSP source (`rtspsrc`: one RTP pad per stream) delivers becomes a byte stream like any other
/// pull's: each stream is depayloaded and parsed (`parsebin`) and muxed into live Matroska, which the source
/// task then reads as it reads a Matroska push.
fn remux(pipeline: &gst::Pipeline, src: &gst::Element, sink: &gst::Element) -> Result<()> {
    /// The jitter buffer's wait for late packets, ms (rtspsrc's default, 2000, would be that much latency).
    const RTSP_LATENCY_MS: u32 = 200;
    if src.has_property("latency") {
        src.set_property("latency", RTSP_LATENCY_MS);
    }
    let mux = gst::ElementFactory::make("matroskamux")
        .property("streamable", true)
        .build()?;
    pipeline.add(&mux)?;
    mux.link(sink)?;
    let weak = pipeline.downgrade();
    src.connect_pad_added(move |src, pad| {
        crate::stream::output::no_panic(src, "pad-added", (), || {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            // The muxer's pad is requested now, before any data flows (rtspsrc announces every stream before it
            // plays), so the muxer waits for all of them before it writes its header.
            let media = pad
                .current_caps()
                .and_then(|c| {
                    c.structure(0)
                        .and_then(|s| s.get::<String>("media").ok())
                })
                .unwrap_or_default();
            let template = match media.as_str() {
                "video" => "video_%u",
                "audio" => "audio_%u",
                _ => return,
            };
            let Some(mux_pad) = mux.request_pad_simple(template) else {
                tracing::warn!("an RTSP {media} stream cannot be remuxed: left out");
                return;
            };
            let parse = match gst::ElementFactory::make("parsebin").build() {
                Ok(p) => p,
                Err(e) => {
                    gst::element_error!(src, gst::CoreError::MissingPlugin, ("parsebin: {e}"));
                    return;
                }
            };
            if pipeline.add(&parse).is_err() || parse.sync_state_with_parent().is_err() {
                return;
            }
            parse.connect_pad_added(move |parse, out| {
                crate::stream::output::no_panic(parse, "pad-added", (), || {
                    if !mux_pad.is_linked()
                        && let Err(e) = out.link(&mux_pad)
                    {
                        tracing::warn!(caps = ?out.current_caps(), "an RTSP stream cannot be remuxed: {e:?}");
                    }
                })
            });
            if let Some(sink) = parse.static_pad("sink")
                && let Err(e) = pad.link(&sink)
            {
                tracing::warn!("cannot parse an RTSP stream: {e:?}");
            }
        })
    });
    Ok(())
}

/// Stops a pull's GStreamer reader when its body is dropped.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(RETRY_MIN);
            assert!(j >= RETRY_MIN && j <= RETRY_MIN.mul_f64(1.25), "{j:?}");
        }
    }

    #[test]
    fn edge_urls_name_the_stream_on_each_origin() {
        let p = Pull::new(
            "cam1",
            vec!["http://a:1".into(), "http://b:2".into()],
            PullKind::Edge,
            true,
        );
        assert_eq!(p.url(0), "http://a:1/live/cam1");
        assert_eq!(p.url(1), "http://b:2/live/cam1");
        assert_eq!(p.url(2), "http://a:1/live/cam1");
        let r = Pull::new("x", vec!["srt://h:9".into()], PullKind::Relay, false);
        assert_eq!(r.url(5), "srt://h:9");
    }

    #[test]
    fn upstream_errors_keep_the_origins_message() {
        assert_eq!(
            upstream_message(
                br#"{"error":{"code":"not_found","message":"no live stream named 'x'"}}"#
            ),
            ": no live stream named 'x'"
        );
        assert_eq!(upstream_message(b"<html>"), "");
        // A hostile upstream cannot put a line break into the log through its message.
        assert_eq!(
            upstream_message(br#"{"error":{"message":"x\r\nFORGED"}}"#),
            r": x\r\nFORGED"
        );
    }
}
