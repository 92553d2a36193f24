//! The fallback a stream shows while it has no source: a picture that names the stream and says it waits for
//! its source, at the stream's size and rate, and silence, so players keep playing both tracks; or, with
//! `--fallback FILE`, that file, looped.
//!
//! The picture is rendered once per fallback period by a short GStreamer pipeline (`videotestsrc ! textoverlay`)
//! and then re-stamped tick by tick: the stream's encoders see a steady raw input, so the slate costs one
//! encode of a still picture (cheap for VP8) and nothing else. A file plays in real time through
//! `filesrc ! decodebin ! conform ! appsink sync=true`, once per loop iteration, each iteration stamped to
//! continue the stream; one that fails (or is empty) falls back to the picture.

use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;

use super::output::NullOnDrop;
use super::{AUDIO_CHANNELS, AUDIO_RATE, Stream};
use crate::config::Fallback;
use crate::error::{Error, Result};
use crate::stream::webm::TrackKind;

/// Tick of an audio-only stream's slate.
const AUDIO_TICK: Duration = Duration::from_millis(40);
/// Bound on rendering the picture.
const RENDER_TIMEOUT: Duration = Duration::from_secs(5);

/// A loop iteration shorter than this is an empty or broken file: the picture is shown instead.
const MIN_ITERATION: Duration = Duration::from_millis(200);
/// How often a playing file iteration looks whether the stream is still on its fallback.
const FILE_POLL: Duration = Duration::from_millis(100);

/// Runs the fallback while the stream is on it.
pub async fn run(stream: Arc<Stream>) {
    if let Fallback::File(path) = &stream.settings.fallback {
        let path = path.clone();
        for iteration in 1u64.. {
            let (s, p) = (stream.clone(), path.clone());
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || play_file(&s, &p, iteration)).await {
                Ok(Ok(true)) if started.elapsed() >= MIN_ITERATION => continue,
                Ok(Ok(false)) => return,
                Ok(Ok(true)) => tracing::warn!(stream = %stream.name, file = %path.display(),
                    "the fallback file played for less than {MIN_ITERATION:?}: showing the slate picture"),
                Ok(Err(e)) => tracing::warn!(stream = %stream.name, file = %path.display(),
                    "the fallback file failed: {}; showing the slate picture", e.message),
                Err(_) => {}
            }
            break;
        }
    }
    still(stream).await;
}

/// Plays the fallback file once in real time into the stream. Ok(true) when it reached its end with the
/// stream still on its fallback.
fn play_file(stream: &Arc<Stream>, path: &std::path::Path, iteration: u64) -> Result<bool> {
    let tracks = stream.raw_tracks();
    let pipeline = NullOnDrop(gst::Pipeline::with_name(&format!(
        "fallback-{}-{iteration}",
        stream.name
    )));
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path)
        .build()?;
    let decode = gst::ElementFactory::make("decodebin").build()?;
    pipeline.add_many([&src, &decode])?;
    src.link(&decode)?;
    let weak = pipeline.downgrade();
    let taken = std::sync::Mutex::new(Vec::<TrackKind>::new());
    let s = stream.clone();
    decode.connect_pad_added(move |el, pad| {
        super::output::no_panic(el, "pad-added", (), || {
            link_any(&weak, &taken, &tracks, &s, pad, iteration)
        })
    });
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline.set_state(gst::State::Playing)?;
    let result = loop {
        if stream.state() != super::State::Fallback {
            break Ok(false);
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(FILE_POLL.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(true),
            gst::MessageView::Error(e) => break Err(Error::pipeline(e.error().to_string())),
            _ => {}
        }
    };
    drop(pipeline);
    result
}

/// A pad of the fallback file's decodebin: the first of each kind the stream has goes to it, the rest nowhere.
fn link_any(
    weak: &glib::WeakRef<gst::Pipeline>,
    taken: &std::sync::Mutex<Vec<TrackKind>>,
    tracks: &[(TrackKind, gst::Caps)],
    s: &Arc<Stream>,
    pad: &gst::Pad,
    iteration: u64,
) {
    let Some(pipeline) = weak.upgrade() else {
        return;
    };
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    let kind = match caps.structure(0).map(|s| s.name().to_string()) {
        Some(n) if n.starts_with("video/") => TrackKind::Video,
        Some(n) if n.starts_with("audio/") => TrackKind::Audio,
        _ => TrackKind::Other,
    };
    let wanted = tracks
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, c)| c.clone());
    let first = taken
        .lock()
        .map(|mut t| {
            !t.contains(&kind) && {
                t.push(kind);
                true
            }
        })
        .unwrap_or(false);
    let linked = match wanted.filter(|_| first) {
        Some(caps) => link_file_track(&pipeline, pad, kind, &caps, s.clone(), iteration),
        None => super::output::discard(&pipeline, pad),
    };
    if let Err(e) = linked {
        gst::element_error!(
            pipeline,
            gst::CoreError::Negotiation,
            ("fallback file: {}", e.message)
        );
    }
}

/// decodebin pad ─ conform (the stream's caps) ─ appsink (real time) ─► the stream.
fn link_file_track(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    kind: TrackKind,
    caps: &gst::Caps,
    stream: Arc<Stream>,
    iteration: u64,
) -> Result<()> {
    let conform = super::output::conform(kind, caps)?;
    let sink = gst_app::AppSink::builder().sync(true).build();
    sink.set_property("enable-last-sample", false);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let on = sample
                    .buffer_owned()
                    .is_none_or(|b| stream.push_file(iteration, kind, b));
                if on {
                    Ok(gst::FlowSuccess::Ok)
                } else {
                    Err(gst::FlowError::Eos)
                }
            })
            .build(),
    );
    pipeline.add(&conform)?;
    pipeline.add(&sink)?;
    conform.link(&sink)?;
    sink.sync_state_with_parent()?;
    conform.sync_state_with_parent()?;
    pad.link(&conform.static_pad("sink").expect("ghosted by parse"))
        .map_err(|e| Error::pipeline(format!("linking the fallback file's track: {e:?}")))?;
    Ok(())
}

/// The still picture and silence, tick by tick, while the stream is on its fallback.
async fn still(stream: Arc<Stream>) {
    let tracks = stream.raw_tracks();
    let name = stream.name.clone();
    let frames = match tokio::task::spawn_blocking(move || frames(&name, &tracks)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::warn!(stream = %stream.name, "cannot make the slate: {}", e.message);
            stream.end();
            return;
        }
        Err(_) => {
            stream.end();
            return;
        }
    };
    let tick = frames
        .iter()
        .find(|(k, _)| *k == TrackKind::Video)
        .and_then(|(_, b)| b.duration())
        .map_or(AUDIO_TICK, |d| Duration::from_nanos(d.nseconds()));
    // Stamped one tick after another from where the stream is, and sent on the wall clock's beat (a late
    // tick is made up at once), so the stream's time keeps pace with real time.
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        if !stream.push_slate(&frames) {
            break;
        }
    }
}

/// One tick of every raw track: the picture, and silence as long as one picture.
fn frames(name: &str, tracks: &[(TrackKind, gst::Caps)]) -> Result<Vec<(TrackKind, gst::Buffer)>> {
    let video = tracks.iter().find(|(k, _)| *k == TrackKind::Video);
    let tick = match video {
        Some((_, caps)) => caps
            .structure(0)
            .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
            .filter(|f| f.numer() > 0)
            .map_or(Duration::from_millis(33), |f| {
                Duration::from_nanos((1_000_000_000u64 * f.denom() as u64) / f.numer() as u64)
            }),
        None => AUDIO_TICK,
    };
    let mut out = Vec::new();
    for (kind, caps) in tracks {
        let mut buffer = match kind {
            TrackKind::Video => picture(name, caps)?,
            TrackKind::Audio | TrackKind::Other => {
                let samples = (AUDIO_RATE as u64 * tick.as_nanos() as u64 / 1_000_000_000) as usize;
                gst::Buffer::from_mut_slice(vec![0u8; samples * AUDIO_CHANNELS as usize * 4])
            }
        };
        buffer
            .make_mut()
            .set_duration(gst::ClockTime::from_nseconds(tick.as_nanos() as u64));
        out.push((*kind, buffer));
    }
    Ok(out)
}

/// Renders the slate picture in `caps` (raw I420 at the stream's size).
fn picture(name: &str, caps: &gst::Caps) -> Result<gst::Buffer> {
    let pipeline = NullOnDrop(gst::Pipeline::new());
    let src = gst::ElementFactory::make("videotestsrc")
        .property_from_str("pattern", "black")
        .property("num-buffers", 1i32)
        .build()?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()?;
    let sink = gst_app::AppSink::builder().sync(false).build();
    pipeline.add_many([&src, &filter])?;
    pipeline.add(&sink)?;
    // The text is optional: without the pango plugin the slate is a plain picture.
    match gst::ElementFactory::make("textoverlay")
        .property("text", format!("{name}\nwaiting for its source"))
        .property_from_str("valignment", "center")
        .property_from_str("halignment", "center")
        .property("font-desc", "Sans Bold 20")
        .build()
    {
        Ok(text) => {
            pipeline.add(&text)?;
            gst::Element::link_many([&src, &filter, &text, sink.upcast_ref()])?;
        }
        Err(_) => {
            tracing::info!("textoverlay is not installed: the slate has no text");
            gst::Element::link_many([&src, &filter, sink.upcast_ref()])?;
        }
    }
    pipeline.set_state(gst::State::Playing)?;
    let sample = sink.try_pull_sample(gst::ClockTime::from_nseconds(
        RENDER_TIMEOUT.as_nanos() as u64
    ));
    drop(pipeline);
    let sample = sample.ok_or_else(|| Error::pipeline("the slate picture was not rendered"))?;
    let buffer = sample
        .buffer_owned()
        .ok_or_else(|| Error::pipeline("the slate picture has no buffer"))?;
    Ok(buffer)
}
