//! One stream's GStreamer pipeline, assembled from the templates around dynamic pads.
//!
//! ```text
//!                     ┌─ (Matroska, VP8/VP9/Vorbis/Opus track) ─ video|audio-passthrough ─┐
//!  appsrc ─ front ────┤                                                                   ├─ tee ─ appsink ─┐
//!   (bytes)  decodebin│─ (raw track) ────────────────────────── video|audio-encode ───────┤   └─ RTP      ├─ writer ─► hub
//!       or matroskademux─ (Matroska, other codec) ─ decodebin ─ video|audio-encode ──────┘  (per track)   ┘
//! ```
//!
//! With `--muxer webmmux` the tees feed `webmmux` (the `mux.pipeline` template) and one appsink instead of the
//! per-track appsinks and [`crate::writer`].
//!
//! Branches are linked as the front's pads appear; a track's output (writer track or mux pad) is announced at
//! once, so the header waits for every track even when a branch's decoder exposes its pad later. The first
//! video and first audio track are used; others (and subtitles) go to a fakesink so they never stall the
//! demuxer as not-linked.
//! Each branch's input is paced ([`crate::pacing`]); a video encoder drops frames that arrive too late to be
//! worth encoding. All callbacks hold weak references to the pipeline (a strong one would be a cycle).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::detect::Detected;
use crate::error::{Error, Kind, Result};
use crate::hub::{Hub, Publisher};
use crate::pacing::{MAX_ENCODE_LATENESS, Pacer};
use crate::rtp::RtpOutput;
use crate::templates::{Part, Templates};
use crate::webm::TrackKind;
use crate::writer::WebmWriter;

/// Input bytes queued in the appsrc before the ingest stops reading the socket: a few hundred ms of a
/// typical upload, small enough that pacing throttles the sender quickly.
pub const APPSRC_MAX_BYTES: u64 = 512 << 10;
/// Application message the appsink posts when the muxer output is complete.
pub const OUTPUT_EOS: &str = "transcast-output-eos";
/// Dropped-frame warnings are logged at most this often per stream.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No track linked yet.
    #[default]
    Starting,
    Passthrough,
    Transcode,
}

/// State the streaming threads write and the ingest/API read.
#[derive(Debug)]
pub struct Shared {
    /// For the API's graph dump; weak so the API never keeps a pipeline alive.
    pipeline: glib::WeakRef<gst::Pipeline>,
    pub mode: Mutex<Mode>,
    /// Input track caps as the front exposed them, e.g. `video/x-h264`.
    pub input_codecs: Mutex<Vec<String>>,
    /// A decision error raised on a streaming thread (transcode limit, no decoder), reported over the
    /// pipeline's error message.
    pub failure: Mutex<Option<Error>>,
    pub frames_dropped: AtomicU64,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    last_drop_log: Mutex<Option<Instant>>,
    /// RTP/UDP rebroadcast; targets can change while the stream runs.
    pub rtp: RtpOutput,
}

/// What the builder needs beyond the templates.
#[derive(Debug, Clone)]
pub struct PipelineContext {
    pub templates: Arc<Templates>,
    pub transcodes: Arc<Semaphore>,
    pub pace: bool,
    /// RTP/UDP targets the stream starts with (already checked against `--rtp-allow`).
    pub rtp_targets: Vec<std::net::SocketAddr>,
    pub muxer: Muxer,
}

/// Which WebM writer a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Muxer {
    /// transcast's writer: blocks go out as they arrive (no interleaving wait).
    #[default]
    Direct,
    /// GStreamer's `webmmux` (the `mux.pipeline` template): holds each block until every track has data.
    Webmmux,
}

/// Where a stream's tracks are written into WebM.
#[derive(Debug)]
enum Output {
    Mux(gst::Element),
    Direct(Arc<Mutex<WebmWriter>>),
}

/// Tells the ingest the HTTP output is complete, so the stream's end never waits for the RTP side's RTCP.
fn post_output_eos(el: &gst::Element) {
    let s = gst::Structure::new_empty(OUTPUT_EOS);
    let _ = el.post_message(gst::message::Application::builder(s).src(el).build());
}

/// `mux.pipeline` → appsink → hub.
fn mux_to_hub(
    pipeline: &gst::Pipeline,
    templates: &Templates,
    hub: Arc<Hub>,
) -> Result<gst::Element> {
    let mux = templates.element(Part::Mux)?;
    let sink = gst_app::AppSink::builder().name("sink").sync(false).build();
    sink.set_property("enable-last-sample", false);
    pipeline.add_many([&mux, sink.upcast_ref()])?;
    mux.link(&sink)?;
    let publisher = Mutex::new(Publisher::new(hub));
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                publisher.lock().unwrap().push(&map).map_err(|e| {
                    gst::element_error!(sink, gst::StreamError::Format, ("muxer output: {e}"));
                    gst::FlowError::Error
                })?;
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(|sink| post_output_eos(sink.upcast_ref()))
            .build(),
    );
    Ok(mux)
}

/// A running pipeline; set to NULL on drop.
#[derive(Debug)]
pub struct StreamPipeline {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    pacer: Arc<Pacer>,
    pub shared: Arc<Shared>,
}

struct Builder {
    name: String,
    ctx: PipelineContext,
    pipeline: glib::WeakRef<gst::Pipeline>,
    output: Output,
    matroska: bool,
    pacer: Arc<Pacer>,
    shared: Arc<Shared>,
    taken: Mutex<(bool, bool)>,
}

impl StreamPipeline {
    /// Builds and starts the pipeline for an input typefound as `input`; its output goes to `hub`.
    /// `permit` is a transcode slot the caller already holds (non-Matroska input always transcodes).
    pub fn start(
        name: &str,
        input: &Detected,
        ctx: PipelineContext,
        hub: Arc<Hub>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<StreamPipeline> {
        let pipeline = gst::Pipeline::with_name(&format!("stream-{name}"));
        let appsrc = gst_app::AppSrc::builder()
            .name("src")
            .caps(&input.caps)
            .format(gst::Format::Bytes)
            .stream_type(gst_app::AppStreamType::Stream)
            .max_bytes(APPSRC_MAX_BYTES)
            .block(false)
            .build();
        let matroska = input.container.is_matroska();
        let front = ctx.templates.element(if matroska {
            Part::DemuxMatroska
        } else {
            Part::Decode
        })?;
        pipeline.add_many([appsrc.upcast_ref(), &front])?;
        appsrc.link(&front)?;

        let shared = Arc::new(Shared {
            pipeline: pipeline.downgrade(),
            mode: Mutex::new(Mode::Starting),
            input_codecs: Mutex::default(),
            failure: Mutex::default(),
            frames_dropped: AtomicU64::new(0),
            permit: Mutex::new(permit),
            last_drop_log: Mutex::default(),
            rtp: RtpOutput::new(&pipeline, ctx.rtp_targets.clone())?,
        });
        let pacer = Arc::new(Pacer::new(ctx.pace));
        let output = match ctx.muxer {
            Muxer::Webmmux => Output::Mux(mux_to_hub(&pipeline, &ctx.templates, hub)?),
            Muxer::Direct => {
                let writer = Arc::new(Mutex::new(WebmWriter::new(Publisher::new(hub))));
                let w = writer.clone();
                front.connect_no_more_pads(move |front| {
                    if let Err(e) = w.lock().unwrap().tracks_complete() {
                        gst::element_error!(front, gst::StreamError::Format, ("writing WebM: {e}"));
                    }
                });
                Output::Direct(writer)
            }
        };
        let builder = Arc::new(Builder {
            name: name.to_string(),
            ctx,
            pipeline: pipeline.downgrade(),
            output,
            matroska,
            pacer: pacer.clone(),
            shared: shared.clone(),
            taken: Mutex::new((false, false)),
        });
        if !matroska {
            // decodebin's pads are raw; the codecs are seen while it autoplugs.
            let s = Arc::downgrade(&shared);
            front.connect("autoplug-continue", false, move |args| {
                if let (Some(s), Ok(caps)) = (s.upgrade(), args[2].get::<gst::Caps>()) {
                    s.record_codec(&caps);
                }
                Some(true.to_value())
            });
        }
        front.connect_pad_added(move |_, pad| {
            if let Err(e) = builder.on_front_pad(pad) {
                builder.fail(e);
            }
        });

        pipeline.set_state(gst::State::Playing)?;
        Ok(StreamPipeline {
            pipeline,
            appsrc,
            pacer,
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

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Starting => "starting",
            Mode::Passthrough => "passthrough",
            Mode::Transcode => "transcode",
        }
    }
}

impl Shared {
    /// The running pipeline as a DOT graph (None once it is gone).
    pub fn dot(&self) -> Option<String> {
        let p = self.pipeline.upgrade()?;
        Some(
            p.debug_to_dot_data(gst::DebugGraphDetails::all())
                .to_string(),
        )
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// Notes the codec of elementary-stream caps (containers and raw caps are ignored).
    fn record_codec(&self, caps: &gst::CapsRef) {
        if let Some(c) = codec_name(caps) {
            let mut v = self.input_codecs.lock().unwrap();
            if !v.contains(&c) {
                v.push(c);
            }
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

impl Drop for StreamPipeline {
    fn drop(&mut self) {
        self.pacer.shutdown();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
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

    /// Reports a decision error from a streaming thread: kept for the ingest, posted as a pipeline error.
    fn fail(&self, e: Error) {
        tracing::warn!(stream = %self.name, "{}", e.message);
        let msg = e.message.clone();
        self.shared.failure.lock().unwrap().get_or_insert(e);
        if let Some(p) = self.pipeline.upgrade() {
            let _ = p.post_message(
                gst::message::Error::builder(gst::CoreError::Failed, &msg)
                    .src(&p)
                    .build(),
            );
        }
    }

    fn on_front_pad(&self, pad: &gst::Pad) -> Result<()> {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let caps_name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let video = caps_name.starts_with("video/");
        let audio = caps_name.starts_with("audio/");
        let first_of_kind = {
            let mut taken = self.taken.lock().unwrap();
            let slot = if video { &mut taken.0 } else { &mut taken.1 };
            (video || audio) && !std::mem::replace(slot, true)
        };
        if !first_of_kind {
            tracing::info!(stream = %self.name, caps = %caps_name, "ignoring extra or non-media track");
            return self.discard(pad);
        }
        let raw = caps_name.ends_with("/x-raw");
        if !raw {
            self.shared.record_codec(&caps);
        }
        if !self.matroska && !raw {
            self.discard(pad)?;
            return Err(Error::unsupported(format!(
                "no decoder is installed for the {caps_name} track"
            )));
        }
        let passthrough = self.matroska && is_web_codec(&caps_name);
        let part = match (video, passthrough) {
            (true, true) => Part::VideoPassthrough,
            (false, true) => Part::AudioPassthrough,
            (true, false) => Part::VideoEncode,
            (false, false) => Part::AudioEncode,
        };
        if !passthrough {
            let mut permit = self.shared.permit.lock().unwrap();
            if permit.is_none() {
                match self.ctx.transcodes.clone().try_acquire_owned() {
                    Ok(p) => *permit = Some(p),
                    Err(_) => {
                        drop(permit);
                        self.discard(pad)?;
                        return Err(Error::unavailable(
                            "the transcode limit (--max-transcodes) is reached",
                        ));
                    }
                }
            }
        }
        {
            let mut mode = self.shared.mode.lock().unwrap();
            *mode = match (*mode, passthrough) {
                (Mode::Transcode, _) | (_, false) => Mode::Transcode,
                _ => Mode::Passthrough,
            };
        }
        tracing::info!(stream = %self.name, input = %caps_name, branch = part.file_name(), "linking track");

        let pipeline = self.pipeline()?;
        let branch = self.ctx.templates.bin(part)?;
        pipeline.add(&branch)?;
        let (mux_pad, track_sink) = self.output_pad(&pipeline, video)?;
        // branch ─ tee ─ mux, and the tee's other side feeds the RTP output.
        let branch_src = branch.static_pad("src").expect("checked at load");
        let tee = gst::ElementFactory::make("tee")
            .property("allow-not-linked", true)
            .build()?;
        pipeline.add(&tee)?;
        branch_src
            .link(&tee.static_pad("sink").expect("tee has a sink"))
            .map_err(|e| Error::pipeline(format!("linking {part:?} to its tee: {e:?}")))?;
        tee.request_pad_simple("src_%u")
            .ok_or_else(|| Error::pipeline("tee refused a pad"))?
            .link(&mux_pad)
            .map_err(|e| Error::pipeline(format!("linking {part:?} to the muxer: {e:?}")))?;
        let branch_sink = branch.static_pad("sink").expect("checked at load");
        self.install_pacing(&branch_sink);
        if !passthrough && video {
            self.install_encoder_drop(&branch);
        }
        if let Some(sink) = &track_sink {
            sink.sync_state_with_parent()?;
        }
        tee.sync_state_with_parent()?;
        branch.sync_state_with_parent()?;
        // What leaves the branch: the input codec when passed through, else what the encoder makes.
        let out_codec = if passthrough {
            caps_name.clone()
        } else {
            branch_src
                .query_caps(None)
                .structure(0)
                .map(|s| s.name().to_string())
                .unwrap_or_default()
        };
        match self
            .shared
            .rtp
            .attach(&pipeline, &self.ctx.templates, &tee, &out_codec)
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(stream = %self.name, codec = %out_codec, "no RTP payloader for this codec")
            }
            Err(e) => {
                tracing::warn!(stream = %self.name, "RTP output for {out_codec} not available: {}", e.message)
            }
        }

        if raw || passthrough {
            pad.link(&branch_sink).map_err(|e| {
                Error::unsupported(format!("cannot use the {caps_name} track: {e:?}"))
            })?;
        } else {
            // A Matroska track in a codec browsers cannot play: decode it first.
            let decoder = self.ctx.templates.element(Part::Decode)?;
            pipeline.add(&decoder)?;
            let target = branch_sink.downgrade();
            decoder.connect_pad_added(move |_, dpad| {
                if let Some(t) = target.upgrade()
                    && !t.is_linked()
                {
                    let _ = dpad.link(&t);
                }
            });
            decoder.sync_state_with_parent()?;
            pad.link(&decoder.static_pad("sink").expect("decodebin has a sink"))
                .map_err(|e| {
                    Error::pipeline(format!("linking the {caps_name} track to a decoder: {e:?}"))
                })?;
        }
        Ok(())
    }

    /// The pad a track's encoded stream goes to: a muxer request pad, or a new per-track appsink feeding the
    /// writer (returned too, so its state can be synced once linked).
    fn output_pad(
        &self,
        pipeline: &gst::Pipeline,
        video: bool,
    ) -> Result<(gst::Pad, Option<gst::Element>)> {
        match &self.output {
            Output::Mux(mux) => {
                let pad = mux
                    .request_pad_simple(if video { "video_%u" } else { "audio_%u" })
                    .ok_or_else(|| {
                        Error::pipeline("the muxer refused a new track (data already started?)")
                    })?;
                Ok((pad, None))
            }
            Output::Direct(writer) => {
                let kind = if video {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                let track = writer.lock().unwrap().add_track(kind);
                let sink = gst_app::AppSink::builder().sync(false).build();
                sink.set_property("enable-last-sample", false);
                let (w, w2) = (writer.clone(), writer.clone());
                sink.set_callbacks(
                    gst_app::AppSinkCallbacks::builder()
                        .new_sample(move |sink| {
                            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                            w.lock()
                                .unwrap()
                                .push(track, sample.caps(), buffer)
                                .map_err(|e| {
                                    gst::element_error!(
                                        sink,
                                        gst::StreamError::Format,
                                        ("writing WebM: {e}")
                                    );
                                    gst::FlowError::Error
                                })?;
                            Ok(gst::FlowSuccess::Ok)
                        })
                        .eos(move |sink| match w2.lock().unwrap().end_track(track) {
                            Ok(true) => post_output_eos(sink.upcast_ref()),
                            Ok(false) => {}
                            Err(e) => gst::element_error!(
                                sink,
                                gst::StreamError::Format,
                                ("writing WebM: {e}")
                            ),
                        })
                        .build(),
                );
                pipeline.add(&sink)?;
                Ok((
                    sink.static_pad("sink").expect("appsink has a sink"),
                    Some(sink.upcast()),
                ))
            }
        }
    }

    /// Sends a track nowhere, so it neither stalls the demuxer nor errors as not-linked.
    fn discard(&self, pad: &gst::Pad) -> Result<()> {
        let pipeline = self.pipeline()?;
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()?;
        pipeline.add(&sink)?;
        sink.sync_state_with_parent()?;
        pad.link(&sink.static_pad("sink").expect("fakesink has a sink"))
            .map_err(|e| Error::pipeline(format!("discarding a track: {e:?}")))?;
        Ok(())
    }

    /// Holds each buffer entering a branch while it runs more than a second ahead of real time.
    fn install_pacing(&self, pad: &gst::Pad) {
        if !self.pacer.enabled() {
            return;
        }
        let pacer = self.pacer.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(rt) = info.buffer().and_then(|b| running_time(pad, b)) {
                pacer.pace(rt);
            }
            gst::PadProbeReturn::Ok
        });
    }

    /// Drops frames reaching the encoder later than [`MAX_ENCODE_LATENESS`]: a transcode that cannot keep
    /// real time sheds frames instead of falling further behind.
    fn install_encoder_drop(&self, branch: &gst::Bin) {
        if !self.pacer.enabled() {
            return;
        }
        let encoder = branch.iterate_recurse().into_iter().flatten().find(|e| {
            e.factory().is_some_and(|f| {
                f.metadata(gst::ELEMENT_METADATA_KLASS)
                    .is_some_and(|k| k.contains("Encoder"))
            })
        });
        let Some(pad) = encoder.and_then(|e| e.static_pad("sink")) else {
            return;
        };
        let pacer = self.pacer.clone();
        let shared = self.shared.clone();
        let name = self.name.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(rt) = info.buffer().and_then(|b| running_time(pad, b)) else {
                return gst::PadProbeReturn::Ok;
            };
            let now = Instant::now();
            let late = pacer.lateness(rt, now);
            if late <= MAX_ENCODE_LATENESS {
                return gst::PadProbeReturn::Ok;
            }
            let n = shared.frames_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = shared.last_drop_log.lock().unwrap();
            if last.is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL) {
                *last = Some(now);
                tracing::warn!(stream = %name, late_ms = late.as_millis() as u64, dropped_total = n,
                    "transcode cannot keep real time: dropping late frames");
            }
            // `Handled`, not `Drop`: gstreamer-rs has already taken the buffer out of the probe info (and frees it
            // here), and GStreamer 1.22 unrefs the info's data on `Drop`, which then is NULL: a CRITICAL per frame.
            gst::PadProbeReturn::Handled
        });
    }
}

fn running_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts().or(buffer.dts())?;
    let seg = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = seg.segment().downcast_ref::<gst::ClockTime>()?.clone();
    seg.to_running_time(pts).map(|t| t.nseconds())
}

/// A pipeline error as text: the element's path and the message (debug detail only in the log).
pub fn describe_error(err: &gst::message::Error) -> (String, String) {
    let path = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    (path, err.error().to_string())
}

/// Maps a pipeline error raised before any output to the client's error: bad input is the client's
/// fault (415); a decision error recorded by the builder keeps its own kind.
pub fn early_error(shared: &Shared, path: &str, message: &str) -> Error {
    if let Some(e) = shared.failure.lock().unwrap().clone() {
        return e;
    }
    Error::new(
        Kind::UnsupportedMedia,
        format!("the input could not be decoded: {message} ({path})"),
    )
}
