//! The pulls a daemon knows (declared with `--pull` or the API, or made on demand by an edge), what each is
//! and how it is doing. Their tasks are in [`crate::source::pull`]; this is the data the shared state holds.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Kind as ErrorKind, Result};

/// Which rules a pull follows when its input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullKind {
    /// `--pull` or the API: any end is retried.
    Relay,
    /// From `--origin`: a clean end ends the stream.
    Edge,
}

/// Where a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    /// On demand, with no viewer.
    Idle,
    Connecting,
    /// Reading its URL.
    Live,
    /// Waiting to try again after a failure.
    Retrying,
    /// Removed, or its origin ended the stream.
    Stopped,
}

/// A pull's progress, as the API shows it.
#[derive(Debug, Clone)]
pub struct PullStatus {
    pub state: PullState,
    /// The URL of the current (or last) attempt.
    pub url: String,
    /// Attempts that got a response and attached to the stream.
    pub connections: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// The HTTP status of the last failed attempt, when it got one.
    pub last_status: Option<u16>,
    pub retry_at: Option<SystemTime>,
}

/// A declared or on-demand pull.
#[derive(Debug)]
pub struct Pull {
    pub name: String,
    /// What it reads, in the order tried: for an edge, its origins (the stream's URL is made per origin).
    pub urls: Vec<String>,
    pub kind: PullKind,
    pub on_demand: bool,
    pub(crate) status: watch::Sender<PullStatus>,
    /// Cancelled when the pull is removed.
    pub(crate) stop: CancellationToken,
    /// Removed by a reload: its stream falls back (and lingers) instead of ending at once.
    pub(crate) retired: std::sync::atomic::AtomicBool,
    life: Mutex<Life>,
    /// The source id it last attached to its stream, so stopping ends only a stream it feeds.
    pub(crate) last_source: AtomicU64,
}

#[derive(Debug)]
struct Life {
    running: bool,
    /// When a viewer last asked for the stream or was last seen watching it.
    wanted: Instant,
}

impl Pull {
    pub fn new(name: &str, urls: Vec<String>, kind: PullKind, on_demand: bool) -> Pull {
        let first = urls.first().cloned().unwrap_or_default();
        Pull {
            name: name.to_string(),
            urls,
            kind,
            on_demand,
            status: watch::Sender::new(PullStatus {
                state: PullState::Idle,
                url: first,
                connections: 0,
                failures: 0,
                last_error: None,
                last_status: None,
                retry_at: None,
            }),
            stop: CancellationToken::new(),
            retired: Default::default(),
            life: Mutex::new(Life {
                running: false,
                wanted: Instant::now(),
            }),
            last_source: AtomicU64::new(0),
        }
    }

    pub fn status(&self) -> PullStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<PullStatus> {
        self.status.subscribe()
    }

    /// The URL attempt `i` reads.
    pub(crate) fn url(&self, i: usize) -> String {
        let base = &self.urls[i % self.urls.len()];
        match self.kind {
            PullKind::Relay => base.clone(),
            PullKind::Edge => format!("{base}/live/{}", self.name),
        }
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an on-demand pull has had no viewer and no request for `linger`.
    pub(crate) fn idle(&self, linger: Duration) -> bool {
        self.on_demand && self.life().wanted.elapsed() >= linger
    }

    pub(crate) fn seen(&self) {
        self.life().wanted = Instant::now();
    }
}

/// Every pull of the daemon, by stream name.
#[derive(Debug, Default)]
pub struct Pulls {
    map: Mutex<HashMap<String, Arc<Pull>>>,
}

impl Pulls {
    pub fn get(&self, name: &str) -> Option<Arc<Pull>> {
        self.map.lock().unwrap().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Pull>> {
        let mut v: Vec<_> = self.map.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Declares a pull (409 when the name has one); the caller starts an always-on one
    /// ([`crate::source::pull::declare`] does both).
    pub fn add(&self, pull: Pull) -> Result<Arc<Pull>> {
        let pull = Arc::new(pull);
        let mut map = self.map.lock().unwrap();
        if map.contains_key(&pull.name) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("stream '{}' has a pull already", pull.name),
            ));
        }
        map.insert(pull.name.clone(), pull.clone());
        Ok(pull)
    }

    /// Removes a pull: it stops, and ends the stream it feeds.
    pub fn remove(&self, name: &str) -> Option<Arc<Pull>> {
        let pull = self.map.lock().unwrap().remove(name)?;
        pull.stop.cancel();
        Some(pull)
    }

    /// Removes a pull the configuration no longer declares: it stops, and the stream it feeds shows its
    /// fallback until its linger runs out (or another source takes it), as for a lost source.
    pub fn retire(&self, name: &str) -> Option<Arc<Pull>> {
        let pull = self.map.lock().unwrap().remove(name)?;
        pull.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        pull.stop.cancel();
        Some(pull)
    }

    /// A viewer wants `name`: its on-demand pull is kept open, and made for any name on an edge (`origins`
    /// not empty) while there are fewer than `max` pulls. Returns the pull and whether its task must be started
    /// (it is then marked running). None when nothing here can pull the name.
    pub fn want(&self, name: &str, origins: &[String], max: usize) -> Option<(Arc<Pull>, bool)> {
        let mut map = self.map.lock().unwrap();
        let pull = match map.get(name) {
            Some(p) => p.clone(),
            // An edge pulls any name a viewer asks for, as many at once as it may have streams.
            None if !origins.is_empty() && map.len() < max => {
                let p = Arc::new(Pull::new(name, origins.to_vec(), PullKind::Edge, true));
                map.insert(name.to_string(), p.clone());
                p
            }
            None => return None,
        };
        let mut life = pull.life();
        life.wanted = Instant::now();
        let spawn = !life.running && !pull.stop.is_cancelled();
        life.running |= spawn;
        drop(life);
        Some((pull, spawn))
    }

    /// An always-on pull's task is to run: true when it was not running (it is now marked so).
    pub(crate) fn mark_running(pull: &Pull) -> bool {
        let mut life = pull.life();
        !std::mem::replace(&mut life.running, true)
    }

    /// The pull task asks to stop when idle: under the map's lock, so a viewer arriving now either sees it
    /// gone or keeps it running. True when it may stop.
    pub(crate) fn may_stop_idle(&self, pull: &Arc<Pull>, linger: Duration) -> bool {
        let mut map = self.map.lock().unwrap();
        let mut life = pull.life();
        if pull.on_demand && life.wanted.elapsed() < linger {
            return false;
        }
        life.running = false;
        if pull.kind == PullKind::Edge && map.get(&pull.name).is_some_and(|p| Arc::ptr_eq(p, pull))
        {
            map.remove(&pull.name);
        }
        true
    }

    /// A stopped pull (removed, or its origin ended the stream) leaves the map if it is an edge's.
    pub(crate) fn finished(&self, pull: &Arc<Pull>) {
        let mut map = self.map.lock().unwrap();
        pull.life().running = false;
        if pull.kind == PullKind::Edge && map.get(&pull.name).is_some_and(|p| Arc::ptr_eq(p, pull))
        {
            map.remove(&pull.name);
        }
    }
}
