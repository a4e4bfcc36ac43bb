//! How busy the host's CPUs were, from the first line of `/proc/stat`: whether a slow task ran on
//! a saturated machine (other tenants, other TaskManagers) rather than being slow by itself.

use std::path::Path;

use super::{read_text, ResourceError};

/// The host's cumulative CPU time at one instant, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// `busy` + idle + iowait. Guest time is already in user and nice, so it is not added again.
    pub total: u64,
    /// CPUs online (the `cpuN` lines).
    pub cpus: u32,
}

impl HostCpu {
    /// The busy share of the CPU time between `self` and `later`, 0–1; `None` when no time
    /// passed or a counter went backwards.
    pub fn busy_share(&self, later: &HostCpu) -> Option<f64> {
        let busy = later.busy.checked_sub(self.busy)?;
        let total = later.total.checked_sub(self.total)?;
        (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// Parses `/proc/stat`: `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
/// (the fields after `idle` appeared over kernel versions; missing ones count 0).
pub fn parse_proc_stat(text: &str) -> Option<HostCpu> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    let (user, nice, system, idle) = (at(0), at(1), at(2), at(3));
    let (iowait, irq, softirq, steal) = (at(4), at(5), at(6), at(7));
    let busy = [user, nice, system, irq, softirq, steal]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b));
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(HostCpu {
        busy,
        total: busy.saturating_add(idle).saturating_add(iowait),
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
    })
}

/// Reads `<proc_root>/stat`.
pub fn read(proc_root: &Path) -> Result<HostCpu, ResourceError> {
    let path = proc_root.join("stat");
    let text = read_text(&path)?;
    parse_proc_stat(&text).ok_or(ResourceError::Malformed {
        path,
        what: "no cpu line",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  1000 50 300 8000 400 20 30 100 200 10\n\
                        cpu0 500 25 150 4000 200 10 15 50 100 5\n\
                        cpu1 500 25 150 4000 200 10 15 50 100 5\n\
                        intr 123 0 0\nctxt 456\nbtime 1700000000\nprocesses 99\n";

    #[test]
    fn busy_excludes_idle_iowait_and_double_counted_guest() {
        let h = parse_proc_stat(STAT).unwrap();
        assert_eq!(h.busy, 1000 + 50 + 300 + 20 + 30 + 100);
        assert_eq!(h.total, h.busy + 8000 + 400);
        assert_eq!(h.cpus, 2);
    }

    #[test]
    fn busy_share_between_two_readings() {
        let a = parse_proc_stat(STAT).unwrap();
        let b = HostCpu {
            busy: a.busy + 150,
            total: a.total + 200,
            cpus: 2,
        };
        assert_eq!(a.busy_share(&b), Some(0.75));
        assert_eq!(a.busy_share(&a), None, "no time passed");
        assert_eq!(b.busy_share(&a), None, "backwards");
    }

    #[test]
    fn old_kernels_and_garbage() {
        // Linux 2.4: four fields only.
        let old = parse_proc_stat("cpu 10 0 5 85\ncpu0 10 0 5 85\n").unwrap();
        assert_eq!((old.busy, old.total, old.cpus), (15, 100, 1));
        assert_eq!(parse_proc_stat(""), None);
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2\n"), None);
    }

    #[test]
    fn this_host_reads() {
        let h = read(Path::new("/proc")).unwrap();
        assert!(h.cpus >= 1 && h.total >= h.busy);
    }
}
