//! The benchmark tool keeps working: its smoke mode (50 clients × 5 s against a real daemon) must report that
//! every client got decodable data, through edges too, and a short soak must leave the daemon as it found it.
//! Only behaviour is asserted, never a time.

use std::process::Command;

/// Runs `transcast-bench ARGS` against this build's daemon; its last stdout line (JSON) once it succeeded, and
/// its stderr.
fn bench(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_transcast-bench"))
        .args(args)
        .args(["--server", env!("CARGO_BIN_EXE_transcast")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "transcast-bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    let json = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (json, stderr)
}

#[test]
fn bench_smoke_every_client_gets_decodable_data() {
    let (json, stderr) = bench(&["--smoke"]);
    assert_eq!(json["http_200"], 50, "{json}");
    assert_eq!(json["clients"], 50);
    assert!(stderr.contains("every client got decodable data"));
}

/// Through an origin, two edges and an edge of the first edge: every client starts with the header and a
/// keyframe, every video payload is one that was pushed, and the origin serves the stream once per edge.
#[test]
fn bench_smoke_through_edges_sees_the_origins_payloads() {
    let (json, _) = bench(&[
        "--smoke",
        "--edges",
        "2",
        "--chain",
        "--origin-clients",
        "10",
    ]);
    assert_eq!(json["http_200"], 60, "{json}");
    let t = &json["topology"];
    assert_eq!(t["foreign_payloads"], 0, "{json}");
    assert_eq!(t["origin_relays"], serde_json::json!([2]), "{json}");
    assert_eq!(t["origin_viewers"], serde_json::json!([10]), "{json}");
    let hops: Vec<u64> = t["latency_by_hops_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hops"].as_u64().unwrap())
        .collect();
    assert_eq!(hops, [0, 1, 2], "{json}");
}

/// A short soak (4 rounds of viewer churn, pushes of every kind and source flaps, the first two to warm up): the
/// daemon's RSS, open files and threads come back, no pipeline outlives its stream, every push that should be
/// answered is, with the status it should get.
#[test]
fn short_soak_leaves_nothing_behind() {
    let (json, _) = bench(&[
        "--soak",
        "4",
        "--soak-warmup",
        "2",
        "--soak-viewers",
        "200",
        "--soak-pushes",
        "12",
        "--soak-flaps",
        "4",
    ]);
    assert_eq!(json["viewer_cycles"], 800, "{json}");
    assert_eq!(json["pushes"], 48, "{json}");
    assert_eq!(json["flaps"], 16, "{json}");
    assert_eq!(
        json["pipelines_alive"],
        serde_json::json!([0, 0, 0, 0]),
        "{json}"
    );
}
