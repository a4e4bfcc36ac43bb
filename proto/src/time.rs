//! Time as the wire carries it: milliseconds since the Unix epoch. `now_ms` is the one function
//! in this crate that looks outside (at the wall clock): every timestamp the agent, the
//! in-process sampler and the collector exchange is its value, so it is read one way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
