//! The collector's query API: what `GET /api/v1/…` answers and the CLI reads. Field names are
//! the contract (`status --output json` prints [`StatusView`] as is); new fields may be added,
//! never renamed.
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /api/v1/jobs` | [`JobsView`] |
//! | `GET /api/v1/jobs/{job}/status` | [`StatusView`] (`job`: id or name) |
//! | `GET /api/v1/jobs/{job}/history?since_ms=…&vertex=…` | [`HistoryView`] |
//! | `GET /api/v1/jobs/{job}/episodes?since_ms=…` | [`EpisodesView`] |
//! | `GET /api/v1/jobs/{job}/timeline?since_ms=…&until_ms=…&points=…` | [`TimelineView`] |
//! | `GET /api/v1/jobs/{job}/flame?vertex=…&since_ms=…&until_ms=…` | [`FlameView`]; with `&format=folded`, the folded text flame graph tools read |
//! | `GET /api/v1/config/{job}` | [`ConfigView`] (`job`: id, name, or `*` for the default) |
//! | `PUT /api/v1/config/{job}` | body [`ConfigUpdate`], answers [`ConfigView`] |
//! | `DELETE /api/v1/config/{job}` | the job falls back to the default; answers [`ConfigView`] |
//! | `GET /api/v1/agents` | [`AgentsView`] |
//!
//! Errors are `{"error": "…"}` with a 4xx/5xx status.

use std::collections::BTreeMap;

use bpmon_proto::{FrameCount, Level, SamplingSettings, Scope, TimerWindow};
use serde::{Deserialize, Serialize};

use crate::cause::CauseKind;
use crate::diagnosis::Finding;
use crate::merge::{FoldedStack, RatioSource, SplitRule};
use crate::model::{Edge, SubtaskMetrics};

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsView {
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: String,
    pub job_name: String,
    pub flink_url: String,
    /// Flink's job state at the last poll (`RUNNING`, …); `None` once the job is gone.
    pub state: Option<String>,
    /// The worst vertex's level; `None` before any samples.
    pub level: Option<Level>,
    pub ratio: Option<f64>,
    /// End of the newest merged window, ms since the Unix epoch.
    pub updated_at_ms: Option<u64>,
    pub stale: bool,
    /// The bottleneck vertex's name, when the diagnosis found one.
    pub bottleneck: Option<String>,
    /// The bottleneck vertex's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck_vertex_id: Option<String>,
    /// The bottleneck's first-ranked cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<CauseKind>,
    /// The share of the bottleneck's time (for skew, of its input) that cause explains, 0–1;
    /// none for `unknown` and `network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_share: Option<f64>,
    /// That cause in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_summary: Option<String>,
    /// Since when the job has been as it is (ms since the Unix epoch): back-pressured since
    /// its oldest episode under way started, or OK since its last episode ended. `None` when
    /// no episode says (a job never back-pressured while watched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_since_ms: Option<u64>,
    /// When bpmon's oldest window of the job ended: a `level_since_ms` before it means the
    /// level held from the first window on, so it may have held longer ("since at least").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_since_ms: Option<u64>,
}

/// `GET /api/v1/jobs/{job}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub job_id: String,
    pub job_name: String,
    pub flink_url: String,
    pub state: Option<String>,
    pub level: Option<Level>,
    /// End of the newest merged window (0 before any).
    pub updated_at_ms: u64,
    /// True when what is shown may no longer hold: see `stale_reasons`.
    pub stale: bool,
    #[serde(default)]
    pub stale_reasons: Vec<String>,
    /// When the metrics shown were read from Flink (ms since the Unix epoch).
    pub metrics_fetched_at_ms: Option<u64>,
    /// The sampling settings agents use for this job.
    pub settings: SamplingSettings,
    /// In topological order (sources first).
    pub vertices: Vec<VertexStatus>,
    /// The job graph's edges, by vertex id (what feeds what); empty when Flink no longer lists
    /// the job (the stored topology keeps only the vertices).
    #[serde(default)]
    pub edges: Vec<Edge>,
    pub diagnosis: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VertexStatus {
    pub vertex_id: String,
    pub name: String,
    pub parallelism: u32,
    /// The worst subtask's level; `None` while no subtask has samples.
    pub level: Option<Level>,
    pub ratio: Option<f64>,
    pub subtasks: Vec<SubtaskStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskStatus {
    /// 0-based.
    pub subtask: u32,
    /// `None` without samples; `why` says why.
    pub level: Option<Level>,
    pub ratio: Option<f64>,
    pub samples: u32,
    pub blocked: u32,
    pub soft: u32,
    pub idle: u32,
    pub busy: u32,
    /// How the waiting samples were split into soft and idle.
    pub split: Option<SplitRule>,
    /// What the ratio was computed from: the samples, or the exact time Flink's own timers of
    /// the task measured (in-process sampler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_source: Option<RatioSource>,
    /// Flink's timers of the task over the window, where the in-process sampler read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimerWindow>,
    pub taskmanager_id: Option<String>,
    pub host: Option<String>,
    pub attempt: Option<u32>,
    pub window_start_ms: Option<u64>,
    pub window_end_ms: Option<u64>,
    /// Flink's metric names (`outPoolUsage`, `inPoolUsage`, …) to values; only those Flink
    /// reported.
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_frames: Vec<FrameCount>,
    /// Why there is no level (no samples yet, ambiguous thread, no agent on the host…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// `GET /api/v1/jobs/{job}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub job_id: String,
    pub job_name: String,
    pub since_ms: u64,
    /// Oldest first.
    pub windows: Vec<HistoryWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryWindow {
    pub vertex_id: String,
    pub vertex_name: String,
    pub subtask: u32,
    pub attempt: u32,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub samples: u32,
    pub blocked: u32,
    pub soft: u32,
    pub idle: u32,
    pub busy: u32,
    pub ratio: Option<f64>,
    pub level: Option<Level>,
    pub taskmanager_id: Option<String>,
}

/// `GET /api/v1/jobs/{job}/episodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodesView {
    pub job_id: String,
    pub job_name: String,
    pub since_ms: u64,
    /// Episodes that overlap the period (ongoing ones included), oldest first.
    pub episodes: Vec<Episode>,
}

/// A vertex's back-pressure episode: from the first window that showed it LOW or HIGH to the
/// first that showed it OK again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub job_id: String,
    pub vertex_id: String,
    pub vertex: String,
    /// ms since the Unix epoch: when the first window at LOW or HIGH started.
    pub started_at_ms: u64,
    /// When the first window back at OK started; `None` while it lasts.
    pub ended_at_ms: Option<u64>,
    /// The worst it got: its level, ratio, and when that window started.
    pub peak_level: Level,
    pub peak_ratio: f64,
    pub peak_at_ms: u64,
    /// The job's bottleneck and its first cause at the peak (or when first known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<EpisodeBottleneck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeBottleneck {
    pub vertex_id: String,
    pub vertex: String,
    pub cause: CauseKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    pub summary: String,
}

/// `GET /api/v1/jobs/{job}/timeline`: each vertex's back-pressure over a period, in at most
/// `points` buckets of `bucket_ms`, with the episodes under way in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineView {
    pub job_id: String,
    pub job_name: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub bucket_ms: u64,
    /// In the job's order; a vertex without windows in the period has no points.
    pub vertices: Vec<VertexTimeline>,
    pub episodes: Vec<Episode>,
    /// When bpmon's oldest window of the job ended (see [`JobSummary::watched_since_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_since_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VertexTimeline {
    pub vertex_id: String,
    pub name: String,
    /// Oldest first; buckets without windows are left out.
    pub points: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// The bucket's start, ms since the Unix epoch.
    pub at_ms: u64,
    /// The highest ratio of any of the vertex's subtask windows in the bucket.
    pub ratio: Option<f64>,
    /// Their worst level.
    pub level: Option<Level>,
    /// How many subtask windows the bucket holds.
    pub windows: u32,
}

/// `GET /api/v1/jobs/{job}/flame`: a vertex's busy samples' stacks over a period, summed over
/// its subtasks (the bottleneck's when no vertex is named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlameView {
    pub job_id: String,
    pub job_name: String,
    pub vertex_id: String,
    pub vertex: String,
    pub since_ms: u64,
    pub until_ms: u64,
    /// Busy samples with a stack.
    pub samples: u64,
    /// Most samples first; past a bound, the rest summed as `(other stacks)`.
    pub stacks: Vec<FoldedStack>,
}

/// `GET /api/v1/config/{job}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    /// A job id, or `*` for the default.
    pub scope: Scope,
    pub job_name: Option<String>,
    pub settings: SamplingSettings,
    /// True when the job has no settings of its own and follows the default.
    pub inherited: bool,
}

/// `PUT /api/v1/config/{job}`: fields left out keep their current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    /// Start from [`SamplingSettings::CONTINUOUS`] (true) or from Flink's classic monitor,
    /// [`SamplingSettings::default`] (false), instead of the current settings; the other fields
    /// then change that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<bool>,
    pub samples: Option<u32>,
    pub delay_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_every: Option<u32>,
}

impl ConfigUpdate {
    pub fn apply(&self, to: SamplingSettings) -> SamplingSettings {
        let to = match self.continuous {
            Some(true) => SamplingSettings::CONTINUOUS,
            Some(false) => SamplingSettings::default(),
            None => to,
        };
        SamplingSettings {
            samples: self.samples.unwrap_or(to.samples),
            delay_ms: self.delay_ms.unwrap_or(to.delay_ms),
            interval_ms: self.interval_ms.unwrap_or(to.interval_ms),
            stacks_every: self.stacks_every.unwrap_or(to.stacks_every),
        }
    }
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentsView {
    pub agents: Vec<AgentStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub highest_seq: u64,
    pub last_batch_ms: u64,
    /// Batches the agent said it had to drop (its spool was full), as of its last batch.
    pub dropped_batches: u64,
    /// Task threads of its last batches that could not be placed, with the reason.
    #[serde(default)]
    pub unresolved: Vec<String>,
    /// The TaskManager JVMs it reported in the last minutes: which TaskManager each is, and how
    /// that was told, or why none.
    #[serde(default)]
    pub jvms: Vec<AgentJvm>,
}

/// One JVM an agent reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentJvm {
    pub pid: u32,
    pub taskmanager_id: Option<String>,
    /// `TaskManager X by <evidence>`, or why it matched none.
    pub placement: String,
    /// What the agent saw of it: resource id, listening ports, addresses, host name.
    pub seen: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A subtask's metrics under Flink's own names, leaving out what Flink did not report.
pub fn flink_metric_names(m: &SubtaskMetrics) -> BTreeMap<String, f64> {
    let pairs: [(&str, Option<f64>); 16] = [
        ("outPoolUsage", m.out_pool_usage),
        ("inPoolUsage", m.in_pool_usage),
        ("inputFloatingBuffersUsage", m.input_floating_buffers_usage),
        (
            "inputExclusiveBuffersUsage",
            m.input_exclusive_buffers_usage,
        ),
        ("numRecordsIn", m.num_records_in),
        ("numRecordsOut", m.num_records_out),
        ("numBytesIn", m.num_bytes_in),
        ("numBytesOut", m.num_bytes_out),
        ("numBytesInLocal", m.num_bytes_in_local),
        ("numBytesInRemote", m.num_bytes_in_remote),
        ("numBuffersOut", m.num_buffers_out),
        ("softBackPressuredTimeMsPerSecond", m.soft_back_pressured_ms),
        ("hardBackPressuredTimeMsPerSecond", m.hard_back_pressured_ms),
        ("backPressuredTimeMsPerSecond", m.back_pressured_ms),
        ("idleTimeMsPerSecond", m.idle_ms),
        ("busyTimeMsPerSecond", m.busy_ms),
    ];
    let mut out: BTreeMap<String, f64> = pairs
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| v.is_finite()).map(|v| (k.to_string(), v)))
        .collect();
    if let Some(b) = m.is_back_pressured {
        out.insert("isBackPressured".into(), if b { 1.0 } else { 0.0 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_use_flinks_names_and_leave_out_the_missing() {
        let m = SubtaskMetrics {
            out_pool_usage: Some(1.0),
            in_pool_usage: Some(0.0),
            is_back_pressured: Some(true),
            idle_ms: Some(f64::NAN),
            ..Default::default()
        };
        let names = flink_metric_names(&m);
        assert_eq!(names.get("outPoolUsage"), Some(&1.0));
        assert_eq!(names.get("inPoolUsage"), Some(&0.0));
        assert_eq!(names.get("isBackPressured"), Some(&1.0));
        assert!(!names.contains_key("idleTimeMsPerSecond"));
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn a_config_update_keeps_what_it_leaves_out() {
        let u = ConfigUpdate {
            samples: Some(20),
            ..Default::default()
        };
        let s = u.apply(SamplingSettings::default());
        assert_eq!(s.samples, 20);
        assert_eq!(s.delay_ms, 50);
        assert_eq!(s.interval_ms, 60_000);
        assert_eq!(s.stacks_every, 1);
    }

    #[test]
    fn continuous_and_classic_start_from_their_presets() {
        let continuous = ConfigUpdate {
            continuous: Some(true),
            stacks_every: Some(5),
            ..Default::default()
        };
        let s = continuous.apply(SamplingSettings::default());
        assert_eq!(
            s,
            SamplingSettings {
                stacks_every: 5,
                ..SamplingSettings::CONTINUOUS
            }
        );
        let classic = ConfigUpdate {
            continuous: Some(false),
            ..Default::default()
        };
        assert_eq!(classic.apply(s), SamplingSettings::default());
    }
}
