//! The stream with its tracks apart, for the low-latency player (`/player.js`): one response (`/live/{name}?format=tracks`)
//! that carries each track as a WebM of its own, in records the player hands to one Media Source Extensions
//! `SourceBuffer` per track.
//!
//! ```text
//!  Publisher ─ header ─► description record (JSON: tracks, MIME types), one init record per track
//!            ─ block ──► one record: [cluster start: Cluster (unknown size) + Timecode] + SimpleBlock
//! record = [index: u8][length: u32, big-endian][payload]        index 0xFF: the JSON description
//! ```
//!
//! Why not the muxed stream: Chromium's MSE refuses it as the writer writes it (blocks in arrival order, so a
//! cluster's audio may run behind its video), and Firefox plays the fix for that (a cluster whenever time goes
//! back) with many small gaps. Why not one response per track: two of a browser's six connections per host, and two
//! joins that need not agree. Per track, time only goes forward: video clusters start at keyframes, audio clusters
//! at the first audio after each video keyframe (so a reader that joins at a keyframe gets its audio from a
//! cluster start) and at least every [`AUDIO_CLUSTER_MS`].
//!
//! The records go through a hub of their own (the main hub's `split`, which the stream's publisher feeds with
//! what this makes), so readers get everything the main one gives: a join at the newest keyframe, skips, the lag
//! limit, the fan-out threads.

use bytes::Bytes;
use serde_json::json;

use crate::stream::webm::{self, Chunk, TrackInfo, TrackKind, build};

/// The `?format=` value of a split watch.
pub const FORMAT: &str = "tracks";
pub const CONTENT_TYPE: &str = "application/vnd.transcast.tracks";
/// The record index of the JSON description.
pub const DESCRIPTION: u8 = 0xFF;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 5;
/// Longest audio cluster: what a reader of an audio-only stream (or a long keyframe interval) gets at most
/// before the live edge when it joins.
pub const AUDIO_CLUSTER_MS: i64 = 1000;
/// A block's time is 16-bit milliseconds from its cluster's: a track this long without a new cluster gets one.
const MAX_CLUSTER_MS: i64 = 30_000;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_TIMECODE: u32 = 0xE7;

/// Turns the stream's header and blocks into the split stream's. Owned by the stream's publisher.
#[derive(Debug, Default)]
pub struct Splitter {
    feeds: Vec<Feed>,
}

#[derive(Debug)]
struct Feed {
    /// The track's number in the stream.
    number: u64,
    /// Its record index.
    index: u8,
    kind: TrackKind,
    /// The open cluster's timecode (ms).
    cluster_ms: Option<i64>,
    /// Audio: the next block starts a cluster (a video keyframe came).
    cut: bool,
}

impl Splitter {
    /// The stream's header → the split stream's: a description and one init per video and audio track.
    pub fn on_header(&mut self, header: &Bytes, tracks: &[TrackInfo]) -> Bytes {
        self.feeds.clear();
        let mut described = Vec::new();
        let mut inits = Vec::new();
        for t in tracks.iter().filter(|t| t.kind != TrackKind::Other) {
            let Some(init) = webm::track_init(header, t.number) else {
                tracing::warn!(
                    track = t.number,
                    "no init for this track: left out of the split stream"
                );
                continue;
            };
            let index = self.feeds.len() as u8;
            let kind = if t.kind == TrackKind::Video {
                "video"
            } else {
                "audio"
            };
            described.push(json!({
                "index": index,
                "kind": kind,
                "codec": t.codec_name(),
                "type": format!("{kind}/webm; codecs=\"{}\"", t.codec_name()),
                "width": t.width,
                "height": t.height,
            }));
            inits.push((index, init));
            self.feeds.push(Feed {
                number: t.number,
                index,
                kind: t.kind,
                cluster_ms: None,
                cut: false,
            });
        }
        let description = json!({ "tracks": described }).to_string();
        let mut data = record(DESCRIPTION, description.as_bytes());
        for (index, init) in inits {
            data.extend(record(index, &init));
        }
        Bytes::from(data)
    }

    /// A block of the stream → a record of its track's WebM (none for a video block before the track's first
    /// keyframe, or of a track left out).
    pub fn on_chunk(&mut self, c: &Chunk) -> Option<Chunk> {
        let i = self.feeds.iter().position(|f| f.number == c.block.track)?;
        let pts_ms = c.block.pts_ns.div_euclid(1_000_000).max(0);
        let video = self.feeds[i].kind == TrackKind::Video;
        let keyframe = c.flags & 0x80 != 0;
        let feed = &mut self.feeds[i];
        let start = match feed.cluster_ms {
            // A track's first cluster: video from a keyframe, so that its WebM is playable from its start.
            None if video && !keyframe => return None,
            None => true,
            Some(s) => {
                (video && keyframe)
                    || feed.cut
                    || pts_ms < s
                    || pts_ms - s > MAX_CLUSTER_MS
                    || (!video && pts_ms - s >= AUDIO_CLUSTER_MS)
            }
        };
        if start {
            feed.cluster_ms = Some(pts_ms);
            feed.cut = false;
        }
        let cluster_ms = feed.cluster_ms.expect("set above");
        let index = feed.index;
        let frame = &c.data[c.frame.clone()];
        let mut payload = Vec::with_capacity(frame.len() + 32);
        if start {
            payload.extend(build::open(ID_CLUSTER));
            payload.extend(build::uint(ID_TIMECODE, cluster_ms as u64));
        }
        let block =
            build::simple_block(c.block.track, (pts_ms - cluster_ms) as i16, c.flags, frame);
        // The frame ends the block, which ends the record.
        let frame_at = RECORD_HEADER + payload.len() + block.len() - frame.len();
        payload.extend(block);
        let data = Bytes::from(record(index, &payload));
        if video && keyframe {
            for f in self.feeds.iter_mut().filter(|f| f.kind == TrackKind::Audio) {
                f.cut = true;
            }
        }
        Some(Chunk {
            frame: frame_at..data.len(),
            data,
            cluster_start: start,
            block: c.block,
            flags: c.flags,
        })
    }
}

/// `[index][length][payload]`.
fn record(index: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.push(index);
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::hub::Hub;
    use crate::stream::webm::build::*;

    /// Parses records back: (index, payload).
    fn records(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
            out.push((b[0], b[5..5 + len].to_vec()));
            b = &b[5 + len..];
        }
        out
    }

    /// Block timecodes of each track's WebM (cluster timecode + relative), with the cluster starts marked.
    fn track_times(payloads: &[Vec<u8>]) -> (Vec<Chunk>, Vec<TrackInfo>) {
        let mut scanner = webm::Scanner::new();
        let mut chunks = Vec::new();
        let mut tracks = Vec::new();
        for p in payloads {
            scanner
                .push(p, |ev| match ev {
                    webm::Event::Header { tracks: t, .. } => tracks = t,
                    webm::Event::Chunk(c) => chunks.push(c),
                })
                .unwrap();
        }
        (chunks, tracks)
    }

    /// The stream as the writer writes it: audio up to 300 ms behind video in arrival order, in clusters that
    /// start at video keyframes.
    fn muxed() -> Vec<u8> {
        let mut out = test_header("A_OPUS");
        for gop in 0..3i64 {
            let start = gop * 1000;
            out.extend(open(0x1F43_B675));
            out.extend(uint(0xE7, start as u64));
            for f in 0..10i64 {
                let v = f * 100;
                out.extend(simple_block(
                    1,
                    v as i16,
                    if f == 0 { 0x80 } else { 0 },
                    &[1; 50],
                ));
                let a = v - 300;
                out.extend(simple_block(2, a as i16, 0x80, &[2; 20]));
            }
        }
        out
    }

    #[test]
    fn each_track_is_a_webm_whose_time_only_goes_forward() {
        let hub = Hub::new(
            "t",
            crate::stream::hub::HubConfig {
                join: crate::config::JoinMode::Gop,
                max_lag: std::time::Duration::from_secs(5),
                max_gop_bytes: 1 << 20,
                coalesce: std::time::Duration::ZERO,
                segments: crate::stream::segments::SegmentConfig {
                    target: std::time::Duration::from_secs(2),
                    window: 10,
                },
            },
        );
        let mut p = crate::stream::hub::Publisher::new(hub.clone());
        p.push(&muxed()).unwrap();
        let split = hub.split.clone().unwrap();
        let all = split.test_bytes();
        let recs = records(&all);
        let desc: serde_json::Value = serde_json::from_slice(&recs[0].1).unwrap();
        assert_eq!(recs[0].0, DESCRIPTION);
        assert_eq!(desc["tracks"][0]["type"], "video/webm; codecs=\"vp8\"");
        assert_eq!(desc["tracks"][1]["type"], "audio/webm; codecs=\"opus\"");
        for (index, kind) in [(0u8, TrackKind::Video), (1, TrackKind::Audio)] {
            let payloads: Vec<_> = recs
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, p)| p.clone())
                .collect();
            let (chunks, tracks) = track_times(&payloads);
            assert_eq!(tracks.len(), 1, "one track in its init");
            assert_eq!(tracks[0].kind, kind);
            let times: Vec<i64> = chunks.iter().map(|c| c.block.pts_ns / 1_000_000).collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{kind:?}: {times:?}"
            );
            // Every block kept its time (audio from the first cluster on: the one before started at -300 ms,
            // clamped to 0 in stream time).
            assert_eq!(chunks.len(), 30, "{kind:?}");
            let starts: Vec<i64> = chunks
                .iter()
                .filter(|c| c.cluster_start)
                .map(|c| c.block.pts_ns / 1_000_000)
                .collect();
            match kind {
                TrackKind::Video => assert_eq!(starts, [0, 1000, 2000]),
                // The first audio after each video keyframe.
                _ => assert_eq!(starts, [0, 700, 1700]),
            }
        }
        // A reader joining now starts at the newest keyframe, with audio from a cluster start.
        assert!(split.has_join_point());
    }
}
