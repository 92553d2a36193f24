//! A source's pipeline: its bytes are typefound, demuxed and (unless passed through) decoded and converted to
//! the stream's raw caps, then handed to the stream track by track.
//!
//! ```text
//!                        ┌─ (raw track) ─────────────── conform (convert/scale/rate to the stream's caps) ─ appsink ─┐
//!  appsrc ─ decodebin ───┤                                                                                          ├─► Stream::stamp ─ pace ─ Stream::deliver
//!   (bytes)  or matroskademux ─ (VP8/VP9/Vorbis/Opus, passthrough stream) ─ queue ──────────────────────── appsink ─┤
//!                        └─ (Matroska, other codec) ─ decodebin ─ conform ─────────────────────────────── appsink ─┘
//! ```
//!
//! The first video and first audio track are used; others (and subtitles) go to a fakesink so they never
//! stall the demuxer as not-linked. What the stream does with each track ([`Offer`]) is the stream's
//! decision. Buffers are paced here ([`crate::stream::pacing`]) in stream time, holding this pipeline's streaming
//! thread, which backs up into the appsrc and throttles the sender through TCP. All callbacks hold weak
//! references to the pipeline (a strong one would be a cycle), and none may panic: a failure becomes an
//! error message on this pipeline's bus, so it ends this source only.

use std::sync::{Arc, Mutex, MutexGuard};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;

use crate::config::InputLimits;
use crate::error::{Error, Kind, Result};
use crate::source::detect::Detected;
use crate::stream::output::no_panic;
use crate::stream::pacing::Pacer;
use crate::stream::webm::TrackKind;
use crate::stream::{Offer, Stamp, Stream};
use crate::templates::{Part, Templates};

/// Input bytes queued in the appsrc before the push stops reading the socket: a few hundred ms of a
/// typical upload, small enough that pacing throttles the sender quickly.
pub const APPSRC_MAX_BYTES: u64 = 512 << 10;

/// What the streaming threads write and the source task reads.
#[derive(Debug, Default)]
pub struct SourceShared {
    /// Input track caps as the front exposed them, e.g. `h264`.
    pub input_codecs: Mutex<Vec<String>>,
    /// A decision error raised on a streaming thread (no decoder, refused by the stream), reported over the
    /// pipeline's error message.
    pub failure: Mutex<Option<Error>>,
}

impl SourceShared {
    fn codecs(&self) -> MutexGuard<'_, Vec<String>> {
        self.input_codecs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a source pipeline's tracks go, and who decides what becomes of them: the stream, in this process
/// ([`SourcePipeline::start`]), or the daemon at the other end of a worker process's pipes.
pub trait Target: Send + Sync + 'static {
    /// The stream's name, for the log.
    fn name(&self) -> &str;
    /// A track was found: the stream's decision ([`Stream::offer_track`]).
    fn offer_track(&self, kind: TrackKind, caps: &gst::Caps, passthrough: bool) -> Offer;
    fn note_codecs(&self, codecs: Vec<String>);
    fn tracks_complete(&self) -> Result<()>;
    /// A decision error on a streaming thread (no decoder, refused by the stream).
    fn failed(&self, e: Error);
    /// One buffer of a track. An error stops the track's streaming thread (the source is gone, or stopping).
    fn buffer(&self, kind: TrackKind, buffer: gst::Buffer) -> Result<(), gst::FlowError>;
    /// The pipeline is stopping: wake a streaming thread that waits in here.
    fn stop(&self) {}
}

/// The stream in this process: each buffer is mapped into stream time, paced, and handed to the stream.
#[derive(Debug)]
pub(crate) struct Local {
    stream: Arc<Stream>,
    id: u64,
    pacer: Pacer,
}

impl Local {
    pub(crate) fn new(stream: Arc<Stream>, id: u64, pace: bool) -> Local {
        Local {
            stream,
            id,
            pacer: Pacer::new(pace),
        }
    }
}

impl Target for Local {
    fn name(&self) -> &str {
        &self.stream.name
    }

    fn offer_track(&self, kind: TrackKind, caps: &gst::Caps, passthrough: bool) -> Offer {
        self.stream.offer_track(self.id, kind, caps, passthrough)
    }

    fn note_codecs(&self, codecs: Vec<String>) {
        self.stream.note_codecs(self.id, codecs);
    }

    fn tracks_complete(&self) -> Result<()> {
        self.stream.tracks_complete(self.id)
    }

    fn failed(&self, e: Error) {
        self.stream.source_failed(self.id, e);
    }

    fn buffer(&self, kind: TrackKind, buffer: gst::Buffer) -> Result<(), gst::FlowError> {
        match self.stream.stamp(self.id, kind, buffer) {
            Stamp::Gone => Err(gst::FlowError::Eos),
            Stamp::Skip => Ok(()),
            Stamp::Deliver(buffer, pts) => {
                if !self.pacer.pace(pts) {
                    return Err(gst::FlowError::Flushing);
                }
                self.stream.deliver(self.id, kind, buffer, pts);
                Ok(())
            }
        }
    }

    fn stop(&self) {
        self.pacer.shutdown();
    }
}

/// A running source pipeline; set to NULL on drop.
pub struct SourcePipeline {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    target: Arc<dyn Target>,
    pub shared: Arc<SourceShared>,
}

impl std::fmt::Debug for SourcePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcePipeline")
            .field("pipeline", &self.pipeline.name())
            .finish_non_exhaustive()
    }
}

struct Builder {
    target: Arc<dyn Target>,
    templates: Arc<Templates>,
    pipeline: glib::WeakRef<gst::Pipeline>,
    matroska: bool,
    shared: Arc<SourceShared>,
    taken: Mutex<(bool, bool)>,
    /// Where the raw video and audio tracks go (their conform bins' sinks), once linked: a later group of
    /// decodebin's pads continues there.
    inputs: Mutex<[Option<gst::Pad>; 2]>,
    limits: InputLimits,
}

impl SourcePipeline {
    /// Builds and starts the pipeline of source `id` of `stream`, for an input typefound as `input`.
    pub fn start(
        stream: Arc<Stream>,
        id: u64,
        input: &Detected,
        templates: Arc<Templates>,
        pace: bool,
        limits: InputLimits,
    ) -> Result<SourcePipeline> {
        let name = format!("source-{}-{id}", stream.name);
        let target = Arc::new(Local::new(stream, id, pace));
        let matroska = input.container.is_matroska();
        Self::start_with(target, &name, &input.caps, matroska, templates, limits)
    }

    /// Builds and starts a source pipeline named `name` for input in `caps` (`matroska`: WebM/Matroska, whose
    /// web codecs may pass through), whose tracks go to `target`.
    pub fn start_with(
        target: Arc<dyn Target>,
        name: &str,
        caps: &gst::Caps,
        matroska: bool,
        templates: Arc<Templates>,
        limits: InputLimits,
    ) -> Result<SourcePipeline> {
        let pipeline = gst::Pipeline::with_name(name);
        let appsrc = gst_app::AppSrc::builder()
            .name("src")
            .caps(caps)
            .format(gst::Format::Bytes)
            .stream_type(gst_app::AppStreamType::Stream)
            .max_bytes(APPSRC_MAX_BYTES)
            .block(false)
            .build();
        let front = templates.element(if matroska {
            Part::DemuxMatroska
        } else {
            Part::Decode
        })?;
        pipeline.add_many([appsrc.upcast_ref(), &front])?;
        appsrc.link(&front)?;
        let shared = Arc::new(SourceShared::default());
        let builder = Arc::new(Builder {
            target: target.clone(),
            templates,
            pipeline: pipeline.downgrade(),
            matroska,
            shared: shared.clone(),
            taken: Mutex::new((false, false)),
            inputs: Mutex::default(),
            limits,
        });
        if !matroska {
            // decodebin's pads are raw; the codecs are seen while it autoplugs, and a picture over the input
            // limits is refused there, before a decoder is plugged (and allocates for it).
            let b = Arc::downgrade(&builder);
            front.connect("autoplug-continue", false, move |args| {
                let (Some(b), Ok(caps), Ok(el)) = (
                    b.upgrade(),
                    args[2].get::<gst::Caps>(),
                    args[0].get::<gst::Element>(),
                ) else {
                    return Some(true.to_value());
                };
                let go = no_panic(&el, "autoplug-continue", false, || {
                    record_codec(&b.shared, &caps);
                    match b.check_limits(&caps) {
                        Ok(()) => true,
                        Err(e) => {
                            b.fail(e);
                            false
                        }
                    }
                });
                Some(go.to_value())
            });
        }
        let b = builder.clone();
        front.connect_no_more_pads(move |el| {
            no_panic(el, "no-more-pads", (), || {
                b.target.note_codecs(b.shared.codecs().clone());
                if let Err(e) = b.target.tracks_complete() {
                    b.fail(e);
                }
            })
        });
        front.connect_pad_added(move |el, pad| {
            no_panic(el, "pad-added", (), || {
                if let Err(e) = builder.on_front_pad(pad) {
                    builder.fail(e);
                }
            })
        });
        if pipeline.set_state(gst::State::Playing).is_err() {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(Error::pipeline("the source's pipeline did not start"));
        }
        Ok(SourcePipeline {
            pipeline,
            appsrc,
            target,
            shared,
        })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// An async sink for input bytes with appsrc backpressure (waits while the appsrc holds
    /// [`APPSRC_MAX_BYTES`]).
    pub fn input(&self) -> gst_app::app_src::AppSrcSink {
        self.appsrc.sink()
    }

    pub fn end_of_stream(&self) {
        let _ = self.appsrc.end_of_stream();
    }

    /// Hands input bytes over without waiting (a worker: the daemon keeps what is in flight bounded).
    pub fn push_input(&self, data: bytes::Bytes) {
        let _ = self.appsrc.push_buffer(gst::Buffer::from_slice(data));
    }

    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// Input bytes waiting in the appsrc (0: the demuxer has taken everything it was given).
    pub fn queued_input(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let appsrc = self.appsrc.clone();
        move || appsrc.current_level_bytes()
    }

    pub fn input_codecs(&self) -> Vec<String> {
        self.shared.codecs().clone()
    }
}

impl Drop for SourcePipeline {
    fn drop(&mut self) {
        // Wake a streaming thread held by the pacer first, so going to NULL never waits on it.
        self.target.stop();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Notes the codec of elementary-stream caps (containers and raw caps are ignored).
fn record_codec(shared: &SourceShared, caps: &gst::CapsRef) {
    if let Some(c) = codec_name(caps) {
        let mut v = shared.codecs();
        if !v.contains(&c) {
            v.push(c);
        }
    }
}

/// Short codec name of elementary-stream caps: `h264`, `aac`, `vp8`...; None for containers and raw media.
pub fn codec_name(caps: &gst::CapsRef) -> Option<String> {
    let s = caps.structure(0)?;
    let name = s.name().as_str();
    let (kind, sub) = name.split_once('/')?;
    if !matches!(kind, "video" | "audio") || sub == "x-raw" {
        return None;
    }
    let short = match name {
        "audio/mpeg" => match (
            s.get::<i32>("mpegversion").unwrap_or(1),
            s.get::<i32>("layer").unwrap_or(3),
        ) {
            (1, 3) => "mp3",
            (1, _) => "mp2",
            _ => "aac",
        },
        "video/mpeg" if s.get::<bool>("systemstream").unwrap_or(false) => return None,
        "video/mpeg" => match s.get::<i32>("mpegversion").unwrap_or(2) {
            4 => "mpeg4",
            1 => "mpeg1",
            _ => "mpeg2",
        },
        // Containers typefind as video/... or audio/... too.
        "video/quicktime" | "video/mpegts" | "video/x-flv" | "video/x-matroska" | "video/webm"
        | "audio/webm" | "audio/x-matroska" | "video/x-msvideo" | "video/ogg" | "audio/ogg"
        | "video/x-ms-asf" | "audio/x-m4a" | "video/x-3gp" | "audio/x-wav" => return None,
        _ => sub.strip_prefix("x-").unwrap_or(sub),
    };
    Some(short.to_string())
}

fn is_web_codec(caps_name: &str) -> bool {
    matches!(
        caps_name,
        "video/x-vp8" | "video/x-vp9" | "audio/x-vorbis" | "audio/x-opus"
    )
}

impl Builder {
    fn pipeline(&self) -> Result<gst::Pipeline> {
        self.pipeline
            .upgrade()
            .ok_or_else(|| Error::pipeline("pipeline gone"))
    }

    /// Reports a decision error from a streaming thread: kept for the source task, posted as a pipeline error.
    fn fail(&self, e: Error) {
        tracing::warn!(stream = %self.target.name(), "{}", e.message);
        let msg = e.message.clone();
        // At once, not when the source task reads the bus: a push answered in between would say 200.
        self.target.failed(e.clone());
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
        if let Some(p) = self.pipeline.upgrade() {
            let _ = p.post_message(
                gst::message::Error::builder(gst::CoreError::Failed, &msg)
                    .src(&p)
                    .build(),
            );
        }
    }

    /// Refuses video whose caps say it is larger (or faster) than `--max-input-*` allow.
    fn check_limits(&self, caps: &gst::CapsRef) -> Result<()> {
        let Some(s) = caps.structure(0) else {
            return Ok(());
        };
        if !s.name().starts_with("video/") {
            return Ok(());
        }
        let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) else {
            return Ok(());
        };
        let fps = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .filter(|f| f.denom() > 0)
            .map(|f| f64::from(f.numer()) / f64::from(f.denom()));
        self.limits
            .check(w.max(0) as u32, h.max(0) as u32, fps)
            .map_err(Error::unsupported)
    }

    fn on_front_pad(&self, pad: &gst::Pad) -> Result<()> {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        if let Err(e) = self.check_limits(&caps) {
            self.discard(pad)?;
            return Err(e);
        }
        let caps_name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let video = caps_name.starts_with("video/");
        let audio = caps_name.starts_with("audio/");
        let first_of_kind = {
            let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
            let slot = if video { &mut taken.0 } else { &mut taken.1 };
            (video || audio) && !std::mem::replace(slot, true)
        };
        let raw = caps_name.ends_with("/x-raw");
        let slot = usize::from(!video);
        if !first_of_kind {
            // decodebin removes a group's pads when the input moves on to its next group (a new MPEG-TS
            // program, the next link of a chained Ogg) and adds the new group's: that pad continues the track.
            let free = (raw && (video || audio))
                .then(|| self.inputs.lock().unwrap_or_else(|e| e.into_inner())[slot].clone())
                .flatten()
                .filter(|t| !t.is_linked());
            if let Some(input) = free {
                tracing::info!(stream = %self.target.name(), caps = %caps_name, "the input's next group continues the track");
                return pad.link(&input).map(|_| ()).map_err(|e| {
                    Error::unsupported(format!("cannot continue with the {caps_name} track: {e:?}"))
                });
            }
            tracing::info!(stream = %self.target.name(), caps = %caps_name, "ignoring extra or non-media track");
            return self.discard(pad);
        }
        if !raw {
            record_codec(&self.shared, &caps);
        }
        if !self.matroska && !raw {
            self.discard(pad)?;
            return Err(Error::unsupported(format!(
                "no decoder is installed for the {caps_name} track"
            )));
        }
        let kind = if video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let passthrough = self.matroska && is_web_codec(&caps_name);
        let target = match self.target.offer_track(kind, &caps, passthrough) {
            Offer::Discard(why) => {
                tracing::info!(stream = %self.target.name(), caps = %caps_name, "track not used: {why}");
                return self.discard(pad);
            }
            Offer::Refuse(e) => {
                self.discard(pad)?;
                return Err(e);
            }
            Offer::Encoded => None,
            Offer::Raw(caps) => Some(caps),
        };
        tracing::info!(stream = %self.target.name(), input = %caps_name, passthrough = target.is_none(), "linking track");
        let pipeline = self.pipeline()?;
        let sink = self.appsink(kind);
        pipeline.add(&sink)?;
        let sink_pad = match &target {
            None => {
                let queue = self.templates.bin(if video {
                    Part::VideoPassthrough
                } else {
                    Part::AudioPassthrough
                })?;
                pipeline.add(&queue)?;
                queue.link(&sink)?;
                queue.sync_state_with_parent()?;
                queue.static_pad("sink").expect("checked at load")
            }
            Some(caps) => {
                let conform = crate::stream::output::conform(kind, caps)?;
                pipeline.add(&conform)?;
                conform.link(&sink)?;
                conform.sync_state_with_parent()?;
                conform.static_pad("sink").expect("ghosted by parse")
            }
        };
        sink.sync_state_with_parent()?;
        if raw || target.is_none() {
            pad.link(&sink_pad).map_err(|e| {
                Error::unsupported(format!("cannot use the {caps_name} track: {e:?}"))
            })?;
            if raw {
                self.inputs.lock().unwrap_or_else(|e| e.into_inner())[slot] = Some(sink_pad);
            }
        } else {
            // A Matroska track in a codec browsers cannot play: decode it first.
            let decoder = self.templates.element(Part::Decode)?;
            pipeline.add(&decoder)?;
            let target = sink_pad.downgrade();
            decoder.connect_pad_added(move |el, dpad| {
                no_panic(el, "pad-added", (), || {
                    if let Some(t) = target.upgrade()
                        && !t.is_linked()
                    {
                        let _ = dpad.link(&t);
                    }
                })
            });
            decoder.sync_state_with_parent()?;
            pad.link(&decoder.static_pad("sink").expect("decodebin has a sink"))
                .map_err(|e| {
                    Error::pipeline(format!("linking the {caps_name} track to a decoder: {e:?}"))
                })?;
        }
        Ok(())
    }

    /// The end of a track: each buffer goes to the target.
    fn appsink(&self, kind: TrackKind) -> gst::Element {
        let sink = gst_app::AppSink::builder().sync(false).build();
        sink.set_property("enable-last-sample", false);
        let target = self.target.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer_owned() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    drop(sample);
                    target.buffer(kind, buffer).map(|()| gst::FlowSuccess::Ok)
                })
                .build(),
        );
        sink.upcast()
    }

    /// Sends a track nowhere, so it neither stalls the demuxer nor errors as not-linked.
    fn discard(&self, pad: &gst::Pad) -> Result<()> {
        crate::stream::output::discard(&self.pipeline()?, pad)
    }
}

/// A pipeline error as text: the element's path and the message (debug detail only in the log).
pub fn describe_error(err: &gst::message::Error) -> (String, String) {
    let path = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    (path, err.error().to_string())
}

/// Maps a source pipeline error raised before any of its media reached the stream to its pusher's error: bad
/// input is the client's fault (415); a decision error recorded by the builder keeps its own kind.
pub fn early_error(shared: &SourceShared, path: &str, message: &str) -> Error {
    if let Some(e) = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return e;
    }
    Error::new(
        Kind::UnsupportedMedia,
        format!("the input could not be decoded: {message} ({path})"),
    )
}
