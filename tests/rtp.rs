//! RTP/UDP rebroadcast: real receivers on loopback (a GStreamer rtpbin receiver, and ffmpeg with the served SDP)
//! decode what a transcoded and a passthrough stream send; targets change at runtime without disturbing HTTP
//! clients; a target nobody listens on is harmless; targets outside `--rtp-allow` are refused.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use serde_json::json;

/// A base port P with P..P+3 free for UDP.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port() & !3;
        drop(probe);
        if base > 1024
            && base < 65000
            && (0..4).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no four free UDP ports");
}

/// `N` different bases from [`free_ports`], each checked free (an unchecked `base + 100` once collided with
/// another test's socket: ffmpeg's "bind failed: Address already in use").
fn distinct_free_ports<const N: usize>() -> [u16; N] {
    let mut out = [0; N];
    for i in 0..N {
        out[i] = loop {
            let p = free_ports();
            if out[..i].iter().all(|&q| p.abs_diff(q) >= 4) {
                break p;
            }
        };
    }
    out
}

/// A GStreamer RTP receiver for the port scheme (video P/P+1, audio P+2/P+3): counts decoded frames and
/// audio buffers, and notes RTCP BYE.
struct Receiver {
    pipeline: gst::Pipeline,
    video_frames: Arc<AtomicU64>,
    audio_buffers: Arc<AtomicU64>,
    bye: Arc<AtomicBool>,
}

impl Receiver {
    fn start(base: u16) -> Receiver {
        init();
        let desc = format!(
            "rtpbin name=rb \
             udpsrc port={v} caps=\"application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96\" ! rb.recv_rtp_sink_0 \
             udpsrc port={vc} ! rb.recv_rtcp_sink_0 \
             udpsrc port={a} caps=\"application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=97\" ! rb.recv_rtp_sink_1 \
             udpsrc port={ac} ! rb.recv_rtcp_sink_1",
            v = base,
            vc = base + 1,
            a = base + 2,
            ac = base + 3
        );
        let pipeline = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let rb = pipeline.by_name("rb").unwrap();
        let video_frames = Arc::new(AtomicU64::new(0));
        let audio_buffers = Arc::new(AtomicU64::new(0));
        let bye = Arc::new(AtomicBool::new(false));
        let b = bye.clone();
        rb.connect("on-bye-ssrc", false, move |_| {
            b.store(true, Ordering::SeqCst);
            None
        });
        let pw = pipeline.downgrade();
        let (vf, ab) = (video_frames.clone(), audio_buffers.clone());
        rb.connect_pad_added(move |_, pad| {
            let Some(p) = pw.upgrade() else { return };
            let name = pad.name();
            let (chain, counter) = if name.starts_with("recv_rtp_src_0_") {
                ("rtpvp8depay ! vp8dec", vf.clone())
            } else if name.starts_with("recv_rtp_src_1_") {
                ("rtpopusdepay ! opusdec", ab.clone())
            } else {
                return;
            };
            let bin = gst::parse::bin_from_description(chain, true).unwrap();
            let sink = gst_app::AppSink::builder().sync(false).build();
            sink.set_property("async", false);
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        let _ = s.pull_sample();
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            p.add_many([bin.upcast_ref::<gst::Element>(), sink.upcast_ref()])
                .unwrap();
            bin.link(&sink).unwrap();
            bin.sync_state_with_parent().unwrap();
            sink.sync_state_with_parent().unwrap();
            pad.link(&bin.static_pad("sink").unwrap()).unwrap();
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        Receiver {
            pipeline,
            video_frames,
            audio_buffers,
            bye,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.video_frames.load(Ordering::Relaxed),
            self.audio_buffers.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn target(base: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base))
}

async fn api(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client().request(method, format!("http://{}{path}", server.addr));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A GStreamer receiver driven by the served SDP alone (`sdpdemux` sets up udpsrc and rtpbin from it): counts
/// decoded video frames for `seconds`.
fn gst_sdp_frames(sdp: &str, seconds: u64) -> u64 {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sdp");
    std::fs::write(&path, sdp).unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! sdpdemux name=d latency=100",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let frames = Arc::new(AtomicU64::new(0));
    let (pw, f) = (pipeline.downgrade(), frames.clone());
    pipeline
        .by_name("d")
        .unwrap()
        .connect_pad_added(move |_, pad| {
            let Some(p) = pw.upgrade() else { return };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let video =
                caps.structure(0).and_then(|s| s.get::<&str>("media").ok()) == Some("video");
            let chain = if video {
                "rtpvp8depay ! vp8dec ! fakesink name=v signal-handoffs=true sync=false async=false"
            } else {
                "fakesink sync=false async=false"
            };
            let bin = gst::parse::bin_from_description(chain, true).unwrap();
            if video {
                let f = f.clone();
                bin.by_name("v")
                    .unwrap()
                    .connect("handoff", false, move |_| {
                        f.fetch_add(1, Ordering::Relaxed);
                        None
                    });
            }
            p.add(&bin).unwrap();
            bin.sync_state_with_parent().unwrap();
            pad.link(&bin.static_pad("sink").unwrap()).unwrap();
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    pipeline.set_state(gst::State::Null).unwrap();
    frames.load(Ordering::Relaxed)
}

/// Runs ffmpeg on an SDP for `seconds`; returns the decoded video frame count it reports.
fn ffmpeg_frames(sdp: &str, seconds: u32) -> Option<u64> {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sdp");
    std::fs::write(&path, sdp).unwrap();
    let out = std::process::Command::new("timeout")
        .arg((seconds + 15).to_string())
        .args([
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-protocol_whitelist",
            "file,udp,rtp",
            "-i",
        ])
        .arg(&path)
        .args(["-t", &seconds.to_string(), "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Audio: pcm") || err.contains("Audio:"),
        "ffmpeg found no audio stream:\n{err}"
    );
    let frames = err
        .rsplit("frame=")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_decode_transcoded_and_passthrough_streams_and_see_bye() {
    let [gst_base, ff_base, sdp_base] = distinct_free_ports();
    let server = Server::start(|a| {
        a.pace = true;
        a.rtp_target = vec![target(gst_base), target(ff_base), target(sdp_base)];
    })
    .await;
    for (kind, mode) in [("ts", "transcode"), ("webm", "passthrough")] {
        let receiver = Receiver::start(gst_base);
        let name = format!("rtp-{mode}");
        let url = server.url(&name);
        let data = long_clip(kind);
        let pusher = tokio::spawn(async move { push(&url, data, false).await });
        let http = read_all(open_watch(&server.url(&name)).await);
        let http = tokio::spawn(http);

        // The served SDP works as is for ffmpeg.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let resp = client()
            .get(format!(
                "http://{}/api/v1/streams/{name}/sdp?target={}",
                server.addr,
                target(ff_base)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/sdp");
        let sdp = resp.text().await.unwrap();
        assert!(
            sdp.contains(&format!("m=video {ff_base} RTP/AVP 96")) && sdp.contains("VP8/90000"),
            "{sdp}"
        );
        assert!(
            sdp.contains(&format!("m=audio {} RTP/AVP 97", ff_base + 2))
                && sdp.contains("OPUS/48000"),
            "{sdp}"
        );
        let sdp_for_gst = get_text(&format!(
            "http://{}/api/v1/streams/{name}/sdp?target={}",
            server.addr,
            target(sdp_base)
        ))
        .await;
        let gst_sdp = tokio::task::spawn_blocking(move || gst_sdp_frames(&sdp_for_gst, 3));
        let ff = tokio::task::spawn_blocking(move || ffmpeg_frames(&sdp, 3))
            .await
            .unwrap();
        let gst_frames = gst_sdp.await.unwrap();
        assert!(
            gst_frames >= 30,
            "{mode}: GStreamer sdpdemux receiver decoded {gst_frames} frames from the SDP"
        );
        if let Some(frames) = ff {
            assert!(
                frames >= 30,
                "{mode}: ffmpeg decoded {frames} frames from the SDP"
            );
        }

        let pushed = pusher.await.unwrap();
        assert_eq!(
            (pushed.status, pushed.json["mode"].as_str()),
            (200, Some(mode)),
            "{}",
            pushed.json
        );
        let watched = http.await.unwrap();
        assert!(
            decode(&watched.body).video_frames > 100,
            "{mode}: HTTP unaffected"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !receiver.bye.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (v, a) = receiver.counts();
        assert!(
            v >= 150,
            "{mode}: GStreamer receiver decoded {v} video frames"
        );
        assert!(
            a >= 100,
            "{mode}: GStreamer receiver decoded {a} audio buffers"
        );
        assert!(
            receiver.bye.load(Ordering::SeqCst),
            "{mode}: RTCP BYE when the stream ended"
        );
    }
}

/// Counts RTP packets arriving on a UDP port, with the time of the last one.
fn packet_counter(port: u16) -> (Arc<AtomicU64>, Arc<Mutex<Option<Instant>>>) {
    let sock = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(None));
    let (n2, l2) = (n.clone(), last.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if sock.recv(&mut buf).is_ok() {
                n2.fetch_add(1, Ordering::Relaxed);
                *l2.lock().unwrap() = Some(Instant::now());
            }
        }
    });
    (n, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_change_at_runtime_without_disturbing_http() {
    let server = Server::start(|a| a.pace = true).await;
    let [a_base, b_base] = distinct_free_ports();
    let (a_count, a_last) = packet_counter(a_base);
    let (b_count, _) = packet_counter(b_base);
    let name = "switch";
    let url = server.url(name);
    let data = long_clip("webm");
    let (pushed, watched) = {
        let watch = tokio::spawn({
            let url = url.clone();
            async move { push_and_watch(&url, data, false).await }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let path = format!("/api/v1/streams/{name}/rtp");
        let (st, v) = api(
            &server,
            reqwest::Method::PUT,
            &path,
            Some(json!({"targets": [target(a_base).to_string(), target(b_base).to_string()]})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            a_count.load(Ordering::Relaxed) > 10 && b_count.load(Ordering::Relaxed) > 10,
            "both receive"
        );
        let (st, v) = api(
            &server,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"remove": [target(a_base).to_string()]})),
        )
        .await;
        assert_eq!(
            (st, v["targets"].clone()),
            (200, json!([target(b_base).to_string()]))
        );
        let removed_at = Instant::now();
        let b_before = b_count.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a_last = a_last.lock().unwrap().unwrap();
        assert!(
            a_last < removed_at + Duration::from_millis(300),
            "the removed target stopped receiving"
        );
        assert!(
            b_count.load(Ordering::Relaxed) > b_before + 10,
            "the other target goes on"
        );
        let (_, info) = api(
            &server,
            reqwest::Method::GET,
            &format!("/api/v1/streams/{name}"),
            None,
        )
        .await;
        assert_eq!(info["rtp_targets"], json!([target(b_base).to_string()]));
        watch.await.unwrap()
    };
    assert_eq!(pushed.json["end"], "eos");
    let d = decode(&watched.body);
    assert!(
        d.video_frames >= 350,
        "the HTTP client got the whole stream: {} frames",
        d.video_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_nobody_listens_on_is_harmless() {
    let base = free_ports(); // nothing bound: every send gets ICMP port unreachable
    let server = Server::start(|a| a.rtp_target = vec![target(base)]).await;
    let (pushed, watched) =
        push_and_watch(&server.url("void"), media(Media::Mp4Faststart), true).await;
    assert_eq!(
        (pushed.status, pushed.json["end"].as_str()),
        (200, Some("eos")),
        "{}",
        pushed.json
    );
    assert!(decode(&watched.body).video_frames >= FRAMES * 85 / 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_outside_rtp_allow_are_refused() {
    let server = Server::start(|a| a.pace = true).await;
    let (tx, held) = push_stream(&server.url("guarded"), None);
    tx.send(media(Media::WebmVp8Vorbis).slice(..30_000))
        .await
        .unwrap();
    let _w = open_watch(&server.url("guarded")).await;
    let (st, v) = api(
        &server,
        reqwest::Method::PUT,
        "/api/v1/streams/guarded/rtp",
        Some(json!({"targets": ["192.0.2.1:5000"]})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (st, _) = api(
        &server,
        reqwest::Method::PATCH,
        "/api/v1/streams/guarded/rtp",
        Some(json!({"add": ["nonsense"]})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, v) = api(
        &server,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(
            json!({"session_id": "t", "outputs": {"http": true, "rtp_udp": ["198.51.100.7:5000"]}}),
        ),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    // Nor is an SDP rendered for such a target.
    let (st, v) = api(
        &server,
        reqwest::Method::GET,
        "/api/v1/streams/guarded/sdp?target=192.0.2.1:5000",
        None,
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    drop(tx);
    held.await.unwrap();
}
