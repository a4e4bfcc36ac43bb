//! A CPU limit put on a running process, as a container runtime or systemd's `CPUQuota=`
//! puts one: a cgroup of the test's own with a CPU quota, made in every hierarchy the agent
//! reads a process's CPU figures from (v2: the one tree; v1: `cpu`, `cpuacct` when mounted
//! apart, and a hybrid host's `unified` tree), with the whole process moved in. Dropping the
//! limit moves the process back and removes the cgroups.
//!
//! It needs root and a writable cgroup file system; [`CpuLimit::apply`] says why not where
//! the host refuses, so a test can report that it could not run rather than pass.

use std::path::PathBuf;
use std::time::Duration;

use bpmon_agent::resources::cgroup::relative_to;
use bpmon_agent::resources::cgroup_files::{
    parse_mountinfo, parse_proc_cgroup, CgroupLine, CgroupMount,
};

/// A process held in a CPU-limited cgroup of ours.
#[derive(Debug)]
pub struct CpuLimit {
    pid: u32,
    /// (our cgroup, the process's cgroup before) per hierarchy.
    made: Vec<(PathBuf, PathBuf)>,
}

/// How a hierarchy takes the quota.
#[derive(Clone, Copy)]
enum Quota {
    /// v2 `cpu.max`.
    CpuMax,
    /// v1 `cpu.cfs_period_us` and `cpu.cfs_quota_us`.
    Cfs,
    /// Not here (v1 `cpuacct`, a hybrid host's `unified` tree).
    None,
}

struct Hierarchy<'a> {
    mount: &'a CgroupMount,
    line: &'a CgroupLine,
    quota: Quota,
}

/// The hierarchies the agent's probe reads a process's figures from.
fn hierarchies<'a>(
    mounts: &'a [CgroupMount],
    lines: &'a [CgroupLine],
) -> Result<Vec<Hierarchy<'a>>, String> {
    let v1_line = |c: &str| lines.iter().find(|l| !l.is_v2() && l.has(c));
    let v2 = mounts
        .iter()
        .find(|m| m.v2)
        .zip(lines.iter().find(|l| l.is_v2()));
    let h = |mount, line, quota| Hierarchy { mount, line, quota };
    let mut out = Vec::new();
    if let Some(cpu) = mounts.iter().find(|m| !m.v2 && m.has("cpu")) {
        out.push(h(cpu, v1_line("cpu").ok_or("no cpu line")?, Quota::Cfs));
        if let Some(acct) = mounts
            .iter()
            .find(|m| !m.v2 && m.has("cpuacct") && !m.has("cpu"))
        {
            out.push(h(
                acct,
                v1_line("cpuacct").ok_or("no cpuacct line")?,
                Quota::None,
            ));
        }
        out.extend(v2.map(|(m, l)| h(m, l, Quota::None)));
    } else {
        let (m, l) = v2.ok_or("no cgroup CPU hierarchy is mounted")?;
        let control = m.mount_point.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "cpu") {
            std::fs::write(&control, "+cpu")
                .map_err(|e| format!("cannot enable the cpu controller: {e}"))?;
        }
        out.push(h(m, l, Quota::CpuMax));
    }
    Ok(out)
}

impl CpuLimit {
    /// Moves process `pid` into a new cgroup `name` allowed `cpus` CPUs (100 ms periods);
    /// `Err` says why this host does not let the test do it.
    pub fn apply(pid: u32, name: &str, cpus: f64) -> Result<CpuLimit, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root".into());
        }
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
        let lines = parse_proc_cgroup(&read(&format!("/proc/{pid}/cgroup"))?);
        let quota_us = ((cpus * 100_000.0).round() as u64).max(1_000);
        let mut limit = CpuLimit {
            pid,
            made: Vec::new(),
        };
        for Hierarchy { mount, line, quota } in hierarchies(&mounts, &lines)? {
            let back = relative_to(&line.path, &mount.root)
                .map(|r| mount.mount_point.join(r))
                .ok_or_else(|| format!("the cgroup {} is not under our mount", line.path))?;
            let dir = mount.mount_point.join(name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            limit.made.push((dir.clone(), back));
            let write = |file: &str, value: &str| {
                std::fs::write(dir.join(file), value).map_err(|e| format!("{file} = {value}: {e}"))
            };
            match quota {
                Quota::CpuMax => write("cpu.max", &format!("{quota_us} 100000"))?,
                Quota::Cfs => {
                    write("cpu.cfs_period_us", "100000")?;
                    write("cpu.cfs_quota_us", &quota_us.to_string())?;
                }
                Quota::None => {}
            }
            write("cgroup.procs", &pid.to_string())?;
        }
        Ok(limit)
    }

    /// The cgroups made, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.made.iter().map(|(d, _)| d.clone()).collect()
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for (dir, back) in self.made.iter().rev() {
            let _ = std::fs::write(back.join("cgroup.procs"), self.pid.to_string());
            // An exited process leaves its cgroup a moment later.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
