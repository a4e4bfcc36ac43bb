//! The agent-facing side of the running collector: a batch is placed (on a blocking thread),
//! stored through the writer, and only then counted and remembered (unplaced threads, level
//! changes, the jobs whose bottleneck may have changed: checked in the background by
//! [`Collector::check_bottlenecks`]); plans and settings are answered from memory.

use std::sync::Arc;

use bpmon_proto::{AgentPlan, PlanRequest, ReportBatch};

use crate::api::StatusView;
use crate::clock::now_ms;
use crate::model::ClusterSnapshot;
use crate::server::{Ingest, IngestError, IngestOutcome, SettingsView};

use super::bottlenecks::{bottleneck_of, BottleneckEvent, Change};
use super::episodes::{EpisodeChange, EpisodeEvent};
use super::levels::{observations, Observation};
use super::locks::lock;
use super::metrics::BatchOutcome;
use super::placement::{place_batch, Placement};
use super::plan::plan_for;
use super::queries::QueryError;
use super::state::Collector;
use super::writer::WriteError;

/// The agent-facing side.
#[derive(Clone)]
pub struct Service(pub Arc<Collector>);

impl Ingest for Service {
    async fn ingest(&self, batch: ReportBatch) -> Result<IngestOutcome, IngestError> {
        let result = self.0.take_batch(batch).await;
        self.0.metrics.batch(match &result {
            Ok(o) if o.duplicate => BatchOutcome::Duplicate,
            Ok(_) => BatchOutcome::Stored,
            Err(_) => BatchOutcome::Failed,
        });
        result
    }

    async fn settings(&self) -> Result<SettingsView, IngestError> {
        Ok(self.0.settings.view())
    }

    async fn plan(&self, request: PlanRequest) -> Result<AgentPlan, IngestError> {
        let snaps = self.0.clusters.snapshots();
        let refs: Vec<&ClusterSnapshot> = snaps.iter().map(|s| s.as_ref()).collect();
        let s = self.0.settings.view();
        Ok(plan_for(&request, &refs, s.default, &s.jobs))
    }
}

impl From<WriteError> for IngestError {
    fn from(e: WriteError) -> Self {
        IngestError::Unavailable(e.to_string())
    }
}

impl Collector {
    /// Places a batch, stores it, and notes what it changed; answers once it is stored.
    async fn take_batch(
        self: &Arc<Self>,
        batch: ReportBatch,
    ) -> Result<IngestOutcome, IngestError> {
        let batch = Arc::new(batch);
        let mut placement = self.place(&batch).await?;
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
            placement = self.place(&batch).await?;
        }
        if placement.unplaced.iter().any(|u| u.no_taskmanager) {
            let unhealthy = self.clusters.unhealthy();
            if !unhealthy.is_empty() {
                // Accepting now would lose these threads for good; the agent keeps the batch.
                let names: Vec<String> = unhealthy.into_iter().map(|u| u.1).collect();
                return Err(IngestError::FlinkUnreadable(names.join("; ")));
            }
        }
        let seq = batch.seq;
        let paused_ms: f64 = batch
            .reports
            .iter()
            .filter_map(|r| r.cost.safepoint_ms_total)
            .sum();
        let inside_cpu_ms: Option<f64> = batch
            .reports
            .iter()
            .filter_map(|r| r.cost.inside_cpu_ms_total)
            .reduce(|a, b| a + b);
        let windows = placement.windows;
        let oldest = windows.iter().map(|w| w.window_start_ms).min();
        let observed = observations(&windows);
        let mut jobs: Vec<String> = windows.iter().map(|w| w.job_id.clone()).collect();
        jobs.dedup();
        let n = windows.len();
        let new = self
            .writer
            .store_batch(batch.agent_id.clone(), seq, windows)
            .await?;
        if new {
            // Windows older than where the rollup got to (an agent's spool, replayed after a
            // long outage): the next rollup starts from them.
            if let Some(oldest) = oldest {
                let mut mark = lock(&self.rollup);
                mark.stored_from_ms = Some(mark.stored_from_ms.map_or(oldest, |o| o.min(oldest)));
            }
            self.metrics.stored(n, placement.unplaced.len());
            self.metrics.sampling_paused(&batch.agent_id, paused_ms);
            if let Some(ms) = inside_cpu_ms {
                self.metrics.sampling_cpu(&batch.agent_id, ms);
            }
            lock(&self.misplaced).note(&batch, &placement.unplaced, placement.jvms, now_ms());
            self.note_levels(observed);
            lock(&self.pending).mark(jobs);
            tracing::debug!(agent = %batch.agent_id, seq, windows = n, unplaced = placement.unplaced.len(), "batch stored");
        }
        Ok(IngestOutcome { duplicate: !new })
    }

    /// Places `batch` against the last good snapshots. Placing is CPU work proportional to the
    /// batch: on a blocking thread, so that one huge batch cannot hold up the async workers
    /// that answer queries and /metrics.
    async fn place(self: &Arc<Self>, batch: &Arc<ReportBatch>) -> Result<Placement, IngestError> {
        let (batch, me) = (Arc::clone(batch), Arc::clone(self));
        tokio::task::spawn_blocking(move || {
            let snaps = me.clusters.snapshots();
            let refs: Vec<&ClusterSnapshot> = snaps.iter().map(|s| s.as_ref()).collect();
            place_batch(&batch, &refs)
        })
        .await
        .map_err(|e| IngestError::Unavailable(format!("placing the batch failed: {e}")))
    }

    /// Logs the vertices whose back-pressure level changed with this batch.
    fn note_levels(&self, observed: Vec<Observation>) {
        let changes = lock(&self.levels).observe(observed);
        for c in changes {
            let job = self.clusters.live_job(&c.job_id);
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

    /// Checks the bottleneck of every job with windows stored since the last check (and of
    /// those with a bottleneck logged that Flink no longer runs), logs each change, and returns
    /// the changes. The background task runs it every
    /// [`CHECK_EVERY`](super::bottlenecks::CHECK_EVERY).
    pub async fn check_bottlenecks(self: &Arc<Self>) -> Vec<BottleneckEvent> {
        let events = match self.blocking(|me| me.bottleneck_changes()).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "checking the bottlenecks failed");
                return Vec::new();
            }
        };
        for e in &events {
            log_bottleneck(e);
        }
        events
    }

    fn bottleneck_changes(&self) -> Vec<BottleneckEvent> {
        let mut jobs = lock(&self.pending).take();
        // A job that stopped sends no windows; its status without a topology has no bottleneck,
        // and its episodes end.
        let mut tracked = lock(&self.bottlenecks).tracked();
        tracked.extend(lock(&self.episodes).jobs());
        jobs.extend(
            tracked
                .into_iter()
                .filter(|j| self.clusters.live_job(j).is_none()),
        );
        let mut events = Vec::new();
        let mut episodes = Vec::new();
        for job_id in jobs {
            match self.job_status(&job_id) {
                Ok(Some(status)) => {
                    let live = self.clusters.live_job(&job_id).is_some();
                    if !live && !self.clusters.can_tell(&status.flink_url) {
                        // Its cluster not read yet (a collector just restarted): whether the
                        // job still runs is not known, and its open episodes must not end.
                        lock(&self.pending).mark([job_id]);
                        continue;
                    }
                    let now = bottleneck_of(&status);
                    if live {
                        episodes.extend(lock(&self.episodes).observe(&status, now.as_ref()));
                    } else {
                        let at = status.updated_at_ms;
                        episodes.extend(lock(&self.episodes).forget(&job_id, at));
                    }
                    events.extend(lock(&self.bottlenecks).observe(&job_id, &status.job_name, now));
                }
                Ok(None) => {
                    events.extend(lock(&self.bottlenecks).forget(&job_id));
                    episodes.extend(lock(&self.episodes).forget(&job_id, now_ms()));
                }
                Err(e) => {
                    // Tried again at the next check.
                    tracing::warn!(job_id = %job_id, error = %e, "cannot check the job's bottleneck");
                    lock(&self.pending).mark([job_id]);
                }
            }
        }
        self.record_episodes(&episodes);
        events
    }

    /// Stores and logs what changed of the episodes. A store that fails loses nothing the
    /// next change does not write again; it is said in the log.
    fn record_episodes(&self, events: &[EpisodeEvent]) {
        if events.is_empty() {
            return;
        }
        {
            let mut store = self.writer.lock();
            for e in events {
                if let Err(err) = store.save_episode(&e.episode) {
                    tracing::error!(job_id = %e.episode.job_id, vertex_id = %e.episode.vertex_id, error = %err, "cannot store a back-pressure episode");
                }
            }
        }
        for e in events {
            self.metrics.episode(e.change);
            log_episode(e);
        }
    }

    /// The job's status as it is now; `None` when the store has no such job any more.
    fn job_status(&self, job_id: &str) -> Result<Option<Arc<StatusView>>, QueryError> {
        let store = lock(&self.reader);
        let Some(row) = store.find_job(job_id)? else {
            return Ok(None);
        };
        let status = self.fresh_status(row, &store)?;
        Ok(Some(status.view))
    }
}

/// One line per episode that started, rose to a higher level, or ended.
fn log_episode(e: &EpisodeEvent) {
    let ep = &e.episode;
    let message = match e.change {
        EpisodeChange::Started => "back-pressure episode started",
        EpisodeChange::Peaked { level_rose: true } => "back-pressure episode got worse",
        // A higher ratio at the same level: stored, not news.
        EpisodeChange::Peaked { level_rose: false } => return,
        EpisodeChange::Ended => "back-pressure episode ended",
    };
    let b = ep.bottleneck.as_ref();
    tracing::info!(
        job_id = %ep.job_id,
        vertex_id = %ep.vertex_id,
        vertex = %ep.vertex,
        episode = e.change.as_str(),
        started_at_ms = ep.started_at_ms,
        ended_at_ms = ep.ended_at_ms,
        seconds = ep.ended_at_ms.map(|end| end.saturating_sub(ep.started_at_ms) as f64 / 1000.0),
        peak_level = ep.peak_level.as_str(),
        peak_ratio = ep.peak_ratio,
        bottleneck_vertex = b.map_or("none", |b| b.vertex.as_str()),
        cause = b.map_or("none", |b| b.cause.as_str()),
        summary = b.map_or("", |b| b.summary.as_str()),
        "{message}"
    );
}

/// One line per change of a job's bottleneck: what it is now, what it was, who waits for it.
fn log_bottleneck(e: &BottleneckEvent) {
    let now = e.now.as_ref();
    let previous = e.previous.as_ref();
    let message = match e.change {
        Change::Appeared => "bottleneck appeared",
        Change::Moved => "bottleneck moved to another vertex",
        Change::CauseChanged => "bottleneck's first cause changed",
        Change::Cleared => "bottleneck cleared",
    };
    tracing::info!(
        job_id = %e.job_id,
        job = %e.job_name,
        bottleneck = e.change.as_str(),
        vertex_id = now.map_or("none", |b| b.vertex_id.as_str()),
        vertex = now.map_or("none", |b| b.vertex.as_str()),
        cause = now.map_or("none", |b| b.cause.as_str()),
        share = now.and_then(|b| b.share),
        summary = now.map_or("", |b| b.summary.as_str()),
        victims = ?now.map_or(&[][..], |b| b.victims.as_slice()),
        previous_vertex_id = previous.map_or("none", |b| b.vertex_id.as_str()),
        previous_vertex = previous.map_or("none", |b| b.vertex.as_str()),
        previous_cause = previous.map_or("none", |b| b.cause.as_str()),
        "{message}"
    );
}
