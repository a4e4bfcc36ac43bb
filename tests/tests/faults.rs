//! Faults with real processes: the real `bpmon-agent run` against a collector that answers 503
//! to everything, for as long as it likes. The agent must keep every batch (nothing dropped,
//! nothing set aside as refused), retry with backoff rather than hammer, say why in its log, and
//! deliver everything in order once the collector answers again.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bpmon_agent::delivery::spool::{Spool, SpoolLimits};
use bpmon_e2e::services::AgentProc;
use bpmon_proto::{ReportBatch, SCHEMA_VERSION};

/// One POST of a batch: when, and its seq if it could be read.
type Attempt = (Instant, Option<u64>);

/// A collector whose store is broken until `healthy` is set.
#[derive(Clone, Default)]
struct Flaky {
    healthy: Arc<AtomicBool>,
    /// Every POST /api/v1/reports.
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stored: Arc<Mutex<Vec<u64>>>,
}

fn seq_of(gzip_json: &[u8]) -> Option<u64> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzip_json)
        .read_to_end(&mut json)
        .ok()?;
    serde_json::from_slice::<ReportBatch>(&json)
        .ok()
        .map(|b| b.seq)
}

async fn reports(State(f): State<Flaky>, body: Bytes) -> (StatusCode, Json<serde_json::Value>) {
    let seq = seq_of(&body);
    f.attempts.lock().unwrap().push((Instant::now(), seq));
    if !f.healthy.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"error": "batch not stored, retry later: database disk image is malformed"}),
            ),
        );
    }
    let Some(seq) = seq else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "not a batch"})),
        );
    };
    let mut stored = f.stored.lock().unwrap();
    let duplicate = stored.contains(&seq);
    if !duplicate {
        stored.push(seq);
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({"accepted": true, "duplicate": duplicate, "seq": seq})),
    )
}

async fn unavailable() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the store is not answering"})),
    )
}

fn batch(seq: u64) -> ReportBatch {
    ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: "fault-agent".into(),
        seq,
        host_names: vec!["fault-host".into()],
        created_at_ms: 1,
        dropped_before: 0,
        reports: vec![],
    }
}

fn spool_entries(dir: &std::path::Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_agent_keeps_every_batch_while_the_collector_answers_503_and_delivers_them_in_order_after(
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let flaky = Flaky::default();
    let app = Router::new()
        .route("/api/v1/reports", post(reports))
        .route("/api/v1/settings", get(unavailable))
        .route("/api/v1/plan", post(unavailable))
        .with_state(flaky.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    rt.spawn(async move { axum::serve(listener, app).await });

    // Five batches already wait in the spool, written as the agent writes them.
    let dir = bpmon_e2e::work_dir().join(format!("faults-503-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spool_dir = dir.join("spool");
    let mut spool = Spool::open(
        &spool_dir,
        SpoolLimits {
            max_batches: 100,
            max_bytes: 1 << 20,
        },
    )?;
    for seq in 1..=5 {
        // As the agent spools a batch: gzip JSON.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        serde_json::to_writer(&mut gz, &batch(seq))?;
        spool.push(seq, &gz.finish()?)?;
    }
    let before = spool_entries(&spool_dir);
    ensure!(before.len() >= 5, "spool: {before:?}");

    // `--pid` of no process: the agent samples nothing and only delivers its spool.
    let mut agent = AgentProc::start(&url, "fault-agent", &spool_dir, &["--pid", "999999999"])?;
    let broken_for = Duration::from_secs(6);
    std::thread::sleep(broken_for);
    let during: Vec<_> = flaky.attempts.lock().unwrap().clone();
    ensure!(
        agent.daemon.is_running(),
        "the agent exited: {}",
        agent.daemon.log_tail(30)
    );
    // It retried, oldest first, with backoff: more than once, far fewer than a tight loop would.
    ensure!(
        during.len() >= 3 && during.len() <= 12,
        "{} attempts in {broken_for:?}: {:?}",
        during.len(),
        during.iter().map(|a| a.1).collect::<Vec<_>>()
    );
    ensure!(
        during.iter().all(|a| a.1 == Some(1)),
        "every attempt is the oldest batch: {:?}",
        during.iter().map(|a| a.1).collect::<Vec<_>>()
    );
    let gaps: Vec<Duration> = during.windows(2).map(|w| w[1].0 - w[0].0).collect();
    ensure!(
        gaps.windows(2)
            .all(|g| g[1] + Duration::from_millis(100) >= g[0]),
        "the waits between attempts do not grow: {gaps:?}"
    );
    // Nothing lost, nothing set aside as refused.
    let now = spool_entries(&spool_dir);
    for name in before.keys() {
        ensure!(now.contains_key(name), "{name} left the spool: {now:?}");
    }
    let rejected = spool_entries(&spool_dir.join("rejected"));
    ensure!(rejected.is_empty(), "set aside: {rejected:?}");
    // Said why, with the collector's own words.
    let log = std::fs::read_to_string(&agent.daemon.log)?;
    ensure!(
        log.contains("503") && log.contains("database disk image is malformed"),
        "the log does not say why: {}",
        agent.daemon.log_tail(30)
    );

    // The collector recovers: everything arrives, in order, once.
    flaky.healthy.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(45);
    while flaky.stored.lock().unwrap().len() < 5 {
        ensure!(
            Instant::now() < deadline,
            "not delivered 45 s after recovery: stored {:?}; log: {}",
            flaky.stored.lock().unwrap(),
            agent.daemon.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(*flaky.stored.lock().unwrap() == vec![1, 2, 3, 4, 5]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spool.entries()?.is_empty() {
        ensure!(Instant::now() < deadline, "the spool was not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = agent
        .daemon
        .stop(Duration::from_secs(20))
        .context("stopping the agent")?;
    ensure!(code == Some(0), "the agent exited with {code:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
