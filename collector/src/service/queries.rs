//! The query side of the running collector: a job's status (cached for
//! [`STATUS_TTL`](super::status_cache::STATUS_TTL)), the jobs, history, the sampling settings,
//! the agents, and retention. Each runs on the blocking pool with the read connection (the
//! writer's for changes); the pure work is [`status_view`] and [`summary`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;

use crate::api::{
    AgentsView, ConfigUpdate, ConfigView, Episode, EpisodesView, HistoryView, HistoryWindow,
    JobsView, StatusView,
};
use crate::clock::now_ms;
use crate::merge::MergedWindow;
use bpmon_proto::Scope;

use crate::store::{JobRow, Rollup, Store, StoreError, ROLLUP_SPAN_MS};

use super::locks::lock;
use super::state::Collector;
use super::status::{status_view, summary, StatusInputs};
use super::status_cache::CachedStatus;

/// Why a query failed; [`QueryError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No job has this id or name.
    #[error("no job with id or name {0:?}")]
    NoJob(String),
    /// `config` for a job the collector has not seen.
    #[error(
        "no job with id or name {0:?} (settings are set for jobs the collector has seen; use `default` for all jobs)"
    )]
    NoJobForSettings(String),
    /// A body that is not a settings update.
    #[error("not a settings update: {0}")]
    BadUpdate(serde_json::Error),
    /// What the store answered (an unknown vertex, an ambiguous name, refused settings, or a
    /// database failure).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the query failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot encode the status: {0}")]
    Encode(serde_json::Error),
    /// A flame graph of "the bottleneck" of a job that has none now.
    #[error("job {0} has no bottleneck now: name a vertex (vertex=…)")]
    NoBottleneck(String),
}

impl QueryError {
    /// The HTTP status the routes answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::NoJob(_) | QueryError::NoJobForSettings(_) => StatusCode::NOT_FOUND,
            QueryError::BadUpdate(_) | QueryError::NoBottleneck(_) => StatusCode::BAD_REQUEST,
            QueryError::Store(e) => match e {
                StoreError::AmbiguousJob { .. } => StatusCode::CONFLICT,
                StoreError::UnknownVertex { .. } | StoreError::UnknownJob { .. } => {
                    StatusCode::NOT_FOUND
                }
                StoreError::InvalidSettings { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            QueryError::Task(_) | QueryError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Collector {
    /// The stored job with this id or name (of same-named jobs, the one still running).
    pub(super) fn find_job(&self, store: &Store, job: &str) -> Result<JobRow, QueryError> {
        store
            .find_job_preferring(job, |id| self.clusters.live_job(id).is_some())?
            .ok_or_else(|| QueryError::NoJob(job.to_string()))
    }

    /// The scope `job` names, with the job's name: `*` or `default` for the default, else a
    /// job id or name.
    fn scope_of(&self, store: &Store, job: &str) -> Result<(Scope, Option<String>), QueryError> {
        if Scope::parse(job).is_default() {
            return Ok((Scope::Default, None));
        }
        match store.find_job_preferring(job, |id| self.clusters.live_job(id).is_some())? {
            Some(row) => Ok((Scope::Job(row.job_id), Some(row.name))),
            None => Err(QueryError::NoJobForSettings(job.to_string())),
        }
    }
}

impl Collector {
    fn status_of(&self, job: JobRow, store: &Store) -> Result<StatusView, QueryError> {
        let windows = store.latest_windows(&job.job_id)?;
        let settings = self.settings.for_job(&job.job_id);
        let live = self.clusters.live_job(&job.job_id);
        let live = live.as_ref().map(|(s, i)| &s.jobs[*i]);
        let health = self.clusters.health_of(&job.flink_url);
        let unplaced = lock(&self.misplaced).unplaced_for(&job.job_id, &windows, live);
        Ok(status_view(&StatusInputs {
            job: &job,
            live,
            health: &health,
            windows: &windows,
            settings,
            unplaced: &unplaced,
            poll_interval_ms: self.clusters.poll_interval().as_millis() as u64,
            now_ms: now_ms(),
        }))
    }

    /// A job's status as JSON (what `GET …/status` answers).
    pub async fn status_json(self: &Arc<Self>, job: String) -> Result<Bytes, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            Ok(me.cached_status(row, &store)?.json)
        })
        .await?
    }

    pub async fn status(self: &Arc<Self>, job: String) -> Result<Arc<StatusView>, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            Ok(me.cached_status(row, &store)?.view)
        })
        .await?
    }

    pub(super) fn cached_status(
        &self,
        row: JobRow,
        store: &Store,
    ) -> Result<CachedStatus, QueryError> {
        if let Some(c) = self.status_cache.fresh(&row.job_id) {
            return Ok(c);
        }
        self.fresh_status(row, store)
    }

    /// A job's status computed now, whatever the cache holds, and cached.
    pub(super) fn fresh_status(
        &self,
        row: JobRow,
        store: &Store,
    ) -> Result<CachedStatus, QueryError> {
        let job_id = row.job_id.clone();
        let view = self.status_of(row, store)?;
        let json = serde_json::to_vec(&view).map_err(QueryError::Encode)?;
        Ok(self.status_cache.insert(job_id, view, json.into()))
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
            let open = me.open_episodes();
            let mut jobs = Vec::new();
            for row in store.jobs()? {
                let mut job = summary(&me.cached_status(row, &store)?.view);
                job.level_since_ms = match job.level {
                    Some(l) if l > bpmon_proto::Level::Ok => open
                        .iter()
                        .filter(|e| e.job_id == job.job_id)
                        .map(|e| e.started_at_ms)
                        .min(),
                    Some(_) => store.last_episode_end(&job.job_id)?,
                    None => None,
                };
                if job.level_since_ms.is_some() {
                    job.watched_since_ms = store.watched_since(&job.job_id)?;
                }
                jobs.push(job);
            }
            Ok(JobsView { jobs })
        })
        .await?
    }

    /// A job's back-pressure episodes under way at or after `since_ms`.
    pub async fn episodes(
        self: &Arc<Self>,
        job: String,
        since_ms: u64,
    ) -> Result<EpisodesView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            let episodes = store.episodes(&row.job_id, since_ms)?;
            Ok(EpisodesView {
                job_id: row.job_id,
                job_name: row.name,
                since_ms,
                episodes,
            })
        })
        .await?
    }

    /// The episodes under way now, of every job.
    pub fn open_episodes(&self) -> Vec<Episode> {
        lock(&self.episodes).open()
    }

    pub async fn history(
        self: &Arc<Self>,
        job: String,
        vertex: Option<String>,
        since_ms: u64,
    ) -> Result<HistoryView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            let names: HashMap<&str, &str> = row
                .vertices
                .iter()
                .map(|v| (v.vertex_id.as_str(), v.name.as_str()))
                .collect();
            let windows = store
                .history(&row.job_id, vertex.as_deref(), since_ms)?
                .into_iter()
                .map(|w| history_window(w, &names))
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

    pub async fn config_get(self: &Arc<Self>, job: String) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = me.scope_of(&lock(&me.reader), &job)?;
            Ok(me.settings.config_view(scope, name))
        })
        .await?
    }

    pub async fn config_set(
        self: &Arc<Self>,
        job: String,
        update: ConfigUpdate,
    ) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = me.scope_of(&lock(&me.reader), &job)?;
            let current = me
                .settings
                .config_view(scope.clone(), name.clone())
                .settings;
            let next = update.apply(current);
            {
                let mut store = me.writer.lock();
                store.set_settings(&scope, next)?;
                me.settings.reload(&store)?;
            }
            me.status_cache.clear();
            tracing::info!(%scope, ?next, "sampling settings changed");
            Ok(me.settings.config_view(scope, name))
        })
        .await?
    }

    pub async fn config_reset(self: &Arc<Self>, job: String) -> Result<ConfigView, QueryError> {
        self.blocking(move |me| {
            let (scope, name) = me.scope_of(&lock(&me.reader), &job)?;
            {
                let mut store = me.writer.lock();
                store.remove_settings(&scope)?;
                me.settings.reload(&store)?;
            }
            me.status_cache.clear();
            Ok(me.settings.config_view(scope, name))
        })
        .await?
    }

    pub async fn agents(self: &Arc<Self>) -> Result<AgentsView, QueryError> {
        self.blocking(move |me| {
            let seqs = lock(&me.reader).agent_seqs()?;
            let m = lock(&me.misplaced);
            Ok(AgentsView {
                agents: seqs.into_iter().map(|a| m.agent_status(a)).collect(),
            })
        })
        .await?
    }

    /// Merges the windows older than `full_resolution` into one per subtask and minute
    /// ([`Store::roll_up`](crate::store::Store::roll_up)), from where the last rollup stopped;
    /// never those older than `retention`, which retention deletes (a window from a clock in
    /// 1970 must not make it walk every minute since). The writer is taken one minute at a
    /// time, so agents' batches go in between.
    pub async fn roll_up(
        self: &Arc<Self>,
        full_resolution: Duration,
        retention: Duration,
    ) -> Result<Rollup, QueryError> {
        let now = now_ms();
        let before = now.saturating_sub(full_resolution.as_millis() as u64);
        let kept_from = now.saturating_sub(retention.as_millis() as u64);
        self.blocking(move |me| {
            let span = ROLLUP_SPAN_MS;
            let (until, late) = {
                let mut mark = lock(&me.rollup);
                (mark.until_ms, mark.stored_from_ms.take())
            };
            let from = match until {
                Some(ms) => late.map_or(ms, |l| l.min(ms)),
                None => match me.writer.lock().oldest_window_start_ms()? {
                    Some(ms) => ms,
                    None => return Ok(Rollup::default()),
                },
            };
            let mut total = Rollup::default();
            let mut slot = from.max(kept_from) / span * span;
            while slot + span <= before {
                let r = match me.writer.lock().roll_up(slot, slot + span, span) {
                    Ok(r) => r,
                    Err(e) => {
                        // What arrived behind is still to be rolled up.
                        if let Some(l) = late {
                            let mut mark = lock(&me.rollup);
                            mark.stored_from_ms = Some(mark.stored_from_ms.map_or(l, |o| o.min(l)));
                        }
                        return Err(e.into());
                    }
                };
                total += r;
                slot += span;
                lock(&me.rollup).until_ms = Some(slot);
            }
            Ok(total)
        })
        .await?
    }

    /// Retention: deletes what is older than `retention`.
    pub async fn prune(self: &Arc<Self>, retention: Duration) -> Result<usize, QueryError> {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        self.blocking(move |me| {
            let removed = me.writer.lock().prune(cutoff)?;
            // What is kept in memory per agent goes with the agent's row.
            let known: HashSet<String> = me
                .writer
                .lock()
                .agent_seqs()?
                .into_iter()
                .map(|a| a.agent_id)
                .collect();
            lock(&me.misplaced).keep_agents(&known);
            Ok(removed)
        })
        .await?
    }
}

/// A stored window as `history` answers it, with its vertex's name.
fn history_window(w: MergedWindow, names: &HashMap<&str, &str>) -> HistoryWindow {
    HistoryWindow {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SubtaskRef;
    use crate::merge::{merge_subtask, SampleCounts};
    use crate::model::SubtaskMetrics;
    use crate::service::{build, CollectorConfig};

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A 2 s window of subtask 0 of job "j" from `start`, its 20 samples waiting.
    fn window(start: u64) -> MergedWindow {
        window_of("j", start, 0)
    }

    /// A 2 s window of subtask 0 of vertex "v" of `job` from `start`: of its 20 samples,
    /// `blocked` blocked and the others waiting.
    fn window_of(job: &str, start: u64, blocked: u32) -> MergedWindow {
        let counts = SampleCounts {
            samples: 20,
            blocked,
            waiting: 20 - blocked,
            busy: 0,
            timers: None,
        };
        let metrics = SubtaskMetrics::default();
        let at = SubtaskRef {
            job_id: job.into(),
            vertex_id: "v".into(),
            subtask: 0,
            attempt: 0,
        };
        let merged = merge_subtask(&counts, &metrics);
        MergedWindow::new(&at, start, start + 1_900, &merged, metrics, Vec::new())
    }

    /// A directory of this test's own under the system's temp dir.
    fn scratch_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("bpmon-{name}-{}-{}", std::process::id(), now_ms()))
    }

    /// An episode of vertex "v" of `job` under way since `start`, HIGH at `peak_ratio` then.
    fn open_episode(job: &str, start: u64, peak_ratio: f64) -> crate::api::Episode {
        crate::api::Episode {
            job_id: job.into(),
            vertex_id: "v".into(),
            vertex: "v".into(),
            started_at_ms: start,
            ended_at_ms: None,
            peak_level: bpmon_proto::Level::High,
            peak_ratio,
            peak_at_ms: start,
            bottleneck: None,
        }
    }

    fn stored(c: &Collector) -> usize {
        c.writer.lock().history("j", None, 0).map_or(0, |h| h.len())
    }

    #[tokio::test]
    async fn the_rollup_goes_on_from_where_it_stopped_and_goes_back_for_late_windows() {
        let dir = scratch_dir("rollup-service");
        let config = CollectorConfig {
            data_dir: dir.clone(),
            ..CollectorConfig::default()
        };
        let c = build(&config).unwrap();
        // Two minutes of 2 s windows, an hour ago.
        let t0 = (now_ms() - 3_600_000) / ROLLUP_SPAN_MS * ROLLUP_SPAN_MS;
        let rows: Vec<MergedWindow> = (0..60).map(|i| window(t0 + i * 2_000)).collect();
        c.writer.lock().insert_windows(&rows).unwrap();
        // Windows older than the retention are left to it.
        c.writer
            .lock()
            .insert_windows(&[window(1_000), window(3_000)])
            .unwrap();
        let r = c.roll_up(Duration::ZERO, WEEK).await.unwrap();
        assert_eq!((r.windows, r.merged), (60, 2));
        assert_eq!(stored(&c), 4);
        let until = lock(&c.rollup).until_ms.unwrap();
        assert!(until >= now_ms() - ROLLUP_SPAN_MS, "stopped at {until}");
        // Nothing new: nothing to do.
        assert_eq!(
            c.roll_up(Duration::ZERO, WEEK).await.unwrap(),
            Rollup::default()
        );
        // Windows of the first minute arrive late (an agent's spool): the next rollup goes back
        // for them and merges them into the minute's window.
        let late: Vec<MergedWindow> = (0..5).map(|i| window(t0 + 10_001 + i * 2_000)).collect();
        c.writer.lock().insert_windows(&late).unwrap();
        lock(&c.rollup).stored_from_ms = Some(t0 + 10_001);
        let r = c.roll_up(Duration::ZERO, WEEK).await.unwrap();
        assert_eq!((r.windows, r.merged), (6, 1));
        let h = c.writer.lock().history("j", None, t0).unwrap();
        let spans: Vec<(u64, u64, u32)> = h
            .iter()
            .map(|w| (w.window_start_ms - t0, w.window_end_ms - t0, w.samples))
            .collect();
        assert_eq!(spans, [(0, 59_900, 700), (60_000, 119_900, 600)]);
        drop(c);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_level_that_held_in_the_first_window_is_since_at_least_then() {
        use bpmon_proto::Level;
        let dir = scratch_dir("watched-since");
        let now = now_ms();
        let blocked = |job: &str, start: u64| window_of(job, start, 20);
        {
            let mut store = Store::open(&dir).unwrap();
            // "seen": back-pressured from bpmon's first window on; "began": OK at first (an
            // earlier window ended before the episode started).
            for job in ["seen", "began"] {
                store
                    .upsert_job(job, job, "http://127.0.0.1:9", now)
                    .unwrap();
                store
                    .upsert_vertices(
                        job,
                        &[crate::store::VertexRow {
                            vertex_id: "v".into(),
                            name: "v".into(),
                            parallelism: 1,
                        }],
                    )
                    .unwrap();
            }
            store
                .insert_windows(&[blocked("seen", now - 60_000), blocked("seen", now - 2_000)])
                .unwrap();
            store
                .insert_windows(&[
                    window_of("began", now - 60_000, 0),
                    blocked("began", now - 30_000),
                ])
                .unwrap();
            for (job, start) in [("seen", now - 60_000), ("began", now - 30_000)] {
                store.save_episode(&open_episode(job, start, 1.0)).unwrap();
            }
        }
        let config = CollectorConfig {
            data_dir: dir.clone(),
            ..CollectorConfig::default()
        };
        let c = build(&config).unwrap();
        let jobs = c.jobs().await.unwrap().jobs;
        let of = |id: &str| jobs.iter().find(|j| j.job_id == id).unwrap().clone();
        let (seen, began) = (of("seen"), of("began"));
        assert_eq!(seen.level, Some(Level::High));
        assert_eq!(seen.level_since_ms, Some(now - 60_000));
        assert_eq!(seen.watched_since_ms, Some(now - 60_000 + 1_900));
        assert!(seen.level_since_ms < seen.watched_since_ms, "{seen:?}");
        assert_eq!(began.level_since_ms, Some(now - 30_000));
        assert!(began.level_since_ms >= began.watched_since_ms, "{began:?}");
        drop(c);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_restarted_collector_keeps_the_open_episodes_until_it_has_read_flink() {
        let dir = scratch_dir("restart-episodes");
        // What the collector left: a job of a cluster, its last window, an episode under way.
        let flink = "http://127.0.0.1:9";
        let now = now_ms();
        {
            let mut store = Store::open(&dir).unwrap();
            store.upsert_job("j", "job", flink, now).unwrap();
            store.insert_windows(&[window(now - 2_000)]).unwrap();
            store
                .save_episode(&open_episode("j", now - 60_000, 0.9))
                .unwrap();
        }
        // Restarted, watching that cluster, not read yet (nothing answers there): the job may
        // still run, so its episode stays open.
        let mut config = CollectorConfig {
            data_dir: dir.clone(),
            ..CollectorConfig::default()
        };
        config.flink.urls = vec![flink.into()];
        let c = build(&config).unwrap();
        c.check_bottlenecks().await;
        assert_eq!(lock(&c.episodes).open().len(), 1);
        drop(c);
        // Watching no cluster at that address, nothing will ever say it runs: it ends.
        config.flink.urls = Vec::new();
        let c = build(&config).unwrap();
        c.check_bottlenecks().await;
        assert!(lock(&c.episodes).open().is_empty());
        drop(c);
        let _ = std::fs::remove_dir_all(dir);
    }
}
