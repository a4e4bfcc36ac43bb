//! The agent-facing side of the running collector: a batch is placed (on a blocking thread),
//! stored through the writer, and only then counted and remembered (unplaced threads, level
//! changes); plans and settings are answered from memory.

use std::sync::Arc;

use bpmon_proto::{AgentPlan, PlanRequest, ReportBatch};

use crate::clock::now_ms;
use crate::model::ClusterSnapshot;
use crate::server::{Ingest, IngestError, IngestOutcome, SettingsView};

use super::levels::{observations, Observation};
use super::locks::lock;
use super::metrics::BatchOutcome;
use super::placement::{place_batch, Placement};
use super::plan::plan_for;
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
        let windows = placement.windows;
        let observed = observations(&windows);
        let n = windows.len();
        let new = self
            .writer
            .store_batch(batch.agent_id.clone(), seq, windows)
            .await?;
        if new {
            self.metrics.stored(n, placement.unplaced.len());
            lock(&self.misplaced).note(&batch, &placement.unplaced, placement.jvms, now_ms());
            self.note_levels(observed);
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
}
