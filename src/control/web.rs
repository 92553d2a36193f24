//! The status page (`GET /`) and the watch page (`GET /watch/{name}`): server-rendered HTML with a little plain
//! JavaScript, no build step.
//!
//! The list works without JavaScript (links and players are in the HTML); with JavaScript it refreshes from
//! `/api/v1/streams` every two seconds, updating figures in place so the players keep playing. A viewer who may
//! not use the control API keeps the server-rendered list. With the token server on, only streams anyone may
//! watch (a session with HTTP output and no view key) are listed.

use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::control::api::dto::StreamInfo;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::stream::registry as streams;

const STYLE: &str = r#"
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#2f6fed; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { background:#141a26; color:#fff; padding:14px 28px; display:flex; align-items:baseline; gap:16px; }
header h1 { margin:0; font-size:20px; letter-spacing:.3px; }
header a { color:#fff; text-decoration:none; }
header .sub { color:#aab3c5; font-size:13px; }
main { padding:24px 28px; max-width:1400px; margin:0 auto; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(360px, 1fr)); gap:18px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; box-shadow:0 1px 2px rgba(16,24,40,.05); }
.card video, .card .audio { width:100%; aspect-ratio:16/9; background:#0b0e14; display:block; }
.card .audio { display:flex; flex-direction:column; gap:14px; align-items:center; justify-content:center; color:#aab3c5; }
.card .audio .note { font-size:40px; line-height:1; }
.card .audio audio { width:88%; }
.watch .audio { background:#0b0e14; border-radius:10px; padding:40px 24px; text-align:center; color:#aab3c5; }
.watch .info { color:var(--muted); margin:-8px 0 14px; font-size:14px; }
.card .body { padding:12px 14px 14px; }
.card h2 { margin:0 0 6px; font-size:16px; display:flex; justify-content:space-between; align-items:center; }
.card h2 a { color:var(--ink); text-decoration:none; }
.card h2 a:hover { color:var(--accent); }
.badge { font-size:11px; font-weight:600; text-transform:uppercase; letter-spacing:.5px; padding:2px 8px; border-radius:999px; background:#eef2ff; color:#3538cd; }
.badge.passthrough { background:#ecfdf3; color:#067647; }
dl { display:grid; grid-template-columns:auto 1fr; gap:2px 12px; margin:0; font-size:13px; }
dt { color:var(--muted); }
dd { margin:0; font-variant-numeric:tabular-nums; }
.empty { color:var(--muted); padding:40px; text-align:center; border:1px dashed var(--line); border-radius:10px; background:var(--card); }
.empty code { background:#f2f4f7; padding:2px 6px; border-radius:4px; }
.watch video, .watch audio { width:100%; max-height:78vh; background:#000; border-radius:10px; }
.stats { color:var(--muted); font-size:13px; margin-top:10px; }
footer { color:var(--muted); font-size:12px; padding:12px 28px 24px; max-width:1400px; margin:0 auto; }
"#;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str, script: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <header><h1><a href=\"/\">transcast</a></h1><span class=\"sub\">live streams as WebM</span></header>\
         {body}<script src=\"/player.js\"></script><script>{script}</script></body></html>",
        esc(title)
    );
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        html,
    )
        .into_response()
}

/// Whether anyone may watch `name` without a key.
fn public(app: &AppState, name: &str) -> bool {
    !app.config().token_server_enabled()
        || app
            .tokens
            .get(name)
            .is_some_and(|s| s.outputs.http && s.view_key_sha256.is_none())
}

fn human_bps(bps: u64) -> String {
    if bps >= 1_000_000 {
        format!("{:.1} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", bps / 1000)
    }
}

fn uptime(started: SystemTime) -> String {
    let s = started.elapsed().map_or(0, |d| d.as_secs());
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A stream's media element: played by `/player.js` (`data-transcast`), or by the element itself (`src`) when
/// `plain` is asked for, and always without JavaScript (`<noscript>`).
fn media_tag(name: &str, info: &StreamInfo, controls: bool, plain: bool) -> String {
    let src = format!("/live/{}", esc(name));
    let c = if controls { " controls" } else { "" };
    let (tag, attrs) = if info.output.content_type == Some("audio/webm") {
        // Audio has no picture: always give it controls.
        ("audio", " autoplay controls".to_string())
    } else {
        ("video", format!(" autoplay muted playsinline{c}"))
    };
    let element = if plain {
        format!("<{tag} src=\"{src}\"{attrs}></{tag}>")
    } else {
        format!(
            "<{tag} data-transcast=\"{src}\"{attrs}></{tag}><noscript><{tag} src=\"{src}\"{attrs}></{tag}></noscript>"
        )
    };
    if tag == "audio" {
        // And something to look at.
        format!("<div class=\"audio\"><span class=\"note\">♪</span>{element}</div>")
    } else {
        element
    }
}

fn resolution(info: &StreamInfo) -> String {
    match (info.output.width, info.output.height) {
        (Some(w), Some(h)) => format!("{w}×{h}"),
        _ => "audio only".into(),
    }
}

/// A stream's state for people: on the fallback it says so (the player shows the slate).
fn state_text(state: crate::stream::State, failovers: u64) -> String {
    let s = match state {
        crate::stream::State::Starting => "starting",
        crate::stream::State::Live => "live",
        crate::stream::State::Fallback => "on its fallback, waiting for its source",
        crate::stream::State::Ended => "ended",
    };
    if failovers > 0 {
        format!("{s} · failovers: {failovers}")
    } else {
        s.to_string()
    }
}

fn card(info: &StreamInfo, started: SystemTime) -> String {
    let name = esc(&info.name);
    let mode = info.mode.as_str();
    let res = resolution(info);
    format!(
        "<article class=\"card\" data-stream=\"{name}\">{player}<div class=\"body\">\
         <h2><a href=\"/watch/{name}\">{name}</a><span class=\"badge {mode}\" data-f=\"mode\">{mode}</span></h2><dl>\
         <dt>state</dt><dd data-f=\"state\">{state}</dd>\
         <dt>codecs</dt><dd data-f=\"codecs\">{cin} → {cout}</dd>\
         <dt>resolution</dt><dd data-f=\"res\">{res}</dd>\
         <dt>bitrate</dt><dd data-f=\"bitrate\">{bitrate}</dd>\
         <dt>clients</dt><dd data-f=\"clients\">{clients}</dd>\
         <dt>uptime</dt><dd data-f=\"uptime\">{up}</dd>\
         <dt>links</dt><dd><a href=\"/live/{name}\">live WebM</a> · \
         <a href=\"/live/{name}/manifest.mpd\">DASH</a></dd></dl></div></article>",
        player = media_tag(&info.name, info, false, false),
        state = state_text(info.state, info.failovers),
        cin = esc(&info.input.codecs.join("+")),
        cout = esc(&info.output.codecs.join("+")),
        bitrate = human_bps(info.bitrate_out_bps),
        clients = info.clients.now,
        up = uptime(started),
    )
}

const STATUS_JS: &str = r#"
const grid = document.getElementById('streams');
function bps(b) { return b >= 1e6 ? (b / 1e6).toFixed(1) + ' Mbit/s' : Math.floor(b / 1000) + ' kbit/s'; }
function up(t) { const s = Math.max(0, Math.floor((Date.now() - Date.parse(t)) / 1000));
  return Math.floor(s / 3600) + ':' + String(Math.floor(s / 60) % 60).padStart(2, '0') + ':' + String(s % 60).padStart(2, '0'); }
function set(card, f, v) { const e = card.querySelector('[data-f="' + f + '"]'); if (e && e.textContent !== v) e.textContent = v; }
async function refresh() {
  let list;
  try { const r = await fetch('/api/v1/streams', {cache: 'no-store'}); if (!r.ok) return false; list = await r.json(); }
  catch (e) { return true; }
  const seen = new Set();
  for (const s of list) {
    seen.add(s.name);
    let card = grid.querySelector('[data-stream="' + CSS.escape(s.name) + '"]');
    if (!card) { location.reload(); return false; }
    set(card, 'mode', s.mode); card.querySelector('.badge').className = 'badge ' + s.mode;
    set(card, 'state', ({fallback: 'on its fallback, waiting for its source'}[s.state] || s.state)
      + (s.failovers > 0 ? ' · failovers: ' + s.failovers : ''));
    set(card, 'codecs', s.input.codecs.join('+') + ' → ' + s.output.codecs.join('+'));
    set(card, 'res', s.output.width ? s.output.width + '×' + s.output.height : 'audio only');
    set(card, 'bitrate', bps(s.bitrate_out_bps));
    set(card, 'clients', String(s.clients.now));
    set(card, 'uptime', up(s.started_at));
  }
  for (const card of grid.querySelectorAll('[data-stream]')) {
    if (!seen.has(card.dataset.stream)) card.remove();
  }
  return true;
}
(async function loop() { if (await refresh()) setTimeout(loop, 2000); })();
"#;

pub async fn status(State(app): State<Arc<AppState>>) -> Response {
    let mut cards = String::new();
    for e in app
        .registry
        .list()
        .iter()
        .filter(|e| public(&app, &e.name) && e.hub.has_header())
    {
        cards.push_str(&card(&crate::control::api::stream_info(e), e.started_at));
    }
    let mut body = String::from("<main>");
    if cards.is_empty() {
        let _ = write!(
            body,
            "<div class=\"empty\" id=\"streams\">No live streams. Push one with \
             <code>curl -T clip.mp4 http://HOST/live/NAME</code>, then reload.</div>"
        );
    } else {
        let _ = write!(body, "<div class=\"grid\" id=\"streams\">{cards}</div>");
    }
    body.push_str(
        "</main><footer>Players are muted; open a stream for sound and controls.</footer>",
    );
    page(
        "transcast",
        &body,
        if cards.is_empty() { "" } else { STATUS_JS },
    )
}

const WATCH_JS: &str = r#"
const m = document.getElementById('player');
window.__events = [];
for (const ev of ['loadedmetadata', 'playing', 'waiting', 'stalled', 'error', 'ended']) {
  m.addEventListener(ev, () => window.__events.push(ev + '@' + m.currentTime.toFixed(2) + (m.error ? ' code ' + m.error.code + ' ' + m.error.message : '')));
}
const stats = document.getElementById('stats');
const sec = v => v == null ? '–' : v.toFixed(2) + ' s';
setInterval(() => {
  const q = m.getVideoPlaybackQuality ? m.getVideoPlaybackQuality() : null;
  const p = m.transcast ? m.transcast.stats : null;
  stats.textContent = 'time ' + m.currentTime.toFixed(1) + ' s' + (m.videoWidth ? ' · ' + m.videoWidth + '×' + m.videoHeight : '') +
    (q ? ' · ' + q.totalVideoFrames + ' frames, ' + q.droppedVideoFrames + ' dropped' : '') +
    (p && p.mode === 'mse' ? ' · low-latency player: ' + sec(p.behind) + ' behind live, buffer ' + sec(p.buffer) +
      ', rate ' + m.playbackRate.toFixed(2) + ', ' + p.stalls + ' stalls, ' + p.jumps + ' jumps, ' +
      p.reconnects + ' reconnects' + (p.state !== 'playing' ? ' (' + p.state + (p.error ? ': ' + p.error : '') + ')' : '')
     : p ? ' · plain player' + (p.error ? ' (' + p.error + ')' : '') : ' · plain player');
}, 500);
"#;

/// `?muted=1` starts the player muted: browsers let muted media autoplay, and a machine without a sound card
/// (kiosk, headless browser) can play audio-only streams without an audio device.
pub async fn watch_page(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    streams::validate_name(&name)?;
    let e = app
        .registry
        .get(&name)
        .filter(|e| public(&app, &e.name))
        .ok_or_else(|| Error::not_found(format!("no live stream named '{name}'")))?;
    let info = crate::control::api::stream_info(&e);
    let muted = if query.get("muted").is_some_and(|v| v == "1") {
        " muted"
    } else {
        ""
    };
    let plain = query.get("player").is_some_and(|v| v == "plain");
    let tag = media_tag(&name, &info, true, plain)
        .replacen("<video ", "<video id=\"player\" ", 1)
        .replacen("<audio ", &format!("<audio id=\"player\"{muted} "), 1);
    let (mode, res) = (info.mode.as_str(), resolution(&info));
    let body = format!(
        "<main class=\"watch\"><h2>{n}</h2><p class=\"info\">{mode} · {cin} → {cout} · {res}</p>{tag}\
         <div class=\"stats\" id=\"stats\"></div>\
         <p class=\"stats\">Direct link for players: <a href=\"/live/{n}\">/live/{n}</a> · \
         DASH for caches and CDNs: <a href=\"/live/{n}/manifest.mpd\">/live/{n}/manifest.mpd</a> · \
         {other}</p></main>",
        other = if plain {
            format!("<a href=\"/watch/{}\">low-latency player</a>", esc(&name))
        } else {
            format!(
                "<a href=\"/watch/{}?player=plain\">plain &lt;video&gt;</a>",
                esc(&name)
            )
        },
        n = esc(&name),
        cin = esc(&info.input.codecs.join("+")),
        cout = esc(&info.output.codecs.join("+")),
    );
    Ok(page(&name, &body, WATCH_JS))
}

/// The low-latency player (plain JavaScript; how to embed it is at its top and in the API guide).
const PLAYER_JS: &str = include_str!("player.js");

/// `GET /player.js`. With `--cors-origin`'s header, though a `<script>` needs none: a page that fetches it may.
pub async fn player_js(State(app): State<Arc<AppState>>) -> Response {
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        PLAYER_JS,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&app.config().cors_origin) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    response
}
