//! A live WebM writer that emits each block as it arrives.
//!
//! `webmmux` (collectpads) holds every block until each other track has data, so with audio and video every
//! block waits for the other track's next packet (about 14 ms, see GSTREAMER-NOTES). Players only need each
//! track's timestamps in order, so this writer puts blocks in a cluster the moment they come, one appsink per
//! track feeding it:
//!
//! ```text
//!  track tee ─ appsink ─┐
//!  track tee ─ appsink ─┴─► WebmWriter ─► Publisher (scanner, hub)
//! ```
//!
//! The header (EBML, open Segment, Info, Tracks with CodecPrivate from the caps' `streamheader`) is written once
//! every announced track has shown its caps; blocks that come before are held, within [`MAX_HELD`]. A video
//! keyframe opens a new cluster (the join points clients start at) unless the cluster has no video yet: audio
//! that comes before the first picture stays in the cluster the keyframe then joins, so that cluster is the
//! stream's first join point and readers from the start get that audio. Audio-only streams get a cluster a
//! second. A block whose time is before its cluster's gets a negative relative timecode, which the format allows.

use bytes::{Bytes, BytesMut};
use gstreamer as gst;

use crate::stream::hub::Publisher;
use crate::stream::webm::build::{element, float, open, string, uint};
use crate::stream::webm::{ScanError, TrackKind};

/// Blocks held while waiting for the last track's caps; past this the header goes out without that track.
pub const MAX_HELD: usize = 512;
/// Audio-only streams start a cluster this often (every cluster is a join point there).
const AUDIO_CLUSTER_MS: i64 = 1000;

#[derive(Debug, Clone)]
struct Spec {
    kind: TrackKind,
    codec_id: &'static str,
    private: Option<Vec<u8>>,
    width: Option<i32>,
    height: Option<i32>,
    rate: Option<i32>,
    channels: Option<i32>,
}

#[derive(Debug)]
struct Track {
    kind: TrackKind,
    spec: Option<Spec>,
    /// Dropped from the header because its caps came too late.
    dropped: bool,
    eos: bool,
}

#[derive(Debug)]
struct Held {
    track: usize,
    pts_ms: i64,
    keyframe: bool,
    data: Bytes,
}

#[derive(Debug)]
pub struct WebmWriter {
    publisher: Publisher,
    tracks: Vec<Track>,
    /// The source has announced all its tracks (no-more-pads).
    complete: bool,
    header_written: bool,
    held: Vec<Held>,
    cluster_ms: Option<i64>,
    /// The open cluster has a video block.
    cluster_has_video: bool,
    out: BytesMut,
}

impl WebmWriter {
    pub fn new(publisher: Publisher) -> Self {
        WebmWriter {
            publisher,
            tracks: Vec::new(),
            complete: false,
            header_written: false,
            held: Vec::new(),
            cluster_ms: None,
            cluster_has_video: false,
            out: BytesMut::with_capacity(64 << 10),
        }
    }

    /// Announces a track; returns its index (its track number is index + 1).
    pub fn add_track(&mut self, kind: TrackKind) -> usize {
        self.tracks.push(Track {
            kind,
            spec: None,
            dropped: false,
            eos: false,
        });
        self.tracks.len() - 1
    }

    /// No more tracks will be announced.
    pub fn tracks_complete(&mut self) -> Result<(), ScanError> {
        self.complete = true;
        self.try_header()
    }

    /// Marks a track finished; returns true when every track is.
    pub fn end_track(&mut self, track: usize) -> Result<bool, ScanError> {
        self.tracks[track].eos = true;
        let all = self.complete && self.tracks.iter().all(|t| t.eos || t.dropped);
        if all && !self.header_written {
            self.write_header()?;
        }
        Ok(all)
    }

    /// One buffer of a track, with the caps it came with.
    pub fn push(
        &mut self,
        track: usize,
        caps: Option<&gst::CapsRef>,
        buffer: &gst::BufferRef,
    ) -> Result<(), ScanError> {
        if buffer.flags().contains(gst::BufferFlags::HEADER) {
            return Ok(()); // codec headers travel in CodecPrivate
        }
        if self.tracks[track].dropped {
            return Ok(());
        }
        if self.tracks[track].spec.is_none() {
            self.tracks[track].spec = caps.and_then(|c| spec_of(c, self.tracks[track].kind));
        }
        let Some(pts) = buffer.pts().or(buffer.dts()) else {
            return Ok(());
        };
        let map = buffer
            .map_readable()
            .map_err(|_| ScanError::Malformed("unreadable buffer"))?;
        let block = Held {
            track,
            pts_ms: (pts.nseconds() / 1_000_000) as i64,
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            data: Bytes::copy_from_slice(&map),
        };
        if !self.header_written {
            self.held.push(block);
            return self.try_header();
        }
        self.write_block(&block)
    }

    fn try_header(&mut self) -> Result<(), ScanError> {
        if self.header_written || !self.complete || self.tracks.is_empty() {
            return Ok(());
        }
        let waiting = self.tracks.iter().any(|t| t.spec.is_none() && !t.dropped);
        if waiting && self.held.len() < MAX_HELD {
            return Ok(());
        }
        self.write_header()
    }

    fn write_header(&mut self) -> Result<(), ScanError> {
        for t in self.tracks.iter_mut().filter(|t| t.spec.is_none()) {
            t.dropped = true;
        }
        let mut ebml = uint(0x4286, 1); // EBMLVersion
        ebml.extend(uint(0x42F7, 1)); // EBMLReadVersion
        ebml.extend(uint(0x42F2, 4)); // EBMLMaxIDLength
        ebml.extend(uint(0x42F3, 8)); // EBMLMaxSizeLength
        ebml.extend(string(0x4282, "webm")); // DocType
        ebml.extend(uint(0x4287, 4)); // DocTypeVersion
        ebml.extend(uint(0x4285, 2)); // DocTypeReadVersion
        let mut out = element(0x1A45_DFA3, &ebml);
        out.extend(open(0x1853_8067)); // Segment, unknown size
        let mut info = uint(0x2A_D7B1, 1_000_000); // TimecodeScale: ms
        info.extend(string(0x4D80, "transcast")); // MuxingApp
        info.extend(string(0x5741, "transcast")); // WritingApp
        out.extend(element(0x1549_A966, &info));
        let mut tracks = Vec::new();
        for (i, t) in self.tracks.iter().enumerate() {
            let Some(s) = &t.spec else { continue };
            let mut e = uint(0xD7, i as u64 + 1); // TrackNumber
            e.extend(uint(0x73C5, i as u64 + 1)); // TrackUID
            e.extend(uint(0x83, if s.kind == TrackKind::Video { 1 } else { 2 })); // TrackType
            e.extend(uint(0x9C, 0)); // FlagLacing off
            e.extend(string(0x86, s.codec_id));
            if let Some(p) = &s.private {
                e.extend(element(0x63A2, p)); // CodecPrivate
            }
            if s.kind == TrackKind::Video {
                let mut v = uint(0xB0, s.width.unwrap_or(0) as u64);
                v.extend(uint(0xBA, s.height.unwrap_or(0) as u64));
                e.extend(element(0xE0, &v));
            } else {
                let mut a = float(0xB5, f64::from(s.rate.unwrap_or(48_000)));
                a.extend(uint(0x9F, s.channels.unwrap_or(2) as u64));
                e.extend(element(0xE1, &a));
            }
            tracks.extend(element(0xAE, &e)); // TrackEntry
        }
        out.extend(element(0x1654_AE6B, &tracks));
        self.out.extend_from_slice(&out);
        self.header_written = true;
        // The header is only complete for the scanner once a cluster follows; flush with the held blocks.
        let held = std::mem::take(&mut self.held);
        for b in &held {
            if !self.tracks[b.track].dropped {
                self.write_block(b)?;
            }
        }
        self.flush()
    }

    fn write_block(&mut self, b: &Held) -> Result<(), ScanError> {
        let has_video = self
            .tracks
            .iter()
            .any(|t| t.kind == TrackKind::Video && !t.dropped);
        let is_video = self.tracks[b.track].kind == TrackKind::Video;
        let new_cluster = match self.cluster_ms {
            None => true,
            Some(c) => {
                let rel = b.pts_ms - c;
                (has_video && is_video && b.keyframe && self.cluster_has_video)
                    || (!has_video && rel >= AUDIO_CLUSTER_MS)
                    || rel > i64::from(i16::MAX)
                    || rel < i64::from(i16::MIN)
            }
        };
        if new_cluster {
            self.out.extend_from_slice(&open(0x1F43_B675));
            self.out
                .extend_from_slice(&uint(0xE7, b.pts_ms.max(0) as u64));
            self.cluster_ms = Some(b.pts_ms.max(0));
            self.cluster_has_video = false;
        }
        self.cluster_has_video |= is_video;
        let rel = (b.pts_ms - self.cluster_ms.unwrap_or(0)) as i16;
        let mut payload = Vec::with_capacity(b.data.len() + 4);
        payload.push(0x80 | (b.track as u8 + 1)); // track number as a 1-byte VINT
        payload.extend(rel.to_be_bytes());
        payload.push(if b.keyframe || !is_video { 0x80 } else { 0 });
        payload.extend_from_slice(&b.data);
        self.out.extend_from_slice(&element(0xA3, &payload)); // SimpleBlock
        self.flush()
    }

    fn flush(&mut self) -> Result<(), ScanError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let bytes = self.out.split();
        self.publisher.push(&bytes)
    }
}

/// What the header needs to know of a track, from its caps.
fn spec_of(caps: &gst::CapsRef, kind: TrackKind) -> Option<Spec> {
    let s = caps.structure(0)?;
    let codec_id = match s.name().as_str() {
        "video/x-vp8" => "V_VP8",
        "video/x-vp9" => "V_VP9",
        "audio/x-vorbis" => "A_VORBIS",
        "audio/x-opus" => "A_OPUS",
        _ => return None,
    };
    let headers: Vec<Vec<u8>> = s
        .get::<gst::ArrayRef>("streamheader")
        .ok()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.get::<gst::Buffer>().ok())
                .filter_map(|b| b.map_readable().ok().map(|m| m.to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let private = match codec_id {
        "A_VORBIS" => {
            if headers.len() < 3 {
                return None; // not decodable without its three header packets
            }
            Some(xiph_lace(&headers[..3]))
        }
        "A_OPUS" => headers.first().cloned(),
        _ => None,
    };
    Some(Spec {
        kind,
        codec_id,
        private,
        width: s.get("width").ok(),
        height: s.get("height").ok(),
        rate: s.get("rate").ok(),
        channels: s.get("channels").ok(),
    })
}

/// Vorbis CodecPrivate: packet count − 1, then Xiph-laced sizes of all but the last packet, then the packets.
fn xiph_lace(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![(packets.len() - 1) as u8];
    for p in &packets[..packets.len() - 1] {
        let mut n = p.len();
        while n >= 255 {
            out.push(255);
            n -= 255;
        }
        out.push(n as u8);
    }
    for p in packets {
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audio that arrives before the first picture (an encoder that starts late) must reach a reader that was
    /// there from the start: the first video keyframe joins the audio's cluster instead of opening its own.
    #[tokio::test]
    async fn audio_before_the_first_picture_reaches_readers_from_the_start() {
        use crate::config::JoinMode;
        use crate::stream::hub::{Hub, HubConfig};
        use std::time::Duration;

        gst::init().unwrap();
        let hub = Hub::new(
            "w",
            HubConfig {
                join: JoinMode::Gop,
                max_lag: Duration::from_secs(5),
                max_gop_bytes: 1 << 20,
                coalesce: Duration::ZERO,
                segments: crate::stream::segments::SegmentConfig {
                    target: Duration::from_secs(2),
                    window: 10,
                },
            },
        );
        let reader = {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut s = hub
                    .subscribe(
                        None,
                        tokio_util::sync::CancellationToken::new(),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while let Some(b) = s.next().await {
                    got.extend_from_slice(&b);
                }
                got
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut w = WebmWriter::new(Publisher::new(hub.clone()));
        let video = w.add_track(TrackKind::Video);
        let audio = w.add_track(TrackKind::Audio);
        w.tracks_complete().unwrap();
        let vcaps = gst::Caps::builder("video/x-vp8")
            .field("width", 320)
            .field("height", 240)
            .build();
        let acaps = gst::Caps::builder("audio/x-opus")
            .field("rate", 48000)
            .field("channels", 2)
            .build();
        let buffer = |ms: u64, tag: u8, delta: bool| {
            let mut b = gst::Buffer::from_slice(vec![tag; 8]);
            let bm = b.get_mut().unwrap();
            bm.set_pts(gst::ClockTime::from_mseconds(ms));
            if delta {
                bm.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            b
        };
        // Half a second of audio, then the pictures: a keyframe and two deltas.
        for (i, ms) in (0..500).step_by(20).enumerate() {
            w.push(audio, Some(&acaps), &buffer(ms, 0xA0 + i as u8, false))
                .unwrap();
        }
        w.push(video, Some(&vcaps), &buffer(0, 0x10, false))
            .unwrap();
        w.push(video, Some(&vcaps), &buffer(33, 0x11, true))
            .unwrap();
        w.push(video, Some(&vcaps), &buffer(66, 0x12, true))
            .unwrap();
        assert!(!w.end_track(video).unwrap());
        assert!(w.end_track(audio).unwrap());
        hub.finish();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        // Every audio block and every picture, parsed back.
        let mut blocks = Vec::new();
        let mut sc = crate::stream::webm::Scanner::new();
        sc.push(&got, |ev| {
            if let crate::stream::webm::Event::Chunk(c) = ev {
                blocks.push((c.block.track, c.block.keyframe));
            }
        })
        .unwrap();
        let audio_blocks = blocks.iter().filter(|b| b.0 == 2).count();
        let video_blocks: Vec<bool> = blocks.iter().filter(|b| b.0 == 1).map(|b| b.1).collect();
        assert_eq!(audio_blocks, 25, "{blocks:?}");
        assert_eq!(video_blocks, [true, false, false]);
    }

    #[test]
    fn xiph_lacing_of_vorbis_headers() {
        let laced = xiph_lace(&[vec![1; 30], vec![2; 300], vec![3; 5]]);
        assert_eq!(&laced[..4], &[2, 30, 255, 45]);
        assert_eq!(laced.len(), 4 + 30 + 300 + 5);
    }
}
