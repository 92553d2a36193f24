//! The HTTP framing of watches: a connection's first `GET /live/...` is served on the bare socket (chunked, the
//! hub's own framing, then closed), everything else by hyper and the router — including watches later on a
//! keep-alive connection. Either way a client can tell the stream's end from a broken connection: ffmpeg reads a
//! normal end as one. Request heads are read by the accept loop however they are split.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the end of a response head; returns the head (lowercased) and what followed it.
async fn read_head(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).to_ascii_lowercase(), rest);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
            .await
            .expect("response head within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `body` (what followed the head) holds the `content-length` the head announced; nothing more may come.
async fn read_body(sock: &mut TcpStream, head: &str, mut body: Vec<u8>) -> Vec<u8> {
    let len: usize = header(head, "content-length").unwrap().parse().unwrap();
    while body.len() < len {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the body's end");
        body.extend_from_slice(&b[..n]);
    }
    assert_eq!(body.len(), len, "nothing after the response");
    body
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Opens a raw GET of `path`, retrying while the stream does not exist yet.
async fn raw_watch(server: &Server, path: &str) -> (TcpStream, String, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut sock = TcpStream::connect(server.addr).await.unwrap();
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, rest) = read_head(&mut sock).await;
        if head.starts_with("http/1.1 404") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return (sock, head, rest);
    }
}

/// Starts a push of the WebM clip: the first 8 KiB at once, the rest 300 ms later, so that a watcher opened
/// meanwhile joins at the start.
async fn start_push(server: &Server, name: &str) -> (tokio::task::JoinHandle<PushResult>, Bytes) {
    let data = media(Media::WebmVp8Vorbis);
    let (tx, task) = push_stream(&server.url(name), None);
    tx.send(data.slice(..8 << 10)).await.unwrap();
    let rest = data.slice(8 << 10..);
    tokio::spawn(async move {
        // Give the watcher time to subscribe before the stream's media arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for c in chunk(&rest, 4 << 10) {
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    (task, data)
}

/// The body of a chunked response (size lines and CRLFs removed); panics unless it ends with the last chunk.
fn dechunk(mut framed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = framed
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&framed[..eol]).unwrap(), 16).unwrap();
        framed = &framed[eol + 2..];
        if size == 0 {
            assert_eq!(framed, b"\r\n", "nothing after the last chunk");
            return out;
        }
        out.extend_from_slice(&framed[..size]);
        assert_eq!(&framed[size..size + 2], b"\r\n");
        framed = &framed[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_watch_on_a_connection_is_chunked_on_the_bare_socket_and_decodes() {
    let server = Server::start(|_| {}).await;
    let (push, _) = start_push(&server, "raw").await;
    let (mut sock, head, mut body) = raw_watch(&server, "/live/raw").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(header(&head, "content-length"), None, "{head}");
    assert_eq!(header(&head, "content-type"), Some("video/webm"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache, no-store"));
    // The end of the stream: the last chunk, then the server closes.
    tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut body))
        .await
        .expect("stream ends within 60 s")
        .unwrap();
    let body = dechunk(&body);
    assert_eq!(push.await.unwrap().status, 200);
    assert!(body.starts_with(&EBML_MAGIC));
    let d = decode(&body);
    assert!(
        d.video_frames >= FRAMES * 85 / 100,
        "{} frames",
        d.video_frames
    );
    assert!(d.video_pts_monotonic && d.audio_pts_monotonic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_after_another_request_on_a_keep_alive_connection_is_chunked() {
    let server = Server::start(|_| {}).await;
    let (push, _) = start_push(&server, "ka").await;
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    // Wait until the stream is listed, on this one connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        sock.write_all(b"GET /api/v1/streams/ka HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut sock).await;
        read_body(&mut sock, &head, rest).await;
        if head.starts_with("http/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{head}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sock.write_all(b"GET /live/ka HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut sock).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(header(&head, "content-type"), Some("video/webm"));
    tokio::time::timeout(Duration::from_secs(60), async {
        while !body.ends_with(b"\r\n0\r\n\r\n") {
            let mut b = [0u8; 16 << 10];
            let n = sock.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before the last chunk");
            body.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("the chunked response ends within 60 s");
    assert_eq!(push.await.unwrap().status, 200);
    // First chunk: its size line, then the EBML header.
    let first = body.windows(2).position(|w| w == b"\r\n").unwrap();
    assert!(body[first + 2..].starts_with(&EBML_MAGIC));
}

/// Sends `request` one byte at a time and returns the whole response (the server closes or answers in full).
async fn trickle(server: &Server, request: &str) -> (String, serde_json::Value) {
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    for b in request.as_bytes() {
        sock.write_all(std::slice::from_ref(b)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (head, rest) = read_head(&mut sock).await;
    let body = read_body(&mut sock, &head, rest).await;
    (head, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_arriving_byte_by_byte_are_understood() {
    let server = Server::start(|_| {}).await;
    // The accept loop's watch path, answering an error in the router's JSON shape.
    let (head, json) = trickle(&server, "GET /live/nobody HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(json["error"]["code"], "not_found");
    // Requests that share a prefix with a watch, or are not one at all, reach the router intact.
    let (head, json) = trickle(&server, "GET /api/v1/streams HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(json.is_array() || json.is_object(), "{json}");
    let (head, json) = trickle(&server, "GET /liver HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert_eq!(json["error"]["code"], "not_found");
    // A name with an escape is the router's to decode and check.
    let (head, json) = trickle(&server, "GET /live/a%20b HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert_eq!(json["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_head_that_never_completes_is_closed() {
    let server = Server::start(|_| {}).await;
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(b"GET /live/slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // No final CRLF: after the header timeout the server closes without answering.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(
        transcast::http::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        sock.read_to_end(&mut rest),
    )
    .await;
    assert!(r.is_ok(), "closed within the header timeout");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// Starts a push of the WebM clip to `name` and, once the stream exists, runs the viewer `tool(url)` makes to
/// its end: the push's task and the tool's output.
async fn watch_with_tool(
    server: &Server,
    name: &str,
    tool: impl FnOnce(&str) -> std::process::Command + Send + 'static,
) -> (tokio::task::JoinHandle<PushResult>, std::process::Output) {
    let (push, _) = start_push(server, name).await;
    let url = server.url(name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.state.registry.contains(name) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = tokio::task::spawn_blocking(move || tool(&url).output().unwrap())
        .await
        .unwrap();
    (push, out)
}

/// ffmpeg, the tool people check a stream with, reads the end of a stream as a normal end: no "Stream ends
/// prematurely", no I/O error, exit status 0 (with close-delimited bodies it printed both at every end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_sees_a_normal_end_of_stream_as_one() {
    let server = Server::start(|a| a.pace = true).await;
    let (push, out) = watch_with_tool(&server, "ff", |url| {
        let mut c = std::process::Command::new("ffmpeg");
        c.args(["-nostdin", "-v", "warning", "-i", url, "-f", "null", "-"]);
        c
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("prematurely"), "{stderr}");
    assert!(!stderr.contains("Input/output error"), "{stderr}");
    assert_eq!(push.await.unwrap().status, 200);
}

/// GStreamer's own HTTP client as a viewer (`souphttpsrc`, what a gst-launch user or another GStreamer app
/// plays a stream with): it reads the whole stream, decodes it, and ends at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn souphttpsrc_watches_a_stream_to_its_end() {
    let server = Server::start(|a| a.pace = true).await;
    let (push, out) = watch_with_tool(&server, "soup", |url| {
        let mut c = std::process::Command::new("gst-launch-1.0");
        c.args(["-q", "souphttpsrc"])
            .arg(format!("location={url}"))
            .args([
                "!",
                "matroskademux",
                "!",
                "vp8dec",
                "!",
                "fakesink",
                "sync=false",
            ]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(push.await.unwrap().status, 200);
}

/// This process's threads that write to parked viewers.
fn fanout_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("fanout-"))
        .count()
}

/// The threads that write to caught-up viewers are one pool for the process, sized by cores: viewers parked
/// on several streams do not add threads per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_many_streams_share_one_pool_of_fanout_threads() {
    let server = Server::start(|a| a.pace = true).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let clip = long_clip("webm");
    let mut viewers = Vec::new();
    for i in 0..4 {
        let name = format!("pool{i}");
        let (url, clip) = (server.url(&name), clip.clone());
        tokio::spawn(async move { push(&url, clip, true).await });
        for _ in 0..2 {
            let (mut sock, head, _) = raw_watch(&server, &format!("/live/{name}")).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            // Reads on, so the viewer keeps up with the live edge and is parked.
            viewers.push(tokio::spawn(async move {
                let mut buf = vec![0; 64 << 10];
                let mut total = 0;
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            }));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fanout_threads() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no viewer was ever parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every viewer has had time to catch up and park, on whichever shard of its stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let threads = fanout_threads();
    assert!(
        threads <= cores,
        "{threads} fan-out threads for 8 viewers of 4 streams on {cores} cores"
    );
    for v in viewers {
        v.abort();
    }
}

/// `?format=tracks`'s records: (index, payload).
fn records(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
        assert!(b.len() >= 5 + len, "a record cut short");
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    assert!(b.is_empty(), "bytes after the last record");
    out
}

/// The low-latency player's format: a description, then each track as a WebM of its own, in records; each
/// track's WebM decodes whole with GStreamer, in order. Bad `format` and `join` values are refused with JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_format_carries_each_track_as_a_webm_of_its_own() {
    let server = Server::start(|_| {}).await;
    for bad in ["format=mp4", "join=sometimes"] {
        let r = client()
            .get(format!("{}?{bad}", server.url("split")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let key = bad.split('=').next().unwrap();
        assert!(j["error"]["message"].as_str().unwrap().contains(key), "{j}");
    }
    let (push, _) = start_push(&server, "split").await;
    let (mut sock, head, mut body) = raw_watch(&server, "/live/split?format=tracks&join=gop").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("application/vnd.transcast.tracks")
    );
    let head_request = client()
        .head(format!("{}?format=tracks", server.url("split")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head_request.headers()["content-type"],
        "application/vnd.transcast.tracks"
    );
    tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut body))
        .await
        .expect("stream ends within 60 s")
        .unwrap();
    assert_eq!(push.await.unwrap().status, 200);
    let recs = records(&dechunk(&body));
    assert_eq!(recs[0].0, 255, "the description first");
    let desc: serde_json::Value = serde_json::from_slice(&recs[0].1).unwrap();
    let tracks = desc["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "{desc}");
    assert_eq!(tracks[0]["type"], "video/webm; codecs=\"vp8\"", "{desc}");
    assert_eq!(tracks[1]["type"], "audio/webm; codecs=\"vorbis\"", "{desc}");
    for (index, t) in tracks.iter().enumerate() {
        let webm: Vec<u8> = recs
            .iter()
            .filter(|(i, _)| *i as usize == index)
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert!(webm.starts_with(&EBML_MAGIC), "{t}: its init first");
        assert_eq!(ebml_headers(&webm), 1, "{t}: one init");
        let d = decode(&webm);
        if t["kind"] == "video" {
            assert!(
                d.video_frames >= FRAMES * 85 / 100,
                "{t}: {} frames",
                d.video_frames
            );
            assert_eq!(d.audio_ns, 0, "{t}: video only");
            assert!(d.video_pts_monotonic, "{t}");
        } else {
            assert_eq!(d.video_frames, 0, "{t}: audio only");
            assert!(
                d.audio_ns > 1_000_000_000,
                "{t}: {} ns of audio",
                d.audio_ns
            );
            assert!(d.audio_pts_monotonic, "{t}");
        }
    }
}
