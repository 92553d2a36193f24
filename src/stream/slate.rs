//! The fallback a stream shows while it has no source: a picture that names the stream and says it waits for
//! its source, at the stream's size and rate, and silence, so players keep playing both tracks.
//!
//! The picture is rendered once per fallback period by a short GStreamer pipeline (`videotestsrc ! textoverlay`)
//! and then re-stamped tick by tick: the stream's encoders see a steady raw input, so the slate costs one
//! encode of a still picture (cheap for VP8) and nothing else.

use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;

use super::{AUDIO_CHANNELS, AUDIO_RATE, Stream};
use crate::error::{Error, Result};
use crate::stream::webm::TrackKind;

/// Tick of an audio-only stream's slate.
const AUDIO_TICK: Duration = Duration::from_millis(40);
/// Bound on rendering the picture.
const RENDER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the slate while the stream is on its fallback.
pub async fn run(stream: Arc<Stream>) {
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
    let pipeline = gst::Pipeline::new();
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
    let _ = pipeline.set_state(gst::State::Null);
    let sample = sample.ok_or_else(|| Error::pipeline("the slate picture was not rendered"))?;
    let buffer = sample
        .buffer_owned()
        .ok_or_else(|| Error::pipeline("the slate picture has no buffer"))?;
    Ok(buffer)
}
