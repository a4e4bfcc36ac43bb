//! End-to-end harness for bpmon: real Flink session clusters and Java test jobs whose
//! back-pressure behaviour is known in advance and proven by Flink's own metrics.
//!
//! * [`flink_dist`]: installs a Flink distribution from PyPI (`scripts/setup-flink`) and
//!   locates the repository and the harness's work directory.
//! * [`conf`]: reads the distribution's `config.yaml` / `flink-conf.yaml` and writes a flat
//!   private copy (both formats accept flat `key: value` lines).
//! * [`cluster`]: starts a private session cluster (ports, conf, log and pid dirs of its own,
//!   bound to localhost), its TaskManagers started as users do, with an explicit resource id,
//!   or in namespaces of their own ([`TaskManagerLaunch`]), proves it is ours, and stops it by
//!   PID (also on drop).
//! * [`cgroup`]: a CPU limit (a cgroup with a quota) put on a running TaskManager.
//! * [`netns`]: network namespaces with a veth pair to the host, for TaskManagers started as
//!   in a container ([`TaskManagerLaunch::OwnNamespaces`]).
//! * [`proxy`]: a TCP proxy a test can take down, to play an unreachable Flink REST.
//! * [`process`]: PID-level helpers (liveness, ownership check, SIGTERM-then-SIGKILL).
//! * [`rest`]: a small blocking client for the Flink REST endpoints bpmon cares about.
//! * [`readings`]: Flink's own per-subtask view (time metrics, pool usages, `/backpressure`).
//! * [`services`]: bpmon's own daemons (`bpmon-collector serve`, `bpmon-agent run`) as child
//!   processes, and the collector's CLI.
//! * [`browser`] and [`webview`]: a headless Chromium driven over WebDriver, and what it reads
//!   off the collector's web view.
//! * [`jobs`]: compiles and packages the Java test jobs (`tests/flink-jobs`) and describes
//!   their vertices and expected behaviour.

pub mod bench;
pub mod browser;
pub mod cgroup;
pub mod cluster;
pub mod conf;
pub mod flink_dist;
pub mod jobs;
pub mod jvmti;
pub mod netns;
pub mod phases;
pub mod process;
pub mod proxy;
pub mod readings;
pub mod rest;
pub mod services;
pub mod webview;

pub use cluster::{
    jdk25_home, one_cluster_at_a_time, verify_cluster_identity, ClusterIdentity, ClusterOptions,
    FlinkCluster, TaskManagerLaunch, TaskManagerProc,
};
pub use flink_dist::{repo_root, work_dir, FlinkDist, DEFAULT_FLINK_VERSION};
pub use jobs::{Behaviour, ExpectedVertex, JobMode, TestJobs};
pub use netns::NetnsInfo;
pub use rest::FlinkRest;

/// Polls `f` every 500 ms until it gives `Some`, or fails after `timeout` with the last error it
/// saw (what the end-to-end tests wait for: a level, a window, a log line).
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
