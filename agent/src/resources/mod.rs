//! What one TaskManager JVM, its GC, its cgroup and its host spent over a window: the evidence for
//! naming the *cause* of a bottleneck (CPU-bound user code, GC pauses, cgroup CPU throttling, a
//! saturated host) once the samples have named the task.
//!
//! A [`ResourceProbe`] is opened once per JVM and read at each end of a window; the difference of
//! two [`ResourceReading`]s is the wire's [`JvmResources`]. Every figure is optional: one the agent
//! cannot read (no perf data, no cgroup it can reach, an exited JVM) is absent, never an error
//! and never a guess. The parts, each pure parsing over text apart from its reading of files:
//!
//! - [`process`]: `/proc/PID/stat` and `schedstat`, the CPU time of a process or a thread, and
//!   the start time that tells a JVM from a later process reusing its pid;
//! - [`thread_cpu`]: the CPU time of chosen threads by the ids the JVM prints (`nid=`), mapped
//!   to the host's ids for a JVM in another pid namespace ([`ThreadCpuReader`]);
//! - [`gc`]: pause and concurrent GC time from hsperfdata, by collector name;
//! - [`cgroup`]: the CPU controller of the JVM's cgroup (v1 or v2), found through the agent's
//!   mounts or the JVM's root, with the parsers of its files in [`cgroup_files`];
//! - [`host`]: the host's busy share (`/proc/stat`) and its online CPUs.

pub mod cgroup;
pub mod cgroup_files;
pub mod gc;
pub mod host;
pub mod process;
pub mod thread_cpu;

use std::path::{Path, PathBuf};
use std::time::Instant;

use bpmon_proto::JvmResources;
use thiserror::Error;

use crate::discovery::JvmProcess;

pub use self::cgroup::{CgroupReading, CgroupSource};
pub use self::gc::{GcCounters, GcProbe};
pub use self::host::HostCpu;
pub use self::process::ProcessCpu;
pub use self::thread_cpu::ThreadCpuReader;

/// Why a figure could not be read. Reading goes on without it: these are logged, not returned
/// from [`ResourceProbe`].
#[derive(Debug, Error)]
pub enum ResourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: &'static str },
}

/// Reads a small text file (a `/proc` or cgroup file).
pub fn read_text(path: &Path) -> Result<String, ResourceError> {
    std::fs::read_to_string(path).map_err(|source| ResourceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads one JVM's resource figures, again and again.
#[derive(Debug)]
pub struct ResourceProbe {
    proc_root: PathBuf,
    pid: u32,
    /// The JVM's start time when the probe was opened: a process with the same pid and another
    /// start time is not this JVM.
    starttime: Option<u64>,
    ticks_per_second: u64,
    gc: Option<GcProbe>,
    cgroup: Option<CgroupSource>,
    /// `/proc/PID/cgroup` as it was when the probe was opened.
    membership: Option<String>,
}

/// The cgroups a process is in, as `/proc/PID/cgroup` lists them.
fn membership(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()
}

/// Every figure at one instant. A figure of the JVM is `None` once the JVM is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceReading {
    pub at: Instant,
    pub process: Option<ProcessCpu>,
    pub gc: Option<GcCounters>,
    pub cgroup: Option<CgroupReading>,
    pub host: Option<HostCpu>,
}

impl ResourceProbe {
    /// A probe for `jvm`, through the host's `/proc`. Never fails: what cannot be read now is
    /// left out of every reading. The JVM's perf data and cgroup are found once, here: a JVM
    /// that changes cgroups later is still read in the one it was in, until
    /// [`ResourceProbe::still_placed`] says so and a new probe is opened.
    pub fn open(jvm: &JvmProcess) -> ResourceProbe {
        ResourceProbe::open_at(Path::new("/proc"), jvm)
    }

    /// A probe for `jvm` through another `/proc` mount.
    pub fn open_at(proc_root: &Path, jvm: &JvmProcess) -> ResourceProbe {
        let ticks_per_second = process::ticks_per_second();
        let starttime =
            process::read_process(proc_root, jvm.pid, ticks_per_second).map(|p| p.starttime);
        let gc = jvm
            .perf_file
            .as_deref()
            .and_then(|f| match GcProbe::open(f) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(pid = jvm.pid, error = %e, "no GC counters");
                    None
                }
            });
        ResourceProbe {
            proc_root: proc_root.to_path_buf(),
            pid: jvm.pid,
            starttime,
            ticks_per_second,
            gc,
            membership: membership(proc_root, jvm.pid),
            cgroup: starttime.and_then(|_| CgroupSource::locate(proc_root, jvm.pid)),
        }
    }

    /// Whether the JVM is still in the cgroups it was in when the probe was opened (one small
    /// read of `/proc/PID/cgroup`; finding the cgroup again means reading the mount table).
    pub fn still_placed(&self) -> bool {
        membership(&self.proc_root, self.pid) == self.membership
    }

    /// The cgroup the JVM was found in, if any.
    pub fn cgroup(&self) -> Option<&CgroupSource> {
        self.cgroup.as_ref()
    }

    /// Every figure now.
    pub fn read(&self) -> ResourceReading {
        let at = Instant::now();
        let process = process::read_process(&self.proc_root, self.pid, self.ticks_per_second)
            .filter(|p| Some(p.starttime) == self.starttime);
        let alive = process.is_some();
        let host = match host::read(&self.proc_root) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::debug!(error = %e, "no host CPU figures");
                None
            }
        };
        ResourceReading {
            at,
            process,
            // A gone JVM's perf data (still open) and cgroup are not its figures any more.
            gc: self.gc.as_ref().filter(|_| alive).and_then(GcProbe::read),
            cgroup: self
                .cgroup
                .as_ref()
                .filter(|_| alive)
                .and_then(CgroupSource::read),
            host,
        }
    }
}

impl ResourceReading {
    /// What was spent between `self` and `later`: each figure that both readings have, and that
    /// did not go backwards; the others are `None`.
    pub fn delta(&self, later: &ResourceReading) -> JvmResources {
        let wall = later.at.saturating_duration_since(self.at);
        let process_cpu_ms = match (self.process, later.process) {
            (Some(a), Some(b)) if a.starttime == b.starttime => b.cpu_ms.checked_sub(a.cpu_ms),
            _ => None,
        };
        let gc = self.gc.zip(later.gc).and_then(|(a, b)| a.delta(&b));
        let cgroup = match (&self.cgroup, &later.cgroup) {
            (Some(a), Some(b)) => a.delta(b),
            _ => None,
        };
        let host = self.host.zip(later.host);
        JvmResources {
            wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
            process_cpu_ms,
            gc_pause_ms: gc.map(|g| g.pause_ms),
            gc_count: gc.map(|g| g.count),
            gc_concurrent_ms: gc.and_then(|g| g.concurrent_ms),
            cgroup,
            host_busy: host.and_then(|(a, b)| a.busy_share(&b)),
            host_cpus: later.host.map(|h| h.cpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, cpu_ms: u64, starttime: u64) -> ResourceReading {
        ResourceReading {
            at,
            process: Some(ProcessCpu { cpu_ms, starttime }),
            gc: Some(GcCounters {
                pause_ticks: cpu_ms as i64 * 1_000_000,
                pauses: 1,
                concurrent_ticks: None,
                ticks_per_second: 1_000_000_000,
            }),
            cgroup: None,
            host: Some(HostCpu {
                busy: cpu_ms,
                total: cpu_ms * 4,
                cpus: 2,
            }),
        }
    }

    #[test]
    fn delta_of_two_readings() {
        let t0 = Instant::now();
        let a = reading(t0, 100, 7);
        let b = reading(t0 + std::time::Duration::from_millis(5000), 300, 7);
        let r = a.delta(&b);
        assert_eq!(r.wall_ms, 5000);
        assert_eq!(r.process_cpu_ms, Some(200));
        assert_eq!((r.gc_pause_ms, r.gc_count), (Some(200.0), Some(0)));
        assert_eq!(r.gc_concurrent_ms, None);
        assert_eq!((r.host_busy, r.host_cpus), (Some(0.25), Some(2)));
        assert_eq!(r.cgroup, None);
    }

    #[test]
    fn backwards_gone_or_another_process_gives_none() {
        let t0 = Instant::now();
        let a = reading(t0, 300, 7);
        let backwards = a.delta(&reading(t0, 100, 7));
        assert_eq!(
            (backwards.process_cpu_ms, backwards.gc_pause_ms),
            (None, None)
        );
        assert_eq!(backwards.host_busy, None);
        assert_eq!(backwards.wall_ms, 0);
        let reused_pid = a.delta(&reading(t0, 400, 8));
        assert_eq!(reused_pid.process_cpu_ms, None);
        let gone = ResourceReading {
            process: None,
            gc: None,
            cgroup: None,
            ..reading(t0, 0, 7)
        };
        let r = a.delta(&gone);
        assert_eq!((r.process_cpu_ms, r.gc_count, r.cgroup), (None, None, None));
        // Readings given in the wrong order: no wall time rather than a wrap.
        assert_eq!(
            reading(t0 + std::time::Duration::from_secs(1), 1, 7)
                .delta(&a)
                .wall_ms,
            0
        );
    }

    #[test]
    fn a_probe_knows_when_its_jvm_moved_to_another_cgroup() {
        let root = std::env::temp_dir().join(format!("bpmon-probe-moved-{}", std::process::id()));
        let dir = root.join("42");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), "4:cpu,cpuacct:/\n0::/\n").unwrap();
        let probe = ResourceProbe {
            proc_root: root.clone(),
            pid: 42,
            starttime: None,
            ticks_per_second: 100,
            gc: None,
            cgroup: None,
            membership: membership(&root, 42),
        };
        assert!(probe.still_placed());
        // Put under a CPU quota, as a noisy neighbour's container limits would.
        std::fs::write(dir.join("cgroup"), "4:cpu,cpuacct:/trial\n0::/\n").unwrap();
        assert!(!probe.still_placed());
        // Gone: not where it was either.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!probe.still_placed());
        let _ = std::fs::remove_dir_all(&root);
    }
}
