//! What the collector knows about a Flink cluster: jobs, their vertices and edges, where each
//! subtask runs, and each subtask's network and time metrics. Filled by `flink_rest`, read by
//! `merge` and `diagnosis`. Plain data: every field Flink may not report is an `Option`.

use serde::{Deserialize, Serialize};

/// One poll of one Flink cluster's REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    /// The REST base URL this came from (a collector may watch several clusters).
    pub flink_url: String,
    /// `flink-version` from `GET /config`.
    pub flink_version: Option<String>,
    /// When the poll finished, ms since the Unix epoch.
    pub fetched_at_ms: u64,
    /// Running jobs.
    pub jobs: Vec<JobSnapshot>,
    /// The cluster's TaskManagers (`GET /taskmanagers`): agents' JVMs are matched to these.
    #[serde(default)]
    pub taskmanagers: Vec<TaskManagerRef>,
    /// `GET /taskmanagers` failed: `taskmanagers` is empty for want of an answer, not because
    /// the cluster has none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub taskmanagers_unread: bool,
    /// What could not be read (timeouts, HTTP errors), with the endpoint: reported, never hidden.
    pub errors: Vec<String>,
}

/// How a poll of a cluster went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// Every request answered.
    Complete,
    /// Some requests failed ([`ClusterSnapshot::errors`] says which); the rest is usable.
    Partial,
    /// Requests failed and neither a job nor a TaskManager was read: nothing usable, so the
    /// cluster's last good snapshot stays (an unreachable cluster ends here).
    Failed,
}

impl ClusterSnapshot {
    /// Whether this snapshot can replace the last good one, and whether anything is missing.
    pub fn outcome(&self) -> PollOutcome {
        if self.errors.is_empty() {
            PollOutcome::Complete
        } else if self.jobs.is_empty() && self.taskmanagers.is_empty() {
            PollOutcome::Failed
        } else {
            PollOutcome::Partial
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub job_id: String,
    pub name: String,
    /// `RUNNING`, `RESTARTING`, …
    pub state: String,
    pub start_time_ms: Option<i64>,
    /// In topological order when the plan allows it (sources first).
    pub vertices: Vec<VertexSnapshot>,
    /// Data flows from `source` to `target` (from `GET /jobs/:jid/plan`).
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// `HASH`, `REBALANCE`, `FORWARD`, …
    pub ship_strategy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VertexSnapshot {
    /// 32-hex JobVertexID. Not unique across jobs: Flink derives it from the topology's shape.
    pub vertex_id: String,
    /// The vertex name; task threads are named after it.
    pub name: String,
    pub parallelism: u32,
    pub subtasks: Vec<SubtaskSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    /// 0-based.
    pub subtask: u32,
    pub attempt: u32,
    /// `RUNNING`, `DEPLOYING`, …
    pub status: String,
    /// `taskmanager-id` (the TaskManager's resource id).
    pub taskmanager_id: Option<String>,
    /// `host` (≤ 1.20) or `endpoint` (1.19+), whichever the version gives.
    pub host: Option<String>,
    pub start_time_ms: Option<i64>,
    pub metrics: SubtaskMetrics,
}

/// A subtask's metrics, whatever the Flink version calls them. Values as Flink reports them:
/// usages are fractions (an `outPoolUsage` above 1.0 means overdraft buffers are in use), the
/// `*_ms` fields are ms per second, counters are totals since the task started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskMetrics {
    pub out_pool_usage: Option<f64>,
    pub in_pool_usage: Option<f64>,
    pub input_floating_buffers_usage: Option<f64>,
    pub input_exclusive_buffers_usage: Option<f64>,
    pub num_records_in: Option<f64>,
    pub num_records_out: Option<f64>,
    pub num_bytes_in: Option<f64>,
    pub num_bytes_out: Option<f64>,
    pub num_bytes_in_local: Option<f64>,
    pub num_bytes_in_remote: Option<f64>,
    pub num_buffers_out: Option<f64>,
    /// Rates over Flink's last minute (`…PerSecond` meters): which subtask gets the records, and
    /// over which kind of channel.
    #[serde(default)]
    pub records_in_per_s: Option<f64>,
    #[serde(default)]
    pub bytes_in_local_per_s: Option<f64>,
    #[serde(default)]
    pub bytes_in_remote_per_s: Option<f64>,
    pub soft_back_pressured_ms: Option<f64>,
    pub hard_back_pressured_ms: Option<f64>,
    /// 1.13–1.14: soft + hard in one metric (`backPressuredTimeMsPerSecond`).
    pub back_pressured_ms: Option<f64>,
    pub idle_ms: Option<f64>,
    pub busy_ms: Option<f64>,
    pub is_back_pressured: Option<bool>,
}

/// A TaskManager as `GET /taskmanagers` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManagerRef {
    pub id: String,
    /// Host of its RPC address (from `path`) or of its resource id: what it registered under.
    pub host: Option<String>,
    /// Its RPC port (from `path` or a generated resource id).
    pub rpc_port: Option<u16>,
    /// Its `dataPort` (shuffle), when Flink names one.
    pub data_port: Option<u16>,
    /// What `host` resolves to, when it is a name the collector could resolve.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

impl TaskManagerRef {
    /// Its RPC and data ports, as far as known.
    pub fn ports(&self) -> Vec<u16> {
        self.rpc_port.into_iter().chain(self.data_port).collect()
    }
}
