//! `bpmon-agent run`: the agent daemon, one module per role.
//!
//! - The *supervisor* (`supervisor.rs`) scans `/proc` every discovery interval. Each
//!   TaskManager JVM gets a sampling *worker* on a thread of its own (attach calls block); a JVM
//!   that exits ends its worker. The supervisor fetches the sampling plan from the collector
//!   (`POST /api/v1/plan`) every plan-refresh interval and whenever a new JVM appears, and hands
//!   each worker its part. While the collector cannot be reached, the last plan stays (the
//!   configured defaults before any).
//! - A *worker* (`worker.rs`) groups its JVM's task threads by their settings and runs each
//!   group's windows ([`crate::sampling::schedule`]); one dump serves every window due at that
//!   moment. Each finished window becomes a [`bpmon_proto::SampleReport`].
//! - The *batcher* (`batcher.rs`) puts finished reports into a [`bpmon_proto::ReportBatch`]
//!   with the next sequence number ([`crate::delivery::seq`]) and writes it to the spool at once.
//! - The *shipper* task ([`crate::delivery::shipper::ship_loop`]) sends the spool oldest first,
//!   with backoff; it logs when the collector goes down and when it is back. The spool logs what
//!   it drops when its bound is hit.
//! - On shutdown, workers end their windows early ("agent stopped after N of M samples"), the
//!   batcher spools them, and the shipper tries to send what is spooled for a short grace period;
//!   the rest waits in the spool for the next start.
//! - Under systemd (`Type=notify`, [`bpmon_telemetry::systemd`]) it says READY once these loops
//!   run and STOPPING when shutdown begins; with `WatchdogSec=` it pings the watchdog while the
//!   supervisor's loop keeps coming round.
//!
//! This module is the wiring: it opens the spool, starts the loops, and runs the shutdown in
//! order (workers, then batcher, then shipper). What `run` needs is in [`config`]; how the
//! collector's plan is applied, in [`plan`].

mod batcher;
pub mod config;
pub mod plan;
mod supervisor;
mod worker;

use std::future::Future;
use std::sync::Arc;

use bpmon_proto::SampleReport;
use bpmon_telemetry::systemd;
use thiserror::Error;
use tokio::sync::{mpsc as tmpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::delivery::access::AccessError;
use crate::delivery::collector::CollectorClient;
use crate::delivery::seq::SeqCounter;
use crate::delivery::shipper::{ship_loop, ShipError, Shipper, SpoolQueue};
use crate::delivery::spool::{Spool, SpoolError};
use batcher::{batch_loop, BatchIds};
use supervisor::Supervisor;

pub use config::{DaemonConfig, JvmSelect};
pub use plan::sanitize_plan;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Ship(#[from] ShipError),
    #[error("invalid default sampling settings: {0}")]
    Settings(#[from] bpmon_proto::SettingsProblem),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, String),
}

/// What a run did, for the caller's last log line (and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Batches written to the spool.
    pub batches: u64,
    /// Batches the collector acknowledged.
    pub shipped: u64,
    /// Batches still in the spool at exit.
    pub left_in_spool: usize,
    /// Workers that did not end within the grace period (a dump was hanging): their partial
    /// windows were lost.
    pub workers_abandoned: usize,
}

/// Runs the daemon until `shutdown` resolves, then ends windows, spools and ships for at most
/// `shutdown_grace`.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, DaemonError> {
    config.default_settings.validate()?;
    let (spool, seq) = open_spool(&config)?;
    let client = CollectorClient::new(
        &config.collector_url,
        config.request_timeout,
        config.access.clone(),
    )?;
    let shipper = Shipper::with_client(
        client.clone(),
        spool,
        config.spool_dir.clone(),
        config.ship_backoff.clone(),
    );
    tracing::info!(
        collector = %config.collector_url,
        agent_id = %config.agent_id,
        spool = %config.spool_dir.display(),
        "bpmon-agent running"
    );
    let grace = config.shutdown_grace;
    let mut loops = Loops::start(config, client, shipper, seq);
    let early_end = tokio::select! {
        _ = shutdown => None,
        r = &mut loops.supervisor => Some(r),
    };
    loops.shut_down(early_end, Instant::now() + grace).await
}

/// Opens the spool and the sequence counter above its newest batch; says when an earlier
/// run left batches.
fn open_spool(config: &DaemonConfig) -> Result<(Spool, SeqCounter), DaemonError> {
    let spool = Spool::open(&config.spool_dir, config.spool_limits)?;
    let spooled = spool.entries()?;
    config.metrics.observe_spool(&spooled, spool.dropped());
    let floor = spooled.last().map(|e| e.0).unwrap_or(0);
    let seq = SeqCounter::open(&config.spool_dir, floor)?;
    if !spooled.is_empty() {
        tracing::info!(
            batches = spooled.len(),
            "report batches from an earlier run are in the spool; sending them first"
        );
    }
    Ok((spool, seq))
}

/// The daemon's running loops and the signals that end them, in shutdown order.
struct Loops {
    supervisor: JoinHandle<usize>,
    batcher: JoinHandle<u64>,
    shipping: JoinHandle<u64>,
    watchdog: Option<JoinHandle<()>>,
    queue: SpoolQueue,
    /// Tells the supervisor (and through it the workers) to stop.
    stop: watch::Sender<bool>,
    /// Tells the batcher that no new report comes: spool what is buffered and end.
    flush: oneshot::Sender<()>,
    /// Tells the shipper to ship what is spooled until this deadline, then end.
    drain: oneshot::Sender<Instant>,
}

impl Loops {
    /// Starts the batcher, the shipper and the supervisor; tells systemd it is ready.
    fn start(
        config: DaemonConfig,
        client: CollectorClient,
        shipper: Shipper,
        seq: SeqCounter,
    ) -> Loops {
        let (report_tx, report_rx) = tmpsc::unbounded_channel::<SampleReport>();
        let (stop, stop_rx) = watch::channel(false);
        let (flush, flush_rx) = oneshot::channel::<()>();
        let (drain, drain_rx) = oneshot::channel::<Instant>();
        let notify = Arc::new(Notify::new());
        let queue = shipper.queue();
        let ids = BatchIds {
            agent_id: config.agent_id.clone(),
            host_names: config.host_names.clone(),
            metrics: config.metrics.clone(),
        };
        let batcher = tokio::spawn(batch_loop(
            report_rx,
            flush_rx,
            seq,
            queue.clone(),
            ids,
            notify.clone(),
        ));
        let shipping = tokio::spawn(ship_loop(shipper, notify, drain_rx, config.metrics.clone()));
        let ready_status = format!(
            "sampling TaskManager JVMs, shipping to {}",
            config.collector_url
        );
        let supervisor_task = Supervisor::new(config, client, report_tx);
        let heartbeat = Arc::clone(&supervisor_task.heartbeat);
        let supervisor = tokio::spawn(supervisor_task.run(stop_rx));
        // Under systemd (Type=notify): ready once the loops run; the watchdog pings only while
        // the supervisor's loop keeps coming round (a discovery pass or plan request that hangs
        // for half the watchdog interval stops the pings, and systemd restarts the agent).
        let watchdog = systemd::spawn_watchdog(|interval| {
            heartbeat.probe("the agent's supervisor loop", interval / 2)
        });
        systemd::ready(&ready_status);
        Loops {
            supervisor,
            batcher,
            shipping,
            watchdog,
            queue,
            stop,
            flush,
            drain,
        }
    }

    /// Stops the loops in order: the supervisor and its workers (their windows end early), the
    /// batcher (every report spooled), the shipper (ships until `deadline`).
    /// `early_end`: the supervisor's result when it ended before it was told to stop.
    async fn shut_down(
        self,
        early_end: Option<Result<usize, tokio::task::JoinError>>,
        deadline: Instant,
    ) -> Result<RunSummary, DaemonError> {
        systemd::stopping("stopping: ending the windows in progress, spooling and shipping them");
        let _ = self.stop.send(true);
        let abandoned = match early_end {
            Some(r) => {
                // Only a panic ends the supervisor before it is told to stop.
                let e = r
                    .map(|_| "ended".to_string())
                    .unwrap_or_else(|e| e.to_string());
                tracing::error!(error = %e, "the supervisor task ended unexpectedly; stopping");
                0
            }
            None => self
                .supervisor
                .await
                .map_err(|e| DaemonError::Task("supervisor", e.to_string()))?,
        };
        // Every finished or ended window is in the channel now: spool it all.
        let _ = self.flush.send(());
        let batches = self
            .batcher
            .await
            .map_err(|e| DaemonError::Task("batcher", e.to_string()))?;
        let _ = self.drain.send(deadline);
        let shipped = self
            .shipping
            .await
            .map_err(|e| DaemonError::Task("shipper", e.to_string()))?;
        if let Some(w) = self.watchdog {
            w.abort();
        }
        let left_in_spool = self.queue.pending();
        if left_in_spool > 0 {
            tracing::info!(
                batches = left_in_spool,
                "report batches stay in the spool for the next start"
            );
        }
        Ok(RunSummary {
            batches,
            shipped,
            left_in_spool,
            workers_abandoned: abandoned,
        })
    }
}
