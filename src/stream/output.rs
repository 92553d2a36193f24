//! A stream's own pipeline: one appsrc per track, fed by whichever source is on air (or the slate), then the
//! encoder (or nothing, for a passthrough track), a tee for RTP, and the WebM writer. It is built once per
//! stream and lives as long as the stream, so viewers never see a second header.
//!
//! ```text
//!  appsrc video (raw I420, fixed size/rate) ─ video-encode ─ tee ─ appsink ─┐
//!  appsrc audio (raw F32 48 kHz stereo)     ─ audio-encode ─ tee ─ appsink ─┴─ WebmWriter ─► hub
//!      (or the source's VP8/VP9/Vorbis/Opus as it is: *-passthrough)   └─ RTP
//! ```
//!
//! With `--muxer webmmux` the tees feed `webmmux` (the `mux.pipeline` template) and one appsink instead.
//! Timestamps come from the stream ([`super::Stream`]), monotonic for its whole life.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Muxer;
use crate::error::{Error, Result};
use crate::stream::hub::{Hub, Publisher};
use crate::stream::pacing::{MAX_ENCODE_LATENESS, Pacer};
use crate::stream::rtp::RtpOutput;
use crate::stream::webm::TrackKind;
use crate::stream::writer::WebmWriter;
use crate::templates::{Part, Templates};

/// Application message the appsink posts when the muxer output is complete.
pub const OUTPUT_EOS: &str = "transcast-output-eos";
/// Media a track's appsrc may queue before a source's thread is held back ([`TrackOut::wait_room`]): with
/// the encode templates' own one-second queues, a frame that waited this long reaches its encoder late
/// enough to be dropped there first.
const APPSRC_BACKLOG: Duration = Duration::from_secs(1);
/// ... and past this it drops what comes (only the slate is not held back; it never runs ahead).
const APPSRC_MAX_TIME: Duration = Duration::from_secs(2);
/// How often a held source looks again for room.
const ROOM_POLL: Duration = Duration::from_millis(5);
/// Dropped-frame warnings are logged at most this often per stream.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What a track's appsrc takes.
#[derive(Debug, Clone)]
pub enum TrackInput {
    /// Raw media in these fixed caps, encoded by the stream.
    Raw(gst::Caps),
    /// Encoded media in these caps, written as it is (passthrough).
    Encoded(gst::Caps),
}

impl TrackInput {
    pub fn caps(&self) -> &gst::Caps {
        match self {
            TrackInput::Raw(c) | TrackInput::Encoded(c) => c,
        }
    }
}

/// One track of the output.
#[derive(Debug)]
pub struct TrackOut {
    pub kind: TrackKind,
    pub input: TrackInput,
    appsrc: gst_app::AppSrc,
    encoder: Option<gst::Element>,
}

impl TrackOut {
    /// A handle to push from outside the stream's lock.
    pub fn input(&self) -> TrackInputHandle {
        TrackInputHandle(self.appsrc.clone())
    }

    /// Asks the encoder for a keyframe at the next picture pushed, so a switch is also a join point.
    pub fn force_keyframe(&self) {
        force_keyframe(&self.appsrc, self.encoder.as_ref());
    }
}

/// Encodes raw media into a passthrough track's codec (VP8, VP9, Opus), so a passthrough stream can show its
/// slate and take back a source in another format: appsrc (raw) ─ encoder ─ appsink ─► the track's appsrc.
/// Built with the track and idle (no CPU) until raw media comes.
#[derive(Debug)]
pub struct Reencoder {
    /// The raw caps it takes: the track's picture size (or channels), fixed.
    pub caps: gst::Caps,
    appsrc: gst_app::AppSrc,
    encoder: Option<gst::Element>,
    /// Whether what it encodes reaches the track. Shut while the track's own source is on air, so a picture
    /// still in the encoder at a switch never comes out after that source's keyframe.
    open: Arc<Mutex<bool>>,
}

impl Reencoder {
    /// Opens or shuts the way to the track. Once this returns shut, nothing more of it reaches the track.
    pub fn set_open(&self, open: bool) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = open;
    }

    pub fn input(&self) -> TrackInputHandle {
        TrackInputHandle(self.appsrc.clone())
    }

    pub fn force_keyframe(&self) {
        force_keyframe(&self.appsrc, self.encoder.as_ref());
    }
}

/// Makes the next picture pushed into `appsrc` a keyframe (a join point) of its encoder: a ForceKeyUnit event
/// queued in-band after what the appsrc already holds. An upstream request to the encoder would hit whatever
/// picture it takes next, which under load is one still queued from before the switch.
fn force_keyframe(appsrc: &gst_app::AppSrc, encoder: Option<&gst::Element>) {
    if encoder.is_some() {
        let ev = gstreamer_video::DownstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        appsrc.send_event(ev);
    }
}

/// A track's appsrc, for a source's streaming thread.
#[derive(Debug, Clone)]
pub struct TrackInputHandle(gst_app::AppSrc);

impl TrackInputHandle {
    /// Holds the calling (source) thread while the track has [`APPSRC_BACKLOG`] queued: a source faster
    /// than the stream's encoder (unpaced input) is slowed down instead of losing media. Returns false as
    /// soon as `still_wanted` says the source is off air.
    pub fn wait_room(&self, still_wanted: impl Fn() -> bool) -> bool {
        let backlog = gst::ClockTime::from_nseconds(APPSRC_BACKLOG.as_nanos() as u64);
        while self.0.current_level_time() >= backlog {
            if !still_wanted() {
                return false;
            }
            std::thread::sleep(ROOM_POLL);
        }
        true
    }

    pub fn push(&self, buffer: gst::Buffer) {
        let _ = self.0.push_buffer(buffer);
    }
}

/// Where the tracks are written into WebM.
#[derive(Debug)]
enum Sink {
    Mux(gst::Element),
    Direct(Arc<Mutex<WebmWriter>>),
}

/// A stream's output pipeline; set to NULL on drop.
#[derive(Debug)]
pub struct Output {
    name: String,
    pipeline: gst::Pipeline,
    templates: Arc<Templates>,
    sink: Sink,
    pub rtp: RtpOutput,
    /// A transcode slot, taken with the first encoding track.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    transcodes: Arc<Semaphore>,
    /// Stream time ↔ wall clock, to tell how late a frame reaches its encoder.
    clock: Arc<Pacer>,
    drops: Arc<Drops>,
}

/// Frames the encoder side dropped, and when that was last logged.
#[derive(Debug, Default)]
struct Drops {
    count: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Drops {
    /// Counts a drop; returns the total when it is time to log again.
    fn note(&self, now: Instant) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().ok()?;
        if last.is_some_and(|t| now.duration_since(t) < DROP_LOG_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(n)
    }
}

/// What the output needs beyond the hub.
#[derive(Debug, Clone)]
pub struct OutputContext {
    pub templates: Arc<Templates>,
    pub transcodes: Arc<Semaphore>,
    pub pace: bool,
    /// RTP/UDP targets the stream starts with (already checked against `--rtp-allow`).
    pub rtp_targets: Vec<std::net::SocketAddr>,
    pub muxer: Muxer,
}

/// Tells the stream the HTTP output is complete, so its end never waits for the RTP side's RTCP.
fn post_output_eos(el: &gst::Element) {
    let s = gst::Structure::new_empty(OUTPUT_EOS);
    let _ = el.post_message(gst::message::Application::builder(s).src(el).build());
}

/// Turns a writer error on a streaming thread into a pipeline error (the stream's task ends the stream).
fn writer_error(sink: &gst_app::AppSink, e: impl std::fmt::Display) -> gst::FlowError {
    gst::element_error!(sink, gst::StreamError::Format, ("writing WebM: {e}"));
    gst::FlowError::Error
}

impl Output {
    /// An empty, playing pipeline writing into `hub`; tracks are added with [`Output::add_track`].
    pub fn new(name: &str, ctx: OutputContext, hub: Arc<Hub>) -> Result<Output> {
        let pipeline = gst::Pipeline::with_name(&format!("stream-{name}"));
        let rtp = RtpOutput::new(&pipeline, ctx.rtp_targets.clone())?;
        let sink = match ctx.muxer {
            Muxer::Webmmux => Sink::Mux(mux_to_hub(&pipeline, &ctx.templates, hub)?),
            Muxer::Direct => {
                Sink::Direct(Arc::new(Mutex::new(WebmWriter::new(Publisher::new(hub)))))
            }
        };
        if pipeline.set_state(gst::State::Playing).is_err() {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(Error::pipeline("the stream's pipeline did not start"));
        }
        Ok(Output {
            name: name.to_string(),
            pipeline,
            templates: ctx.templates,
            sink,
            rtp,
            permit: Mutex::default(),
            transcodes: ctx.transcodes,
            clock: Arc::new(Pacer::new(ctx.pace)),
            drops: Arc::default(),
        })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// The running pipeline as a DOT graph.
    pub fn dot(&self) -> String {
        self.pipeline
            .debug_to_dot_data(gst::DebugGraphDetails::all())
            .to_string()
    }

    /// Notes a buffer's stream time against the wall clock as it enters (re-anchoring after a stall), so the
    /// encoder side can tell how late it is.
    pub fn clock_in(&self, pts_ns: u64) {
        self.clock.deadline(pts_ns, Instant::now());
    }

    /// Adds a track: appsrc ─ encoder or passthrough ─ tee ─ writer (and RTP). Called before any of the
    /// stream's media is written (the header lists every track).
    pub fn add_track(&self, kind: TrackKind, input: TrackInput) -> Result<TrackOut> {
        let video = kind == TrackKind::Video;
        let raw = matches!(input, TrackInput::Raw(_));
        if raw {
            let mut permit = self
                .permit
                .lock()
                .map_err(|_| Error::internal("permit lock poisoned"))?;
            if permit.is_none() {
                *permit = Some(self.transcodes.clone().try_acquire_owned().map_err(|_| {
                    Error::unavailable("the transcode limit (--max-transcodes) is reached")
                })?);
            }
        }
        let part = match (video, raw) {
            (true, false) => Part::VideoPassthrough,
            (false, false) => Part::AudioPassthrough,
            (video, true) => self.templates.encoder(video),
        };
        let appsrc = media_appsrc(input.caps());
        let branch = self.templates.bin(part)?;
        let tee = gst::ElementFactory::make("tee")
            .property("allow-not-linked", true)
            .build()?;
        self.pipeline
            .add_many([appsrc.upcast_ref(), branch.upcast_ref(), &tee])?;
        let (out_pad, track_sink) = self.output_pad(video)?;
        appsrc.link(&branch)?;
        let branch_src = branch.static_pad("src").expect("checked at load");
        branch_src
            .link(&tee.static_pad("sink").expect("tee has a sink"))
            .map_err(|e| Error::pipeline(format!("linking {part:?} to its tee: {e:?}")))?;
        tee.request_pad_simple("src_%u")
            .ok_or_else(|| Error::pipeline("tee refused a pad"))?
            .link(&out_pad)
            .map_err(|e| Error::pipeline(format!("linking {part:?} to the writer: {e:?}")))?;
        let encoder = raw.then(|| find_encoder(&branch)).flatten();
        if let Some(enc) = encoder.as_ref().filter(|_| video) {
            self.install_encoder_drop(enc);
        }
        if let Some(sink) = &track_sink {
            sink.sync_state_with_parent()?;
        }
        tee.sync_state_with_parent()?;
        branch.sync_state_with_parent()?;
        appsrc.sync_state_with_parent()?;
        let out_codec = match &input {
            TrackInput::Encoded(c) => caps_name(c),
            TrackInput::Raw(_) => caps_name(&branch_src.query_caps(None)),
        };
        match self
            .rtp
            .attach(&self.pipeline, &self.templates, &tee, &out_codec)
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(stream = %self.name, codec = %out_codec, "no RTP payloader for this codec")
            }
            Err(e) => {
                tracing::warn!(stream = %self.name, "RTP output for {out_codec} not available: {}", e.message)
            }
        }
        tracing::info!(stream = %self.name, branch = part.file_name(), caps = %input.caps(), "output track added");
        Ok(TrackOut {
            kind,
            input,
            appsrc,
            encoder,
        })
    }

    /// Every track is added: the header can go out once each has shown its caps.
    pub fn tracks_complete(&self) -> Result<()> {
        if let Sink::Direct(w) = &self.sink {
            w.lock()
                .map_err(|_| Error::internal("writer lock poisoned"))?
                .tracks_complete()
                .map_err(|e| Error::pipeline(format!("writing WebM: {e}")))?;
        }
        Ok(())
    }

    /// Ends every track (and re-encoder): the writer completes and posts [`OUTPUT_EOS`]. No track comes
    /// after this, so the writer is told its tracks are complete even when the source that announced them
    /// failed before it could (a demuxer erroring between two of its pads): else it would wait for more.
    pub fn end(&self, tracks: &[TrackOut], reencoders: &[Reencoder]) {
        if let Err(e) = self.tracks_complete() {
            tracing::warn!(stream = %self.name, "ending the output: {}", e.message);
        }
        for t in tracks {
            let _ = t.appsrc.end_of_stream();
        }
        for r in reencoders {
            let _ = r.appsrc.end_of_stream();
        }
    }

    /// A re-encoder into `track`'s codec, or None for a codec it cannot make compatibly (Vorbis: its codec
    /// headers are the encoder's own, so another encoder's packets would not decode with the stream's).
    pub fn add_reencoder(&self, track: &TrackOut) -> Result<Option<Reencoder>> {
        let TrackInput::Encoded(caps) = &track.input else {
            return Ok(None);
        };
        let Some(st) = caps.structure(0) else {
            return Ok(None);
        };
        let (raw, description): (gst::Caps, String) = match st.name().as_str() {
            "video/x-vp8" | "video/x-vp9" => {
                let (w, h) = (st.get::<i32>("width"), st.get::<i32>("height"));
                let (Ok(w), Ok(h)) = (w, h) else {
                    return Ok(None);
                };
                let fps = st
                    .get::<gst::Fraction>("framerate")
                    .ok()
                    .filter(|f| f.numer() > 0 && f.denom() > 0)
                    .unwrap_or_else(|| gst::Fraction::new(30, 1));
                let raw = gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", w)
                    .field("height", h)
                    .field("framerate", fps)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build();
                // Same live settings as video-encode.pipeline; keyframes every second for joiners.
                let enc = if st.name() == "video/x-vp8" {
                    "vp8enc"
                } else {
                    "vp9enc"
                };
                let kf = (fps.numer() / fps.denom().max(1)).max(1);
                (
                    raw,
                    format!(
                        "queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000 ! {enc} deadline=1 \
                         cpu-used=8 threads=1 end-usage=cbr target-bitrate=500000 keyframe-max-dist={kf} \
                         lag-in-frames=0"
                    ),
                )
            }
            "audio/x-opus" => {
                let channels = st.get::<i32>("channels").unwrap_or(2).clamp(1, 2);
                let raw = gst::Caps::builder("audio/x-raw")
                    .field("format", "F32LE")
                    .field("layout", "interleaved")
                    .field("rate", super::AUDIO_RATE)
                    .field("channels", channels)
                    .build();
                (
                    raw,
                    "queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000 ! audioconvert \
                     ! opusenc"
                        .to_string(),
                )
            }
            _ => return Ok(None),
        };
        let appsrc = media_appsrc(&raw);
        let bin = gst::parse::bin_from_description(&description, true)?;
        let sink = gst_app::AppSink::builder().sync(false).build();
        sink.set_property("enable-last-sample", false);
        // Idle until the slate or another format comes: a sink waiting to preroll would hold the whole
        // playing pipeline back in PAUSED.
        sink.set_property("async", false);
        let target = track.input();
        let open = Arc::new(Mutex::new(false));
        let gate = open.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    // Held while pushing: a switch that shuts the gate waits for this push, not after it.
                    let open = gate.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(b) = sample.buffer_owned()
                        && *open
                        && !b.flags().contains(gst::BufferFlags::HEADER)
                    {
                        target.push(b);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let elements: [&gst::Element; 3] =
            [appsrc.upcast_ref(), bin.upcast_ref(), sink.upcast_ref()];
        self.pipeline.add_many(elements)?;
        gst::Element::link_many(elements)?;
        for e in elements.iter().rev() {
            e.sync_state_with_parent()?;
        }
        tracing::info!(stream = %self.name, caps = %raw, "re-encoder ready for a passthrough track");
        Ok(Some(Reencoder {
            caps: raw,
            appsrc,
            encoder: find_encoder(&bin),
            open,
        }))
    }

    /// The pad a track's encoded stream goes to: a muxer request pad, or a new per-track appsink feeding the
    /// writer (returned too, so its state can be synced once linked).
    fn output_pad(&self, video: bool) -> Result<(gst::Pad, Option<gst::Element>)> {
        match &self.sink {
            Sink::Mux(mux) => {
                let pad = mux
                    .request_pad_simple(if video { "video_%u" } else { "audio_%u" })
                    .ok_or_else(|| {
                        Error::pipeline("the muxer refused a new track (data already started?)")
                    })?;
                Ok((pad, None))
            }
            Sink::Direct(writer) => {
                let kind = if video {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                let track = writer
                    .lock()
                    .map_err(|_| Error::internal("writer lock poisoned"))?
                    .add_track(kind);
                let sink = gst_app::AppSink::builder().sync(false).build();
                sink.set_property("enable-last-sample", false);
                let (w, w2) = (writer.clone(), writer.clone());
                sink.set_callbacks(
                    gst_app::AppSinkCallbacks::builder()
                        .new_sample(move |sink| {
                            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                            let mut w =
                                w.lock().map_err(|_| writer_error(sink, "lock poisoned"))?;
                            w.push(track, sample.caps(), buffer)
                                .map_err(|e| writer_error(sink, e))?;
                            Ok(gst::FlowSuccess::Ok)
                        })
                        .eos(move |sink| {
                            let Ok(mut w) = w2.lock() else { return };
                            match w.end_track(track) {
                                Ok(true) => post_output_eos(sink.upcast_ref()),
                                Ok(false) => {}
                                Err(e) => {
                                    let _ = writer_error(sink, e);
                                }
                            }
                        })
                        .build(),
                );
                self.pipeline.add(&sink)?;
                Ok((
                    sink.static_pad("sink").expect("appsink has a sink"),
                    Some(sink.upcast()),
                ))
            }
        }
    }

    /// Drops frames reaching the encoder later than [`MAX_ENCODE_LATENESS`]: a transcode that cannot keep
    /// real time sheds frames instead of falling further behind.
    fn install_encoder_drop(&self, encoder: &gst::Element) {
        if !self.clock.enabled() {
            return;
        }
        let Some(pad) = encoder.static_pad("sink") else {
            return;
        };
        let clock = self.clock.clone();
        let name = self.name.clone();
        let drops = self.drops.clone();
        let element = encoder.clone();
        // Pad probes, unlike appsink callbacks, do not catch panics in gstreamer-rs: `no_panic` does.
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            no_panic(&element, "the encoder's lateness probe", gst::PadProbeReturn::Ok, || {
                let Some(rt) = info.buffer().and_then(|b| running_time(pad, b)) else {
                    return gst::PadProbeReturn::Ok;
                };
                let now = Instant::now();
                let late = clock.lateness(rt, now);
                if late <= MAX_ENCODE_LATENESS {
                    return gst::PadProbeReturn::Ok;
                }
                if let Some(n) = drops.note(now) {
                    tracing::warn!(stream = %name, late_ms = late.as_millis() as u64, dropped_total = n,
                        "transcode cannot keep real time: dropping late frames");
                }
                // `Handled`, not `Drop`: gstreamer-rs has already taken the buffer out of the probe info (and
                // frees it here), and GStreamer 1.22 unrefs the info's data on `Drop`, which then is NULL: a
                // CRITICAL per frame.
                gst::PadProbeReturn::Handled
            })
        });
    }

    pub fn frames_dropped(&self) -> u64 {
        self.drops.count.load(Ordering::Relaxed)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
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
                let mut p = publisher
                    .lock()
                    .map_err(|_| writer_error(sink, "lock poisoned"))?;
                p.push(&map).map_err(|e| writer_error(sink, e))?;
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(|sink| post_output_eos(sink.upcast_ref()))
            .build(),
    );
    Ok(mux)
}

/// An appsrc for timed media in `caps` that never blocks its caller and, past [`APPSRC_MAX_TIME`], drops what
/// comes (the newest), so a slow encoder sheds input.
fn media_appsrc(caps: &gst::Caps) -> gst_app::AppSrc {
    let appsrc = gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .stream_type(gst_app::AppStreamType::Stream)
        .max_time(gst::ClockTime::from_nseconds(
            APPSRC_MAX_TIME.as_nanos() as u64
        ))
        .max_bytes(0)
        .max_buffers(0)
        .block(false)
        .build();
    appsrc.set_property_from_str("leaky-type", "upstream");
    appsrc
}

/// Sends a pad nowhere, so it neither stalls its demuxer nor errors as not-linked.
pub fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<()> {
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

/// A pipeline that goes to NULL when this is dropped, however its owner returns (an early `?` included): a
/// pipeline dropped in another state leaks its streaming threads and warns.
#[derive(Debug)]
pub struct NullOnDrop<E: IsA<gst::Element>>(pub E);

impl<E: IsA<gst::Element>> std::ops::Deref for NullOnDrop<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.0
    }
}

impl<E: IsA<gst::Element>> Drop for NullOnDrop<E> {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Runs a GStreamer signal handler or pad probe (pad-added, no-more-pads, ...) so that no panic crosses into C, where it
/// would abort the whole daemon: a panic becomes an error message on `element`'s bus, which ends the source or
/// stream it belongs to and nothing else.
pub fn no_panic<T>(element: &gst::Element, what: &str, default: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(element = %element.path_string(), "{what} panicked: {why}");
            gst::element_error!(element, gst::CoreError::Failed, ("{what} panicked: {why}"));
            default
        }
    }
}

/// Raw media is converted to a stream's caps by these (never client input; the caps are set in code). The
/// queue that lets the source's pacer hold comes after the conversion: what waits is a second of pictures at the
/// stream's size and rate (at most 720p30), not at the input's (up to 1080p60, four times the bytes): that took a
/// fast 1080p60 upload from 925 to 239 MiB of daemon peak (tests/cli.rs).
const VIDEO_CONFORM: &str = "videoconvert ! videoscale ! videorate ! capsfilter name=caps \
    ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000";
const AUDIO_CONFORM: &str = "queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000 \
    ! audioconvert ! audioresample ! capsfilter name=caps";

/// A bin (ghost sink and src) that converts, scales and re-times raw media of `kind` to `caps`.
pub fn conform(kind: TrackKind, caps: &gst::Caps) -> Result<gst::Bin> {
    let bin = gst::parse::bin_from_description(
        if kind == TrackKind::Video {
            VIDEO_CONFORM
        } else {
            AUDIO_CONFORM
        },
        true,
    )?;
    if let Some(f) = bin.by_name("caps") {
        f.set_property("caps", caps);
    }
    Ok(bin)
}

fn find_encoder(branch: &gst::Bin) -> Option<gst::Element> {
    branch.iterate_recurse().into_iter().flatten().find(|e| {
        e.factory().is_some_and(|f| {
            f.metadata(gst::ELEMENT_METADATA_KLASS)
                .is_some_and(|k| k.contains("Encoder"))
        })
    })
}

pub fn caps_name(caps: &gst::CapsRef) -> String {
    caps.structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default()
}

pub fn running_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts().or(buffer.dts())?;
    let seg = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = seg.segment().downcast_ref::<gst::ClockTime>()?.clone();
    seg.to_running_time(pts).map(|t| t.nseconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose first source failed after announcing one track but before announcing them all (no
    /// `tracks_complete`) still completes its output when it ends: its end is not held for the drain timeout.
    #[test]
    fn ending_before_the_tracks_were_complete_still_completes_the_output() {
        gst::init().unwrap();
        let hub = crate::stream::hub::Hub::new(
            "t",
            crate::stream::hub::HubConfig {
                join: crate::config::JoinMode::Gop,
                max_lag: std::time::Duration::from_secs(1),
                max_gop_bytes: 1 << 20,
                coalesce: std::time::Duration::ZERO,
                segments: crate::stream::segments::SegmentConfig {
                    target: std::time::Duration::from_secs(2),
                    window: 10,
                },
            },
        );
        let templates = Templates::load(None, &crate::config::EncodeSettings::default()).unwrap();
        let output = Output::new(
            "t",
            OutputContext {
                templates: Arc::new(templates),
                transcodes: Arc::new(Semaphore::new(1)),
                pace: false,
                rtp_targets: Vec::new(),
                muxer: Muxer::Direct,
            },
            hub,
        )
        .unwrap();
        let caps = gst::Caps::builder("audio/x-vorbis").build();
        let track = output
            .add_track(TrackKind::Audio, TrackInput::Encoded(caps))
            .unwrap();
        output.end(&[track], &[]);
        let done = output.bus().timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Application],
        );
        assert!(
            done.is_some_and(|m| m.structure().is_some_and(|s| s.name() == OUTPUT_EOS)),
            "the output did not complete"
        );
    }

    /// The guard puts its pipeline back to NULL whichever way its owner leaves.
    #[test]
    fn a_guarded_pipeline_is_stopped_when_its_owner_returns_early() {
        gst::init().unwrap();
        fn start(p: &gst::Pipeline) -> Result<()> {
            let _guard = NullOnDrop(p.clone());
            p.set_state(gst::State::Playing)?;
            Err(Error::pipeline("an early return"))
        }
        let p = gst::parse::launch("audiotestsrc is-live=true ! fakesink")
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        assert!(start(&p).is_err());
        assert_eq!(p.current_state(), gst::State::Null);
    }

    /// A bug in a signal handler ends that pipeline with an error; it does not abort the process (a panic
    /// unwinding into GStreamer's C code would).
    #[test]
    fn a_panicking_signal_handler_becomes_a_pipeline_error() {
        gst::init().unwrap();
        let pipeline = gst::parse::launch("audiotestsrc num-buffers=5 ! decodebin name=d")
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let d = pipeline.by_name("d").unwrap();
        d.connect_pad_added(|el, _pad| {
            no_panic(el, "pad-added", (), || panic!("a bug"));
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let msg = pipeline
            .bus()
            .unwrap()
            .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error]);
        let _ = pipeline.set_state(gst::State::Null);
        let Some(msg) = msg else {
            panic!("no error posted")
        };
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        assert!(
            e.error().to_string().contains("pad-added panicked: a bug"),
            "{}",
            e.error()
        );
    }
}
