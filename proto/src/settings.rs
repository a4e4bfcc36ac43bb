//! How an agent samples a job, and the one rule that says whether it can: the CLI checks it
//! before it sends, the collector before it stores, the agent before it samples, so what one
//! accepts none of the others refuses. And the [`Scope`] a setting applies to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ingest::bounds;

/// No window starts more often than this: a floor against a configuration that would have every
/// agent dump every TaskManager's threads many times a second.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// How an agent samples one job (or every job, as the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingSettings {
    /// Samples per window (Flink's monitor: 100).
    pub samples: u32,
    /// Time between samples, ms (Flink's monitor: 50).
    pub delay_ms: u64,
    /// Time from one window's start to the next, ms.
    pub interval_ms: u64,
    /// Stacks are read at every `stacks_every`-th sample of a window (the first included); the
    /// samples between read only Flink's timers of each task, which the in-process sampler does
    /// at a small fraction of a stack's cost. The dump backends cannot read timers, so they skip
    /// those samples. 1 (the default, and all older collectors know): stacks at every sample.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stacks_every: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Default for SamplingSettings {
    fn default() -> Self {
        SamplingSettings {
            samples: 100,
            delay_ms: 50,
            interval_ms: 60_000,
            stacks_every: 1,
        }
    }
}

impl SamplingSettings {
    /// Continuous watching: back-to-back windows of 2 s, Flink's timers read 10 times a second,
    /// stacks once a second (for the busy frames and the causes). With the in-process sampler a
    /// level is at most about 2 s old when it reaches the collector.
    pub const CONTINUOUS: SamplingSettings = SamplingSettings {
        samples: 20,
        delay_ms: 100,
        interval_ms: 2_000,
        stacks_every: 10,
    };

    /// Whether these settings watch continuously: every window starts as the previous one
    /// ends (within one delay).
    pub fn is_continuous(&self) -> bool {
        u64::from(self.samples).saturating_mul(self.delay_ms) >= self.interval_ms
    }

    /// Whether sample `index` of a window reads stacks.
    pub fn reads_stacks(&self, index: u32) -> bool {
        index.is_multiple_of(self.stacks_every.max(1))
    }
}

/// Why sampling settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsProblem {
    #[error("samples must be at least 1")]
    NoSamples,
    #[error("{0} samples per window; at most {max}", max = bounds::SAMPLES_MAX)]
    TooManySamples(u32),
    #[error(
        "interval {0} ms is below the minimum of {MIN_INTERVAL_MS} ms (agents start at most one \
         window a second)"
    )]
    IntervalTooShort(u64),
    #[error("stacks_every must be between 1 and the {samples} samples of a window, not {value}")]
    StacksEvery { value: u32, samples: u32 },
    #[error("{what} {value} exceeds {max}", max = bounds::SQL_INT_MAX)]
    TooLarge { what: &'static str, value: u64 },
    #[error(
        "{samples} samples {delay_ms} ms apart take {window_ms} ms, longer than the \
         {interval_ms} ms interval"
    )]
    WindowTooLong {
        samples: u32,
        delay_ms: u64,
        /// `None`: longer than a u64 of milliseconds.
        window_ms: WindowLength,
        interval_ms: u64,
    },
}

/// A window's length, which may not fit a u64 for absurd settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLength(pub Option<u64>);

impl fmt::Display for WindowLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms}"),
            None => f.write_str("more than 2^64"),
        }
    }
}

impl SamplingSettings {
    /// Why these settings cannot be used, if they cannot: at least one sample and no more than a
    /// batch may carry, a window that fits in its interval, an interval of at least
    /// [`MIN_INTERVAL_MS`], and numbers the store can hold.
    pub fn validate(&self) -> Result<(), SettingsProblem> {
        if self.samples == 0 {
            return Err(SettingsProblem::NoSamples);
        }
        if self.samples > bounds::SAMPLES_MAX {
            return Err(SettingsProblem::TooManySamples(self.samples));
        }
        for (what, value) in [
            ("delay_ms", self.delay_ms),
            ("interval_ms", self.interval_ms),
        ] {
            if value > bounds::SQL_INT_MAX {
                return Err(SettingsProblem::TooLarge { what, value });
            }
        }
        let window = u64::from(self.samples - 1).checked_mul(self.delay_ms);
        if window.is_none_or(|w| w >= self.interval_ms) {
            return Err(SettingsProblem::WindowTooLong {
                samples: self.samples,
                delay_ms: self.delay_ms,
                window_ms: WindowLength(window),
                interval_ms: self.interval_ms,
            });
        }
        if self.interval_ms < MIN_INTERVAL_MS {
            return Err(SettingsProblem::IntervalTooShort(self.interval_ms));
        }
        if self.stacks_every == 0 || self.stacks_every > self.samples {
            return Err(SettingsProblem::StacksEvery {
                value: self.stacks_every,
                samples: self.samples,
            });
        }
        Ok(())
    }
}

/// What a setting applies to: every job (the default), or one job. On the wire and in the store
/// the default is `*`; people may also write `default`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Scope {
    Default,
    /// A job id.
    Job(String),
}

impl Scope {
    /// The default's name on the wire and in the store.
    pub const DEFAULT: &'static str = "*";

    /// `*` or `default`: the default; anything else: a job.
    pub fn parse(s: &str) -> Scope {
        match s {
            Scope::DEFAULT | "default" => Scope::Default,
            job => Scope::Job(job.to_string()),
        }
    }

    /// As written on the wire and in the store.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Default => Scope::DEFAULT,
            Scope::Job(id) => id,
        }
    }

    pub fn is_default(&self) -> bool {
        matches!(self, Scope::Default)
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Scope {
        match s.as_str() {
            Scope::DEFAULT | "default" => Scope::Default,
            _ => Scope::Job(s),
        }
    }
}

impl From<&str> for Scope {
    fn from(s: &str) -> Scope {
        Scope::parse(s)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        match s {
            Scope::Default => Scope::DEFAULT.to_string(),
            Scope::Job(id) => id,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(samples: u32, delay_ms: u64, interval_ms: u64) -> SamplingSettings {
        SamplingSettings {
            samples,
            delay_ms,
            interval_ms,
            stacks_every: 1,
        }
    }

    #[test]
    fn continuous_windows_are_back_to_back_with_stacks_once_a_second() {
        let c = SamplingSettings::CONTINUOUS;
        assert_eq!(c.validate(), Ok(()));
        assert!(c.is_continuous());
        assert!(!SamplingSettings::default().is_continuous());
        let stacked: Vec<u32> = (0..c.samples).filter(|&i| c.reads_stacks(i)).collect();
        assert_eq!(stacked, [0, 10]);
        assert!((0..100).all(|i| SamplingSettings::default().reads_stacks(i)));
        // On the wire, the default is left out and older settings read as stacks every sample.
        let old: SamplingSettings =
            serde_json::from_str(r#"{"samples":100,"delay_ms":50,"interval_ms":60000}"#).unwrap();
        assert_eq!(old, SamplingSettings::default());
        assert!(!serde_json::to_string(&old)
            .unwrap()
            .contains("stacks_every"));
        let e = SamplingSettings {
            stacks_every: 21,
            ..c
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().contains("between 1 and the 20 samples"),
            "{e}"
        );
    }

    #[test]
    fn flinks_defaults_fit_a_minute() {
        assert_eq!(SamplingSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_window_longer_than_its_interval_is_refused() {
        let e = s(100, 50, 4_000).validate().unwrap_err();
        assert!(e.to_string().contains("4950 ms"), "{e}");
        assert_eq!(s(0, 50, 4_000).validate(), Err(SettingsProblem::NoSamples));
    }

    #[test]
    fn what_agents_would_refuse_is_refused_here_with_the_reason() {
        // Issue 11: this was stored by the collector and then thrown away by every agent.
        let e = s(5, 10, 500).validate().unwrap_err();
        assert_eq!(e, SettingsProblem::IntervalTooShort(500));
        assert!(e.to_string().contains("minimum of 1000 ms"), "{e}");
        assert_eq!(s(1, 0, MIN_INTERVAL_MS).validate(), Ok(()));
    }

    #[test]
    fn absurd_numbers_are_refused_without_overflow() {
        let e = s(100, 1 << 62, u64::MAX >> 1).validate().unwrap_err();
        assert!(
            matches!(
                e,
                SettingsProblem::WindowTooLong {
                    window_ms: WindowLength(None),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("more than 2^64"), "{e}");
        assert!(matches!(
            s(2, 1, u64::MAX).validate(),
            Err(SettingsProblem::TooLarge {
                what: "interval_ms",
                ..
            })
        ));
        assert_eq!(
            s(u32::MAX, 0, 60_000).validate(),
            Err(SettingsProblem::TooManySamples(u32::MAX))
        );
    }

    #[test]
    fn the_default_scope_has_two_names_and_one_wire_form() {
        assert_eq!(Scope::parse("*"), Scope::Default);
        assert_eq!(Scope::parse("default"), Scope::Default);
        assert_eq!(Scope::parse("a1b2"), Scope::Job("a1b2".into()));
        assert_eq!(serde_json::to_string(&Scope::Default).unwrap(), "\"*\"");
        let back: Scope = serde_json::from_str("\"a1b2\"").unwrap();
        assert_eq!(back, Scope::Job("a1b2".into()));
    }
}
