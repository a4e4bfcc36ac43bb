//! Flink's own per-task timers (idle, soft and hard back-pressured time), as the in-process
//! sampler reads them: one [`TimerReading`] per task thread per sample, and what a window makes
//! of them, [`TimerWindow`]. Busy time is what none of the timers measures.
//!
//! Two numbers come out of them, each better than what stack samples and REST metrics give:
//! - the *state* at every sample: a waiting sample whose soft timer ran is soft back-pressure, one
//!   whose idle timer ran is idleness (stack frames cannot tell the two apart since Flink 1.10);
//! - the *exact* time shares over the window, from the accumulated totals at its first and last
//!   reading.

use serde::{Deserialize, Serialize};

/// The timer running at a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunningTimer {
    Idle,
    /// Soft back-pressure: waiting in the mailbox for output buffers to become available.
    Soft,
    /// Hard back-pressure: blocked requesting an output buffer.
    Hard,
}

/// The class Flink's timers give a task: hard back-pressure is blocked, soft back-pressure and
/// idleness are waiting (as their stacks would be), no timer running is busy.
pub fn timer_class(running: Option<RunningTimer>) -> crate::SampleClass {
    use crate::SampleClass;
    match running {
        Some(RunningTimer::Hard) => SampleClass::Blocked,
        Some(RunningTimer::Soft | RunningTimer::Idle) => SampleClass::Waiting,
        None => SampleClass::Busy,
    }
}

/// How the timers were read, which says how exact the totals are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerMethod {
    /// The gauges' fields under their monitor: state and totals exact at the reading.
    Fields,
    /// The gauges' public methods: the state is exact, the totals lag by the running
    /// measurement until Flink's metric view folds it in (every 5 s).
    Methods,
}

impl TimerMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerMethod::Fields => "fields",
            TimerMethod::Methods => "methods",
        }
    }
}

/// One task's timers at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerReading {
    /// Wall clock of the reading, ms since the epoch (the clock Flink's timers use).
    pub at_ms: u64,
    /// The timer running then; `None`: the task was busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningTimer>,
    /// ms each timer had measured since the task started.
    pub idle_ms: u64,
    pub soft_ms: u64,
    pub hard_ms: u64,
    pub method: TimerMethod,
}

/// Samples by the timer that ran at each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimerCounts {
    pub idle: u32,
    pub soft: u32,
    pub hard: u32,
    /// No timer ran.
    pub busy: u32,
}

impl TimerCounts {
    pub fn total(&self) -> u64 {
        u64::from(self.idle) + u64::from(self.soft) + u64::from(self.hard) + u64::from(self.busy)
    }
}

/// Whether a Flink version's `TimerGauge` totals overcount: before FLINK-35764 (fixed in 1.19.2,
/// 1.20.1 and 2.0.0), `markEnd` added a measurement's whole length to `accumulatedCount` although the
/// metric update every few seconds had already added the part before it. A long wait (an idle
/// task, a long back-pressure) is then counted about twice at its end; a window's totals read
/// shares above 1 (measured on 1.18.1: 1.03–1.05 over 3 s). Checked in the bytecode of
/// `TimerGauge.markEnd`: 1.18.1 and 1.19.1 never read `currentUpdateTS`; 1.19.2, 1.19.3, 1.20.3
/// and 2.3.0 do, with the same bytecode. Versions that cannot be parsed do not count as affected. The per-sample states are read from `currentMeasurementStartTS`
/// alone and are right on every version.
pub fn totals_overcount(flink_version: &str) -> bool {
    let mut parts = flink_version
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return false;
    };
    let patch = parts.next().flatten().unwrap_or(0);
    match (major, minor) {
        (1, 16..=18) => true,
        (1, 19) => patch <= 1,
        (1, 20) => patch == 0,
        _ => false,
    }
}

/// Exact time, ms, between a window's first and last timer reading of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimerTotals {
    /// Wall time between the two readings.
    pub span_ms: u64,
    pub idle_ms: u64,
    pub soft_ms: u64,
    pub hard_ms: u64,
}

impl TimerTotals {
    /// The totals between two readings of one task; `None` when they are not in order (a task
    /// restarted in between has fresh timers) or span no time.
    pub fn between(first: &TimerReading, last: &TimerReading) -> Option<TimerTotals> {
        let span_ms = last.at_ms.checked_sub(first.at_ms)?;
        let t = TimerTotals {
            span_ms,
            idle_ms: last.idle_ms.checked_sub(first.idle_ms)?,
            soft_ms: last.soft_ms.checked_sub(first.soft_ms)?,
            hard_ms: last.hard_ms.checked_sub(first.hard_ms)?,
        };
        (span_ms > 0).then_some(t)
    }

    /// Share of the span back-pressured (soft or hard), in `[0, 1]`: what Flink's own
    /// `backPressuredTimeMsPerSecond / 1000` estimates, exact over this span.
    pub fn back_pressured_share(&self) -> f64 {
        self.share(self.soft_ms.saturating_add(self.hard_ms))
    }

    pub fn idle_share(&self) -> f64 {
        self.share(self.idle_ms)
    }

    /// What none of the timers measured.
    pub fn busy_share(&self) -> f64 {
        let waited = self
            .idle_ms
            .saturating_add(self.soft_ms)
            .saturating_add(self.hard_ms);
        self.share(self.span_ms.saturating_sub(waited))
    }

    fn share(&self, ms: u64) -> f64 {
        if self.span_ms == 0 {
            return f64::NAN;
        }
        // Readings a few ms apart within one call can make a part exceed the span.
        (ms as f64 / self.span_ms as f64).clamp(0.0, 1.0)
    }
}

/// What a window made of one task's timer readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerWindow {
    pub method: TimerMethod,
    /// The samples whose timers were read, by the timer running at each.
    pub states: TimerCounts,
    /// Waiting samples (parked in the mailbox) in which the soft timer ran: the exact split of
    /// the task's `waiting` into soft back-pressure and idleness.
    pub waiting_soft: u32,
    /// Exact time between the first and last reading; absent with a single reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<TimerTotals>,
    /// When the first and the last sample whose soft or hard timer ran were read (epoch ms):
    /// where in the window back-pressure began and ended, to the sample. Absent when none ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_pressured_from_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_pressured_until_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_whose_totals_overcount() {
        for v in [
            "1.16.3",
            "1.17.2",
            "1.18.1",
            "1.19.0",
            "1.19.1",
            "1.20.0",
            "1.18-SNAPSHOT",
        ] {
            assert!(totals_overcount(v), "{v}");
        }
        for v in [
            "1.15.4", "1.19.2", "1.19.3", "1.20.1", "1.20.3", "2.0.0", "2.3.0", "", "unknown", "2",
        ] {
            assert!(!totals_overcount(v), "{v}");
        }
    }

    fn r(at_ms: u64, idle_ms: u64, soft_ms: u64, hard_ms: u64) -> TimerReading {
        TimerReading {
            at_ms,
            running: None,
            idle_ms,
            soft_ms,
            hard_ms,
            method: TimerMethod::Fields,
        }
    }

    #[test]
    fn totals_are_differences_and_shares_of_the_span() {
        let t = TimerTotals::between(&r(1_000, 50, 100, 10), &r(5_000, 1_050, 2_100, 510)).unwrap();
        assert_eq!(
            t,
            TimerTotals {
                span_ms: 4_000,
                idle_ms: 1_000,
                soft_ms: 2_000,
                hard_ms: 500
            }
        );
        assert!((t.back_pressured_share() - 0.625).abs() < 1e-9);
        assert!((t.idle_share() - 0.25).abs() < 1e-9);
        assert!((t.busy_share() - 0.125).abs() < 1e-9);
    }

    #[test]
    fn readings_out_of_order_or_of_a_restarted_task_give_no_totals() {
        assert_eq!(
            TimerTotals::between(&r(5_000, 9, 9, 9), &r(6_000, 1, 9, 9)),
            None
        );
        assert_eq!(
            TimerTotals::between(&r(5_000, 1, 1, 1), &r(4_000, 2, 2, 2)),
            None
        );
        assert_eq!(
            TimerTotals::between(&r(5_000, 1, 1, 1), &r(5_000, 1, 1, 1)),
            None
        );
    }

    #[test]
    fn shares_stay_in_range_when_parts_overshoot_the_span() {
        let t = TimerTotals {
            span_ms: 1_000,
            idle_ms: 0,
            soft_ms: 1_003,
            hard_ms: 0,
        };
        assert_eq!(t.back_pressured_share(), 1.0);
        assert_eq!(t.busy_share(), 0.0);
    }
}
