//! The resource probe against real JDK 17 JVMs (no mocks): a thread spinning and one sleeping,
//! GC of an allocating JVM and of a quiet one, a JVM in its own pid namespace, a JVM throttled in
//! a cgroup this test makes, and a JVM that exits between two readings.
//!
//! The tests take turns ([`turn`]): each measures CPU over a window, and on a 2-core machine two
//! at once would measure each other.

mod common;
use common::{compile_java, jdk17};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bpmon_agent::backends::attach::{AttachOptions, Attacher};
use bpmon_agent::discovery::{JvmProcess, ProcFs};
use bpmon_agent::resources::gc::is_known_collector;
use bpmon_agent::resources::{ResourceProbe, ThreadCpuReader};
use bpmon_proto::JvmResources;

const WINDOW: Duration = Duration::from_millis(1000);

fn classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| compile_java("ResourceLoad", "resource-load"))
}

fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `ResourceLoad`, killed when dropped.
struct Jvm {
    child: Child,
}

impl Jvm {
    fn start(java_args: &[&str], mode: &str) -> Jvm {
        let mut child = Command::new(format!("{}/bin/java", jdk17()))
            .args(java_args)
            .arg("-cp")
            .arg(classes())
            .args(["ResourceLoad", mode])
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("java starts");
        read_ready(&mut child);
        Jvm { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn process(&self) -> JvmProcess {
        ProcFs::default()
            .jvm(self.pid())
            .expect("discovery sees it")
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/tmp/.java_pid{}", self.pid()));
    }
}

fn read_ready(child: &mut Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY", "ResourceLoad did not start");
}

/// Each named thread's id as the JVM prints it (`nid=`) and its CPU ms as the JVM counts it,
/// from a thread dump taken through the agent's own attach client.
fn dump_threads(attacher: &mut Attacher, names: &[&str]) -> HashMap<String, (u64, f64)> {
    let text = String::from_utf8(attacher.thread_dump().expect("thread dump")).unwrap();
    let dump = bpmon_stacks::threaddump::parse(&text);
    names
        .iter()
        .map(|n| {
            let h = &dump
                .thread(n)
                .unwrap_or_else(|| panic!("no {n} in {text}"))
                .header;
            (n.to_string(), (h.os_tid.unwrap(), h.cpu_ms.unwrap()))
        })
        .collect()
}

/// Reads the probe over one window.
fn window(probe: &ResourceProbe) -> JvmResources {
    let first = probe.read();
    std::thread::sleep(WINDOW);
    first.delta(&probe.read())
}

#[test]
fn a_spinning_thread_and_a_sleeping_one_over_one_second() {
    let _turn = turn();
    let jvm = Jvm::start(&[], "spin");
    std::thread::sleep(Duration::from_millis(300));
    let mut attacher = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let names = ["bpmon-spin", "bpmon-sleep"];
    let before = dump_threads(&mut attacher, &names);
    let tids: Vec<u64> = names.iter().map(|n| before[*n].0).collect();
    let mut reader = ThreadCpuReader::new("/proc", jvm.pid(), false);
    let probe = ResourceProbe::open(&jvm.process());
    let (r0, t0) = (probe.read(), reader.read(&tids));
    std::thread::sleep(WINDOW);
    let (r1, t1) = (probe.read(), reader.read(&tids));
    let after = dump_threads(&mut attacher, &names);
    let res = r0.delta(&r1);
    let spin = t1[&tids[0]] - t0[&tids[0]];
    let sleep = t1[&tids[1]] - t0[&tids[1]];
    let jvm_spin = after["bpmon-spin"].1 - before["bpmon-spin"].1;
    eprintln!(
        "wall {} ms: bpmon-spin {spin} ms CPU (the JVM's own count around it: {jvm_spin:.1} ms), \
         bpmon-sleep {sleep} ms; process {:?} ms; host busy {:?} of {:?} CPUs",
        res.wall_ms, res.process_cpu_ms, res.host_busy, res.host_cpus
    );
    assert!((950..1500).contains(&res.wall_ms), "{res:?}");
    // On a busy machine the spinner gets less than a CPU, so its share of the wall clock says
    // little; that it is nearly all of its process's CPU says the right thread was read.
    assert!(spin >= 200, "spinning: {spin} ms of {res:?}");
    let process = res.process_cpu_ms.expect("process CPU");
    assert!(
        spin as f64 >= 0.8 * process as f64,
        "spinning: {spin} ms of {process} ms for the process: {res:?}"
    );
    assert!(sleep <= 50, "sleeping: {sleep} ms");
    // The JVM's count spans ours (its dumps come before and after our readings), by little.
    assert!(spin as f64 <= jvm_spin + 2.0, "{spin} vs {jvm_spin}");
    assert!(jvm_spin - (spin as f64) < 200.0, "{spin} vs {jvm_spin}");
    let process = res.process_cpu_ms.unwrap();
    assert!(process >= spin.saturating_sub(20), "{process} < {spin}");
    let busy = res.host_busy.unwrap();
    assert!((0.0..=1.0).contains(&busy) && busy > 0.2, "{busy}");
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert_eq!(res.host_cpus, Some(online as u32));
}

#[test]
fn gc_of_an_allocating_jvm_and_of_a_quiet_one() {
    let _turn = turn();
    for collector in ["-XX:+UseG1GC", "-XX:+UseParallelGC"] {
        let jvm = Jvm::start(&["-Xmx64m", collector], "alloc");
        let probe = ResourceProbe::open(&jvm.process());
        let res = window(&probe);
        eprintln!(
            "{collector} allocating: {:?} pauses, {:?} ms paused, concurrent {:?} ms, process CPU \
             {:?} ms in {} ms",
            res.gc_count, res.gc_pause_ms, res.gc_concurrent_ms, res.process_cpu_ms, res.wall_ms
        );
        assert!(res.gc_count.unwrap() > 0, "{res:?}");
        assert!(res.gc_pause_ms.unwrap() > 0.0, "{res:?}");
        assert_eq!(
            res.gc_concurrent_ms, None,
            "G1 and Parallel publish no concurrent time"
        );
    }
    let quiet = Jvm::start(&["-Xmx64m", "-XX:+UseG1GC"], "quiet");
    let res = window(&ResourceProbe::open(&quiet.process()));
    eprintln!(
        "quiet: {:?} pauses, {:?} ms paused, process CPU {:?} ms",
        res.gc_count, res.gc_pause_ms, res.process_cpu_ms
    );
    assert!(res.gc_count.unwrap() <= 1, "{res:?}");
    assert!(res.gc_pause_ms.unwrap() < 20.0, "{res:?}");
}

/// The collector names each GC publishes are those the table in `resources::gc` knows.
#[test]
fn collector_names_of_real_jvms_are_in_the_table() {
    let _turn = turn();
    let gcs = [
        "-XX:+UseG1GC",
        "-XX:+UseParallelGC",
        "-XX:+UseSerialGC",
        "-XX:+UseZGC",
    ];
    for gc in gcs {
        let jvm = Jvm::start(&["-Xmx64m", gc], "quiet");
        let perf = jvm.process().perf_file.expect("perf data");
        let probe = bpmon_agent::resources::GcProbe::open(&perf).unwrap();
        let names: Vec<_> = probe
            .collectors()
            .iter()
            .map(|c| (&c.name, c.kind))
            .collect();
        eprintln!("{gc}: {names:?}");
        assert!(probe
            .collectors()
            .iter()
            .all(|c| is_known_collector(&c.name)));
    }
}

#[test]
fn the_probe_finds_this_jvms_cgroup() {
    let _turn = turn();
    let jvm = Jvm::start(&[], "quiet");
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", jvm.pid())).unwrap();
    // The v1 cpu hierarchy's line if there is one, else the v2 line.
    let cpu_line = text.lines().find(|l| {
        let controllers = l.split(':').nth(1).unwrap_or("");
        controllers.split(',').any(|c| c == "cpu")
    });
    let line = cpu_line.or_else(|| text.lines().find(|l| l.starts_with("0::")));
    let expected = line.and_then(|l| l.splitn(3, ':').nth(2)).unwrap();
    let res = window(&ResourceProbe::open(&jvm.process()));
    eprintln!("cgroup of a plain JVM: {:?}", res.cgroup);
    let cg = res.cgroup.expect("this machine's cgroup is readable");
    assert_eq!(cg.path, expected);
    assert!(cg.usage_ms.is_some(), "{cg:?}");
}

/// A JVM in its own mount and pid namespaces, as a container runs it: its printed thread ids
/// are not the host's.
#[test]
fn a_containerized_jvms_threads_are_read_by_their_namespaced_ids() {
    let _turn = turn();
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to make namespaces"
    );
    let marker = format!("-Dbpmon.test.marker=resources-{}", std::process::id());
    let script = format!(
        "mount -t tmpfs bpmon-test /mnt && cp {}/*.class /mnt/ && mount -t tmpfs bpmon-test /tmp \
         && exec {}/bin/java {marker} -cp /mnt ResourceLoad spin",
        classes().display(),
        jdk17()
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
    read_ready(&mut unshare);
    let jvm = ProcFs::default()
        .jvms()
        .into_iter()
        .find(|j| {
            std::fs::read(format!("/proc/{}/cmdline", j.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .expect("the namespaced JVM is discovered");
    let result = std::panic::catch_unwind(|| {
        assert!(jvm.containerized);
        let mut attacher =
            Attacher::new(&jvm, ProcFs::default(), AttachOptions::default()).unwrap();
        let names = ["bpmon-spin", "bpmon-sleep"];
        let ids = dump_threads(&mut attacher, &names);
        let tids: Vec<u64> = names.iter().map(|n| ids[*n].0).collect();
        let host_spin = host_tid_by_comm(jvm.pid, "bpmon-spin");
        assert_ne!(tids[0], host_spin, "the printed id is the namespace's");
        let mut reader = ThreadCpuReader::new("/proc", jvm.pid, true);
        let probe = ResourceProbe::open(&jvm);
        let (r0, t0) = (probe.read(), reader.read(&tids));
        std::thread::sleep(WINDOW);
        let (r1, t1) = (probe.read(), reader.read(&tids));
        let res = r0.delta(&r1);
        let spin = t1[&tids[0]] - t0[&tids[0]];
        let sleep = t1[&tids[1]] - t0[&tids[1]];
        eprintln!(
            "containerized: nid {} is host tid {host_spin}; spin {spin} ms, sleep {sleep} ms of \
             {} ms; gc {:?}",
            tids[0], res.wall_ms, res.gc_count
        );
        // Busy machine or not, the spinner is nearly all of its process's CPU.
        let process = res.process_cpu_ms.expect("process CPU");
        assert!(
            spin >= 200 && spin as f64 >= 0.8 * process as f64,
            "{spin} of {res:?}"
        );
        assert!(sleep <= 50);
        assert!(
            res.gc_count.is_some(),
            "perf data read through the JVM's root"
        );
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jvm.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = unshare.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The host's id of the thread whose name (`comm`, set by HotSpot) is `name`.
fn host_tid_by_comm(pid: u32, name: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("the thread is there")
}

#[test]
fn a_jvm_that_exits_between_two_readings_gives_none() {
    let _turn = turn();
    let mut jvm = Jvm::start(&[], "spin");
    let process = jvm.process();
    let probe = ResourceProbe::open(&process);
    let mut attacher = Attacher::for_pid(jvm.pid(), AttachOptions::default()).unwrap();
    let tid = dump_threads(&mut attacher, &["bpmon-spin"])["bpmon-spin"].0;
    let mut reader = ThreadCpuReader::new("/proc", jvm.pid(), false);
    let first = probe.read();
    assert!(first.process.is_some() && first.gc.is_some());
    assert!(reader.read(&[tid]).contains_key(&tid));
    // Long enough for the host's counters to move (they count 10 ms ticks).
    std::thread::sleep(Duration::from_millis(100));
    // Killed, not yet reaped: a zombie is gone too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jvm.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_zombie(jvm.pid());
    let zombie = first.delta(&probe.read());
    jvm.child.wait().unwrap();
    let reaped = first.delta(&probe.read());
    for res in [&zombie, &reaped] {
        assert_eq!(res.process_cpu_ms, None, "{res:?}");
        assert_eq!((res.gc_pause_ms, res.gc_count), (None, None), "{res:?}");
        assert_eq!(res.cgroup, None, "{res:?}");
        assert!(res.host_busy.is_some() && res.wall_ms < 5000, "{res:?}");
    }
    assert!(reader.read(&[tid]).is_empty(), "its threads are gone");
    eprintln!("exited JVM: zombie {zombie:?}, reaped {reaped:?}");
}

/// Waits until every thread of `pid` has exited and only its zombie is left for its parent to
/// reap (the leader turns `Z` first, while the other threads are still dying).
fn wait_for_zombie(pid: u32) {
    for _ in 0..200 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        if zombie && threads <= 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} did not become a zombie");
}

#[path = "resources/cgroup_throttling.rs"]
mod cgroup_throttling;
