//! Per-job diagnosis, following the interpretation tables of Flink's network-stack guidance
//! (flink.apache.org, "Flink Network Stack Vol. 2", 2019):
//!
//! - the **bottleneck** is the vertex right after the last back-pressured one on a path: a
//!   back-pressured vertex (LOW or HIGH) feeds it, and it is not back-pressured itself. Whether all
//!   its subtasks are busy or only some says *why*: load on every subtask, or skew (data, or the
//!   resources of the TaskManagers hosting the busy ones). Its busy samples' top frames say what
//!   it is doing;
//! - a **network bottleneck** is suspected when a sender's `outPoolUsage` is high while *every*
//!   receiver's `inPoolUsage` is low: the data waits in the network, not in a slow task;
//! - the `inPoolUsage` × `outPoolUsage` and floating × exclusive buffer readings of every vertex,
//!   as plain sentences.
//!
//! Pure: it reads a [`JobSnapshot`] and the merged levels, and returns findings.

use std::collections::HashMap;

use bpmon_proto::{FrameCount, Level};
use serde::{Deserialize, Serialize};

use crate::cause::{causes, Cause, SubtaskSeen};
use crate::merge::{MergedSubtask, WindowEvidence};
use crate::model::{JobSnapshot, SubtaskMetrics, VertexSnapshot};

/// A buffer usage at or above this reads as "high".
pub const HIGH_USAGE: f64 = 0.9;
/// A buffer usage at or below this reads as "low".
pub const LOW_USAGE: f64 = 0.5;
/// A subtask busy in at least this share of its samples counts as busy.
pub const BUSY_SHARE: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Bottleneck,
    NetworkBottleneck,
    Reading,
}

impl FindingKind {
    /// A bottleneck of either kind (a slow vertex, or the network before it).
    pub fn is_bottleneck(self) -> bool {
        matches!(
            self,
            FindingKind::Bottleneck | FindingKind::NetworkBottleneck
        )
    }
}

/// The job's first bottleneck, in the job's order: the one `jobs` shows and the bottleneck
/// events follow (a job with several paths may have several).
pub fn first_bottleneck(findings: &[Finding]) -> Option<&Finding> {
    findings.iter().find(|f| f.kind.is_bottleneck())
}

/// One finding about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub vertex_id: String,
    /// The subtasks the finding is about.
    pub subtasks: Vec<u32>,
    pub message: String,
    /// For bottlenecks: what its busy samples were doing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_frames: Vec<FrameCount>,
    /// For bottlenecks: why, most important first (see [`crate::cause`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    /// For bottlenecks: the back-pressured vertices upstream that suffer from it (ids), not
    /// problems of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub victims: Vec<String>,
}

/// What the diagnosis needs to know of one vertex beyond the snapshot.
#[derive(Debug, Clone, Default)]
pub struct VertexView {
    /// Merged subtasks by index; a missing entry has no samples yet.
    pub subtasks: HashMap<u32, MergedSubtask>,
    /// Busy top frames over the vertex's subtasks, most frequent first.
    pub top_frames: Vec<FrameCount>,
    /// What the agents reported of each subtask besides counts, by index.
    pub evidence: HashMap<u32, WindowEvidence>,
    /// Each subtask's own busy top frames, by index.
    pub frames: HashMap<u32, Vec<FrameCount>>,
}

impl VertexView {
    fn level(&self) -> Option<Level> {
        crate::merge::vertex_level(&self.subtasks.values().copied().collect::<Vec<_>>()).0
    }

    fn back_pressured(&self) -> bool {
        self.level().is_some_and(|l| l > Level::Ok)
    }
}

/// Diagnoses one job. `views` holds the merged data of each vertex, by vertex id.
pub fn diagnose(job: &JobSnapshot, views: &HashMap<String, VertexView>) -> Vec<Finding> {
    let empty = VertexView::default();
    let view = |id: &str| views.get(id).unwrap_or(&empty);
    let vertex = |id: &str| job.vertices.iter().find(|v| v.vertex_id == id);
    let mut findings = Vec::new();

    for v in &job.vertices {
        let bp_upstream: Vec<&VertexSnapshot> = job
            .edges
            .iter()
            .filter(|e| e.target == v.vertex_id)
            .filter_map(|e| vertex(&e.source))
            .filter(|u| view(&u.vertex_id).back_pressured())
            .collect();
        if bp_upstream.is_empty() || view(&v.vertex_id).back_pressured() {
            continue;
        }
        let mut finding = network_bottleneck(v, &bp_upstream)
            .unwrap_or_else(|| bottleneck(v, &bp_upstream, view(&v.vertex_id)));
        finding.victims = victims(job, &v.vertex_id, &|id| view(id).back_pressured());
        findings.push(finding);
    }

    for v in &job.vertices {
        if let Some(message) = pool_reading(job, v) {
            findings.push(Finding {
                kind: FindingKind::Reading,
                vertex_id: v.vertex_id.clone(),
                subtasks: v.subtasks.iter().map(|s| s.subtask).collect(),
                message,
                top_frames: Vec::new(),
                causes: Vec::new(),
                victims: Vec::new(),
            });
        }
    }
    findings
}

/// The back-pressured vertices upstream of `bottleneck`, reached through back-pressured
/// vertices only: they wait for it.
fn victims(
    job: &JobSnapshot,
    bottleneck: &str,
    back_pressured: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut frontier = vec![bottleneck.to_string()];
    while let Some(at) = frontier.pop() {
        for e in job.edges.iter().filter(|e| e.target == at) {
            if back_pressured(&e.source) && !found.contains(&e.source) && e.source != bottleneck {
                found.push(e.source.clone());
                frontier.push(e.source.clone());
            }
        }
    }
    // In the job's order, for display.
    job.vertices
        .iter()
        .filter(|v| found.contains(&v.vertex_id))
        .map(|v| v.vertex_id.clone())
        .collect()
}

/// Whether `v` receives over remote channels: its subtasks read more bytes from the network
/// than from local channels. Only then does `inPoolUsage` mean anything (FLINK-12576: local
/// channels always read 0). `None` when Flink reports neither figure.
fn receives_remotely(v: &VertexSnapshot) -> Option<bool> {
    let mut known = false;
    let mut remote_everywhere = true;
    for s in &v.subtasks {
        let m = &s.metrics;
        let (remote, local) = match (m.bytes_in_remote_per_s, m.bytes_in_local_per_s) {
            (Some(r), Some(l)) if r + l > 0.0 => (r, l),
            _ => match (m.num_bytes_in_remote, m.num_bytes_in_local) {
                (Some(r), Some(l)) => (r, l),
                _ => continue,
            },
        };
        known = true;
        remote_everywhere &= remote > 0.0 && remote >= local;
    }
    known.then_some(remote_everywhere)
}

/// `v`, right after back-pressured `bp_upstream`, as a network bottleneck: all its receivers'
/// input pools low while a sender's output is full, so the network, not `v`, holds data up.
fn network_bottleneck(v: &VertexSnapshot, bp_upstream: &[&VertexSnapshot]) -> Option<Finding> {
    let receivers_low = v
        .subtasks
        .iter()
        .all(|s| s.metrics.in_pool_usage.is_some_and(|u| u <= LOW_USAGE));
    let senders_full: Vec<&VertexSnapshot> = bp_upstream
        .iter()
        .copied()
        .filter(|u| {
            u.subtasks
                .iter()
                .any(|s| s.metrics.out_pool_usage.is_some_and(|o| o >= HIGH_USAGE))
        })
        .collect();
    if !receivers_low || senders_full.is_empty() || v.subtasks.is_empty() {
        return None;
    }
    // A low inPoolUsage on local channels is no evidence at all.
    if receives_remotely(v) != Some(true) {
        return None;
    }
    Some(Finding {
        kind: FindingKind::NetworkBottleneck,
        vertex_id: v.vertex_id.clone(),
        subtasks: v.subtasks.iter().map(|s| s.subtask).collect(),
        message: format!(
            "possible network bottleneck between {} and '{}': the sender's outPoolUsage is high \
             while every receiver's inPoolUsage is low, so data waits in the network rather \
             than in a slow task (check bandwidth and latency; more buffers per channel help \
             a high credit round-trip)",
            quoted_names(&senders_full),
            v.name
        ),
        top_frames: Vec::new(),
        causes: vec![Cause::network(v.subtasks.len())],
        victims: Vec::new(),
    })
}

/// `v`, right after back-pressured `bp_upstream` and not back-pressured itself, as the
/// bottleneck: which of its subtasks are slow (busy), and why ([`crate::cause`]).
fn bottleneck(v: &VertexSnapshot, bp_upstream: &[&VertexSnapshot], view: &VertexView) -> Finding {
    let busy = busy_subtasks(v, view);
    let parallelism = v.subtasks.len().max(v.parallelism as usize);
    let spread = if busy.is_empty() {
        "none of its subtasks is busy in the samples".to_string()
    } else if busy.len() == parallelism {
        format!("all {parallelism} subtasks are busy")
    } else {
        format!(
            "only subtask(s) {} of {parallelism} are busy",
            busy.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let slow: Vec<u32> = if busy.is_empty() {
        v.subtasks.iter().map(|s| s.subtask).collect()
    } else {
        busy
    };
    let empty = WindowEvidence::default();
    let seen: HashMap<u32, SubtaskSeen> = view
        .subtasks
        .iter()
        .map(|(i, merged)| {
            let seen = SubtaskSeen {
                merged,
                evidence: view.evidence.get(i).unwrap_or(&empty),
                top_frames: view.frames.get(i).map_or(&[], Vec::as_slice),
            };
            (*i, seen)
        })
        .collect();
    let causes = causes(v, &slow, &seen);
    let why = causes
        .iter()
        .map(|c| c.summary.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Finding {
        kind: FindingKind::Bottleneck,
        vertex_id: v.vertex_id.clone(),
        subtasks: slow,
        message: format!(
            "'{}' is the bottleneck: {} upstream is back-pressured and it is not; {spread}; \
             cause: {why}",
            v.name,
            quoted_names(bp_upstream)
        ),
        top_frames: view.top_frames.clone(),
        causes,
        victims: Vec::new(),
    }
}

/// `'a', 'b'`.
fn quoted_names(vertices: &[&VertexSnapshot]) -> String {
    vertices
        .iter()
        .map(|u| format!("'{}'", u.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Subtasks busy in at least [`BUSY_SHARE`] of their samples; without samples, by Flink's
/// `busyTimeMsPerSecond`.
fn busy_subtasks(v: &VertexSnapshot, view: &VertexView) -> Vec<u32> {
    v.subtasks
        .iter()
        .filter(|s| match view.subtasks.get(&s.subtask) {
            Some(m) if m.samples > 0 => f64::from(m.busy) / f64::from(m.samples) >= BUSY_SHARE,
            _ => s.metrics.busy_ms.is_some_and(|b| b >= 1000.0 * BUSY_SHARE),
        })
        .map(|s| s.subtask)
        .collect()
}

fn max_of(v: &VertexSnapshot, f: impl Fn(&SubtaskMetrics) -> Option<f64>) -> Option<f64> {
    v.subtasks
        .iter()
        .filter_map(|s| f(&s.metrics))
        .max_by(f64::total_cmp)
}

/// The inPoolUsage × outPoolUsage table and the floating × exclusive one, as a sentence about the
/// vertex's worst subtask. `None` when the vertex reports neither pool.
fn pool_reading(job: &JobSnapshot, v: &VertexSnapshot) -> Option<String> {
    let out = max_of(v, |m| m.out_pool_usage);
    let inp = max_of(v, |m| m.in_pool_usage);
    if out.is_none() && inp.is_none() {
        return None;
    }
    let high = |x: Option<f64>| x.is_some_and(|x| x >= HIGH_USAGE);
    let any_upstream_out_high = job
        .edges
        .iter()
        .filter(|e| e.target == v.vertex_id)
        .filter_map(|e| job.vertices.iter().find(|u| u.vertex_id == e.source))
        .any(|u| high(max_of(u, |m| m.out_pool_usage)));
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.0}%", x * 100.0));
    let mut s = format!("inPoolUsage {} / outPoolUsage {}: ", pct(inp), pct(out));
    s.push_str(match (high(inp), high(out)) {
        (false, false) => "no back-pressure through this vertex's network buffers",
        (false, true) => {
            "back-pressured by its receivers (or by the network, if they read low input usage)"
        }
        (true, false) if any_upstream_out_high => {
            "it back-pressures its senders: a likely source of back-pressure"
        }
        (true, false) => "its input buffers fill up; back-pressure upstream may follow",
        (true, true) => "back-pressured, and passing that on to its own senders",
    });
    let floating = max_of(v, |m| m.input_floating_buffers_usage);
    let exclusive = max_of(v, |m| m.input_exclusive_buffers_usage);
    if let Some(fl) = floating {
        s.push_str(&format!(
            "; floating buffers {} / exclusive {}: ",
            pct(Some(fl)),
            pct(exclusive)
        ));
        s.push_str(match (fl >= HIGH_USAGE, high(exclusive)) {
            (false, _) => "input not saturated",
            (true, false) => {
                "only some input channels are back-pressured (skew on the sending side)"
            }
            (true, true) => "all input channels are back-pressured",
        });
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{merge_subtask, SampleCounts};
    use crate::model::{Edge, SubtaskSnapshot};

    fn subtask(i: u32, metrics: SubtaskMetrics) -> SubtaskSnapshot {
        SubtaskSnapshot {
            subtask: i,
            attempt: 0,
            status: "RUNNING".into(),
            taskmanager_id: Some(format!("tm{i}")),
            host: None,
            start_time_ms: None,
            metrics,
        }
    }

    fn vertex(id: &str, name: &str, subtasks: Vec<SubtaskSnapshot>) -> VertexSnapshot {
        VertexSnapshot {
            vertex_id: id.into(),
            name: name.into(),
            parallelism: subtasks.len() as u32,
            subtasks,
        }
    }

    fn pools(inp: f64, out: f64) -> SubtaskMetrics {
        SubtaskMetrics {
            in_pool_usage: Some(inp),
            out_pool_usage: Some(out),
            ..Default::default()
        }
    }

    /// Metrics of a receiver reading over remote channels only.
    fn remote(m: SubtaskMetrics) -> SubtaskMetrics {
        SubtaskMetrics {
            bytes_in_remote_per_s: Some(1e6),
            bytes_in_local_per_s: Some(0.0),
            ..m
        }
    }

    /// The same, over local channels only (both subtasks on one TaskManager).
    fn local(m: SubtaskMetrics) -> SubtaskMetrics {
        SubtaskMetrics {
            bytes_in_remote_per_s: Some(0.0),
            bytes_in_local_per_s: Some(1e6),
            num_bytes_in_remote: Some(0.0),
            num_bytes_in_local: Some(5e8),
            ..m
        }
    }

    #[test]
    fn low_input_usage_over_local_channels_is_no_network_bottleneck() {
        // FLINK-12576: inPoolUsage reads 0 on local channels; the busy map is the bottleneck.
        let j = job(
            vec![
                vertex("src", "src", vec![subtask(0, pools(0.0, 1.0))]),
                vertex("map", "alloc-map", vec![subtask(0, local(pools(0.0, 0.0)))]),
            ],
            &[("src", "map")],
        );
        let mut views = HashMap::new();
        views.insert("src".to_string(), view(&[(95, 0, 5)], &pools(0.0, 1.0)));
        views.insert(
            "map".to_string(),
            view(
                &[(0, 0, 100)],
                &SubtaskMetrics {
                    idle_ms: Some(0.0),
                    soft_back_pressured_ms: Some(0.0),
                    ..Default::default()
                },
            ),
        );
        let f = diagnose(&j, &views);
        assert!(
            f.iter().all(|f| f.kind != FindingKind::NetworkBottleneck),
            "{f:#?}"
        );
        let b = f
            .iter()
            .find(|f| f.kind == FindingKind::Bottleneck)
            .expect("the map is the bottleneck");
        assert_eq!(b.vertex_id, "map");
        assert_eq!(b.victims, vec!["src".to_string()]);
    }

    fn view(counts: &[(u32, u32, u32)], metrics: &SubtaskMetrics) -> VertexView {
        VertexView {
            subtasks: counts
                .iter()
                .enumerate()
                .map(|(i, &(b, w, u))| {
                    let c = SampleCounts {
                        samples: b + w + u,
                        blocked: b,
                        waiting: w,
                        busy: u,
                        timers: None,
                    };
                    (i as u32, merge_subtask(&c, metrics))
                })
                .collect(),
            top_frames: vec![FrameCount {
                frame: "com.example.Slow.map(Slow.java:17)".into(),
                samples: 90,
                activity: None,
            }],
            evidence: Default::default(),
            frames: Default::default(),
        }
    }

    fn job(vertices: Vec<VertexSnapshot>, edges: &[(&str, &str)]) -> JobSnapshot {
        JobSnapshot {
            job_id: "j".into(),
            name: "job".into(),
            state: "RUNNING".into(),
            start_time_ms: None,
            vertices,
            edges: edges
                .iter()
                .map(|(s, t)| Edge {
                    source: s.to_string(),
                    target: t.to_string(),
                    ship_strategy: Some("REBALANCE".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn the_busy_vertex_after_the_back_pressured_one_is_the_bottleneck() {
        let j = job(
            vec![
                vertex(
                    "src",
                    "Source: numbers -> explode",
                    vec![subtask(0, pools(0.0, 1.0)), subtask(1, pools(0.0, 1.0))],
                ),
                vertex(
                    "slow",
                    "slow consumer",
                    vec![subtask(0, pools(1.0, 0.1)), subtask(1, pools(1.0, 0.1))],
                ),
                vertex("sink", "sink", vec![subtask(0, pools(0.1, 0.0))]),
            ],
            &[("src", "slow"), ("slow", "sink")],
        );
        let mut views = HashMap::new();
        views.insert(
            "src".to_string(),
            view(&[(97, 0, 3), (95, 2, 3)], &pools(0.0, 1.0)),
        );
        views.insert(
            "slow".to_string(),
            view(&[(0, 0, 100), (0, 1, 99)], &pools(1.0, 0.1)),
        );
        views.insert(
            "sink".to_string(),
            view(
                &[(0, 100, 0)],
                &SubtaskMetrics {
                    idle_ms: Some(1000.0),
                    soft_back_pressured_ms: Some(0.0),
                    ..pools(0.1, 0.0)
                },
            ),
        );
        let f = diagnose(&j, &views);
        let b: Vec<&Finding> = f
            .iter()
            .filter(|f| f.kind == FindingKind::Bottleneck)
            .collect();
        assert_eq!(b.len(), 1, "{f:#?}");
        assert_eq!(b[0].vertex_id, "slow");
        assert_eq!(b[0].subtasks, vec![0, 1]);
        assert!(
            b[0].message.contains("all 2 subtasks are busy"),
            "{}",
            b[0].message
        );
        assert_eq!(
            b[0].top_frames[0].frame,
            "com.example.Slow.map(Slow.java:17)"
        );
        // The slow vertex's reading: full input, free output, a full sender upstream.
        let r = f
            .iter()
            .find(|f| f.kind == FindingKind::Reading && f.vertex_id == "slow")
            .unwrap();
        assert!(
            r.message.contains("back-pressures its senders"),
            "{}",
            r.message
        );
    }

    #[test]
    fn only_some_busy_subtasks_is_skew() {
        let j = job(
            vec![
                vertex(
                    "src",
                    "src",
                    vec![subtask(0, pools(0.0, 1.0)), subtask(1, pools(0.0, 1.0))],
                ),
                vertex(
                    "agg",
                    "keyed agg",
                    vec![subtask(0, pools(1.0, 0.0)), subtask(1, pools(0.2, 0.0))],
                ),
            ],
            &[("src", "agg")],
        );
        let mut views = HashMap::new();
        views.insert(
            "src".to_string(),
            view(&[(60, 0, 40), (55, 0, 45)], &pools(0.0, 1.0)),
        );
        views.insert(
            "agg".to_string(),
            view(
                &[(0, 0, 100), (0, 90, 10)],
                &SubtaskMetrics {
                    idle_ms: Some(900.0),
                    soft_back_pressured_ms: Some(0.0),
                    ..Default::default()
                },
            ),
        );
        let f = diagnose(&j, &views);
        let b = f
            .iter()
            .find(|f| f.kind == FindingKind::Bottleneck)
            .unwrap();
        assert_eq!(b.subtasks, vec![0]);
        assert!(b.message.contains("skew"), "{}", b.message);
    }

    #[test]
    fn full_sender_and_empty_receivers_point_at_the_network() {
        let j = job(
            vec![
                vertex("src", "src", vec![subtask(0, pools(0.0, 1.0))]),
                vertex(
                    "map",
                    "map",
                    vec![
                        subtask(0, remote(pools(0.1, 0.0))),
                        subtask(1, remote(pools(0.2, 0.0))),
                    ],
                ),
            ],
            &[("src", "map")],
        );
        let mut views = HashMap::new();
        views.insert("src".to_string(), view(&[(0, 80, 20)], &pools(0.0, 1.0)));
        views.insert(
            "map".to_string(),
            view(
                &[(0, 10, 90), (0, 20, 80)],
                &SubtaskMetrics {
                    idle_ms: Some(100.0),
                    soft_back_pressured_ms: Some(0.0),
                    ..Default::default()
                },
            ),
        );
        let f = diagnose(&j, &views);
        assert!(
            f.iter().all(|f| f.kind != FindingKind::Bottleneck),
            "{f:#?}"
        );
        let n = f
            .iter()
            .find(|f| f.kind == FindingKind::NetworkBottleneck)
            .unwrap();
        assert_eq!(n.vertex_id, "map");
        assert!(n.message.contains("network"));
    }

    #[test]
    fn no_back_pressure_no_bottleneck() {
        let j = job(
            vec![
                vertex("src", "src", vec![subtask(0, pools(0.0, 0.2))]),
                vertex("sink", "sink", vec![subtask(0, pools(0.1, 0.0))]),
            ],
            &[("src", "sink")],
        );
        let mut views = HashMap::new();
        views.insert("src".to_string(), view(&[(0, 10, 90)], &pools(0.0, 0.2)));
        views.insert("sink".to_string(), view(&[(0, 100, 0)], &pools(0.1, 0.0)));
        let f = diagnose(&j, &views);
        assert!(f.iter().all(|f| f.kind == FindingKind::Reading), "{f:#?}");
        assert!(f[0].message.contains("no back-pressure"));
    }

    #[test]
    fn floating_and_exclusive_readings() {
        let m = |fl: f64, ex: f64| SubtaskMetrics {
            input_floating_buffers_usage: Some(fl),
            input_exclusive_buffers_usage: Some(ex),
            ..pools(1.0, 0.0)
        };
        let j = job(vec![vertex("a", "a", vec![subtask(0, m(1.0, 0.1))])], &[]);
        assert!(pool_reading(&j, &j.vertices[0])
            .unwrap()
            .contains("only some input channels"));
        let j = job(vec![vertex("a", "a", vec![subtask(0, m(1.0, 1.0))])], &[]);
        assert!(pool_reading(&j, &j.vertices[0])
            .unwrap()
            .contains("all input channels"));
        let j = job(vec![vertex("a", "a", vec![subtask(0, m(0.3, 0.9))])], &[]);
        assert!(pool_reading(&j, &j.vertices[0])
            .unwrap()
            .contains("not saturated"));
    }
}
