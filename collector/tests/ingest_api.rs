//! The agent-facing HTTP API on a real socket: good batches are acknowledged once stored and
//! retries are recognised; every kind of bad input gets its own 4xx and a message saying why.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Mutex;

use bpmon_collector::server::{
    router, Ingest, IngestError, IngestLimits, IngestOutcome, SettingsView,
};
use bpmon_proto::{ReportBatch, SamplingSettings, SCHEMA_VERSION};
use reqwest::StatusCode;

/// Stores in memory; fails on demand, like a store whose disk is full.
#[derive(Default)]
struct Memory {
    seen: Mutex<HashSet<(String, u64)>>,
    failing: bool,
}

impl Ingest for Memory {
    async fn ingest(&self, batch: ReportBatch) -> Result<IngestOutcome, IngestError> {
        if self.failing {
            return Err(IngestError::Unavailable("database is locked".into()));
        }
        let new = self
            .seen
            .lock()
            .unwrap()
            .insert((batch.agent_id, batch.seq));
        Ok(IngestOutcome { duplicate: !new })
    }

    async fn settings(&self) -> Result<SettingsView, IngestError> {
        let mut jobs = BTreeMap::new();
        jobs.insert(
            "a1b2".to_string(),
            SamplingSettings {
                samples: 20,
                delay_ms: 100,
                interval_ms: 10_000,
                stacks_every: 1,
            },
        );
        Ok(SettingsView {
            default: SamplingSettings::default(),
            jobs,
        })
    }
}

const LIMITS: IngestLimits = IngestLimits {
    max_body_bytes: 64 * 1024,
    max_decoded_bytes: 256 * 1024,
};

async fn serve(ingest: Memory) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(ingest, LIMITS)).await });
    format!("http://{addr}")
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn post(url: &str, body: Vec<u8>, encoding: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/v1/reports"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn a_gzip_batch_is_acknowledged_and_its_retry_recognised() {
    let url = serve(Memory::default()).await;
    let body = gzip(&serde_json::to_vec(&batch(7)).unwrap());
    let (status, reply) = post(&url, body.clone(), Some("gzip")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["accepted"], true);
    assert_eq!(reply["duplicate"], false);
    assert_eq!(reply["seq"], 7);
    let (status, reply) = post(&url, body, Some("gzip")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["duplicate"], true);
    // Plain JSON is fine too.
    let (status, reply) = post(&url, serde_json::to_vec(&batch(8)).unwrap(), None).await;
    assert_eq!(
        (status, reply["duplicate"].clone()),
        (StatusCode::OK, false.into())
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_where() {
    let url = serve(Memory::default()).await;
    let (status, reply) = post(&url, b"{\"schema_version\": 1,,}".to_vec(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = reply["error"].as_str().unwrap();
    assert!(msg.contains("malformed JSON at line 1 column"), "{msg}");
}

#[tokio::test]
async fn an_unknown_schema_version_is_named() {
    let url = serve(Memory::default()).await;
    let mut b = serde_json::to_value(batch(1)).unwrap();
    b["schema_version"] = 7.into();
    let (status, reply) = post(&url, serde_json::to_vec(&b).unwrap(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("unknown schema version 7"),
        "{reply}"
    );
    let (status, reply) = post(&url, b"{\"hello\": 1}".to_vec(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("missing schema_version"),
        "{reply}"
    );
    // Right version, wrong shape.
    let (status, reply) = post(
        &url,
        b"{\"schema_version\": 1, \"seq\": \"x\"}".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("not a valid report batch"),
        "{reply}"
    );
}

#[tokio::test]
async fn oversize_bodies_and_gzip_bombs_are_413() {
    let url = serve(Memory::default()).await;
    let (status, _) = post(&url, vec![b' '; 100 * 1024], None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // 1 MiB of spaces gzips to ~1 KiB, under the body limit, but inflates past the decoded one.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < LIMITS.max_body_bytes);
    let (status, reply) = post(&url, bomb, Some("gzip")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply["error"].as_str().unwrap().contains("inflates past"),
        "{reply}"
    );
    let (status, reply) = post(&url, b"not gzip at all".to_vec(), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"].as_str().unwrap().contains("not valid gzip"),
        "{reply}"
    );
    let (status, _) = post(&url, b"{}".to_vec(), Some("br")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_store_failure_asks_the_agent_to_retry() {
    let url = serve(Memory {
        failing: true,
        ..Default::default()
    })
    .await;
    let (status, reply) = post(&url, serde_json::to_vec(&batch(3)).unwrap(), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let msg = reply["error"].as_str().unwrap();
    assert!(
        msg.contains("batch 3 not stored, retry later") && msg.contains("database is locked"),
        "{msg}"
    );
}

#[tokio::test]
async fn agents_read_their_settings() {
    let url = serve(Memory::default()).await;
    let v: SettingsView = reqwest::get(format!("{url}/api/v1/settings"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.default, SamplingSettings::default());
    assert_eq!(v.jobs["a1b2"].samples, 20);
}

#[tokio::test]
async fn out_of_bounds_batches_are_422_and_never_stored() {
    let memory = Memory::default();
    let url = serve(memory).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A seq SQLite cannot hold: the agent's fault, not "retry later".
    let (status, reply) = post(&url, serde_json::to_vec(&batch(1 << 63)).unwrap(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("seq"), "{reply}");
    // A window from the future would stay a subtask's newest forever.
    let mut b = serde_json::to_value(batch(2)).unwrap();
    b["reports"] = serde_json::json!([{
        "pid": 1, "backend": "attach", "jvm": {"version": null, "main_class": "M"},
        "samples": 10, "delay_ms": 50, "started_at_ms": now + 3_600_000, "elapsed_ms": 500,
        "cost": serde_json::to_value(bpmon_proto::SampleCost::default()).unwrap(),
        "errors": [], "tasks": []
    }]);
    let (status, reply) = post(&url, serde_json::to_vec(&b).unwrap(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("past the collector's clock"),
        "{reply}"
    );
    // Counts that cannot add up: more blocked samples than samples.
    b["reports"][0]["started_at_ms"] = serde_json::json!(now - 1_000);
    b["reports"][0]["tasks"] = serde_json::json!([{
        "thread": "Map (1/2)#0", "thread_id": 1, "elapsed_s": 1.0, "task": "Map", "subtask": 0,
        "parallelism": 2, "attempt": 0, "samples": 10, "blocked": 4294967295u32, "waiting": 1,
        "busy": 0, "top_frames": []
    }]);
    let (status, reply) = post(&url, serde_json::to_vec(&b).unwrap(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("must not exceed"),
        "{reply}"
    );
    // The same batch with sane counts is stored, and as new: none of the refused ones with
    // its seq got as far as the store.
    b["reports"][0]["tasks"][0]["blocked"] = serde_json::json!(4);
    let (status, reply) = post(&url, serde_json::to_vec(&b).unwrap(), None).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["duplicate"], false, "{reply}");
}
