//! A task thread's exact identity, read from Flink's own `Task` object through JNI.
//!
//! Flink builds each task's thread as `new Thread(TASK_THREADS_GROUP, task, taskNameWithSubtask)`
//! (`org.apache.flink.runtime.taskmanager.Task`, 1.18 to 2.3 alike), so the thread's `Runnable`
//! is the `Task`. The `Runnable` is `Thread.target` up to JDK 18 and `Thread.holder.task` from
//! JDK 19 (`Thread$FieldHolder`); both are tried. Then the `Task`'s public accessors give the
//! ids: `getJobID()`, `getJobVertexId()`, `getExecutionId()` (their `toString()` is the id Flink's
//! REST API shows) and `getTaskInfo()` → `getIndexOfThisSubtask()`, `getAttemptNumber()`.
//!
//! Every JNI call that can throw is followed by a check: a pending exception is described (its
//! class) and cleared before anything else is called, and the step that failed is named.

use bpmon_proto::inprocess::TaskRef;
use jni::objects::{JObject, JString};
use jni::signature::{FieldSignature, MethodSignature};
use jni::strings::JNIStr;
use jni::{jni_sig, jni_str, Env};

use crate::jvmti::{Jvmti, JvmtiError};
use crate::stacks::class_name_from_signature;

/// Flink's task class.
pub const TASK_CLASS: &str = "org.apache.flink.runtime.taskmanager.Task";

/// Why a task's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the thread has no Runnable (neither Thread.holder.task nor Thread.target is set)")]
    NoRunnable,
    #[error("the thread's Runnable is a {0}, not a {TASK_CLASS}")]
    NotATask(String),
    #[error("{step}: {message}")]
    Jni { step: &'static str, message: String },
    #[error("{step}: returned null")]
    Null { step: &'static str },
    #[error("{step}: {value} is negative")]
    Negative { step: &'static str, value: i32 },
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
}

/// Clears a pending Java exception, if any, and says what it was.
pub fn clear_exception(env: &mut Env) -> Option<String> {
    if !env.exception_check() {
        return None;
    }
    let thrown = env.exception_occurred();
    env.exception_clear();
    let description = thrown.and_then(|t| {
        let class = env.get_object_class(&t).ok()?;
        let name = env
            .call_method(
                &class,
                jni_str!("getName"),
                jni_sig!("()Ljava/lang/String;"),
                &[],
            )
            .ok()
            .and_then(|v| v.l().ok())
            .and_then(|s| env.cast_local::<JString>(s).ok())
            .and_then(|s| s.try_to_string(env).ok());
        // Describing must not leave an exception of its own behind.
        env.exception_clear();
        name
    });
    Some(description.unwrap_or_else(|| "a Java exception".to_string()))
}

/// Turns a JNI result into ours, clearing (and naming) any exception it left pending.
pub(crate) fn check<T>(
    env: &mut Env,
    step: &'static str,
    r: jni::errors::Result<T>,
) -> Result<T, IdentityError> {
    match r {
        Ok(v) => match clear_exception(env) {
            // JNI should never return a value with an exception pending, but be sure.
            Some(thrown) => Err(IdentityError::Jni {
                step,
                message: format!("threw {thrown}"),
            }),
            None => Ok(v),
        },
        Err(e) => {
            let message = match clear_exception(env) {
                Some(thrown) => format!("threw {thrown}"),
                None => e.to_string(),
            };
            Err(IdentityError::Jni { step, message })
        }
    }
}

fn object_field<'l>(
    env: &mut Env<'l>,
    obj: &JObject,
    step: &'static str,
    name: &JNIStr,
    sig: &FieldSignature,
) -> Result<JObject<'l>, IdentityError> {
    let r = env.get_field(obj, name, sig).and_then(|v| v.l());
    check(env, step, r)
}

pub(crate) fn call_object<'l>(
    env: &mut Env<'l>,
    obj: &JObject,
    step: &'static str,
    name: &JNIStr,
    sig: &MethodSignature,
) -> Result<JObject<'l>, IdentityError> {
    let r = env.call_method(obj, name, sig, &[]).and_then(|v| v.l());
    let o = check(env, step, r)?;
    if o.is_null() {
        return Err(IdentityError::Null { step });
    }
    Ok(o)
}

fn call_u32(
    env: &mut Env,
    obj: &JObject,
    step: &'static str,
    name: &JNIStr,
) -> Result<u32, IdentityError> {
    let r = env
        .call_method(obj, name, jni_sig!("()I"), &[])
        .and_then(|v| v.i());
    let value = check(env, step, r)?;
    u32::try_from(value).map_err(|_| IdentityError::Negative { step, value })
}

/// `obj.toString()`.
fn id_string(env: &mut Env, obj: &JObject, step: &'static str) -> Result<String, IdentityError> {
    let s = call_object(
        env,
        obj,
        step,
        jni_str!("toString"),
        &jni_sig!("()Ljava/lang/String;"),
    )?;
    let s = env.cast_local::<JString>(s);
    let s = check(env, step, s)?;
    let text = s.try_to_string(env);
    check(env, step, text)
}

/// The thread's `Runnable`, on JDK 19+ and on older JDKs.
fn runnable<'l>(env: &mut Env<'l>, thread: &JObject) -> Result<JObject<'l>, IdentityError> {
    let holder = object_field(
        env,
        thread,
        "Thread.holder",
        jni_str!("holder"),
        &jni_sig!("Ljava/lang/Thread$FieldHolder;"),
    );
    let task = match holder {
        Ok(holder) if !holder.is_null() => object_field(
            env,
            &holder,
            "Thread.holder.task",
            jni_str!("task"),
            &jni_sig!("Ljava/lang/Runnable;"),
        )?,
        // JDK ≤ 18 has no `holder` (the failed lookup's exception is already cleared).
        _ => object_field(
            env,
            thread,
            "Thread.target",
            jni_str!("target"),
            &jni_sig!("Ljava/lang/Runnable;"),
        )?,
    };
    if task.is_null() {
        return Err(IdentityError::NoRunnable);
    }
    Ok(task)
}

/// The `Task` a main task thread runs (a local reference of the caller's frame).
pub(crate) fn task_object<'l>(
    env: &mut Env<'l>,
    jvmti: Jvmti,
    thread: &JObject,
) -> Result<JObject<'l>, IdentityError> {
    let task = runnable(env, thread)?;
    let class = env.get_object_class(&task);
    let class = check(env, "Runnable.getClass", class)?;
    let class_name = jvmti.class_signature(&class)?;
    let class_name = class_name_from_signature(&class_name).unwrap_or(class_name);
    if class_name != TASK_CLASS {
        return Err(IdentityError::NotATask(class_name));
    }
    Ok(task)
}

/// Reads the identity of the task a main task thread runs. Runs in its own local frame.
pub fn read_task_ref(
    env: &mut Env,
    jvmti: Jvmti,
    thread: &JObject,
) -> Result<TaskRef, IdentityError> {
    env.with_local_frame(16, |env| -> Result<TaskRef, IdentityError> {
        let task = task_object(env, jvmti, thread)?;
        let job = call_object(
            env,
            &task,
            "Task.getJobID",
            jni_str!("getJobID"),
            &jni_sig!("()Lorg/apache/flink/api/common/JobID;"),
        )?;
        let vertex = call_object(
            env,
            &task,
            "Task.getJobVertexId",
            jni_str!("getJobVertexId"),
            &jni_sig!("()Lorg/apache/flink/runtime/jobgraph/JobVertexID;"),
        )?;
        let execution = call_object(
            env,
            &task,
            "Task.getExecutionId",
            jni_str!("getExecutionId"),
            &jni_sig!("()Lorg/apache/flink/runtime/executiongraph/ExecutionAttemptID;"),
        )?;
        let info = call_object(
            env,
            &task,
            "Task.getTaskInfo",
            jni_str!("getTaskInfo"),
            &jni_sig!("()Lorg/apache/flink/api/common/TaskInfo;"),
        )?;
        Ok(TaskRef {
            job_id: id_string(env, &job, "JobID.toString")?,
            vertex_id: id_string(env, &vertex, "JobVertexID.toString")?,
            execution_attempt_id: id_string(env, &execution, "ExecutionAttemptID.toString")?,
            subtask: call_u32(
                env,
                &info,
                "TaskInfo.getIndexOfThisSubtask",
                jni_str!("getIndexOfThisSubtask"),
            )?,
            attempt: call_u32(
                env,
                &info,
                "TaskInfo.getAttemptNumber",
                jni_str!("getAttemptNumber"),
            )?,
        })
    })
}

impl From<jni::errors::Error> for IdentityError {
    /// Only for `with_local_frame`'s own failure (PushLocalFrame); every call inside goes
    /// through `check`.
    fn from(e: jni::errors::Error) -> Self {
        IdentityError::Jni {
            step: "PushLocalFrame",
            message: e.to_string(),
        }
    }
}
