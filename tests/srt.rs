//! SRT ingest (`--srt-listen`) with the callers people use: ffmpeg's `srt://` output (what OBS's SRT
//! output is built on) and GStreamer's `srtsink`, several at once on one port, read back by HTTP viewers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use transcast::config::Fallback;

/// `ffmpeg -re` sending a clip (as it is) over SRT to `name`; `key` goes into the streamid.
fn ffmpeg_srt(server: &Server, clip: &std::path::Path, streamid: &str) -> Child {
    let addr = server.srt_addr.expect("SRT on");
    Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("srt://{addr}?streamid={streamid}"))
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg starts")
}

fn ts_clip() -> std::path::PathBuf {
    let clip = tempdir().join("srt-clip.ts");
    if !clip.exists() {
        std::fs::write(&clip, long_clip("ts")).unwrap();
    }
    clip
}

async fn srt_server(f: impl FnOnce(&mut transcast::config::ServeArgs)) -> Server {
    Server::start(|a| {
        a.srt_listen = Some("127.0.0.1:0".parse().unwrap());
        a.pace = true;
        f(a)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_and_srtsink_push_two_streams_through_one_port() {
    let server = srt_server(|_| {}).await;
    let clip = ts_clip();
    let srt = server.srt_addr.unwrap();

    let mut ffmpeg = ffmpeg_srt(&server, &clip, "publish:one");
    // srtsink with the access-control streamid syntax; live video, 4 s.
    let mut gst = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "is-live=true", "num-buffers=120", "!"])
        .args(["video/x-raw,width=320,height=240,framerate=30/1", "!"])
        .args([
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "key-int-max=30",
            "!",
        ])
        .args(["mpegtsmux", "!"])
        .arg("srtsink")
        .arg(format!("uri=srt://{srt}"))
        .arg("streamid=#!::r=two,m=publish")
        .stdin(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 starts");

    let one = wait_state(&server, "one", "live", Duration::from_secs(10)).await;
    let two = wait_state(&server, "two", "live", Duration::from_secs(10)).await;
    for s in [&one, &two] {
        assert!(
            s["source"]["url"]
                .as_str()
                .unwrap()
                .starts_with("srt://127.0.0.1:"),
            "the API says where the source comes from: {s}"
        );
        assert_eq!(s["input"]["container"], "mpegts", "{s}");
    }
    let watch_one = tokio::spawn(capture(
        open_watch(&server.url("one")).await,
        Duration::from_secs(30),
    ));
    let watch_two = tokio::spawn(capture(
        open_watch(&server.url("two")).await,
        Duration::from_secs(30),
    ));

    // Without a fallback, a stream ends when its caller leaves: the viewers' responses end with it.
    assert!(
        tokio::task::spawn_blocking(move || gst.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    assert!(
        tokio::task::spawn_blocking(move || ffmpeg.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    for (name, w) in [("one", watch_one), ("two", watch_two)] {
        let (body, clean) = w.await.unwrap();
        assert!(
            clean,
            "{name}: the viewer's response ends when the stream does"
        );
        let d = decode(&body);
        assert_eq!((d.width, d.height), (320, 240), "{name}");
        assert!(
            d.video_frames >= 60,
            "{name}: {} pictures decoded",
            d.video_frames
        );
        assert!(d.video_pts_monotonic, "{name}");
        if name == "one" {
            assert!(d.audio_ns > 0, "{name}: the clip's audio came through");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_callers_are_refused_as_pushes_are() {
    let server = srt_server(|a| a.token_server = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let clip = ts_clip();
    let created = post_json(
        &format!("http://{}/api/v1/tokens", server.addr),
        json!({"session_id": "cam", "inputs": ["mpegts"]}),
    )
    .await;
    let key = created["push_key"]
        .as_str()
        .expect("a push key")
        .to_string();

    // A wrong key, no key, a name without a session, a streamid that asks to read: refused at the handshake
    // (ffmpeg fails to connect), and no stream appears.
    for streamid in [
        "publish:cam:0123abcd".to_string(),
        "publish:cam".to_string(),
        format!("publish:other:{key}"),
        format!("#!::r=cam,m=request,s={key}"),
    ] {
        let status = tokio::task::spawn_blocking({
            let mut c = ffmpeg_srt(&server, &clip, &streamid);
            move || c.wait().unwrap()
        })
        .await
        .unwrap();
        assert!(!status.success(), "{streamid}: refused");
        assert!(!server.state.registry.contains("cam"), "{streamid}");
    }
    // The right key, in either syntax; a second caller for the held name is refused (409) and the first
    // one is not disturbed.
    let mut good = ffmpeg_srt(&server, &clip, &format!("#!::r=cam,m=publish,s={key}"));
    wait_state(&server, "cam", "live", Duration::from_secs(10)).await;
    let second = tokio::task::spawn_blocking({
        let mut c = ffmpeg_srt(&server, &clip, &format!("publish:cam:{key}"));
        move || c.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(
        !second.success(),
        "a second caller for a held name is refused"
    );
    let s = stream_json(&server, "cam").await;
    assert_eq!(s["state"], "live", "{s}");
    good.kill().unwrap();
    let _ = good.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_srt_caller_falls_back_and_the_next_one_resumes() {
    let server = srt_server(|a| {
        a.fallback = Fallback::Slate;
        a.source_timeout = 2.0;
    })
    .await;
    let clip = ts_clip();
    let mut first = ffmpeg_srt(&server, &clip, "publish:cam");
    wait_state(&server, "cam", "live", Duration::from_secs(10)).await;
    let viewer = tokio::spawn(capture(
        open_watch(&server.url("cam")).await,
        Duration::from_secs(60),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill().unwrap(); // SIGKILL: no SRT shutdown, the caller just goes silent
    let _ = first.wait();

    // Silence is noticed by --source-timeout (or SRT's peer-idle timeout), then the slate shows.
    let on_slate = wait_state(&server, "cam", "fallback", Duration::from_secs(8)).await;
    assert_eq!(on_slate["failovers"], 1, "{on_slate}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut second = ffmpeg_srt(&server, &clip, "publish:cam");
    let back = wait_state(&server, "cam", "live", Duration::from_secs(10)).await;
    assert_eq!(back["resumes"], 1, "{back}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.kill().unwrap();
    let _ = second.wait();
    wait_state(&server, "cam", "fallback", Duration::from_secs(8)).await;
    server.state.registry.get("cam").expect("still there").end();

    let (body, clean) = viewer.await.unwrap();
    assert!(clean, "the viewer stayed connected until the stream ended");
    assert_eq!(ebml_headers(&body), 1, "one response, one header");
    let d = decode(&body);
    assert!(d.video_pts_monotonic);
    assert!(
        d.video_frames > 100,
        "source, slate, source: {} pictures",
        d.video_frames
    );
}
