//! The native attach client against real JVMs (JDK 17 and Temurin 25): dumps, protocol versions,
//! credentials, and each failure mode an operator can meet.

mod common;
use common::{jdk17, jdk25, jvmti_library};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bpmon_agent::backends::attach::{AttachError, AttachOptions, Attacher, Protocol};

/// Compiles FakeTaskManager.java once per test binary, into a directory anyone can read.
fn classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-taskmanager");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/FakeTaskManager.java");
        let status = Command::new(format!("{}/bin/javac", jdk17()))
            .args(["--release", "17", "-d"])
            .arg(&dir)
            .arg(&src)
            .status()
            .expect("javac runs");
        assert!(status.success(), "javac failed");
        // The JVM-as-nobody test needs to read the classes.
        for p in [dir.as_path(), dir.parent().unwrap()] {
            let _ = Command::new("chmod").arg("a+rx").arg(p).status();
        }
        let _ = Command::new("chmod")
            .arg("a+r")
            .arg(dir.join("FakeTaskManager.class"))
            .status();
        dir
    })
}

/// A running JVM, killed by pid when dropped.
struct Jvm {
    child: Child,
}

impl Jvm {
    fn start(jdk: &str, java_args: &[&str], run_as: Option<u32>) -> Jvm {
        let java = format!("{jdk}/bin/java");
        let mut cmd = match run_as {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    &java,
                ]);
                c
            }
            None => Command::new(&java),
        };
        cmd.args(java_args)
            .arg("-cp")
            .arg(classes())
            .arg("FakeTaskManager")
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("java starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "FakeTaskManager did not start");
        // Keep draining stdout: a SIGQUIT that reaches the JVM without a trigger prints a dump
        // there, and a full pipe would block the JVM.
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Jvm { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        stop_pid(self.pid());
        let _ = self.child.wait();
        // Tests that SIGKILL their JVM on purpose leave its socket behind.
        let _ = std::fs::remove_file(format!("/tmp/.java_pid{}", self.pid()));
    }
}

/// SIGTERM first, so the JVM removes its attach socket on the way out; SIGKILL if it lingers.
fn stop_pid(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..50 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn short() -> AttachOptions {
    AttachOptions {
        listener_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn dump_text(a: &mut Attacher) -> String {
    String::from_utf8(a.thread_dump().expect("thread dump")).unwrap()
}

#[test]
fn jdk17_dump_over_protocol_v1() {
    let jvm = Jvm::start(&jdk17(), &[], None);
    let mut a = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let text = dump_text(&mut a);
    assert_eq!(a.protocol(), Some(Protocol::V1));
    assert!(text.contains("Full thread dump OpenJDK"), "{text}");
    assert!(text.contains("\"Source: numbers -> explode (1/2)#0\""));
    assert!(text.contains("\"Map \"quoted\" (x) -> Sink: out (2/2)#1\""));
    // The listener now exists: a second dump needs no signal and says the same.
    let again = dump_text(&mut a);
    assert!(again.contains("Source: numbers -> explode (1/2)#0"));
    // No lock details were asked for (they cost a heap walk at the safepoint).
    assert!(!text.contains("Locked ownable synchronizers"));
}

#[test]
fn jdk25_dump_over_protocol_v2_without_streaming() {
    let mut jvm = Jvm::start(&jdk25(), &[], None);
    let mut a = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let text = dump_text(&mut a);
    assert_eq!(a.protocol(), Some(Protocol::V2 { streaming: true }));
    assert!(text.contains("Full thread dump OpenJDK"), "{text}");
    assert!(text.contains("\"Source: numbers -> explode (1/2)#0\""));
    assert!(jvm.alive());
}

#[test]
fn jcmd_command_over_attach() {
    let jvm = Jvm::start(&jdk17(), &[], None);
    let mut a = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let v = String::from_utf8(a.jcmd("VM.version").unwrap()).unwrap();
    assert!(v.contains("17.0"), "{v}");
    let err = a.jcmd("No.such.command").unwrap_err();
    assert!(
        err.to_string().contains("No.such.command") || matches!(err, AttachError::Command { .. }),
        "{err}"
    );
}

#[test]
fn root_attaches_as_the_jvms_own_user() {
    if !is_root() {
        eprintln!("not root: the credential switch is exercised only when the agent runs as root");
        return;
    }
    let mut jvm = Jvm::start(&jdk17(), &[], Some(65534));
    let mut a = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let text = dump_text(&mut a);
    assert!(text.contains("Source: numbers -> explode (1/2)#0"));
    // The socket the JVM created belongs to its user, not to us.
    let sock = format!("/proc/{}/root/tmp/.java_pid{}", jvm.pid(), jvm.pid());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), 65534);
    assert!(jvm.alive());
}

#[test]
fn another_users_jvm_is_refused_with_a_clear_error() {
    if !is_root() {
        eprintln!("not root: cannot start a JVM as another user");
        return;
    }
    // A root-owned JVM, and the agent binary run as `nobody`.
    let mut jvm = Jvm::start(&jdk17(), &[], None);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_bpmon-agent"))
        .args(["dump", "--pid", &jvm.pid().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no permission to attach")
            && stderr.contains("uid 0")
            && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert!(jvm.alive(), "a refused attach must not harm the JVM");
}

/// SIGSTOP, then waits until every thread of the JVM has stopped (state `T`): `kill` returns
/// before a thread that is running at that moment has stopped, and such a thread (the attach
/// listener, just done with the previous command) could still answer.
fn freeze(pid: nix::unistd::Pid) {
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .is_some_and(|state| state == "T" || state == "t")
                })
            });
        if stopped {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "JVM {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stopped_jvm_times_out() {
    let mut jvm = Jvm::start(&jdk17(), &[], None);
    let pid = nix::unistd::Pid::from_raw(jvm.pid() as i32);
    let mut a = Attacher::for_pid(jvm.pid(), short()).unwrap();
    // Listener up first, then freeze the JVM: the command gets no answer.
    dump_text(&mut a);
    freeze(pid);
    let err = a.thread_dump().unwrap_err();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(matches!(err, AttachError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(jvm.alive());
    // And it recovers once the JVM runs again.
    assert!(dump_text(&mut a).contains("Source: numbers"));
}

#[test]
fn a_frozen_jvm_without_listener_times_out_starting_it() {
    let mut jvm = Jvm::start(&jdk17(), &[], None);
    let pid = nix::unistd::Pid::from_raw(jvm.pid() as i32);
    let mut a = Attacher::for_pid(jvm.pid(), short()).unwrap();
    freeze(pid);
    let err = a.thread_dump().unwrap_err();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(matches!(err, AttachError::ListenerTimeout { .. }), "{err}");
    // Our trigger file was cleaned up, so the pending SIGQUIT only prints a dump to stdout.
    assert!(!Path::new(&format!("/proc/{}/cwd/.attach_pid{}", jvm.pid(), jvm.pid())).exists());
    std::thread::sleep(Duration::from_millis(300));
    assert!(jvm.alive());
}

#[test]
fn a_jvm_that_exits_is_gone() {
    let mut jvm = Jvm::start(&jdk17(), &[], None);
    let mut a = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    dump_text(&mut a);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jvm.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    jvm.child.wait().unwrap();
    let err = a.thread_dump().unwrap_err();
    assert!(matches!(err, AttachError::Gone { .. }), "{err}");
    assert!(err.is_permanent());
}

#[test]
fn a_process_without_a_sigquit_handler_is_never_signalled() {
    // A process named `java` that is not a JVM: SIGQUIT would kill it.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-java");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("java");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut child = Command::new(&fake).arg("30").spawn().unwrap();
    // spawn() returns as soon as exec begins; wait until the new image's argv is visible.
    let cmdline = format!("/proc/{}/cmdline", child.id());
    for _ in 0..100 {
        if std::fs::read(&cmdline).is_ok_and(|c| c.ends_with(b"30\0")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = Attacher::for_pid(child.id(), short()).and_then(|mut a| a.thread_dump());
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let err = result.unwrap_err();
    assert!(matches!(err, AttachError::NoSignalHandler { .. }), "{err}");
    assert!(alive, "the process must survive");
}

#[test]
fn reduced_signal_usage_jvm_is_attached_without_a_signal() {
    // With -Xrs HotSpot installs no SIGQUIT handler but starts its listener at boot.
    let mut jvm = Jvm::start(&jdk17(), &["-Xrs"], None);
    let mut a = Attacher::for_pid(jvm.pid(), short()).unwrap();
    // The listener may take a moment after READY.
    let mut text = None;
    for _ in 0..20 {
        match a.thread_dump() {
            Ok(t) => {
                text = Some(String::from_utf8(t).unwrap());
                break;
            }
            Err(AttachError::NoSignalHandler { .. }) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let text = text.expect("the boot-time listener answered");
    assert!(text.contains("Source: numbers -> explode"));
    assert!(jvm.alive());
}

fn run_agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpmon-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sample --output json` keeps its contract, on both backends, and the two agree.
#[test]
fn sample_cli_json_contract_on_both_backends() {
    let jvm = Jvm::start(&jdk17(), &[], None);
    let pid = jvm.pid().to_string();
    let mut by_backend = Vec::new();
    for backend in ["attach", "jcmd"] {
        let (ok, stdout, stderr) = run_agent(&[
            "sample",
            "--pid",
            &pid,
            "--samples",
            "4",
            "--delay",
            "20ms",
            "--backend",
            backend,
            "--output",
            "json",
        ]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for key in [
            "pid",
            "backend",
            "jvm",
            "samples",
            "delay_ms",
            "started_at_ms",
            "elapsed_ms",
            "tasks",
            "errors",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["backend"], backend);
        assert_eq!(v["pid"], jvm.pid());
        assert_eq!(v["samples"], 4);
        assert_eq!(v["delay_ms"], 20);
        assert_eq!(v["jvm"]["main_class"], "FakeTaskManager");
        assert!(v["jvm"]["version"].as_str().unwrap().starts_with("17."));
        assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{v}");
        let tasks = v["tasks"].as_array().unwrap();
        let explode = tasks
            .iter()
            .find(|t| t["thread"] == "Source: numbers -> explode (1/2)#0")
            .expect("the parked task thread");
        assert_eq!(explode["task"], "Source: numbers -> explode");
        assert_eq!(
            (explode["subtask"].as_u64(), explode["parallelism"].as_u64()),
            (Some(0), Some(2))
        );
        assert_eq!(explode["attempt"], 0);
        assert_eq!(explode["samples"], 4);
        // Parked in user code, not in a Flink wait: busy, and the frame says where.
        assert_eq!(explode["busy"], 4);
        assert!(explode["top_frames"][0]["frame"]
            .as_str()
            .unwrap()
            .starts_with("FakeTaskManager.lambda$main$"));
        let quoted = tasks
            .iter()
            .find(|t| t["task"] == "Map \"quoted\" (x) -> Sink: out")
            .expect("the quoted task thread");
        assert_eq!(
            (quoted["subtask"].as_u64(), quoted["attempt"].as_u64()),
            (Some(1), Some(1))
        );
        let mut names: Vec<String> = tasks.iter().map(|t| t["thread"].to_string()).collect();
        names.sort();
        by_backend.push(names);
    }
    assert_eq!(
        by_backend[0], by_backend[1],
        "both backends see the same tasks"
    );
}

/// A JVM that dies mid-run: the samples taken so far are reported, with the reason.
#[test]
fn jvm_exiting_mid_run_keeps_the_samples_taken() {
    let mut jvm = Jvm::start(&jdk17(), &[], None);
    let pid = jvm.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let (ok, stdout, stderr) = run_agent(&[
        "sample",
        "--pid",
        &pid.to_string(),
        "--samples",
        "100",
        "--delay",
        "50ms",
        "--output",
        "json",
    ]);
    killer.join().unwrap();
    jvm.child.wait().unwrap();
    assert!(ok, "a partial run still succeeds: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let dumps = v["cost"]["dumps"].as_u64().unwrap();
    assert!(
        (3..100).contains(&dumps),
        "dumps taken before the kill: {dumps}"
    );
    let errors = v["errors"].to_string();
    assert!(errors.contains("is gone"), "{errors}");
    assert!(errors.contains("stopped after"), "{errors}");
    let t = &v["tasks"][0];
    assert_eq!(t["samples"].as_u64(), Some(dumps));
}

#[test]
fn list_shows_the_jvm() {
    let jvm = Jvm::start(&jdk25(), &[], None);
    let (ok, stdout, stderr) = run_agent(&["list", "--all", "--output", "json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["pid"] == jvm.pid())
        .expect("the JVM is listed");
    assert_eq!(me["main_class"], "FakeTaskManager");
    assert!(
        me["java_version"].as_str().unwrap().starts_with("25"),
        "{me}"
    );
    // Not a TaskManager: the default listing leaves it out.
    let (_, stdout, _) = run_agent(&["list", "--output", "json"]);
    assert!(!stdout.contains(&format!("\"pid\": {},", jvm.pid())));
}

/// A JVM in a pid and mount namespace of its own, with a private /tmp, as in a container: the
/// agent must use its namespaced pid for the attach files and reach them through /proc/PID/root.
/// A JDK 17 FakeTaskManager in its own mount and pid namespaces (pid 1 there) with a /tmp of
/// its own, as a container runs it: the `unshare` process (kill the JVM by its host pid) and the
/// JVM as discovery sees it. `tag` keeps concurrent tests' JVMs apart.
fn container_jvm(tag: &str) -> (Child, bpmon_agent::discovery::JvmProcess) {
    let marker = format!("-Dbpmon.test.marker={tag}-{}", std::process::id());
    // The classes may live under /tmp themselves (a checkout there): copy them to a private
    // mount first, then hide the host's /tmp behind the JVM's own.
    let jdk17 = jdk17();
    let script = format!(
        "mount -t tmpfs bpmon-test /mnt && cp {}/FakeTaskManager.class /mnt/ && \
         mount -t tmpfs bpmon-test /tmp && exec {jdk17}/bin/java {marker} -cp /mnt FakeTaskManager",
        classes().display()
    );
    let mut unshare = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare runs");
    let mut line = String::new();
    BufReader::new(unshare.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY");
    // The JVM's host pid: the java process carrying our marker.
    let jvm = bpmon_agent::discovery::ProcFs::default()
        .jvms()
        .into_iter()
        .find(|j| {
            std::fs::read(format!("/proc/{}/cmdline", j.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .expect("the namespaced JVM is discovered");
    (unshare, jvm)
}

#[test]
fn a_containerized_jvm_is_attached_through_its_namespaces() {
    if !is_root() {
        eprintln!("not root: cannot create namespaces");
        return;
    }
    let (mut unshare, jvm) = container_jvm("attach");
    let proc = bpmon_agent::discovery::ProcFs::default();
    let host_pid = jvm.pid;
    let result = std::panic::catch_unwind(|| {
        assert!(jvm.containerized, "{jvm:?}");
        assert_eq!(jvm.nspid, 1, "the JVM is pid 1 of its namespace");
        assert_ne!(jvm.pid, 1);
        let mut a = Attacher::new(&jvm, proc.clone(), AttachOptions::default()).unwrap();
        let text = dump_text(&mut a);
        assert!(text.contains("Source: numbers -> explode (1/2)#0"));
        // The socket lives in the JVM's private /tmp only.
        assert!(Path::new(&format!("/proc/{host_pid}/root/tmp/.java_pid1")).exists());
        assert!(!Path::new("/tmp/.java_pid1").exists());
        // Its perf data was found through the same root, so the pause is measured too.
        assert!(jvm.perf_file.is_some(), "{jvm:?}");
    });
    stop_pid(host_pid);
    let _ = unshare.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// An OpenJ9 JVM (HotSpot's attach protocol does not apply) is named, not signalled. Stood in for
/// by a `java`-named shell that catches SIGQUIT, in a private /tmp holding OpenJ9's attach folder.
#[test]
fn an_openj9_jvm_is_recognised_and_left_alone() {
    if !is_root() {
        eprintln!("not root: cannot create a mount namespace");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-openj9");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("java");
    std::fs::copy("/bin/bash", &fake).unwrap();
    // As above: the fake may live under /tmp, so it is copied out before /tmp is replaced.
    let script = format!(
        "mount -t tmpfs bpmon-test /mnt && cp {} /mnt/java && mount -t tmpfs bpmon-test /tmp && \
         mkdir /tmp/.com_ibm_tools_attach && exec /mnt/java -c 'trap \"echo quit\" QUIT; echo READY; while :; do sleep 0.1; done'",
        fake.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY");
    let result = Attacher::for_pid(child.id(), short()).and_then(|mut a| a.thread_dump());
    let alive = child.try_wait().unwrap().is_none();
    stop_pid(child.id());
    let _ = child.wait();
    let err = result.unwrap_err();
    assert!(matches!(err, AttachError::NotHotSpot { .. }), "{err}");
    assert!(err.to_string().contains("OpenJ9"), "{err}");
    assert!(alive);
}

/// The JVM's `/tmp/.java_pid<pid>` replaced by a symlink to another socket (one of the same user,
/// listening): the agent names the symlink and its target, and never connects to either.
#[test]
fn a_symlink_in_place_of_the_attach_socket_is_refused_and_never_connected() {
    let jvm = Jvm::start(&jdk17(), &[], None);
    let mut a = Attacher::for_pid(jvm.pid(), short()).unwrap();
    dump_text(&mut a);
    let socket = PathBuf::from(format!("/tmp/.java_pid{}", jvm.pid()));
    let moved = PathBuf::from(format!("/tmp/.java_pid{}.moved", jvm.pid()));
    let decoy_path = PathBuf::from(format!("/tmp/bpmon-decoy-{}.sock", jvm.pid()));
    let _ = std::fs::remove_file(&decoy_path);
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).unwrap();
    decoy.set_nonblocking(true).unwrap();
    std::fs::rename(&socket, &moved).unwrap();
    std::os::unix::fs::symlink(&decoy_path, &socket).unwrap();

    let err = a.thread_dump().unwrap_err();
    let accepted = decoy.accept();
    // Put things back before asserting, so the JVM is left as it was.
    std::fs::remove_file(&socket).unwrap();
    std::fs::rename(&moved, &socket).unwrap();
    let _ = std::fs::remove_file(&decoy_path);

    assert!(matches!(err, AttachError::UntrustedSocket { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("/root/tmp/.java_pid{}", jvm.pid()))
            && text.contains(&format!("a symlink to {}", decoy_path.display())),
        "{text}"
    );
    assert!(err.is_permanent());
    assert_eq!(
        accepted.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the agent connected to the decoy"
    );
    // With the real socket back, attaching works again.
    assert!(dump_text(&mut a).contains("Source: numbers -> explode"));
}

/// A JVM whose root's `/tmp` is a symlink (`/tmp -> /var/realtmp`, absolute: through
/// `/proc/PID/root/tmp` a plain open would land in the *host's* /var/realtmp). The agent refuses
/// before it signals the JVM or creates anything.
#[test]
fn a_jvm_whose_tmp_is_a_symlink_is_refused_before_any_signal() {
    if !is_root() {
        eprintln!("not root: cannot build a chroot");
        return;
    }
    let jdk17 = jdk17();
    let script = format!(
        "set -e; mount -t tmpfs bpmon-test /mnt; R=/mnt/root; \
         mkdir -p $R/usr $R/etc $R/dev $R/proc $R/cls $R/var/realtmp; \
         mount --rbind /usr $R/usr; mount --rbind /etc $R/etc; mount --rbind /dev $R/dev; \
         mount -t proc proc $R/proc; \
         ln -s usr/bin $R/bin; ln -s usr/lib $R/lib; ln -s usr/lib64 $R/lib64; \
         chmod 1777 $R/var/realtmp; ln -s /var/realtmp $R/tmp; \
         cp {}/FakeTaskManager.class $R/cls/; \
         exec chroot $R {jdk17}/bin/java -cp /cls FakeTaskManager",
        classes().display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "READY" {
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr);
        panic!("the chrooted JVM did not start: {line:?} {stderr}");
    }
    let pid = child.id();
    let result = std::panic::catch_unwind(|| {
        let err = Attacher::for_pid(pid, short())
            .and_then(|mut a| a.thread_dump())
            .unwrap_err();
        assert!(matches!(err, AttachError::UntrustedSocket { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("the JVM's /tmp is a symlink to /var/realtmp, not a directory"),
            "{err}"
        );
        assert!(!Path::new("/var/realtmp").exists());
        // No trigger was created and no signal sent: the JVM printed no thread dump.
        assert!(!Path::new(&format!("/proc/{pid}/cwd/.attach_pid{pid}")).exists());
    });
    stop_pid(pid);
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A JVM in its own mount and pid namespaces, with a /tmp of its own: the library's path on the
/// host (here under the host's /tmp) means nothing inside, so the agent copies it into the JVM's
/// /tmp, loads it from there, and samples through the socket in that /tmp.
#[test]
fn jvmti_library_is_copied_into_a_containerized_jvm() {
    use bpmon_agent::backends::jvmti::{JvmtiClient, JvmtiOptions};
    if !is_root() {
        eprintln!("not root: cannot create namespaces");
        return;
    }
    let host_dir = PathBuf::from(format!("/tmp/bpmon-jvmti-test-{}", std::process::id()));
    std::fs::create_dir_all(&host_dir).unwrap();
    let lib = host_dir.join(bpmon_agent::backends::jvmti::LIBRARY_NAME);
    std::fs::copy(jvmti_library(), &lib).unwrap();
    let (mut unshare, jvm) = container_jvm("jvmti");
    let proc = bpmon_agent::discovery::ProcFs::default();
    let host_pid = jvm.pid;
    let result = std::panic::catch_unwind(|| {
        let options = JvmtiOptions {
            library: lib.clone(),
            ..JvmtiOptions::default()
        };
        let mut client =
            JvmtiClient::open(&jvm, &proc, AttachOptions::default(), options).expect("jvmti");
        assert!(client.loaded_it());
        assert_eq!(client.hello().unwrap().pid, 1, "the JVM's own pid");
        let copies: Vec<String> = std::fs::read_dir(format!("/proc/{host_pid}/root/tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("bpmon-jvmti-") && n.ends_with(".so"))
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        let (sample, _) = client.sample().expect("a sample");
        let names: Vec<&str> = sample.threads.iter().map(|t| t.name.as_str()).collect();
        assert!(
            names.contains(&"Source: numbers -> explode (1/2)#0"),
            "{names:?}"
        );
        client.stop().expect("stop");
    });
    stop_pid(host_pid);
    let _ = unshare.wait();
    let _ = std::fs::remove_dir_all(&host_dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A JDK that refuses to load agents into a running JVM (what JEP 451 makes the default in a
/// future release; `-XX:-EnableDynamicAgentLoading` today) gets a refusal that says what to do,
/// and the JVM runs on.
#[test]
fn jvmti_load_refused_by_the_jdk_says_what_to_do() {
    use bpmon_agent::backends::jvmti::{JvmtiClient, JvmtiError, JvmtiOptions};
    let lib = jvmti_library();
    let mut jvm = Jvm::start(&jdk25(), &["-XX:-EnableDynamicAgentLoading"], None);
    let proc = bpmon_agent::discovery::ProcFs::default();
    let process = proc.jvm(jvm.pid()).expect("discovered");
    let options = JvmtiOptions {
        library: lib,
        ..JvmtiOptions::default()
    };
    match JvmtiClient::open(&process, &proc, short(), options) {
        Err(e @ JvmtiError::LoadRefused { .. }) => {
            let text = e.to_string();
            eprintln!("{text}");
            assert!(text.contains("-XX:+EnableDynamicAgentLoading"), "{text}");
            assert!(e.is_permanent(), "the daemon falls back to attach on it");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(jvm.alive());
    // The attach backend still works on that JVM.
    let mut a = Attacher::for_pid(jvm.pid(), short()).unwrap();
    assert!(dump_text(&mut a).contains("Source: numbers -> explode (1/2)#0"));
}
