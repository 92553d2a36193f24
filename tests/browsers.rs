//! Real browsers play transcast's output: headless Firefox (geckodriver) and Chromium (chromedriver), watching
//! a transcoded and a passthrough stream from the start and as late joiners, an audio-only stream, the
//! status page's players, dash.js and Shaka Player on a stream's DASH manifest from a page on another origin, and
//! one `<video>` playing on through its source's loss, the slate and its return. Chromium refuses a join that does not start at a keyframe; Firefox shows nothing
//! until one comes: both are needed.
//!
//! Assertions are on what the page's media element reports (`currentTime` advancing, `videoWidth`, decoded
//! frames, `buffered`, `error`), every wait bounded. On failure a screenshot and the page's media event log go
//! to `$CARGO_TARGET_TMPDIR/browser-artifacts/`. Without a driver the test is skipped, except under CI, where
//! it fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

fn find(cmd: &str) -> Option<PathBuf> {
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(cmd));
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(home_bin)
        .find(|p| p.is_file())
}

/// A WebDriver server process, killed on drop.
struct Driver {
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(browser: &str) -> Option<(Driver, Client)> {
    let (driver, browser_bin) = match browser {
        "firefox" => ("geckodriver", "firefox-esr"),
        _ => ("chromedriver", "chromium"),
    };
    let (Some(driver_path), Some(browser_path)) = (find(driver), find(browser_bin)) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{driver} and {browser_bin} must be installed in CI (scripts/test.sh)"
        );
        eprintln!("{driver} or {browser_bin} not installed: skipped");
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("driver.log")).unwrap();
    let mut cmd = Command::new(&driver_path);
    match browser {
        "firefox" => cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]),
        _ => cmd.arg(format!("--port={port}")),
    };
    let child = cmd
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let caps = match browser {
        "firefox" => json!({
            "browserName": "firefox",
            "pageLoadStrategy": "eager",
            "moz:firefoxOptions": {
                "binary": browser_path,
                "args": ["-headless", "-width=1280", "-height=900"],
                "prefs": {"media.autoplay.default": 0, "media.autoplay.blocking_policy": 0},
            },
        }),
        _ => json!({
            "browserName": "chrome",
            "pageLoadStrategy": "eager",
            "goog:chromeOptions": {
                "binary": browser_path,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900",
                    format!("--user-data-dir={}", tmp.path().join("profile").display()),
                ],
            },
        }),
    };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let mut b = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        b.capabilities(caps.as_object().unwrap().clone());
        match b.connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{browser}: no WebDriver session: {e}"),
        }
    };
    Some((Driver { child, _tmp: tmp }, client))
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Video { width: u64, height: u64 },
    Audio,
}

const PROBE: &str = r#"
const m = document.querySelector(arguments[0]);
if (!m) return null;
const q = m.getVideoPlaybackQuality ? m.getVideoPlaybackQuality() : null;
return {t: m.currentTime, w: m.videoWidth || 0, h: m.videoHeight || 0, frames: q ? q.totalVideoFrames : 0,
        buffered: m.buffered.length, error: m.error ? m.error.code + ' ' + m.error.message : null,
        ready: m.readyState, events: window.__events || [], player: m.transcast ? m.transcast.stats : null,
        rate: m.playbackRate};
"#;

/// Opens `page` and waits (bounded) until the media element `selector` has played `advance` seconds.
async fn plays(
    client: &Client,
    page: &str,
    selector: &str,
    want: Want,
    advance: f64,
) -> Result<Value, String> {
    client
        .goto(page)
        .await
        .map_err(|e| format!("goto {page}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first: Option<f64> = None;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let v = client
            .execute(PROBE, vec![json!(selector)])
            .await
            .map_err(|e| format!("probe: {e}"))?;
        if !v.is_null() {
            if !v["error"].is_null() {
                return Err(format!("media error: {v}"));
            }
            let t = v["t"].as_f64().unwrap_or(0.0);
            if v["ready"].as_u64().unwrap_or(0) >= 2 && first.is_none() {
                first = Some(t);
            }
            let video_ok = match want {
                Want::Video { width, height } => {
                    v["w"].as_u64() == Some(width)
                        && v["h"].as_u64() == Some(height)
                        && v["frames"].as_u64() > Some(0)
                }
                Want::Audio => true,
            };
            if let Some(t0) = first
                && t - t0 >= advance
                && video_ok
                && v["buffered"].as_u64() > Some(0)
            {
                let mut v = v;
                v["first_time"] = json!(t0);
                return Ok(v);
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "did not play {advance} s within 20 s (first time {first:?}); last state {last}"
    ))
}

async fn save_artifacts(client: &Client, name: &str, why: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    if let Ok(png) = client.screenshot().await {
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
    let events = client
        .execute("return window.__events || []", vec![])
        .await
        .unwrap_or(Value::Null);
    let source = client.source().await.unwrap_or_default();
    std::fs::write(
        dir.join(format!("{name}.log")),
        format!("{why}\n\nmedia events: {events}\n\npage:\n{source}"),
    )
    .unwrap();
    dir
}

/// Waits until a stream has produced its header (it can be watched).
async fn wait_live(server: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .state
        .registry
        .get(name)
        .is_some_and(|e| e.hub.has_header())
    {
        assert!(Instant::now() < deadline, "stream {name} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check(
    client: &Client,
    browser: &str,
    case: &str,
    page: String,
    selector: &str,
    want: Want,
    advance: f64,
) -> Value {
    match plays(client, &page, selector, want, advance).await {
        Ok(v) => {
            eprintln!("{browser} {case}: ok {v}");
            v
        }
        Err(e) => {
            let dir = save_artifacts(client, &format!("{browser}-{case}"), &e).await;
            panic!(
                "{browser} {case}: {e} (screenshot and log in {})",
                dir.display()
            );
        }
    }
}

async fn browser_cases(browser: &str) {
    let Some((_driver, client)) = start_driver(browser).await else {
        return;
    };
    let server = Server::start(|a| a.pace = true).await;
    let base = format!("http://{}", server.addr);
    let video = Want::Video {
        width: 320,
        height: 240,
    };

    for (kind, mode) in [("ts", "transcode"), ("webm", "passthrough")] {
        let name = format!("{browser}-{mode}");
        let started = Instant::now();
        let pusher = tokio::spawn({
            let (url, data) = (server.url(&name), long_clip(kind));
            async move { push(&url, data, false).await }
        });
        wait_live(&server, &name).await;
        // The watch page's low-latency player, from the start.
        let v = check(
            &client,
            browser,
            &format!("{mode}-from-start"),
            format!("{base}/watch/{name}"),
            "#player",
            video,
            3.0,
        )
        .await;
        at_the_live_edge(&client, browser, &format!("{mode}-from-start"), &v).await;
        let join_at = Duration::from_secs(5);
        tokio::time::sleep(join_at.saturating_sub(started.elapsed())).await;
        client.goto("about:blank").await.unwrap();
        // A plain `<video src>`, joining late: it must start at a keyframe.
        let v = check(
            &client,
            browser,
            &format!("{mode}-late-joiner"),
            format!("{base}/watch/{name}?player=plain"),
            "#player",
            video,
            3.0,
        )
        .await;
        assert!(
            v["player"].is_null(),
            "{browser}: ?player=plain is plain: {v}"
        );
        client.goto("about:blank").await.unwrap();
        let summary = pusher.await.unwrap().json;
        eprintln!("{browser} {mode} push: {summary}");
        assert_eq!(summary["mode"], mode);
    }

    let name = format!("{browser}-radio");
    let pusher = tokio::spawn({
        let (url, data) = (server.url(&name), long_clip("opus"));
        async move { push(&url, data, false).await }
    });
    wait_live(&server, &name).await;
    // Muted: this machine has no sound card, and Firefox errors out opening an audio device for audible media.
    let page = format!("{base}/watch/{name}?muted=1");
    check(
        &client,
        browser,
        "audio-only",
        page,
        "audio#player",
        Want::Audio,
        1.0,
    )
    .await;
    client.goto("about:blank").await.unwrap();
    pusher.await.unwrap();

    // The status page lists what is live, and its players play.
    let name = format!("{browser}-status");
    let pusher = tokio::spawn({
        let (url, data) = (server.url(&name), long_clip("webm"));
        async move { push(&url, data, false).await }
    });
    wait_live(&server, &name).await;
    let selector = format!("[data-stream=\"{name}\"] video");
    check(
        &client,
        browser,
        "status-page",
        format!("{base}/"),
        &selector,
        video,
        3.0,
    )
    .await;
    let text = client
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap();
    assert!(
        text.as_str().unwrap().contains(&name),
        "status page lists {name}"
    );
    client.goto("about:blank").await.unwrap();
    pusher.await.unwrap();

    dash_case(&client, browser).await;
    reconnect_case(&client, browser).await;
    failover_case(&client, browser, "ts").await;
    if browser == "chromium" {
        // Chromium refuses a stream that changes under it: a passthrough VP8 stream whose source returns as
        // H.264 must still be one valid VP8 stream (re-encoded at the stream's size).
        failover_case(&client, browser, "webm").await;
    }
    client.close().await.unwrap();
}

/// The low-latency player is playing through Media Source Extensions, at the live edge (no more media ahead of
/// its playhead than its target plus its jump threshold: what it keeps by design, not a timing figure), and has
/// not stalled since it started playing.
async fn at_the_live_edge(client: &Client, browser: &str, case: &str, v: &Value) {
    let p = &v["player"];
    let ahead = p["buffer"].as_f64().unwrap_or(f64::MAX);
    let ok = p["mode"] == "mse" && p["stalls"] == 0 && ahead <= 1.2;
    if !ok {
        let why = format!("player not at the live edge, or it stalled: {v}");
        let dir = save_artifacts(client, &format!("{browser}-{case}-player"), &why).await;
        panic!("{browser} {case}: {why} (artifacts in {})", dir.display());
    }
}

/// The media element's state now (see [`PROBE`]).
async fn media_state(client: &Client, selector: &str) -> Value {
    client
        .execute(PROBE, vec![json!(selector)])
        .await
        .unwrap_or(Value::Null)
}

/// Waits (bounded) until the element `selector`'s `currentTime` passes `t`; fails on a media error.
async fn advances_past(client: &Client, browser: &str, selector: &str, what: &str, t: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = media_state(client, selector).await;
        assert!(v["error"].is_null(), "{browser} {what}: media error {v}");
        let now = v["t"].as_f64().unwrap_or(0.0);
        if now > t {
            return now;
        }
        if Instant::now() > deadline {
            let dir = save_artifacts(client, &format!("{browser}-failover-{what}"), what).await;
            panic!(
                "{browser} {selector} {what}: currentTime stuck at {now} (wanted past {t}); {v}; artifacts in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Someone else's page (another origin) that embeds the stream twice: a plain `<video src>`, and the low-latency
/// player as its documentation says (one script, one element).
fn embedding_page(origin: &str, name: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8">
<video id="plain" src="{origin}/live/{name}" muted autoplay playsinline width="320"></video>
<video id="player" data-transcast="{origin}/live/{name}" muted autoplay playsinline width="320"></video>
<script src="{origin}/player.js"></script>"#
    )
}

/// Without Media Source Extensions the player lets the element play the stream itself; with them, when the stream
/// it plays ends (aborted through the API) it reconnects, waits out the 404s, and plays the next stream of the
/// same name, without a page reload.
async fn reconnect_case(client: &Client, browser: &str) {
    let server = Server::start(|a| a.pace = true).await;
    let name = format!("{browser}-reconnect");
    let origin = format!("http://{}", server.addr);
    let pusher = tokio::spawn({
        let (url, data) = (server.url(&name), long_clip("webm"));
        async move { push(&url, data, false).await }
    });
    wait_live(&server, &name).await;
    let no_mse = format!(
        "<!doctype html><script>window.MediaSource = undefined;</script>{}",
        embedding_page(&origin, &name)
    );
    let (port, _site) = static_server(vec![
        (
            "/",
            "text/html",
            embedding_page(&origin, &name).into_bytes(),
        ),
        ("/no-mse", "text/html", no_mse.into_bytes()),
    ])
    .await;
    let site = format!("http://127.0.0.1:{port}");
    let video = Want::Video {
        width: 320,
        height: 240,
    };
    let v = check(
        client,
        browser,
        "no-mse",
        format!("{site}/no-mse"),
        "#player",
        video,
        1.0,
    )
    .await;
    assert_eq!(
        v["player"]["mode"], "plain",
        "{browser}: without MSE the element plays itself: {v}"
    );
    check(
        client,
        browser,
        "before-reconnect",
        format!("{site}/"),
        "#player",
        video,
        1.0,
    )
    .await;
    server.state.registry.get(&name).unwrap().abort.cancel();
    server.wait_gone(&name).await;
    pusher.abort();
    // The player is retrying; the next stream of the name starts its clock again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pusher = tokio::spawn({
        let (url, data) = (server.url(&name), long_clip("webm"));
        async move { push(&url, data, false).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Option<f64> = None;
    loop {
        let v = media_state(client, "#player").await;
        let p = &v["player"];
        let back =
            p["reconnects"].as_u64() >= Some(1) && p["state"] == "playing" && v["error"].is_null();
        let t = v["t"].as_f64().unwrap_or(0.0);
        match seen {
            Some(t0) if back && t - t0 >= 1.0 => {
                eprintln!("{browser} reconnect: ok {v}");
                break;
            }
            None if back => seen = Some(t),
            _ => {}
        }
        if Instant::now() > deadline {
            let dir = save_artifacts(client, &format!("{browser}-reconnect"), &v.to_string()).await;
            panic!(
                "{browser}: the player did not play the next stream: {v} (artifacts in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.goto("about:blank").await.unwrap();
    pusher.abort();
}

/// A source (`first`: "ts" transcoded, "webm" passed through) killed mid-stream, then an MPEG-TS source pushed:
/// a plain `<video>` and the low-latency player, on a page of another origin, keep playing through the slate and
/// on with the new source, no error, no reload; the player is back at the live edge afterwards.
async fn failover_case(client: &Client, browser: &str, first: &str) {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = transcast::config::Fallback::Slate;
    })
    .await;
    let name = format!("{browser}-failover-{first}");
    // About real time, so the cut below falls mid-body: the source is lost, not finished.
    let feeding = losable_push(&server, &name, long_clip(first)).await;
    wait_live(&server, &name).await;
    let page = embedding_page(&format!("http://{}", server.addr), &name);
    let (port, _site) = static_server(vec![("/", "text/html", page.into_bytes())]).await;
    client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    let mut t_live = 0.0;
    for el in ["#plain", "#player"] {
        t_live = advances_past(client, browser, el, "source", 2.0).await;
    }
    feeding.abort(); // the pushing task and its socket go away mid-body
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.state.registry.get(&name).map(|s| s.state())
        != Some(transcast::stream::State::Fallback)
    {
        assert!(
            Instant::now() < deadline,
            "{browser}: the stream never fell back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut t_slate = 0.0;
    for el in ["#plain", "#player"] {
        let t = media_state(client, el).await["t"].as_f64().unwrap_or(0.0);
        t_slate = advances_past(client, browser, el, "slate", t + 3.0).await;
    }
    let pusher = tokio::spawn({
        let url = server.url(&name);
        async move { push(&url, long_clip("ts"), false).await }
    });
    let mut t_back = 0.0;
    for el in ["#plain", "#player"] {
        let t = media_state(client, el).await["t"].as_f64().unwrap_or(0.0);
        t_back = advances_past(client, browser, el, "resumed source", t + 4.0).await;
    }
    let v = media_state(client, "#player").await;
    assert!(v["error"].is_null(), "{browser}: {v}");
    let ahead = v["player"]["buffer"].as_f64().unwrap_or(f64::MAX);
    assert!(
        v["player"]["mode"] == "mse" && ahead <= 1.2,
        "{browser}: the player is back at the live edge after the failover: {v}"
    );
    let s = server.state.registry.get(&name).unwrap();
    assert_eq!(s.state(), transcast::stream::State::Live);
    assert_eq!(
        s.counters
            .resumes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    eprintln!(
        "{browser} failover from {first}: live {t_live:.1} s, slate {t_slate:.1} s, back {t_back:.1} s"
    );
    client.goto("about:blank").await.unwrap();
    pusher.abort();
}

/// The DASH players' page: dash.js in one `<video>`, Shaka Player in another, both on the manifest `?mpd=` names
/// (on another origin than the page: CORS is part of the test). Errors of either go to `window.__errors`.
const DASH_PAGE: &str = r#"<!doctype html><meta charset="utf-8">
<video id="dashjs" muted autoplay playsinline width="320"></video>
<video id="shaka" muted autoplay playsinline width="320"></video>
<script src="/dash.all.min.js"></script>
<script src="/shaka-player.compiled.js"></script>
<script>
window.__errors = [];
const mpd = new URLSearchParams(location.search).get('mpd');
for (const v of document.querySelectorAll('video')) {
  v.addEventListener('error', () => __errors.push(v.id + ' video error ' + (v.error && v.error.code + ' ' + v.error.message)));
}
const d = dashjs.MediaPlayer().create();
d.on(dashjs.MediaPlayer.events.ERROR, e => __errors.push('dash.js ' + JSON.stringify(e.error || e).slice(0, 300)));
d.initialize(document.getElementById('dashjs'), mpd, true);
(async () => {
  shaka.polyfill.installAll();
  const p = new shaka.Player();
  await p.attach(document.getElementById('shaka'));
  p.addEventListener('error', e => __errors.push('shaka ' + e.detail.code));
  try { await p.load(mpd); } catch (e) { __errors.push('shaka load ' + e.code); }
})();
</script>"#;

/// Serves `files` (path → content type, body) over HTTP/1.1 on a loopback port of its own, until dropped.
async fn static_server(
    files: Vec<(&'static str, &'static str, Vec<u8>)>,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let files = std::sync::Arc::new(files);
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let (status, ctype, body) = match files.iter().find(|f| f.0 == path) {
                    Some((_, t, b)) => ("200 OK", *t, b.as_slice()),
                    None => ("404 Not Found", "text/plain", &b"not here"[..]),
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = sock.write_all(body).await;
            });
        }
    });
    (port, task)
}

/// dash.js and Shaka Player (from npm, put in `target/js` by scripts/test.sh) play a live stream's DASH manifest
/// from a page on another origin: both advance 6 s with pictures of the stream's size and report no error.
async fn dash_case(client: &Client, browser: &str) {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/js/node_modules");
    let (Ok(dashjs), Ok(shaka)) = (
        std::fs::read(js.join("dashjs/dist/modern/umd/dash.all.min.js")),
        std::fs::read(js.join("shaka-player/dist/shaka-player.compiled.js")),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "dash.js and Shaka Player must be installed in CI (scripts/test.sh puts them in target/js)"
        );
        eprintln!("dash.js or Shaka Player not in target/js: the DASH case is skipped");
        return;
    };
    let server = Server::start(|a| {
        a.pace = true;
        a.segment_seconds = 1.0;
    })
    .await;
    let name = format!("{browser}-dash");
    let pusher = tokio::spawn({
        let (url, data) = (server.url(&name), long_clip("webm"));
        async move { push(&url, data, false).await }
    });
    let mpd = format!("http://{}/live/{name}/manifest.mpd", server.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::client().get(&mpd).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "{browser}: no manifest");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (port, _pages) = static_server(vec![
        ("/", "text/html", DASH_PAGE.as_bytes().to_vec()),
        ("/dash.all.min.js", "application/javascript", dashjs),
        ("/shaka-player.compiled.js", "application/javascript", shaka),
    ])
    .await;
    client
        .goto(&format!("http://127.0.0.1:{port}/?mpd={mpd}"))
        .await
        .unwrap();
    let mut first: [Option<f64>; 2] = [None, None];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let errors = client
            .execute("return window.__errors || []", vec![])
            .await
            .unwrap_or(Value::Null);
        let mut done = true;
        let mut states = Vec::new();
        for (i, sel) in ["#dashjs", "#shaka"].into_iter().enumerate() {
            let v = media_state(client, sel).await;
            let t = v["t"].as_f64().unwrap_or(0.0);
            if v["ready"].as_u64().unwrap_or(0) >= 2 && first[i].is_none() {
                first[i] = Some(t);
            }
            let played = first[i].is_some_and(|t0| t - t0 >= 6.0)
                && v["w"].as_u64() == Some(320)
                && v["frames"].as_u64() > Some(0);
            done &= played;
            states.push(v);
        }
        let failed = errors.as_array().is_some_and(|e| !e.is_empty());
        if done && !failed {
            eprintln!("{browser} dash: ok {states:?}");
            break;
        }
        if failed || Instant::now() > deadline {
            let why = format!("errors {errors}; states {states:?}");
            let dir = save_artifacts(client, &format!("{browser}-dash"), &why).await;
            panic!(
                "{browser} DASH players: {why} (artifacts in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.goto("about:blank").await.unwrap();
    pusher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_plays_live_webm() {
    browser_cases("firefox").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_live_webm() {
    browser_cases("chromium").await;
}

/// A live source as an encoder sends it: `gst-launch-1.0` encodes test pictures and sound as they are captured
/// (`is-live`), and its output is pushed as it comes, one HTTP chunk per read of its stdout.
async fn live_source(
    server: &Server,
    name: &str,
    mode: &str,
) -> (tokio::process::Child, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let v = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 ! timeoverlay";
    let a = "audiotestsrc is-live=true wave=ticks ! audio/x-raw,rate=48000,channels=2";
    let line = match mode {
        "passthrough" => format!(
            "{v} ! vp8enc deadline=1 keyframe-max-dist=60 target-bitrate=1000000 ! webmmux streamable=true name=m \
             ! fdsink fd=1 {a} ! opusenc ! m."
        ),
        _ => format!(
            "{v} ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=60 ! h264parse ! mpegtsmux name=m \
             ! fdsink fd=1 {a} ! avenc_aac ! aacparse ! m."
        ),
    };
    let mut child = tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(line.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gst-launch-1.0 runs");
    let mut out = child.stdout.take().unwrap();
    let mut sock = raw_push(server, name).await;
    let forward = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 || try_send_chunk(&mut sock, &buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (child, forward)
}

/// What a sample of a player says: delay behind the source (ms; None where the browser's `currentTime` is not the
/// stream's time), media held ahead of the playhead (s), and the player's counters.
const SAMPLE: &str = r#"
const m = document.querySelector('#player');
const b = m.buffered;
const p = m.transcast ? m.transcast.stats : null;
return {now: Date.now(), t: m.currentTime, ahead: b.length ? b.end(b.length - 1) - m.currentTime : null,
        waiting: (window.__events || []).filter(e => e.startsWith('waiting')).length,
        playing: !m.paused && m.readyState >= 3, player: p, rate: m.playbackRate};
"#;

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One player watching one live stream for `seconds`: samples every 250 ms after a 5 s warm-up.
async fn measure_player(
    client: &Client,
    server: &Server,
    browser: &str,
    mode: &str,
    player: &str,
    seconds: u64,
) -> Value {
    let name = format!("{browser}-{mode}-{player}");
    let (mut gst, forward) = live_source(server, &name, mode).await;
    wait_live(server, &name).await;
    let query = if player == "plain" {
        "?player=plain"
    } else {
        ""
    };
    client
        .goto(&format!("http://{}/watch/{name}{query}", server.addr))
        .await
        .unwrap();
    let stream = server.state.registry.get(&name).unwrap();
    let warm = Instant::now() + Duration::from_secs(5);
    let end = warm + Duration::from_secs(seconds);
    let (mut delay, mut ahead, mut rate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first, mut last) = (Value::Null, Value::Null);
    // Firefox starts a plain `<video>`'s clock at 0 for a joiner: its delay is not known from `currentTime`.
    let timeline = player == "mse" || browser == "chromium";
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = client.execute(SAMPLE, vec![]).await.unwrap();
        if Instant::now() < warm {
            continue;
        }
        if first.is_null() {
            first = s.clone();
        }
        if let (Some(zero), Some(now), Some(t)) = (
            stream.media_zero_unix_ms(),
            s["now"].as_f64(),
            s["t"].as_f64(),
        ) && timeline
            && s["playing"] == true
        {
            delay.push(now - zero - t * 1000.0);
        }
        if let Some(a) = s["ahead"].as_f64() {
            ahead.push(a * 1000.0);
        }
        rate.push(s["rate"].as_f64().unwrap_or(f64::NAN));
        last = s;
    }
    client.goto("about:blank").await.unwrap();
    let _ = gst.kill().await;
    forward.abort();
    let count = |k: &str| {
        last["player"][k].as_u64().unwrap_or(0) as i64
            - first["player"][k].as_u64().unwrap_or(0) as i64
    };
    let waits = last["waiting"].as_i64().unwrap_or(0) - first["waiting"].as_i64().unwrap_or(0);
    json!({
        "browser": browser, "mode": mode, "player": player, "seconds": seconds,
        "delay_ms": {"p50": pct(&mut delay, 0.5), "p95": pct(&mut delay, 0.95), "samples": delay.len()},
        "ahead_ms": {"p50": pct(&mut ahead, 0.5), "p95": pct(&mut ahead, 0.95)},
        "rate": {"min": pct(&mut rate, 0.0), "p50": pct(&mut rate, 0.5), "max": pct(&mut rate, 1.0)},
        "stalls": waits,
        "rate_changes": count("rateChanges"),
        "jumps": count("jumps"),
        "reconnects": count("reconnects"),
        "advanced_s": last["t"].as_f64().unwrap_or(0.0) - first["t"].as_f64().unwrap_or(0.0),
    })
}

/// Benchmark (`scripts/bench.sh --player`, not CI): how far behind a live source each browser shows it, with the
/// low-latency player and with a plain `<video src>`, for a passthrough and a transcoded stream. Delay = the
/// browser's clock − when the source delivered stream time 0 to transcast (`media_zero_unix_ms`) − `currentTime`.
/// `PLAYER_BENCH_SECONDS` (default 60) per player run; the plain runs take half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench.sh --player"]
async fn player_latency() {
    let seconds: u64 = std::env::var("PLAYER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut rows = Vec::new();
    // `PLAYER_BENCH_ONLY=chromium` (or firefox) runs one browser.
    let only = std::env::var("PLAYER_BENCH_ONLY").ok();
    for browser in ["chromium", "firefox"] {
        if only.as_deref().is_some_and(|o| o != browser) {
            continue;
        }
        let Some((_driver, client)) = start_driver(browser).await else {
            continue;
        };
        let server = Server::start(|_| {}).await;
        for mode in ["passthrough", "transcode"] {
            for player in ["mse", "plain"] {
                let secs = if player == "plain" {
                    seconds / 2
                } else {
                    seconds
                };
                let row = measure_player(&client, &server, browser, mode, player, secs).await;
                eprintln!("{row}");
                rows.push(row);
            }
        }
        client.close().await.unwrap();
    }
    let mut table = String::from(
        "| browser | stream | player | behind the source p50 / p95 | held ahead p50 / p95 | stalls | rate changes | jumps |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let ms = |v: &Value| {
            v.as_f64()
                .filter(|x| x.is_finite())
                .map_or("–".to_string(), |x| format!("{:.2} s", x / 1000.0))
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |\n",
            r["browser"].as_str().unwrap(),
            r["mode"].as_str().unwrap(),
            if r["player"] == "mse" {
                "/player.js"
            } else {
                "plain <video>"
            },
            ms(&r["delay_ms"]["p50"]),
            ms(&r["delay_ms"]["p95"]),
            ms(&r["ahead_ms"]["p50"]),
            ms(&r["ahead_ms"]["p95"]),
            r["stalls"],
            r["rate_changes"],
            r["jumps"],
        ));
    }
    println!("{table}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("player.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("player.md"), &table).unwrap();
}
