//! A thin safe layer over the JVMTI environment: each function the library uses, returning a
//! `Result` whose error names the function and the `jvmtiError`, with every JVMTI-allocated
//! buffer freed by `Deallocate` on drop ([`JvmtiBuf`]).
//!
//! JVMTI functions are callable from any thread attached to the VM; the environment pointer is
//! process-wide and never freed (the library never disposes of it: a JVM loads an agent library
//! once and keeps it), so [`Jvmti`] is `Copy + Send + Sync`.

use std::ffi::{c_char, c_uchar, CStr};
use std::ptr::{self, NonNull};

use jni::objects::{JClass, JObject};
use jni::strings::JNIStr;
use jni::Env;

use crate::sys::{self, jint, jvmtiEnv, jvmtiError, JvmtiInterface};

/// A JVMTI call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{function}: {} ({code})", sys::error_name(*code))]
pub struct JvmtiError {
    pub function: &'static str,
    pub code: jvmtiError,
}

impl JvmtiError {
    pub fn is(&self, code: jvmtiError) -> bool {
        self.code == code
    }
}

/// The JVMTI environment this library obtained from `GetEnv`.
#[derive(Debug, Clone, Copy)]
pub struct Jvmti(NonNull<jvmtiEnv>);

// SAFETY: a jvmtiEnv may be used from any thread attached to the VM (JVMTI spec, "Environments");
// JVMTI functions do their own locking.
unsafe impl Send for Jvmti {}
unsafe impl Sync for Jvmti {}

/// A JVMTI version, `major.minor.micro`, as `GetVersionNumber` encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub jint);

impl Version {
    pub fn major(self) -> i32 {
        (self.0 & 0x0FFF_0000) >> 16
    }
    pub fn minor(self) -> i32 {
        (self.0 & 0x0000_FF00) >> 8
    }
    pub fn micro(self) -> i32 {
        self.0 & 0xFF
    }
    pub fn is_jvmti(self) -> bool {
        self.0 & sys::JVMTI_VERSION_MASK_INTERFACE_TYPE == sys::JVMTI_VERSION_INTERFACE_JVMTI
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.micro())
    }
}

/// A `jmethodID` JVMTI handed out (from `GetStackTrace`). HotSpot keeps every `jmethodID`
/// valid for the life of the VM (one of an unloaded class answers `JVMTI_ERROR_INVALID_METHODID`),
/// so once obtained it is safe to pass back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodId(sys::jmethodID);

impl MethodId {
    /// # Safety
    /// `raw` must be a `jmethodID` the VM gave out (JNI or JVMTI), never a made-up pointer.
    pub unsafe fn from_raw(raw: sys::jmethodID) -> MethodId {
        MethodId(raw)
    }

    pub fn as_raw(self) -> sys::jmethodID {
        self.0
    }
}

/// A buffer JVMTI allocated for us; `Deallocate`d on drop.
pub struct JvmtiBuf<T> {
    jvmti: Jvmti,
    ptr: *mut T,
    len: usize,
}

impl<T> JvmtiBuf<T> {
    fn new(jvmti: Jvmti, ptr: *mut T, len: usize) -> Self {
        JvmtiBuf { jvmti, ptr, len }
    }

    pub fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: JVMTI returned `len` initialised elements at `ptr`, alive until Deallocate.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> Drop for JvmtiBuf<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: JVMTI allocated `ptr` and nothing uses it after this.
            // Nothing useful can be done if Deallocate fails (only in the dead phase).
            let _ = unsafe { self.jvmti.deallocate(self.ptr.cast()) };
        }
    }
}

/// A string JVMTI allocated (modified UTF-8), converted and freed at once.
fn take_string(jvmti: Jvmti, p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let buf = JvmtiBuf::new(jvmti, p, 0);
    // SAFETY: JVMTI strings are NUL-terminated modified UTF-8, alive until Deallocate (`buf`).
    let s = unsafe { JNIStr::from_ptr(buf.ptr) }.to_str().into_owned();
    Some(s)
}

/// Calls one slot of the function table: `Err` if the slot is null or the call fails.
macro_rules! call {
    ($self:expr, $slot:ident, $name:literal $(, $arg:expr)* ) => {{
        let jvmti: &Jvmti = &$self;
        match jvmti.table().$slot {
            // A null slot: the VM does not offer the function.
            None => Err(JvmtiError { function: $name, code: sys::JVMTI_ERROR_NOT_AVAILABLE }),
            Some(f) => {
                // SAFETY: the slot has the type jvmti.h declares (checked by sys's tests) and
                // the arguments are those the caller built for it.
                let code = unsafe { f(jvmti.env() $(, $arg)*) };
                if code == sys::JVMTI_ERROR_NONE {
                    Ok(())
                } else {
                    Err(JvmtiError { function: $name, code })
                }
            }
        }
    }};
}

/// What `GetThreadInfo` says of a thread; the JNI local references it also returns are the
/// caller's to delete (see [`Jvmti::thread_info`]).
#[derive(Debug)]
pub struct ThreadInfo {
    pub name: String,
    pub thread_group: sys::jobject,
    pub context_class_loader: sys::jobject,
}

impl Jvmti {
    /// Gets a JVMTI environment of `JVMTI_VERSION_1_2` from the VM.
    ///
    /// # Safety
    /// `vm` must be the `JavaVM*` the JVM passed to `Agent_OnLoad`/`Agent_OnAttach`.
    pub unsafe fn from_vm(vm: *mut sys::JavaVM) -> Result<Jvmti, jint> {
        let mut env: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: per the caller, `vm` is a valid JavaVM; GetEnv exists since JNI 1.2.
        let rc = unsafe { ((**vm).v1_2.GetEnv)(vm, &mut env, sys::JVMTI_VERSION_1_2) };
        if rc != 0 {
            return Err(rc);
        }
        NonNull::new(env.cast::<jvmtiEnv>()).map(Jvmti).ok_or(-1)
    }

    fn env(&self) -> *mut jvmtiEnv {
        self.0.as_ptr()
    }

    fn table(&self) -> &JvmtiInterface {
        // SAFETY: a jvmtiEnv points at the VM's function table, which lives as long as the VM.
        unsafe { &**self.0.as_ptr() }
    }

    pub fn version(&self) -> Result<Version, JvmtiError> {
        let mut v: jint = 0;
        call!(self, get_version_number, "GetVersionNumber", &mut v)?;
        Ok(Version(v))
    }

    pub fn phase(&self) -> Result<jint, JvmtiError> {
        let mut p: jint = 0;
        call!(self, get_phase, "GetPhase", &mut p)?;
        Ok(p)
    }

    pub fn potential_capabilities(&self) -> Result<sys::jvmtiCapabilities, JvmtiError> {
        let mut c = sys::jvmtiCapabilities::default();
        call!(
            self,
            get_potential_capabilities,
            "GetPotentialCapabilities",
            &mut c
        )?;
        Ok(c)
    }

    pub fn capabilities(&self) -> Result<sys::jvmtiCapabilities, JvmtiError> {
        let mut c = sys::jvmtiCapabilities::default();
        call!(self, get_capabilities, "GetCapabilities", &mut c)?;
        Ok(c)
    }

    pub fn add_capabilities(&self, caps: &sys::jvmtiCapabilities) -> Result<(), JvmtiError> {
        call!(
            self,
            add_capabilities,
            "AddCapabilities",
            ptr::from_ref(caps)
        )
    }

    /// Sets the VMInit callback and enables the event (only meaningful in the OnLoad phase).
    pub fn on_vm_init(&self, callback: sys::VmInitFn) -> Result<(), JvmtiError> {
        let callbacks = sys::jvmtiEventCallbacks {
            vm_init: Some(callback),
        };
        let size = std::mem::size_of::<sys::jvmtiEventCallbacks>() as jint;
        call!(
            self,
            set_event_callbacks,
            "SetEventCallbacks",
            &callbacks,
            size
        )?;
        call!(
            self,
            set_event_notification_mode,
            "SetEventNotificationMode",
            sys::JVMTI_ENABLE,
            sys::JVMTI_EVENT_VM_INIT,
            ptr::null_mut()
        )
    }

    /// Gives the environment back to the VM (used when a load is refused, so that a refused load
    /// leaves nothing behind).
    pub fn dispose(&self) -> Result<(), JvmtiError> {
        call!(self, dispose_environment, "DisposeEnvironment")
    }

    /// # Safety
    /// `mem` was allocated by this JVMTI environment and is not used afterwards.
    unsafe fn deallocate(&self, mem: *mut c_uchar) -> Result<(), JvmtiError> {
        call!(self, deallocate, "Deallocate", mem)
    }

    /// A system property as the VM saw it at startup (`java.vm.version`, …).
    pub fn system_property(&self, name: &CStr) -> Result<String, JvmtiError> {
        let mut value: *mut c_char = ptr::null_mut();
        call!(
            self,
            get_system_property,
            "GetSystemProperty",
            name.as_ptr(),
            &mut value
        )?;
        Ok(take_string(*self, value).unwrap_or_default())
    }

    /// Every live platform thread, as JNI local references (in the caller's local frame).
    pub fn all_threads(&self) -> Result<JvmtiBuf<sys::jthread>, JvmtiError> {
        let mut count: jint = 0;
        let mut threads: *mut sys::jthread = ptr::null_mut();
        call!(
            self,
            get_all_threads,
            "GetAllThreads",
            &mut count,
            &mut threads
        )?;
        Ok(JvmtiBuf::new(*self, threads, count.max(0) as usize))
    }

    /// A thread's name and the two JNI local references `GetThreadInfo` creates, which the caller
    /// deletes (or leaves to a local frame it pops).
    pub fn thread_info(&self, thread: &JObject) -> Result<ThreadInfo, JvmtiError> {
        let mut info = sys::jvmtiThreadInfo {
            name: ptr::null_mut(),
            priority: 0,
            is_daemon: false,
            thread_group: ptr::null_mut(),
            context_class_loader: ptr::null_mut(),
        };
        call!(
            self,
            get_thread_info,
            "GetThreadInfo",
            thread.as_raw(),
            &mut info
        )?;
        Ok(ThreadInfo {
            name: take_string(*self, info.name).unwrap_or_default(),
            thread_group: info.thread_group,
            context_class_loader: info.context_class_loader,
        })
    }

    /// Fills `frames` with up to `frames.len()` frames of `thread`, top first; returns how many.
    /// For another thread HotSpot takes them in a handshake with that thread alone.
    pub fn stack_trace(
        &self,
        thread: &JObject,
        frames: &mut [sys::jvmtiFrameInfo],
    ) -> Result<usize, JvmtiError> {
        let mut count: jint = 0;
        let max = jint::try_from(frames.len()).unwrap_or(jint::MAX);
        call!(
            self,
            get_stack_trace,
            "GetStackTrace",
            thread.as_raw(),
            0,
            max,
            frames.as_mut_ptr(),
            &mut count
        )?;
        Ok((count.max(0) as usize).min(frames.len()))
    }

    /// A thread's `jvmtiThreadState` bits. HotSpot reads them from the thread object, with no
    /// handshake.
    pub fn thread_state(&self, thread: &JObject) -> Result<jint, JvmtiError> {
        let mut state: jint = 0;
        call!(
            self,
            get_thread_state,
            "GetThreadState",
            thread.as_raw(),
            &mut state
        )?;
        Ok(state)
    }

    /// CPU time `thread` has used, ns. Needs `can_get_thread_cpu_time`.
    pub fn thread_cpu_time(&self, thread: &JObject) -> Result<u64, JvmtiError> {
        let mut nanos: sys::jlong = 0;
        call!(
            self,
            get_thread_cpu_time,
            "GetThreadCpuTime",
            thread.as_raw(),
            &mut nanos
        )?;
        Ok(u64::try_from(nanos).unwrap_or(0))
    }

    /// The monitor `thread` waits to enter (or to re-enter after `Object.wait`), as a new JNI
    /// local reference in `env`'s frame; `None` when it waits for none.
    /// Needs `can_get_current_contended_monitor`.
    pub fn current_contended_monitor<'l>(
        &self,
        env: &Env<'l>,
        thread: &JObject,
    ) -> Result<Option<JObject<'l>>, JvmtiError> {
        let mut monitor: sys::jobject = ptr::null_mut();
        call!(
            self,
            get_current_contended_monitor,
            "GetCurrentContendedMonitor",
            thread.as_raw(),
            &mut monitor
        )?;
        // SAFETY: JVMTI just made `monitor` (when not null) a local reference of this frame.
        Ok((!monitor.is_null()).then(|| unsafe { JObject::from_raw(env, monitor) }))
    }

    /// The thread owning `object`'s monitor, as a new JNI local reference in `env`'s frame;
    /// `None` when no thread owns it. The waiter lists JVMTI also returns are freed here
    /// (their elements are local references the caller's frame releases).
    /// Needs `can_get_monitor_info`. HotSpot answers it in a VM operation (a safepoint).
    pub fn monitor_owner<'l>(
        &self,
        env: &Env<'l>,
        object: &JObject,
    ) -> Result<Option<JObject<'l>>, JvmtiError> {
        let mut usage = sys::jvmtiMonitorUsage::default();
        call!(
            self,
            get_object_monitor_usage,
            "GetObjectMonitorUsage",
            object.as_raw(),
            &mut usage
        )?;
        let waiters = JvmtiBuf::new(*self, usage.waiters, usage.waiter_count.max(0) as usize);
        let notify = JvmtiBuf::new(
            *self,
            usage.notify_waiters,
            usage.notify_waiter_count.max(0) as usize,
        );
        for &raw in waiters.as_slice().iter().chain(notify.as_slice()) {
            if !raw.is_null() {
                // SAFETY: JVMTI made each waiter a local reference of this frame; deleted once.
                env.delete_local_ref(unsafe { JObject::from_raw(env, raw) });
            }
        }
        // SAFETY: as above, for the owner.
        Ok((!usage.owner.is_null()).then(|| unsafe { JObject::from_raw(env, usage.owner) }))
    }

    /// A method's name (its signature and generic signature are not asked for).
    pub fn method_name(&self, method: MethodId) -> Result<String, JvmtiError> {
        let mut name: *mut c_char = ptr::null_mut();
        call!(
            self,
            get_method_name,
            "GetMethodName",
            method.as_raw(),
            &mut name,
            ptr::null_mut(),
            ptr::null_mut()
        )?;
        Ok(take_string(*self, name).unwrap_or_default())
    }

    /// The class declaring `method`, as a new JNI local reference in `env`'s frame (the caller
    /// may delete it early).
    pub fn method_declaring_class<'l>(
        &self,
        env: &Env<'l>,
        method: MethodId,
    ) -> Result<JClass<'l>, JvmtiError> {
        let mut class: sys::jclass = ptr::null_mut();
        call!(
            self,
            get_method_declaring_class,
            "GetMethodDeclaringClass",
            method.as_raw(),
            &mut class
        )?;
        // SAFETY: JVMTI just made `class` a local reference of this thread's current frame.
        Ok(unsafe { JClass::from_raw(env, class) })
    }

    pub fn is_method_native(&self, method: MethodId) -> Result<bool, JvmtiError> {
        let mut native: sys::jboolean = false;
        call!(
            self,
            is_method_native,
            "IsMethodNative",
            method.as_raw(),
            &mut native
        )?;
        Ok(native)
    }

    /// A class's JNI signature, e.g. `Ljava/lang/Thread;`.
    pub fn class_signature(&self, class: &JClass) -> Result<String, JvmtiError> {
        let mut sig: *mut c_char = ptr::null_mut();
        call!(
            self,
            get_class_signature,
            "GetClassSignature",
            class.as_raw(),
            &mut sig,
            ptr::null_mut()
        )?;
        Ok(take_string(*self, sig).unwrap_or_default())
    }

    /// The class's `SourceFile` attribute; `None` when the class has none.
    /// Needs `can_get_source_file_name`.
    pub fn source_file_name(&self, class: &JClass) -> Result<Option<String>, JvmtiError> {
        let mut name: *mut c_char = ptr::null_mut();
        match call!(
            self,
            get_source_file_name,
            "GetSourceFileName",
            class.as_raw(),
            &mut name
        ) {
            Ok(()) => Ok(take_string(*self, name)),
            Err(e) if e.is(sys::JVMTI_ERROR_ABSENT_INFORMATION) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A method's line number table as (bytecode index, line); `None` when the method has none
    /// (compiled without `-g:lines`, native, abstract). Needs `can_get_line_numbers`.
    pub fn line_number_table(
        &self,
        method: MethodId,
    ) -> Result<Option<Vec<(i64, u32)>>, JvmtiError> {
        let mut count: jint = 0;
        let mut table: *mut sys::jvmtiLineNumberEntry = ptr::null_mut();
        match call!(
            self,
            get_line_number_table,
            "GetLineNumberTable",
            method.as_raw(),
            &mut count,
            &mut table
        ) {
            Ok(()) => {
                let buf = JvmtiBuf::new(*self, table, count.max(0) as usize);
                let lines = buf
                    .as_slice()
                    .iter()
                    .map(|e| (e.start_location, e.line_number.max(0) as u32))
                    .collect();
                Ok(Some(lines))
            }
            Err(e)
                if e.is(sys::JVMTI_ERROR_ABSENT_INFORMATION)
                    || e.is(sys::JVMTI_ERROR_NATIVE_METHOD) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_like_the_jdk() {
        assert_eq!(Version(0x3011_0000).to_string(), "17.0.0");
        assert_eq!(Version(0x3019_0000).to_string(), "25.0.0");
        assert_eq!(Version(0x3001_0200).to_string(), "1.2.0");
        assert!(Version(0x3011_0000).is_jvmti());
        assert!(!Version(0x0001_0008).is_jvmti());
    }

    #[test]
    fn errors_name_the_function_and_the_code() {
        let e = JvmtiError {
            function: "GetStackTrace",
            code: sys::JVMTI_ERROR_THREAD_NOT_ALIVE,
        };
        assert_eq!(
            e.to_string(),
            "GetStackTrace: JVMTI_ERROR_THREAD_NOT_ALIVE (15)"
        );
    }
}
