//! `libbpmon_jvmti.so` inside real JVMs (JDK 17 and Temurin 25), no mocks: a fake TaskManager
//! (`tests/fixture`, threads named and parked like Flink's) is started with `-agentpath`, sampled
//! over the socket, stopped, loaded again with `jcmd … JVMTI.agent_load`, moved to another
//! socket, refused bad options, and must exit on its own at the end. The evidence of a cause
//! (activity, awaited monitor, CPU time) is checked against what a thread dump of the same JVM
//! gives, loaded at start and by attach.
//!
//! `BPMON_JDK17` / `BPMON_JDK25` point at other JDK homes; `BPMON_JVMTI_LIB` at another build of
//! the library (e.g. a release build, to measure its cost).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::{
    Hello, InProcessSample, Known, Request, Response, SampleRequest, SampledLock, SampledThread,
    TaskRef, INPROCESS_PROTOCOL_VERSION,
};
use bpmon_proto::Activity;
use bpmon_stacks::classify::SampleClass;
use bpmon_stacks::{activity, threaddump};

const JOB: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TIMEOUT: Duration = Duration::from_secs(20);

fn jdk17() -> String {
    jdk("BPMON_JDK17", "/usr/lib/jvm/java-17-openjdk-amd64")
}

fn jdk25() -> String {
    jdk("BPMON_JDK25", "/usr/lib/jvm/temurin-25-jdk-amd64")
}

fn jdk(var: &str, default: &str) -> String {
    let home = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        Path::new(&home).join("bin/java").is_file(),
        "no JDK at {home}: install it or set {var} to a JDK home"
    );
    home
}

/// The library under test. `cargo test` builds the crate's cdylib into `deps/`, next to the test
/// binary (only `cargo build` copies it up to `target/<profile>/`, so that copy may be stale).
fn library() -> PathBuf {
    if let Ok(lib) = std::env::var("BPMON_JVMTI_LIB") {
        return PathBuf::from(lib);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let lib = deps.join("libbpmon_jvmti.so");
    assert!(
        lib.is_file(),
        "{} is missing: build it with `cargo build -p bpmon-jvmti`",
        lib.display()
    );
    lib
}

/// Compiles the fixture once per test binary.
fn classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jvmti-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture");
        let mut sources = Vec::new();
        collect_java(&src, &mut sources);
        let status = Command::new(format!("{}/bin/javac", jdk17()))
            .args(["--release", "17", "-nowarn", "-d"])
            .arg(&dir)
            .args(&sources)
            .status()
            .expect("javac runs");
        assert!(status.success(), "javac failed");
        dir
    })
}

fn collect_java(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_java(&path, out);
        } else if path.extension().is_some_and(|e| e == "java") {
            out.push(path);
        }
    }
}

/// A private directory for sockets, removed when dropped: short (sun_path is 108 bytes) and
/// searchable by anyone (the other-uid test connects as nobody).
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(name: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("bpmon-jvmti-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SocketDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fixture JVM, killed by pid if still running when dropped.
struct Jvm {
    child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Java thread id by thread name, as the fixture printed them.
    ids: BTreeMap<String, u64>,
    jdk: String,
}

impl Jvm {
    /// Starts the fixture, with the library loaded if `agent` has its options. `-Xcheck:jni`
    /// (unless measuring) makes the JVM check every JNI call the library makes.
    fn start(jdk: &str, agent: Option<&str>, fillers: usize) -> Jvm {
        let mut cmd = Command::new(format!("{jdk}/bin/java"));
        cmd.arg("-Xmx128m");
        if fillers == 0 {
            cmd.arg("-Xcheck:jni");
        }
        if jdk != jdk17() {
            cmd.arg("-XX:+EnableDynamicAgentLoading");
        }
        if let Some(options) = agent {
            cmd.arg(format!("-agentpath:{}={options}", library().display()));
        }
        cmd.arg("-cp")
            .arg(classes())
            .arg("bpmonfixture.Fixture")
            .arg(fillers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("java starts");
        let stdin = child.stdin.take().unwrap();
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut jvm = Jvm {
            child,
            stdin,
            stdout,
            stderr,
            ids: BTreeMap::new(),
            jdk: jdk.to_string(),
        };
        loop {
            let line = jvm.line();
            if line == "ready" {
                break;
            }
            let rest = line.strip_prefix("thread ").expect("thread <id> <name>");
            let (id, name) = rest.split_once(' ').unwrap();
            jvm.ids.insert(name.to_string(), id.parse().unwrap());
        }
        jvm
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&self) -> String {
        match self.stdout.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "no output from the JVM ({e}); its stderr: {:?}",
                self.stderr_lines()
            ),
        }
    }

    fn command(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    /// The JVM still runs Java code.
    fn assert_alive(&mut self) {
        assert_eq!(self.command("ping"), "pong");
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn our_lines(&self) -> Vec<String> {
        self.stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("bpmon-jvmti:"))
            .collect()
    }

    /// Waits until stderr has a line containing `text`.
    fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.stderr_lines().iter().any(|l| l.contains(text)) {
            assert!(
                Instant::now() < deadline,
                "no stderr line with {text:?}: {:?}",
                self.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `jcmd <pid> JVMTI.agent_load <lib> "<options>"`: its output. The options are quoted
    /// because jcmd's argument parser would otherwise take `socket=/x` for a named argument and
    /// pass on only `socket`.
    fn load(&self, options: &str) -> String {
        let out = Command::new(format!("{}/bin/jcmd", self.jdk))
            .arg(self.pid().to_string())
            .arg("JVMTI.agent_load")
            .arg(library())
            .arg(format!("\"{options}\""))
            .output()
            .expect("jcmd runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `jcmd <pid> Thread.print`.
    fn thread_dump(&self) -> String {
        let out = Command::new(format!("{}/bin/jcmd", self.jdk))
            .arg(self.pid().to_string())
            .arg("Thread.print")
            .output()
            .expect("jcmd runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the JVM printed on stderr came from the library: no JNI check warning, no
    /// crash report, no dynamic-loading warning.
    fn assert_stderr_is_ours(&self) {
        let lines = self.stderr_lines();
        assert!(
            lines.iter().all(|l| l.starts_with("bpmon-jvmti: ")),
            "{lines:#?}"
        );
    }

    /// Ends the fixture: main returns, and the JVM must exit on its own.
    fn quit(mut self) -> std::process::ExitStatus {
        writeln!(self.stdin, "quit").unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the JVM did not exit once main returned: a non-daemon thread keeps it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to the library's socket.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// What the connection introduced, as the agent keeps it.
    known: Known,
    seen: std::collections::HashSet<u64>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            known: Known::default(),
            seen: Default::default(),
        }
    }

    fn ask(&mut self, request: &Request) -> Response {
        let mut line = serde_json::to_string(request).unwrap();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).unwrap();
        self.read().expect("an answer")
    }

    fn read(&mut self) -> Option<Response> {
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&answer).expect("a response line")),
        }
    }

    fn hello(&mut self) -> Hello {
        match self.ask(&Request::Hello {
            protocol: INPROCESS_PROTOCOL_VERSION,
        }) {
            Response::Hello(h) => h,
            other => panic!("hello answered {other:?}"),
        }
    }

    /// One sample, with names and tasks put back as the agent does; on the wire a thread
    /// comes with its name the first time only.
    fn sample(&mut self, max_depth: u32) -> InProcessSample {
        let mut s = match self.ask(&Request::Sample(SampleRequest::stacks(max_depth))) {
            Response::Sample(s) => s,
            other => panic!("sample answered {other:?}"),
        };
        for t in &s.threads {
            let first = self.seen.insert(t.java_id);
            assert_eq!(
                t.name.is_empty(),
                !first,
                "thread #{} on the wire",
                t.java_id
            );
        }
        self.known.expand(&mut s).expect("every thread introduced");
        s
    }

    fn stop(&mut self) {
        assert_eq!(self.ask(&Request::Stop), Response::Stopping);
        assert!(self.read().is_none(), "closed after stopping");
    }
}

fn by_name(sample: &InProcessSample) -> BTreeMap<&str, &SampledThread> {
    sample
        .threads
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

fn task(vertex: &str, subtask: u32, attempt: u32) -> TaskRef {
    TaskRef {
        job_id: JOB.into(),
        vertex_id: vertex.into(),
        subtask,
        attempt,
        execution_attempt_id: format!("{vertex}_{subtask}_{attempt}"),
    }
}

const TASK_THREADS: [&str; 10] = [
    "Busy (1/1)#0",
    "Ending (1/1)#0",
    "Legacy Source Thread - Source: legacy (1/1)#0",
    "Locked (1/2)#0",
    "Locked (2/2)#0",
    "Map (1/2)#0",
    "Reentrant (1/1)#0",
    "Sink: out (2/2)#1",
    "Source: legacy (1/1)#0",
    "Static lock (1/1)#0",
];

/// What every sample of the fixture must say, whoever took it.
fn check_sample(jvm: &Jvm, sample: &InProcessSample, expected_names: &[&str]) {
    let threads = by_name(sample);
    let names: Vec<&str> = threads.keys().copied().collect();
    assert_eq!(names, expected_names, "only task threads, each once");
    for t in &sample.threads {
        assert_eq!(
            Some(&t.java_id),
            jvm.ids.get(&t.name),
            "java id of {}",
            t.name
        );
    }
    let map = threads["Map (1/2)#0"];
    assert_eq!(map.class, SampleClass::Waiting);
    assert_eq!(map.top_frame, None);
    assert_eq!(
        map.task,
        Some(task("0000000000000000000000000000000a", 0, 0))
    );
    let sink = threads["Sink: out (2/2)#1"];
    assert_eq!(sink.class, SampleClass::Blocked);
    assert_eq!(
        sink.task,
        Some(task("0000000000000000000000000000000b", 1, 1))
    );
    let busy = threads["Busy (1/1)#0"];
    assert_eq!(busy.class, SampleClass::Busy);
    let top = busy.top_frame.as_deref().unwrap_or_default();
    assert!(
        top.starts_with("bpmonfixture.Spin.spin(Spin.java:"),
        "busy frame with its line: {top}"
    );
    assert_eq!(
        busy.task,
        Some(task("0000000000000000000000000000000c", 0, 0))
    );
    let legacy = threads["Legacy Source Thread - Source: legacy (1/1)#0"];
    assert_eq!(legacy.class, SampleClass::Busy);
    assert!(
        legacy
            .top_frame
            .as_deref()
            .is_some_and(|f| f.starts_with("bpmonfixture.Sleeper.sleep(Sleeper.java:")),
        "{legacy:?}"
    );
    assert_eq!(
        legacy.task, None,
        "a legacy source thread has no task of its own"
    );
    let not_a_task = threads["Source: legacy (1/1)#0"];
    assert_eq!(not_a_task.class, SampleClass::Waiting);
    assert_eq!(not_a_task.task, None, "its Runnable is no Task");
    assert!(sample.took_us > 0);
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The whole life of the library in one JVM.
fn lifecycle(jdk: &str) {
    let dir = SocketDir::new(if jdk == jdk17() { "life17" } else { "life25" });
    let first = dir.join("first.sock");
    let mut jvm = Jvm::start(jdk, Some(&format!("socket={}", first.display())), 0);
    jvm.wait_stderr(&format!(
        "bpmon-jvmti: sampler started on {} (start 1)",
        first.display()
    ));
    let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is the JVM user's alone");
    // The sampler is a daemon Java thread with a name of its own.
    let dump = jvm.thread_dump();
    assert!(
        dump.lines()
            .any(|l| l.starts_with("\"bpmon-jvmti sampler\" ") && l.contains(" daemon ")),
        "{dump}"
    );

    // Hello, then samples.
    let mut c = Client::connect(&first);
    let hello = c.hello();
    assert_eq!(hello.protocol, INPROCESS_PROTOCOL_VERSION);
    assert_eq!(hello.pid, jvm.pid());
    assert_eq!(hello.starts, 1);
    assert_eq!(hello.library_version, env!("CARGO_PKG_VERSION"));
    assert!(!hello.vm_version.is_empty());
    let major = if jdk == jdk17() { "17." } else { "25." };
    assert!(hello.jvmti_version.starts_with(major), "{hello:?}");

    let mut took = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..20 {
        let s = c.sample(128);
        check_sample(&jvm, &s, &TASK_THREADS);
        assert_eq!(s.gone, 0);
        took.push(s.took_us);
        errors.extend(s.errors);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The Runnable that is no Task is reported once, not per sample; so is the fixture's Task
    // having no metric group (as in a Flink before 1.15), once for all its tasks.
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("Source: legacy (1/1)#0: task identity: the thread's Runnable is a bpmonfixture.Fixture$$Lambda")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(
            |e| e.contains("task timers: Task.getMetricGroup: Method not found")
                && e.contains("said once")
        ),
        "{errors:?}"
    );
    let first_took = took[0];
    let mut took = took.split_off(1);
    took.sort_unstable();
    eprintln!(
        "{jdk}: {} task threads: first sample {first_took} µs (resolving methods), then median {} µs, p90 {} µs, max {} µs",
        TASK_THREADS.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.9),
        took[took.len() - 1]
    );

    // A shallow sample still classifies (the rules look at the top frames).
    let shallow = c.sample(12);
    assert_eq!(
        by_name(&shallow)["Sink: out (2/2)#1"].class,
        SampleClass::Blocked
    );

    // A thread that ends between two refreshes of the thread list is `gone`, then forgotten.
    std::thread::sleep(Duration::from_millis(1100));
    let refreshed = c.sample(64);
    assert!(by_name(&refreshed).contains_key("Ending (1/1)#0"));
    assert_eq!(jvm.command("end Ending (1/1)#0"), "ended Ending (1/1)#0");
    let s = c.sample(64);
    assert_eq!(s.gone, 1, "{s:?}");
    let without_ending: Vec<&str> = TASK_THREADS
        .iter()
        .copied()
        .filter(|n| *n != "Ending (1/1)#0")
        .collect();
    check_sample(&jvm, &s, &without_ending);
    let s = c.sample(64);
    assert_eq!(s.gone, 0);
    check_sample(&jvm, &s, &without_ending);
    drop(c);

    // Another uid is refused (the test runs as root; the socket is opened up for the attempt).
    if nix_is_root() {
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o666)).unwrap();
        let path = first.clone();
        let refused = std::thread::spawn(move || connect_as(&path, 65534))
            .join()
            .unwrap();
        match refused {
            Some(Response::Error { message }) => assert!(
                message.starts_with("uid 65534 may not use this socket"),
                "{message}"
            ),
            other => panic!("another uid got {other:?}"),
        }
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // Stop: the socket goes, the JVM stays.
    let mut c = Client::connect(&first);
    c.hello();
    c.stop();
    assert!(!first.exists(), "the socket is unlinked");
    jvm.wait_stderr(&format!(
        "bpmon-jvmti: sampler stopped on {} (stop requested)",
        first.display()
    ));
    jvm.assert_alive();

    // Loaded again into the running JVM: the sampler starts again.
    let second = dir.join("second.sock");
    let out = jvm.load(&format!("socket={}", second.display()));
    assert!(out.contains("return code: 0"), "{out}");
    let mut c = Client::connect(&second);
    let hello = c.hello();
    assert_eq!(hello.starts, 2);
    let s = c.sample(64);
    check_sample(&jvm, &s, &without_ending);
    // A new sampler says again, once each, what its first said: no Task, no timers.
    assert!(s.errors.len() <= 2, "{:?}", s.errors);
    jvm.assert_alive();

    // The same socket again: nothing happens.
    let out = jvm.load(&format!("socket={}", second.display()));
    assert!(out.contains("return code: 0"), "{out}");
    assert_eq!(c.sample(64).threads.len(), without_ending.len());
    drop(c);

    // Another socket: the sampler moves there.
    let third = dir.join("third.sock");
    let out = jvm.load(&format!("socket={}", third.display()));
    assert!(out.contains("return code: 0"), "{out}");
    assert!(!second.exists(), "the old socket is unlinked");
    let mut c = Client::connect(&third);
    assert_eq!(c.hello().starts, 3);
    check_sample(&jvm, &c.sample(64), &without_ending);
    drop(c);

    // A bad option string: refused with a message, the running sampler untouched.
    let out = jvm.load("socket=relative.sock");
    assert!(!out.contains("return code: 0"), "{out}");
    jvm.wait_stderr("bpmon-jvmti: Agent_OnAttach refused: bad options: socket path \"relative.sock\" is not absolute");
    // A socket that cannot be bound: refused, and the running sampler stays where it is.
    let out = jvm.load("socket=/nonexistent-bpmon-dir/x.sock");
    assert!(!out.contains("return code: 0"), "{out}");
    jvm.wait_stderr(
        "bpmon-jvmti: Agent_OnAttach refused: socket /nonexistent-bpmon-dir/x.sock: bind: ",
    );
    assert!(third.exists());
    let mut c = Client::connect(&third);
    assert_eq!(c.hello().starts, 3);
    jvm.assert_alive();

    let started: Vec<String> = jvm
        .our_lines()
        .into_iter()
        .filter(|l| l.contains("sampler started"))
        .collect();
    assert_eq!(started.len(), 3, "{started:?}");

    // The sampler thread is a daemon: with it running, the JVM exits once main returns, and
    // Agent_OnUnload removes the socket.
    drop(c);
    jvm.assert_stderr_is_ours();
    let status = jvm.quit();
    assert!(status.success(), "{status}");
    assert!(!third.exists(), "the socket is unlinked when the JVM exits");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Connects as `uid` from a thread of its own (raw setresuid/setresgid act on the calling thread
/// only) and returns the first answer.
fn connect_as(path: &Path, uid: u32) -> Option<Response> {
    // SAFETY: plain syscalls changing this thread's credentials; the thread ends right after.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, uid, uid, uid), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
    let stream = UnixStream::connect(path).expect("connect as another uid");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut c = Client {
        reader: BufReader::new(stream.try_clone().unwrap()),
        writer: stream,
        known: Known::default(),
        seen: Default::default(),
    };
    let answer = c.read();
    assert!(c.read().is_none(), "closed after the refusal");
    answer
}

#[test]
fn lifecycle_on_jdk17() {
    lifecycle(&jdk17());
}

#[test]
fn lifecycle_on_jdk25() {
    lifecycle(&jdk25());
}

/// A load into a JVM started without the library (attach only), on JDK 25 as well.
#[test]
fn attach_into_a_plain_jvm() {
    for jdk in [jdk17(), jdk25()] {
        let dir = SocketDir::new(if jdk == jdk17() { "plain17" } else { "plain25" });
        let socket = dir.join("s.sock");
        let mut jvm = Jvm::start(&jdk, None, 0);
        // A refused first load leaves nothing behind and does not count as a start.
        let out = jvm.load("socket=/tmp/x.sock,color=blue");
        assert!(!out.contains("return code: 0"), "{out}");
        jvm.wait_stderr(
            "bpmon-jvmti: Agent_OnAttach refused: bad options: unknown option \"color\"",
        );
        let out = jvm.load(&format!("socket={}", socket.display()));
        assert!(out.contains("return code: 0"), "{out}");
        let mut c = Client::connect(&socket);
        assert_eq!(c.hello().starts, 1);
        check_sample(&jvm, &c.sample(64), &TASK_THREADS);
        c.stop();
        jvm.assert_alive();
        jvm.assert_stderr_is_ours();
        assert!(jvm.quit().success());
    }
}

#[test]
fn bad_options_fail_the_jvm_start_with_one_line() {
    for jdk in [jdk17(), jdk25()] {
        for (options, message) in [
            (
                "sockt=/tmp/x.sock",
                "bpmon-jvmti: Agent_OnLoad refused: bad options: unknown option \"sockt\" (the only option is socket=/absolute/path)",
            ),
            (
                "",
                "bpmon-jvmti: Agent_OnLoad refused: bad options: missing option socket=/absolute/path",
            ),
        ] {
            let agent = if options.is_empty() {
                format!("-agentpath:{}", library().display())
            } else {
                format!("-agentpath:{}={options}", library().display())
            };
            let out = Command::new(format!("{jdk}/bin/java"))
                .arg(agent)
                .arg("-version")
                .output()
                .expect("java runs");
            assert!(!out.status.success(), "{jdk} {options}: the JVM must not start");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ours: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("bpmon-jvmti:"))
                .collect();
            assert_eq!(ours.len(), 1, "{stderr}");
            assert!(ours[0].starts_with(message), "{jdk}: {stderr}");
        }
    }
}

/// The cost of one sample with many task threads; printed, and bounded loosely so that a
/// regression by an order of magnitude fails.
#[test]
fn cost_of_a_sample_with_many_task_threads() {
    let fillers = 100;
    let dir = SocketDir::new("cost");
    let socket = dir.join("s.sock");
    let jvm = Jvm::start(
        &jdk17(),
        Some(&format!("socket={}", socket.display())),
        fillers,
    );
    let mut c = Client::connect(&socket);
    c.hello();
    let first = c.sample(128);
    assert_eq!(first.threads.len(), TASK_THREADS.len() + fillers);
    let mut took: Vec<u64> = (0..200)
        .map(|_| {
            let s = c.sample(128);
            assert_eq!(s.threads.len(), TASK_THREADS.len() + fillers);
            s.took_us
        })
        .collect();
    took.sort_unstable();
    let median = percentile(&took, 0.5);
    eprintln!(
        "{} task threads, depth 128, {}: first sample {} µs, then median {} µs, p90 {} µs, max {} µs",
        first.threads.len(),
        library().display(),
        first.took_us,
        median,
        percentile(&took, 0.9),
        took[took.len() - 1]
    );
    assert!(median < 50_000, "median {median} µs per sample");
    drop(jvm);
}

/// What a thread dump says of a busy task thread, by the agent's rules (`classify_dump` in
/// `bpmon-agent`): its activity, and the monitor it awaits with its owner.
/// A lock as a dump names it: class and owner.
type DumpLock = Option<(String, Option<String>)>;

fn dump_evidence(dump: &str) -> BTreeMap<String, (Activity, DumpLock)> {
    let parsed = threaddump::parse(dump);
    let owners = activity::monitor_owners(&parsed.threads);
    parsed
        .threads
        .iter()
        .filter(|t| TASK_THREADS.contains(&t.header.name.as_str()))
        .map(|t| {
            let a = activity::activity(t.header.state, &t.frames);
            let lock = activity::awaited_lock(t).map(|(address, class)| {
                (
                    class.to_string(),
                    owners.get(address).map(|o| o.to_string()),
                )
            });
            (t.header.name.clone(), (a, lock))
        })
        .collect()
}

/// The evidence of a cause, with the library loaded at start and by attach: a spinning thread
/// is running and its CPU time rises, threads blocked on a monitor wait for a lock whose class
/// and owner are named, a sleeping thread sleeps; and each busy thread's evidence is what a thread
/// dump of the same JVM gives.
fn evidence(jdk: &str, at_start: bool) {
    let tag = format!(
        "ev{}{}",
        if jdk == jdk17() { 17 } else { 25 },
        if at_start { "s" } else { "a" }
    );
    let dir = SocketDir::new(&tag);
    let socket = dir.join("s.sock");
    let options = format!("socket={}", socket.display());
    let jvm = Jvm::start(jdk, at_start.then_some(options.as_str()), 0);
    if !at_start {
        let out = jvm.load(&options);
        assert!(out.contains("return code: 0"), "{out}");
    }
    let mut c = Client::connect(&socket);
    c.hello();
    let first = c.sample(64);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let second = c.sample(64);
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let dump = dump_evidence(&jvm.thread_dump());

    let (a, b) = (by_name(&first), by_name(&second));
    let shared = SampledLock {
        class: "bpmonfixture.Contended$Shared".into(),
        owner: Some("lock holder".into()),
    };
    // Loaded by attach, the monitor comes from the ThreadMXBean, which does not say which
    // class a `Class` monitor stands for.
    let class_lock = SampledLock {
        class: if at_start {
            "java.lang.Class for bpmonfixture.Contended".into()
        } else {
            "java.lang.Class".into()
        },
        owner: Some("lock holder".into()),
    };
    for s in [&a, &b] {
        let spin = s["Busy (1/1)#0"];
        assert_eq!(
            (spin.activity, &spin.lock),
            (Some(Activity::Running), &None)
        );
        for name in ["Locked (1/2)#0", "Locked (2/2)#0"] {
            let t = s[name];
            assert_eq!(t.class, SampleClass::Busy, "{t:?}");
            assert_eq!(t.activity, Some(Activity::Lock), "{t:?}");
            assert_eq!(
                t.lock.as_ref(),
                Some(&shared),
                "{t:?}: {:?}",
                jvm.our_lines()
            );
        }
        let t = s["Static lock (1/1)#0"];
        assert_eq!(
            (t.activity, t.lock.as_ref()),
            (Some(Activity::Lock), Some(&class_lock)),
            "{t:?}"
        );
        let t = s["Reentrant (1/1)#0"];
        assert_eq!(
            (t.class, t.activity, t.lock.as_ref()),
            (
                SampleClass::Busy,
                Some(Activity::Lock),
                Some(&SampledLock {
                    class: "java.util.concurrent.locks.ReentrantLock$NonfairSync".into(),
                    owner: None,
                })
            ),
        );
        let sleeper = s["Legacy Source Thread - Source: legacy (1/1)#0"];
        assert_eq!(
            (sleeper.class, sleeper.activity, &sleeper.lock),
            (SampleClass::Busy, Some(Activity::Sleep), &None)
        );
        // Not busy: no activity, but CPU time all the same.
        for name in ["Map (1/2)#0", "Sink: out (2/2)#1"] {
            assert_eq!((s[name].activity, &s[name].lock), (None, &None), "{name}");
        }
        for t in s.values() {
            assert!(t.cpu_ns.is_some(), "{} has its CPU time", t.name);
        }
    }
    // The spinning thread used CPU between the samples (on a loaded 2-CPU machine, at least a
    // tenth of the wall time); the blocked and the sleeping ones next to none.
    let cpu_ms =
        |name: &str| (b[name].cpu_ns.unwrap() as f64 - a[name].cpu_ns.unwrap() as f64) / 1e6;
    let spun = cpu_ms("Busy (1/1)#0");
    assert!(spun > wall_ms / 10.0, "spun {spun} ms of {wall_ms} ms");
    for name in [
        "Locked (1/2)#0",
        "Legacy Source Thread - Source: legacy (1/1)#0",
    ] {
        assert!(cpu_ms(name) < 5.0, "{name}: {} ms", cpu_ms(name));
    }
    // The same as a thread dump of the JVM says, for every busy thread.
    for t in b.values().filter(|t| t.class == SampleClass::Busy) {
        let (activity, lock) = &dump[&t.name];
        assert_eq!(t.activity.as_ref(), Some(activity), "{}", t.name);
        let ours = t.lock.as_ref().map(|l| (l.class.clone(), l.owner.clone()));
        let dumped = match lock {
            Some((class, owner)) if !at_start && class.starts_with("java.lang.Class for ") => {
                Some(("java.lang.Class".to_string(), owner.clone()))
            }
            other => other.clone(),
        };
        assert_eq!(ours, dumped, "{}", t.name);
    }
    eprintln!(
        "{tag}: spinning thread {spun:.0} ms CPU in {wall_ms:.0} ms; sample with 3 blocked threads took {} µs",
        second.took_us
    );
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    drop(c);
    jvm.assert_stderr_is_ours();
    assert!(
        !jvm.our_lines().iter().any(|l| l.contains("not granted")),
        "CPU time is granted: {:?}",
        jvm.our_lines()
    );
}

#[test]
fn evidence_on_jdk17() {
    evidence(&jdk17(), true);
    evidence(&jdk17(), false);
}

#[test]
fn evidence_on_jdk25() {
    evidence(&jdk25(), true);
    evidence(&jdk25(), false);
}
