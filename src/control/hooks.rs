//! `--hook-url URL`: a JSON `POST` to a platform's endpoint on each stream event. Events are: a stream started (its
//! first source on air), its source was lost (it shows its fallback), its source resumed, it ended, and a token
//! session was added or revoked.
//!
//! ```text
//!  stream state (watch) ─┐
//!  token API ────────────┴─► emit: try_send ─► bounded queue (HOOK_QUEUE) ─► one task: POST, in order,
//!                               full: dropped, counted                           timeout and retries
//! ```
//!
//! Nothing on the media path or in a handler waits for the endpoint: `emit` only queues, and a full queue
//! drops the event (counted, logged). A slow or dead endpoint costs its own log lines and nothing else. Each
//! event is tried [`ATTEMPTS`] times, each attempt bounded by [`POST_TIMEOUT`]; any 2xx is success. Plain `http://`
//! only, like origins: put TLS in a local proxy.
//!
//! Body: `{"event": "stream_started"|"source_lost"|"source_resumed"|"stream_ended"|"token_added"|"token_revoked",
//! "stream": NAME, "seq": N, "time": RFC 3339, ...}`. `seq` counts every event of this process from 1, so a
//! receiver sees what was dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::stream::State;

/// Events waiting for the endpoint at most.
pub const HOOK_QUEUE: usize = 1024;
/// Bound on one POST (connect and answer).
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per event; the pause before try n is n seconds.
pub const ATTEMPTS: u32 = 3;

/// The hook sender, or nothing without `--hook-url`.
#[derive(Debug, Default)]
pub struct Hooks {
    tx: Option<mpsc::Sender<Value>>,
    seq: AtomicU64,
    /// Events the endpoint took (2xx).
    pub sent: Arc<AtomicU64>,
    /// Events given up after [`ATTEMPTS`] tries.
    pub failed: Arc<AtomicU64>,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl Hooks {
    /// Starts the sending task when there is a URL (inside a runtime).
    pub fn start(url: Option<&str>) -> Hooks {
        let Some(url) = url else {
            return Hooks::default();
        };
        let (tx, rx) = mpsc::channel(HOOK_QUEUE);
        let hooks = Hooks {
            tx: Some(tx),
            ..Hooks::default()
        };
        tokio::spawn(send_all(
            url.to_string(),
            rx,
            hooks.sent.clone(),
            hooks.failed.clone(),
        ));
        hooks
    }

    /// Queues an event (never waits).
    pub fn emit(&self, event: &str, stream: &str, detail: Value) {
        let Some(tx) = &self.tx else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut body = json!({"event": event, "stream": stream, "seq": seq, "time": time});
        if let (Some(b), Value::Object(d)) = (body.as_object_mut(), detail) {
            b.extend(d);
        }
        if tx.try_send(body).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    event,
                    stream,
                    dropped = n,
                    "hook endpoint behind: its queue ({HOOK_QUEUE}) is full, event dropped"
                );
            }
        }
    }

    /// Emits a stream's events as its state changes, until it has ended.
    pub fn follow(self: &Arc<Self>, name: &str, mut state: watch::Receiver<State>) {
        if self.tx.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hooks = self.clone();
        let name = name.to_string();
        runtime.spawn(async move {
            let mut last = State::Starting;
            loop {
                let now = *state.borrow_and_update();
                let event = match (last, now) {
                    (a, b) if a == b => None,
                    (State::Starting, State::Live | State::Fallback) => Some("stream_started"),
                    (State::Live, State::Fallback) => Some("source_lost"),
                    (State::Fallback, State::Live) => Some("source_resumed"),
                    (_, State::Ended) => Some("stream_ended"),
                    _ => None,
                };
                if let Some(e) = event {
                    let detail = json!({"state": now.as_str(), "previous": last.as_str()});
                    hooks.emit(e, &name, detail);
                }
                last = now;
                if now == State::Ended {
                    return;
                }
                // A stream dropped without ending started nothing (a push refused before its media).
                if state.changed().await.is_err() {
                    if last == State::Starting {
                        return;
                    }
                    hooks.emit(
                        "stream_ended",
                        &name,
                        json!({"state": "ended", "previous": last.as_str()}),
                    );
                    return;
                }
            }
        });
    }
}

/// The sending task: every event in order, each tried up to [`ATTEMPTS`] times.
async fn send_all(
    url: String,
    mut rx: mpsc::Receiver<Value>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(POST_TIMEOUT));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    while let Some(event) = rx.recv().await {
        let body = Bytes::from(event.to_string());
        let mut last_error = String::new();
        let mut ok = false;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt - 1))).await;
            }
            let req = hyper::Request::post(&url)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("transcast/", env!("CARGO_PKG_VERSION"), " hooks"),
                )
                .body(Full::new(body.clone()));
            let req = match req {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    break;
                }
            };
            match tokio::time::timeout(POST_TIMEOUT, client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(Ok(r)) => last_error = format!("answered {}", r.status()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {POST_TIMEOUT:?}"),
            }
        }
        if ok {
            sent.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %url,
                event = %event["event"],
                stream = %event["stream"],
                "hook not delivered after {ATTEMPTS} tries: {last_error}"
            );
        }
    }
}
