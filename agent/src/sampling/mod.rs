//! What the agent does with the dumps: when to take them and what they add up to.
//!
//! - [`window`]: one sampling window over one JVM (N dumps D apart, each classified and
//!   tallied, with its cost), and the one-shot [`sample`] that runs one.
//! - [`schedule`]: the daemon's timetable: per settings group a window every interval, and one
//!   dump for every window due at that moment (pure, no clock of its own).
//! - [`tally`]: counts per task (blocked / waiting / busy), task threads told apart by name and
//!   JVM thread id, a legacy source thread speaking for its task.

pub mod schedule;
pub mod tally;
pub mod window;

pub use window::{
    classify_dump, sample, take_dump, take_run, take_sample, tally_dump, DumpStats, Progress,
    SampleSettings, TakenDump, Window, MAX_CONSECUTIVE_FAILURES,
};
