//! The CLI's client side: the built `bpmon-collector` binary against an in-test HTTP server that
//! answers fixed views and records every request. (The real service is tested end to end
//! elsewhere.)

use bpmon_proto::time::now_ms;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bpmon_collector::api::{
    AgentStatus, AgentsView, ConfigUpdate, ConfigView, HistoryView, HistoryWindow, JobSummary,
    JobsView, StatusView, SubtaskStatus, VertexStatus,
};
use bpmon_collector::cause::CauseKind;
use bpmon_collector::diagnosis::{Finding, FindingKind};
use bpmon_collector::merge::SplitRule;
use bpmon_proto::{FrameCount, Level, SamplingSettings};

const JOB_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const JOB_NAME: &str = "WordCount -> Sink: out";
/// [`JOB_NAME`] as one path segment.
const JOB_SEGMENT: &str = "WordCount%20-%3E%20Sink%3A%20out";

fn status_view() -> StatusView {
    let subtask = |i: u32, level: Option<Level>, ratio: Option<f64>| SubtaskStatus {
        subtask: i,
        level,
        ratio,
        samples: 100,
        blocked: 80,
        soft: 7,
        idle: 3,
        busy: 10,
        split: Some(SplitRule::SoftIdleTime),
        ratio_source: None,
        timers: None,
        taskmanager_id: Some("10.0.0.5:41234-6f1a2b".into()),
        host: Some("worker-1".into()),
        attempt: Some(0),
        window_start_ms: Some(1_714_564_800_000),
        window_end_ms: Some(1_714_564_805_000),
        metrics: BTreeMap::from([
            ("outPoolUsage".to_string(), 1.0),
            ("inPoolUsage".to_string(), 0.25),
        ]),
        top_frames: vec![FrameCount {
            frame: "com.acme.Parse.parse".into(),
            samples: 9,
            activity: None,
        }],
        why: None,
    };
    StatusView {
        job_id: JOB_ID.into(),
        job_name: JOB_NAME.into(),
        flink_url: "http://jm:8081".into(),
        state: Some("RUNNING".into()),
        level: Some(Level::High),
        updated_at_ms: 1_714_564_805_000,
        stale: true,
        stale_reasons: vec!["Flink metrics are 2 min old".into()],
        metrics_fetched_at_ms: Some(1_714_564_790_000),
        settings: SamplingSettings::default(),
        vertices: vec![
            VertexStatus {
                vertex_id: "v1".into(),
                name: "Source: Kafka".into(),
                parallelism: 2,
                level: Some(Level::High),
                ratio: Some(0.87),
                subtasks: vec![
                    subtask(0, Some(Level::High), Some(0.87)),
                    SubtaskStatus {
                        samples: 0,
                        why: Some("no agent on host worker-2".into()),
                        ..subtask(1, None, None)
                    },
                ],
            },
            VertexStatus {
                vertex_id: "v2".into(),
                name: "Map -> Filter".into(),
                parallelism: 1,
                level: Some(Level::Ok),
                ratio: Some(0.02),
                subtasks: vec![subtask(0, Some(Level::Ok), Some(0.02))],
            },
        ],
        edges: Vec::new(),
        diagnosis: vec![Finding {
            kind: FindingKind::Bottleneck,
            vertex_id: "v2".into(),
            subtasks: vec![0],
            message: "'Map -> Filter' is the bottleneck".into(),
            top_frames: vec![FrameCount {
                frame: "com.acme.Parse.parse".into(),
                samples: 412,
                activity: None,
            }],
            causes: Vec::new(),
            victims: Vec::new(),
        }],
    }
}

fn jobs_view() -> JobsView {
    JobsView {
        jobs: vec![JobSummary {
            job_id: JOB_ID.into(),
            job_name: JOB_NAME.into(),
            flink_url: "http://jm:8081".into(),
            state: Some("RUNNING".into()),
            level: Some(Level::High),
            ratio: Some(0.87),
            updated_at_ms: Some(1_714_564_805_000),
            stale: false,
            bottleneck: Some("Map -> Filter".into()),
            bottleneck_vertex_id: Some("v2".into()),
            cause: Some(CauseKind::Lock),
            cause_share: Some(0.71),
            cause_summary: Some("71% waiting for a lock on a com.acme.Shared".into()),
            level_since_ms: None,
            watched_since_ms: None,
        }],
    }
}

fn config_view(scope: &str, settings: SamplingSettings, inherited: bool) -> ConfigView {
    ConfigView {
        scope: scope.into(),
        job_name: (scope != "*").then(|| JOB_NAME.to_string()),
        settings,
        inherited,
    }
}

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query, exactly as sent (still percent-encoded).
    uri: String,
    body: Bytes,
}

struct Fixture {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fixture {
    /// Serves on 127.0.0.1:0 from a thread of its own, until the test process ends.
    fn start() -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
                    let recorder = recorder.clone();
                    async move {
                        let path = uri.path().to_string();
                        recorder.lock().unwrap().push(Seen {
                            method: method.clone(),
                            uri: uri.to_string(),
                            body: body.clone(),
                        });
                        answer(&method, &path, &body).await
                    }
                });
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Fixture { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Runs the CLI against this server.
    fn run(&self, args: &[&str]) -> Run {
        let url = self.url();
        let mut all = vec!["--collector", url.as_str()];
        all.extend_from_slice(args);
        run(&all, &[])
    }
}

fn json(status: StatusCode, v: impl serde::Serialize) -> Response {
    (
        status,
        [("content-type", "application/json")],
        serde_json::to_string(&v).unwrap(),
    )
        .into_response()
}

fn not_found(segment: &str) -> Response {
    let job = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": format!("no job with id or name '{job}'") }),
    )
}

async fn answer(method: &Method, path: &str, body: &[u8]) -> Response {
    let job_status = format!("/api/v1/jobs/{JOB_SEGMENT}/status");
    let job_history = format!("/api/v1/jobs/{JOB_SEGMENT}/history");
    let job_config = format!("/api/v1/config/{JOB_SEGMENT}");
    let current = SamplingSettings::default();
    match (method.as_str(), path) {
        ("GET", "/api/v1/jobs") => json(StatusCode::OK, jobs_view()),
        ("GET", p) if p == job_status || p == format!("/api/v1/jobs/{JOB_ID}/status") => {
            json(StatusCode::OK, status_view())
        }
        ("GET", "/api/v1/jobs/slow/status") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json(StatusCode::OK, status_view())
        }
        ("GET", "/api/v1/jobs/garbled/status") => {
            json(StatusCode::OK, serde_json::json!({ "job_id": 1 }))
        }
        ("GET", "/api/v1/jobs/broken/status") => {
            (StatusCode::BAD_GATEWAY, "upstream down\n").into_response()
        }
        ("GET", p) if p == job_history || p == format!("/api/v1/jobs/{JOB_ID}/history") => json(
            StatusCode::OK,
            HistoryView {
                job_id: JOB_ID.into(),
                job_name: JOB_NAME.into(),
                since_ms: 0,
                windows: vec![HistoryWindow {
                    vertex_id: "v1".into(),
                    vertex_name: "Source: Kafka".into(),
                    subtask: 0,
                    attempt: 0,
                    window_start_ms: 1_714_564_800_000,
                    window_end_ms: 1_714_564_805_000,
                    samples: 100,
                    blocked: 80,
                    soft: 7,
                    idle: 3,
                    busy: 10,
                    ratio: Some(0.87),
                    level: Some(Level::High),
                    taskmanager_id: Some("tm-1".into()),
                }],
            },
        ),
        ("GET", "/api/v1/config/%2A") => json(StatusCode::OK, config_view("*", current, false)),
        ("GET", p) if p == job_config => json(StatusCode::OK, config_view(JOB_ID, current, true)),
        ("PUT", p) if p == job_config || p == "/api/v1/config/%2A" => {
            let update: ConfigUpdate = serde_json::from_slice(body).unwrap();
            let scope = if p == job_config { JOB_ID } else { "*" };
            json(
                StatusCode::OK,
                config_view(scope, update.apply(current), false),
            )
        }
        ("DELETE", p) if p == job_config => {
            json(StatusCode::OK, config_view(JOB_ID, current, true))
        }
        ("GET", "/api/v1/agents") => json(
            StatusCode::OK,
            AgentsView {
                agents: vec![AgentStatus {
                    agent_id: "worker-1".into(),
                    highest_seq: 42,
                    last_batch_ms: now_ms() - 3_000,
                    dropped_batches: 2,
                    unresolved: vec!["Map (1/2)#0: ambiguous between two jobs".into()],
                    jvms: vec![],
                }],
            },
        ),
        (_, p) => not_found(p.rsplit('/').nth(1).unwrap_or(p)),
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpmon-collector"));
    cmd.args(args)
        .env_remove("BPMON_COLLECTOR")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        assert_eq!(self.stderr, "", "nothing on stderr on success");
        self
    }

    /// Exit 1 with one line `bpmon-collector: …` on stderr; returns the message.
    fn failed(self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stdout, "");
        let msg = self
            .stderr
            .strip_prefix("bpmon-collector: ")
            .unwrap_or_else(|| panic!("{:?}", self.stderr));
        assert_eq!(msg.lines().count(), 1, "{msg}");
        msg.trim_end().to_string()
    }
}

#[test]
fn jobs_prints_a_table_without_colour_when_piped() {
    let f = Fixture::start();
    let out = f.run(&["jobs"]).ok().stdout;
    assert!(!out.contains('\x1b'), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("JOB "), "{out}");
    assert!(lines[1].starts_with(JOB_NAME), "{out}");
    assert!(
        lines[1].contains(JOB_ID) && lines[1].contains("HIGH"),
        "{out}"
    );
    // The bottleneck with its first cause, not its victims.
    assert!(lines[0].contains("BOTTLENECK: CAUSE"), "{out}");
    assert!(lines[1].contains("Map -> Filter: lock 71%"), "{out}");
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/api/v1/jobs")
    );
}

#[test]
fn jobs_json_carries_the_cause() {
    let f = Fixture::start();
    let out = f.run(&["jobs", "--output", "json"]).ok().stdout;
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let job = &printed["jobs"][0];
    assert_eq!(job["bottleneck"], "Map -> Filter");
    assert_eq!(job["bottleneck_vertex_id"], "v2");
    assert_eq!(
        (job["cause"].as_str(), job["cause_share"].as_f64()),
        (Some("lock"), Some(0.71))
    );
    let view: JobsView = serde_json::from_str(&out).unwrap();
    assert_eq!(view, jobs_view());
}

#[test]
fn status_percent_encodes_a_job_name_with_spaces_arrows_and_colons() {
    let f = Fixture::start();
    // A HIGH job is still a successful status query.
    let out = f.run(&["status", JOB_NAME]).ok().stdout;
    assert!(
        out.starts_with(&format!("job {JOB_NAME}  ({JOB_ID})  RUNNING\n")),
        "{out}"
    );
    assert!(out.contains("STALE: Flink metrics are 2 min old"), "{out}");
    assert!(out.contains("no agent on host worker-2"), "{out}");
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri, format!("/api/v1/jobs/{JOB_SEGMENT}/status"));
}

#[test]
fn status_json_is_the_served_view() {
    let f = Fixture::start();
    let out = f.run(&["status", JOB_ID, "--output", "json"]).ok().stdout;
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed, serde_json::to_value(status_view()).unwrap());
    let view: StatusView = serde_json::from_str(&out).unwrap();
    assert_eq!(view, status_view());
    // The global flag works before the subcommand too.
    let before = f.run(&["--output", "json", "status", JOB_ID]).ok().stdout;
    assert_eq!(before, out);
}

#[test]
fn diagnose_prints_the_findings_and_as_json_with_the_job() {
    let f = Fixture::start();
    let out = f.run(&["diagnose", JOB_NAME]).ok().stdout;
    assert!(
        out.contains("BOTTLENECK  'Map -> Filter', subtask 0: 'Map -> Filter' is the bottleneck"),
        "{out}"
    );
    assert!(
        out.contains("top frames: com.acme.Parse.parse (412)"),
        "{out}"
    );
    assert!(!out.contains("SUBTASK"), "no status table: {out}");

    let out = f
        .run(&["diagnose", JOB_NAME, "--output", "json"])
        .ok()
        .stdout;
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({
            "job_id": JOB_ID,
            "job_name": JOB_NAME,
            "diagnosis": serde_json::to_value(&status_view().diagnosis).unwrap(),
        })
    );
    assert!(f
        .seen()
        .iter()
        .all(|s| s.uri == format!("/api/v1/jobs/{JOB_SEGMENT}/status")));
}

#[test]
fn history_asks_since_now_minus_since_for_one_vertex() {
    let f = Fixture::start();
    let before = now_ms();
    let out = f
        .run(&[
            "history",
            JOB_NAME,
            "--vertex",
            "Source: Kafka",
            "--since",
            "2h",
        ])
        .ok()
        .stdout;
    let after = now_ms();
    assert!(
        out.contains("Source: Kafka") && out.contains("0.87"),
        "{out}"
    );
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    let (path, query) = seen[0].uri.split_once('?').unwrap();
    assert_eq!(path, format!("/api/v1/jobs/{JOB_SEGMENT}/history"));
    let params: BTreeMap<String, String> = query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(params["vertex"], "Source%3A+Kafka");
    let since: u64 = params["since_ms"].parse().unwrap();
    assert!(
        since >= before - 7_200_000 && since <= after - 7_200_000,
        "{since}"
    );

    // Without --vertex, no vertex parameter; the default period is an hour.
    f.run(&["history", JOB_ID]).ok();
    let uri = &f.seen()[1].uri;
    assert!(
        uri.starts_with(&format!("/api/v1/jobs/{JOB_ID}/history?since_ms=")),
        "{uri}"
    );
    assert!(!uri.contains("vertex"), "{uri}");
}

#[test]
fn config_get_default_and_star_ask_for_the_default() {
    let f = Fixture::start();
    let out = f.run(&["config", "get", "default"]).ok().stdout;
    assert!(out.starts_with("scope     default"), "{out}");
    assert!(out.contains("samples   100\n"), "{out}");
    let json = f
        .run(&["config", "get", "*", "--output", "json"])
        .ok()
        .stdout;
    let view: ConfigView = serde_json::from_str(&json).unwrap();
    assert_eq!(view, config_view("*", SamplingSettings::default(), false));
    let uris: Vec<String> = f.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/api/v1/config/%2A", "/api/v1/config/%2A"]);
}

#[test]
fn config_set_puts_only_the_given_fields() {
    let f = Fixture::start();
    let out = f
        .run(&[
            "config",
            "set",
            JOB_NAME,
            "--samples",
            "10",
            "--interval",
            "1s",
        ])
        .ok()
        .stdout;
    assert!(
        out.contains("samples   10\n") && out.contains("interval  1s\n"),
        "{out}"
    );
    let seen = f.seen();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.uri.as_str()))
        .collect();
    let path = format!("/api/v1/config/{JOB_SEGMENT}");
    assert_eq!(calls, [("GET", path.as_str()), ("PUT", path.as_str())]);
    let update: ConfigUpdate = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(
        update,
        ConfigUpdate {
            samples: Some(10),
            interval_ms: Some(1_000),
            ..Default::default()
        }
    );
}

#[test]
fn config_set_refuses_a_window_longer_than_its_interval_without_a_put() {
    let f = Fixture::start();
    let msg = f
        .run(&[
            "config",
            "set",
            JOB_NAME,
            "--samples",
            "100",
            "--delay",
            "50ms",
            "--interval",
            "1s",
        ])
        .failed();
    assert_eq!(
        msg,
        format!(
            "refusing the new settings for job \"{JOB_NAME}\" ({JOB_ID}): 100 samples 50 ms apart \
             take 4950 ms, longer than the 1000 ms interval; nothing was changed"
        )
    );
    // Also when only the interval changes: the current 100 × 50 ms does not fit in 1 s.
    f.run(&["config", "set", "default", "--interval", "1s"])
        .failed();
    assert!(
        f.seen().iter().all(|s| s.method == Method::GET),
        "{:?}",
        f.seen()
    );

    let msg = f
        .run(&["config", "set", JOB_NAME, "--delay", "1500us"])
        .failed();
    assert!(
        msg.contains("--delay must be a whole number of milliseconds"),
        "{msg}"
    );
}

#[test]
fn config_set_without_a_change_is_a_usage_error() {
    let f = Fixture::start();
    let r = f.run(&["config", "set", JOB_NAME]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--samples"), "{}", r.stderr);
    assert!(f.seen().is_empty());
}

#[test]
fn config_reset_sends_a_delete() {
    let f = Fixture::start();
    let out = f.run(&["config", "reset", JOB_NAME]).ok().stdout;
    assert!(out.contains("follows the default"), "{out}");
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::DELETE);
    assert_eq!(seen[0].uri, format!("/api/v1/config/{JOB_SEGMENT}"));
}

#[test]
fn agents_lists_agents_and_unresolved_threads() {
    let f = Fixture::start();
    let out = f.run(&["agents"]).ok().stdout;
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "worker-1");
    assert!(
        out.contains("unresolved task threads of worker-1:\n  Map (1/2)#0: ambiguous"),
        "{out}"
    );
    let json = f.run(&["agents", "--output", "json"]).ok().stdout;
    let view: AgentsView = serde_json::from_str(&json).unwrap();
    assert_eq!(view.agents[0].highest_seq, 42);
}

#[test]
fn an_unreachable_collector_is_named() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let msg = run(&["--collector", &url, "jobs"], &[]).failed();
    assert!(
        msg.starts_with(&format!("collector at {url} is not reachable: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
}

#[test]
fn the_collector_url_comes_from_the_environment_unless_given() {
    let f = Fixture::start();
    let url = f.url();
    let r = run(&["jobs"], &[("BPMON_COLLECTOR", &url)]).ok();
    assert!(r.stdout.contains(JOB_NAME));
    let msg = run(
        &["--collector", "http://127.0.0.1:1", "jobs"],
        &[("BPMON_COLLECTOR", &url)],
    )
    .failed();
    assert!(
        msg.starts_with("collector at http://127.0.0.1:1 is not reachable"),
        "{msg}"
    );
    let msg = run(&["--collector", "localhost:7070", "jobs"], &[]).failed();
    assert!(
        msg.starts_with("invalid collector URL \"localhost:7070\""),
        "{msg}"
    );
}

#[test]
fn an_error_answer_shows_the_servers_message() {
    let f = Fixture::start();
    let msg = f.run(&["status", "no such job"]).failed();
    assert_eq!(
        msg,
        "GET /api/v1/jobs/no%20such%20job/status failed with 404 Not Found: no job with id or \
         name 'no such job'"
    );
    let msg = f.run(&["status", "broken"]).failed();
    assert_eq!(
        msg,
        "GET /api/v1/jobs/broken/status failed with 502 Bad Gateway: upstream down"
    );
}

#[test]
fn an_answer_that_is_not_the_view_is_reported() {
    let f = Fixture::start();
    let msg = f.run(&["status", "garbled"]).failed();
    assert!(
        msg.starts_with(
            "GET /api/v1/jobs/garbled/status: the collector's answer is not a valid status view: "
        ),
        "{msg}"
    );
}

#[test]
fn a_slow_collector_times_out() {
    let f = Fixture::start();
    let started = Instant::now();
    let msg = f.run(&["--timeout", "300ms", "status", "slow"]).failed();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        msg,
        format!(
            "collector at {} did not answer GET /api/v1/jobs/slow/status within 300ms",
            f.url()
        )
    );
}
