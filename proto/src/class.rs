//! The class of one stack sample of a Flink task thread: what the agent counts per task, whether
//! it classified a thread dump itself (`bpmon-stacks`) or the in-process sampler did (the
//! [`inprocess`](crate::inprocess) wire).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The class of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleClass {
    /// Hard back-pressure: blocked requesting an output network buffer.
    Blocked,
    /// Parked in the task's mailbox: idle or soft back-pressure.
    Waiting,
    /// Anything else, including an empty stack.
    Busy,
}

impl fmt::Display for SampleClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleClass::Blocked => "blocked",
            SampleClass::Waiting => "waiting",
            SampleClass::Busy => "busy",
        })
    }
}
