//! Per-stream fan-out: one writer (the pipeline's appsink thread), any number of HTTP readers.
//!
//! ```text
//!  appsink ─► Publisher (webm::Scanner) ─► Hub { header, ring of Arc'd chunks, join points } ─► Subscription ×N
//!                 one chunk per block                 seq: base ............ head                cursor each
//! ```
//!
//! The writer never waits for a reader: publishing is a short critical section (push a `Bytes`, evict the
//! oldest) and a `watch` bump that wakes readers. Each reader keeps only a cursor (a sequence number) into the
//! shared ring, so a slow reader costs no memory of its own: when its next chunk is older than
//! `max_lag / 4` (at most a second) or already evicted it jumps to the newest join point (a cluster whose first video block is
//! a keyframe), and a reader that has not caught up with the live edge for `max_lag` is disconnected by the
//! reaper, which also covers readers that never read at all (their body is never polled).
//!
//! A raw reader that has caught up parks its socket in one of the stream's shards, which the process's fan-out
//! threads ([`crate::output::fanout`]) serve: they write new chunks to it directly until it falls behind, and
//! hand it back.
//!
//! Lock order: `inner`, then a shard's `parked` (parking; a fan-out thread takes `parked` alone, never `inner`
//! while it holds it). `clients` is never held with either. None is held across an await or a push.
//! Both are `std::sync::Mutex`: critical sections are a few pointer moves, shorter than a tokio mutex's
//! own bookkeeping, and never span an await.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
// tokio's, so the hub's tests run on a paused clock; outside a runtime (the writer's streaming thread) it is
// the system's monotonic clock, like std's.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::JoinMode;
use crate::stream::segments::{SegmentConfig, Segments};
use crate::stream::tracks::Splitter;
use crate::stream::webm::{self, Chunk, TrackInfo, TrackKind};

/// Ring cap per stream: about 20 s of an 8 Mbit/s stream, so skipping readers and joiners always find a
/// keyframe, while a stream can never hold more than this.
pub const RING_MAX_BYTES: usize = 24 << 20;
/// Chunks handed to a reader per lock: enough to drain a keyframe burst quickly, small enough that the
/// lock stays short.
const MAX_BATCH: usize = 64;
/// A reader's batch buffer as it starts, and as it is trimmed back to once caught up.
const PENDING_CAPACITY: usize = 4;
/// How often the reaper looks for readers past `max_lag`.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub join: JoinMode,
    pub max_lag: Duration,
    pub max_gop_bytes: usize,
    /// Write-coalescing window: readers are woken at most once per window (zero: on every chunk).
    pub coalesce: Duration,
    pub segments: SegmentConfig,
}

/// Counters read by the API and logs.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Viewers now (relays apart).
    pub clients_now: AtomicUsize,
    /// Edges relaying the stream now (their `User-Agent` names transcast).
    pub relays_now: AtomicUsize,
    pub clients_total: AtomicU64,
    /// Times a reader was moved forward to a newer keyframe because it fell behind.
    pub skips: AtomicU64,
    /// Readers disconnected for staying behind longer than `max_lag`.
    pub dropped: AtomicU64,
    pub bytes_published: AtomicU64,
    pub bytes_sent: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    /// The chunk as one HTTP/1.1 chunk (`SIZE\r\n`, the chunk, `\r\n`), for the raw watch path: framed once
    /// here, not per client, so a shard's writes stay shared.
    framed: Bytes,
    /// The chunk itself (a slice of `framed`).
    data: Bytes,
    at: Instant,
}

impl Slot {
    fn new(data: &Bytes, at: Instant) -> Slot {
        let framed = frame(data);
        let prefix = framed.len() - data.len() - 2;
        Slot {
            data: framed.slice(prefix..prefix + data.len()),
            framed,
            at,
        }
    }

    fn bytes(&self, framed: bool) -> Bytes {
        if framed {
            self.framed.clone()
        } else {
            self.data.clone()
        }
    }
}

/// `data` as one chunk of HTTP/1.1 chunked transfer coding.
pub fn frame(data: &[u8]) -> Bytes {
    let size = format!("{:x}\r\n", data.len());
    let mut b = BytesMut::with_capacity(size.len() + data.len() + 2);
    b.extend_from_slice(size.as_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

/// The last chunk of a chunked body (no trailers).
pub const CHUNKED_END: &[u8] = b"0\r\n\r\n";

#[derive(Debug, Default)]
struct Inner {
    header: Option<Bytes>,
    tracks: Vec<TrackInfo>,
    video_track: Option<u64>,
    ring: VecDeque<Slot>,
    /// Sequence number of `ring[0]`.
    base: u64,
    bytes: usize,
    /// Sequence numbers of chunks that open a cluster whose first video block is a keyframe (ascending).
    joins: VecDeque<u64>,
    /// The current cluster's first chunk, until its first video block says whether it is a join point.
    open_cluster: Option<u64>,
    /// First and latest block timestamps, for the media duration.
    pts_range: Option<(i64, i64)>,
    ended: bool,
}

impl Inner {
    fn head(&self) -> u64 {
        self.base + self.ring.len() as u64
    }
    fn latest_join_at_or_after(&self, seq: u64) -> Option<u64> {
        self.joins.back().copied().filter(|&j| j >= seq)
    }
    fn bytes_from(&self, seq: u64) -> usize {
        self.ring
            .iter()
            .skip((seq - self.base) as usize)
            .map(|s| s.data.len())
            .sum()
    }
}

#[derive(Debug)]
pub struct Hub {
    name: String,
    cfg: HubConfig,
    inner: Mutex<Inner>,
    head_tx: watch::Sender<()>,
    /// Something was published since the coalescer last woke readers.
    dirty: AtomicBool,
    clients: Mutex<HashMap<u64, Arc<ClientShared>>>,
    next_client: AtomicU64,
    /// The head, readable without the lock (a shard checks it between clients).
    published: AtomicU64,
    epoch: Instant,
    /// Caught-up raw watchers, written directly by the fan-out threads (`output::fanout`).
    shards: Vec<Shard>,
    /// Shared with the split hub, so its readers count as the stream's.
    pub stats: Arc<HubStats>,
    /// The stream's DASH segments, cut from what is published here.
    pub segments: Segments,
    /// The same stream with its tracks apart, for the low-latency player ([`crate::stream::tracks`]); `None` in
    /// the split hub itself.
    pub split: Option<Arc<Hub>>,
}

#[derive(Debug)]
pub struct ClientShared {
    peer: Option<SocketAddr>,
    kill: CancellationToken,
    /// Next sequence number the reader will take.
    cursor: AtomicU64,
    /// When the reader last had nothing left to read, ms since the hub's epoch.
    caught_up_ms: AtomicU64,
    dropped: AtomicBool,
    /// Its subscription is gone (the client left): a fan-out thread holding its socket lets it go.
    pub gone: AtomicBool,
}

/// Why a subscription could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The stream ended before it produced a header.
    Ended,
    /// No header within the wait.
    Timeout,
}

/// Where a client task picks up after a shard hands it back.
#[derive(Debug)]
pub struct Resume {
    /// Next sequence number to take from the ring.
    pub cursor: u64,
    /// What is left of a chunk the shard wrote only in part: to be written first.
    pub rest: Option<Bytes>,
}

/// A caught-up client, while a shard writes to it.
#[derive(Debug)]
pub struct Parked {
    pub socket: Arc<TcpStream>,
    pub shared: Arc<ClientShared>,
    /// Next sequence number to write.
    pub cursor: u64,
    pub resume: oneshot::Sender<std::io::Result<Resume>>,
}

/// One shard of a stream's parked clients, and whether a fan-out thread serves it.
#[derive(Debug, Default)]
pub struct Shard {
    pub parked: Mutex<Vec<Parked>>,
    started: AtomicBool,
}

/// A reader handed to a shard.
#[must_use = "a shard that no thread serves never writes to its parked clients"]
#[derive(Debug)]
pub struct Parking {
    /// Says where the reader goes on once the shard hands it back.
    pub resume: oneshot::Receiver<std::io::Result<Resume>>,
    /// The shard has just taken its first client: the caller has it served (`output::fanout::start`).
    pub start_shard: Option<usize>,
}

/// Shards per stream: one per core (at most 8), so every core of the fan-out pool can write a stream.
pub fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// What a shard takes from the ring for one pass.
#[derive(Debug)]
pub struct Snapshot {
    /// Sequence number of `chunks[0]`, the oldest chunk within the skip lag: a client further back goes to its
    /// task, which skips.
    pub from: u64,
    pub head: u64,
    pub ended: bool,
}

impl Hub {
    pub fn new(name: &str, cfg: HubConfig) -> Arc<Hub> {
        let stats = Arc::new(HubStats::default());
        let split = Hub::build(name, cfg.clone(), stats.clone(), None);
        Hub::build(name, cfg, stats, Some(split))
    }

    fn build(
        name: &str,
        cfg: HubConfig,
        stats: Arc<HubStats>,
        split: Option<Arc<Hub>>,
    ) -> Arc<Hub> {
        let segments = Segments::new(cfg.segments);
        Arc::new(Hub {
            name: name.to_string(),
            cfg,
            inner: Mutex::new(Inner::default()),
            head_tx: watch::Sender::new(()),
            dirty: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(0),
            published: AtomicU64::new(0),
            epoch: Instant::now(),
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
            stats,
            segments,
            split,
        })
    }

    /// How far behind a reader may fall before it is moved to the newest keyframe: well inside `max_lag`, so a
    /// reader that cannot keep up is first moved forward and only then, still behind, disconnected.
    fn skip_lag(&self) -> Duration {
        (self.cfg.max_lag / 4).min(Duration::from_secs(1))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn tracks(&self) -> Vec<TrackInfo> {
        self.inner.lock().unwrap().tracks.clone()
    }

    pub fn has_header(&self) -> bool {
        self.inner.lock().unwrap().header.is_some()
    }

    /// Number of chunks published so far (0 = no media output yet).
    pub fn published_chunks(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Span of the block timestamps published so far.
    pub fn media_duration(&self) -> Duration {
        let r = self.inner.lock().unwrap().pts_range;
        r.map_or(Duration::ZERO, |(a, b)| {
            Duration::from_nanos((b - a).max(0) as u64)
        })
    }

    pub fn is_ended(&self) -> bool {
        self.inner.lock().unwrap().ended
    }

    /// Whether a reader could join now: a cluster that starts with a video keyframe (any cluster without video)
    /// is in the ring.
    pub fn has_join_point(&self) -> bool {
        !self.inner.lock().unwrap().joins.is_empty()
    }

    /// Whether readers are woken once per coalescing window rather than on every chunk.
    pub(crate) fn coalescing(&self) -> bool {
        !self.cfg.coalesce.is_zero()
    }

    pub(crate) fn head_rx(&self) -> watch::Receiver<()> {
        self.head_tx.subscribe()
    }

    pub(crate) fn shard(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    /// For a shard's pass: clones into `out` the chunks from `from` to the head, leaving out those older than
    /// the skip lag (a client still that far back goes to its task, which skips).
    pub(crate) fn snapshot(&self, from: u64, out: &mut Vec<Bytes>) -> Snapshot {
        out.clear();
        let now = Instant::now();
        let lag = self.skip_lag();
        let inner = self.inner.lock().unwrap();
        let mut from = from.max(inner.base);
        for slot in inner.ring.iter().skip((from - inner.base) as usize) {
            if out.is_empty() && now.duration_since(slot.at) > lag {
                from += 1;
            } else {
                out.push(slot.framed.clone());
            }
        }
        Snapshot {
            from,
            head: inner.head(),
            ended: inner.ended,
        }
    }

    /// A shard wrote `bytes` to a client, whose next chunk is now `cursor`.
    pub(crate) fn delivered(&self, c: &ClientShared, cursor: u64, bytes: usize, caught_up: bool) {
        c.cursor.store(cursor, Ordering::Relaxed);
        if caught_up {
            c.caught_up_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        self.stats
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn publish_header(&self, data: Bytes, tracks: Vec<TrackInfo>) {
        {
            let mut inner = self.inner.lock().unwrap();
            inner.video_track = tracks
                .iter()
                .find(|t| t.kind == TrackKind::Video)
                .map(|t| t.number);
            inner.header = Some(data);
            inner.tracks = tracks;
        }
        self.head_tx.send_replace(());
    }

    /// Wakes readers now, or — with a coalescing window — marks that the next tick should.
    fn wake_readers(&self) {
        if self.cfg.coalesce.is_zero() {
            self.head_tx.send_replace(());
        } else {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// With a coalescing window: wakes readers once per window when something was published, until the stream
    /// has ended and its last reader is gone. Readers then take a window's worth of chunks per wake-up, which
    /// trades up to one window of latency for far fewer wake-ups and writes per client.
    pub async fn run_coalescer(self: Arc<Self>) {
        if self.cfg.coalesce.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.cfg.coalesce);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for hub in std::iter::once(&self).chain(&self.split) {
                if hub.dirty.swap(false, Ordering::AcqRel) {
                    hub.head_tx.send_replace(());
                }
            }
            if self.is_ended() && self.client_count() == 0 {
                break;
            }
        }
    }

    pub(crate) fn publish_chunk(&self, chunk: Chunk) {
        let now = Instant::now();
        let len = chunk.data.len();
        {
            let mut inner = self.inner.lock().unwrap();
            let seq = inner.head();
            if chunk.cluster_start {
                match inner.video_track {
                    Some(_) => inner.open_cluster = Some(seq),
                    None => inner.joins.push_back(seq),
                }
            }
            if inner.video_track == Some(chunk.block.track)
                && let Some(start) = inner.open_cluster.take()
                && chunk.block.keyframe
            {
                inner.joins.push_back(start);
            }
            let pts = chunk.block.pts_ns;
            inner.pts_range = Some(
                inner
                    .pts_range
                    .map_or((pts, pts), |(a, b)| (a.min(pts), b.max(pts))),
            );
            inner.ring.push_back(Slot::new(&chunk.data, now));
            self.published.store(inner.head(), Ordering::Release);
            inner.bytes += len;
            // Keep `max_lag` of history (readers further back are dropped anyway) and always the newest
            // keyframe group for joiners, within the byte cap.
            let keep_for = self.cfg.max_lag + Duration::from_secs(1);
            while inner.ring.len() > 1 {
                let front = &inner.ring[0];
                let too_old = now.duration_since(front.at) > keep_for
                    && inner.joins.back().is_some_and(|&j| j > inner.base);
                if inner.bytes <= RING_MAX_BYTES && !too_old {
                    break;
                }
                let slot = inner.ring.pop_front().expect("len > 1");
                inner.bytes -= slot.data.len();
                inner.base += 1;
            }
            while inner.joins.front().is_some_and(|&j| j < inner.base) {
                inner.joins.pop_front();
            }
        }
        if self.split.is_some() {
            // The split hub republishes the same media: counted once, here.
            self.stats
                .bytes_published
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        self.wake_readers();
    }

    /// Marks the end of the stream: readers get what is left, then a clean end of their response.
    pub fn finish(&self) {
        self.segments.finish();
        if let Some(split) = &self.split {
            split.finish();
        }
        self.inner.lock().unwrap().ended = true;
        self.head_tx.send_replace(());
    }

    /// Starts a reader: waits (up to `wait`) for the header, then positions it per the hub's join mode.
    pub async fn subscribe(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        kill: CancellationToken,
        wait: Duration,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_as(self.cfg.join, peer, kill, wait).await
    }

    /// Waits (up to `wait`) until the stream has its header; whether it had to wait.
    pub async fn wait_header(&self, wait: Duration) -> Result<bool, SubscribeError> {
        let mut rx = self.head_tx.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited = false;
        loop {
            rx.borrow_and_update();
            {
                let inner = self.inner.lock().unwrap();
                if inner.header.is_some() {
                    return Ok(waited);
                }
                waited = true;
                if inner.ended {
                    return Err(SubscribeError::Ended);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SubscribeError::Ended),
                Err(_) => return Err(SubscribeError::Timeout),
            }
        }
    }

    /// [`Hub::subscribe`] with the reader's own join mode (a watch's `?join=`).
    pub async fn subscribe_as(
        self: &Arc<Self>,
        join: JoinMode,
        peer: Option<SocketAddr>,
        kill: CancellationToken,
        wait: Duration,
    ) -> Result<Subscription, SubscribeError> {
        let rx = self.head_tx.subscribe();
        let waited = self.wait_header(wait).await?;
        let (cursor, has_video, header) = {
            let inner = self.inner.lock().unwrap();
            let head = inner.head();
            // A reader that was there before the stream had any media (no header yet, or a header and no block)
            // gets it from its first keyframe, even when the writer releases several keyframe groups at once.
            let from_start = waited || head == 0;
            let cursor = match (join, inner.joins.back()) {
                _ if from_start => Cursor::WaitJoin {
                    after: inner.base,
                    earliest: true,
                },
                (JoinMode::Gop, Some(&j)) if inner.bytes_from(j) <= self.cfg.max_gop_bytes => {
                    Cursor::At(j)
                }
                _ => Cursor::WaitJoin {
                    after: head,
                    earliest: false,
                },
            };
            (
                cursor,
                inner.video_track.is_some(),
                inner.header.clone().expect("checked"),
            )
        };
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ClientShared {
            peer,
            kill,
            cursor: AtomicU64::new(match cursor {
                Cursor::At(s) | Cursor::WaitJoin { after: s, .. } => s,
            }),
            caught_up_ms: AtomicU64::new(self.now_ms()),
            dropped: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        self.clients.lock().unwrap().insert(id, shared.clone());
        self.stats.clients_now.fetch_add(1, Ordering::Relaxed);
        self.stats.clients_total.fetch_add(1, Ordering::Relaxed);
        let mut pending = VecDeque::with_capacity(PENDING_CAPACITY);
        pending.push_back(header);
        Ok(Subscription {
            hub: self.clone(),
            id,
            shared,
            rx,
            cursor,
            pending,
            has_video,
            relay: false,
            framed: false,
        })
    }

    /// Disconnects readers that have been behind the live edge for longer than `max_lag`.
    /// Returns how many were dropped.
    pub fn reap(&self) -> usize {
        let head = self.inner.lock().unwrap().head();
        let now = self.now_ms();
        let max_lag = self.cfg.max_lag.as_millis() as u64;
        let late: Vec<Arc<ClientShared>> = self
            .clients
            .lock()
            .unwrap()
            .values()
            .filter(|c| {
                c.cursor.load(Ordering::Relaxed) < head
                    && now.saturating_sub(c.caught_up_ms.load(Ordering::Relaxed)) > max_lag
                    && !c.dropped.swap(true, Ordering::Relaxed)
            })
            .cloned()
            .collect();
        for c in &late {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = %self.name,
                peer = ?c.peer,
                behind_chunks = head - c.cursor.load(Ordering::Relaxed),
                "client behind the live edge for more than {:?}: disconnected",
                self.cfg.max_lag
            );
            c.kill.cancel();
        }
        late.len()
    }

    /// The header and every chunk in the ring, as one byte string.
    #[cfg(test)]
    pub(crate) fn test_bytes(&self) -> Vec<u8> {
        let inner = self.inner.lock().unwrap();
        let mut out = inner.header.as_deref().unwrap_or_default().to_vec();
        for slot in &inner.ring {
            out.extend_from_slice(&slot.data);
        }
        out
    }

    /// Readers now, the split hub's included.
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap().len() + self.split.as_ref().map_or(0, |s| s.client_count())
    }

    /// Runs the reaper until the stream has ended and its last reader is gone.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_ended() && self.client_count() == 0 {
                break;
            }
            self.reap();
            if let Some(split) = &self.split {
                split.reap();
            }
        }
    }
}

/// Feeds muxer output into a hub. Owned by the appsink callback (one streaming thread).
#[derive(Debug)]
pub struct Publisher {
    hub: Arc<Hub>,
    scanner: webm::Scanner,
    splitter: Option<Splitter>,
}

impl Publisher {
    pub fn new(hub: Arc<Hub>) -> Self {
        Publisher {
            splitter: hub.split.is_some().then(Splitter::default),
            hub,
            scanner: webm::Scanner::new(),
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), webm::ScanError> {
        let hub = &self.hub;
        let splitter = &mut self.splitter;
        self.scanner.push(data, |ev| match ev {
            webm::Event::Header { data, tracks } => {
                hub.segments.on_header(&data, &tracks);
                // Split first: whoever sees the stream's header finds the split hub's too.
                if let (Some(s), Some(split)) = (splitter.as_mut(), &hub.split) {
                    split.publish_header(s.on_header(&data, &tracks), tracks.clone());
                }
                hub.publish_header(data, tracks)
            }
            webm::Event::Chunk(c) => {
                hub.segments.on_chunk(&c);
                if let (Some(s), Some(split)) = (splitter.as_mut(), &hub.split)
                    && let Some(record) = s.on_chunk(&c)
                {
                    split.publish_chunk(record);
                }
                hub.publish_chunk(c)
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Next chunk to send.
    At(u64),
    /// Waiting for a join point at or after `after`: the newest one (a live joiner, a skipping reader), or the
    /// earliest (a reader that was there before the stream's first media).
    WaitJoin { after: u64, earliest: bool },
}

/// One reader's position in a hub; unregisters on drop (hyper drops the body when the client goes away).
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    shared: Arc<ClientShared>,
    rx: watch::Receiver<()>,
    cursor: Cursor,
    pending: VecDeque<Bytes>,
    has_video: bool,
    /// An edge relaying the stream, counted apart from viewers.
    relay: bool,
    /// It writes its own HTTP/1.1 chunked framing (the raw watch path): chunks come framed.
    framed: bool,
}

enum Fill {
    Data,
    Wait,
    End,
}

impl Subscription {
    /// Whether the stream has a video track (`video/webm`) or is audio-only (`audio/webm`).
    pub fn has_video(&self) -> bool {
        self.has_video
    }

    /// Counts this reader as a relay (another transcast fanning the stream out), not as a viewer.
    pub fn mark_relay(&mut self) {
        if !self.relay {
            self.relay = true;
            self.hub.stats.clients_now.fetch_sub(1, Ordering::Relaxed);
            self.hub.stats.relays_now.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// From now on, chunks (and the header, if not taken yet) come framed for HTTP/1.1 chunked transfer coding.
    /// A reader that parks with a shard must be framed: shards write framed chunks.
    pub fn use_chunked_framing(&mut self) {
        if !self.framed {
            self.framed = true;
            for b in self.pending.iter_mut() {
                *b = frame(b);
            }
        }
    }

    pub fn is_relay(&self) -> bool {
        self.relay
    }

    /// The token that ends this reader (its connection's).
    pub fn kill_token(&self) -> &CancellationToken {
        &self.shared.kill
    }

    /// Next bytes to write: the header first, then chunks; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Bytes> {
        if !self.ready().await {
            return None;
        }
        let b = self.pending.pop_front()?;
        self.count_sent(b.len());
        Some(b)
    }

    /// Moves every chunk that is ready (the header first) to `out`, waiting until there is at least one; `false`
    /// at the end of the stream. Call it only once the previous batch is written: an empty batch is what marks
    /// the reader as caught up.
    pub async fn next_batch(&mut self, out: &mut VecDeque<Bytes>) -> bool {
        if !self.ready().await {
            return false;
        }
        self.count_sent(self.pending.iter().map(Bytes::len).sum());
        out.extend(self.pending.drain(..));
        true
    }

    /// Hands a caught-up reader's socket to a shard of the stream, which a fan-out thread (`output::fanout`)
    /// serves, writing new chunks to it directly; [`Parking::resume`] says where to go on once the shard gives
    /// it back. `None` when the reader is
    /// not at the live edge (or the stream has ended): go on with [`Subscription::next_batch`]. Call it only
    /// once everything taken so far is written.
    pub fn park(&mut self, socket: &Arc<TcpStream>) -> Option<Parking> {
        let Cursor::At(cursor) = self.cursor else {
            return None;
        };
        // Shards write framed chunks: only a reader that frames its own response may park.
        if !self.framed {
            return None;
        }
        // With a coalescing window readers stay with their tasks: a task that runs late takes several windows
        // in one write, which is what keeps 10000 clients going on two cores; a shard, writing every window to
        // everyone, measured worse there (stalls at 10000 where tasks had none).
        if !self.pending.is_empty() || self.hub.coalescing() {
            return None;
        }
        let index = self.id as usize % self.hub.shards.len();
        let shard = &self.hub.shards[index];
        let (tx, rx) = oneshot::channel();
        {
            // Under the hub's lock, so that every chunk published after this is one the shard sees as new.
            let inner = self.hub.inner.lock().unwrap();
            if cursor != inner.head() || inner.ended {
                return None;
            }
            self.shared
                .caught_up_ms
                .store(self.hub.now_ms(), Ordering::Relaxed);
            shard.parked.lock().unwrap().push(Parked {
                socket: socket.clone(),
                shared: self.shared.clone(),
                cursor,
                resume: tx,
            });
        }
        let first = !shard.started.swap(true, Ordering::AcqRel);
        self.trim();
        Some(Parking {
            resume: rx,
            start_shard: first.then_some(index),
        })
    }

    /// The stream's hub (a parked reader's shard is started with it).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Takes a reader back from a shard: its next chunk is `resume.cursor`; returns the rest of a chunk the
    /// shard wrote only in part, to be written first.
    pub fn resume(&mut self, resume: Resume) -> Option<Bytes> {
        self.cursor = Cursor::At(resume.cursor);
        self.shared.cursor.store(resume.cursor, Ordering::Relaxed);
        resume.rest
    }

    /// Gives back what a burst (a joiner's keyframe group, catching up) grew the batch buffer to, once the reader
    /// has caught up: most of its life it holds a chunk or two, and readers are many.
    fn trim(&mut self) {
        if self.pending.capacity() > 4 * PENDING_CAPACITY {
            self.pending.shrink_to(PENDING_CAPACITY);
        }
    }

    fn count_sent(&self, n: usize) {
        self.hub
            .stats
            .bytes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Waits until `pending` has something; `false` at the end of the stream.
    async fn ready(&mut self) -> bool {
        while self.pending.is_empty() {
            self.rx.borrow_and_update();
            match self.fill() {
                Fill::Data => {}
                Fill::End => return false,
                Fill::Wait => {
                    self.trim();
                    if self.rx.changed().await.is_err() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn fill(&mut self) -> Fill {
        let hub = &self.hub;
        let now = Instant::now();
        let inner = hub.inner.lock().unwrap();
        let head = inner.head();
        let mut cursor = match self.cursor {
            Cursor::At(s) => s,
            Cursor::WaitJoin { after, earliest } => {
                let join = if earliest {
                    inner.joins.iter().copied().find(|&j| j >= after)
                } else {
                    inner.latest_join_at_or_after(after)
                };
                match join {
                    Some(j) => j,
                    None => {
                        self.shared.cursor.store(head, Ordering::Relaxed);
                        self.shared
                            .caught_up_ms
                            .store(hub.now_ms(), Ordering::Relaxed);
                        // An earliest-join reader keeps its place: the first keyframe may still be coming.
                        let after = if earliest { after } else { head.max(after) };
                        self.cursor = Cursor::WaitJoin { after, earliest };
                        return if inner.ended { Fill::End } else { Fill::Wait };
                    }
                }
            }
        };
        let behind = cursor < inner.base
            || (cursor < head
                && now.duration_since(inner.ring[(cursor - inner.base) as usize].at)
                    > hub.skip_lag());
        if behind {
            if let Some(j) = inner
                .latest_join_at_or_after(cursor.max(inner.base))
                .filter(|&j| j > cursor)
            {
                hub.stats.skips.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(stream = %hub.name, peer = ?self.shared.peer, skipped = j - cursor, "client behind: moved to the newest keyframe");
                cursor = j;
            } else if cursor < inner.base {
                // Its data is gone and no keyframe follows yet: wait for the next one.
                hub.stats.skips.fetch_add(1, Ordering::Relaxed);
                self.cursor = Cursor::WaitJoin {
                    after: head,
                    earliest: false,
                };
                drop(inner);
                return self.fill();
            }
        }
        // Only called with an empty batch: finding nothing new means the client has taken everything (hyper
        // polls the body only when it can write). Marking it at the end of a fill instead would count a reader as
        // caught up while its last batch still waits on a slow socket.
        if cursor == head {
            self.shared
                .caught_up_ms
                .store(hub.now_ms(), Ordering::Relaxed);
        }
        while cursor < head && self.pending.len() < MAX_BATCH {
            self.pending
                .push_back(inner.ring[(cursor - inner.base) as usize].bytes(self.framed));
            cursor += 1;
        }
        self.cursor = Cursor::At(cursor);
        self.shared.cursor.store(cursor, Ordering::Relaxed);
        if !self.pending.is_empty() {
            Fill::Data
        } else if inner.ended {
            Fill::End
        } else {
            Fill::Wait
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.gone.store(true, Ordering::Release);
        self.hub.clients.lock().unwrap().remove(&self.id);
        let now = if self.relay {
            &self.hub.stats.relays_now
        } else {
            &self.hub.stats.clients_now
        };
        now.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::webm::build::*;

    const TEST_SEGMENTS: SegmentConfig = SegmentConfig {
        target: Duration::from_secs(2),
        window: 10,
    };

    fn hub(join: JoinMode, max_lag_ms: u64) -> Arc<Hub> {
        Hub::new(
            "t",
            HubConfig {
                join,
                max_lag: Duration::from_millis(max_lag_ms),
                max_gop_bytes: 1 << 20,
                coalesce: Duration::ZERO,
                segments: TEST_SEGMENTS,
            },
        )
    }

    fn header(video: bool) -> Vec<u8> {
        let mut s = element(0x1A45_DFA3, &[]);
        s.extend(open(0x1853_8067));
        let mut t = uint(0xD7, 1);
        t.extend(uint(0x83, if video { 1 } else { 2 }));
        let mut t2 = uint(0xD7, 2);
        t2.extend(uint(0x83, 2));
        let mut tracks = element(0xAE, &t);
        if video {
            tracks.extend(element(0xAE, &t2));
        }
        s.extend(element(0x1654_AE6B, &tracks));
        s
    }

    fn cluster(tc: u64) -> Vec<u8> {
        let mut c = open(0x1F43_B675);
        c.extend(uint(0xE7, tc));
        c
    }

    fn block(track: u8, key: bool, tag: u8) -> Vec<u8> {
        element(0xA3, &[0x80 | track, 0, 0, if key { 0x80 } else { 0 }, tag])
    }

    /// Header, then `gops` clusters of an audio block, a video keyframe and two delta frames.
    fn publish_gops(p: &mut Publisher, first: u64, gops: u64) {
        for g in first..first + gops {
            let mut c = cluster(g * 1000);
            c.extend(block(2, true, g as u8));
            p.push(&c).unwrap();
            p.push(&block(1, true, g as u8)).unwrap();
            p.push(&block(1, false, g as u8)).unwrap();
            p.push(&block(1, false, g as u8)).unwrap();
        }
    }

    /// A hub with its header and one keyframe group published.
    fn started(join: JoinMode, max_lag_ms: u64) -> (Arc<Hub>, Publisher) {
        let h = hub(join, max_lag_ms);
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        publish_gops(&mut p, 0, 1);
        (h, p)
    }

    /// A reader of `h`, subscribed now.
    async fn reader(h: &Arc<Hub>) -> Subscription {
        h.subscribe(None, CancellationToken::new(), Duration::from_secs(1))
            .await
            .unwrap()
    }

    async fn read_available(s: &mut Subscription) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(20), s.next()).await {
            out.push(b);
        }
        out
    }

    #[tokio::test]
    async fn gop_joiner_gets_header_then_last_keyframe_cluster() {
        let h = hub(JoinMode::Gop, 5000);
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        publish_gops(&mut p, 0, 3);
        let mut s = reader(&h).await;
        assert!(s.has_video());
        let got = read_available(&mut s).await;
        assert_eq!(got[0].as_ref(), header(true).as_slice());
        // The cluster of GOP 2 (audio first, then the keyframe) and its two deltas.
        assert_eq!(got.len(), 1 + 4);
        assert!(got[1].starts_with(&[0x1F, 0x43, 0xB6, 0x75]));
        assert_eq!(*got[1].last().unwrap(), 2);
    }

    #[tokio::test]
    async fn reader_between_the_header_and_the_first_block_gets_the_first_keyframe() {
        let h = hub(JoinMode::Gop, 5000);
        let mut p = Publisher::new(h.clone());
        // The header is published when the first cluster starts, before its first block.
        p.push(&header(true)).unwrap();
        p.push(&cluster(0)).unwrap();
        assert!(h.has_header() && h.published_chunks() == 0);
        let mut s = reader(&h).await;
        // Then a burst of three keyframe groups, as a fast upload's writer releases them.
        p.push(&block(2, true, 0)).unwrap();
        for key in [true, false, false] {
            p.push(&block(1, key, 0)).unwrap();
        }
        publish_gops(&mut p, 1, 2);
        let got = read_available(&mut s).await;
        assert_eq!(
            got.len(),
            1 + 3 * 4,
            "header, then every group from the first: {}",
            got.len()
        );
    }

    #[tokio::test]
    async fn live_joiner_waits_for_the_next_keyframe_cluster() {
        let h = hub(JoinMode::Live, 5000);
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        publish_gops(&mut p, 0, 2);
        let mut s = reader(&h).await;
        assert_eq!(read_available(&mut s).await.len(), 1, "header only");
        publish_gops(&mut p, 2, 1);
        let got = read_available(&mut s).await;
        assert_eq!(got.len(), 4);
        assert!(got[0].starts_with(&[0x1F, 0x43, 0xB6, 0x75]));
    }

    #[tokio::test]
    async fn reader_there_before_the_first_media_gets_it_from_the_first_keyframe() {
        let h = hub(JoinMode::Gop, 5000);
        let h2 = h.clone();
        let reader = tokio::spawn(async move {
            let mut s = h2
                .subscribe(None, CancellationToken::new(), Duration::from_secs(5))
                .await
                .unwrap();
            read_available(&mut s).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The header and three keyframe groups arrive in one burst (a writer releasing held blocks).
        let mut burst = header(true);
        for g in 0..3u8 {
            let mut c = cluster(u64::from(g) * 1000);
            c.extend(block(1, true, g));
            c.extend(block(1, false, g));
            burst.extend(c);
        }
        Publisher::new(h.clone()).push(&burst).unwrap();
        let got = reader.await.unwrap();
        assert_eq!(
            got.len(),
            1 + 6,
            "header and all three groups, not just the newest"
        );
        assert_eq!(*got[1].last().unwrap(), 0);
    }

    #[tokio::test]
    async fn cluster_whose_first_video_block_is_delta_is_no_join_point() {
        let (h, mut p) = started(JoinMode::Gop, 5000);
        // A forced cluster that starts mid-GOP.
        let mut c = cluster(5000);
        c.extend(block(1, false, 9));
        p.push(&c).unwrap();
        let mut s = reader(&h).await;
        let got = read_available(&mut s).await;
        assert_eq!(got.len(), 1 + 5, "joins at GOP 0, not at the delta cluster");
    }

    #[tokio::test]
    async fn audio_only_streams_join_at_any_cluster() {
        let h = hub(JoinMode::Live, 5000);
        let mut p = Publisher::new(h.clone());
        p.push(&header(false)).unwrap();
        // The header is complete only once the first cluster starts.
        let mut c = cluster(0);
        c.extend(block(1, true, 1));
        p.push(&c).unwrap();
        let mut s = reader(&h).await;
        assert!(!s.has_video());
        let mut c = cluster(1000);
        c.extend(block(1, true, 2));
        c.extend(block(1, true, 3));
        p.push(&c).unwrap();
        assert_eq!(
            read_available(&mut s).await.len(),
            3,
            "header, then the next cluster's two blocks"
        );
    }

    #[tokio::test]
    async fn finish_ends_readers_cleanly() {
        let (h, _p) = started(JoinMode::Gop, 5000);
        let mut s = reader(&h).await;
        h.finish();
        let mut n = 0;
        while s.next().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
        drop(s);
        assert_eq!(h.client_count(), 0);
        assert_eq!(h.stats.clients_now.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn subscribe_to_a_stream_that_ends_without_header_fails() {
        let h = hub(JoinMode::Gop, 5000);
        let h2 = h.clone();
        tokio::spawn(async move { h2.finish() });
        let r = h
            .subscribe(None, CancellationToken::new(), Duration::from_secs(5))
            .await;
        assert_eq!(r.unwrap_err(), SubscribeError::Ended);
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_reader_skips_to_newest_keyframe_then_is_reaped() {
        let (h, mut p) = started(JoinMode::Gop, 300);
        let kill = CancellationToken::new();
        let mut slow = h
            .subscribe(None, kill.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        let mut fast = reader(&h).await;
        assert!(slow.next().await.is_some(), "header");
        assert!(slow.next().await.is_some(), "first chunk of GOP 0");
        read_available(&mut fast).await;
        publish_gops(&mut p, 1, 1);
        read_available(&mut fast).await;
        tokio::time::advance(Duration::from_millis(200)).await; // GOP 1 is now older than skip_lag (75 ms)
        publish_gops(&mut p, 2, 1);
        read_available(&mut fast).await;
        let got = read_available(&mut slow).await;
        // The rest of the batch it already holds (3 chunks), then GOP 2's cluster: GOP 1 skipped.
        assert_eq!(got.len(), 3 + 4);
        assert_eq!(*got[3].last().unwrap(), 2);
        assert_eq!(h.stats.skips.load(Ordering::Relaxed), 1);
        // Now it stops reading while the stream goes on: after max_lag it is reaped; the reader that
        // keeps up is not.
        tokio::time::advance(Duration::from_millis(350)).await;
        publish_gops(&mut p, 3, 1);
        read_available(&mut fast).await;
        assert_eq!(h.reap(), 1);
        assert!(kill.is_cancelled());
        assert_eq!(h.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(h.reap(), 0, "counted once");
    }

    #[tokio::test]
    async fn keyframe_group_over_the_byte_cap_is_not_served_to_joiners() {
        let h = Hub::new(
            "t",
            HubConfig {
                join: JoinMode::Gop,
                max_lag: Duration::from_secs(5),
                max_gop_bytes: 30,
                coalesce: Duration::ZERO,
                segments: TEST_SEGMENTS,
            },
        );
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        publish_gops(&mut p, 0, 1); // about 50 bytes: over the cap
        let mut s = reader(&h).await;
        assert_eq!(
            read_available(&mut s).await.len(),
            1,
            "header only: waits for the next keyframe"
        );
        publish_gops(&mut p, 1, 1);
        assert_eq!(read_available(&mut s).await.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn coalescing_wakes_readers_once_per_window() {
        let h = Hub::new(
            "t",
            HubConfig {
                join: JoinMode::Live,
                max_lag: Duration::from_secs(5),
                max_gop_bytes: 1 << 20,
                coalesce: Duration::from_millis(40),
                segments: TEST_SEGMENTS,
            },
        );
        tokio::spawn(h.clone().run_coalescer());
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        publish_gops(&mut p, 0, 1);
        let mut s = reader(&h).await;
        assert!(s.next().await.is_some(), "header");
        // Park the reader on its wake-up, then publish.
        let reader = tokio::spawn(async move {
            let first = s.next().await;
            (first, s)
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        publish_gops(&mut p, 1, 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!reader.is_finished(), "woken before the window closed");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(reader.is_finished(), "woken when the window closed");
        let (first, mut s) = reader.await.unwrap();
        assert!(first.is_some());
        let mut got = 1;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), s.next()).await {
            got += 1;
        }
        assert_eq!(got, 4);
    }

    /// A connected loopback pair: the server side (for parking) and the client side.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Arc::new(server), client)
    }

    /// Parks a reader as its task does: with a fan-out thread serving its shard.
    fn park(
        s: &mut Subscription,
        sock: &Arc<TcpStream>,
    ) -> Option<oneshot::Receiver<std::io::Result<Resume>>> {
        let parking = s.park(sock)?;
        if let Some(index) = parking.start_shard {
            crate::output::fanout::start(s.hub(), index);
        }
        Some(parking.resume)
    }

    /// Takes everything the reader has ready, as a task does before it parks.
    async fn drain(s: &mut Subscription) {
        let mut q = VecDeque::new();
        while !s.pending.is_empty() || matches!(s.fill(), Fill::Data) {
            assert!(s.next_batch(&mut q).await);
        }
    }

    #[tokio::test]
    async fn parked_reader_is_written_by_its_shard_and_handed_back_at_the_end() {
        use tokio::io::AsyncReadExt;
        let (h, mut p) = started(JoinMode::Gop, 5000);
        let mut s = reader(&h).await;
        s.use_chunked_framing();
        let (sock, mut client) = socket_pair().await;
        assert!(
            s.park(&sock).is_none(),
            "not caught up: the header is not even taken"
        );
        drain(&mut s).await;
        let back = park(&mut s, &sock).expect("caught up");
        let sent = h.stats.bytes_sent.load(Ordering::Relaxed);
        let at = h.published_chunks();
        publish_gops(&mut p, 1, 1);
        let expected: Vec<u8> = {
            let inner = h.inner.lock().unwrap();
            let from = (at - inner.base) as usize;
            inner
                .ring
                .iter()
                .skip(from)
                .flat_map(|s| s.framed.to_vec())
                .collect()
        };
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the shard writes without the reader's task")
            .unwrap();
        assert_eq!(got, expected);
        h.finish();
        let resume = tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .expect("handed back at the end")
            .unwrap()
            .unwrap();
        assert_eq!(resume.cursor, h.published_chunks());
        assert!(resume.rest.is_none());
        assert_eq!(
            h.stats.bytes_sent.load(Ordering::Relaxed) - sent,
            expected.len() as u64
        );
        assert!(s.resume(resume).is_none());
        assert!(!s.next_batch(&mut VecDeque::new()).await, "then the end");
    }

    #[tokio::test]
    async fn a_full_socket_goes_back_to_its_task_with_the_rest_of_its_chunk() {
        let (h, mut p) = started(JoinMode::Gop, 60_000);
        let (sock, client) = socket_pair().await;
        let _ = socket2::SockRef::from(&*sock).set_send_buffer_size(4096);
        let _ = socket2::SockRef::from(&client).set_recv_buffer_size(4096);
        let mut s = reader(&h).await;
        s.use_chunked_framing();
        drain(&mut s).await;
        let back = park(&mut s, &sock).expect("caught up");
        let at = h.published_chunks();
        // A client that never reads: about 2 MB of 64 KiB blocks cannot all fit.
        let big = vec![7u8; 64 << 10];
        for i in 1..33 {
            let mut c = cluster(i * 1000);
            let mut payload = vec![0x81, 0, 0, 0x80];
            payload.extend_from_slice(&big);
            c.extend(element(0xA3, &payload));
            p.push(&c).unwrap();
        }
        let resume = tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .expect("handed back")
            .unwrap()
            .unwrap();
        assert!(resume.cursor > at && resume.cursor < h.published_chunks());
        if let Some(rest) = &resume.rest {
            let inner = h.inner.lock().unwrap();
            let chunk = &inner.ring[(resume.cursor - 1 - inner.base) as usize].framed;
            assert!(!rest.is_empty() && rest.len() < chunk.len());
            assert!(chunk.ends_with(rest), "the unwritten tail of the chunk");
        }
        assert_eq!(s.resume(resume).is_some(), s.pending.is_empty());
        drop(client);
    }

    #[tokio::test]
    async fn a_shard_lets_go_of_a_client_whose_task_is_gone() {
        let (h, mut p) = started(JoinMode::Gop, 5000);
        let mut s = reader(&h).await;
        s.use_chunked_framing();
        let (sock, _client) = socket_pair().await;
        drain(&mut s).await;
        let back = park(&mut s, &sock).expect("caught up");
        let parked = |h: &Hub| {
            h.shards
                .iter()
                .map(|s| s.parked.lock().unwrap().len())
                .sum::<usize>()
        };
        // The task ends: its subscription goes. Another reference to the socket (here the test's) must not keep
        // the client parked.
        let _other = sock.clone();
        drop((back, s, sock));
        publish_gops(&mut p, 1, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while parked(&h) > 0 {
            assert!(Instant::now() < deadline, "still parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.client_count(), 0);
    }

    #[tokio::test]
    async fn ring_is_bounded_by_bytes() {
        let h = hub(JoinMode::Gop, 60_000);
        let mut p = Publisher::new(h.clone());
        p.push(&header(true)).unwrap();
        let big = vec![0u8; 1 << 20];
        for i in 0..(RING_MAX_BYTES / big.len() + 10) {
            let mut c = cluster(i as u64);
            let mut payload = vec![0x81, 0, 0, 0x80];
            payload.extend_from_slice(&big);
            c.extend(element(0xA3, &payload));
            p.push(&c).unwrap();
        }
        let inner = h.inner.lock().unwrap();
        assert!(inner.bytes <= RING_MAX_BYTES);
        assert!(inner.joins.front().is_none_or(|&j| j >= inner.base));
    }
}
