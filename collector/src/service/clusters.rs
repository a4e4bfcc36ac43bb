//! The watched Flink clusters: a REST client per cluster, the last good snapshot each poll left
//! and whether the cluster answers now. A poll that fails keeps the last good snapshot; the
//! cluster's [`ClusterHealth`] says since when it fails and why.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::flink_rest::FlinkRestClient;
use crate::model::{ClusterSnapshot, PollOutcome};

use super::locks::{read, write};
use super::metrics::ServiceMetrics;
use super::status::ClusterHealth;

/// One watched Flink cluster.
struct ClusterState {
    client: Arc<FlinkRestClient>,
    last_good: Option<Arc<ClusterSnapshot>>,
    health: ClusterHealth,
}

/// Every watched cluster, by index (the order of the configured URLs).
pub struct Clusters {
    clusters: Vec<RwLock<ClusterState>>,
    /// Serialises on-demand polls of a cluster, so that a burst of batches causes one.
    refresh: Vec<tokio::sync::Mutex<()>>,
    poll_interval: Duration,
}

impl Clusters {
    pub fn new(clients: Vec<FlinkRestClient>, poll_interval: Duration) -> Clusters {
        Clusters {
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
            poll_interval,
        }
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Polls cluster `i` once and takes in the result: the new snapshot when it is usable (kept
    /// as the last good one), `None` when the poll failed (the last good one stays).
    pub async fn poll(&self, i: usize, metrics: &ServiceMetrics) -> Option<Arc<ClusterSnapshot>> {
        let client = Arc::clone(&read(&self.clusters[i]).client);
        let started = std::time::Instant::now();
        let snap = client.snapshot().await;
        let url = snap.flink_url.clone();
        let outcome = snap.outcome();
        metrics.poll(
            &url,
            started.elapsed(),
            outcome != PollOutcome::Failed,
            outcome != PollOutcome::Complete,
            snap.fetched_at_ms,
        );
        if outcome == PollOutcome::Failed {
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
            return None;
        }
        if outcome == PollOutcome::Partial {
            tracing::warn!(flink = %url, errors = ?snap.errors, "Flink REST poll was partial");
        }
        let mut snap = snap;
        let mut c = write(&self.clusters[i]);
        if let (PollOutcome::Partial, Some(prev)) = (outcome, &c.last_good) {
            keep_what_was_unread(&mut snap, prev);
        }
        let snap = Arc::new(snap);
        if c.health.failing.is_some() {
            tracing::info!(flink = %url, "Flink REST answers again");
        }
        c.health = ClusterHealth {
            fetched_at_ms: Some(snap.fetched_at_ms),
            failing: None,
        };
        c.last_good = Some(Arc::clone(&snap));
        Some(snap)
    }

    /// Serialises on-demand polls of cluster `i`: hold the guard while deciding and polling.
    pub async fn refresh_guard(&self, i: usize) -> tokio::sync::MutexGuard<'_, ()> {
        self.refresh[i].lock().await
    }

    /// Whether cluster `i` has no good snapshot read at or after `ms`.
    pub fn older_than(&self, i: usize, ms: u64) -> bool {
        read(&self.clusters[i])
            .health
            .fetched_at_ms
            .is_none_or(|f| f < ms)
    }

    /// The last good snapshot of every cluster that has one.
    pub fn snapshots(&self) -> Vec<Arc<ClusterSnapshot>> {
        self.clusters
            .iter()
            .filter_map(|c| read(c).last_good.clone())
            .collect()
    }

    /// Clusters whose data is missing or failing: placing a report may need them.
    pub fn unhealthy(&self) -> Vec<(usize, String)> {
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

    /// The running job `job_id` in the last good snapshots: the snapshot and the job's index.
    pub fn live_job(&self, job_id: &str) -> Option<(Arc<ClusterSnapshot>, usize)> {
        self.snapshots().into_iter().find_map(|s| {
            let i = s.jobs.iter().position(|j| j.job_id == job_id)?;
            Some((s, i))
        })
    }

    /// The state of the watched cluster at `url`, if one is there.
    fn at(&self, url: &str) -> Option<std::sync::RwLockReadGuard<'_, ClusterState>> {
        self.clusters
            .iter()
            .map(read)
            .find(|c| c.client.base_url() == url.trim_end_matches('/'))
    }

    /// Whether this run can say what the cluster at `url` runs: it has read it at least once,
    /// or watches no cluster at that address (nothing will ever read it).
    pub fn can_tell(&self, url: &str) -> bool {
        self.at(url).is_none_or(|c| c.last_good.is_some())
    }

    /// The health of the cluster at `url`.
    pub fn health_of(&self, url: &str) -> ClusterHealth {
        self.at(url).map(|c| c.health.clone()).unwrap_or_default()
    }
}

/// What a partial poll could not read, `prev` read: a job's topology and placement change only
/// on a restart or a rescale (which a later poll reads), so for one poll the last read ones are
/// right where nothing at all would be wrong.
/// - A listed job whose details could not be read (no vertices): its vertices, edges and
///   placement, so its reports are still placed and `status` still shows its graph.
/// - A vertex whose subtasks could not be read: its placement, at the same parallelism.
/// - A job whose plan could not be read (no edges, same vertices): its edges. Without them, one
///   poll's diagnosis would see no senders and no receivers, and lose the bottleneck.
/// - TaskManagers that could not be listed: without them every agent's JVM would go unplaced.
///
/// Metrics are never carried over: they would be read as current.
fn keep_what_was_unread(snap: &mut ClusterSnapshot, prev: &ClusterSnapshot) {
    if snap.taskmanagers_unread {
        snap.taskmanagers = prev.taskmanagers.clone();
    }
    for job in snap.jobs.iter_mut() {
        let Some(known) = prev.jobs.iter().find(|p| p.job_id == job.job_id) else {
            continue;
        };
        if job.vertices.is_empty() && !known.vertices.is_empty() {
            job.vertices = known.vertices.clone();
            for s in job.vertices.iter_mut().flat_map(|v| v.subtasks.iter_mut()) {
                s.metrics = Default::default();
            }
            job.edges = known.edges.clone();
            tracing::debug!(job = %job.job_id, "job details unread this poll: the last read topology stays");
            continue;
        }
        for v in job.vertices.iter_mut().filter(|v| v.subtasks.is_empty()) {
            let Some(kv) = known
                .vertices
                .iter()
                .find(|k| k.vertex_id == v.vertex_id && k.parallelism == v.parallelism)
            else {
                continue;
            };
            v.subtasks = kv.subtasks.clone();
            for s in &mut v.subtasks {
                s.metrics = Default::default();
            }
        }
        let same_vertices = job.vertices.len() == known.vertices.len()
            && job
                .vertices
                .iter()
                .all(|v| known.vertices.iter().any(|k| k.vertex_id == v.vertex_id));
        if job.edges.is_empty() && !known.edges.is_empty() && same_vertices {
            job.edges = known.edges.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Edge, JobSnapshot, SubtaskMetrics, SubtaskSnapshot, TaskManagerRef, VertexSnapshot,
    };

    fn job(id: &str, vertices: usize) -> JobSnapshot {
        JobSnapshot {
            job_id: id.into(),
            name: format!("job {id}"),
            state: "RUNNING".into(),
            start_time_ms: Some(1),
            vertices: (0..vertices)
                .map(|v| VertexSnapshot {
                    vertex_id: format!("v{v}"),
                    name: format!("vertex {v}"),
                    parallelism: 1,
                    subtasks: vec![SubtaskSnapshot {
                        subtask: 0,
                        attempt: 0,
                        status: "RUNNING".into(),
                        taskmanager_id: Some("tm0".into()),
                        host: Some("h1".into()),
                        start_time_ms: Some(2),
                        metrics: SubtaskMetrics {
                            out_pool_usage: Some(1.0),
                            ..Default::default()
                        },
                    }],
                })
                .collect(),
            edges: (1..vertices)
                .map(|v| Edge {
                    source: format!("v{}", v - 1),
                    target: format!("v{v}"),
                    ship_strategy: None,
                })
                .collect(),
        }
    }

    fn snapshot(jobs: Vec<JobSnapshot>) -> ClusterSnapshot {
        ClusterSnapshot {
            flink_url: "http://flink:8081".into(),
            taskmanagers_unread: false,
            flink_version: Some("2.3.0".into()),
            fetched_at_ms: 10,
            jobs,
            taskmanagers: Vec::new(),
            errors: vec!["GET http://flink:8081/jobs/a: connection reset".into()],
        }
    }

    #[test]
    fn a_job_whose_details_were_not_read_keeps_its_known_topology_without_metrics() {
        let prev = snapshot(vec![job("a", 2), job("b", 3)]);
        let mut snap = snapshot(vec![job("a", 0), job("b", 1), job("c", 0)]);
        keep_what_was_unread(&mut snap, &prev);
        let a = &snap.jobs[0];
        assert_eq!(a.vertices.len(), 2);
        assert_eq!(a.edges, prev.jobs[0].edges);
        assert_eq!(a.vertices[0].subtasks[0].host.as_deref(), Some("h1"));
        assert_eq!(a.vertices[0].subtasks[0].metrics, SubtaskMetrics::default());
        // A job read this poll stays as read, even if it changed shape.
        assert_eq!(snap.jobs[1], job("b", 1));
        // A job never read before stays empty.
        assert!(snap.jobs[2].vertices.is_empty());
    }

    #[test]
    fn unread_subtasks_and_plan_are_the_ones_known() {
        let prev = snapshot(vec![job("a", 3)]);
        let mut snap = snapshot(vec![job("a", 3)]);
        snap.jobs[0].vertices[1].subtasks.clear();
        snap.jobs[0].edges.clear();
        keep_what_was_unread(&mut snap, &prev);
        let a = &snap.jobs[0];
        assert_eq!(a.edges, prev.jobs[0].edges);
        let kept = &a.vertices[1].subtasks[0];
        assert_eq!(kept.taskmanager_id.as_deref(), Some("tm0"));
        assert_eq!(kept.metrics, SubtaskMetrics::default());
        // What was read this poll keeps this poll's metrics.
        assert_eq!(a.vertices[0].subtasks[0].metrics.out_pool_usage, Some(1.0));

        // Rescaled: the old placement does not fit, and is not taken.
        let mut rescaled = snapshot(vec![job("a", 3)]);
        rescaled.jobs[0].vertices[1].parallelism = 4;
        rescaled.jobs[0].vertices[1].subtasks.clear();
        keep_what_was_unread(&mut rescaled, &prev);
        assert!(rescaled.jobs[0].vertices[1].subtasks.is_empty());
        // Other vertices (another job graph under the same id?): the old edges are not taken.
        let mut other = snapshot(vec![job("a", 2)]);
        other.jobs[0].edges.clear();
        keep_what_was_unread(&mut other, &prev);
        assert!(other.jobs[0].edges.is_empty());
    }

    #[test]
    fn unread_taskmanagers_are_the_ones_known() {
        let tm = |id: &str| TaskManagerRef {
            id: id.into(),
            host: Some("h1".into()),
            rpc_port: Some(6122),
            data_port: None,
            addresses: vec![],
        };
        let mut prev = snapshot(vec![job("a", 2)]);
        prev.taskmanagers = vec![tm("tm0"), tm("tm1")];
        let mut unread = snapshot(vec![job("a", 2)]);
        unread.taskmanagers_unread = true;
        keep_what_was_unread(&mut unread, &prev);
        assert_eq!(unread.taskmanagers, prev.taskmanagers);
        // Read, and one fewer: as read.
        let mut read = snapshot(vec![job("a", 2)]);
        read.taskmanagers = vec![tm("tm1")];
        keep_what_was_unread(&mut read, &prev);
        assert_eq!(read.taskmanagers, vec![tm("tm1")]);
        // Read, and none: none.
        let mut none = snapshot(vec![job("a", 2)]);
        keep_what_was_unread(&mut none, &prev);
        assert!(none.taskmanagers.is_empty());
    }
}
