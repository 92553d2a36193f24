//! Registry of live streams: name → entry, with the 409/503 checks of a new push.
//!
//! An entry is created when a push is accepted (before typefind, so a second source gets 409 at once) and
//! removed when its [`Reservation`] drops, whatever way the push ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::detect::Container;
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::metrics::Totals;
use crate::pipeline::Shared;

/// Stream names: what fits a URL path segment and a GStreamer object name unescaped.
pub const NAME_MAX_LEN: usize = 64;

pub fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=NAME_MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "invalid stream name: use 1 to {NAME_MAX_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

#[derive(Debug)]
pub struct StreamEntry {
    pub name: String,
    pub hub: Arc<Hub>,
    /// Cancelled to abort the stream (API, shutdown).
    pub abort: CancellationToken,
    pub started_at: SystemTime,
    pub bytes_in: AtomicU64,
    pub container: OnceLock<Container>,
    pub pipeline: OnceLock<Arc<Shared>>,
    /// Refreshed every [`RATE_INTERVAL`] by [`sample_rates`].
    pub rates: Mutex<Rates>,
}

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
pub async fn sample_rates(entry: Weak<StreamEntry>) {
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

#[derive(Debug)]
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<StreamEntry>>>,
    max_streams: usize,
    /// Counters of ended streams; a stream's are folded in when it leaves the registry.
    pub totals: Totals,
}

/// Holds a stream name while its push runs; frees it on drop.
#[derive(Debug)]
pub struct Reservation {
    registry: Arc<Registry>,
    pub entry: Arc<StreamEntry>,
}

impl Registry {
    pub fn new(max_streams: usize) -> Arc<Registry> {
        Arc::new(Registry {
            streams: Mutex::new(HashMap::new()),
            max_streams,
            totals: Totals::default(),
        })
    }

    /// Claims `name` for a new push: 409 if it is live, 503 past `--max-streams`.
    pub fn reserve(
        self: &Arc<Self>,
        name: &str,
        hub: Arc<Hub>,
        abort: CancellationToken,
    ) -> Result<Reservation> {
        let mut streams = self.streams.lock().unwrap();
        if streams.contains_key(name) {
            return Err(Error::new(
                crate::error::Kind::Busy,
                format!("stream '{name}' is already being pushed"),
            ));
        }
        if streams.len() >= self.max_streams {
            return Err(Error::unavailable(format!(
                "the stream limit (--max-streams {}) is reached",
                self.max_streams
            )));
        }
        let entry = Arc::new(StreamEntry {
            name: name.to_string(),
            hub,
            abort,
            started_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            container: OnceLock::new(),
            pipeline: OnceLock::new(),
            rates: Mutex::default(),
        });
        streams.insert(name.to_string(), entry.clone());
        Ok(Reservation {
            registry: self.clone(),
            entry,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<StreamEntry>> {
        self.streams.lock().unwrap().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<StreamEntry>> {
        let mut v: Vec<_> = self.streams.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Live streams and the ended-stream totals, read under the lock that folds one into the other, so a
    /// counter summed from both never goes backwards.
    pub fn snapshot(&self) -> (Vec<Arc<StreamEntry>>, [u64; 7]) {
        let streams = self.streams.lock().unwrap();
        let t = &self.totals;
        let totals = [
            &t.streams,
            &t.bytes_in,
            &t.bytes_out,
            &t.clients,
            &t.clients_dropped,
            &t.pipeline_errors,
            &t.frames_dropped,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        (streams.values().cloned().collect(), totals)
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
        if let Some(p) = e.pipeline.get() {
            t.frames_dropped
                .fetch_add(p.frames_dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

    fn hub() -> Arc<Hub> {
        Hub::new(
            "x",
            HubConfig {
                join: Default::default(),
                max_lag: std::time::Duration::from_secs(1),
                max_gop_bytes: 1,
                coalesce: Duration::ZERO,
            },
        )
    }

    #[test]
    fn names() {
        assert!(validate_name("cam_1-A").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "..", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn second_push_is_busy_and_name_frees_on_drop() {
        let r = Registry::new(1);
        let a = r.reserve("a", hub(), CancellationToken::new()).unwrap();
        assert_eq!(
            r.reserve("a", hub(), CancellationToken::new())
                .unwrap_err()
                .kind,
            crate::error::Kind::Busy
        );
        assert_eq!(
            r.reserve("b", hub(), CancellationToken::new())
                .unwrap_err()
                .kind,
            crate::error::Kind::Unavailable
        );
        drop(a);
        assert!(r.get("a").is_none());
        assert!(r.reserve("a", hub(), CancellationToken::new()).is_ok());
    }
}
