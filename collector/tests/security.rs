//! Authentication, TLS and exposure of the real collector: the service's router behind its token
//! check (in process, to read the refusal counters), and the `bpmon-collector` binary (`serve`
//! with `--token-file`, `--tls-cert`/`--tls-key`; the CLI with `--token-file`, `--ca-file`)
//! against an HTTPS collector whose CA is made here with rcgen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod common;
use common::Serve;

use bpmon_collector::auth::{self, Auth};
use bpmon_collector::service::config::FlinkConfig;
use bpmon_collector::service::{self, CollectorConfig, ServeArgs};
use bpmon_proto::{ReportBatch, SCHEMA_VERSION};
use reqwest::StatusCode;

const AGENT_TOKEN: &str = "agent-token-4f1c2d9e8a7b";
const CLI_TOKEN: &str = "cli-token-0b9e7d3a1c55";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bpmon-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The collector's token file: a named token per agent and one for the CLI.
fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("tokens");
    write_file(
        &p,
        &format!("# bpmon tokens\nagent-a:{AGENT_TOKEN}\n\ncli:{CLI_TOKEN}\n"),
        0o600,
    );
    p
}

fn batch(seq: u64) -> ReportBatch {
    ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: "host-a".into(),
        seq,
        host_names: vec!["host-a".into()],
        created_at_ms: 1,
        dropped_before: 0,
        reports: vec![],
    }
}

fn config(dir: &Path) -> CollectorConfig {
    CollectorConfig {
        data_dir: dir.join("data"),
        // Nobody listens there: the pollers are not started in process anyway.
        flink: FlinkConfig {
            urls: vec!["http://127.0.0.1:9".into()],
            ..FlinkConfig::default()
        },
        ..CollectorConfig::default()
    }
}

/// The real service's API behind the token check, on a loopback port.
async fn serve_in_process(dir: &Path, auth: Arc<Auth>) -> String {
    let c = config(dir);
    let collector = service::build(&c).unwrap();
    collector.metrics().set_auth(Arc::clone(&auth));
    let app = auth::protect(service::app(collector, &c), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn send(
    req: reqwest::RequestBuilder,
    token: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, challenge, resp.text().await.unwrap())
}

#[tokio::test]
async fn reports_and_queries_need_a_valid_token_and_refusals_are_counted() {
    let dir = temp_dir("tokens");
    let auth = Arc::new(Auth::from_file(&token_file(&dir)).unwrap());
    assert_eq!(auth.token_count(), 2);
    let url = serve_in_process(&dir, Arc::clone(&auth)).await;
    let http = reqwest::Client::new();
    let report = || http.post(format!("{url}/api/v1/reports")).json(&batch(1));
    let jobs = || http.get(format!("{url}/api/v1/jobs"));

    // No token.
    for req in [report(), jobs()] {
        let (status, challenge, body) = send(req, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"bpmon\""));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("requires a bearer token"),
            "{body}"
        );
    }
    assert_eq!(auth.unauthorized_missing(), 2);

    // A wrong token (a prefix of the right one, and another): refused, never echoed.
    let wrong = &AGENT_TOKEN[..AGENT_TOKEN.len() - 1];
    for (req, token) in [(report(), wrong), (jobs(), "guess-0123456789")] {
        let (status, challenge, body) = send(req, Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(challenge.unwrap().contains("invalid_token"));
        assert!(!body.contains(token), "the token is echoed: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["error"],
            "the bearer token is not one this collector accepts"
        );
    }
    assert_eq!(auth.unauthorized_wrong(), 2);
    assert_eq!(auth.unauthorized_total(), 4);
    // …and exported, on the open /metrics.
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bpmon_api_unauthorized_total{reason=\"missing\"} 2")
            && metrics.contains("bpmon_api_unauthorized_total{reason=\"wrong\"} 2"),
        "{metrics}"
    );

    // The right tokens: the agent's batch is stored, the CLI's query answered.
    let (status, _, body) = send(report(), Some(AGENT_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["accepted"].as_bool(), v["seq"].as_u64()),
        (Some(true), Some(1))
    );
    let (status, _, body) = send(jobs(), Some(CLI_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("jobs"), "{body}");
    // Every other /api/v1 route too: the plan, settings, agents, config.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/settings"),
        (reqwest::Method::GET, "/api/v1/agents"),
        (reqwest::Method::GET, "/api/v1/config/%2A"),
        (reqwest::Method::POST, "/api/v1/plan"),
        (reqwest::Method::PUT, "/api/v1/config/%2A"),
    ] {
        let (status, _, _) = send(http.request(method.clone(), format!("{url}{path}")), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert_eq!(auth.unauthorized_total(), 9);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_tokens_nothing_is_asked_and_bodies_are_bounded_on_every_route() {
    let dir = temp_dir("open");
    let url = serve_in_process(&dir, Arc::new(Auth::disabled())).await;
    let http = reqwest::Client::new();
    let (status, _, body) = send(http.get(format!("{url}/api/v1/jobs")), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A settings update is tiny: a body past the query API's limit is refused unread.
    let big = vec![b' '; service::routes::MAX_QUERY_BODY_BYTES + 1];
    let (status, _, _) = send(http.put(format!("{url}/api/v1/config/%2A")).body(big), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The plan and the reports: the ingest limit.
    let big = vec![b' '; CollectorConfig::default().ingest.max_body_bytes + 1];
    for path in ["/api/v1/plan", "/api/v1/reports"] {
        let (status, _, _) = send(http.post(format!("{url}{path}")).body(big.clone()), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_collector_listens_on_loopback_unless_told_otherwise() {
    let args = ServeArgs {
        flink: vec!["http://jm:8081".into()],
        ..ServeArgs::default()
    };
    let c = args.resolve().unwrap();
    assert!(c.listen.ip().is_loopback(), "{}", c.listen);
    assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
    let example: CollectorConfig =
        toml::from_str(include_str!("../../packaging/collector.toml")).unwrap();
    assert!(example.listen.ip().is_loopback());
}

// ---------------------------------------------------------------------------------------------
// The binary.

/// Runs the CLI; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpmon-collector"))
        .args(args)
        .env_remove("BPMON_TOKEN_FILE")
        .env_remove("BPMON_CA_FILE")
        .env_remove("BPMON_COLLECTOR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_world_readable_token_file_is_refused_by_serve_and_the_cli() {
    let dir = temp_dir("world");
    let tokens = dir.join("tokens");
    write_file(&tokens, &format!("cli:{CLI_TOKEN}\n"), 0o644);
    let tokens_arg = tokens.to_str().unwrap();
    let err = Serve::start(
        &dir,
        &["--listen", "127.0.0.1:0", "--token-file", tokens_arg],
    )
    .err()
    .expect("serve must refuse a world-readable token file");
    assert!(
        err.contains("readable by every user") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(CLI_TOKEN), "{err}");
    let (ok, _, stderr) = cli(&[
        "--collector",
        "http://127.0.0.1:9",
        "--token-file",
        tokens_arg,
        "jobs",
    ]);
    assert!(!ok);
    assert!(stderr.contains("readable by every user"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn beyond_loopback_without_tokens_the_collector_warns() {
    let dir = temp_dir("exposed");
    let serve = Serve::start(&dir, &["--listen", "0.0.0.0:0"]).unwrap();
    let line = serve
        .log_line_with("WITHOUT authentication")
        .expect("a warning about the open API");
    assert!(line.contains("token_file"), "{line}");
}

/// A private CA and a server certificate for localhost and 127.0.0.1, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bpmon test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bpmon-collector");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("collector.pem"),
        key: dir.join("collector.key"),
    };
    write_file(&pki.ca, &ca.pem(), 0o644);
    write_file(&pki.cert, &cert.pem(), 0o644);
    write_file(&pki.key, &key.serialize_pem(), 0o600);
    pki
}

#[test]
fn https_end_to_end_with_a_private_ca_and_tokens() {
    let dir = temp_dir("tls");
    let pki = make_pki(&dir);
    let tokens = token_file(&dir);
    let cli_token = dir.join("cli.token");
    write_file(&cli_token, &format!("{CLI_TOKEN}\n"), 0o600);
    let serve = Serve::start(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    )
    .unwrap();
    let port = serve.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let ca = pki.ca.to_str().unwrap();
    let token = cli_token.to_str().unwrap();

    // The CLI with the CA and its token: answered.
    let (ok, stdout, stderr) = cli(&[
        "--collector",
        &url,
        "--ca-file",
        ca,
        "--token-file",
        token,
        "--output",
        "json",
        "jobs",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["jobs"].is_array(), "{v}");
    // By IP too (the certificate names 127.0.0.1).
    let (ok, _, stderr) = cli(&[
        "--collector",
        &format!("https://127.0.0.1:{port}"),
        "--ca-file",
        ca,
        "--token-file",
        token,
        "agents",
    ]);
    assert!(ok, "{stderr}");

    // Without the CA: a certificate error that says what to do.
    let (ok, _, stderr) = cli(&["--collector", &url, "--token-file", token, "jobs"]);
    assert!(!ok);
    assert!(
        stderr.contains("TLS with the collector")
            && stderr.contains("certificate")
            && stderr.contains("--ca-file"),
        "{stderr}"
    );

    // With the CA but without a token: 401, and the CLI says which flag is missing.
    let (ok, _, stderr) = cli(&["--collector", &url, "--ca-file", ca, "jobs"]);
    assert!(!ok);
    assert!(
        stderr.contains("401") && stderr.contains("--token-file"),
        "{stderr}"
    );

    // Plain HTTP to the HTTPS port gets nowhere.
    let (ok, _, _) = cli(&[
        "--collector",
        &format!("http://127.0.0.1:{port}"),
        "--timeout",
        "3s",
        "--token-file",
        token,
        "jobs",
    ]);
    assert!(!ok);

    // A library client (the agent uses the same reqwest/rustls) with the CA: a report is taken.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut builder = reqwest::Client::builder();
        for c in bpmon_http::ca_certificates(&pki.ca).unwrap() {
            builder = builder.add_root_certificate(c);
        }
        let http = builder.build().unwrap();
        let (status, _, body) = send(
            http.post(format!("{url}/api/v1/reports")).json(&batch(5)),
            Some(AGENT_TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    });
    // Tokens and TLS on loopback: nothing to warn about.
    assert!(!serve.log.lock().unwrap().contains("WITHOUT"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_needs_both_files_and_says_which_is_bad() {
    let dir = temp_dir("tls-bad");
    let pki = make_pki(&dir);
    // The CA's certificate with the server's key: they do not match.
    let err = Serve::start(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            pki.ca.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    )
    .err()
    .expect("a mismatched key is refused");
    assert!(err.contains("do not work together"), "{err}");
    let err = Serve::start(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            pki.cert.to_str().unwrap(),
        ],
    )
    .err()
    .expect("a certificate without its key is refused");
    assert!(err.contains("--tls-key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn each_token_may_do_what_its_role_allows_and_no_more() {
    let dir = temp_dir("roles");
    let tokens = dir.join("roles");
    write_file(
        &tokens,
        "tm-1@agent: agent-role-token-1\ncli@reader: reader-role-token-1\nops@admin: admin-role-token-1\n",
        0o600,
    );
    let auth = Arc::new(Auth::from_file(&tokens).unwrap());
    let url = serve_in_process(&dir, Arc::clone(&auth)).await;
    let http = reqwest::Client::new();
    let set = serde_json::json!({"samples": 10});
    // (method, path, body) → may the agent, the reader, the admin?
    let cases: [(reqwest::Method, &str, Option<serde_json::Value>, [bool; 3]); 5] = [
        (
            reqwest::Method::POST,
            "/api/v1/reports",
            Some(serde_json::to_value(batch(1)).unwrap()),
            [true, false, true],
        ),
        (
            reqwest::Method::GET,
            "/api/v1/settings",
            None,
            [true, false, true],
        ),
        (
            reqwest::Method::GET,
            "/api/v1/jobs",
            None,
            [false, true, true],
        ),
        (
            reqwest::Method::GET,
            "/api/v1/agents",
            None,
            [false, true, true],
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/config/%2A",
            Some(set),
            [false, false, true],
        ),
    ];
    let mut forbidden = 0;
    for (method, path, body, allowed) in cases {
        for (token, may) in [
            "agent-role-token-1",
            "reader-role-token-1",
            "admin-role-token-1",
        ]
        .into_iter()
        .zip(allowed)
        {
            let mut req = http.request(method.clone(), format!("{url}{path}"));
            if let Some(b) = &body {
                req = req.json(b);
            }
            let (status, _, text) = send(req, Some(token)).await;
            if may {
                assert!(
                    status.is_success(),
                    "{token} {method} {path}: {status} {text}"
                );
            } else {
                forbidden += 1;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{token} {method} {path}: {text}"
                );
                assert!(text.contains("needs"), "{text}");
                assert!(!text.contains(token), "the token is echoed: {text}");
            }
        }
    }
    assert_eq!(auth.forbidden_total(), forbidden);
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("bpmon_api_forbidden_total {forbidden}")),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The web view with tokens configured: the page and its assets (which hold no data) load
/// without a token, each with the security headers; every figure it shows comes from the API,
/// which still refuses a request without one.
#[tokio::test]
async fn the_web_view_loads_without_a_token_but_its_data_does_not() {
    let dir = temp_dir("web");
    let auth = Arc::new(Auth::from_file(&token_file(&dir)).unwrap());
    let url = serve_in_process(&dir, auth).await;
    let http = reqwest::Client::new();
    for asset in bpmon_collector::web::ASSETS {
        let r = http
            .get(format!("{url}{}", asset.path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", asset.path);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], asset.content_type, "{}", asset.path);
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe"),
            "{}: {csp}",
            asset.path
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(r.bytes().await.unwrap().as_ref(), asset.body);
    }
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/j/timeline",
        "/api/v1/jobs/j/flame?format=folded",
    ] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(CLI_TOKEN)
            .send()
            .await
            .unwrap();
        // With the token: answered (no such job yet, but not refused).
        assert!(
            r.status() == StatusCode::OK || r.status() == StatusCode::NOT_FOUND,
            "{path}: {}",
            r.status()
        );
    }
    // A browser asks for gzip and gets it; the bytes are the asset's. (Without asking, above,
    // the asset came as it is.)
    for asset in bpmon_collector::web::ASSETS {
        let r = http
            .get(format!("{url}{}", asset.path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], "gzip", "{}", asset.path);
        let zipped = r.bytes().await.unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, asset.body, "{}", asset.path);
        if asset.body.len() > 4096 {
            assert!(zipped.len() * 2 < asset.body.len(), "{}", asset.path);
        }
    }
    // So does Prometheus, for the metrics (an empty job list is too short to be worth it).
    let r = http
        .get(format!("{url}/metrics"))
        .bearer_auth(CLI_TOKEN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-encoding"], "gzip");
}
