//! The worker protocol (issue 18, in progress): what the daemon and a source's worker process say to each other
//! over the worker's stdin (daemon → worker) and stdout (worker → daemon).
//!
//! Every message is `[type u8][length u32 BE][body]`. Media travels as raw bytes (input bytes one way, one
//! frame with its timestamps and flags the other); everything else is a small JSON body. A reader checks the
//! length against [`MAX_MESSAGE`] before it allocates, and refuses an unknown type: a worker is untrusted (it
//! parses the client's bytes), so what it sends is checked as client input is.
//!
//! ```text
//!  daemon ── Hello (caps, templates, limits) ─ Data … ─ Answer(track) ─ Eos ──────────────► worker
//!  daemon ◄── Track(kind, caps) ─ Codecs ─ TracksComplete ─ Consumed ─ Frame … ─ Failed ─ Eos ── worker
//! ```
//!
//! A `Track` is a question: the worker's streaming thread waits for the daemon's `Answer` (the stream's
//! decision: raw caps to convert to, encoded as it is, discard, or refuse), as it waits for
//! `Stream::offer_track` in the daemon today. `Consumed` says how many input bytes the worker's pipeline has
//! taken, so the daemon keeps a bounded window of input in flight (the worker never blocks reading its stdin,
//! and so always reads an answer).

use std::io::{self, Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The largest message either side accepts: a raw 4096×4096 I420 picture is 24 MiB.
pub const MAX_MESSAGE: usize = 64 << 20;

const HELLO: u8 = 1;
const DATA: u8 = 2;
const INPUT_END: u8 = 3;
const ANSWER: u8 = 4;
const TRACK: u8 = 10;
const CODECS: u8 = 11;
const TRACKS_COMPLETE: u8 = 12;
const CONSUMED: u8 = 13;
const FRAME: u8 = 14;
const FAILED: u8 = 15;
const ENDED: u8 = 16;
const PIPELINE_ERROR: u8 = 17;

/// What a worker needs to start: the input's caps and container, the templates' texts, the input limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub stream: String,
    pub caps: String,
    pub matroska: bool,
    /// (template file name, filled text).
    pub templates: Vec<(String, String)>,
    pub max_pixels: u64,
    pub max_dimension: u32,
    pub max_fps: u32,
    /// The worker's address-space limit, bytes.
    pub memory: u64,
}

/// The stream's decision on a track the worker found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Decode and convert to these caps.
    Raw(String),
    /// Send it as it is.
    Encoded,
    /// Not used (the reason, for the log).
    Discard(String),
    /// The source is refused: (error code, message).
    Refuse(String, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Video,
    Audio,
}

/// Daemon → worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Hello(Hello),
    Data(Bytes),
    /// The input is complete.
    InputEnd,
    Answer {
        track: u8,
        answer: Answer,
    },
}

/// One buffer of a track, with what the stream needs of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub track: u8,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub duration: Option<u64>,
    /// Not a keyframe (`GST_BUFFER_FLAG_DELTA_UNIT`).
    pub delta: bool,
    pub payload: Bytes,
}

/// Worker → daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    /// A track was found: what should become of it? (`Answer` follows.)
    Track {
        track: u8,
        kind: Kind,
        caps: String,
        passthrough: bool,
    },
    Codecs(Vec<String>),
    TracksComplete,
    /// Input bytes the pipeline has taken so far.
    Consumed(u64),
    Frame(Frame),
    /// A decision error (no decoder, a limit, the stream's refusal): (error code, message).
    Failed(String, String),
    /// The worker's pipeline failed: (element path, message).
    PipelineError(String, String),
    /// Every track played out.
    Ended,
}

#[derive(Serialize, Deserialize)]
struct TrackBody {
    track: u8,
    kind: Kind,
    caps: String,
    passthrough: bool,
}

#[derive(Serialize, Deserialize)]
struct AnswerBody {
    track: u8,
    answer: Answer,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn put(w: &mut impl Write, kind: u8, body: &[&[u8]]) -> io::Result<()> {
    let len: usize = body.iter().map(|b| b.len()).sum();
    if len > MAX_MESSAGE {
        return Err(bad(format!("a message of {len} bytes is over the limit")));
    }
    w.write_all(&[kind])?;
    w.write_all(&(len as u32).to_be_bytes())?;
    for b in body {
        w.write_all(b)?;
    }
    Ok(())
}

fn json<T: Serialize>(w: &mut impl Write, kind: u8, v: &T) -> io::Result<()> {
    put(w, kind, &[&serde_json::to_vec(v).map_err(bad_json)?])
}

fn bad_json(e: serde_json::Error) -> io::Error {
    bad(format!("a malformed message: {e}"))
}

/// Reads one message: (type, body). `None` at a clean end (no byte of a next message).
fn take(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(bad(format!("a message of {len} bytes is over the limit")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((head[0], body)))
}

const NONE: u64 = u64::MAX;

fn opt(v: u64) -> Option<u64> {
    (v != NONE).then_some(v)
}

impl ToWorker {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            ToWorker::Hello(h) => json(w, HELLO, h),
            ToWorker::Data(d) => put(w, DATA, &[d]),
            ToWorker::InputEnd => put(w, INPUT_END, &[]),
            ToWorker::Answer { track, answer } => json(
                w,
                ANSWER,
                &AnswerBody {
                    track: *track,
                    answer: answer.clone(),
                },
            ),
        }
    }

    pub fn read(r: &mut impl Read) -> io::Result<Option<ToWorker>> {
        let Some((kind, body)) = take(r)? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            HELLO => ToWorker::Hello(serde_json::from_slice(&body).map_err(bad_json)?),
            DATA => ToWorker::Data(Bytes::from(body)),
            INPUT_END => ToWorker::InputEnd,
            ANSWER => {
                let a: AnswerBody = serde_json::from_slice(&body).map_err(bad_json)?;
                ToWorker::Answer {
                    track: a.track,
                    answer: a.answer,
                }
            }
            other => return Err(bad(format!("unknown message type {other}"))),
        }))
    }
}

/// Writes a frame whose payload is `payload` (`f.payload` is not read): a buffer's mapped memory goes out
/// without a copy.
pub fn write_frame(w: &mut impl Write, f: &Frame, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 26];
    head[0] = f.track;
    head[1] = u8::from(f.delta);
    for (i, v) in [f.pts, f.dts, f.duration].into_iter().enumerate() {
        head[2 + 8 * i..10 + 8 * i].copy_from_slice(&v.unwrap_or(NONE).to_be_bytes());
    }
    put(w, FRAME, &[&head, payload])
}

impl FromWorker {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            FromWorker::Track {
                track,
                kind,
                caps,
                passthrough,
            } => json(
                w,
                TRACK,
                &TrackBody {
                    track: *track,
                    kind: kind.clone(),
                    caps: caps.clone(),
                    passthrough: *passthrough,
                },
            ),
            FromWorker::Codecs(c) => json(w, CODECS, c),
            FromWorker::TracksComplete => put(w, TRACKS_COMPLETE, &[]),
            FromWorker::Consumed(n) => put(w, CONSUMED, &[&n.to_be_bytes()]),
            FromWorker::Frame(f) => write_frame(w, f, &f.payload),
            FromWorker::Failed(code, message) => json(w, FAILED, &(code, message)),
            FromWorker::PipelineError(path, message) => json(w, PIPELINE_ERROR, &(path, message)),
            FromWorker::Ended => put(w, ENDED, &[]),
        }
    }

    pub fn read(r: &mut impl Read) -> io::Result<Option<FromWorker>> {
        let Some((kind, body)) = take(r)? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            TRACK => {
                let t: TrackBody = serde_json::from_slice(&body).map_err(bad_json)?;
                FromWorker::Track {
                    track: t.track,
                    kind: t.kind,
                    caps: t.caps,
                    passthrough: t.passthrough,
                }
            }
            CODECS => FromWorker::Codecs(serde_json::from_slice(&body).map_err(bad_json)?),
            TRACKS_COMPLETE => FromWorker::TracksComplete,
            CONSUMED => {
                let b: [u8; 8] = body
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("a Consumed message is 8 bytes"))?;
                FromWorker::Consumed(u64::from_be_bytes(b))
            }
            FRAME => {
                if body.len() < 26 {
                    return Err(bad("a frame without its header"));
                }
                let at = |i: usize| {
                    u64::from_be_bytes(body[2 + 8 * i..10 + 8 * i].try_into().expect("8 bytes"))
                };
                let (pts, dts, duration) = (opt(at(0)), opt(at(1)), opt(at(2)));
                let (track, delta) = (body[0], body[1] != 0);
                let mut body = Bytes::from(body);
                FromWorker::Frame(Frame {
                    track,
                    pts,
                    dts,
                    duration,
                    delta,
                    payload: body.split_off(26),
                })
            }
            FAILED | PIPELINE_ERROR => {
                let (a, b): (String, String) = serde_json::from_slice(&body).map_err(bad_json)?;
                if kind == FAILED {
                    FromWorker::Failed(a, b)
                } else {
                    FromWorker::PipelineError(a, b)
                }
            }
            ENDED => FromWorker::Ended,
            other => return Err(bad(format!("unknown message type {other}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both_ways_to_worker(m: ToWorker) {
        let mut buf = Vec::new();
        m.write(&mut buf).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(ToWorker::read(&mut r).unwrap(), Some(m));
        assert_eq!(
            ToWorker::read(&mut r).unwrap(),
            None,
            "a clean end after it"
        );
    }

    fn both_ways_from_worker(m: FromWorker) {
        let mut buf = Vec::new();
        m.write(&mut buf).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(FromWorker::read(&mut r).unwrap(), Some(m));
        assert_eq!(FromWorker::read(&mut r).unwrap(), None);
    }

    #[test]
    fn every_message_reads_back_as_written() {
        both_ways_to_worker(ToWorker::Hello(Hello {
            stream: "cam".into(),
            caps: "video/mpegts, systemstream=(boolean)true".into(),
            matroska: false,
            templates: vec![("decode.pipeline".into(), "decodebin".into())],
            max_pixels: 1920 * 1088,
            max_dimension: 4096,
            max_fps: 60,
            memory: 1 << 30,
        }));
        both_ways_to_worker(ToWorker::Data(Bytes::from_static(b"\x47\x40\x00")));
        both_ways_to_worker(ToWorker::InputEnd);
        for answer in [
            Answer::Raw("video/x-raw, width=(int)320".into()),
            Answer::Encoded,
            Answer::Discard("no audio track".into()),
            Answer::Refuse("unsupported_media".into(), "too big".into()),
        ] {
            both_ways_to_worker(ToWorker::Answer { track: 1, answer });
        }
        both_ways_from_worker(FromWorker::Track {
            track: 0,
            kind: Kind::Video,
            caps: "video/x-vp8, width=(int)320".into(),
            passthrough: true,
        });
        both_ways_from_worker(FromWorker::Codecs(vec!["h264".into(), "aac".into()]));
        both_ways_from_worker(FromWorker::TracksComplete);
        both_ways_from_worker(FromWorker::Consumed(123_456));
        for (pts, delta) in [(Some(33_333_333), true), (None, false)] {
            both_ways_from_worker(FromWorker::Frame(Frame {
                track: 1,
                pts,
                dts: None,
                duration: Some(1),
                delta,
                payload: Bytes::from_static(b"frame"),
            }));
        }
        both_ways_from_worker(FromWorker::Failed(
            "unsupported_media".into(),
            "no decoder".into(),
        ));
        both_ways_from_worker(FromWorker::PipelineError(
            "/GstPipeline:w/GstDecodeBin:d".into(),
            "corrupt".into(),
        ));
        both_ways_from_worker(FromWorker::Ended);
    }

    #[test]
    fn oversized_unknown_and_cut_messages_are_refused_before_allocating() {
        let mut huge = vec![DATA];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(ToWorker::read(&mut huge.as_slice()).is_err());
        let unknown = [99u8, 0, 0, 0, 0];
        assert!(FromWorker::read(&mut unknown.as_slice()).is_err());
        let mut cut = Vec::new();
        FromWorker::Consumed(7).write(&mut cut).unwrap();
        cut.pop();
        assert!(FromWorker::read(&mut cut.as_slice()).is_err());
        let short_frame = [FRAME, 0, 0, 0, 3, 1, 2, 3];
        assert!(FromWorker::read(&mut short_frame.as_slice()).is_err());
        let mut wrong_consumed = vec![CONSUMED, 0, 0, 0, 2, 0, 1];
        assert!(FromWorker::read(&mut wrong_consumed.as_slice()).is_err());
        wrong_consumed[0] = TRACK;
        assert!(
            FromWorker::read(&mut wrong_consumed.as_slice()).is_err(),
            "not JSON"
        );
    }
}
