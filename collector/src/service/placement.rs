//! From an agent's batch to merged windows: each report's JVM is matched to a TaskManager of one
//! of the watched clusters, each task thread to its subtask (`mapping`), and each thread's counts
//! are merged with that subtask's metrics (`merge`). Pure: the caller brings the snapshots.

use bpmon_proto::{JvmResources, ReportBatch, SampleReport, TaskSamples};

use crate::locate::{locate, JvmClues, Located, NotLocated};
use crate::mapping::{resolve_exact, resolve_tasks, Resolution, SubtaskRef};
use crate::merge::{merge_subtask, FoldedStack, MergedWindow, SampleCounts, WindowEvidence};
use crate::model::{ClusterSnapshot, SubtaskSnapshot};

/// A task thread that got no window, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    pub pid: u32,
    pub thread: String,
    pub why: String,
    /// For an ambiguous thread: the subtasks it could be (each should say so in `status`).
    pub candidates: Vec<SubtaskRef>,
    /// The report's JVM was found in no cluster: a cluster that could not be polled may be the
    /// reason, so the batch is worth retrying later.
    pub no_taskmanager: bool,
}

/// Which TaskManager a report's JVM turned out to be, or why none.
#[derive(Debug, Clone, PartialEq)]
pub struct JvmOutcome {
    pub pid: u32,
    pub taskmanager_id: Option<String>,
    /// How it was matched, or why it was not.
    pub text: String,
    /// What the agent saw of the JVM, in words.
    pub clues: String,
    /// When not matched: per TaskManager id, why the JVM is not it.
    pub misses: Vec<(String, String)>,
}

/// What a batch became.
#[derive(Debug, Default)]
pub struct Placement {
    pub windows: Vec<MergedWindow>,
    pub unplaced: Vec<Unplaced>,
    /// One entry per report.
    pub jvms: Vec<JvmOutcome>,
}

/// Places every task of every report of `batch` in `clusters`.
pub fn place_batch(batch: &ReportBatch, clusters: &[&ClusterSnapshot]) -> Placement {
    let mut out = Placement::default();
    for report in &batch.reports {
        place_report(report, &batch.host_names, clusters, &mut out);
    }
    out
}

fn place_report(
    report: &SampleReport,
    host_names: &[String],
    clusters: &[&ClusterSnapshot],
    out: &mut Placement,
) {
    let clues = JvmClues::of_report(&report.jvm, host_names);
    let located = locate(&clues, clusters);
    out.jvms.push(jvm_outcome(report.pid, &clues, &located));
    let start = report.started_at_ms;
    let end = report.started_at_ms + report.elapsed_ms;
    let exact = exact_resolutions(report, clusters, &located);
    let by_name: Vec<Option<Resolution>> = match &located {
        Ok(l) => resolve_tasks(report, &l.taskmanager_id, &clusters[l.cluster].jobs)
            .into_iter()
            .map(Some)
            .collect(),
        Err(_) => vec![None; report.tasks.len()],
    };
    for ((task, exact), by_name) in report.tasks.iter().zip(exact).zip(by_name) {
        let (cluster, resolution) = match (exact, by_name, &located) {
            (Some((c, r)), _, _) => (clusters[c], r),
            (None, Some(r), Ok(l)) => (clusters[l.cluster], r),
            (None, _, Err(e)) => {
                out.unplaced.push(Unplaced {
                    pid: report.pid,
                    thread: task.thread.clone(),
                    why: format!("JVM {}: {}", report.pid, e.why),
                    candidates: Vec::new(),
                    no_taskmanager: true,
                });
                continue;
            }
            (None, None, Ok(_)) => continue,
        };
        match resolution {
            Resolution::Resolved(at) => {
                let Some(subtask) = find_subtask(cluster, &at) else {
                    continue;
                };
                let version = report
                    .jvm
                    .flink_version
                    .as_deref()
                    .or(cluster.flink_version.as_deref());
                let overcount = version.is_some_and(bpmon_proto::timers::totals_overcount);
                let mut row = merged_window(
                    task,
                    &at,
                    subtask,
                    (start, end),
                    report.resources.as_ref(),
                    overcount,
                );
                row.stacks = folded_stacks(report, task);
                row.taskmanager_id = subtask
                    .taskmanager_id
                    .clone()
                    .or_else(|| located.as_ref().ok().map(|l| l.taskmanager_id.clone()));
                out.windows.push(row);
            }
            Resolution::Ambiguous { candidates, why } => out.unplaced.push(Unplaced {
                pid: report.pid,
                thread: task.thread.clone(),
                why: format!(
                    "ambiguous on TaskManager {}: {why}",
                    located.as_ref().map_or("?", |l| l.taskmanager_id.as_str())
                ),
                candidates,
                no_taskmanager: false,
            }),
            Resolution::Unknown { why } => out.unplaced.push(Unplaced {
                pid: report.pid,
                thread: task.thread.clone(),
                why,
                candidates: Vec::new(),
                no_taskmanager: false,
            }),
        }
    }
}

/// Which TaskManager a report's JVM is, or why none, as `agents` shows it.
fn jvm_outcome(
    pid: u32,
    clues: &JvmClues<'_>,
    located: &Result<Located, NotLocated>,
) -> JvmOutcome {
    JvmOutcome {
        clues: clues.describe(),
        misses: located
            .as_ref()
            .err()
            .map(|e| e.per_taskmanager.clone())
            .unwrap_or_default(),
        pid,
        taskmanager_id: located.as_ref().ok().map(|l| l.taskmanager_id.clone()),
        text: match located {
            Ok(l) => format!("TaskManager {} by {}", l.taskmanager_id, l.how),
            Err(e) => e.why.clone(),
        },
    }
}

/// Per task, its resolution by exact ids and the cluster it is in. The in-process sampler's
/// exact ids name the subtask in whichever cluster runs the job, with or without the
/// TaskManager.
fn exact_resolutions(
    report: &SampleReport,
    clusters: &[&ClusterSnapshot],
    located: &Result<Located, NotLocated>,
) -> Vec<Option<(usize, Resolution)>> {
    report
        .tasks
        .iter()
        .map(|t| {
            let e = t.exact.as_ref()?;
            let c = clusters
                .iter()
                .position(|c| c.jobs.iter().any(|j| j.job_id == e.job_id))
                .or(located.as_ref().ok().map(|l| l.cluster))?;
            Some((c, resolve_exact(t, e, &clusters[c].jobs)))
        })
        .collect()
}

/// A placed thread's counts merged with its subtask's metrics, over the report's window, with
/// the subtask's host (the caller sets the TaskManager: Flink's, else the located one).
/// `totals_overcount`: the task's Flink counts its timers' totals wrong
/// ([`bpmon_proto::timers::totals_overcount`]); they are dropped, and the ratio comes from the
/// samples, split soft and idle by the timers' states, which are right.
fn merged_window(
    task: &TaskSamples,
    at: &SubtaskRef,
    subtask: &SubtaskSnapshot,
    (start, end): (u64, u64),
    resources: Option<&JvmResources>,
    totals_overcount: bool,
) -> MergedWindow {
    let timers = task.timers.map(|mut t| {
        if totals_overcount {
            t.totals = None;
        }
        t
    });
    let counts = SampleCounts {
        samples: task.samples,
        blocked: task.blocked,
        waiting: task.waiting,
        busy: task.busy,
        timers,
    };
    let merged = merge_subtask(&counts, &subtask.metrics);
    let mut row = MergedWindow::new(
        at,
        start,
        end,
        &merged,
        subtask.metrics.clone(),
        task.top_frames.clone(),
    );
    row.host = subtask.host.clone();
    row.evidence = WindowEvidence {
        activity: task.activity,
        locks: task.locks.clone(),
        cpu: task.cpu,
        resources: resources.cloned(),
        timers,
        stack_samples: task.stack_samples,
    };
    row
}

/// The task's busy stacks, folded, samples of one stack seen with different activities summed.
/// A stack naming a frame the report does not hold is left out (and logged): the report's counts
/// still stand.
fn folded_stacks(report: &SampleReport, task: &TaskSamples) -> Vec<FoldedStack> {
    let Some(stacks) = report.folded_stacks(task) else {
        tracing::warn!(
            agent_pid = report.pid,
            thread = %task.thread,
            "a report's stacks name frames it does not hold; its stacks are left out"
        );
        return Vec::new();
    };
    let mut by_stack: Vec<FoldedStack> = Vec::with_capacity(stacks.len());
    for (folded, _activity, samples) in stacks {
        match by_stack.iter_mut().find(|s| s.folded == folded) {
            Some(s) => s.samples = s.samples.saturating_add(samples),
            None => by_stack.push(FoldedStack { folded, samples }),
        }
    }
    by_stack
}

fn find_subtask<'a>(cluster: &'a ClusterSnapshot, at: &SubtaskRef) -> Option<&'a SubtaskSnapshot> {
    cluster
        .jobs
        .iter()
        .find(|j| j.job_id == at.job_id)?
        .vertices
        .iter()
        .find(|v| v.vertex_id == at.vertex_id)?
        .subtasks
        .iter()
        .find(|s| s.subtask == at.subtask && s.attempt == at.attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSnapshot, SubtaskMetrics, TaskManagerRef, VertexSnapshot};
    use bpmon_proto::{JvmInfo, Level, SampleCost, TaskIdentity, TaskSamples};

    fn cluster() -> ClusterSnapshot {
        let subtask = |i: u32, start: i64, out_pool: f64| SubtaskSnapshot {
            subtask: i,
            attempt: 0,
            status: "RUNNING".into(),
            taskmanager_id: Some("tm-a".into()),
            host: Some("10.0.0.1".into()),
            start_time_ms: Some(start),
            metrics: SubtaskMetrics {
                out_pool_usage: Some(out_pool),
                is_back_pressured: Some(out_pool >= 1.0),
                ..Default::default()
            },
        };
        let job = |id: &str, start: i64, out_pool: f64| JobSnapshot {
            job_id: id.into(),
            name: "twin".into(),
            state: "RUNNING".into(),
            start_time_ms: Some(start),
            vertices: vec![VertexSnapshot {
                vertex_id: "v".repeat(32),
                name: "Map".into(),
                parallelism: 2,
                subtasks: vec![subtask(0, start, out_pool), subtask(1, start, out_pool)],
            }],
            edges: vec![],
        };
        ClusterSnapshot {
            flink_url: "http://flink".into(),
            taskmanagers_unread: false,
            flink_version: Some("1.11.0".into()),
            fetched_at_ms: 0,
            jobs: vec![job("a", 1_000_000, 1.0), job("b", 1_030_000, 0.1)],
            taskmanagers: vec![TaskManagerRef {
                id: "tm-a".into(),
                host: Some("10.0.0.1".into()),
                rpc_port: Some(6122),
                data_port: None,
                addresses: vec![],
            }],
            errors: vec![],
        }
    }

    fn task(subtask: u32, age_s: f64) -> TaskSamples {
        TaskSamples {
            thread: format!("Map ({}/2)#0", subtask + 1),
            thread_id: Some(u64::from(subtask)),
            os_thread_id: None,
            elapsed_s: Some(age_s),
            identity: TaskIdentity {
                task: "Map".into(),
                subtask,
                parallelism: 2,
                attempt: Some(0),
            },
            legacy_source_thread: false,
            exact: None,
            samples: 10,
            stack_samples: None,
            blocked: 2,
            waiting: 8,
            busy: 0,
            top_frames: vec![],
            activity: None,
            locks: Vec::new(),
            cpu: None,
            stacks: Vec::new(),
            timers: None,
        }
    }

    fn batch(tasks: Vec<TaskSamples>, ports: Vec<u16>) -> ReportBatch {
        ReportBatch {
            schema_version: 1,
            agent_id: "agent".into(),
            seq: 1,
            host_names: vec!["10.0.0.1".into()],
            created_at_ms: 0,
            dropped_before: 0,
            reports: vec![SampleReport {
                pid: 42,
                backend: "attach".into(),
                jvm: JvmInfo {
                    listen_ports: ports,
                    ..Default::default()
                },
                samples: 10,
                delay_ms: 50,
                // The window ends at 1_100_000 ms.
                started_at_ms: 1_099_500,
                elapsed_ms: 500,
                tasks,
                cost: SampleCost::default(),
                errors: vec![],
                resources: None,
                stack_frames: Vec::new(),
            }],
        }
    }

    #[test]
    fn threads_are_placed_by_age_and_merged_with_their_subtasks_metrics() {
        let c = cluster();
        // Started 100 s and 70 s before the window's end: jobs a and b.
        let p = place_batch(
            &batch(vec![task(0, 100.0), task(0, 70.0)], vec![6122]),
            &[&c],
        );
        assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
        assert_eq!(p.windows.len(), 2);
        let a = p.windows.iter().find(|w| w.job_id == "a").unwrap();
        let b = p.windows.iter().find(|w| w.job_id == "b").unwrap();
        // Job a's output is exhausted: all waiting is soft. Job b's is not: idle.
        assert_eq!((a.soft, a.idle, a.level), (8, 0, Some(Level::High)));
        assert_eq!((b.soft, b.idle, b.level), (0, 8, Some(Level::Low)));
        assert_eq!(a.taskmanager_id.as_deref(), Some("tm-a"));
        assert_eq!((a.window_start_ms, a.window_end_ms), (1_099_500, 1_100_000));
    }

    #[test]
    fn twins_of_the_same_age_stay_unplaced_and_name_their_candidates() {
        let c = cluster();
        let p = place_batch(
            &batch(vec![task(1, 85.0), task(1, 85.0)], vec![6122]),
            &[&c],
        );
        assert!(p.windows.is_empty());
        assert_eq!(p.unplaced.len(), 2);
        assert!(
            p.unplaced[0].why.contains("ambiguous"),
            "{}",
            p.unplaced[0].why
        );
        assert_eq!(p.unplaced[0].candidates.len(), 2);
        assert!(!p.unplaced[0].no_taskmanager);
    }

    #[test]
    fn exact_ids_place_a_task_whatever_the_taskmanager_match() {
        let c = cluster();
        let mut t = task(1, 100.0);
        t.exact = Some(bpmon_proto::ExactTask {
            job_id: "b".into(),
            vertex_id: "v".repeat(32),
            execution_attempt_id: "x".into(),
        });
        // Port 9999: no TaskManager matches this JVM, yet its exact task is placed.
        let p = place_batch(&batch(vec![t, task(0, 100.0)], vec![9999]), &[&c]);
        assert_eq!(p.windows.len(), 1, "{:?}", p.unplaced);
        assert_eq!(
            (p.windows[0].job_id.as_str(), p.windows[0].subtask),
            ("b", 1)
        );
        assert_eq!(p.windows[0].taskmanager_id.as_deref(), Some("tm-a"));
        // The thread without exact ids cannot be placed, and says why.
        assert_eq!(p.unplaced.len(), 1);
        assert!(p.unplaced[0].no_taskmanager);
        assert_eq!(p.jvms.len(), 1);
        assert!(p.jvms[0].taskmanager_id.is_none());
        assert!(
            p.jvms[0].misses[0].1.contains("does not listen on 6122"),
            "{:?}",
            p.jvms[0]
        );
    }

    #[test]
    fn timer_totals_of_a_flink_that_overcounts_them_are_not_used() {
        use bpmon_proto::timers::{TimerCounts, TimerMethod, TimerTotals, TimerWindow};
        let c = cluster();
        let mut t = task(0, 100.0);
        // 2 blocked and 8 waiting samples, 4 of them with the soft timer running; totals that
        // add up to more than the span, as Flink 1.18's do after a long wait ends.
        t.timers = Some(TimerWindow {
            method: TimerMethod::Fields,
            states: TimerCounts {
                idle: 4,
                soft: 4,
                hard: 2,
                busy: 0,
            },
            waiting_soft: 4,
            totals: Some(TimerTotals {
                span_ms: 500,
                idle_ms: 260,
                soft_ms: 180,
                hard_ms: 100,
            }),
            back_pressured_from_ms: None,
            back_pressured_until_ms: None,
        });
        let placed = |version: &str| {
            let mut b = batch(vec![t.clone()], vec![6122]);
            b.reports[0].jvm.flink_version = Some(version.into());
            let p = place_batch(&b, &[&c]);
            assert_eq!(p.windows.len(), 1, "{:?}", p.unplaced);
            p.windows[0].clone()
        };
        let old = placed("1.18.1");
        assert_eq!(old.ratio_source(), crate::merge::RatioSource::Samples);
        assert!(old.evidence.timers.is_some_and(|t| t.totals.is_none()));
        // (2 blocked + 4 soft) / 10 samples, the soft ones by the timers' states.
        assert_eq!((old.soft, old.idle), (4, 4));
        assert!(
            old.ratio.is_some_and(|r| (r - 0.6).abs() < 1e-9),
            "{:?}",
            old.ratio
        );
        let new = placed("2.3.0");
        assert_eq!(new.ratio_source(), crate::merge::RatioSource::Timers);
        assert!(
            new.ratio.is_some_and(|r| (r - 280.0 / 500.0).abs() < 1e-9),
            "{:?}",
            new.ratio
        );
        // The agent did not say: the cluster's version (1.11 here, before the totals) decides.
        let mut b = batch(vec![t.clone()], vec![6122]);
        b.reports[0].jvm.flink_version = None;
        let p = place_batch(&b, &[&c]);
        assert_eq!(
            p.windows[0].ratio_source(),
            crate::merge::RatioSource::Timers
        );
    }

    #[test]
    fn a_jvm_of_no_watched_cluster_says_so() {
        let c = cluster();
        let p = place_batch(&batch(vec![task(0, 100.0)], vec![9999]), &[&c]);
        assert!(p.windows.is_empty());
        assert!(p.unplaced[0].no_taskmanager);
        assert!(
            p.unplaced[0].why.contains("no TaskManager"),
            "{}",
            p.unplaced[0].why
        );
        let p = place_batch(&batch(vec![task(0, 100.0)], vec![6122]), &[]);
        assert!(p.unplaced[0].why.contains("no Flink cluster"));
    }
}
