//! A spinning JVM moved into a cgroup this test makes, with a CPU quota of 0.2 CPU: the probe
//! must see the quota and the throttling. The cgroup is made in every hierarchy the figures come
//! from (v2: the one tree; v1: `cpu`, `cpuacct` when mounted apart, and a hybrid host's
//! `unified` tree), so each figure is of that one group (the end-to-end harness's
//! `bpmon_e2e::cgroup::CpuLimit`, shared here by path: the agent's tests cannot depend on it).
//!
//! It needs root and a writable cgroup file system. Where the host refuses (not root, read-only
//! or delegated cgroups), the test prints `SKIPPED, NOT PASSED` and why, and returns: a skip is
//! no pass. Once the cgroup is made and the JVM moved, every assertion holds or the test fails.

use super::*;

#[path = "../../../tests/src/cgroup.rs"]
mod cgroup;
use cgroup::CpuLimit;

#[test]
fn cgroup_throttling_measured_if_this_host_lets_the_test_make_a_cgroup() {
    let _turn = turn();
    let jvm = Jvm::start(&[], "spin");
    let name = format!("bpmon-test-{}", std::process::id());
    let cgroups = match CpuLimit::apply(jvm.pid(), &name, 0.2) {
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
        cgroups.dirs(),
        res.process_cpu_ms,
        res.wall_ms,
        res.cgroup
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
    let dirs: Vec<PathBuf> = cgroups.dirs();
    drop(cgroups);
    for d in dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}
