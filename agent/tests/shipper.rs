//! Shipping through the spool to a real collector API: nothing is lost while the collector is down
//! or failing, batches arrive in order once it is back, retries are recognised as duplicates, and
//! a batch the collector refuses is kept aside, not dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpmon_agent::shipper::{Backoff, ShipOutcome, Shipper};
use bpmon_agent::spool::{Spool, SpoolLimits};
use bpmon_collector::server::{router, Ingest, IngestLimits, IngestOutcome, SettingsView};
use bpmon_proto::{ReportBatch, SCHEMA_VERSION};

/// Records what it stores; fails the first `fail_first` batches like a busy database.
#[derive(Clone, Default)]
struct Recorder {
    stored: Arc<Mutex<Vec<u64>>>,
    fail_first: Arc<Mutex<u32>>,
}

impl Ingest for Recorder {
    async fn ingest(&self, batch: ReportBatch) -> Result<IngestOutcome, String> {
        {
            let mut left = self.fail_first.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err("database is locked".into());
            }
        }
        let mut stored = self.stored.lock().unwrap();
        let duplicate = stored.contains(&batch.seq);
        if !duplicate {
            stored.push(batch.seq);
        }
        Ok(IngestOutcome { duplicate })
    }

    async fn settings(&self) -> Result<SettingsView, String> {
        Err("not needed".into())
    }
}

fn batch(seq: u64) -> ReportBatch {
    ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: "host-a".into(),
        seq,
        host_names: vec![],
        created_at_ms: 0,
        dropped_before: 0,
        reports: vec![],
    }
}

fn spool_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bpmon-ship-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn shipper(url: &str, dir: &std::path::Path) -> Shipper {
    let spool = Spool::open(
        dir,
        SpoolLimits {
            max_batches: 100,
            max_bytes: 1 << 20,
        },
    )
    .unwrap();
    Shipper::new(
        url,
        spool,
        dir.to_path_buf(),
        Duration::from_secs(2),
        Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
    )
    .unwrap()
}

async fn start_collector(port: u16, recorder: Recorder) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(recorder, IngestLimits::default())).await;
    })
}

#[tokio::test]
async fn nothing_is_lost_while_the_collector_is_down_and_order_is_kept() {
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = spool_dir("down");
    let mut s = shipper(&url, &dir);
    for seq in 1..=3 {
        s.enqueue(&batch(seq)).unwrap();
    }
    match s.ship_one().await.unwrap() {
        ShipOutcome::Retry { seq, reason, .. } => {
            assert_eq!(seq, 1);
            assert!(reason.contains("cannot connect"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.spool().entries().unwrap().len(),
        3,
        "the batches wait in the spool"
    );

    // The collector comes up, but its store fails the first attempt: retry, then in order.
    let recorder = Recorder::default();
    *recorder.fail_first.lock().unwrap() = 1;
    let server = start_collector(port, recorder.clone()).await;
    match s.ship_one().await.unwrap() {
        ShipOutcome::Retry { reason, .. } => assert!(reason.contains("503"), "{reason}"),
        other => panic!("{other:?}"),
    }
    s.enqueue(&batch(4)).unwrap();
    loop {
        match s.ship_one().await.unwrap() {
            ShipOutcome::Sent { duplicate, .. } => assert!(!duplicate),
            ShipOutcome::Empty => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(*recorder.stored.lock().unwrap(), vec![1, 2, 3, 4]);
    assert!(s.spool().entries().unwrap().is_empty());

    // A batch sent again (its acknowledgement was lost) is recognised, not stored twice.
    s.enqueue(&batch(4)).unwrap();
    assert_eq!(
        s.ship_one().await.unwrap(),
        ShipOutcome::Sent {
            seq: 4,
            duplicate: true
        }
    );
    assert_eq!(recorder.stored.lock().unwrap().len(), 4);
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_refused_batch_is_kept_aside_not_dropped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let recorder = Recorder::default();
    let server = start_collector(port, recorder.clone()).await;
    let dir = spool_dir("rejected");
    let mut s = shipper(&format!("http://127.0.0.1:{port}"), &dir);
    let mut bad = batch(9);
    bad.schema_version = 99;
    s.enqueue(&bad).unwrap();
    s.enqueue(&batch(10)).unwrap();
    match s.ship_one().await.unwrap() {
        ShipOutcome::Rejected { seq, reason } => {
            assert_eq!(seq, 9);
            assert!(
                reason.contains("422") && reason.contains("unknown schema version 99"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(dir.join("rejected/00000000000000000009.batch").is_file());
    // The queue moves on.
    assert_eq!(
        s.ship_one().await.unwrap(),
        ShipOutcome::Sent {
            seq: 10,
            duplicate: false
        }
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
