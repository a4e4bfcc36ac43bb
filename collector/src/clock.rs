//! The wall clock as the collector records it (milliseconds since the Unix epoch) and as it
//! shows it (UTC, to the second).

use std::time::{Duration, UNIX_EPOCH};

/// The one wall-clock read of every bpmon timestamp.
pub use bpmon_proto::time::now_ms;

/// `ms` since the Unix epoch in UTC, to the second: `2024-05-01T12:00:03Z`.
pub fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
