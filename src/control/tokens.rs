//! The token server's sessions: what a session may push and which outputs it gets, persisted so that a
//! token once accepted survives a restart or a crash.
//!
//! The state file (`STATE_DIR/tokens.json`) is replaced atomically: written to a temporary file, fsynced,
//! renamed over the old one, and the directory fsynced, so a crash leaves either the old or the new file,
//! never half of one. It holds only SHA-256 hashes of the keys. A file that does not parse stops startup:
//! silently starting empty would revoke every session.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Kind, Result};

pub const STATE_FILE: &str = "tokens.json";
const STATE_VERSION: u32 = 1;

/// Input kinds a token may name (`any`, or a container family).
pub const INPUT_KINDS: [&str; 14] = [
    "any", "webm", "matroska", "mp4", "mpegts", "ogg", "flv", "mp3", "aac", "wav", "flac", "avi",
    "mpegps", "asf",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub http: bool,
    /// RTP/UDP targets, `host:port` with a literal IP.
    #[serde(default)]
    pub rtp_udp: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Created through `/api/v1/tokens`: pushing needs the push key.
    Native,
    /// Created through soup-transcoding-proxy's `/api/add-token`: the session id alone authorises a push.
    Compat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub session_id: String,
    pub origin: Origin,
    pub inputs: Vec<String>,
    pub outputs: Outputs,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// SHA-256 of the push key; `None` for compat sessions.
    pub push_key_sha256: Option<String>,
    /// SHA-256 of the view key when viewing is restricted.
    pub view_key_sha256: Option<String>,
}

impl Session {
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Whether this session may push input of `container`. `matroska` admits WebM (a Matroska profile), `any`
    /// admits everything.
    /// Whether the session may push a container family (`mp4`, `webm`...; `matroska` covers `webm`).
    pub fn allows_input(&self, container: &str) -> bool {
        self.inputs
            .iter()
            .any(|k| k == "any" || k == container || (k == "matroska" && container == "webm"))
    }
}

/// Checks the parts of a new session a client chose.
pub fn validate_inputs(inputs: &[String]) -> Result<()> {
    if inputs.is_empty() {
        return Err(Error::bad_request(
            "inputs must name at least one kind (or \"any\")",
        ));
    }
    for k in inputs {
        if !INPUT_KINDS.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "unknown input kind '{k}'; known: {}",
                INPUT_KINDS.join(", ")
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    sessions: Vec<Session>,
}

/// Lock order: `writer`, then `sessions`. Readers (every push and viewer admission, on tokio workers) take
/// only `sessions`, and no one holds it across disk I/O: a writer snapshots, persists with only `writer`
/// held, then swaps the new map in.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    sessions: Mutex<BTreeMap<String, Session>>,
    /// Serialises writers, so a snapshot is never overtaken by another write.
    writer: Mutex<()>,
    /// Tests make persisting slow to show readers never wait for it.
    #[cfg(test)]
    persist_delay: std::time::Duration,
}

/// The sessions of a state file (`path` is for the messages): a file that does not parse, has another version,
/// or holds a session id that is not a stream name is an error, never an empty store.
pub fn parse_state(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Session>> {
    let state: StateFile = serde_json::from_slice(bytes).map_err(|e| {
        Error::internal(format!(
            "the token state file {} is corrupt ({e}); refusing to start with no sessions. \
             Restore it from a backup, or move it away to start empty",
            path.display()
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(Error::internal(format!(
            "the token state file {} has version {}, this transcast reads {STATE_VERSION}",
            path.display(),
            state.version
        )));
    }
    let mut sessions = BTreeMap::new();
    for s in state.sessions {
        crate::config::validate_name(&s.session_id).map_err(|_| {
            Error::internal(format!(
                "the token state file {} is corrupt (a session id that is not a stream name)",
                path.display()
            ))
        })?;
        sessions.insert(s.session_id.clone(), s);
    }
    Ok(sessions)
}

impl TokenStore {
    /// Opens (creating the directory if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<TokenStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::internal(format!("creating state directory {}: {e}", dir.display()))
        })?;
        let path = dir.join(STATE_FILE);
        let sessions = match std::fs::read(&path) {
            Ok(bytes) => parse_state(&bytes, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::internal(format!("reading {}: {e}", path.display()))),
        };
        tracing::info!(path = %path.display(), sessions = sessions.len(), "token store opened");
        Ok(TokenStore {
            path,
            sessions: Mutex::new(sessions),
            writer: Mutex::new(()),
            #[cfg(test)]
            persist_delay: std::time::Duration::ZERO,
        })
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        self.sessions.lock().unwrap().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().values().cloned().collect()
    }

    /// Adds a session and persists it before returning (blocking file I/O: call from a blocking task). The
    /// session is usable once it is on disk.
    pub fn add(&self, session: Session) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.sessions.lock().unwrap().clone();
        if next.contains_key(&session.session_id) {
            return Err(Error::new(
                Kind::Busy,
                format!("session '{}' exists; revoke it first", session.session_id),
            ));
        }
        next.insert(session.session_id.clone(), session);
        self.persist(&next)?;
        *self.sessions.lock().unwrap() = next;
        Ok(())
    }

    /// Removes a session and persists that (blocking file I/O). It stops working once that is on disk.
    pub fn revoke(&self, id: &str) -> Result<Session> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.sessions.lock().unwrap().clone();
        let Some(old) = next.remove(id) else {
            return Err(Error::not_found(format!("no session '{id}'")));
        };
        self.persist(&next)?;
        *self.sessions.lock().unwrap() = next;
        Ok(old)
    }

    /// Writes the whole state atomically; the caller holds `writer`, so writes are serialised.
    fn persist(&self, sessions: &BTreeMap<String, Session>) -> Result<()> {
        #[cfg(test)]
        std::thread::sleep(self.persist_delay);
        let path = &self.path;
        let state = StateFile {
            version: STATE_VERSION,
            sessions: sessions.values().cloned().collect(),
        };
        let bytes =
            serde_json::to_vec_pretty(&state).map_err(|e| Error::internal(e.to_string()))?;
        let dir = path.parent().expect("state file has a directory");
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| Error::internal(format!("saving sessions to {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Session {
        Session {
            session_id: id.into(),
            origin: Origin::Native,
            inputs: vec!["mp4".into()],
            outputs: Outputs {
                http: true,
                rtp_udp: vec!["127.0.0.1:5004".parse().unwrap()],
            },
            expires_at: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            push_key_sha256: Some(crate::control::auth::hash_secret("k")),
            view_key_sha256: None,
        }
    }

    /// Admission reads sessions on tokio workers: a write's fsync must never make them wait.
    #[test]
    fn reads_never_wait_for_a_write_to_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TokenStore::open(dir.path()).unwrap();
        store.add(session("a")).unwrap();
        store.persist_delay = std::time::Duration::from_millis(600);
        let store = std::sync::Arc::new(store);
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.add(session("b")).unwrap())
        };
        // The writer is now persisting. A read that waited for it would find "b" (before, the map held it
        // under the lock during the fsync); a read that does not wait finds "a" and not yet "b".
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(store.get("a").is_some());
        assert!(
            store.get("b").is_none(),
            "the read waited for the write's disk I/O, or saw a session not yet on disk"
        );
        writer.join().unwrap();
        assert!(store.get("b").is_some());
    }

    #[test]
    fn sessions_survive_reopening_and_revocation_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        s.add(session("a")).unwrap();
        s.add(session("b")).unwrap();
        assert_eq!(s.add(session("a")).unwrap_err().kind, Kind::Busy);
        s.revoke("b").unwrap();
        drop(s);
        let s = TokenStore::open(dir.path()).unwrap();
        assert_eq!(s.list(), vec![session("a")]);
        assert!(s.get("b").is_none());
        assert!(
            !std::fs::read_to_string(dir.path().join(STATE_FILE))
                .unwrap()
                .contains("\"k\"")
        );
    }

    #[test]
    fn corrupt_state_stops_startup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            b"{\"version\":1,\"sessions\":[{\"session_",
        )
        .unwrap();
        let e = TokenStore::open(dir.path()).unwrap_err();
        assert!(e.message.contains("corrupt"), "{}", e.message);
    }

    #[test]
    fn input_rules() {
        let mut s = session("x");
        assert!(s.allows_input("mp4"));
        assert!(!s.allows_input("webm"));
        s.inputs = vec!["matroska".into()];
        assert!(s.allows_input("webm"));
        s.inputs = vec!["any".into()];
        assert!(s.allows_input("flv"));
        assert!(validate_inputs(&["mp4".into(), "any".into()]).is_ok());
        assert!(validate_inputs(&["mkv".into()]).is_err());
        assert!(validate_inputs(&[]).is_err());
    }
}
