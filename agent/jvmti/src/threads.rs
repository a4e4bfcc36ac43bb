//! Which threads to sample: the JVM's Flink task threads (and legacy source threads), found by
//! name with `bpmon_proto::parse_task_thread_name`, held as JNI global references between
//! samples.
//!
//! Listing threads (`GetAllThreads` + `GetThreadInfo` per thread) costs far more than sampling
//! the few task threads, so the list is refreshed at most once per [`REFRESH_INTERVAL`]. A task
//! that starts in between is picked up by the next refresh; one that ends in between shows up as
//! `JVMTI_ERROR_THREAD_NOT_ALIVE` when sampled and is dropped then (see `sampler`).
//!
//! Threads are keyed by their Java thread id (`Thread.tid`, never reused within a JVM), so a
//! thread's global reference and what was learnt about its task survive refreshes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::TaskRef;
use bpmon_proto::{parse_task_thread_name, ThreadRole};
use jni::objects::{Global, JObject};
use jni::{jni_sig, jni_str, Env};

use crate::identity::clear_exception;
use crate::jvmti::{Jvmti, JvmtiError};
use crate::timers::TaskTimers;

/// Longest time a new task thread can go unnoticed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
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
                let errors = self.refresh(env, jvmti)?;
                self.refreshed_at = Some(now);
                Ok(errors)
            }
        }
    }

    /// Lists every thread and keeps the task threads. Runs in the caller's local frame, which
    /// receives one local reference per JVM thread (deleted as soon as each is looked at).
    pub fn refresh(&mut self, env: &mut Env, jvmti: Jvmti) -> Result<Vec<String>, ThreadsError> {
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
            // A frame per thread: GetThreadInfo adds two local references (group, loader).
            let found = env.with_local_frame(8, |env| -> Result<_, ThreadsError> {
                let info = jvmti.thread_info(&thread)?;
                let Some((_, role)) = parse_task_thread_name(&info.name) else {
                    return Ok(None);
                };
                let java_id = java_id(env, &thread)?;
                if let Some(mut t) = known.remove(&java_id) {
                    if t.name != info.name {
                        // Renamed: whatever was read for the old name may not hold.
                        t.identity = Identity::initial(role);
                        t.timers = Timers::initial(role);
                        t.name = info.name;
                        t.role = role;
                    }
                    return Ok(Some(t));
                }
                Ok(Some(TaskThread {
                    name: info.name,
                    java_id,
                    role,
                    thread: env.new_global_ref(&thread)?,
                    identity: Identity::initial(role),
                    timers: Timers::initial(role),
                }))
            });
            env.delete_local_ref(thread);
            match found {
                Ok(Some(t)) if fresh.len() < MAX_TASK_THREADS => fresh.push(t),
                Ok(Some(_)) => over_cap += 1,
                Ok(None) => {}
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
        self.refreshed_at = None;
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
