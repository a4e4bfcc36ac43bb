//! `bpmon-agent run`: the agent daemon.
//!
//! - A *supervisor* task scans `/proc` every discovery interval. Each TaskManager JVM gets a
//!   sampling *worker* on a thread of its own (attach calls block); a JVM that exits ends its
//!   worker. The supervisor fetches the sampling plan from the collector (`POST /api/v1/plan`)
//!   every plan-refresh interval and whenever a new JVM appears, and hands each worker its part.
//!   While the collector cannot be reached, the last plan stays (the configured defaults before
//!   any).
//! - A worker groups its JVM's task threads by their settings and runs each group's windows
//!   ([`crate::schedule`]); one dump serves every window due at that moment. Each finished window
//!   becomes a [`SampleReport`].
//! - The *batcher* puts finished reports into a [`ReportBatch`] with the next sequence number
//!   ([`crate::seq`]) and writes it to the spool at once.
//! - The *shipper* task sends the spool oldest first, with backoff; it logs when the collector
//!   goes down and when it is back. The spool logs what it drops when its bound is hit.
//! - On shutdown, workers end their windows early ("agent stopped after N of M samples"), the
//!   batcher spools them, and the shipper tries to send what is spooled for a short grace period;
//!   the rest waits in the spool for the next start.
//! - Under systemd (`Type=notify`, [`bpmon_telemetry::systemd`]) it says READY once these loops
//!   run and STOPPING when shutdown begins; with `WatchdogSec=` it pings the watchdog while the
//!   supervisor's loop keeps coming round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use bpmon_proto::{
    AgentPlan, JvmPlan, PlanJvm, PlanRequest, ReportBatch, SampleReport, SamplingSettings,
    SCHEMA_VERSION,
};
use bpmon_stacks::classify::Classifier;
use bpmon_telemetry::systemd::{self, Heartbeat};
use thiserror::Error;
use tokio::sync::{mpsc as tmpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::access::{self, AccessError, CollectorAccess};
use crate::attach::{AttachError, AttachOptions};
use crate::discovery::{JvmProcess, ProcFs};
use crate::hsperf::SafepointProbe;
use crate::jvmti::{JvmtiError, JvmtiOptions};
use crate::metrics::AgentMetrics;
use crate::sampler::{
    now_ms, take_dump, Backend, BackendKind, DumpError, DumpThread, Progress, Window,
};
use crate::schedule::{self, Scheduler, WindowId};
use crate::seq::SeqCounter;
use crate::shipper::{Backoff, ShipError, ShipOutcome, Shipper, SpoolQueue};
use crate::spool::{Spool, SpoolError, SpoolLimits};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Ship(#[from] ShipError),
    #[error("invalid default sampling settings: {0}")]
    Settings(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, String),
}

/// Which TaskManager JVMs the daemon samples.
#[derive(Clone, Default)]
pub enum JvmSelect {
    /// Every TaskManager JVM on the host.
    #[default]
    All,
    /// Only TaskManagers with these host pids.
    Pids(Vec<u32>),
    /// Only TaskManagers the function accepts.
    Matching(Arc<dyn Fn(&JvmProcess) -> bool + Send + Sync>),
}

impl JvmSelect {
    fn accepts(&self, jvm: &JvmProcess) -> bool {
        match self {
            JvmSelect::All => true,
            JvmSelect::Pids(pids) => pids.contains(&jvm.pid),
            JvmSelect::Matching(f) => f(jvm),
        }
    }
}

impl std::fmt::Debug for JvmSelect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JvmSelect::All => write!(f, "All"),
            JvmSelect::Pids(p) => write!(f, "Pids({p:?})"),
            JvmSelect::Matching(_) => write!(f, "Matching(..)"),
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Base URL of the collector.
    pub collector_url: String,
    /// The token sent to the collector and the CA trusted for it.
    pub access: CollectorAccess,
    pub agent_id: String,
    /// Host name and addresses, sent with every batch and plan request.
    pub host_names: Vec<String>,
    pub spool_dir: PathBuf,
    pub spool_limits: SpoolLimits,
    pub discovery_interval: Duration,
    pub plan_refresh_interval: Duration,
    /// Time limit of one request to the collector.
    pub request_timeout: Duration,
    /// Settings until the collector's plan answers.
    pub default_settings: SamplingSettings,
    pub top_frames: usize,
    pub backend: BackendKind,
    pub attach: AttachOptions,
    /// The in-process backend's library and depth (`backend = jvmti`).
    pub jvmti: JvmtiOptions,
    pub classifier: Arc<Classifier>,
    pub proc: ProcFs,
    pub select: JvmSelect,
    /// Waits between shipping attempts while the collector is down.
    pub ship_backoff: Backoff,
    /// How long shutdown may take: ending windows, spooling them, shipping.
    pub shutdown_grace: Duration,
    /// What the daemon counts (`GET /metrics` serves it when a listener is configured).
    pub metrics: Arc<AgentMetrics>,
}

impl DaemonConfig {
    /// A configuration with the documented defaults (see `packaging/agent.toml`).
    pub fn new(collector_url: impl Into<String>, agent_id: impl Into<String>) -> DaemonConfig {
        DaemonConfig {
            collector_url: collector_url.into(),
            access: CollectorAccess::default(),
            agent_id: agent_id.into(),
            host_names: Vec::new(),
            spool_dir: PathBuf::from("/var/lib/bpmon-agent/spool"),
            spool_limits: SpoolLimits {
                max_batches: 10_000,
                max_bytes: 256 << 20,
            },
            discovery_interval: Duration::from_secs(10),
            plan_refresh_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            default_settings: SamplingSettings::default(),
            top_frames: 5,
            backend: BackendKind::Attach,
            attach: AttachOptions::default(),
            jvmti: JvmtiOptions::default(),
            classifier: Arc::new(Classifier::new()),
            proc: ProcFs::default(),
            select: JvmSelect::All,
            ship_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(5),
            metrics: Arc::new(AgentMetrics::new()),
        }
    }
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

/// Settings a plan may not set: no sampling more often than this.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// Why settings from the collector cannot be used, if they cannot.
pub fn check_settings(s: &SamplingSettings) -> Result<(), String> {
    s.validate()?;
    if s.interval_ms < MIN_INTERVAL_MS {
        return Err(format!(
            "interval {} ms is below the agent's minimum of {MIN_INTERVAL_MS} ms",
            s.interval_ms
        ));
    }
    Ok(())
}

/// The plan as the agent applies it: a default that can be used (the configured one otherwise),
/// and only task entries whose settings can be used (the others fall back to the default).
pub fn sanitize_plan(mut plan: AgentPlan, configured: SamplingSettings) -> AgentPlan {
    if let Err(e) = check_settings(&plan.default) {
        tracing::warn!(error = %e, "the collector's default settings cannot be used; keeping the configured ones");
        plan.default = configured;
    }
    for jvm in &mut plan.jvms {
        jvm.tasks.retain(|t| match check_settings(&t.settings) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job = %t.job_id, task = %t.identity.task, error = %e,
                    "the collector's settings for a task cannot be used; it gets the default");
                false
            }
        });
    }
    plan
}

/// Runs the daemon until `shutdown` resolves, then ends windows, spools and ships for at most
/// `shutdown_grace`.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, DaemonError> {
    config
        .default_settings
        .validate()
        .map_err(DaemonError::Settings)?;
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
    let shipper = Shipper::with_access(
        &config.collector_url,
        spool,
        config.spool_dir.clone(),
        config.request_timeout,
        config.ship_backoff.clone(),
        config.access.clone(),
    )?;
    let queue = shipper.queue();
    let client = access::client(config.request_timeout, &config.access)?;
    tracing::info!(
        collector = %config.collector_url,
        agent_id = %config.agent_id,
        spool = %config.spool_dir.display(),
        "bpmon-agent running"
    );

    let (report_tx, report_rx) = tmpsc::unbounded_channel::<SampleReport>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (flush_tx, flush_rx) = oneshot::channel::<()>();
    let (drain_tx, drain_rx) = oneshot::channel::<Instant>();
    let notify = Arc::new(Notify::new());

    let batcher = tokio::spawn(batch_loop(
        report_rx,
        flush_rx,
        seq,
        queue.clone(),
        BatchIds {
            agent_id: config.agent_id.clone(),
            host_names: config.host_names.clone(),
            metrics: config.metrics.clone(),
        },
        notify.clone(),
    ));
    let shipping = tokio::spawn(ship_loop(
        shipper,
        notify.clone(),
        drain_rx,
        config.metrics.clone(),
    ));
    let grace = config.shutdown_grace;
    let ready_status = format!(
        "sampling TaskManager JVMs, shipping to {}",
        config.collector_url
    );
    let supervisor_task = Supervisor::new(config, client, report_tx);
    let heartbeat = Arc::clone(&supervisor_task.heartbeat);
    let mut supervisor = tokio::spawn(supervisor_task.run(stop_rx));
    // Under systemd (Type=notify): ready once the loops run; the watchdog pings only while the
    // supervisor's loop keeps coming round (a discovery pass or plan request that hangs for
    // half the watchdog interval stops the pings, and systemd restarts the agent).
    let watchdog = systemd::spawn_watchdog(|interval| {
        heartbeat.probe("the agent's supervisor loop", interval / 2)
    });
    systemd::ready(&ready_status);

    let early_end = tokio::select! {
        _ = shutdown => None,
        r = &mut supervisor => Some(r),
    };
    let deadline = Instant::now() + grace;
    systemd::stopping("stopping: ending the windows in progress, spooling and shipping them");
    let _ = stop_tx.send(true);
    let abandoned = match early_end {
        Some(r) => {
            // Only a panic ends the supervisor before it is told to stop.
            let e = r
                .map(|_| "ended".to_string())
                .unwrap_or_else(|e| e.to_string());
            tracing::error!(error = %e, "the supervisor task ended unexpectedly; stopping");
            0
        }
        None => supervisor
            .await
            .map_err(|e| DaemonError::Task("supervisor", e.to_string()))?,
    };
    // Every finished or ended window is in the channel now: spool it all.
    let _ = flush_tx.send(());
    let batches = batcher
        .await
        .map_err(|e| DaemonError::Task("batcher", e.to_string()))?;
    let _ = drain_tx.send(deadline);
    let shipped = shipping
        .await
        .map_err(|e| DaemonError::Task("shipper", e.to_string()))?;
    if let Some(w) = watchdog {
        w.abort();
    }
    let left_in_spool = queue.lock().entries().map(|e| e.len()).unwrap_or(0);
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

struct BatchIds {
    agent_id: String,
    host_names: Vec<String>,
    metrics: Arc<AgentMetrics>,
}

/// Turns finished reports into batches and spools each at once. Ends when every sender is gone,
/// or, once flushed, when the channel holds nothing more. Returns the batches spooled.
async fn batch_loop(
    mut rx: tmpsc::UnboundedReceiver<SampleReport>,
    mut flush: oneshot::Receiver<()>,
    mut seq: SeqCounter,
    queue: SpoolQueue,
    ids: BatchIds,
    notify: Arc<Notify>,
) -> u64 {
    let ids = Arc::new(ids);
    let mut flushing = false;
    let mut batches = 0;
    loop {
        let first = if flushing {
            rx.recv().await
        } else {
            tokio::select! {
                r = rx.recv() => r,
                _ = &mut flush => {
                    // No new reports; what is buffered is still received.
                    flushing = true;
                    rx.close();
                    continue;
                }
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut reports = vec![first];
        while let Ok(r) = rx.try_recv() {
            reports.push(r);
        }
        let queue2 = queue.clone();
        let ids2 = ids.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = spool_batch(&mut seq, &queue2, &ids2, reports);
            (seq, result)
        })
        .await;
        match joined {
            Ok((s, result)) => {
                seq = s;
                match result {
                    Ok(n) => {
                        batches += 1;
                        tracing::debug!(seq = n, "report batch spooled");
                        notify.notify_one();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot spool a report batch; its reports are lost")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spooling task failed; stopping the batcher");
                break;
            }
        }
    }
    batches
}

fn spool_batch(
    seq: &mut SeqCounter,
    queue: &SpoolQueue,
    ids: &BatchIds,
    reports: Vec<SampleReport>,
) -> Result<u64, ShipError> {
    let n = seq.claim()?;
    let batch = ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: ids.agent_id.clone(),
        seq: n,
        host_names: ids.host_names.clone(),
        created_at_ms: now_ms(),
        dropped_before: queue.lock().dropped(),
        reports,
    };
    queue.enqueue(&batch)?;
    observe_spool(&ids.metrics, &queue.lock());
    Ok(n)
}

/// The spool's size and drops, for the metrics.
fn observe_spool(metrics: &AgentMetrics, spool: &Spool) {
    if let Ok(entries) = spool.entries() {
        metrics.observe_spool(&entries, spool.dropped());
    }
}

/// Sends the spool, oldest first, until told to drain; then ships until the spool is empty, the
/// collector fails, or the deadline. Returns the batches the collector acknowledged.
async fn ship_loop(
    mut shipper: Shipper,
    notify: Arc<Notify>,
    mut drain: oneshot::Receiver<Instant>,
    metrics: Arc<AgentMetrics>,
) -> u64 {
    let mut down = false;
    let mut shipped = 0u64;
    let deadline = loop {
        let outcome = tokio::select! {
            biased;
            d = &mut drain => break d.unwrap_or_else(|_| Instant::now()),
            o = shipper.ship_one() => o,
        };
        let wait = match outcome {
            Ok(ShipOutcome::Empty) => None,
            Ok(ShipOutcome::Sent { seq, duplicate }) => {
                shipped += 1;
                metrics.batch_sent();
                observe_spool(&metrics, &shipper.spool());
                if down {
                    down = false;
                    let pending = shipper.spool().entries().map(|e| e.len()).unwrap_or(0);
                    tracing::info!(
                        seq,
                        pending,
                        "collector is back; sending the spooled report batches"
                    );
                }
                tracing::debug!(seq, duplicate, "report batch delivered");
                continue;
            }
            Ok(ShipOutcome::Rejected { .. }) => {
                metrics.batch_rejected();
                observe_spool(&metrics, &shipper.spool());
                continue;
            }
            Ok(ShipOutcome::Retry { seq, after, reason }) => {
                metrics.batch_failed();
                if !down {
                    down = true;
                    let pending = shipper.spool().entries().map(|e| e.len()).unwrap_or(0);
                    tracing::warn!(seq, pending, %reason,
                        "collector unreachable; report batches wait in the spool and are retried with backoff");
                }
                Some(after)
            }
            // The shipper logged the cause; the batches wait in the spool.
            Ok(ShipOutcome::Unauthorized { after, .. }) => {
                metrics.batch_failed();
                Some(after)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot ship from the spool");
                Some(Duration::from_secs(1))
            }
        };
        let ended = match wait {
            None => tokio::select! {
                biased;
                d = &mut drain => Some(d.unwrap_or_else(|_| Instant::now())),
                _ = notify.notified() => None,
            },
            Some(after) => tokio::select! {
                biased;
                d = &mut drain => Some(d.unwrap_or_else(|_| Instant::now())),
                _ = tokio::time::sleep(after) => None,
            },
        };
        if let Some(d) = ended {
            break d;
        }
    };
    // Grace period: ship what is there, but never wait on a collector that is down.
    loop {
        match tokio::time::timeout_at(deadline, shipper.ship_one()).await {
            Ok(Ok(ShipOutcome::Sent { .. })) => {
                shipped += 1;
                metrics.batch_sent();
                observe_spool(&metrics, &shipper.spool());
            }
            Ok(Ok(ShipOutcome::Rejected { .. })) => {
                metrics.batch_rejected();
                observe_spool(&metrics, &shipper.spool());
            }
            Ok(Ok(ShipOutcome::Empty)) => break,
            Ok(Ok(ShipOutcome::Retry { reason, .. })) => {
                metrics.batch_failed();
                tracing::warn!(%reason, "collector unreachable at shutdown");
                break;
            }
            Ok(Ok(ShipOutcome::Unauthorized { .. })) => {
                metrics.batch_failed();
                break;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot ship from the spool");
                break;
            }
            Err(_) => {
                tracing::warn!("shutdown grace period over while shipping");
                break;
            }
        }
    }
    shipped
}

// ---------------------------------------------------------------------------------------------
// Supervisor: discovery, plan, workers.

/// What a worker is told.
#[derive(Debug)]
enum Control {
    /// New plan for this JVM (`None`: the plan does not place it) and the default settings.
    Plan {
        plan: Option<JvmPlan>,
        default: SamplingSettings,
    },
    /// Fresh discovery data (its listening ports may have changed).
    Jvm(Box<JvmProcess>),
    /// End every window now and exit.
    Stop(StopReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// The agent is stopping.
    Shutdown,
    /// Discovery no longer sees the JVM.
    Vanished,
}

/// How a worker ended.
#[derive(Debug)]
enum WorkerEnd {
    /// Told to stop.
    Stopped,
    /// The JVM went away.
    Gone,
    /// It could not sample the JVM (a permanent error), after `dumps` successful dumps.
    Failed { error: String, dumps: u64 },
}

struct WorkerHandle {
    control: mpsc::Sender<Control>,
    thread: std::thread::JoinHandle<WorkerEnd>,
    /// The plan it was last given.
    sent: (Option<JvmPlan>, SamplingSettings),
    jvm: JvmProcess,
}

/// When to try a JVM again after its worker failed.
struct RetryAt {
    at: Instant,
    failures: u32,
    last_error: String,
}

/// How long a new JVM without a SIGQUIT handler is left to start before it is attached anyway.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// Longest wait before trying a failing JVM again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(600);

/// How often the supervisor's loop beats when nothing else wakes it (for the watchdog).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

struct Supervisor {
    config: DaemonConfig,
    client: reqwest::Client,
    plan_url: String,
    reports: tmpsc::UnboundedSender<SampleReport>,
    plan: Option<AgentPlan>,
    plan_reachable: Option<bool>,
    jvms: BTreeMap<u32, JvmProcess>,
    workers: HashMap<u32, WorkerHandle>,
    retry: HashMap<u32, RetryAt>,
    /// New JVMs waiting for their SIGQUIT handler: when each was first seen.
    starting: HashMap<u32, Instant>,
    /// Beats each time the loop comes round: the systemd watchdog's proof of life.
    heartbeat: Arc<Heartbeat>,
}

impl Supervisor {
    fn new(
        config: DaemonConfig,
        client: reqwest::Client,
        reports: tmpsc::UnboundedSender<SampleReport>,
    ) -> Supervisor {
        let plan_url = format!("{}/api/v1/plan", config.collector_url.trim_end_matches('/'));
        Supervisor {
            config,
            client,
            plan_url,
            reports,
            plan: None,
            plan_reachable: None,
            jvms: BTreeMap::new(),
            workers: HashMap::new(),
            retry: HashMap::new(),
            starting: HashMap::new(),
            heartbeat: Arc::new(Heartbeat::new()),
        }
    }

    /// Runs until `stop`; then stops the workers and waits for them for half the grace period.
    /// Returns the workers that did not end in time.
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> usize {
        let mut discovery = tokio::time::interval(self.config.discovery_interval);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = self.config.plan_refresh_interval;
        let mut plan_tick = tokio::time::interval_at(Instant::now() + every, every);
        plan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.heartbeat.beat();
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = beat.tick() => {}
                _ = discovery.tick() => {
                    let refreshed = tokio::select! {
                        _ = stopped(&mut stop) => break,
                        r = self.discover() => r,
                    };
                    if refreshed {
                        plan_tick.reset();
                    }
                }
                _ = plan_tick.tick() => {
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        _ = self.refresh_plan() => {}
                    }
                    self.distribute_plan();
                }
            }
        }
        self.stop_workers(self.config.shutdown_grace / 2).await
    }

    /// One discovery pass. Returns whether it fetched the plan.
    async fn discover(&mut self) -> bool {
        let proc = self.config.proc.clone();
        let found = match tokio::task::spawn_blocking(move || proc.taskmanagers()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "discovery failed");
                return false;
            }
        };
        let found: BTreeMap<u32, JvmProcess> = found
            .into_iter()
            .filter(|j| self.config.select.accepts(j))
            .map(|j| (j.pid, j))
            .collect();
        self.reap(&found);
        let now = Instant::now();
        // JVMs that went away: their workers end their windows.
        for (pid, w) in &self.workers {
            if !found.contains_key(pid) {
                tracing::info!(pid, "TaskManager JVM is gone");
                let _ = w.control.send(Control::Stop(StopReason::Vanished));
            }
        }
        self.retry.retain(|pid, _| found.contains_key(pid));
        self.starting.retain(|pid, _| found.contains_key(pid));
        let mut new = Vec::new();
        for (pid, jvm) in &found {
            if self.workers.contains_key(pid) || self.retry.get(pid).is_some_and(|r| r.at > now) {
                continue;
            }
            // A JVM without a SIGQUIT handler is still starting (or runs with -Xrs, whose
            // listener is up from the start): give it a moment before the first attach.
            if !jvm.sigquit_caught {
                let first_seen = *self.starting.entry(*pid).or_insert(now);
                if now.duration_since(first_seen) < STARTUP_GRACE {
                    continue;
                }
            }
            self.starting.remove(pid);
            new.push(*pid);
        }
        // Ports and resource id are what the collector places a JVM by: a change is news.
        let mut changed = false;
        for (pid, w) in &mut self.workers {
            if let Some(j) = found.get(pid) {
                if j.listen_ports != w.jvm.listen_ports
                    || j.resource_id != w.jvm.resource_id
                    || j.network != w.jvm.network
                {
                    changed = true;
                    w.jvm = j.clone();
                    let _ = w.control.send(Control::Jvm(Box::new(j.clone())));
                }
            }
        }
        self.jvms = found;
        let refreshed = !new.is_empty() || changed;
        if refreshed {
            self.refresh_plan().await;
        }
        self.distribute_plan();
        for pid in new {
            let Some(jvm) = self.jvms.get(&pid).cloned() else {
                continue;
            };
            if !self.retry.contains_key(&pid) {
                tracing::info!(pid, main_class = %jvm.main_class, user = jvm.user.as_deref().unwrap_or("?"),
                    "sampling TaskManager JVM");
            }
            self.spawn_worker(jvm);
        }
        self.config.metrics.set_jvms(self.workers.len());
        refreshed
    }

    /// Collects workers that ended by themselves, and schedules retries for failed ones.
    fn reap(&mut self, found: &BTreeMap<u32, JvmProcess>) {
        let done: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.thread.is_finished())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in done {
            let Some(w) = self.workers.remove(&pid) else {
                continue;
            };
            let end = w.thread.join().unwrap_or_else(|p| WorkerEnd::Failed {
                error: format!("sampling thread panicked: {}", panic_message(&p)),
                dumps: 0,
            });
            match end {
                WorkerEnd::Stopped => {}
                WorkerEnd::Gone => {
                    if found.contains_key(&pid) {
                        // The pid is a TaskManager again (reused): try at once.
                        self.retry.remove(&pid);
                    }
                }
                WorkerEnd::Failed { error, dumps } => {
                    let prev = self.retry.remove(&pid);
                    let failures = match (&prev, dumps) {
                        (Some(p), 0) => p.failures + 1,
                        _ => 1,
                    };
                    let wait = self
                        .config
                        .discovery_interval
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(MAX_RETRY_WAIT);
                    if prev.as_ref().is_none_or(|p| p.last_error != error) {
                        tracing::warn!(pid, %error, retry_in = ?wait, "cannot sample TaskManager JVM");
                    } else {
                        tracing::debug!(pid, %error, retry_in = ?wait, "cannot sample TaskManager JVM");
                    }
                    self.retry.insert(
                        pid,
                        RetryAt {
                            at: Instant::now() + wait,
                            failures,
                            last_error: error,
                        },
                    );
                }
            }
        }
    }

    fn spawn_worker(&mut self, jvm: JvmProcess) {
        let pid = jvm.pid;
        let sent = self.plan_for(pid);
        let (control, control_rx) = mpsc::channel();
        let worker = Worker {
            jvm: jvm.clone(),
            backend: self.config.backend,
            attach: self.config.attach,
            jvmti: self.config.jvmti.clone(),
            proc: self.config.proc.clone(),
            classifier: self.config.classifier.clone(),
            top_frames: self.config.top_frames,
            plan: sent.0.clone(),
            default: sent.1,
            reports: self.reports.clone(),
            control: control_rx,
            metrics: self.config.metrics.clone(),
        };
        match std::thread::Builder::new()
            .name(format!("bpmon-sample-{pid}"))
            .spawn(move || worker.run())
        {
            Ok(thread) => {
                self.workers.insert(
                    pid,
                    WorkerHandle {
                        control,
                        thread,
                        sent,
                        jvm,
                    },
                );
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot start a sampling thread");
            }
        }
    }

    /// The plan for one JVM and the default, as things stand.
    fn plan_for(&self, pid: u32) -> (Option<JvmPlan>, SamplingSettings) {
        match &self.plan {
            Some(p) => (p.jvms.iter().find(|j| j.pid == pid).cloned(), p.default),
            None => (None, self.config.default_settings),
        }
    }

    /// Gives each worker its part of the plan, if it changed.
    fn distribute_plan(&mut self) {
        let pids: Vec<u32> = self.workers.keys().copied().collect();
        for pid in pids {
            let part = self.plan_for(pid);
            let Some(w) = self.workers.get_mut(&pid) else {
                continue;
            };
            if w.sent != part {
                let tasks = part.0.as_ref().map(|p| p.tasks.len()).unwrap_or(0);
                tracing::info!(pid, tasks_with_job_settings = tasks, default = ?part.1,
                    "new sampling plan for TaskManager JVM");
                let _ = w.control.send(Control::Plan {
                    plan: part.0.clone(),
                    default: part.1,
                });
                w.sent = part;
            }
        }
    }

    /// Asks the collector for the plan; keeps the last one when it cannot answer.
    async fn refresh_plan(&mut self) {
        let request = PlanRequest {
            agent_id: self.config.agent_id.clone(),
            host_names: self.config.host_names.clone(),
            jvms: self
                .jvms
                .values()
                .map(|j| PlanJvm {
                    pid: j.pid,
                    resource_id: j.resource_id.clone(),
                    resource_id_source: j.resource_id_source,
                    listen_ports: j.listen_ports.clone(),
                    network: Some(j.network.clone()),
                })
                .collect(),
        };
        match self.fetch_plan(&request).await {
            Ok(plan) => {
                if self.plan_reachable == Some(false) {
                    tracing::info!("collector answers the plan request again");
                }
                self.plan_reachable = Some(true);
                self.plan = Some(sanitize_plan(plan, self.config.default_settings));
            }
            Err(e) => {
                if self.plan_reachable != Some(false) {
                    let keeping = if self.plan.is_some() {
                        "keeping the last plan"
                    } else {
                        "sampling with the configured settings"
                    };
                    tracing::warn!(error = %e, "cannot fetch the sampling plan; {keeping}");
                }
                self.plan_reachable = Some(false);
            }
        }
    }

    async fn fetch_plan(&self, request: &PlanRequest) -> Result<AgentPlan, String> {
        let resp = self
            .client
            .post(&self.plan_url)
            .json(request)
            .send()
            .await
            .map_err(|e| format!("POST {}: {}", self.plan_url, describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let hint = if access::is_auth_refusal(status) {
                format!(": {}", access::auth_refusal_hint(&self.config.access))
            } else {
                String::new()
            };
            return Err(format!(
                "POST {}: HTTP {status}: {}{hint}",
                self.plan_url,
                text.trim()
            ));
        }
        resp.json::<AgentPlan>()
            .await
            .map_err(|e| format!("POST {}: not a plan: {e}", self.plan_url))
    }

    /// Tells every worker to stop and waits up to `wait` for them. Returns how many did not end.
    async fn stop_workers(&mut self, wait: Duration) -> usize {
        for w in self.workers.values() {
            let _ = w.control.send(Control::Stop(StopReason::Shutdown));
        }
        let until = Instant::now() + wait;
        while Instant::now() < until && self.workers.values().any(|w| !w.thread.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut abandoned = 0;
        for (pid, w) in self.workers.drain() {
            if w.thread.is_finished() {
                let _ = w.thread.join();
            } else {
                abandoned += 1;
                tracing::warn!(
                    pid,
                    "a thread dump was still under way at shutdown; that JVM's partial windows are lost"
                );
            }
        }
        abandoned
    }
}

/// A request error in a few words: reqwest's own message leaves out the cause.
fn describe(e: &reqwest::Error) -> String {
    if let Some(tls) = access::tls_failure(e) {
        return tls;
    }
    if e.is_connect() {
        return "cannot connect (collector down?)".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

// ---------------------------------------------------------------------------------------------
// Worker: one JVM's windows.

/// A thread's key within a window: its name and JVM thread id.
type ThreadKey = (String, Option<u64>);

fn key_of(t: &DumpThread) -> ThreadKey {
    (t.name.clone(), t.java_id)
}

struct OpenWindow {
    window: Window,
    settings: SamplingSettings,
    /// Threads counted so far: a thread whose settings change mid-window stays in the window it
    /// started in until that window ends (and joins its new group's windows too).
    members: HashSet<ThreadKey>,
}

struct Worker {
    jvm: JvmProcess,
    backend: BackendKind,
    attach: AttachOptions,
    jvmti: JvmtiOptions,
    proc: ProcFs,
    classifier: Arc<Classifier>,
    top_frames: usize,
    plan: Option<JvmPlan>,
    default: SamplingSettings,
    reports: tmpsc::UnboundedSender<SampleReport>,
    control: mpsc::Receiver<Control>,
    metrics: Arc<AgentMetrics>,
}

impl Worker {
    /// The configured backend; for the in-process one, the attach backend when the JVM cannot
    /// run it (an old JDK, dynamic loading forbidden, no library), said once in the log and
    /// counted as that failure.
    fn open_backend(&self) -> Result<Backend, DumpError> {
        let open = |kind| Backend::open(kind, &self.jvm, &self.proc, self.attach, &self.jvmti);
        match open(self.backend) {
            Err(e)
                if self.backend == BackendKind::Jvmti
                    && !matches!(
                        e,
                        DumpError::Jvmti(JvmtiError::Attach(AttachError::Gone { .. }))
                    ) =>
            {
                self.metrics.dump_failed(e.reason());
                tracing::warn!(
                    pid = self.jvm.pid,
                    error = %e,
                    "in-process sampler unavailable; sampling this JVM with the attach backend"
                );
                open(BackendKind::Attach)
            }
            other => {
                if let Ok(Backend::Jvmti(client)) = &other {
                    if let Some(h) = client.hello() {
                        tracing::info!(
                            pid = self.jvm.pid,
                            loaded = client.loaded_it(),
                            library = %h.library_version,
                            vm = %h.vm_version,
                            starts = h.starts,
                            "sampling with the in-process sampler"
                        );
                    }
                }
                other
            }
        }
    }

    fn run(mut self) -> WorkerEnd {
        let pid = self.jvm.pid;
        let mut backend = match self.open_backend() {
            Ok(b) => b,
            Err(e) => {
                self.metrics.dump_failed(e.reason());
                let end = ended_by(&e, 0);
                if !matches!(end, WorkerEnd::Gone) {
                    // Say it in the data too: the collector shows why this JVM has no samples.
                    let mut w = Window::new(
                        &self.jvm,
                        self.default.samples,
                        Duration::from_millis(self.default.delay_ms),
                        self.top_frames,
                    );
                    w.error(format!("cannot sample JVM pid {pid}: {e}"));
                    self.send(w.finish(&self.jvm, self.backend));
                }
                return end;
            }
        };
        let probe = self
            .jvm
            .perf_file
            .as_deref()
            .and_then(|p| SafepointProbe::open(p).ok());
        let origin = std::time::Instant::now();
        let mut sched = Scheduler::default();
        let mut windows: HashMap<WindowId, OpenWindow> = HashMap::new();
        let mut threads: Vec<bpmon_proto::TaskIdentity> = Vec::new();
        let mut dumps: u64 = 0;
        sched.set_wanted(
            Duration::ZERO,
            &schedule::wanted_groups(&threads, self.plan.as_ref(), self.default),
        );
        loop {
            // Orders first, then wait for the next due dump (or an order).
            loop {
                let msg = match sched.next_due() {
                    None => self
                        .control
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                    Some(due) => {
                        let now = origin.elapsed();
                        if due <= now {
                            match self.control.try_recv() {
                                Ok(m) => Ok(m),
                                Err(mpsc::TryRecvError::Empty) => break,
                                Err(mpsc::TryRecvError::Disconnected) => {
                                    Err(RecvTimeoutError::Disconnected)
                                }
                            }
                        } else {
                            self.control.recv_timeout(due - now)
                        }
                    }
                };
                let order = match msg {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => break,
                    // The supervisor is gone: the agent is stopping.
                    Err(RecvTimeoutError::Disconnected) => Control::Stop(StopReason::Shutdown),
                };
                match order {
                    Control::Plan { plan, default } => {
                        self.plan = plan;
                        self.default = default;
                        sched.set_wanted(
                            origin.elapsed(),
                            &schedule::wanted_groups(&threads, self.plan.as_ref(), self.default),
                        );
                    }
                    Control::Jvm(j) => self.jvm = *j,
                    Control::Stop(reason) => {
                        let why = match reason {
                            StopReason::Shutdown => "agent stopped",
                            StopReason::Vanished => "JVM no longer running: stopped",
                        };
                        self.end_all(&mut sched, &mut windows, &backend, |served, samples| {
                            format!("{why} after {served} of {samples} samples")
                        });
                        return WorkerEnd::Stopped;
                    }
                }
            }

            let slots = sched.take(origin.elapsed());
            if slots.is_empty() {
                continue;
            }
            for s in slots.iter().filter(|s| s.opens) {
                windows.insert(
                    s.window,
                    OpenWindow {
                        window: Window::new(
                            &self.jvm,
                            s.settings.samples,
                            Duration::from_millis(s.settings.delay_ms),
                            self.top_frames,
                        ),
                        settings: s.settings,
                        members: HashSet::new(),
                    },
                );
            }
            let dump = take_dump(probe.as_ref(), &mut backend, &self.classifier);
            match &dump.result {
                Ok(_) => self.metrics.dump_taken(dump.took + dump.parse),
                Err(e) => self.metrics.dump_failed(e.reason()),
            }
            // Each task thread's settings, once per dump.
            let thread_settings: HashMap<ThreadKey, SamplingSettings> = match &dump.result {
                Ok(d) => d
                    .threads
                    .iter()
                    .filter_map(|t| {
                        let id = t.identity()?;
                        Some((
                            key_of(t),
                            schedule::settings_of(&id, self.plan.as_ref(), self.default),
                        ))
                    })
                    .collect(),
                Err(_) => HashMap::new(),
            };
            for s in &slots {
                let Some(open) = windows.get_mut(&s.window) else {
                    continue;
                };
                let joining: Vec<ThreadKey> = thread_settings
                    .iter()
                    .filter(|(_, st)| **st == open.settings)
                    .map(|(k, _)| k.clone())
                    .collect();
                open.members.extend(joining);
                let members = &open.members;
                let progress = open.window.record(&dump, |t| members.contains(&key_of(t)));
                if s.closes || progress == Progress::Stop {
                    if !s.closes {
                        sched.abort(s.window);
                    }
                    if let Some(done) = windows.remove(&s.window) {
                        self.send(done.window.finish(&self.jvm, backend.kind()));
                    }
                }
            }
            match &dump.result {
                Ok(d) => {
                    dumps += 1;
                    threads = d.threads.iter().filter_map(DumpThread::identity).collect();
                    sched.set_wanted(
                        origin.elapsed(),
                        &schedule::wanted_groups(&threads, self.plan.as_ref(), self.default),
                    );
                }
                Err(e) if e.is_permanent() => {
                    let message = e.to_string();
                    self.end_all(&mut sched, &mut windows, &backend, |served, samples| {
                        format!("stopped after {served} of {samples} samples: {message}")
                    });
                    return ended_by(e, dumps);
                }
                Err(_) => {}
            }
        }
    }

    /// Ends every open window with an error saying why, and sends their reports.
    fn end_all(
        &self,
        sched: &mut Scheduler,
        windows: &mut HashMap<WindowId, OpenWindow>,
        backend: &Backend,
        why: impl Fn(u32, u32) -> String,
    ) {
        for (id, _, served) in sched.abort_all() {
            if let Some(mut open) = windows.remove(&id) {
                open.window.error(why(served, open.settings.samples));
                self.send(open.window.finish(&self.jvm, backend.kind()));
            }
        }
        // Windows the scheduler no longer knew of (none expected): still reported.
        for (_, mut open) in windows.drain() {
            open.window
                .error(why(open.window.slots(), open.settings.samples));
            self.send(open.window.finish(&self.jvm, backend.kind()));
        }
    }

    fn send(&self, report: SampleReport) {
        if self.reports.send(report).is_err() {
            tracing::debug!(pid = self.jvm.pid, "report dropped: the batcher has ended");
        }
    }
}

fn ended_by(e: &DumpError, dumps: u64) -> WorkerEnd {
    match e {
        DumpError::Attach(AttachError::Gone { .. }) => WorkerEnd::Gone,
        _ => WorkerEnd::Failed {
            error: e.to_string(),
            dumps,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpmon_proto::{TaskIdentity, TaskPlan};

    fn s(samples: u32, delay_ms: u64, interval_ms: u64) -> SamplingSettings {
        SamplingSettings {
            samples,
            delay_ms,
            interval_ms,
        }
    }

    #[test]
    fn unusable_plan_settings_fall_back_to_the_default() {
        let configured = s(10, 100, 10_000);
        let task = |settings| TaskPlan {
            job_id: "j".into(),
            identity: TaskIdentity {
                task: "Map".into(),
                subtask: 0,
                parallelism: 1,
                attempt: Some(0),
            },
            settings,
        };
        let plan = AgentPlan {
            // A window longer than its interval.
            default: s(100, 50, 1_000),
            jvms: vec![JvmPlan {
                pid: 1,
                taskmanager_id: None,
                why: None,
                tasks: vec![
                    task(s(5, 10, 2_000)),
                    task(s(1, 0, 10)),
                    task(s(0, 10, 5_000)),
                ],
            }],
        };
        let p = sanitize_plan(plan, configured);
        assert_eq!(p.default, configured);
        assert_eq!(p.jvms[0].tasks.len(), 1);
        assert_eq!(p.jvms[0].tasks[0].settings, s(5, 10, 2_000));
    }
}
