//! Live DASH over HTTP: a stream's manifest, and the init and media segments `stream::segments` cuts, with
//! the headers caches and players need.
//!
//! ```text
//!  GET /live/{name}/manifest.mpd                      dynamic MPD, max-age 1 s
//!  GET /live/{name}/{instance}/{video|audio}/init.webm one track's header             ┐ immutable: ETag,
//!  GET /live/{name}/{instance}/{video|audio}/{n}.webm  one track's segment n (Cluster) ┘ Last-Modified, Range
//!  GET /time                                           the clock players sync to (UTCTiming)
//! ```
//!
//! The instance in the URLs changes whenever a name is pushed anew, so a cache never serves one stream's
//! segment for another's. What is not (or no longer) there answers 404 with `no-cache`. Every answer allows
//! any origin (`--cors-origin`), so players on other sites can use the stream.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::state::{AppState, ConnInfo};
use crate::stream::segments::Listing;
use crate::stream::webm::TrackKind;

/// `GET /live/{name}/manifest.mpd`.
pub async fn manifest(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Response {
    let token = query.get("token").map(String::as_str);
    let answer = async {
        let stream = find(&app, &name, token, &headers, conn).await?;
        let segments = &stream.hub.segments;
        segments.stats.manifests.fetch_add(1, Relaxed);
        let listing = segments.listing().ok_or_else(|| {
            segments.stats.not_found.fetch_add(1, Relaxed);
            Error::not_found(format!("stream '{name}' has no complete DASH segment yet"))
        })?;
        Ok::<_, Error>(mpd(&listing, token, SystemTime::now()))
    }
    .await;
    let mut resp = match answer {
        Ok(mpd) => {
            let mut r = Response::new(Body::from(mpd));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/dash+xml"),
            );
            // At most half a segment, so a cache never holds a manifest past the next segment.
            let max_age = (app.config().segments.target.as_secs_f64() / 2.0).floor() as u64;
            if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                h.insert(header::CACHE_CONTROL, v);
            }
            r
        }
        Err(e) => not_found(e),
    };
    cors(&app, resp.headers_mut());
    resp
}

/// `GET /live/{name}/{instance}/{rep}/{file}`: `init.webm` or `{n}.webm`.
pub async fn media(
    State(app): State<Arc<AppState>>,
    Path((name, instance, rep, file)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Response {
    let answer = async {
        let token = query.get("token").map(String::as_str);
        let stream = find(&app, &name, token, &headers, conn).await?;
        let segments = &stream.hub.segments;
        let missing = || {
            segments.stats.not_found.fetch_add(1, Relaxed);
            Error::not_found(format!(
                "stream '{name}' has no {rep}/{file} in instance {instance} (now, or any more)"
            ))
        };
        let content_type = match rep.as_str() {
            "video" => "video/webm",
            "audio" => "audio/webm",
            _ => return Err(missing()),
        };
        let (tag, data, modified) = if file == "init.webm" {
            let init = segments.init(&instance, &rep).ok_or_else(missing)?;
            segments.stats.inits.fetch_add(1, Relaxed);
            (format!("{instance}-{rep}-init"), init, None)
        } else {
            let n: u64 = file
                .strip_suffix(".webm")
                .and_then(|n| n.parse().ok())
                .ok_or_else(missing)?;
            let (data, at) = segments.segment(&instance, &rep, n).ok_or_else(missing)?;
            segments.stats.segments_served.fetch_add(1, Relaxed);
            (format!("{instance}-{rep}-{n}"), data, Some(at))
        };
        // Kept well past its time in the window; its bytes never change.
        let max_age = (app.config().segments.target.as_secs_f64()
            * app.config().segments.window as f64
            * 2.0)
            .ceil() as u64;
        Ok::<_, Error>(immutable(
            &headers,
            content_type,
            &format!("\"{tag}\""),
            modified,
            max_age,
            data,
        ))
    }
    .await;
    let mut resp = answer.unwrap_or_else(not_found);
    cors(&app, resp.headers_mut());
    resp
}

/// The stream a DASH request names, after the name and view checks. On an edge (or for a declared on-demand
/// pull) a DASH request wants the stream as a viewer does: the first starts its pull, and each keeps it open, as
/// players ask every second while they play.
async fn find(
    app: &Arc<AppState>,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Result<Arc<crate::stream::Stream>> {
    let peer = conn.map(|c| c.peer);
    let stream = crate::output::progressive::find_or_pull(app, name, token, headers, peer).await?;
    if app.pulls.get(name).is_some() {
        crate::source::pull::want(app, name);
    }
    Ok(stream)
}

/// `GET /time`: the server's clock as ISO 8601 with milliseconds, which the manifest names as its UTCTiming
/// source (a player otherwise asks a time server on the internet).
pub async fn time(State(app): State<Arc<AppState>>) -> Response {
    let mut r = Response::new(Body::from(iso(SystemTime::now())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(&app, h);
    r
}

/// A 404 that no cache keeps (the segment may exist a moment later).
fn not_found(e: Error) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn cors(app: &AppState, h: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&app.config().cors_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Length, Content-Range, ETag, Last-Modified"),
        );
    }
}

/// An immutable body with its validators, answering `If-None-Match` (304) and one byte range (206, or 416).
fn immutable(
    req: &HeaderMap,
    content_type: &'static str,
    etag: &str,
    modified: Option<SystemTime>,
    max_age: u64,
    data: Bytes,
) -> Response {
    let mut status = StatusCode::OK;
    let mut body = data.clone();
    let mut range = None;
    if req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        status = StatusCode::NOT_MODIFIED;
        body = Bytes::new();
    } else if let Some(r) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        match byte_range(r, data.len() as u64) {
            Some(Ok((a, b))) => {
                status = StatusCode::PARTIAL_CONTENT;
                body = data.slice(a as usize..=b as usize);
                range = Some(format!("bytes {a}-{b}/{}", data.len()));
            }
            Some(Err(())) => {
                status = StatusCode::RANGE_NOT_SATISFIABLE;
                body = Bytes::new();
                range = Some(format!("bytes */{}", data.len()));
            }
            None => {}
        }
    }
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}, immutable")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = modified.and_then(|t| HeaderValue::from_str(&http_date(t)).ok()) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n` within `len` bytes: None to ignore the header (several
/// ranges, another unit, garbage: the whole body is answered, as RFC 9110 allows), `Err` when unsatisfiable.
pub fn byte_range(v: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, true) => return None,
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                u64::MAX
            } else {
                b.parse().ok()?
            };
            if a > b {
                return None;
            }
            if a >= len {
                return Some(Err(()));
            }
            (a, b.min(len - 1))
        }
    };
    Some(Ok(range))
}

/// The manifest: a dynamic, isoff-live MPD with one adaptation set per track, each one representation whose
/// segments a `SegmentTimeline` lists with their exact start and duration (stream milliseconds).
pub fn mpd(l: &Listing, token: Option<&str>, now: SystemTime) -> String {
    let target = l.target.as_secs_f64();
    let total_ms: i64 = l.segments.iter().map(|s| s.duration_ms).sum();
    let max_ms = l.segments.iter().map(|s| s.duration_ms).max().unwrap_or(0);
    let first = l.segments.first().map_or(1, |s| s.number);
    // Whole seconds: ffmpeg's DASH reader drops the fraction of an xs:duration.
    let secs_up = |ms: i64| (ms.max(0) as u64).div_ceil(1000).max(1);
    let query = token.map_or(String::new(), |t| format!("?token={}", url_escape(t)));
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" \
         profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" type=\"dynamic\" availabilityStartTime=\"{}\" \
         publishTime=\"{}\" minBufferTime=\"PT{}S\" timeShiftBufferDepth=\"PT{}S\" \
         suggestedPresentationDelay=\"PT{}S\" maxSegmentDuration=\"PT{}S\"",
        iso(l.availability_start),
        iso(now),
        target.ceil() as u64,
        (total_ms.max(1000) / 1000),
        (target * 3.0).ceil() as u64,
        secs_up(max_ms),
    );
    if l.ended {
        let end = l.segments.last().map_or(0, |s| s.start_ms + s.duration_ms);
        let _ = write!(m, " mediaPresentationDuration=\"PT{}S\"", secs_up(end));
    } else {
        m.push_str(" minimumUpdatePeriod=\"PT1S\"");
    }
    m.push_str(">\n  <Period id=\"0\" start=\"PT0S\">\n");
    for (i, rep) in l.reps.iter().enumerate() {
        let video = rep.track.kind == TrackKind::Video;
        let kind = if video { "video" } else { "audio" };
        let bandwidth = l
            .segments
            .iter()
            .map(|s| {
                s.sizes.get(i).copied().unwrap_or(0) as u64 * 8000 / s.duration_ms.max(1) as u64
            })
            .max()
            .unwrap_or(0)
            .max(1000);
        let _ = writeln!(
            m,
            "    <AdaptationSet id=\"{}\" contentType=\"{kind}\" mimeType=\"{kind}/webm\" codecs=\"{}\" \
             segmentAlignment=\"true\" startWithSAP=\"1\">",
            i + 1,
            rep.track.codec_name(),
        );
        let _ = writeln!(
            m,
            "      <SegmentTemplate timescale=\"1000\" startNumber=\"{first}\" \
             initialization=\"{inst}/$RepresentationID$/init.webm{query}\" \
             media=\"{inst}/$RepresentationID$/$Number$.webm{query}\">\n        <SegmentTimeline>",
            inst = l.instance,
        );
        for s in &l.segments {
            let _ = writeln!(
                m,
                "          <S t=\"{}\" d=\"{}\"/>",
                s.start_ms, s.duration_ms
            );
        }
        m.push_str("        </SegmentTimeline>\n      </SegmentTemplate>\n");
        let _ = write!(
            m,
            "      <Representation id=\"{}\" bandwidth=\"{bandwidth}\"",
            rep.id
        );
        if video {
            if let (Some(w), Some(h)) = (rep.track.width, rep.track.height) {
                let _ = write!(m, " width=\"{w}\" height=\"{h}\" sar=\"1:1\"");
            }
            // Measured: pictures over time in the listed segments (the last one, cut by the stream's end, aside).
            let last = l.segments.last().map_or(0, |s| s.number);
            let (frames, ms) = l
                .segments
                .iter()
                .filter(|s| !l.ended || s.number != last)
                .fold((0, 0), |(f, d), s| {
                    (f + s.frames.get(i).copied().unwrap_or(0), d + s.duration_ms)
                });
            if frames > 0 && ms > 0 {
                let _ = write!(m, " frameRate=\"{}\"", (frames as i64 * 1000 + ms / 2) / ms);
            }
            m.push_str("/>\n");
        } else {
            if let Some(r) = rep.track.rate {
                let _ = write!(m, " audioSamplingRate=\"{}\"", r.round() as u64);
            }
            m.push_str(">\n");
            if let Some(c) = rep.track.channels {
                let _ = writeln!(
                    m,
                    "        <AudioChannelConfiguration \
                     schemeIdUri=\"urn:mpeg:dash:23003:3:audio_channel_configuration:2011\" value=\"{c}\"/>"
                );
            }
            m.push_str("      </Representation>\n");
        }
        m.push_str("    </AdaptationSet>\n");
    }
    // The clock players sync to: the manifest's own time first (exact to its age, which caches keep under a
    // second, and usable from a page on any origin), then this server's `/time`. Without one, dash.js asks a
    // time server on the internet.
    let _ = write!(
        m,
        "  </Period>\n  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:direct:2014\" value=\"{}\"/>\n  \
         <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"/time\"/>\n</MPD>\n",
        iso(now)
    );
    m
}

/// A key in a URL query, escaped so it cannot end the attribute or the query.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as MPD dates and ffmpeg's reader want them.
fn iso(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(byte_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(byte_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(byte_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(byte_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(byte_range("bytes=9-1", 100), None);
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(784_111_777_123);
        assert_eq!(iso(t), "1994-11-06T08:49:37.123Z");
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
