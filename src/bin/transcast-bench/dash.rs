//! `--dash`: players that read a stream's DASH presentation as dash.js does (the manifest every second, each new
//! segment of both representations once, from the live edge on), straight from transcast or, with
//! `--dash-nginx`, through Debian's nginx running `scripts/nginx-cache.conf` on loopback.
//!
//! Reported: origin requests per segment (what a cache saves), origin CPU per viewer-second, how far behind live
//! each segment reached its player (its end's wall-clock time, from the manifest's availabilityStartTime, to the
//! end of its download), and stalls: a player plays `suggestedPresentationDelay` behind live, as dash.js does, so
//! a segment whose download ends after its start was due to play (availabilityStartTime + its start + that delay)
//! is a stall.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Args, api_get, make_media, pct, proc_cpu_secs, push, schedule, start_server};

type Http = Client<HttpConnector, Empty<Bytes>>;

#[derive(Debug, Default)]
struct PlayerResult {
    /// Media segments fetched (both representations count).
    fetched: u64,
    /// (representation, number) fetched.
    seen: Vec<(bool, u64)>,
    /// Per segment (video and audio both in): its end's wall-clock time to the end of its download, µs.
    behind_us: Vec<u32>,
    stalls: u32,
    errors: u32,
    cache_hits: u64,
}

/// nginx in a process group of its own (killed as a group on drop), serving `scripts/nginx-cache.conf`.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn start_nginx(origin: SocketAddr) -> anyhow::Result<(Nginx, SocketAddr)> {
    use std::os::unix::process::CommandExt;
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("nginx is not installed (apt-get install nginx)")?;
    let dir = tempfile::tempdir()?;
    for sub in ["tmp", "cache"] {
        std::fs::create_dir_all(dir.path().join(sub))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/nginx-cache.conf"
    ))?
    .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
    .replace("@ORIGIN@", &origin.to_string())
    .replace("worker_connections 4096", "worker_connections 16384");
    std::fs::write(dir.path().join("nginx.conf"), conf)?;
    let child = std::process::Command::new(bin)
        .arg("-p")
        .arg(format!("{}/", dir.path().display()))
        .args(["-e", "stderr", "-c"])
        .arg(dir.path().join("nginx.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting nginx")?;
    Ok((Nginx { child, _dir: dir }, ([127, 0, 0, 1], port).into()))
}

/// One GET: status, body, and whether a cache in front answered it.
async fn get(http: &Http, url: &str) -> anyhow::Result<(u16, Bytes, bool)> {
    let resp = tokio::time::timeout(Duration::from_secs(10), http.get(url.parse()?)).await??;
    let status = resp.status().as_u16();
    let hit = resp
        .headers()
        .get("x-cache-status")
        .is_some_and(|v| v == "HIT");
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body, hit))
}

/// What a player needs of a manifest.
struct Mpd {
    ast: SystemTime,
    /// suggestedPresentationDelay.
    delay: Duration,
    /// (number, start ms, duration ms), oldest first.
    segments: Vec<(u64, i64, i64)>,
    media: String,
    init: String,
}

fn attr<'a>(text: &'a str, from: &str, name: &str) -> Option<&'a str> {
    let rest = &text[text.find(from)?..];
    let key = format!(" {name}=\"");
    let start = rest.find(&key)? + key.len();
    Some(&rest[start..start + rest[start..].find('"')?])
}

fn parse_mpd(text: &str) -> Option<Mpd> {
    let ast = OffsetDateTime::parse(attr(text, "<MPD", "availabilityStartTime")?, &Rfc3339).ok()?;
    let first: u64 = attr(text, "<SegmentTemplate", "startNumber")?
        .parse()
        .ok()?;
    let delay = attr(text, "<MPD", "suggestedPresentationDelay")?
        .strip_prefix("PT")?
        .strip_suffix('S')?
        .parse::<f64>()
        .ok()?;
    let set = &text[text.find("<SegmentTimeline>")?..text.find("</SegmentTimeline>")?];
    let segments = set
        .split("<S ")
        .skip(1)
        .enumerate()
        .filter_map(|(i, s)| {
            let s = format!(" {s}");
            Some((
                first + i as u64,
                attr(&s, " ", "t")?.parse().ok()?,
                attr(&s, " ", "d")?.parse().ok()?,
            ))
        })
        .collect();
    Some(Mpd {
        ast: ast.into(),
        delay: Duration::from_secs_f64(delay),
        segments,
        media: attr(text, "<SegmentTemplate", "media")?.to_string(),
        init: attr(text, "<SegmentTemplate", "initialization")?.to_string(),
    })
}

async fn player(http: Http, base: String, until: Instant) -> PlayerResult {
    let mut r = PlayerResult::default();
    let mut next: Option<u64> = None;
    while Instant::now() < until {
        let polled = Instant::now();
        let mpd = match get(&http, &format!("{base}manifest.mpd")).await {
            Ok((200, body, _)) => parse_mpd(&String::from_utf8_lossy(&body)),
            _ => None,
        };
        let Some(mpd) = mpd else {
            r.errors += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if next.is_none() {
            for rep in ["video", "audio"] {
                let url = format!("{base}{}", mpd.init.replace("$RepresentationID$", rep));
                if !matches!(get(&http, &url).await, Ok((200, _, _))) {
                    r.errors += 1;
                }
            }
            // From the live edge, as a low-latency player starts.
            next = mpd.segments.last().map(|s| s.0);
        }
        let from = next;
        for &(n, t, d) in mpd.segments.iter().filter(|s| Some(s.0) >= from) {
            for (video, rep) in [(true, "video"), (false, "audio")] {
                let url = format!(
                    "{base}{}",
                    mpd.media
                        .replace("$RepresentationID$", rep)
                        .replace("$Number$", &n.to_string())
                );
                match get(&http, &url).await {
                    Ok((200, _, hit)) => {
                        r.fetched += 1;
                        r.cache_hits += u64::from(hit);
                        r.seen.push((video, n));
                    }
                    _ => r.errors += 1,
                }
            }
            let now = SystemTime::now();
            let end = mpd.ast + Duration::from_millis((t + d).max(0) as u64);
            let behind = now.duration_since(end).unwrap_or_default();
            r.behind_us
                .push(behind.as_micros().min(u32::MAX as u128) as u32);
            if now > mpd.ast + Duration::from_millis(t.max(0) as u64) + mpd.delay {
                r.stalls += 1;
            }
            next = Some(n + 1);
        }
        // dash.js reads a live manifest again after minimumUpdatePeriod (1 s).
        tokio::time::sleep_until((polled + Duration::from_secs(1)).into()).await;
    }
    r
}

pub async fn dash(args: &Args) -> anyhow::Result<()> {
    let ramp_s = (args.clients as f64 / args.ramp.max(1) as f64).ceil() as u64;
    let media_s = args.duration + ramp_s + 20;
    eprintln!("generating {media_s} s of {:?} input...", args.mode);
    let data = make_media(args.mode, media_s, &args.size, args.kbps)?;
    let plan = Arc::new(schedule(&data)?);
    let server = start_server(args, &[]).await?;
    let pid = server.child.id().to_string();
    let origin = server.addr;
    let t0 = Instant::now() + Duration::from_millis(200);
    let pusher = tokio::spawn(push(origin, "bench".into(), plan, t0, args.content_length));
    let nginx = args.dash_nginx.then(|| start_nginx(origin)).transpose()?;
    let target = nginx.as_ref().map_or(origin, |n| n.1);
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    let base = format!("http://{target}/live/bench/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body, _)) = get(&http, &format!("{base}manifest.mpd")).await
            && parse_mpd(&String::from_utf8_lossy(&body)).is_some_and(|m| !m.segments.is_empty())
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no DASH manifest within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1) as f64);
    let until = Instant::now() + Duration::from_secs(ramp_s + args.duration);
    let mut players = Vec::with_capacity(args.clients);
    let mut cpu0 = None;
    for i in 0..args.clients {
        tokio::time::sleep_until((Instant::now() + gap).into()).await;
        players.push(tokio::spawn(player(http.clone(), base.clone(), until)));
        if i + 1 == args.clients {
            cpu0 = Some((Instant::now(), proc_cpu_secs(&pid)));
        }
    }
    let (measure0, cpu0) = cpu0.unwrap_or((Instant::now(), proc_cpu_secs(&pid)));
    let mut fetched = 0;
    let mut hits = 0;
    let mut stalls = 0;
    let mut errors = 0;
    let mut behind = Vec::new();
    let mut distinct = BTreeSet::new();
    for p in players {
        let r = p.await?;
        fetched += r.fetched;
        hits += r.cache_hits;
        stalls += r.stalls;
        errors += r.errors;
        behind.extend(r.behind_us);
        distinct.extend(r.seen);
    }
    let measured = measure0.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(&pid) - cpu0;
    let info = api_get(origin, "/api/v1/streams/bench").await?;
    let origin_segments = info["dash"]["segment_requests"].as_u64().unwrap_or(0);
    let per_segment = origin_segments as f64 / distinct.len().max(1) as f64;
    let viewer_s = args.clients as f64 * measured;
    let figures = serde_json::json!({
        "mode": "dash",
        "through": if nginx.is_some() { "nginx" } else { "direct" },
        "players": args.clients,
        "measured_s": measured,
        "segments_fetched": fetched,
        "distinct_segments": distinct.len(),
        "origin_segment_requests": origin_segments,
        "origin_requests_per_segment": per_segment,
        "origin_max_segment_hits": info["dash"]["max_segment_hits"],
        "origin_manifest_requests": info["dash"]["manifest_requests"],
        "cache_hit_ratio": if fetched > 0 { hits as f64 / fetched as f64 } else { 0.0 },
        "origin_cpu_s": cpu,
        "origin_cpu_us_per_viewer_s": cpu * 1e6 / viewer_s.max(1.0),
        "behind_live_ms": {"p50": pct(&mut behind, 0.5), "p95": pct(&mut behind, 0.95), "max": pct(&mut behind, 1.0)},
        "stalls": stalls,
        "errors": errors,
    });
    println!(
        "DASH, {} players {} for {measured:.0} s\n  segments fetched        {fetched} ({} distinct)\n  \
         origin requests/segment {per_segment:.2} (cache hits {:.1} %)\n  origin CPU              {cpu:.2} s \
         ({:.1} µs per viewer-second)\n  behind live             p50 {:.0} ms, p95 {:.0} ms\n  stalls                  \
         {stalls}\n  errors                  {errors}",
        args.clients,
        if nginx.is_some() {
            "through nginx"
        } else {
            "direct"
        },
        distinct.len(),
        figures["cache_hit_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        figures["origin_cpu_us_per_viewer_s"]
            .as_f64()
            .unwrap_or(0.0),
        figures["behind_live_ms"]["p50"].as_f64().unwrap_or(0.0),
        figures["behind_live_ms"]["p95"].as_f64().unwrap_or(0.0),
    );
    println!("{figures}");
    pusher.abort();
    drop(nginx);
    drop(server);
    Ok(())
}
