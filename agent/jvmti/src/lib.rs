//! `libbpmon_jvmti.so`: bpmon's in-process sampler, a JVMTI agent library loaded into a Flink
//! TaskManager JVM, at start (`-agentpath:/path/libbpmon_jvmti.so=socket=/path`) or later
//! through the HotSpot attach `load` command (what `bpmon-agent` sends; by hand:
//! `jcmd <pid> JVMTI.agent_load /path/libbpmon_jvmti.so '"socket=/path"'`, quoted because
//! jcmd's own parser would otherwise pass on only `socket`). The options are described in
//! [`options`].
//!
//! It samples only the task threads, each with JVMTI `GetStackTrace` (a handshake with that one
//! thread, no global safepoint), classifies each stack with the rule table the attach backend
//! uses, reads each task's exact identity from Flink's `Task` object, and answers `bpmon-agent`
//! over a UNIX socket with the protocol of `bpmon_proto::inprocess`.
//!
//! Modules: [`sys`] (the JVMTI function table), [`jvmti`] (safe calls over it), [`options`],
//! [`server`] (socket and protocol), [`threads`] (finding task threads), [`stacks`] (stacks →
//! frames), [`identity`] (the `Task` behind a thread), [`evidence`] (thread state, CPU time,
//! awaited monitor), [`sampler`] (one sample). This file holds
//! the exported entry points and the process-wide state.
//!
//! # Life cycle
//!
//! * `Agent_OnLoad` (JVMTI phase ONLOAD) binds the socket and asks for the VMInit event; the
//!   sampler thread starts when the VM is initialised.
//! * `Agent_OnAttach` (phase LIVE) binds the socket and starts the sampler thread at once.
//!   If a sampler already runs on the same socket it does nothing and succeeds. On another
//!   socket the sampler moves: the new socket is bound first (a path that cannot be bound
//!   leaves the running sampler alone), then the running sampler is stopped (it unlinks its
//!   socket) and a new one starts on the new path, counted as a new start.
//! * The sampler thread is attached to the JVM as a daemon (named `bpmon-jvmti sampler`), so it
//!   never holds the JVM's exit up. A `stop` request ends it: the socket is unlinked, the thread
//!   detaches and exits; a later `load` starts it again (`Hello::starts` counts the starts).
//! * `Agent_OnUnload` (JVM exit) raises the stop flag and unlinks the socket; it never waits.
//!
//! A refused load (bad options, unsupported JVMTI version or phase, a socket path that cannot be
//! bound) prints one line on stderr, returns a non-zero JNI error code and leaves the JVM as it
//! was. No panic crosses into the JVM: every entry point and the thread body catch unwinding.

pub mod evidence;
pub mod identity;
pub mod jvmti;
pub mod options;
pub mod sampler;
pub mod server;
pub mod stacks;
pub mod sys;
pub mod threads;
pub mod timers;

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::{
    Hello, InProcessSample, Introduced, SampleRequest, INPROCESS_PROTOCOL_VERSION,
};
use jni::sys::{jint, JNI_ERR, JNI_OK};

use crate::evidence::EvidenceCaps;
use crate::jvmti::{Jvmti, JvmtiError};
use crate::options::{Options, OptionsError};
use crate::sampler::Sampler;
use crate::server::{Backend, BindError, Listener};
use crate::stacks::MethodCache;
use bpmon_proto::time::now_ms;

/// Every line this library prints starts with this.
pub const LOG_PREFIX: &str = "bpmon-jvmti:";
/// The Java-visible name of the sampler thread.
const JAVA_THREAD_NAME: &CStr = c"bpmon-jvmti sampler";
/// The native (OS) name of the sampler thread.
const OS_THREAD_NAME: &str = "bpmon-jvmti";
/// How long a `load` with a new socket waits for the old sampler to finish.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a load was refused or the sampler could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bad options: {0}")]
    Options(#[from] OptionsError),
    #[error("the options string is not valid UTF-8")]
    OptionsEncoding,
    #[error("the JVM has no JVMTI 1.2 environment to give (GetEnv returned {0})")]
    GetEnv(jint),
    #[error("unsupported JVMTI version {0}: version 1.2 or later is needed")]
    Version(String),
    #[error("{entry} was called in JVMTI phase {phase}, but only works in phase {expected}")]
    Phase {
        entry: &'static str,
        phase: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
    #[error("socket {0}")]
    Bind(#[from] BindError),
    #[error("{0} is already loaded in this JVM with -agentpath/-agentlib")]
    AlreadyLoaded(&'static str),
    #[error("cannot start the sampler thread: {0}")]
    Spawn(std::io::Error),
    #[error(
        "cannot attach the sampler thread to the JVM (AttachCurrentThreadAsDaemon returned {0})"
    )]
    Attach(jint),
    #[error("panicked: {0}")]
    Panic(String),
}

/// What the library learnt of the JVM on its first load; the same for every later one.
#[derive(Debug, Clone)]
struct Vm {
    vm: jni::JavaVM,
    jvmti: Jvmti,
    /// Source file names and line numbers can be read (both capabilities were granted).
    locations: bool,
    /// What the evidence of a cause can be read with.
    evidence: EvidenceCaps,
    vm_version: String,
    jvmti_version: String,
}

/// A sampler thread that runs (or is finishing).
#[derive(Debug)]
struct Running {
    socket: PathBuf,
    dev_ino: (u64, u64),
    stop: Arc<AtomicBool>,
    generation: u64,
    handle: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    vm: Option<Vm>,
    /// Sampler starts in this JVM (`Hello::starts`).
    starts: u32,
    /// Tells apart one run of the sampler from the next, so a finishing thread never clears its
    /// successor's entry.
    generation: u64,
    running: Option<Running>,
    /// `-agentpath`: the socket bound in `Agent_OnLoad`, served once the VM is initialised.
    pending: Option<Listener>,
}

static STATE: Mutex<State> = Mutex::new(State {
    vm: None,
    starts: 0,
    generation: 0,
    running: None,
    pending: None,
});

/// Resolved methods, kept across restarts of the sampler (a `jmethodID` outlives it).
static METHODS: LazyLock<Mutex<MethodCache>> = LazyLock::new(|| Mutex::new(MethodCache::default()));

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prints one line on stderr, never panicking (the JVM may have closed it).
fn log_line(message: &str) {
    let _ = writeln!(std::io::stderr(), "{LOG_PREFIX} {message}");
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn phase_name(phase: jint) -> &'static str {
    match phase {
        sys::JVMTI_PHASE_ONLOAD => "ONLOAD",
        sys::JVMTI_PHASE_PRIMORDIAL => "PRIMORDIAL",
        sys::JVMTI_PHASE_START => "START",
        sys::JVMTI_PHASE_LIVE => "LIVE",
        sys::JVMTI_PHASE_DEAD => "DEAD",
        _ => "unknown",
    }
}

/// Runs an entry point's body: its error or panic becomes one stderr line and `JNI_ERR`.
fn entry(name: &'static str, body: impl FnOnce() -> Result<(), StartError>) -> jint {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => JNI_OK,
        Ok(Err(e)) => {
            log_line(&format!("{name} refused: {e}"));
            JNI_ERR
        }
        Err(payload) => {
            log_line(&format!(
                "{name} failed: panic: {}",
                panic_message(&*payload)
            ));
            JNI_ERR
        }
    }
}

/// Called by the JVM for `-agentpath:…=options` / `-agentlib:…=options`, before it initialises.
///
/// # Safety
/// Called by the JVM with its `JavaVM*` and a NUL-terminated options string (or null).
#[no_mangle]
pub unsafe extern "system" fn Agent_OnLoad(
    vm: *mut jni::sys::JavaVM,
    options: *mut c_char,
    _reserved: *mut c_void,
) -> jint {
    // SAFETY: the JVM's arguments, as described above.
    entry("Agent_OnLoad", || unsafe { on_load(vm, options) })
}

/// Called by the JVM for the attach `load` command, in a running JVM.
///
/// # Safety
/// Called by the JVM with its `JavaVM*` and a NUL-terminated options string (or null).
#[no_mangle]
pub unsafe extern "system" fn Agent_OnAttach(
    vm: *mut jni::sys::JavaVM,
    options: *mut c_char,
    _reserved: *mut c_void,
) -> jint {
    // SAFETY: the JVM's arguments, as described above.
    entry("Agent_OnAttach", || unsafe { on_attach(vm, options) })
}

/// Called by the JVM as it exits. Raises the stop flag and unlinks the socket; never waits for
/// the sampler thread (it may be parked at the VM's exit barrier) nor for the state lock.
///
/// # Safety
/// Called by the JVM.
#[no_mangle]
pub unsafe extern "system" fn Agent_OnUnload(_vm: *mut jni::sys::JavaVM) {
    let _ = catch_unwind(|| {
        let mut st = match STATE.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(running) = st.running.take() {
            running.stop.store(true, Ordering::Release);
            server::unlink_if(&running.socket, running.dev_ino);
        }
        if let Some(pending) = st.pending.take() {
            pending.unlink_if_ours();
        }
    });
}

/// # Safety
/// `options` is null or a NUL-terminated string.
unsafe fn parse_options(options: *const c_char) -> Result<Options, StartError> {
    let text = if options.is_null() {
        None
    } else {
        // SAFETY: per the caller.
        let c = unsafe { CStr::from_ptr(options) };
        Some(c.to_str().map_err(|_| StartError::OptionsEncoding)?)
    };
    Ok(Options::parse(text)?)
}

/// The JVM as set up by the first load, or sets it up: a JVMTI environment of a supported
/// version in the `expected` phase, with the two optional location capabilities if granted.
/// A refusal here disposes of the environment it just got, leaving the JVM as it was. The flag
/// says whether this call set it up (see [`forget_fresh_vm`]).
///
/// # Safety
/// `raw` is the JVM's `JavaVM*`.
unsafe fn init_vm(
    st: &mut State,
    raw: *mut jni::sys::JavaVM,
    entry: &'static str,
    expected: jint,
) -> Result<(Vm, bool), StartError> {
    let check_phase = |jvmti: Jvmti| -> Result<(), StartError> {
        let phase = jvmti.phase()?;
        if phase != expected {
            return Err(StartError::Phase {
                entry,
                phase: phase_name(phase),
                expected: phase_name(expected),
            });
        }
        Ok(())
    };
    if let Some(vm) = &st.vm {
        check_phase(vm.jvmti)?;
        return Ok((vm.clone(), false));
    }
    // SAFETY: `raw` is the JVM's, per the caller.
    let jvmti = unsafe { Jvmti::from_vm(raw) }.map_err(StartError::GetEnv)?;
    let set_up = || -> Result<Vm, StartError> {
        let version = jvmti.version()?;
        if !version.is_jvmti() || (version.major() == 1 && version.minor() < 2) {
            return Err(StartError::Version(version.to_string()));
        }
        check_phase(jvmti)?;
        let locations = add_location_capabilities(jvmti);
        let evidence = EvidenceCaps::acquire(jvmti);
        if !evidence.cpu_time {
            log_line("can_get_thread_cpu_time not granted: samples carry no CPU time");
        }
        Ok(Vm {
            // SAFETY: `raw` is the JVM's; JNI 1.4+ is a given on every JVM with JVMTI 1.2.
            vm: unsafe { jni::JavaVM::from_raw(raw) },
            jvmti,
            locations,
            evidence,
            vm_version: jvmti
                .system_property(c"java.vm.version")
                .unwrap_or_default(),
            jvmti_version: version.to_string(),
        })
    };
    match set_up() {
        Ok(vm) => {
            st.vm = Some(vm.clone());
            Ok((vm, true))
        }
        Err(e) => {
            let _ = jvmti.dispose();
            Err(e)
        }
    }
}

/// Undoes [`init_vm`] when the load it was set up for is refused after all, so that a refused
/// first load leaves no JVMTI environment behind.
fn forget_fresh_vm(st: &mut State, fresh: bool) {
    if fresh {
        if let Some(vm) = st.vm.take() {
            let _ = vm.jvmti.dispose();
        }
    }
}

/// Asks for `can_get_source_file_name` and `can_get_line_numbers` (HotSpot grants both in any
/// phase, at no cost); without them frames read `Unknown Source`, as in a dump of classes
/// compiled without debug information. Whether both are held afterwards.
fn add_location_capabilities(jvmti: Jvmti) -> bool {
    use sys::jvmtiCapabilities as Caps;
    let wanted = Caps::default()
        .with(Caps::CAN_GET_SOURCE_FILE_NAME)
        .with(Caps::CAN_GET_LINE_NUMBERS);
    let held =
        |c: &Caps| c.has(Caps::CAN_GET_SOURCE_FILE_NAME) && c.has(Caps::CAN_GET_LINE_NUMBERS);
    if jvmti.capabilities().is_ok_and(|c| held(&c)) {
        return true;
    }
    if !jvmti.potential_capabilities().is_ok_and(|c| held(&c)) {
        return false;
    }
    jvmti.add_capabilities(&wanted).is_ok() && jvmti.capabilities().is_ok_and(|c| held(&c))
}

/// # Safety
/// The JVM's `Agent_OnLoad` arguments.
unsafe fn on_load(raw: *mut jni::sys::JavaVM, options: *const c_char) -> Result<(), StartError> {
    // SAFETY: per the caller.
    let options = unsafe { parse_options(options)? };
    let mut st = state();
    if st.pending.is_some() || st.running.is_some() {
        return Err(StartError::AlreadyLoaded("libbpmon_jvmti"));
    }
    // SAFETY: per the caller.
    let (vm, fresh) = unsafe { init_vm(&mut st, raw, "Agent_OnLoad", sys::JVMTI_PHASE_ONLOAD)? };
    let listener = match Listener::bind(&options.socket) {
        Ok(listener) => listener,
        Err(e) => {
            forget_fresh_vm(&mut st, fresh);
            return Err(e.into());
        }
    };
    if let Err(e) = vm.jvmti.on_vm_init(vm_init) {
        listener.unlink_if_ours();
        forget_fresh_vm(&mut st, fresh);
        return Err(e.into());
    }
    st.pending = Some(listener);
    Ok(())
}

/// The VMInit event (after `Agent_OnLoad`): starts the sampler on the socket bound then.
unsafe extern "system" fn vm_init(
    _jvmti: *mut sys::jvmtiEnv,
    _jni: *mut jni::sys::JNIEnv,
    _thread: sys::jthread,
) {
    let started = catch_unwind(|| {
        let mut st = state();
        let (Some(listener), Some(vm)) = (st.pending.take(), st.vm.clone()) else {
            return Ok(());
        };
        start(&mut st, &vm, listener)
    });
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log_line(&format!("sampler not started: {e}")),
        Err(payload) => log_line(&format!(
            "sampler not started: panic: {}",
            panic_message(&*payload)
        )),
    }
}

/// # Safety
/// The JVM's `Agent_OnAttach` arguments.
unsafe fn on_attach(raw: *mut jni::sys::JavaVM, options: *const c_char) -> Result<(), StartError> {
    // SAFETY: per the caller.
    let options = unsafe { parse_options(options)? };
    let mut st = state();
    // SAFETY: per the caller.
    let (vm, fresh) = unsafe { init_vm(&mut st, raw, "Agent_OnAttach", sys::JVMTI_PHASE_LIVE)? };
    if st
        .running
        .as_ref()
        .is_some_and(|r| r.socket == options.socket)
    {
        return Ok(()); // already serving there
    }
    // Bound before a running sampler is stopped, so that a path that cannot be bound leaves the
    // running sampler as it was.
    let listener = match Listener::bind(&options.socket) {
        Ok(listener) => listener,
        Err(e) => {
            forget_fresh_vm(&mut st, fresh);
            return Err(e.into());
        }
    };
    if let Some(running) = &mut st.running {
        // Moving to another socket: stop this sampler (it unlinks its socket), then start anew.
        running.stop.store(true, Ordering::Release);
        let handle = running.handle.take();
        let generation = running.generation;
        drop(st);
        if let Some(handle) = handle {
            let deadline = Instant::now() + MOVE_TIMEOUT;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        st = state();
        if st
            .running
            .as_ref()
            .is_some_and(|r| r.generation == generation)
        {
            st.running = None;
        }
    }
    start(&mut st, &vm, listener).inspect_err(|_| forget_fresh_vm(&mut st, fresh))
}

/// Starts a sampler thread serving `listener`.
fn start(st: &mut State, vm: &Vm, listener: Listener) -> Result<(), StartError> {
    let starts = st.starts + 1;
    let generation = st.generation + 1;
    let socket = listener.path().to_path_buf();
    let dev_ino = listener.dev_ino();
    let stop = Arc::new(AtomicBool::new(false));
    let run = SamplerRun {
        vm: vm.clone(),
        listener,
        stop: stop.clone(),
        generation,
        hello: Hello {
            protocol: INPROCESS_PROTOCOL_VERSION,
            library_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            vm_version: vm.vm_version.clone(),
            jvmti_version: vm.jvmti_version.clone(),
            started_at_ms: now_ms(),
            starts,
            runs: true,
        },
    };
    let handle = std::thread::Builder::new()
        .name(OS_THREAD_NAME.to_string())
        .spawn(move || sampler_thread(run))
        .map_err(|e| {
            // The listener went down with the closure; its file must not stay behind.
            server::unlink_if(&socket, dev_ino);
            StartError::Spawn(e)
        })?;
    st.starts = starts;
    st.generation = generation;
    st.running = Some(Running {
        socket: socket.clone(),
        dev_ino,
        stop,
        generation,
        handle: Some(handle),
    });
    log_line(&format!(
        "sampler started on {} (start {starts})",
        socket.display()
    ));
    Ok(())
}

/// What a sampler thread is given.
struct SamplerRun {
    vm: Vm,
    listener: Listener,
    stop: Arc<AtomicBool>,
    generation: u64,
    hello: Hello,
}

/// Forgets a sampler that is stopping, unless a newer one already took its place.
fn deregister(generation: u64) {
    let mut st = state();
    if st
        .running
        .as_ref()
        .is_some_and(|r| r.generation == generation)
    {
        st.running = None;
    }
}

/// The sampler thread's body: nothing escapes it, and it says once why it ended.
fn sampler_thread(run: SamplerRun) {
    let generation = run.generation;
    let socket = run.listener.path().to_path_buf();
    let reason = match catch_unwind(AssertUnwindSafe(|| serve_attached(run))) {
        Ok(Ok(exit)) => exit.to_string(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(payload) => format!("panic: {}", panic_message(&*payload)),
    };
    deregister(generation);
    log_line(&format!(
        "sampler stopped on {} ({reason})",
        socket.display()
    ));
}

/// Attaches this thread as a daemon, serves until stopped, releases every JNI global reference
/// and detaches.
fn serve_attached(run: SamplerRun) -> Result<server::Exit, StartError> {
    let raw = run.vm.vm.get_raw();
    attach_daemon(raw)?;
    let served = catch_unwind(AssertUnwindSafe(|| {
        let mut backend = JvmBackend {
            vm: run.vm.vm.clone(),
            sampler: Sampler::new(run.vm.jvmti, run.vm.locations, run.vm.evidence),
            hello: run.hello.clone(),
            generation: run.generation,
        };
        let exit = server::serve(&run.listener, &mut backend, &run.stop);
        backend.sampler.release();
        exit
        // On a panic, `backend` (and its global references) is dropped while unwinding, here,
        // still attached.
    }));
    run.listener.unlink_if_ours();
    // SAFETY: this thread attached itself above and holds no JNI frame or guard any more.
    unsafe { ((**raw).v1_1.DetachCurrentThread)(raw) };
    served.map_err(|payload| StartError::Panic(panic_message(&*payload)))
}

/// Attaches the current thread as a daemon thread named [`JAVA_THREAD_NAME`]: a daemon never
/// keeps the JVM from exiting. (The `jni` crate has no daemon attachment, hence the raw call;
/// its `JavaVM::with_local_frame` then finds the attachment through `GetEnv`.)
fn attach_daemon(raw: *mut jni::sys::JavaVM) -> Result<(), StartError> {
    let mut env: *mut c_void = std::ptr::null_mut();
    let mut args = jni::sys::JavaVMAttachArgs {
        version: jni::sys::JNI_VERSION_1_8,
        name: JAVA_THREAD_NAME.as_ptr().cast_mut(),
        group: std::ptr::null_mut(),
    };
    // SAFETY: `raw` is the JVM's JavaVM; the arguments outlive the call.
    let rc = unsafe {
        ((**raw).v1_4.AttachCurrentThreadAsDaemon)(
            raw,
            &mut env,
            std::ptr::from_mut(&mut args).cast(),
        )
    };
    if rc != JNI_OK {
        return Err(StartError::Attach(rc));
    }
    Ok(())
}

/// The server's view of the sampler, on the sampler thread.
struct JvmBackend {
    vm: jni::JavaVM,
    sampler: Sampler,
    hello: Hello,
    generation: u64,
}

impl Backend for JvmBackend {
    fn hello(&mut self) -> Hello {
        self.hello.clone()
    }

    fn sample(
        &mut self,
        request: SampleRequest,
        known: &Introduced,
    ) -> Result<InProcessSample, String> {
        let mut methods = METHODS.lock().unwrap_or_else(PoisonError::into_inner);
        let sampler = &mut self.sampler;
        // One local frame per sample: whatever JNI local references a sample makes are gone
        // when it returns.
        self.vm
            .with_local_frame(32, |env| -> Result<_, jni::errors::Error> {
                let mut sample = sampler.sample(env, &mut methods, request, known);
                // Every call that can throw is checked where it is made; this is the net under
                // that rule, so no exception ever stays pending on this thread.
                if let Some(thrown) = identity::clear_exception(env) {
                    sample
                        .errors
                        .push(format!("{thrown} was left pending by a sample (cleared)"));
                }
                Ok(sample)
            })
            .map_err(|e| format!("JNI: {e}"))
    }

    fn stopping(&mut self) {
        deregister(self.generation);
    }
}
