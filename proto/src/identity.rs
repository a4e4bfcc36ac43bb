//! The identity Flink writes into a task thread's name.
//!
//! A task's main thread is named by `TaskInfo.getTaskNameWithSubtasks()`:
//! `<task name> (<subtask+1>/<parallelism>)` and, since Flink 1.12, `#<attempt>` after it. The task
//! name is the job vertex name (chained operators joined by ` -> `) and may itself contain spaces,
//! parentheses, slashes and `#`, so the suffix is parsed from the right. A legacy `SourceFunction`
//! runs on `Legacy Source Thread - <main thread name>`, which does the task's real work and counts
//! for it. Helper threads that merely mention a task (`OutputFlusher for …`, `Time Trigger for …`)
//! are not tasks.

use serde::{Deserialize, Serialize};

/// What a thread name says about a Flink task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskIdentity {
    /// The job vertex name, e.g. `Source: numbers -> explode`.
    pub task: String,
    /// 0-based subtask index (the name carries it 1-based).
    pub subtask: u32,
    pub parallelism: u32,
    /// Execution attempt; `None` on Flink < 1.12, whose names carry no `#attempt`.
    pub attempt: Option<u32>,
}

impl TaskIdentity {
    /// The name of the task's main thread, as Flink writes it.
    pub fn main_thread_name(&self) -> String {
        match self.attempt {
            Some(a) => format!(
                "{} ({}/{})#{}",
                self.task,
                self.subtask + 1,
                self.parallelism,
                a
            ),
            None => format!("{} ({}/{})", self.task, self.subtask + 1, self.parallelism),
        }
    }
}

/// Which of a task's threads a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadRole {
    /// The task's own thread, running the mailbox loop.
    Main,
    /// `Legacy Source Thread - …`: a legacy `SourceFunction`'s emitting thread.
    LegacySource,
}

/// Prefix of the thread that runs a legacy `SourceFunction` (Flink 1.10+).
pub const LEGACY_SOURCE_PREFIX: &str = "Legacy Source Thread - ";

/// Threads named after a task that are not the task: they never carry back-pressure.
const HELPER_PREFIXES: &[&str] = &[
    "OutputFlusher for ",
    "Time Trigger for ",
    "System Time Trigger for ",
    "Source Data Fetcher for ",
    "Channel state writer ",
];

/// Parses a JVM thread name into the task it runs, or `None` when it is not a task thread.
pub fn parse_task_thread_name(name: &str) -> Option<(TaskIdentity, ThreadRole)> {
    if HELPER_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let (rest, role) = match name.strip_prefix(LEGACY_SOURCE_PREFIX) {
        Some(rest) => (rest, ThreadRole::LegacySource),
        None => (name, ThreadRole::Main),
    };
    // Optional `#<attempt>` after the closing parenthesis.
    let (body, attempt) = match rest.rfind(")#") {
        Some(i) if is_digits(&rest[i + 2..]) => (&rest[..=i], Some(rest[i + 2..].parse().ok()?)),
        _ => (rest, None),
    };
    let body = body.strip_suffix(')')?;
    let open = body.rfind(" (")?;
    let (task, counts) = (&body[..open], &body[open + 2..]);
    let (idx, par) = counts.split_once('/')?;
    if task.is_empty() || !is_digits(idx) || !is_digits(par) {
        return None;
    }
    let idx: u32 = idx.parse().ok()?;
    let parallelism: u32 = par.parse().ok()?;
    if idx == 0 || idx > parallelism {
        return None;
    }
    Some((
        TaskIdentity {
            task: task.to_string(),
            subtask: idx - 1,
            parallelism,
            attempt,
        },
        role,
    ))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(task: &str, subtask: u32, parallelism: u32, attempt: Option<u32>) -> TaskIdentity {
        TaskIdentity {
            task: task.into(),
            subtask,
            parallelism,
            attempt,
        }
    }

    #[test]
    fn modern_main_thread() {
        assert_eq!(
            parse_task_thread_name("Source: numbers -> explode (1/2)#0"),
            Some((
                id("Source: numbers -> explode", 0, 2, Some(0)),
                ThreadRole::Main
            ))
        );
    }

    #[test]
    fn names_with_parentheses_slashes_and_hashes() {
        let (ident, _) = parse_task_thread_name(
            "Window(TumblingEventTimeWindows(5000), a/b #x) -> Map (12/16)#3",
        )
        .unwrap();
        assert_eq!(
            ident,
            id(
                "Window(TumblingEventTimeWindows(5000), a/b #x) -> Map",
                11,
                16,
                Some(3)
            )
        );
    }

    #[test]
    fn pre_1_12_names_have_no_attempt() {
        assert_eq!(
            parse_task_thread_name("Source: Custom Source -> Map (3/4)"),
            Some((
                id("Source: Custom Source -> Map", 2, 4, None),
                ThreadRole::Main
            ))
        );
    }

    #[test]
    fn legacy_source_thread_counts_for_its_task() {
        assert_eq!(
            parse_task_thread_name("Legacy Source Thread - Source: legacy (2/2)#1"),
            Some((
                id("Source: legacy", 1, 2, Some(1)),
                ThreadRole::LegacySource
            ))
        );
    }

    #[test]
    fn helper_threads_are_not_tasks() {
        for name in [
            "OutputFlusher for Source: numbers -> explode",
            "Time Trigger for Window(x) (1/2)#0",
            "System Time Trigger for Window(x) (1/2)#0",
            "Source Data Fetcher for Source: kafka (1/2)#0",
            "main",
            "Flink Netty Server (0) Thread 0",
            "pool-3-thread-1",
            "x (0/2)#0",
            "x (3/2)#0",
            " (1/2)#0",
            "x (1/2)#",
            "x (1/2)#a",
            "x(1/2)",
        ] {
            assert_eq!(parse_task_thread_name(name), None, "{name}");
        }
    }

    #[test]
    fn main_thread_name_round_trips() {
        for name in ["a -> b (1/2)#0", "Sink: out (7/8)", "x (y) (1/1)#12"] {
            let (ident, _) = parse_task_thread_name(name).unwrap();
            assert_eq!(ident.main_thread_name(), name);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_task_thread_name(&s);
        }

        #[test]
        fn round_trips_any_task_name(task in "[ -~]{1,40}", idx in 1u32..500, extra in 0u32..500, attempt in proptest::option::of(0u32..1000)) {
            proptest::prop_assume!(!HELPER_PREFIXES.iter().any(|p| task.starts_with(p)) && !task.starts_with(LEGACY_SOURCE_PREFIX));
            let ident = TaskIdentity { task, subtask: idx - 1, parallelism: idx + extra, attempt };
            let (parsed, role) = parse_task_thread_name(&ident.main_thread_name()).unwrap();
            proptest::prop_assert_eq!(parsed, ident);
            proptest::prop_assert_eq!(role, ThreadRole::Main);
        }
    }
}
