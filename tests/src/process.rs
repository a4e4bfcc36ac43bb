//! PID-level process control for the JVMs the harness starts.
//!
//! Flink's daemon scripts fork the JVM and exit, so the JVMs are not our children: we know
//! them only by PID. Before signalling a PID we check, via `/proc/<pid>/cmdline`, that it is
//! still a process of ours (its command line names our private conf dir), so a recycled PID
//! is never signalled. Nothing here looks processes up by name.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The NUL-separated command line of `pid`, joined with spaces; `None` if the process is gone
/// (or a zombie, whose cmdline is empty).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// The `NSpid:` entries of `/proc/<pid>/status`: the PID in each PID namespace the process is
/// in, outermost (ours) first. Two entries for a process in a PID namespace of its own.
pub fn nspid(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// Who a PID belongs to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Alive, and its command line contains our marker.
    Ours,
    /// Alive, but not (or not provably) ours: never signal it.
    Other,
    /// No such process, or a zombie.
    Gone,
}

/// Classifies `pid` against `marker` (e.g. our conf dir). The command line of a live process
/// can read empty for a moment (e.g. while it execs), so an empty read is retried for up to
/// ~0.5 s before the process is given up as [`Owner::Other`].
pub fn owner(pid: u32, marker: &str) -> Owner {
    for _ in 0..20 {
        if !is_alive(pid) {
            return Owner::Gone;
        }
        match cmdline(pid) {
            Some(c) if c.contains(marker) => return Owner::Ours,
            Some(_) => return Owner::Other,
            None => sleep(Duration::from_millis(25)),
        }
    }
    if is_alive(pid) {
        Owner::Other
    } else {
        Owner::Gone
    }
}

/// Whether `pid` is alive and its command line contains `marker`.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    owner(pid, marker) == Owner::Ours
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // A zombie still answers signal 0; its state in /proc/<pid>/stat is 'Z'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                != Some('Z')
        }
        Err(_) => false,
    }
}

/// Sends `signal` to `pid` if it is still ours. Returns whether it was sent.
pub fn signal_if_ours(pid: u32, marker: &str, signal: Signal) -> Result<bool> {
    if !is_ours(pid, marker) {
        return Ok(false);
    }
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("kill -{signal} {pid}")),
    }
}

/// Stops our processes: SIGTERM, wait up to `grace`, then SIGKILL and wait up to 10 s more.
/// Fails if any PID that is still ours survives SIGKILL.
pub fn terminate_all(pids: &[u32], marker: &str, grace: Duration) -> Result<()> {
    for &pid in pids {
        signal_if_ours(pid, marker, Signal::SIGTERM)?;
    }
    if wait_gone(pids, marker, grace) {
        return Ok(());
    }
    for &pid in pids {
        signal_if_ours(pid, marker, Signal::SIGKILL)?;
    }
    if wait_gone(pids, marker, Duration::from_secs(10)) {
        return Ok(());
    }
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| is_ours(*p, marker))
        .collect();
    bail!("processes {left:?} survived SIGKILL")
}

/// Waits until none of `pids` is ours any more; returns false on timeout.
pub fn wait_gone(pids: &[u32], marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !is_ours(*p, marker)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a text file (lossy UTF-8), or a note saying why not.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
