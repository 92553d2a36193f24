//! `transcast pipeline --input FILE`: the gst-launch-1.0 line equivalent to the pipeline a push of FILE
//! gets, so any stream can be reproduced and debugged by hand (`--run` runs it in-process).
//!
//! The daemon links branches in code as pads appear; gst-launch links them by name or caps instead
//! (`demux.video_0`, `demux. ! video/x-raw`), which is only safe once the tracks are known, so the file is
//! discovered first and only the tracks the daemon would use get a branch.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer_pbutils as pbutils;
use pbutils::prelude::*;

use crate::error::{Error, Result};
use crate::source::detect::{self, Probe};
use crate::templates::{Part, Templates};

const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchLine {
    /// The pipeline description (what `gst::parse::launch` takes).
    pub description: String,
}

impl LaunchLine {
    /// The line to paste into a shell. gst-launch-1.0 escapes the spaces inside each argument, so every
    /// word of the description must be its own shell word: `key="a b"` becomes `'key=a b'`.
    pub fn shell(&self) -> String {
        let mut out = String::from("gst-launch-1.0 -e");
        for word in words(&self.description) {
            out.push(' ');
            out.push_str(&shell_quote(&word));
        }
        out
    }

    /// Runs it to the end; returns the first error.
    pub fn run(&self) -> Result<()> {
        let pipeline = gst::parse::launch(&self.description)
            .map_err(|e| Error::pipeline(format!("parsing the launch line: {e}")))?;
        let pipeline = crate::stream::output::NullOnDrop(pipeline);
        pipeline.set_state(gst::State::Playing)?;
        let bus = pipeline.bus().expect("pipeline has a bus");
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::NONE,
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let result = match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(e)) => {
                let path = e
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                Err(Error::pipeline(format!("{path}: {}", e.error())))
            }
            _ => Ok(()),
        };
        drop(pipeline);
        result
    }
}

/// Splits a description on white space outside double quotes, unquoting `"..."` values.
fn words(description: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = description.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => cur.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn shell_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./=:,!@%+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn quote(path: &Path) -> String {
    format!(
        "\"{}\"",
        path.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// Builds the line for `input`, writing WebM to `output`.
pub fn describe(input: &Path, output: &Path, templates: &Templates) -> Result<LaunchLine> {
    let input = std::fs::canonicalize(input)
        .map_err(|e| Error::bad_request(format!("{}: {e}", input.display())))?;
    let data = std::fs::read(&input)
        .map_err(|e| Error::bad_request(format!("{}: {e}", input.display())))?;
    let head = &data[..data.len().min(detect::MAX_PROBE_BYTES)];
    let detected = match detect::probe(head, true) {
        Probe::Found(d) => d,
        Probe::Unsupported(m) => return Err(Error::unsupported(m)),
        Probe::NeedMore => unreachable!("complete input is always decided"),
    };
    let uri = glib::filename_to_uri(&input, None).map_err(|e| Error::bad_request(e.to_string()))?;
    let discoverer = pbutils::Discoverer::new(gst::ClockTime::from_nseconds(
        DISCOVER_TIMEOUT.as_nanos() as u64,
    ))?;
    let info = discoverer
        .discover_uri(&uri)
        .map_err(|e| Error::unsupported(format!("discovering {}: {e}", input.display())))?;
    let codec = |s: &pbutils::DiscovererStreamInfo| {
        s.caps()
            .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
            .unwrap_or_default()
    };
    let video = info.video_streams().first().map(|s| codec(s.upcast_ref()));
    let audio = info.audio_streams().first().map(|s| codec(s.upcast_ref()));
    if video.is_none() && audio.is_none() {
        return Err(Error::unsupported("the input has no audio or video track"));
    }

    let matroska = detected.container.is_matroska();
    let front = templates.text(if matroska {
        Part::DemuxMatroska
    } else {
        Part::Decode
    });
    let mut d = format!("filesrc location={} ! {front} name=demux", quote(&input));
    for (codec, is_video) in [(video, true), (audio, false)] {
        let Some(codec) = codec else { continue };
        let kind = if is_video { "video" } else { "audio" };
        let web = matches!(
            codec.as_str(),
            "video/x-vp8" | "video/x-vp9" | "audio/x-vorbis" | "audio/x-opus"
        );
        let (pass, enc) = if is_video {
            (Part::VideoPassthrough, templates.encoder(true))
        } else {
            (Part::AudioPassthrough, templates.encoder(false))
        };
        let branch = match (matroska, web) {
            (true, true) => format!("demux.{kind}_0 ! {}", templates.text(pass)),
            (true, false) => format!(
                "demux.{kind}_0 ! {} ! {}",
                templates.text(Part::Decode),
                templates.text(enc)
            ),
            (false, _) => format!("demux. ! {kind}/x-raw ! {}", templates.text(enc)),
        };
        // A named mux pad: a queue has ANY caps, and linking it by caps could take the wrong template.
        d.push_str(&format!("  {branch} ! mux.{kind}_0"));
    }
    d.push_str(&format!(
        "  {} name=mux ! filesink location={}",
        templates.text(Part::Mux),
        quote(output)
    ));
    Ok(LaunchLine { description: d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_line_has_one_word_per_token() {
        let l = LaunchLine {
            description:
                r#"filesrc location="/tmp/a b/it's.mp4" ! video/x-raw,width=[16,1280] ! fakesink"#
                    .into(),
        };
        assert_eq!(
            l.shell(),
            r#"gst-launch-1.0 -e filesrc 'location=/tmp/a b/it'\''s.mp4' ! 'video/x-raw,width=[16,1280]' ! fakesink"#
        );
    }
}
