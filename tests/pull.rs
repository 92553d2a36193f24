//! Pull sources and edges: a stream read from another transcast, a plain HTTP file server, a UDP and an SRT
//! MPEG-TS sender, an RTSP server; an edge that pulls from its origin on demand, shares one pull between its viewers, closes it
//! after `--pull-linger`, keeps its viewers across an origin restart, tries its origins in order, and follows a
//! token-protected origin's view rules.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;
use transcast::config::{Fallback, PullArg};

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` serving `files` (name, bytes) on loopback: a plain file server, as a user has.
async fn file_server(files: &[(&str, Bytes)]) -> (Killed, u16) {
    let dir = tempfile::tempdir().unwrap().keep();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "http.server starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Killed(child), port)
}

/// A live MPEG-TS (H.264 + AAC) sender: `gst-launch-1.0 … ! mpegtsmux ! SINK`.
fn ts_sender(sink: &str) -> Killed {
    let line = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse ! mpegtsmux name=m alignment=7 ! {sink} \
         audiotestsrc is-live=true ! audioconvert ! avenc_aac ! aacparse ! m."
    );
    Killed(
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(line.split_whitespace())
            .stdout(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 runs"),
    )
}

/// Watches `url` for `secs` seconds and checks it decodes: returns the bytes.
async fn watch_decodes(url: &str, secs: u64) -> Vec<u8> {
    let (data, _) = capture(open_watch(url).await, Duration::from_secs(secs)).await;
    assert!(data.starts_with(&EBML_MAGIC), "{url}: a WebM header first");
    let d = decode(&data);
    assert!(
        d.video_frames >= 10 * secs,
        "{url}: {} video frames in {secs} s",
        d.video_frames
    );
    data
}

/// A live push of the 12 s WebM clip to a pacing server (the server's backpressure paces the upload).
fn live_push(server: &Server, name: &str) -> tokio::task::JoinHandle<PushResult> {
    let url = server.url(name);
    tokio::spawn(async move { push(&url, long_clip("webm"), true).await })
}

async fn api_get(server: &Server, path: &str) -> serde_json::Value {
    let r = client()
        .get(format!("http://{}{path}", server.addr))
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Every video payload of a WebM capture.
fn video_payloads(data: &[u8]) -> Vec<Bytes> {
    demux(data, "matroskademux")
        .video
        .expect("a video track")
        .buffers
        .into_iter()
        .map(|(_, _, b)| b)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_read_another_transcast_and_files_from_a_plain_http_server() {
    let origin = Server::start(|a| a.pace = true).await;
    let _push = live_push(&origin, "cam");
    wait_state(&origin, "cam", "live", Duration::from_secs(10)).await;
    let (_files, port) = file_server(&[
        ("clip.webm", long_clip("webm")),
        ("clip.ts", long_clip("ts")),
    ])
    .await;
    let local = tempdir().join("pulled-local.ts");
    std::fs::write(&local, long_clip("ts")).unwrap();
    let pulls = vec![
        PullArg {
            name: "again".into(),
            url: origin.url("cam"),
        },
        PullArg {
            name: "filewebm".into(),
            url: format!("http://127.0.0.1:{port}/clip.webm"),
        },
        PullArg {
            name: "filets".into(),
            url: format!("http://127.0.0.1:{port}/clip.ts"),
        },
        PullArg {
            name: "local".into(),
            url: format!("file://{}", local.display()),
        },
    ];
    let relay = Server::start(move |a| {
        a.pace = true;
        a.pull = pulls;
    })
    .await;

    let again = watch_decodes(&relay.url("again"), 3).await;
    // Passthrough all the way: every picture is one the source pushed, untouched.
    let source: HashSet<Bytes> = video_payloads(&long_clip("webm")).into_iter().collect();
    let pictures = video_payloads(&again);
    assert!(pictures.len() >= 30);
    assert!(pictures.iter().all(|p| source.contains(p)));
    let info = stream_json(&relay, "again").await;
    assert_eq!(info["mode"], "passthrough", "{info}");
    assert_eq!(info["source"]["url"], origin.url("cam"), "{info}");
    assert_eq!(info["pull"]["state"], "live", "{info}");
    assert_eq!(info["pull"]["kind"], "relay", "{info}");
    // The origin counts the pulling transcast as a relay, not a viewer.
    let at_origin = stream_json(&origin, "cam").await;
    assert_eq!(at_origin["clients"]["relays"], 1, "{at_origin}");
    assert_eq!(at_origin["clients"]["now"], 0, "{at_origin}");

    watch_decodes(&relay.url("filewebm"), 3).await;
    watch_decodes(&relay.url("filets"), 3).await;
    let ts = stream_json(&relay, "filets").await;
    assert_eq!(ts["mode"], "transcode", "{ts}");
    assert_eq!(ts["input"]["container"], "mpegts", "{ts}");
    // A file is played in real time, like an upload: 3 s of watching from its start see about 3 s of it.
    let (data, _) = capture(
        open_watch(&relay.url("local")).await,
        Duration::from_secs(3),
    )
    .await;
    let frames = decode(&data).video_frames;
    assert!((45..=150).contains(&frames), "{frames} pictures in 3 s");
    let listed = api_get(&relay, "/api/v1/pulls").await;
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_moves_to_its_next_origin_when_its_origin_goes() {
    let first = Server::start(|a| a.pace = true).await;
    let second = Server::start(|a| a.pace = true).await;
    let _pushes = (live_push(&first, "cam"), live_push(&second, "cam"));
    wait_state(&first, "cam", "live", Duration::from_secs(10)).await;
    wait_state(&second, "cam", "live", Duration::from_secs(10)).await;
    let origins = vec![
        format!("http://{}", first.addr),
        format!("http://{}", second.addr),
    ];
    let edge = Server::start(move |a| {
        a.origin = origins;
        a.fallback = Fallback::Slate;
    })
    .await;
    let watching = tokio::spawn(capture(
        open_watch(&edge.url("cam")).await,
        Duration::from_secs(6),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stream_json(&first, "cam").await["clients"]["relays"], 1);
    drop(first);
    // Straight to the next origin, no backoff: the slate shows for well under a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let back = loop {
        let v = stream_json(&edge, "cam").await;
        if v["resumes"] == 1 && v["state"] == "live" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back["pull"]["url"], second.url("cam"), "{back}");
    assert_eq!(stream_json(&second, "cam").await["clients"]["relays"], 1);
    let (data, _) = watching.await.unwrap();
    assert_eq!(ebml_headers(&data), 1);
    assert!(decode(&data).video_frames >= 120);
}

/// GStreamer's RTSP server (`tests/data/rtsp-server.py`, Debian's python3-gi and gir1.2-gst-rtsp-server-1.0)
/// on `port`, serving H.264 + Opus at `/cam`; waits until it listens.
fn rtsp_server(port: u16) -> Killed {
    use std::io::BufRead;
    let mut child = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/rtsp-server.py"
        ))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the RTSP server starts");
    Killed(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_read_udp_srt_and_rtsp_senders() {
    let udp = free_port();
    let srt = free_port();
    let rtsp = free_port();
    let _rtsp_server = rtsp_server(rtsp);
    let _udp_sender = ts_sender(&format!("udpsink host=127.0.0.1 port={udp}"));
    let _srt_sender = ts_sender(&format!(
        "srtsink uri=srt://127.0.0.1:{srt}?mode=listener wait-for-connection=false"
    ));
    let server = Server::start(move |a| {
        a.pull = vec![
            PullArg {
                name: "udp".into(),
                url: format!("udp://127.0.0.1:{udp}"),
            },
            PullArg {
                name: "srt".into(),
                url: format!("srt://127.0.0.1:{srt}?mode=caller"),
            },
            PullArg {
                name: "rtsp".into(),
                url: format!("rtsp://127.0.0.1:{rtsp}/cam"),
            },
        ];
    })
    .await;
    for (name, container) in [("udp", "mpegts"), ("srt", "mpegts"), ("rtsp", "matroska")] {
        watch_decodes(&server.url(name), 3).await;
        let info = stream_json(&server, name).await;
        // RTSP's streams come remuxed into Matroska.
        assert_eq!(info["input"]["container"], container, "{info}");
        assert!(
            info["output"]["codecs"].as_array().unwrap().len() == 2,
            "{info}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_pulls_on_demand_shares_one_pull_and_closes_it_after_the_linger() {
    let origin = Server::start(|a| a.pace = true).await;
    let _push = live_push(&origin, "cam");
    wait_state(&origin, "cam", "live", Duration::from_secs(10)).await;
    let origin_url = format!("http://{}", origin.addr);
    let edge = Server::start(move |a| {
        a.origin = vec![origin_url];
        a.pull_linger = 1.0;
    })
    .await;

    // Nothing is pulled before a viewer asks.
    assert_eq!(api_get(&edge, "/api/v1/pulls").await, json!([]));
    let first = client().get(edge.url("cam")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = client().get(edge.url("cam")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let watching = tokio::spawn(async move {
        tokio::join!(
            capture(first, Duration::from_secs(3)),
            capture(second, Duration::from_secs(3))
        )
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_origin = stream_json(&origin, "cam").await;
    assert_eq!(
        at_origin["clients"]["relays"], 1,
        "one pull for both: {at_origin}"
    );
    assert_eq!(at_origin["clients"]["now"], 0, "{at_origin}");
    let at_edge = stream_json(&edge, "cam").await;
    assert_eq!(at_edge["clients"]["now"], 2, "{at_edge}");
    assert_eq!(at_edge["mode"], "passthrough", "{at_edge}");
    assert_eq!(at_edge["pull"]["kind"], "edge", "{at_edge}");
    assert_eq!(at_edge["pull"]["on_demand"], true, "{at_edge}");

    let ((a, _), (b, _)) = watching.await.unwrap();
    let source: HashSet<Bytes> = video_payloads(&long_clip("webm")).into_iter().collect();
    for data in [a, b] {
        assert!(data.starts_with(&EBML_MAGIC));
        assert_eq!(ebml_headers(&data), 1);
        let video = demux(&data, "matroskademux").video.unwrap();
        assert!(
            video.buffers.len() >= 30,
            "{} pictures",
            video.buffers.len()
        );
        assert!(video.buffers[0].1, "each viewer starts on a keyframe");
        assert!(video.buffers.iter().all(|(_, _, p)| source.contains(p)));
    }

    // Both viewers left: the pull closes after --pull-linger (1 s), and the origin loses its relay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while edge.state.registry.contains("cam")
        || stream_json(&origin, "cam").await["clients"]["relays"] != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle pull did not close"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api_get(&edge, "/api/v1/pulls").await, json!([]));

    // A name the origin lacks: 404 from the edge, well within the start timeout.
    let t = tokio::time::Instant::now();
    let r = client().get(edge.url("nosuch")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    // And the edge does not go on asking its origin for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api_get(&edge, "/api/v1/pulls").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_viewers_stay_through_an_origin_restart_and_origins_are_tried_in_order() {
    let port = free_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start_origin = move || {
        Server::try_start(move |a| {
            a.pace = true;
            a.listen = listen;
        })
    };
    let origin = start_origin().await.unwrap();
    let _push = live_push(&origin, "cam");
    wait_state(&origin, "cam", "live", Duration::from_secs(10)).await;
    // The first origin in the list is down: the edge goes on to the second at once.
    let dead = free_port();
    let edge = Server::start(move |a| {
        a.origin = vec![
            format!("http://127.0.0.1:{dead}"),
            format!("http://127.0.0.1:{port}"),
        ];
        a.fallback = Fallback::Slate;
    })
    .await;
    let t = tokio::time::Instant::now();
    let viewer = open_watch(&edge.url("cam")).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let watching = tokio::spawn(capture(viewer, Duration::from_secs(16)));
    let pulls = api_get(&edge, "/api/v1/pulls").await;
    assert_eq!(
        pulls[0]["url"],
        format!("http://127.0.0.1:{port}/live/cam"),
        "{pulls}"
    );
    assert_eq!(pulls[0]["state"], "live", "{pulls}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The origin restarts (a graceful stop, as systemctl restart does): the edge's viewer stays, on the slate.
    drop(origin);
    wait_state(&edge, "cam", "fallback", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let origin = loop {
        match start_origin().await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "rebind: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let _push = live_push(&origin, "cam");
    let back = wait_state(&edge, "cam", "live", Duration::from_secs(15)).await;
    assert_eq!(back["resumes"], 1, "{back}");
    assert_eq!(back["failovers"], 1, "{back}");
    // The dead origin, the restarting one: at least two failed attempts before it came back.
    assert!(
        back["pull"]["failures"].as_u64().is_some_and(|f| f >= 2),
        "{back}"
    );
    assert_eq!(back["pull"]["connections"], 2, "{back}");

    let (data, _) = watching.await.unwrap();
    assert_eq!(ebml_headers(&data), 1, "one response, one header");
    let d = decode(&data);
    assert!(d.video_pts_monotonic, "timestamps never go back");
    assert!(d.video_frames >= 300, "{} pictures in 16 s", d.video_frames);
    // Pictures from after the restart arrived: the clip's payloads appear on both sides of the slate.
    let source: HashSet<Bytes> = video_payloads(&long_clip("webm")).into_iter().collect();
    let pictures = video_payloads(&data);
    let from_source: Vec<bool> = pictures.iter().map(|p| source.contains(p)).collect();
    let first_slate = from_source
        .iter()
        .position(|s| !s)
        .expect("the slate showed");
    assert!(
        from_source[first_slate..].iter().any(|s| *s),
        "the source's pictures came back after the slate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_protected_origin_needs_the_edge_key_and_edges_follow_its_view_rules() {
    const EDGE_KEY: &str = "0123456789abcdef-edge-key";
    let origin = Server::start(|a| {
        a.pace = true;
        a.token_server = vec!["127.0.0.0/8".parse().unwrap()];
        a.edge_key = Some(EDGE_KEY.into());
    })
    .await;
    let t = client()
        .post(format!("http://{}/api/v1/tokens", origin.addr))
        .header("content-type", "application/json")
        .body(json!({"session_id": "cam", "view_restricted": true}).to_string())
        .send()
        .await
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&t.bytes().await.unwrap()).unwrap();
    let (push_key, view_key) = (
        t["push_key"].as_str().unwrap().to_string(),
        t["view_key"].as_str().unwrap().to_string(),
    );
    let url = format!("{}?token={push_key}", origin.url("cam"));
    let _push = tokio::spawn(async move { push(&url, long_clip("webm"), true).await });
    wait_state(&origin, "cam", "live", Duration::from_secs(10)).await;
    let origin_url = format!("http://{}", origin.addr);

    // An edge without the key is refused by the origin: its viewer learns why.
    let keyless = Server::start({
        let o = origin_url.clone();
        move |a| a.origin = vec![o]
    })
    .await;
    let r = client().get(keyless.url("cam")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{body}"
    );

    // With the key the edge relays it, to viewers the origin would let in, and to no one else.
    let edge = Server::start(move |a| {
        a.origin = vec![origin_url];
        a.origin_key = Some(EDGE_KEY.into());
    })
    .await;
    for bad in [
        String::new(),
        "?token=wrong".into(),
        format!("?token={push_key}"),
    ] {
        let r = client()
            .get(format!("{}{bad}", edge.url("cam")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }
    watch_decodes(&format!("{}?token={view_key}", edge.url("cam")), 2).await;
    let at_origin = stream_json(&origin, "cam").await;
    assert_eq!(at_origin["clients"]["now"], 0, "{at_origin}");
}
