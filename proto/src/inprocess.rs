//! The in-process sampler's socket protocol: `bpmon-agent` ↔ the bpmon JVMTI library
//! (`libbpmon_jvmti.so`) loaded inside a TaskManager.
//!
//! The library listens on a UNIX stream socket inside the JVM's mount namespace (its path is
//! the `load` option); the agent connects, says [`Request::Hello`], then asks for samples. One
//! request, one response, each a single line of JSON. The schedule stays in the agent, so the
//! windows of every settings group share samples exactly as with the attach backend; what
//! crosses the socket per sample is only the task threads, already classified, and a thread's
//! name and task only the first time a connection reports it ([`Introduced`], [`Known`]).

use std::collections::{HashMap, HashSet};

use crate::{Activity, SampleClass, TimerReading};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; the library refuses other versions in `hello`.
pub const INPROCESS_PROTOCOL_VERSION: u32 = 1;

/// Longest line either side accepts (a sample of a few thousand task threads fits).
pub const MAX_LINE_BYTES: usize = 8 << 20;

/// Bounds the library enforces whatever it is asked.
pub const MAX_STACK_DEPTH: u32 = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First request on every connection.
    Hello { protocol: u32 },
    /// One sample of every task thread (and legacy source thread).
    Sample {
        /// Frames read per thread, from the top (capped at [`MAX_STACK_DEPTH`]).
        max_depth: u32,
        /// false: read only Flink's timers of each task (a task thread whose timers cannot be
        /// read still has its stack read). Libraries older than this field read stacks anyway.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        stacks: bool,
    },
    /// The sampler thread exits and the socket closes; a later attach `load` starts it again.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Hello(Hello),
    Sample(InProcessSample),
    Stopping,
    /// The request was understood but failed, or was not understood; the connection stays
    /// usable unless the message says otherwise.
    Error {
        message: String,
    },
}

/// Who answers: enough for the agent to trust and describe the library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The library's crate version.
    pub library_version: String,
    /// The JVM's process id, as the JVM sees it (its own PID namespace).
    pub pid: u32,
    /// `java.vm.version`.
    pub vm_version: String,
    /// The JVMTI version the library runs against, e.g. `17.0.0`.
    pub jvmti_version: String,
    /// When the library was (re)started in this JVM, ms since the epoch.
    pub started_at_ms: u64,
    /// How many times `Agent_OnLoad`/`Agent_OnAttach` started the sampler in this JVM.
    pub starts: u32,
}

/// One sample, as the library took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InProcessSample {
    /// Wall clock at the start of the sample, ms since the epoch.
    pub taken_at_ms: u64,
    /// Time inside the JVM for the whole sample (thread list, stacks, classification), µs.
    pub took_us: u64,
    /// CPU time the sampler thread spent on it, µs (the rest of `took_us` is waiting, for
    /// running threads to answer their handshakes); absent where the clock cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    pub threads: Vec<SampledThread>,
    /// Task threads that ended while being sampled (not errors: tasks finish).
    #[serde(default)]
    pub gone: u32,
    /// Anything that went wrong for one thread, said plainly; the rest of the sample stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One task thread in one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampledThread {
    /// Empty when this connection was told the thread's name (and task) before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `Thread.getId()`.
    pub java_id: u64,
    pub class: SampleClass,
    /// For busy samples: the frame the classifier reports (as the dump backends do), rendered
    /// `class.method(File.java:LINE)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_frame: Option<String>,
    /// The Flink task this thread runs, read from the `Task` object behind it; `None` for a
    /// legacy source thread or where the fields could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    /// For busy samples: what the thread was doing, from its JVMTI state and its top frames by
    /// the rules the dump backends use (`bpmon_stacks::activity`). Absent from libraries older
    /// than this field, and where the state could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// For a busy sample waiting to enter a monitor: which one, and who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<SampledLock>,
    /// CPU time the thread had used by this sample (`GetThreadCpuTime`), ns; absent where the
    /// JVM does not grant `can_get_thread_cpu_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
    /// Flink's own timers of the thread's task at this sample (main task threads of Flink 1.15+;
    /// absent from older libraries and where they could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimerReading>,
    /// The class comes from the timers alone (hard: blocked; soft or idle: waiting; none:
    /// busy): no stack was read, so a busy sample has no frame and no activity.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stackless: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A monitor a thread waits to enter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledLock {
    /// The monitor object's class as a thread dump prints it (`com.acme.Shared`,
    /// `java.lang.Class for com.acme.Shared` for a static `synchronized` method).
    pub class: String,
    /// The name of the thread owning it, when one did as it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A task's exact identity, from Flink's own objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask: u32,
    pub attempt: u32,
    pub execution_attempt_id: String,
}

/// Library side, per connection: which threads were introduced (name and task sent) already.
#[derive(Debug, Default)]
pub struct Introduced(HashSet<u64>);

/// Threads remembered per connection before starting over (a TaskManager's task threads come
/// and go with every deployment; starting over only sends names again).
const MAX_REMEMBERED: usize = 100_000;

impl Introduced {
    /// Leaves out the name and task of threads this connection has reported before.
    pub fn compact(&mut self, sample: &mut InProcessSample) {
        if self.0.len() > MAX_REMEMBERED {
            self.0.clear();
        }
        for t in &mut sample.threads {
            if !self.0.insert(t.java_id) {
                t.name.clear();
                t.task = None;
            }
        }
    }
}

/// Agent side, per connection: the names and tasks of the threads introduced so far.
#[derive(Debug, Default)]
pub struct Known(HashMap<u64, (String, Option<TaskRef>)>);

impl Known {
    /// Puts back the name and task [`Introduced::compact`] left out; an error names a thread
    /// never introduced (the connection must then start over).
    pub fn expand(&mut self, sample: &mut InProcessSample) -> Result<(), String> {
        if self.0.len() > MAX_REMEMBERED {
            // The library starts over at the same bound, on a connection of the same age.
            self.0
                .retain(|id, _| sample.threads.iter().any(|t| t.java_id == *id));
        }
        for t in &mut sample.threads {
            if t.name.is_empty() {
                let (name, task) = self
                    .0
                    .get(&t.java_id)
                    .ok_or_else(|| format!("thread #{} was never introduced", t.java_id))?;
                t.name.clone_from(name);
                t.task.clone_from(task);
            } else {
                self.0.insert(t.java_id, (t.name.clone(), t.task.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tasks_cross_once_per_connection() {
        let thread = |id: u64, task: bool| SampledThread {
            name: format!("Map (1/2)#{id}"),
            java_id: id,
            class: SampleClass::Waiting,
            top_frame: None,
            activity: None,
            lock: None,
            cpu_ns: None,
            timers: None,
            stackless: false,
            task: task.then(|| TaskRef {
                job_id: "j".into(),
                vertex_id: "v".into(),
                subtask: 0,
                attempt: 0,
                execution_attempt_id: format!("e{id}"),
            }),
        };
        let full = InProcessSample {
            threads: vec![thread(1, true), thread(2, false)],
            ..Default::default()
        };
        let (mut lib, mut agent) = (Introduced::default(), Known::default());
        let mut first = full.clone();
        lib.compact(&mut first);
        assert_eq!(first, full, "the first sample introduces every thread");
        let mut second = InProcessSample {
            threads: vec![thread(1, true), thread(3, true), thread(2, false)],
            ..Default::default()
        };
        let expected = second.clone();
        lib.compact(&mut second);
        let line = serde_json::to_string(&second).unwrap();
        assert!(
            !line.contains("Map (1/2)#1") && !line.contains("e1"),
            "{line}"
        );
        assert!(
            line.contains("Map (1/2)#3") && line.contains("e3"),
            "{line}"
        );
        agent.expand(&mut first).unwrap();
        let mut decoded: InProcessSample = serde_json::from_str(&line).unwrap();
        agent.expand(&mut decoded).unwrap();
        assert_eq!(decoded, expected);
        // A fresh connection (agent restarted) knows nothing: an unintroduced thread is an error.
        let mut again: InProcessSample = serde_json::from_str(&line).unwrap();
        let err = Known::default().expand(&mut again).unwrap_err();
        assert!(err.contains("#1"), "{err}");
    }

    #[test]
    fn evidence_fields_are_optional_both_ways() {
        // What a library without the evidence fields sends still decodes.
        let old = r#"{"name":"Map (1/2)#0","java_id":7,"class":"busy","top_frame":"com.acme.Map.map(Map.java:3)"}"#;
        let t: SampledThread = serde_json::from_str(old).unwrap();
        assert_eq!((t.activity, &t.lock, t.cpu_ns), (None, &None, None));
        // Unknown evidence is left off the wire; known evidence round-trips.
        assert_eq!(serde_json::to_string(&t).unwrap(), old);
        let t = SampledThread {
            activity: Some(Activity::Lock),
            lock: Some(SampledLock {
                class: "com.acme.Shared".into(),
                owner: Some("holder".into()),
            }),
            cpu_ns: Some(1_500_000),
            ..t
        };
        let line = serde_json::to_string(&t).unwrap();
        assert!(
            line.ends_with(r#""activity":"lock","lock":{"class":"com.acme.Shared","owner":"holder"},"cpu_ns":1500000}"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<SampledThread>(&line).unwrap(), t);
    }

    #[test]
    fn requests_and_responses_are_one_line_of_tagged_json() {
        let r = serde_json::to_string(&Request::Sample {
            max_depth: 64,
            stacks: true,
        })
        .unwrap();
        // Stacks at every sample is what every library did before the field: left out.
        assert_eq!(r, r#"{"op":"sample","max_depth":64}"#);
        let timers_only = Request::Sample {
            max_depth: 64,
            stacks: false,
        };
        let line = serde_json::to_string(&timers_only).unwrap();
        assert_eq!(line, r#"{"op":"sample","max_depth":64,"stacks":false}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), timers_only);
        let s = Response::Sample(InProcessSample {
            taken_at_ms: 1,
            took_us: 2,
            threads: vec![SampledThread {
                name: "Map (1/2)#0".into(),
                java_id: 70,
                class: SampleClass::Blocked,
                top_frame: None,
                activity: None,
                lock: None,
                cpu_ns: None,
                timers: None,
                stackless: false,
                task: Some(TaskRef {
                    job_id: "j".into(),
                    vertex_id: "v".into(),
                    subtask: 0,
                    attempt: 0,
                    execution_attempt_id: "e".into(),
                }),
            }],
            gone: 0,
            errors: vec![],
            cpu_us: Some(1),
        });
        let line = serde_json::to_string(&s).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"kind":"sample""#), "{line}");
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), s);
        let e: Response = serde_json::from_str(r#"{"kind":"error","message":"no"}"#).unwrap();
        assert_eq!(
            e,
            Response::Error {
                message: "no".into()
            }
        );
    }
}
