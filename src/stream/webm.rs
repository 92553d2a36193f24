//! WebM byte-stream scanner.
//!
//! The muxer's output is cut here, once per stream, into what the fan-out needs:
//!
//! ```text
//!  EBML | Segment(open) Info Tracks | Cluster Timecode Block | Block | Block | Cluster Timecode Block | ...
//!  \_________ header _____________/  \_______ chunk ______/  \chunk/ \chunk/  \_______ chunk ______/
//! ```
//!
//! One chunk per complete block (SimpleBlock or BlockGroup) with whatever preceded it, so a client costs one
//! write per frame however many tiny buffers the muxer pushed. Each chunk says whether it opens a cluster and
//! what block it ends with (track, keyframe bit, timestamp), so the hub can find clusters whose first video
//! block is a keyframe: the only safe places for a client to join. Only the muxer's own output is scanned,
//! but the scanner still refuses absurd element sizes rather than buffering without bound.

use bytes::{Bytes, BytesMut};

const ID_EBML: u32 = 0x1A45_DFA3;
const ID_SEGMENT: u32 = 0x1853_8067;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_INFO: u32 = 0x1549_A966;
const ID_TIMECODE_SCALE: u32 = 0x2A_D7B1;
const ID_TRACKS: u32 = 0x1654_AE6B;
const ID_TRACK_ENTRY: u32 = 0xAE;
const ID_TRACK_NUMBER: u32 = 0xD7;
const ID_TRACK_TYPE: u32 = 0x83;
const ID_CODEC_ID: u32 = 0x86;
const ID_VIDEO: u32 = 0xE0;
const ID_PIXEL_WIDTH: u32 = 0xB0;
const ID_PIXEL_HEIGHT: u32 = 0xBA;
const ID_AUDIO: u32 = 0xE1;
const ID_SAMPLING_FREQUENCY: u32 = 0xB5;
const ID_CHANNELS: u32 = 0x9F;
const ID_CLUSTER_TIMECODE: u32 = 0xE7;
const ID_SIMPLE_BLOCK: u32 = 0xA3;
const ID_BLOCK_GROUP: u32 = 0xA0;
const ID_BLOCK: u32 = 0xA1;
const ID_REFERENCE_BLOCK: u32 = 0xFB;
/// Segment children that end an unknown-sized cluster.
const SEGMENT_LEVEL: [u32; 7] = [
    ID_INFO,
    ID_TRACKS,
    0x114D_9B74, // SeekHead
    0x1C53_BB6B, // Cues
    0x1254_C367, // Tags
    0x1043_A770, // Chapters
    0x1941_A469, // Attachments
];

/// Larger elements are refused: a 1080p keyframe is a few hundred KiB, so this is far beyond any real block
/// and keeps a corrupt size field from making the scanner buffer for ever.
pub const MAX_ELEMENT_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
    Other,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrackInfo {
    pub number: u64,
    pub kind: TrackKind,
    pub codec: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
}

impl TrackInfo {
    /// The codec as the API, manifests and browsers name it: `vp8`, `vp9`, `vorbis`, `opus`.
    pub fn codec_name(&self) -> String {
        match self.codec.as_str() {
            "V_VP8" => "vp8".into(),
            "V_VP9" => "vp9".into(),
            "A_VORBIS" => "vorbis".into(),
            "A_OPUS" => "opus".into(),
            other => other.to_ascii_lowercase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub track: u64,
    pub keyframe: bool,
    /// Presentation time in nanoseconds (cluster timecode + block offset, times the timecode scale).
    pub pts_ns: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub data: Bytes,
    /// The chunk begins with a Cluster element header.
    pub cluster_start: bool,
    pub block: BlockInfo,
    /// Where in `data` the block's frame is (what follows its flags byte; lace headers included).
    pub frame: std::ops::Range<usize>,
    /// The block's flags as a SimpleBlock's (keyframe bit set for a BlockGroup's unreferenced Block).
    pub flags: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Everything before the first cluster: EBML header, Segment start, Info, Tracks.
    Header {
        data: Bytes,
        tracks: Vec<TrackInfo>,
    },
    Chunk(Chunk),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error(
        "WebM element 0x{id:X} of {size} bytes is larger than the {MAX_ELEMENT_BYTES} byte limit"
    )]
    TooLarge { id: u32, size: u64 },
    #[error("malformed WebM: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Segment,
    /// Inside a cluster; `end` is its absolute end offset when its size is known.
    Cluster {
        end: Option<u64>,
    },
}

#[derive(Debug)]
pub struct Scanner {
    /// Bytes not yet handed out as header or chunk.
    buf: BytesMut,
    /// Parsed up to here within `buf`.
    pos: usize,
    /// Absolute stream offset of `buf[0]`.
    base: u64,
    level: Level,
    header_sent: bool,
    cluster_pending: bool,
    cluster_timecode: u64,
    timecode_scale_ns: u64,
    tracks: Vec<TrackInfo>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            buf: BytesMut::with_capacity(64 << 10),
            pos: 0,
            base: 0,
            level: Level::Top,
            header_sent: false,
            cluster_pending: false,
            cluster_timecode: 0,
            timecode_scale_ns: 1_000_000,
            tracks: Vec::new(),
        }
    }

    pub fn tracks(&self) -> &[TrackInfo] {
        &self.tracks
    }

    /// Feeds muxer output; calls `emit` for each header/chunk completed by it.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(Event)) -> Result<(), ScanError> {
        self.buf.extend_from_slice(data);
        while let Some(ev) = self.step()? {
            if let Some(ev) = ev {
                emit(ev);
            }
        }
        Ok(())
    }

    /// One parse step: `Ok(None)` when more input is needed, `Ok(Some(None))` when progress was made
    /// without output.
    fn step(&mut self) -> Result<Option<Option<Event>>, ScanError> {
        let abs = self.base + self.pos as u64;
        if let Level::Cluster { end: Some(end) } = self.level
            && abs >= end
        {
            self.level = Level::Segment;
        }
        let rest = &self.buf[self.pos..];
        let Some((id, id_len)) = read_id(rest) else {
            return Ok(None);
        };
        let Some((size, size_len)) = read_size(&rest[id_len..]) else {
            return Ok(None);
        };
        let head = id_len + size_len;
        if id == 0 {
            return Err(ScanError::Malformed("invalid element ID"));
        }
        match (self.level, id) {
            (Level::Top, ID_SEGMENT) => {
                self.pos += head;
                self.level = Level::Segment;
                Ok(Some(None))
            }
            (Level::Segment | Level::Cluster { .. }, ID_CLUSTER) => {
                let mut out = None;
                if !self.header_sent {
                    let data = self.buf.split_to(self.pos).freeze();
                    self.base += data.len() as u64;
                    self.pos = 0;
                    self.header_sent = true;
                    out = Some(Event::Header {
                        data,
                        tracks: self.tracks.clone(),
                    });
                }
                let start = self.base + self.pos as u64;
                self.pos += head;
                self.cluster_pending = true;
                self.level = Level::Cluster {
                    end: size.map(|s| start + head as u64 + s),
                };
                Ok(Some(out))
            }
            (Level::Cluster { end: None }, id) if SEGMENT_LEVEL.contains(&id) => {
                self.level = Level::Segment;
                Ok(Some(None))
            }
            (level, id) => {
                let Some(size) = size else {
                    return Err(ScanError::Malformed("unknown size outside Segment/Cluster"));
                };
                if size > MAX_ELEMENT_BYTES {
                    return Err(ScanError::TooLarge { id, size });
                }
                let total = head + size as usize;
                if rest.len() < total {
                    return Ok(None);
                }
                let payload = &rest[head..total];
                let mut block = None;
                match id {
                    ID_EBML => {}
                    ID_INFO => {
                        if let Some(v) = child_uint(payload, ID_TIMECODE_SCALE) {
                            self.timecode_scale_ns = v.max(1);
                        }
                    }
                    ID_TRACKS => self.tracks = parse_tracks(payload),
                    ID_CLUSTER_TIMECODE if matches!(level, Level::Cluster { .. }) => {
                        self.cluster_timecode = read_uint(payload);
                    }
                    ID_SIMPLE_BLOCK => {
                        block = parse_block(payload, true).zip(block_frame(payload, true));
                    }
                    ID_BLOCK_GROUP => {
                        block = parse_block_group(payload).zip(block_frame(payload, false));
                    }
                    _ => {}
                }
                self.pos += total;
                let Some(((track, rel, keyframe), (frame, flags))) = block else {
                    return Ok(Some(None));
                };
                if !self.header_sent {
                    return Err(ScanError::Malformed("block before the first cluster"));
                }
                let ticks = self.cluster_timecode as i64 + i64::from(rel);
                let data = self.buf.split_to(self.pos).freeze();
                self.base += data.len() as u64;
                self.pos = 0;
                // The block element is the chunk's last; its payload starts `head` bytes in.
                let at = data.len() - total + head;
                let chunk = Chunk {
                    frame: at + frame.start..at + frame.end,
                    flags: if keyframe { flags | 0x80 } else { flags & 0x7F },
                    data,
                    cluster_start: std::mem::take(&mut self.cluster_pending),
                    block: BlockInfo {
                        track,
                        keyframe,
                        pts_ns: ticks.saturating_mul(self.timecode_scale_ns as i64),
                    },
                };
                Ok(Some(Some(Event::Chunk(chunk))))
            }
        }
    }
}

/// Element ID with its marker bits, and its length (1–4 bytes).
fn read_id(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        // Not a valid ID; the caller reports ID 0 as malformed.
        return Some((0, 1));
    }
    if b.len() < len {
        return None;
    }
    let id = b[..len]
        .iter()
        .fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    Some((id, len))
}

/// Element size (None = unknown size) and its length (1–8 bytes). Returns None if more bytes are needed.
fn read_size(b: &[u8]) -> Option<(Option<u64>, usize)> {
    let first = *b.first()?;
    if first == 0 {
        // Invalid VINT; treat as an unknown-size element so the caller reports it as malformed.
        return Some((None, 1));
    }
    let len = first.leading_zeros() as usize + 1;
    if b.len() < len {
        return None;
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut v = u64::from(first & mask);
    let mut all_ones = (first & mask) == mask;
    for &x in &b[1..len] {
        v = (v << 8) | u64::from(x);
        all_ones &= x == 0xFF;
    }
    Some((if all_ones { None } else { Some(v) }, len))
}

fn read_uint(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

fn read_float(b: &[u8]) -> Option<f64> {
    match b.len() {
        4 => Some(f64::from(f32::from_be_bytes(b.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

/// Iterates the sized children of a master element's payload, stopping at the first malformed one.
fn children(mut b: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        let (id, il) = read_id(b)?;
        let (size, sl) = read_size(&b[il..])?;
        let size = usize::try_from(size?).ok()?;
        let start = il + sl;
        let payload = b.get(start..start.checked_add(size)?)?;
        b = &b[start + size..];
        Some((id, payload))
    })
}

fn child_uint(b: &[u8], want: u32) -> Option<u64> {
    children(b)
        .find(|(id, _)| *id == want)
        .map(|(_, p)| read_uint(p))
}

fn parse_tracks(payload: &[u8]) -> Vec<TrackInfo> {
    children(payload)
        .filter(|(id, _)| *id == ID_TRACK_ENTRY)
        .map(|(_, entry)| {
            let mut t = TrackInfo {
                number: 0,
                kind: TrackKind::Other,
                codec: String::new(),
                width: None,
                height: None,
                rate: None,
                channels: None,
            };
            for (id, p) in children(entry) {
                match id {
                    ID_TRACK_NUMBER => t.number = read_uint(p),
                    ID_TRACK_TYPE => {
                        t.kind = match read_uint(p) {
                            1 => TrackKind::Video,
                            2 => TrackKind::Audio,
                            _ => TrackKind::Other,
                        }
                    }
                    ID_CODEC_ID => {
                        t.codec = String::from_utf8_lossy(p)
                            .trim_end_matches('\0')
                            .to_string()
                    }
                    ID_VIDEO => {
                        t.width = child_uint(p, ID_PIXEL_WIDTH);
                        t.height = child_uint(p, ID_PIXEL_HEIGHT);
                    }
                    ID_AUDIO => {
                        t.rate = children(p)
                            .find(|(id, _)| *id == ID_SAMPLING_FREQUENCY)
                            .and_then(|(_, v)| read_float(v));
                        t.channels = child_uint(p, ID_CHANNELS);
                    }
                    _ => {}
                }
            }
            t
        })
        .collect()
}

/// (track, relative timecode, keyframe) of a Block or SimpleBlock payload.
fn parse_block(p: &[u8], simple: bool) -> Option<(u64, i16, bool)> {
    let (track, tl) = read_size(p)?;
    let track = track?;
    let tc = i16::from_be_bytes(p.get(tl..tl + 2)?.try_into().ok()?);
    let flags = *p.get(tl + 2)?;
    Some((track, tc, !simple || flags & 0x80 != 0))
}

/// Where a block's frame is in its element's payload (a SimpleBlock's, or a BlockGroup's whose Block it finds),
/// and the block's flags byte.
fn block_frame(p: &[u8], simple: bool) -> Option<(std::ops::Range<usize>, u8)> {
    let (at, block) = if simple {
        (0, p)
    } else {
        let (_, b) = children(p).find(|(id, _)| *id == ID_BLOCK)?;
        (b.as_ptr() as usize - p.as_ptr() as usize, b)
    };
    let (_, tl) = read_size(block)?;
    let flags = *block.get(tl + 2)?;
    Some((at + tl + 3..at + block.len(), flags))
}

/// The stream's header cut down to one track, as a DASH representation's initialisation segment: the EBML
/// header, an unknown-size Segment, Info, and Tracks with only that track's entry (SeekHead, Tags, Void and
/// the other tracks left out). None when the header has no such track.
pub fn track_init(header: &[u8], track: u64) -> Option<Bytes> {
    let (id, il) = read_id(header)?;
    let (size, sl) = read_size(&header[il..])?;
    if id != ID_EBML {
        return None;
    }
    let ebml_end = il + sl + usize::try_from(size?).ok()?;
    let mut out = header.get(..ebml_end)?.to_vec();
    let rest = &header[ebml_end..];
    let (id, il) = read_id(rest)?;
    let (_, sl) = read_size(rest.get(il..)?)?;
    if id != ID_SEGMENT {
        return None;
    }
    out.extend(build::open(ID_SEGMENT));
    let mut entry = None;
    for (id, payload) in children(&rest[il + sl..]) {
        match id {
            ID_INFO => out.extend(build::element(ID_INFO, payload)),
            ID_TRACKS => {
                entry = children(payload)
                    .filter(|(id, _)| *id == ID_TRACK_ENTRY)
                    .find(|(_, e)| child_uint(e, ID_TRACK_NUMBER) == Some(track))
                    .map(|(_, e)| build::element(ID_TRACKS, &build::element(ID_TRACK_ENTRY, e)));
            }
            _ => {}
        }
    }
    out.extend(entry?);
    Some(Bytes::from(out))
}

fn parse_block_group(p: &[u8]) -> Option<(u64, i16, bool)> {
    let mut block = None;
    let mut referenced = false;
    for (id, c) in children(p) {
        match id {
            ID_BLOCK => block = parse_block(c, false),
            ID_REFERENCE_BLOCK => referenced = true,
            _ => {}
        }
    }
    block.map(|(t, tc, _)| (t, tc, !referenced))
}

/// Builds EBML elements (the DASH segments, tests and tools).
pub mod build {
    /// Encodes an element with a known size.
    pub fn element(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = id_bytes(id);
        out.extend(size_bytes(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    /// Encodes an element header with unknown size (live Segment/Cluster).
    pub fn open(id: u32) -> Vec<u8> {
        let mut out = id_bytes(id);
        out.push(0x01);
        out.extend([0xFF; 7]);
        out
    }

    pub fn uint(id: u32, v: u64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count().min(7);
        element(id, &bytes[skip..])
    }

    fn id_bytes(id: u32) -> Vec<u8> {
        let b = id.to_be_bytes();
        let skip = b.iter().take_while(|&&x| x == 0).count().min(3);
        b[skip..].to_vec()
    }

    /// The shortest VINT for `n` (an all-ones value would mean "unknown size", so it takes the next length).
    fn size_bytes(n: u64) -> Vec<u8> {
        let len = (1..=8usize)
            .find(|&l| n < (1u64 << (7 * l)) - 1)
            .unwrap_or(8);
        let marked = n | (1u64 << (7 * len));
        marked.to_be_bytes()[8 - len..].to_vec()
    }

    pub fn float(id: u32, v: f64) -> Vec<u8> {
        element(id, &v.to_be_bytes())
    }

    /// A stream header for tests: track 1 VP8 video, track 2 audio in `audio_codec` (`A_VORBIS`, `A_OPUS`).
    #[cfg(test)]
    pub fn test_header(audio_codec: &str) -> Vec<u8> {
        let mut s = element(0x1A45_DFA3, &uint(0x4282, 1));
        s.extend(open(0x1853_8067));
        s.extend(element(0x1549_A966, &uint(0x2A_D7B1, 1_000_000)));
        let mut v = uint(0xD7, 1);
        v.extend(uint(0x83, 1));
        v.extend(string(0x86, "V_VP8"));
        let mut a = uint(0xD7, 2);
        a.extend(uint(0x83, 2));
        a.extend(string(0x86, audio_codec));
        let mut tracks = element(0xAE, &v);
        tracks.extend(element(0xAE, &a));
        s.extend(element(0x1654_AE6B, &tracks));
        s
    }

    /// A SimpleBlock of track `track` (below 127), `rel` milliseconds after its cluster's timecode, with the
    /// given flags byte and frame (lace headers included, as the flags say).
    pub fn simple_block(track: u64, rel: i16, flags: u8, frame: &[u8]) -> Vec<u8> {
        let mut payload = Vec::with_capacity(frame.len() + 4);
        payload.push(0x80 | (track as u8 & 0x7F));
        payload.extend(rel.to_be_bytes());
        payload.push(flags);
        payload.extend_from_slice(frame);
        element(super::ID_SIMPLE_BLOCK, &payload)
    }

    pub fn string(id: u32, v: &str) -> Vec<u8> {
        element(id, v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn track(num: u64, kind: u64, codec: &str) -> Vec<u8> {
        let mut p = uint(ID_TRACK_NUMBER, num);
        p.extend(uint(ID_TRACK_TYPE, kind));
        p.extend(element(ID_CODEC_ID, codec.as_bytes()));
        if kind == 1 {
            let mut v = uint(ID_PIXEL_WIDTH, 320);
            v.extend(uint(ID_PIXEL_HEIGHT, 240));
            p.extend(element(ID_VIDEO, &v));
        }
        element(ID_TRACK_ENTRY, &p)
    }

    fn simple_block(track: u8, tc: i16, key: bool, len: usize) -> Vec<u8> {
        let mut p = vec![0x80 | track];
        p.extend(tc.to_be_bytes());
        p.push(if key { 0x80 } else { 0 });
        p.extend(std::iter::repeat_n(0xAB, len));
        element(ID_SIMPLE_BLOCK, &p)
    }

    fn block_group(track: u8, tc: i16, referenced: bool) -> Vec<u8> {
        let mut b = vec![0x80 | track];
        b.extend(tc.to_be_bytes());
        b.push(0);
        b.extend([1, 2, 3]);
        let mut g = element(ID_BLOCK, &b);
        if referenced {
            g.extend(uint(ID_REFERENCE_BLOCK, 1));
        }
        element(ID_BLOCK_GROUP, &g)
    }

    fn sample_stream() -> (Vec<u8>, usize) {
        let mut s = element(ID_EBML, &uint(0x4282, 0));
        s.extend(open(ID_SEGMENT));
        s.extend(element(ID_INFO, &uint(ID_TIMECODE_SCALE, 1_000_000)));
        let mut tracks = track(1, 1, "V_VP8");
        tracks.extend(track(2, 2, "A_VORBIS"));
        s.extend(element(ID_TRACKS, &tracks));
        let header_len = s.len();
        s.extend(open(ID_CLUSTER));
        s.extend(uint(ID_CLUSTER_TIMECODE, 1000));
        s.extend(simple_block(1, 0, true, 500));
        s.extend(block_group(2, 5, false));
        s.extend(simple_block(1, 33, false, 100));
        s.extend(open(ID_CLUSTER));
        s.extend(uint(ID_CLUSTER_TIMECODE, 2000));
        s.extend(block_group(2, 0, false));
        s.extend(simple_block(1, 10, true, 400));
        (s, header_len)
    }

    fn scan_in_pieces(data: &[u8], piece: usize) -> Vec<Event> {
        let mut sc = Scanner::new();
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            sc.push(p, |e| out.push(e)).unwrap();
        }
        out
    }

    #[test]
    fn cuts_header_and_one_chunk_per_block_whatever_the_input_split() {
        let (s, header_len) = sample_stream();
        let whole = scan_in_pieces(&s, s.len());
        for piece in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(
                scan_in_pieces(&s, piece),
                whole,
                "split into {piece}-byte pieces"
            );
        }
        assert_eq!(whole.len(), 6);
        let Event::Header { data, tracks } = &whole[0] else {
            panic!("header first")
        };
        assert_eq!(data.len(), header_len);
        assert_eq!(tracks.len(), 2);
        assert_eq!(
            (tracks[0].kind, tracks[0].codec.as_str(), tracks[0].width),
            (TrackKind::Video, "V_VP8", Some(320))
        );
        assert_eq!(tracks[1].kind, TrackKind::Audio);
        // Concatenated output is byte-identical to the input.
        let mut joined = Vec::new();
        for e in &whole {
            match e {
                Event::Header { data, .. } => joined.extend_from_slice(data),
                Event::Chunk(c) => joined.extend_from_slice(&c.data),
            }
        }
        assert_eq!(joined, s);
    }

    #[test]
    fn marks_cluster_starts_keyframes_and_timestamps() {
        let (s, _) = sample_stream();
        let chunks: Vec<Chunk> = scan_in_pieces(&s, 5)
            .into_iter()
            .filter_map(|e| match e {
                Event::Chunk(c) => Some(c),
                _ => None,
            })
            .collect();
        let summary: Vec<_> = chunks
            .iter()
            .map(|c| {
                (
                    c.cluster_start,
                    c.block.track,
                    c.block.keyframe,
                    c.block.pts_ns / 1_000_000,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (true, 1, true, 1000),
                (false, 2, true, 1005),
                (false, 1, false, 1033),
                (true, 2, true, 2000),
                (false, 1, true, 2010),
            ]
        );
    }

    #[test]
    fn referenced_block_group_is_not_a_keyframe() {
        let p = &block_group(1, 0, true)[1 + 1..]; // skip the BlockGroup ID and its 1-byte size
        assert_eq!(parse_block_group(p), Some((1, 0, false)));
    }

    #[test]
    fn refuses_absurd_sizes_instead_of_buffering() {
        let mut s = element(ID_EBML, &[]);
        s.extend(open(ID_SEGMENT));
        s.extend(open(ID_CLUSTER));
        s.extend([0xA3, 0x01, 0, 0, 0x10, 0, 0, 0, 0]); // SimpleBlock of 2^36 bytes
        let mut sc = Scanner::new();
        let err = sc.push(&s, |_| {}).unwrap_err();
        assert!(matches!(
            err,
            ScanError::TooLarge {
                id: ID_SIMPLE_BLOCK,
                ..
            }
        ));
    }

    #[test]
    fn built_sizes_are_minimal_and_read_back() {
        for (n, len) in [
            (0u64, 1),
            (126, 1),
            (127, 2),
            (16_382, 2),
            (16_383, 3),
            (2_097_150, 3),
            (2_097_151, 4),
        ] {
            let e = element(0xA3, &vec![0u8; n as usize]);
            assert_eq!(read_size(&e[1..]), Some((Some(n), len)), "{n}");
        }
    }

    #[test]
    fn vint_sizes() {
        assert_eq!(read_size(&[0x81]), Some((Some(1), 1)));
        assert_eq!(read_size(&[0x40, 0x02]), Some((Some(2), 2)));
        assert_eq!(read_size(&[0xFF]), Some((None, 1)));
        assert_eq!(
            read_size(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Some((None, 8))
        );
        assert_eq!(read_size(&[0x40]), None);
        assert_eq!(read_id(&[0x1A, 0x45, 0xDF, 0xA3]), Some((ID_EBML, 4)));
    }
}
