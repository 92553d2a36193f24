//! Registry of streams: name → [`Stream`], with the 503 check of a new one.
//!
//! A stream is created by the first push to its name (before typefind, so a second source gets 409 at once)
//! and removed when its [`Reservation`] drops, which its task holds for the stream's whole life: through
//! source changes and its fallback, until it ends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::Stream;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// The name rule lives with the configuration (the command line and the token store check it too).
pub use crate::config::{NAME_MAX_LEN, validate_name};

/// How often stream rates are sampled.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// Current rates of a stream over the last [`RATE_INTERVAL`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub bitrate_in_bps: u64,
    /// Bitrate of the stream's output (what each client receives), not the sum over clients.
    pub bitrate_out_bps: u64,
    /// Media time produced per wall-clock second: 1.0 keeps up with a live source, below 1.0 falls behind,
    /// above 1.0 catches up or runs unpaced. None until the stream has output.
    pub realtime_factor: Option<f64>,
}

/// Samples a stream's rates until the stream is gone.
pub async fn sample_rates(entry: Weak<Stream>) {
    let mut tick = tokio::time::interval(RATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, u64, u64, Duration)> = None;
    loop {
        tick.tick().await;
        let Some(e) = entry.upgrade() else { break };
        let now = Instant::now();
        let bytes_in = e.bytes_in.load(Ordering::Relaxed);
        let bytes_out = e.hub.stats.bytes_published.load(Ordering::Relaxed);
        let media = e.hub.media_duration();
        if let Some((t, bi, bo, m)) = last {
            let secs = now.duration_since(t).as_secs_f64().max(1e-3);
            *e.rates.lock().unwrap() = Rates {
                bitrate_in_bps: ((bytes_in - bi) as f64 * 8.0 / secs) as u64,
                bitrate_out_bps: ((bytes_out - bo) as f64 * 8.0 / secs) as u64,
                realtime_factor: (bytes_out > 0)
                    .then(|| media.saturating_sub(m).as_secs_f64() / secs),
            };
        }
        last = Some((now, bytes_in, bytes_out, media));
    }
}

/// Counters of streams that have ended (live streams are summed at scrape time).
#[derive(Debug, Default)]
pub struct Totals {
    pub streams: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub clients: AtomicU64,
    pub clients_dropped: AtomicU64,
    pub pipeline_errors: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub failovers: AtomicU64,
    pub resumes: AtomicU64,
    pub continuations: AtomicU64,
    pub fallback_ms: AtomicU64,
}

/// The ended streams' counters at one moment (see [`Registry::snapshot`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TotalsSnapshot {
    pub streams: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub clients: u64,
    pub clients_dropped: u64,
    pub pipeline_errors: u64,
    pub frames_dropped: u64,
    pub failovers: u64,
    pub resumes: u64,
    pub continuations: u64,
    pub fallback_seconds: f64,
}

impl Totals {
    pub fn snapshot(&self) -> TotalsSnapshot {
        TotalsSnapshot {
            streams: self.streams.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            clients: self.clients.load(Relaxed),
            clients_dropped: self.clients_dropped.load(Relaxed),
            pipeline_errors: self.pipeline_errors.load(Relaxed),
            frames_dropped: self.frames_dropped.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            resumes: self.resumes.load(Relaxed),
            continuations: self.continuations.load(Relaxed),
            fallback_seconds: self.fallback_ms.load(Relaxed) as f64 / 1000.0,
        }
    }
}

#[derive(Debug)]
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// `--max-streams`; a reload may change it (streams past a lower limit run on; no new one starts).
    max_streams: AtomicUsize,
    /// Counters of ended streams; a stream's are folded in when it leaves the registry.
    pub totals: Totals,
}

/// Holds a stream's name while it lives; frees it on drop.
#[derive(Debug)]
pub struct Reservation {
    registry: Arc<Registry>,
    pub entry: Arc<Stream>,
}

impl Registry {
    pub fn new(max_streams: usize) -> Arc<Registry> {
        Arc::new(Registry {
            streams: Mutex::new(HashMap::new()),
            max_streams: AtomicUsize::new(max_streams),
            totals: Totals::default(),
        })
    }

    /// The live stream named `name`, or a new one made by `create` (503 past `--max-streams`). A new
    /// stream comes with its reservation, for its task to hold. A stream that is ending is replaced.
    pub fn open(
        self: &Arc<Self>,
        name: &str,
        create: impl FnOnce() -> Result<Arc<Stream>>,
    ) -> Result<(Arc<Stream>, Option<Reservation>)> {
        if let Some(s) = self.get(name) {
            return Ok((s, None));
        }
        self.check_room(name)?;
        // Made outside the lock: building a stream's pipeline is GStreamer work.
        let stream = create()?;
        let mut streams = self.streams.lock().unwrap();
        if let Some(s) = streams.get(name).filter(|s| !s.is_ended()) {
            return Ok((s.clone(), None));
        }
        let live = streams.values().filter(|s| !s.is_ended()).count();
        if !streams.contains_key(name) && live >= self.max_streams() {
            return Err(self.limit_error());
        }
        streams.insert(name.to_string(), stream.clone());
        Ok((
            stream.clone(),
            Some(Reservation {
                registry: self.clone(),
                entry: stream,
            }),
        ))
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams.load(Ordering::Relaxed)
    }

    pub fn set_max_streams(&self, n: usize) {
        self.max_streams.store(n.max(1), Ordering::Relaxed);
    }

    fn check_room(&self, name: &str) -> Result<()> {
        let streams = self.streams.lock().unwrap();
        let live = streams.values().filter(|s| !s.is_ended()).count();
        if !streams.contains_key(name) && live >= self.max_streams() {
            return Err(self.limit_error());
        }
        Ok(())
    }

    fn limit_error(&self) -> Error {
        Error::unavailable(format!(
            "the stream limit (--max-streams {}) is reached",
            self.max_streams()
        ))
    }

    /// The stream named `name`, unless it has ended (it may still be draining its output).
    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams
            .lock()
            .unwrap()
            .get(name)
            .filter(|s| !s.is_ended())
            .cloned()
    }

    /// Streams that have not ended, by name.
    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self
            .streams
            .lock()
            .unwrap()
            .values()
            .filter(|s| !s.is_ended())
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Live streams and the ended-stream totals, read under the lock that folds one into the other, so a
    /// counter summed from both never goes backwards.
    pub fn snapshot(&self) -> (Vec<Arc<Stream>>, TotalsSnapshot) {
        let streams = self.streams.lock().unwrap();
        (streams.values().cloned().collect(), self.totals.snapshot())
    }

    /// Whether `name` is held, by a live stream or one still draining its output.
    pub fn contains(&self, name: &str) -> bool {
        self.streams.lock().unwrap().contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.streams.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut streams = self.registry.streams.lock().unwrap();
        if streams
            .get(&self.entry.name)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            streams.remove(&self.entry.name);
        }
        // Folded in under the registry lock, so a scrape sees the stream either live or ended, not both.
        let (e, t) = (&self.entry, &self.registry.totals);
        let s = &e.hub.stats;
        t.streams.fetch_add(1, Ordering::Relaxed);
        t.bytes_in
            .fetch_add(e.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        t.bytes_out
            .fetch_add(s.bytes_sent.load(Ordering::Relaxed), Ordering::Relaxed);
        t.clients
            .fetch_add(s.clients_total.load(Ordering::Relaxed), Ordering::Relaxed);
        t.clients_dropped
            .fetch_add(s.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        t.frames_dropped
            .fetch_add(e.frames_dropped(), Ordering::Relaxed);
        t.failovers.fetch_add(
            e.counters.failovers.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        t.resumes.fetch_add(
            e.counters.resumes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        t.continuations.fetch_add(
            e.counters.continuations.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        t.fallback_ms
            .fetch_add((e.fallback_seconds() * 1000.0) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("cam_1-A").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "..", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
