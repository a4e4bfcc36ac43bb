//! The evidence a bottleneck's cause is named from (see `docs/design.md`, "Causes"): what each
//! busy sample of a task was doing ([`Activity`]), the monitors its threads waited for
//! ([`LockCount`]), and what the JVM and its host spent over the window ([`JvmResources`]).
//! All of it is optional on the wire: an older agent, or a backend that cannot see a figure,
//! leaves it out, and the collector then says "unknown" rather than guess.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a busy sample was doing, from its thread state and its frames. Each busy sample is in
/// exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Running or runnable in code that is not waiting on I/O: on CPU, or wanting it.
    Running,
    /// Waiting to enter a monitor (`BLOCKED`) or parked acquiring a `java.util.concurrent` lock.
    Lock,
    /// In socket or file I/O (blocking reads and writes, selectors, JDBC/HTTP clients below them).
    Io,
    /// Off CPU on purpose: `Thread.sleep`, a timed park or `Object.wait` in user code (a throttle,
    /// a rate limiter, a poll loop).
    Sleep,
}

impl Activity {
    pub const ALL: [Activity; 4] = [
        Activity::Running,
        Activity::Lock,
        Activity::Io,
        Activity::Sleep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Running => "running",
            Activity::Lock => "lock",
            Activity::Io => "io",
            Activity::Sleep => "sleep",
        }
    }
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Busy samples of one task by [`Activity`]; they add up to the task's `busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityCounts {
    pub running: u32,
    pub lock: u32,
    pub io: u32,
    pub sleep: u32,
}

impl ActivityCounts {
    pub fn add(&mut self, activity: Activity, n: u32) {
        let slot = match activity {
            Activity::Running => &mut self.running,
            Activity::Lock => &mut self.lock,
            Activity::Io => &mut self.io,
            Activity::Sleep => &mut self.sleep,
        };
        *slot = slot.saturating_add(n);
    }

    pub fn get(&self, activity: Activity) -> u32 {
        match activity {
            Activity::Running => self.running,
            Activity::Lock => self.lock,
            Activity::Io => self.io,
            Activity::Sleep => self.sleep,
        }
    }

    pub fn total(&self) -> u32 {
        Activity::ALL
            .iter()
            .fold(0u32, |n, a| n.saturating_add(self.get(*a)))
    }
}

/// A monitor or lock a task's thread waited for, and in how many samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockCount {
    /// The lock object's class (`com.acme.Shared`, `java.util.concurrent.locks.ReentrantLock$NonfairSync`).
    pub class: String,
    /// The thread holding it, when the dump names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub samples: u32,
}

/// CPU a task's threads used over the window, read from the OS per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadCpu {
    /// User + system CPU time of the task's thread(s) between the first and the last reading.
    pub cpu_ms: u64,
    /// Wall time between those two readings.
    pub wall_ms: u64,
}

/// What one TaskManager JVM and the host or container it runs in spent over a window. Every
/// figure is a difference between a reading at the window's start and one at its end.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JvmResources {
    /// Wall time between the two readings.
    pub wall_ms: u64,
    /// CPU time of the whole JVM process (all its threads: tasks, GC, JIT, network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_cpu_ms: Option<u64>,
    /// Time the JVM's collectors spent in stop-the-world pauses (hsperfdata `sun.gc.collector.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_pause_ms: Option<f64>,
    /// Collections over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_count: Option<u64>,
    /// Time of concurrent GC phases (G1/ZGC/Shenandoah cycles running beside the application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_concurrent_ms: Option<f64>,
    /// The CPU controller of the JVM's cgroup, when it has one the agent can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupCpu>,
    /// Share of the host's CPU time that was busy (not idle or iowait), 0–1 (`/proc/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_busy: Option<f64>,
    /// CPUs the host has online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<u32>,
}

/// The cgroup CPU figures of a JVM over a window (`cpu.stat`, `cpu.max`, `cpu.pressure`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CgroupCpu {
    /// The cgroup's path, as `/proc/PID/cgroup` gives it.
    pub path: String,
    /// CPU quota in CPUs (`cpu.max` quota / period), when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_cpus: Option<f64>,
    /// CPU time the cgroup used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_ms: Option<u64>,
    /// Enforcement periods, and those in which the cgroup was throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_periods: Option<u64>,
    /// Time the cgroup's threads were throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_ms: Option<u64>,
    /// Time some of its runnable threads waited for a CPU (`cpu.pressure` `some total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_some_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_saturate() {
        let mut c = ActivityCounts::default();
        c.add(Activity::Running, 3);
        c.add(Activity::Lock, 2);
        c.add(Activity::Io, u32::MAX);
        assert_eq!(c.get(Activity::Lock), 2);
        assert_eq!(c.total(), u32::MAX);
        assert_eq!(
            serde_json::to_value(Activity::Io).unwrap(),
            serde_json::json!("io")
        );
    }

    #[test]
    fn resources_without_figures_are_small_on_the_wire() {
        let r = JvmResources {
            wall_ms: 5000,
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"wall_ms":5000}"#);
        let back: JvmResources = serde_json::from_str(r#"{"wall_ms":1}"#).unwrap();
        assert_eq!(back.gc_pause_ms, None);
    }
}
