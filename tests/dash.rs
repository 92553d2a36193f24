//! Live DASH: a pushed stream's manifest and segments, read as caches and players read them (reqwest for the
//! headers, GStreamer and ffprobe for the media, ffmpeg's DASH reader as a player).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A real-time-paced passthrough push of the 12 s clip, running in the background.
fn start_push(server: &Server, name: &str) -> tokio::task::JoinHandle<PushResult> {
    let (url, clip) = (server.url(name), long_clip("webm"));
    tokio::spawn(async move { push(&url, clip, true).await })
}

/// The manifest once it lists at least `segments` segments.
async fn manifest(
    server: &Server,
    name: &str,
    segments: usize,
) -> (reqwest::header::HeaderMap, String) {
    manifest_at(
        &format!("http://{}/live/{name}/manifest.mpd", server.addr),
        segments,
    )
    .await
}

async fn manifest_at(url: &str, segments: usize) -> (reqwest::header::HeaderMap, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client().get(url).send().await.unwrap();
        if r.status() == 200 {
            let headers = r.headers().clone();
            let text = r.text().await.unwrap();
            if text.matches("<S ").count() >= 2 * segments {
                return (headers, text);
            }
        } else {
            assert_eq!(r.status(), 404);
            assert_eq!(
                r.headers()["cache-control"],
                "no-cache",
                "a 404 no cache keeps"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no manifest with {segments} segments"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the first `attr="…"` after `from` in `text`.
fn attr<'a>(text: &'a str, from: &str, attr: &str) -> &'a str {
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} in {text}"));
    let rest = &text[at..];
    let key = format!(" {attr}=\"");
    let start = rest
        .find(&key)
        .unwrap_or_else(|| panic!("{attr} in {rest}"))
        + key.len();
    &rest[start..start + rest[start..].find('"').unwrap()]
}

/// The `<S t d>` of the adaptation set of `kind`.
fn timeline(mpd: &str, kind: &str) -> Vec<(i64, i64)> {
    let set = &mpd[mpd.find(&format!("contentType=\"{kind}\"")).unwrap()..];
    let set = &set[..set.find("</AdaptationSet>").unwrap()];
    set.split("<S ")
        .skip(1)
        .map(|s| {
            let s = format!(" {s}");
            (
                attr(&s, " ", "t").parse().unwrap(),
                attr(&s, " ", "d").parse().unwrap(),
            )
        })
        .collect()
}

/// A manifest's segment URLs, resolved against its own URL (`base` ends with `/live/{name}/`).
struct Urls {
    base: String,
    init: String,
    media: String,
}

impl Urls {
    fn of(base: &str, mpd: &str) -> Urls {
        Urls {
            base: base.to_string(),
            init: attr(mpd, "<SegmentTemplate", "initialization").to_string(),
            media: attr(mpd, "<SegmentTemplate", "media").to_string(),
        }
    }

    fn init(&self, rep: &str) -> String {
        format!(
            "{}{}",
            self.base,
            self.init.replace("$RepresentationID$", rep)
        )
    }

    fn segment(&self, rep: &str, n: u64) -> String {
        format!(
            "{}{}",
            self.base,
            self.media
                .replace("$RepresentationID$", rep)
                .replace("$Number$", &n.to_string())
        )
    }
}

/// The body of a `GET` that must answer 200.
async fn fetch(url: &str) -> bytes::Bytes {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.unwrap()
}

/// A segment appended to its init segment: a file players and decoders read.
fn playable(init: &[u8], segment: &[u8]) -> Vec<u8> {
    let mut file = init.to_vec();
    file.extend_from_slice(segment);
    file
}

/// Packets of a file, as ffprobe reads them: (pts in ms, keyframe) of the first stream.
fn packets(data: &[u8]) -> Vec<(i64, bool)> {
    let file = write_temp(data);
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=pts,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(file.path())
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pts, flags) = l.split_once(',')?;
            Some((pts.parse().ok()?, flags.starts_with('K')))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_of_a_live_stream_decode_and_are_cacheable() {
    let server = Server::start(|a| {
        a.pace = true;
        a.segment_window = 3;
    })
    .await;
    let push = start_push(&server, "cam");
    let (headers, mpd) = manifest(&server, "cam", 2).await;
    assert_eq!(headers["content-type"], "application/dash+xml");
    assert_eq!(headers["cache-control"], "public, max-age=1");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(attr(&mpd, "<MPD", "type"), "dynamic");
    assert_eq!(
        attr(&mpd, "<MPD", "profiles"),
        "urn:mpeg:dash:profile:isoff-live:2011"
    );
    assert_eq!(attr(&mpd, "contentType=\"video\"", "codecs"), "vp8");
    assert_eq!(attr(&mpd, "contentType=\"audio\"", "codecs"), "vorbis");
    assert_eq!(attr(&mpd, "<Representation id=\"video\"", "width"), "320");
    assert_eq!(
        attr(&mpd, "<Representation id=\"video\"", "frameRate"),
        "30"
    );
    let video = timeline(&mpd, "video");
    assert_eq!(
        video,
        timeline(&mpd, "audio"),
        "one timeline for both tracks"
    );
    for w in video.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "segments follow each other");
    }
    // The clip has a keyframe every second: segments of the 2 s target.
    assert!(
        video.iter().all(|&(_, d)| (1900..=2100).contains(&d)),
        "{video:?}"
    );
    let first: u64 = attr(&mpd, "<SegmentTemplate", "startNumber")
        .parse()
        .unwrap();
    let init_tpl = attr(&mpd, "<SegmentTemplate", "initialization");
    let base = format!("http://{}/live/cam/", server.addr);
    let urls = Urls::of(&base, &mpd);
    for (rep, kind) in [("video", "video"), ("audio", "audio")] {
        let init_url = urls.init(rep);
        let init = client().get(&init_url).send().await.unwrap();
        assert_eq!(init.status(), 200, "{init_url}");
        assert_eq!(init.headers()["content-type"], format!("{kind}/webm"));
        let init = init.bytes().await.unwrap();
        for (i, &(t, d)) in video.iter().enumerate() {
            let n = first + i as u64;
            let url = urls.segment(rep, n);
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let cache = r.headers()["cache-control"].to_str().unwrap().to_string();
            assert!(
                cache.starts_with("public, max-age=") && cache.ends_with("immutable"),
                "{cache}"
            );
            assert!(r.headers().contains_key("last-modified"));
            let etag = r.headers()["etag"].clone();
            let seg = r.bytes().await.unwrap();
            let mut file = init.to_vec();
            file.extend_from_slice(&seg);
            let p = packets(&file);
            assert!(!p.is_empty(), "{rep} {n}");
            if rep == "video" {
                assert_eq!(
                    p[0],
                    (t, true),
                    "segment {n} starts at its time with a keyframe"
                );
                let d = decode(&file);
                assert!(
                    d.video_frames >= 55,
                    "segment {n}: {} pictures",
                    d.video_frames
                );
            } else {
                assert!(
                    p[0].0 >= t && p[0].0 < t + 50,
                    "audio starts with its segment: {p:?}"
                );
                assert!(decode(&file).audio_ns > 1_500_000_000);
            }
            assert!(
                p.iter().all(|&(pts, _)| pts >= t && pts < t + d),
                "{rep} {n}: {p:?}"
            );
            if i == 0 {
                // Validators and ranges, as a cache revalidates and a player resumes.
                let again = client()
                    .get(&url)
                    .header("if-none-match", etag)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(again.status(), 304);
                let part = client()
                    .get(&url)
                    .header("range", "bytes=10-109")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(part.status(), 206);
                assert_eq!(
                    part.headers()["content-range"],
                    format!("bytes 10-109/{}", seg.len()).as_str()
                );
                assert_eq!(part.bytes().await.unwrap(), seg.slice(10..110));
                let head = client().head(&url).send().await.unwrap();
                assert_eq!(head.status(), 200);
                assert_eq!(
                    head.headers()["content-length"],
                    seg.len().to_string().as_str()
                );
                assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
            }
        }
    }
    // Past the window, once the stream has moved on by a segment: 404.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, now) = manifest(&server, "cam", 1).await;
        if attr(&now, "<SegmentTemplate", "startNumber")
            .parse::<u64>()
            .unwrap()
            > first
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not kept any more, not made yet, another instance, another representation, another stream: 404s no cache
    // keeps.
    let inst = init_tpl.split('/').next().unwrap();
    for path in [
        format!("{inst}/video/{first}.webm"),
        format!("{inst}/video/{}.webm", first + 1000),
        format!("0{inst}/video/{first}.webm"),
        format!("{inst}/subtitles/{first}.webm"),
        format!("{inst}/video/x.webm"),
        "../nobody/manifest.mpd".to_string(),
    ] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache");
    }
    // The status page links the manifest.
    let status = get_text(&format!("http://{}/", server.addr)).await;
    assert!(
        status.contains("href=\"/live/cam/manifest.mpd\""),
        "{status}"
    );
    let time = client()
        .get(format!("http://{}/time", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(time.headers()["cache-control"], "no-store");
    let t = time.text().await.unwrap();
    assert!(t.len() == 24 && t.ends_with('Z'), "{t}");
    assert_eq!(push.await.unwrap().status, 200);
}

/// ffmpeg's DASH reader plays the live manifest as a player does (`-re`: live, one segment after another).
/// ffmpeg's DASH reader plays the live manifest of a passthrough and of a transcoded stream as a player does
/// (`-re`: live, one segment after another), without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_the_live_manifest() {
    let server = Server::start(|a| a.pace = true).await;
    let pushes: Vec<_> = [("webm", "pass"), ("ts", "trans")]
        .into_iter()
        .map(|(kind, name)| {
            let (url, clip) = (server.url(name), long_clip(kind));
            tokio::spawn(async move { push(&url, clip, true).await })
        })
        .collect();
    let runs: Vec<_> = ["pass", "trans"]
        .into_iter()
        .map(|name| {
            let url = format!("http://{}/live/{name}/manifest.mpd", server.addr);
            tokio::spawn(async move {
                manifest_at(&url, 2).await;
                ffmpeg_dash(&url).await
            })
        })
        .collect();
    for (run, name) in runs.into_iter().zip(["pass", "trans"]) {
        let (frames, log) = run.await.unwrap();
        assert!(
            frames >= 80,
            "{name}: ffmpeg decoded {frames} frames in 3 s: {log}"
        );
        assert!(
            !log.contains("Error") && !log.contains("Failed"),
            "{name}: {log}"
        );
    }
    for p in pushes {
        assert_eq!(p.await.unwrap().status, 200);
    }
}

/// Plays 3 s of a live manifest with ffmpeg: the frames it decoded, and its log.
async fn ffmpeg_dash(url: &str) -> (u64, String) {
    let mut ffmpeg = tokio::process::Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-stats",
            "-re",
            "-rw_timeout",
            "5000000",
            "-i",
        ])
        .arg(url)
        .args(["-t", "3", "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg runs");
    let mut stderr = ffmpeg.stderr.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), ffmpeg.wait()).await;
    // A live DASH reader whose server is gone can loop forever: killed, not asked.
    let status = match status {
        Ok(s) => s.unwrap(),
        Err(_) => {
            let _ = ffmpeg.start_kill();
            panic!("ffmpeg did not finish within 30 s");
        }
    };
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    let frames: u64 = log
        .rsplit("frame=")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (frames, log)
}

/// nginx in the foreground, in a process group of its own: dropping this kills the master and its workers
/// (killing only the master would leave the workers serving, and holding the test's output open).
struct Nginx(std::process::Child);

impl Nginx {
    fn start(bin: &str, dir: &std::path::Path) -> Nginx {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join("error.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .args(["-e", "stderr", "-c"])
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("nginx starts");
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// What one player behind the cache did: (segments fetched, of which the cache answered, the (rep, n) it saw).
async fn player(base: String, until: tokio::time::Instant) -> (u64, u64, Vec<(String, u64)>) {
    let (mut fetched, mut hits, mut seen) = (0, 0, Vec::new());
    let mut inits_done = false;
    while tokio::time::Instant::now() < until {
        let Ok(r) = client().get(format!("{base}manifest.mpd")).send().await else {
            continue;
        };
        let mpd = r.text().await.unwrap_or_default();
        if !mpd.contains("<SegmentTemplate") {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let first: u64 = attr(&mpd, "<SegmentTemplate", "startNumber")
            .parse()
            .unwrap();
        let count = timeline(&mpd, "video").len() as u64;
        let urls = Urls::of(&base, &mpd);
        for rep in ["video", "audio"] {
            if !inits_done {
                fetch(&urls.init(rep)).await;
            }
            // A player starts near the live edge and then fetches each new segment once.
            for n in (first + count.saturating_sub(2))..first + count {
                if seen.contains(&(rep.to_string(), n)) {
                    continue;
                }
                let url = urls.segment(rep, n);
                let r = client().get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200, "{url}");
                fetched += 1;
                if r.headers()
                    .get("x-cache-status")
                    .is_some_and(|v| v == "HIT")
                {
                    hits += 1;
                }
                r.bytes().await.unwrap();
                seen.push((rep.to_string(), n));
            }
        }
        inits_done = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (fetched, hits, seen)
}

/// Behind nginx (Debian's, with `scripts/nginx-cache.conf` as it is shipped), 50 players watching for 8 s make
/// transcast serve each segment about once (at most twice, the issue's bound, is asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_each_segment_leaves_transcast_about_once() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (scripts/test.sh installs it)");
    let server = Server::start(|a| a.pace = true).await;
    let push = start_push(&server, "cached");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["tmp", "cache"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let port = free_port();
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/nginx-cache.conf"
    ))
    .unwrap()
    .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
    .replace("@ORIGIN@", &server.addr.to_string());
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let _nginx = Nginx::start(nginx, dir.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx does not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    manifest(&server, "cached", 1).await;
    let base = format!("http://127.0.0.1:{port}/live/cached/");
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let players: Vec<_> = (0..50)
        .map(|_| tokio::spawn(player(base.clone(), until)))
        .collect();
    let (mut fetched, mut hits) = (0, 0);
    let mut distinct = std::collections::BTreeSet::new();
    for p in players {
        let (f, h, seen) = p.await.unwrap();
        fetched += f;
        hits += h;
        distinct.extend(seen);
    }
    let stream = server.state.registry.get("cached").expect("still live");
    let served = stream
        .hub
        .segments
        .stats
        .segments_served
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(fetched >= 50 * 4, "{fetched} segment fetches");
    assert!(
        served <= 2 * distinct.len() as u64,
        "transcast served {served} segments for {} distinct ones ({fetched} fetched through nginx)",
        distinct.len()
    );
    assert!(stream.hub.segments.max_hits() <= 2);
    // The API says the same.
    let info: serde_json::Value = serde_json::from_str(
        &get_text(&format!("http://{}/api/v1/streams/cached", server.addr)).await,
    )
    .unwrap();
    assert_eq!(info["dash"]["segment_requests"], served, "{info}");
    assert!(info["dash"]["segments"].as_u64() >= Some(3), "{info}");
    assert!(
        hits * 10 >= fetched * 8,
        "{hits} of {fetched} from the cache"
    );
    drop(stream);
    assert_eq!(push.await.unwrap().status, 200);
}

/// With the token server, a view-restricted stream's manifest and segments need its view key, which the
/// manifest carries into its segment URLs so that players keep sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_restricted_streams_dash_needs_its_view_key() {
    let server = Server::start(|a| {
        a.pace = true;
        a.token_server = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let session: serde_json::Value = serde_json::from_str(
        &client()
            .post(format!("http://{}/api/v1/tokens", server.addr))
            .header("content-type", "application/json")
            .body(r#"{"session_id": "private", "view_restricted": true}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let (push_key, view_key) = (
        session["push_key"].as_str().unwrap(),
        session["view_key"].as_str().unwrap(),
    );
    let pushing = {
        let (url, clip) = (
            format!("{}?token={push_key}", server.url("private")),
            long_clip("webm"),
        );
        tokio::spawn(async move { push(&url, clip, true).await })
    };
    let mpd = format!("http://{}/live/private/manifest.mpd", server.addr);
    let (_, text) = manifest_at(&format!("{mpd}?token={view_key}"), 1).await;
    let media = attr(&text, "<SegmentTemplate", "media");
    assert!(media.ends_with(&format!("?token={view_key}")), "{media}");
    for key in [None, Some(push_key)] {
        let url = key.map_or(mpd.clone(), |k| format!("{mpd}?token={k}"));
        assert_eq!(
            client().get(&url).send().await.unwrap().status(),
            401,
            "{key:?}"
        );
    }
    let first = attr(&text, "<SegmentTemplate", "startNumber");
    let segment = format!(
        "http://{}/live/private/{}",
        server.addr,
        media
            .replace("$RepresentationID$", "video")
            .replace("$Number$", first)
    );
    assert_eq!(client().get(&segment).send().await.unwrap().status(), 200);
    let bare = segment.split('?').next().unwrap();
    assert_eq!(client().get(bare).send().await.unwrap().status(), 401);
    assert_eq!(pushing.await.unwrap().status, 200);
}

/// One DASH presentation across a source's loss and a return in another format: a passthrough VP8/Vorbis source
/// cut mid-upload, the slate, then an H.264/AAC source (transcoded to the stream's codecs). The timeline runs on
/// without a gap, and every segment of the whole span decodes with the init segments fetched at the start: the
/// stream's output never changes its tracks, so there is no discontinuity to start a new Period for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_timeline_and_one_init_across_the_slate_and_a_new_source() {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = transcast::config::Fallback::Slate;
        a.segment_window = 30;
    })
    .await;
    let name = "switch";
    let feeding = losable_push(&server, name, long_clip("webm")).await;
    let (_, mpd) = manifest(&server, name, 1).await;
    let base = format!("http://{}/live/{name}/", server.addr);
    let init_tpl = attr(&mpd, "<SegmentTemplate", "initialization").to_string();
    let at_start = Urls::of(&base, &mpd);
    let inits = [
        fetch(&at_start.init("video")).await,
        fetch(&at_start.init("audio")).await,
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    feeding.abort(); // the source is lost mid-body: the slate
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.state.registry.get(name).map(|s| s.state())
        != Some(transcast::stream::State::Fallback)
    {
        assert!(tokio::time::Instant::now() < deadline, "never fell back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = {
        let url = server.url(name);
        tokio::spawn(async move { push(&url, long_clip("ts"), true).await })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, mpd) = manifest(&server, name, 1).await;
    assert_eq!(
        attr(&mpd, "<SegmentTemplate", "initialization"),
        init_tpl,
        "the same instance and init segments"
    );
    assert_eq!(mpd.matches("<Period").count(), 1);
    let video = timeline(&mpd, "video");
    assert!(video.len() >= 5, "{video:?}");
    for w in video.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "no gap in the timeline: {video:?}");
    }
    let first: u64 = attr(&mpd, "<SegmentTemplate", "startNumber")
        .parse()
        .unwrap();
    let urls = Urls::of(&base, &mpd);
    let mut pictures = 0;
    for (i, &(t, _)) in video.iter().enumerate() {
        for (rep, init) in ["video", "audio"].into_iter().zip(&inits) {
            let file = playable(init, &fetch(&urls.segment(rep, first + i as u64)).await);
            let d = decode(&file);
            if rep == "video" {
                assert_eq!((d.width, d.height), (320, 240), "segment at {t} ms");
                assert!(
                    d.video_frames > 0 && d.video_pts_monotonic,
                    "segment at {t} ms"
                );
                assert_eq!(
                    packets(&file)[0],
                    (t, true),
                    "segment at {t} ms starts with a keyframe"
                );
                pictures += d.video_frames;
            } else {
                assert!(d.audio_ns > 0, "audio segment at {t} ms");
            }
        }
    }
    assert!(
        pictures as i64 >= video.iter().map(|s| s.1).sum::<i64>() * 25 / 1000,
        "{pictures} pictures"
    );
    let s = server.state.registry.get(name).unwrap();
    assert_eq!(
        s.state(),
        transcast::stream::State::Live,
        "the new source is on"
    );
    back.abort();
}

/// An audio-only stream (Ogg Opus in) has one adaptation set, cut by time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_stream_is_cut_by_time() {
    let server = Server::start(|a| a.pace = true).await;
    let pushing = {
        let (url, clip) = (server.url("radio"), long_clip("opus"));
        tokio::spawn(async move { push(&url, clip, true).await })
    };
    // Two `<S>` in one adaptation set: two segments.
    let (_, mpd) = manifest_at(
        &format!("http://{}/live/radio/manifest.mpd", server.addr),
        1,
    )
    .await;
    assert_eq!(mpd.matches("<AdaptationSet").count(), 1, "{mpd}");
    assert_eq!(attr(&mpd, "<AdaptationSet", "contentType"), "audio");
    // Ogg is decoded (only Matroska/WebM input passes through): Vorbis out.
    assert_eq!(attr(&mpd, "<AdaptationSet", "codecs"), "vorbis");
    let audio = timeline(&mpd, "audio");
    assert!(
        audio.iter().all(|&(_, d)| (1900..=2100).contains(&d)),
        "{audio:?}"
    );
    let urls = Urls::of(&format!("http://{}/live/radio/", server.addr), &mpd);
    let first: u64 = attr(&mpd, "<SegmentTemplate", "startNumber")
        .parse()
        .unwrap();
    let file = playable(
        &fetch(&urls.init("audio")).await,
        &fetch(&urls.segment("audio", first)).await,
    );
    let d = decode(&file);
    assert!(d.audio_ns > 1_800_000_000 && d.video_frames == 0, "{d:?}");
    assert_eq!(pushing.await.unwrap().status, 200);
}

/// On an edge, DASH requests alone start the stream's pull from the origin and keep it open while players ask
/// (longer than `--pull-linger`); once they stop, the pull closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_for_dash_players_and_keeps_the_pull_while_they_ask() {
    let origin = Server::start(|a| a.pace = true).await;
    let pushing = start_push(&origin, "cam");
    let origin_url = format!("http://{}", origin.addr);
    let edge = Server::start(move |a| {
        a.origin = vec![origin_url];
        a.pull_linger = 1.0;
    })
    .await;
    let mpd = format!("http://{}/live/cam/manifest.mpd", edge.addr);
    let (_, text) = manifest_at(&mpd, 1).await;
    let urls = Urls::of(&format!("http://{}/live/cam/", edge.addr), &text);
    let first: u64 = attr(&text, "<SegmentTemplate", "startNumber")
        .parse()
        .unwrap();
    let file = playable(
        &fetch(&urls.init("video")).await,
        &fetch(&urls.segment("video", first)).await,
    );
    assert!(decode(&file).video_frames > 0);
    // A player asking every 500 ms for 3 s: three times the linger, and the pull stays.
    for _ in 0..6 {
        assert!(
            edge.state.registry.contains("cam"),
            "the pull closed under a player"
        );
        assert_eq!(client().get(&mpd).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while edge.state.registry.contains("cam") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pull stayed open with no player"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pushing.abort();
}
