//! Which threads to sample: the JVM's Flink task threads (and legacy source threads), found by
//! name with `bpmon_proto::parse_task_thread_name`, held as JNI global references between
//! samples.
//!
//! Listing threads costs far more than sampling the few task threads, so the list is refreshed
//! at most once per [`REFRESH_INTERVAL`], and not at the states-only samples inside a window
//! (see `sampler`). A task that starts in between is picked up by the next refresh; one that ends in between shows up as `JVMTI_ERROR_THREAD_NOT_ALIVE` when sampled (or
//! not [`TaskThreads::alive`]) and is dropped then (see `sampler`).
//!
//! A refresh names only the threads it has not seen: `GetAllThreads`, then each thread's id
//! (one field read), and `GetThreadInfo` (the name, two local references, a string) only for ids
//! neither tracked nor known to be other threads. Flink never renames a task thread, but a full
//! refresh every [`FULL_REFRESH_INTERVAL`] would notice one that was.
//!
//! Threads are keyed by their Java thread id (`Thread.tid`, never reused within a JVM), so a
//! thread's global reference and what was learnt about its task survive refreshes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::TaskRef;
use bpmon_proto::{parse_task_thread_name, RunningTimer, ThreadRole};
use jni::ids::JFieldID;
use jni::objects::{Global, JObject};
use jni::{jni_sig, jni_str, Env};

use crate::identity::clear_exception;
use crate::jvmti::{Jvmti, JvmtiError};
use crate::sys::JVMTI_THREAD_STATE_ALIVE;
use crate::timers::{long_field, TaskTimers};

/// Longest time a new task thread can go unnoticed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often every thread's name is read again.
pub const FULL_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Ids of other threads remembered at most before starting over.
const MAX_OTHER_THREADS: usize = 100_000;
/// Task threads tracked at most (a TaskManager has a few hundred at the very most).
pub const MAX_TASK_THREADS: usize = 16_384;

/// What is known of the task behind a thread. Read once: a thread runs one task for life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A legacy source thread: its task is the main thread's.
    NotApplicable,
    /// A main task thread not read yet.
    Unread,
    Known(TaskRef),
    /// Reading failed once (reported then); not retried.
    Failed,
}

impl Identity {
    fn initial(role: ThreadRole) -> Identity {
        match role {
            ThreadRole::Main => Identity::Unread,
            ThreadRole::LegacySource => Identity::NotApplicable,
        }
    }
}

/// Flink's timers of the task behind a main task thread ([`crate::timers`]). Found once.
#[derive(Debug)]
pub enum Timers {
    /// A legacy source thread: its task's timers are read through the main thread.
    NotApplicable,
    Unread,
    Known(TaskTimers),
    /// Finding or reading them failed (said once then); not retried.
    Failed,
}

impl Timers {
    fn initial(role: ThreadRole) -> Timers {
        match role {
            ThreadRole::Main => Timers::Unread,
            ThreadRole::LegacySource => Timers::NotApplicable,
        }
    }
}

/// One tracked task thread.
#[derive(Debug)]
pub struct TaskThread {
    pub name: String,
    pub java_id: u64,
    pub role: ThreadRole,
    /// Keeps the `java.lang.Thread` reachable for `GetStackTrace`; deleted when dropped, which
    /// must happen on a thread attached to the VM (the sampler thread).
    pub thread: Global<JObject<'static>>,
    pub identity: Identity,
    pub timers: Timers,
    /// The timer found running at the last timers-only read (`None`: busy, or not read yet).
    pub last_state: Option<RunningTimer>,
}

/// Why the thread list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
    #[error("JNI: {0}")]
    Jni(#[from] jni::errors::Error),
}

/// The task threads of the JVM as of the last refresh, sorted by name and id.
#[derive(Debug, Default)]
pub struct TaskThreads {
    threads: Vec<TaskThread>,
    refreshed_at: Option<Instant>,
    /// When every thread's name was last read.
    full_at: Option<Instant>,
    /// Ids of the threads that are not task threads, as of their names when first seen.
    others: HashSet<u64>,
    /// `java.lang.Thread.tid` and `eetop` (non-zero while the thread runs), once looked up;
    /// `None` inside: the field is not there in this JDK.
    tid: Option<Option<JFieldID>>,
    eetop: Option<Option<JFieldID>>,
}

impl TaskThreads {
    pub fn new() -> TaskThreads {
        TaskThreads::default()
    }

    /// Refreshes the list if the last refresh is older than [`REFRESH_INTERVAL`]. Returns what
    /// went wrong for single threads (they are left out until the next refresh).
    pub fn refresh_if_due(
        &mut self,
        env: &mut Env,
        jvmti: Jvmti,
        now: Instant,
    ) -> Result<Vec<String>, ThreadsError> {
        match self.refreshed_at {
            Some(at) if now.saturating_duration_since(at) < REFRESH_INTERVAL => Ok(Vec::new()),
            _ => {
                let full = self
                    .full_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= FULL_REFRESH_INTERVAL);
                if full {
                    self.others.clear();
                    self.full_at = Some(now);
                }
                let errors = self.refresh(env, jvmti, full)?;
                self.refreshed_at = Some(now);
                Ok(errors)
            }
        }
    }

    /// How to tell whether a tracked thread still runs (looked up once).
    pub fn liveness(&mut self, env: &mut Env) -> Liveness {
        Liveness(
            *self
                .eetop
                .get_or_insert_with(|| thread_field(env, jni_str!("eetop"))),
        )
    }

    /// Lists every thread and keeps the task threads; `full`: reads every thread's name again,
    /// else only those of threads not seen before. Runs in the caller's local frame, which
    /// receives one local reference per JVM thread (deleted as soon as each is looked at).
    pub fn refresh(
        &mut self,
        env: &mut Env,
        jvmti: Jvmti,
        full: bool,
    ) -> Result<Vec<String>, ThreadsError> {
        let tid = *self
            .tid
            .get_or_insert_with(|| thread_field(env, jni_str!("tid")));
        if self.others.len() > MAX_OTHER_THREADS {
            self.others.clear();
        }
        let all = jvmti.all_threads()?;
        let mut known: HashMap<u64, TaskThread> =
            self.threads.drain(..).map(|t| (t.java_id, t)).collect();
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        let mut over_cap = 0usize;
        for &raw in all.as_slice() {
            // SAFETY: GetAllThreads made `raw` a local reference of this thread's current frame;
            // this wrapper is its only owner and deletes it below.
            let thread = unsafe { JObject::from_raw(env, raw) };
            if !full {
                // SAFETY: the id is of `Thread.tid`, a long, and `thread` is a java.lang.Thread.
                let id = tid.map(|id| unsafe { long_field(env, &thread, id) } as u64);
                if let Some(id) = id {
                    if let Some(t) = known.remove(&id) {
                        env.delete_local_ref(thread);
                        fresh.push(t);
                        continue;
                    }
                    if self.others.contains(&id) {
                        env.delete_local_ref(thread);
                        continue;
                    }
                }
            }
            // A frame per thread: GetThreadInfo adds two local references (group, loader).
            let found = env.with_local_frame(8, |env| -> Result<_, ThreadsError> {
                let info = jvmti.thread_info(&thread)?;
                let java_id = java_id(env, &thread)?;
                let Some((_, role)) = parse_task_thread_name(&info.name) else {
                    return Ok(Err(java_id));
                };
                if let Some(mut t) = known.remove(&java_id) {
                    if t.name != info.name {
                        // Renamed: whatever was read for the old name may not hold.
                        t.identity = Identity::initial(role);
                        t.timers = Timers::initial(role);
                        t.name = info.name;
                        t.role = role;
                    }
                    return Ok(Ok(t));
                }
                Ok(Ok(TaskThread {
                    name: info.name,
                    java_id,
                    role,
                    thread: env.new_global_ref(&thread)?,
                    identity: Identity::initial(role),
                    timers: Timers::initial(role),
                    last_state: None,
                }))
            });
            env.delete_local_ref(thread);
            match found {
                Ok(Ok(t)) if fresh.len() < MAX_TASK_THREADS => fresh.push(t),
                Ok(Ok(_)) => over_cap += 1,
                Ok(Err(other)) => {
                    self.others.insert(other);
                }
                Err(e) => {
                    // e.g. an OutOfMemoryError from PushLocalFrame or NewGlobalRef.
                    clear_exception(env);
                    errors.push(format!("listing a thread: {e}"));
                }
            }
        }
        if over_cap > 0 {
            errors.push(format!(
                "{over_cap} task threads beyond the first {MAX_TASK_THREADS} are not sampled"
            ));
        }
        // What is left in `known` ended since the last refresh; dropping it deletes the global
        // references.
        drop(known);
        fresh.sort_by(|a, b| a.name.cmp(&b.name).then(a.java_id.cmp(&b.java_id)));
        self.threads = fresh;
        Ok(errors)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskThread> {
        self.threads.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut TaskThread> {
        self.threads.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Drops threads that ended (their global references are deleted).
    pub fn remove(&mut self, java_ids: &[u64]) {
        if !java_ids.is_empty() {
            self.threads.retain(|t| !java_ids.contains(&t.java_id));
        }
    }

    /// Drops every thread; call on the sampler thread while it is still attached.
    pub fn clear(&mut self) {
        self.threads.clear();
        self.others.clear();
        self.refreshed_at = None;
        self.full_at = None;
    }
}

/// Whether a thread still runs: its `eetop` (the VM's thread, cleared as it exits), one field
/// read; where the JDK has no such field, its JVMTI state.
#[derive(Debug, Clone, Copy)]
pub struct Liveness(Option<JFieldID>);

impl Liveness {
    pub fn alive(self, env: &Env, jvmti: Jvmti, thread: &JObject) -> bool {
        match self.0 {
            // SAFETY: the id is of `Thread.eetop`, a long, and `thread` is a java.lang.Thread.
            Some(id) => unsafe { long_field(env, thread, id) != 0 },
            None => jvmti
                .thread_state(thread)
                .is_ok_and(|bits| bits & JVMTI_THREAD_STATE_ALIVE != 0),
        }
    }
}

/// The id of a `long` field of `java.lang.Thread`, if this JDK has it.
fn thread_field(env: &mut Env, name: &jni::strings::JNIStr) -> Option<JFieldID> {
    let found = env
        .find_class(jni_str!("java/lang/Thread"))
        .and_then(|class| env.get_field_id(&class, name, jni_sig!("J")));
    match found {
        Ok(id) => Some(id),
        Err(_) => {
            clear_exception(env);
            None
        }
    }
}

/// `Thread.tid` (what `getId()`/`threadId()` return and dumps print as `#N`); `getId()` should a
/// JDK ever rename the field.
fn java_id(env: &mut Env, thread: &JObject) -> Result<u64, ThreadsError> {
    let field = env
        .get_field(thread, jni_str!("tid"), jni_sig!("J"))
        .and_then(|v| v.j());
    let id = match field {
        Ok(id) => id,
        Err(_) => {
            clear_exception(env);
            let id = env
                .call_method(thread, jni_str!("getId"), jni_sig!("()J"), &[])
                .and_then(|v| v.j());
            if id.is_err() {
                clear_exception(env);
            }
            id?
        }
    };
    Ok(u64::try_from(id).unwrap_or(0))
}
