//! The CPU time of a process or of one of its threads, from `/proc`: `stat` (user + system time
//! in clock ticks, and the start time that tells a process from a later one with the same pid)
//! and `schedstat` (nanoseconds on CPU, finer than the 10 ms of a tick).

use std::path::Path;

use super::{read_text, ResourceError};

/// What bpmon needs from a `/proc/PID/stat` or `/proc/PID/task/TID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    /// State (field 3): `R`, `S`, `D`, `Z` (exited, not yet reaped), `X` (dead)…
    pub state: char,
    /// User time (field 14), in clock ticks.
    pub utime: u64,
    /// System time (field 15), in clock ticks.
    pub stime: u64,
    /// Threads in the process (field 20).
    pub num_threads: u64,
    /// Start time after boot (field 22), in clock ticks: with the pid, a process's identity.
    pub starttime: u64,
}

impl StatTimes {
    /// Whether the process has exited (a zombie waiting for its parent, or dead). A zombie
    /// leader whose other threads still run is a live process.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x') && self.num_threads <= 1
    }

    /// User + system time, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }
}

/// Parses a `stat` line. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses (`(x) (y)`), so the fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<StatTimes> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (the state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatTimes {
        state: fields.first()?.chars().next()?,
        utime: field(14)?,
        stime: field(15)?,
        num_threads: field(20)?,
        starttime: field(22)?,
    })
}

/// Parses a `schedstat` line: time on CPU (ns), time waiting for a CPU (ns), time slices. The
/// first field, the time on CPU.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 when it cannot be asked.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Clock ticks to milliseconds.
pub fn ticks_to_ms(ticks: u64, ticks_per_second: u64) -> u64 {
    let ms = u128::from(ticks) * 1000 / u128::from(ticks_per_second.max(1));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Reads and parses a `stat` file (`dir` is `/proc/PID` or `/proc/PID/task/TID`).
pub fn read_stat(dir: &Path) -> Result<StatTimes, ResourceError> {
    let path = dir.join("stat");
    let text = read_text(&path)?;
    parse_stat(&text).ok_or(ResourceError::Malformed {
        path,
        what: "no utime, stime and starttime",
    })
}

/// Reads and parses a `schedstat` file: nanoseconds on CPU.
pub fn read_schedstat(dir: &Path) -> Result<u64, ResourceError> {
    let path = dir.join("schedstat");
    let text = read_text(&path)?;
    parse_schedstat(&text).ok_or(ResourceError::Malformed {
        path,
        what: "no time on CPU",
    })
}

/// A process's CPU time at one instant, with its start time to recognise it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessCpu {
    /// User + system time of all its threads, in milliseconds.
    pub cpu_ms: u64,
    pub starttime: u64,
}

/// Reads `/proc/PID/stat` of a whole process (all its threads, those that exited included);
/// `None` once the process has exited, even before its parent reaps it.
pub fn read_process(proc_root: &Path, pid: u32, ticks_per_second: u64) -> Option<ProcessCpu> {
    match read_stat(&proc_root.join(pid.to_string())) {
        Ok(t) if t.exited() => None,
        Ok(t) => Some(ProcessCpu {
            cpu_ms: ticks_to_ms(t.cpu_ticks(), ticks_per_second),
            starttime: t.starttime,
        }),
        Err(e) => {
            tracing::debug!(pid, error = %e, "no CPU time for the process");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_and_spaces_in_the_name() {
        let line = "4242 (C2 (x) ) (y) R 1 4242 4242 0 -1 4194560 1202 0 0 0 157 23 0 0 20 0 31 0 \
                    98765 3581034496 61234 18446744073709551615 1 1 0 0 0 0 0 0 16898 0 0 0 17 1 \
                    0 0 0 0 0\n";
        let t = parse_stat(line).unwrap();
        assert_eq!((t.utime, t.stime, t.starttime), (157, 23, 98765));
        assert_eq!(t.cpu_ticks(), 180);
        assert_eq!(t.state, 'R');
        assert!(!t.exited());
    }

    #[test]
    fn stat_of_a_task_thread_named_like_flink() {
        let line = "17 (Source: x (1/2) S 1 1 1 0 -1 1077936192 5 0 0 0 1000 250 0 0 20 0 30 0 \
                    4242 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 -1 3 0 0 0 0 0";
        let t = parse_stat(line).unwrap();
        assert_eq!((t.utime, t.stime, t.starttime), (1000, 250, 4242));
        let zombie = line.replace(") S 1", ") Z 1");
        assert!(
            !parse_stat(&zombie).unwrap().exited(),
            "its 30 threads run on"
        );
        let dead = zombie.replace(" 0 30 0 ", " 0 1 0 ");
        assert!(parse_stat(&dead).unwrap().exited());
    }

    #[test]
    fn truncated_or_garbled_stat_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (java) S 1 2 3"), None);
        assert_eq!(
            parse_stat("1 java S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19"),
            None
        );
        let bad = "1 (java) S 1 1 1 0 -1 0 0 0 0 0 x 2 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat(bad), None);
    }

    #[test]
    fn schedstat_first_field_is_nanoseconds_on_cpu() {
        assert_eq!(parse_schedstat("80190977 8817917 108\n"), Some(80_190_977));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn ticks_convert_to_milliseconds() {
        assert_eq!(ticks_to_ms(157, 100), 1570);
        assert_eq!(ticks_to_ms(3, 250), 12);
        assert_eq!(ticks_to_ms(u64::MAX, 1), u64::MAX);
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn this_process_has_a_start_time_and_cpu() {
        let me = read_process(Path::new("/proc"), std::process::id(), ticks_per_second()).unwrap();
        assert!(me.starttime > 0);
        let own = read_schedstat(Path::new("/proc/thread-self")).unwrap();
        assert!(own > 0);
    }
}
