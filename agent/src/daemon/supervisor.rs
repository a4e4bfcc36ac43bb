//! The supervisor: the daemon's one async loop over discovery, the collector's plan and the
//! workers.
//!
//! Every discovery interval it scans `/proc`; each TaskManager JVM gets a [`Worker`] on a
//! thread of its own, and a JVM that exits ends its worker. It asks the collector for the
//! sampling plan (`POST /api/v1/plan`) every plan-refresh interval and whenever a new JVM
//! appears or a JVM's placement data changes, and hands each worker its part. While the
//! collector cannot be reached, the last plan stays (the configured defaults before any). A
//! worker that fails is tried again later, with a doubling wait.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bpmon_proto::{AgentPlan, JvmPlan, PlanJvm, PlanRequest, SampleReport, SamplingSettings};
use bpmon_telemetry::systemd::Heartbeat;
use tokio::sync::{mpsc as tmpsc, watch};
use tokio::time::Instant;

use super::config::DaemonConfig;
use super::plan::sanitize_plan;
use super::worker::{Control, StopReason, Worker, WorkerEnd};
use crate::backoff::doubled;
use crate::delivery::collector::CollectorClient;
use crate::discovery::JvmProcess;

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

pub(super) struct Supervisor {
    config: DaemonConfig,
    client: CollectorClient,
    reports: tmpsc::UnboundedSender<SampleReport>,
    plan: Option<AgentPlan>,
    plan_reachable: Option<bool>,
    jvms: BTreeMap<u32, JvmProcess>,
    workers: HashMap<u32, WorkerHandle>,
    retry: HashMap<u32, RetryAt>,
    /// New JVMs waiting for their SIGQUIT handler: when each was first seen.
    starting: HashMap<u32, Instant>,
    /// Beats each time the loop comes round: the systemd watchdog's proof of life.
    pub(super) heartbeat: Arc<Heartbeat>,
}

impl Supervisor {
    pub(super) fn new(
        config: DaemonConfig,
        client: CollectorClient,
        reports: tmpsc::UnboundedSender<SampleReport>,
    ) -> Supervisor {
        Supervisor {
            config,
            client,
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
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) -> usize {
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
        self.stop_vanished(&found);
        let new = self.ready_to_start(&found);
        let changed = self.note_changes(&found);
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

    /// Tells the workers of JVMs that went away to end their windows; forgets their retries.
    fn stop_vanished(&mut self, found: &BTreeMap<u32, JvmProcess>) {
        for (pid, w) in &self.workers {
            if !found.contains_key(pid) {
                tracing::info!(pid, "TaskManager JVM is gone");
                let _ = w.control.send(Control::Stop(StopReason::Vanished));
            }
        }
        self.retry.retain(|pid, _| found.contains_key(pid));
        self.starting.retain(|pid, _| found.contains_key(pid));
    }

    /// The JVMs found that need a worker now: none yet, no retry pending, and past their
    /// start-up grace.
    fn ready_to_start(&mut self, found: &BTreeMap<u32, JvmProcess>) -> Vec<u32> {
        let now = Instant::now();
        let mut new = Vec::new();
        for (pid, jvm) in found {
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
        new
    }

    /// Gives workers their JVM's fresh discovery data when what the collector places a JVM by
    /// (ports, resource id, network) changed. Returns whether any did: a change is news.
    fn note_changes(&mut self, found: &BTreeMap<u32, JvmProcess>) -> bool {
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
        changed
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
                    let wait =
                        doubled(self.config.discovery_interval, failures - 1, MAX_RETRY_WAIT);
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
        match self.client.fetch_plan(&request).await {
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

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A panic's message, as `panic!` was given it.
fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
