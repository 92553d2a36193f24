//! `--auth-url URL`: a platform's endpoint decides who may push and watch. transcast `POST`s
//! `{"action": "push"|"view", "stream", "ip", "key"}` (`key`: what the client presented, `?token=` or
//! `Authorization: Bearer`, or null) once per new source and per watch (for DASH, per manifest or segment request,
//! with the answer cached), and a 2xx answer lets it through. A 401 or 403 refuses it (with the answer's JSON
//! `message`, if any). No answer within `--auth-timeout`, a connection error or any other status applies
//! `--auth-default` (`deny`: 503; `allow`: logged). Answers of the endpoint (not its failures) are kept for
//! `--auth-cache` seconds per (action, stream, ip, key), so a DASH player or souphttpclientsink's pieces do not
//! ask it every time. Runs after transcast's own checks (names, the token server's keys), never instead of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::time::Instant;

use crate::config::AuthDefault;
use crate::error::{Error, Result};

/// Cached answers at most (the cache is cleared when full).
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Push,
    View,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::View => "view",
        }
    }
}

/// The endpoint's answer.
#[derive(Debug, Clone)]
enum Answer {
    Allow,
    Deny { status: u16, message: String },
}

type CacheKey = (Action, String, Option<IpAddr>, Option<String>);

/// What `/metrics` reports.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Debug)]
pub struct ExternalAuth {
    pub stats: AuthStats,
    url: String,
    timeout: Duration,
    default: AuthDefault,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Instant, Answer)>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ExternalAuth {
    pub fn new(url: &str, timeout: Duration, default: AuthDefault, ttl: Duration) -> ExternalAuth {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        ExternalAuth {
            stats: AuthStats::default(),
            url: url.to_string(),
            timeout,
            default,
            ttl,
            cache: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Whether `ip` may `action` the stream `stream` with `key`.
    pub async fn check(
        &self,
        action: Action,
        stream: &str,
        ip: Option<IpAddr>,
        key: Option<&str>,
    ) -> Result<()> {
        let cache_key = (
            action,
            stream.to_string(),
            ip,
            key.map(crate::control::auth::hash_secret),
        );
        let cached = self
            .cache
            .lock()
            .unwrap()
            .get(&cache_key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, a)| a.clone());
        let answer = match cached {
            Some(a) => a,
            None => match self.ask(action, stream, ip, key).await {
                Ok(a) => {
                    let mut cache = self.cache.lock().unwrap();
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(cache_key, (Instant::now(), a.clone()));
                    a
                }
                Err(why) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.fallback(action, stream, ip, &why)?
                }
            },
        };
        match answer {
            Answer::Allow => Ok(()),
            Answer::Deny { status, message } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let message = if message.is_empty() {
                    format!(
                        "the auth service does not let this client {} '{stream}'",
                        action.as_str()
                    )
                } else {
                    format!("the auth service refused: {message}")
                };
                Err(if status == 401 {
                    Error::unauthorized(message)
                } else {
                    Error::forbidden(message)
                })
            }
        }
    }

    /// `--auth-default` for a question the service left undecided.
    fn fallback(
        &self,
        action: Action,
        stream: &str,
        ip: Option<IpAddr>,
        why: &str,
    ) -> Result<Answer> {
        match self.default {
            AuthDefault::Allow => {
                tracing::warn!(
                    stream,
                    action = action.as_str(),
                    ?ip,
                    "auth service failed ({why}): allowed by --auth-default allow"
                );
                Ok(Answer::Allow)
            }
            AuthDefault::Deny => Err(Error::unavailable(format!(
                "the auth service did not decide whether to let this {} '{stream}' ({why}); --auth-default is deny",
                action.as_str()
            ))),
        }
    }

    /// One question to the endpoint; `Err` when it gave no decision.
    async fn ask(
        &self,
        action: Action,
        stream: &str,
        ip: Option<IpAddr>,
        key: Option<&str>,
    ) -> std::result::Result<Answer, String> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let body = json!({
            "action": action.as_str(),
            "stream": stream,
            "ip": ip.map(|i| i.to_string()),
            "key": key,
        });
        let req = hyper::Request::post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("transcast/", env!("CARGO_PKG_VERSION"), " auth"),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let asked = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, asked)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        match status {
            200..=299 => Ok(Answer::Allow),
            401 | 403 => {
                let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        v["message"]
                            .as_str()
                            .map(|m| m.chars().filter(|c| !c.is_control()).take(200).collect())
                    })
                    .unwrap_or_default();
                Ok(Answer::Deny { status, message })
            }
            other => Err(format!("it answered {other}")),
        }
    }
}
