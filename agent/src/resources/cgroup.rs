//! The CPU controller of a JVM's cgroup: its quota, the CPU time it used, how often and how long
//! it was throttled, and how long its threads waited for a CPU (`cpu.pressure`). Throttling is
//! the cause a JVM's own figures cannot show: its threads are runnable, not running, and the
//! host may be idle.
//!
//! Which cgroup: `/proc/PID/cgroup` (the `cpu` hierarchy's line on cgroup v1, or `0::` on v2).
//! Every figure is of that one cgroup: on a v1 host whose `cpuacct` hierarchy (or the hybrid
//! `unified` tree, for `cpu.pressure`) puts the JVM in a group of another path, that figure is
//! left out rather than taken from another group.
//!
//! Where its files are: the path in `/proc/PID/cgroup` is relative to the root of the *reader's*
//! cgroup namespace, not the JVM's (checked here: a process in a cgroup namespace of its own,
//! under `/bpmon-probe-t`, reads `/bpmon-probe-t` from the host and `/..`-style paths from
//! inside). So the agent first resolves it through its own mounts of the hierarchy
//! (`/proc/self/mountinfo`: mount point + path relative to the mount's root). That fails when
//! the agent itself runs in a cgroup namespace the JVM is outside of (the path starts with `/..`,
//! or lies outside the mount's root); then the JVM's own view is tried: `/proc/PID/root/sys/fs/
//! cgroup[/<hierarchy>]`, read inside the JVM's root, which a container with a cgroup namespace
//! of its own mounts at its cgroup. That directory is used only if its `cgroup.procs` lists the
//! JVM's pid, so a container sharing the host's namespace (its mount showing the host's root
//! cgroup) is never taken for the JVM's group.

use std::path::{Path, PathBuf};

use bpmon_proto::CgroupCpu;

use super::cgroup_files::{
    parse_cfs_quota, parse_cpu_max, parse_cpu_stat_v1, parse_cpu_stat_v2, parse_cpuacct_usage,
    parse_mountinfo, parse_pressure_some, parse_proc_cgroup, CgroupLine, CgroupMount,
};
use super::{read_text, ResourceError};
use crate::discovery::inroot;

/// A directory of one hierarchy for the JVM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDir {
    /// Through the agent's own mount of the hierarchy.
    Local(PathBuf),
    /// Through the JVM's root (`root` = `/proc/PID/root`), resolved inside it.
    InRoot { root: PathBuf, dir: PathBuf },
}

impl CgroupDir {
    fn read(&self, file: &str) -> Result<String, ResourceError> {
        match self {
            CgroupDir::Local(dir) => read_text(&dir.join(file)),
            CgroupDir::InRoot { root, dir } => {
                let path = dir.join(file);
                inroot::read_in_root(root, &path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|source| ResourceError::Io {
                        path: root.join(path),
                        source,
                    })
            }
        }
    }
}

/// A JVM's cgroup and where its CPU files are read.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSource {
    /// The path `/proc/PID/cgroup` gives (of the v1 `cpu` hierarchy, or the v2 one).
    pub path: String,
    /// `cpu.stat` and the quota: v1 `cpu` hierarchy or v2 directory.
    pub main: CgroupDir,
    /// Whether `main` is a v2 directory.
    pub main_v2: bool,
    /// v1 `cpuacct` of the same path, for the usage.
    pub acct: Option<CgroupDir>,
    /// v2 directory of the same path (the hybrid `unified` tree, or `main` on v2), for
    /// `cpu.pressure` and the usage.
    pub unified: Option<CgroupDir>,
}

/// A cgroup's cumulative figures at one instant, in microseconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CgroupReading {
    pub path: String,
    pub quota_cpus: Option<f64>,
    pub usage_us: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_us: Option<u64>,
    pub pressure_some_us: Option<u64>,
}

impl CgroupReading {
    /// The figures between `self` and `later`; `None` if the JVM changed cgroups. A counter
    /// absent from either reading, or lower in the later one, is `None`.
    pub fn delta(&self, later: &CgroupReading) -> Option<CgroupCpu> {
        if self.path != later.path {
            return None;
        }
        let d = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?);
        let ms = |a: Option<u64>, b: Option<u64>| d(a, b).map(|us| us / 1000);
        Some(CgroupCpu {
            path: later.path.clone(),
            quota_cpus: later.quota_cpus,
            usage_ms: ms(self.usage_us, later.usage_us),
            periods: d(self.periods, later.periods),
            throttled_periods: d(self.throttled_periods, later.throttled_periods),
            throttled_ms: ms(self.throttled_us, later.throttled_us),
            pressure_some_ms: ms(self.pressure_some_us, later.pressure_some_us),
        })
    }
}

impl CgroupSource {
    /// Finds the cgroup of process `pid` (a host pid under `proc_root`), or `None` when it has
    /// none the agent can read.
    pub fn locate(proc_root: &Path, pid: u32) -> Option<CgroupSource> {
        let own = proc_root.join(pid.to_string());
        let lines = match read_text(&own.join("cgroup")) {
            Ok(text) => parse_proc_cgroup(&text),
            Err(e) => {
                tracing::debug!(pid, error = %e, "no cgroup for the JVM");
                return None;
            }
        };
        let mounts = read_text(&proc_root.join("self/mountinfo"))
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        let finder = Finder {
            mounts,
            jvm_root: own.join("root"),
            pid,
        };
        let v1 = |c: &str| lines.iter().find(|l| !l.is_v2() && l.has(c));
        let v2 = lines.iter().find(|l| l.is_v2());
        let v2_dir = v2.and_then(|l| finder.dir(l, None));
        let v1_cpu = v1("cpu").and_then(|l| Some((l, finder.dir(l, Some("cpu"))?)));
        let same = |l: Option<&CgroupLine>, path: &str| l.filter(|l| l.path == path).is_some();
        let source = match v1_cpu {
            Some((line, main)) => CgroupSource {
                path: line.path.clone(),
                main,
                main_v2: false,
                acct: v1("cpuacct")
                    .filter(|l| l.path == line.path)
                    .and_then(|l| finder.dir(l, Some("cpuacct"))),
                unified: v2_dir.filter(|_| same(v2, &line.path)),
            },
            None => CgroupSource {
                path: v2?.path.clone(),
                main: v2_dir.clone()?,
                main_v2: true,
                acct: None,
                unified: v2_dir,
            },
        };
        tracing::debug!(pid, ?source, "the JVM's cgroup");
        Some(source)
    }

    /// The cgroup's figures now; `None` when its `cpu.stat` cannot be read (the cgroup is gone).
    pub fn read(&self) -> Option<CgroupReading> {
        let stat = match self.main.read("cpu.stat") {
            Ok(t) if self.main_v2 => parse_cpu_stat_v2(&t),
            Ok(t) => parse_cpu_stat_v1(&t),
            Err(e) => {
                tracing::debug!(error = %e, "cgroup not readable");
                return None;
            }
        };
        let quota_cpus = if self.main_v2 {
            self.main
                .read("cpu.max")
                .ok()
                .and_then(|t| parse_cpu_max(&t))
        } else {
            let quota = self.main.read("cpu.cfs_quota_us").ok();
            let period = self.main.read("cpu.cfs_period_us").ok();
            quota.zip(period).and_then(|(q, p)| parse_cfs_quota(&q, &p))
        };
        let read_in = |dir: &Option<CgroupDir>, file: &str| dir.as_ref()?.read(file).ok();
        let usage_us = stat
            .usage_us
            .or_else(|| read_in(&self.acct, "cpuacct.usage").and_then(|t| parse_cpuacct_usage(&t)))
            .or_else(|| {
                read_in(&self.unified, "cpu.stat").and_then(|t| parse_cpu_stat_v2(&t).usage_us)
            });
        Some(CgroupReading {
            path: self.path.clone(),
            quota_cpus,
            usage_us,
            periods: stat.periods,
            throttled_periods: stat.throttled_periods,
            throttled_us: stat.throttled_us,
            pressure_some_us: read_in(&self.unified, "cpu.pressure")
                .and_then(|t| parse_pressure_some(&t)),
        })
    }
}

/// Resolves a hierarchy's path to a directory.
struct Finder {
    mounts: Vec<CgroupMount>,
    jvm_root: PathBuf,
    pid: u32,
}

impl Finder {
    /// The directory of `line`'s cgroup: through a local mount of its hierarchy (a v1 one with
    /// `controller`), else through the JVM's root.
    fn dir(&self, line: &CgroupLine, controller: Option<&str>) -> Option<CgroupDir> {
        let local = self
            .mounts
            .iter()
            .filter(|m| m.v2 == line.is_v2() && controller.is_none_or(|c| m.has(c)))
            .find_map(|m| {
                let dir = m.mount_point.join(relative_to(&line.path, &m.root)?);
                dir.is_dir().then_some(CgroupDir::Local(dir))
            });
        local.or_else(|| self.in_jvm_root(line, controller))
    }

    /// The JVM's own `/sys/fs/cgroup` (v2) or `/sys/fs/cgroup/<hierarchy>` (v1), if that
    /// directory's `cgroup.procs` lists the JVM.
    fn in_jvm_root(&self, line: &CgroupLine, controller: Option<&str>) -> Option<CgroupDir> {
        let candidates: Vec<String> = match controller {
            None => vec!["sys/fs/cgroup".into(), "sys/fs/cgroup/unified".into()],
            Some(c) => vec![
                "sys/fs/cgroup/cpu,cpuacct".into(),
                format!("sys/fs/cgroup/{c}"),
            ],
        };
        let pid = self.pid.to_string();
        let found = candidates.into_iter().find_map(|dir| {
            let d = CgroupDir::InRoot {
                root: self.jvm_root.clone(),
                dir: PathBuf::from(dir),
            };
            let procs = d.read("cgroup.procs").ok()?;
            procs.lines().any(|p| p.trim() == pid).then_some(d)
        });
        if found.is_none() {
            tracing::debug!(path = %line.path, ?controller, "cgroup not reachable from here");
        }
        found
    }
}

/// `path` relative to a mount's `root`, both as `/proc` shows them; `None` when `path` is not
/// under `root` or either leads out of the reader's namespace (`..`).
pub fn relative_to(path: &str, root: &str) -> Option<PathBuf> {
    if [path, root].iter().any(|p| p.split('/').any(|c| c == "..")) {
        return None;
    }
    Path::new(path)
        .strip_prefix(root)
        .ok()
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_only_under_the_mount_root() {
        assert_eq!(relative_to("/a/b", "/"), Some(PathBuf::from("a/b")));
        assert_eq!(relative_to("/", "/"), Some(PathBuf::new()));
        assert_eq!(
            relative_to("/kube/pod1/c", "/kube"),
            Some(PathBuf::from("pod1/c"))
        );
        assert_eq!(relative_to("/kubex/c", "/kube"), None);
        assert_eq!(relative_to("/../../docker/ab", "/"), None);
        assert_eq!(relative_to("/x", "/.."), None);
    }

    fn reading(path: &str, usage: u64, throttled: u64) -> CgroupReading {
        CgroupReading {
            path: path.into(),
            quota_cpus: Some(0.2),
            usage_us: Some(usage),
            periods: Some(10),
            throttled_periods: Some(throttled),
            throttled_us: Some(throttled * 80_000),
            pressure_some_us: None,
        }
    }

    #[test]
    fn delta_of_two_readings() {
        let a = reading("/bpmon", 1_000_000, 2);
        let b = CgroupReading {
            periods: Some(20),
            ..reading("/bpmon", 1_200_500, 9)
        };
        let d = a.delta(&b).unwrap();
        assert_eq!(d.usage_ms, Some(200));
        assert_eq!((d.periods, d.throttled_periods), (Some(10), Some(7)));
        assert_eq!(d.throttled_ms, Some(560));
        assert_eq!((d.quota_cpus, d.pressure_some_ms), (Some(0.2), None));
        // Backwards (a recreated cgroup): those counters are unknown, not wrapped.
        let c = b.delta(&a).unwrap();
        assert_eq!((c.usage_ms, c.throttled_periods), (None, None));
        // Another cgroup: nothing to compare.
        assert_eq!(a.delta(&reading("/other", 2_000_000, 3)), None);
    }

    /// A fake `/proc` (`p/<pid>/cgroup`, `p/self/mountinfo`, `p/<pid>/root/…`) and cgroup
    /// mounts under `cg/`, in a fresh directory.
    struct Fake {
        dir: PathBuf,
    }

    impl Fake {
        fn new(name: &str, cgroup: &str, mountinfo: &str) -> Fake {
            let dir =
                std::env::temp_dir().join(format!("bpmon-cgroup-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("p/self")).unwrap();
            std::fs::create_dir_all(dir.join("p/7/root")).unwrap();
            std::fs::write(dir.join("p/7/cgroup"), cgroup).unwrap();
            let mountinfo = mountinfo.replace("CG", &dir.join("cg").to_string_lossy());
            std::fs::write(dir.join("p/self/mountinfo"), mountinfo).unwrap();
            Fake { dir }
        }

        fn files(&self, under: &str, files: &[(&str, &str)]) {
            let d = self.dir.join(under);
            std::fs::create_dir_all(&d).unwrap();
            for (name, text) in files {
                std::fs::write(d.join(name), text).unwrap();
            }
        }

        fn locate(&self) -> Option<CgroupSource> {
            CgroupSource::locate(&self.dir.join("p"), 7)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const V2_FILES: &[(&str, &str)] = &[
        (
            "cpu.stat",
            "usage_usec 900\nnr_periods 4\nnr_throttled 3\nthrottled_usec 250000\n",
        ),
        ("cpu.max", "50000 100000\n"),
        (
            "cpu.pressure",
            "some avg10=1.00 avg60=0.50 avg300=0.10 total=4000\n",
        ),
    ];

    #[test]
    fn v2_through_a_local_mount() {
        let f = Fake::new(
            "v2",
            "0::/flink.slice/tm\n",
            "41 31 0:38 / CG rw - cgroup2 cgroup2 rw\n",
        );
        f.files("cg/flink.slice/tm", V2_FILES);
        let src = f.locate().unwrap();
        assert_eq!(src.main, CgroupDir::Local(f.dir.join("cg/flink.slice/tm")));
        let r = src.read().unwrap();
        assert_eq!(r.path, "/flink.slice/tm");
        assert_eq!(
            (r.quota_cpus, r.usage_us, r.periods),
            (Some(0.5), Some(900), Some(4))
        );
        assert_eq!(
            (r.throttled_periods, r.throttled_us),
            (Some(3), Some(250_000))
        );
        assert_eq!(r.pressure_some_us, Some(4000));
    }

    #[test]
    fn v1_figures_come_only_from_the_same_path() {
        let f = Fake::new(
            "v1",
            "3:cpuacct:/\n2:cpu:/bpmon\n0::/bpmon\n",
            "32 31 0:29 / CG/cpu rw - cgroup cgroup rw,cpu\n\
             33 31 0:30 / CG/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             41 31 0:38 / CG/unified rw - cgroup2 cgroup2 rw\n",
        );
        let stat = "nr_periods 10\nnr_throttled 8\nthrottled_time 640000000\n";
        let cfs = [
            ("cpu.cfs_quota_us", "20000\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ];
        f.files("cg/cpu/bpmon", &[("cpu.stat", stat), cfs[0], cfs[1]]);
        f.files("cg/cpuacct", &[("cpuacct.usage", "999000000\n")]);
        f.files(
            "cg/unified/bpmon",
            &[("cpu.stat", "usage_usec 123\n"), V2_FILES[2]],
        );
        let src = f.locate().unwrap();
        assert_eq!(
            (src.path.as_str(), src.main_v2, src.acct.is_none()),
            ("/bpmon", false, true)
        );
        let r = src.read().unwrap();
        assert_eq!(
            (r.quota_cpus, r.throttled_periods, r.throttled_us),
            (Some(0.2), Some(8), Some(640_000))
        );
        // Not the root's cpuacct.usage (another group): the unified tree's usage of /bpmon.
        assert_eq!((r.usage_us, r.pressure_some_us), (Some(123), Some(4000)));
    }

    #[test]
    fn outside_our_namespace_the_jvms_own_view_is_used_if_it_lists_the_jvm() {
        let mountinfo = "41 31 0:38 / CG rw - cgroup2 cgroup2 rw\n";
        let f = Fake::new("root", "0::/../../docker/ab12\n", mountinfo);
        f.files("p/7/root/sys/fs/cgroup", V2_FILES);
        assert_eq!(f.locate(), None, "its cgroup.procs does not list the JVM");
        f.files("p/7/root/sys/fs/cgroup", &[("cgroup.procs", "1\n7\n")]);
        let src = f.locate().unwrap();
        assert!(matches!(src.main, CgroupDir::InRoot { .. }), "{src:?}");
        assert_eq!(src.read().unwrap().throttled_periods, Some(3));
        // Gone from there: no reading.
        std::fs::remove_file(f.dir.join("p/7/root/sys/fs/cgroup/cpu.stat")).unwrap();
        assert_eq!(src.read(), None);
    }

    #[test]
    fn this_process_cgroup_is_found_and_read() {
        let Some(src) = CgroupSource::locate(Path::new("/proc"), std::process::id()) else {
            // A machine without a readable CPU hierarchy: nothing to check here.
            return;
        };
        let r = src.read().expect("a located cgroup reads");
        assert!(r.path.starts_with('/'), "{r:?}");
        assert!(r.usage_us.is_some() || r.periods.is_some(), "{r:?}");
    }
}
