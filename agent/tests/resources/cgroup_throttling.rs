//! A spinning JVM moved into a cgroup this test makes, with a CPU quota of 0.2 CPU: the probe
//! must see the quota and the throttling. The cgroup is made in every hierarchy the figures come
//! from (v2: the one tree; v1: `cpu`, `cpuacct` when mounted apart, and a hybrid host's
//! `unified` tree), so each figure is of that one group.
//!
//! It needs root and a writable cgroup file system. Where the host refuses (not root, read-only
//! or delegated cgroups), the test prints `SKIPPED, NOT PASSED` and why, and returns: a skip is
//! no pass. Once the cgroup is made and the JVM moved, every assertion holds or the test fails.

use super::*;

use bpmon_agent::resources::cgroup::relative_to;
use bpmon_agent::resources::cgroup_files::{parse_proc_cgroup, CgroupLine, CgroupMount};

/// Child cgroups the test made, one per hierarchy, removed when dropped after moving the JVM
/// back where it was.
struct TestCgroups {
    pid: u32,
    /// (the test's cgroup, the JVM's cgroup before) per hierarchy.
    made: Vec<(PathBuf, PathBuf)>,
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for (dir, back) in self.made.iter().rev() {
            let _ = std::fs::write(back.join("cgroup.procs"), self.pid.to_string());
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
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

/// A hierarchy to make the cgroup in, with the JVM's line for it.
struct Hierarchy<'a> {
    mount: &'a CgroupMount,
    line: &'a CgroupLine,
    quota: Quota,
}

/// The hierarchies the probe reads this host's figures from.
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

/// Makes `name` in each hierarchy, sets the quota and moves `pid` in; `Err` says why this host
/// does not let the test do it.
fn make_cgroups(pid: u32, name: &str) -> Result<TestCgroups, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
    let lines = parse_proc_cgroup(&read(&format!("/proc/{pid}/cgroup"))?);
    let mut made = TestCgroups {
        pid,
        made: Vec::new(),
    };
    for Hierarchy { mount, line, quota } in hierarchies(&mounts, &lines)? {
        let back = relative_to(&line.path, &mount.root)
            .map(|r| mount.mount_point.join(r))
            .ok_or_else(|| format!("the JVM's cgroup {} is not under our mount", line.path))?;
        let dir = mount.mount_point.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        made.made.push((dir.clone(), back));
        let write = |file: &str, value: &str| {
            std::fs::write(dir.join(file), value).map_err(|e| format!("{file} = {value}: {e}"))
        };
        match quota {
            Quota::CpuMax => write("cpu.max", "20000 100000")?,
            Quota::Cfs => {
                write("cpu.cfs_period_us", "100000")?;
                write("cpu.cfs_quota_us", "20000")?;
            }
            Quota::None => {}
        }
        write("cgroup.procs", &pid.to_string())?;
    }
    Ok(made)
}

#[test]
fn cgroup_throttling_measured_if_this_host_lets_the_test_make_a_cgroup() {
    let _turn = turn();
    let jvm = Jvm::start(&[], "spin");
    let name = format!("bpmon-test-{}", std::process::id());
    let cgroups = match make_cgroups(jvm.pid(), &name) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED, NOT PASSED: cannot put a JVM in a cgroup of ours here: {why}");
            return;
        }
    };
    std::thread::sleep(Duration::from_millis(200));
    let probe = ResourceProbe::open(&jvm.process());
    let tid = host_tid_by_comm(jvm.pid(), "bpmon-spin");
    let mut reader = ThreadCpuReader::new("/proc", jvm.pid(), false);
    let (r0, t0) = (probe.read(), reader.read(&[tid]));
    std::thread::sleep(WINDOW);
    let (r1, t1) = (probe.read(), reader.read(&[tid]));
    let res = r0.delta(&r1);
    let spin = t1[&tid] - t0[&tid];
    eprintln!(
        "throttled JVM in {:?}: spin {spin} ms CPU, process {:?} ms of {} ms; {:?}",
        cgroups.made, res.process_cpu_ms, res.wall_ms, res.cgroup
    );
    let cg = res.cgroup.clone().expect("the test's cgroup is read");
    assert_eq!(cg.path, format!("/{name}"));
    assert_eq!(cg.quota_cpus, Some(0.2));
    assert!(cg.periods.unwrap() >= 5, "{cg:?}");
    assert!(cg.throttled_periods.unwrap() > 0, "{cg:?}");
    assert!(cg.throttled_ms.unwrap() > 0, "{cg:?}");
    let usage = cg.usage_ms.expect("usage of the same group");
    let allowed = res.wall_ms / 5;
    assert!(
        usage <= allowed * 3 / 2 + 50,
        "{usage} ms used, {allowed} allowed"
    );
    assert!(
        spin <= allowed * 3 / 2 + 50,
        "the spinning thread: {spin} ms"
    );
    let dirs: Vec<PathBuf> = cgroups.made.iter().map(|(d, _)| d.clone()).collect();
    drop(cgroups);
    for d in dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}
