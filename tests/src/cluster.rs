//! Private Flink session clusters for tests.
//!
//! Every cluster gets its own directory under [`work_dir`]`/clusters/<tag>/` with a private
//! conf dir (a flattened copy of the distribution's, edited), log dir, pid dir and tmp dir,
//! and free ports picked at start. The JobManager is started with `bin/jobmanager.sh start`;
//! each TaskManager in one of the ways of [`TaskManagerLaunch`], chosen per TaskManager by
//! [`ClusterOptions::launch`] (by default TaskManager 0 as Flink's scripts start it, the others
//! with an explicit resource id). Each daemon gets its own `FLINK_IDENT_STRING`
//! (`bpmon-<tag>-tm<i>` for TaskManager `i`), which gives it its own pid file and log file.
//!
//! **Addresses.** Every address is bound to localhost, unless the cluster has an
//! [`TaskManagerLaunch::OwnNamespaces`] TaskManager. That one runs in a network namespace of
//! its own (see [`crate::netns`]), joined to the host by a veth pair `198.18.<n>.1` (host) ↔
//! `198.18.<n>.2` (namespace), and must reach the JobManager and the other TaskManagers, and
//! they it. So in such a cluster the JobManager's RPC and blob server
//! (`jobmanager.rpc.address`, `jobmanager.bind-host`) and the TaskManagers in the host's
//! namespace (`taskmanager.host`, `taskmanager.bind-host`) bind to and announce the host side
//! `198.18.<n>.1` instead of localhost; REST stays on 127.0.0.1. A `Script` TaskManager of such a
//! cluster therefore registers as `198.18.<n>.1:<rpcPort>-<6 hex>`. Flink 1.x's JobManager
//! uploads the jars of jobs submitted through REST to its own blob server at `localhost`
//! whatever the server is bound to, so such a cluster also gets a forwarder (in this process)
//! from `127.0.0.1:<blob port>` to `198.18.<n>.1:<blob port>`. The namespace's TaskManager
//! gets a conf dir of its own without `taskmanager.host` and with `taskmanager.bind-host:
//! 0.0.0.0`, so that Flink finds its address itself, by connecting to the JobManager, as in a
//! container. At most one `OwnNamespaces` TaskManager per cluster: two namespaces could only
//! reach each other through the host's IP forwarding, which the harness does not turn on.
//!
//! Before [`FlinkCluster::start`] returns, it checks that the REST endpoint answers for *our*
//! cluster: exactly our TaskManager resource ids are registered, with our slot count and Flink
//! version (see [`verify_cluster_identity`]). The ids of TaskManagers started without an
//! explicit one are read from their logs first (`Starting TaskManager with ResourceID: <id>`,
//! logged by Flink 1.18 to 2.3 before the TaskManager registers). Processes are stopped by PID
//! only (SIGTERM, then SIGKILL), on [`FlinkCluster::stop`] and on drop, after which the network
//! namespaces are deleted; a small watchdog process also does both if the owning process dies
//! without running destructors (e.g. SIGKILL, Ctrl-C in `cargo test`).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::conf::{conf_file_name, FlinkConf};
use crate::flink_dist::{work_dir, FlinkDist};
use crate::netns::{self, Netns, NetnsInfo};
use crate::process::{is_alive, is_ours, nspid, tail_file, terminate_all};
use crate::proxy::TcpProxy;
use crate::rest::{FlinkRest, Overview, TaskManagerInfo};

/// How a TaskManager is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum TaskManagerLaunch {
    /// `bin/taskmanager.sh start` and nothing else, as users start one. Flink gives it its
    /// default resource id, `<taskmanager.host>:<rpcPort>-<6 hex>` (`localhost:…` here), which
    /// the harness reads from the TaskManager's log. A restart gets a new id.
    Script,
    /// `bin/taskmanager.sh start -D taskmanager.resource-id=bpmon-<tag>-tm<i>`.
    ResourceId,
    /// As Docker runs a TaskManager container on its bridge network: `bin/taskmanager.sh
    /// start-foreground` (which `exec`s the JVM, so the JVM is PID 1 of its namespace) under
    /// `ip netns exec <ns> unshare --pid --mount --uts --fork --mount-proc`, with a tmpfs `/tmp`,
    /// host name `tm-<n>`, an `/etc/hosts` naming it (`198.18.<n>.2 tm-<n>`) and no name
    /// servers. Its conf dir has no `taskmanager.host`, so it registers under the address Flink
    /// finds by connecting to the JobManager (`198.18.<n>.2:<rpcPort>-<6 hex>`). Its
    /// [`TaskManagerProc::pid`] is the JVM's PID as seen from the host; tools outside reach its
    /// `/tmp` only through `/proc/<pid>/root`. Needs root (network namespaces, mounts).
    OwnNamespaces,
}

impl TaskManagerLaunch {
    /// The style of TaskManager `i` when [`ClusterOptions::launch`] has no entry for it:
    /// `Script` for the first, `ResourceId` for the others.
    pub fn default_for(i: usize) -> Self {
        if i == 0 {
            TaskManagerLaunch::Script
        } else {
            TaskManagerLaunch::ResourceId
        }
    }
}

/// How a test cluster is shaped.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub taskmanagers: usize,
    pub slots_per_tm: usize,
    /// JDK for the JobManager and TaskManagers; `None` = `$JAVA_HOME`, else `java` on PATH.
    pub java_home: Option<PathBuf>,
    /// Extra configuration, applied last: key → raw YAML scalar (e.g. `("rest.flamegraph.enabled", "true")`).
    pub extra_conf: Vec<(String, String)>,
    /// How TaskManager `i` is started: `launch[i]`, or [`TaskManagerLaunch::default_for`]`(i)`
    /// where the list is shorter (empty by default).
    pub launch: Vec<TaskManagerLaunch>,
}

impl ClusterOptions {
    /// Configuration that lets jobs fail over again and again, 1 s apart (a killed TaskManager
    /// then restarts its tasks instead of failing the job).
    pub fn restarting_jobs() -> Vec<(String, String)> {
        [
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "1000"),
            ("restart-strategy.fixed-delay.delay", "1 s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// How TaskManager `i` is started.
    pub fn launch_of(&self, i: usize) -> TaskManagerLaunch {
        self.launch
            .get(i)
            .copied()
            .unwrap_or_else(|| TaskManagerLaunch::default_for(i))
    }
}

/// The Temurin 25 JDK the tests run TaskManagers on (`BPMON_JDK25`, else the machine's); an
/// error when it is missing.
pub fn jdk25_home() -> anyhow::Result<PathBuf> {
    let jdk = PathBuf::from(
        std::env::var("BPMON_JDK25")
            .unwrap_or_else(|_| "/usr/lib/jvm/temurin-25-jdk-amd64".to_string()),
    );
    anyhow::ensure!(
        jdk.join("bin/java").is_file(),
        "no Temurin 25 at {} (set BPMON_JDK25 to a JDK 25 home)",
        jdk.display()
    );
    Ok(jdk)
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            taskmanagers: 2,
            slots_per_tm: 4,
            java_home: None,
            extra_conf: Vec::new(),
            launch: Vec::new(),
        }
    }
}

/// A TaskManager JVM we started.
#[derive(Debug, Clone, Serialize)]
pub struct TaskManagerProc {
    /// Its resource id: the `id` in `GET /taskmanagers` and the `taskmanager-id` of subtasks.
    /// `taskmanager.resource-id` for [`TaskManagerLaunch::ResourceId`], else the one Flink
    /// chose, read from its log.
    pub resource_id: String,
    /// PID of the TaskManager JVM (in the host's PID namespace).
    pub pid: u32,
    /// `FLINK_IDENT_STRING` it was started with (names its pid and log files).
    pub ident: String,
    pub log_file: PathBuf,
    pub out_file: PathBuf,
    /// How it was started.
    pub launch: TaskManagerLaunch,
    /// Its network namespace ([`TaskManagerLaunch::OwnNamespaces`] only).
    pub netns: Option<NetnsInfo>,
    /// Its host name in its own UTS namespace (`tm-<n>`; [`TaskManagerLaunch::OwnNamespaces`] only).
    pub hostname: Option<String>,
}

/// What the REST endpoint must show for the cluster to be ours.
#[derive(Debug, Clone)]
pub struct ClusterIdentity {
    pub flink_version: String,
    pub resource_ids: Vec<String>,
    /// Slots over all TaskManagers.
    pub slots_total: u32,
}

/// Checks that `/overview` and `/taskmanagers` describe the cluster we started: the same Flink
/// version, exactly our TaskManager resource ids (no missing, no foreign ones), and our slot
/// count. A foreign cluster that happened to own the port fails this.
pub fn verify_cluster_identity(
    expected: &ClusterIdentity,
    overview: &Overview,
    tms: &[TaskManagerInfo],
) -> Result<()> {
    ensure!(
        overview.flink_version == expected.flink_version,
        "cluster at this address runs Flink {} but we started {}",
        overview.flink_version,
        expected.flink_version
    );
    let ours: BTreeSet<&str> = expected.resource_ids.iter().map(String::as_str).collect();
    let seen: BTreeSet<&str> = tms.iter().map(|t| t.id.as_str()).collect();
    let foreign: Vec<&&str> = seen.difference(&ours).collect();
    ensure!(
        foreign.is_empty(),
        "foreign TaskManagers registered: {foreign:?} (ours: {ours:?})"
    );
    let missing: Vec<&&str> = ours.difference(&seen).collect();
    ensure!(
        missing.is_empty(),
        "our TaskManagers not registered: {missing:?}"
    );
    let n = expected.resource_ids.len() as u32;
    ensure!(
        overview.taskmanagers == n,
        "/overview shows {} TaskManagers, we started {n}",
        overview.taskmanagers
    );
    ensure!(
        overview.slots_total == expected.slots_total,
        "/overview shows {} slots, expected {}",
        overview.slots_total,
        expected.slots_total
    );
    Ok(())
}

/// What a TaskManager logs, in Flink 1.18 to 2.3, right after it chose its resource id and
/// before it registers.
pub const RESOURCE_ID_LOG_LINE: &str = "Starting TaskManager with ResourceID: ";

/// The id in the last [`RESOURCE_ID_LOG_LINE`] of a TaskManager's log, if any.
pub fn resource_id_from_log(log_file: &Path) -> Option<String> {
    let bytes = std::fs::read(log_file).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .rev()
        .find_map(|l| l.split_once(RESOURCE_ID_LOG_LINE))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_string)
}

/// The host PID of the TaskManager JVM whose command line contains `marker`, whose
/// `--configDir` is `conf_dir`, and which runs in a PID namespace of its own (two `NSpid`
/// entries in `/proc/<pid>/status`).
pub fn find_namespaced_taskmanager(marker: &str, conf_dir: &str) -> Option<u32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    for entry in rd.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let runner = args.iter().any(|a| a.ends_with(".TaskManagerRunner"));
        let conf = args
            .windows(2)
            .any(|w| w[0] == "--configDir" && w[1] == conf_dir);
        let ours = args.iter().any(|a| a.contains(marker));
        if runner && conf && ours && nspid(pid).is_some_and(|ids| ids.len() == 2) {
            return Some(pid);
        }
    }
    None
}

/// A running session cluster; stopped by PID on [`stop`](Self::stop) or drop.
pub struct FlinkCluster {
    version: String,
    dir: PathBuf,
    conf_dir: PathBuf,
    log_dir: PathBuf,
    /// Unique string in every one of our JVMs' command lines (the conf dir path; the conf dirs
    /// of namespace TaskManagers, `<conf dir>-tm<i>`, start with it).
    marker: String,
    rest_port: u16,
    rpc_port: u16,
    jm_pid: Option<u32>,
    /// The JobManager's (.log, .out).
    jm_logs: (PathBuf, PathBuf),
    tms: Vec<TaskManagerProc>,
    rest: FlinkRest,
    watchdog: Option<Child>,
    /// How daemons are started (to restart a TaskManager).
    env: DaemonEnv,
    /// Watchdogs of TaskManagers restarted after the start.
    more_watchdogs: Vec<Child>,
    identity: ClusterIdentity,
    /// Ids of TaskManagers restarted under a new id: the JobManager lists them until it notices
    /// they are gone, and they are not foreign meanwhile.
    retired_ids: Vec<String>,
    /// Network namespaces of `OwnNamespaces` TaskManagers; deleted on stop.
    netns: Vec<Netns>,
    /// The `ip netns exec … unshare …` processes (our children) of namespace TaskManagers, by
    /// TaskManager index.
    ns_children: Vec<(usize, Child)>,
    /// `localhost:<blob port>` → the blob server, when it is bound to a namespace's host side.
    blob_proxy: Option<TcpProxy>,
    stopped: bool,
}

/// What starting a Flink daemon script needs.
#[derive(Debug, Clone)]
struct DaemonEnv {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    log_dir: PathBuf,
    pid_dir: PathBuf,
    java_home: Option<PathBuf>,
    java_opts_override: Option<String>,
}

impl DaemonEnv {
    /// `bin/<script> start` with our environment.
    fn script(&self, script: &str, ident: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(script));
        cmd.arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.apply(&mut cmd, &self.conf_dir, &self.pid_dir, ident);
        cmd
    }

    /// Our environment for a daemon with conf dir `conf_dir` and pid dir `pid_dir`.
    fn apply(&self, cmd: &mut Command, conf_dir: &Path, pid_dir: &Path, ident: &str) {
        cmd.env("FLINK_CONF_DIR", conf_dir)
            .env("FLINK_LOG_DIR", &self.log_dir)
            .env("FLINK_PID_DIR", pid_dir)
            .env("FLINK_IDENT_STRING", ident)
            // Settings from the caller's environment would leak into our cluster.
            .env_remove("FLINK_ENV_JAVA_OPTS")
            .env_remove("FLINK_ENV_JAVA_OPTS_JM")
            .env_remove("FLINK_ENV_JAVA_OPTS_TM")
            .env_remove("JVM_ARGS")
            .env_remove("FLINK_LIB_DIR")
            .env_remove("FLINK_PLUGINS_DIR")
            .env_remove("FLINK_OPT_DIR")
            .env_remove("_FLINK_HOME_DETERMINED")
            .env_remove("STD_REDIRECT_TO_FILE");
        if let Some(jh) = &self.java_home {
            cmd.env("JAVA_HOME", jh);
        }
        if let Some(jopts) = &self.java_opts_override {
            cmd.env("FLINK_ENV_JAVA_OPTS", jopts);
        }
        // Own process group: a terminal Ctrl-C must not hit the JVMs behind our back;
        // we stop them ourselves (by PID).
        std::os::unix::process::CommandExt::process_group(cmd, 0);
    }
}

/// Run by `sh` as PID 1 of a namespace TaskManager's new PID namespace, in its new mount and
/// UTS namespaces: `$1` = hosts file, `$2` = resolv.conf, `$3` = host name, then the command.
const NS_INIT: &str = r#"set -e
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount --bind "$1" /etc/hosts
if [ -e /etc/resolv.conf ]; then mount --bind "$2" /etc/resolv.conf; fi
hostname "$3"
shift 3
exec "$@"
"#;

impl fmt::Debug for FlinkCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlinkCluster")
            .field("version", &self.version)
            .field("rest_url", &self.rest_url())
            .field("jobmanager_pid", &self.jm_pid)
            .field("taskmanagers", &self.tms)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The JobManager could not bind its ports (another process took them after we picked them).
#[derive(Debug)]
struct PortInUse(String);

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port already in use: {}", self.0)
    }
}

impl std::error::Error for PortInUse {}

static CLUSTER_COUNTER: AtomicUsize = AtomicUsize::new(0);

const JM_DAEMON: &str = "standalonesession";
const TM_DAEMON: &str = "taskexecutor";

impl FlinkCluster {
    /// Starts a session cluster and waits until all TaskManagers are registered and the REST
    /// endpoint is proven to be ours. Retries with fresh ports if the picked ones were taken.
    pub fn start(dist: &FlinkDist, opts: ClusterOptions) -> Result<Self> {
        ensure!(
            opts.taskmanagers >= 1 && opts.slots_per_tm >= 1,
            "need at least one TaskManager and one slot"
        );
        let own_ns = (0..opts.taskmanagers)
            .filter(|i| opts.launch_of(*i) == TaskManagerLaunch::OwnNamespaces)
            .count();
        ensure!(
            own_ns <= 1,
            "{own_ns} OwnNamespaces TaskManagers asked for; at most one per cluster is supported \
             (two namespaces would need the host's IP forwarding to reach each other)"
        );
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let tag = format!(
            "{}-{}-{:06}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000
        );
        prune_cluster_dirs(&work_dir().join("clusters"), 30);
        if own_ns > 0 {
            netns::prune_leftovers();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = work_dir()
                .join("clusters")
                .join(format!("{tag}-a{attempt}"));
            match Self::try_start(dist, &opts, &dir, &format!("{tag}a{attempt}")) {
                Ok(c) => return Ok(c),
                Err(e) if attempt < 3 && e.downcast_ref::<PortInUse>().is_some() => {
                    eprintln!("[bpmon-e2e] {e:#}; retrying with new ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(dist: &FlinkDist, opts: &ClusterOptions, dir: &Path, tag: &str) -> Result<Self> {
        let conf_dir = dir.join("conf");
        let log_dir = dir.join("log");
        let pid_dir = dir.join("pid");
        let tmp_dir = dir.join("tmp");
        for d in [&conf_dir, &log_dir, &pid_dir, &tmp_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let conf_dir = conf_dir.canonicalize()?;
        let marker = conf_dir.to_string_lossy().into_owned();
        let launches: Vec<TaskManagerLaunch> =
            (0..opts.taskmanagers).map(|i| opts.launch_of(i)).collect();

        // The namespace first: the JobManager binds to its host side. Dropped (deleted) on
        // every error path until the cluster owns it.
        let netns: Vec<Netns> = if launches.contains(&TaskManagerLaunch::OwnNamespaces) {
            vec![Netns::create()?]
        } else {
            Vec::new()
        };
        // Where every daemon in the host's network namespace binds and what it announces.
        let host_addr = netns
            .first()
            .map(|n| n.host_ip().to_string())
            .unwrap_or_else(|| "localhost".to_string());

        // Flink 1.x's JobManager uploads the jars of jobs submitted through REST to its own
        // blob server at `localhost` (the host name Flink gives a local RPC gateway), whatever
        // address the server is bound to. So when it is bound to the namespace's host side,
        // `localhost:<blob port>` forwards there (its port is the blob server's).
        let blob_proxy = match netns.first() {
            Some(ns) => Some(TcpProxy::mirror(ns.host_ip().into())?),
            None => None,
        };
        let rest_port = free_port()?;
        let rpc_port = free_port()?;
        let conf = write_conf(
            dist,
            opts,
            &conf_dir,
            &tmp_dir.canonicalize()?,
            &Addresses {
                host: host_addr,
                rest_port,
                rpc_port,
                blob_port: blob_proxy.as_ref().map_or(0, TcpProxy::port),
            },
        )?;

        let java_opts_override = java_opts_override(opts.java_home.as_deref(), &conf)?;
        let idents: Vec<String> = (0..opts.taskmanagers)
            .map(|i| format!("bpmon-{tag}-tm{i}"))
            .collect();
        let env = DaemonEnv {
            bin_dir: dist.bin_dir(),
            conf_dir: conf_dir.clone(),
            log_dir: log_dir.clone(),
            pid_dir: pid_dir.clone(),
            java_home: opts.java_home.clone(),
            java_opts_override: java_opts_override.clone(),
        };

        // Every TaskManager as the cluster will know it; PIDs (0 = not known yet) and log
        // files are filled in once the daemons run. The cluster owns the namespace and every
        // process from here on, so that every error path below stops them (drop).
        let jm_ident = format!("bpmon-{tag}-jm");
        let tms: Vec<TaskManagerProc> = idents
            .iter()
            .zip(&launches)
            .map(|(ident, &launch)| {
                let (netns_info, hostname) = match launch {
                    TaskManagerLaunch::OwnNamespaces => {
                        let info = netns[0].info().clone();
                        let hostname = format!("tm-{}", info.ns_ip.octets()[2]);
                        (Some(info), Some(hostname))
                    }
                    _ => (None, None),
                };
                let (log_file, out_file) = match &hostname {
                    Some(h) => console_logs(&log_dir, ident, h),
                    None => daemon_logs(&log_dir, ident, TM_DAEMON),
                };
                TaskManagerProc {
                    // The ident doubles as the explicit resource id.
                    resource_id: if launch == TaskManagerLaunch::ResourceId {
                        ident.clone()
                    } else {
                        String::new()
                    },
                    pid: 0,
                    ident: ident.clone(),
                    log_file,
                    out_file,
                    launch,
                    netns: netns_info,
                    hostname,
                }
            })
            .collect();
        let mut cluster = FlinkCluster {
            version: dist.version().to_string(),
            dir: dir.to_path_buf(),
            conf_dir,
            log_dir: log_dir.clone(),
            marker,
            rest_port,
            rpc_port,
            jm_pid: None,
            jm_logs: daemon_logs(&log_dir, &jm_ident, JM_DAEMON),
            identity: ClusterIdentity {
                flink_version: dist.version().to_string(),
                resource_ids: tms.iter().map(|t| t.resource_id.clone()).collect(),
                slots_total: (opts.slots_per_tm * opts.taskmanagers) as u32,
            },
            tms,
            rest: FlinkRest::new(&format!("http://127.0.0.1:{rest_port}"))?,
            watchdog: None,
            env,
            more_watchdogs: Vec::new(),
            retired_ids: Vec::new(),
            netns,
            ns_children: Vec::new(),
            blob_proxy,
            stopped: false,
        };

        // Start every daemon at once; the scripts serialise on a lock of the pid dir
        // themselves. A spawn failure is only recorded, so that the daemons already started
        // are still waited for, picked up from their pid files and stopped.
        let mut launch_cmds: Vec<(String, Command)> = vec![(
            "jobmanager.sh".into(),
            cluster.env.script("jobmanager.sh", &jm_ident),
        )];
        for tm in &cluster.tms {
            let mut cmd = cluster.env.script("taskmanager.sh", &tm.ident);
            match tm.launch {
                TaskManagerLaunch::Script => {}
                TaskManagerLaunch::ResourceId => {
                    cmd.arg("-D")
                        .arg(format!("taskmanager.resource-id={}", tm.resource_id));
                }
                TaskManagerLaunch::OwnNamespaces => continue,
            }
            launch_cmds.push((
                format!("taskmanager.sh ({}, {:?})", tm.ident, tm.launch),
                cmd,
            ));
        }
        let mut errors = Vec::new();
        let mut scripts: Vec<(String, Child)> = Vec::new();
        for (name, mut cmd) in launch_cmds {
            match cmd.spawn() {
                Ok(child) => scripts.push((name, child)),
                Err(e) => errors.push(format!("spawning {name}: {e}")),
            }
        }
        let ns_tms: Vec<usize> = (0..cluster.tms.len())
            .filter(|i| cluster.tms[*i].launch == TaskManagerLaunch::OwnNamespaces)
            .collect();
        for &i in &ns_tms {
            if let Err(e) = cluster.spawn_ns_taskmanager(i) {
                errors.push(format!("{e:#}"));
            }
        }
        for (name, child) in scripts {
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => errors.push(format!(
                    "{name} exited {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => errors.push(format!("waiting for {name}: {e}")),
            }
        }
        cluster.jm_pid = read_pid_file(&pid_dir, &jm_ident, JM_DAEMON);
        cluster.jm_logs = daemon_logs(&log_dir, &jm_ident, JM_DAEMON);
        for tm in &mut cluster.tms {
            if tm.launch != TaskManagerLaunch::OwnNamespaces {
                tm.pid = read_pid_file(&pid_dir, &tm.ident, TM_DAEMON).unwrap_or(0);
                (tm.log_file, tm.out_file) = daemon_logs(&log_dir, &tm.ident, TM_DAEMON);
            }
        }
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        for &i in &ns_tms {
            if cluster.ns_children.iter().any(|(j, _)| *j == i) {
                if let Err(e) = cluster.find_ns_jvm(i) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !errors.is_empty() {
            bail!(
                "starting Flink daemons failed:\n{}\n{}",
                errors.join("\n"),
                cluster.log_tails(40)
            );
        }
        ensure!(
            cluster.jm_pid.is_some(),
            "no JobManager pid file in {}\n{}",
            pid_dir.display(),
            cluster.log_tails(40)
        );
        let no_pid: Vec<&str> = cluster
            .tms
            .iter()
            .filter(|t| t.pid == 0)
            .map(|t| t.ident.as_str())
            .collect();
        ensure!(
            no_pid.is_empty(),
            "no PID for TaskManagers {no_pid:?}\n{}",
            cluster.log_tails(40)
        );
        cluster.wait_registered(startup_timeout())?;
        Ok(cluster)
    }

    /// The conf dir of namespace TaskManager `i`: `<conf dir>-tm<i>`, so that it, too, contains
    /// the marker.
    fn ns_conf_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("{}-tm{i}", self.conf_dir.display()))
    }

    /// Starts `OwnNamespaces` TaskManager `i` (see [`TaskManagerLaunch::OwnNamespaces`]); its
    /// JVM's PID is found by [`find_ns_jvm`](Self::find_ns_jvm).
    fn spawn_ns_taskmanager(&mut self, i: usize) -> Result<()> {
        let tm = self.tms[i].clone();
        let info = tm.netns.clone().context("not a namespace TaskManager")?;
        let hostname = tm
            .hostname
            .clone()
            .context("namespace TaskManager without host name")?;

        // Its own conf dir: the cluster's, but Flink must find its address itself, and inside
        // its network namespace there is only lo and the veth to bind to.
        let conf_dir = self.ns_conf_dir(i);
        std::fs::create_dir_all(&conf_dir)
            .with_context(|| format!("creating {}", conf_dir.display()))?;
        for entry in std::fs::read_dir(&self.conf_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), conf_dir.join(entry.file_name()))?;
            }
        }
        let mut conf = FlinkConf::read_dir(&self.conf_dir)?;
        conf.remove("taskmanager.host");
        conf.set("taskmanager.bind-host", "0.0.0.0");
        // As in a container: scratch space in its own /tmp.
        conf.set("io.tmp.dirs", "/tmp");
        let conf_file = conf_dir.join(conf_file_name(&self.conf_dir));
        std::fs::write(&conf_file, conf.render())
            .with_context(|| format!("writing {}", conf_file.display()))?;

        // What Docker gives a container: /etc/hosts naming it, and (here) no name server.
        let etc = self.dir.join(format!("etc-tm{i}"));
        std::fs::create_dir_all(&etc)?;
        let hosts = etc.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
                info.ns_ip
            ),
        )?;
        let resolv = etc.join("resolv.conf");
        std::fs::write(
            &resolv,
            "# bpmon-e2e: no name servers inside TaskManager namespaces\nnameserver 127.0.0.1\n",
        )?;
        // Its pid file holds its PID inside its namespace (1); a stale one would change the
        // log file's name.
        let pid_dir = self.dir.join(format!("pid-tm{i}"));
        std::fs::create_dir_all(&pid_dir)?;
        let _ = std::fs::remove_file(pid_dir.join(format!("flink-{}-{TM_DAEMON}.pid", tm.ident)));

        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&tm.out_file)
            .with_context(|| format!("opening {}", tm.out_file.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &info.name])
            .args([
                "unshare",
                "--pid",
                "--mount",
                "--uts",
                "--fork",
                "--mount-proc",
            ])
            .args(["sh", "-c", NS_INIT, "bpmon-tm-init"])
            .arg(&hosts)
            .arg(&resolv)
            .arg(&hostname)
            .arg(self.env.bin_dir.join("taskmanager.sh"))
            .arg("start-foreground");
        self.env.apply(&mut cmd, &conf_dir, &pid_dir, &tm.ident);
        cmd.env("HOSTNAME", &hostname)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning TaskManager {i} in {}", info.name))?;
        self.ns_children.push((i, child));
        Ok(())
    }

    /// Waits (up to 60 s) for the JVM of namespace TaskManager `i` and records its host PID.
    fn find_ns_jvm(&mut self, i: usize) -> Result<()> {
        let tm = self.tms[i].clone();
        let name = tm
            .netns
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let conf_arg = self.ns_conf_dir(i).to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = find_namespaced_taskmanager(&self.marker, &conf_arg) {
                self.tms[i].pid = pid;
                return Ok(());
            }
            if let Some((_, child)) = self.ns_children.iter_mut().find(|(j, _)| *j == i) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "TaskManager {i} in namespace {name} exited ({status}) before its JVM was found\n{}",
                        tail_file(&tm.out_file, 40)
                    );
                }
            }
            ensure!(
                Instant::now() < deadline,
                "no TaskManager JVM with --configDir {conf_arg} in its own PID namespace after 60 s\n{}",
                tail_file(&tm.out_file, 40)
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the `ip netns exec … unshare …` process of namespace TaskManager `i` (it
    /// exits once its JVM, PID 1 of its namespace, is gone); kills it after 5 s.
    fn reap_ns_child(&mut self, i: usize) {
        let mut keep = Vec::new();
        for (j, mut child) in self.ns_children.drain(..) {
            if j != i {
                keep.push((j, child));
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
                    Ok(None) => {
                        // Our own unreaped child: its PID cannot have been reused.
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
        self.ns_children = keep;
    }

    /// Fills in the resource ids not known yet from the TaskManagers' logs; returns the idents
    /// of the TaskManagers whose id is still unknown.
    fn learn_resource_ids(&mut self) -> Vec<String> {
        let mut unknown = Vec::new();
        for tm in &mut self.tms {
            if !tm.resource_id.is_empty() {
                continue;
            }
            if tm.launch == TaskManagerLaunch::Script {
                // The .log file may have been created after we first looked.
                (tm.log_file, tm.out_file) = daemon_logs(&self.log_dir, &tm.ident, TM_DAEMON);
            }
            match resource_id_from_log(&tm.log_file) {
                // A retired id is the previous JVM's, in a log not rotated yet.
                Some(id) if !self.retired_ids.contains(&id) => tm.resource_id = id,
                _ => unknown.push(tm.ident.clone()),
            }
        }
        if unknown.is_empty() {
            self.identity.resource_ids = self.tms.iter().map(|t| t.resource_id.clone()).collect();
        }
        unknown
    }

    /// Learns the TaskManagers' resource ids from their logs, then polls `/overview` and
    /// `/taskmanagers` until all our TaskManagers are registered, and checks the cluster is
    /// ours; fails fast (with log tails) if one of our JVMs dies.
    fn wait_registered(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            // The PIDs came from our pid files (or /proc) seconds ago, so plain liveness is
            // the right test.
            for (pid, what) in self.daemons() {
                if !is_alive(pid) {
                    let tails = self.log_tails(60);
                    if tails.contains("BindException") || tails.contains("Address already in use") {
                        return Err(anyhow!(PortInUse(format!(
                            "rest {} / rpc {}",
                            self.rest_port, self.rpc_port
                        ))));
                    }
                    bail!("{what} (pid {pid}) exited during startup\n{tails}");
                }
            }
            let unknown = self.learn_resource_ids();
            if !unknown.is_empty() {
                last = format!("no `{RESOURCE_ID_LOG_LINE}` line yet in the logs of {unknown:?}");
            } else {
                // /taskmanagers first: /overview, read after it, is at least as fresh.
                match self
                    .rest
                    .taskmanagers()
                    .and_then(|t| Ok((t, self.rest.overview()?)))
                {
                    Ok((tms, overview)) => {
                        // Another Flink or other TaskManagers mean the port is not ours: fail
                        // now. Counts may lag registration for a moment, and a TaskManager
                        // restarted under a new id leaves its old one behind for a while, so
                        // those are only retried.
                        let foreign: Vec<&str> = tms
                            .iter()
                            .map(|t| t.id.as_str())
                            .filter(|id| {
                                !self.identity.resource_ids.iter().any(|r| r == id)
                                    && !self.retired_ids.iter().any(|r| r == id)
                            })
                            .collect();
                        ensure!(
                            overview.flink_version == self.identity.flink_version
                                && foreign.is_empty(),
                            "REST endpoint {} is not our cluster: Flink {}, foreign TaskManagers {foreign:?}",
                            self.rest_url(),
                            overview.flink_version
                        );
                        match verify_cluster_identity(&self.identity, &overview, &tms) {
                            Ok(()) => {
                                self.retired_ids.clear();
                                return Ok(());
                            }
                            Err(e) => last = format!("{e:#}"),
                        }
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "cluster not ready after {timeout:?}: {last}\n{}",
                    self.log_tails(60)
                );
            }
            sleep(Duration::from_millis(500));
        }
    }

    /// A detached shell that, once this process is gone, stops our JVMs (by PID,
    /// ownership-checked, including any of ours inside our network namespaces) and deletes
    /// the namespaces.
    fn spawn_watchdog(&self) -> Result<Child> {
        let names: Vec<&str> = self.netns.iter().map(Netns::name).collect();
        self.spawn_watchdog_for(&self.pids(), &names)
    }

    fn spawn_watchdog_for(&self, pids: &[u32], netns: &[&str]) -> Result<Child> {
        const SCRIPT: &str = r#"
parent=$1; marker=$2; namespaces=$3; shift 3
mine() { grep -qaF -- "$marker" "/proc/$1/cmdline" 2>/dev/null; }
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
pids="$*"
for ns in $namespaces; do pids="$pids $(ip netns pids "$ns" 2>/dev/null)"; done
for p in $pids; do mine "$p" && kill -TERM "$p"; done
for i in $(seq 30); do
  left=0; for p in $pids; do mine "$p" && left=1; done
  [ "$left" = 0 ] && break
  sleep 0.5
done
for p in $pids; do mine "$p" && kill -KILL "$p"; done
sleep 1
for ns in $namespaces; do
  ip link del "bpmon${ns##*-}h" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
done
exit 0
"#;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("bpmon-e2e-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.marker)
            .arg(netns.join(" "))
            .args(pids.iter().map(u32::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().context("spawning the cluster watchdog")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn rest_url(&self) -> String {
        self.rest.base_url().to_string()
    }

    pub fn rest(&self) -> &FlinkRest {
        &self.rest
    }

    pub fn flink_version(&self) -> &str {
        &self.version
    }

    pub fn taskmanagers(&self) -> Vec<TaskManagerProc> {
        self.tms.clone()
    }

    /// PID of the JobManager JVM.
    pub fn jobmanager_pid(&self) -> u32 {
        self.jm_pid.unwrap_or(0)
    }

    /// (pid, description) of every daemon whose PID is known.
    fn daemons(&self) -> Vec<(u32, String)> {
        let tms = self.tms.iter().filter(|t| t.pid != 0).map(|t| {
            (
                t.pid,
                format!("TaskManager {} ({:?} {})", t.ident, t.launch, t.resource_id),
            )
        });
        tms.chain(self.jm_pid.map(|p| (p, "JobManager".to_string())))
            .collect()
    }

    /// All our JVM PIDs (TaskManagers first), as seen from the host.
    pub fn pids(&self) -> Vec<u32> {
        self.tms
            .iter()
            .map(|t| t.pid)
            .filter(|p| *p != 0)
            .chain(self.jm_pid)
            .collect()
    }

    pub fn rest_port(&self) -> u16 {
        self.rest_port
    }

    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// The cluster's private directory (conf/, log/, pid/, tmp/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The JobManager's log4j `.log` file.
    pub fn jobmanager_log_file(&self) -> &Path {
        &self.jm_logs.0
    }

    /// The JobManager's stdout/stderr (`.out`) file.
    pub fn jobmanager_out_file(&self) -> &Path {
        &self.jm_logs.1
    }

    pub fn identity(&self) -> &ClusterIdentity {
        &self.identity
    }

    /// The network namespaces of the cluster's `OwnNamespaces` TaskManagers.
    pub fn namespaces(&self) -> Vec<NetnsInfo> {
        self.netns.iter().map(|n| n.info().clone()).collect()
    }

    /// Checks, right now, that the REST endpoint still shows exactly our cluster.
    pub fn verify_identity(&self) -> Result<()> {
        let overview = self.rest.overview()?;
        let tms = self.rest.taskmanagers()?;
        verify_cluster_identity(&self.identity, &overview, &tms)
    }

    /// The last `lines` lines of every `.log` and `.out` file in the log dir, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "log" || x == "out"));
        files.sort();
        if files.is_empty() {
            return format!("(no .log/.out files in {})", self.log_dir.display());
        }
        let mut out = String::new();
        for f in files {
            out.push_str(&format!(
                "----- tail of {} -----\n{}\n",
                f.display(),
                tail_file(&f, lines)
            ));
        }
        out
    }

    /// Stops every JVM of the cluster by PID: SIGTERM, up to 15 s grace, then SIGKILL. Then
    /// deletes the cluster's network namespaces, also when stopping failed.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        for mut w in self
            .watchdog
            .take()
            .into_iter()
            .chain(self.more_watchdogs.drain(..))
        {
            // Our own child: kill and reap it first so it cannot act on recycled PIDs later.
            let _ = w.kill();
            let _ = w.wait();
        }
        let pids = self.pids();
        let mut result = terminate_all(&pids, &self.marker, Duration::from_secs(15))
            .with_context(|| format!("stopping Flink cluster {}", self.dir.display()));
        // Anything of ours still inside a namespace (e.g. a JVM whose PID was never found).
        for ns in &self.netns {
            let left: Vec<u32> = ns
                .pids()
                .into_iter()
                .filter(|p| is_ours(*p, &self.marker))
                .collect();
            if !left.is_empty() {
                if let Err(e) = terminate_all(&left, &self.marker, Duration::from_secs(15)) {
                    result = result.and(Err(
                        e.context(format!("stopping processes in {}", ns.name()))
                    ));
                }
            }
        }
        let children: Vec<usize> = self.ns_children.iter().map(|(i, _)| *i).collect();
        for i in children {
            self.reap_ns_child(i);
        }
        if let Some(mut proxy) = self.blob_proxy.take() {
            proxy.down();
        }
        for ns in &mut self.netns {
            if let Err(e) = ns.delete() {
                result = result.and(Err(e));
            }
        }
        // The tmp dir holds uploaded jars and blobs; logs stay for post-mortems.
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
        result
    }

    /// Restarts TaskManager `i`: SIGKILL by PID (a crash), then the same start again, and
    /// waits until it is registered again. Running jobs fail over, so their subtasks get a new
    /// attempt number. A `ResourceId` TaskManager comes back under its id; the others get a new
    /// one (read from the log as at start), and the old one may stay listed by the JobManager
    /// until its heartbeat times out: this waits until it is gone, so that the identity is
    /// exact again.
    pub fn restart_taskmanager(&mut self, i: usize) -> Result<TaskManagerProc> {
        let old = self.tms.get(i).context("no such TaskManager")?.clone();
        if old.pid != 0 && is_ours(old.pid, &self.marker) {
            kill(Pid::from_raw(old.pid as i32), Signal::SIGKILL)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.pid != 0 && is_alive(old.pid) {
            ensure!(
                Instant::now() < deadline,
                "TaskManager {} survived SIGKILL",
                old.pid
            );
            sleep(Duration::from_millis(50));
        }
        if old.launch != TaskManagerLaunch::ResourceId {
            self.retired_ids.push(old.resource_id.clone());
            self.tms[i].resource_id.clear();
        }
        match old.launch {
            TaskManagerLaunch::Script | TaskManagerLaunch::ResourceId => {
                // flink-daemon.sh appends to the pid file; the dead PID must not be read back.
                let _ = std::fs::remove_file(
                    self.env
                        .pid_dir
                        .join(format!("flink-{}-{TM_DAEMON}.pid", old.ident)),
                );
                let mut cmd = self.env.script("taskmanager.sh", &old.ident);
                if old.launch == TaskManagerLaunch::ResourceId {
                    cmd.arg("-D")
                        .arg(format!("taskmanager.resource-id={}", old.resource_id));
                }
                let out = cmd.output().context("running taskmanager.sh")?;
                ensure!(
                    out.status.success(),
                    "taskmanager.sh exited {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                let pid = read_pid_file(&self.env.pid_dir, &old.ident, TM_DAEMON)
                    .context("no pid file for the restarted TaskManager")?;
                self.tms[i].pid = pid;
            }
            TaskManagerLaunch::OwnNamespaces => {
                self.tms[i].pid = 0;
                self.reap_ns_child(i);
                self.spawn_ns_taskmanager(i)?;
                self.find_ns_jvm(i)?;
            }
        }
        let pid = self.tms[i].pid;
        let watchdog = self.spawn_watchdog_for(&[pid], &[])?;
        self.more_watchdogs.push(watchdog);
        self.wait_registered(startup_timeout())?;
        Ok(self.tms[i].clone())
    }

    /// Adds a TaskManager to the running cluster as an operator does: `bin/taskmanager.sh
    /// start -D taskmanager.numberOfTaskSlots=<slots>`, with the resource id Flink gives it.
    /// Waits until it is registered. Jobs submitted next (and only needing free slots) land on
    /// it once the others' slots are taken: how a test puts a job on a TaskManager of its own.
    pub fn add_taskmanager(&mut self, slots: usize) -> Result<TaskManagerProc> {
        ensure!(slots >= 1, "a TaskManager needs a slot");
        let i = self.tms.len();
        let ident = format!(
            "{}-tm{i}",
            self.tms
                .first()
                .and_then(|t| t.ident.rsplit_once("-tm"))
                .map_or("bpmon-added", |(stem, _)| stem)
        );
        let mut cmd = self.env.script("taskmanager.sh", &ident);
        cmd.arg("-D")
            .arg(format!("taskmanager.numberOfTaskSlots={slots}"));
        let out = cmd.output().context("running taskmanager.sh")?;
        ensure!(
            out.status.success(),
            "taskmanager.sh exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = read_pid_file(&self.env.pid_dir, &ident, TM_DAEMON)
            .context("no pid file for the added TaskManager")?;
        let (log_file, out_file) = daemon_logs(&self.log_dir, &ident, TM_DAEMON);
        self.tms.push(TaskManagerProc {
            resource_id: String::new(),
            pid,
            ident,
            log_file,
            out_file,
            launch: TaskManagerLaunch::Script,
            netns: None,
            hostname: None,
        });
        self.identity.slots_total += slots as u32;
        let watchdog = self.spawn_watchdog_for(&[pid], &[])?;
        self.more_watchdogs.push(watchdog);
        self.wait_registered(startup_timeout())?;
        Ok(self.tms[i].clone())
    }

    /// Whether any of our JVMs is still running.
    pub fn any_running(&self) -> bool {
        self.pids().iter().any(|p| is_ours(*p, &self.marker))
    }
}

impl Drop for FlinkCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[bpmon-e2e] {e:#}");
        }
    }
}

/// Keeps the newest `keep` cluster dirs (their logs are for post-mortems) and removes older
/// ones, but never one whose creating process (the name's first field) is still running.
fn prune_cluster_dirs(root: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, dir) in dirs.into_iter().skip(keep) {
        let creator = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if creator.is_some_and(|p| !is_alive(p)) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!(
                    "[bpmon-e2e] could not remove old cluster dir {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

/// Seconds to wait for the cluster: `BPMON_E2E_STARTUP_TIMEOUT_SECS`, default 120.
fn startup_timeout() -> Duration {
    let secs = std::env::var("BPMON_E2E_STARTUP_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// A port that was free on 127.0.0.1 a moment ago (start() retries if someone takes it).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Where the cluster's daemons in the host's network namespace listen.
#[derive(Debug, Clone)]
struct Addresses {
    /// The address the JobManager's RPC and blob server and the TaskManagers bind to and
    /// announce.
    host: String,
    rest_port: u16,
    rpc_port: u16,
    /// The blob server's port; 0 = any.
    blob_port: u16,
}

/// Copies the distribution's conf dir (log4j/logback files etc.) and writes a flat config file
/// with our overrides. Returns the effective configuration.
fn write_conf(
    dist: &FlinkDist,
    opts: &ClusterOptions,
    conf_dir: &Path,
    tmp_dir: &Path,
    net: &Addresses,
) -> Result<FlinkConf> {
    let Addresses {
        host,
        rest_port,
        rpc_port,
        blob_port,
    } = net;
    let host = host.as_str();
    let src = dist.conf_dir();
    let file_name = conf_file_name(&src);
    for entry in std::fs::read_dir(&src).with_context(|| format!("listing {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "config.yaml" || name == "flink-conf.yaml" || !entry.file_type()?.is_file() {
            continue;
        }
        std::fs::copy(entry.path(), conf_dir.join(&*name))
            .with_context(|| format!("copying {name}"))?;
    }
    let mut conf = FlinkConf::read_dir(&src)?;
    let tmp = tmp_dir.to_string_lossy();
    let settings: Vec<(&str, String)> = vec![
        // Everything on `host` (localhost, or the host side of a TaskManager's network
        // namespace), on ports of our own; REST always on localhost.
        ("jobmanager.rpc.address", host.into()),
        ("jobmanager.rpc.port", rpc_port.to_string()),
        ("jobmanager.bind-host", host.into()),
        ("rest.address", "localhost".into()),
        ("rest.bind-address", "127.0.0.1".into()),
        ("rest.port", rest_port.to_string()),
        ("taskmanager.bind-host", host.into()),
        ("taskmanager.host", host.into()),
        // Dynamic ports for everything else.
        ("blob.server.port", blob_port.to_string()),
        ("taskmanager.rpc.port", "0".into()),
        ("taskmanager.data.port", "0".into()),
        ("metrics.internal.query-service.port", "0".into()),
        // Small: the machine is shared. Managed memory is unused by our jobs.
        ("jobmanager.memory.process.size", "1024m".into()),
        ("taskmanager.memory.process.size", "1280m".into()),
        ("taskmanager.memory.managed.size", "64m".into()),
        (
            "taskmanager.numberOfTaskSlots",
            opts.slots_per_tm.to_string(),
        ),
        ("parallelism.default", "1".into()),
        // Spread each job's subtasks over the TaskManagers so shuffles have remote channels
        // (Flink's inPoolUsage gauges ignore local channels). 1.20+ key, and the older one.
        ("taskmanager.load-balance.mode", "SLOTS".into()),
        ("cluster.evenly-spread-out-slots", "true".into()),
        // Private scratch space instead of /tmp.
        ("io.tmp.dirs", tmp.to_string()),
        ("web.tmpdir", format!("{tmp}/web")),
        // The JM refreshes its metric cache at most this often (default 10 s); shorter makes
        // REST readings settle sooner. Fetching is on demand, so it costs nothing when idle.
        ("metrics.fetcher.update-interval", "2000".into()),
    ];
    for (k, v) in settings {
        conf.set(k, v);
    }
    for (k, v) in &opts.extra_conf {
        conf.set(k.clone(), v.clone());
    }
    let path = conf_dir.join(file_name);
    std::fs::write(&path, conf.render()).with_context(|| format!("writing {}", path.display()))?;
    Ok(conf)
}

/// The `FLINK_ENV_JAVA_OPTS` to force for JDKs on which Flink's scripts would produce an
/// unstartable JVM, else `None`. Flink's `config.sh` adds `-Djava.security.manager=allow` for
/// any JDK newer than 17, which JDK 24+ rejects at startup (JEP 486). Setting the variable
/// ourselves skips that branch; the value mirrors what config.sh would compute otherwise.
fn java_opts_override(java_home: Option<&Path>, conf: &FlinkConf) -> Result<Option<String>> {
    let home = match java_home {
        Some(h) => h.to_path_buf(),
        None => match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
            Some(h) => PathBuf::from(h),
            None => return Ok(None),
        },
    };
    let Some(major) = java_major(&home) else {
        return Ok(None);
    };
    if major < 24 {
        return Ok(None);
    }
    let strip = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_string();
    let defaults = conf
        .get("env.java.default-opts.all")
        .map(strip)
        .unwrap_or_default();
    let all = conf
        .get("env.java.opts.all")
        .or(conf.get("env.java.opts"))
        .map(strip)
        .unwrap_or_default();
    Ok(Some(
        format!("-XX:+IgnoreUnrecognizedVMOptions {defaults} {all}")
            .trim()
            .to_string(),
    ))
}

/// Major version from `<java_home>/release` (`JAVA_VERSION="25.0.3"`, or `"1.8.0_…"` → 8).
pub fn java_major(java_home: &Path) -> Option<u32> {
    let release = std::fs::read_to_string(java_home.join("release")).ok()?;
    let line = release.lines().find(|l| l.starts_with("JAVA_VERSION="))?;
    let v = line.trim_start_matches("JAVA_VERSION=").trim_matches('"');
    let mut parts = v.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// The PID in `flink-<ident>-<daemon>.pid` (first line), if the file exists.
fn read_pid_file(pid_dir: &Path, ident: &str, daemon: &str) -> Option<u32> {
    let text = std::fs::read_to_string(pid_dir.join(format!("flink-{ident}-{daemon}.pid"))).ok()?;
    // Kept even if already dead: later signals are ownership-checked, and startup reports it.
    text.lines().next()?.trim().parse().ok()
}

/// The `.log` and `.out` paths flink-daemon.sh uses: `flink-<ident>-<daemon>-<n>-<host>.{log,out}`
/// (the host name may contain dots, so the suffix is stripped as a string).
fn daemon_logs(log_dir: &Path, ident: &str, daemon: &str) -> (PathBuf, PathBuf) {
    let prefix = format!("flink-{ident}-{daemon}-");
    let stem = std::fs::read_dir(log_dir)
        .ok()
        .and_then(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with(&prefix) && (n.ends_with(".log") || n.ends_with(".out")))
        })
        .map(|n| n[..n.len() - 4].to_string())
        .unwrap_or_else(|| format!("{prefix}0"));
    (
        log_dir.join(format!("{stem}.log")),
        log_dir.join(format!("{stem}.out")),
    )
}

/// The `.log` and `.out` paths of a TaskManager run by `taskmanager.sh start-foreground` with
/// host name `hostname` and a fresh pid dir: flink-console.sh names the log
/// `flink-<ident>-taskexecutor-0-<hostname>.log`; the `.out` is where we send its console.
fn console_logs(log_dir: &Path, ident: &str, hostname: &str) -> (PathBuf, PathBuf) {
    let stem = format!("flink-{ident}-{TM_DAEMON}-0-{hostname}");
    (
        log_dir.join(format!("{stem}.log")),
        log_dir.join(format!("{stem}.out")),
    )
}

/// Serialises the clusters of one test binary: two at once would fight over the machine's two
/// cores and skew both Flink's metrics and whatever samples them. Hold the guard for the test.
pub fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overview(version: &str, tms: u32, slots: u32) -> Overview {
        Overview {
            taskmanagers: tms,
            slots_total: slots,
            slots_available: slots,
            jobs_running: 0,
            flink_version: version.into(),
            flink_commit: String::new(),
        }
    }

    fn tm(id: &str) -> TaskManagerInfo {
        TaskManagerInfo {
            id: id.into(),
            path: String::new(),
            data_port: 0,
            slots_number: 4,
            free_slots: 4,
        }
    }

    fn ours() -> ClusterIdentity {
        ClusterIdentity {
            flink_version: "2.3.0".into(),
            resource_ids: vec!["bpmon-x-tm0".into(), "bpmon-x-tm1".into()],
            slots_total: 8,
        }
    }

    #[test]
    fn accepts_our_cluster() {
        verify_cluster_identity(
            &ours(),
            &overview("2.3.0", 2, 8),
            &[tm("bpmon-x-tm1"), tm("bpmon-x-tm0")],
        )
        .unwrap();
    }

    #[test]
    fn rejects_foreign_clusters() {
        // Someone else's cluster on the port: other ids.
        let e = verify_cluster_identity(
            &ours(),
            &overview("2.3.0", 2, 8),
            &[tm("10.0.0.1:4567-abc"), tm("x")],
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("foreign"));
        // Our ids plus an extra TaskManager.
        let e = verify_cluster_identity(
            &ours(),
            &overview("2.3.0", 3, 12),
            &[tm("bpmon-x-tm0"), tm("bpmon-x-tm1"), tm("other")],
        );
        assert!(e.is_err());
        // Another Flink version.
        assert!(verify_cluster_identity(
            &ours(),
            &overview("1.20.3", 2, 8),
            &[tm("bpmon-x-tm0"), tm("bpmon-x-tm1")]
        )
        .is_err());
        // Wrong slot count.
        assert!(verify_cluster_identity(
            &ours(),
            &overview("2.3.0", 2, 2),
            &[tm("bpmon-x-tm0"), tm("bpmon-x-tm1")]
        )
        .is_err());
        // Missing one of ours.
        assert!(
            verify_cluster_identity(&ours(), &overview("2.3.0", 1, 4), &[tm("bpmon-x-tm0")])
                .is_err()
        );
    }

    #[test]
    fn launch_defaults_to_one_script_taskmanager() {
        let opts = ClusterOptions {
            taskmanagers: 3,
            ..ClusterOptions::default()
        };
        assert_eq!(opts.launch_of(0), TaskManagerLaunch::Script);
        assert_eq!(opts.launch_of(1), TaskManagerLaunch::ResourceId);
        assert_eq!(opts.launch_of(2), TaskManagerLaunch::ResourceId);
        let opts = ClusterOptions {
            launch: vec![TaskManagerLaunch::OwnNamespaces],
            ..opts
        };
        assert_eq!(opts.launch_of(0), TaskManagerLaunch::OwnNamespaces);
        assert_eq!(opts.launch_of(1), TaskManagerLaunch::ResourceId);
    }

    #[test]
    fn resource_id_from_the_log() {
        let dir = std::env::temp_dir().join(format!("bpmon-e2e-rid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("tm.log");
        assert_eq!(resource_id_from_log(&log), None);
        std::fs::write(
            &log,
            "2026-01-01 00:00:00,000 INFO  x [] - Preconfiguration:\n",
        )
        .unwrap();
        assert_eq!(resource_id_from_log(&log), None);
        std::fs::write(
            &log,
            "2026-01-01 00:00:00,000 INFO  org.apache.flink.runtime.taskexecutor.TaskManagerRunner      [] - Starting TaskManager with ResourceID: localhost:40123-3fa2b1\n\
             2026-01-01 00:00:01,000 INFO  org.apache.flink.runtime.taskexecutor.TaskManagerRunner      [] - Starting TaskManager with ResourceID: 198.18.7.2:38001-a0b1c2\n",
        )
        .unwrap();
        // The newest start wins.
        assert_eq!(
            resource_id_from_log(&log).as_deref(),
            Some("198.18.7.2:38001-a0b1c2")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn console_log_names() {
        let (log, out) = console_logs(Path::new("/l"), "bpmon-1-tm0", "tm-7");
        assert_eq!(
            log,
            Path::new("/l/flink-bpmon-1-tm0-taskexecutor-0-tm-7.log")
        );
        assert_eq!(
            out,
            Path::new("/l/flink-bpmon-1-tm0-taskexecutor-0-tm-7.out")
        );
    }

    #[test]
    fn java_major_from_release() {
        let dir = std::env::temp_dir().join(format!("bpmon-e2e-jm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("release"),
            "IMPLEMENTOR=\"x\"\nJAVA_VERSION=\"25.0.3\"\n",
        )
        .unwrap();
        assert_eq!(java_major(&dir), Some(25));
        std::fs::write(dir.join("release"), "JAVA_VERSION=\"1.8.0_402\"\n").unwrap();
        assert_eq!(java_major(&dir), Some(8));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
