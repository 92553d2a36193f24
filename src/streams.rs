//! Registry of live streams: name → entry, with the 409/503 checks of a new push.
//!
//! An entry is created when a push is accepted (before typefind, so a second source gets 409 at once) and
//! removed when its [`Reservation`] drops, whatever way the push ends.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::detect::Container;
use crate::error::{Error, Result};
use crate::hub::Hub;
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
}

#[derive(Debug)]
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<StreamEntry>>>,
    max_streams: usize,
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
