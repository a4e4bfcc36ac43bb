//! `GET /metrics`: the collector in Prometheus's terms (the exposition; the counters live in
//! [`super::metrics`]).
//!
//! Levels and ratios are read from the same [`StatusView`]s the query API answers
//! ([`Collector::statuses`]), so a dashboard and `bpmon-collector status` never disagree. The
//! counters are kept by [`ServiceMetrics`] where batches are taken and polls happen.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `bpmon_subtask_backpressure_ratio`, `bpmon_subtask_backpressure_level` | gauge | job_id, vertex_id, subtask (off with `[metrics] per_subtask = false`) |
//! | `bpmon_vertex_backpressure_ratio`, `bpmon_vertex_backpressure_level` | gauge | job_id, vertex_id |
//! | `bpmon_job_info` (= 1) | gauge | job_id, job_name, flink_url |
//! | `bpmon_vertex_info` (= 1) | gauge | job_id, vertex_id, vertex_name |
//! | `bpmon_job_stale` (1 when `status` says stale) | gauge | job_id |
//! | `bpmon_bottleneck` (1 while a vertex is the bottleneck; `cause` its first-ranked cause) | gauge | job_id, vertex_id, cause |
//! | `bpmon_bottleneck_cause_share` (share of the bottleneck's time each cause explains) | gauge | job_id, vertex_id, cause, area |
//! | `bpmon_backpressure_episode_started_timestamp_seconds` (while an episode is under way) | gauge | job_id, vertex_id, peak_level |
//! | `bpmon_backpressure_episodes_total` | counter | change = started, ended |
//! | `bpmon_agent_last_report_timestamp_seconds` | gauge | agent_id |
//! | `bpmon_sampling_jvm_pause_seconds_total` (safepoints during the agent's dumps) | counter | agent_id |
//! | `bpmon_sampling_jvm_cpu_seconds_total` (the in-process sampler's CPU inside the JVMs) | counter | agent_id |
//! | `bpmon_ingest_batches_total` | counter | outcome = stored, duplicate, rejected, failed |
//! | `bpmon_ingest_windows_total`, `bpmon_ingest_unplaced_threads_total` | counter | |
//! | `bpmon_flink_poll_errors_total` | counter | flink_url |
//! | `bpmon_flink_poll_duration_seconds` | histogram | flink_url |
//! | `bpmon_flink_last_poll_success_timestamp_seconds` | gauge | flink_url |
//!
//! Levels are 0 (ok), 1 (low), 2 (high). A subtask or vertex without a level (no samples yet,
//! ambiguous) has no series.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bpmon_proto::Level;
use bpmon_telemetry::metrics::prometheus_client::metrics::family::Family;
use bpmon_telemetry::metrics::prometheus_client::metrics::gauge::Gauge;
use bpmon_telemetry::metrics::prometheus_client::registry::Registry;

use crate::api::{AgentsView, Episode, StatusView};

use super::metrics::{FloatGauge, Labels, ServiceMetrics};
use super::state::Collector;

/// 0 ok, 1 low, 2 high.
pub fn level_value(l: Level) -> i64 {
    match l {
        Level::Ok => 0,
        Level::Low => 1,
        Level::High => 2,
    }
}

/// Every metric, as of now, in one registry: the jobs' statuses and agents' last reports as
/// gauges, and the running counters.
pub fn registry(
    metrics: &ServiceMetrics,
    statuses: &[std::sync::Arc<StatusView>],
    agents: &AgentsView,
    open_episodes: &[Episode],
) -> Registry {
    let mut r = bpmon_telemetry::metrics::registry();
    let per_subtask = metrics.per_subtask();
    let gauges = JobGauges::default();
    for s in statuses {
        gauges.add(s, per_subtask);
    }
    let agent_last = Family::<Labels, FloatGauge>::default();
    for a in &agents.agents {
        agent_last
            .get_or_create(&vec![("agent_id", a.agent_id.clone())])
            .set(bpmon_telemetry::metrics::seconds(a.last_batch_ms));
    }
    gauges.register(&mut r, per_subtask);
    let episode_start = Family::<Labels, FloatGauge>::default();
    for e in open_episodes {
        episode_start
            .get_or_create(&vec![
                ("job_id", e.job_id.clone()),
                ("vertex_id", e.vertex_id.clone()),
                ("peak_level", e.peak_level.as_str().to_string()),
            ])
            .set(bpmon_telemetry::metrics::seconds(e.started_at_ms));
    }
    r.register(
        "backpressure_episode_started_timestamp_seconds",
        "When each back-pressure episode under way started (Unix time); absent when none is",
        episode_start,
    );
    r.register(
        "agent_last_report_timestamp_seconds",
        "When an agent's newest batch was stored (Unix time)",
        agent_last,
    );
    metrics.register(&mut r);
    r
}

/// The gauges read from the jobs' statuses.
#[derive(Default)]
struct JobGauges {
    subtask_ratio: Family<Labels, FloatGauge>,
    subtask_level: Family<Labels, Gauge>,
    vertex_ratio: Family<Labels, FloatGauge>,
    vertex_level: Family<Labels, Gauge>,
    job_info: Family<Labels, Gauge>,
    vertex_info: Family<Labels, Gauge>,
    job_stale: Family<Labels, Gauge>,
    bottleneck: Family<Labels, Gauge>,
    cause_share: Family<Labels, FloatGauge>,
}

impl JobGauges {
    /// One job's series; its subtasks' only with `per_subtask`.
    fn add(&self, s: &StatusView, per_subtask: bool) {
        self.job_info
            .get_or_create(&vec![
                ("job_id", s.job_id.clone()),
                ("job_name", s.job_name.clone()),
                ("flink_url", s.flink_url.clone()),
            ])
            .set(1);
        self.job_stale
            .get_or_create(&vec![("job_id", s.job_id.clone())])
            .set(i64::from(s.stale));
        self.add_bottlenecks(s);
        for v in &s.vertices {
            let vl = vec![
                ("job_id", s.job_id.clone()),
                ("vertex_id", v.vertex_id.clone()),
            ];
            self.vertex_info
                .get_or_create(&vec![
                    ("job_id", s.job_id.clone()),
                    ("vertex_id", v.vertex_id.clone()),
                    ("vertex_name", v.name.clone()),
                ])
                .set(1);
            if let (Some(level), Some(ratio)) = (v.level, v.ratio) {
                self.vertex_level.get_or_create(&vl).set(level_value(level));
                self.vertex_ratio.get_or_create(&vl).set(ratio);
            }
            if !per_subtask {
                continue;
            }
            for st in &v.subtasks {
                let (Some(level), Some(ratio)) = (st.level, st.ratio) else {
                    continue;
                };
                let mut sl = vl.clone();
                sl.push(("subtask", st.subtask.to_string()));
                self.subtask_level
                    .get_or_create(&sl)
                    .set(level_value(level));
                self.subtask_ratio.get_or_create(&sl).set(ratio);
            }
        }
    }

    /// The job's bottlenecks with their causes: alert on the cause, not on the back-pressured
    /// vertices upstream (they are the bottleneck's victims).
    fn add_bottlenecks(&self, s: &StatusView) {
        use crate::diagnosis::FindingKind;
        for f in &s.diagnosis {
            if f.kind == FindingKind::Reading {
                continue;
            }
            let first = f.causes.first().map_or("unknown", |c| c.kind.as_str());
            self.bottleneck
                .get_or_create(&vec![
                    ("job_id", s.job_id.clone()),
                    ("vertex_id", f.vertex_id.clone()),
                    ("cause", first.to_string()),
                ])
                .set(1);
            for c in &f.causes {
                let Some(share) = c.share else { continue };
                let area = c.area.map_or(String::new(), |a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                });
                self.cause_share
                    .get_or_create(&vec![
                        ("job_id", s.job_id.clone()),
                        ("vertex_id", f.vertex_id.clone()),
                        ("cause", c.kind.as_str().to_string()),
                        ("area", area),
                    ])
                    .set(share);
            }
        }
    }

    /// Adds the gauges to `r`, in the order they are exposed.
    fn register(self, r: &mut Registry, per_subtask: bool) {
        if per_subtask {
            r.register(
                "subtask_backpressure_ratio",
                "Share of a subtask's samples back-pressured (blocked + soft) in its newest window",
                self.subtask_ratio,
            );
            r.register(
                "subtask_backpressure_level",
                "A subtask's back-pressure level: 0 ok, 1 low, 2 high (Flink's thresholds)",
                self.subtask_level,
            );
        }
        r.register(
            "vertex_backpressure_ratio",
            "A vertex's back-pressure ratio: its worst subtask's",
            self.vertex_ratio,
        );
        r.register(
            "vertex_backpressure_level",
            "A vertex's back-pressure level: 0 ok, 1 low, 2 high (its worst subtask's)",
            self.vertex_level,
        );
        r.register(
            "job_info",
            "A job the collector knows (always 1)",
            self.job_info,
        );
        r.register(
            "vertex_info",
            "A vertex of a job, with its name (always 1)",
            self.vertex_info,
        );
        r.register(
            "job_stale",
            "1 when a job's status is stale (Flink unreadable, job stopped, windows late)",
            self.job_stale,
        );
        r.register(
            "bottleneck",
            "1 while a vertex is its job's bottleneck; cause is its first-ranked cause",
            self.bottleneck,
        );
        r.register(
            "bottleneck_cause_share",
            "Share of a bottleneck's time (or, for skew, of its input) a cause explains, 0-1",
            self.cause_share,
        );
    }
}

/// The `GET /metrics` answer.
pub async fn scrape(collector: &Arc<Collector>, headers: &HeaderMap) -> Response {
    let statuses = match collector.statuses().await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let agents = match collector.agents().await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let r = registry(
        collector.metrics(),
        &statuses,
        &agents,
        &collector.open_episodes(),
    );
    bpmon_telemetry::metrics::response(&r, headers)
}
