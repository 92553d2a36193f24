//! The control API, token server, compat paths and metrics, end to end with real pushes and GETs. Every
//! JSON answer is checked against `api-docs/openapi.yaml`, and the spec against the router's routes.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/api-docs/openapi.yaml"
        ))
        .unwrap();
        serde_yaml::from_str(&text).unwrap()
    })
}

/// Validates a JSON answer against the spec's schema for (path template, method, status).
fn conforms(path: &str, method: &str, status: u16, body: &Value) {
    let op = &spec()["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the spec");
    let mut resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which the spec does not list"
    );
    if let Some(r) = resp["$ref"].as_str() {
        resp = &spec()["components"]["responses"][r.rsplit('/').next().unwrap()];
    }
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema in the spec"
    );
    let root = json!({"allOf": [schema], "components": spec()["components"]});
    let validator = jsonschema::validator_for(&root).expect("the spec's schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match the spec: {errors:?}\n{body}"
    );
}

struct Api<'a> {
    server: &'a Server,
}

impl Api<'_> {
    /// Calls the API and checks the answer against the spec; returns (status, JSON or Null).
    async fn call(
        &self,
        method: Method,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, template, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        template: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req =
            client().request(method.clone(), format!("http://{}{path}", self.server.addr));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if !v.is_null() {
            conforms(template, &method.as_str().to_lowercase(), status, &v);
        } else {
            assert!(
                spec()["paths"][template][method.as_str().to_lowercase()]["responses"]
                    [status.to_string()]
                .is_object()
            );
        }
        (status, v)
    }
}

/// `POST /api/v1/streams` with `body`.
async fn create(api: &Api<'_>, body: Value) -> (u16, Value) {
    api.call(
        Method::POST,
        "/api/v1/streams",
        "/api/v1/streams",
        Some(body),
    )
    .await
}

/// `DELETE /api/v1/streams/{name}`: its status.
async fn abort(api: &Api<'_>, name: &str) -> u16 {
    api.call(
        Method::DELETE,
        &format!("/api/v1/streams/{name}"),
        "/api/v1/streams/{name}",
        None,
    )
    .await
    .0
}

async fn add_token(api: &Api<'_>, body: Value) -> Value {
    let (st, v) = api
        .call(Method::POST, "/api/v1/tokens", "/api/v1/tokens", Some(body))
        .await;
    assert_eq!(st, 201, "{v}");
    v
}

fn with_key(url: &str, key: &str) -> String {
    format!("{url}?token={key}")
}

#[test]
fn every_route_is_in_the_spec_and_every_spec_route_is_served() {
    let mut in_spec: Vec<(String, String)> = Vec::new();
    for (path, item) in spec()["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            in_spec.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = transcast::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    in_spec.sort();
    served.sort();
    assert_eq!(in_spec, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_table_matches_the_router() {
    // Each listed route reaches a handler (never the "no such route" fallback, never 405).
    let server = Server::start(|_| {}).await;
    for (method, path) in transcast::http::ROUTES {
        let path = path
            .replace("{name}", "nobody")
            .replace("{session_id}", "nobody");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = client()
            .request(method.clone(), format!("http://{}{path}", server.addr))
            .body(if method == Method::PUT || method == Method::POST {
                "x"
            } else {
                ""
            })
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 405, "{method} {path}");
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("no such route"),
            "{method} {path} hit the fallback"
        );
    }
    let resp = client()
        .get(format!("http://{}/api/v1/nothing", server.addr))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("no such route"));
}

/// An abort that comes before the push's format is even known is answered like any abort: the push's summary
/// with `end: aborted`, not an error that blames a limit or another push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_the_input_is_recognised_answers_like_any_abort() {
    let server = Server::start(|_| {}).await;
    let api = Api { server: &server };
    let (tx, push) = push_stream(&server.url("early"), None);
    // Too little to tell the container from, and the upload stays open.
    tx.send(media(Media::WebmVp8Vorbis).slice(..4))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !server.state.registry.contains("early") {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(abort(&api, "early").await, 204);
    let pushed = tokio::time::timeout(Duration::from_secs(10), push)
        .await
        .expect("the push is answered")
        .unwrap();
    assert_eq!(
        (pushed.status, pushed.json["end"].as_str()),
        (200, Some("aborted")),
        "{}",
        pushed.json
    );
    drop(tx);
    server.wait_gone("early").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_api_reports_details_graph_and_aborts() {
    let server = Server::start(|a| a.pace = true).await;
    let api = Api { server: &server };
    let url = server.url("cam");
    let (tx, push) = push_stream(&url, None);
    // MPEG-TS: no index, so the stream lasts as long as the upload (an MP4's ends with its last sample).
    let data = media(Media::MpegTs);
    let feeder = tokio::spawn(async move {
        for c in chunk(&data, 16 << 10) {
            if tx.send(c).await.is_err() {
                break;
            }
        }
        // Hold the upload open: the operator will abort it.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let watcher = tokio::spawn({
        let url = url.clone();
        async move { read_all(open_watch(&url).await).await }
    });
    // Mid-stream: paced output is flowing, the rate sampler has run.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (st, list) = api
        .call(Method::GET, "/api/v1/streams", "/api/v1/streams", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, s) = api
        .call(
            Method::GET,
            "/api/v1/streams/cam",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(s["mode"], "transcode");
    assert_eq!(s["input"]["container"], "mpegts");
    let codecs_in = s["input"]["codecs"].as_array().unwrap();
    assert!(
        codecs_in.contains(&json!("h264")) && codecs_in.contains(&json!("aac")),
        "{s}"
    );
    assert_eq!(s["output"]["codecs"], json!(["vp8", "vorbis"]));
    assert_eq!(
        (
            s["output"]["width"].as_u64(),
            s["output"]["height"].as_u64()
        ),
        (Some(320), Some(240))
    );
    assert_eq!(s["output"]["content_type"], "video/webm");
    assert_eq!(s["clients"]["now"], 1, "{s}");
    assert!(
        s["bytes_in"].as_u64().unwrap() > 0
            && s["bytes_out"].as_u64().unwrap() > 0
            && s["bytes_published"].as_u64().unwrap() > 0,
        "{s}"
    );
    assert!(s["bitrate_out_bps"].as_u64().unwrap() > 0, "{s}");
    let rt = s["encoder_realtime_factor"]
        .as_f64()
        .expect("a transcode reports its real-time factor");
    assert!(rt > 0.0, "{s}");

    let graph = client()
        .get(format!("http://{}/api/v1/streams/cam/graph", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(graph.status(), 200);
    let dot = graph.text().await.unwrap();
    assert!(
        dot.starts_with("digraph") && dot.contains("vp8enc"),
        "{}",
        &dot[..dot.len().min(200)]
    );

    assert_eq!(abort(&api, "cam").await, 204);
    let watched = watcher.await.unwrap();
    assert!(
        decode(&watched.body).video_frames > 0,
        "the client's response ended cleanly and plays"
    );
    let pushed = tokio::time::timeout(Duration::from_secs(10), push)
        .await
        .expect("source answered")
        .unwrap();
    assert_eq!(pushed.json["end"], "aborted");
    feeder.abort();
    server.wait_gone("cam").await;
    let (st, e) = api
        .call(
            Method::GET,
            "/api/v1/streams/cam",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, _) = api
        .call(
            Method::GET,
            "/api/v1/streams/bad%20name",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifecycle_with_real_pushes_and_views() {
    let server = Server::start(|a| a.token_server = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let api = Api { server: &server };
    let url = server.url("cam");
    let mp4 = media(Media::Mp4Faststart);

    // No session yet: 401.
    let r = push(&url, mp4.clone(), false).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    let t = add_token(
        &api,
        json!({"session_id": "cam", "inputs": ["mp4", "mpegts"], "outputs": {"http": true}}),
    )
    .await;
    let key = t["push_key"].as_str().unwrap().to_string();
    assert!(key.len() >= 32, "at least 128 bits");
    assert!(t.get("view_key").is_none());
    let (st, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            "/api/v1/tokens",
            Some(json!({"session_id": "cam"})),
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            "/api/v1/tokens",
            Some(json!({"session_id": "x", "inputs": ["mkv"]})),
        )
        .await;
    assert_eq!(st, 400);

    // Missing and wrong keys.
    assert_eq!(push(&url, mp4.clone(), false).await.status, 401);
    assert_eq!(
        push(&with_key(&url, "0123abcd"), mp4.clone(), false)
            .await
            .status,
        401
    );

    // Key in the query; watched.
    let (pushed, watched) = push_and_watch(&with_key(&url, &key), mp4.clone(), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert!(decode(&watched.body).video_frames > 0);

    // Key in the header.
    let resp = client()
        .put(&url)
        .bearer_auth(&key)
        .body(media(Media::MpegTs).to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // An input kind the session does not allow: 415 naming what it allows.
    let r = push(&with_key(&url, &key), media(Media::WebmVp8Vorbis), false).await;
    assert_eq!(r.status, 415);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mp4, mpegts"),
        "{}",
        r.json
    );

    // Listing shows no secrets.
    let (st, list) = api
        .call(Method::GET, "/api/v1/tokens", "/api/v1/tokens", None)
        .await;
    assert_eq!(st, 200);
    assert!(!list.to_string().contains(&key));
    assert_eq!(list[0]["session_id"], "cam");

    // Revoking during a live push aborts the stream; afterwards pushes are refused.
    let (tx, live) = push_stream(&with_key(&url, &key), None);
    tx.send(mp4.slice(..40_000)).await.unwrap();
    let _w = open_watch(&url).await;
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/cam",
            "/api/v1/tokens/{session_id}",
            None,
        )
        .await;
    assert_eq!(st, 204);
    let r = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .expect("aborted")
        .unwrap();
    assert_eq!(r.json["end"], "aborted", "{}", r.json);
    drop(tx);
    assert_eq!(
        push(&with_key(&url, &key), mp4.clone(), false).await.status,
        401
    );
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/cam",
            "/api/v1/tokens/{session_id}",
            None,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_need_http_output_and_the_view_key_when_restricted() {
    let server = Server::start(|a| a.token_server = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let api = Api { server: &server };
    let webm = media(Media::WebmVp8Vorbis);

    // A session without HTTP output: its stream cannot be watched.
    let t = add_token(
        &api,
        json!({"session_id": "rtponly", "outputs": {"http": false, "rtp_udp": ["127.0.0.1:5004"]}}),
    )
    .await;
    let url = server.url("rtponly");
    let (tx, held) = push_stream(&with_key(&url, t["push_key"].as_str().unwrap()), None);
    tx.send(webm.slice(..20_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    drop(tx);
    held.await.unwrap();

    // Restricted viewing: the view key is needed, the push key is not it.
    let t = add_token(
        &api,
        json!({"session_id": "private", "view_restricted": true}),
    )
    .await;
    let (push_key, view_key) = (
        t["push_key"].as_str().unwrap(),
        t["view_key"].as_str().unwrap(),
    );
    let url = server.url("private");
    let (tx, held) = push_stream(&with_key(&url, push_key), None);
    tx.send(webm.slice(..30_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client().get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        client()
            .get(with_key(&url, push_key))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = client().get(with_key(&url, view_key)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    drop(ok);
    drop(tx);
    held.await.unwrap();

    // An expired session can neither push nor be watched.
    add_token(
        &api,
        json!({"session_id": "old", "expires_at": "2001-01-01T00:00:00+02:00"}),
    )
    .await;
    let (_, info) = api
        .call(
            Method::GET,
            "/api/v1/tokens/old",
            "/api/v1/tokens/{session_id}",
            None,
        )
        .await;
    assert_eq!(info["expired"], true);
    assert_eq!(
        push(&server.url("old"), webm.clone(), false).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_outside_the_masks_get_403() {
    // Token server for 10/8 only: loopback is outside.
    let server = Server::start(|a| a.token_server = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let api = Api { server: &server };
    for (path, template) in [
        ("/api/v1/streams", "/api/v1/streams"),
        ("/api/v1/tokens", "/api/v1/tokens"),
        ("/api/list-tokens", "/api/list-tokens"),
    ] {
        let (st, v) = api.call(Method::GET, path, template, None).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
    // Behind a trusted proxy, X-Forwarded-For decides.
    drop(server);
    let server = Server::start(|a| {
        a.token_server = vec!["10.0.0.0/8".parse().unwrap()];
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let api = Api { server: &server };
    let (st, _) = api
        .call_with(
            Method::GET,
            "/api/v1/tokens",
            "/api/v1/tokens",
            None,
            &[("x-forwarded-for", "10.9.8.7")],
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = api
        .call_with(
            Method::GET,
            "/api/v1/tokens",
            "/api/v1/tokens",
            None,
            &[("x-forwarded-for", "10.9.8.7, 192.0.2.1")],
        )
        .await;
    assert_eq!(
        st, 403,
        "the right-most untrusted hop counts, not a forged left-most one"
    );

    // No token server: --api-allow decides (loopback by default), and anyone may push.
    drop(server);
    let server = Server::start(|a| a.api_allow = vec!["192.0.2.0/24".parse().unwrap()]).await;
    let api = Api { server: &server };
    let (st, _) = api
        .call(Method::GET, "/api/v1/streams", "/api/v1/streams", None)
        .await;
    assert_eq!(st, 403);
    let open = Server::start(|_| {}).await;
    let (st, _) = Api { server: &open }
        .call(Method::GET, "/api/v1/streams", "/api/v1/streams", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        push(&open.url("free"), media(Media::WebmVp8Vorbis), false)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_and_a_corrupt_state_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let d = dir.path().to_path_buf();
        Server::start(move |a| {
            a.token_server = vec!["127.0.0.1/32".parse().unwrap()];
            a.state_dir = d;
        })
    };
    let server = start().await;
    let t = add_token(
        &Api { server: &server },
        json!({"session_id": "keep", "inputs": ["webm"]}),
    )
    .await;
    let key = t["push_key"].as_str().unwrap().to_string();
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let server = start().await;
    let (_, list) = Api { server: &server }
        .call(Method::GET, "/api/v1/tokens", "/api/v1/tokens", None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let r = push(
        &with_key(&server.url("keep"), &key),
        media(Media::WebmVp8Vorbis),
        false,
    )
    .await;
    assert_eq!(
        r.status, 200,
        "the key from before the restart still works: {}",
        r.json
    );
    drop(server);

    std::fs::write(
        dir.path().join("tokens.json"),
        b"{\"version\": 1, \"sessions\": [{\"sess",
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let err = Server::try_start(move |a| a.state_dir = d)
        .await
        .err()
        .expect("refused");
    assert!(err.message.contains("corrupt"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soup_transcoding_proxy_compat_paths() {
    let server = Server::start(|a| a.token_server = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let api = Api { server: &server };
    let (st, v) = api
        .call(
            Method::POST,
            "/api/add-token?type=http,rtp-udp&sessionid=s1&udp-clients=127.0.0.1:5004,127.0.0.1:5006",
            "/api/add-token",
            None,
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("added")), "{v}");
    let (st, _) = api
        .call(
            Method::POST,
            "/api/add-token?type=http&sessionid=s1",
            "/api/add-token",
            None,
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = api
        .call(
            Method::POST,
            "/api/add-token?type=carrier-pigeon&sessionid=s2",
            "/api/add-token",
            None,
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = api
        .call(
            Method::POST,
            "/api/add-token?type=http&sessionid=s3",
            "/api/add-token",
            None,
        )
        .await;
    assert_eq!(st, 200);

    let (_, tokens) = api
        .call(Method::GET, "/api/list-tokens", "/api/list-tokens", None)
        .await;
    assert_eq!(
        tokens,
        json!([
            {"sessionid": "s1", "host": "127.0.0.1", "port": 5004},
            {"sessionid": "s1", "host": "127.0.0.1", "port": 5006},
            {"sessionid": "s3", "host": null, "port": null},
        ])
    );
    // The same session through the native API.
    let (_, native) = api
        .call(
            Method::GET,
            "/api/v1/tokens/s1",
            "/api/v1/tokens/{session_id}",
            None,
        )
        .await;
    assert_eq!(native["origin"], "compat");
    assert_eq!(
        native["outputs"]["rtp_udp"],
        json!(["127.0.0.1:5004", "127.0.0.1:5006"])
    );

    // A compat session is authorised by its id alone.
    let url = server.url("s1");
    let (tx, live) = push_stream(&url, None);
    tx.send(media(Media::WebmVp8Vorbis).slice(..30_000))
        .await
        .unwrap();
    let _w = open_watch(&url).await;
    let (_, streams) = api
        .call(Method::GET, "/api/list-streams", "/api/list-streams", None)
        .await;
    assert_eq!(
        streams,
        json!([{"sessionid": "s1", "mode": "passthrough", "clients": 1}])
    );
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/abort-stream?sessionid=s1",
            "/api/abort-stream",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), live)
            .await
            .unwrap()
            .unwrap()
            .json["end"],
        "aborted"
    );
    drop(tx);
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/abort-stream?sessionid=s1",
            "/api/abort-stream",
            None,
        )
        .await;
    assert_eq!(st, 404);

    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/revoke-token?sessionid=s1",
            "/api/revoke-token",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        push(&url, media(Media::WebmVp8Vorbis), false).await.status,
        401
    );
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/revoke-token",
            "/api/revoke-token",
            None,
        )
        .await;
    assert_eq!(st, 400, "sessionid is required");
}

fn odd_wav() -> Bytes {
    let data: Vec<u8> = (0..10_240u32).map(|i| i as u8).collect();
    let mut fmt = Vec::new();
    for (v, n) in [(0x7777u32, 2), (1, 2), (8000, 4), (8000, 4), (1, 2), (8, 2)] {
        fmt.extend_from_slice(&v.to_le_bytes()[..n]);
    }
    let mut body = b"WAVEfmt ".to_vec();
    body.extend((fmt.len() as u32).to_le_bytes());
    body.extend(fmt);
    body.extend(b"data");
    body.extend((data.len() as u32).to_le_bytes());
    body.extend(data);
    let mut out = b"RIFF".to_vec();
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    Bytes::from(out)
}

/// Parses Prometheus/OpenMetrics text: every sample line is `name{labels} value`, every family typed.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = name_labels.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name:?}"
        );
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE");
        samples.push((name_labels.to_string(), value));
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
    samples
}

fn metric(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_when_data_flows() {
    let server = Server::start(|a| a.pace = true).await;
    let scrape = || async {
        let resp = client()
            .get(format!("http://{}/metrics", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        parse_metrics(&resp.text().await.unwrap())
    };
    let before = scrape().await;
    assert_eq!(metric(&before, "transcast_bytes_in_total"), 0.0);

    let url = server.url("m");
    let (tx, push) = push_stream(&url, None);
    let data = media(Media::Mp4Faststart);
    let total = data.len() as f64;
    let feeder = tokio::spawn(async move {
        for c in chunk(&data, 16 << 10) {
            let _ = tx.send(c).await;
        }
    });
    let watch = open_watch(&url).await;
    let during = scrape().await;
    assert_eq!(
        metric(&during, "transcast_streams{mode=\"transcode\"}"),
        1.0
    );
    assert_eq!(metric(&during, "transcast_clients"), 1.0);
    assert!(metric(&during, "transcast_bytes_in_total") > 0.0);
    let _ = read_all(watch).await;
    feeder.await.unwrap();
    push.await.unwrap();

    let after = scrape().await;
    assert_eq!(metric(&after, "transcast_streams{mode=\"transcode\"}"), 0.0);
    assert_eq!(metric(&after, "transcast_bytes_in_total"), total);
    assert!(metric(&after, "transcast_bytes_out_total") > 0.0);
    assert_eq!(metric(&after, "transcast_clients_served_total"), 1.0);
    assert_eq!(metric(&after, "transcast_streams_ended_total"), 1.0);

    // A WAV whose codec tag nothing decodes: the pipeline fails, the push gets 415, the error is counted.
    let r = common::push(&server.url("junk"), odd_wav(), false).await;
    assert_eq!(r.status, 415, "{}", r.json);
    let last = scrape().await;
    assert!(metric(&last, "transcast_pipeline_errors_total") >= 1.0);
    let _: SocketAddr = server.addr;
}

/// A stream created through the API shows its slate until a source pushes to it, then the source; DELETE
/// ends it for its viewers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_created_through_the_api_shows_its_slate_then_its_source() {
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = transcast::config::Fallback::Slate;
    })
    .await;
    let api = Api { server: &server };
    let (st, s) = create(
        &api,
        json!({"name": "lobby", "linger": 20, "width": 320, "height": 240}),
    )
    .await;
    assert_eq!(st, 201, "{s}");
    assert_eq!(s["state"], "fallback");
    assert!(s["source"].is_null());
    let (st, e) = create(&api, json!({"name": "lobby"})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("stream_busy"))
    );
    for bad in [
        json!({"name": "a b"}),
        json!({"name": "x", "linger": -1}),
        json!({"name": "x", "width": 100000}),
        json!({"name": "x", "colour": 1}),
    ] {
        let (st, e) = create(&api, bad.clone()).await;
        assert_eq!(st, 400, "{bad}: {e}");
    }

    let url = server.url("lobby");
    let watcher = tokio::spawn({
        let url = url.clone();
        async move { read_all(open_watch(&url).await).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pusher = tokio::spawn(async move { push(&url, media(Media::MpegTs), false).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = api
            .call(
                Method::GET,
                "/api/v1/streams/lobby",
                "/api/v1/streams/{name}",
                None,
            )
            .await;
        if s["state"] == "live" {
            assert_eq!(s["resumes"], 1, "{s}");
            assert_eq!(s["input"]["container"], "mpegts", "{s}");
            assert!(s["source"]["since"].is_string(), "{s}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never live: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pusher.await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/v1/streams/lobby",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(st, 204);
    let watched = watcher.await.unwrap();
    let d = decode(&watched.body);
    assert_eq!((d.width, d.height), (320, 240));
    // 1.5 s of slate, then the source (converted to the stream's size) until the abort.
    assert!(d.video_frames >= 60, "{d:?}");
    assert!(d.video_pts_monotonic, "{d:?}");
    server.wait_gone("lobby").await;
}

/// With the token server on, a stream is created for a session, and only that session's push (with its key)
/// takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_server_streams_are_created_for_a_session_and_taken_by_its_key() {
    let server = Server::start(|a| {
        a.token_server = vec!["127.0.0.0/8".parse().unwrap()];
        a.fallback = transcast::config::Fallback::Slate;
    })
    .await;
    let api = Api { server: &server };
    let (st, e) = create(&api, json!({"name": "studio"})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let t = add_token(
        &api,
        json!({"session_id": "studio", "outputs": {"http": true}}),
    )
    .await;
    let key = t["push_key"].as_str().unwrap().to_string();
    let (st, s) = create(&api, json!({"name": "studio", "linger": 30})).await;
    assert_eq!(st, 201, "{s}");
    assert_eq!(s["state"], "fallback");
    let url = server.url("studio");
    let stranger = push(&url, media(Media::MpegTs), false).await;
    assert_eq!(stranger.status, 401, "{}", stranger.json);
    let (_, s) = api
        .call(
            Method::GET,
            "/api/v1/streams/studio",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(
        (s["state"].as_str(), s["resumes"].as_u64()),
        (Some("fallback"), Some(0))
    );
    let owner = push(&with_key(&url, &key), media(Media::MpegTs), false).await;
    assert_eq!(owner.status, 200, "{}", owner.json);
    let (_, s) = api
        .call(
            Method::GET,
            "/api/v1/streams/studio",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(s["resumes"], 1, "{s}");
}

/// Concurrent PATCHes of a stream's RTP targets all take effect: each is one atomic edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rtp_patches_are_all_kept() {
    let server = Server::start(|a| a.pace = true).await;
    let url = server.url("multi");
    let (tx, held) = push_stream(&url, None);
    let data = media(Media::MpegTs);
    let feeder = tokio::spawn(async move {
        for c in chunk(&data, 16 << 10) {
            if tx.send(c).await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let _watch = open_watch(&url).await;
    let patch_url = format!("http://{}/api/v1/streams/multi/rtp", server.addr);
    let patches: Vec<_> = (0..16u16)
        .map(|i| {
            let target = format!("127.0.0.1:{}", 41000 + 8 * i);
            let req = client()
                .patch(&patch_url)
                .header("content-type", "application/json")
                .body(json!({"add": [target]}).to_string());
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for p in patches {
        assert_eq!(p.await.unwrap(), 200);
    }
    let api = Api { server: &server };
    let (st, v) = api
        .call(
            Method::GET,
            "/api/v1/streams/multi/rtp",
            "/api/v1/streams/{name}/rtp",
            None,
        )
        .await;
    assert_eq!(st, 200);
    let mut got: Vec<String> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..16u16)
        .map(|i| format!("127.0.0.1:{}", 41000 + 8 * i))
        .collect();
    want.sort();
    assert_eq!(got, want, "no PATCH was lost");
    feeder.abort();
    drop(held);
}

/// `GET /api/v1/pulls`, checked against the spec.
async fn pulls(api: &Api<'_>) -> Vec<Value> {
    let (st, v) = api
        .call(Method::GET, "/api/v1/pulls", "/api/v1/pulls", None)
        .await;
    assert_eq!(st, 200);
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_created_through_the_api_show_their_errors_and_retries_and_start_on_demand() {
    let server = Server::start(|a| {
        a.pull_linger = 1.0;
        a.pull_start_timeout = 2.0;
    })
    .await;
    let api = Api { server: &server };
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/cam.webm"); // the listener is dropped: connection refused

    // Bad URLs are refused at once, with the reason.
    for (bad, says) in [
        ("cam.webm", "scheme://"),
        ("gopher://127.0.0.1/x", "no GStreamer source"),
    ] {
        let (st, v) = create(&api, json!({"name": "bad", "pull": bad})).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
    let (st, v) = create(&api, json!({"name": "x", "on_demand": true})).await;
    assert_eq!(st, 400, "{v}");

    // An always-on pull of a dead URL: retried with a growing backoff, its last error and next try shown.
    let (st, v) = create(&api, json!({"name": "cam", "pull": url})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["kind"].as_str(), v["on_demand"].as_bool()),
        (Some("relay"), Some(false))
    );
    let (st, v) = create(&api, json!({"name": "cam", "pull": url})).await;
    assert_eq!(st, 409, "{v}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let p = pulls(&api).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["state"], "retrying", "{p:?}");
    assert!(
        p[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{p:?}"
    );
    assert!(p[0]["retry_at"].is_string(), "{p:?}");
    // 1 s, then 2 s (plus jitter): two or three attempts in 3.5 s, not one per second.
    let failures = p[0]["failures"].as_u64().unwrap();
    assert!((2..=3).contains(&failures), "{p:?}");
    // A GET waits for it up to --pull-start-timeout, then says why it timed out.
    let r = client().get(server.url("cam")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    // Removing it through the stream's DELETE.
    assert_eq!(abort(&api, "cam").await, 204);
    assert!(pulls(&api).await.is_empty());

    // An on-demand pull waits idle for its first viewer, and closes --pull-linger after the last one.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sender = std::process::Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,width=320,height=240,framerate=30/1",
        ])
        .args([
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "key-int-max=30",
            "!",
            "h264parse",
        ])
        .args([
            "!",
            "mpegtsmux",
            "alignment=7",
            "!",
            "udpsink",
            "host=127.0.0.1",
        ])
        .arg(format!("port={port}"))
        .spawn()
        .unwrap();
    let (st, v) = create(
        &api,
        json!({"name": "lobby", "pull": format!("udp://127.0.0.1:{port}"), "on_demand": true}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pulls(&api).await[0]["state"], "idle");
    assert!(!server.state.registry.contains("lobby"));
    let watched = client().get(server.url("lobby")).send().await.unwrap();
    assert_eq!(watched.status(), 200);
    let (st, info) = api
        .call(
            Method::GET,
            "/api/v1/streams/lobby",
            "/api/v1/streams/{name}",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(info["pull"]["state"], "live", "{info}");
    assert_eq!(
        info["source"]["url"],
        format!("udp://127.0.0.1:{port}"),
        "{info}"
    );
    drop(watched);
    server.wait_gone("lobby").await;
    assert_eq!(pulls(&api).await[0]["state"], "idle");
    let _ = sender.kill();
    let _ = sender.wait();
}

/// `--hook-url` with the token server: adding and revoking a session are told to the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sessions_added_and_revoked_are_told_to_the_hook() {
    let (url, got) = hook_receiver(true).await;
    let server = Server::start(|a| {
        a.token_server = vec!["127.0.0.0/8".parse().unwrap()];
        a.hook_url = Some(url);
    })
    .await;
    let api = Api { server: &server };
    add_token(
        &api,
        json!({"session_id": "hooked", "inputs": ["mp4"], "outputs": {"http": true}}),
    )
    .await;
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/hooked",
            "/api/v1/tokens/{session_id}",
            None,
        )
        .await;
    assert_eq!(st, 204);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["stream"] == "hooked")
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        if names.len() >= 2 {
            assert_eq!(names, ["token_added", "token_revoked"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--auth-url`: the platform's answer decides pushes and views, after transcast's own checks; each client is
/// asked about once (answers are cached), and what it asked is the action, the stream, the address and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_auth_service_allows_and_refuses_pushes_and_views() {
    let (url, asked) = auth_service(false).await;
    let server = Server::start(|a| a.auth_url = Some(url)).await;
    let base = server.url("guarded");
    // Refused: a wrong key (403, the service's message), no key (401).
    let r = push(
        &format!("{base}?token=nope"),
        media(Media::WebmVp8Vorbis),
        false,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not yours"),
        "{}",
        r.json
    );
    let r = push(&base, media(Media::WebmVp8Vorbis), false).await;
    assert_eq!(r.status, 401, "{}", r.json);
    // Let in: pushed and watched with the good key; a viewer with a wrong key is refused meanwhile.
    let (pushed, watched) = push_and_watch(
        &format!("{base}?token=good"),
        media(Media::WebmVp8Vorbis),
        true,
    )
    .await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert!(decode(&watched.body).video_frames > 0);
    let r = client()
        .get(format!("{base}?token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|q| q["action"] == "push" && q["key"] == "good" && q["ip"] == "127.0.0.1"),
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .any(|q| q["action"] == "view" && q["stream"] == "guarded"),
        "{asked:?}"
    );
    let metrics = get_text(&format!("http://{}/metrics", server.addr)).await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("transcast_auth_refused_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused >= Some(3), "three refusals counted: {metrics}");
}

/// An auth service that does not answer within `--auth-timeout` means `--auth-default`: deny (503) or allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_auth_service_means_the_configured_default() {
    let (url, _) = auth_service(true).await;
    for (default, want) in [
        (transcast::config::AuthDefault::Deny, 503),
        (transcast::config::AuthDefault::Allow, 200),
    ] {
        let server = Server::start(|a| {
            a.auth_url = Some(url.clone());
            a.auth_timeout = 0.3;
            a.auth_default = default;
        })
        .await;
        let r = push(
            &format!("{}?token=good", server.url("silent")),
            media(Media::WebmVp8Vorbis),
            false,
        )
        .await;
        assert_eq!(r.status, want, "{default:?}: {}", r.json);
    }
}

/// `--hook-url`: a platform hears of a stream's start, its source's loss and return, and its end, in that order,
/// numbered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_tell_a_stream_s_start_loss_return_and_end_in_order() {
    let (url, got) = hook_receiver(true).await;
    let server = Server::start(|a| {
        a.pace = true;
        a.fallback = transcast::config::Fallback::Slate;
        a.resume_grace = 0.5;
        a.hook_url = Some(url);
    })
    .await;
    let data = media(Media::MpegTs);
    let mut sock = raw_push(&server, "hooked").await;
    for c in chunk(&data, 16 << 10).into_iter().take(8) {
        send_chunk(&mut sock, &c).await;
    }
    wait_state(&server, "hooked", "live", Duration::from_secs(10)).await;
    drop(sock);
    wait_state(&server, "hooked", "fallback", Duration::from_secs(10)).await;
    let back = push(&server.url("hooked"), media(Media::WebmVp8Vorbis), false).await;
    assert_eq!(back.status, 200, "{}", back.json);
    server.wait_gone("hooked").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events: Vec<serde_json::Value> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["stream"] == "hooked")
            .cloned()
            .collect();
        if events.iter().any(|e| e["event"] == "stream_ended")
            || tokio::time::Instant::now() > deadline
        {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "stream_started",
            "source_lost",
            "source_resumed",
            "stream_ended"
        ],
        "{events:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        events
            .iter()
            .all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z')))
    );
    let metrics = get_text(&format!("http://{}/metrics", server.addr)).await;
    let sent = metrics
        .lines()
        .find_map(|l| l.strip_prefix("transcast_hook_events_sent_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        sent >= Some(4),
        "the four delivered events counted: {metrics}"
    );
}

/// A hook endpoint that takes the request and never answers holds up neither a push nor its viewer: they end as
/// they would without it, while the hook is still waiting for its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_endpoint_that_never_answers_delays_nothing() {
    let (url, got) = hook_receiver(false).await;
    let server = Server::start(|a| a.hook_url = Some(url)).await;
    let (pushed, watched) =
        push_and_watch(&server.url("unheard"), media(Media::WebmVp8Vorbis), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert!(decode(&watched.body).video_frames >= FRAMES * 85 / 100);
    server.wait_gone("unheard").await;
    assert!(!got.lock().unwrap().is_empty(), "the hook was called");
    assert_eq!(
        server
            .state
            .hooks
            .sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "and never answered"
    );
}

/// The running configuration, as `GET /api/v1/config` says it.
async fn config_json(api: &Api<'_>) -> Value {
    let (st, v) = api
        .call(Method::GET, "/api/v1/config", "/api/v1/config", None)
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn reload(api: &Api<'_>) -> (u16, Value) {
    api.call(
        Method::POST,
        "/api/v1/config/reload",
        "/api/v1/config/reload",
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_new_file_and_drops_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("pulled.webm");
    std::fs::write(&clip, long_clip("webm")).unwrap();
    let file = dir.path().join("reload.toml");
    let pulled = |name: &str| {
        format!(
            "[[stream]]\nname = \"{name}\"\npull = \"file://{}\"\nlinger = 2\n",
            clip.display()
        )
    };
    let v1 = format!(
        "max-clients = 50\nfallback = \"slate\"\n\n{}\n[[stream]]\nname = \"cam\"\nmax-width = 320\nfallback = \"none\"\n",
        pulled("relay")
    );
    std::fs::write(&file, &v1).unwrap();
    let server = Server::start_with_file(&file, &[]).await;
    let api = Api { server: &server };
    let before = config_json(&api).await;
    assert_eq!(before["streams"], json!(["relay", "cam"]), "{before}");
    assert_eq!(before["reloads"], 0);
    assert!(before["file"].as_str().unwrap().ends_with("reload.toml"));

    // What runs through the reload: a declared pull and its viewer, a push and 20 viewers.
    wait_state(&server, "relay", "live", Duration::from_secs(10)).await;
    let relay_viewer = tokio::spawn(capture(
        open_watch(&server.url("relay")).await,
        Duration::from_secs(40),
    ));
    let live = server.url("live1");
    let pushing = tokio::spawn({
        let live = live.clone();
        async move { push(&live, long_clip("webm"), true).await }
    });
    let mut viewers = Vec::new();
    for _ in 0..20 {
        viewers.push(tokio::spawn(capture(
            open_watch(&live).await,
            Duration::from_secs(60),
        )));
    }
    // The declared profile: at most 320 wide, VP8.
    let (pushed, watched) =
        push_and_watch(&server.url("cam"), media(Media::Mp4Faststart), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert_eq!(decode(&watched.body).width, 320);
    server.wait_gone("cam").await;

    let v2 = format!(
        "max-clients = 60\nfallback = \"slate\"\n\n{}\n[[stream]]\nname = \"cam\"\nmax-width = 160\nvideo-codec = \"vp9\"\nfallback = \"none\"\n",
        pulled("relay2")
    );
    std::fs::write(&file, &v2).unwrap();
    let (st, r) = reload(&api).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["added"], json!(["relay2"]), "{r}");
    assert_eq!(r["removed"], json!(["relay"]), "{r}");
    assert_eq!(r["changed"], json!(["cam"]), "{r}");
    assert_eq!(r["needs_restart"], json!([]), "{r}");
    assert_eq!(r["config"]["reloads"], 1);
    assert_ne!(r["config"]["sha256"], before["sha256"]);

    // The removed pull stops: its stream shows its fallback, and ends when its linger (2 s) runs out.
    wait_state(&server, "relay", "fallback", Duration::from_secs(5)).await;
    server.wait_gone("relay").await;
    let (body, clean) = relay_viewer.await.unwrap();
    assert!(
        clean,
        "the removed stream's viewer was ended cleanly, not cut"
    );
    assert_eq!(ebml_headers(&body), 1);
    assert!(decode(&body).video_frames > 30);
    // The added one starts; the changed profile applies to the next source of its name.
    wait_state(&server, "relay2", "live", Duration::from_secs(10)).await;
    let (pushed, watched) =
        push_and_watch(&server.url("cam"), media(Media::Mp4Faststart), true).await;
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert_eq!(decode(&watched.body).width, 160);
    let codecs = ffprobe(&watched.body).unwrap();
    assert_eq!(codecs[0].0, "vp9", "{codecs:?}");

    // A broken file changes nothing, and says where it is broken.
    std::fs::write(&file, format!("{v2}\nmax-clientz = 70\n")).unwrap();
    let (st, e) = reload(&api).await;
    assert_eq!(st, 400, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("reload.toml:") && message.contains("max-clientz"),
        "{message}"
    );
    let after = config_json(&api).await;
    assert_eq!(
        after["sha256"], r["config"]["sha256"],
        "the running configuration stays"
    );
    assert_eq!(after["reloads"], 1);
    assert_eq!(after["last_error"]["message"], message);
    assert_eq!(stream_json(&server, "relay2").await["state"], "live");

    // Nobody watching the push was dropped: each viewer has the whole stream, in one response.
    let pushed = pushing.await.unwrap();
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    for v in viewers {
        let (body, clean) = v.await.unwrap();
        assert!(clean, "a viewer's response ended with the stream");
        assert_eq!(ebml_headers(&body), 1);
        let d = decode(&body);
        assert!(d.video_frames >= 300, "{} pictures of 360", d.video_frames);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_stream_has_its_own_keys_passthrough_and_rtp_targets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("declared.toml");
    let clip = dir.path().join("lobby.webm");
    std::fs::write(&clip, long_clip("webm")).unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::fs::write(
        &file,
        format!(
            "[[stream]]\nname = \"stage\"\npush-key = \"stage-push-key-0123\"\nview-key = \"stage-view-key-0123\"\n\
             passthrough = false\nrtp-target = [\"{}\"]\n\n\
             [[stream]]\nname = \"lobby\"\npull = \"file://{}\"\non-demand = true\n",
            rtp.local_addr().unwrap(),
            clip.display()
        ),
    )
    .unwrap();
    let server = Server::start_with_file(&file, &["--no-pace"]).await;
    let url = server.url("stage");

    // A declared on-demand pull waits for its first viewer.
    let api = Api { server: &server };
    let listed = pulls(&api).await;
    let lobby = listed
        .iter()
        .find(|p| p["name"] == "lobby")
        .expect("declared");
    assert_eq!(
        (lobby["on_demand"].as_bool(), lobby["state"].as_str()),
        (Some(true), Some("idle")),
        "{lobby}"
    );
    let (body, _) = capture(
        open_watch(&server.url("lobby")).await,
        Duration::from_secs(3),
    )
    .await;
    assert!(
        decode(&body).video_frames > 0,
        "its first viewer started it"
    );
    let webm = media(Media::WebmVp8Vorbis);

    assert_eq!(push(&url, webm.clone(), false).await.status, 401, "no key");
    assert_eq!(
        push(&with_key(&url, "stage-view-key-0123"), webm.clone(), false)
            .await
            .status,
        401,
        "the view key is not the push key"
    );
    // Undeclared names are as before: no key needed.
    assert_eq!(
        push(&server.url("other"), webm.clone(), false).await.status,
        200
    );

    let (pushed_tx, pushing) = push_stream(&with_key(&url, "stage-push-key-0123"), None);
    let mut chunks = chunk(&webm, 16 << 10).into_iter();
    pushed_tx.send(chunks.next().unwrap()).await.unwrap();
    let refused = client().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "watching needs the view key");
    let viewer = open_watch(&with_key(&url, "stage-view-key-0123")).await;
    for c in chunks {
        pushed_tx.send(c).await.unwrap();
    }
    drop(pushed_tx);
    let pushed = pushing.await.unwrap();
    assert_eq!(pushed.status, 200, "{}", pushed.json);
    assert_eq!(
        pushed.json["mode"], "transcode",
        "passthrough = false transcodes even VP8/Vorbis WebM"
    );
    let watched = read_all(viewer).await;
    assert!(decode(&watched.body).video_frames > 0);
    let mut packet = [0u8; 2048];
    let (n, _) = rtp
        .recv_from(&mut packet)
        .expect("the stream's own RTP target gets packets");
    assert!(n > 12 && packet[0] >> 6 == 2, "an RTP packet");
}
