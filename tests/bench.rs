//! The benchmark tool keeps working: its smoke mode (50 clients × 5 s against a real daemon) must report that
//! every client got decodable data. Only behaviour is asserted, never a time.

use std::process::Command;

#[test]
fn bench_smoke_every_client_gets_decodable_data() {
    let out = Command::new(env!("CARGO_BIN_EXE_transcast-bench"))
        .args(["--smoke", "--server", env!("CARGO_BIN_EXE_transcast")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench smoke failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["http_200"], 50, "{json}");
    assert_eq!(json["clients"], 50);
    assert!(stderr.contains("every client got decodable data"));
}
