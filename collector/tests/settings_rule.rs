//! One rule for sampling settings, on the real binary: what an agent would refuse to run, the
//! collector refuses to store — from the CLI (before anything is sent) and from a raw `PUT` that
//! bypasses the CLI's check — with the reason, and nothing changes.

use std::process::Command;

mod common;
use common::Serve;

/// The real collector, on a port of its own, with a fresh database.
fn serve(dir: &std::path::Path) -> (Serve, String) {
    let _ = std::fs::remove_dir_all(dir);
    let s = Serve::start(dir, &["--listen", "127.0.0.1:0"]).unwrap();
    let url = format!("http://{}", s.addr);
    (s, url)
}

/// The CLI against `url`: (success, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpmon-collector"))
        .args(["--collector", url])
        .args(args)
        .env_remove("BPMON_TOKEN_FILE")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_set_refuses_what_an_agent_cannot_run_and_says_why() {
    let dir = std::env::temp_dir().join(format!("bpmon-settings-rule-{}", std::process::id()));
    let (_serve, url) = serve(&dir);
    // Issue 11: this was accepted and stored, and then every agent threw it away.
    let (ok, _, err) = cli(
        &url,
        &[
            "config",
            "set",
            "default",
            "--samples",
            "5",
            "--delay",
            "10ms",
            "--interval",
            "500ms",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("interval 500 ms is below the minimum of 1000 ms"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    // The collector itself refuses it too, for a client that does not check.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let r = reqwest::Client::new()
            .put(format!("{}/api/v1/config/%2A", url))
            .json(&serde_json::json!({"samples": 5, "delay_ms": 10, "interval_ms": 500}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert!(status.is_client_error(), "{status}: {body}");
    assert!(body.contains("below the minimum of 1000 ms"), "{body}");

    // Nothing changed; what an agent can run is stored.
    let (ok, out, err) = cli(&url, &["config", "get", "default", "--output", "json"]);
    assert!(ok, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["settings"]["interval_ms"], 60_000, "{out}");
    let (ok, _, err) = cli(
        &url,
        &[
            "config",
            "set",
            "default",
            "--samples",
            "5",
            "--delay",
            "10ms",
            "--interval",
            "1s",
        ],
    );
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
