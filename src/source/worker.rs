//! A source in a process of its own (`--source-isolation on`): the daemon spawns `transcast worker`, which
//! limits and locks itself down ([`super::sandbox`]) and then runs the source's pipeline ([`SourcePipeline`])
//! on the bytes that come over its stdin; what the pipeline makes of them goes back over its stdout
//! ([`super::wire`]).
//!
//! ```text
//!  daemon: feed ─ Data ──────► stdin  ─► worker: appsrc ─ demux/decode ─ conform ─ WireTarget ─┐
//!          WorkerPipeline ◄─── stdout ◄─ Track?, Frame, Consumed, Failed, Ended ◄──────────────┘
//!          reader thread: Track → Stream::offer_track → Answer; Frame → stamp ─ pace ─ deliver
//! ```
//!
//! The worker's memory is bounded by `RLIMIT_AS`; a worker that dies (any signal), is killed, or sends what
//! the protocol does not allow ends only its source: the stream falls back as for a dropped connection.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;

use crate::config::{InputLimits, WorkerSettings};
use crate::error::{Error, Kind, Result};
use crate::source::detect::Detected;
use crate::source::pipeline::{Local, SourcePipeline, SourceShared, Target};
use crate::source::sandbox;
use crate::source::wire::{self, Answer, Frame, FromWorker, Hello, ToWorker};
use crate::stream::webm::TrackKind;
use crate::stream::{Offer, Stream};
use crate::templates::Templates;

/// Workers started and workers that died (a signal, an exit the daemon did not ask for, a broken protocol),
/// since the process started (`/metrics`).
pub static STARTED: AtomicU64 = AtomicU64::new(0);
pub static DIED: AtomicU64 = AtomicU64::new(0);

/// Input bytes in flight to a worker (sent, not yet taken by its pipeline), as the in-process appsrc holds.
pub const INPUT_WINDOW: u64 = 512 << 10;
/// How long a worker's streaming thread waits for the daemon's answer about a track.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the daemon looks whether a worker is still alive.
const EXIT_POLL: Duration = Duration::from_millis(50);
/// A worker says how much input it has taken at least this often, even when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a worker says how much input its pipeline has taken.
const CONSUMED_EVERY: Duration = Duration::from_millis(20);

fn kind_of(code: &str) -> Kind {
    [
        Kind::BadRequest,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::Busy,
        Kind::BadOffset,
        Kind::UnsupportedMedia,
        Kind::Unavailable,
        Kind::BadGateway,
        Kind::GatewayTimeout,
        Kind::Pipeline,
    ]
    .into_iter()
    .find(|k| k.code() == code)
    .unwrap_or(Kind::Internal)
}

// ---------------------------------------------------------------------------------------------------------
// The worker process.

/// What the worker writes: its stdout, one whole message at a time.
struct Out(Mutex<BufWriter<std::fs::File>>);

impl Out {
    fn send(&self, m: &FromWorker) -> std::io::Result<()> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.write(&mut *w)?;
        w.flush()
    }
}

/// The worker's side of a source pipeline: its decisions come from the daemon, its buffers go to it.
struct WireTarget {
    name: String,
    out: Arc<Out>,
    answers: Arc<Mutex<HashMap<u8, std::sync::mpsc::Sender<Answer>>>>,
    next: AtomicU8,
    /// The track each kind goes out as.
    tracks: Mutex<Vec<(TrackKind, u8)>>,
}

impl Target for WireTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer_track(&self, kind: TrackKind, caps: &gst::Caps, passthrough: bool) -> Offer {
        let track = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(track, tx);
        let asked = self.out.send(&FromWorker::Track {
            track,
            kind: match kind {
                TrackKind::Video => wire::Kind::Video,
                _ => wire::Kind::Audio,
            },
            caps: caps.to_string(),
            passthrough,
        });
        let answer = match asked.map(|()| rx.recv_timeout(ANSWER_TIMEOUT)) {
            Ok(Ok(a)) => a,
            _ => return Offer::Refuse(Error::internal("the daemon did not answer about a track")),
        };
        let offer = match answer {
            Answer::Raw(caps) => match gst::Caps::from_str(&caps) {
                Ok(c) => Offer::Raw(c),
                Err(_) => Offer::Refuse(Error::internal("unreadable caps from the daemon")),
            },
            Answer::Encoded => Offer::Encoded,
            Answer::Discard(why) => Offer::Discard(why),
            Answer::Refuse(code, message) => Offer::Refuse(Error::new(kind_of(&code), message)),
        };
        if matches!(offer, Offer::Raw(_) | Offer::Encoded) {
            self.tracks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((kind, track));
        }
        offer
    }

    fn note_codecs(&self, codecs: Vec<String>) {
        let _ = self.out.send(&FromWorker::Codecs(codecs));
    }

    fn tracks_complete(&self) -> Result<()> {
        self.out
            .send(&FromWorker::TracksComplete)
            .map_err(|e| Error::internal(format!("telling the daemon: {e}")))
    }

    fn failed(&self, e: Error) {
        let _ = self
            .out
            .send(&FromWorker::Failed(e.kind.code().to_string(), e.message));
    }

    fn buffer(&self, kind: TrackKind, buffer: gst::Buffer) -> Result<(), gst::FlowError> {
        let track = self
            .tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| *t)
            .ok_or(gst::FlowError::NotLinked)?;
        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
        let frame = Frame {
            track,
            pts: buffer.pts().map(|t| t.nseconds()),
            dts: buffer.dts().map(|t| t.nseconds()),
            duration: buffer.duration().map(|t| t.nseconds()),
            delta: buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            payload: Bytes::new(),
        };
        let mut w = self.out.0.lock().unwrap_or_else(|e| e.into_inner());
        wire::write_frame(&mut *w, &frame, map.as_slice())
            .and_then(|()| w.flush())
            .map_err(|_| gst::FlowError::Eos)
    }
}

/// `transcast worker`: reads its Hello, limits and locks itself down, then runs the source's pipeline until
/// its input ends (or the daemon goes). Never returns on success: the process exits when the source is done.
pub fn worker_main() -> std::result::Result<(), String> {
    // Its log goes to stderr, which the daemon reads into its own log (at debug level).
    let filter = std::env::var("TRANSCAST_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
    let mut input = BufReader::with_capacity(256 << 10, std::io::stdin());
    let hello = match ToWorker::read(&mut input) {
        Ok(Some(ToWorker::Hello(h))) => h,
        other => return Err(format!("expected a Hello from the daemon, got {other:?}")),
    };
    sandbox::limit(sandbox::Limits {
        memory: hello.memory,
        cpu_seconds: None,
    })?;
    let enforced = sandbox::lock_down()?;
    gst::init().map_err(|e| format!("GStreamer: {e}"))?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let out = Arc::new(Out(Mutex::new(BufWriter::with_capacity(
        64 << 10,
        std::fs::File::from(stdout),
    ))));
    let answers: Arc<Mutex<HashMap<u8, std::sync::mpsc::Sender<Answer>>>> = Arc::default();
    let target = Arc::new(WireTarget {
        name: hello.stream.clone(),
        out: out.clone(),
        answers: answers.clone(),
        next: AtomicU8::new(0),
        tracks: Mutex::default(),
    });
    let templates = Templates::from_texts(&hello.templates).map_err(|e| e.message)?;
    let caps = gst::Caps::from_str(&hello.caps).map_err(|e| format!("input caps: {e}"))?;
    let limits = InputLimits {
        max_pixels: hello.max_pixels,
        max_dimension: hello.max_dimension,
        max_fps: hello.max_fps,
    };
    let pipeline = Arc::new(
        SourcePipeline::start_with(
            target,
            &format!("worker-{}", hello.stream),
            &caps,
            hello.matroska,
            Arc::new(templates),
            limits,
        )
        .map_err(|e| e.message)?,
    );
    eprintln!(
        "worker for '{}': landlock {}, seccomp {}",
        hello.stream, enforced.landlock, enforced.seccomp
    );
    let received = Arc::new(AtomicU64::new(0));
    {
        let (pipeline, received) = (pipeline.clone(), received.clone());
        std::thread::spawn(move || {
            loop {
                match ToWorker::read(&mut input) {
                    Ok(Some(ToWorker::Data(d))) => {
                        received.fetch_add(d.len() as u64, Ordering::Relaxed);
                        pipeline.push_input(d);
                    }
                    Ok(Some(ToWorker::InputEnd)) => pipeline.end_of_stream(),
                    Ok(Some(ToWorker::Answer { track, answer })) => {
                        if let Some(tx) = answers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&track)
                        {
                            let _ = tx.send(answer);
                        }
                    }
                    // The daemon is gone (or mad): so is this source.
                    Ok(Some(ToWorker::Hello(_))) | Ok(None) | Err(_) => std::process::exit(0),
                }
            }
        });
    }
    let bus = pipeline.pipeline().bus().expect("a pipeline has a bus");
    let queued = pipeline.queued_input();
    let mut told = 0;
    let mut last_told = std::time::Instant::now();
    loop {
        let msg = bus.timed_pop(gst::ClockTime::from_nseconds(
            CONSUMED_EVERY.as_nanos() as u64
        ));
        let consumed = received.load(Ordering::Relaxed).saturating_sub(queued());
        // Said when it changes, and at least every HEARTBEAT: the daemon takes a silent worker for a hung one.
        if consumed != told || last_told.elapsed() >= HEARTBEAT {
            told = consumed;
            last_told = std::time::Instant::now();
            let _ = out.send(&FromWorker::Consumed(consumed));
        }
        let Some(msg) = msg else { continue };
        match msg.view() {
            gst::MessageView::Error(err) => {
                let (path, text) = crate::source::pipeline::describe_error(err);
                let _ = out.send(&FromWorker::PipelineError(path, text));
                std::process::exit(0);
            }
            gst::MessageView::Eos(_) => {
                let _ = out.send(&FromWorker::Ended);
                std::process::exit(0);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The daemon's side.

/// How a worker's source ended, as its pipeline's bus would say it.
#[derive(Debug)]
pub enum WorkerEvent {
    /// (element path, message)
    Failed(String, String),
    Ended,
}

/// A source running in a worker process: the daemon's handle on it.
#[derive(Debug)]
pub struct WorkerPipeline {
    pub pid: u32,
    child: Arc<Mutex<std::process::Child>>,
    to_worker: mpsc::Sender<ToWorker>,
    /// A place in the channel to the worker, reserved by `ready` for the next `send`.
    slot: Mutex<Option<mpsc::OwnedPermit<ToWorker>>>,
    written: AtomicU64,
    consumed: Arc<AtomicU64>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkerEvent>>,
    pub shared: Arc<SourceShared>,
    local: Arc<Local>,
    /// Set when the daemon kills the worker itself.
    killed: Arc<AtomicBool>,
    health: Arc<Health>,
}

impl WorkerPipeline {
    /// Spawns the worker of source `id` of `stream` and starts it on input typefound as `input`.
    pub fn start(
        stream: Arc<Stream>,
        id: u64,
        input: &Detected,
        templates: &Templates,
        pace: bool,
        limits: InputLimits,
        settings: &WorkerSettings,
    ) -> Result<WorkerPipeline> {
        let mut child = std::process::Command::new(&settings.exe)
            .args(["worker", "--stream", &stream.name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Fewer malloc arenas: the address-space limit counts their reservations. The registry is the
            // daemon's, already scanned: a worker neither rescans nor forks the scanner.
            .env("MALLOC_ARENA_MAX", "2")
            .env("GST_REGISTRY_UPDATE", "no")
            .env("GST_REGISTRY_FORK", "no")
            .spawn()
            .map_err(|e| {
                Error::internal(format!(
                    "cannot start a worker ({}): {e}",
                    settings.exe.display()
                ))
            })?;
        let pid = child.id();
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let child = Arc::new(Mutex::new(child));
        let (to_worker, rx) = mpsc::channel::<ToWorker>(64);
        let hello = Hello {
            stream: stream.name.clone(),
            caps: input.caps.to_string(),
            matroska: input.container.is_matroska(),
            templates: templates.source_texts(),
            max_pixels: limits.max_pixels,
            max_dimension: limits.max_dimension,
            max_fps: limits.max_fps,
            memory: settings.memory,
        };
        to_worker
            .try_send(ToWorker::Hello(hello))
            .map_err(|_| Error::internal("worker channel"))?;
        let name = stream.name.clone();
        std::thread::Builder::new()
            .name(format!("worker-in-{pid}"))
            .spawn(move || write_to_worker(rx, stdin))
            .map_err(|e| Error::internal(e.to_string()))?;
        std::thread::Builder::new()
            .name(format!("worker-log-{pid}"))
            .spawn(move || {
                use std::io::BufRead;
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    tracing::debug!(stream = %name, pid, "worker: {line}");
                }
            })
            .map_err(|e| Error::internal(e.to_string()))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let consumed = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(SourceShared::default());
        let local = Arc::new(Local::new(stream.clone(), id, pace));
        // A worker that dies is known at once, not when the reader has worked through what it had sent.
        let killed = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health::default());
        let (watched, died, ours, heard) = (
            child.clone(),
            events_tx.clone(),
            killed.clone(),
            health.clone(),
        );
        let progress = health.clone();
        let hang_after = settings.hang_after;
        let name = stream.name.clone();
        std::thread::Builder::new()
            .name(format!("worker-wait-{pid}"))
            .spawn(move || {
                loop {
                    let status = watched.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
                    match status {
                        Ok(None) if heard.silent_for() > hang_after => {
                            // Alive but silent (stopped, deadlocked) while the daemon was listening.
                            ours.store(true, Ordering::Relaxed);
                            let _ = watched.lock().unwrap_or_else(|e| e.into_inner()).kill();
                            DIED.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(stream = %name, pid, "source worker said nothing for {hang_after:?}: killed");
                            let _ = died.send(WorkerEvent::Failed(
                                "worker".into(),
                                format!("the source's worker process stopped answering for {hang_after:?}"),
                            ));
                            return;
                        }
                        Ok(None) => std::thread::sleep(EXIT_POLL),
                        // Ended by the daemon (its source is done with): not a death.
                        Ok(Some(s)) if s.success() || ours.load(Ordering::Relaxed) => return,
                        Ok(Some(s)) => {
                            let how = describe_exit(s);
                            DIED.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(stream = %name, pid, "source worker died: {how}");
                            let _ = died.send(WorkerEvent::Failed(
                                "worker".into(),
                                format!("the source's worker process died: {how}"),
                            ));
                            return;
                        }
                        Err(_) => return,
                    }
                }
            })
            .map_err(|e| Error::internal(e.to_string()))?;
        let reader = Reader {
            stream,
            id,
            local: local.clone(),
            to_worker: to_worker.clone(),
            events: events_tx,
            consumed: consumed.clone(),
            shared: shared.clone(),
            child: child.clone(),
            killed: killed.clone(),
            health,
            tracks: HashMap::new(),
        };
        std::thread::Builder::new()
            .name(format!("worker-out-{pid}"))
            .spawn(move || reader.run(stdout))
            .map_err(|e| Error::internal(e.to_string()))?;
        STARTED.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pid, "source worker started");
        Ok(WorkerPipeline {
            pid,
            child,
            to_worker,
            slot: Mutex::default(),
            written: AtomicU64::new(0),
            consumed,
            events: tokio::sync::Mutex::new(events),
            shared,
            local,
            killed,
            health: progress,
        })
    }

    /// Waits until the worker has room for more input, and the channel to it for one more message
    /// (cancel-safe); false once it takes no more.
    pub async fn ready(&self) -> bool {
        while self.queued() >= INPUT_WINDOW {
            if self.to_worker.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return true;
        }
        match self.to_worker.clone().reserve_owned().await {
            Ok(p) => {
                *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                true
            }
            Err(_) => false,
        }
    }

    fn queued(&self) -> u64 {
        self.written
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed.load(Ordering::Relaxed))
    }

    /// Sends input bytes in the slot [`WorkerPipeline::ready`] reserved; false once the worker takes no more.
    pub fn send(&self, data: Bytes) -> bool {
        let Some(slot) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return false;
        };
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        slot.send(ToWorker::Data(data));
        true
    }

    pub fn end_of_stream(&self) {
        let tx = self.to_worker.clone();
        tokio::spawn(async move {
            let _ = tx.send(ToWorker::InputEnd).await;
        });
    }

    /// Input bytes sent and not yet taken by the worker's pipeline.
    pub fn queued_input(self: &Arc<Self>) -> impl Fn() -> u64 + Send + Sync + 'static {
        let me = Arc::downgrade(self);
        move || me.upgrade().map_or(0, |w| w.queued())
    }

    /// How long since the worker last took input or had a frame delivered.
    pub fn since_progress(&self) -> Duration {
        self.health.since_progress()
    }

    /// The next way the source ends; None once no more can come.
    pub async fn event(&self) -> Option<WorkerEvent> {
        self.events.lock().await.recv().await
    }
}

impl Drop for WorkerPipeline {
    fn drop(&mut self) {
        // Wake the reader thread if the pacer holds it, then end the process (the waiter reaps it).
        self.local.stop();
        self.killed.store(true, Ordering::Relaxed);
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }
}

fn write_to_worker(mut rx: mpsc::Receiver<ToWorker>, stdin: std::process::ChildStdin) {
    let mut w = BufWriter::with_capacity(64 << 10, stdin);
    while let Some(m) = rx.blocking_recv() {
        if m.write(&mut w).and_then(|()| w.flush()).is_err() {
            return;
        }
    }
}

/// When the daemon last heard from a worker, and whether its reader is busy with something else.
#[derive(Debug)]
struct Health {
    since: std::time::Instant,
    /// Milliseconds after `since` of the last message.
    last: AtomicU64,
    /// ... and of the last progress: input taken, or a frame delivered.
    progress: AtomicU64,
    busy: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            since: std::time::Instant::now(),
            last: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    fn heard(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    fn moved(&self) {
        self.progress.store(self.now_ms(), Ordering::Relaxed);
    }

    fn since_progress(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.progress.load(Ordering::Relaxed)),
        )
    }

    /// How long the worker has said nothing while the daemon was ready to hear it.
    fn silent_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let now = self.since.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// Reads what a worker says and does it in the daemon: the stream's decisions, stamped and paced frames.
struct Reader {
    stream: Arc<Stream>,
    id: u64,
    local: Arc<Local>,
    to_worker: mpsc::Sender<ToWorker>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    consumed: Arc<AtomicU64>,
    shared: Arc<SourceShared>,
    child: Arc<Mutex<std::process::Child>>,
    killed: Arc<AtomicBool>,
    health: Arc<Health>,
    /// Tracks the stream took: kind, and for raw media the caps every frame must fill exactly.
    tracks: HashMap<u8, (TrackKind, Option<RawSize>)>,
}

impl Reader {
    fn run(mut self, stdout: std::process::ChildStdout) {
        let mut r = BufReader::with_capacity(256 << 10, stdout);
        let ended = loop {
            let read = FromWorker::read(&mut r);
            self.health.heard();
            match read {
                Ok(Some(m)) => match self.handle(m) {
                    Ok(None) => {}
                    Ok(Some(ended)) => break Some(ended),
                    Err(e) => break Some(WorkerEvent::Failed("worker".into(), e)),
                },
                Ok(None) => break None,
                Err(e) => {
                    break Some(WorkerEvent::Failed(
                        "worker".into(),
                        format!("the worker broke the protocol: {e}"),
                    ));
                }
            }
        };
        // Ended, failed, or silent: either way the process is done with. Without a word of its end, it says how
        // it went by how it exited (a dead process is not killed again: its own signal is what is reported).
        self.killed.store(true, Ordering::Relaxed);
        let status = {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            child.wait()
        };
        let event = ended.unwrap_or_else(|| {
            let how = status.map_or_else(|e| e.to_string(), describe_exit);
            DIED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %self.stream.name, "source worker died: {how}");
            WorkerEvent::Failed(
                "worker".into(),
                format!("the source's worker process died: {how}"),
            )
        });
        let _ = self.events.send(event);
    }

    /// Does what a message says; `Some` when it ends the source.
    fn handle(&mut self, m: FromWorker) -> std::result::Result<Option<WorkerEvent>, String> {
        if !matches!(m, FromWorker::Frame(_) | FromWorker::Consumed(_)) {
            tracing::trace!(stream = %self.stream.name, message = ?m, "from the worker");
        }
        match m {
            FromWorker::Track {
                track,
                kind,
                caps,
                passthrough,
            } => {
                let kind = match kind {
                    wire::Kind::Video => TrackKind::Video,
                    wire::Kind::Audio => TrackKind::Audio,
                };
                let offer = match gst::Caps::from_str(&caps) {
                    Ok(c) => self.stream.offer_track(self.id, kind, &c, passthrough),
                    Err(_) => Offer::Refuse(Error::unsupported("the worker sent unreadable caps")),
                };
                let answer = match offer {
                    Offer::Raw(c) => {
                        self.tracks
                            .insert(track, (kind, Some(RawSize::of(kind, &c))));
                        Answer::Raw(c.to_string())
                    }
                    Offer::Encoded => {
                        self.tracks.insert(track, (kind, None));
                        Answer::Encoded
                    }
                    Offer::Discard(why) => Answer::Discard(why),
                    Offer::Refuse(e) => Answer::Refuse(e.kind.code().into(), e.message),
                };
                self.to_worker
                    .blocking_send(ToWorker::Answer { track, answer })
                    .map_err(|_| "the worker's input is closed".to_string())?;
            }
            FromWorker::Codecs(c) => {
                *self
                    .shared
                    .input_codecs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = c.clone();
                self.stream.note_codecs(self.id, c);
            }
            FromWorker::TracksComplete => {
                if let Err(e) = self.stream.tracks_complete(self.id) {
                    self.fail(e.clone());
                    return Ok(Some(WorkerEvent::Failed(String::new(), e.message)));
                }
            }
            FromWorker::Consumed(n) => {
                if self.consumed.swap(n, Ordering::Relaxed) != n {
                    self.health.moved();
                }
            }
            FromWorker::Frame(f) => {
                let Some((kind, raw)) = self.tracks.get(&f.track) else {
                    return Err(format!("a frame of track {} it was not given", f.track));
                };
                if let Some(size) = raw {
                    size.check(*kind, f.payload.len())?;
                }
                let kind = *kind;
                let mut buffer = gst::Buffer::from_slice(f.payload);
                {
                    let b = buffer.get_mut().expect("new buffer");
                    b.set_pts(f.pts.map(gst::ClockTime::from_nseconds));
                    b.set_dts(f.dts.map(gst::ClockTime::from_nseconds));
                    b.set_duration(f.duration.map(gst::ClockTime::from_nseconds));
                    if f.delta {
                        b.set_flags(gst::BufferFlags::DELTA_UNIT);
                    }
                }
                // Stamping, pacing and delivering may hold this thread: the worker is not to blame for the wait.
                self.health.busy.store(true, Ordering::Relaxed);
                let delivered = self.local.buffer(kind, buffer);
                self.health.heard();
                self.health.moved();
                self.health.busy.store(false, Ordering::Relaxed);
                if delivered.is_err() {
                    // The source is off air or stopping: nothing more of it is wanted.
                    return Ok(Some(WorkerEvent::Ended));
                }
            }
            FromWorker::Failed(code, message) => {
                self.fail(Error::new(kind_of(&code), message));
            }
            FromWorker::PipelineError(path, message) => {
                return Ok(Some(WorkerEvent::Failed(path, message)));
            }
            FromWorker::Ended => return Ok(Some(WorkerEvent::Ended)),
        }
        Ok(None)
    }

    /// A decision error (as a source pipeline's builder reports one): the push answers with it.
    fn fail(&self, e: Error) {
        tracing::warn!(stream = %self.stream.name, "{}", e.message);
        self.stream.source_failed(self.id, e.clone());
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }
}

/// What a raw frame of a track must be: exactly one picture, or whole audio frames of at most a second (worked
/// out once, from the caps the stream gave the track).
#[derive(Debug, Clone, Copy)]
enum RawSize {
    Picture(usize),
    /// Bytes per frame, and per second.
    Audio(usize, usize),
    /// Caps that say neither: no frame fits.
    Unknown,
}

impl RawSize {
    fn of(kind: TrackKind, caps: &gst::Caps) -> RawSize {
        match kind {
            TrackKind::Video => gstreamer_video::VideoInfo::from_caps(caps)
                .map_or(RawSize::Unknown, |i| RawSize::Picture(i.size())),
            _ => gstreamer_audio::AudioInfo::from_caps(caps)
                .ok()
                .filter(|i| i.bpf() > 0)
                .map_or(RawSize::Unknown, |i| {
                    RawSize::Audio(i.bpf() as usize, i.rate() as usize * i.bpf() as usize)
                }),
        }
    }

    fn check(self, kind: TrackKind, len: usize) -> std::result::Result<(), String> {
        let ok = match self {
            RawSize::Picture(size) => len == size,
            RawSize::Audio(bpf, per_second) => len.is_multiple_of(bpf) && len <= per_second,
            RawSize::Unknown => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the worker sent a {kind:?} frame of {len} bytes, which its caps do not allow"
            ))
        }
    }
}

/// How a process ended, for the log and the source's error.
fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(sig)) => {
            let name = match sig {
                6 => " (SIGABRT: an allocation over --source-memory-limit, or an assertion)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                24 => " (SIGXCPU)",
                31 => " (SIGSYS)",
                _ => "",
            };
            format!("signal {sig}{name}")
        }
        _ => "unknown".into(),
    }
}
