//! The in-process backend. bpmon's JVMTI library (`libbpmon_jvmti.so`, crate `bpmon-jvmti`)
//! runs inside the TaskManager: it reads each task thread's stack with `GetStackTrace` (a
//! handshake with that one thread, no global safepoint), classifies it with the same rule table
//! as the dump backends, reads the task's exact job and execution from Flink's `Task` object,
//! and answers on a UNIX socket in the JVM's `/tmp`. This side loads it (attach `load`), connects
//! (as the JVM's user, to a socket the JVM owns, whose peer must be the JVM itself) and asks for
//! one sample at a time, so windows are scheduled exactly as with the attach backend.
//!
//! The library outlives the agent: a restarted agent finds its socket and connects again
//! without loading anything. `stop` ends the library's thread; a later `load` starts it again.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::{
    Hello, InProcessSample, Known, Request, Response, SampleRequest, SampleRun,
    INPROCESS_PROTOCOL_VERSION, MAX_LINE_BYTES,
};
use bpmon_proto::Activity;
use bpmon_stacks::classify::SampleClass;
use thiserror::Error;

use super::attach::{is_timeout, AttachError, AttachOptions, Attacher};
use super::dump::{AwaitedLock, ClassifiedDump, DumpThread, Roster, StateSample};
use super::SampleMode;
use crate::discovery::{JvmProcess, ProcFs};

/// The library's file name, as built and as packaged.
pub const LIBRARY_NAME: &str = "libbpmon_jvmti.so";

/// Where the Debian package installs the library.
pub const PACKAGED_LIBRARY: &str = "/usr/lib/bpmon/libbpmon_jvmti.so";

/// How long the library may take to open its socket after `load` returned.
const SOCKET_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum JvmtiError {
    #[error("the in-process sampler library {path} cannot be read: {detail} (install the bpmon-agent package, or set jvmti_library / --jvmti-library)")]
    LibraryMissing { path: PathBuf, detail: String },
    #[error("JVM pid {pid} refused to load {library}: {message}{hint}")]
    LoadRefused {
        pid: u32,
        library: String,
        message: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("JVM pid {pid}: the in-process sampler did not open /tmp/{socket} within {waited:?} of being loaded (see the TaskManager's stderr for lines starting 'bpmon-jvmti:')")]
    NoSocket {
        pid: u32,
        socket: String,
        waited: Duration,
    },
    #[error(
        "JVM pid {pid}: refusing /tmp/{socket}: the process behind it is pid {peer:?}, not the JVM"
    )]
    WrongPeer {
        pid: u32,
        socket: String,
        peer: Option<i32>,
    },
    #[error("JVM pid {pid}: in-process sampler: {context}: {source}")]
    Io {
        pid: u32,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("JVM pid {pid}: the in-process sampler did not answer within {waited:?}")]
    Timeout { pid: u32, waited: Duration },
    #[error("JVM pid {pid}: the in-process sampler says: {message}")]
    Sampler { pid: u32, message: String },
    #[error("JVM pid {pid}: in-process sampler protocol: {detail}")]
    Protocol { pid: u32, detail: String },
}

impl JvmtiError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JvmtiError::LibraryMissing { .. } => "jvmti_library_missing",
            JvmtiError::LoadRefused { .. } => "jvmti_load_refused",
            JvmtiError::Attach(e) => e.reason(),
            JvmtiError::NoSocket { .. } => "jvmti_no_socket",
            JvmtiError::WrongPeer { .. } => "jvmti_wrong_peer",
            JvmtiError::Io { .. } => "jvmti_io",
            JvmtiError::Timeout { .. } => "timeout",
            JvmtiError::Sampler { .. } => "jvmti_sampler_error",
            JvmtiError::Protocol { .. } => "jvmti_protocol",
        }
    }

    /// Whether trying again cannot help (the daemon then falls back to the attach backend).
    pub fn is_permanent(&self) -> bool {
        match self {
            JvmtiError::Attach(e) => e.is_permanent(),
            JvmtiError::LibraryMissing { .. }
            | JvmtiError::LoadRefused { .. }
            | JvmtiError::WrongPeer { .. }
            | JvmtiError::NoSocket { .. } => true,
            JvmtiError::Protocol { .. } => true,
            JvmtiError::Io { .. } | JvmtiError::Timeout { .. } | JvmtiError::Sampler { .. } => {
                false
            }
        }
    }
}

/// How to reach the in-process sampler.
#[derive(Debug, Clone)]
pub struct JvmtiOptions {
    /// The library on this host.
    pub library: PathBuf,
    /// How long one request may take.
    pub io_timeout: Duration,
    /// Frames read per thread.
    pub max_depth: u32,
}

impl JvmtiOptions {
    /// The library next to the running binary (a build tree, `target/debug`), else the packaged
    /// one.
    pub fn default_library() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(LIBRARY_NAME)))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(PACKAGED_LIBRARY))
    }
}

impl Default for JvmtiOptions {
    fn default() -> Self {
        JvmtiOptions {
            library: Self::default_library(),
            io_timeout: Duration::from_secs(10),
            max_depth: 64,
        }
    }
}

impl Connection {
    /// Puts back what the library left out of a sample (names, tasks, the thread list of the
    /// timer states) and makes the sampling loop's dump of it.
    fn read(&mut self, s: &mut InProcessSample) -> Result<ClassifiedDump, String> {
        self.known.expand(s)?;
        let mut dump = to_classified(s);
        if let Some(st) = &s.timer_states {
            let ids = st.threads.as_deref().unwrap_or_default();
            let readings = st.readings(ids)?;
            let roster = match &self.roster {
                Some((same, roster)) if same.as_slice() == ids => roster.clone(),
                _ => {
                    let threads = ids.iter().map(|id| {
                        let (name, task) = self.known.get(*id).unwrap_or_default();
                        DumpThread::stackless(name.to_string(), *id, task.cloned())
                    });
                    let roster = Arc::new(Roster::new(threads));
                    self.roster = Some((ids.to_vec(), roster.clone()));
                    roster
                }
            };
            dump.states = Some(StateSample {
                roster,
                at_ms: st.at_ms,
                readings,
            });
        }
        Ok(dump)
    }
}

struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Names and tasks of the threads this connection introduced.
    known: Known,
    /// The threads of the last timer states, and what the sampling loop makes of them.
    roster: Option<(Vec<u64>, Arc<Roster>)>,
}

/// The in-process sampler of one JVM.
pub struct JvmtiClient {
    pid: u32,
    attacher: Attacher,
    options: JvmtiOptions,
    socket: String,
    conn: Option<Connection>,
    hello: Option<Hello>,
    /// Whether this client loaded the library (rather than finding it running).
    loaded: bool,
}

impl std::fmt::Debug for JvmtiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JvmtiClient")
            .field("pid", &self.pid)
            .field("socket", &self.socket)
            .field("connected", &self.conn.is_some())
            .field("hello", &self.hello)
            .finish()
    }
}

impl JvmtiClient {
    /// Connects to the JVM's in-process sampler, loading it first when it is not running.
    pub fn open(
        jvm: &JvmProcess,
        proc: &ProcFs,
        attach: AttachOptions,
        options: JvmtiOptions,
    ) -> Result<JvmtiClient, JvmtiError> {
        let attacher = Attacher::new(jvm, proc.clone(), attach)?;
        let mut client = JvmtiClient {
            pid: jvm.pid,
            attacher,
            options,
            socket: socket_name(jvm.nspid),
            conn: None,
            hello: None,
            loaded: false,
        };
        client.connect()?;
        Ok(client)
    }

    /// What the library said when this client last connected.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Whether this client loaded the library into the JVM (rather than finding it running).
    pub fn loaded_it(&self) -> bool {
        self.loaded
    }

    /// One sample of every task thread, classified inside the JVM.
    pub fn sample(&mut self) -> Result<(InProcessSample, ClassifiedDump), JvmtiError> {
        self.sample_with(SampleMode::Stacks)
    }

    /// One sample; by timers, each task is classified by Flink's timers where the library can
    /// read them (see `bpmon_jvmti::sampler`), and comes as one state in the dump's `states`.
    pub fn sample_with(
        &mut self,
        mode: SampleMode,
    ) -> Result<(InProcessSample, ClassifiedDump), JvmtiError> {
        // Stack samples ask for the busy threads' folded stacks too (for flame graphs).
        let request = match mode {
            SampleMode::Stacks => SampleRequest {
                folded: true,
                ..SampleRequest::stacks(self.options.max_depth)
            },
            SampleMode::Timers { totals } => SampleRequest {
                stacks: false,
                states: true,
                totals,
                ..SampleRequest::stacks(self.options.max_depth)
            },
            SampleMode::BusyStacks { totals } => SampleRequest {
                states: true,
                totals,
                folded: true,
                ..SampleRequest::stacks(self.options.max_depth)
            },
        };
        match self.request(&Request::Sample(request))? {
            Response::Sample(mut s) => {
                let read = match self.conn.as_mut() {
                    Some(conn) => conn.read(&mut s),
                    None => Err("not connected".into()),
                };
                match read {
                    Ok(dump) => Ok((s, dump)),
                    Err(message) => {
                        // Start over on a fresh connection, where every thread is introduced.
                        self.conn = None;
                        Err(JvmtiError::Sampler {
                            pid: self.pid,
                            message,
                        })
                    }
                }
            }
            other => Err(self.unexpected("sample", &other)),
        }
    }

    /// Whether the library takes runs of timers-only samples ([`JvmtiClient::run`]).
    pub fn runs(&self) -> bool {
        self.hello.as_ref().is_some_and(|h| h.runs)
    }

    /// Timers-only samples taken by the library on its own clock, `at` after the request (the
    /// timers' totals read at those marked), answered together: one round trip for what would
    /// be a round trip each. One result per entry of `at`, in order: a run that stops short
    /// gives its reason for the first sample it did not take, and says so for the others.
    pub fn run(
        &mut self,
        at: &[(Duration, bool)],
    ) -> Vec<Result<(InProcessSample, ClassifiedDump), JvmtiError>> {
        let run = SampleRun {
            max_depth: self.options.max_depth,
            at_us: at.iter().map(|(d, _)| d.as_micros() as u64).collect(),
            totals: (0..at.len() as u32).filter(|i| at[*i as usize].1).collect(),
        };
        let mut results = Vec::with_capacity(at.len());
        let error = match self.request(&Request::Run(run)) {
            Ok(Response::Run(reply)) => {
                let mut error = reply.error.map(|message| JvmtiError::Sampler {
                    pid: self.pid,
                    message,
                });
                for mut s in reply.samples.into_iter().take(at.len()) {
                    let read = match self.conn.as_mut() {
                        Some(conn) => conn.read(&mut s),
                        None => Err("not connected".into()),
                    };
                    match read {
                        Ok(dump) => results.push(Ok((s, dump))),
                        Err(message) => {
                            // Start over on a fresh connection, where every thread is introduced.
                            self.conn = None;
                            error = Some(JvmtiError::Sampler {
                                pid: self.pid,
                                message,
                            });
                            break;
                        }
                    }
                }
                error
            }
            Ok(other) => Some(self.unexpected("run", &other)),
            Err(e) => Some(e),
        };
        if results.len() < at.len() {
            let first = error.unwrap_or_else(|| JvmtiError::Protocol {
                pid: self.pid,
                detail: format!(
                    "a run of {} samples answered with {}",
                    at.len(),
                    results.len()
                ),
            });
            let why = first.to_string();
            results.push(Err(first));
            while results.len() < at.len() {
                results.push(Err(JvmtiError::Sampler {
                    pid: self.pid,
                    message: format!("not taken: the run stopped short ({why})"),
                }));
            }
        }
        results
    }

    /// Ends the library's thread in the JVM (it closes and removes its socket). The library
    /// stays loaded (a JVM cannot unload an agent); the next `open` starts it again.
    pub fn stop(mut self) -> Result<(), JvmtiError> {
        match self.request(&Request::Stop)? {
            Response::Stopping => Ok(()),
            other => Err(self.unexpected("stop", &other)),
        }
    }

    fn unexpected(&self, asked: &str, got: &Response) -> JvmtiError {
        match got {
            Response::Error { message } => JvmtiError::Sampler {
                pid: self.pid,
                message: message.clone(),
            },
            other => JvmtiError::Protocol {
                pid: self.pid,
                detail: format!("asked `{asked}`, got {other:?}"),
            },
        }
    }

    /// One request and its response; connects (or reconnects, or loads) first when needed.
    fn request(&mut self, request: &Request) -> Result<Response, JvmtiError> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let result = self.round_trip(request);
        if result.is_err() {
            // The next request starts from a fresh connection.
            self.conn = None;
        }
        result
    }

    fn round_trip(&mut self, request: &Request) -> Result<Response, JvmtiError> {
        let pid = self.pid;
        let waited = self.options.io_timeout;
        let conn = self.conn.as_mut().ok_or(JvmtiError::Protocol {
            pid,
            detail: "not connected".into(),
        })?;
        let mut line = serde_json::to_vec(request).map_err(|e| JvmtiError::Protocol {
            pid,
            detail: format!("encoding the request: {e}"),
        })?;
        line.push(b'\n');
        let io_err = |context: &'static str| {
            move |source: io::Error| {
                if is_timeout(&source) {
                    JvmtiError::Timeout { pid, waited }
                } else {
                    JvmtiError::Io {
                        pid,
                        context,
                        source,
                    }
                }
            }
        };
        conn.writer
            .write_all(&line)
            .map_err(io_err("sending a request"))?;
        let mut reply = Vec::with_capacity(16 * 1024);
        let n = (&mut conn.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut reply)
            .map_err(io_err("reading the response"))?;
        if n == 0 {
            return Err(JvmtiError::Io {
                pid,
                context: "reading the response",
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the sampler closed the connection",
                ),
            });
        }
        if reply.last() != Some(&b'\n') {
            return Err(JvmtiError::Protocol {
                pid,
                detail: format!("a response longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        decode(&reply).map_err(|e| JvmtiError::Protocol {
            pid,
            detail: format!(
                "malformed response ({e}): {}",
                String::from_utf8_lossy(&reply[..reply.len().min(200)])
            ),
        })
    }

    /// Connects to the running library, or loads it and connects; then `hello`.
    fn connect(&mut self) -> Result<(), JvmtiError> {
        let stream = match self.attacher.connect_tmp_socket(&self.socket)? {
            Some(s) => s,
            None => {
                self.load()?;
                self.wait_for_socket()?
            }
        };
        self.check_peer(&stream)?;
        let timeout = Some(self.options.io_timeout);
        let io_err = |source| JvmtiError::Io {
            pid: self.pid,
            context: "setting socket timeouts",
            source,
        };
        stream.set_read_timeout(timeout).map_err(io_err)?;
        stream.set_write_timeout(timeout).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        self.conn = Some(Connection {
            reader: BufReader::new(stream),
            writer,
            known: Known::default(),
            roster: None,
        });
        let hello = Request::Hello {
            protocol: INPROCESS_PROTOCOL_VERSION,
        };
        match self.round_trip(&hello) {
            Ok(Response::Hello(h)) if h.protocol == INPROCESS_PROTOCOL_VERSION => {
                self.hello = Some(h);
                Ok(())
            }
            Ok(other) => {
                self.conn = None;
                Err(match other {
                    Response::Error { message } => JvmtiError::Sampler {
                        pid: self.pid,
                        message,
                    },
                    other => JvmtiError::Protocol {
                        pid: self.pid,
                        detail: format!("hello answered with {other:?}"),
                    },
                })
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// The socket's peer must be the JVM itself (the kernel says who holds the other end).
    fn check_peer(&self, stream: &UnixStream) -> Result<(), JvmtiError> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let peer = getsockopt(stream, PeerCredentials).ok().map(|c| c.pid());
        if peer == Some(self.pid as i32) {
            Ok(())
        } else {
            Err(JvmtiError::WrongPeer {
                pid: self.pid,
                socket: self.socket.clone(),
                peer,
            })
        }
    }

    /// Loads the library: its own path when the JVM shares our root, else a copy in the JVM's
    /// `/tmp` (the JVM `dlopen`s in its own mount namespace).
    fn load(&mut self) -> Result<(), JvmtiError> {
        let library = &self.options.library;
        let missing = |detail: String| JvmtiError::LibraryMissing {
            path: library.clone(),
            detail,
        };
        let absolute = std::fs::canonicalize(library).map_err(|e| missing(e.to_string()))?;
        let in_jvm: PathBuf = if self.attacher.sees_same_file(&absolute) {
            absolute
        } else {
            let bytes = std::fs::read(&absolute).map_err(|e| missing(e.to_string()))?;
            let name = format!(
                "bpmon-jvmti-{}-{:016x}.so",
                env!("CARGO_PKG_VERSION"),
                fnv1a(&bytes)
            );
            self.attacher.install_in_tmp(&name, &bytes)?
        };
        let shown = in_jvm.display().to_string();
        let options = format!("socket=/tmp/{}", self.socket);
        match self.attacher.load_agent(&shown, &options) {
            Ok(()) => {
                self.loaded = true;
                tracing::info!(pid = self.pid, library = %shown, "in-process sampler loaded");
                Ok(())
            }
            Err(AttachError::Command { message, .. }) => Err(JvmtiError::LoadRefused {
                pid: self.pid,
                library: shown,
                hint: load_hint(&message),
                message,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn wait_for_socket(&mut self) -> Result<UnixStream, JvmtiError> {
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            if let Some(s) = self.attacher.connect_tmp_socket(&self.socket)? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(JvmtiError::NoSocket {
                    pid: self.pid,
                    socket: self.socket.clone(),
                    waited: SOCKET_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The socket's name in the JVM's `/tmp`: fixed per JVM, so a restarted agent finds it.
pub fn socket_name(nspid: u32) -> String {
    format!(".bpmon-jvmti-{nspid}")
}

/// What an operator can do about a refused `load`.
fn load_hint(message: &str) -> &'static str {
    if message.contains("EnableDynamicAgentLoading") || message.contains("not enabled") {
        " (JDK 21+ can forbid loading agents into a running JVM: start the TaskManager with \
         -XX:+EnableDynamicAgentLoading in env.java.opts.taskmanager, or load bpmon at start with \
         -agentpath; the attach backend needs neither)"
    } else if message.contains("cannot open shared object") || message.contains("not loaded") {
        " (the JVM must be able to read the library at that path, as its own user)"
    } else {
        ""
    }
}

/// A response line. The protocol's `Response` is tagged by its first field (`kind`), which
/// serde's generic path can only find by buffering the whole response first, a copy of every
/// string in it: the two responses sampling is made of are decoded straight into their types
/// (which ignore the tag as an unknown field), anything else the generic way.
fn decode(line: &[u8]) -> serde_json::Result<Response> {
    if line.starts_with(br#"{"kind":"run","#) {
        serde_json::from_slice(line).map(Response::Run)
    } else if line.starts_with(br#"{"kind":"sample","#) {
        serde_json::from_slice(line).map(Response::Sample)
    } else {
        serde_json::from_slice(line)
    }
}

/// The library's sample as the sampling loop's classified dump. Evidence is kept where a dump
/// would have it: an activity for busy samples only, a lock for lock samples only.
fn to_classified(s: &InProcessSample) -> ClassifiedDump {
    ClassifiedDump {
        threads: s
            .threads
            .iter()
            .map(|t| {
                let activity = t.activity.filter(|_| t.class == SampleClass::Busy);
                let lock = t
                    .lock
                    .as_ref()
                    .filter(|_| activity == Some(Activity::Lock))
                    .map(|l| AwaitedLock {
                        class: l.class.clone(),
                        owner: l.owner.clone(),
                    });
                DumpThread {
                    name: t.name.clone(),
                    java_id: Some(t.java_id),
                    os_tid: None,
                    elapsed_s: None,
                    class: t.class,
                    top_frame: t.top_frame.clone(),
                    task: t.task.clone(),
                    activity,
                    lock,
                    cpu_ms: t.cpu_ns.map(|ns| ns as f64 / 1e6),
                    // Busy threads' whole stacks, from libraries asked for them.
                    stack: t.stack.clone().filter(|_| t.class == SampleClass::Busy),
                    timers: t.timers,
                    stackless: t.stackless,
                }
            })
            .collect(),
        skipped_lines: 0,
        inside_us: Some(s.took_us),
        inside_cpu_us: s.cpu_us,
        states: None,
    }
}

/// A stable content hash for the copied library's name (a changed library gets a new name).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `path` names a readable library file.
pub fn library_is_present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpmon_proto::inprocess::{SampledLock, SampledThread, TaskRef};

    #[test]
    fn a_refusal_names_what_to_do() {
        assert!(load_hint(
            "Dynamic agent loading is not enabled. Use -XX:+EnableDynamicAgentLoading"
        )
        .contains("-XX:+EnableDynamicAgentLoading"));
        assert!(
            load_hint("/x.so was not loaded.\n/x.so: cannot open shared object file")
                .contains("its own user")
        );
        assert_eq!(load_hint("return code: -1"), "");
    }

    #[test]
    fn samples_become_dump_threads_with_their_exact_task() {
        let s = InProcessSample {
            taken_at_ms: 1,
            took_us: 42,
            threads: vec![SampledThread {
                name: "Map (1/2)#3".into(),
                java_id: 77,
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
                    attempt: 3,
                    execution_attempt_id: "e".into(),
                }),
            }],
            timer_states: None,
            gone: 0,
            errors: vec![],
            cpu_us: Some(40),
        };
        let d = to_classified(&s);
        assert_eq!(d.inside_us, Some(42));
        assert_eq!(d.threads[0].java_id, Some(77));
        assert_eq!(d.threads[0].class, SampleClass::Blocked);
        assert_eq!(d.threads[0].task.as_ref().map(|t| t.attempt), Some(3));
        assert_eq!(
            (
                d.threads[0].activity,
                &d.threads[0].lock,
                d.threads[0].cpu_ms
            ),
            (None, &None, None),
            "a library without evidence leaves it unknown"
        );
    }

    fn busy(name: &str, activity: Activity) -> SampledThread {
        SampledThread {
            name: name.into(),
            java_id: 1,
            class: SampleClass::Busy,
            top_frame: Some("com.acme.Shared.update(Shared.java:12)".into()),
            task: None,
            activity: Some(activity),
            lock: None,
            cpu_ns: None,
            timers: None,
            stackless: false,
            stack: None,
            stack_id: None,
        }
    }

    #[test]
    fn evidence_becomes_what_a_dump_would_give() {
        let lock = SampledLock {
            class: "com.acme.Shared".into(),
            owner: Some("holder".into()),
        };
        let blocked = SampledThread {
            lock: Some(lock.clone()),
            cpu_ns: Some(12_345_678),
            ..busy("Map (1/2)#0", Activity::Lock)
        };
        let running = SampledThread {
            cpu_ns: Some(2_000_000_000),
            ..busy("Map (2/2)#0", Activity::Running)
        };
        // Evidence out of place (a library bug, or a newer one) is not passed on: no activity
        // for a sample that is not busy, no lock for one that is not waiting for a lock.
        let waiting = SampledThread {
            class: SampleClass::Waiting,
            lock: Some(lock.clone()),
            cpu_ns: Some(5),
            ..busy("Map (3/3)#0", Activity::Sleep)
        };
        let running_with_lock = SampledThread {
            lock: Some(lock),
            ..busy("Map (4/4)#0", Activity::Running)
        };
        let s = InProcessSample {
            threads: vec![blocked, running, waiting, running_with_lock],
            ..Default::default()
        };
        let d = to_classified(&s);
        let t = &d.threads;
        assert_eq!(t[0].activity, Some(Activity::Lock));
        assert_eq!(
            t[0].lock,
            Some(AwaitedLock {
                class: "com.acme.Shared".into(),
                owner: Some("holder".into())
            })
        );
        assert_eq!(t[0].cpu_ms, Some(12.345678));
        assert_eq!(
            (t[1].activity, t[1].cpu_ms),
            (Some(Activity::Running), Some(2000.0))
        );
        assert_eq!((t[2].activity, &t[2].lock), (None, &None));
        assert_eq!(
            t[2].cpu_ms,
            Some(0.000005),
            "CPU time is read for every sample"
        );
        assert_eq!(
            (t[3].activity, &t[3].lock),
            (Some(Activity::Running), &None)
        );
    }

    #[test]
    fn jvmti_evidence_names_the_cause_in_the_tally() {
        use crate::sampling::tally::{Tally, ThreadSample};
        use crate::sampling::window::sample_of;
        // Two samples of one task blocked on a monitor, a second apart.
        let mut tally = Tally::new();
        for (at_ms, cpu_ns) in [(0u64, 1_000_000u64), (1000, 1_000_000)] {
            let s = InProcessSample {
                threads: vec![SampledThread {
                    lock: Some(SampledLock {
                        class: "com.acme.Shared".into(),
                        owner: Some("holder".into()),
                    }),
                    cpu_ns: Some(cpu_ns),
                    ..busy("Map (1/2)#0", Activity::Lock)
                }],
                ..Default::default()
            };
            let d = to_classified(&s);
            let samples: Vec<ThreadSample> = d.threads.iter().map(sample_of).collect();
            tally.add_dump(&samples, at_ms);
        }
        let task = &tally.into_tasks(5)[0];
        let activity = task.activity.expect("every busy sample has an activity");
        assert_eq!(activity.lock, 2);
        assert_eq!(task.locks.len(), 1);
        assert_eq!(task.locks[0].class, "com.acme.Shared");
        assert_eq!(task.locks[0].owner.as_deref(), Some("holder"));
        let cpu = task.cpu.expect("two CPU readings");
        assert_eq!((cpu.cpu_ms, cpu.wall_ms), (0, 1000));
    }

    #[test]
    fn responses_decode_alike_by_the_fast_path_and_the_generic_one() {
        use bpmon_proto::inprocess::{RunReply, TimerStates};
        let sample = InProcessSample {
            taken_at_ms: 7,
            took_us: 250,
            threads: vec![busy("Map (1/1)#0", Activity::Running)],
            timer_states: Some(TimerStates {
                at_ms: 7,
                method: bpmon_proto::TimerMethod::Fields,
                threads: Some(vec![1, 2]),
                states: "ix".into(),
                totals: None,
            }),
            ..Default::default()
        };
        for response in [
            Response::Sample(sample.clone()),
            Response::Run(RunReply {
                samples: vec![sample.clone(), sample],
                error: Some("gone".into()),
            }),
            Response::Stopping,
            Response::Error {
                message: "no".into(),
            },
        ] {
            let line = serde_json::to_vec(&response).unwrap();
            let generic: Response = serde_json::from_slice(&line).unwrap();
            assert_eq!(decode(&line).unwrap(), generic);
            assert_eq!(generic, response);
        }
        // A malformed sample is an error either way.
        assert!(decode(br#"{"kind":"sample","threads":7}"#).is_err());
    }

    #[test]
    fn socket_names_are_per_jvm_and_hidden() {
        assert_eq!(socket_name(4242), ".bpmon-jvmti-4242");
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
