//! Shipping through the spool to a real collector API: nothing is lost while the collector is down
//! or failing, batches arrive in order once it is back, retries are recognised as duplicates, and
//! a batch the collector refuses is kept aside, not dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpmon_agent::backoff::Backoff;
use bpmon_agent::delivery::shipper::{ShipOutcome, Shipper};
use bpmon_agent::delivery::spool::{Spool, SpoolLimits};
use bpmon_collector::server::{
    router, Ingest, IngestError, IngestLimits, IngestOutcome, SettingsView,
};
use bpmon_proto::{ReportBatch, SCHEMA_VERSION};

/// Records what it stores; fails the first `fail_first` batches like a busy database.
#[derive(Clone, Default)]
struct Recorder {
    stored: Arc<Mutex<Vec<u64>>>,
    fail_first: Arc<Mutex<u32>>,
}

impl Ingest for Recorder {
    async fn ingest(&self, batch: ReportBatch) -> Result<IngestOutcome, IngestError> {
        {
            let mut left = self.fail_first.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(IngestError::Unavailable("database is locked".into()));
            }
        }
        let mut stored = self.stored.lock().unwrap();
        let duplicate = stored.contains(&batch.seq);
        if !duplicate {
            stored.push(batch.seq);
        }
        Ok(IngestOutcome { duplicate })
    }

    async fn settings(&self) -> Result<SettingsView, IngestError> {
        Err(IngestError::Unavailable("not needed".into()))
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

/// Log output of the current thread, for asserting on what the shipper says.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_wrong_token_keeps_the_batch_spooled_and_says_why_the_right_one_delivers() {
    use bpmon_agent::delivery::access::{CollectorAccess, Token};
    use bpmon_collector::auth::{protect, Auth};
    use bpmon_proto::token::NamedToken;

    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = Recorder::default();
    let auth = Arc::new(Auth::with_tokens(vec![NamedToken::new(
        "host-a",
        "right-token-123",
    )]));
    let app = protect(
        router(recorder.clone(), IngestLimits::default()),
        Arc::clone(&auth),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = spool_dir("token");
    let open = |token: Option<&str>| {
        let spool = Spool::open(
            &dir,
            SpoolLimits {
                max_batches: 100,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        Shipper::with_access(
            &url,
            spool,
            dir.to_path_buf(),
            Duration::from_secs(2),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
            CollectorAccess {
                token: token.map(Token::new),
                ca_file: None,
            },
        )
        .unwrap()
    };

    // A wrong token: refused, kept, not moved to rejected/, and the error names the cause.
    let mut s = open(Some("wrong-token-456"));
    s.enqueue(&batch(1)).unwrap();
    for attempt in 0..2 {
        match s.ship_one().await.unwrap() {
            ShipOutcome::Unauthorized { seq, after, reason } => {
                assert_eq!(seq, 1);
                assert!(!after.is_zero());
                assert!(
                    reason.contains("401") && reason.contains("does not accept the agent's token"),
                    "{reason}"
                );
                assert!(!reason.contains("wrong-token-456"), "{reason}");
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(
        s.spool().entries().unwrap().len(),
        1,
        "the batch stays spooled"
    );
    assert!(!dir.join("rejected").exists(), "nothing was rejected");
    let log = logs.text();
    assert!(
        log.contains("ERROR") && log.contains("refuses the agent's credentials"),
        "{log}"
    );
    assert_eq!(
        log.matches("refuses the agent's credentials").count(),
        1,
        "said once, not at every retry: {log}"
    );
    assert!(!log.contains("wrong-token-456"), "{log}");
    assert_eq!(auth.unauthorized_wrong(), 2);
    drop(s);

    // No token at all: the hint says to configure one.
    let mut s = open(None);
    match s.ship_one().await.unwrap() {
        ShipOutcome::Unauthorized { reason, .. } => {
            assert!(reason.contains("requires a token"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop(s);

    // The right token (after the file is fixed and the agent restarted): delivered.
    let mut s = open(Some("right-token-123"));
    assert_eq!(
        s.ship_one().await.unwrap(),
        ShipOutcome::Sent {
            seq: 1,
            duplicate: false
        }
    );
    assert_eq!(*recorder.stored.lock().unwrap(), vec![1]);
    assert!(s.spool().entries().unwrap().is_empty());
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn https_with_the_collectors_ca_delivers_and_without_it_says_why() {
    use bpmon_agent::delivery::access::CollectorAccess;
    use std::os::unix::fs::PermissionsExt;

    let dir = spool_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    // A private CA and the collector's certificate for localhost.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(pki.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(pki.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(pki.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls =
        bpmon_collector::tls::server_config(&pki.join("cert.pem"), &pki.join("key.pem")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorder = Recorder::default();
    let app = router(recorder.clone(), IngestLimits::default());
    let server = tokio::spawn(async move {
        // The collector's own listener, TLS on.
        bpmon_collector::listen::serve(
            listener,
            Some(tls),
            app,
            bpmon_collector::listen::ConnectionLimits::default(),
            Default::default(),
            std::future::pending(),
        )
        .await;
    });
    let url = format!("https://localhost:{port}");
    let spool_at = dir.join("spool");
    let open = |ca_file: Option<std::path::PathBuf>| {
        let spool = Spool::open(
            &spool_at,
            SpoolLimits {
                max_batches: 100,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        Shipper::with_access(
            &url,
            spool,
            spool_at.clone(),
            Duration::from_secs(5),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
            CollectorAccess {
                token: None,
                ca_file,
            },
        )
        .unwrap()
    };
    let mut s = open(None);
    s.enqueue(&batch(3)).unwrap();
    match s.ship_one().await.unwrap() {
        ShipOutcome::Retry { reason, .. } => assert!(
            reason.contains("TLS") && reason.contains("certificate") && reason.contains("ca_file"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    drop(s);
    let mut s = open(Some(pki.join("ca.pem")));
    assert_eq!(
        s.ship_one().await.unwrap(),
        ShipOutcome::Sent {
            seq: 3,
            duplicate: false
        }
    );
    assert_eq!(*recorder.stored.lock().unwrap(), vec![3]);
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
