//! The running collector: the store, what the pollers last read from each Flink cluster, and
//! what could not be placed. Agents' batches come in through [`Ingest`], queries through the
//! methods the routes call. The store is synchronous (SQLite), so it is used on blocking threads,
//! with one connection for writes and one for reads (WAL lets them run side by side).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bpmon_proto::{AgentPlan, PlanRequest, ReportBatch, SamplingSettings};

use crate::api::{
    AgentJvm, AgentStatus, AgentsView, ConfigUpdate, ConfigView, HistoryView, HistoryWindow,
    JobsView, StatusView,
};
use crate::flink_rest::FlinkRestClient;
use crate::model::ClusterSnapshot;
use crate::server::{Ingest, IngestOutcome, SettingsView};
use crate::store::{Store, StoreError, VertexRow, DEFAULT_SCOPE};

use super::levels::LevelLog;
use super::metrics::{BatchOutcome, ServiceMetrics};
use super::placement::{place_batch, JvmOutcome, Unplaced};
use super::plan::plan_for;
use super::status::{status_view, summary, ClusterHealth, StatusInputs};

/// Why a query failed; the routes turn it into an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AmbiguousJob { .. } => QueryError::Conflict(e.to_string()),
            StoreError::UnknownVertex { .. } | StoreError::UnknownJob { .. } => {
                QueryError::NotFound(e.to_string())
            }
            StoreError::InvalidSettings { .. } => QueryError::Invalid(e.to_string()),
            other => QueryError::Internal(other.to_string()),
        }
    }
}

/// One watched Flink cluster.
struct ClusterState {
    client: Arc<FlinkRestClient>,
    last_good: Option<Arc<ClusterSnapshot>>,
    health: ClusterHealth,
}

impl Misplaced {
    /// TaskManager id → why each JVM that matched no TaskManager is not it.
    fn misses_by_taskmanager(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (agent, jvms) in &self.jvms_by_agent {
            for (j, _) in jvms.values().filter(|(j, _)| j.taskmanager_id.is_none()) {
                for (tm, why) in &j.misses {
                    out.entry(tm.clone()).or_default().push(format!(
                        "JVM {} of agent {agent} ({}): {why}",
                        j.pid, j.clues
                    ));
                }
            }
        }
        out
    }
}

/// How long a JVM's placement outcome is kept after the last report from it.
const JVM_OUTCOME_TTL_MS: u64 = 10 * 60 * 1000;

/// Placement failures kept for `status` and `agents`.
#[derive(Default)]
struct Misplaced {
    /// job id → (vertex id, subtask) → reason.
    by_job: HashMap<String, HashMap<(String, u32), String>>,
    /// agent id → its last batch's unplaced threads.
    by_agent: HashMap<String, Vec<String>>,
    /// agent id → pid → which TaskManager that JVM is (or why none), as of its latest report,
    /// and when that was; a JVM not reported for [`JVM_OUTCOME_TTL_MS`] is forgotten.
    jvms_by_agent: HashMap<String, BTreeMap<u32, (JvmOutcome, u64)>>,
    /// agent id → batches it reported dropped.
    dropped: HashMap<String, u64>,
}

pub struct Collector {
    writer: Arc<Mutex<Store>>,
    /// Batches on their way to the writer thread ([`group_commit`]).
    writes: std::sync::mpsc::Sender<WriteJob>,
    reader: Mutex<Store>,
    clusters: Vec<RwLock<ClusterState>>,
    /// Serialises on-demand polls of a cluster, so that a burst of batches causes one.
    refresh: Vec<tokio::sync::Mutex<()>>,
    misplaced: Mutex<Misplaced>,
    settings: RwLock<SettingsView>,
    poll_interval: Duration,
    /// Counters for `GET /metrics`.
    metrics: Arc<ServiceMetrics>,
    /// Each job's last status, with its JSON: reused for [`STATUS_TTL`], so that many clients
    /// asking about a big job cost one computation a second, not one each.
    status_cache: Mutex<HashMap<String, CachedStatus>>,
    /// Dropped with the collector, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
    /// The store writer thread ([`group_commit`]), joined by [`Collector::close`].
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Each vertex's level as last logged.
    levels: Mutex<LevelLog>,
}

/// How often the write-ahead log is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// A commit checkpoints the log itself only past this many pages (~400 MiB): when the
/// checkpoint thread cannot keep up.
const CHECKPOINT_SAFETY_PAGES: u32 = 100_000;

/// The checkpoint thread: copies the write-ahead log into the database twice a second. With
/// SQLite's default, a commit that finds the log past 1,000 pages checkpoints it itself, and the
/// batches behind it wait; here the writer only appends to the log.
fn checkpoints(store: &Store, stop: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = store.checkpoint() {
            tracing::warn!(error = %e, "checkpoint failed; the next one retries");
        }
    }
}

/// How long a computed status is served again. Windows arrive seconds apart, so a status at
/// most this old shows nothing a fresh one would not.
pub const STATUS_TTL: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct CachedStatus {
    at: std::time::Instant,
    view: Arc<StatusView>,
    json: axum::body::Bytes,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave these structures half-updated in a way that
    // matters more than stopping the service would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Collector {
    pub fn new(
        writer: Store,
        reader: Store,
        clients: Vec<FlinkRestClient>,
        poll_interval: Duration,
    ) -> Result<Collector, StoreError> {
        let settings = settings_view(&reader)?;
        // Checkpoints on a connection of their own, off the agents' path (see `checkpoints`).
        writer.set_autocheckpoint(CHECKPOINT_SAFETY_PAGES)?;
        let checkpointer = Store::open(writer.path().parent().unwrap_or(Path::new(".")))?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoints(&checkpointer, &stopped))
            .map_err(StoreError::Thread)?;
        let writer = Arc::new(Mutex::new(writer));
        let (writes, queue) = std::sync::mpsc::channel::<WriteJob>();
        let writer_thread = {
            let writer = Arc::clone(&writer);
            // Ends when the collector (the sender) is dropped.
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || group_commit(&writer, &queue))
                .map_err(StoreError::Thread)?
        };
        let metrics = Arc::new(ServiceMetrics::new(clients.iter().map(|c| c.base_url())));
        Ok(Collector {
            metrics,
            writer,
            writes,
            reader: Mutex::new(reader),
            refresh: clients
                .iter()
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            clusters: clients
                .into_iter()
                .map(|client| {
                    RwLock::new(ClusterState {
                        client: Arc::new(client),
                        last_good: None,
                        health: ClusterHealth::default(),
                    })
                })
                .collect(),
            misplaced: Mutex::new(Misplaced::default()),
            settings: RwLock::new(settings),
            poll_interval,
            status_cache: Mutex::new(HashMap::new()),
            _stop_checkpoints: stop_checkpoints,
            writer_thread: Mutex::new(Some(writer_thread)),
            levels: Mutex::new(LevelLog::default()),
        })
    }

    /// The service's liveness check (the systemd watchdog runs it): the store writer thread is
    /// running and the database answers a query on the blocking pool.
    pub async fn health(self: &Arc<Self>) -> Result<(), String> {
        if lock(&self.writer_thread)
            .as_ref()
            .is_none_or(|t| t.is_finished())
        {
            return Err("the store writer thread has stopped".into());
        }
        self.blocking(|me| lock(&me.reader).ping())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Closes the database once the service has stopped: lets the writer thread commit what it
    /// was given and end, then closes both connections. Call it on the last reference.
    pub fn close(self) -> Result<(), StoreError> {
        let Collector {
            writer,
            writes,
            reader,
            writer_thread,
            ..
        } = self;
        drop(writes);
        let thread = writer_thread
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(t) = thread {
            let _ = t.join();
        }
        reader
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .close()?;
        match Arc::try_unwrap(writer) {
            Ok(w) => w.into_inner().unwrap_or_else(|p| p.into_inner()).close(),
            // Still shared (cannot happen once the thread is joined): closed when dropped.
            Err(_) => Ok(()),
        }
    }

    /// The counters `GET /metrics` exposes.
    pub fn metrics(&self) -> &ServiceMetrics {
        &self.metrics
    }

    /// The counters, shared (for the middleware that counts refused batches).
    pub fn shared_metrics(&self) -> Arc<ServiceMetrics> {
        Arc::clone(&self.metrics)
    }

    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Collector) -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| QueryError::Internal(format!("store task failed: {e}")))
    }

    /// Polls cluster `i` once and takes in the result.
    pub async fn poll(self: &Arc<Self>, i: usize) {
        let client = Arc::clone(&read(&self.clusters[i]).client);
        let started = std::time::Instant::now();
        let snap = client.snapshot().await;
        let url = snap.flink_url.clone();
        let failed =
            !snap.errors.is_empty() && snap.jobs.is_empty() && snap.taskmanagers.is_empty();
        self.metrics.poll(
            &url,
            started.elapsed(),
            !failed,
            !snap.errors.is_empty(),
            snap.fetched_at_ms,
        );
        if failed {
            let error = snap.errors.join("; ");
            let mut c = write(&self.clusters[i]);
            let since = c
                .health
                .failing
                .as_ref()
                .map(|f| f.1)
                .unwrap_or(snap.fetched_at_ms);
            if c.health.failing.is_none() {
                tracing::warn!(flink = %url, %error, "Flink REST poll failed; data from it is stale until it answers");
            }
            c.health.failing = Some((error, since));
            return;
        }
        if !snap.errors.is_empty() {
            tracing::warn!(flink = %url, errors = ?snap.errors, "Flink REST poll was partial");
        }
        let snap = Arc::new(snap);
        {
            let mut c = write(&self.clusters[i]);
            if c.health.failing.is_some() {
                tracing::info!(flink = %url, "Flink REST answers again");
            }
            c.health = ClusterHealth {
                fetched_at_ms: Some(snap.fetched_at_ms),
                failing: None,
            };
            c.last_good = Some(Arc::clone(&snap));
        }
        let stored = self
            .blocking(move |me| -> Result<(), StoreError> {
                let mut store = lock(&me.writer);
                for job in &snap.jobs {
                    store.upsert_job(
                        &job.job_id,
                        &job.name,
                        &snap.flink_url,
                        snap.fetched_at_ms,
                    )?;
                    let vertices: Vec<VertexRow> = job
                        .vertices
                        .iter()
                        .map(|v| VertexRow {
                            vertex_id: v.vertex_id.clone(),
                            name: v.name.clone(),
                            parallelism: v.parallelism,
                        })
                        .collect();
                    store.upsert_vertices(&job.job_id, &vertices)?;
                }
                Ok(())
            })
            .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(flink = %url, error = %e, "cannot store the jobs read"),
            Err(e) => tracing::error!(flink = %url, error = %e, "cannot store the jobs read"),
        }
    }

    fn snapshots(&self) -> Vec<Arc<ClusterSnapshot>> {
        self.clusters
            .iter()
            .filter_map(|c| read(c).last_good.clone())
            .collect()
    }

    /// Clusters whose data is missing or failing: placing a report may need them.
    fn unhealthy(&self) -> Vec<(usize, String)> {
        self.clusters
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = read(c);
                match (&c.health.failing, c.last_good.is_some()) {
                    (Some((e, _)), _) => Some((i, format!("{}: {e}", c.client.base_url()))),
                    (None, false) => Some((i, format!("{}: not read yet", c.client.base_url()))),
                    _ => None,
                }
            })
            .collect()
    }

    /// Polls every cluster whose last good snapshot is older than `ms` (once, however many
    /// batches ask at the same time).
    async fn refresh_older_than(self: &Arc<Self>, ms: u64) {
        for i in 0..self.clusters.len() {
            let _guard = self.refresh[i].lock().await;
            let fetched = read(&self.clusters[i]).health.fetched_at_ms;
            if fetched.is_none_or(|f| f < ms) {
                self.poll(i).await;
            }
        }
    }

    async fn take_batch(self: &Arc<Self>, batch: ReportBatch) -> Result<IngestOutcome, String> {
        // Placing is CPU work proportional to the batch: on a blocking thread, so that one huge
        // batch cannot hold up the async workers that answer queries and /metrics.
        let batch = Arc::new(batch);
        let place = |batch: &Arc<ReportBatch>, me: &Arc<Collector>| {
            let (batch, me) = (Arc::clone(batch), Arc::clone(me));
            async move {
                tokio::task::spawn_blocking(move || {
                    let snaps = me.snapshots();
                    let refs: Vec<&ClusterSnapshot> = snaps.iter().map(|s| s.as_ref()).collect();
                    place_batch(&batch, &refs)
                })
                .await
                .map_err(|e| format!("placing the batch failed: {e}"))
            }
        };
        let mut placement = place(&batch, self).await?;
        // A thread of a job deployed since the last poll: read Flink again, once. (Ambiguous
        // threads have their candidates already; a new poll would not help them.)
        if placement.unplaced.iter().any(|u| u.candidates.is_empty()) {
            let newest_start = batch
                .reports
                .iter()
                .map(|r| r.started_at_ms)
                .max()
                .unwrap_or(0)
                // A batch's own clock must not force polls: never newer than ours.
                .min(now_ms());
            self.refresh_older_than(newest_start).await;
            placement = place(&batch, self).await?;
        }
        if placement.unplaced.iter().any(|u| u.no_taskmanager) {
            let unhealthy = self.unhealthy();
            if !unhealthy.is_empty() {
                // Accepting now would lose these threads for good; the agent keeps the batch.
                let names: Vec<String> = unhealthy.into_iter().map(|u| u.1).collect();
                return Err(format!(
                    "cannot place reports while Flink is not readable ({})",
                    names.join("; ")
                ));
            }
        }
        let agent = batch.agent_id.clone();
        let seq = batch.seq;
        let windows = placement.windows;
        let observed = super::levels::observations(&windows);
        let n = windows.len();
        let (done, stored) = tokio::sync::oneshot::channel();
        self.writes
            .send(WriteJob {
                agent,
                seq,
                windows,
                done,
            })
            .map_err(|_| "the store writer has stopped".to_string())?;
        let new = stored
            .await
            .map_err(|_| "the store writer has stopped".to_string())??;
        if new {
            self.metrics.stored(n, placement.unplaced.len());
            self.note_unplaced(&batch, &placement.unplaced, placement.jvms);
            self.note_levels(observed);
            tracing::debug!(agent = %batch.agent_id, seq, windows = n, unplaced = placement.unplaced.len(), "batch stored");
        }
        Ok(IngestOutcome { duplicate: !new })
    }

    /// Logs the vertices whose back-pressure level changed with this batch.
    fn note_levels(&self, observed: Vec<super::levels::Observation>) {
        let changes = lock(&self.levels).observe(observed);
        for c in changes {
            let job = self.live_job(&c.job_id);
            let job_name = job.as_ref().map(|(s, i)| s.jobs[*i].name.clone());
            let vertex_name = job.as_ref().and_then(|(s, i)| {
                s.jobs[*i]
                    .vertices
                    .iter()
                    .find(|v| v.vertex_id == c.vertex_id)
                    .map(|v| v.name.clone())
            });
            tracing::info!(
                job_id = %c.job_id,
                job = job_name.as_deref().unwrap_or("?"),
                vertex_id = %c.vertex_id,
                vertex = vertex_name.as_deref().unwrap_or("?"),
                backpressure = c.level.as_str(),
                previous = c.previous.map_or("none", |l| l.as_str()),
                ratio = c.ratio,
                subtasks = ?c.subtasks,
                "back-pressure level of a vertex changed"
            );
        }
    }

    fn note_unplaced(&self, batch: &ReportBatch, unplaced: &[Unplaced], jvms: Vec<JvmOutcome>) {
        let mut m = lock(&self.misplaced);
        for j in jvms.iter().filter(|j| j.taskmanager_id.is_none()) {
            tracing::debug!(agent = %batch.agent_id, pid = j.pid, why = %j.text, "JVM matched no TaskManager");
        }
        let now = now_ms();
        let known = m.jvms_by_agent.entry(batch.agent_id.clone()).or_default();
        for j in jvms {
            known.insert(j.pid, (j, now));
        }
        known.retain(|_, (_, at)| now.saturating_sub(*at) < JVM_OUTCOME_TTL_MS);
        if batch.dropped_before > 0 {
            let prev = m
                .dropped
                .insert(batch.agent_id.clone(), batch.dropped_before);
            if prev != Some(batch.dropped_before) {
                tracing::warn!(agent = %batch.agent_id, dropped = batch.dropped_before, "agent reports batches it had to drop (spool full)");
            }
        }
        // Placed windows clear earlier reasons for their subtasks... a new reason replaces.
        for u in unplaced {
            for c in &u.candidates {
                m.by_job
                    .entry(c.job_id.clone())
                    .or_default()
                    .insert((c.vertex_id.clone(), c.subtask), u.why.clone());
            }
        }
        if !unplaced.is_empty() {
            tracing::info!(agent = %batch.agent_id, seq = batch.seq, threads = unplaced.len(), first = %unplaced[0].why, "task threads not placed");
        }
        m.by_agent.insert(
            batch.agent_id.clone(),
            unplaced
                .iter()
                .map(|u| format!("pid {} '{}': {}", u.pid, u.thread, u.why))
                .collect(),
        );
    }

    fn live_job(&self, job_id: &str) -> Option<(Arc<ClusterSnapshot>, usize)> {
        self.snapshots().into_iter().find_map(|s| {
            let i = s.jobs.iter().position(|j| j.job_id == job_id)?;
            Some((s, i))
        })
    }

    fn health_of(&self, url: &str) -> ClusterHealth {
        self.clusters
            .iter()
            .map(read)
            .find(|c| c.client.base_url() == url.trim_end_matches('/'))
            .map(|c| c.health.clone())
            .unwrap_or_default()
    }

    fn status_of(
        &self,
        job: crate::store::JobRow,
        store: &Store,
    ) -> Result<StatusView, QueryError> {
        let windows = store.latest_windows(&job.job_id)?;
        let settings = self.job_settings(&job.job_id);
        let live = self.live_job(&job.job_id);
        let health = self.health_of(&job.flink_url);
        let unplaced = lock(&self.misplaced)
            .by_job
            .get(&job.job_id)
            .cloned()
            .unwrap_or_default();
        // Reasons older than the windows stored since no longer apply.
        let unplaced: HashMap<(String, u32), String> = unplaced
            .into_iter()
            .filter(|(k, _)| {
                !windows
                    .iter()
                    .any(|w| w.vertex_id == k.0 && w.subtask == k.1)
            })
            .collect();
        let mut unplaced = unplaced;
        // Subtasks on a TaskManager no reported JVM matched: say what was compared.
        if let Some((snap, idx)) = &live {
            let misses = lock(&self.misplaced).misses_by_taskmanager();
            for v in &snap.jobs[*idx].vertices {
                for s in &v.subtasks {
                    let Some(reasons) = s.taskmanager_id.as_ref().and_then(|t| misses.get(t))
                    else {
                        continue;
                    };
                    if windows
                        .iter()
                        .any(|w| w.vertex_id == v.vertex_id && w.subtask == s.subtask)
                    {
                        continue;
                    }
                    unplaced
                        .entry((v.vertex_id.clone(), s.subtask))
                        .or_insert_with(|| {
                            format!(
                                "no JVM an agent reported is TaskManager {}: {}",
                                s.taskmanager_id.as_deref().unwrap_or("?"),
                                reasons.join("; ")
                            )
                        });
                }
            }
        }
        Ok(status_view(&StatusInputs {
            job: &job,
            live: live.as_ref().map(|(s, i)| &s.jobs[*i]),
            health: &health,
            windows: &windows,
            settings,
            unplaced: &unplaced,
            poll_interval_ms: self.poll_interval.as_millis() as u64,
            now_ms: now_ms(),
        }))
    }

    fn job_settings(&self, job_id: &str) -> SamplingSettings {
        let s = read(&self.settings);
        s.jobs.get(job_id).copied().unwrap_or(s.default)
    }

    /// A job's status as JSON (what `GET …/status` answers).
    pub async fn status_json(
        self: &Arc<Self>,
        job: String,
    ) -> Result<axum::body::Bytes, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = store
                .find_job(&job)?
                .ok_or_else(|| QueryError::NotFound(format!("no job with id or name {job:?}")))?;
            Ok(me.cached_status(row, &store)?.json)
        })
        .await?
    }

    pub async fn status(self: &Arc<Self>, job: String) -> Result<Arc<StatusView>, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = store
                .find_job(&job)?
                .ok_or_else(|| QueryError::NotFound(format!("no job with id or name {job:?}")))?;
            Ok(me.cached_status(row, &store)?.view)
        })
        .await?
    }

    fn cached_status(
        &self,
        row: crate::store::JobRow,
        store: &Store,
    ) -> Result<CachedStatus, QueryError> {
        if let Some(c) = lock(&self.status_cache).get(&row.job_id) {
            if c.at.elapsed() < STATUS_TTL {
                return Ok(c.clone());
            }
        }
        let job_id = row.job_id.clone();
        let view = self.status_of(row, store)?;
        let json = serde_json::to_vec(&view)
            .map_err(|e| QueryError::Internal(format!("cannot encode the status: {e}")))?;
        let c = CachedStatus {
            at: std::time::Instant::now(),
            view: Arc::new(view),
            json: json.into(),
        };
        let mut cache = lock(&self.status_cache);
        // Jobs come and go: forget what has not been asked for a while.
        cache.retain(|_, old| old.at.elapsed() < 60 * STATUS_TTL);
        cache.insert(job_id, c.clone());
        Ok(c)
    }

    /// Every stored job's status (for `/metrics`), computed as `status` computes it.
    pub async fn statuses(self: &Arc<Self>) -> Result<Vec<Arc<StatusView>>, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let mut out = Vec::new();
            for row in store.jobs()? {
                out.push(me.cached_status(row, &store)?.view);
            }
            Ok(out)
        })
        .await?
    }

    pub async fn jobs(self: &Arc<Self>) -> Result<JobsView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let mut jobs = Vec::new();
            for row in store.jobs()? {
                jobs.push(summary(&me.cached_status(row, &store)?.view));
            }
            Ok(JobsView { jobs })
        })
        .await?
    }

    pub async fn history(
        self: &Arc<Self>,
        job: String,
        vertex: Option<String>,
        since_ms: u64,
    ) -> Result<HistoryView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = store
                .find_job(&job)?
                .ok_or_else(|| QueryError::NotFound(format!("no job with id or name {job:?}")))?;
            let names: HashMap<&str, &str> = row
                .vertices
                .iter()
                .map(|v| (v.vertex_id.as_str(), v.name.as_str()))
                .collect();
            let windows = store
                .history(&row.job_id, vertex.as_deref(), since_ms)?
                .into_iter()
                .map(|w| HistoryWindow {
                    vertex_name: names
                        .get(w.vertex_id.as_str())
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    vertex_id: w.vertex_id,
                    subtask: w.subtask,
                    attempt: w.attempt,
                    window_start_ms: w.window_start_ms,
                    window_end_ms: w.window_end_ms,
                    samples: w.samples,
                    blocked: w.blocked,
                    soft: w.soft,
                    idle: w.idle,
                    busy: w.busy,
                    ratio: w.ratio,
                    level: w.level,
                    taskmanager_id: w.taskmanager_id,
                })
                .collect();
            Ok(HistoryView {
                job_id: row.job_id,
                job_name: row.name,
                since_ms,
                windows,
            })
        })
        .await?
    }

    /// `job`: `*` or `default` for the default, else a job id or name.
    fn scope_of(store: &Store, job: &str) -> Result<(String, Option<String>), QueryError> {
        if job == DEFAULT_SCOPE || job == "default" {
            return Ok((DEFAULT_SCOPE.to_string(), None));
        }
        match store.find_job(job)? {
            Some(row) => Ok((row.job_id, Some(row.name))),
            None => Err(QueryError::NotFound(format!(
                "no job with id or name {job:?} (settings are set for jobs the collector has seen; use `default` for all jobs)"
            ))),
        }
    }

    fn config_view(&self, scope: String, job_name: Option<String>) -> ConfigView {
        let s = read(&self.settings);
        let own = if scope == DEFAULT_SCOPE {
            Some(s.default)
        } else {
            s.jobs.get(&scope).copied()
        };
        ConfigView {
            inherited: own.is_none(),
            settings: own.unwrap_or(s.default),
            scope,
            job_name,
        }
    }

    pub async fn config_get(self: &Arc<Self>, job: String) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = Self::scope_of(&lock(&me.reader), &job)?;
            Ok(me.config_view(scope, name))
        })
        .await?
    }

    pub async fn config_set(
        self: &Arc<Self>,
        job: String,
        update: ConfigUpdate,
    ) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = Self::scope_of(&lock(&me.reader), &job)?;
            let current = me.config_view(scope.clone(), name.clone()).settings;
            let next = update.apply(current);
            {
                let mut store = lock(&me.writer);
                store.set_settings(&scope, next)?;
                *write(&me.settings) = settings_view(&store)?;
            }
            lock(&me.status_cache).clear();
            tracing::info!(%scope, ?next, "sampling settings changed");
            Ok(me.config_view(scope, name))
        })
        .await?
    }

    pub async fn config_reset(self: &Arc<Self>, job: String) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = Self::scope_of(&lock(&me.reader), &job)?;
            {
                let mut store = lock(&me.writer);
                store.remove_settings(&scope)?;
                *write(&me.settings) = settings_view(&store)?;
            }
            lock(&me.status_cache).clear();
            Ok(me.config_view(scope, name))
        })
        .await?
    }

    pub async fn agents(self: &Arc<Self>) -> Result<AgentsView, QueryError> {
        self.blocking(move |me| {
            let seqs = lock(&me.reader).agent_seqs()?;
            let m = lock(&me.misplaced);
            Ok(AgentsView {
                agents: seqs
                    .into_iter()
                    .map(|a| AgentStatus {
                        dropped_batches: m.dropped.get(&a.agent_id).copied().unwrap_or(0),
                        unresolved: m.by_agent.get(&a.agent_id).cloned().unwrap_or_default(),
                        jvms: m
                            .jvms_by_agent
                            .get(&a.agent_id)
                            .map(|js| {
                                js.values()
                                    .map(|(j, _)| AgentJvm {
                                        pid: j.pid,
                                        taskmanager_id: j.taskmanager_id.clone(),
                                        placement: j.text.clone(),
                                        seen: j.clues.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        agent_id: a.agent_id,
                        highest_seq: a.highest_seq,
                        last_batch_ms: a.last_batch_ms,
                    })
                    .collect(),
            })
        })
        .await?
    }

    /// Retention: deletes what is older than `retention`.
    pub async fn prune(self: &Arc<Self>, retention: Duration) -> Result<usize, QueryError> {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        self.blocking(move |me| {
            let removed = lock(&me.writer).prune(cutoff)?;
            // What is kept in memory per agent goes with the agent's row.
            let known: std::collections::HashSet<String> = lock(&me.writer)
                .agent_seqs()?
                .into_iter()
                .map(|a| a.agent_id)
                .collect();
            let mut m = lock(&me.misplaced);
            m.by_agent.retain(|a, _| known.contains(a));
            m.jvms_by_agent.retain(|a, _| known.contains(a));
            m.dropped.retain(|a, _| known.contains(a));
            Ok(removed)
        })
        .await?
    }
}

/// A batch for the writer thread, and where its outcome goes.
struct WriteJob {
    agent: String,
    seq: u64,
    windows: Vec<crate::merge::MergedWindow>,
    done: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// At most this many batches, or about this many rows, share a transaction.
const GROUP_MAX_BATCHES: usize = 512;
const GROUP_MAX_ROWS: usize = 5_000;

/// The writer thread: takes every batch waiting (at least one) and stores them in one
/// transaction, so N concurrent batches cost one commit and one fsync instead of N, and no
/// thread waits on the writer's lock per batch. Each batch is answered only once its
/// transaction has committed. If the group fails, each batch is tried alone, so one bad batch
/// does not fail the others.
fn group_commit(writer: &Mutex<Store>, queue: &std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = queue.recv() {
        let mut rows = first.windows.len();
        let mut group = vec![first];
        while group.len() < GROUP_MAX_BATCHES && rows < GROUP_MAX_ROWS {
            match queue.try_recv() {
                Ok(job) => {
                    rows += job.windows.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let input: Vec<(&str, u64, &[crate::merge::MergedWindow])> = group
            .iter()
            .map(|j| (j.agent.as_str(), j.seq, j.windows.as_slice()))
            .collect();
        let mut store = lock(writer);
        let outcomes: Vec<Result<bool, String>> = match store.ingest_batches(&input) {
            Ok(news) => news.into_iter().map(Ok).collect(),
            Err(e) if input.len() == 1 => vec![Err(e.to_string())],
            Err(_) => input
                .iter()
                .map(|(agent, seq, rows)| {
                    store
                        .ingest_batch(agent, *seq, rows)
                        .map_err(|e| e.to_string())
                })
                .collect(),
        };
        drop(store);
        drop(input);
        for (job, outcome) in group.into_iter().zip(outcomes) {
            // The request may have gone (client hung up): its batch is stored all the same.
            let _ = job.done.send(outcome);
        }
    }
}

fn settings_view(store: &Store) -> Result<SettingsView, StoreError> {
    let mut view = SettingsView {
        default: SamplingSettings::default(),
        jobs: BTreeMap::new(),
    };
    for row in store.all_settings()? {
        if row.scope == DEFAULT_SCOPE {
            view.default = row.settings;
        } else {
            view.jobs.insert(row.scope, row.settings);
        }
    }
    Ok(view)
}

/// The agent-facing side.
#[derive(Clone)]
pub struct Service(pub Arc<Collector>);

impl Ingest for Service {
    async fn ingest(&self, batch: ReportBatch) -> Result<IngestOutcome, String> {
        let result = self.0.take_batch(batch).await;
        self.0.metrics.batch(match &result {
            Ok(o) if o.duplicate => BatchOutcome::Duplicate,
            Ok(_) => BatchOutcome::Stored,
            Err(_) => BatchOutcome::Failed,
        });
        result
    }

    async fn settings(&self) -> Result<SettingsView, String> {
        Ok(read(&self.0.settings).clone())
    }

    async fn plan(&self, request: PlanRequest) -> Result<AgentPlan, String> {
        let snaps = self.0.snapshots();
        let refs: Vec<&ClusterSnapshot> = snaps.iter().map(|s| s.as_ref()).collect();
        let s = read(&self.0.settings).clone();
        Ok(plan_for(&request, &refs, s.default, &s.jobs))
    }
}
