//! Direct fan-out: raw watchers that have caught up with the live edge are written by a few shard threads per
//! stream, instead of each chunk waking one task per client.
//!
//! ```text
//!  publish ─► head_tx ─► shard thread ×S ─► writev to every parked socket (non-blocking, shared iovecs)
//!                              │ WouldBlock, partial write, falling behind, stream end
//!                              ▼
//!                        client task: resumes at its cursor (and the rest of a half-written chunk)
//! ```
//!
//! A client task (`progressive::serve_raw`) parks its socket here when its last batch is written and its cursor is
//! the head ([`crate::stream::hub::Subscription::park`], under the hub's lock, so no publication slips in between). A
//! shard then writes each new chunk to every parked socket in one non-blocking `writev` per client, as Icecast
//! writes to its listeners from one loop: at 1000 clients that is two woken threads per chunk instead of 1000
//! tasks. A socket that cannot take everything at once goes back to its task, which waits for the socket like
//! any other reader and parks again once it has caught up; so a slow client never holds up a shard, and
//! skipping and reaping work as before. With a coalescing window nobody parks: tasks that run late merge
//! windows into one write, which held up better under overload.
//!
//! Lock order: the hub's `inner`, then a shard's `parked` (parking); a shard never holds `parked` while it
//! takes `inner`.

use std::io::{IoSlice, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::stream::hub::{ClientShared, Hub};

/// Most iovecs per `writev` (the kernel takes 1024; a batch is rarely more than a few chunks).
pub const MAX_IOVECS: usize = 64;

/// Clients written between two looks at the head during a pass.
const REFRESH_EVERY: usize = 32;

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

/// One shard of a stream's parked clients, and whether its task runs.
#[derive(Debug, Default)]
pub struct Shard {
    pub parked: Mutex<Vec<Parked>>,
    started: AtomicBool,
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

#[derive(Default)]
struct PassBuffers {
    /// The shard's parked clients, taken for the pass.
    list: Vec<Parked>,
    /// Those that stay parked, put back after the pass.
    kept: Vec<Parked>,
    chunks: Vec<Bytes>,
}

enum Step {
    Keep,
    HandBack(std::io::Result<Resume>),
    /// The client's task is gone.
    Drop,
}

/// Number of shards per stream: one per core, so every core can write.
pub fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

impl Shard {
    /// Starts shard `index`'s thread on its first parked client. The caller has just parked one, so the
    /// thread's first pass sees it.
    ///
    /// A thread of its own rather than a tokio task: a pass over thousands of sockets takes milliseconds, and
    /// on a worker it would hold up everything queued behind it there (the stream's sources, new clients),
    /// while the kernel preempts a thread.
    pub fn ensure_running(&self, hub: &Arc<Hub>, index: usize) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let rt = tokio::runtime::Handle::current();
        let task = run(hub.clone(), index);
        let spawned = std::thread::Builder::new()
            .name(format!("fanout-{index}"))
            .stack_size(256 << 10)
            .spawn(move || rt.block_on(task));
        if let Err(e) = spawned {
            tracing::warn!("cannot start a fan-out thread ({e}): running it on the runtime");
            tokio::spawn(run(hub.clone(), index));
        }
    }
}

/// A shard's loop: after every publication, writes what is new to its parked clients;
/// hands everyone back and ends when the stream has ended.
async fn run(hub: Arc<Hub>, index: usize) {
    let mut rx = hub.head_rx();
    // Kept from pass to pass, so a pass allocates only its iovecs (one per chunk, not per client).
    let mut bufs = PassBuffers::default();
    loop {
        rx.borrow_and_update();
        let ended = pass(&hub, index, &mut bufs);
        bufs.chunks.clear();
        if ended {
            // Parking is refused once the stream has ended, so an empty shard stays empty.
            if hub.shard(index).parked.lock().unwrap().is_empty() {
                break;
            }
            continue;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// One pass over a shard's parked clients; true when the stream has ended (everyone was handed back).
fn pass(hub: &Hub, index: usize, bufs: &mut PassBuffers) -> bool {
    let shard = hub.shard(index);
    let PassBuffers { list, kept, chunks } = bufs;
    std::mem::swap(&mut *shard.parked.lock().unwrap(), list);
    let Some(from) = list.iter().map(|p| p.cursor).min() else {
        return hub.is_ended();
    };
    let mut snap = hub.snapshot(from, chunks);
    // The iovecs of the snapshot, made once per pass: every client's write is a slice of them.
    let mut iovs: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    for (i, mut p) in list.drain(..).enumerate() {
        // What was published while the pass went on goes out in this pass too: under load a pass is long,
        // and one write of two chunks is far cheaper than two writes.
        if i % REFRESH_EVERY == REFRESH_EVERY - 1 && hub.published_chunks() != snap.head {
            drop(iovs);
            snap = hub.snapshot(snap.from, chunks);
            iovs = chunks.iter().map(|c| IoSlice::new(c)).collect();
        }
        match deliver(hub, &mut p, &snap, chunks, &iovs) {
            Step::Keep => kept.push(p),
            Step::HandBack(r) => {
                let _ = p.resume.send(r);
            }
            Step::Drop => {}
        }
    }
    if snap.ended {
        // Everyone has had everything: back to their tasks, which end their responses.
        for p in kept.drain(..) {
            let cursor = p.cursor;
            let _ = p.resume.send(Ok(Resume { cursor, rest: None }));
        }
    }
    // Clients that parked during the pass are already in the list; keep them.
    shard.parked.lock().unwrap().append(kept);
    snap.ended
}

/// Writes to `p` what it has not had yet, in non-blocking `writev`s; `iovs` are `chunks` as iovecs.
fn deliver(
    hub: &Hub,
    p: &mut Parked,
    snap: &Snapshot,
    chunks: &[Bytes],
    iovs: &[IoSlice<'_>],
) -> Step {
    // Its subscription says so when the client's task ends (a cancelled connection's task ends at once): an
    // atomic load, cheaper than asking the cancellation token, which takes a lock, and unlike counting the
    // socket's references not fooled by a clone held elsewhere.
    if p.shared.gone.load(Ordering::Acquire) {
        return Step::Drop;
    }
    if p.cursor < snap.from {
        return Step::HandBack(Ok(Resume {
            cursor: p.cursor,
            rest: None,
        }));
    }
    let before = p.cursor;
    let mut written = 0;
    let step = loop {
        if p.cursor >= snap.head {
            break Step::Keep;
        }
        let at = (p.cursor - snap.from) as usize;
        let todo = &chunks[at..];
        let k = todo.len().min(MAX_IOVECS);
        // Straight to the socket rather than through tokio's readiness (another cache miss per client): a
        // `WouldBlock` here hands the client back, and its task's `poll_write_ready` finds out for itself.
        match (&*SockRef::from(&*p.socket)).write_vectored(&iovs[at..at + k]) {
            Ok(mut n) => {
                written += n;
                let mut i = 0;
                while i < k && n >= todo[i].len() {
                    n -= todo[i].len();
                    i += 1;
                }
                p.cursor += i as u64;
                if i < k {
                    // A partial write: the socket is full. Its task writes the rest when it can.
                    p.cursor += 1;
                    break Step::HandBack(Ok(Resume {
                        cursor: p.cursor,
                        rest: Some(todo[i].slice(n..)),
                    }));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                break Step::HandBack(Ok(Resume {
                    cursor: p.cursor,
                    rest: None,
                }));
            }
            Err(e) => break Step::HandBack(Err(e)),
        }
    };
    if p.cursor != before {
        hub.delivered(&p.shared, p.cursor, written, matches!(step, Step::Keep));
    }
    step
}
