//! `GET /metrics` of the real service: a real store, a Flink REST API simulated in-process (one
//! job, two vertices on one TaskManager), an agent's batch posted through the real router; the
//! scrape is read with a Prometheus text parser and must agree with the status API.

use bpmon_proto::time::now_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
mod common;

use bpmon_collector::cause::CauseKind;
use bpmon_collector::service::bottlenecks::Change;
use bpmon_collector::service::{self, Collector, CollectorConfig};
use bpmon_proto::{
    JvmInfo, ReportBatch, SampleCost, SampleReport, TaskIdentity, TaskSamples, SCHEMA_VERSION,
};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

const JOB: &str = "0123456789abcdef0123456789abcdef";
const JOB_NAME: &str = "bpmon-metrics job";
const SOURCE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SOURCE_NAME: &str = "Source: numbers -> explode";
const SINK: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SINK_NAME: &str = "Sink: out";
const TM: &str = "tm-1";

/// Per subtask: (hard, soft, idle, busy) time metrics in ms per second.
fn times(vertex: &str, subtask: u32) -> (u32, u32, u32, u32) {
    match (vertex, subtask) {
        (SOURCE, 0) => (900, 0, 0, 100),
        (SOURCE, 1) => (0, 300, 700, 0),
        _ => (0, 0, 0, 1000),
    }
}

/// The Flink REST endpoints the collector polls, for one running job.
async fn flink(req: Request) -> Response {
    let start = (now_ms() - 600_000) as i64;
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let vertex = |id: &str| -> (&str, u32) {
        if id == SOURCE {
            (SOURCE_NAME, 2)
        } else {
            (SINK_NAME, 1)
        }
    };
    match parts.as_slice() {
        ["config"] => Json(json!({"flink-version": "2.3.0"})).into_response(),
        ["jobs", "overview"] => Json(json!({"jobs": [
            {"jid": JOB, "name": JOB_NAME, "state": "RUNNING", "start-time": start}
        ]}))
        .into_response(),
        ["taskmanagers"] => Json(json!({"taskmanagers": [
            {"id": TM, "path": "pekko.tcp://flink@127.0.0.1:6122/user/rpc/taskmanager_0", "dataPort": 6121}
        ]}))
        .into_response(),
        ["jobs", JOB] => Json(json!({
            "jid": JOB, "name": JOB_NAME, "state": "RUNNING", "start-time": start,
            "vertices": [
                {"id": SOURCE, "name": SOURCE_NAME, "parallelism": 2},
                {"id": SINK, "name": SINK_NAME, "parallelism": 1},
            ],
            "plan": {"nodes": [
                {"id": SOURCE},
                {"id": SINK, "inputs": [{"id": SOURCE, "ship_strategy": "HASH"}]},
            ]},
        }))
        .into_response(),
        ["jobs", JOB, "vertices", v] => {
            let (_, parallelism) = vertex(v);
            let subtasks: Vec<_> = (0..parallelism)
                .map(|i| {
                    json!({"subtask": i, "attempt": 0, "status": "RUNNING",
                           "taskmanager-id": TM, "endpoint": "127.0.0.1:6122",
                           "start-time": start + 100})
                })
                .collect();
            Json(json!({"subtasks": subtasks})).into_response()
        }
        ["jobs", JOB, "vertices", v, "metrics"] => {
            let (_, parallelism) = vertex(v);
            let mut out = Vec::new();
            for i in 0..parallelism {
                let (hard, soft, idle, busy) = times(v, i);
                for (name, value) in [
                    ("hardBackPressuredTimeMsPerSecond", hard.to_string()),
                    ("softBackPressuredTimeMsPerSecond", soft.to_string()),
                    ("idleTimeMsPerSecond", idle.to_string()),
                    ("busyTimeMsPerSecond", busy.to_string()),
                    (
                        "Shuffle.Netty.Output.Buffers.outPoolUsage",
                        if hard > 0 { "1.0" } else { "0.1" }.to_string(),
                    ),
                    ("Shuffle.Netty.Input.Buffers.inPoolUsage", "0.0".to_string()),
                ] {
                    out.push(json!({"id": format!("{i}.{name}"), "value": value}));
                }
            }
            Json(out).into_response()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

async fn listen(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn task(name: &str, subtask: u32, parallelism: u32, blocked: u32, waiting: u32) -> TaskSamples {
    TaskSamples {
        thread: format!("{name} ({}/{parallelism})#0", subtask + 1),
        thread_id: Some(60 + u64::from(subtask)),
        os_thread_id: None,
        elapsed_s: Some(590.0),
        identity: TaskIdentity {
            task: name.to_string(),
            subtask,
            parallelism,
            attempt: Some(0),
        },
        legacy_source_thread: false,
        exact: None,
        samples: 100,
        stack_samples: None,
        blocked,
        waiting,
        busy: 100 - blocked - waiting,
        top_frames: Vec::new(),
        activity: None,
        locks: Vec::new(),
        cpu: None,
        stacks: Vec::new(),
        timers: None,
    }
}

fn batch(seq: u64) -> ReportBatch {
    let now = now_ms();
    ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: "agent-a".into(),
        seq,
        host_names: vec!["127.0.0.1".into()],
        created_at_ms: now,
        dropped_before: 0,
        reports: vec![SampleReport {
            pid: 4242,
            backend: "attach".into(),
            jvm: JvmInfo {
                version: Some("17.0.15".into()),
                main_class: "org.apache.flink.runtime.taskexecutor.TaskManagerRunner".into(),
                flink_version: Some("2.3.0".into()),
                resource_id: Some(TM.into()),
                listen_ports: vec![6121, 6122],
                ..Default::default()
            },
            samples: 100,
            delay_ms: 50,
            started_at_ms: now - 5_000,
            elapsed_ms: 4_950,
            tasks: vec![
                task(SOURCE_NAME, 0, 2, 80, 0),
                task(SOURCE_NAME, 1, 2, 0, 100),
                task(SINK_NAME, 0, 1, 0, 0),
                // A thread no subtask of the cluster matches.
                task("Map: gone", 0, 1, 0, 0),
            ],
            cost: SampleCost {
                dumps: 100,
                // The attach backend's dumps held the JVM 300 safepoints, 125 ms in all.
                safepoints: Some(300),
                safepoint_ms_total: Some(125.0),
                ..SampleCost::default()
            },
            errors: Vec::new(),
            resources: None,
            stack_frames: Vec::new(),
        }],
    }
}

struct Service {
    url: String,
    collector: Arc<Collector>,
    flink_url: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(name: &str) -> Service {
    let flink_url = listen(Router::new().fallback(flink)).await;
    let dir = std::env::temp_dir().join(format!("bpmon-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = CollectorConfig {
        data_dir: dir.clone(),
        ..CollectorConfig::default()
    };
    config.flink.urls = vec![flink_url.clone()];
    let collector = service::build(&config).unwrap();
    collector.poll(0).await;
    let url = listen(service::app(Arc::clone(&collector), &config)).await;
    Service {
        url,
        collector,
        flink_url,
        _dir: TempDir(dir),
    }
}

async fn post(url: &str, body: Vec<u8>) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/api/v1/reports"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn scrape(url: &str) -> (String, Scrape) {
    let resp = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    (text, scrape)
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

/// The one sample of `name` with `labels`.
fn one(s: &Scrape, text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(s, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{text}");
    number(&found[0].value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_status_api_and_count_every_outcome() {
    let svc = start("status").await;
    let body = serde_json::to_vec(&batch(1)).unwrap();
    assert_eq!(post(&svc.url, body.clone()).await, reqwest::StatusCode::OK);
    // A retry, and two bodies that are not batches.
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);
    assert_eq!(
        post(&svc.url, b"{\"schema_version\": 1,,}".to_vec()).await,
        reqwest::StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&svc.url, b"{\"schema_version\": 99}".to_vec()).await,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY
    );

    let status: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs/{JOB}/status", svc.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (text, s) = scrape(&svc.url).await;

    // Every name is bpmon's own.
    for x in &s.samples {
        assert!(x.metric.starts_with("bpmon_"), "{}", x.metric);
    }
    // Levels and ratios: what `status` says, per subtask and per vertex.
    let mut levels = HashMap::new();
    for v in status["vertices"].as_array().unwrap() {
        let vid = v["vertex_id"].as_str().unwrap();
        let vl = [("job_id", JOB), ("vertex_id", vid)];
        let level = |l: &serde_json::Value| match l.as_str().unwrap() {
            "ok" => 0.0,
            "low" => 1.0,
            "high" => 2.0,
            other => panic!("{other}"),
        };
        assert_eq!(
            one(&s, &text, "bpmon_vertex_backpressure_level", &vl),
            level(&v["level"])
        );
        assert_eq!(
            one(&s, &text, "bpmon_vertex_backpressure_ratio", &vl),
            v["ratio"].as_f64().unwrap()
        );
        assert_eq!(
            one(
                &s,
                &text,
                "bpmon_vertex_info",
                &[
                    ("job_id", JOB),
                    ("vertex_id", vid),
                    ("vertex_name", v["name"].as_str().unwrap())
                ]
            ),
            1.0
        );
        for st in v["subtasks"].as_array().unwrap() {
            let i = st["subtask"].to_string();
            let sl = [("job_id", JOB), ("vertex_id", vid), ("subtask", i.as_str())];
            let l = one(&s, &text, "bpmon_subtask_backpressure_level", &sl);
            assert_eq!(l, level(&st["level"]));
            assert_eq!(
                one(&s, &text, "bpmon_subtask_backpressure_ratio", &sl),
                st["ratio"].as_f64().unwrap()
            );
            levels.insert((vid.to_string(), st["subtask"].as_u64().unwrap()), l);
        }
    }
    // The job as built: hard, soft, busy.
    assert_eq!(levels[&(SOURCE.to_string(), 0)], 2.0, "{status:#}");
    assert_eq!(levels[&(SOURCE.to_string(), 1)], 1.0, "{status:#}");
    assert_eq!(levels[&(SINK.to_string(), 0)], 0.0, "{status:#}");
    assert_eq!(find(&s, "bpmon_subtask_backpressure_level", &[]).len(), 3);
    assert_eq!(
        one(
            &s,
            &text,
            "bpmon_vertex_backpressure_ratio",
            &[("vertex_id", SOURCE)]
        ),
        0.8
    );
    assert_eq!(
        one(
            &s,
            &text,
            "bpmon_job_info",
            &[
                ("job_id", JOB),
                ("job_name", JOB_NAME),
                ("flink_url", &svc.flink_url)
            ]
        ),
        1.0
    );
    assert_eq!(one(&s, &text, "bpmon_job_stale", &[("job_id", JOB)]), 0.0);
    // The sink, busy behind the back-pressured source, is the bottleneck; this agent reported
    // no activity of its busy samples, so its cause is unknown, not guessed.
    assert_eq!(
        one(
            &s,
            &text,
            "bpmon_bottleneck",
            &[("job_id", JOB), ("vertex_id", SINK), ("cause", "unknown")]
        ),
        1.0
    );
    assert!(
        !text.contains(
            "bpmon_bottleneck{job_id=\"0123456789abcdef0123456789abcdef\",vertex_id=\"aaaa"
        ),
        "the back-pressured source is a victim, not a bottleneck:\n{text}"
    );

    // Ingest: one stored, one duplicate, two rejected; three windows, one thread not placed.
    for (outcome, n) in [
        ("stored", 1.0),
        ("duplicate", 1.0),
        ("rejected", 2.0),
        ("failed", 0.0),
    ] {
        assert_eq!(
            one(
                &s,
                &text,
                "bpmon_ingest_batches_total",
                &[("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
    assert_eq!(one(&s, &text, "bpmon_ingest_windows_total", &[]), 3.0);
    assert_eq!(
        one(&s, &text, "bpmon_ingest_unplaced_threads_total", &[]),
        1.0
    );

    // The agent's last batch.
    let agents: serde_json::Value = reqwest::get(format!("{}/api/v1/agents", svc.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last_ms = agents["agents"][0]["last_batch_ms"].as_u64().unwrap();
    assert_eq!(
        one(
            &s,
            &text,
            "bpmon_agent_last_report_timestamp_seconds",
            &[("agent_id", "agent-a")]
        ),
        last_ms as f64 / 1000.0
    );

    // Polls: the one at start (and maybe one more for the unplaced thread), none failed.
    let fl = [("flink_url", svc.flink_url.as_str())];
    assert_eq!(one(&s, &text, "bpmon_flink_poll_errors_total", &fl), 0.0);
    let last_poll = one(
        &s,
        &text,
        "bpmon_flink_last_poll_success_timestamp_seconds",
        &fl,
    );
    assert!(
        (last_poll - now_ms() as f64 / 1000.0).abs() < 60.0,
        "{last_poll}"
    );
    let hist = find(&s, "bpmon_flink_poll_duration_seconds", &fl);
    assert_eq!(hist.len(), 1, "{text}");
    match &hist[0].value {
        Value::Histogram(buckets) => {
            let all = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert!(all.count >= 1.0, "{buckets:?}");
        }
        other => panic!("{other:?}"),
    }
    let polls = one(&s, &text, "bpmon_flink_poll_duration_seconds_count", &fl);
    assert!(polls >= 1.0, "{text}");
    assert!(
        text.contains("# TYPE bpmon_flink_poll_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE bpmon_ingest_batches_total counter"),
        "{text}"
    );

    // Cardinality switch: no per-subtask series, the rest stays.
    svc.collector.metrics().set_per_subtask(false);
    let (text, s) = scrape(&svc.url).await;
    assert!(
        find(&s, "bpmon_subtask_backpressure_level", &[]).is_empty(),
        "{text}"
    );
    assert!(
        find(&s, "bpmon_subtask_backpressure_ratio", &[]).is_empty(),
        "{text}"
    );
    assert_eq!(find(&s, "bpmon_vertex_backpressure_level", &[]).len(), 2);
}

/// `jobs` names the bottleneck and its first cause, and the log says so once when it appears
/// and once when it clears, not at every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_the_log_name_the_bottleneck_and_its_cause() {
    let svc = start("bottleneck").await;
    // Nothing stored yet: nothing to say.
    assert!(svc.collector.check_bottlenecks().await.is_empty());
    let first = batch(1);
    let body = serde_json::to_vec(&first).unwrap();
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);

    let jobs: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs", svc.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = &jobs["jobs"][0];
    assert_eq!(job["bottleneck"], SINK_NAME, "{jobs}");
    assert_eq!(job["bottleneck_vertex_id"], SINK, "{jobs}");
    // This agent reported no activity of the sink's busy samples: unknown, and no share.
    assert_eq!(job["cause"], "unknown", "{jobs}");
    assert!(job.get("cause_share").is_none(), "{jobs}");

    let events = svc.collector.check_bottlenecks().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.change, Change::Appeared);
    assert_eq!((e.job_id.as_str(), e.job_name.as_str()), (JOB, JOB_NAME));
    let now = e.now.as_ref().unwrap();
    assert_eq!(
        (now.vertex_id.as_str(), now.vertex.as_str()),
        (SINK, SINK_NAME)
    );
    assert_eq!((now.cause, now.share), (CauseKind::Unknown, None));
    assert_eq!(now.victims, [SOURCE_NAME]);
    assert_eq!(e.previous, None);

    // Another batch saying the same: no news, and no repeat at the next check.
    let mut same = batch(2);
    same.reports[0].started_at_ms = first.reports[0].started_at_ms + 1_000;
    let body = serde_json::to_vec(&same).unwrap();
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);
    assert!(svc.collector.check_bottlenecks().await.is_empty());
    assert!(svc.collector.check_bottlenecks().await.is_empty());

    // The source no longer waits: the bottleneck clears, once.
    let mut calm = batch(3);
    calm.reports[0].started_at_ms = first.reports[0].started_at_ms + 2_000;
    calm.reports[0].tasks = vec![
        task(SOURCE_NAME, 0, 2, 0, 0),
        task(SOURCE_NAME, 1, 2, 0, 0),
        task(SINK_NAME, 0, 1, 0, 0),
    ];
    let body = serde_json::to_vec(&calm).unwrap();
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);
    let events = svc.collector.check_bottlenecks().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].change, Change::Cleared);
    assert_eq!(events[0].now, None);
    let previous = events[0].previous.as_ref().unwrap();
    assert_eq!(
        (previous.vertex.as_str(), previous.cause),
        (SINK_NAME, CauseKind::Unknown)
    );
    assert!(svc.collector.check_bottlenecks().await.is_empty());
    let jobs: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs", svc.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jobs["jobs"][0]["bottleneck"].is_null(), "{jobs}");
    assert!(jobs["jobs"][0].get("cause").is_none(), "{jobs}");
}

/// The served collector logs the bottleneck's events by itself (its background check), with
/// their fields, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_collector_logs_when_the_bottleneck_appears_and_clears() {
    let flink_url = listen(Router::new().fallback(flink)).await;
    let dir = std::env::temp_dir().join(format!("bpmon-metrics-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = TempDir(dir.clone());
    let serve = tokio::task::spawn_blocking(move || {
        common::Serve::watching(
            &dir,
            &flink_url,
            "warn,bpmon_collector=info",
            &["--log-format", "json"],
        )
    })
    .await
    .unwrap()
    .unwrap();
    let serve = Arc::new(serve);
    let url = format!("http://{}", serve.addr);
    let wait_for = |needle: &'static str| {
        let serve = Arc::clone(&serve);
        async move {
            tokio::task::spawn_blocking(move || serve.log_line_with(needle))
                .await
                .unwrap()
        }
    };

    let first = batch(1);
    let body = serde_json::to_vec(&first).unwrap();
    assert_eq!(post(&url, body).await, reqwest::StatusCode::OK);
    let line = wait_for("\"bottleneck appeared\"").await;
    let line = line.unwrap_or_else(|| panic!("no event in:\n{}", serve.log.lock().unwrap()));
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["level"], "INFO", "{line}");
    for (field, value) in [
        ("bottleneck", "appeared"),
        ("job_id", JOB),
        ("job", JOB_NAME),
        ("vertex_id", SINK),
        ("vertex", SINK_NAME),
        ("cause", "unknown"),
        ("previous_vertex", "none"),
        ("previous_cause", "none"),
    ] {
        assert_eq!(e[field], value, "{field} in {line}");
    }
    assert!(
        e["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{line}"
    );
    assert!(
        e["victims"].as_str().unwrap().contains(SOURCE_NAME),
        "{line}"
    );
    assert!(e.get("share").is_none(), "unknown has no share: {line}");

    let mut calm = batch(2);
    calm.reports[0].started_at_ms = first.reports[0].started_at_ms + 1_000;
    calm.reports[0].tasks = vec![
        task(SOURCE_NAME, 0, 2, 0, 0),
        task(SOURCE_NAME, 1, 2, 0, 0),
        task(SINK_NAME, 0, 1, 0, 0),
    ];
    let body = serde_json::to_vec(&calm).unwrap();
    assert_eq!(post(&url, body).await, reqwest::StatusCode::OK);
    let line = wait_for("\"bottleneck cleared\"").await;
    let line = line.unwrap_or_else(|| panic!("no event in:\n{}", serve.log.lock().unwrap()));
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    for (field, value) in [
        ("bottleneck", "cleared"),
        ("vertex", "none"),
        ("cause", "none"),
        ("previous_vertex_id", SINK),
        ("previous_cause", "unknown"),
    ] {
        assert_eq!(e[field], value, "{field} in {line}");
    }
    let log = serve.log.lock().unwrap().clone();
    assert_eq!(log.matches("\"bottleneck\":").count(), 2, "{log}");
}

/// A Flink that cannot be reached: the poll counts as an error and no success time is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_poll_is_counted() {
    // Nothing listens there once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flink_url = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("bpmon-metrics-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _guard = TempDir(dir.clone());
    let mut config = CollectorConfig {
        data_dir: dir,
        ..CollectorConfig::default()
    };
    config.flink.urls = vec![flink_url.clone()];
    config.flink.timeout = Duration::from_secs(2);
    let collector = service::build(&config).unwrap();
    collector.poll(0).await;
    collector.poll(0).await;
    let url = listen(service::app(Arc::clone(&collector), &config)).await;
    let (text, s) = scrape(&url).await;
    let fl = [("flink_url", flink_url.as_str())];
    assert_eq!(one(&s, &text, "bpmon_flink_poll_errors_total", &fl), 2.0);
    assert!(
        find(&s, "bpmon_flink_last_poll_success_timestamp_seconds", &fl).is_empty(),
        "{text}"
    );
    assert_eq!(
        one(&s, &text, "bpmon_flink_poll_duration_seconds_count", &fl),
        2.0
    );
}

/// A JVM that is no TaskManager of the cluster: `agents` says what was compared with which
/// TaskManager, and so does every subtask of that TaskManager in `status`.
#[tokio::test]
async fn a_jvm_matching_no_taskmanager_says_why_in_agents_and_status() {
    let s = start("unplaced").await;
    let mut b = batch(1);
    // Another TaskManager: its own id (from its log), other ports, another address.
    b.reports[0].jvm.resource_id = Some("10.1.0.9:6122-ffffff".into());
    b.reports[0].jvm.resource_id_source = Some(bpmon_proto::ResourceIdSource::Log);
    b.reports[0].jvm.listen_ports = vec![16121, 16122];
    b.reports[0].jvm.network = Some(bpmon_proto::JvmNetwork {
        addresses: vec!["127.0.0.1".parse().unwrap(), "10.1.0.9".parse().unwrap()],
        listen: vec!["0.0.0.0:16122".parse().unwrap()],
        host_name: Some("pod-x".into()),
        host_netns: false,
    });
    assert_eq!(
        post(&s.url, serde_json::to_vec(&b).unwrap()).await,
        reqwest::StatusCode::OK
    );
    let agents: serde_json::Value = reqwest::get(format!("{}/api/v1/agents", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jvm = &agents["agents"][0]["jvms"][0];
    assert_eq!(jvm["pid"], 4242, "{agents}");
    assert!(jvm["taskmanager_id"].is_null(), "{agents}");
    let placement = jvm["placement"].as_str().unwrap();
    assert!(
        placement.contains("no TaskManager of the watched clusters is this JVM")
            && placement.contains(&format!(
                "{} {TM}: the JVM's resource id is 10.1.0.9:6122-ffffff",
                s.flink_url
            )),
        "{placement}"
    );
    assert!(
        jvm["seen"]
            .as_str()
            .unwrap()
            .contains("addresses [\"127.0.0.1\", \"10.1.0.9\"]"),
        "{agents}"
    );
    let status: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs/{JOB}/status", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let whys: Vec<&str> = status["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["subtasks"].as_array().unwrap())
        .map(|st| st["why"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(whys.len(), 3, "{status}");
    for why in whys {
        assert!(
            why.contains(&format!("no JVM an agent reported is TaskManager {TM}"))
                && why.contains("JVM 4242 of agent agent-a")
                && why.contains("the JVM's resource id is 10.1.0.9:6122-ffffff"),
            "{why}"
        );
    }
}

/// A label value as PromQL and promtool's series notation write it.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The shipped alerting rules and Grafana dashboard, run by `promtool` over this collector's
/// own scrape (every sample held for ten minutes): one alert for the bottleneck, named with its
/// job, vertex and cause, none for its back-pressured victim and none of the health alerts; the
/// dashboard's queries all parse, use only what the collector exports, and its bottleneck table
/// and level timeline show this job's bottleneck and levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_raise_one_alert_for_the_bottleneck_of_a_real_scrape() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/prometheus/bpmon-alerts.yml")
        .canonicalize()
        .unwrap();
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is needed (Debian's prometheus package; scripts/test installs it)"
    );
    let svc = start("alerts").await;
    let body = serde_json::to_vec(&batch(1)).unwrap();
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);
    // A second agent sampling in-process: no pauses; its cost is the sampler's CPU in the JVM.
    let mut inproc = batch(1);
    inproc.agent_id = "agent-b".into();
    inproc.reports[0].backend = "jvmti".into();
    inproc.reports[0].cost = SampleCost {
        dumps: 100,
        inside_us_p50: Some(90),
        inside_cpu_ms_total: Some(40.0),
        ..SampleCost::default()
    };
    let body = serde_json::to_vec(&inproc).unwrap();
    assert_eq!(post(&svc.url, body).await, reqwest::StatusCode::OK);
    let (text, s) = scrape(&svc.url).await;
    let bottleneck = find(&s, "bpmon_bottleneck", &[("job_id", JOB)]);
    assert_eq!(bottleneck.len(), 1, "{text}");
    assert_eq!(bottleneck[0].labels.get("vertex_id"), Some(SINK));
    let cause = bottleneck[0].labels.get("cause").unwrap().to_string();
    // The sampling pause the batch reported, in seconds, by agent.
    let paused = one(
        &s,
        &text,
        "bpmon_sampling_jvm_pause_seconds_total",
        &[("agent_id", "agent-a")],
    );
    assert!((paused - 0.125).abs() < 1e-9, "{paused}");
    let cpu = one(
        &s,
        &text,
        "bpmon_sampling_jvm_cpu_seconds_total",
        &[("agent_id", "agent-b")],
    );
    assert!((cpu - 0.040).abs() < 1e-9, "{cpu}");
    assert!(
        find(
            &s,
            "bpmon_sampling_jvm_cpu_seconds_total",
            &[("agent_id", "agent-a")]
        )
        .is_empty(),
        "a dump backend has no in-process CPU: {text}"
    );

    let mut series = String::new();
    for x in &s.samples {
        let (Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v)) = x.value else {
            continue;
        };
        let mut labels: Vec<String> = x
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", quoted(v)))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", x.metric, labels.join(","));
        series.push_str(&format!(
            "      - series: {}\n        values: '{v}x40'\n",
            quoted(&name).replace('\'', "''")
        ));
    }
    // The dashboard's queries: each must parse (checked below as recording rules), and the two
    // that say where the trouble is must find it in this scrape.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../packaging/grafana/bpmon-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // What this scrape exports, and what the exposition's reference (the table atop
    // `service/scrape.rs`) lists: a family without series this time (no cause shares from an
    // agent that read no activity) has no HELP line.
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/service/scrape.rs"),
    )
    .unwrap();
    let documented: Vec<&str> = reference
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .filter(|n| n.starts_with("bpmon_"))
        .collect();
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .chain(documented)
        .collect();
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", ".*")
                .replace("$__rate_interval", "1m");
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("bpmon_") {
                    assert!(
                        exported.contains(name),
                        "the dashboard's {:?} uses {name}, which the collector does not export",
                        p["title"]
                    );
                }
            }
            queries.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    let query = |title: &str| {
        queries
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, e)| e.clone())
            .unwrap()
    };
    let mut expr_tests = format!(
        "      - expr: {}\n        eval_time: 2m\n        exp_samples:\n          - labels: '{{job_id={}, job_name={}, vertex_id={}, vertex_name={}, cause={}}}'\n            value: 1\n",
        quoted(&query("Bottlenecks now")),
        quoted(JOB),
        quoted(JOB_NAME),
        quoted(SINK),
        quoted(SINK_NAME),
        quoted(&cause),
    );
    expr_tests.push_str(&format!(
        "      - expr: {}\n        eval_time: 2m\n        exp_samples:\n",
        quoted(&query("Back-pressure level by vertex"))
    ));
    for (vertex, name) in [(SOURCE, SOURCE_NAME), (SINK, SINK_NAME)] {
        let level = one(
            &s,
            &text,
            "bpmon_vertex_backpressure_level",
            &[("job_id", JOB), ("vertex_id", vertex)],
        );
        expr_tests.push_str(&format!(
            "          - labels: '{{job_id={}, job_name={}, vertex_id={}, vertex_name={}}}'\n            value: {level}\n",
            quoted(JOB),
            quoted(JOB_NAME),
            quoted(vertex),
            quoted(name),
        ));
    }
    let recorded: String = queries
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            format!(
                "      - record: bpmon:dashboard:query{i}\n        expr: {}\n",
                quoted(e)
            )
        })
        .collect();
    let summary = format!("{JOB_NAME}: {SINK_NAME} is the bottleneck ({cause})");
    let description = format!(
        "Flink job {JOB_NAME} ({JOB}) is back-pressured and {SINK_NAME} is what holds it back; \
         bpmon's first-ranked cause is {cause}. `bpmon-collector diagnose {JOB}` says why, with \
         the evidence and what to do."
    );
    let test = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
{series}    alert_rule_test:
      - eval_time: 2m
        alertname: BpmonBottleneck
        exp_alerts:
          - exp_labels:
              severity: warning
              job_id: {job}
              job_name: {job_name}
              vertex_id: {sink}
              vertex_name: {sink_name}
              cause: {cause}
            exp_annotations:
              summary: {summary}
              description: {description}
      - eval_time: 2m
        alertname: BpmonJobStale
        exp_alerts: []
      - eval_time: 2m
        alertname: BpmonSamplingCostly
        exp_alerts: []
    promql_expr_test:
{expr_tests}"#,
        rules = quoted(&rules.display().to_string()),
        job = quoted(JOB),
        job_name = quoted(JOB_NAME),
        sink = quoted(SINK),
        sink_name = quoted(SINK_NAME),
        summary = quoted(&summary),
        description = quoted(&description),
    );
    let dir = std::env::temp_dir().join(format!("bpmon-alert-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scrape.test.yml");
    std::fs::write(&file, &test).unwrap();
    let dashboard_rules = dir.join("dashboard.rules.yml");
    std::fs::write(
        &dashboard_rules,
        format!("groups:\n  - name: dashboard\n    rules:\n{recorded}"),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&dashboard_rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the dashboard's queries do not all parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool test rules over the scrape failed:\n{}{}\n--- test file:\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped rules are valid and pass their own unit tests (`bpmon-alerts.test.yml`).
#[test]
fn the_alert_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    for args in [
        ["check", "rules", "bpmon-alerts.yml"],
        ["test", "rules", "bpmon-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus package; scripts/test installs it)");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A redeployed job (a new id, the same name) keeps the sampling settings the operator gave the
/// earlier one, as the collector sees it in its poll: stored, served by `config get` as its own,
/// and planned for the agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeployed_job_keeps_its_sampling_settings() {
    use axum::extract::State;
    let current = Arc::new(std::sync::Mutex::new(JOB.to_string()));
    async fn redeploying(
        State(current): State<Arc<std::sync::Mutex<String>>>,
        req: Request,
    ) -> Response {
        let jid = current.lock().unwrap().clone();
        let start = (now_ms() - 60_000) as i64;
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["config"] => Json(json!({"flink-version": "2.3.0"})).into_response(),
            ["jobs", "overview"] => Json(json!({"jobs": [
                {"jid": jid, "name": JOB_NAME, "state": "RUNNING", "start-time": start}
            ]}))
            .into_response(),
            ["taskmanagers"] => Json(json!({"taskmanagers": [
                {"id": TM, "path": "pekko.tcp://flink@127.0.0.1:6122/user/rpc/taskmanager_0", "dataPort": 6121}
            ]}))
            .into_response(),
            ["jobs", j] if *j == jid => Json(json!({
                "jid": jid, "name": JOB_NAME, "state": "RUNNING", "start-time": start,
                "vertices": [{"id": SINK, "name": SINK_NAME, "parallelism": 1}],
                "plan": {"nodes": [{"id": SINK}]},
            }))
            .into_response(),
            ["jobs", j, "vertices", _] if *j == jid => Json(json!({"subtasks": [
                {"subtask": 0, "attempt": 0, "status": "RUNNING", "taskmanager-id": TM,
                 "endpoint": "127.0.0.1:6122", "start-time": start + 100}
            ]}))
            .into_response(),
            ["jobs", j, "vertices", _, "metrics"] if *j == jid => Json(json!([])).into_response(),
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let flink_url = listen(
        Router::new()
            .fallback(redeploying)
            .with_state(Arc::clone(&current)),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("bpmon-metrics-redeploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = TempDir(dir.clone());
    let mut config = CollectorConfig {
        data_dir: dir,
        ..CollectorConfig::default()
    };
    config.flink.urls = vec![flink_url];
    let collector = service::build(&config).unwrap();
    collector.poll(0).await;
    let url = listen(service::app(Arc::clone(&collector), &config)).await;
    let client = reqwest::Client::new();
    let config_of = |job: &str| {
        let (client, url, job) = (client.clone(), url.clone(), job.to_string());
        async move {
            let r = client
                .get(format!("{url}/api/v1/config/{job}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    // The operator watches the job continuously, by its name.
    let r = client
        .put(format!(
            "{url}/api/v1/config/{}",
            JOB_NAME.replace(' ', "%20")
        ))
        .header("content-type", "application/json")
        .body(r#"{"continuous": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::OK,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(config_of(JOB).await["settings"]["interval_ms"], 2000);
    // Redeployed: the old job is gone, a new id runs under the same name.
    let redeployed = "fedcba9876543210fedcba9876543210";
    *current.lock().unwrap() = redeployed.to_string();
    collector.poll(0).await;
    let c = config_of(redeployed).await;
    assert_eq!(c["inherited"], false, "{c}");
    assert_eq!(c["settings"]["interval_ms"], 2000, "{c}");
    assert_eq!(c["settings"]["stacks_every"], 10, "{c}");
    // And by its name, which now means the running one.
    let c = config_of(&JOB_NAME.replace(' ', "%20")).await;
    assert_eq!(c["scope"], redeployed, "{c}");
    assert_eq!(c["settings"]["interval_ms"], 2000, "{c}");
}

/// What the web view draws from, through the API of a collector that stored a batch with busy
/// stacks: the job's edges in `status`, a timeline with a point per vertex, and the flame graph
/// of the bottleneck by default, as JSON and as the folded text flame graph tools read.
#[tokio::test]
async fn the_web_views_data_comes_from_the_stored_windows() {
    let svc = start("webdata").await;
    let mut b = batch(1);
    let report = &mut b.reports[0];
    report.stack_frames = vec![
        "java.lang.Thread.run".into(),
        "com.acme.Sink.invoke".into(),
        "com.acme.Sink.write".into(),
        "com.acme.Sink.flush".into(),
    ];
    let sink = report
        .tasks
        .iter_mut()
        .find(|t| t.identity.task == SINK_NAME)
        .unwrap();
    sink.stacks = vec![
        bpmon_proto::StackCount {
            frames: vec![0, 1, 2],
            samples: 70,
            activity: None,
        },
        bpmon_proto::StackCount {
            frames: vec![0, 1, 3],
            samples: 30,
            activity: None,
        },
    ];
    let started = report.started_at_ms;
    assert_eq!(
        post(&svc.url, serde_json::to_vec(&b).unwrap()).await,
        reqwest::StatusCode::OK
    );
    let base = svc.url.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            let status = r.status();
            (status, r.text().await.unwrap())
        }
    };
    let (_, status) = get(format!("/api/v1/jobs/{JOB}/status")).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["edges"][0]["source"], SOURCE, "{status}");
    assert_eq!(status["edges"][0]["target"], SINK, "{status}");

    let (code, flame) = get(format!("/api/v1/jobs/{JOB}/flame")).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{flame}");
    let flame: serde_json::Value = serde_json::from_str(&flame).unwrap();
    assert_eq!(
        flame["vertex_id"], SINK,
        "the bottleneck's by default: {flame}"
    );
    assert_eq!(flame["samples"], 100);
    assert_eq!(
        flame["stacks"][0]["folded"],
        "java.lang.Thread.run;com.acme.Sink.invoke;com.acme.Sink.write"
    );
    let (code, folded) = get(format!("/api/v1/jobs/{JOB}/flame?format=folded")).await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert_eq!(
        folded,
        "java.lang.Thread.run;com.acme.Sink.invoke;com.acme.Sink.write 70\n\
         java.lang.Thread.run;com.acme.Sink.invoke;com.acme.Sink.flush 30\n"
    );
    // A vertex without busy stacks, by name; a period before the window: nothing.
    let (_, src) = get(format!(
        "/api/v1/jobs/{JOB}/flame?vertex={}",
        SOURCE_NAME.replace(' ', "%20").replace('>', "%3E")
    ))
    .await;
    assert!(src.contains(r#""samples":0"#), "{src}");
    let (_, early) = get(format!(
        "/api/v1/jobs/{JOB}/flame?since_ms=0&until_ms={}",
        started - 1
    ))
    .await;
    assert!(early.contains(r#""stacks":[]"#), "{early}");
    let (code, bad) = get(format!("/api/v1/jobs/{JOB}/flame?format=svg")).await;
    assert_eq!(code, reqwest::StatusCode::BAD_REQUEST, "{bad}");
    let (code, _) = get(format!("/api/v1/jobs/{JOB}/flame?vertex=nope")).await;
    assert_eq!(code, reqwest::StatusCode::NOT_FOUND);

    let (code, timeline) = get(format!("/api/v1/jobs/{JOB}/timeline?points=60")).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{timeline}");
    let t: serde_json::Value = serde_json::from_str(&timeline).unwrap();
    assert_eq!(t["bucket_ms"], 15_000, "15 min in 60 points: {t}");
    let vertices = t["vertices"].as_array().unwrap();
    assert_eq!(vertices.len(), 2, "{t}");
    let source = vertices.iter().find(|v| v["vertex_id"] == SOURCE).unwrap();
    // The source's worst subtask: 80 of 100 samples blocked.
    assert_eq!(source["points"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(source["points"][0]["level"], "high", "{t}");
    assert_eq!(source["points"][0]["windows"], 2, "{t}");
}
