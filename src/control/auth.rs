//! Who may do what: address masks for the control API, the caller's address behind trusted proxies, and the
//! secrets of session tokens (generation, hashing, constant-time comparison, rate-limited failure logs).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::config::allowed;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Authentication failures logged per [`FAIL_LOG_WINDOW`]; more are counted and summarised, so a key-guessing
/// client cannot flood the log.
const FAIL_LOG_BURST: u32 = 10;
const FAIL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The caller's address: the peer, or — when the peer is a trusted proxy — the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy (left-most entries are client-supplied and forgeable).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut ip = peer.ip();
    if trusted.is_empty() || !allowed(trusted, ip) {
        return ip;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(h) if allowed(trusted, h) => ip = h,
            Ok(h) => return h,
            Err(_) => return ip,
        }
    }
    ip
}

/// A fresh secret: 32 random bytes, hex (256 bits).
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex(&b)
}

/// What is stored of a secret: its SHA-256, hex. The state file never holds a usable key.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in time independent of where they differ.
pub fn secret_matches(presented: &str, stored_hash: &str) -> bool {
    let a = hash_secret(presented);
    a.len() == stored_hash.len()
        && a.bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The key a request presents: `Authorization: Bearer …`, else `?token=…`.
pub fn presented_key<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query_token)
        .filter(|k| !k.is_empty())
}

/// Logs authentication failures with the peer, at most `FAIL_LOG_BURST` (10) per window.
#[derive(Debug)]
pub struct FailureLog {
    state: Mutex<(Instant, u32, u64)>,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }
}

impl FailureLog {
    pub fn record(&self, ip: IpAddr, what: &str) {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        if now.duration_since(st.0) >= FAIL_LOG_WINDOW {
            if st.2 > 0 {
                tracing::warn!(
                    suppressed = st.2,
                    "more authentication failures were not logged"
                );
            }
            *st = (now, 0, 0);
        }
        if st.1 < FAIL_LOG_BURST {
            st.1 += 1;
            tracing::warn!(%ip, "authentication failed: {what}");
        } else {
            st.2 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_mask;

    #[test]
    fn masks_cover_v4_v6_and_mapped_addresses() {
        let m = vec![
            parse_mask("10.1.0.0/16").unwrap(),
            parse_mask("2001:db8::/32").unwrap(),
            parse_mask("192.0.2.7").unwrap(),
        ];
        assert!(allowed(&m, "10.1.2.3".parse().unwrap()));
        assert!(!allowed(&m, "10.2.0.1".parse().unwrap()));
        assert!(allowed(&m, "2001:db8::5".parse().unwrap()));
        assert!(allowed(&m, "::ffff:10.1.9.9".parse().unwrap()));
        assert!(allowed(&m, "192.0.2.7".parse().unwrap()));
        assert!(!allowed(&m, "192.0.2.8".parse().unwrap()));
        assert!(parse_mask("nonsense").is_err());
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let trusted = vec![
            parse_mask("127.0.0.1").unwrap(),
            parse_mask("10.0.0.0/8").unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // Right-most non-proxy hop; the forged left-most entry is ignored.
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger.ip());
        assert_eq!(client_ip(proxy, &h, &[]), proxy.ip());
    }

    #[test]
    fn secrets_are_long_random_and_compared_by_hash() {
        let a = new_secret();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_secret());
        let h = hash_secret(&a);
        assert!(secret_matches(&a, &h));
        assert!(!secret_matches(&new_secret(), &h));
        assert!(!secret_matches("", &h));
    }

    #[test]
    fn bearer_header_wins_over_query() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, Some("q")), Some("q"));
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h, Some("q")), Some("abc"));
        assert_eq!(presented_key(&HeaderMap::new(), Some("")), None);
    }
}
