//! A stream: a name, an output pipeline, a hub, and a state; it outlives its sources.
//!
//! ```text
//!  source A (push) ──┐                     ┌─ on air: stamp (source time + offset) ─► output ─► hub ─► viewers
//!  source B (resume) ┼─► Stream::stamp ────┤
//!  fallback (slate) ─┘                     └─ off air: dropped (a replaced source stops)
//! ```
//!
//! One source is *current* at a time. Its first buffer puts it on air: the offset that maps its timestamps
//! onto the stream's is chosen so it continues where the stream is, so output time is monotonic for the
//! stream's whole life and every viewer keeps one response with one header. When the current source is lost
//! (connection broken, timeout, decode error) the stream switches to its fallback (the slate, or a file) for
//! `--linger`, and a new push takes it back; a source that ends cleanly (after `--resume-grace`) ends it.
//!
//! The switch happens on raw media before the stream's encoders ([`output`]), so encoders, writer and hub
//! never restart and every source is scaled and converted to the stream's caps. A passthrough stream (its
//! first source's VP8/VP9/Opus tracks written as they came) takes back a source whose tracks are identical at
//! a keyframe, payloads untouched; for its slate, and for a returning source in another format, each such
//! track has a re-encoder into its own codec at its own size ([`output::Reencoder`]), so it stays a valid
//! stream under the one header. Vorbis cannot be re-encoded compatibly (its codec headers are the encoder's
//! own), so with a slate configured a stream re-encodes Vorbis audio from the start.
//!
//! Lock order: `inner`, then the output's writer lock (taken by GStreamer while adding tracks); `inner` is
//! never held across an await. Buffers are handed to the output's appsrcs under `inner`: that only queues.

pub mod attach;
pub mod hub;
pub mod output;
pub mod pacing;
pub mod registry;
pub mod rtp;
pub mod segments;
pub mod slate;
pub mod tracks;
pub mod webm;
pub mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use gst::prelude::*;
use gstreamer as gst;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{EncodeSettings, Fallback};
use crate::error::{Error, Result};
use crate::stream::hub::Hub;
use crate::stream::webm::TrackKind;
use attach::{End, Feeder};
use output::{Output, TrackInput, TrackOut};
use registry::{Rates, Reservation};

/// After the output is complete, how long the RTP side gets to send its RTCP BYE.
pub const RTCP_BYE_GRACE: Duration = Duration::from_millis(500);
/// Bound on the wait for the output to drain when the stream ends (its queues hold about two seconds).
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Sample rate and channels of every transcoded stream's audio (what Vorbis in WebM plays everywhere).
pub const AUDIO_RATE: i32 = 48_000;
pub const AUDIO_CHANNELS: i32 = 2;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created; no media yet.
    Starting,
    /// A source is on air.
    Live,
    /// Its source is gone: viewers see the fallback until a source returns or `--linger` runs out.
    Fallback,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Live => "live",
            State::Fallback => "fallback",
            State::Ended => "ended",
        }
    }
}

/// How a stream's tracks are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No track yet.
    #[default]
    Starting,
    /// Every track is the input's own, remuxed.
    Passthrough,
    /// At least one track is encoded by the stream.
    Transcode,
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

/// Why a source leaves its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// Its input ended cleanly and was played out: the stream ends.
    Ended,
    /// Its input was lost or failed: the stream falls back (or ends with `--fallback none`).
    Lost,
}

/// What a stream does with a source's track.
#[derive(Debug)]
pub enum Offer {
    /// Convert it to these raw caps.
    Raw(gst::Caps),
    /// Hand its encoded buffers over as they are.
    Encoded,
    /// Not used (an extra track, or a kind the stream does not have).
    Discard(String),
    /// The source cannot feed this stream.
    Refuse(Error),
}

/// What [`Stream::stamp`] decided for one buffer.
#[derive(Debug)]
pub enum Stamp {
    /// On air: the buffer in stream time.
    Deliver(gst::Buffer, u64),
    /// Not used (waiting for a keyframe, before the track's last buffer, no such track).
    Skip,
    /// The source is no longer the stream's: stop.
    Gone,
}

/// The current source, as the API shows it.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub peer: Option<SocketAddr>,
    pub since: SystemTime,
    /// The URL a pull reads.
    pub url: Option<String>,
    /// The input container's name (`webm`, `mp4`...).
    pub container: Option<&'static str>,
    pub codecs: Vec<String>,
}

/// Fixed settings of a stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub fallback: Fallback,
    pub linger: Duration,
    pub encode: EncodeSettings,
    /// Whether WebM with web codecs may be written as it is (a declared stream's `passthrough = false`
    /// transcodes it).
    pub passthrough: bool,
}

/// Failover counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub failovers: AtomicU64,
    pub resumes: AtomicU64,
    /// Pushes that continued a source's input (`Content-Range`).
    pub continuations: AtomicU64,
    /// Time spent on the fallback, finished periods only (see [`Stream::fallback_seconds`]).
    fallback_ms: AtomicU64,
}

#[derive(Debug)]
struct Track {
    out: TrackOut,
    /// For a passthrough track: raw media (the slate, a source in another format) encoded into its codec.
    reencoder: Option<output::Reencoder>,
    /// Stream time of the last buffer and of its end.
    last_pts: Option<u64>,
    end: u64,
}

impl Track {
    fn new(out: TrackOut) -> Track {
        Track {
            out,
            reencoder: None,
            last_pts: None,
            end: 0,
        }
    }

    /// The raw caps the track takes: a transcoded track's, or its re-encoder's.
    fn raw_caps(&self) -> Option<&gst::Caps> {
        match &self.out.input {
            TrackInput::Raw(c) => Some(c),
            TrackInput::Encoded(_) => self.reencoder.as_ref().map(|r| &r.caps),
        }
    }

    /// Where raw media for the track goes.
    fn raw_input(&self) -> Option<output::TrackInputHandle> {
        match &self.out.input {
            TrackInput::Raw(_) => Some(self.out.input()),
            TrackInput::Encoded(_) => self.reencoder.as_ref().map(|r| r.input()),
        }
    }

    fn force_keyframe(&self) {
        self.out.force_keyframe();
        if let Some(r) = &self.reencoder {
            r.force_keyframe();
        }
    }

    /// Lets the re-encoder's output into the track only while raw media is what the track shows.
    fn reencode(&self, raw: bool) {
        if let Some(r) = &self.reencoder {
            r.set_open(raw);
        }
    }
}

#[derive(Debug)]
struct Current {
    feeder: Arc<Feeder>,
    info: SourceInfo,
    /// Kinds whose raw media goes through the track's re-encoder (a passthrough stream taking a source in
    /// another format).
    reencoded: Vec<TrackKind>,
}

impl Current {
    /// Whether this source's `kind` track goes on as raw media (converted and encoded by the stream).
    fn raw(&self, track: &Track) -> bool {
        matches!(track.out.input, TrackInput::Raw(_)) || self.reencoded.contains(&track.out.kind)
    }
}

#[derive(Debug, Default)]
struct Inner {
    tracks: Vec<Track>,
    /// The first source is still announcing its tracks.
    tracks_open: bool,
    current: Option<Current>,
    /// A push that passed the busy check and is typefinding.
    claimed: Option<Arc<Feeder>>,
    /// The on-air source and its offset (stream time − source time, ns).
    on_air: Option<(u64, i64)>,
    fallback_since: Option<Instant>,
    /// The fallback file's loop iteration now playing and its offset (stream time − file time, ns).
    file_loop: Option<(u64, i64)>,
    /// The last source's info, kept for the API while on the fallback.
    last_source: Option<SourceInfo>,
}

impl Inner {
    fn is_current(&self, id: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.feeder.id == id)
    }

    fn is_claimed(&self, id: u64) -> bool {
        self.claimed.as_ref().is_some_and(|f| f.id == id)
    }

    fn is_taken(&self) -> bool {
        self.claimed.is_some()
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.feeder.is_receiving())
    }
}

#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub hub: Arc<Hub>,
    /// Cancelled to end the stream (API, shutdown).
    pub abort: CancellationToken,
    pub started_at: SystemTime,
    /// Input bytes over all sources.
    pub bytes_in: AtomicU64,
    /// Refreshed every [`registry::RATE_INTERVAL`].
    pub rates: Mutex<Rates>,
    pub counters: Counters,
    pub settings: StreamSettings,
    output: Output,
    inner: Mutex<Inner>,
    state: watch::Sender<State>,
    next_source: AtomicU64,
    /// Unix time (µs) of stream time 0 as the on-air source delivers it: the least (arrival − stream time) of its
    /// buffers so far. A viewer's delay behind the source is now − this − its playhead.
    media_zero_us: AtomicI64,
}

impl Stream {
    pub fn new(
        name: &str,
        hub: Arc<Hub>,
        output: Output,
        settings: StreamSettings,
        abort: CancellationToken,
    ) -> Arc<Stream> {
        Arc::new(Stream {
            name: name.to_string(),
            hub,
            abort,
            started_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            rates: Mutex::default(),
            counters: Counters::default(),
            settings,
            output,
            inner: Mutex::new(Inner {
                tracks_open: true,
                ..Inner::default()
            }),
            state: watch::Sender::new(State::Starting),
            next_source: AtomicU64::new(1),
            media_zero_us: AtomicI64::new(i64::MAX),
        })
    }

    /// `inner`, even if a thread panicked while holding it (its data is counters and handles that stay
    /// consistent at every step).
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    pub fn is_ended(&self) -> bool {
        self.state() == State::Ended
    }

    pub fn mode(&self) -> Mode {
        let inner = self.inner();
        if inner.tracks.is_empty() {
            Mode::Starting
        } else if inner
            .tracks
            .iter()
            .any(|t| matches!(t.out.input, TrackInput::Raw(_)))
        {
            Mode::Transcode
        } else {
            Mode::Passthrough
        }
    }

    /// The current source, or the last one while on the fallback.
    pub fn source(&self) -> Option<SourceInfo> {
        let inner = self.inner();
        inner
            .current
            .as_ref()
            .map(|c| c.info.clone())
            .or_else(|| inner.last_source.clone())
    }

    /// Whether a source is attached now (the API's `source` is the current one only then).
    pub fn has_source(&self) -> bool {
        self.inner().current.is_some()
    }

    pub fn fallback_seconds(&self) -> f64 {
        let open = self
            .inner()
            .fallback_since
            .map_or(Duration::ZERO, |t| t.elapsed());
        (self.counters.fallback_ms.load(Ordering::Relaxed) as f64 / 1000.0) + open.as_secs_f64()
    }

    pub fn frames_dropped(&self) -> u64 {
        self.output.frames_dropped()
    }

    pub fn rtp(&self) -> &crate::stream::rtp::RtpOutput {
        &self.output.rtp
    }

    pub fn dot(&self) -> String {
        self.output.dot()
    }

    /// The feeder of the newest source (one still typefinding, else the current one), for a continuation.
    pub fn feeder(&self) -> Option<Arc<Feeder>> {
        let inner = self.inner();
        inner
            .claimed
            .clone()
            .or_else(|| inner.current.as_ref().map(|c| c.feeder.clone()))
    }

    /// Lets a new push in: 409 while another push is feeding the stream (or typefinding), 503 when the
    /// stream is over (the registry then starts a new one). Returns the new source's feeder and the channel
    /// its task reads.
    pub fn claim(&self) -> Result<(Arc<Feeder>, tokio::sync::mpsc::Receiver<attach::Feed>)> {
        let mut inner = self.inner();
        if self.is_ended() {
            return Err(Error::unavailable(format!(
                "stream '{}' is ending",
                self.name
            )));
        }
        if inner.is_taken() {
            return Err(Error::new(
                crate::error::Kind::Busy,
                format!("stream '{}' is already being pushed", self.name),
            ));
        }
        let id = self.next_source.fetch_add(1, Ordering::Relaxed);
        let (feeder, rx) = Feeder::new(id);
        let feeder = Arc::new(feeder);
        inner.claimed = Some(feeder.clone());
        Ok((feeder, rx))
    }

    /// Whether a new source would be refused as busy ([`Stream::claim`]'s 409): one is being received.
    pub fn is_taken(&self) -> bool {
        self.inner().is_taken()
    }

    /// A claimed push that never became a source (refused before it started): a stream it created ends.
    pub fn release(&self, id: u64) {
        let mut inner = self.inner();
        if inner.is_claimed(id) {
            inner.claimed = None;
            if inner.current.is_none() && self.state() == State::Starting {
                self.set_state(State::Ended);
            }
        }
    }

    /// Makes a claimed push the current source; a previous one (in its grace period, or playing out) is
    /// detached. Its media goes on air with its first buffer.
    pub fn attach(&self, id: u64, feeder: Arc<Feeder>, info: SourceInfo) -> Result<()> {
        let mut inner = self.inner();
        if !inner.is_claimed(id) || self.is_ended() {
            return Err(Error::unavailable(format!(
                "stream '{}' ended while the push started",
                self.name
            )));
        }
        inner.claimed = None;
        if let Some(old) = inner.current.take() {
            tracing::info!(stream = %self.name, "a new push replaces the source that was ending");
            old.feeder.gone.cancel();
        }
        inner.on_air = None;
        inner.current = Some(Current {
            feeder,
            info,
            reencoded: Vec::new(),
        });
        Ok(())
    }

    /// Records the input codecs a source's front found.
    pub fn note_codecs(&self, id: u64, codecs: Vec<String>) {
        if let Some(c) = self.inner().current.as_mut().filter(|c| c.feeder.id == id) {
            c.info.codecs = codecs;
        }
    }

    /// A source's front found a track of `kind` with `caps`; `passthrough` says it could be written as it is
    /// (a VP8/VP9/Vorbis/Opus track of a WebM/Matroska input). The first source's tracks make the stream's.
    pub fn offer_track(
        &self,
        id: u64,
        kind: TrackKind,
        caps: &gst::Caps,
        passthrough: bool,
    ) -> Offer {
        let mut inner = self.inner();
        if !inner.is_current(id) {
            return Offer::Refuse(Error::unavailable("the source was replaced"));
        }
        if let Some(t) = inner.tracks.iter().find(|t| t.out.kind == kind) {
            if inner.tracks_open {
                return Offer::Discard(format!("the stream has its {kind:?} track already"));
            }
            let offer = match (&t.out.input, &t.reencoder) {
                (TrackInput::Raw(c), _) => Offer::Raw(c.clone()),
                (TrackInput::Encoded(c), _) if passthrough && same_track(c, caps) => Offer::Encoded,
                // Another format into a passthrough track: decoded, converted, encoded into its codec.
                (TrackInput::Encoded(_), Some(r)) => Offer::Raw(r.caps.clone()),
                (TrackInput::Encoded(c), None) => Offer::Refuse(Error::unsupported(format!(
                    "stream '{}' passes its first source's {} through; a new source must be the same \
                     (codec, size, codec headers), this one is {}",
                    self.name,
                    describe(c),
                    describe(caps)
                ))),
            };
            if let (Offer::Raw(_), TrackInput::Encoded(_)) = (&offer, &t.out.input)
                && let Some(c) = inner.current.as_mut()
            {
                c.reencoded.push(kind);
            }
            return offer;
        }
        if !inner.tracks_open {
            return Offer::Discard(format!("the stream has no {kind:?} track"));
        }
        // A passthrough stream that may fall back re-encodes Vorbis audio from the start: the slate's silence
        // must decode with the header's codec headers, and only the stream's own encoder makes those.
        let vorbis = caps
            .structure(0)
            .is_some_and(|s| s.name() == "audio/x-vorbis");
        let passthrough = passthrough
            && self.settings.passthrough
            && !(vorbis && self.settings.fallback.enabled());
        let input = if passthrough {
            TrackInput::Encoded(caps.clone())
        } else {
            TrackInput::Raw(raw_caps(kind, caps, &self.settings.encode))
        };
        match self.output.add_track(kind, input.clone()) {
            Ok(out) => {
                inner.tracks.push(Track::new(out));
                match input {
                    TrackInput::Raw(c) => Offer::Raw(c),
                    TrackInput::Encoded(_) => Offer::Encoded,
                }
            }
            Err(e) => Offer::Refuse(e),
        }
    }

    /// Starts a stream that has no source yet (created through the API) on its slate: a video track of
    /// `width`×`height` at up to 30 fps and a stereo audio track, which every source is converted to.
    pub fn start_on_fallback(self: &Arc<Self>, width: u32, height: u32) -> Result<()> {
        let mut inner = self.inner();
        if !inner.tracks_open || !inner.tracks.is_empty() {
            return Err(Error::internal("the stream has tracks already"));
        }
        let video = gst::Caps::builder("video/x-raw")
            .field("width", width as i32)
            .field("height", height as i32)
            .build();
        for (kind, caps) in [
            (TrackKind::Video, video),
            (TrackKind::Audio, gst::Caps::new_empty()),
        ] {
            let input = TrackInput::Raw(raw_caps(kind, &caps, &self.settings.encode));
            let out = self.output.add_track(kind, input)?;
            inner.tracks.push(Track::new(out));
        }
        inner.tracks_open = false;
        self.output.tracks_complete()?;
        inner.fallback_since = Some(Instant::now());
        self.set_state(State::Fallback);
        drop(inner);
        tracing::info!(stream = %self.name, "created without a source: on its slate");
        tokio::spawn(slate::run(self.clone()));
        Ok(())
    }

    /// A source's track was refused (no decoder, a limit, a mismatch): its request answers with `e`, even if
    /// another of its tracks already went on air.
    pub fn source_failed(&self, id: u64, e: Error) {
        if let Some(c) = self.inner().current.as_ref().filter(|c| c.feeder.id == id) {
            c.feeder.status.send_modify(|s| {
                s.failed.get_or_insert(e);
            });
        }
    }

    /// A source has announced all its tracks; the first source's make the stream's.
    pub fn tracks_complete(&self, id: u64) -> Result<()> {
        let mut inner = self.inner();
        if let Some(c) = inner.current.as_ref().filter(|c| c.feeder.id == id) {
            c.feeder.status.send_modify(|s| {
                s.tracks_known = true;
                s.started = s.on_air && s.failed.is_none();
            });
        }
        if !inner.tracks_open || !inner.is_current(id) {
            return Ok(());
        }
        inner.tracks_open = false;
        if self.settings.fallback.enabled() {
            for t in inner.tracks.iter_mut() {
                match self.output.add_reencoder(&t.out) {
                    Ok(r) => t.reencoder = r,
                    Err(e) => {
                        tracing::warn!(stream = %self.name, "no re-encoder for a passthrough track: {}", e.message)
                    }
                }
            }
        }
        self.output.tracks_complete()
    }

    /// Maps a source's buffer into stream time. The current source goes on air with its first usable
    /// buffer (for a passthrough video track: its first keyframe).
    pub fn stamp(&self, id: u64, kind: TrackKind, mut buffer: gst::Buffer) -> Stamp {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let Some(current) = inner.current.as_ref().filter(|c| c.feeder.id == id) else {
            return Stamp::Gone;
        };
        let Some(ti) = inner.tracks.iter().position(|t| t.out.kind == kind) else {
            return Stamp::Skip;
        };
        let Some(pts) = buffer.pts().map(|t| t.nseconds()) else {
            return Stamp::Skip;
        };
        let raw = current.raw(&inner.tracks[ti]);
        let offset = match inner.on_air {
            Some((on, off)) if on == id => off,
            _ => {
                let passthrough_video = kind == TrackKind::Video && !raw;
                // A passthrough stream takes a source back at a video keyframe (the first source starts
                // with one anyway), and its audio from then on.
                let resuming = self.state() != State::Starting;
                let passthrough_audio_waits = kind != TrackKind::Video
                    && inner
                        .tracks
                        .iter()
                        .any(|t| t.out.kind == TrackKind::Video && !current.raw(t));
                let waits_for_keyframe = resuming
                    && ((passthrough_video
                        && buffer.flags().contains(gst::BufferFlags::DELTA_UNIT))
                        || passthrough_audio_waits);
                if waits_for_keyframe {
                    return Stamp::Skip;
                }
                let resume_at = inner.tracks.iter().map(|t| t.end).max().unwrap_or(0);
                let off = resume_at as i64 - pts as i64;
                inner.on_air = Some((id, off));
                let feeder = current.feeder.clone();
                self.go_on_air(inner);
                feeder.status.send_modify(|s| {
                    s.on_air = true;
                    s.started = s.tracks_known && s.failed.is_none();
                });
                off
            }
        };
        let track = &mut inner.tracks[ti];
        let signed = pts as i64 + offset;
        if signed < 0 && (raw || track.last_pts.is_none()) {
            // From before the buffer that put the source on air: another track's earlier media that arrived
            // later (a source's tracks need not arrive in timestamp order; an edge's input, a transcast's
            // output, has them up to a second apart). Stacking it all at zero would give an encoder time that
            // runs backwards.
            return Stamp::Skip;
        }
        let mut out = signed.max(0) as u64;
        if let Some(last) = track.last_pts
            && out < last
        {
            if raw {
                // A raw frame or audio buffer from before what the stream has already shown: drop it.
                return Stamp::Skip;
            }
            // Encoded media cannot lose a packet: it is written at the track's last time instead.
            out = last;
        }
        let duration = buffer.duration().map_or(0, |d| d.nseconds());
        {
            let b = buffer.make_mut();
            b.set_pts(gst::ClockTime::from_nseconds(out));
            let dts = b.dts().map(|d| {
                gst::ClockTime::from_nseconds((d.nseconds() as i64 + offset).max(0) as u64)
            });
            b.set_dts(dts);
        }
        track.last_pts = Some(out);
        track.end = track.end.max(out + duration);
        self.media_zero_us
            .fetch_min(unix_us() - (out / 1000) as i64, Ordering::Relaxed);
        Stamp::Deliver(buffer, out)
    }

    /// Hands a stamped buffer to the output, if its source is still on air. Called on the source's streaming
    /// thread, which it holds (outside the lock) while the output is backed up.
    pub fn deliver(&self, id: u64, kind: TrackKind, buffer: gst::Buffer, pts: u64) {
        let Some(input) = self.on_air_track(id, kind) else {
            return;
        };
        if !input.wait_room(|| self.on_air_track(id, kind).is_some()) {
            return;
        }
        if self.on_air_track(id, kind).is_some() {
            self.output.clock_in(pts);
            input.push(buffer);
        }
    }

    fn on_air_track(&self, id: u64, kind: TrackKind) -> Option<output::TrackInputHandle> {
        let inner = self.inner();
        if inner.on_air.is_none_or(|(on, _)| on != id) {
            return None;
        }
        let current = inner.current.as_ref()?;
        let t = inner.tracks.iter().find(|t| t.out.kind == kind)?;
        if current.raw(t) {
            t.raw_input()
        } else {
            Some(t.out.input())
        }
    }

    /// Unix time (ms) at which the on-air source delivered (or would have) stream time 0; `None` before a
    /// source was on air.
    pub fn media_zero_unix_ms(&self) -> Option<f64> {
        let us = self.media_zero_us.load(Ordering::Relaxed);
        (us != i64::MAX).then_some(us as f64 / 1000.0)
    }

    /// A source went on air: the stream is live, and a switch is a keyframe for every encoded track.
    fn go_on_air(&self, inner: &mut Inner) {
        self.media_zero_us.store(i64::MAX, Ordering::Relaxed);
        if let Some(c) = &inner.current {
            for t in &inner.tracks {
                t.reencode(c.raw(t));
            }
        }
        match self.state() {
            State::Fallback => {
                self.counters.resumes.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = inner.fallback_since.take() {
                    self.counters
                        .fallback_ms
                        .fetch_add(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                tracing::info!(stream = %self.name, "source resumed: back on air");
                for t in &inner.tracks {
                    t.force_keyframe();
                }
            }
            State::Live => {
                for t in &inner.tracks {
                    t.force_keyframe();
                }
            }
            State::Starting | State::Ended => {}
        }
        if self.state() != State::Ended {
            self.set_state(State::Live);
        }
    }

    /// The source `id` leaves (if it still is the stream's): the stream ends, or falls back.
    pub fn detach(self: &Arc<Self>, id: u64, why: Detach) {
        let mut inner = self.inner();
        if !inner.is_current(id) {
            return;
        }
        let current = inner.current.take().expect("checked");
        current.feeder.gone.cancel();
        inner.last_source = Some(current.info);
        inner.on_air = None;
        let state = self.state();
        let can_fall_back = self.settings.fallback.enabled()
            && !inner.tracks.is_empty()
            && !inner.tracks_open
            && inner.tracks.iter().all(|t| t.raw_caps().is_some());
        match (why, state) {
            (_, State::Ended) => {}
            (Detach::Lost, State::Live) if can_fall_back => {
                self.counters.failovers.fetch_add(1, Ordering::Relaxed);
                inner.fallback_since = Some(Instant::now());
                tracing::info!(stream = %self.name, linger = ?self.settings.linger, "source lost: on the fallback");
                for t in &inner.tracks {
                    t.reencode(true);
                    t.force_keyframe();
                }
                self.set_state(State::Fallback);
                tokio::spawn(slate::run(self.clone()));
            }
            (Detach::Lost, State::Fallback) => {}
            (Detach::Lost, _) => {
                if state == State::Live && self.settings.fallback.enabled() {
                    tracing::info!(stream = %self.name, "source lost; its tracks cannot show a slate: ending");
                }
                self.set_state(State::Ended);
            }
            (Detach::Ended, _) => self.set_state(State::Ended),
        }
    }

    /// Ends the stream (abort, linger expired, output failure).
    pub fn end(&self) {
        let mut inner = self.inner();
        if let Some(f) = inner.claimed.take() {
            f.gone.cancel();
        }
        if let Some(c) = inner.current.take() {
            c.feeder.gone.cancel();
            c.feeder.status.send_modify(|s| {
                s.ended.get_or_insert(End::Aborted);
            });
            inner.last_source = Some(c.info);
        }
        inner.on_air = None;
        if let Some(t) = inner.fallback_since.take() {
            self.counters
                .fallback_ms
                .fetch_add(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        self.set_state(State::Ended);
    }

    fn set_state(&self, s: State) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != s && *cur != State::Ended;
            if changed {
                *cur = s;
            }
            changed
        });
    }

    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// The raw caps of the stream's tracks (for the slate).
    fn raw_tracks(&self) -> Vec<(TrackKind, gst::Caps)> {
        self.inner()
            .tracks
            .iter()
            .filter_map(|t| t.raw_caps().map(|c| (t.out.kind, c.clone())))
            .collect()
    }

    /// Pushes one tick of the slate (a picture and the matching silence), stamped right after what the
    /// stream has shown. False once the stream is no longer on its fallback.
    fn push_slate(&self, frames: &[(TrackKind, gst::Buffer)]) -> bool {
        let mut inner = self.inner();
        if self.state() != State::Fallback || inner.on_air.is_some() {
            return false;
        }
        let at = inner.tracks.iter().map(|t| t.end).max().unwrap_or(0);
        for (kind, frame) in frames {
            let Some(t) = inner.tracks.iter_mut().find(|t| t.out.kind == *kind) else {
                continue;
            };
            fill(&self.output, t, frame.copy(), at);
        }
        true
    }

    /// Pushes a buffer of the fallback file (its loop `iteration`), stamped so each iteration continues where
    /// the stream is. False once the stream is no longer on its fallback.
    fn push_file(&self, iteration: u64, kind: TrackKind, buffer: gst::Buffer) -> bool {
        let mut inner = self.inner();
        if self.state() != State::Fallback || inner.on_air.is_some() {
            return false;
        }
        let Some(pts) = buffer.pts().map(|t| t.nseconds()) else {
            return true;
        };
        let offset = match inner.file_loop {
            Some((i, off)) if i == iteration => off,
            _ => {
                let at = inner.tracks.iter().map(|t| t.end).max().unwrap_or(0);
                let off = at as i64 - pts as i64;
                inner.file_loop = Some((iteration, off));
                for t in &inner.tracks {
                    t.force_keyframe();
                }
                off
            }
        };
        let Some(t) = inner.tracks.iter_mut().find(|t| t.out.kind == kind) else {
            return true;
        };
        let out = (pts as i64 + offset).max(0) as u64;
        if t.last_pts.is_none_or(|l| out >= l) {
            fill(&self.output, t, buffer, out);
        }
        true
    }

    /// The stream's life after its first push: linger on the fallback, end on abort, drain the output and
    /// finish every viewer's response, then free the name (the reservation).
    pub async fn run(self: Arc<Self>, reservation: Reservation) {
        // Dropped in reverse: the name is freed (and the totals folded in) just before every viewer's
        // response ends, so whoever sees a response end sees the name free.
        let _finish = FinishOnDrop(self.hub.clone());
        let _reservation = reservation;
        tokio::spawn(registry::sample_rates(Arc::downgrade(&self)));
        tokio::spawn(self.hub.clone().run_reaper());
        tokio::spawn(self.hub.clone().run_coalescer());
        let mut state = self.watch_state();
        let mut bus = self.output.bus().stream();
        let mut output_done = false;
        loop {
            let now = *state.borrow_and_update();
            if now == State::Ended {
                break;
            }
            let linger = async {
                if now == State::Fallback {
                    tokio::time::sleep(self.settings.linger).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = state.changed() => {}
                _ = linger => {
                    tracing::info!(stream = %self.name, "no source came back within --linger: ending");
                    self.end();
                }
                _ = self.abort.cancelled() => self.end(),
                msg = bus.next() => match output_event(msg.as_ref(), &self.name) {
                    Some(OutputEvent::Failed) => self.end(),
                    Some(OutputEvent::Done) => { output_done = true; self.end(); }
                    None => {}
                },
            }
        }
        self.drain(&mut bus, output_done).await;
        tracing::info!(stream = %self.name, "stream ended");
    }

    /// Ends the output's tracks and waits (bounded) for the writer to complete, then for RTCP BYE.
    async fn drain(&self, bus: &mut gst::bus::BusStream, mut done: bool) {
        let (tracks, reencoders): (Vec<TrackOut>, Vec<Option<output::Reencoder>>) =
            std::mem::take(&mut self.inner().tracks)
                .into_iter()
                .map(|t| (t.out, t.reencoder))
                .unzip();
        if tracks.is_empty() {
            return;
        }
        let reencoders: Vec<_> = reencoders.into_iter().flatten().collect();
        self.output.end(&tracks, &reencoders);
        let deadline = tokio::time::Instant::now() + OUTPUT_DRAIN_TIMEOUT;
        while !done && !self.abort.is_cancelled() {
            tokio::select! {
                msg = bus.next() => done = output_event(msg.as_ref(), &self.name).is_some(),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(stream = %self.name, "output did not drain within {OUTPUT_DRAIN_TIMEOUT:?}");
                    break;
                }
                _ = self.abort.cancelled() => break,
            }
        }
        // Give the RTP side a moment to send its RTCP BYE (the pipeline EOS follows it); a session that never
        // sent anything has no BYE to send, so this is bounded rather than awaited.
        let _ = tokio::time::timeout(RTCP_BYE_GRACE, async {
            while let Some(m) = bus.next().await {
                if matches!(m.view(), gst::MessageView::Eos(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

use futures_util::StreamExt;

/// Puts a fallback buffer (slate or file) on a track at stream time `at`, as raw media (a transcoded track,
/// or a passthrough track's re-encoder).
fn fill(output: &Output, t: &mut Track, mut buffer: gst::Buffer, at: u64) {
    let Some(input) = t.raw_input() else {
        return;
    };
    let duration = buffer.duration().map_or(0, |d| d.nseconds());
    {
        let b = buffer.make_mut();
        b.set_pts(gst::ClockTime::from_nseconds(at));
        b.set_dts(gst::ClockTime::NONE);
    }
    t.last_pts = Some(at);
    t.end = at + duration;
    output.clock_in(at);
    input.push(buffer);
}

/// Output bus messages that end a stream.
enum OutputEvent {
    /// The writer output is complete.
    Done,
    Failed,
}

fn output_event(msg: Option<&gst::Message>, name: &str) -> Option<OutputEvent> {
    let Some(msg) = msg else {
        return Some(OutputEvent::Failed);
    };
    match msg.view() {
        gst::MessageView::Error(err) => {
            let path = err
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default();
            tracing::warn!(stream = name, element = %path, debug = ?err.debug(), "output pipeline error: {}", err.error());
            Some(OutputEvent::Failed)
        }
        gst::MessageView::Application(a)
            if a.structure()
                .is_some_and(|s| s.name() == output::OUTPUT_EOS) =>
        {
            Some(OutputEvent::Done)
        }
        _ => None,
    }
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

struct FinishOnDrop(Arc<Hub>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The raw caps a stream encodes a track from: the first source's picture size, scaled into
/// `--max-width`×`--max-height` (aspect kept, even sizes), and its frame rate capped to `--max-fps`; audio
/// is always [`AUDIO_RATE`] stereo.
pub fn raw_caps(kind: TrackKind, caps: &gst::CapsRef, enc: &EncodeSettings) -> gst::Caps {
    if kind == TrackKind::Audio {
        return gst::Caps::builder("audio/x-raw")
            .field("format", "F32LE")
            .field("layout", "interleaved")
            .field("rate", AUDIO_RATE)
            .field("channels", AUDIO_CHANNELS)
            .build();
    }
    let s = caps.structure(0);
    let get = |f: &str| s.and_then(|s| s.get::<i32>(f).ok()).filter(|v| *v > 0);
    let par = s
        .and_then(|s| s.get::<gst::Fraction>("pixel-aspect-ratio").ok())
        .filter(|p| p.numer() > 0 && p.denom() > 0)
        .unwrap_or_else(|| gst::Fraction::new(1, 1));
    let (w, h) = (get("width").unwrap_or(640), get("height").unwrap_or(360));
    let w = f64::from(w) * f64::from(par.numer()) / f64::from(par.denom());
    let scale = 1f64
        .min(f64::from(enc.max_width) / w)
        .min(f64::from(enc.max_height) / f64::from(h));
    let even = |v: f64| (((v * scale) / 2.0).round() as i32 * 2).max(16);
    let max_fps = enc.max_fps.max(1) as i32;
    let fps = s
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(gst::Fraction::new(max_fps.min(30), 1), |f| {
            if f64::from(f.numer()) / f64::from(f.denom()) > f64::from(max_fps) {
                gst::Fraction::new(max_fps, 1)
            } else {
                f
            }
        });
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", even(w))
        .field("height", even(f64::from(h)))
        .field("framerate", fps)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build()
}

/// Whether a returning source's encoded track can be spliced into a passthrough track: same codec, size
/// and codec headers.
fn same_track(a: &gst::CapsRef, b: &gst::CapsRef) -> bool {
    let (Some(a), Some(b)) = (a.structure(0), b.structure(0)) else {
        return false;
    };
    a.name() == b.name()
        && [
            "width",
            "height",
            "rate",
            "channels",
            "streamheader",
            "codec_data",
        ]
        .iter()
        .all(|f| match (a.value(*f), b.value(*f)) {
            (Err(_), Err(_)) => true,
            // By value: buffers (codec_data, each streamheader buffer) by their bytes. Comparing how the values
            // print compared the buffers' addresses, so an encoder restarted with the same settings was refused.
            (Ok(x), Ok(y)) => x.compare(y) == Some(std::cmp::Ordering::Equal),
            _ => false,
        })
}

fn describe(caps: &gst::CapsRef) -> String {
    let Some(s) = caps.structure(0) else {
        return "unknown".into();
    };
    match (s.get::<i32>("width"), s.get::<i32>("height")) {
        (Ok(w), Ok(h)) => format!("{} {w}x{h}", s.name()),
        _ => s.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vorbis(headers: &[&[u8]]) -> gst::Caps {
        let array = gst::Array::new(headers.iter().map(|h| gst::Buffer::from_slice(h.to_vec())));
        gst::Caps::builder("audio/x-vorbis")
            .field("rate", 44_100i32)
            .field("channels", 2i32)
            .field("streamheader", array)
            .build()
    }

    /// Codec headers are compared by their bytes: two demuxers reading the same file make different buffer
    /// objects with equal contents, and an encoder restarted with the same settings must be taken back.
    #[test]
    fn same_track_compares_codec_headers_by_their_bytes() {
        gst::init().unwrap();
        let a = vorbis(&[b"\x01vorbis-id", b"\x03vorbis-comment", b"\x05vorbis-setup"]);
        let b = vorbis(&[b"\x01vorbis-id", b"\x03vorbis-comment", b"\x05vorbis-setup"]);
        assert!(same_track(&a, &b));
        let other = vorbis(&[b"\x01vorbis-id", b"\x03vorbis-comment", b"\x05other-setup"]);
        assert!(!same_track(&a, &other));
        let vp8 = |w: i32| {
            gst::Caps::builder("video/x-vp8")
                .field("width", w)
                .field("height", 240i32)
                .build()
        };
        assert!(same_track(&vp8(320), &vp8(320)));
        assert!(!same_track(&vp8(320), &vp8(640)));
    }
}
