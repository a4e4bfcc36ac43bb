//! Pure parsers of the files [`super::cgroup`] reads: `/proc/PID/cgroup`, `/proc/self/mountinfo`
//! and a cgroup's CPU files, in both cgroup versions. Time figures come back in microseconds
//! whatever unit the file uses.

use std::path::PathBuf;

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Empty for the v2 (unified) hierarchy, whose line is `0::/path`.
    pub controllers: Vec<String>,
    /// Relative to the root of the *reader's* cgroup namespace; `/..` when outside it.
    pub path: String,
}

impl CgroupLine {
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Parses `/proc/PID/cgroup`; malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(CgroupLine {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// A cgroup file system mounted somewhere, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// `cgroup2` (unified) rather than a v1 `cgroup` hierarchy.
    pub v2: bool,
    /// The cgroup shown at the mount point, relative to the reader's cgroup namespace root.
    pub root: String,
    pub mount_point: PathBuf,
    /// Super options: a v1 hierarchy's controllers are among them (`rw,cpu,cpuacct`).
    pub options: Vec<String>,
}

impl CgroupMount {
    pub fn has(&self, controller: &str) -> bool {
        self.options.iter().any(|o| o == controller)
    }
}

/// The cgroup mounts in a `mountinfo` text: `id parent dev root mount-point options
/// [optional fields…] - fstype source super-options`.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let m: Vec<&str> = mount.split(' ').collect();
            let f: Vec<&str> = fs.split(' ').collect();
            let v2 = match *f.first()? {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                v2,
                root: unescape(m.get(3)?),
                mount_point: PathBuf::from(unescape(m.get(4)?)),
                options: f.get(2)?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key value` line in a flat-keyed file (`cpu.stat`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Figures from a `cpu.stat` file, in microseconds; absent keys are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStat {
    /// CPU time used (v2 only: v1 has it in `cpuacct.usage`).
    pub usage_us: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_us: Option<u64>,
}

/// v2 `cpu.stat`: `usage_usec`, and with the cpu controller enabled `nr_periods`,
/// `nr_throttled`, `throttled_usec`.
pub fn parse_cpu_stat_v2(text: &str) -> CpuStat {
    CpuStat {
        usage_us: keyed(text, "usage_usec"),
        periods: keyed(text, "nr_periods"),
        throttled_periods: keyed(text, "nr_throttled"),
        throttled_us: keyed(text, "throttled_usec"),
    }
}

/// v1 `cpu.stat`: `nr_periods`, `nr_throttled`, `throttled_time` (nanoseconds).
pub fn parse_cpu_stat_v1(text: &str) -> CpuStat {
    CpuStat {
        usage_us: None,
        periods: keyed(text, "nr_periods"),
        throttled_periods: keyed(text, "nr_throttled"),
        throttled_us: keyed(text, "throttled_time").map(|ns| ns / 1000),
    }
}

/// v1 `cpuacct.usage` (nanoseconds) in microseconds.
pub fn parse_cpuacct_usage(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().map(|ns| ns / 1000)
}

/// v2 `cpu.max` (`max 100000` or `50000 100000`) as a number of CPUs; `None` without a quota.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    quota_cpus(quota.parse().ok()?, period)
}

/// v1 `cpu.cfs_quota_us` (`-1` without a quota) and `cpu.cfs_period_us` as a number of CPUs.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let q: i64 = quota.trim().parse().ok()?;
    let p: f64 = period.trim().parse().ok()?;
    quota_cpus(u64::try_from(q).ok()?, p)
}

fn quota_cpus(quota: u64, period: f64) -> Option<f64> {
    (quota > 0 && period > 0.0).then(|| quota as f64 / period)
}

/// `cpu.pressure`: the `total=` (microseconds) of the `some` line, the time at least one of the
/// cgroup's runnable threads waited for a CPU.
pub fn parse_pressure_some(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_v2_v1_and_hybrid() {
        let v2 = parse_proc_cgroup("0::/system.slice/flink-taskmanager.service\n");
        assert_eq!(v2.len(), 1);
        assert!(v2[0].is_v2());
        assert_eq!(v2[0].path, "/system.slice/flink-taskmanager.service");
        let hybrid = parse_proc_cgroup(
            "12:pids:/docker/ab12\n4:cpu,cpuacct:/docker/ab12\n1:name=systemd:/docker/ab12\n\
             0::/docker/ab12\ngarbage\n",
        );
        assert_eq!(hybrid.len(), 4);
        let cpu = hybrid.iter().find(|l| l.has("cpu")).unwrap();
        assert_eq!((cpu.hierarchy, cpu.has("cpuacct")), (4, true));
        assert!(!cpu.is_v2() && hybrid[3].is_v2());
        // A path may contain colons; it is everything after the second.
        let odd = parse_proc_cgroup("0::/a:b\n");
        assert_eq!(odd[0].path, "/a:b");
    }

    #[test]
    fn mountinfo_finds_v1_and_v2_cgroup_mounts() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 40 0:38 /kubepods/pod1 /mnt/my\\040cg rw master:3 - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(!m[0].v2 && m[0].has("cpu") && !m[0].has("cpuacct"));
        assert!(m[1].has("cpu") && m[1].has("cpuacct"));
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert!(m[2].v2 && m[2].root == "/");
        assert_eq!(m[3].root, "/kubepods/pod1");
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/my cg"));
    }

    #[test]
    fn cpu_stat_v2() {
        let text = "usage_usec 8412345\nuser_usec 6000000\nsystem_usec 2412345\n\
                    core_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 37\n\
                    throttled_usec 2950000\nnr_bursts 0\nburst_usec 0\n";
        let s = parse_cpu_stat_v2(text);
        assert_eq!(s.usage_us, Some(8_412_345));
        assert_eq!((s.periods, s.throttled_periods), (Some(120), Some(37)));
        assert_eq!(s.throttled_us, Some(2_950_000));
        // Without the cpu controller (a hybrid host's unified tree): usage only.
        let bare = parse_cpu_stat_v2("usage_usec 5\nuser_usec 3\nsystem_usec 2\n");
        assert_eq!((bare.usage_us, bare.periods), (Some(5), None));
    }

    #[test]
    fn cpu_stat_and_usage_v1() {
        let text = "nr_periods 41\nnr_throttled 39\nthrottled_time 3123456789\nnr_bursts 0\nburst_time 0\n";
        let s = parse_cpu_stat_v1(text);
        assert_eq!((s.periods, s.throttled_periods), (Some(41), Some(39)));
        assert_eq!(s.throttled_us, Some(3_123_456));
        assert_eq!(s.usage_us, None);
        assert_eq!(
            parse_cpuacct_usage("17555968459778\n"),
            Some(17_555_968_459)
        );
        assert_eq!(parse_cpuacct_usage("x"), None);
    }

    #[test]
    fn quotas_in_both_versions() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("250000 100000"), Some(2.5));
        assert_eq!(
            parse_cpu_max("50000"),
            Some(0.5),
            "period defaults to 100 ms"
        );
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs_quota("20000\n", "100000\n"), Some(0.2));
        assert_eq!(parse_cfs_quota("20000", "0"), None);
    }

    #[test]
    fn pressure_some_total() {
        let text = "some avg10=0.84 avg60=0.47 avg300=0.28 total=4105096299\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some(text), Some(4_105_096_299));
        assert_eq!(parse_pressure_some("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_pressure_some(""), None);
    }

    #[test]
    fn keyed_needs_the_whole_key() {
        assert_eq!(
            keyed("nr_throttled 3\nnr_periods 9\n", "nr_periods"),
            Some(9)
        );
        assert_eq!(keyed("nr_periods_x 3\n", "nr_periods"), None);
    }
}
