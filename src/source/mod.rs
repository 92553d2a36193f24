//! Sources: what feeds a stream. An HTTP push ([`push`]), whose bytes may come in several requests, or a
//! pull ([`pull`]) of a URL (an origin's stream, for an edge). Either way the source task ([`run`])
//! typefinds the bytes and owns the source's pipeline ([`pipeline`]) for as long as the input lasts, which
//! can be longer than any one request.
//!
//! ```text
//!  request(s) ─ Feed::Data ─► source task: typefind ─► appsrc ─ front ─ conform ─► Stream::stamp/deliver
//!             ─ Feed::Complete: wait --resume-grace for a continuation, then EOS, play out, Detach::Ended
//!             ─ Feed::Lost ─────────────────────────────────────────────────────► Detach::Lost (fallback)
//! ```
//!
//! A source that fails before its media reached the stream reports the error its request answers with
//! (415 for input it cannot read, 503 for a limit) through [`Feeder::status`].

pub mod detect;
pub mod pipeline;
pub mod pull;
pub mod pulls;
pub mod push;
pub mod sandbox;
pub mod srt;
pub mod wire;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::tokens::Session;
use crate::error::Error;
use crate::stream::attach::{End, Feed, Feeder};
use crate::stream::{Detach, SourceInfo, Stream};
use crate::templates::Templates;
use detect::{Detected, Probe};
use pipeline::SourcePipeline;

/// Bound on the wait for a source's pipeline to play out what it was given after the input ended (pacing
/// plays out what is queued: appsrc + queues + a second of lead is well under this).
pub const EOS_TIMEOUT: Duration = Duration::from_secs(60);
/// ... and on a pipeline that has taken all its input yet does not end.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
const STUCK_CHECK: Duration = Duration::from_millis(250);

/// What a source task needs besides its stream.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub templates: Arc<Templates>,
    pub pace: bool,
    pub resume_grace: Duration,
    /// The token session pushing, whose `inputs` limit the containers it may push.
    pub session: Option<Session>,
    pub peer: Option<SocketAddr>,
    /// Where the input comes from, as the API shows it: `None` for a push (its peer says it), else the URL.
    pub url: Option<String>,
    /// A clean end of the input is a loss, not the stream's end: the source is a pull that is retried, so
    /// the stream shows its fallback meanwhile.
    pub end_falls_back: bool,
    pub limits: crate::config::InputLimits,
    /// `--source-isolation on`: the source runs in a worker process.
    pub workers: Option<crate::config::WorkerSettings>,
}

/// Where a source's pipeline runs: here, or in a worker process.
#[derive(Debug)]
enum Backend {
    Local(SourcePipeline),
    Worker(Arc<worker::WorkerPipeline>),
}

impl Backend {
    fn start(
        stream: &Arc<Stream>,
        id: u64,
        detected: &Detected,
        ctx: &SourceContext,
    ) -> Result<Backend, Error> {
        Ok(match &ctx.workers {
            None => Backend::Local(SourcePipeline::start(
                stream.clone(),
                id,
                detected,
                ctx.templates.clone(),
                ctx.pace,
                ctx.limits,
            )?),
            Some(w) => Backend::Worker(Arc::new(worker::WorkerPipeline::start(
                stream.clone(),
                id,
                detected,
                &ctx.templates,
                ctx.pace,
                ctx.limits,
                w,
            )?)),
        })
    }

    fn queued_input(&self) -> Box<dyn Fn() -> u64 + Send + Sync + 'static> {
        match self {
            Backend::Local(p) => Box::new(p.queued_input()),
            Backend::Worker(w) => Box::new(w.queued_input()),
        }
    }

    fn end_of_stream(&self) {
        match self {
            Backend::Local(p) => p.end_of_stream(),
            Backend::Worker(w) => w.end_of_stream(),
        }
    }

    fn shared(&self) -> &pipeline::SourceShared {
        match self {
            Backend::Local(p) => &p.shared,
            Backend::Worker(w) => &w.shared,
        }
    }

    fn input_codecs(&self) -> Vec<String> {
        self.shared()
            .input_codecs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How a source task ended.
#[derive(Debug)]
enum Outcome {
    /// Input complete, grace over, pipeline drained.
    Drained,
    /// The request said the input is lost.
    Lost(End),
    /// The pipeline failed: (element path, message).
    Failed(String, String),
    /// Replaced by a new push, or its stream ended.
    Gone,
}

/// Runs a claimed source: typefinds its first bytes, starts its pipeline, attaches it to the stream and
/// feeds it until the input ends, is lost, fails or is replaced; then tells the stream.
pub async fn run(
    stream: Arc<Stream>,
    feeder: Arc<Feeder>,
    mut rx: mpsc::Receiver<Feed>,
    ctx: SourceContext,
) {
    let (detected, head, complete) = match typefind(&feeder, &mut rx, &ctx).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            // Aborted (or replaced) before its input was recognised: answered like any aborted push.
            feeder.status.send_modify(|s| {
                s.ended.get_or_insert(End::Aborted);
            });
            stream.release(feeder.id);
            return;
        }
        Err(e) => {
            tracing::info!(stream = %stream.name, "source refused: {}", e.message);
            feeder.status.send_modify(|s| {
                s.failed.get_or_insert(e);
                s.ended.get_or_insert(End::InputError);
            });
            stream.release(feeder.id);
            return;
        }
    };
    let started = Backend::start(&stream, feeder.id, &detected, &ctx).and_then(|p| {
        stream.attach(
            feeder.id,
            feeder.clone(),
            SourceInfo {
                peer: ctx.peer,
                since: SystemTime::now(),
                url: ctx.url.clone(),
                container: Some(detected.container.name()),
                codecs: Vec::new(),
            },
        )?;
        Ok(p)
    });
    let pipeline = match started {
        Ok(p) => {
            feeder.set_queued_probe(p.queued_input());
            p
        }
        Err(e) => {
            feeder.status.send_modify(|s| {
                s.failed.get_or_insert(e);
                s.ended.get_or_insert(End::InputError);
            });
            stream.release(feeder.id);
            return;
        }
    };
    tracing::info!(stream = %stream.name, input = detected.container.name(), caps = %detected.caps, "source starting");
    let outcome = feed(
        &stream,
        &feeder,
        &pipeline,
        &mut rx,
        &detected.caps,
        head,
        complete,
        ctx.resume_grace,
    )
    .await;
    finish(&stream, &feeder, &pipeline, outcome, ctx.end_falls_back);
    // The pipeline goes to NULL here, off the stream's lock; then the channel closes.
    drop(pipeline);
}

/// Collects the first bytes until their container is known. A complete body too short to tell (the first
/// of souphttpclientsink's pieces can be two MPEG-TS packets) waits `--resume-grace` for a continuation.
/// `None` when the source is gone first (its stream aborted, or a new push took it).
async fn typefind(
    feeder: &Feeder,
    rx: &mut mpsc::Receiver<Feed>,
    ctx: &SourceContext,
) -> Result<Option<(Detected, Bytes, bool)>, Error> {
    let mut head = BytesMut::new();
    let mut grace: Option<Instant> = None;
    let detected = loop {
        let grace_over = async {
            match grace {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let complete = tokio::select! {
            feed = rx.recv() => match feed {
                Some(Feed::Data(d)) => {
                    grace = None;
                    head.extend_from_slice(&d);
                    false
                }
                Some(Feed::Complete) => {
                    grace = Some(Instant::now() + ctx.resume_grace);
                    continue;
                }
                Some(Feed::Lost(End::SourceTimeout)) => {
                    return Err(Error::bad_request("the source sent no data within --source-timeout"));
                }
                Some(Feed::Lost(_)) | None => {
                    return Err(Error::bad_request("the upload broke off before its format was recognised"));
                }
            },
            _ = grace_over => {
                if !feeder.close() {
                    continue; // a continuation just came
                }
                true
            }
            _ = feeder.gone.cancelled() => return Ok(None),
        };
        match detect::probe(&head, complete) {
            Probe::NeedMore => continue,
            Probe::Found(d) => break (d, complete),
            Probe::Unsupported(m) => return Err(Error::unsupported(m)),
        }
    };
    let (detected, complete) = detected;
    if let Some(s) = &ctx.session
        && !s.allows_input(detected.container.name())
    {
        return Err(Error::unsupported(format!(
            "session '{}' may push only {}; this input is {}",
            s.session_id,
            s.inputs.join(", "),
            detected.container.name()
        )));
    }
    Ok(Some((detected, head.freeze(), complete)))
}

/// Feeds the pipeline from the requests' chunks until the input ends (and plays out), is lost, fails or is
/// replaced. `complete`: the input was already closed while typefinding.
#[allow(clippy::too_many_arguments)]
async fn feed(
    stream: &Stream,
    feeder: &Feeder,
    pipeline: &Backend,
    rx: &mut mpsc::Receiver<Feed>,
    caps: &gst::Caps,
    head: Bytes,
    complete: bool,
    resume_grace: Duration,
) -> Outcome {
    let (mut bus, mut sink, worker) = match pipeline {
        Backend::Local(p) => (Some(p.bus().stream()), Some(p.input()), None),
        Backend::Worker(w) => (None, None, Some(w.clone())),
    };
    // The next way the pipeline ends (a bus message, or the worker's word); pending while it has none.
    async fn ended(
        bus: &mut Option<gst::bus::BusStream>,
        worker: &Option<Arc<worker::WorkerPipeline>>,
        name: &str,
    ) -> Outcome {
        loop {
            let outcome = match (bus.as_mut(), worker) {
                (Some(bus), _) => source_event(bus.next().await, name),
                (None, Some(w)) => Some(match w.event().await {
                    Some(worker::WorkerEvent::Ended) => Outcome::Drained,
                    Some(worker::WorkerEvent::Failed(path, message)) => {
                        tracing::warn!(stream = name, element = %path, "source worker: {message}");
                        Outcome::Failed(path, message)
                    }
                    None => Outcome::Failed("worker".into(), "the worker is gone".into()),
                }),
                (None, None) => std::future::pending().await,
            };
            if let Some(o) = outcome {
                return o;
            }
        }
    }
    let mut pending = Some(head);
    let mut grace: Option<Instant> = None;
    let mut draining: Option<Instant> = None;
    let mut closed = complete;
    let sample = |data: Bytes| {
        // Upload bytes for the appsrc without copying. The caps ride along because appsrc's sample API wants
        // them on every sample (the same object each time, so a pointer compare).
        gst::Sample::builder()
            .buffer(&gst::Buffer::from_slice(data))
            .caps(caps)
            .build()
    };
    loop {
        if let Some(data) = pending.take() {
            // Wait for room in the appsrc with `poll_ready`, which is cancel-safe (a bus message may win the
            // race), then hand the buffer over synchronously: `SinkExt::send` would lose it when cancelled.
            let ready = async {
                match (sink.as_mut(), &worker) {
                    (Some(sink), _) => std::future::poll_fn(|cx| sink.poll_ready_unpin(cx))
                        .await
                        .map_err(|_| ()),
                    (None, Some(w)) => w.ready().await.then_some(()).ok_or(()),
                    (None, None) => Err(()),
                }
            };
            tokio::select! {
                r = ready => {
                    let sent = r.and_then(|()| match (sink.as_mut(), &worker) {
                        (Some(sink), _) => sink.start_send_unpin(sample(data)).map_err(|_| ()),
                        (None, Some(w)) => w.send(data).then_some(()).ok_or(()),
                        (None, None) => Err(()),
                    });
                    if sent.is_err() {
                        // Flushing: the pipeline is stopping; it says why.
                        draining.get_or_insert(Instant::now() + EOS_TIMEOUT);
                    }
                }
                o = ended(&mut bus, &worker, &stream.name) => return o,
                _ = feeder.gone.cancelled() => return Outcome::Gone,
            }
            continue;
        }
        if closed && draining.is_none() {
            // The input is over: nothing may continue it from now on.
            pipeline.end_of_stream();
            draining = Some(Instant::now() + EOS_TIMEOUT);
        }
        let grace_over = async {
            match grace {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let drain_over = async {
            match draining {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // While draining: a pipeline that has taken every byte and still not ended after STUCK_AFTER is a demuxer
        // waiting for data that will never come (a corrupt index, a damaged fragment); what it still held plays out
        // well within that (pacing holds a second, the queues a second).
        let stuck = async {
            if draining.is_none() {
                return std::future::pending().await;
            }
            let mut since: Option<Instant> = None;
            loop {
                tokio::time::sleep(STUCK_CHECK).await;
                // A worker whose pipeline has not moved (no input taken, no frame delivered) is as stuck as one
                // that has taken everything: its pipeline may be held by a stream that takes no more.
                let stalled = feeder.starved()
                    || worker
                        .as_ref()
                        .is_some_and(|w| w.since_progress() >= STUCK_CHECK);
                if !stalled {
                    since = None;
                } else if since.get_or_insert_with(Instant::now).elapsed() >= STUCK_AFTER {
                    return;
                }
            }
        };
        tokio::select! {
            feed = rx.recv(), if draining.is_none() => match feed {
                Some(Feed::Data(d)) => { grace = None; pending = Some(d); }
                Some(Feed::Complete) => grace = Some(Instant::now() + resume_grace),
                Some(Feed::Lost(end)) => return Outcome::Lost(end),
                None => return Outcome::Lost(End::InputError),
            },
            _ = grace_over => {
                grace = None;
                closed = feeder.close();
            }
            _ = drain_over => {
                tracing::warn!(stream = %stream.name, "source did not play out within {EOS_TIMEOUT:?}");
                return Outcome::Drained;
            }
            _ = stuck => {
                tracing::warn!(stream = %stream.name, "source took all its input and did not end within {STUCK_AFTER:?}: its demuxer waits for data that will not come");
                return Outcome::Drained;
            }
            o = ended(&mut bus, &worker, &stream.name) => return o,
            _ = feeder.gone.cancelled() => return Outcome::Gone,
        }
    }
}

/// Tells the source's requests and its stream how it ended.
fn finish(
    stream: &Arc<Stream>,
    feeder: &Feeder,
    pipeline: &Backend,
    outcome: Outcome,
    end_falls_back: bool,
) {
    let started = feeder.status.borrow().on_air;
    stream.note_codecs(feeder.id, pipeline.input_codecs());
    let (end, detach) = match outcome {
        Outcome::Drained => {
            if !started {
                feeder.status.send_modify(|s| {
                    s.failed.get_or_insert(Error::unsupported(
                        "the input ended before any audio or video could be decoded from it",
                    ));
                });
            }
            let why = if end_falls_back {
                Detach::Lost
            } else {
                Detach::Ended
            };
            (End::Eos, Some(why))
        }
        Outcome::Lost(end) => (end, Some(Detach::Lost)),
        Outcome::Failed(path, message) => {
            if started {
                tracing::warn!(stream = %stream.name, element = %path, "source ended by an input error: {message}");
            } else {
                let e = pipeline::early_error(pipeline.shared(), &path, &message);
                feeder.status.send_modify(|s| {
                    s.failed.get_or_insert(e);
                });
            }
            (End::InputError, Some(Detach::Lost))
        }
        Outcome::Gone => (End::Aborted, None),
    };
    feeder.status.send_modify(|s| {
        s.ended.get_or_insert(end);
    });
    if let Some(why) = detach {
        stream.detach(feeder.id, why);
    }
}

/// Logs a bus message and says whether it ends the source.
fn source_event(msg: Option<gst::Message>, name: &str) -> Option<Outcome> {
    let Some(msg) = msg else {
        return Some(Outcome::Failed(String::new(), "pipeline bus closed".into()));
    };
    match msg.view() {
        gst::MessageView::Error(err) => {
            let (path, text) = pipeline::describe_error(err);
            tracing::warn!(stream = name, element = %path, debug = ?err.debug(), "source pipeline error: {text}");
            Some(Outcome::Failed(path, text))
        }
        // Some demuxers know where the media ends (qtdemux reads it from `moov`) and finish before the
        // upload is over: that is a normal end.
        gst::MessageView::Eos(_) => Some(Outcome::Drained),
        gst::MessageView::Warning(w) => {
            let path = w
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default();
            tracing::debug!(stream = name, element = %path, "source pipeline warning: {}", w.error());
            None
        }
        _ => None,
    }
}
