//! Input detection: typefinds the first bytes of an upload and decides which front the pipeline gets.
//!
//! Runs before any pipeline exists, so garbage or an unsupported type costs nothing but a 415. An MP4 whose
//! index (`moov`) follows its media (`mdat`) is refused with the fix, because qtdemux would buffer the whole
//! upload before the first frame (unbounded memory for a live proxy).

use gstreamer as gst;

/// Typefind waits for at least this much input (or the end of a shorter upload): several typefinders (MP3,
/// MPEG-TS) need a few frames or packets to be sure.
pub const MIN_PROBE_BYTES: usize = 4096;
/// Past this, whatever typefind says with at least "possible" confidence is taken, or the input refused.
pub const MAX_PROBE_BYTES: usize = 256 << 10;

/// Container families transcast accepts, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    Webm,
    Matroska,
    Mp4,
    Mpegts,
    Ogg,
    Flv,
    Mp3,
    Aac,
    Wav,
    Flac,
    Avi,
    Mpegps,
    Asf,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::Webm => "webm",
            Container::Matroska => "matroska",
            Container::Mp4 => "mp4",
            Container::Mpegts => "mpegts",
            Container::Ogg => "ogg",
            Container::Flv => "flv",
            Container::Mp3 => "mp3",
            Container::Aac => "aac",
            Container::Wav => "wav",
            Container::Flac => "flac",
            Container::Avi => "avi",
            Container::Mpegps => "mpegps",
            Container::Asf => "asf",
        }
    }

    /// Matroska-family input goes to the demuxer front, where web-codec tracks are passed through.
    pub fn is_matroska(self) -> bool {
        matches!(self, Container::Webm | Container::Matroska)
    }

    fn from_caps(caps: &gst::CapsRef) -> Option<Container> {
        let s = caps.structure(0)?;
        Some(match s.name().as_str() {
            "video/webm" | "audio/webm" => Container::Webm,
            "video/x-matroska" | "audio/x-matroska" => Container::Matroska,
            "video/quicktime" | "audio/x-m4a" | "video/x-3gp" => Container::Mp4,
            "video/mpegts" => Container::Mpegts,
            "application/ogg" | "audio/ogg" | "video/ogg" => Container::Ogg,
            "video/x-flv" => Container::Flv,
            "application/x-id3" | "application/x-apetag" => Container::Mp3,
            "audio/mpeg" => match s.get::<i32>("mpegversion").unwrap_or(1) {
                1 => Container::Mp3,
                _ => Container::Aac,
            },
            "audio/x-wav" => Container::Wav,
            "audio/x-flac" => Container::Flac,
            "video/x-msvideo" => Container::Avi,
            "video/mpeg" if s.get::<bool>("systemstream").unwrap_or(false) => Container::Mpegps,
            "video/x-ms-asf" => Container::Asf,
            _ => return None,
        })
    }
}

pub const SUPPORTED: &str = "WebM, Matroska, MP4/MOV (faststart or fragmented), MPEG-TS, MPEG-PS, Ogg, FLV, AVI, ASF, MP3, AAC (ADTS), WAV, FLAC";

#[derive(Debug, Clone)]
pub struct Detected {
    pub caps: gst::Caps,
    pub container: Container,
}

#[derive(Debug)]
pub enum Probe {
    /// Not sure yet: read more input.
    NeedMore,
    Found(Detected),
    /// Refused, with the reason for the client.
    Unsupported(String),
}

/// Typefinds `head`. `complete` says the upload has ended (no more bytes will come).
pub fn probe(head: &[u8], complete: bool) -> Probe {
    if head.is_empty() {
        return if complete {
            Probe::Unsupported("the request body is empty".into())
        } else {
            Probe::NeedMore
        };
    }
    let last_chance = complete || head.len() >= MAX_PROBE_BYTES;
    if head.len() < MIN_PROBE_BYTES && !last_chance {
        return Probe::NeedMore;
    }
    let found =
        gstreamer_base::functions::type_find_helper_for_data(None::<&gst::Object>, head).ok();
    let (caps, prob) = match found {
        Some((caps, prob))
            if prob >= gst::TypeFindProbability::Likely
                || (last_chance && prob >= gst::TypeFindProbability::Possible) =>
        {
            (caps, prob)
        }
        _ if !last_chance => return Probe::NeedMore,
        _ => {
            return Probe::Unsupported(format!(
                "could not recognise the input as a media container (looked at the first {} bytes); supported: {SUPPORTED}",
                head.len()
            ));
        }
    };
    let Some(container) = Container::from_caps(&caps) else {
        return Probe::Unsupported(format!(
            "input type {caps} is not supported; supported: {SUPPORTED}"
        ));
    };
    tracing::debug!(%caps, ?prob, bytes = head.len(), "input typefound");
    if container == Container::Mp4 {
        match mp4_layout(head) {
            Mp4Layout::Incomplete if !last_chance => return Probe::NeedMore,
            Mp4Layout::MdatFirst => {
                return Probe::Unsupported(
                    "this MP4 has its index (moov) after the media data (mdat), so nothing can play until the whole \
                     file has arrived; remux it first with `ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4` \
                     (or push fragmented MP4)"
                        .into(),
                );
            }
            _ => {}
        }
    }
    Probe::Found(Detected { caps, container })
}

#[derive(Debug, PartialEq, Eq)]
enum Mp4Layout {
    /// `moov` (or `moof`) comes before any `mdat`: streamable.
    IndexFirst,
    MdatFirst,
    Incomplete,
}

/// Walks the top-level ISO BMFF boxes until the first `moov`, `moof` or `mdat`.
fn mp4_layout(b: &[u8]) -> Mp4Layout {
    let mut off = 0usize;
    while off + 8 <= b.len() {
        let size32 = u32::from_be_bytes(b[off..off + 4].try_into().unwrap()) as u64;
        let kind = &b[off + 4..off + 8];
        match kind {
            b"moov" | b"moof" => return Mp4Layout::IndexFirst,
            b"mdat" => return Mp4Layout::MdatFirst,
            _ => {}
        }
        let size = match size32 {
            0 => return Mp4Layout::Incomplete, // box to end of file, and no index seen
            1 => {
                let Some(ext) = b.get(off + 8..off + 16) else {
                    return Mp4Layout::Incomplete;
                };
                u64::from_be_bytes(ext.try_into().unwrap())
            }
            n => n,
        };
        if size < 8 {
            return Mp4Layout::IndexFirst; // malformed: let the demuxer report it
        }
        off = match off.checked_add(size as usize) {
            Some(o) => o,
            None => return Mp4Layout::Incomplete,
        };
    }
    Mp4Layout::Incomplete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], len: u32) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.resize(len as usize, 0);
        v
    }

    #[test]
    fn mp4_layouts() {
        let mut fast = mp4_box(b"ftyp", 24);
        fast.extend(mp4_box(b"moov", 16));
        assert_eq!(mp4_layout(&fast), Mp4Layout::IndexFirst);
        let mut slow = mp4_box(b"ftyp", 24);
        slow.extend(mp4_box(b"free", 8));
        slow.extend(mp4_box(b"mdat", 64));
        assert_eq!(mp4_layout(&slow), Mp4Layout::MdatFirst);
        assert_eq!(
            mp4_layout(&mp4_box(b"ftyp", 24)[..20]),
            Mp4Layout::Incomplete
        );
    }

    #[test]
    fn garbage_and_empty_are_refused_once_complete() {
        gst::init().unwrap();
        let garbage: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(matches!(probe(&garbage[..100], false), Probe::NeedMore));
        assert!(matches!(probe(&garbage, true), Probe::Unsupported(_)));
        assert!(matches!(probe(&[], true), Probe::Unsupported(m) if m.contains("empty")));
    }

    #[test]
    fn text_is_not_media() {
        gst::init().unwrap();
        let text = "<html><body>hello</body></html>\n".repeat(200);
        match probe(text.as_bytes(), true) {
            Probe::Unsupported(m) => assert!(
                m.contains("not supported") || m.contains("recognise"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
