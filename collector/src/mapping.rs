//! Which Flink subtask an agent's task thread is.
//!
//! Thread names carry no job id, and two jobs can run identically named vertices on one
//! TaskManager (even their vertex ids can be equal: Flink derives them from the topology's shape).
//! A thread of a report whose JVM is a known TaskManager ([`crate::locate`]) is resolved in
//! up to four steps:
//!
//! 1. with the in-process sampler, the exact job, vertex and attempt ids it read from Flink's
//!    `Task`: nothing to infer;
//! 2. the candidates: subtasks placed on that TaskManager whose vertex name, index, parallelism and
//!    attempt are the thread's;
//! 3. among several candidates, the thread's age: a task thread starts when its subtask is
//!    deployed, so its start (report time − `elapsed_s`) must lie close to the subtask's
//!    `start-time`. Same-named threads and candidates are paired closest first.
//! 4. what age leaves open, creation order: JVM thread ids grow as threads are created, and a
//!    TaskManager creates task threads in deployment order, so threads sorted by id pair with
//!    subtasks sorted by `start-time`, provided those lie [`ORDER_SEPARATION_MS`] apart.
//!
//! What stays undecided is reported as ambiguous, with the candidates, never guessed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use bpmon_proto::{ExactTask, SampleReport, TaskSamples};

use crate::model::JobSnapshot;

/// How far a thread's start may lie from its subtask's `start-time` and still identify it.
pub const START_TOLERANCE_MS: f64 = 5_000.0;
/// How much closer the best subtask must be than the next: `start-time` comes from the
/// JobManager's clock and the thread's age from the TaskManager's, and deployment takes a while,
/// so differences below a second decide nothing.
pub const MIN_SEPARATION_MS: f64 = 1_000.0;
/// How far apart same-named subtasks' `start-time`s must lie for their creation order to be
/// trusted: two jobs' deployments reach a TaskManager from two JobMasters, and only deployments
/// this far apart arrive in the order of their timestamps.
pub const ORDER_SEPARATION_MS: f64 = 50.0;

/// Where a task thread belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskRef {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask: u32,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Resolution {
    Resolved(SubtaskRef),
    Ambiguous {
        candidates: Vec<SubtaskRef>,
        why: String,
    },
    Unknown {
        why: String,
    },
}

/// A subtask a thread could be, with its `start-time`.
type Candidate = (SubtaskRef, Option<i64>);

/// Subtasks placed on one TaskManager, by what a thread name carries (vertex name, subtask
/// index, parallelism): each thread's candidates are then one look-up.
type PlacedIndex<'a> = HashMap<(&'a str, u32, u32), Vec<Candidate>>;

/// Every task of one report, whose JVM is TaskManager `tm_id`, in the steps of the module doc.
/// Step 1 stays here although placement resolves exact ids itself (in whichever cluster runs the
/// job): it keeps the threads with exact ids out of the name groups, where they would take
/// candidates from same-named threads without them.
pub fn resolve_tasks(report: &SampleReport, tm_id: &str, jobs: &[JobSnapshot]) -> Vec<Resolution> {
    let placed = placed_on(tm_id, jobs);
    let mut out: Vec<Option<Resolution>> = vec![None; report.tasks.len()];
    // Step 1: the in-process sampler read the exact ids from Flink's own objects.
    for (i, t) in report.tasks.iter().enumerate() {
        if let Some(exact) = &t.exact {
            out[i] = Some(resolve_exact(t, exact, jobs));
        }
    }
    for members in same_named_threads(report, &out) {
        // Step 2: the candidates.
        let candidates = candidates_of(&placed, &report.tasks[members[0]]);
        resolve_group(report, tm_id, &members, &candidates, &mut out);
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or(Resolution::Unknown {
                why: "unresolved".into(),
            })
        })
        .collect()
}

/// The subtasks on TaskManager `tm_id`, indexed once.
fn placed_on<'a>(tm_id: &str, jobs: &'a [JobSnapshot]) -> PlacedIndex<'a> {
    let mut placed: PlacedIndex<'a> = HashMap::new();
    for job in jobs {
        for v in &job.vertices {
            for s in v
                .subtasks
                .iter()
                .filter(|s| s.taskmanager_id.as_deref() == Some(tm_id))
            {
                placed
                    .entry((v.name.as_str(), s.subtask, v.parallelism))
                    .or_default()
                    .push((
                        SubtaskRef {
                            job_id: job.job_id.clone(),
                            vertex_id: v.vertex_id.clone(),
                            subtask: s.subtask,
                            attempt: s.attempt,
                        },
                        s.start_time_ms,
                    ));
            }
        }
    }
    placed
}

/// The subtasks a thread could be: its name's, of its attempt when it carries one.
fn candidates_of(placed: &PlacedIndex<'_>, t: &TaskSamples) -> Vec<Candidate> {
    placed
        .get(&(
            t.identity.task.as_str(),
            t.identity.subtask,
            t.identity.parallelism,
        ))
        .map(|c| {
            c.iter()
                .filter(|(r, _)| t.identity.attempt.is_none_or(|a| a == r.attempt))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The threads not yet resolved that compete for the same candidates (same name on this
/// TaskManager), in order of first appearance. By name through a map: linear in the threads,
/// however many a report carries.
fn same_named_threads(report: &SampleReport, out: &[Option<Resolution>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (i, t) in report.tasks.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        match group_of.get(t.thread.as_str()) {
            Some(&g) => groups[g].push(i),
            None => {
                group_of.insert(t.thread.as_str(), groups.len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// Resolves one group of same-named threads among their candidates: directly when one thread
/// has one candidate, else by age (step 3), then creation order (step 4); what stays open is
/// ambiguous, with how close the candidates' deployments were.
fn resolve_group(
    report: &SampleReport,
    tm_id: &str,
    members: &[usize],
    candidates: &[Candidate],
    out: &mut [Option<Resolution>],
) {
    if candidates.is_empty() {
        for &i in members {
            out[i] = Some(Resolution::Unknown {
                why: format!(
                    "no running subtask '{}' #{} on TaskManager {tm_id}",
                    report.tasks[i].identity.task, report.tasks[i].identity.subtask
                ),
            });
        }
        return;
    }
    if members.len() == 1 && candidates.len() == 1 {
        out[members[0]] = Some(Resolution::Resolved(candidates[0].0.clone()));
        return;
    }
    // Step 3: age.
    let used_candidates = pair_by_age(report, members, candidates, out);
    // Step 4: age could not decide, creation order can. A TaskManager creates task threads in
    // the order their deployments arrive, and JVM thread ids grow with creation, so the
    // undecided threads sorted by id pair with the undecided subtasks sorted by `start-time`,
    // when those lie clearly apart.
    let open_threads: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| out[i].is_none())
        .collect();
    let open_candidates: Vec<usize> = (0..candidates.len())
        .filter(|c| !used_candidates.contains(c))
        .collect();
    if let Some(pairs) =
        pair_by_creation_order(&report.tasks, &open_threads, candidates, &open_candidates)
    {
        for (i, c) in pairs {
            out[i] = Some(Resolution::Resolved(candidates[c].0.clone()));
        }
    }
    let closest = closest_starts(candidates);
    for &i in members {
        if out[i].is_none() {
            out[i] = Some(Resolution::Ambiguous {
                candidates: candidates.iter().map(|(r, _)| r.clone()).collect(),
                why: format!(
                    "{} threads named '{}' and {} matching subtasks; their start times do not tell them apart{closest}",
                    members.len(),
                    report.tasks[i].thread,
                    candidates.len()
                ),
            });
        }
    }
}

/// Pairs threads and subtasks by how close the thread's start (report end − its age) is to the
/// subtask's `start-time`, closest first, keeping only decisive pairs. Returns the candidates
/// taken.
fn pair_by_age(
    report: &SampleReport,
    members: &[usize],
    candidates: &[Candidate],
    out: &mut [Option<Resolution>],
) -> Vec<usize> {
    let report_end_ms = (report.started_at_ms + report.elapsed_ms) as f64;
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for &i in members {
        let Some(age) = report.tasks[i].elapsed_s else {
            continue;
        };
        let thread_start = report_end_ms - age * 1000.0;
        for (c, (_, start)) in candidates.iter().enumerate() {
            if let Some(start) = start {
                pairs.push(((thread_start - *start as f64).abs(), i, c));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut used_threads = Vec::new();
    let mut used_candidates = Vec::new();
    for (distance, i, c) in &pairs {
        if used_threads.contains(i) || used_candidates.contains(c) {
            continue;
        }
        // The match must be close, and clearly closer than this thread's next best.
        let runner_up = pairs
            .iter()
            .filter(|(_, i2, c2)| i2 == i && c2 != c && !used_candidates.contains(c2))
            .map(|(d, _, _)| *d)
            .next();
        let decisive = *distance <= START_TOLERANCE_MS
            && runner_up.is_none_or(|r| r - distance >= MIN_SEPARATION_MS);
        if decisive {
            out[*i] = Some(Resolution::Resolved(candidates[*c].0.clone()));
            used_threads.push(*i);
            used_candidates.push(*c);
        }
    }
    used_candidates
}

/// What an operator needs to see why a group stays ambiguous: how close the candidates'
/// deployments were (empty without two start times).
fn closest_starts(candidates: &[Candidate]) -> String {
    let mut starts: Vec<i64> = candidates.iter().filter_map(|(_, s)| *s).collect();
    starts.sort_unstable();
    starts
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .map(|gap| {
            format!(
                " (closest start-times {gap} ms apart; creation order needs {ORDER_SEPARATION_MS} ms)"
            )
        })
        .unwrap_or_default()
}

/// A task whose job and vertex ids the agent read inside the JVM: no guessing, only a check that
/// the collector knows that subtask (a job too new for the last poll is unknown for a moment).
pub fn resolve_exact(t: &TaskSamples, exact: &ExactTask, jobs: &[JobSnapshot]) -> Resolution {
    let Some(job) = jobs.iter().find(|j| j.job_id == exact.job_id) else {
        return Resolution::Unknown {
            why: format!(
                "job {} is not (yet) among the cluster's running jobs",
                exact.job_id
            ),
        };
    };
    let Some(vertex) = job.vertices.iter().find(|v| v.vertex_id == exact.vertex_id) else {
        return Resolution::Unknown {
            why: format!("job {} has no vertex {}", exact.job_id, exact.vertex_id),
        };
    };
    let attempt = t.identity.attempt.unwrap_or(0);
    match vertex
        .subtasks
        .iter()
        .find(|s| s.subtask == t.identity.subtask)
    {
        // A thread of an earlier attempt (still being cancelled) is not the running subtask.
        Some(s) if t.identity.attempt.is_some_and(|a| a != s.attempt) => Resolution::Unknown {
            why: format!(
                "attempt {attempt} of '{}' #{} is not the running one ({})",
                vertex.name, s.subtask, s.attempt
            ),
        },
        Some(s) => Resolution::Resolved(SubtaskRef {
            job_id: job.job_id.clone(),
            vertex_id: vertex.vertex_id.clone(),
            subtask: s.subtask,
            attempt: s.attempt,
        }),
        None => Resolution::Unknown {
            why: format!(
                "vertex '{}' of job {} has no subtask #{} (attempt {attempt})",
                vertex.name, job.job_id, t.identity.subtask
            ),
        },
    }
}

/// Pairs threads (by JVM thread id) with candidate subtasks (by `start-time`), both in creation
/// order; `None` unless both sides are complete, equally many, and the start times lie at least
/// [`ORDER_SEPARATION_MS`] apart.
fn pair_by_creation_order(
    tasks: &[TaskSamples],
    threads: &[usize],
    candidates: &[(SubtaskRef, Option<i64>)],
    open: &[usize],
) -> Option<Vec<(usize, usize)>> {
    if threads.len() < 2 || threads.len() != open.len() {
        return None;
    }
    let mut by_id: Vec<(u64, usize)> = threads
        .iter()
        .map(|&i| tasks[i].thread_id.map(|id| (id, i)))
        .collect::<Option<_>>()?;
    let mut by_start: Vec<(i64, usize)> = open
        .iter()
        .map(|&c| candidates[c].1.map(|t| (t, c)))
        .collect::<Option<_>>()?;
    by_id.sort_unstable();
    by_start.sort_unstable();
    // Equal ids would be the same thread twice: no order to read.
    if by_id.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let apart = by_start
        .windows(2)
        .all(|w| (w[1].0 - w[0].0) as f64 >= ORDER_SEPARATION_MS);
    apart.then(|| {
        by_id
            .iter()
            .zip(&by_start)
            .map(|(t, c)| (t.1, c.1))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SubtaskMetrics, SubtaskSnapshot, VertexSnapshot};
    use bpmon_proto::{SampleCost, TaskIdentity};

    fn task(name: &str, subtask: u32, id: u64, elapsed_s: f64) -> TaskSamples {
        TaskSamples {
            thread: format!("{name} ({}/2)#0", subtask + 1),
            thread_id: Some(id),
            os_thread_id: None,
            elapsed_s: Some(elapsed_s),
            identity: TaskIdentity {
                task: name.into(),
                subtask,
                parallelism: 2,
                attempt: Some(0),
            },
            legacy_source_thread: false,
            exact: None,
            samples: 10,
            stack_samples: None,
            blocked: 10,
            waiting: 0,
            busy: 0,
            top_frames: vec![],
            activity: None,
            locks: Vec::new(),
            cpu: None,
            stacks: Vec::new(),
            timers: None,
        }
    }

    fn report(tasks: Vec<TaskSamples>) -> SampleReport {
        SampleReport {
            pid: 1,
            backend: "attach".into(),
            jvm: bpmon_proto::JvmInfo::default(),
            samples: 10,
            delay_ms: 50,
            started_at_ms: 1_000_000,
            elapsed_ms: 500,
            tasks,
            cost: SampleCost::default(),
            errors: vec![],
            resources: None,
            stack_frames: Vec::new(),
        }
    }

    /// A job whose vertex `name` runs its two subtasks on tm0, started at `start_ms`.
    fn job(id: &str, name: &str, start_ms: i64) -> JobSnapshot {
        JobSnapshot {
            job_id: id.into(),
            name: id.into(),
            state: "RUNNING".into(),
            start_time_ms: Some(start_ms),
            vertices: vec![VertexSnapshot {
                vertex_id: "v".into(),
                name: name.into(),
                parallelism: 2,
                subtasks: (0..2)
                    .map(|i| SubtaskSnapshot {
                        subtask: i,
                        attempt: 0,
                        status: "RUNNING".into(),
                        taskmanager_id: Some("tm0".into()),
                        host: None,
                        start_time_ms: Some(start_ms),
                        metrics: SubtaskMetrics::default(),
                    })
                    .collect(),
            }],
            edges: vec![],
        }
    }

    fn resolved(r: &Resolution) -> &SubtaskRef {
        match r {
            Resolution::Resolved(s) => s,
            other => panic!("not resolved: {other:?}"),
        }
    }

    #[test]
    fn a_unique_name_resolves_directly() {
        let r = resolve_tasks(
            &report(vec![task("Map", 1, 70, 30.0)]),
            "tm0",
            &[job("j1", "Map", 0)],
        );
        assert_eq!(
            resolved(&r[0]),
            &SubtaskRef {
                job_id: "j1".into(),
                vertex_id: "v".into(),
                subtask: 1,
                attempt: 0
            }
        );
    }

    #[test]
    fn same_named_tasks_of_two_jobs_are_told_apart_by_age() {
        // Report ends at 1_000_500 ms. Job j1 started at 900_000 (thread age ~100.5 s), j2 at
        // 990_000 (age ~10.5 s).
        let jobs = [job("j1", "Map", 900_000), job("j2", "Map", 990_000)];
        let r = resolve_tasks(
            &report(vec![task("Map", 0, 90, 10.3), task("Map", 0, 70, 100.4)]),
            "tm0",
            &jobs,
        );
        assert_eq!(resolved(&r[0]).job_id, "j2");
        assert_eq!(resolved(&r[1]).job_id, "j1");
    }

    #[test]
    fn jobs_deployed_close_together_are_told_apart_by_thread_creation_order() {
        // 400 ms apart: too close for age, far enough for order. j1 was deployed first, so its
        // thread has the lower id.
        let jobs = [job("j2", "Map", 990_400), job("j1", "Map", 990_000)];
        let r = resolve_tasks(
            &report(vec![task("Map", 0, 90, 10.3), task("Map", 0, 70, 10.2)]),
            "tm0",
            &jobs,
        );
        assert_eq!(resolved(&r[0]).job_id, "j2");
        assert_eq!(resolved(&r[1]).job_id, "j1");
        // Without thread ids (an old dump format), nothing is guessed.
        let mut tasks = vec![task("Map", 0, 90, 10.3), task("Map", 0, 70, 10.2)];
        tasks[0].thread_id = None;
        let r = resolve_tasks(&report(tasks), "tm0", &jobs);
        assert!(r.iter().all(|x| matches!(x, Resolution::Ambiguous { .. })));
    }

    #[test]
    fn exact_ids_from_the_in_process_sampler_decide_where_names_cannot() {
        // Started in the same instant: by name and age, ambiguous (see the next test).
        let jobs = [job("j1", "Map", 990_000), job("j2", "Map", 990_003)];
        let exact = |job: &str| {
            Some(ExactTask {
                job_id: job.into(),
                vertex_id: "v".into(),
                execution_attempt_id: format!("{job}-e"),
            })
        };
        let mut a = task("Map", 0, 90, 10.3);
        a.exact = exact("j2");
        let mut b = task("Map", 0, 70, 10.2);
        b.exact = exact("j1");
        let r = resolve_tasks(&report(vec![a.clone(), b]), "tm0", &jobs);
        assert_eq!(resolved(&r[0]).job_id, "j2");
        assert_eq!(resolved(&r[1]).job_id, "j1");
        // A job the collector has not polled yet, an older attempt: said, not guessed.
        let mut c = task("Map", 0, 91, 1.0);
        c.exact = exact("j9");
        a.identity.attempt = Some(1);
        let r = resolve_tasks(&report(vec![c, a]), "tm0", &jobs);
        match &r[0] {
            Resolution::Unknown { why } => assert!(why.contains("job j9"), "{why}"),
            other => panic!("{other:?}"),
        }
        match &r[1] {
            Resolution::Unknown { why } => assert!(why.contains("not the running one"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jobs_started_together_stay_ambiguous() {
        // Submitted at once: start times 3 ms apart, as measured on Flink 2.3.
        let jobs = [job("j1", "Map", 990_000), job("j2", "Map", 990_003)];
        let r = resolve_tasks(
            &report(vec![task("Map", 0, 90, 10.3), task("Map", 0, 70, 10.2)]),
            "tm0",
            &jobs,
        );
        for x in &r {
            match x {
                Resolution::Ambiguous { candidates, why } => {
                    assert_eq!(candidates.len(), 2);
                    assert!(why.contains("do not tell them apart"), "{why}");
                    assert!(why.contains("closest start-times 3 ms apart"), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_thread_on_another_taskmanager_or_attempt_is_unknown() {
        let r = resolve_tasks(
            &report(vec![task("Map", 0, 1, 5.0)]),
            "tm9",
            &[job("j1", "Map", 0)],
        );
        assert!(matches!(&r[0], Resolution::Unknown { why } if why.contains("tm9")));
        let mut t = task("Map", 0, 1, 5.0);
        t.identity.attempt = Some(3);
        let r = resolve_tasks(&report(vec![t]), "tm0", &[job("j1", "Map", 0)]);
        assert!(matches!(&r[0], Resolution::Unknown { .. }));
    }
}
