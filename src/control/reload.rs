//! Reloading the configuration (`SIGHUP`, `POST /api/v1/config/reload`): the file is read again, with the
//! same command line over it, and checked as at startup (keys, values, templates, declared streams). A good
//! file replaces the running configuration at once; a bad one changes nothing and its error is kept for the
//! API and the log.
//!
//! Nothing connected is dropped. What a reload changes applies from then on:
//! - limits: new connections, streams and sources (a lower `--max-clients` turns new viewers away until enough
//!   have left; nobody is disconnected);
//! - declared streams: a new pull starts; a removed one stops and its stream shows its fallback until its
//!   linger runs out; a changed profile applies when its stream next starts (a stream that is live keeps
//!   the encoders its viewers' header names);
//! - the listeners, the state directory, the hook and auth endpoints keep running as they are: the reload
//!   says they need a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::source::pull::{self, Pull, PullKind};
use crate::state::{AppState, Current};

/// What a reload did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub sha256: String,
    /// Declared streams (and `--pull`s) that appeared, went, or changed.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Options that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The pulls a configuration declares (`--pull` and `[[stream]]` tables with `pull`): name → (URL, on demand).
fn pulls_of(config: &Config) -> BTreeMap<String, (String, bool)> {
    let flags = config
        .pulls
        .iter()
        .map(|p| (p.name.clone(), (p.url.clone(), false)));
    let declared = config
        .streams
        .iter()
        .filter_map(|d| Some((d.name.clone(), (d.pull.clone()?, d.on_demand))));
    flags.chain(declared).collect()
}

fn declare(state: &Arc<AppState>, name: &str, url: &str, on_demand: bool) -> Result<()> {
    let pull = Pull::new(name, vec![url.to_string()], PullKind::Relay, on_demand);
    pull::declare(state, pull).map(|_| ())
}

/// Checks the names and URLs of the pulls a configuration declares.
pub fn check_pulls(config: &Config) -> Result<()> {
    for (name, (url, _)) in pulls_of(config) {
        crate::stream::registry::validate_name(&name)
            .and_then(|()| pull::check_url(&url))
            .map_err(|e| Error::bad_request(format!("pull {name}={url}: {}", e.message)))?;
    }
    Ok(())
}

/// Starts the pulls a configuration declares (at startup).
pub fn declare_pulls(state: &Arc<AppState>, config: &Config) -> Result<()> {
    for (name, (url, on_demand)) in pulls_of(config) {
        declare(state, &name, &url, on_demand)?;
    }
    Ok(())
}

/// Reads the configuration file again and, if it is good, runs with it.
pub async fn reload(state: &Arc<AppState>) -> Result<Report> {
    let result = load_and_apply(state).await;
    let mut status = state.reloads.lock().unwrap_or_else(|e| e.into_inner());
    match &result {
        Ok(r) => {
            status.count += 1;
            status.last_error = None;
            tracing::info!(sha256 = %r.sha256, added = ?r.added, removed = ?r.removed, changed = ?r.changed, needs_restart = ?r.needs_restart, "configuration reloaded");
        }
        Err(e) => {
            status.last_error = Some((std::time::SystemTime::now(), e.message.clone()));
            tracing::error!(
                "configuration not reloaded, the running one stays: {}",
                e.message
            );
        }
    }
    result
}

async fn load_and_apply(state: &Arc<AppState>) -> Result<Report> {
    let old = state.current();
    let Some(source) = old.config.source.clone() else {
        return Err(Error::bad_request(
            "the daemon was started without --config: there is no file to reload",
        ));
    };
    // Reading the file and instantiating every template once is blocking work.
    let next = tokio::task::spawn_blocking(move || {
        let (config, _) =
            crate::config::file::load(&source.path, &source.argv).map_err(Error::bad_request)?;
        check_pulls(&config)?;
        Current::build(config)
    })
    .await
    .map_err(|e| Error::internal(format!("reload: {e}")))??;
    let config = next.config.clone();
    let report = Report {
        sha256: config
            .source
            .as_ref()
            .map(|s| s.sha256.clone())
            .unwrap_or_default(),
        needs_restart: needs_restart(&old.config, &config),
        ..diff_streams(&old.config, &config)
    };
    state.install(next);

    state.registry.set_max_streams(config.max_streams);
    resize(&state.clients, old.config.max_clients, config.max_clients);
    resize(
        &state.transcodes,
        old.config.max_transcodes,
        config.max_transcodes,
    );
    let (before, after) = (pulls_of(&old.config), pulls_of(&config));
    for (name, p) in &before {
        if after.get(name) != Some(p) {
            state.pulls.retire(name);
        }
    }
    for (name, (url, on_demand)) in &after {
        if before.get(name) != Some(&(url.clone(), *on_demand))
            && let Err(e) = declare(state, name, url, *on_demand)
        {
            tracing::warn!(stream = %name, "declared pull not started: {}", e.message);
        }
    }
    Ok(report)
}

/// Names of declared streams and pulls added, removed and changed.
fn diff_streams(old: &Config, new: &Config) -> Report {
    let names = |c: &Config| {
        let mut v: Vec<String> = c
            .streams
            .iter()
            .map(|d| d.name.clone())
            .chain(c.pulls.iter().map(|p| p.name.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (a, b) = (names(old), names(new));
    let same = |n: &str| {
        old.declared(n) == new.declared(n)
            && old.pulls.iter().find(|p| p.name == n) == new.pulls.iter().find(|p| p.name == n)
    };
    Report {
        sha256: String::new(),
        added: b.iter().filter(|n| !a.contains(n)).cloned().collect(),
        removed: a.iter().filter(|n| !b.contains(n)).cloned().collect(),
        changed: b
            .iter()
            .filter(|n| a.contains(n) && !same(n))
            .cloned()
            .collect(),
        needs_restart: Vec::new(),
    }
}

/// Options a reload cannot change while the daemon runs.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            tracing::warn!(key, "changed in the file; it takes effect after a restart");
            v.push(key);
        }
    };
    check(old.listen != new.listen, "listen");
    check(old.srt_listen != new.srt_listen, "srt-listen");
    check(old.state_dir != new.state_dir, "state-dir");
    check(old.hook_url != new.hook_url, "hook-url");
    check(
        old.auth_url != new.auth_url
            || old.auth_timeout != new.auth_timeout
            || old.auth_default != new.auth_default
            || old.auth_cache != new.auth_cache,
        "auth-url",
    );
    v
}

/// Changes a semaphore's size: more permits at once; fewer as holders release them (nobody is cut off).
fn resize(sem: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        sem.add_permits(new - old);
    } else if new < old {
        let sem = sem.clone();
        let fewer = u32::try_from(old - new).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(p) = sem.acquire_many_owned(fewer).await {
                p.forget();
            }
        });
    }
}
