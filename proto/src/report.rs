//! The agent's sample report: what `bpmon-agent sample --output json` prints and what the daemon
//! ships to the collector. Field names are the contract; new fields may be added, never renamed.

use serde::{Deserialize, Serialize};

use crate::evidence::{Activity, ActivityCounts, JvmResources, LockCount, ThreadCpu};
use crate::identity::TaskIdentity;
use crate::timers::TimerWindow;
use crate::whereabouts::{JvmNetwork, ResourceIdSource};

/// One sampling run over one JVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleReport {
    /// Host pid of the TaskManager JVM.
    pub pid: u32,
    /// `attach` (native HotSpot attach), `jcmd` or `jvmti` (the in-process sampler).
    pub backend: String,
    pub jvm: JvmInfo,
    /// Samples asked for.
    pub samples: u32,
    pub delay_ms: u64,
    /// Wall-clock start, ms since the Unix epoch.
    pub started_at_ms: u64,
    pub elapsed_ms: u64,
    /// One entry per task thread (a task whose legacy source thread was seen counts once).
    pub tasks: Vec<TaskSamples>,
    /// What it cost to take the samples, agent side and JVM side.
    pub cost: SampleCost,
    /// Samples that failed, with the reason (a JVM that exits mid-run ends the run here).
    pub errors: Vec<String>,
    /// What the JVM, its cgroup and its host spent over the window (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<JvmResources>,
    /// The frames the tasks' `stacks` index, `class.method` (absent from older agents and
    /// from backends that do not see whole stacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack_frames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct JvmInfo {
    /// `java.version` of the target, when known.
    pub version: Option<String>,
    pub main_class: String,
    /// Flink version, read from the `flink-dist` jar on the class path when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink_version: Option<String>,
    /// `taskmanager.resource-id`, when its command line sets it or its log names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Where `resource_id` was read (absent from older agents: the command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id_source: Option<ResourceIdSource>,
    /// TCP ports the JVM listens on (RPC and data ports): finds the TaskManager in Flink's REST API.
    #[serde(default)]
    pub listen_ports: Vec<u16>,
    /// Its network namespace seen from inside (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<JvmNetwork>,
}

/// Sample counts of one task thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSamples {
    /// The main thread's name, as the JVM printed it.
    pub thread: String,
    /// JVM thread id (`#id` in the dump; `Thread.getId()`), which keeps two same-named tasks apart.
    pub thread_id: Option<u64>,
    /// Native thread id (`nid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_thread_id: Option<u64>,
    /// Seconds the main thread had been alive at the last sample (`elapsed=` in the dump).
    pub elapsed_s: Option<f64>,
    #[serde(flatten)]
    pub identity: TaskIdentity,
    /// Whether a `Legacy Source Thread` was sampled for this task.
    #[serde(default)]
    pub legacy_source_thread: bool,
    /// The exact job and execution, as the in-process sampler read them from Flink's own `Task`
    /// object (thread names alone can be ambiguous); absent with the attach and jcmd backends.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactTask>,
    /// Samples in which the thread was seen.
    pub samples: u32,
    /// Of those, the samples whose stack was read, when not all were: the others were
    /// classified by Flink's timers alone (settings with `stacks_every` > 1, in-process), so
    /// `activity`, `top_frames` and `stacks` speak for these samples only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_samples: Option<u32>,
    /// Hard back-pressure: blocked requesting an output buffer.
    pub blocked: u32,
    /// Parked in the mailbox: idle or soft back-pressure (the collector splits the two).
    pub waiting: u32,
    /// Anything else.
    pub busy: u32,
    /// What the busy samples were doing: the top user frame and how many samples showed it.
    pub top_frames: Vec<FrameCount>,
    /// The busy samples by what they were doing (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityCounts>,
    /// Monitors and locks the task's thread waited for, most samples first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockCount>,
    /// CPU time of the task's thread(s) over the window, when the OS let the agent read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ThreadCpu>,
    /// The busy samples' whole stacks, folded, most samples first and bounded (the rest summed
    /// in one [`OTHER_STACKS`] entry): what a flame graph of the task is drawn from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackCount>,
    /// Flink's own timers of the task over the window, read in-process at every sample: the
    /// exact soft/idle split of `waiting` and the exact time shares (absent from other backends,
    /// from Flink before 1.15, and when a sample could not read them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimerWindow>,
}

/// The frame of the one stack entry that sums the stacks a report left out.
pub const OTHER_STACKS: &str = "(other stacks)";

/// Busy samples that showed one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCount {
    /// The stack's frames, root first, as indices into the report's `stack_frames`.
    pub frames: Vec<u32>,
    pub samples: u32,
    /// What the samples were doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

impl SampleReport {
    /// A task's stacks in the folded form (`root;…;top`), with their samples; `None` when a
    /// stack names a frame the report does not hold (a malformed report).
    pub fn folded_stacks(
        &self,
        task: &TaskSamples,
    ) -> Option<Vec<(String, Option<Activity>, u32)>> {
        task.stacks
            .iter()
            .map(|s| {
                let frames: Option<Vec<&str>> = s
                    .frames
                    .iter()
                    .map(|&i| self.stack_frames.get(i as usize).map(String::as_str))
                    .collect();
                Some((frames?.join(";"), s.activity, s.samples))
            })
            .collect()
    }
}

/// A task's ids in Flink: `job_id`, `vertex_id` (hex, as the REST API writes them) and the
/// execution attempt's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExactTask {
    pub job_id: String,
    pub vertex_id: String,
    pub execution_attempt_id: String,
}

impl ExactTask {
    pub fn of(task: &crate::inprocess::TaskRef) -> ExactTask {
        ExactTask {
            job_id: task.job_id.clone(),
            vertex_id: task.vertex_id.clone(),
            execution_attempt_id: task.execution_attempt_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameCount {
    pub frame: String,
    pub samples: u32,
    /// What the samples in this frame were doing (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// What sampling cost, measured while doing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SampleCost {
    /// Dumps taken successfully.
    pub dumps: u32,
    /// Median and worst wall time of one dump (request + reply), µs.
    pub dump_us_p50: u64,
    pub dump_us_max: u64,
    /// Median time to parse and classify one dump, µs.
    pub parse_us_p50: u64,
    /// Safepoints and safepoint time the JVM recorded while our dumps ran (hsperfdata
    /// `sun.rt.safepoints` / `sun.rt.safepointTime`), when its perf data is readable.
    pub safepoints: Option<u64>,
    pub safepoint_ms_total: Option<f64>,
    /// Lines of the dumps the parser did not understand.
    pub skipped_lines: u64,
    /// In-process backend: median time the sampler spent inside the JVM per sample, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside_us_p50: Option<u64>,
    /// In-process backend: CPU time the sampler's thread spent on this window's samples inside
    /// the JVM, ms (what sampling costs the TaskManager; it takes no safepoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside_cpu_ms_total: Option<f64>,
}

impl FrameCount {
    /// The `n` frames with the most samples, most first (ties by frame, then activity), from
    /// counts keyed by frame and activity: the agent ranks a task's frames and the collector a
    /// vertex's the same way.
    pub fn top(
        counts: impl IntoIterator<Item = ((String, Option<Activity>), u32)>,
        n: usize,
    ) -> Vec<FrameCount> {
        let mut frames: Vec<FrameCount> = counts
            .into_iter()
            .map(|((frame, activity), samples)| FrameCount {
                frame,
                samples,
                activity,
            })
            .collect();
        frames.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.frame.cmp(&b.frame))
                .then_with(|| a.activity.cmp(&b.activity))
        });
        frames.truncate(n);
        frames
    }
}

impl TaskSamples {
    /// Hard back-pressure ratio of this thread alone.
    pub fn blocked_ratio(&self) -> f64 {
        if self.samples == 0 {
            f64::NAN
        } else {
            f64::from(self.blocked) / f64::from(self.samples)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_json_has_the_contract_fields_flat() {
        let t = TaskSamples {
            thread: "Source: numbers -> explode (1/2)#0".into(),
            thread_id: Some(64),
            os_thread_id: None,
            elapsed_s: Some(12.5),
            identity: TaskIdentity {
                task: "Source: numbers -> explode".into(),
                subtask: 0,
                parallelism: 2,
                attempt: Some(0),
            },
            legacy_source_thread: false,
            exact: None,
            samples: 100,
            stack_samples: None,
            blocked: 97,
            waiting: 1,
            busy: 2,
            top_frames: vec![FrameCount {
                frame: "com.example.Slow.map(Slow.java:17)".into(),
                samples: 2,
                activity: None,
            }],
            activity: None,
            locks: Vec::new(),
            cpu: None,
            stacks: Vec::new(),
            timers: None,
        };
        let v = serde_json::to_value(&t).unwrap();
        for key in [
            "thread",
            "task",
            "subtask",
            "parallelism",
            "attempt",
            "samples",
            "blocked",
            "waiting",
            "busy",
            "top_frames",
            "thread_id",
            "elapsed_s",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["subtask"], 0);
        assert_eq!(v["top_frames"][0]["samples"], 2);
        let back: TaskSamples = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
        assert!((back.blocked_ratio() - 0.97).abs() < 1e-9);
    }
}
