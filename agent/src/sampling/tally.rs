//! Per-task sample counts, built one classified dump at a time. Pure: the sampling loop feeds it
//! what each dump showed, and it yields the report's `tasks`.
//!
//! A task is keyed by its main thread's name *and* JVM thread id: two jobs on one TaskManager can
//! run identically named tasks, and they must stay two entries. A legacy source thread is folded
//! into the task it serves, since that thread, not the mailbox thread, does the task's work.

use std::collections::HashMap;

use bpmon_proto::inprocess::TaskRef;
use bpmon_proto::{
    parse_task_thread_name, ExactTask, FrameCount, TaskIdentity, TaskSamples, ThreadRole,
};
use bpmon_stacks::classify::SampleClass;

/// One task thread as one dump showed it, already classified.
#[derive(Debug, Clone)]
pub struct ThreadSample<'a> {
    pub name: &'a str,
    pub java_id: Option<u64>,
    pub os_tid: Option<u64>,
    pub elapsed_s: Option<f64>,
    pub class: SampleClass,
    /// For busy samples: what the thread was doing.
    pub top_frame: Option<String>,
    /// The task's exact ids, when the backend can read them (the in-process sampler).
    pub task: Option<&'a TaskRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TaskKey {
    main_thread: String,
    /// JVM thread id of the main thread; of the legacy thread when its main thread was not seen.
    id: Option<u64>,
}

#[derive(Debug)]
struct TaskTally {
    identity: TaskIdentity,
    os_tid: Option<u64>,
    elapsed_s: Option<f64>,
    legacy: bool,
    exact: Option<ExactTask>,
    samples: u32,
    blocked: u32,
    waiting: u32,
    busy: u32,
    frames: HashMap<String, u32>,
}

/// Counts per task across a sampling run.
#[derive(Debug, Default)]
pub struct Tally {
    tasks: HashMap<TaskKey, TaskTally>,
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a thread name is one the tally wants frames for (task main and legacy threads).
    pub fn wants(name: &str) -> bool {
        parse_task_thread_name(name).is_some()
    }

    /// Adds one dump's task threads. Non-task threads are ignored.
    pub fn add_dump(&mut self, threads: &[ThreadSample<'_>]) {
        for task in dump_tasks(threads) {
            self.count(task);
        }
    }

    /// Counts one task's sample.
    fn count(&mut self, task: DumpTask) {
        let t = self.tasks.entry(task.key).or_insert_with(|| TaskTally {
            identity: task.identity,
            os_tid: None,
            elapsed_s: None,
            legacy: false,
            exact: None,
            samples: 0,
            blocked: 0,
            waiting: 0,
            busy: 0,
            frames: HashMap::new(),
        });
        t.os_tid = task.thread.os_tid.or(t.os_tid);
        t.elapsed_s = task.thread.elapsed_s.or(t.elapsed_s);
        t.legacy |= task.legacy;
        if t.exact.is_none() {
            t.exact = task.thread.task.map(|r| ExactTask {
                job_id: r.job_id.clone(),
                vertex_id: r.vertex_id.clone(),
                execution_attempt_id: r.execution_attempt_id.clone(),
            });
        }
        t.samples += 1;
        match task.class {
            SampleClass::Blocked => t.blocked += 1,
            SampleClass::Waiting => t.waiting += 1,
            SampleClass::Busy => {
                t.busy += 1;
                if let Some(f) = task.frame {
                    *t.frames.entry(f).or_insert(0) += 1;
                }
            }
        }
    }

    /// The report's task entries, in a stable order (by thread name, then id), each with its
    /// `top_n` most frequent busy frames.
    pub fn into_tasks(self, top_n: usize) -> Vec<TaskSamples> {
        let mut tasks: Vec<(TaskKey, TaskTally)> = self.tasks.into_iter().collect();
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        tasks
            .into_iter()
            .map(|(key, t)| {
                let mut frames: Vec<FrameCount> = t
                    .frames
                    .into_iter()
                    .map(|(frame, samples)| FrameCount { frame, samples })
                    .collect();
                frames.sort_by(|a, b| {
                    b.samples
                        .cmp(&a.samples)
                        .then_with(|| a.frame.cmp(&b.frame))
                });
                frames.truncate(top_n);
                TaskSamples {
                    thread: key.main_thread,
                    thread_id: key.id,
                    os_thread_id: t.os_tid,
                    elapsed_s: t.elapsed_s,
                    identity: t.identity,
                    legacy_source_thread: t.legacy,
                    exact: t.exact,
                    samples: t.samples,
                    blocked: t.blocked,
                    waiting: t.waiting,
                    busy: t.busy,
                    top_frames: frames,
                }
            })
            .collect()
    }
}

/// One task as one dump showed it, its threads combined.
struct DumpTask<'d, 'n> {
    key: TaskKey,
    identity: TaskIdentity,
    /// The thread whose age and ids describe the task (its main thread when seen).
    thread: &'d ThreadSample<'n>,
    class: SampleClass,
    frame: Option<String>,
    legacy: bool,
}

/// One dump's tasks: each main task thread, with the legacy source thread that speaks for it
/// folded in (or standing alone when its main thread is not in the dump).
fn dump_tasks<'d, 'n>(threads: &'d [ThreadSample<'n>]) -> Vec<DumpTask<'d, 'n>> {
    let mut tasks: Vec<DumpTask> = Vec::new();
    let mut legacies: Vec<(&ThreadSample, TaskIdentity)> = Vec::new();
    for t in threads {
        match parse_task_thread_name(t.name) {
            Some((identity, ThreadRole::Main)) => tasks.push(DumpTask {
                key: TaskKey {
                    main_thread: t.name.to_string(),
                    id: t.java_id.or(t.os_tid),
                },
                identity,
                thread: t,
                class: t.class,
                frame: t.top_frame.clone(),
                legacy: false,
            }),
            Some((identity, ThreadRole::LegacySource)) => legacies.push((t, identity)),
            None => {}
        }
    }
    for (legacy, identity) in legacies {
        let main_name = identity.main_thread_name();
        match pick_main(&tasks, &main_name, legacy.elapsed_s) {
            Some(i) => {
                let task = &mut tasks[i];
                let (class, frame) = combine(
                    task.class,
                    task.frame.take(),
                    legacy.class,
                    legacy.top_frame.clone(),
                );
                task.class = class;
                task.frame = frame;
                task.legacy = true;
            }
            None => tasks.push(DumpTask {
                key: TaskKey {
                    main_thread: main_name,
                    id: legacy.java_id.or(legacy.os_tid),
                },
                identity,
                thread: legacy,
                class: legacy.class,
                frame: legacy.top_frame.clone(),
                legacy: true,
            }),
        }
    }
    tasks
}

/// The main thread a legacy source thread belongs to: the one with its name; among same-named
/// ones (two jobs), the youngest that is at least as old as the legacy thread, which it started.
fn pick_main(tasks: &[DumpTask], main_name: &str, legacy_elapsed: Option<f64>) -> Option<usize> {
    let candidates: Vec<usize> = tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.key.main_thread == main_name && !t.legacy)
        .map(|(i, _)| i)
        .collect();
    match (candidates.len(), legacy_elapsed) {
        (0, _) => None,
        (1, _) => Some(candidates[0]),
        (_, Some(le)) => candidates
            .iter()
            .copied()
            .filter(|&i| tasks[i].thread.elapsed_s.is_some_and(|me| me >= le))
            .min_by(|&a, &b| {
                let ea = tasks[a].thread.elapsed_s.unwrap_or(f64::MAX);
                let eb = tasks[b].thread.elapsed_s.unwrap_or(f64::MAX);
                ea.total_cmp(&eb)
            }),
        (_, None) => None,
    }
}

/// A task's class when both its threads were seen: blocked beats busy beats waiting. The mailbox
/// thread of a legacy source waits forever; the legacy thread says what the task is doing.
fn combine(
    main: SampleClass,
    main_frame: Option<String>,
    legacy: SampleClass,
    legacy_frame: Option<String>,
) -> (SampleClass, Option<String>) {
    let rank = |c: SampleClass| match c {
        SampleClass::Blocked => 2,
        SampleClass::Busy => 1,
        SampleClass::Waiting => 0,
    };
    if rank(legacy) >= rank(main) {
        (legacy, legacy_frame)
    } else {
        (main, main_frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts<'a>(name: &'a str, id: u64, elapsed: f64, class: SampleClass) -> ThreadSample<'a> {
        ThreadSample {
            name,
            java_id: Some(id),
            os_tid: Some(id + 1000),
            elapsed_s: Some(elapsed),
            class,
            top_frame: (class == SampleClass::Busy).then(|| format!("user.Code.run{id}(X.java:1)")),
            task: None,
        }
    }

    #[test]
    fn counts_each_class_per_task() {
        let mut tally = Tally::new();
        for class in [
            SampleClass::Blocked,
            SampleClass::Blocked,
            SampleClass::Waiting,
            SampleClass::Busy,
        ] {
            tally.add_dump(&[
                ts("Source: a -> b (1/2)#0", 60, 10.0, class),
                ts("main", 1, 99.0, SampleClass::Busy),
                ts(
                    "OutputFlusher for Source: a -> b",
                    61,
                    10.0,
                    SampleClass::Busy,
                ),
            ]);
        }
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert_eq!((t.samples, t.blocked, t.waiting, t.busy), (4, 2, 1, 1));
        assert_eq!(t.identity.task, "Source: a -> b");
        assert_eq!(
            t.top_frames,
            vec![FrameCount {
                frame: "user.Code.run60(X.java:1)".into(),
                samples: 1
            }]
        );
    }

    #[test]
    fn same_named_tasks_of_two_jobs_stay_apart() {
        let mut tally = Tally::new();
        tally.add_dump(&[
            ts("Map (1/1)#0", 70, 30.0, SampleClass::Blocked),
            ts("Map (1/1)#0", 90, 5.0, SampleClass::Waiting),
        ]);
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 2);
        assert_eq!((tasks[0].thread_id, tasks[0].blocked), (Some(70), 1));
        assert_eq!((tasks[1].thread_id, tasks[1].waiting), (Some(90), 1));
    }

    #[test]
    fn legacy_source_thread_speaks_for_its_task() {
        let mut tally = Tally::new();
        tally.add_dump(&[
            ts("Source: legacy (1/1)#0", 50, 20.0, SampleClass::Waiting),
            ts(
                "Legacy Source Thread - Source: legacy (1/1)#0",
                52,
                19.5,
                SampleClass::Blocked,
            ),
        ]);
        tally.add_dump(&[
            ts("Source: legacy (1/1)#0", 50, 20.0, SampleClass::Waiting),
            ts(
                "Legacy Source Thread - Source: legacy (1/1)#0",
                52,
                19.5,
                SampleClass::Busy,
            ),
        ]);
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert!(t.legacy_source_thread);
        assert_eq!((t.samples, t.blocked, t.waiting, t.busy), (2, 1, 0, 1));
        assert_eq!(t.thread_id, Some(50));
    }

    #[test]
    fn legacy_threads_of_same_named_tasks_go_to_their_own_main_thread() {
        let mut tally = Tally::new();
        tally.add_dump(&[
            ts("Source: s (1/1)#0", 10, 100.0, SampleClass::Waiting),
            ts("Source: s (1/1)#0", 20, 10.0, SampleClass::Waiting),
            ts(
                "Legacy Source Thread - Source: s (1/1)#0",
                11,
                99.0,
                SampleClass::Blocked,
            ),
            ts(
                "Legacy Source Thread - Source: s (1/1)#0",
                21,
                9.0,
                SampleClass::Busy,
            ),
        ]);
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 2);
        let old = tasks.iter().find(|t| t.thread_id == Some(10)).unwrap();
        let young = tasks.iter().find(|t| t.thread_id == Some(20)).unwrap();
        assert_eq!((old.blocked, old.busy), (1, 0));
        assert_eq!((young.blocked, young.busy), (0, 1));
    }

    #[test]
    fn top_frames_are_ranked_and_capped() {
        let mut tally = Tally::new();
        for (i, f) in ["a", "b", "b", "c", "c", "c"].iter().enumerate() {
            let mut t = ts("T (1/1)#0", 1, i as f64, SampleClass::Busy);
            t.top_frame = Some(f.to_string());
            tally.add_dump(&[t]);
        }
        let tasks = tally.into_tasks(2);
        let frames: Vec<(&str, u32)> = tasks[0]
            .top_frames
            .iter()
            .map(|f| (f.frame.as_str(), f.samples))
            .collect();
        assert_eq!(frames, vec![("c", 3), ("b", 2)]);
    }
}
