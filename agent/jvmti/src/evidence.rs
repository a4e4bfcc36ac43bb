//! What a sample says beyond its class, as the dump backends give it (`docs/design.md`,
//! "Causes"): each thread's CPU time, and for a busy sample its [`Activity`] and the monitor it
//! waits to enter.
//!
//! The activity is not decided here: the thread's `GetThreadState` bits become the
//! [`ThreadState`] a dump would have printed ([`thread_state`]), and the shared rules of
//! `bpmon_stacks::activity` take it from there with the frames already read, so both kinds of
//! backend name the same cause for the same stack.
//!
//! Cost: `GetThreadCpuTime` and `GetThreadState` read the thread's clock and status without a
//! handshake. Only a busy sample whose thread is `BLOCKED` pays more: `GetCurrentContendedMonitor`
//! (a handshake with that thread) and, once per distinct monitor per sample (for at most
//! [`MAX_OWNER_LOOKUPS`] of them), `GetObjectMonitorUsage` (a VM operation: HotSpot runs it at a
//! safepoint). A thread parked
//! acquiring a `java.util.concurrent` lock costs one field read (`Thread.parkBlocker`, the object
//! a dump's `- parking to wait for` line names; a dump names no owner for it, nor does this).
//!
//! HotSpot grants `can_get_current_contended_monitor` only to a library loaded at start
//! (`-agentpath`). Loaded by attach, the library asks `ThreadMXBean.getThreadInfo(long[], 0)`
//! instead, once per sample for all its blocked threads ([`mx_locks`]: one safepoint); it names a
//! `Class` object's monitor `java.lang.Class`, without the class it stands for.
//!
//! Either way a thread that stays blocked is looked up at most once a second; the samples in
//! between reuse its monitor (`sampler::LOCK_LOOKUP_EVERY`), so contention costs about one
//! safepoint a second, not one per sample.

use bpmon_proto::inprocess::SampledLock;
use bpmon_stacks::threaddump::ThreadState;
use jni::objects::{JClass, JLongArray, JObject, JObjectArray, JString, JValue};
use jni::{jni_sig, jni_str, Env};

use crate::jvmti::{Jvmti, JvmtiError};
use crate::stacks::class_name_from_signature;
use crate::sys::{self, jint};

pub use bpmon_stacks::activity::Activity;

/// What the JVM granted for the evidence (each optional: a JVM that refuses one loses only that
/// figure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvidenceCaps {
    /// `can_get_thread_cpu_time`.
    pub cpu_time: bool,
    /// `can_get_current_contended_monitor`.
    pub contended_monitor: bool,
    /// `can_get_monitor_info` (the monitor's owner).
    pub monitor_info: bool,
}

impl EvidenceCaps {
    /// Adds each capability the JVM can give and reports which are held afterwards.
    pub fn acquire(jvmti: Jvmti) -> EvidenceCaps {
        use sys::jvmtiCapabilities as Caps;
        let potential = jvmti.potential_capabilities().unwrap_or_default();
        let mut wanted = Caps::default();
        for bit in [
            Caps::CAN_GET_THREAD_CPU_TIME,
            Caps::CAN_GET_CURRENT_CONTENDED_MONITOR,
            Caps::CAN_GET_MONITOR_INFO,
        ] {
            if potential.has(bit) {
                wanted = wanted.with(bit);
            }
        }
        if wanted != Caps::default() && jvmti.add_capabilities(&wanted).is_err() {
            // All or nothing per call: try them one by one.
            for bit in [
                Caps::CAN_GET_THREAD_CPU_TIME,
                Caps::CAN_GET_CURRENT_CONTENDED_MONITOR,
                Caps::CAN_GET_MONITOR_INFO,
            ] {
                if wanted.has(bit) {
                    let _ = jvmti.add_capabilities(&Caps::default().with(bit));
                }
            }
        }
        let held = jvmti.capabilities().unwrap_or_default();
        EvidenceCaps {
            cpu_time: held.has(Caps::CAN_GET_THREAD_CPU_TIME),
            contended_monitor: held.has(Caps::CAN_GET_CURRENT_CONTENDED_MONITOR),
            monitor_info: held.has(Caps::CAN_GET_MONITOR_INFO),
        }
    }
}

/// The state a thread dump prints for a thread whose `GetThreadState` is `bits` (HotSpot derives
/// both from the same thread status). `None` for bits that name no state.
pub fn thread_state(bits: jint) -> Option<ThreadState> {
    let has = |flag: jint| bits & flag != 0;
    if !has(sys::JVMTI_THREAD_STATE_ALIVE) {
        return Some(if has(sys::JVMTI_THREAD_STATE_TERMINATED) {
            ThreadState::Terminated
        } else {
            ThreadState::New
        });
    }
    if has(sys::JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER) {
        return Some(ThreadState::Blocked);
    }
    if has(sys::JVMTI_THREAD_STATE_WAITING) {
        let timed = has(sys::JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT);
        return Some(if has(sys::JVMTI_THREAD_STATE_SLEEPING) {
            ThreadState::Sleeping
        } else if has(sys::JVMTI_THREAD_STATE_PARKED) {
            if timed {
                ThreadState::TimedParked
            } else {
                ThreadState::Parked
            }
        } else if timed {
            // `Object.wait`, `Thread.join`, or a way of waiting a later JDK adds.
            ThreadState::TimedWaiting
        } else {
            ThreadState::Waiting
        });
    }
    // Runnable includes a thread in native code (`IN_NATIVE`), as in a dump.
    has(sys::JVMTI_THREAD_STATE_RUNNABLE).then_some(ThreadState::Runnable)
}

/// A monitor object's class as a dump's lock line prints it: `com.acme.Shared`, an array as
/// `[Ljava.lang.Object;`, and a `Class` object (a static `synchronized` method) as
/// `java.lang.Class for com.acme.Shared` (`for_class`: the signature of the class it stands for).
pub fn monitor_class(signature: &str, for_class: Option<&str>) -> String {
    let name = |sig: &str| class_name_from_signature(sig).unwrap_or_else(|| sig.replace('/', "."));
    let class = name(signature);
    match for_class {
        Some(of) if class == "java.lang.Class" => format!("{class} for {}", name(of)),
        _ => class,
    }
}

/// Why the awaited monitor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
    #[error("JNI: {0}")]
    Jni(#[from] jni::errors::Error),
}

/// The monitor each of `java_ids` (threads blocked on monitor entry) waits for, with its owner,
/// from `ThreadMXBean.getThreadInfo(ids, 0)`: one VM operation for them all. A thread that is no
/// longer blocked, or gone, gets `None`.
pub fn mx_locks(env: &mut Env, java_ids: &[u64]) -> Result<Vec<Option<SampledLock>>, LockError> {
    if java_ids.is_empty() {
        return Ok(Vec::new());
    }
    env.with_local_frame(16 + 4 * java_ids.len(), |env| -> Result<_, LockError> {
        let mx = env
            .call_static_method(
                jni_str!("java/lang/management/ManagementFactory"),
                jni_str!("getThreadMXBean"),
                jni_sig!("()Ljava/lang/management/ThreadMXBean;"),
                &[],
            )?
            .l()?;
        let ids: Vec<i64> = java_ids.iter().map(|&id| id as i64).collect();
        let array: JLongArray = env.new_long_array(ids.len())?;
        array.set_region(env, 0, &ids)?;
        let infos = env
            .call_method(
                &mx,
                jni_str!("getThreadInfo"),
                jni_sig!("([JI)[Ljava/lang/management/ThreadInfo;"),
                &[JValue::Object(&array), JValue::Int(0)],
            )?
            .l()?;
        let infos = env.cast_local::<JObjectArray>(infos)?;
        let mut locks = Vec::with_capacity(java_ids.len());
        for i in 0..java_ids.len() {
            let info = infos.get_element(env, i)?;
            locks.push(mx_lock(env, &info)?);
        }
        Ok(locks)
    })
}

/// The lock of one `ThreadInfo`, if its thread was still blocked on a monitor.
fn mx_lock(env: &mut Env, info: &JObject) -> Result<Option<SampledLock>, LockError> {
    if info.is_null() {
        return Ok(None);
    }
    let state = env
        .call_method(
            info,
            jni_str!("getThreadState"),
            jni_sig!("()Ljava/lang/Thread$State;"),
            &[],
        )?
        .l()?;
    let blocked = env
        .get_static_field(
            jni_str!("java/lang/Thread$State"),
            jni_str!("BLOCKED"),
            jni_sig!("Ljava/lang/Thread$State;"),
        )?
        .l()?;
    if !env.is_same_object(&state, &blocked)? {
        return Ok(None);
    }
    let lock = env
        .call_method(
            info,
            jni_str!("getLockInfo"),
            jni_sig!("()Ljava/lang/management/LockInfo;"),
            &[],
        )?
        .l()?;
    if lock.is_null() {
        return Ok(None);
    }
    let class = env
        .call_method(
            &lock,
            jni_str!("getClassName"),
            jni_sig!("()Ljava/lang/String;"),
            &[],
        )?
        .l()?;
    let class = java_string(env, class)?;
    let owner = env
        .call_method(
            info,
            jni_str!("getLockOwnerName"),
            jni_sig!("()Ljava/lang/String;"),
            &[],
        )?
        .l()?;
    let owner = java_string(env, owner)?;
    Ok(class.map(|class| SampledLock { class, owner }))
}

fn java_string(env: &mut Env, s: JObject) -> Result<Option<String>, LockError> {
    if s.is_null() {
        return Ok(None);
    }
    let s = env.cast_local::<JString>(s)?;
    Ok(Some(s.try_to_string(env)?))
}

/// The monitors already looked up in one sample, so that threads blocked on the same monitor
/// cost one `GetObjectMonitorUsage` between them. Holds local references of the sample's frame;
/// [`Self::release`] deletes them.
pub struct Monitors<'l> {
    seen: Vec<(JObject<'l>, SampledLock)>,
}

/// Owners looked up per sample at most (each lookup is a safepoint); monitors beyond these are
/// named without their owner.
pub const MAX_OWNER_LOOKUPS: usize = 4;

impl<'l> Monitors<'l> {
    pub fn new() -> Monitors<'l> {
        Monitors { seen: Vec::new() }
    }

    /// The monitor `thread` waits to enter, its class and its owner's name; `None` when it waits
    /// for none (any more).
    pub fn awaited(
        &mut self,
        env: &mut Env<'l>,
        jvmti: Jvmti,
        caps: EvidenceCaps,
        thread: &JObject,
    ) -> Result<Option<SampledLock>, LockError> {
        if !caps.contended_monitor {
            return Ok(None);
        }
        let Some(monitor) = jvmti.current_contended_monitor(env, thread)? else {
            return Ok(None);
        };
        for (known, lock) in &self.seen {
            if env.is_same_object(known, &monitor)? {
                let lock = lock.clone();
                env.delete_local_ref(monitor);
                return Ok(Some(lock));
            }
        }
        // What the lookup creates (class, owner, thread info) is released with this frame.
        let owner_wanted = caps.monitor_info && self.seen.len() < MAX_OWNER_LOOKUPS;
        let looked_up = env.with_local_frame(8, |env| -> Result<_, LockError> {
            let class = env.get_object_class(&monitor)?;
            let signature = jvmti.class_signature(&class)?;
            let for_class = if class_name_from_signature(&signature).as_deref()
                == Some("java.lang.Class")
            {
                // SAFETY: the monitor is a `java.lang.Class`; this wrapper only borrows the
                // reference (`monitor` keeps owning it) and is never deleted.
                let as_class =
                    std::mem::ManuallyDrop::new(unsafe { JClass::from_raw(env, monitor.as_raw()) });
                jvmti.class_signature(&as_class).ok()
            } else {
                None
            };
            let owner = if owner_wanted {
                match jvmti.monitor_owner(env, &monitor)? {
                    Some(owner) => Some(jvmti.thread_info(&owner)?.name),
                    None => None,
                }
            } else {
                None
            };
            Ok(SampledLock {
                class: monitor_class(&signature, for_class.as_deref()),
                owner,
            })
        });
        match looked_up {
            Ok(lock) => {
                self.seen.push((monitor, lock.clone()));
                Ok(Some(lock))
            }
            Err(e) => {
                env.delete_local_ref(monitor);
                Err(e)
            }
        }
    }

    /// The `java.util.concurrent` lock `thread` is parked acquiring (`Thread.parkBlocker`), by
    /// its class; `None` when it is parked for nothing (any more).
    pub fn park_blocker(
        &mut self,
        env: &mut Env<'l>,
        jvmti: Jvmti,
        thread: &JObject,
    ) -> Result<Option<SampledLock>, LockError> {
        env.with_local_frame(4, |env| -> Result<_, LockError> {
            let blocker = env
                .get_field(
                    thread,
                    jni_str!("parkBlocker"),
                    jni_sig!("Ljava/lang/Object;"),
                )?
                .l()?;
            if blocker.is_null() {
                return Ok(None);
            }
            let class = env.get_object_class(&blocker)?;
            let signature = jvmti.class_signature(&class)?;
            Ok(Some(SampledLock {
                class: monitor_class(&signature, None),
                owner: None,
            }))
        })
    }

    /// Deletes the monitors' local references.
    pub fn release(self, env: &Env<'l>) {
        for (monitor, _) in self.seen {
            env.delete_local_ref(monitor);
        }
    }
}

impl Default for Monitors<'_> {
    fn default() -> Self {
        Monitors::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::*;

    const ALIVE: jint = JVMTI_THREAD_STATE_ALIVE;
    const WAITING: jint = ALIVE | JVMTI_THREAD_STATE_WAITING;

    #[test]
    fn jvmti_states_become_the_states_dumps_print() {
        // The bit sets HotSpot gives (JvmtiEnvBase::get_thread_state) for each java.lang.Thread
        // status, with the text `Thread.print` shows for the same thread.
        let cases = [
            (ALIVE | JVMTI_THREAD_STATE_RUNNABLE, "RUNNABLE"),
            (
                ALIVE | JVMTI_THREAD_STATE_RUNNABLE | JVMTI_THREAD_STATE_IN_NATIVE,
                "RUNNABLE",
            ),
            (
                ALIVE | JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER,
                "BLOCKED (on object monitor)",
            ),
            (
                WAITING | JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT | JVMTI_THREAD_STATE_SLEEPING,
                "TIMED_WAITING (sleeping)",
            ),
            (
                WAITING | JVMTI_THREAD_STATE_WAITING_INDEFINITELY | JVMTI_THREAD_STATE_PARKED,
                "WAITING (parking)",
            ),
            (
                WAITING | JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT | JVMTI_THREAD_STATE_PARKED,
                "TIMED_WAITING (parking)",
            ),
            (
                WAITING
                    | JVMTI_THREAD_STATE_WAITING_INDEFINITELY
                    | JVMTI_THREAD_STATE_IN_OBJECT_WAIT,
                "WAITING (on object monitor)",
            ),
            (
                WAITING
                    | JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT
                    | JVMTI_THREAD_STATE_IN_OBJECT_WAIT,
                "TIMED_WAITING (on object monitor)",
            ),
            (JVMTI_THREAD_STATE_TERMINATED, "TERMINATED"),
            (0, "NEW"),
        ];
        for (bits, printed) in cases {
            assert_eq!(
                thread_state(bits),
                Some(ThreadState::parse(printed)),
                "{bits:#x}"
            );
        }
        // Alive but in no state JVMTI names.
        assert_eq!(thread_state(ALIVE), None);
        // Interrupted or suspended does not change the state.
        assert_eq!(
            thread_state(ALIVE | JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER | 0x0030_0000),
            Some(ThreadState::Blocked)
        );
    }

    #[test]
    fn states_give_the_activity_a_dump_would() {
        use bpmon_stacks::activity::activity;
        use bpmon_stacks::threaddump::frames_from_lines;
        let of = |bits: jint, lines: &[&str]| {
            activity(
                thread_state(bits),
                &frames_from_lines(lines.iter().copied()),
            )
        };
        let spin = ["at bpmonfixture.Spin.spin(Spin.java:9)"];
        assert_eq!(
            of(ALIVE | JVMTI_THREAD_STATE_RUNNABLE, &spin),
            Activity::Running
        );
        let blocked = [
            "at bpmonfixture.Contended.enter(Contended.java:20)",
            "at bpmonfixture.Contended.run(Contended.java:12)",
        ];
        assert_eq!(
            of(
                ALIVE | JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER,
                &blocked
            ),
            Activity::Lock
        );
        let sleeping = [
            "at java.lang.Thread.sleep(Native Method)",
            "at bpmonfixture.Sleeper.sleep(Sleeper.java:7)",
        ];
        let sleep_bits =
            WAITING | JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT | JVMTI_THREAD_STATE_SLEEPING;
        assert_eq!(of(sleep_bits, &sleeping), Activity::Sleep);
        // A timed park in user code that is no lock: off CPU on purpose.
        let throttle = [
            "at jdk.internal.misc.Unsafe.park(Native Method)",
            "at java.util.concurrent.locks.LockSupport.parkNanos(LockSupport.java:252)",
            "at com.acme.Throttle.map(Throttle.java:5)",
        ];
        let parked = WAITING | JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT | JVMTI_THREAD_STATE_PARKED;
        assert_eq!(of(parked, &throttle), Activity::Sleep);
        // A state that cannot be read leaves only the frames to go by, as a dump without a
        // state line does.
        assert_eq!(of(ALIVE, &spin), Activity::Running);
    }

    #[test]
    fn monitor_classes_read_like_a_dumps_lock_lines() {
        assert_eq!(monitor_class("Lcom/acme/Shared;", None), "com.acme.Shared");
        assert_eq!(
            monitor_class("Ljava/lang/Class;", Some("Lcom/acme/Shared$Inner;")),
            "java.lang.Class for com.acme.Shared$Inner"
        );
        assert_eq!(monitor_class("Ljava/lang/Class;", None), "java.lang.Class");
        assert_eq!(
            monitor_class("[Ljava/lang/Object;", None),
            "[Ljava.lang.Object;"
        );
        assert_eq!(
            monitor_class("Lcom/acme/Lock;", Some("Lignored;")),
            "com.acme.Lock"
        );
    }
}
