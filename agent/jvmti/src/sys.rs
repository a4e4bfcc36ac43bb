//! Raw JVMTI declarations: the part of `jvmti.h` this library calls, nothing more.
//!
//! The `jni` crate covers JNI but not JVMTI, so the function table is declared here as a
//! `#[repr(C)]` struct with the slot layout of `jvmtiInterface_1` (JDK 17 and JDK 25 agree on every
//! slot used here; a unit test checks the positions against the JDK headers when they are
//! installed). Only the slots the library calls are typed; the others are padding. A slot is an
//! `Option` so that a null entry is an error, never a jump to address 0.
//!
//! JVMTI entry points follow the platform's C calling convention (`JNICALL` is empty on Linux),
//! hence `extern "system"`, as for JNI.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_uchar, c_uint, c_void};

pub use jni::sys::{jboolean, jclass, jint, jlong, jmethodID, jobject, JNIEnv, JavaVM};

/// A `java.lang.Thread` reference.
pub type jthread = jobject;
/// A bytecode index inside a method, or -1 for native methods.
pub type jlocation = jlong;
/// `jvmtiError`.
pub type jvmtiError = c_uint;
/// `jvmtiEnv` is a pointer to the function table; functions take a `jvmtiEnv *`.
pub type jvmtiEnv = *const JvmtiInterface;

/// A pointer-sized hole in the function table for a slot this library does not call.
type Slot = *const c_void;

/// `JVMTI_VERSION_1_2`, asked of `GetEnv`: everything used here exists since JVMTI 1.0.
pub const JVMTI_VERSION_1_2: jint = 0x3001_0200;
/// `JVMTI_VERSION_MASK_INTERFACE_TYPE` and `JVMTI_VERSION_INTERFACE_JVMTI`.
pub const JVMTI_VERSION_MASK_INTERFACE_TYPE: jint = 0x7000_0000;
pub const JVMTI_VERSION_INTERFACE_JVMTI: jint = 0x3000_0000;

/// `jvmtiPhase`.
pub const JVMTI_PHASE_ONLOAD: jint = 1;
pub const JVMTI_PHASE_PRIMORDIAL: jint = 2;
pub const JVMTI_PHASE_LIVE: jint = 4;
pub const JVMTI_PHASE_START: jint = 6;
pub const JVMTI_PHASE_DEAD: jint = 8;

/// `jvmtiEventMode` and the one event used.
pub const JVMTI_ENABLE: jint = 1;
pub const JVMTI_EVENT_VM_INIT: jint = 50;

/// `jvmtiError` values this library reacts to; the others are only named in messages.
pub const JVMTI_ERROR_NONE: jvmtiError = 0;
pub const JVMTI_ERROR_INVALID_THREAD: jvmtiError = 10;
pub const JVMTI_ERROR_THREAD_NOT_ALIVE: jvmtiError = 15;
pub const JVMTI_ERROR_NATIVE_METHOD: jvmtiError = 104;
pub const JVMTI_ERROR_NOT_AVAILABLE: jvmtiError = 98;
pub const JVMTI_ERROR_ABSENT_INFORMATION: jvmtiError = 101;
pub const JVMTI_ERROR_WRONG_PHASE: jvmtiError = 112;

/// The name of a `jvmtiError`, as `jvmti.h` spells it. A table rather than `GetErrorName`: it
/// cannot fail and allocates nothing, which matters when the error is that the VM is going away.
pub fn error_name(code: jvmtiError) -> &'static str {
    match code {
        0 => "JVMTI_ERROR_NONE",
        10 => "JVMTI_ERROR_INVALID_THREAD",
        11 => "JVMTI_ERROR_INVALID_THREAD_GROUP",
        12 => "JVMTI_ERROR_INVALID_PRIORITY",
        13 => "JVMTI_ERROR_THREAD_NOT_SUSPENDED",
        14 => "JVMTI_ERROR_THREAD_SUSPENDED",
        15 => "JVMTI_ERROR_THREAD_NOT_ALIVE",
        20 => "JVMTI_ERROR_INVALID_OBJECT",
        21 => "JVMTI_ERROR_INVALID_CLASS",
        22 => "JVMTI_ERROR_CLASS_NOT_PREPARED",
        23 => "JVMTI_ERROR_INVALID_METHODID",
        24 => "JVMTI_ERROR_INVALID_LOCATION",
        25 => "JVMTI_ERROR_INVALID_FIELDID",
        26 => "JVMTI_ERROR_INVALID_MODULE",
        31 => "JVMTI_ERROR_NO_MORE_FRAMES",
        32 => "JVMTI_ERROR_OPAQUE_FRAME",
        34 => "JVMTI_ERROR_TYPE_MISMATCH",
        35 => "JVMTI_ERROR_INVALID_SLOT",
        40 => "JVMTI_ERROR_DUPLICATE",
        41 => "JVMTI_ERROR_NOT_FOUND",
        50 => "JVMTI_ERROR_INVALID_MONITOR",
        51 => "JVMTI_ERROR_NOT_MONITOR_OWNER",
        52 => "JVMTI_ERROR_INTERRUPT",
        60 => "JVMTI_ERROR_INVALID_CLASS_FORMAT",
        61 => "JVMTI_ERROR_CIRCULAR_CLASS_DEFINITION",
        62 => "JVMTI_ERROR_FAILS_VERIFICATION",
        63 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_METHOD_ADDED",
        64 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_SCHEMA_CHANGED",
        65 => "JVMTI_ERROR_INVALID_TYPESTATE",
        66 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_HIERARCHY_CHANGED",
        67 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_METHOD_DELETED",
        68 => "JVMTI_ERROR_UNSUPPORTED_VERSION",
        69 => "JVMTI_ERROR_NAMES_DONT_MATCH",
        70 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_CLASS_MODIFIERS_CHANGED",
        71 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_METHOD_MODIFIERS_CHANGED",
        72 => "JVMTI_ERROR_UNSUPPORTED_REDEFINITION_CLASS_ATTRIBUTE_CHANGED",
        73 => "JVMTI_ERROR_UNSUPPORTED_OPERATION",
        79 => "JVMTI_ERROR_UNMODIFIABLE_CLASS",
        80 => "JVMTI_ERROR_UNMODIFIABLE_MODULE",
        98 => "JVMTI_ERROR_NOT_AVAILABLE",
        99 => "JVMTI_ERROR_MUST_POSSESS_CAPABILITY",
        100 => "JVMTI_ERROR_NULL_POINTER",
        101 => "JVMTI_ERROR_ABSENT_INFORMATION",
        102 => "JVMTI_ERROR_INVALID_EVENT_TYPE",
        103 => "JVMTI_ERROR_ILLEGAL_ARGUMENT",
        104 => "JVMTI_ERROR_NATIVE_METHOD",
        106 => "JVMTI_ERROR_CLASS_LOADER_UNSUPPORTED",
        110 => "JVMTI_ERROR_OUT_OF_MEMORY",
        111 => "JVMTI_ERROR_ACCESS_DENIED",
        112 => "JVMTI_ERROR_WRONG_PHASE",
        113 => "JVMTI_ERROR_INTERNAL",
        115 => "JVMTI_ERROR_UNATTACHED_THREAD",
        116 => "JVMTI_ERROR_INVALID_ENVIRONMENT",
        _ => "unknown JVMTI error",
    }
}

/// `jvmtiFrameInfo`: one frame of `GetStackTrace`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct jvmtiFrameInfo {
    pub method: jmethodID,
    pub location: jlocation,
}

impl Default for jvmtiFrameInfo {
    fn default() -> Self {
        jvmtiFrameInfo {
            method: std::ptr::null_mut(),
            location: -1,
        }
    }
}

/// `jvmtiThreadInfo`: `name` is JVMTI-allocated modified UTF-8; the two references are JNI local
/// references.
#[repr(C)]
#[derive(Debug)]
pub struct jvmtiThreadInfo {
    pub name: *mut c_char,
    pub priority: jint,
    pub is_daemon: jboolean,
    pub thread_group: jobject,
    pub context_class_loader: jobject,
}

/// `jvmtiMonitorUsage`: `owner` and the elements of both arrays are JNI local references; the
/// two arrays are JVMTI-allocated.
#[repr(C)]
#[derive(Debug)]
pub struct jvmtiMonitorUsage {
    pub owner: jthread,
    pub entry_count: jint,
    pub waiter_count: jint,
    pub waiters: *mut jthread,
    pub notify_waiter_count: jint,
    pub notify_waiters: *mut jthread,
}

impl Default for jvmtiMonitorUsage {
    fn default() -> Self {
        jvmtiMonitorUsage {
            owner: std::ptr::null_mut(),
            entry_count: 0,
            waiter_count: 0,
            waiters: std::ptr::null_mut(),
            notify_waiter_count: 0,
            notify_waiters: std::ptr::null_mut(),
        }
    }
}

/// `GetThreadState` bits (`jvmtiThreadState` in `jvmti.h`).
pub const JVMTI_THREAD_STATE_ALIVE: jint = 0x0001;
pub const JVMTI_THREAD_STATE_TERMINATED: jint = 0x0002;
pub const JVMTI_THREAD_STATE_RUNNABLE: jint = 0x0004;
pub const JVMTI_THREAD_STATE_WAITING_INDEFINITELY: jint = 0x0010;
pub const JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT: jint = 0x0020;
pub const JVMTI_THREAD_STATE_SLEEPING: jint = 0x0040;
pub const JVMTI_THREAD_STATE_WAITING: jint = 0x0080;
pub const JVMTI_THREAD_STATE_IN_OBJECT_WAIT: jint = 0x0100;
pub const JVMTI_THREAD_STATE_PARKED: jint = 0x0200;
pub const JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER: jint = 0x0400;
pub const JVMTI_THREAD_STATE_IN_NATIVE: jint = 0x0040_0000;

/// `jvmtiLineNumberEntry`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct jvmtiLineNumberEntry {
    pub start_location: jlocation,
    pub line_number: jint,
}

/// `jvmtiCapabilities`: a bit field of 128 bits, allocated from the least significant bit of the
/// first 32-bit word (GCC's layout on x86-64 and aarch64 Linux).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct jvmtiCapabilities {
    pub words: [u32; 4],
}

impl jvmtiCapabilities {
    /// Bit of `can_get_current_contended_monitor` (the 7th field).
    pub const CAN_GET_CURRENT_CONTENDED_MONITOR: u32 = 6;
    /// Bit of `can_get_monitor_info` (the 8th field).
    pub const CAN_GET_MONITOR_INFO: u32 = 7;
    /// Bit of `can_get_source_file_name` (the 12th field).
    pub const CAN_GET_SOURCE_FILE_NAME: u32 = 11;
    /// Bit of `can_get_line_numbers` (the 13th field).
    pub const CAN_GET_LINE_NUMBERS: u32 = 12;
    /// Bit of `can_get_thread_cpu_time` (the 24th field).
    pub const CAN_GET_THREAD_CPU_TIME: u32 = 23;

    pub fn with(mut self, bit: u32) -> Self {
        self.words[(bit / 32) as usize] |= 1 << (bit % 32);
        self
    }

    pub fn has(&self, bit: u32) -> bool {
        self.words[(bit / 32) as usize] & (1 << (bit % 32)) != 0
    }
}

/// `jvmtiEventVMInit`.
pub type VmInitFn =
    unsafe extern "system" fn(jvmti: *mut jvmtiEnv, jni: *mut JNIEnv, thread: jthread);

/// The head of `jvmtiEventCallbacks`: `SetEventCallbacks` takes the struct's size and treats
/// the callbacks past it as unset, so only the first slot (VMInit) is declared.
#[repr(C)]
#[derive(Debug, Default)]
pub struct jvmtiEventCallbacks {
    pub vm_init: Option<VmInitFn>,
}

/// `jvmtiInterface_1`: 156 pointer-sized slots, numbered from 1 as in `jvmti.h`.
#[repr(C)]
pub struct JvmtiInterface {
    _reserved1: Slot,
    /// 2: `SetEventNotificationMode` (C-variadic).
    pub set_event_notification_mode: Option<
        unsafe extern "C" fn(
            env: *mut jvmtiEnv,
            mode: jint,
            event_type: jint,
            event_thread: jthread,
            ...
        ) -> jvmtiError,
    >,
    _s3: [Slot; 1],
    /// 4: `GetAllThreads`.
    pub get_all_threads: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            threads_count_ptr: *mut jint,
            threads_ptr: *mut *mut jthread,
        ) -> jvmtiError,
    >,
    _s5: [Slot; 4],
    /// 9: `GetThreadInfo`.
    pub get_thread_info: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            thread: jthread,
            info_ptr: *mut jvmtiThreadInfo,
        ) -> jvmtiError,
    >,
    _s10: [Slot; 1],
    /// 11: `GetCurrentContendedMonitor`.
    pub get_current_contended_monitor: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            thread: jthread,
            monitor_ptr: *mut jobject,
        ) -> jvmtiError,
    >,
    _s12: [Slot; 5],
    /// 17: `GetThreadState`.
    pub get_thread_state: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            thread: jthread,
            thread_state_ptr: *mut jint,
        ) -> jvmtiError,
    >,
    _s18: [Slot; 29],
    /// 47: `Deallocate`.
    pub deallocate:
        Option<unsafe extern "system" fn(env: *mut jvmtiEnv, mem: *mut c_uchar) -> jvmtiError>,
    /// 48: `GetClassSignature`.
    pub get_class_signature: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            klass: jclass,
            signature_ptr: *mut *mut c_char,
            generic_ptr: *mut *mut c_char,
        ) -> jvmtiError,
    >,
    _s49: [Slot; 1],
    /// 50: `GetSourceFileName`.
    pub get_source_file_name: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            klass: jclass,
            source_name_ptr: *mut *mut c_char,
        ) -> jvmtiError,
    >,
    _s51: [Slot; 8],
    /// 59: `GetObjectMonitorUsage`.
    pub get_object_monitor_usage: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            object: jobject,
            info_ptr: *mut jvmtiMonitorUsage,
        ) -> jvmtiError,
    >,
    _s60: [Slot; 4],
    /// 64: `GetMethodName`.
    pub get_method_name: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            method: jmethodID,
            name_ptr: *mut *mut c_char,
            signature_ptr: *mut *mut c_char,
            generic_ptr: *mut *mut c_char,
        ) -> jvmtiError,
    >,
    /// 65: `GetMethodDeclaringClass`.
    pub get_method_declaring_class: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            method: jmethodID,
            declaring_class_ptr: *mut jclass,
        ) -> jvmtiError,
    >,
    _s66: [Slot; 4],
    /// 70: `GetLineNumberTable`.
    pub get_line_number_table: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            method: jmethodID,
            entry_count_ptr: *mut jint,
            table_ptr: *mut *mut jvmtiLineNumberEntry,
        ) -> jvmtiError,
    >,
    _s71: [Slot; 5],
    /// 76: `IsMethodNative`.
    pub is_method_native: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            method: jmethodID,
            is_native_ptr: *mut jboolean,
        ) -> jvmtiError,
    >,
    _s77: [Slot; 11],
    /// 88: `GetVersionNumber`.
    pub get_version_number:
        Option<unsafe extern "system" fn(env: *mut jvmtiEnv, version_ptr: *mut jint) -> jvmtiError>,
    /// 89: `GetCapabilities`.
    pub get_capabilities: Option<
        unsafe extern "system" fn(env: *mut jvmtiEnv, caps: *mut jvmtiCapabilities) -> jvmtiError,
    >,
    _s90: [Slot; 14],
    /// 104: `GetStackTrace`.
    pub get_stack_trace: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            thread: jthread,
            start_depth: jint,
            max_frame_count: jint,
            frame_buffer: *mut jvmtiFrameInfo,
            count_ptr: *mut jint,
        ) -> jvmtiError,
    >,
    _s105: [Slot; 17],
    /// 122: `SetEventCallbacks`.
    pub set_event_callbacks: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            callbacks: *const jvmtiEventCallbacks,
            size_of_callbacks: jint,
        ) -> jvmtiError,
    >,
    _s123: [Slot; 4],
    /// 127: `DisposeEnvironment`.
    pub dispose_environment: Option<unsafe extern "system" fn(env: *mut jvmtiEnv) -> jvmtiError>,
    _s128: [Slot; 3],
    /// 131: `GetSystemProperty`.
    pub get_system_property: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            property: *const c_char,
            value_ptr: *mut *mut c_char,
        ) -> jvmtiError,
    >,
    _s132: [Slot; 1],
    /// 133: `GetPhase`.
    pub get_phase:
        Option<unsafe extern "system" fn(env: *mut jvmtiEnv, phase_ptr: *mut jint) -> jvmtiError>,
    _s134: [Slot; 3],
    /// 137: `GetThreadCpuTime`.
    pub get_thread_cpu_time: Option<
        unsafe extern "system" fn(
            env: *mut jvmtiEnv,
            thread: jthread,
            nanos_ptr: *mut jlong,
        ) -> jvmtiError,
    >,
    _s138: [Slot; 2],
    /// 140: `GetPotentialCapabilities`.
    pub get_potential_capabilities: Option<
        unsafe extern "system" fn(env: *mut jvmtiEnv, caps: *mut jvmtiCapabilities) -> jvmtiError,
    >,
    _s141: [Slot; 1],
    /// 142: `AddCapabilities`.
    pub add_capabilities: Option<
        unsafe extern "system" fn(env: *mut jvmtiEnv, caps: *const jvmtiCapabilities) -> jvmtiError,
    >,
    _s143: [Slot; 14],
}

/// The 1-based slot of each typed function, as numbered in `jvmti.h`, with the name it has there.
pub const TYPED_SLOTS: &[(usize, &str)] = &[
    (2, "SetEventNotificationMode"),
    (4, "GetAllThreads"),
    (9, "GetThreadInfo"),
    (11, "GetCurrentContendedMonitor"),
    (17, "GetThreadState"),
    (47, "Deallocate"),
    (48, "GetClassSignature"),
    (50, "GetSourceFileName"),
    (59, "GetObjectMonitorUsage"),
    (64, "GetMethodName"),
    (65, "GetMethodDeclaringClass"),
    (70, "GetLineNumberTable"),
    (76, "IsMethodNative"),
    (88, "GetVersionNumber"),
    (89, "GetCapabilities"),
    (104, "GetStackTrace"),
    (122, "SetEventCallbacks"),
    (127, "DisposeEnvironment"),
    (131, "GetSystemProperty"),
    (133, "GetPhase"),
    (137, "GetThreadCpuTime"),
    (140, "GetPotentialCapabilities"),
    (142, "AddCapabilities"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const P: usize = size_of::<*const c_void>();

    #[test]
    fn the_table_has_the_slot_layout_of_jvmti_h() {
        assert_eq!(size_of::<JvmtiInterface>(), 156 * P);
        let offsets = [
            offset_of!(JvmtiInterface, set_event_notification_mode),
            offset_of!(JvmtiInterface, get_all_threads),
            offset_of!(JvmtiInterface, get_thread_info),
            offset_of!(JvmtiInterface, get_current_contended_monitor),
            offset_of!(JvmtiInterface, get_thread_state),
            offset_of!(JvmtiInterface, deallocate),
            offset_of!(JvmtiInterface, get_class_signature),
            offset_of!(JvmtiInterface, get_source_file_name),
            offset_of!(JvmtiInterface, get_object_monitor_usage),
            offset_of!(JvmtiInterface, get_method_name),
            offset_of!(JvmtiInterface, get_method_declaring_class),
            offset_of!(JvmtiInterface, get_line_number_table),
            offset_of!(JvmtiInterface, is_method_native),
            offset_of!(JvmtiInterface, get_version_number),
            offset_of!(JvmtiInterface, get_capabilities),
            offset_of!(JvmtiInterface, get_stack_trace),
            offset_of!(JvmtiInterface, set_event_callbacks),
            offset_of!(JvmtiInterface, dispose_environment),
            offset_of!(JvmtiInterface, get_system_property),
            offset_of!(JvmtiInterface, get_phase),
            offset_of!(JvmtiInterface, get_thread_cpu_time),
            offset_of!(JvmtiInterface, get_potential_capabilities),
            offset_of!(JvmtiInterface, add_capabilities),
        ];
        assert_eq!(offsets.len(), TYPED_SLOTS.len());
        for (offset, (slot, name)) in offsets.iter().zip(TYPED_SLOTS) {
            assert_eq!(*offset, (slot - 1) * P, "{name}");
        }
    }

    #[test]
    fn structs_have_the_c_sizes() {
        // Sizes as gcc lays out jvmti.h on x86-64 (JDK 17 and 25 agree).
        assert_eq!(size_of::<jvmtiCapabilities>(), 16);
        assert_eq!(size_of::<jvmtiThreadInfo>(), 32);
        assert_eq!(offset_of!(jvmtiThreadInfo, is_daemon), 12);
        assert_eq!(offset_of!(jvmtiThreadInfo, thread_group), 16);
        assert_eq!(size_of::<jvmtiFrameInfo>(), 16);
        assert_eq!(size_of::<jvmtiLineNumberEntry>(), 16);
        assert_eq!(size_of::<jvmtiMonitorUsage>(), 40);
        assert_eq!(offset_of!(jvmtiMonitorUsage, waiters), 16);
        assert_eq!(offset_of!(jvmtiMonitorUsage, notify_waiters), 32);
    }

    #[test]
    fn capability_bits_are_where_gcc_puts_them() {
        // Checked with gcc against both JDKs' jvmti.h: 0x800 and 0x1000 in the first word.
        let c = jvmtiCapabilities::default().with(jvmtiCapabilities::CAN_GET_SOURCE_FILE_NAME);
        assert_eq!(c.words, [0x800, 0, 0, 0]);
        let c = c.with(jvmtiCapabilities::CAN_GET_LINE_NUMBERS);
        assert_eq!(c.words, [0x1800, 0, 0, 0]);
        assert!(c.has(jvmtiCapabilities::CAN_GET_LINE_NUMBERS));
        assert!(!c.has(0));
    }

    /// The slot numbers and the capability field order, read from every JDK header found: what the
    /// declarations above assume must be what the JDKs ship.
    #[test]
    fn installed_jdk_headers_agree_with_the_declarations() {
        let headers: Vec<String> = [
            std::env::var("BPMON_JDK17").ok(),
            std::env::var("BPMON_JDK25").ok(),
            Some("/usr/lib/jvm/java-17-openjdk-amd64".into()),
            Some("/usr/lib/jvm/temurin-25-jdk-amd64".into()),
        ]
        .into_iter()
        .flatten()
        .map(|home| format!("{home}/include/jvmti.h"))
        .filter(|p| std::path::Path::new(p).is_file())
        .collect();
        for header in &headers {
            let text = std::fs::read_to_string(header).expect("jvmti.h is readable");
            let table = text
                .split("typedef struct jvmtiInterface_1_ {")
                .nth(1)
                .and_then(|t| t.split("} jvmtiInterface_1;").next())
                .expect("jvmtiInterface_1 in jvmti.h");
            for (slot, name) in TYPED_SLOTS {
                let marker = format!("/*   {slot} : ");
                let decl = table
                    .split(&marker)
                    .nth(1)
                    .unwrap_or_else(|| panic!("{header}: no slot {slot}"));
                let decl = decl.split("/*").next().unwrap_or_default();
                assert!(
                    decl.contains(&format!("(JNICALL *{name})")),
                    "{header}: slot {slot} is not {name}: {decl}"
                );
            }
            let caps = text
                .split("unsigned int can_tag_objects : 1;")
                .nth(1)
                .expect("jvmtiCapabilities in jvmti.h");
            let fields: Vec<&str> = caps
                .lines()
                .filter_map(|l| l.trim().strip_prefix("unsigned int "))
                .take(24)
                .collect();
            assert_eq!(
                fields[jvmtiCapabilities::CAN_GET_SOURCE_FILE_NAME as usize - 1],
                "can_get_source_file_name : 1;",
                "{header}"
            );
            assert_eq!(
                fields[jvmtiCapabilities::CAN_GET_LINE_NUMBERS as usize - 1],
                "can_get_line_numbers : 1;",
                "{header}"
            );
            for (bit, name) in [
                (
                    jvmtiCapabilities::CAN_GET_CURRENT_CONTENDED_MONITOR,
                    "can_get_current_contended_monitor",
                ),
                (
                    jvmtiCapabilities::CAN_GET_MONITOR_INFO,
                    "can_get_monitor_info",
                ),
                (
                    jvmtiCapabilities::CAN_GET_THREAD_CPU_TIME,
                    "can_get_thread_cpu_time",
                ),
            ] {
                assert_eq!(fields[bit as usize - 1], format!("{name} : 1;"), "{header}");
            }
            for (value, name) in [
                (JVMTI_THREAD_STATE_ALIVE, "ALIVE"),
                (JVMTI_THREAD_STATE_TERMINATED, "TERMINATED"),
                (JVMTI_THREAD_STATE_RUNNABLE, "RUNNABLE"),
                (
                    JVMTI_THREAD_STATE_WAITING_INDEFINITELY,
                    "WAITING_INDEFINITELY",
                ),
                (
                    JVMTI_THREAD_STATE_WAITING_WITH_TIMEOUT,
                    "WAITING_WITH_TIMEOUT",
                ),
                (JVMTI_THREAD_STATE_SLEEPING, "SLEEPING"),
                (JVMTI_THREAD_STATE_WAITING, "WAITING"),
                (JVMTI_THREAD_STATE_IN_OBJECT_WAIT, "IN_OBJECT_WAIT"),
                (JVMTI_THREAD_STATE_PARKED, "PARKED"),
                (
                    JVMTI_THREAD_STATE_BLOCKED_ON_MONITOR_ENTER,
                    "BLOCKED_ON_MONITOR_ENTER",
                ),
                (JVMTI_THREAD_STATE_IN_NATIVE, "IN_NATIVE"),
            ] {
                let line = format!("JVMTI_THREAD_STATE_{name} = 0x{value:04X},");
                let line_wide = format!("JVMTI_THREAD_STATE_{name} = 0x{value:X},");
                assert!(
                    text.contains(&line) || text.contains(&line_wide),
                    "{header}: {line}"
                );
            }
        }
    }
}
