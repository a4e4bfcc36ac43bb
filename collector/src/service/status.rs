//! What `status` and `jobs` answer for one job: the newest merged window of each subtask, the
//! levels per vertex and job, the diagnosis, and whether any of it is stale. Pure: the caller
//! brings what the store and the poller know.

use std::collections::{BTreeMap, HashMap};

use bpmon_proto::{Activity, FrameCount, Level, SamplingSettings};

use crate::api::{flink_metric_names, JobSummary, StatusView, SubtaskStatus, VertexStatus};
use crate::diagnosis::{diagnose, first_bottleneck, VertexView};
use crate::merge::{vertex_level, MergedWindow};
use crate::model::{JobSnapshot, SubtaskMetrics, SubtaskSnapshot, VertexSnapshot};
use crate::store::JobRow;

/// How fresh a cluster's data is, as the poller last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterHealth {
    /// When the last good snapshot was taken.
    pub fetched_at_ms: Option<u64>,
    /// The last poll's failure, if it failed, and since when polls fail.
    pub failing: Option<(String, u64)>,
}

/// Everything a job's status is made of.
pub struct StatusInputs<'a> {
    pub job: &'a JobRow,
    /// The job as the last good poll saw it; `None` if that poll did not list it.
    pub live: Option<&'a JobSnapshot>,
    pub health: &'a ClusterHealth,
    /// The newest window of each subtask.
    pub windows: &'a [MergedWindow],
    pub settings: SamplingSettings,
    /// Why some subtasks have no window: (vertex id, subtask) → reason.
    pub unplaced: &'a HashMap<(String, u32), String>,
    pub poll_interval_ms: u64,
    pub now_ms: u64,
}

/// Slack on top of the sampling interval before a subtask's newest window counts as old.
pub const WINDOW_GRACE_MS: u64 = 30_000;

/// A job's status: why it may be stale, each vertex's and subtask's level, the diagnosis.
pub fn status_view(i: &StatusInputs<'_>) -> StatusView {
    let mut stale_reasons = cluster_stale_reasons(i);
    let job = job_snapshot(i.job, i.live);
    let by_subtask: HashMap<(&str, u32), &MergedWindow> = i
        .windows
        .iter()
        .map(|w| ((w.vertex_id.as_str(), w.subtask), w))
        .collect();
    let window_len_ms = u64::from(i.settings.samples.saturating_sub(1)) * i.settings.delay_ms;
    let mut fresh = Freshness {
        old_before: i
            .now_ms
            .saturating_sub(i.settings.interval_ms + window_len_ms + WINDOW_GRACE_MS),
        old_subtasks: 0,
        updated_at_ms: 0,
    };
    let mut vertices = Vec::with_capacity(job.vertices.len());
    let mut views: HashMap<String, VertexView> = HashMap::new();
    for v in &job.vertices {
        let (status, view) = vertex_status(v, &by_subtask, i.unplaced, &mut fresh);
        vertices.push(status);
        views.insert(v.vertex_id.clone(), view);
    }
    if fresh.old_subtasks > 0 {
        stale_reasons.push(format!(
            "{} subtask(s) have no window newer than {}",
            fresh.old_subtasks,
            ago(i.now_ms, fresh.old_before)
        ));
    }
    let level = vertices.iter().filter_map(|v| v.level).max();
    let diagnosis = diagnose(&with_window_metrics(&job, &by_subtask), &views);
    StatusView {
        job_id: i.job.job_id.clone(),
        job_name: i.job.name.clone(),
        flink_url: i.job.flink_url.clone(),
        state: i.live.map(|j| j.state.clone()),
        level,
        updated_at_ms: fresh.updated_at_ms,
        stale: !stale_reasons.is_empty(),
        stale_reasons,
        metrics_fetched_at_ms: i.health.fetched_at_ms,
        settings: i.settings,
        vertices,
        edges: job.edges.clone(),
        diagnosis,
    }
}

/// Why what Flink told about the job may be out of date: the cluster fails, was read too long
/// ago, or no longer runs the job.
fn cluster_stale_reasons(i: &StatusInputs<'_>) -> Vec<String> {
    let mut stale_reasons = Vec::new();
    let url = &i.job.flink_url;
    if let Some((error, since)) = &i.health.failing {
        stale_reasons.push(format!(
            "Flink REST at {url} fails since {}: {error}",
            ago(i.now_ms, *since)
        ));
    }
    match i.health.fetched_at_ms {
        None => stale_reasons.push(format!("Flink REST at {url} has not been read yet")),
        Some(at) if i.now_ms.saturating_sub(at) > 3 * i.poll_interval_ms => stale_reasons.push(
            format!("metrics and placement were last read {}", ago(i.now_ms, at)),
        ),
        Some(_) => {}
    }
    if i.live.is_none() && i.health.failing.is_none() && i.health.fetched_at_ms.is_some() {
        stale_reasons.push(format!(
            "the job is not running in Flink any more (last seen {})",
            ago(i.now_ms, i.job.last_seen_ms)
        ));
    }
    stale_reasons
}

/// How recent the windows with a level are: windows ending before `old_before` are old.
struct Freshness {
    old_before: u64,
    old_subtasks: usize,
    updated_at_ms: u64,
}

/// One vertex's status and what the diagnosis reads of it (its subtasks' merged windows and
/// their top frames).
fn vertex_status(
    v: &VertexSnapshot,
    by_subtask: &HashMap<(&str, u32), &MergedWindow>,
    unplaced: &HashMap<(String, u32), String>,
    fresh: &mut Freshness,
) -> (VertexStatus, VertexView) {
    let mut subtasks = Vec::with_capacity(v.parallelism as usize);
    let mut view = VertexView::default();
    let mut frames: BTreeMap<(String, Option<Activity>), u32> = BTreeMap::new();
    for index in 0..v.parallelism {
        let live = v.subtasks.iter().find(|s| s.subtask == index);
        let window = by_subtask.get(&(v.vertex_id.as_str(), index)).copied();
        let reason = unplaced.get(&(v.vertex_id.clone(), index));
        let s = subtask_status(index, live, window, reason);
        if let (Some(w), Some(_)) = (window, s.level) {
            fresh.updated_at_ms = fresh.updated_at_ms.max(w.window_end_ms);
            if w.window_end_ms < fresh.old_before {
                fresh.old_subtasks += 1;
            }
            view.subtasks.insert(index, w.merged());
            view.evidence.insert(index, w.evidence.clone());
            view.frames.insert(index, w.top_frames.clone());
            for f in &w.top_frames {
                *frames.entry((f.frame.clone(), f.activity)).or_default() += f.samples;
            }
        }
        subtasks.push(s);
    }
    view.top_frames = FrameCount::top(frames, 5);
    let merged: Vec<_> = view.subtasks.values().copied().collect();
    let (level, ratio) = vertex_level(&merged);
    let status = VertexStatus {
        vertex_id: v.vertex_id.clone(),
        name: v.name.clone(),
        parallelism: v.parallelism,
        level,
        ratio: level.map(|_| ratio),
        subtasks,
    };
    (status, view)
}

/// The job with each subtask's metrics as its window was merged with: the diagnosis reads
/// these, so the two agree.
fn with_window_metrics(
    job: &JobSnapshot,
    by_subtask: &HashMap<(&str, u32), &MergedWindow>,
) -> JobSnapshot {
    let mut diagnosed = job.clone();
    for v in &mut diagnosed.vertices {
        for s in &mut v.subtasks {
            if let Some(w) = by_subtask.get(&(v.vertex_id.as_str(), s.subtask)) {
                s.metrics = w.metrics.clone();
            }
        }
    }
    diagnosed
}

/// One line of `jobs`, from a full status.
pub fn summary(s: &StatusView) -> JobSummary {
    let finding = first_bottleneck(&s.diagnosis);
    let bottleneck = finding.map(|f| vertex_name(s, &f.vertex_id));
    let cause = finding.and_then(|f| f.causes.first());
    let ratio = s
        .vertices
        .iter()
        .filter_map(|v| v.ratio)
        .max_by(f64::total_cmp);
    JobSummary {
        job_id: s.job_id.clone(),
        job_name: s.job_name.clone(),
        flink_url: s.flink_url.clone(),
        state: s.state.clone(),
        level: s.level,
        ratio,
        updated_at_ms: (s.updated_at_ms > 0).then_some(s.updated_at_ms),
        stale: s.stale,
        bottleneck,
        bottleneck_vertex_id: finding.map(|f| f.vertex_id.clone()),
        cause: cause.map(|c| c.kind),
        cause_share: cause.and_then(|c| c.share),
        cause_summary: cause.map(|c| c.summary.clone()),
        level_since_ms: None,
        watched_since_ms: None,
    }
}

/// The name of a vertex of the status, or its id when the status does not list it.
pub fn vertex_name(s: &StatusView, vertex_id: &str) -> String {
    s.vertices
        .iter()
        .find(|v| v.vertex_id == vertex_id)
        .map_or_else(|| vertex_id.to_string(), |v| v.name.clone())
}

/// The job's topology: the live one, or the stored vertices without placement or edges.
fn job_snapshot(row: &JobRow, live: Option<&JobSnapshot>) -> JobSnapshot {
    if let Some(j) = live {
        return j.clone();
    }
    JobSnapshot {
        job_id: row.job_id.clone(),
        name: row.name.clone(),
        state: String::new(),
        start_time_ms: None,
        vertices: row
            .vertices
            .iter()
            .map(|v| VertexSnapshot {
                vertex_id: v.vertex_id.clone(),
                name: v.name.clone(),
                parallelism: v.parallelism,
                subtasks: Vec::new(),
            })
            .collect(),
        edges: Vec::new(),
    }
}

/// Why a subtask without a window has no level: not placed (and why), not running, or no
/// samples yet from its TaskManager.
fn why_no_window(live: Option<&SubtaskSnapshot>, unplaced: Option<&String>) -> String {
    match (unplaced, live) {
        (Some(reason), _) => format!("no samples placed: {reason}"),
        (None, Some(s)) if s.status != "RUNNING" => {
            format!("no samples yet: the subtask is {}", s.status)
        }
        (None, Some(s)) => format!(
            "no samples yet from TaskManager {}",
            s.taskmanager_id.as_deref().unwrap_or("(unknown)")
        ),
        (None, None) => "no samples yet".to_string(),
    }
}

/// One subtask's line in `status`: its newest window's counts and level when that window is of
/// the running attempt, else what Flink says of it and why it has no level.
fn subtask_status(
    index: u32,
    live: Option<&SubtaskSnapshot>,
    window: Option<&MergedWindow>,
    unplaced: Option<&String>,
) -> SubtaskStatus {
    let empty = SubtaskMetrics::default();
    let live_metrics = live.map(|s| &s.metrics).unwrap_or(&empty);
    let base = SubtaskStatus {
        subtask: index,
        level: None,
        ratio: None,
        samples: 0,
        blocked: 0,
        soft: 0,
        idle: 0,
        busy: 0,
        split: None,
        ratio_source: None,
        timers: None,
        taskmanager_id: live.and_then(|s| s.taskmanager_id.clone()),
        host: live.and_then(|s| s.host.clone()),
        attempt: live.map(|s| s.attempt),
        window_start_ms: None,
        window_end_ms: None,
        metrics: flink_metric_names(live_metrics),
        top_frames: Vec::new(),
        why: None,
    };
    let Some(w) = window else {
        return SubtaskStatus {
            why: Some(why_no_window(live, unplaced)),
            ..base
        };
    };
    if let Some(s) = live.filter(|s| s.attempt != w.attempt) {
        // A restarted subtask: its old attempt's counts say nothing about the new one.
        return SubtaskStatus {
            why: Some(format!(
                "newest window is of attempt {}; the subtask now runs attempt {}{}",
                w.attempt,
                s.attempt,
                unplaced.map(|r| format!(" ({r})")).unwrap_or_default()
            )),
            window_start_ms: Some(w.window_start_ms),
            window_end_ms: Some(w.window_end_ms),
            ..base
        };
    }
    SubtaskStatus {
        subtask: index,
        level: w.level,
        ratio: w.ratio,
        samples: w.samples,
        blocked: w.blocked,
        soft: w.soft,
        idle: w.idle,
        busy: w.busy,
        split: Some(w.split),
        ratio_source: Some(w.ratio_source()),
        timers: w.evidence.timers,
        taskmanager_id: w.taskmanager_id.clone().or(base.taskmanager_id),
        host: w.host.clone().or(base.host),
        attempt: Some(w.attempt),
        window_start_ms: Some(w.window_start_ms),
        window_end_ms: Some(w.window_end_ms),
        metrics: flink_metric_names(&w.metrics),
        top_frames: w.top_frames.clone(),
        why: w
            .level
            .is_none()
            .then(|| "the window has no samples of this subtask".to_string()),
    }
}

/// "12 s ago", "3 min ago", "2 h ago".
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// A level as the CLI shows it.
pub fn level_name(l: Option<Level>) -> &'static str {
    match l {
        Some(Level::Ok) => "OK",
        Some(Level::Low) => "LOW",
        Some(Level::High) => "HIGH",
        None => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::FindingKind;
    use crate::mapping::SubtaskRef;
    use crate::merge::{merge_subtask, SampleCounts};
    use crate::model::Edge;
    use crate::store::VertexRow;

    const NOW: u64 = 10_000_000;

    fn live(attempt: u32) -> JobSnapshot {
        let subtask = |i: u32, out_pool: f64, in_pool: f64| SubtaskSnapshot {
            subtask: i,
            attempt,
            status: "RUNNING".into(),
            taskmanager_id: Some(format!("tm{i}")),
            host: Some("h".into()),
            start_time_ms: Some(1),
            metrics: SubtaskMetrics {
                out_pool_usage: Some(out_pool),
                in_pool_usage: Some(in_pool),
                ..Default::default()
            },
        };
        JobSnapshot {
            job_id: "j".into(),
            name: "job".into(),
            state: "RUNNING".into(),
            start_time_ms: Some(1),
            vertices: vec![
                VertexSnapshot {
                    vertex_id: "src".into(),
                    name: "Source".into(),
                    parallelism: 2,
                    subtasks: vec![subtask(0, 1.0, 0.0), subtask(1, 1.0, 0.0)],
                },
                VertexSnapshot {
                    vertex_id: "slow".into(),
                    name: "Slow".into(),
                    parallelism: 2,
                    subtasks: vec![subtask(0, 0.1, 1.0), subtask(1, 0.1, 1.0)],
                },
            ],
            edges: vec![Edge {
                source: "src".into(),
                target: "slow".into(),
                ship_strategy: Some("HASH".into()),
            }],
        }
    }

    fn row() -> JobRow {
        JobRow {
            job_id: "j".into(),
            name: "job".into(),
            flink_url: "http://f".into(),
            last_seen_ms: NOW,
            vertices: vec![
                VertexRow {
                    vertex_id: "src".into(),
                    name: "Source".into(),
                    parallelism: 2,
                },
                VertexRow {
                    vertex_id: "slow".into(),
                    name: "Slow".into(),
                    parallelism: 2,
                },
            ],
        }
    }

    fn window(job: &JobSnapshot, vertex: usize, subtask: u32, counts: [u32; 3]) -> MergedWindow {
        let v = &job.vertices[vertex];
        let s = &v.subtasks[subtask as usize];
        let c = SampleCounts {
            samples: counts.iter().sum(),
            blocked: counts[0],
            waiting: counts[1],
            busy: counts[2],
            timers: None,
        };
        let mut w = MergedWindow::new(
            &SubtaskRef {
                job_id: "j".into(),
                vertex_id: v.vertex_id.clone(),
                subtask,
                attempt: s.attempt,
            },
            NOW - 10_000,
            NOW - 5_000,
            &merge_subtask(&c, &s.metrics),
            s.metrics.clone(),
            vec![FrameCount {
                frame: "Slow.map".into(),
                samples: counts[2],
                activity: None,
            }],
        );
        w.taskmanager_id = s.taskmanager_id.clone();
        w
    }

    fn fresh() -> ClusterHealth {
        ClusterHealth {
            fetched_at_ms: Some(NOW - 1_000),
            failing: None,
        }
    }

    fn inputs<'a>(
        job: &'a JobRow,
        live: Option<&'a JobSnapshot>,
        health: &'a ClusterHealth,
        windows: &'a [MergedWindow],
        unplaced: &'a HashMap<(String, u32), String>,
    ) -> StatusInputs<'a> {
        StatusInputs {
            job,
            live,
            health,
            windows,
            settings: SamplingSettings {
                samples: 10,
                delay_ms: 100,
                interval_ms: 10_000,
                stacks_every: 1,
            },
            unplaced,
            poll_interval_ms: 5_000,
            now_ms: NOW,
        }
    }

    #[test]
    fn levels_bottleneck_and_a_subtask_without_samples() {
        let j = live(0);
        let r = row();
        let h = fresh();
        let windows = vec![
            window(&j, 0, 0, [97, 0, 3]),
            window(&j, 0, 1, [0, 90, 10]),
            window(&j, 1, 0, [0, 0, 100]),
        ];
        let mut unplaced = HashMap::new();
        unplaced.insert(("slow".to_string(), 1), "ambiguous: twin".to_string());
        let s = status_view(&inputs(&r, Some(&j), &h, &windows, &unplaced));
        assert!(!s.stale, "{:?}", s.stale_reasons);
        assert_eq!(s.level, Some(Level::High));
        assert_eq!(s.updated_at_ms, NOW - 5_000);
        let src = &s.vertices[0];
        assert_eq!((src.level, src.ratio), (Some(Level::High), Some(0.97)));
        // Output exhausted: subtask 1's waiting is soft.
        assert_eq!((src.subtasks[1].soft, src.subtasks[1].idle), (90, 0));
        assert_eq!(src.subtasks[0].metrics.get("outPoolUsage"), Some(&1.0));
        let slow = &s.vertices[1];
        assert_eq!(slow.level, Some(Level::Ok));
        assert_eq!(slow.subtasks[1].level, None);
        assert!(slow.subtasks[1]
            .why
            .as_deref()
            .unwrap()
            .contains("ambiguous"));
        let b = s
            .diagnosis
            .iter()
            .find(|f| f.kind == FindingKind::Bottleneck)
            .expect("a bottleneck");
        assert_eq!(b.vertex_id, "slow");
        assert_eq!(b.top_frames[0].frame, "Slow.map");
        let line = summary(&s);
        assert_eq!(line.bottleneck.as_deref(), Some("Slow"));
        assert_eq!(line.bottleneck_vertex_id.as_deref(), Some("slow"));
        // Its first cause, as the diagnosis ranked it.
        let first = b.causes.first().expect("a cause");
        assert_eq!(line.cause, Some(first.kind));
        assert_eq!(line.cause_share, first.share);
        assert_eq!(line.cause_summary.as_deref(), Some(first.summary.as_str()));
    }

    #[test]
    fn unreachable_flink_and_old_windows_make_it_stale() {
        let j = live(0);
        let r = row();
        let h = ClusterHealth {
            fetched_at_ms: Some(NOW - 60_000),
            failing: Some(("connection refused".into(), NOW - 40_000)),
        };
        let mut old = window(&j, 0, 0, [97, 0, 3]);
        old.window_end_ms = NOW - 600_000;
        let windows = vec![old];
        let s = status_view(&inputs(&r, Some(&j), &h, &windows, &HashMap::new()));
        assert!(s.stale);
        let reasons = s.stale_reasons.join(" | ");
        assert!(reasons.contains("connection refused"), "{reasons}");
        assert!(reasons.contains("last read 60 s ago"), "{reasons}");
        assert!(reasons.contains("no window newer"), "{reasons}");
        // The level is still shown, flagged stale.
        assert_eq!(s.level, Some(Level::High));
    }

    #[test]
    fn a_restarted_subtask_shows_no_level_from_its_old_attempt() {
        let old = live(0);
        let now = live(1);
        let r = row();
        let h = fresh();
        let windows = vec![window(&old, 0, 0, [97, 0, 3])];
        let s = status_view(&inputs(&r, Some(&now), &h, &windows, &HashMap::new()));
        let st = &s.vertices[0].subtasks[0];
        assert_eq!(st.level, None);
        assert!(
            st.why.as_deref().unwrap().contains("attempt 0"),
            "{:?}",
            st.why
        );
        assert_eq!(s.level, None);
    }

    #[test]
    fn a_finished_job_is_shown_from_the_store_and_flagged() {
        let j = live(0);
        let r = row();
        let h = fresh();
        let windows = vec![window(&j, 0, 0, [97, 0, 3])];
        let s = status_view(&inputs(&r, None, &h, &windows, &HashMap::new()));
        assert!(s.stale);
        assert!(s.stale_reasons[0].contains("not running"));
        assert_eq!(s.vertices.len(), 2);
        assert_eq!(s.vertices[0].subtasks[0].level, Some(Level::High));
        assert_eq!(s.state, None);
    }
}
