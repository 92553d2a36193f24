//! What a stream knows of the source attached to it: the channel its bytes come through (so a continuation
//! request can feed the same input), how much it has taken, and how it is doing.
//!
//! A source's bytes can come through several requests (souphttpclientsink's `Content-Range` pieces), so the
//! feed is not the request: requests send [`Feed`]s into the source task's channel, and the [`Feeder`] is
//! what a stream holds to find that channel again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Chunks a request may have in flight to its source task: with the appsrc's own bound this keeps a
/// source's memory bounded while TCP throttles the sender.
pub const FEED_CAPACITY: usize = 8;

/// How a source's input ended, as its pusher sees it in the JSON summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The upload is complete (Content-Length reached, or the chunked terminator).
    Eos,
    /// Nothing arrived for `--source-timeout`.
    SourceTimeout,
    /// The input broke off or failed to decode after media had started.
    InputError,
    /// Aborted by the operator or the daemon shutting down.
    Aborted,
}

/// What a request hands its source task.
#[derive(Debug)]
pub enum Feed {
    Data(Bytes),
    /// The request's body is complete: wait `--resume-grace` for a continuation, then end.
    Complete,
    /// The input is lost (connection broken, timeout): the stream goes to its fallback.
    Lost(End),
}

/// How a source is doing, for the requests that feed it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Its media reached the stream and all its tracks are known (so no track can still be refused).
    pub started: bool,
    /// Its first buffer went on air.
    pub on_air: bool,
    /// Its demuxer announced all its tracks.
    pub tracks_known: bool,
    /// It failed before any of its media reached the stream (the error its request answers with).
    pub failed: Option<Error>,
    /// It is done.
    pub ended: Option<End>,
}

/// A stream's handle on its source.
pub struct Feeder {
    pub id: u64,
    tx: mpsc::Sender<Feed>,
    /// Input bytes the source has taken so far: where a continuation must start.
    pub bytes_in: AtomicU64,
    /// A request is feeding it now (another one is 409, a continuation 416).
    receiving: AtomicBool,
    /// The input is over (grace expired): no continuation may come.
    closed: AtomicBool,
    /// Its bytes come from transcast itself (a pull): no request may continue it.
    sealed: AtomicBool,
    pub status: watch::Sender<Status>,
    /// Cancelled when the source is detached (replaced, aborted, or its stream ended).
    pub gone: CancellationToken,
    /// Input bytes its pipeline has not taken yet (set once the pipeline runs).
    queued: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder")
            .field("id", &self.id)
            .field("bytes_in", &self.bytes_in)
            .field("receiving", &self.receiving)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Feeder {
    pub fn new(id: u64) -> (Feeder, mpsc::Receiver<Feed>) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        let feeder = Feeder {
            id,
            tx,
            bytes_in: AtomicU64::new(0),
            receiving: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            status: watch::Sender::new(Status::default()),
            gone: CancellationToken::new(),
            queued: OnceLock::new(),
        };
        (feeder, rx)
    }

    pub fn sender(&self) -> mpsc::Sender<Feed> {
        self.tx.clone()
    }

    pub fn is_receiving(&self) -> bool {
        self.receiving.load(Ordering::Acquire)
    }

    /// Claims the feed for a continuation starting at `offset`: Err(expected offset) when it does not
    /// continue the input exactly, or another request is feeding it.
    pub fn continue_at(&self, offset: u64) -> Result<(), u64> {
        let expected = self.bytes_in.load(Ordering::Acquire);
        if offset != expected
            || self.gone.is_cancelled()
            || self.closed.load(Ordering::Acquire)
            || self.sealed.load(Ordering::Acquire)
        {
            return Err(expected);
        }
        self.receiving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| expected)?;
        // `close` sets `closed`, then looks at `receiving`; this sets `receiving`, then looks at `closed`: one
        // of the two sees the other (SeqCst), so a continuation never feeds an input that was closed.
        if self.closed.load(Ordering::SeqCst) {
            self.release();
            return Err(expected);
        }
        Ok(())
    }

    /// No request may continue this input (its bytes come from a pull).
    pub fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Ends the input unless a request is feeding it: true when closed.
    pub fn close(&self) -> bool {
        if self.is_receiving() {
            return false;
        }
        self.closed.store(true, Ordering::SeqCst);
        // A continuation that claimed the feed in between wins.
        if self.receiving.load(Ordering::SeqCst) {
            self.closed.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The current request is done with the feed.
    pub fn release(&self) {
        self.receiving.store(false, Ordering::Release);
    }

    /// Lets the feeder see how much input its pipeline has not taken yet.
    pub fn set_queued_probe(&self, probe: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.queued.set(Box::new(probe));
    }

    /// Everything sent so far has been taken: before the pipeline runs (typefinding wants more), or once it
    /// has taken every byte. The source cannot go on without more input.
    pub fn starved(&self) -> bool {
        self.queued.get().is_none_or(|q| q() == 0)
    }
}
