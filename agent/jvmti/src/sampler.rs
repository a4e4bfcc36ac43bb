//! One sample: refresh the task threads if due, read each one's stack, classify it with the
//! project's shared rule table, attach the task's identity and the evidence of a cause (CPU
//! time; for busy samples the activity and the awaited monitor, see [`crate::evidence`]), and
//! time the whole.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::{
    state_letter, InProcessSample, Introduced, SampleRequest, SampledLock, SampledThread,
    TimerStates, MAX_STACK_DEPTH, STACKED_LETTER,
};
use bpmon_proto::{timer_class, TimerReading};
use bpmon_proto::{RunningTimer, ThreadRole};
use bpmon_stacks::activity::{activity, Activity};
use bpmon_stacks::classify::{is_flink_class, is_jdk_class, Classifier, SampleClass};
use bpmon_stacks::collapse::{self, collapse};
use bpmon_stacks::threaddump::{Frame, ThreadState};
use jni::Env;

use bpmon_proto::time::now_ms;

use crate::evidence::{mx_locks, thread_state, EvidenceCaps, Monitors};
use crate::identity::{clear_exception, read_task_ref};
use crate::jvmti::Jvmti;
use crate::stacks::{MethodCache, StackError, StackReader};
use crate::threads::{Identity, Liveness, TaskThread, TaskThreads, Timers};
use crate::timers::{self, TimerReader};

/// Frames read first. The rules look at the topmost non-JDK frame and its caller, and a busy
/// sample reports the topmost user frame: in a Flink task thread all of them are nearly always
/// among the top few frames.
const SHALLOW_DEPTH: usize = 10;

/// Whether the top of a stack (cut short) may classify or report differently once read in
/// full: fewer than two non-JDK frames (a rule's frame and its caller), or a busy sample with
/// no user frame (neither JDK nor Flink) to report.
fn undecided(classifier: &Classifier, top: &[&Frame]) -> bool {
    let non_jdk = top.iter().filter(|f| !is_jdk_class(f.class())).count();
    if non_jdk < 2 {
        return true;
    }
    classifier.classify(top).class == SampleClass::Busy
        && !top
            .iter()
            .any(|f| !is_jdk_class(f.class()) && !is_flink_class(f.class()))
}

/// How long the monitor found for a blocked thread stands for it: finding a monitor (and its
/// owner) is a VM operation, a safepoint, so a thread that stays blocked is looked up at most
/// this often and its monitor reused in between. At 50 ms between samples that is one sample in
/// twenty instead of every one.
const LOCK_LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The sampler's state between samples (all of it owned by the sampler thread).
#[derive(Debug)]
pub struct Sampler {
    jvmti: Jvmti,
    classifier: Classifier,
    threads: TaskThreads,
    stacks: StackReader,
    caps: EvidenceCaps,
    /// The monitor each blocked thread was last found waiting for, and when (by Java thread id).
    recent_locks: HashMap<u64, (Instant, SampledLock)>,
    timers: TimerReader,
}

impl Sampler {
    /// `locations`: whether source file names and line numbers can be read; `caps`: what the
    /// evidence may be read with.
    pub fn new(jvmti: Jvmti, locations: bool, caps: EvidenceCaps) -> Sampler {
        Sampler {
            jvmti,
            classifier: Classifier::new(),
            threads: TaskThreads::new(),
            stacks: StackReader::new(jvmti, locations),
            caps,
            recent_locks: HashMap::new(),
            timers: TimerReader::new(),
        }
    }

    /// One sample of every task thread, at most `max_depth` frames each (capped at
    /// [`MAX_STACK_DEPTH`]). Call inside a JNI local frame; no local reference outlives it.
    ///
    /// Without `stacks`, a main task thread whose task's timers can be read is classified by
    /// them alone (see [`bpmon_proto::timer_class`]), at a fraction of a stack's cost; legacy source threads
    /// are left out (their task's timers are read through its main thread), and a thread
    /// without timers has its stack read as usual.
    ///
    /// With `request.states`, a thread read by its timers alone that `known` was introduced to
    /// goes into [`InProcessSample::timer_states`] as one letter (and its totals with
    /// `request.totals`), read without the thread's state or CPU time; with `stacks` as well,
    /// only the threads whose timers say busy have their stack read (a waiting or blocked
    /// thread's stack adds nothing to its timers, and reading a stack is a handshake).
    pub fn sample<'l>(
        &mut self,
        env: &mut Env<'l>,
        methods: &mut MethodCache,
        request: SampleRequest,
        known: &Introduced,
    ) -> InProcessSample {
        let stacks = request.stacks;
        let max_depth = request.max_depth;
        let taken_at_ms = now_ms();
        let start = Instant::now();
        let cpu_start = thread_cpu_ns();
        let mut out = InProcessSample {
            taken_at_ms,
            ..Default::default()
        };
        // Whether each thread read by its timers is checked to be alive first: at every sample
        // but the states-only ones between a window's edges. `Thread.eetop` shares its cache line
        // with the thread status the VM writes at every park, so the check is a cache miss per
        // thread; a thread that ended is then found at the window's last sample at the latest
        // (its timers stand still meanwhile, in the state it ended in).
        let check_alive = stacks || !request.states || request.totals;
        // The thread list is refreshed at those samples only: listing ~450 threads was a
        // sixteenth of the library's time at 20 Hz. A task that starts mid-window is found at the
        // next stack sample or window edge instead of within a second.
        if check_alive || self.threads.is_empty() {
            match self.threads.refresh_if_due(env, self.jvmti, start) {
                Ok(errors) => out.errors.extend(errors),
                Err(e) => out.errors.push(format!("listing threads: {e}")),
            }
        }
        methods.trim();
        let live = self.threads.liveness(env);
        // With stacks, states mean: only the threads the timers find busy have their stack read.
        let busy_stacks = stacks && request.states;
        let mut states = request.states.then(|| StatesOut {
            at_ms: taken_at_ms,
            totals: request.totals,
            threads: Vec::with_capacity(self.threads.len()),
            letters: String::with_capacity(self.threads.len()),
            sums: Vec::new(),
        });
        // The states-only samples between a window's edges, most of continuous watching: the
        // tasks whose timers were found and that the connection knows are read in one batch.
        let batched = if request.states && !stacks && !request.totals {
            self.batched_states(env, known)
        } else {
            Vec::new()
        };
        let depth = max_depth.clamp(1, MAX_STACK_DEPTH) as usize;
        let mut ended = Vec::new();
        let mut monitors = Monitors::new();
        // Blocked threads whose monitor is asked of the ThreadMXBean after the loop, all at once:
        // (index in `out.threads`, Java thread id).
        let mut mx_pending: Vec<(usize, u64)> = Vec::new();
        for (i, t) in self.threads.iter_mut().enumerate() {
            if t.role == ThreadRole::Main && t.identity == Identity::Unread {
                t.identity = match read_task_ref(env, self.jvmti, &t.thread) {
                    Ok(task) => Identity::Known(task),
                    Err(e) => {
                        clear_exception(env);
                        out.errors.push(format!("{}: task identity: {e}", t.name));
                        Identity::Failed
                    }
                };
            }
            if !stacks && t.role == ThreadRole::LegacySource {
                // Its task's timers are read through its main thread.
                continue;
            }
            if let (Some(Some(running)), Some(st)) = (batched.get(i), states.as_mut()) {
                t.last_state = *running;
                st.threads.push(t.java_id);
                st.letters.push(state_letter(*running));
                continue;
            }
            if (!stacks || busy_stacks) && t.role == ThreadRole::Main {
                let compact = states.as_mut().filter(|_| known.knows(t.java_id));
                let ctx = TimersOnlyCtx {
                    jvmti: self.jvmti,
                    caps: self.caps,
                    live,
                    check_alive,
                    busy_stacks,
                };
                match timers_only(&mut self.timers, ctx, env, t, &mut out, compact) {
                    TimersOnly::Sampled => continue,
                    TimersOnly::Gone => {
                        out.gone += 1;
                        ended.push(t.java_id);
                        continue;
                    }
                    // Read its stack instead.
                    TimersOnly::NoTimers | TimersOnly::Busy => {}
                }
            }
            // Shallow first: walking a stack is most of a sample's cost, and the top frames
            // decide nearly every stack; a stack they leave open is read again in full.
            let shallow = depth.min(SHALLOW_DEPTH);
            let mut read = self.stacks.read(env, methods, t.thread.as_obj(), shallow);
            if let Ok(keys) = &read {
                if keys.len() == shallow
                    && shallow < depth
                    && undecided(&self.classifier, &methods.frames(keys))
                {
                    read = self.stacks.read(env, methods, t.thread.as_obj(), depth);
                }
            }
            let keys = match read {
                Ok(keys) => keys,
                Err(StackError::Gone) => {
                    out.gone += 1;
                    ended.push(t.java_id);
                    continue;
                }
                Err(e) => {
                    out.errors.push(format!("{}: {e}", t.name));
                    continue;
                }
            };
            // The timers right after the stack, so both describe the same instant.
            let timer_reading = read_timers(&mut self.timers, self.jvmti, env, t, &mut out.errors);
            let frames = methods.frames(&keys);
            let classification = self.classifier.classify(&frames);
            // CPU time for every sample: the window's figure is the difference between a
            // thread's first and last reading, whatever it was doing then.
            let cpu_ns = if self.caps.cpu_time {
                self.jvmti.thread_cpu_time(t.thread.as_obj()).ok()
            } else {
                None
            };
            let (activity, lock) = if classification.class == SampleClass::Busy {
                match self.jvmti.thread_state(t.thread.as_obj()) {
                    Ok(bits) => {
                        let state = thread_state(bits);
                        let activity = activity(state, &frames);
                        let obj = t.thread.as_obj();
                        let recent = self
                            .recent_locks
                            .get(&t.java_id)
                            .filter(|(at, _)| start.duration_since(*at) < LOCK_LOOKUP_EVERY)
                            .map(|(_, lock)| lock.clone());
                        let lock = match (activity, state) {
                            (Activity::Lock, Some(ThreadState::Blocked)) if recent.is_some() => {
                                Ok(recent)
                            }
                            (Activity::Lock, Some(ThreadState::Blocked))
                                if !self.caps.contended_monitor =>
                            {
                                mx_pending.push((out.threads.len(), t.java_id));
                                Ok(None)
                            }
                            (Activity::Lock, Some(ThreadState::Blocked)) => {
                                let found = monitors.awaited(env, self.jvmti, self.caps, obj);
                                if let Ok(Some(lock)) = &found {
                                    self.recent_locks.insert(t.java_id, (start, lock.clone()));
                                }
                                found
                            }
                            (Activity::Lock, _) => monitors.park_blocker(env, self.jvmti, obj),
                            _ => Ok(None),
                        };
                        let lock = lock.unwrap_or_else(|e| {
                            clear_exception(env);
                            out.errors.push(format!("{}: awaited lock: {e}", t.name));
                            None
                        });
                        (Some(activity), lock)
                    }
                    // Unknown rather than guessed from the frames alone.
                    Err(e) => {
                        out.errors.push(format!("{}: {e}", t.name));
                        (None, None)
                    }
                }
            } else {
                (None, None)
            };
            let top_frame = classification.top_frame.map(|f| f.to_string());
            let class = classification.class;
            // A busy sample's whole stack for flame graphs, when asked: read in full if the
            // shallow read decided the class (on failure, the frames read so far).
            let stack = if request.folded && class == SampleClass::Busy {
                let deeper = if keys.len() == shallow && shallow < depth {
                    self.stacks
                        .read(env, methods, t.thread.as_obj(), depth)
                        .ok()
                } else {
                    None
                };
                let full = deeper.as_ref().unwrap_or(&keys);
                Some(collapse(&methods.frames(full), collapse::MAX_DEPTH))
            } else {
                None
            };
            out.threads.push(SampledThread {
                name: t.name.clone(),
                java_id: t.java_id,
                class,
                top_frame,
                task: match &t.identity {
                    Identity::Known(task) => Some(task.clone()),
                    _ => None,
                },
                activity,
                lock,
                cpu_ns,
                timers: timer_reading,
                stackless: false,
                stack,
                stack_id: None,
            });
        }
        monitors.release(env);
        let ids: Vec<u64> = mx_pending.iter().map(|(_, id)| *id).collect();
        match mx_locks(env, &ids) {
            Ok(locks) => {
                for ((i, id), lock) in mx_pending.iter().zip(locks) {
                    if let Some(lock) = &lock {
                        self.recent_locks.insert(*id, (start, lock.clone()));
                    }
                    out.threads[*i].lock = lock;
                }
            }
            Err(e) => {
                clear_exception(env);
                out.errors.push(format!("awaited monitors: {e}"));
            }
        }
        if let (Some(st), Some(method)) = (states, self.timers.method()) {
            if !st.threads.is_empty() {
                out.timer_states = Some(TimerStates {
                    at_ms: st.at_ms,
                    method,
                    threads: Some(st.threads),
                    states: st.letters,
                    totals: st.totals.then_some(st.sums),
                });
            }
        }
        self.threads.remove(&ended);
        self.recent_locks
            .retain(|_, (at, _)| start.duration_since(*at) < LOCK_LOOKUP_EVERY);
        out.took_us = start.elapsed().as_micros() as u64;
        out.cpu_us = cpu_start
            .zip(thread_cpu_ns())
            .map(|(a, b)| b.saturating_sub(a) / 1000);
        out
    }

    /// Which timer runs now for each task thread ([`TimerReader::states`]), by the thread's
    /// index: those of main task threads whose timers were found and that `known` was
    /// introduced to; `None` for the others, and all of them if the batch cannot be read (each
    /// thread is then read on its own, and a failure said there).
    fn batched_states(
        &mut self,
        env: &mut Env,
        known: &Introduced,
    ) -> Vec<Option<Option<RunningTimer>>> {
        let mut index = Vec::with_capacity(self.threads.len());
        let mut tasks = Vec::with_capacity(self.threads.len());
        for (i, t) in self.threads.iter().enumerate() {
            if let (ThreadRole::Main, Timers::Known(found)) = (t.role, &t.timers) {
                if known.knows(t.java_id) {
                    index.push(i);
                    tasks.push((found, t.last_state));
                }
            }
        }
        match self.timers.states(env, &tasks) {
            Ok(Some(states)) => {
                let mut by_thread = vec![None; self.threads.len()];
                for (i, state) in index.into_iter().zip(states) {
                    by_thread[i] = Some(state);
                }
                by_thread
            }
            Ok(None) => Vec::new(),
            Err(_) => {
                clear_exception(env);
                Vec::new()
            }
        }
    }

    /// Deletes the global references to the task threads; call before detaching.
    pub fn release(&mut self) {
        self.threads.clear();
    }
}

/// Finds the timers of a main task thread's task on first use; whether it has them. A failure
/// is said once and the thread is sampled without timers from then on.
fn find_timers(
    reader: &mut TimerReader,
    jvmti: Jvmti,
    env: &mut Env,
    t: &mut TaskThread,
    errors: &mut Vec<String>,
) -> bool {
    if matches!(t.timers, Timers::Unread) {
        t.timers = match (&t.identity, timers::find(env, jvmti, &t.thread)) {
            // Not a task (already said), or no timers in this Flink: said once per reason,
            // not once per task.
            (Identity::Failed, _) => Timers::Failed,
            (_, Ok(found)) => Timers::Known(found),
            (_, Err(e)) => {
                clear_exception(env);
                let reason = e.to_string();
                if reader.first_failure(&reason) {
                    errors.push(format!(
                        "{}: task timers: {reason} (said once; tasks without timers are \
                         sampled by their stacks)",
                        t.name
                    ));
                }
                Timers::Failed
            }
        };
    }
    matches!(t.timers, Timers::Known(_))
}

/// Reads the timers of a main task thread's task ([`find_timers`] first). A failure is said
/// and the thread is sampled without timers from then on.
fn read_timers(
    reader: &mut TimerReader,
    jvmti: Jvmti,
    env: &mut Env,
    t: &mut TaskThread,
    errors: &mut Vec<String>,
) -> Option<TimerReading> {
    if !find_timers(reader, jvmti, env, t, errors) {
        return None;
    }
    let Timers::Known(found) = &t.timers else {
        return None;
    };
    match reader.read(env, found) {
        Ok(reading) => Some(reading),
        Err(e) => {
            clear_exception(env);
            errors.push(format!("{}: reading task timers: {e}", t.name));
            t.timers = Timers::Failed;
            None
        }
    }
}

/// What a timers-only sample of one thread came to.
enum TimersOnly {
    Sampled,
    /// No timer runs and its stack is wanted then (`busy_stacks`): nothing was recorded.
    Busy,
    /// The thread ended (its task finished or failed).
    Gone,
    /// Its task's timers cannot be read.
    NoTimers,
}

/// The timer states of one sample as they are read ([`TimerStates`] once complete).
struct StatesOut {
    at_ms: u64,
    totals: bool,
    threads: Vec<u64>,
    letters: String,
    sums: Vec<[u64; 3]>,
}

/// What a timers-only read needs besides the thread.
#[derive(Clone, Copy)]
struct TimersOnlyCtx {
    jvmti: Jvmti,
    caps: EvidenceCaps,
    live: Liveness,
    /// Whether to check that the thread is alive before reading its timers.
    check_alive: bool,
    /// A thread whose timers say busy is left to the stack reader.
    busy_stacks: bool,
}

/// Samples a main task thread by its task's timers alone: is the thread alive (the timers of a
/// finished task stand still and would read as busy), then the timers. Into `states` (a thread
/// the connection knows), one letter and the totals if asked; else a [`SampledThread`] with the
/// timers' totals and the thread's CPU time.
fn timers_only(
    reader: &mut TimerReader,
    ctx: TimersOnlyCtx,
    env: &mut Env,
    t: &mut TaskThread,
    out: &mut InProcessSample,
    states: Option<&mut StatesOut>,
) -> TimersOnly {
    let jvmti = ctx.jvmti;
    if ctx.check_alive && !ctx.live.alive(env, jvmti, t.thread.as_obj()) {
        return TimersOnly::Gone;
    }
    if !find_timers(reader, jvmti, env, t, &mut out.errors) {
        return TimersOnly::NoTimers;
    }
    if let (Some(st), Timers::Known(found)) = (states, &t.timers) {
        let read = if st.totals {
            reader
                .read_at(env, found, st.at_ms)
                .map(|r| (r.running, Some([r.idle_ms, r.soft_ms, r.hard_ms])))
        } else {
            reader
                .state(env, found, t.last_state)
                .map(|running| (running, None))
        };
        if let Ok((running, _)) = &read {
            t.last_state = *running;
        }
        return match read {
            Ok((None, sums)) if ctx.busy_stacks => {
                // Listed all the same, so that the list is the one of timers-only samples.
                st.threads.push(t.java_id);
                st.letters.push(STACKED_LETTER);
                st.sums.extend(sums);
                TimersOnly::Busy
            }
            Ok((running, sums)) => {
                st.threads.push(t.java_id);
                st.letters.push(state_letter(running));
                st.sums.extend(sums);
                TimersOnly::Sampled
            }
            Err(e) => {
                clear_exception(env);
                out.errors
                    .push(format!("{}: reading task timers: {e}", t.name));
                t.timers = Timers::Failed;
                TimersOnly::NoTimers
            }
        };
    }
    let Some(reading) = read_timers(reader, jvmti, env, t, &mut out.errors) else {
        return TimersOnly::NoTimers;
    };
    if reading.running.is_none() && ctx.busy_stacks {
        return TimersOnly::Busy;
    }
    let caps = ctx.caps;
    let cpu_ns = if caps.cpu_time {
        jvmti.thread_cpu_time(t.thread.as_obj()).ok()
    } else {
        None
    };
    out.threads.push(SampledThread {
        name: t.name.clone(),
        java_id: t.java_id,
        class: timer_class(reading.running),
        top_frame: None,
        task: match &t.identity {
            Identity::Known(task) => Some(task.clone()),
            _ => None,
        },
        activity: None,
        lock: None,
        cpu_ns,
        timers: Some(reading),
        stackless: true,
        stack: None,
        stack_id: None,
    });
    TimersOnly::Sampled
}
