//! Live DASH segments, cut from the stream's own output: the blocks the hub's publisher scans are regrouped per
//! track into short, complete, immutable WebM files that any HTTP cache can keep (no second encoder or muxer).
//!
//! ```text
//!  Publisher ─ header ─► one init per track (EBML, Segment, Info, Tracks with that track)
//!            ─ block ──► open segment: from a video keyframe until the first keyframe `--segment-seconds` later
//!                        (audio-only: by time); audio goes by its timestamp, so a segment waits (at most
//!                        AUDIO_WAIT) for audio that arrives late
//!                      ─► complete segment: per track one Cluster of known size, timecode = its start
//! ```
//!
//! One representation per track (players and ffmpeg's DASH reader want them apart), numbered consecutively from
//! 1 for the stream's life, the newest `window` of them kept. Times are stream milliseconds (the WebM timecode
//! scale), so the manifest's timeline is exact. The lock is its own, never held with the hub's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::stream::webm::{self, Chunk, TrackInfo, TrackKind, build};

/// How long a segment whose video is complete waits for audio that belongs to it.
const AUDIO_WAIT_MS: i64 = 1000;
/// A segment this long without a keyframe is dropped (block timecodes are 16-bit milliseconds from the
/// cluster's): the next starts at the next keyframe, and the timeline has a gap.
const MAX_SEGMENT_MS: i64 = 30_000;
/// Segments kept beyond the window (none: what the manifest no longer lists answers 404).
const KEEP_EXTRA: usize = 0;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_TIMECODE: u32 = 0xE7;

#[derive(Debug, Clone, Copy)]
pub struct SegmentConfig {
    /// Target duration: a segment ends at the first video keyframe this long after its start.
    pub target: Duration,
    /// Complete segments listed in the manifest.
    pub window: usize,
}

/// A representation: one track of the stream.
#[derive(Debug, Clone)]
pub struct Rep {
    /// `video` or `audio`: its id in the manifest and its URLs.
    pub id: &'static str,
    pub track: TrackInfo,
    pub init: Bytes,
}

/// A complete segment: one WebM Cluster per representation.
#[derive(Debug)]
pub struct Segment {
    pub number: u64,
    pub start_ms: i64,
    pub duration_ms: i64,
    pub completed: SystemTime,
    /// In the order of [`Listing::reps`].
    pub parts: Vec<Bytes>,
    /// Blocks (frames) per representation.
    pub frames: Vec<usize>,
    /// How often it was served (a cache in front should make this about 1).
    pub hits: AtomicU64,
}

/// What a manifest is made from.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Changes with every new stream of the same name, so a cache never mixes two streams' segments.
    pub instance: String,
    pub reps: Vec<Rep>,
    /// The newest `window` segments.
    pub segments: Vec<Listed>,
    /// Wall-clock time of stream time 0, fixed at the first segment.
    pub availability_start: SystemTime,
    pub ended: bool,
    pub target: Duration,
}

/// A segment as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub number: u64,
    pub start_ms: i64,
    pub duration_ms: i64,
    /// Bytes per representation.
    pub sizes: Vec<usize>,
    /// Frames per representation.
    pub frames: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct DashStats {
    pub manifests: AtomicU64,
    pub inits: AtomicU64,
    pub segments_served: AtomicU64,
    pub not_found: AtomicU64,
    pub published: AtomicU64,
    /// Blocks that came too late for any segment still open, or before the first one.
    pub late_blocks: AtomicU64,
}

#[derive(Debug)]
pub struct Segments {
    cfg: SegmentConfig,
    state: Mutex<State>,
    pub stats: DashStats,
}

#[derive(Debug)]
struct Block {
    pts_ms: i64,
    flags: u8,
    frame: Bytes,
}

#[derive(Debug)]
struct Open {
    start_ms: i64,
    /// Set once the next segment has started.
    end_ms: Option<i64>,
    /// Per representation.
    blocks: Vec<Vec<Block>>,
}

#[derive(Debug, Default)]
struct State {
    instance: String,
    reps: Vec<Rep>,
    availability_start: Option<SystemTime>,
    /// Video complete, still taking audio.
    closing: Option<Open>,
    open: Option<Open>,
    done: VecDeque<Arc<Segment>>,
    next_number: u64,
    last_pts_ms: i64,
    ended: bool,
}

impl Segments {
    pub fn new(cfg: SegmentConfig) -> Segments {
        Segments {
            cfg,
            state: Mutex::new(State {
                next_number: 1,
                ..State::default()
            }),
            stats: DashStats::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's header: one representation per track, video first.
    pub fn on_header(&self, header: &Bytes, tracks: &[TrackInfo]) {
        let mut reps = Vec::new();
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let Some(t) = tracks.iter().find(|t| t.kind == kind) else {
                continue;
            };
            let Some(init) = webm::track_init(header, t.number) else {
                tracing::warn!(track = t.number, "no DASH init segment for this track");
                continue;
            };
            reps.push(Rep {
                id: if kind == TrackKind::Video {
                    "video"
                } else {
                    "audio"
                },
                track: t.clone(),
                init,
            });
        }
        let mut st = self.state();
        st.reps = reps;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        st.instance = format!("{ms:x}");
    }

    /// A block of the stream's output.
    pub fn on_chunk(&self, c: &Chunk) {
        let mut st = self.state();
        let Some(rep) = st.reps.iter().position(|r| r.track.number == c.block.track) else {
            return;
        };
        let block = Block {
            pts_ms: c.block.pts_ns.div_euclid(1_000_000),
            flags: c.flags,
            frame: c.data.slice(c.frame.clone()),
        };
        st.last_pts_ms = st.last_pts_ms.max(block.pts_ms);
        let target = self.cfg.target.as_millis() as i64;
        let has_video = st.reps[0].track.kind == TrackKind::Video;
        if rep == 0 {
            // Every audio frame can start a segment.
            let keyframe = !has_video || block.flags & 0x80 != 0;
            let pts = block.pts_ms;
            match &st.open {
                None if !keyframe => return self.late(),
                None => st.open = Some(Open::new(pts, st.reps.len())),
                Some(o) if has_video && keyframe && pts >= o.start_ms + target => {
                    // A cut: what was open waits for its audio; a segment still waiting is complete now.
                    if let Some(c) = st.closing.take() {
                        self.publish(&mut st, c);
                    }
                    let mut o = st.open.take().expect("matched Some");
                    o.end_ms = Some(pts);
                    if has_video && st.reps.len() > 1 {
                        st.closing = Some(o);
                    } else {
                        self.publish(&mut st, o);
                    }
                    st.open = Some(Open::new(pts, st.reps.len()));
                }
                Some(o) if !has_video && pts >= o.start_ms + target => {
                    let mut o = st.open.take().expect("matched Some");
                    o.end_ms = Some(pts);
                    self.publish(&mut st, o);
                    st.open = Some(Open::new(pts, st.reps.len()));
                }
                Some(o) if pts - o.start_ms > MAX_SEGMENT_MS => {
                    tracing::warn!(
                        "DASH: no keyframe for {MAX_SEGMENT_MS} ms: segment dropped, the next starts at the next keyframe"
                    );
                    st.open = None;
                    return self.late();
                }
                Some(_) => {}
            }
            if st
                .closing
                .as_ref()
                .is_some_and(|c| pts >= c.end_ms.unwrap_or(i64::MAX) + AUDIO_WAIT_MS)
            {
                let c = st.closing.take().expect("checked");
                self.publish(&mut st, c);
            }
            let open = st.open.as_mut().expect("opened above");
            if pts >= open.start_ms {
                open.blocks[0].push(block);
            }
            return;
        }
        // Audio with video: by timestamp, into the segment it belongs to.
        let pts = block.pts_ms;
        if let Some(c) = st.closing.as_mut()
            && pts < c.end_ms.unwrap_or(i64::MAX)
        {
            if pts >= c.start_ms {
                c.blocks[rep].push(block);
            } else {
                self.late();
            }
            return;
        }
        match st.open.as_mut() {
            Some(o) if pts >= o.start_ms => o.blocks[rep].push(block),
            _ => return self.late(),
        }
        if let Some(c) = st.closing.take() {
            // Audio has passed the cut: the segment before it is complete.
            self.publish(&mut st, c);
        }
    }

    fn late(&self) {
        self.stats.late_blocks.fetch_add(1, Ordering::Relaxed);
    }

    /// The stream has ended: what is open is published as the last segment.
    pub fn finish(&self) {
        let mut st = self.state();
        if let Some(c) = st.closing.take() {
            self.publish(&mut st, c);
        }
        if let Some(mut o) = st.open.take() {
            // The last block's own duration is not known: a frame at 30 fps is a fair guess.
            o.end_ms = Some(st.last_pts_ms + 33);
            if o.blocks.iter().any(|b| !b.is_empty()) {
                self.publish(&mut st, o);
            }
        }
        st.ended = true;
    }

    fn publish(&self, st: &mut State, o: Open) {
        let end = o.end_ms.unwrap_or(o.start_ms);
        let parts = o
            .blocks
            .iter()
            .zip(&st.reps)
            .map(|(blocks, rep)| cluster(rep.track.number, o.start_ms, blocks))
            .collect();
        let segment = Segment {
            number: st.next_number,
            start_ms: o.start_ms,
            duration_ms: (end - o.start_ms).max(1),
            completed: SystemTime::now(),
            parts,
            frames: o.blocks.iter().map(Vec::len).collect(),
            hits: AtomicU64::new(0),
        };
        st.next_number += 1;
        if st.availability_start.is_none() {
            let end = Duration::from_millis(end.max(0) as u64);
            st.availability_start = Some(
                segment
                    .completed
                    .checked_sub(end)
                    .unwrap_or(segment.completed),
            );
        }
        st.done.push_back(Arc::new(segment));
        while st.done.len() > self.cfg.window + KEEP_EXTRA {
            st.done.pop_front();
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
    }

    /// What the manifest lists now; None before the first segment.
    pub fn listing(&self) -> Option<Listing> {
        let st = self.state();
        let skip = st.done.len().saturating_sub(self.cfg.window);
        let segments: Vec<_> = st
            .done
            .iter()
            .skip(skip)
            .map(|s| Listed {
                number: s.number,
                start_ms: s.start_ms,
                duration_ms: s.duration_ms,
                sizes: s.parts.iter().map(Bytes::len).collect(),
                frames: s.frames.clone(),
            })
            .collect();
        if segments.is_empty() {
            return None;
        }
        Some(Listing {
            instance: st.instance.clone(),
            reps: st.reps.clone(),
            segments,
            availability_start: st.availability_start?,
            ended: st.ended,
            target: self.cfg.target,
        })
    }

    /// The init segment of representation `rep` of stream instance `instance`.
    pub fn init(&self, instance: &str, rep: &str) -> Option<Bytes> {
        let st = self.state();
        if st.instance != instance {
            return None;
        }
        st.reps.iter().find(|r| r.id == rep).map(|r| r.init.clone())
    }

    /// Segment `number` of representation `rep`, and when it was completed; None when it is not (or no longer)
    /// kept, or not complete yet.
    pub fn segment(&self, instance: &str, rep: &str, number: u64) -> Option<(Bytes, SystemTime)> {
        let st = self.state();
        if st.instance != instance {
            return None;
        }
        let i = st.reps.iter().position(|r| r.id == rep)?;
        let s = st.done.iter().find(|s| s.number == number)?;
        s.hits.fetch_add(1, Ordering::Relaxed);
        Some((s.parts[i].clone(), s.completed))
    }

    /// The most any kept segment was served.
    pub fn max_hits(&self) -> u64 {
        let st = self.state();
        st.done
            .iter()
            .map(|s| s.hits.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

impl Open {
    fn new(start_ms: i64, reps: usize) -> Open {
        Open {
            start_ms,
            end_ms: None,
            blocks: (0..reps).map(|_| Vec::new()).collect(),
        }
    }
}

/// One track's blocks as a Cluster of known size whose timecode is `start_ms`.
fn cluster(track: u64, start_ms: i64, blocks: &[Block]) -> Bytes {
    let mut body = build::uint(ID_TIMECODE, start_ms.max(0) as u64);
    for b in blocks {
        let rel = (b.pts_ms - start_ms).clamp(0, i64::from(i16::MAX)) as i16;
        body.extend(build::simple_block(track, rel, b.flags, &b.frame));
    }
    Bytes::from(build::element(ID_CLUSTER, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::webm::build::*;

    fn header() -> Vec<u8> {
        test_header("A_VORBIS")
    }

    /// One block in a cluster of its own at `ms`, as the writer makes when timestamps go back.
    fn block(track: u8, ms: u64, key: bool) -> Vec<u8> {
        let mut c = open(0x1F43_B675);
        c.extend(uint(0xE7, ms));
        c.extend(element(
            0xA3,
            &[0x80 | track, 0, 0, if key { 0x80 } else { 0 }, track, 7],
        ));
        c
    }

    fn feed(s: &Segments, sc: &mut webm::Scanner, data: &[u8]) {
        sc.push(data, |ev| match ev {
            webm::Event::Header { data, tracks } => s.on_header(&data, &tracks),
            webm::Event::Chunk(c) => s.on_chunk(&c),
        })
        .unwrap();
    }

    /// Blocks of one segment's track, read back: (pts ms, keyframe).
    fn blocks_of(part: &[u8]) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        let mut sc = webm::Scanner::new();
        let mut data = header();
        data.extend_from_slice(part);
        sc.push(&data, |ev| {
            if let webm::Event::Chunk(c) = ev {
                out.push((c.block.pts_ns / 1_000_000, c.block.keyframe));
            }
        })
        .unwrap();
        out
    }

    /// Video keyframes every second, frames every 100 ms, audio every 50 ms arriving 300 ms late: segments start
    /// at keyframes two seconds apart, each track's blocks are the ones of its time span, numbers are consecutive.
    #[test]
    fn segments_start_at_keyframes_and_take_audio_by_its_time() {
        let s = Segments::new(SegmentConfig {
            target: Duration::from_secs(2),
            window: 3,
        });
        let mut sc = webm::Scanner::new();
        feed(&s, &mut sc, &header());
        let mut audio_next = 0;
        for ms in (0..15000).step_by(100) {
            feed(&s, &mut sc, &block(1, ms, ms % 1000 == 0));
            while audio_next + 300 <= ms {
                feed(&s, &mut sc, &block(2, audio_next, true));
                audio_next += 50;
            }
        }
        s.finish();
        let l = s.listing().expect("segments");
        assert_eq!(l.reps.len(), 2);
        assert_eq!(l.reps[0].id, "video");
        let spans: Vec<(u64, i64, i64)> = l
            .segments
            .iter()
            .map(|s| (s.number, s.start_ms, s.duration_ms))
            .collect();
        // 8 segments in all (0, 2, … 14 s; the last one cut short by the end), the newest 3 listed and kept.
        assert_eq!(
            spans,
            vec![(6, 10000, 2000), (7, 12000, 2000), (8, 14000, 933)]
        );
        for &(n, start, dur) in &spans {
            let (video, _) = s.segment(&l.instance, "video", n).unwrap();
            let v = blocks_of(&video);
            assert_eq!(v[0], (start, true), "segment {n} starts with a keyframe");
            assert!(v.iter().all(|&(t, _)| t >= start && t < start + dur));
            let (audio, _) = s.segment(&l.instance, "audio", n).unwrap();
            let a = blocks_of(&audio);
            assert!(!a.is_empty());
            assert!(
                a.iter().all(|&(t, _)| t >= start && t < start + dur),
                "{n}: {a:?}"
            );
        }
        // Every audio block of the listed span is in exactly one segment.
        let audio: usize = spans
            .iter()
            .map(|&(n, ..)| blocks_of(&s.segment(&l.instance, "audio", n).unwrap().0).len())
            .sum();
        assert_eq!(audio, (10000..audio_next).step_by(50).count());
        assert!(
            s.segment(&l.instance, "video", 5).is_none(),
            "past the window"
        );
        assert_eq!(
            l.segments[0].frames,
            vec![20, 40],
            "video at 10 fps, audio at 20 blocks a second"
        );
        assert!(s.segment("other", "video", 5).is_none(), "another instance");
        assert!(
            s.segment(&l.instance, "video", 1).is_none(),
            "out of the kept window"
        );
        let init = s.init(&l.instance, "audio").unwrap();
        let mut sc = webm::Scanner::new();
        let mut tracks = Vec::new();
        let mut data = init.to_vec();
        data.extend(open(0x1F43_B675));
        sc.push(&data, |ev| {
            if let webm::Event::Header { tracks: t, .. } = ev {
                tracks = t;
            }
        })
        .unwrap();
        assert_eq!(tracks.len(), 1, "the audio init has the audio track only");
        assert_eq!((tracks[0].number, tracks[0].kind), (2, TrackKind::Audio));
    }

    /// A segmenter fed a header with one track (number 1) of `kind`, `codec`.
    fn one_track(kind: u64, codec: &str) -> (Segments, webm::Scanner) {
        let s = Segments::new(SegmentConfig {
            target: Duration::from_secs(2),
            window: 10,
        });
        let mut sc = webm::Scanner::new();
        let mut h = element(0x1A45_DFA3, &uint(0x4282, 1));
        h.extend(open(0x1853_8067));
        let mut t = uint(0xD7, 1);
        t.extend(uint(0x83, kind));
        t.extend(string(0x86, codec));
        h.extend(element(0x1654_AE6B, &element(0xAE, &t)));
        feed(&s, &mut sc, &h);
        (s, sc)
    }

    /// (number, start, duration) of the listed segments.
    fn spans(l: &Listing) -> Vec<(u64, i64, i64)> {
        l.segments
            .iter()
            .map(|s| (s.number, s.start_ms, s.duration_ms))
            .collect()
    }

    /// Video-only streams: one representation, segments from keyframe to keyframe.
    #[test]
    fn video_only_is_cut_at_keyframes() {
        let (s, mut sc) = one_track(1, "V_VP8");
        // Keyframes every 1.5 s: the first at or after 2 s ends a segment.
        for ms in (0..7000).step_by(100) {
            feed(&s, &mut sc, &block(1, ms, ms % 1500 == 0));
        }
        let l = s.listing().unwrap();
        assert_eq!(l.reps.len(), 1);
        assert_eq!(spans(&l), vec![(1, 0, 3000), (2, 3000, 3000)]);
    }

    /// Audio-only streams are cut by time.
    #[test]
    fn audio_only_is_cut_by_time() {
        let (s, mut sc) = one_track(2, "A_OPUS");
        for ms in (0..5000).step_by(20) {
            feed(&s, &mut sc, &block(1, ms, true));
        }
        let l = s.listing().unwrap();
        assert_eq!(spans(&l), vec![(1, 0, 2000), (2, 2000, 2000)]);
        assert_eq!(l.reps[0].id, "audio");
    }
}
