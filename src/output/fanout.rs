//! Direct fan-out: raw watchers that have caught up with the live edge are written by a pool of threads shared
//! by every stream, instead of each chunk waking one task per client.
//!
//! ```text
//!  publish ─► head_tx ─► shard (S per stream) on a pool thread ─► writev to every parked socket (non-blocking,
//!                              │                                   shared iovecs)
//!                              │ WouldBlock, partial write, falling behind, stream end
//!                              ▼
//!                        client task: resumes at its cursor (and the rest of a half-written chunk)
//! ```
//!
//! A client task (`progressive::serve_raw`) parks its socket in one of its stream's shards when its last batch
//! is written and its cursor is the head ([`crate::stream::hub::Subscription::park`], under the hub's lock, so
//! no publication slips in between). A shard then writes each new chunk to every parked socket in one
//! non-blocking `writev` per client, as Icecast writes to its listeners from one loop: at 1000 clients that is
//! two woken threads per chunk instead of 1000 tasks. A socket that cannot take everything at once goes back to
//! its task, which waits for the socket like any other reader and parks again once it has caught up; so a slow
//! client never holds up a shard, and skipping and reaping work as before. With a coalescing window nobody
//! parks: tasks that run late merge windows into one write, which held up better under overload.
//!
//! The shards run on one pool for the process ([`start`]): one thread per core (at most 8), each driving the
//! shards given to it in turn, so the thread count does not grow with the number of streams. Threads rather
//! than tokio workers: a pass over thousands of sockets takes milliseconds, and on a worker it would hold up
//! everything queued behind it there (sources, new clients), while the kernel preempts a thread.
//!
//! Lock order: the hub's `inner`, then a shard's `parked` (parking); a shard never holds `parked` while it
//! takes `inner`.

use std::io::{IoSlice, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use socket2::SockRef;
use tokio::runtime::Handle;

use crate::stream::hub::{Hub, Parked, Resume, Snapshot, shard_count};

/// Most iovecs per `writev` (the kernel takes 1024; a batch is rarely more than a few chunks).
pub const MAX_IOVECS: usize = 64;

/// Clients written between two looks at the head during a pass.
const REFRESH_EVERY: usize = 32;

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

/// The process's fan-out threads: each runs a single-threaded runtime that drives the shards given to it.
struct Pool {
    threads: Vec<Handle>,
    next: AtomicUsize,
}

impl Pool {
    /// The pool, started on first use; `None` when not one thread could be started.
    fn get() -> Option<&'static Pool> {
        static POOL: OnceLock<Option<Pool>> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads: Vec<Handle> = (0..shard_count()).filter_map(Pool::thread).collect();
            (!threads.is_empty()).then(|| Pool {
                threads,
                next: AtomicUsize::new(0),
            })
        })
        .as_ref()
    }

    fn thread(index: usize) -> Option<Handle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .inspect_err(|e| tracing::warn!("cannot start fan-out runtime {index}: {e}"))
            .ok()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name(format!("fanout-{index}"))
            .stack_size(256 << 10)
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .inspect_err(|e| tracing::warn!("cannot start fan-out thread {index}: {e}"))
            .ok()?;
        Some(handle)
    }
}

/// Has shard `index` of `hub` served: the caller has just parked its first client, so the shard's first pass
/// sees it. Consecutive shards go to consecutive pool threads, so a stream's shards are spread over the cores.
pub fn start(hub: &Arc<Hub>, index: usize) {
    let task = run(hub.clone(), index);
    match Pool::get() {
        Some(pool) => {
            let n = pool.next.fetch_add(1, Ordering::Relaxed);
            pool.threads[n % pool.threads.len()].spawn(task);
        }
        None => {
            tracing::warn!("no fan-out thread: serving a shard on the runtime");
            tokio::spawn(task);
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
