//! Pipeline templates: gst-launch fragments in `pipelines/`, embedded in the binary and overridable file by
//! file with `--pipelines DIR`.
//!
//! A template may use `{placeholder}`s filled from operator settings ([`EncodeSettings`]); client input is
//! never put into a launch string. Every template is instantiated once at startup, so one that does not
//! parse or names an element that is not installed stops the daemon with that element's name.

use std::path::Path;

use gst::prelude::*;
use gstreamer as gst;

use crate::config::{AudioCodec, EncodeSettings, VideoCodec};
use crate::error::{Error, Result};

/// The parts a stream's pipeline is assembled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// One element with dynamic raw pads, for every non-Matroska input.
    Decode,
    /// One element with dynamic encoded pads, for Matroska/WebM input.
    DemuxMatroska,
    /// Raw → VP8 (`--video-codec vp8`).
    VideoEncode,
    /// Raw → Vorbis (`--audio-codec vorbis`).
    AudioEncode,
    VideoEncodeVp9,
    AudioEncodeOpus,
    VideoPassthrough,
    AudioPassthrough,
    /// One element with `video_%u`/`audio_%u` request pads.
    Mux,
    /// RTP branches, by the encoded codec they carry.
    RtpVp8,
    RtpVp9,
    RtpOpus,
    RtpVorbis,
}

impl Part {
    pub const ALL: [Part; 13] = [
        Part::Decode,
        Part::DemuxMatroska,
        Part::VideoEncode,
        Part::AudioEncode,
        Part::VideoEncodeVp9,
        Part::AudioEncodeOpus,
        Part::VideoPassthrough,
        Part::AudioPassthrough,
        Part::Mux,
        Part::RtpVp8,
        Part::RtpVp9,
        Part::RtpOpus,
        Part::RtpVorbis,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Part::Decode => "decode.pipeline",
            Part::DemuxMatroska => "demux-matroska.pipeline",
            Part::VideoEncode => "video-encode.pipeline",
            Part::AudioEncode => "audio-encode.pipeline",
            Part::VideoEncodeVp9 => "video-encode-vp9.pipeline",
            Part::AudioEncodeOpus => "audio-encode-opus.pipeline",
            Part::VideoPassthrough => "video-passthrough.pipeline",
            Part::AudioPassthrough => "audio-passthrough.pipeline",
            Part::Mux => "mux.pipeline",
            Part::RtpVp8 => "rtp-vp8.pipeline",
            Part::RtpVp9 => "rtp-vp9.pipeline",
            Part::RtpOpus => "rtp-opus.pipeline",
            Part::RtpVorbis => "rtp-vorbis.pipeline",
        }
    }

    fn embedded(self) -> &'static str {
        match self {
            Part::Decode => include_str!("../pipelines/decode.pipeline"),
            Part::DemuxMatroska => include_str!("../pipelines/demux-matroska.pipeline"),
            Part::VideoEncode => include_str!("../pipelines/video-encode.pipeline"),
            Part::AudioEncode => include_str!("../pipelines/audio-encode.pipeline"),
            Part::VideoEncodeVp9 => include_str!("../pipelines/video-encode-vp9.pipeline"),
            Part::AudioEncodeOpus => include_str!("../pipelines/audio-encode-opus.pipeline"),
            Part::VideoPassthrough => include_str!("../pipelines/video-passthrough.pipeline"),
            Part::AudioPassthrough => include_str!("../pipelines/audio-passthrough.pipeline"),
            Part::Mux => include_str!("../pipelines/mux.pipeline"),
            Part::RtpVp8 => include_str!("../pipelines/rtp-vp8.pipeline"),
            Part::RtpVp9 => include_str!("../pipelines/rtp-vp9.pipeline"),
            Part::RtpOpus => include_str!("../pipelines/rtp-opus.pipeline"),
            Part::RtpVorbis => include_str!("../pipelines/rtp-vorbis.pipeline"),
        }
    }

    /// Parts used as a single element (dynamic or request pads); the others become bins with ghost pads.
    fn is_single_element(self) -> bool {
        matches!(self, Part::Decode | Part::DemuxMatroska | Part::Mux)
    }
}

/// The filled launch text of every part.
#[derive(Debug, Clone)]
pub struct Templates {
    texts: Vec<(Part, String)>,
    /// The encoder parts the settings chose (video, audio).
    encoders: (Part, Part),
}

impl Templates {
    /// Reads the templates (embedded, or from `dir` where it has the file), fills the placeholders and
    /// instantiates each once to check it.
    pub fn load(dir: Option<&Path>, settings: &EncodeSettings) -> Result<Templates> {
        if let Some(d) = dir
            && !d.is_dir()
        {
            return Err(Error::pipeline(format!(
                "--pipelines {}: not a directory",
                d.display()
            )));
        }
        let values = settings.placeholders();
        let mut texts = Vec::new();
        for part in Part::ALL {
            let raw = match dir.map(|d| d.join(part.file_name())) {
                Some(path) if path.exists() => std::fs::read_to_string(&path).map_err(|e| {
                    Error::pipeline(format!("reading template {}: {e}", path.display()))
                })?,
                _ => part.embedded().to_string(),
            };
            let text = fill(&strip_comments(&raw), &values)
                .map_err(|e| Error::pipeline(format!("template {}: {e}", part.file_name())))?;
            texts.push((part, text));
        }
        let t = Templates {
            texts,
            encoders: (
                match settings.video_codec {
                    VideoCodec::Vp8 => Part::VideoEncode,
                    VideoCodec::Vp9 => Part::VideoEncodeVp9,
                },
                match settings.audio_codec {
                    AudioCodec::Vorbis => Part::AudioEncode,
                    AudioCodec::Opus => Part::AudioEncodeOpus,
                },
            ),
        };
        for part in Part::ALL {
            if part.is_single_element() {
                t.element(part)?;
            } else {
                t.bin(part)?;
            }
        }
        Ok(t)
    }

    /// The filled texts of the parts a source pipeline uses (for a worker process), by file name.
    pub fn source_texts(&self) -> Vec<(String, String)> {
        [
            Part::Decode,
            Part::DemuxMatroska,
            Part::VideoPassthrough,
            Part::AudioPassthrough,
        ]
        .into_iter()
        .map(|p| (p.file_name().to_string(), self.text(p).to_string()))
        .collect()
    }

    /// Templates from filled texts by file name (a worker's, from [`Templates::source_texts`]); the parts not
    /// given are the embedded ones, unfilled placeholders and all (a worker never builds them).
    pub fn from_texts(texts: &[(String, String)]) -> Result<Templates> {
        let mut all = Vec::new();
        for part in Part::ALL {
            let text = match texts.iter().find(|(name, _)| name == part.file_name()) {
                Some((_, t)) => t.clone(),
                None => strip_comments(part.embedded()),
            };
            all.push((part, text));
        }
        if let Some((name, _)) = texts
            .iter()
            .find(|(name, _)| !Part::ALL.iter().any(|p| p.file_name() == name))
        {
            return Err(Error::pipeline(format!("no template is called {name}")));
        }
        Ok(Templates {
            texts: all,
            encoders: (Part::VideoEncode, Part::AudioEncode),
        })
    }

    /// The part that encodes raw video (`video`) or audio in the codec the settings chose.
    pub fn encoder(&self, video: bool) -> Part {
        if video {
            self.encoders.0
        } else {
            self.encoders.1
        }
    }

    /// The filled gst-launch text of a part.
    pub fn text(&self, part: Part) -> &str {
        &self
            .texts
            .iter()
            .find(|(p, _)| *p == part)
            .expect("all parts loaded")
            .1
    }

    /// Instantiates a single-element part.
    pub fn element(&self, part: Part) -> Result<gst::Element> {
        let el = self.parse(part, |text, ctx| {
            gst::parse::launch_full(text, Some(ctx), gst::ParseFlags::FATAL_ERRORS)
        })?;
        // Several elements come back wrapped in a pipeline; one comes back as itself.
        if el.is::<gst::Pipeline>() {
            return Err(Error::pipeline(format!(
                "template {} must be a single element",
                part.file_name()
            )));
        }
        Ok(el)
    }

    /// Instantiates a chain part as a bin with one `sink` and one `src` ghost pad.
    pub fn bin(&self, part: Part) -> Result<gst::Bin> {
        let bin = self.parse(part, |text, ctx| {
            gst::parse::bin_from_description_full(
                text,
                true,
                Some(ctx),
                gst::ParseFlags::FATAL_ERRORS,
            )
        })?;
        let bin = bin.downcast::<gst::Bin>().map_err(|_| {
            Error::pipeline(format!("template {} is not a chain", part.file_name()))
        })?;
        if bin.static_pad("sink").is_none() || bin.static_pad("src").is_none() {
            return Err(Error::pipeline(format!(
                "template {} must be a chain with one free input and one free output",
                part.file_name()
            )));
        }
        Ok(bin)
    }

    fn parse(
        &self,
        part: Part,
        f: impl FnOnce(&str, &mut gst::ParseContext) -> Result<gst::Element, glib::Error>,
    ) -> Result<gst::Element> {
        let mut ctx = gst::ParseContext::new();
        f(self.text(part), &mut ctx).map_err(|e| {
            let missing = ctx.missing_elements();
            if missing.is_empty() {
                Error::pipeline(format!("template {}: {e}", part.file_name()))
            } else {
                Error::pipeline(format!(
                    "template {} needs GStreamer element(s) that are not installed: {}",
                    part.file_name(),
                    missing.join(", ")
                ))
            }
        })
    }
}

fn strip_comments(raw: &str) -> String {
    raw.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fill(text: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = text.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    // Caps lists use `{ A, B }`; a leftover `{lowercase_word}` is a placeholder nobody fills.
    let mut rest = out.as_str();
    while let Some(i) = rest.find('{') {
        let tail = &rest[i + 1..];
        if let Some(j) = tail.find('}') {
            let word = &tail[..j];
            if !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(format!("unknown placeholder {{{word}}}"));
            }
        }
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn embedded_templates_load_and_fill() {
        init();
        let t = Templates::load(None, &EncodeSettings::default()).unwrap();
        let v = t.text(Part::VideoEncode);
        assert!(v.contains("width=[16,1280]"), "{v}");
        assert!(v.contains("keyframe-max-dist=30"), "{v}");
        assert!(!v.contains('#'));
        assert_eq!(t.text(Part::Mux), "webmmux streamable=true");
    }

    #[test]
    fn override_dir_replaces_single_files() {
        init();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mux.pipeline"),
            "# mine\nwebmmux streamable=true min-cluster-duration=0\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path()), &EncodeSettings::default()).unwrap();
        assert!(t.text(Part::Mux).ends_with("min-cluster-duration=0"));
        assert!(t.text(Part::VideoEncode).contains("vp8enc"));
    }

    #[test]
    fn missing_element_is_named() {
        init();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("video-encode.pipeline"),
            "queue ! nosuchencoder9000",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path()), &EncodeSettings::default()).unwrap_err();
        assert!(e.message.contains("nosuchencoder9000"), "{}", e.message);
        assert!(e.message.contains("video-encode.pipeline"), "{}", e.message);
    }

    #[test]
    fn unparsable_template_and_unknown_placeholder_fail() {
        init();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("audio-encode.pipeline"),
            "queue ! ! vorbisenc",
        )
        .unwrap();
        assert!(Templates::load(Some(dir.path()), &EncodeSettings::default()).is_err());
        std::fs::write(
            dir.path().join("audio-encode.pipeline"),
            "vorbisenc quality={qualty}",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path()), &EncodeSettings::default()).unwrap_err();
        assert!(e.message.contains("{qualty}"), "{}", e.message);
    }

    #[test]
    fn caps_lists_are_not_placeholders() {
        assert!(fill("video/x-raw,format={ I420, NV12 }", &[]).is_ok());
    }
}
