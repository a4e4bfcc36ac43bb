//! What the benchmark binaries (`scripts/bench …`) share: the calling thread's CPU clock and
//! the in-process library built beside them.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use bpmon_agent::backends::jvmti::LIBRARY_NAME;

/// CPU time of the calling thread, µs.
pub fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// The JVMTI library next to the running benchmark (its `scripts/bench` line builds it in
/// release mode).
pub fn library_beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.parent().context("exe dir")?.join(LIBRARY_NAME);
    ensure!(
        path.is_file(),
        "{} not found: build it first (scripts/bench does)",
        path.display()
    );
    Ok(path)
}
