//! CPU time of chosen threads of one JVM, by the thread ids the JVM prints (`nid=` in a thread
//! dump): whether a task's thread was on CPU (CPU-bound user code) or off it (waiting, throttled,
//! paused) while its samples said "busy".
//!
//! A printed id is the thread's id in the JVM's own pid namespace. On the host it is the same
//! number; in a container (another pid namespace) it is not, and the host's id is found from the
//! last field of each thread's `NSpid:` line (`/proc/PID/task/*/status`, the innermost
//! namespace's id). That map is cached and rebuilt only when an id is not in it or its thread
//! is gone. (A host id reused by a new thread of the same JVM while the map holds it would go
//! unnoticed; that takes the host's pids to wrap around, and the new thread to be the JVM's.)
//!
//! Each thread's time is read from `/proc/PID/task/TID/schedstat` (nanoseconds on CPU: a 5 s
//! window in 10 ms ticks would be off by up to 0.4%), and from `stat` (user + system ticks) where
//! `schedstat` is missing (a kernel without `CONFIG_SCHED_INFO`). Reading under
//! `/proc/PID/task/` also ensures every id is a thread of that JVM, never another process's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::process::{read_schedstat, read_stat, ticks_per_second, ticks_to_ms};
use super::read_text;
use crate::discovery::parse_status;

/// Reads the CPU time of a JVM's threads by their printed ids.
#[derive(Debug)]
pub struct ThreadCpuReader {
    /// `/proc/<host pid>/task`.
    task_dir: PathBuf,
    containerized: bool,
    /// Namespaced thread id → host thread id (containerized JVMs only).
    host_tids: HashMap<u64, u64>,
    ticks_per_second: u64,
    /// Whether `schedstat` was missing once: `stat` is read straight away from then on.
    no_schedstat: bool,
}

impl ThreadCpuReader {
    /// A reader for the JVM with host pid `host_pid`; `containerized` says whether the JVM runs
    /// in another pid namespace (`JvmProcess::containerized`).
    pub fn new(proc_root: impl AsRef<Path>, host_pid: u32, containerized: bool) -> Self {
        ThreadCpuReader {
            task_dir: proc_root.as_ref().join(host_pid.to_string()).join("task"),
            containerized,
            host_tids: HashMap::new(),
            ticks_per_second: ticks_per_second(),
            no_schedstat: false,
        }
    }

    /// The CPU time, in milliseconds since each thread started, of each of `tids` (ids as the
    /// JVM prints them) that is a live thread of this JVM; the others are left out.
    pub fn read(&mut self, tids: &[u64]) -> HashMap<u64, u64> {
        let mut out = HashMap::with_capacity(tids.len());
        let mut rebuilt = false;
        for &tid in tids {
            let mut ms = self.host_tid(tid).and_then(|h| self.cpu_ms(h));
            // Not in the map, or its thread gone (the id may be another thread's now): the
            // map is rebuilt, once per call.
            if ms.is_none() && self.containerized && !rebuilt {
                rebuilt = true;
                self.host_tids = host_tid_map(&self.task_dir);
                ms = self.host_tid(tid).and_then(|h| self.cpu_ms(h));
            }
            if let Some(ms) = ms {
                out.insert(tid, ms);
            }
        }
        out
    }

    /// The host's id of a printed id, as far as the cached map knows.
    fn host_tid(&self, tid: u64) -> Option<u64> {
        if self.containerized {
            self.host_tids.get(&tid).copied()
        } else {
            Some(tid)
        }
    }

    /// One thread's CPU milliseconds, by its host id.
    fn cpu_ms(&mut self, host_tid: u64) -> Option<u64> {
        let dir = self.task_dir.join(host_tid.to_string());
        if !self.no_schedstat {
            match read_schedstat(&dir) {
                Ok(ns) => return Some(ns / 1_000_000),
                Err(e) if dir.is_dir() => {
                    tracing::debug!(error = %e, "no schedstat: reading thread CPU from stat");
                    self.no_schedstat = true;
                }
                Err(_) => return None,
            }
        }
        match read_stat(&dir) {
            Ok(t) => Some(ticks_to_ms(t.cpu_ticks(), self.ticks_per_second)),
            Err(e) => {
                tracing::trace!(error = %e, "thread gone");
                None
            }
        }
    }
}

/// The innermost-namespace id of a thread, from its `status` (the last field of `NSpid:`).
pub fn nspid_of_status(status: &str) -> Option<u64> {
    parse_status(status)?.nspid.map(u64::from)
}

/// Namespaced id → host id for every thread under a `/proc/PID/task` directory. Threads that
/// exit while it is listed are skipped.
pub fn host_tid_map(task_dir: &Path) -> HashMap<u64, u64> {
    let Ok(dir) = std::fs::read_dir(task_dir) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let host: u64 = e.file_name().to_str()?.parse().ok()?;
            let status = read_text(&e.path().join("status")).ok()?;
            Some((nspid_of_status(&status)?, host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_is_the_innermost_id() {
        let status = "Name:\tC2 CompilerThre\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
                      Ngid:\t0\nPid:\t4251\nPPid:\t4240\nTracerPid:\t0\n\
                      Uid:\t9999\t9999\t9999\t9999\nGid:\t9999\t9999\t9999\t9999\n\
                      NStgid:\t4242\t1\nNSpid:\t4251\t10\nNSpgid:\t4242\t1\n";
        assert_eq!(nspid_of_status(status), Some(10));
        // Three nested namespaces: the JVM's own is the last.
        let deep = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nNSpid:\t900\t300\t7\n";
        assert_eq!(nspid_of_status(deep), Some(7));
        // Not namespaced: the one id.
        let host = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nNSpid:\t4251\n";
        assert_eq!(nspid_of_status(host), Some(4251));
        // A kernel without NSpid (before 4.1) cannot map ids.
        assert_eq!(
            nspid_of_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"),
            None
        );
    }

    #[test]
    fn this_threads_cpu_is_read_by_its_id() {
        /// This thread's CPU time as the C library gives it, in milliseconds.
        fn own_cpu_ms() -> u64 {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id and a timespec to fill.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0);
            ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
        }
        let tid = nix::unistd::gettid().as_raw() as u64;
        let mut r = ThreadCpuReader::new("/proc", std::process::id(), false);
        // Spin until this thread has had 50 ms of CPU, however busy the machine is.
        let start = own_cpu_ms();
        while own_cpu_ms() < start + 50 {
            std::hint::black_box(start);
        }
        let before = own_cpu_ms();
        let got = r.read(&[tid, u64::from(u32::MAX)]);
        let after = own_cpu_ms();
        // schedstat lags a running thread by its current slice (up to a scheduler tick).
        assert!(
            (before.saturating_sub(20)..=after + 1).contains(&got[&tid]),
            "{before} ≤ {got:?} ≤ {after}"
        );
        assert_eq!(got.len(), 1, "an id that is no thread of ours is left out");
    }

    #[test]
    fn namespaced_ids_are_mapped_through_nspid() {
        // Here every thread is in our own namespace: the map is the identity.
        let tid = nix::unistd::gettid().as_raw() as u64;
        let map = host_tid_map(Path::new("/proc/self/task"));
        assert_eq!(map.get(&tid), Some(&tid));
        let mut r = ThreadCpuReader::new("/proc", std::process::id(), true);
        assert!(r.read(&[tid]).contains_key(&tid));
        assert_eq!(r.host_tids.get(&tid), Some(&tid), "the map is cached");
    }
}
