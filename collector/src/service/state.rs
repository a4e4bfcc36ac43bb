//! The running collector, a composition of parts that each own one concern: the store writer
//! ([`StoreWriter`]: batches, jobs, settings, pruning), a read connection for queries, the
//! watched clusters ([`Clusters`]: polling, last good snapshots), what could not be placed
//! ([`Misplaced`]), the sampling settings ([`SettingsCache`]), each job's last status
//! ([`StatusCache`]), each vertex's logged level ([`LevelLog`]), each job's logged bottleneck
//! ([`BottleneckLog`]) and each vertex's back-pressure episode under way ([`EpisodeLog`]). Agents' batches come in
//! through `ingest`, queries through `queries`. The store is synchronous
//! (SQLite), so it is used on blocking threads, with one connection for writes and one for reads
//! (WAL lets them run side by side).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::flink_rest::FlinkRestClient;
use crate::model::ClusterSnapshot;
use crate::store::{Store, StoreError, VertexRow};

use super::bottlenecks::{BottleneckLog, Pending};
use super::clusters::Clusters;
use super::episodes::EpisodeLog;
use super::levels::LevelLog;
use super::locks::lock;
use super::metrics::ServiceMetrics;
use super::misplaced::Misplaced;
use super::settings::SettingsCache;
use super::status_cache::StatusCache;
use super::writer::StoreWriter;

pub struct Collector {
    pub(super) writer: StoreWriter,
    pub(super) reader: Mutex<Store>,
    pub(super) clusters: Clusters,
    pub(super) misplaced: Mutex<Misplaced>,
    pub(super) settings: SettingsCache,
    /// Counters for `GET /metrics`.
    pub(super) metrics: Arc<ServiceMetrics>,
    pub(super) status_cache: StatusCache,
    /// Each vertex's level as last logged.
    pub(super) levels: Mutex<LevelLog>,
    /// Each job's bottleneck as last logged.
    pub(super) bottlenecks: Mutex<BottleneckLog>,
    /// The jobs with windows stored since the bottlenecks were last checked.
    pub(super) pending: Mutex<Pending>,
    /// Each vertex's back-pressure episode under way.
    pub(super) episodes: Mutex<EpisodeLog>,
    /// How far the rollup of old windows got.
    pub(super) rollup: Mutex<RollupMark>,
}

/// How far the rollup of old windows got, and what arrived behind it.
#[derive(Debug, Default)]
pub(super) struct RollupMark {
    /// Where the last rollup stopped (`None`: none yet in this run; the first starts from the
    /// oldest window).
    pub until_ms: Option<u64>,
    /// The oldest window stored since the last rollup began (an agent's spool, replayed after
    /// a long outage, may be behind `until_ms`): the next one starts there if it is earlier.
    pub stored_from_ms: Option<u64>,
}

impl Collector {
    pub fn new(
        writer: Store,
        reader: Store,
        clients: Vec<FlinkRestClient>,
        poll_interval: Duration,
    ) -> Result<Collector, StoreError> {
        let settings = SettingsCache::load(&reader)?;
        let episodes = EpisodeLog::resume(reader.open_episodes()?);
        let writer = StoreWriter::start(writer)?;
        let metrics = Arc::new(ServiceMetrics::new(clients.iter().map(|c| c.base_url())));
        Ok(Collector {
            metrics,
            writer,
            reader: Mutex::new(reader),
            clusters: Clusters::new(clients, poll_interval),
            misplaced: Mutex::new(Misplaced::default()),
            settings,
            status_cache: StatusCache::default(),
            levels: Mutex::new(LevelLog::default()),
            bottlenecks: Mutex::new(BottleneckLog::default()),
            pending: Mutex::new(Pending::default()),
            episodes: Mutex::new(episodes),
            rollup: Mutex::new(RollupMark::default()),
        })
    }

    /// The service's liveness check (the systemd watchdog runs it): the store writer thread is
    /// running and the database answers a query on the blocking pool.
    pub async fn health(self: &Arc<Self>) -> Result<(), String> {
        if !self.writer.is_running() {
            return Err("the store writer thread has stopped".into());
        }
        self.blocking(|me| lock(&me.reader).ping())
            .await
            .map_err(|e| format!("store task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// Closes the database once the service has stopped: lets the writer thread commit what it
    /// was given and end, then closes both connections. Call it on the last reference.
    pub fn close(self) -> Result<(), StoreError> {
        let Collector { writer, reader, .. } = self;
        let writer = writer.finish();
        reader
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .close()?;
        writer.map_or(Ok(()), Store::close)
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
        self.clusters.poll_interval()
    }

    /// Runs `f` on the blocking pool (the store is synchronous).
    pub(super) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Collector) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&me)).await
    }

    /// Polls cluster `i` once and takes in the result: a usable snapshot becomes the cluster's
    /// last good one, and its jobs and vertices are stored.
    pub async fn poll(self: &Arc<Self>, i: usize) {
        let Some(snap) = self.clusters.poll(i, &self.metrics).await else {
            return;
        };
        let url = snap.flink_url.clone();
        let stored = self
            .blocking(move |me| {
                let mut store = me.writer.lock();
                let inherited = store_jobs(&mut store, &snap)?;
                if !inherited.is_empty() {
                    me.settings.reload(&store)?;
                    me.status_cache.clear();
                }
                for (job_id, name, from) in inherited {
                    tracing::info!(
                        job_id = %job_id,
                        job = %name,
                        from_job_id = %from,
                        "a new job took the sampling settings of the earlier job of its name (a redeploy)"
                    );
                }
                Ok::<(), StoreError>(())
            })
            .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(flink = %url, error = %e, "cannot store the jobs read"),
            Err(e) => {
                tracing::error!(flink = %url, error = %format_args!("store task failed: {e}"), "cannot store the jobs read")
            }
        }
    }

    /// Polls every cluster whose last good snapshot is older than `ms` (once, however many
    /// batches ask at the same time).
    pub(super) async fn refresh_older_than(self: &Arc<Self>, ms: u64) {
        for i in 0..self.clusters.len() {
            let _guard = self.clusters.refresh_guard(i).await;
            if self.clusters.older_than(i, ms) {
                self.poll(i).await;
            }
        }
    }
}

/// Records the jobs of a snapshot and their vertices. A job seen for the first time takes the
/// sampling settings of the earlier job of its name, if that one had its own: returns each
/// (job id, name, the earlier job's id).
fn store_jobs(
    store: &mut Store,
    snap: &ClusterSnapshot,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut inherited = Vec::new();
    for job in &snap.jobs {
        let new = !store.has_job(&job.job_id)?;
        store.upsert_job(&job.job_id, &job.name, &snap.flink_url, snap.fetched_at_ms)?;
        if new {
            if let Some(from) = store.inherit_settings(&job.job_id, &job.name, &snap.flink_url)? {
                inherited.push((job.job_id.clone(), job.name.clone(), from));
            }
        }
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
    Ok(inherited)
}
