//! What every backend's dump becomes: the task threads of one sample, each classified
//! (`blocked`, `waiting`, `busy`). The dump backends get here by parsing and classifying text
//! ([`crate::sampling::classify_dump`]); the in-process backend's samples arrive classified
//! ([`super::jvmti`]). Kept apart from the backends and from the sampling loop so that both can
//! use these types without using each other.

use std::sync::Arc;

use bpmon_proto::inprocess::{StateReading, TaskRef};
use bpmon_proto::{parse_task_thread_name, Activity, TaskIdentity, TimerReading};
use bpmon_stacks::classify::SampleClass;

/// One task thread (main or legacy source thread) of one dump, classified.
#[derive(Debug, Clone)]
pub struct DumpThread {
    pub name: String,
    pub java_id: Option<u64>,
    pub os_tid: Option<u64>,
    pub elapsed_s: Option<f64>,
    pub class: SampleClass,
    /// For busy samples: what the thread was doing.
    pub top_frame: Option<String>,
    /// The task's exact ids (in-process backend only).
    pub task: Option<TaskRef>,
    /// For busy samples: running, a lock, I/O or sleeping; `None` where the backend cannot tell.
    pub activity: Option<Activity>,
    /// For samples waiting for a lock: which one, and who holds it, when the dump says.
    pub lock: Option<AwaitedLock>,
    /// CPU time the thread had used by this sample (`cpu=` in JDK 11+ dumps), ms.
    pub cpu_ms: Option<f64>,
    /// For busy samples: the whole stack, folded (`bpmon_stacks::collapse`), where the backend
    /// sees it.
    pub stack: Option<String>,
    /// Flink's timers of the thread's task at this sample (in-process backend only).
    pub timers: Option<TimerReading>,
    /// Classified by the timers alone: no stack was read (no frame, no activity).
    pub stackless: bool,
}

/// A monitor or lock a thread waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AwaitedLock {
    /// The lock object's class.
    pub class: String,
    /// The thread holding it, when another kept thread of the dump shows `- locked` on it.
    pub owner: Option<String>,
}

impl DumpThread {
    /// A main task thread classified by its task's timers alone: no stack, so no frame and no
    /// evidence (its class is set by whoever reads the timers).
    pub fn stackless(name: String, java_id: u64, task: Option<TaskRef>) -> DumpThread {
        DumpThread {
            name,
            java_id: Some(java_id),
            os_tid: None,
            elapsed_s: None,
            class: SampleClass::Busy,
            top_frame: None,
            task,
            activity: None,
            lock: None,
            cpu_ms: None,
            stack: None,
            timers: None,
            stackless: true,
        }
    }

    /// The task this thread works for, from its name.
    pub fn identity(&self) -> Option<TaskIdentity> {
        parse_task_thread_name(&self.name).map(|(identity, _)| identity)
    }
}

/// A dump's task threads, parsed and classified once, ready to be added to any number of tallies.
#[derive(Debug, Clone, Default)]
pub struct ClassifiedDump {
    pub threads: Vec<DumpThread>,
    pub skipped_lines: u64,
    /// Time the in-process sampler spent inside the JVM on this sample, µs.
    pub inside_us: Option<u64>,
    /// CPU time of that, µs.
    pub inside_cpu_us: Option<u64>,
    /// Threads classified by Flink's timers alone, one state each (in-process backend); none
    /// of them is in `threads` but those marked `stacked` (busy, their stack read).
    pub states: Option<StateSample>,
}

impl ClassifiedDump {
    /// The Java ids of the states' threads marked stacked (their sample is in `threads`).
    pub fn stacked_ids(&self) -> Vec<Option<u64>> {
        self.states
            .iter()
            .flat_map(|st| st.roster.threads.iter().zip(&st.readings))
            .filter(|(_, r)| r.stacked)
            .map(|((t, _), _)| t.java_id)
            .collect()
    }

    /// Whether every thread of `threads` is one of the states' stacked threads: the sample
    /// brings no thread its roster does not list.
    pub fn threads_all_listed(&self) -> bool {
        if self.threads.is_empty() {
            return true;
        }
        if self.states.is_none() {
            return false;
        }
        let mut stacked = self.stacked_ids();
        if stacked.len() != self.threads.len() {
            return false;
        }
        let mut ids: Vec<Option<u64>> = self.threads.iter().map(|t| t.java_id).collect();
        stacked.sort_unstable();
        ids.sort_unstable();
        stacked == ids
    }
}

/// Task threads read by their task's timers alone: a state each, and totals where asked for.
#[derive(Debug, Clone)]
pub struct StateSample {
    /// The threads, in the order of `readings`: the same `Arc` for as long as the list does not
    /// change, so that what is derived from it (settings, window membership, tally entries) is
    /// derived once.
    pub roster: Arc<Roster>,
    /// When the timers were read, ms since the epoch.
    pub at_ms: u64,
    pub readings: Vec<StateReading>,
}

/// The main task threads of a [`StateSample`].
#[derive(Debug)]
pub struct Roster {
    /// Each thread as a timers-only dump thread (class and timers aside), and its identity.
    pub threads: Vec<(DumpThread, Option<TaskIdentity>)>,
}

impl Roster {
    pub fn new(threads: impl IntoIterator<Item = DumpThread>) -> Roster {
        Roster {
            threads: threads
                .into_iter()
                .map(|t| {
                    let identity = t.identity();
                    (t, identity)
                })
                .collect(),
        }
    }

    /// Whether two samples carry the very same list.
    pub fn same(a: &Arc<Roster>, b: &Arc<Roster>) -> bool {
        Arc::ptr_eq(a, b)
    }
}
