//! Per-task sample counts, built one classified dump at a time. Pure: the sampling loop feeds it
//! what each dump showed, and it yields the report's `tasks`.
//!
//! A task is keyed by its main thread's name *and* JVM thread id: two jobs on one TaskManager can
//! run identically named tasks, and they must stay two entries. A legacy source thread is folded
//! into the task it serves, since that thread, not the mailbox thread, does the task's work.

use std::collections::HashMap;
use std::sync::Arc;

use bpmon_proto::inprocess::TaskRef;
use bpmon_proto::{
    parse_task_thread_name, timer_class, Activity, ActivityCounts, ExactTask, FrameCount,
    LockCount, RunningTimer, StackCount, TaskIdentity, TaskSamples, ThreadCpu, ThreadRole,
    TimerCounts, TimerReading, TimerTotals, TimerWindow, OTHER_STACKS,
};
use bpmon_stacks::classify::SampleClass;

use crate::backends::dump::{AwaitedLock, Roster, StateSample};

/// Locks kept per task, most samples first.
const TOP_LOCKS: usize = 3;
/// Stacks kept per task, most samples first; the rest are summed in one entry.
pub const TOP_STACKS: usize = 8;

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
    /// For busy samples: what the thread was doing, when the backend can tell.
    pub activity: Option<Activity>,
    /// For lock samples: the lock waited for.
    pub lock: Option<&'a AwaitedLock>,
    /// CPU time the thread had used by this sample, ms.
    pub cpu_ms: Option<f64>,
    /// For busy samples: the folded stack, where the backend sees it.
    pub stack: Option<&'a str>,
    /// Flink's timers of the thread's task at this sample (in-process backend, main threads).
    pub timers: Option<&'a TimerReading>,
    /// Classified by the timers alone, without a stack.
    pub stackless: bool,
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
    /// Samples whose stack was read (the others were classified by Flink's timers alone).
    stack_samples: u32,
    blocked: u32,
    waiting: u32,
    busy: u32,
    frames: HashMap<(String, Option<Activity>), u32>,
    activity: ActivityCounts,
    /// Busy samples whose activity the backend could not tell.
    activity_unknown: u32,
    locks: HashMap<AwaitedLock, u32>,
    /// Per thread of the task (main, legacy source): its first and last CPU reading.
    cpu: HashMap<u64, CpuSpan>,
    /// Busy samples by folded stack and activity (at most one entry per sample).
    stacks: HashMap<(String, Option<Activity>), u32>,
    timers: TimerTally,
}

/// What a task's timer readings add up to over a window.
#[derive(Debug, Default)]
struct TimerTally {
    states: TimerCounts,
    waiting_soft: u32,
    first: Option<TimerReading>,
    last: Option<TimerReading>,
    /// When the first and last back-pressured readings were taken.
    back_pressured: Option<(u64, u64)>,
    /// Samples without a reading: the window then reports no timers for the task, since its
    /// state counts would not cover every sample.
    unread: u32,
}

impl TimerTally {
    fn note(&mut self, reading: Option<&TimerReading>, class: SampleClass) {
        match reading {
            Some(r) => self.note_state(r.at_ms, r.running, Some(r), class),
            None => self.unread += 1,
        }
    }

    /// One sample's timer state, read at `at_ms`, with the totals when they were read.
    fn note_state(
        &mut self,
        at_ms: u64,
        running: Option<RunningTimer>,
        totals: Option<&TimerReading>,
        class: SampleClass,
    ) {
        if matches!(running, Some(RunningTimer::Soft | RunningTimer::Hard)) {
            let span = self.back_pressured.get_or_insert((at_ms, at_ms));
            span.0 = span.0.min(at_ms);
            span.1 = span.1.max(at_ms);
        }
        match running {
            Some(RunningTimer::Idle) => self.states.idle += 1,
            Some(RunningTimer::Soft) => {
                self.states.soft += 1;
                if class == SampleClass::Waiting {
                    self.waiting_soft += 1;
                }
            }
            Some(RunningTimer::Hard) => self.states.hard += 1,
            None => self.states.busy += 1,
        }
        if let Some(r) = totals {
            if self.first.is_none() {
                self.first = Some(*r);
            }
            self.last = Some(*r);
        }
    }

    fn window(&self) -> Option<TimerWindow> {
        let (first, last) = (self.first?, self.last?);
        if self.unread > 0 {
            return None;
        }
        Some(TimerWindow {
            method: last.method,
            states: self.states,
            waiting_soft: self.waiting_soft,
            totals: TimerTotals::between(&first, &last),
            back_pressured_from_ms: self.back_pressured.map(|b| b.0),
            back_pressured_until_ms: self.back_pressured.map(|b| b.1),
        })
    }
}

/// A thread's CPU time at its first and last sample, with when each sample was taken.
#[derive(Debug, Clone, Copy)]
struct CpuSpan {
    first: (u64, f64),
    last: (u64, f64),
}

/// Counts per task across a sampling run.
#[derive(Debug, Default)]
pub struct Tally {
    tasks: Vec<(TaskKey, TaskTally)>,
    index: HashMap<TaskKey, usize>,
    /// The last roster of timer states seen, and each of its threads' task (index in `tasks`)
    /// once counted: timers-only samples then cost a few increments per thread.
    roster: Option<(Arc<Roster>, Vec<Option<usize>>)>,
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a thread name is one the tally wants frames for (task main and legacy threads).
    pub fn wants(name: &str) -> bool {
        parse_task_thread_name(name).is_some()
    }

    /// Adds one dump's task threads, taken `at_ms` into the window. Non-task threads are ignored.
    pub fn add_dump(&mut self, threads: &[ThreadSample<'_>], at_ms: u64) {
        for task in dump_tasks(threads) {
            self.count(task, at_ms);
        }
    }

    /// Adds the threads of a timers-only sample that `include` (by roster index) accepts.
    pub fn add_states(&mut self, states: &StateSample, include: &[bool]) {
        let n = states.roster.threads.len();
        if !matches!(&self.roster, Some((r, _)) if Roster::same(r, &states.roster)) {
            self.roster = Some((states.roster.clone(), vec![None; n]));
        }
        let Some((roster, slots)) = &mut self.roster else {
            return;
        };
        for (i, ((thread, identity), reading)) in
            roster.threads.iter().zip(&states.readings).enumerate()
        {
            // A thread whose stack was read is counted from the sample's threads.
            if reading.stacked || !include.get(i).copied().unwrap_or(false) {
                continue;
            }
            let slot = match slots[i] {
                Some(slot) => slot,
                None => {
                    // Not a task thread by its name: a dump would not count it either.
                    let Some(identity) = identity else { continue };
                    let key = TaskKey {
                        main_thread: thread.name.clone(),
                        id: thread.java_id,
                    };
                    let slot = entry(&mut self.tasks, &mut self.index, key, identity);
                    let t = &mut self.tasks[slot].1;
                    if t.exact.is_none() {
                        t.exact = thread.task.as_ref().map(ExactTask::of);
                    }
                    slots[i] = Some(slot);
                    slot
                }
            };
            let t = &mut self.tasks[slot].1;
            let class = timer_class(reading.running);
            t.samples += 1;
            t.timers.note_state(
                states.at_ms,
                reading.running,
                reading.totals.as_ref(),
                class,
            );
            match class {
                SampleClass::Blocked => t.blocked += 1,
                SampleClass::Waiting => t.waiting += 1,
                SampleClass::Busy => t.busy += 1,
            }
        }
    }

    /// Counts one task's sample.
    fn count(&mut self, task: DumpTask, at_ms: u64) {
        let slot = entry(&mut self.tasks, &mut self.index, task.key, &task.identity);
        let t = &mut self.tasks[slot].1;
        for thread in &task.threads {
            t.note_cpu(thread, at_ms);
        }
        t.os_tid = task.thread.os_tid.or(t.os_tid);
        t.elapsed_s = task.thread.elapsed_s.or(t.elapsed_s);
        t.legacy |= task.legacy;
        if t.exact.is_none() {
            t.exact = task.thread.task.map(ExactTask::of);
        }
        t.samples += 1;
        t.timers.note(task.timers, task.class);
        // A timers-only sample counts in its class; what it was doing is not known.
        let stackless = task.thread.stackless;
        if !stackless {
            t.stack_samples += 1;
        }
        match task.class {
            SampleClass::Blocked => t.blocked += 1,
            SampleClass::Waiting => t.waiting += 1,
            SampleClass::Busy if stackless => t.busy += 1,
            SampleClass::Busy => {
                t.busy += 1;
                match task.activity {
                    Some(a) => t.activity.add(a, 1),
                    None => t.activity_unknown += 1,
                }
                if let Some(f) = task.frame {
                    *t.frames.entry((f, task.activity)).or_insert(0) += 1;
                }
                if let (Some(Activity::Lock), Some(lock)) = (task.activity, task.lock) {
                    *t.locks.entry(lock.clone()).or_insert(0) += 1;
                }
                if let Some(stack) = task.stack {
                    *t.stacks
                        .entry((stack.to_string(), task.activity))
                        .or_insert(0) += 1;
                }
            }
        }
    }

    /// The report's task entries, in a stable order (by thread name, then id), each with its
    /// `top_n` most frequent busy frames.
    pub fn into_tasks(self, top_n: usize) -> Vec<TaskSamples> {
        self.into_tasks_and_frames(top_n).0
    }

    /// [`Tally::into_tasks`], with the frame table the tasks' stacks index.
    pub fn into_tasks_and_frames(self, top_n: usize) -> (Vec<TaskSamples>, Vec<String>) {
        let mut table = FrameTable::default();
        let mut tallies = self.tasks;
        tallies.sort_by(|a, b| a.0.cmp(&b.0));
        let tasks = tallies
            .into_iter()
            .map(|(key, t)| {
                let cpu = t.window_cpu();
                let activity = (t.activity_unknown == 0).then_some(t.activity);
                let frames = FrameCount::top(t.frames, top_n);
                let locks = ranked_locks(t.locks);
                let stacks = table.stacks(t.stacks);
                let timers = t.timers.window();
                TaskSamples {
                    thread: key.main_thread,
                    thread_id: key.id,
                    os_thread_id: t.os_tid,
                    elapsed_s: t.elapsed_s,
                    identity: t.identity,
                    legacy_source_thread: t.legacy,
                    exact: t.exact,
                    samples: t.samples,
                    stack_samples: (t.stack_samples < t.samples).then_some(t.stack_samples),
                    blocked: t.blocked,
                    waiting: t.waiting,
                    busy: t.busy,
                    top_frames: frames,
                    activity,
                    locks,
                    cpu,
                    stacks,
                    timers,
                }
            })
            .collect();
        (tasks, table.frames)
    }
}

/// The index of a task's tally, made empty the first time the task is seen.
fn entry(
    tasks: &mut Vec<(TaskKey, TaskTally)>,
    index: &mut HashMap<TaskKey, usize>,
    key: TaskKey,
    identity: &TaskIdentity,
) -> usize {
    if let Some(&i) = index.get(&key) {
        return i;
    }
    let i = tasks.len();
    index.insert(key.clone(), i);
    tasks.push((
        key,
        TaskTally {
            identity: identity.clone(),
            os_tid: None,
            elapsed_s: None,
            legacy: false,
            exact: None,
            samples: 0,
            stack_samples: 0,
            blocked: 0,
            waiting: 0,
            busy: 0,
            frames: HashMap::new(),
            activity: ActivityCounts::default(),
            activity_unknown: 0,
            locks: HashMap::new(),
            cpu: HashMap::new(),
            stacks: HashMap::new(),
            timers: TimerTally::default(),
        },
    ));
    i
}

/// Frames interned for a report: each stack names its frames by index, so a frame shared by
/// many stacks and tasks (every Flink task's loop) is sent once.
#[derive(Debug, Default)]
struct FrameTable {
    frames: Vec<String>,
    index: HashMap<String, u32>,
}

impl FrameTable {
    fn intern(&mut self, frame: &str) -> u32 {
        if let Some(&i) = self.index.get(frame) {
            return i;
        }
        let i = self.frames.len() as u32;
        self.frames.push(frame.to_string());
        self.index.insert(frame.to_string(), i);
        i
    }

    /// A task's [`TOP_STACKS`] most frequent stacks, most first (ties by stack), the rest
    /// summed in one [`OTHER_STACKS`] entry so that the counts still add up to the samples.
    fn stacks(&mut self, counts: HashMap<(String, Option<Activity>), u32>) -> Vec<StackCount> {
        let mut ranked: Vec<((String, Option<Activity>), u32)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest: u32 = ranked.iter().skip(TOP_STACKS).map(|r| r.1).sum();
        ranked.truncate(TOP_STACKS);
        let mut out: Vec<StackCount> = ranked
            .into_iter()
            .map(|((stack, activity), samples)| StackCount {
                frames: stack.split(';').map(|f| self.intern(f)).collect(),
                samples,
                activity,
            })
            .collect();
        if rest > 0 {
            out.push(StackCount {
                frames: vec![self.intern(OTHER_STACKS)],
                samples: rest,
                activity: None,
            });
        }
        out
    }
}

impl TaskTally {
    /// Keeps a thread's first and last CPU reading.
    fn note_cpu(&mut self, thread: &ThreadSample<'_>, at_ms: u64) {
        let (Some(cpu), Some(key)) = (thread.cpu_ms, thread.os_tid.or(thread.java_id)) else {
            return;
        };
        let reading = (at_ms, cpu);
        self.cpu
            .entry(key)
            .and_modify(|span| span.last = reading)
            .or_insert(CpuSpan {
                first: reading,
                last: reading,
            });
    }

    /// CPU the task's threads used between their first and last samples; `None` when no thread
    /// was read twice.
    fn window_cpu(&self) -> Option<ThreadCpu> {
        let spans: Vec<&CpuSpan> = self.cpu.values().filter(|s| s.last.0 > s.first.0).collect();
        let wall_ms = spans.iter().map(|s| s.last.0 - s.first.0).max()?;
        // A counter that went backwards (a reused thread id) contributes nothing.
        let cpu_ms: f64 = spans.iter().map(|s| (s.last.1 - s.first.1).max(0.0)).sum();
        Some(ThreadCpu {
            cpu_ms: cpu_ms.round() as u64,
            wall_ms,
        })
    }
}

/// The most awaited locks, most samples first.
fn ranked_locks(locks: HashMap<AwaitedLock, u32>) -> Vec<LockCount> {
    let mut locks: Vec<LockCount> = locks
        .into_iter()
        .map(|(lock, samples)| LockCount {
            class: lock.class,
            owner: lock.owner,
            samples,
        })
        .collect();
    locks.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.class.cmp(&b.class))
            .then_with(|| a.owner.cmp(&b.owner))
    });
    locks.truncate(TOP_LOCKS);
    locks
}

/// One task as one dump showed it, its threads combined.
struct DumpTask<'d, 'n> {
    key: TaskKey,
    identity: TaskIdentity,
    /// The thread whose age and ids describe the task (its main thread when seen).
    thread: &'d ThreadSample<'n>,
    class: SampleClass,
    frame: Option<String>,
    activity: Option<Activity>,
    lock: Option<&'d AwaitedLock>,
    stack: Option<&'n str>,
    legacy: bool,
    /// Flink's timers of the task, read through its main thread (none without it).
    timers: Option<&'n TimerReading>,
    /// Every thread of the task in this dump, for their CPU time.
    threads: Vec<&'d ThreadSample<'n>>,
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
                activity: t.activity,
                lock: t.lock,
                stack: t.stack,
                legacy: false,
                timers: t.timers,
                threads: vec![t],
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
                // The legacy thread speaks for the task unless the main thread is worse off.
                if rank(legacy.class) >= rank(task.class) {
                    task.class = legacy.class;
                    task.frame = legacy.top_frame.clone();
                    task.activity = legacy.activity;
                    task.lock = legacy.lock;
                    task.stack = legacy.stack;
                }
                task.legacy = true;
                task.threads.push(legacy);
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
                activity: legacy.activity,
                lock: legacy.lock,
                stack: legacy.stack,
                legacy: true,
                timers: None,
                threads: vec![legacy],
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

/// How bad a class is when a task's two threads disagree: blocked beats busy beats waiting. The
/// mailbox thread of a legacy source waits forever; the legacy thread says what the task is doing.
fn rank(class: SampleClass) -> u8 {
    match class {
        SampleClass::Blocked => 2,
        SampleClass::Busy => 1,
        SampleClass::Waiting => 0,
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
            stack: None,
            activity: (class == SampleClass::Busy).then_some(Activity::Running),
            lock: None,
            cpu_ms: None,
            timers: None,
            stackless: false,
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
            tally.add_dump(
                &[
                    ts("Source: a -> b (1/2)#0", 60, 10.0, class),
                    ts("main", 1, 99.0, SampleClass::Busy),
                    ts(
                        "OutputFlusher for Source: a -> b",
                        61,
                        10.0,
                        SampleClass::Busy,
                    ),
                ],
                0,
            );
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
                samples: 1,
                activity: Some(Activity::Running),
            }]
        );
    }

    #[test]
    fn same_named_tasks_of_two_jobs_stay_apart() {
        let mut tally = Tally::new();
        tally.add_dump(
            &[
                ts("Map (1/1)#0", 70, 30.0, SampleClass::Blocked),
                ts("Map (1/1)#0", 90, 5.0, SampleClass::Waiting),
            ],
            0,
        );
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 2);
        assert_eq!((tasks[0].thread_id, tasks[0].blocked), (Some(70), 1));
        assert_eq!((tasks[1].thread_id, tasks[1].waiting), (Some(90), 1));
    }

    #[test]
    fn legacy_source_thread_speaks_for_its_task() {
        let mut tally = Tally::new();
        tally.add_dump(
            &[
                ts("Source: legacy (1/1)#0", 50, 20.0, SampleClass::Waiting),
                ts(
                    "Legacy Source Thread - Source: legacy (1/1)#0",
                    52,
                    19.5,
                    SampleClass::Blocked,
                ),
            ],
            0,
        );
        tally.add_dump(
            &[
                ts("Source: legacy (1/1)#0", 50, 20.0, SampleClass::Waiting),
                ts(
                    "Legacy Source Thread - Source: legacy (1/1)#0",
                    52,
                    19.5,
                    SampleClass::Busy,
                ),
            ],
            0,
        );
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
        tally.add_dump(
            &[
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
            ],
            0,
        );
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
            tally.add_dump(&[t], 0);
        }
        let tasks = tally.into_tasks(2);
        let frames: Vec<(&str, u32)> = tasks[0]
            .top_frames
            .iter()
            .map(|f| (f.frame.as_str(), f.samples))
            .collect();
        assert_eq!(frames, vec![("c", 3), ("b", 2)]);
    }

    #[test]
    fn busy_stacks_are_folded_bounded_and_share_one_frame_table() {
        let mut tally = Tally::new();
        // Task A: one stack 5 times, then TOP_STACKS + 2 stacks once each; task B: one stack
        // sharing A's root frames.
        let stack_of =
            |leaf: usize| format!("java.lang.Thread.run;org.apache.flink.Task.run;u.Map.f{leaf}");
        let mut stacks: Vec<String> = vec![stack_of(0); 5];
        stacks.extend((1..=TOP_STACKS + 2).map(stack_of));
        for (i, stack) in stacks.iter().enumerate() {
            let mut a = ts("A (1/1)#0", 60, 10.0, SampleClass::Busy);
            a.stack = Some(stack);
            let mut b = ts(
                "B (1/1)#0",
                70,
                10.0,
                if i % 2 == 0 {
                    SampleClass::Busy
                } else {
                    SampleClass::Waiting
                },
            );
            let b_stack = "java.lang.Thread.run;org.apache.flink.Task.run;u.Sink.g";
            b.stack = b.activity.map(|_| b_stack);
            tally.add_dump(&[a, b], i as u64);
        }
        let (tasks, frames) = tally.into_tasks_and_frames(5);
        let folded = |t: &TaskSamples| -> Vec<(String, u32)> {
            t.stacks
                .iter()
                .map(|s| {
                    let names: Vec<&str> = s
                        .frames
                        .iter()
                        .map(|&i| frames[i as usize].as_str())
                        .collect();
                    (names.join(";"), s.samples)
                })
                .collect()
        };
        let a = folded(&tasks[0]);
        assert_eq!(a.len(), TOP_STACKS + 1, "{a:?}");
        assert_eq!(a[0], (stack_of(0), 5));
        // The ones left out are summed, so the stacks add up to the busy samples.
        assert_eq!(a[TOP_STACKS], (OTHER_STACKS.to_string(), 3));
        assert_eq!(a.iter().map(|s| s.1).sum::<u32>(), tasks[0].busy);
        assert_eq!(
            folded(&tasks[1]),
            vec![(
                "java.lang.Thread.run;org.apache.flink.Task.run;u.Sink.g".to_string(),
                tasks[1].busy
            )]
        );
        // Each frame is sent once.
        let mut unique = frames.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), frames.len());
        assert_eq!(
            frames
                .iter()
                .filter(|f| f.as_str() == "java.lang.Thread.run")
                .count(),
            1
        );
    }

    #[test]
    fn busy_samples_are_counted_by_activity_with_their_locks_and_cpu() {
        let lock = AwaitedLock {
            class: "com.acme.Shared".into(),
            owner: Some("Map (2/2)#0".into()),
        };
        let mut tally = Tally::new();
        let steps = [
            (Activity::Lock, 0, 10.0),
            (Activity::Lock, 50, 20.0),
            (Activity::Running, 100, 60.0),
            (Activity::Io, 150, 70.0),
        ];
        for (activity, at_ms, cpu_ms) in steps {
            let mut t = ts("Map (1/2)#0", 60, 1.0, SampleClass::Busy);
            t.activity = Some(activity);
            t.lock = (activity == Activity::Lock).then_some(&lock);
            t.cpu_ms = Some(cpu_ms);
            tally.add_dump(&[t], at_ms);
        }
        let t = &tally.into_tasks(5)[0];
        let a = t.activity.expect("every busy sample had an activity");
        assert_eq!((a.running, a.lock, a.io, a.sleep), (1, 2, 1, 0));
        assert_eq!(a.total(), t.busy);
        assert_eq!(t.locks.len(), 1);
        assert_eq!(
            (
                t.locks[0].class.as_str(),
                t.locks[0].owner.as_deref(),
                t.locks[0].samples
            ),
            ("com.acme.Shared", Some("Map (2/2)#0"), 2)
        );
        // 60 ms of CPU between the first sample (at 0 ms) and the last (at 150 ms).
        assert_eq!(
            t.cpu,
            Some(ThreadCpu {
                cpu_ms: 60,
                wall_ms: 150
            })
        );
        // The same frame under two activities stays two entries.
        assert_eq!(t.top_frames.len(), 3);
    }

    #[test]
    fn a_busy_sample_without_activity_makes_the_split_unknown_and_one_sample_no_cpu() {
        let mut tally = Tally::new();
        let mut t = ts("Map (1/1)#0", 60, 1.0, SampleClass::Busy);
        t.activity = None;
        t.cpu_ms = Some(5.0);
        tally.add_dump(&[t], 0);
        let task = &tally.into_tasks(5)[0];
        assert_eq!(task.activity, None);
        assert_eq!(task.cpu, None);
    }

    fn reading(at_ms: u64, running: Option<RunningTimer>, soft_ms: u64) -> TimerReading {
        TimerReading {
            at_ms,
            running,
            idle_ms: 100,
            soft_ms,
            hard_ms: 0,
            method: bpmon_proto::TimerMethod::Fields,
        }
    }

    #[test]
    fn timers_split_waiting_exactly_and_stackless_samples_leave_the_activity_known() {
        // Four samples 100 ms apart: stacks at the first (waiting, soft timer running), then
        // timers only: soft, idle, busy.
        let readings = [
            reading(1_000, Some(RunningTimer::Soft), 500),
            reading(1_100, Some(RunningTimer::Soft), 600),
            reading(1_200, Some(RunningTimer::Idle), 650),
            reading(1_300, None, 650),
        ];
        let classes = [
            SampleClass::Waiting,
            SampleClass::Waiting,
            SampleClass::Waiting,
            SampleClass::Busy,
        ];
        let mut tally = Tally::new();
        for (i, (r, class)) in readings.iter().zip(classes).enumerate() {
            let mut t = ts("Map (1/1)#0", 60, 1.0, class);
            t.timers = Some(r);
            t.stackless = i > 0;
            t.activity = None;
            t.top_frame = None;
            tally.add_dump(&[t], r.at_ms);
        }
        let task = &tally.into_tasks(5)[0];
        assert_eq!((task.samples, task.stack_samples), (4, Some(1)));
        assert_eq!((task.waiting, task.busy), (3, 1));
        // The busy sample had no stack: no activity is missing, none is known.
        assert_eq!(task.activity, Some(Default::default()));
        let timers = task.timers.expect("timers");
        assert_eq!(timers.waiting_soft, 2);
        assert_eq!(
            (timers.states.soft, timers.states.idle, timers.states.busy),
            (2, 1, 1)
        );
        let totals = timers.totals.expect("totals");
        assert_eq!((totals.span_ms, totals.soft_ms), (300, 150));
        // Back-pressured (soft) at the first two samples only.
        assert_eq!(
            (
                timers.back_pressured_from_ms,
                timers.back_pressured_until_ms
            ),
            (Some(1_000), Some(1_100))
        );
    }

    #[test]
    fn timer_states_count_like_full_samples_and_only_where_included() {
        use crate::backends::dump::{DumpThread, Roster, StateSample};
        use bpmon_proto::inprocess::StateReading;
        let thread = |name: &str, id| DumpThread::stackless(name.into(), id, None);
        // A stack sample opens the window (soft, totals 500 ms), then three states of the
        // same two threads: soft, idle, and busy with totals at the last.
        let first = reading(1_000, Some(RunningTimer::Soft), 500);
        let mut t = ts("Map (1/2)#0", 60, 1.0, SampleClass::Waiting);
        t.timers = Some(&first);
        let mut tally = Tally::new();
        tally.add_dump(&[t], 0);
        let roster = Arc::new(Roster::new([
            thread("Map (1/2)#0", 60),
            thread("Map (2/2)#0", 61),
        ]));
        let last = reading(1_300, None, 650);
        for (at_ms, running, totals) in [
            (1_100, Some(RunningTimer::Soft), None),
            (1_200, Some(RunningTimer::Idle), None),
            (1_300, None, Some(last)),
        ] {
            let state = StateReading {
                running,
                totals,
                stacked: false,
            };
            let sample = StateSample {
                roster: roster.clone(),
                at_ms,
                readings: vec![state, state],
            };
            // The second thread is another group's.
            tally.add_states(&sample, &[true, false]);
        }
        let tasks = tally.into_tasks(5);
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!((task.samples, task.stack_samples), (4, Some(1)));
        assert_eq!((task.waiting, task.busy, task.blocked), (3, 1, 0));
        let timers = task.timers.expect("timers");
        assert_eq!(timers.waiting_soft, 2);
        assert_eq!(
            (timers.states.soft, timers.states.idle, timers.states.busy),
            (2, 1, 1)
        );
        // Totals from the stack sample to the last state that carried them.
        let totals = timers.totals.expect("totals");
        assert_eq!((totals.span_ms, totals.soft_ms), (300, 150));
        assert_eq!(
            (
                timers.back_pressured_from_ms,
                timers.back_pressured_until_ms
            ),
            (Some(1_000), Some(1_100))
        );
    }

    #[test]
    fn a_stacked_thread_of_the_states_is_counted_once_from_its_stack() {
        use crate::backends::dump::{DumpThread, Roster, StateSample};
        use bpmon_proto::inprocess::StateReading;
        let thread = |name: &str, id| DumpThread::stackless(name.into(), id, None);
        let roster = Arc::new(Roster::new([
            thread("Map (1/2)#0", 60),
            thread("Map (2/2)#0", 61),
        ]));
        let idle = StateReading {
            running: Some(RunningTimer::Idle),
            totals: None,
            stacked: false,
        };
        let stacked = StateReading {
            running: None,
            totals: None,
            stacked: true,
        };
        let mut tally = Tally::new();
        // A busy-stacks sample: thread 60 busy, its stack in the sample's threads; 61 idle.
        let r = reading(1_000, None, 0);
        let mut busy = ts("Map (1/2)#0", 60, 1.0, SampleClass::Busy);
        busy.timers = Some(&r);
        tally.add_dump(&[busy], 0);
        tally.add_states(
            &StateSample {
                roster: roster.clone(),
                at_ms: 1_000,
                readings: vec![stacked, idle],
            },
            &[true, true],
        );
        let tasks = tally.into_tasks(5);
        let counts: Vec<_> = tasks
            .iter()
            .map(|t| (t.samples, t.busy, t.waiting))
            .collect();
        assert_eq!(counts, [(1, 1, 0), (1, 0, 1)], "{tasks:?}");
    }

    #[test]
    fn a_sample_without_timers_drops_the_timers_of_the_window() {
        let mut tally = Tally::new();
        let r = reading(1_000, None, 0);
        let mut with = ts("Map (1/1)#0", 60, 1.0, SampleClass::Busy);
        with.timers = Some(&r);
        tally.add_dump(&[with], 0);
        tally.add_dump(&[ts("Map (1/1)#0", 60, 1.0, SampleClass::Busy)], 50);
        let task = &tally.into_tasks(5)[0];
        assert_eq!(task.timers, None);
        assert_eq!(task.stack_samples, None);
    }

    #[test]
    fn a_legacy_source_task_counts_the_cpu_of_both_its_threads() {
        let mut tally = Tally::new();
        for (at_ms, main_cpu, legacy_cpu) in [(0, 1.0, 100.0), (1000, 2.0, 900.0)] {
            let mut main = ts("Source: s (1/1)#0", 50, 20.0, SampleClass::Waiting);
            main.cpu_ms = Some(main_cpu);
            let mut legacy = ts(
                "Legacy Source Thread - Source: s (1/1)#0",
                52,
                19.0,
                SampleClass::Busy,
            );
            legacy.cpu_ms = Some(legacy_cpu);
            tally.add_dump(&[main, legacy], at_ms);
        }
        let t = &tally.into_tasks(5)[0];
        assert_eq!(
            t.cpu,
            Some(ThreadCpu {
                cpu_ms: 801,
                wall_ms: 1000
            })
        );
        assert_eq!(t.activity.map(|a| a.running), Some(2));
    }
}
