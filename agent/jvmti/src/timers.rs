//! Flink's own per-task time accounting, read in-process: the three `TimerGauge`s of a task's
//! `TaskIOMetricGroup` (idle, soft and hard back-pressured time; busy time is what none of them
//! measures).
//!
//! Flink starts and stops these timers on the task thread itself, at the very points where it
//! starts and stops waiting, so reading them says *exactly* what a task is doing at an instant —
//! soft back-pressure and idleness, which park in the same mailbox frames, are told apart without
//! any metric merge — and their accumulated totals give exact time shares over any window.
//!
//! # How they are found (Flink 1.18.1, 1.20.3 and 2.3.0, checked with `javap`)
//!
//! Through public accessors only, never by field offsets: the thread's `Runnable` is the `Task`
//! ([`crate::identity`]), then `Task.getMetricGroup()` → `TaskMetricGroup.getIOMetricGroup()` →
//! `getIdleTimeMsPerSecond()`, `getSoftBackPressuredTimePerSecond()`,
//! `getHardBackPressuredTimePerSecond()`, each an `org.apache.flink.runtime.metrics.TimerGauge`.
//! A Flink without these accessors (older than 1.15) has no timers; the failure is said once
//! and the task is sampled as before.
//!
//! # How they are read
//!
//! A `TimerGauge`'s methods are `synchronized` and its state is three `long` fields:
//! `accumulatedCount` (ms measured up to `currentUpdateTS`), `currentMeasurementStartTS` (0 when
//! not measuring) and `currentUpdateTS` (where the running measurement was last folded in; the
//! metric view folds it every few seconds). Holding the gauge's monitor, as its own methods do,
//! the reader takes the three fields by name (`GetFieldID` on the gauge's class) and the clock
//! Flink uses (`System.currentTimeMillis`, the realtime clock), so the total is exact at that
//! instant: `accumulatedCount + (measuring ? now − currentUpdateTS : 0)`
//! ([`TimerMethod::Fields`]).
//!
//! A sample that needs only the state (continuous watching between a window's edges) reads one
//! field per gauge, `currentMeasurementStartTS`, without the monitor and straight through the
//! JNI function table ([`TimerReader::state`]): a `long` field is read whole, and which timer
//! runs needs no other field to agree with. Entering a monitor from JNI inflates it, and that,
//! with two JNI calls and an exception check per field, was most of the cost of a read. Between
//! a window's edges all of a TaskManager's tasks are read that way in one batch
//! ([`TimerReader::states`]): the reads go back to back, so that their cache misses overlap.
//!
//! Should a Flink rename the fields, the public `isMeasuring()` and `getAccumulatedCount()` are
//! called instead ([`TimerMethod::Methods`]): the state is still exact, but the total lags by the
//! running measurement until the metric view folds it in (up to its update period, 5 s).

use bpmon_proto::time::now_ms;
use bpmon_proto::{RunningTimer, TimerMethod, TimerReading};
use jni::ids::{JFieldID, JMethodID};
use jni::objects::{Global, JObject};
use jni::signature::{JavaType, Primitive, ReturnType};
use jni::{jni_sig, jni_str, Env};

use crate::identity::{call_object, check, task_object, IdentityError};
use crate::jvmti::Jvmti;

/// The three timers of one task, held as global references (deleted when dropped, which must
/// happen on a thread attached to the VM: the sampler thread).
#[derive(Debug)]
pub struct TaskTimers {
    idle: Global<JObject<'static>>,
    soft: Global<JObject<'static>>,
    hard: Global<JObject<'static>>,
}

/// Finds the timers of the task a main task thread runs. Runs in its own local frame.
pub fn find(env: &mut Env, jvmti: Jvmti, thread: &JObject) -> Result<TaskTimers, IdentityError> {
    env.with_local_frame(16, |env| -> Result<TaskTimers, IdentityError> {
        let task = task_object(env, jvmti, thread)?;
        let group = call_object(
            env,
            &task,
            "Task.getMetricGroup",
            jni_str!("getMetricGroup"),
            &jni_sig!("()Lorg/apache/flink/runtime/metrics/groups/TaskMetricGroup;"),
        )?;
        let io = call_object(
            env,
            &group,
            "TaskMetricGroup.getIOMetricGroup",
            jni_str!("getIOMetricGroup"),
            &jni_sig!("()Lorg/apache/flink/runtime/metrics/groups/TaskIOMetricGroup;"),
        )?;
        let sig = jni_sig!("()Lorg/apache/flink/runtime/metrics/TimerGauge;");
        let idle = call_object(
            env,
            &io,
            "TaskIOMetricGroup.getIdleTimeMsPerSecond",
            jni_str!("getIdleTimeMsPerSecond"),
            &sig,
        )?;
        let soft = call_object(
            env,
            &io,
            "TaskIOMetricGroup.getSoftBackPressuredTimePerSecond",
            jni_str!("getSoftBackPressuredTimePerSecond"),
            &sig,
        )?;
        let hard = call_object(
            env,
            &io,
            "TaskIOMetricGroup.getHardBackPressuredTimePerSecond",
            jni_str!("getHardBackPressuredTimePerSecond"),
            &sig,
        )?;
        let global = |env: &mut Env, o: JObject, step| {
            let r = env.new_global_ref(o);
            check(env, step, r)
        };
        Ok(TaskTimers {
            idle: global(env, idle, "NewGlobalRef(idle timer)")?,
            soft: global(env, soft, "NewGlobalRef(soft timer)")?,
            hard: global(env, hard, "NewGlobalRef(hard timer)")?,
        })
    })
}

/// How a `TimerGauge` is read, learnt from its class on first use.
#[derive(Debug, Clone, Copy)]
enum Access {
    Fields {
        accumulated: JFieldID,
        start: JFieldID,
        update: JFieldID,
    },
    Methods {
        is_measuring: JMethodID,
        accumulated: JMethodID,
    },
}

/// One timer at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GaugeState {
    measuring: bool,
    accumulated_ms: u64,
}

/// Reads timers; keeps what it learnt of the `TimerGauge` class.
#[derive(Debug, Default)]
pub struct TimerReader {
    access: Option<Access>,
    /// Why finding a task's timers failed, each reason once.
    failures: std::collections::HashSet<String>,
}

impl TimerReader {
    pub fn new() -> TimerReader {
        TimerReader::default()
    }

    /// Whether this reason for not finding timers is new (a Flink without them fails the same
    /// way for every task).
    pub fn first_failure(&mut self, reason: &str) -> bool {
        self.failures.len() < 64 && self.failures.insert(reason.to_string())
    }

    fn access(&mut self, env: &mut Env, timers: &TaskTimers) -> Result<Access, IdentityError> {
        match self.access {
            Some(a) => Ok(a),
            None => {
                let a = learn(env, timers.idle.as_obj())?;
                self.access = Some(a);
                Ok(a)
            }
        }
    }

    /// How the timers are read (once one was).
    pub fn method(&self) -> Option<TimerMethod> {
        self.access.map(Access::method)
    }

    /// Which of a task's timers runs now, and nothing else: one field per gauge, no monitor.
    /// `last`: the state the task was in at its previous read, looked at first (a task mostly
    /// stays in its state, and each read of a gauge the task thread keeps writing is a cache
    /// miss); the others in the order [`running`] ranks them.
    pub fn state(
        &mut self,
        env: &mut Env,
        timers: &TaskTimers,
        last: Option<RunningTimer>,
    ) -> Result<Option<RunningTimer>, IdentityError> {
        match self.access(env, timers)? {
            Access::Fields { start, .. } => {
                // Flink runs one timer at a time: the first found running is the one.
                for timer in order(last) {
                    // SAFETY: `start` is the id of a `long` field of this object's class, and a
                    // field read cannot throw.
                    if unsafe { long_field(env, gauge(timers, timer).as_obj(), start) } != 0 {
                        return Ok(Some(timer));
                    }
                }
                Ok(None)
            }
            access @ Access::Methods { .. } => {
                let hard = read_gauge(env, access, timers.hard.as_obj(), 0)?.measuring;
                let soft = read_gauge(env, access, timers.soft.as_obj(), 0)?.measuring;
                let idle = read_gauge(env, access, timers.idle.as_obj(), 0)?.measuring;
                Ok(running(idle, soft, hard))
            }
        }
    }

    /// Which timer runs, for many tasks at once: the reads of [`TimerReader::state`], issued back
    /// to back in passes (each task's last state first, then its other gauges for the tasks
    /// still undecided) so that the CPU overlaps their cache misses. A gauge its task thread
    /// keeps writing is a miss from another core, ~300 ns read after read; in a tight loop
    /// several are in flight at once. `None` when the gauges are read by their methods (each
    /// task is then read with [`TimerReader::state`]).
    pub fn states(
        &mut self,
        env: &mut Env,
        tasks: &[(&TaskTimers, Option<RunningTimer>)],
    ) -> Result<Option<Vec<Option<RunningTimer>>>, IdentityError> {
        let Some((first, _)) = tasks.first() else {
            return Ok(Some(Vec::new()));
        };
        let Access::Fields { start, .. } = self.access(env, first)? else {
            return Ok(None);
        };
        let raw = env.get_raw();
        let mut found = vec![None; tasks.len()];
        // Each task still undecided, with the order its gauges are looked at.
        let mut pending: Vec<(usize, [RunningTimer; 3])> = tasks
            .iter()
            .enumerate()
            .map(|(i, (_, last))| (i, order(*last)))
            .collect();
        let mut objects = Vec::with_capacity(tasks.len());
        let mut values = Vec::with_capacity(tasks.len());
        for pass in 0..3 {
            objects.clear();
            objects.extend(
                pending
                    .iter()
                    .map(|(i, order)| gauge(tasks[*i].0, order[pass]).as_obj().as_raw()),
            );
            values.clear();
            // SAFETY: `raw` is this thread's live JNIEnv; every object is a live global
            // reference to a `TimerGauge`, and `start` the id of its `long` field.
            values.extend(
                objects
                    .iter()
                    .map(|&o| unsafe { ((**raw).v1_1.GetLongField)(raw, o, start.into_raw()) }),
            );
            let mut undecided = 0;
            for (k, v) in values.iter().enumerate() {
                let (i, order) = pending[k];
                if *v != 0 {
                    found[i] = Some(order[pass]);
                } else {
                    pending[undecided] = (i, order);
                    undecided += 1;
                }
            }
            pending.truncate(undecided);
            if pending.is_empty() {
                break;
            }
        }
        Ok(Some(found))
    }

    /// Reads a task's three timers, totals exact at `now_ms` (the realtime clock, ms). Call
    /// inside a JNI local frame.
    pub fn read_at(
        &mut self,
        env: &mut Env,
        timers: &TaskTimers,
        now_ms: u64,
    ) -> Result<TimerReading, IdentityError> {
        self.read_gauges(env, timers, Some(now_ms))
    }

    /// Reads a task's three timers now, each gauge at the moment its monitor is held. Call
    /// inside a JNI local frame.
    pub fn read(
        &mut self,
        env: &mut Env,
        timers: &TaskTimers,
    ) -> Result<TimerReading, IdentityError> {
        self.read_gauges(env, timers, None)
    }

    fn read_gauges(
        &mut self,
        env: &mut Env,
        timers: &TaskTimers,
        at_ms: Option<u64>,
    ) -> Result<TimerReading, IdentityError> {
        let access = self.access(env, timers)?;
        let now = at_ms.map_or(-1, |ms| ms as i64);
        let idle = read_gauge(env, access, timers.idle.as_obj(), now)?;
        let soft = read_gauge(env, access, timers.soft.as_obj(), now)?;
        let hard = read_gauge(env, access, timers.hard.as_obj(), now)?;
        Ok(TimerReading {
            at_ms: at_ms.unwrap_or_else(now_ms),
            running: running(idle.measuring, soft.measuring, hard.measuring),
            idle_ms: idle.accumulated_ms,
            soft_ms: soft.accumulated_ms,
            hard_ms: hard.accumulated_ms,
            method: access.method(),
        })
    }
}

impl Access {
    fn method(self) -> TimerMethod {
        match self {
            Access::Fields { .. } => TimerMethod::Fields,
            Access::Methods { .. } => TimerMethod::Methods,
        }
    }
}

/// The order a task's gauges are looked at: its last state first (a task mostly stays in its
/// state), then the others from the hardest.
fn order(last: Option<RunningTimer>) -> [RunningTimer; 3] {
    let mut order = [RunningTimer::Hard, RunningTimer::Soft, RunningTimer::Idle];
    if let Some(i) = last.and_then(|l| order.iter().position(|t| *t == l)) {
        order[..=i].rotate_right(1);
    }
    order
}

fn gauge(timers: &TaskTimers, timer: RunningTimer) -> &Global<JObject<'static>> {
    match timer {
        RunningTimer::Hard => &timers.hard,
        RunningTimer::Soft => &timers.soft,
        RunningTimer::Idle => &timers.idle,
    }
}

/// Flink starts one timer at a time; should two ever overlap, the harder one speaks.
fn running(idle: bool, soft: bool, hard: bool) -> Option<RunningTimer> {
    if hard {
        Some(RunningTimer::Hard)
    } else if soft {
        Some(RunningTimer::Soft)
    } else if idle {
        Some(RunningTimer::Idle)
    } else {
        None
    }
}

/// `GetLongField` straight through the JNI function table: the `jni` crate's wrapper checks for
/// a pending exception after every call, which doubles the cost of a read that cannot throw.
///
/// # Safety
/// `id` must be the id of a `long` instance field of `obj`'s class.
pub unsafe fn long_field(env: &Env, obj: &JObject, id: JFieldID) -> i64 {
    let raw = env.get_raw();
    // SAFETY: `raw` is this thread's live JNIEnv; the caller vouches for `obj` and `id`.
    unsafe { ((**raw).v1_1.GetLongField)(raw, obj.as_raw(), id.into_raw()) }
}

/// Field ids of the gauge's class where its fields are the ones known, else its methods.
fn learn(env: &mut Env, gauge: &JObject) -> Result<Access, IdentityError> {
    let class = env.get_object_class(gauge);
    let class = check(env, "TimerGauge.getClass", class)?;
    let field = |env: &mut Env, name| {
        let r = env.get_field_id(&class, name, jni_sig!("J"));
        check(env, "GetFieldID", r)
    };
    let fields = (|| {
        Ok::<_, IdentityError>(Access::Fields {
            accumulated: field(env, jni_str!("accumulatedCount"))?,
            start: field(env, jni_str!("currentMeasurementStartTS"))?,
            update: field(env, jni_str!("currentUpdateTS"))?,
        })
    })();
    if let Ok(f) = fields {
        return Ok(f);
    }
    let is_measuring = env.get_method_id(&class, jni_str!("isMeasuring"), jni_sig!("()Z"));
    let is_measuring = check(env, "TimerGauge.isMeasuring", is_measuring)?;
    let accumulated = env.get_method_id(&class, jni_str!("getAccumulatedCount"), jni_sig!("()J"));
    let accumulated = check(env, "TimerGauge.getAccumulatedCount", accumulated)?;
    Ok(Access::Methods {
        is_measuring,
        accumulated,
    })
}

/// One gauge's state and total; with the fields, the total is exact at `now` (epoch ms), or at
/// the moment its monitor is held when `now` is negative.
fn read_gauge(
    env: &mut Env,
    access: Access,
    gauge: &JObject,
    now: i64,
) -> Result<GaugeState, IdentityError> {
    match access {
        Access::Fields {
            accumulated,
            start,
            update,
        } => {
            let guard = env.lock_obj(gauge);
            let _guard = check(env, "MonitorEnter(TimerGauge)", guard)?;
            let now = if now < 0 {
                bpmon_proto::time::now_ms() as i64
            } else {
                now
            };
            let long = |env: &mut Env, id: JFieldID, step| {
                // SAFETY: the ids were taken from this object's class for fields of type long.
                let r = unsafe {
                    env.get_field_unchecked(gauge, id, JavaType::Primitive(Primitive::Long))
                }
                .and_then(|v| v.j());
                check(env, step, r)
            };
            let acc = long(env, accumulated, "TimerGauge.accumulatedCount")?;
            let started = long(env, start, "TimerGauge.currentMeasurementStartTS")?;
            let updated = long(env, update, "TimerGauge.currentUpdateTS")?;
            Ok(exact_total(acc, started, updated, now))
        }
        Access::Methods {
            is_measuring,
            accumulated,
        } => {
            // SAFETY: both ids were taken from this object's class with these signatures.
            let measuring = unsafe {
                env.call_method_unchecked(
                    gauge,
                    is_measuring,
                    ReturnType::Primitive(Primitive::Boolean),
                    &[],
                )
            }
            .and_then(|v| v.z());
            let measuring = check(env, "TimerGauge.isMeasuring", measuring)?;
            let acc = unsafe {
                env.call_method_unchecked(
                    gauge,
                    accumulated,
                    ReturnType::Primitive(Primitive::Long),
                    &[],
                )
            }
            .and_then(|v| v.j());
            let acc = check(env, "TimerGauge.getAccumulatedCount", acc)?;
            Ok(GaugeState {
                measuring,
                accumulated_ms: u64::try_from(acc).unwrap_or(0),
            })
        }
    }
}

/// A gauge's total at `now` from its fields: what it folded in so far plus the running
/// measurement since it was last folded. A clock step backwards adds nothing rather than
/// subtracting.
fn exact_total(accumulated: i64, started: i64, updated: i64, now: i64) -> GaugeState {
    let measuring = started != 0;
    let running = if measuring {
        now.saturating_sub(updated).max(0)
    } else {
        0
    };
    GaugeState {
        measuring,
        accumulated_ms: u64::try_from(accumulated.saturating_add(running)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_looked_at_in_its_last_state_first() {
        use RunningTimer::*;
        assert_eq!(order(None), [Hard, Soft, Idle]);
        assert_eq!(order(Some(Hard)), [Hard, Soft, Idle]);
        assert_eq!(order(Some(Soft)), [Soft, Hard, Idle]);
        assert_eq!(order(Some(Idle)), [Idle, Hard, Soft]);
    }

    #[test]
    fn a_running_measurement_counts_up_to_now() {
        // Folded in up to t=1000 with 400 ms; measuring since 900, now 1250.
        let s = exact_total(400, 900, 1000, 1250);
        assert_eq!(
            s,
            GaugeState {
                measuring: true,
                accumulated_ms: 650
            }
        );
        // Not measuring: the folded total is the total.
        assert_eq!(exact_total(400, 0, 0, 1250).accumulated_ms, 400);
        // A clock that stepped back does not take time away.
        assert_eq!(exact_total(400, 900, 1000, 990).accumulated_ms, 400);
    }
}
