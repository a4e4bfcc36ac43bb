//! The in-process sampler's socket protocol: `bpmon-agent` ↔ the bpmon JVMTI library
//! (`libbpmon_jvmti.so`) loaded inside a TaskManager.
//!
//! The library listens on a UNIX stream socket inside the JVM's mount namespace (its path is
//! the `load` option); the agent connects, says [`Request::Hello`], then asks for samples. One
//! request, one response, each a single line of JSON. The schedule stays in the agent, so the
//! windows of every settings group share samples exactly as with the attach backend; what
//! crosses the socket per sample is only the task threads, already classified, and a thread's
//! name and task only the first time a connection reports it ([`Introduced`], [`Known`]).

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{Activity, RunningTimer, SampleClass, TimerMethod, TimerReading};
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
    Sample(SampleRequest),
    /// Several timers-only samples taken by the library on its own clock and answered at once
    /// ([`Response::Run`]); only where [`Hello::runs`] says the library takes them.
    Run(SampleRun),
    /// The sampler thread exits and the socket closes; a later attach `load` starts it again.
    Stop,
}

/// What a sample is to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRequest {
    /// Frames read per thread, from the top (capped at [`MAX_STACK_DEPTH`]).
    pub max_depth: u32,
    /// false: read only Flink's timers of each task (a task thread whose timers cannot be
    /// read still has its stack read). Libraries older than this field read stacks anyway.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub stacks: bool,
    /// Answer the threads read by their timers as one state letter each
    /// ([`InProcessSample::timer_states`]) instead of a [`SampledThread`] each. With `stacks`,
    /// only the main task threads whose timers say busy have their stack read; the others come
    /// as states. Older libraries ignore it and answer as before, which the agent reads as well.
    #[serde(default, skip_serializing_if = "is_false")]
    pub states: bool,
    /// With `states`: the timers' totals too (read under each gauge's monitor), which a window
    /// needs at its first and last sample only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub totals: bool,
    /// With `stacks`: the busy threads' whole stacks too, folded ([`SampledThread::stack`]), for
    /// flame graphs. Older libraries ignore it and send top frames only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub folded: bool,
}

impl SampleRequest {
    /// A sample with stacks, as every sample was before timers.
    pub fn stacks(max_depth: u32) -> SampleRequest {
        SampleRequest {
            max_depth,
            stacks: true,
            states: false,
            totals: false,
            folded: false,
        }
    }
}

/// Most samples in one [`SampleRun`].
pub const MAX_RUN_SAMPLES: usize = 200;
/// Latest sample of a [`SampleRun`], µs after its first: the connection is busy until the run
/// ends, and the agent's read timeout must cover it.
pub const MAX_RUN_SPAN_US: u64 = 5_000_000;

/// Timers-only samples ([`SampleRequest`] with `stacks` false and `states` true) on a
/// timetable: between two stack samples, continuous watching is nothing else, and taking them one
/// request at a time cost a round trip each (two wake-ups, two syscalls, JSON both ways) for a
/// reply of a few hundred bytes. The library sleeps between them on its own thread and answers
/// once, when the last is taken; the agent records each at its own instant, as if it had asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRun {
    pub max_depth: u32,
    /// When each sample is due, µs after the run starts (the first normally 0: at once);
    /// ascending.
    pub at_us: Vec<u64>,
    /// Which samples read the timers' totals too, by index into `at_us` (a window's first
    /// and last sample).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub totals: Vec<u32>,
}

impl SampleRun {
    /// Whether the library takes this run: 1 to [`MAX_RUN_SAMPLES`] samples, in order, the last
    /// within [`MAX_RUN_SPAN_US`], totals naming samples of the run.
    pub fn check(&self) -> Result<(), String> {
        let n = self.at_us.len();
        if n == 0 || n > MAX_RUN_SAMPLES {
            return Err(format!("a run of {n} samples (1 to {MAX_RUN_SAMPLES})"));
        }
        if self.at_us.windows(2).any(|w| w[1] < w[0]) {
            return Err("a run's samples out of order".into());
        }
        let last = self.at_us[n - 1];
        if last > MAX_RUN_SPAN_US {
            return Err(format!("a run over {last} µs (at most {MAX_RUN_SPAN_US})"));
        }
        if let Some(i) = self.totals.iter().find(|i| **i as usize >= n) {
            return Err(format!("totals at sample {i} of a run of {n}"));
        }
        Ok(())
    }

    /// The request for sample `i` of the run.
    pub fn request(&self, i: usize) -> SampleRequest {
        SampleRequest {
            max_depth: self.max_depth,
            stacks: false,
            states: true,
            totals: self.totals.contains(&(i as u32)),
            folded: false,
        }
    }
}

/// What a [`SampleRun`] gave: its samples in order, all of them unless `error` says why the
/// run stopped early (the samples after it were not taken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    pub samples: Vec<InProcessSample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Hello(Hello),
    Sample(InProcessSample),
    Run(RunReply),
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
    /// Whether it takes [`Request::Run`] (a library loaded by an older agent does not).
    #[serde(default)]
    pub runs: bool,
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
    /// The threads classified by their task's timers alone, compactly (asked for with
    /// [`SampleRequest::states`]); every other thread is in `threads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_states: Option<TimerStates>,
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
    /// For busy samples, when the request asked `folded`: the whole stack, folded root first
    /// (`bpmon_stacks::collapse`). Sent once per connection: after that, only its `stack_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The connection's number for `stack` ([`Introduced::compact`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
}

/// Main task threads read by their task's timers alone, one letter each: at 20 samples a second
/// of a few hundred threads, a [`SampledThread`] each was most of the sampling's cost on both
/// sides of the socket. Only threads this connection was introduced to ([`Introduced`]) are
/// listed here; a new one comes as a [`SampledThread`] the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerStates {
    /// When the timers were read, ms since the epoch (one instant for the whole sample: reading
    /// them all takes well under a millisecond).
    pub at_ms: u64,
    pub method: TimerMethod,
    /// The threads' Java ids, in the order of `states`; left out when they are the same as in
    /// the connection's previous `timer_states` ([`Introduced::compact`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<Vec<u64>>,
    /// One letter per thread, the timer running: `i` idle, `s` soft, `h` hard back-pressure,
    /// `b` none (busy); `x`: busy, and its stack was read, so the thread is in
    /// [`InProcessSample::threads`] too and counted there (the list stays the same whether a
    /// sample reads stacks or not, so neither side redoes its per-list work).
    pub states: String,
    /// When asked for: each thread's idle, soft and hard totals at `at_ms`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Vec<[u64; 3]>>,
}

/// The letter of a state in [`TimerStates::states`].
pub fn state_letter(running: Option<RunningTimer>) -> char {
    match running {
        Some(RunningTimer::Idle) => 'i',
        Some(RunningTimer::Soft) => 's',
        Some(RunningTimer::Hard) => 'h',
        None => 'b',
    }
}

/// The letter of a busy thread whose stack was read (see [`TimerStates::states`]).
pub const STACKED_LETTER: char = 'x';

/// The state a letter of [`TimerStates::states`] stands for, and whether the thread's stack was
/// read; `None` for an unknown letter.
pub fn state_of_letter(letter: u8) -> Option<(Option<RunningTimer>, bool)> {
    match letter {
        b'i' => Some((Some(RunningTimer::Idle), false)),
        b's' => Some((Some(RunningTimer::Soft), false)),
        b'h' => Some((Some(RunningTimer::Hard), false)),
        b'b' => Some((None, false)),
        b'x' => Some((None, true)),
        _ => None,
    }
}

impl TimerStates {
    /// Each thread's reading as a [`TimerReading`] (totals only where sent), checked: the
    /// lengths must agree and every letter be known.
    pub fn readings(&self, threads: &[u64]) -> Result<Vec<StateReading>, String> {
        if threads.len() != self.states.len() {
            return Err(format!(
                "{} timer states for {} threads",
                self.states.len(),
                threads.len()
            ));
        }
        if let Some(t) = &self.totals {
            if t.len() != threads.len() {
                return Err(format!(
                    "{} timer totals for {} threads",
                    t.len(),
                    threads.len()
                ));
            }
        }
        self.states
            .bytes()
            .enumerate()
            .map(|(i, letter)| {
                let (running, stacked) = state_of_letter(letter)
                    .ok_or_else(|| format!("unknown timer state {:?}", letter as char))?;
                Ok(StateReading {
                    stacked,
                    running,
                    totals: self.totals.as_ref().map(|t| {
                        let [idle_ms, soft_ms, hard_ms] = t[i];
                        TimerReading {
                            at_ms: self.at_ms,
                            running,
                            idle_ms,
                            soft_ms,
                            hard_ms,
                            method: self.method,
                        }
                    }),
                })
            })
            .collect()
    }
}

/// One thread of a [`TimerStates`]: the timer running, and the totals when they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateReading {
    pub running: Option<RunningTimer>,
    /// Busy, and sampled with its stack in the same sample's `threads`: counted there, not here.
    pub stacked: bool,
    pub totals: Option<TimerReading>,
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

/// Library side, per connection: which threads were introduced (name and task sent) already,
/// and the threads of the last [`TimerStates`] sent.
#[derive(Debug, Default)]
pub struct Introduced {
    /// Thread ids, looked up for every thread of every sample: a fast hash, not SipHash (the
    /// ids are the JVM's own, nothing an attacker picks).
    ids: FxHashSet<u64>,
    roster: Vec<u64>,
    /// Folded stacks sent, by their number. A busy task shows the same few stacks sample after
    /// sample; each is a few KB.
    stacks: FxHashMap<String, u32>,
}

/// Stacks remembered per connection before starting over (numbers then restart at 0, and each
/// stack is sent again with its new number).
const MAX_STACKS: usize = 20_000;

/// Threads remembered per connection before starting over (a TaskManager's task threads come
/// and go with every deployment; starting over only sends names again).
const MAX_REMEMBERED: usize = 100_000;

impl Introduced {
    /// Whether this connection was told the thread's name and task (a thread in
    /// [`TimerStates`] must have been).
    pub fn knows(&self, java_id: u64) -> bool {
        self.ids.contains(&java_id)
    }

    /// Leaves out the name and task of threads this connection has reported before, and the
    /// thread list of timer states that is the same as last time.
    pub fn compact(&mut self, sample: &mut InProcessSample) {
        if self.ids.len() > MAX_REMEMBERED {
            self.ids.clear();
            self.roster.clear();
            // Threads listed by their timers alone were known; they are no longer.
            if let Some(states) = &mut sample.timer_states {
                states.threads = None;
                states.states.clear();
                states.totals = None;
            }
        }
        if self.stacks.len() > MAX_STACKS {
            self.stacks.clear();
        }
        for t in &mut sample.threads {
            if !self.ids.insert(t.java_id) {
                t.name.clear();
                t.task = None;
            }
            if let Some(stack) = t.stack.take() {
                let next = self.stacks.len() as u32;
                match self.stacks.get(&stack) {
                    Some(id) => t.stack_id = Some(*id),
                    None => {
                        self.stacks.insert(stack.clone(), next);
                        t.stack_id = Some(next);
                        t.stack = Some(stack);
                    }
                }
            }
        }
        if let Some(states) = &mut sample.timer_states {
            if states.threads.as_deref() == Some(self.roster.as_slice()) {
                states.threads = None;
            } else if let Some(threads) = &states.threads {
                self.roster.clone_from(threads);
            }
        }
    }
}

/// Agent side, per connection: the names and tasks of the threads introduced so far, and the
/// threads of the last [`TimerStates`].
#[derive(Debug, Default)]
pub struct Known {
    threads: FxHashMap<u64, (String, Option<TaskRef>)>,
    roster: Vec<u64>,
    /// Folded stacks by their number on this connection (a number sent with a stack again is
    /// bound to the new one: the library started over).
    stacks: FxHashMap<u32, String>,
}

impl Known {
    /// Puts back the name and task [`Introduced::compact`] left out, and the thread list of
    /// timer states; an error names a thread never introduced (the connection must then start
    /// over). The states themselves are checked by [`TimerStates::readings`].
    pub fn expand(&mut self, sample: &mut InProcessSample) -> Result<(), String> {
        if self.threads.len() > MAX_REMEMBERED {
            // The library starts over at the same bound, on a connection of the same age.
            self.threads
                .retain(|id, _| sample.threads.iter().any(|t| t.java_id == *id));
            self.roster.clear();
        }
        for t in &mut sample.threads {
            if t.name.is_empty() {
                let (name, task) = self
                    .threads
                    .get(&t.java_id)
                    .ok_or_else(|| format!("thread #{} was never introduced", t.java_id))?;
                t.name.clone_from(name);
                t.task.clone_from(task);
            } else {
                self.threads
                    .insert(t.java_id, (t.name.clone(), t.task.clone()));
            }
            match (&t.stack, t.stack_id) {
                (Some(stack), Some(id)) => {
                    self.stacks.insert(id, stack.clone());
                }
                (None, Some(id)) => {
                    let stack = self
                        .stacks
                        .get(&id)
                        .ok_or_else(|| format!("stack #{id} was never sent"))?;
                    t.stack = Some(stack.clone());
                }
                _ => {}
            }
        }
        if let Some(states) = &mut sample.timer_states {
            match &states.threads {
                // A new list: every thread on it must have been introduced (the list is kept
                // only once it checks out, so an unchanged list needs no second look).
                Some(threads) => {
                    if let Some(id) = threads.iter().find(|id| !self.threads.contains_key(id)) {
                        return Err(format!("thread #{id} was never introduced"));
                    }
                    self.roster.clone_from(threads);
                }
                None => states.threads = Some(self.roster.clone()),
            }
        }
        Ok(())
    }

    /// The name and task of an introduced thread.
    pub fn get(&self, java_id: u64) -> Option<(&str, Option<&TaskRef>)> {
        self.threads
            .get(&java_id)
            .map(|(name, task)| (name.as_str(), task.as_ref()))
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
            stack: None,
            stack_id: None,
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
    fn timer_states_cross_as_letters_and_their_threads_only_when_changed() {
        let introduce = |id: u64| SampledThread {
            name: format!("Map (1/2)#{id}"),
            java_id: id,
            class: SampleClass::Busy,
            top_frame: None,
            activity: None,
            lock: None,
            cpu_ns: None,
            timers: None,
            stackless: true,
            stack: None,
            stack_id: None,
            task: None,
        };
        let states = |threads: Vec<u64>, letters: &str| TimerStates {
            at_ms: 5_000,
            method: TimerMethod::Fields,
            threads: Some(threads),
            states: letters.into(),
            totals: None,
        };
        let (mut lib, mut agent) = (Introduced::default(), Known::default());
        // First: both threads introduced in full.
        let mut first = InProcessSample {
            threads: vec![introduce(1), introduce(2)],
            ..Default::default()
        };
        lib.compact(&mut first);
        agent.expand(&mut first).unwrap();
        assert!(lib.knows(1) && lib.knows(2) && !lib.knows(3));
        // Then by letters; the thread list crosses once, and is filled in again by the agent.
        for round in 0..2 {
            let mut s = InProcessSample {
                timer_states: Some(states(vec![2, 1], "sb")),
                ..Default::default()
            };
            lib.compact(&mut s);
            let line = serde_json::to_string(&s).unwrap();
            assert_eq!(line.contains("[2,1]"), round == 0, "{line}");
            let mut decoded: InProcessSample = serde_json::from_str(&line).unwrap();
            agent.expand(&mut decoded).unwrap();
            let st = decoded.timer_states.unwrap();
            assert_eq!(st.threads.as_deref(), Some(&[2, 1][..]));
            let r = st.readings(&[2, 1]).unwrap();
            assert_eq!(r[0].running, Some(RunningTimer::Soft));
            assert_eq!(r[1].running, None);
            assert!(r[0].totals.is_none());
        }
        // Totals, when sent, become readings at the sample's instant.
        let mut with_totals = states(vec![1], "h");
        with_totals.totals = Some(vec![[10, 20, 30]]);
        let r = with_totals.readings(&[1]).unwrap()[0].totals.unwrap();
        assert_eq!(
            (r.at_ms, r.idle_ms, r.soft_ms, r.hard_ms),
            (5_000, 10, 20, 30)
        );
        assert_eq!(r.running, Some(RunningTimer::Hard));
        // Malformed: unknown letter, lengths that disagree, a thread never introduced.
        assert!(states(vec![1], "q").readings(&[1]).is_err());
        // A busy thread whose stack was read is marked, so that it is counted once.
        let r = states(vec![1, 2], "xb").readings(&[1, 2]).unwrap();
        assert_eq!((r[0].running, r[0].stacked), (None, true));
        assert_eq!((r[1].running, r[1].stacked), (None, false));
        assert!(states(vec![1, 2], "b").readings(&[1, 2]).is_err());
        let mut stranger = InProcessSample {
            timer_states: Some(states(vec![9], "b")),
            ..Default::default()
        };
        let err = agent.expand(&mut stranger).unwrap_err();
        assert!(err.contains("#9"), "{err}");
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
        let r = serde_json::to_string(&Request::Sample(SampleRequest::stacks(64))).unwrap();
        // Stacks at every sample is what every library did before the field: left out.
        assert_eq!(r, r#"{"op":"sample","max_depth":64}"#);
        let timers_only = Request::Sample(SampleRequest {
            stacks: false,
            ..SampleRequest::stacks(64)
        });
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
                stack: None,
                stack_id: None,
                task: Some(TaskRef {
                    job_id: "j".into(),
                    vertex_id: "v".into(),
                    subtask: 0,
                    attempt: 0,
                    execution_attempt_id: "e".into(),
                }),
            }],
            timer_states: None,
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

    #[test]
    fn a_folded_stack_crosses_once_per_connection_then_by_its_number() {
        let busy = |id: u64, stack: &str| SampledThread {
            name: format!("Map (1/2)#{id}"),
            java_id: id,
            class: SampleClass::Busy,
            top_frame: None,
            task: None,
            activity: None,
            lock: None,
            cpu_ns: None,
            timers: None,
            stackless: false,
            stack: Some(stack.to_string()),
            stack_id: None,
        };
        let hot = "java.lang.Thread.run;com.acme.Map.map;com.acme.Cache.get";
        let (mut lib, mut agent) = (Introduced::default(), Known::default());
        let mut first = InProcessSample {
            threads: vec![busy(1, hot), busy(2, hot)],
            ..Default::default()
        };
        lib.compact(&mut first);
        // Thread 2 shows the stack thread 1 just sent: its number only.
        assert_eq!(first.threads[0].stack.as_deref(), Some(hot));
        assert_eq!(first.threads[1].stack, None);
        assert_eq!(first.threads[0].stack_id, first.threads[1].stack_id);
        let mut second = InProcessSample {
            threads: vec![busy(1, hot)],
            ..Default::default()
        };
        lib.compact(&mut second);
        let line = serde_json::to_string(&second).unwrap();
        assert!(!line.contains("Cache.get"), "{line}");
        // The agent puts the text back in both samples.
        let mut first: InProcessSample =
            serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
        let mut second: InProcessSample = serde_json::from_str(&line).unwrap();
        agent.expand(&mut first).unwrap();
        agent.expand(&mut second).unwrap();
        for t in first.threads.iter().chain(&second.threads) {
            assert_eq!(t.stack.as_deref(), Some(hot));
        }
        // A number never sent is an error, not a guess.
        let mut stray = InProcessSample {
            threads: vec![SampledThread {
                stack: None,
                stack_id: Some(99),
                ..busy(1, hot)
            }],
            ..Default::default()
        };
        let err = agent.expand(&mut stray).unwrap_err();
        assert!(err.contains("stack #99"), "{err}");
        // Past its bound the library starts over: numbers restart, each stack is sent again
        // with its new number, and the agent rebinds it.
        for i in 0..=MAX_STACKS {
            let mut s = InProcessSample {
                threads: vec![busy(1, &format!("a;b{i}"))],
                ..Default::default()
            };
            lib.compact(&mut s);
            agent.expand(&mut s).unwrap();
        }
        let mut again = InProcessSample {
            threads: vec![busy(1, hot)],
            ..Default::default()
        };
        lib.compact(&mut again);
        assert_eq!(again.threads[0].stack.as_deref(), Some(hot), "sent again");
        agent.expand(&mut again).unwrap();
        let mut by_number = InProcessSample {
            threads: vec![busy(1, hot)],
            ..Default::default()
        };
        lib.compact(&mut by_number);
        assert_eq!(by_number.threads[0].stack, None);
        agent.expand(&mut by_number).unwrap();
        assert_eq!(by_number.threads[0].stack.as_deref(), Some(hot));
    }
}
