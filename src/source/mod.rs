//! Sources: what feeds a stream. Today an HTTP push ([`push`]), whose bytes may come in several requests;
//! its task ([`run`]) owns the source's pipeline ([`pipeline`]) for as long as the input lasts, which can
//! be longer than any one request.
//!
//! ```text
//!  request(s) ─ Feed::Data ─► source task ─► appsrc ─ front ─ conform ─► Stream::stamp/deliver
//!             ─ Feed::Complete: wait --resume-grace for a continuation, then EOS, play out, Detach::Ended
//!             ─ Feed::Lost ─────────────────────────────────────────────────────► Detach::Lost (fallback)
//! ```

pub mod detect;
pub mod pipeline;
pub mod push;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stream::attach::{End, Feed, Feeder};
use crate::stream::{Detach, Stream};
use pipeline::SourcePipeline;

/// Bound on the wait for a source's pipeline to play out what it was given after the input ended (pacing
/// plays out what is queued: appsrc + queues + a second of lead is well under this).
pub const EOS_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Feeds a source's pipeline from its requests until the input ends, is lost, fails or is replaced, then
/// tells the stream.
pub async fn run(
    stream: Arc<Stream>,
    feeder: Arc<Feeder>,
    pipeline: SourcePipeline,
    mut rx: mpsc::Receiver<Feed>,
    caps: gst::Caps,
    resume_grace: Duration,
) {
    let mut bus = pipeline.bus().stream();
    let mut sink = pipeline.input();
    let mut pending: Option<bytes::Bytes> = None;
    let mut grace: Option<Instant> = None;
    let mut draining: Option<Instant> = None;
    let sample = |data: bytes::Bytes| {
        // Upload bytes for the appsrc without copying. The caps ride along because appsrc's sample API wants
        // them on every sample (the same object each time, so a pointer compare).
        gst::Sample::builder()
            .buffer(&gst::Buffer::from_slice(data))
            .caps(&caps)
            .build()
    };
    let outcome = loop {
        let bus_msg = async { bus.next().await };
        if let Some(data) = pending.take() {
            // Wait for room in the appsrc with `poll_ready`, which is cancel-safe (a bus message may win the
            // race), then hand the buffer over synchronously: `SinkExt::send` would lose it when cancelled.
            tokio::select! {
                r = std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)) => {
                    if r.is_err() || sink.start_send_unpin(sample(data)).is_err() {
                        // Flushing: the pipeline is stopping; its bus says why.
                        draining.get_or_insert(Instant::now() + EOS_TIMEOUT);
                    }
                }
                msg = bus_msg => match source_event(msg, &stream.name) {
                    Some(o) => break o,
                    None => pending = Some(data),
                },
                _ = feeder.gone.cancelled() => break Outcome::Gone,
            }
            continue;
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
        tokio::select! {
            feed = rx.recv(), if draining.is_none() => match feed {
                Some(Feed::Data(d)) => { grace = None; pending = Some(d); }
                Some(Feed::Complete) => grace = Some(Instant::now() + resume_grace),
                Some(Feed::Lost(end)) => break Outcome::Lost(end),
                None => break Outcome::Lost(End::InputError),
            },
            _ = grace_over => {
                grace = None;
                if feeder.close() {
                    // No continuation came: the input is over. Nothing may continue it from now on.
                    pipeline.end_of_stream();
                    draining = Some(Instant::now() + EOS_TIMEOUT);
                }
            }
            _ = drain_over => {
                tracing::warn!(stream = %stream.name, "source did not play out within {EOS_TIMEOUT:?}");
                break Outcome::Drained;
            }
            msg = bus_msg => if let Some(o) = source_event(msg, &stream.name) { break o },
            _ = feeder.gone.cancelled() => break Outcome::Gone,
        }
    };
    let started = feeder.started();
    match outcome {
        Outcome::Drained => {
            feeder.status.send_modify(|s| {
                s.ended.get_or_insert(End::Eos);
            });
            if !started {
                feeder.status.send_modify(|s| {
                    s.failed.get_or_insert(crate::error::Error::unsupported(
                        "the input ended before any audio or video could be decoded from it",
                    ));
                });
            }
            stream.detach(feeder.id, Detach::Ended);
        }
        Outcome::Lost(end) => {
            feeder.status.send_modify(|s| {
                s.ended.get_or_insert(end);
            });
            stream.detach(feeder.id, Detach::Lost);
        }
        Outcome::Failed(path, message) => {
            if started {
                tracing::warn!(stream = %stream.name, element = %path, "source ended by an input error: {message}");
            } else {
                let e = pipeline::early_error(&pipeline.shared, &path, &message);
                feeder.status.send_modify(|s| {
                    s.failed.get_or_insert(e);
                });
            }
            feeder.status.send_modify(|s| {
                s.ended.get_or_insert(End::InputError);
            });
            stream.detach(feeder.id, Detach::Lost);
        }
        Outcome::Gone => {
            feeder.status.send_modify(|s| {
                s.ended.get_or_insert(End::Aborted);
            });
        }
    }
    drop(pipeline);
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
