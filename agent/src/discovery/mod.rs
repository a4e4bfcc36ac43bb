//! Finding Flink TaskManager JVMs on this host by scanning `/proc`.
//!
//! A JVM is recognised from its command line (`/proc/PID/cmdline`, which, unlike hsperfdata, works
//! with `-XX:-UsePerfData`), its credentials and namespaced pid from `/proc/PID/status`, and its
//! version from hsperfdata or the `release` file of its Java home. JVMs in containers are seen
//! through `/proc/PID/root`, so no `setns` is needed.
//!
//! What a JVM is, and where it lives, is read from the outside, through `/proc`:
//! - this module: the TaskManager JVMs ([`ProcFs`], [`JvmProcess`]) with their ids, users,
//!   versions and resource id;
//! - [`whereabouts`]: a JVM's network identity, read inside its namespaces (addresses,
//!   listening sockets, UTS host name);
//! - [`hsperf`]: HotSpot's performance data (version, attach enabled, safepoint counters);
//! - [`inroot`]: paths inside a JVM's root resolved with `openat2`, never by a plain path under
//!   `/proc/PID/root` (shared with the attach backend);
//! - [`host`]: the agent host's own names and addresses.

pub mod host;
pub mod hsperf;
pub mod inroot;
pub mod whereabouts;

use std::path::{Path, PathBuf};

use bpmon_proto::{JvmNetwork, ResourceIdSource};
use serde::Serialize;

use self::hsperf::PerfData;

/// Main classes of Flink TaskManagers, across deployment modes and versions.
pub const TASKMANAGER_MAIN_CLASSES: &[&str] = &[
    "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
    "org.apache.flink.yarn.YarnTaskExecutorRunner",
    "org.apache.flink.kubernetes.taskmanager.KubernetesTaskExecutorRunner",
    "org.apache.flink.kubernetes.entrypoint.KubernetesTaskExecutorRunner",
    "org.apache.flink.mesos.entrypoint.MesosTaskExecutorRunner",
    "org.apache.flink.runtime.taskmanager.TaskManager",
];

/// A JVM process as seen from the host.
#[derive(Debug, Clone, Serialize)]
pub struct JvmProcess {
    /// Pid on the host (what we signal).
    pub pid: u32,
    /// Pid inside the JVM's own pid namespace (what names its attach files).
    pub nspid: u32,
    /// Effective uid and gid of the JVM.
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub main_class: String,
    pub java_version: Option<String>,
    pub flink_version: Option<String>,
    /// Whether the JVM runs in another pid namespace (a container).
    pub containerized: bool,
    /// `taskmanager.resource-id` when the command line sets it (`-D…` / `-D …`) or the JVM's log
    /// names it: the id Flink's REST API uses for this TaskManager.
    pub resource_id: Option<String>,
    pub resource_id_source: Option<ResourceIdSource>,
    /// TCP ports the JVM listens on (its RPC and data ports among them): how the collector finds
    /// this TaskManager in `GET /taskmanagers` when no resource id is set.
    pub listen_ports: Vec<u16>,
    /// Its network namespace from the inside: addresses, listening sockets, host name.
    pub network: JvmNetwork,
    /// Whether the JVM has a SIGQUIT handler installed (sending SIGQUIT otherwise kills it).
    #[serde(skip)]
    pub sigquit_caught: bool,
    /// Where its perf data lives, if it publishes any.
    #[serde(skip)]
    pub perf_file: Option<PathBuf>,
    /// `java.vm.name` from its perf data (`OpenJDK 64-Bit Server VM`, …).
    #[serde(skip)]
    pub vm_name: Option<String>,
    /// Whether its perf data says dynamic attach is enabled.
    #[serde(skip)]
    pub attach_enabled: Option<bool>,
}

impl JvmProcess {
    pub fn is_taskmanager(&self) -> bool {
        TASKMANAGER_MAIN_CLASSES.contains(&self.main_class.as_str())
    }
}

/// The fields bpmon needs from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    pub euid: u32,
    pub egid: u32,
    /// Innermost namespaced pid (last field of `NSpid:`); the host pid on old kernels.
    pub nspid: Option<u32>,
    /// Whether the pid namespace differs from ours (more than one `NSpid` field).
    pub nested_pid_ns: bool,
    /// Caught-signal mask (`SigCgt:`).
    pub sig_caught: u64,
}

/// Parses `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let mut euid = None;
    let mut egid = None;
    let mut nspid = None;
    let mut nested = false;
    let mut sig_caught = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut fields = value.split_whitespace();
        match key {
            // Real, effective, saved, filesystem: the JVM checks against the effective id.
            "Uid" => euid = fields.nth(1).and_then(|v| v.parse().ok()),
            "Gid" => egid = fields.nth(1).and_then(|v| v.parse().ok()),
            "NSpid" => {
                let all: Vec<u32> = fields.filter_map(|v| v.parse().ok()).collect();
                nested = all.len() > 1;
                nspid = all.last().copied();
            }
            "SigCgt" => sig_caught = u64::from_str_radix(value.trim(), 16).unwrap_or(0),
            _ => {}
        }
    }
    Some(ProcStatus {
        euid: euid?,
        egid: egid?,
        nspid,
        nested_pid_ns: nested,
        sig_caught,
    })
}

impl ProcStatus {
    /// Whether SIGQUIT (3) is caught. HotSpot installs its handler early in start-up; before that,
    /// or with `-Xrs`, SIGQUIT would terminate the process.
    pub fn catches_sigquit(&self) -> bool {
        self.sig_caught & (1 << (libc::SIGQUIT - 1)) != 0
    }
}

/// Options that take the next argument as their value.
const OPTIONS_WITH_VALUE: &[&str] = &[
    "-cp",
    "-classpath",
    "--class-path",
    "-p",
    "--module-path",
    "--upgrade-module-path",
    "--add-opens",
    "--add-exports",
    "--add-reads",
    "--add-modules",
    "--limit-modules",
    "--patch-module",
    "--enable-native-access",
];

/// Whether `argv[0]` names a Java launcher.
pub fn is_java_launcher(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "java" || n == "javaw")
}

/// The main class (or `-jar` file, or `module/class`) of a `java` command line: the first argument
/// that is neither an option nor an option's value.
pub fn main_class(argv: &[String]) -> Option<String> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-jar" {
            return args.next().cloned();
        }
        if arg == "-m" || arg == "--module" {
            return args
                .next()
                .map(|m| m.rsplit('/').next().unwrap_or(m).to_string());
        }
        if OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
            args.next();
            continue;
        }
        if arg.starts_with('-') {
            continue;
        }
        return Some(arg.clone());
    }
    None
}

/// The Flink version, from the `flink-dist` jar on the class path (`flink-dist-2.3.0.jar`,
/// `flink-dist_2.12-1.14.6.jar`).
pub fn flink_version_from_argv(argv: &[String]) -> Option<String> {
    let cp_index = argv
        .iter()
        .position(|a| a == "-cp" || a == "-classpath" || a == "--class-path")?;
    let cp = argv.get(cp_index + 1)?;
    cp.split(':').find_map(|entry| {
        let file = Path::new(entry).file_name()?.to_str()?;
        let rest = file.strip_prefix("flink-dist")?.strip_suffix(".jar")?;
        // Skip an optional Scala suffix (`_2.12`), then expect `-<version>`.
        let rest = match rest.strip_prefix('_') {
            Some(r) => &r[r.find('-')?..],
            None => rest,
        };
        let version = rest.strip_prefix('-')?;
        (!version.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()))
            .then(|| version.to_string())
    })
}

/// `taskmanager.resource-id` from a command line: `-Dtaskmanager.resource-id=X` (JVM property)
/// or `-D taskmanager.resource-id=X` (Flink dynamic property); the last one wins, as in Flink.
pub fn resource_id_from_argv(argv: &[String]) -> Option<String> {
    const KEY: &str = "taskmanager.resource-id=";
    let mut found = None;
    let mut prev_was_d = false;
    for arg in argv {
        let value = if prev_was_d {
            arg.strip_prefix(KEY)
        } else {
            arg.strip_prefix("-D").and_then(|a| a.strip_prefix(KEY))
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            found = Some(v.to_string());
        }
        prev_was_d = arg == "-D";
    }
    found
}

/// The TCP ports a JVM listens on, from its listening sockets: what Flink's REST API names a
/// TaskManager's RPC and data port by.
pub fn listen_ports(network: &JvmNetwork) -> Vec<u16> {
    let mut ports: Vec<u16> = network.listen.iter().map(|a| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The line Flink's `TaskManagerRunner` logs at start-up, followed by the resource id.
const RESOURCE_ID_LOG_LINE: &str = "Starting TaskManager with ResourceID: ";

/// How much of a TaskManager's log is read for that line: it comes within the first few hundred
/// lines, and a log that rolled over has lost it anyway.
const LOG_HEAD_BYTES: u64 = 512 * 1024;

/// The resource id a TaskManager's log names, the last time it says so (a log appended to by
/// several runs names each run's id).
pub fn resource_id_from_log(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| l.split_once(RESOURCE_ID_LOG_LINE))
        .filter_map(|(_, rest)| rest.split_whitespace().next())
        .find(|id| !id.is_empty())
        .map(str::to_string)
}

/// `CONTAINER_ID` from a NUL-separated `/proc/PID/environ`.
pub fn container_id_from_environ(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"CONTAINER_ID="))
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
        .find(|v| !v.is_empty())
}

/// The log file a Flink daemon writes (`-Dlog.file=…`, set by Flink's scripts).
pub fn log_file_from_argv(argv: &[String]) -> Option<PathBuf> {
    argv.iter()
        .rev()
        .find_map(|a| a.strip_prefix("-Dlog.file="))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
}

/// Whether a resource id read from a log can be this JVM's: Flink's generated ids are
/// `host:rpcPort-xxxxxx`, and a JVM that does not listen on that port is another run's.
pub fn log_id_fits(id: &str, listen_ports: &[u16]) -> bool {
    let port = id
        .rsplit_once('-')
        .and_then(|(hp, _)| hp.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok());
    port.is_none_or(|p| listen_ports.contains(&p))
}

/// `JAVA_VERSION="17.0.15"` from a Java home's `release` file.
pub fn java_version_from_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("JAVA_VERSION=")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// Reads the host's `/proc` (or another tree laid out like it, for tests).
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    /// Whether TaskManagers' logs are read for their generated resource id.
    read_logs: bool,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs {
            root: root.into(),
            read_logs: true,
        }
    }

    /// With or without reading TaskManagers' logs for their resource id.
    pub fn reading_logs(mut self, on: bool) -> Self {
        self.read_logs = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    pub fn argv(&self, pid: u32) -> std::io::Result<Vec<String>> {
        let raw = std::fs::read(self.pid_dir(pid).join("cmdline"))?;
        Ok(raw
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    pub fn status(&self, pid: u32) -> std::io::Result<Option<ProcStatus>> {
        let text = std::fs::read_to_string(self.pid_dir(pid).join("status"))?;
        Ok(parse_status(&text))
    }

    /// Every JVM on the host. Processes that vanish or cannot be read while scanning are skipped:
    /// they are somebody else's race, not an error.
    pub fn jvms(&self) -> Vec<JvmProcess> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.into_iter().filter_map(|pid| self.jvm(pid)).collect()
    }

    /// Every Flink TaskManager JVM on the host.
    pub fn taskmanagers(&self) -> Vec<JvmProcess> {
        self.jvms()
            .into_iter()
            .filter(|j| j.is_taskmanager())
            .collect()
    }

    /// The JVM behind `pid`, or `None` if it is not a (readable) Java process.
    pub fn jvm(&self, pid: u32) -> Option<JvmProcess> {
        let argv = self.argv(pid).ok()?;
        if !is_java_launcher(argv.first()?) {
            return None;
        }
        let status = self.status(pid).ok()??;
        let nspid = status.nspid.unwrap_or(pid);
        let main_class = main_class(&argv).unwrap_or_default();
        let perf_file = hsperf::find_perf_file(&self.root, pid, nspid);
        // Read once: the version, and what the attach client checks before it signals the JVM.
        let perf = perf_file.as_deref().and_then(|f| PerfData::read(f).ok());
        let java_version = perf
            .as_ref()
            .and_then(|pd| pd.java_version().map(str::to_string))
            .or_else(|| self.java_version_from_home(pid));
        let network = whereabouts::read(&self.root, pid);
        let listen_ports = listen_ports(&network);
        let (resource_id, resource_id_source) = if let Some(id) = resource_id_from_argv(&argv) {
            (Some(id), Some(ResourceIdSource::CommandLine))
        } else if let Some(id) = self.yarn_container_id(pid, &main_class) {
            (Some(id), Some(ResourceIdSource::Environment))
        } else if let Some(id) = TASKMANAGER_MAIN_CLASSES
            .contains(&main_class.as_str())
            .then(|| self.resource_id_from_log(pid, &argv, &listen_ports))
            .flatten()
        {
            (Some(id), Some(ResourceIdSource::Log))
        } else {
            (None, None)
        };
        Some(JvmProcess {
            pid,
            nspid,
            uid: status.euid,
            gid: status.egid,
            user: nix::unistd::User::from_uid(status.euid.into())
                .ok()
                .flatten()
                .map(|u| u.name),
            flink_version: flink_version_from_argv(&argv),
            main_class,
            java_version,
            containerized: status.nested_pid_ns,
            resource_id,
            resource_id_source,
            listen_ports,
            network,
            sigquit_caught: status.catches_sigquit(),
            perf_file,
            vm_name: perf
                .as_ref()
                .and_then(|pd| pd.text("java.property.java.vm.name").map(str::to_string)),
            attach_enabled: perf.as_ref().and_then(PerfData::attach_enabled),
        })
    }

    /// A YARN TaskManager's resource id: the container id in its environment.
    fn yarn_container_id(&self, pid: u32, main_class: &str) -> Option<String> {
        if main_class != "org.apache.flink.yarn.YarnTaskExecutorRunner" {
            return None;
        }
        let environ = std::fs::read(self.pid_dir(pid).join("environ")).ok()?;
        container_id_from_environ(&environ)
    }

    /// The resource id the JVM's own log names, read inside its root (a container's log is in
    /// its own file system), when it fits the JVM's ports.
    fn resource_id_from_log(
        &self,
        pid: u32,
        argv: &[String],
        listen_ports: &[u16],
    ) -> Option<String> {
        use std::io::Read;
        if !self.read_logs {
            return None;
        }
        let log = log_file_from_argv(argv)?;
        let file = inroot::open_in_root(&self.pid_dir(pid).join("root"), &log).ok()?;
        let mut head = Vec::new();
        file.take(LOG_HEAD_BYTES).read_to_end(&mut head).ok()?;
        resource_id_from_log(&String::from_utf8_lossy(&head))
            .filter(|id| log_id_fits(id, listen_ports))
    }

    /// `<java.home>/release`, found from `/proc/PID/exe` (`…/bin/java`), read inside the JVM's
    /// mount namespace.
    fn java_version_from_home(&self, pid: u32) -> Option<String> {
        let exe = std::fs::read_link(self.pid_dir(pid).join("exe")).ok()?;
        let home = exe.parent()?.parent()?;
        // Resolved inside the JVM's root: its symlinks cannot point the agent at a host file.
        let release =
            inroot::read_in_root(&self.pid_dir(pid).join("root"), &home.join("release")).ok()?;
        java_version_from_release(&String::from_utf8_lossy(&release))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn main_class_of_a_flink_taskmanager_command_line() {
        let a = argv("/usr/lib/jvm/java-17-openjdk-amd64/bin/java -XX:+UseG1GC -Xmx536870902 -Xms536870902 -XX:MaxDirectMemorySize=268435458 --add-opens java.base/java.util=ALL-UNNAMED -Dlog.file=/x/tm.log -classpath /f/lib/flink-cep-2.3.0.jar:/f/lib/flink-dist-2.3.0.jar org.apache.flink.runtime.taskexecutor.TaskManagerRunner --configDir /f/conf -D taskmanager.memory.network.min=1b");
        assert_eq!(
            main_class(&a).as_deref(),
            Some("org.apache.flink.runtime.taskexecutor.TaskManagerRunner")
        );
        assert_eq!(flink_version_from_argv(&a).as_deref(), Some("2.3.0"));
    }

    #[test]
    fn main_class_forms() {
        assert_eq!(
            main_class(&argv("java -jar app.jar x")).as_deref(),
            Some("app.jar")
        );
        assert_eq!(
            main_class(&argv("java -p mods -m my.mod/com.x.Main")).as_deref(),
            Some("com.x.Main")
        );
        assert_eq!(main_class(&argv("java -version")), None);
        assert_eq!(
            main_class(&argv("java --add-modules ALL-SYSTEM -cp a:b Foo")).as_deref(),
            Some("Foo")
        );
    }

    #[test]
    fn flink_version_with_scala_suffix() {
        let a = argv("java -cp /x/flink-dist_2.12-1.14.6.jar:/x/log4j.jar Main");
        assert_eq!(flink_version_from_argv(&a).as_deref(), Some("1.14.6"));
        assert_eq!(
            flink_version_from_argv(&argv("java -cp /x/other.jar Main")),
            None
        );
    }

    #[test]
    fn status_of_a_containerized_jvm() {
        let text = "Name:\tjava\nUid:\t9999\t9998\t9999\t9999\nGid:\t9999\t9997\t9999\t9999\nNSpid:\t4242\t1\nSigCgt:\t0000000181005ccf\n";
        let s = parse_status(text).unwrap();
        assert_eq!((s.euid, s.egid), (9998, 9997));
        assert_eq!(s.nspid, Some(1));
        assert!(s.nested_pid_ns);
        assert!(s.catches_sigquit());
    }

    #[test]
    fn sigquit_not_caught() {
        let text = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nNSpid:\t77\nSigCgt:\t0000000000000000\n";
        let s = parse_status(text).unwrap();
        assert!(!s.nested_pid_ns);
        assert_eq!(s.nspid, Some(77));
        assert!(!s.catches_sigquit());
    }

    #[test]
    fn resource_id_in_both_spellings() {
        assert_eq!(
            resource_id_from_argv(&argv("java -Dtaskmanager.resource-id=a X")).as_deref(),
            Some("a")
        );
        assert_eq!(
            resource_id_from_argv(&argv(
                "java X --configDir c -D taskmanager.resource-id=tm-1 -D other=2"
            ))
            .as_deref(),
            Some("tm-1")
        );
        assert_eq!(
            resource_id_from_argv(&argv("java X -D taskmanager.numberOfTaskSlots=2")),
            None
        );
    }

    #[test]
    fn resource_id_from_a_taskmanager_log() {
        let log = "2026-12-02 11:05:03,973 INFO  org.apache.flink.runtime.taskexecutor.TaskManagerRunner      [] - Using working directory: WorkingDirectory(/tmp/tm_localhost:38897-da7bf7)
2026-12-02 11:05:04,323 INFO  org.apache.flink.runtime.taskexecutor.TaskManagerRunner      [] - Starting TaskManager with ResourceID: localhost:38897-da7bf7
";
        assert_eq!(
            resource_id_from_log(log).as_deref(),
            Some("localhost:38897-da7bf7")
        );
        // A log appended to by two runs: the last run's id.
        let two =
            format!("{log}... - Starting TaskManager with ResourceID: 10.0.0.7:6122-0a0b0c\n");
        assert_eq!(
            resource_id_from_log(&two).as_deref(),
            Some("10.0.0.7:6122-0a0b0c")
        );
        assert_eq!(resource_id_from_log("no such line\n"), None);
        assert!(log_id_fits("localhost:38897-da7bf7", &[35277, 38897]));
        assert!(!log_id_fits("localhost:38897-da7bf7", &[35277, 40000]));
        // A configured id says nothing about ports.
        assert!(log_id_fits("tm-7", &[]));
        assert_eq!(
            log_file_from_argv(&argv("java -Dlog.file=/opt/flink/log/tm.log -cp x Main")),
            Some(PathBuf::from("/opt/flink/log/tm.log"))
        );
        assert_eq!(
            log_file_from_argv(&argv("java -Dlog.file=rel.log Main")),
            None
        );
    }

    #[test]
    fn this_process_listening_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listen_ports(&whereabouts::read(Path::new("/proc"), std::process::id()));
        assert!(ports.contains(&port), "{port} not in {ports:?}");
    }

    #[test]
    fn release_file() {
        let r = "IMPLEMENTOR=\"Eclipse Adoptium\"\nJAVA_VERSION=\"25.0.3\"\n";
        assert_eq!(java_version_from_release(r).as_deref(), Some("25.0.3"));
    }

    #[test]
    fn finds_this_test_process_is_not_a_jvm() {
        let me = std::process::id();
        assert!(ProcFs::default().jvm(me).is_none());
    }
}
