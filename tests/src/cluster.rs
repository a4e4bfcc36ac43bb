//! Private Flink session clusters for tests.
//!
//! Every cluster gets its own directory under [`work_dir`]`/clusters/<tag>/` with a private
//! conf dir (a flattened copy of the distribution's, edited), log dir, pid dir and tmp dir,
//! free ports picked at start, and every address bound to localhost. The JobManager is started
//! with `bin/jobmanager.sh start`, each TaskManager with `bin/taskmanager.sh start -D
//! taskmanager.resource-id=<unique id>` and its own `FLINK_IDENT_STRING`, which gives each
//! daemon its own pid file and log file.
//!
//! Before [`FlinkCluster::start`] returns, it checks that the REST endpoint answers for *our*
//! cluster: exactly our TaskManager resource ids are registered, with our slot count and Flink
//! version (see [`verify_cluster_identity`]). Processes are stopped by PID only (SIGTERM, then
//! SIGKILL), on [`FlinkCluster::stop`] and on drop; a small watchdog process also stops them
//! if the owning process dies without running destructors (e.g. SIGKILL, Ctrl-C in `cargo test`).

use std::collections::BTreeSet;
use std::fmt;
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
use crate::process::{is_alive, is_ours, tail_file, terminate_all};
use crate::rest::{FlinkRest, Overview, TaskManagerInfo};

/// How a test cluster is shaped.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub taskmanagers: usize,
    pub slots_per_tm: usize,
    /// JDK for the JobManager and TaskManagers; `None` = `$JAVA_HOME`, else `java` on PATH.
    pub java_home: Option<PathBuf>,
    /// Extra configuration, applied last: key → raw YAML scalar (e.g. `("rest.flamegraph.enabled", "true")`).
    pub extra_conf: Vec<(String, String)>,
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
        }
    }
}

/// A TaskManager JVM we started.
#[derive(Debug, Clone, Serialize)]
pub struct TaskManagerProc {
    /// `taskmanager.resource-id`: the `id` in `GET /taskmanagers` and the `taskmanager-id` of subtasks.
    pub resource_id: String,
    /// PID of the TaskManager JVM.
    pub pid: u32,
    /// `FLINK_IDENT_STRING` it was started with (names its pid and log files).
    pub ident: String,
    pub log_file: PathBuf,
    pub out_file: PathBuf,
}

/// What the REST endpoint must show for the cluster to be ours.
#[derive(Debug, Clone)]
pub struct ClusterIdentity {
    pub flink_version: String,
    pub resource_ids: Vec<String>,
    pub slots_per_tm: u32,
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
        overview.slots_total == n * expected.slots_per_tm,
        "/overview shows {} slots, expected {}",
        overview.slots_total,
        n * expected.slots_per_tm
    );
    Ok(())
}

/// A running session cluster; stopped by PID on [`stop`](Self::stop) or drop.
pub struct FlinkCluster {
    version: String,
    dir: PathBuf,
    conf_dir: PathBuf,
    log_dir: PathBuf,
    /// Unique string in every one of our JVMs' command lines (the conf dir path).
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
    launch: Launch,
    /// Watchdogs of TaskManagers restarted after the start.
    more_watchdogs: Vec<Child>,
    identity: ClusterIdentity,
    stopped: bool,
}

/// What starting a Flink daemon script needs.
#[derive(Debug, Clone)]
struct Launch {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    log_dir: PathBuf,
    pid_dir: PathBuf,
    java_home: Option<PathBuf>,
    java_opts_override: Option<String>,
}

impl Launch {
    fn command(&self, script: &str, ident: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(script));
        cmd.arg("start")
            .env("FLINK_CONF_DIR", &self.conf_dir)
            .env("FLINK_LOG_DIR", &self.log_dir)
            .env("FLINK_PID_DIR", &self.pid_dir)
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(jh) = &self.java_home {
            cmd.env("JAVA_HOME", jh);
        }
        if let Some(jopts) = &self.java_opts_override {
            cmd.env("FLINK_ENV_JAVA_OPTS", jopts);
        }
        // Own process group: a terminal Ctrl-C must not hit the JVMs behind our back;
        // we stop them ourselves (by PID).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }
}

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
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let tag = format!(
            "{}-{}-{:06}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000
        );
        prune_cluster_dirs(&work_dir().join("clusters"), 30);
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

        let rest_port = free_port()?;
        let rpc_port = free_port()?;
        let conf = write_conf(
            dist,
            opts,
            &conf_dir,
            &tmp_dir.canonicalize()?,
            rest_port,
            rpc_port,
        )?;

        let java_opts_override = java_opts_override(opts.java_home.as_deref(), &conf)?;
        let resource_ids: Vec<String> = (0..opts.taskmanagers)
            .map(|i| format!("bpmon-{tag}-tm{i}"))
            .collect();
        let launch = Launch {
            bin_dir: dist.bin_dir(),
            conf_dir: conf_dir.clone(),
            log_dir: log_dir.clone(),
            pid_dir: pid_dir.clone(),
            java_home: opts.java_home.clone(),
            java_opts_override: java_opts_override.clone(),
        };
        let daemon_cmd = |script: &str, ident: &str| launch.command(script, ident);

        // Start all daemons at once; the scripts serialise on a lock of the pid dir themselves.
        // A spawn failure is only recorded, so that the daemons already started are still
        // waited for, picked up from their pid files and stopped below.
        let jm_ident = format!("bpmon-{tag}-jm");
        let mut launches: Vec<(String, Command)> = vec![(
            "jobmanager.sh".into(),
            daemon_cmd("jobmanager.sh", &jm_ident),
        )];
        for rid in &resource_ids {
            // The resource id doubles as FLINK_IDENT_STRING: it names the pid and log files.
            let mut cmd = daemon_cmd("taskmanager.sh", rid);
            cmd.arg("-D").arg(format!("taskmanager.resource-id={rid}"));
            launches.push((format!("taskmanager.sh ({rid})"), cmd));
        }
        let mut script_errors = Vec::new();
        let mut scripts: Vec<(String, Child)> = Vec::new();
        for (name, mut cmd) in launches {
            match cmd.spawn() {
                Ok(child) => scripts.push((name, child)),
                Err(e) => script_errors.push(format!("spawning {name}: {e}")),
            }
        }
        for (name, child) in scripts {
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => script_errors.push(format!(
                    "{name} exited {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => script_errors.push(format!("waiting for {name}: {e}")),
            }
        }

        // Whatever did start is handed to a FlinkCluster now, so that every error path below
        // stops it (drop).
        let jm_pid = read_pid_file(&pid_dir, &jm_ident, JM_DAEMON);
        let mut tms = Vec::new();
        for rid in &resource_ids {
            if let Some(pid) = read_pid_file(&pid_dir, rid, TM_DAEMON) {
                let (log_file, out_file) = daemon_logs(&log_dir, rid, TM_DAEMON);
                tms.push(TaskManagerProc {
                    resource_id: rid.clone(),
                    pid,
                    ident: rid.clone(),
                    log_file,
                    out_file,
                });
            }
        }
        let jm_logs = daemon_logs(&log_dir, &jm_ident, JM_DAEMON);
        let mut cluster = FlinkCluster {
            version: dist.version().to_string(),
            dir: dir.to_path_buf(),
            conf_dir,
            log_dir,
            marker,
            rest_port,
            rpc_port,
            jm_pid,
            jm_logs,
            tms,
            rest: FlinkRest::new(&format!("http://127.0.0.1:{rest_port}"))?,
            watchdog: None,
            launch,
            more_watchdogs: Vec::new(),
            identity: ClusterIdentity {
                flink_version: dist.version().to_string(),
                resource_ids: resource_ids.clone(),
                slots_per_tm: opts.slots_per_tm as u32,
            },
            stopped: false,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        if !script_errors.is_empty() {
            bail!(
                "starting Flink daemons failed:\n{}\n{}",
                script_errors.join("\n"),
                cluster.log_tails(40)
            );
        }
        ensure!(
            jm_pid.is_some(),
            "no JobManager pid file in {}\n{}",
            pid_dir.display(),
            cluster.log_tails(40)
        );
        ensure!(
            cluster.tms.len() == opts.taskmanagers,
            "only {} of {} TaskManager pid files\n{}",
            cluster.tms.len(),
            opts.taskmanagers,
            cluster.log_tails(40)
        );
        cluster.wait_registered(startup_timeout())?;
        Ok(cluster)
    }

    /// Polls `/overview` and `/taskmanagers` until all our TaskManagers are registered, and
    /// checks the cluster is ours; fails fast (with log tails) if one of our JVMs dies.
    fn wait_registered(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            // The PIDs came from our pid files seconds ago, so plain liveness is the right test.
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
            // /taskmanagers first: /overview, read after it, is at least as fresh.
            match self
                .rest
                .taskmanagers()
                .and_then(|t| Ok((t, self.rest.overview()?)))
            {
                Ok((tms, overview)) => {
                    // Another Flink or other TaskManagers mean the port is not ours: fail now.
                    // Counts may lag registration for a moment, so those are only retried.
                    let foreign: Vec<&str> = tms
                        .iter()
                        .map(|t| t.id.as_str())
                        .filter(|id| !self.identity.resource_ids.iter().any(|r| r == id))
                        .collect();
                    ensure!(
                        overview.flink_version == self.identity.flink_version && foreign.is_empty(),
                        "REST endpoint {} is not our cluster: Flink {}, foreign TaskManagers {foreign:?}",
                        self.rest_url(),
                        overview.flink_version
                    );
                    match verify_cluster_identity(&self.identity, &overview, &tms) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = format!("{e:#}"),
                    }
                }
                Err(e) => last = format!("{e:#}"),
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

    /// A detached shell that stops our JVMs (by PID, ownership-checked) once this process is gone.
    fn spawn_watchdog(&self) -> Result<Child> {
        self.spawn_watchdog_for(&self.pids())
    }

    fn spawn_watchdog_for(&self, pids: &[u32]) -> Result<Child> {
        const SCRIPT: &str = r#"
parent=$1; marker=$2; shift 2
mine() { grep -qaF -- "$marker" "/proc/$1/cmdline" 2>/dev/null; }
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
for p in "$@"; do mine "$p" && kill -TERM "$p"; done
for i in $(seq 30); do
  left=0; for p in "$@"; do mine "$p" && left=1; done
  [ "$left" = 0 ] && exit 0
  sleep 0.5
done
for p in "$@"; do mine "$p" && kill -KILL "$p"; done
exit 0
"#;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("bpmon-e2e-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.marker)
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

    /// (pid, description) of every daemon.
    fn daemons(&self) -> Vec<(u32, String)> {
        let tms = self
            .tms
            .iter()
            .map(|t| (t.pid, format!("TaskManager {}", t.resource_id)));
        tms.chain(self.jm_pid.map(|p| (p, "JobManager".to_string())))
            .collect()
    }

    /// All our JVM PIDs (TaskManagers first).
    pub fn pids(&self) -> Vec<u32> {
        self.tms.iter().map(|t| t.pid).chain(self.jm_pid).collect()
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

    /// Stops every JVM of the cluster by PID: SIGTERM, up to 15 s grace, then SIGKILL.
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
        terminate_all(&pids, &self.marker, Duration::from_secs(15))
            .with_context(|| format!("stopping Flink cluster {}", self.dir.display()))?;
        // The tmp dir holds uploaded jars and blobs; logs stay for post-mortems.
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
        Ok(())
    }

    /// Restarts TaskManager `i`: SIGKILL by PID (a crash), then the same `taskmanager.sh` with the
    /// same resource id, and waits until it is registered again. Running jobs fail over, so
    /// their subtasks get a new attempt number.
    pub fn restart_taskmanager(&mut self, i: usize) -> Result<TaskManagerProc> {
        let old = self.tms.get(i).context("no such TaskManager")?.clone();
        if is_ours(old.pid, &self.marker) {
            kill(Pid::from_raw(old.pid as i32), Signal::SIGKILL)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(old.pid) {
            ensure!(
                Instant::now() < deadline,
                "TaskManager {} survived SIGKILL",
                old.pid
            );
            sleep(Duration::from_millis(50));
        }
        // flink-daemon.sh appends to the pid file; the dead PID must not be read back.
        let _ = std::fs::remove_file(
            self.launch
                .pid_dir
                .join(format!("flink-{}-{TM_DAEMON}.pid", old.ident)),
        );
        let mut cmd = self.launch.command("taskmanager.sh", &old.ident);
        cmd.arg("-D")
            .arg(format!("taskmanager.resource-id={}", old.resource_id));
        let out = cmd.output().context("running taskmanager.sh")?;
        ensure!(
            out.status.success(),
            "taskmanager.sh exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = read_pid_file(&self.launch.pid_dir, &old.ident, TM_DAEMON)
            .context("no pid file for the restarted TaskManager")?;
        let new = TaskManagerProc { pid, ..old };
        self.tms[i] = new.clone();
        let watchdog = self.spawn_watchdog_for(&[pid])?;
        self.more_watchdogs.push(watchdog);
        self.wait_registered(startup_timeout())?;
        Ok(new)
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

/// Copies the distribution's conf dir (log4j/logback files etc.) and writes a flat config file
/// with our overrides. Returns the effective configuration.
fn write_conf(
    dist: &FlinkDist,
    opts: &ClusterOptions,
    conf_dir: &Path,
    tmp_dir: &Path,
    rest_port: u16,
    rpc_port: u16,
) -> Result<FlinkConf> {
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
        // Everything on localhost, on ports of our own.
        ("jobmanager.rpc.address", "localhost".into()),
        ("jobmanager.rpc.port", rpc_port.to_string()),
        ("jobmanager.bind-host", "localhost".into()),
        ("rest.address", "localhost".into()),
        ("rest.bind-address", "127.0.0.1".into()),
        ("rest.port", rest_port.to_string()),
        ("taskmanager.bind-host", "localhost".into()),
        ("taskmanager.host", "localhost".into()),
        // Dynamic ports for everything else.
        ("blob.server.port", "0".into()),
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
            slots_per_tm: 4,
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
