//! The heart of bpmon: one subtask's stack samples merged with its network metrics.
//!
//! A stack sample says *blocked* (hard back-pressure), *waiting* (parked in the mailbox) or *busy*.
//! Since Flink 1.10 an idle task and a softly back-pressured one wait in the same frames, so the
//! samples alone cannot tell them apart. The metrics can, and this module applies them to split
//! the waiting samples into *soft* and *idle*:
//!
//! 1. Flink 1.15+ measures both: the back-pressured share of waiting is
//!    `softBackPressuredTimeMsPerSecond / (soft + idleTimeMsPerSecond)`.
//! 2. Flink 1.13–1.14 has one `backPressuredTimeMsPerSecond` (soft and hard together). Its soft
//!    part is what remains after the hard share the samples saw, and the share is
//!    `soft / (soft + idle)`.
//!
//!    Rules 1 and 2 apply only when Flink saw the task wait at least [`MIN_WAITING_MS`] per
//!    second. A hard-back-pressured source on Flink 2.3 read `idle` 5–27 ms/s and `soft` 0 in
//!    its first seconds: a split of that sliver called all 20 waiting samples of a window idle,
//!    where the task had waited between two blocked emits with its output pool full.
//! 3. Otherwise (1.10–1.12, time metrics missing, or too little waiting): the output tells. The subtask is
//!    back-pressured when `isBackPressured` is true or its `outPoolUsage` is at least 0.99 (output
//!    pool exhausted); then all of its waiting counts as soft, else all of it counts as idle.
//!
//! The result is `ratio = (blocked + soft) / samples`, with Flink's levels: OK ≤ 0.10 < LOW ≤ 0.5 <
//! HIGH.
//!
//! The in-process sampler does better than all three: it reads Flink's own timers of the task at
//! every sample (`bpmon_proto::timers`). Then the waiting samples in which the soft timer ran
//! *are* the soft ones ([`SplitRule::TaskTimers`]), and the ratio is the exact back-pressured
//! share of the window from the timers' totals ([`RatioSource::Timers`]) rather than an estimate
//! from samples. No metric is needed for either.

use bpmon_proto::{
    ActivityCounts, FrameCount, JvmResources, Level, LockCount, ThreadCpu, TimerWindow,
};
use serde::{Deserialize, Serialize};

use crate::mapping::SubtaskRef;
use crate::model::SubtaskMetrics;

/// `outPoolUsage` at or above which a subtask's output counts as exhausted.
pub const OUT_POOL_EXHAUSTED: f64 = 0.99;

/// The waiting time (soft + idle, ms per second) below which Flink's time metrics do not split
/// the waiting samples. Below it, even counting all of it as soft moves the ratio by less than
/// the OK threshold: the split carries less than the output pool's state does.
pub const MIN_WAITING_MS: f64 = 100.0;

/// What the agent counted for one subtask in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SampleCounts {
    pub samples: u32,
    pub blocked: u32,
    pub waiting: u32,
    pub busy: u32,
    /// Flink's timers over the window, where the in-process sampler read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimerWindow>,
}

/// Which rule split the waiting samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    /// The task's own soft back-pressure timer, read at each waiting sample.
    TaskTimers,
    /// Rule 1: soft / (soft + idle) time metrics.
    SoftIdleTime,
    /// Rule 2: (backPressured − hard share) / (that + idle).
    BackPressuredIdleTime,
    /// Rule 3: `isBackPressured` or an exhausted output pool: all waiting is soft.
    OutputExhausted,
    /// Rule 3: output available: all waiting is idle.
    OutputAvailable,
    /// No metric to split by: waiting is reported as idle, and the level says so.
    NoMetrics,
    /// Nothing waited: nothing to split.
    NothingWaiting,
}

/// One subtask, merged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergedSubtask {
    pub samples: u32,
    pub blocked: u32,
    pub soft: u32,
    pub idle: u32,
    pub busy: u32,
    /// `(blocked + soft) / samples`; NaN without samples.
    pub ratio: f64,
    /// `None` without samples.
    pub level: Option<Level>,
    pub split: SplitRule,
    pub ratio_source: RatioSource,
}

/// What a ratio was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioSource {
    /// `(blocked + soft) / samples`.
    #[default]
    Samples,
    /// The exact back-pressured share of the window, from Flink's timers of the task.
    Timers,
}

impl RatioSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RatioSource::Samples => "samples",
            RatioSource::Timers => "timers",
        }
    }
}

/// The back-pressured share of the waiting samples, and the rule that gave it.
pub fn waiting_back_pressured_share(counts: &SampleCounts, m: &SubtaskMetrics) -> (f64, SplitRule) {
    if counts.waiting == 0 {
        return (0.0, SplitRule::NothingWaiting);
    }
    if let (Some(soft), Some(idle)) = (m.soft_back_pressured_ms, m.idle_ms) {
        if soft + idle >= MIN_WAITING_MS {
            return (
                (soft / (soft + idle)).clamp(0.0, 1.0),
                SplitRule::SoftIdleTime,
            );
        }
    }
    if let (Some(bp), Some(idle), None) = (m.back_pressured_ms, m.idle_ms, m.soft_back_pressured_ms)
    {
        // The samples measured hard back-pressure directly; what remains of Flink's figure is soft.
        let hard_ms = if counts.samples > 0 {
            1000.0 * f64::from(counts.blocked) / f64::from(counts.samples)
        } else {
            0.0
        };
        let soft = (bp - hard_ms).max(0.0);
        if soft + idle >= MIN_WAITING_MS {
            return (
                (soft / (soft + idle)).clamp(0.0, 1.0),
                SplitRule::BackPressuredIdleTime,
            );
        }
    }
    let exhausted = m.is_back_pressured == Some(true)
        || m.out_pool_usage.is_some_and(|u| u >= OUT_POOL_EXHAUSTED);
    if exhausted {
        (1.0, SplitRule::OutputExhausted)
    } else if m.is_back_pressured.is_some() || m.out_pool_usage.is_some() {
        (0.0, SplitRule::OutputAvailable)
    } else {
        (0.0, SplitRule::NoMetrics)
    }
}

/// Merges one subtask's samples with its metrics (or with its task's timers, which need none).
pub fn merge_subtask(counts: &SampleCounts, metrics: &SubtaskMetrics) -> MergedSubtask {
    let (soft, split) = match counts.timers {
        Some(_) if counts.waiting == 0 => (0, SplitRule::NothingWaiting),
        Some(t) => (t.waiting_soft.min(counts.waiting), SplitRule::TaskTimers),
        None => {
            let (share, split) = waiting_back_pressured_share(counts, metrics);
            let soft = (f64::from(counts.waiting) * share).round() as u32;
            (soft.min(counts.waiting), split)
        }
    };
    let idle = counts.waiting - soft;
    let exact = counts
        .timers
        .and_then(|t| t.totals)
        .filter(|_| counts.samples > 0);
    let (ratio, ratio_source) = match exact {
        Some(totals) => (totals.back_pressured_share(), RatioSource::Timers),
        None if counts.samples == 0 => (f64::NAN, RatioSource::Samples),
        // In f64: counts near u32::MAX must not wrap (the ingest edge bounds them too).
        None => (
            ((f64::from(counts.blocked) + f64::from(soft)) / f64::from(counts.samples)).min(1.0),
            RatioSource::Samples,
        ),
    };
    MergedSubtask {
        samples: counts.samples,
        blocked: counts.blocked,
        soft,
        idle,
        busy: counts.busy,
        ratio,
        level: Level::from_ratio(ratio),
        split,
        ratio_source,
    }
}

/// A vertex takes its worst subtask's level and ratio, as Flink's own monitor does.
pub fn vertex_level(subtasks: &[MergedSubtask]) -> (Option<Level>, f64) {
    let worst = subtasks
        .iter()
        .filter(|s| !s.ratio.is_nan())
        .max_by(|a, b| a.ratio.total_cmp(&b.ratio));
    match worst {
        Some(s) => (s.level, s.ratio),
        None => (None, f64::NAN),
    }
}

/// One merged window of one subtask: what a batch yields per subtask, what the store keeps and
/// what queries read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedWindow {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask: u32,
    pub attempt: u32,
    /// ms since the Unix epoch.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub taskmanager_id: Option<String>,
    pub host: Option<String>,
    pub samples: u32,
    pub blocked: u32,
    pub soft: u32,
    pub idle: u32,
    pub busy: u32,
    /// `(blocked + soft) / samples`; `None` without samples.
    pub ratio: Option<f64>,
    /// `None` without samples.
    pub level: Option<Level>,
    pub split: SplitRule,
    /// The subtask's metrics the window was merged with.
    pub metrics: SubtaskMetrics,
    pub top_frames: Vec<FrameCount>,
    /// What the agent saw besides the counts: the cause of a bottleneck is named from it.
    #[serde(default)]
    pub evidence: WindowEvidence,
    /// The busy samples' stacks, folded (stored for flame graphs; not read back with the
    /// window).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<FoldedStack>,
}

/// Busy samples that showed one stack, folded as flame graph tools read it: frames root first,
/// joined by `;`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldedStack {
    pub folded: String,
    pub samples: u32,
}

/// What the agent reported about a subtask's window besides its counts (all absent from older
/// agents, and from backends that cannot see a figure).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowEvidence {
    /// The busy samples by what they were doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityCounts>,
    /// The locks the subtask's thread waited for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockCount>,
    /// CPU time of the subtask's thread(s) over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ThreadCpu>,
    /// What the TaskManager JVM hosting it, its cgroup and its host spent over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<JvmResources>,
    /// Flink's timers of the task over the window (in-process sampler only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<TimerWindow>,
    /// The samples whose stack was read, when not all were (the rest were classified by the
    /// timers alone): what `activity` and the frames speak for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_samples: Option<u32>,
}

impl WindowEvidence {
    pub fn is_empty(&self) -> bool {
        self == &WindowEvidence::default()
    }
}

impl MergedWindow {
    /// A row for `merged`, without TaskManager and host (set them on the result when known).
    pub fn new(
        at: &SubtaskRef,
        window_start_ms: u64,
        window_end_ms: u64,
        merged: &MergedSubtask,
        metrics: SubtaskMetrics,
        top_frames: Vec<FrameCount>,
    ) -> MergedWindow {
        MergedWindow {
            job_id: at.job_id.clone(),
            vertex_id: at.vertex_id.clone(),
            subtask: at.subtask,
            attempt: at.attempt,
            window_start_ms,
            window_end_ms,
            taskmanager_id: None,
            host: None,
            samples: merged.samples,
            blocked: merged.blocked,
            soft: merged.soft,
            idle: merged.idle,
            busy: merged.busy,
            ratio: (!merged.ratio.is_nan()).then_some(merged.ratio),
            level: merged.level,
            split: merged.split,
            metrics,
            top_frames,
            evidence: WindowEvidence::default(),
            stacks: Vec::new(),
        }
    }

    /// What the ratio was computed from: the timers when their totals were there to merge.
    pub fn ratio_source(&self) -> RatioSource {
        match self.evidence.timers.and_then(|t| t.totals) {
            Some(_) if self.samples > 0 => RatioSource::Timers,
            _ => RatioSource::Samples,
        }
    }

    pub fn subtask_ref(&self) -> SubtaskRef {
        SubtaskRef {
            job_id: self.job_id.clone(),
            vertex_id: self.vertex_id.clone(),
            subtask: self.subtask,
            attempt: self.attempt,
        }
    }

    /// The merge result again (a missing ratio becomes NaN, as `merge` has it).
    pub fn merged(&self) -> MergedSubtask {
        MergedSubtask {
            samples: self.samples,
            blocked: self.blocked,
            soft: self.soft,
            idle: self.idle,
            busy: self.busy,
            ratio: self.ratio.unwrap_or(f64::NAN),
            level: self.level,
            split: self.split,
            ratio_source: self.ratio_source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(blocked: u32, waiting: u32, busy: u32) -> SampleCounts {
        SampleCounts {
            samples: blocked + waiting + busy,
            blocked,
            waiting,
            busy,
            timers: None,
        }
    }

    fn timers(waiting_soft: u32, totals: Option<(u64, u64, u64, u64)>) -> TimerWindow {
        TimerWindow {
            method: bpmon_proto::TimerMethod::Fields,
            states: Default::default(),
            waiting_soft,
            totals: totals.map(
                |(span_ms, idle_ms, soft_ms, hard_ms)| bpmon_proto::TimerTotals {
                    span_ms,
                    idle_ms,
                    soft_ms,
                    hard_ms,
                },
            ),
            back_pressured_from_ms: None,
            back_pressured_until_ms: None,
        }
    }

    #[test]
    fn task_timers_split_waiting_and_give_the_exact_ratio_without_metrics() {
        // 60 waiting samples, 45 of them with the soft timer running; the totals say 70 % of
        // the window was back-pressured. Metrics that say otherwise are not used.
        let c = SampleCounts {
            timers: Some(timers(45, Some((5_000, 1_400, 3_000, 500)))),
            ..counts(10, 60, 30)
        };
        let wrong = SubtaskMetrics {
            soft_back_pressured_ms: Some(0.0),
            idle_ms: Some(1000.0),
            ..Default::default()
        };
        let m = merge_subtask(&c, &wrong);
        assert_eq!((m.soft, m.idle, m.split), (45, 15, SplitRule::TaskTimers));
        assert_eq!(m.ratio_source, RatioSource::Timers);
        assert!((m.ratio - 0.7).abs() < 1e-9, "{m:?}");
        assert_eq!(m.level, Some(Level::High));
    }

    #[test]
    fn timers_without_totals_split_waiting_and_the_samples_give_the_ratio() {
        let c = SampleCounts {
            timers: Some(timers(20, None)),
            ..counts(0, 40, 60)
        };
        let m = merge_subtask(&c, &SubtaskMetrics::default());
        assert_eq!((m.soft, m.idle), (20, 20));
        assert_eq!(m.ratio_source, RatioSource::Samples);
        assert!((m.ratio - 0.2).abs() < 1e-9);
        // Nothing waited: nothing to split, whatever the timers.
        let c = SampleCounts {
            timers: Some(timers(0, None)),
            ..counts(0, 0, 10)
        };
        assert_eq!(
            merge_subtask(&c, &SubtaskMetrics::default()).split,
            SplitRule::NothingWaiting
        );
    }

    #[test]
    fn hard_back_pressure_needs_no_metrics() {
        let m = merge_subtask(&counts(97, 1, 2), &SubtaskMetrics::default());
        assert_eq!((m.blocked, m.soft, m.idle), (97, 0, 1));
        assert!((m.ratio - 0.97).abs() < 1e-9);
        assert_eq!(m.level, Some(Level::High));
        assert_eq!(m.split, SplitRule::NoMetrics);
    }

    #[test]
    fn soft_and_idle_time_split_waiting() {
        // A softly back-pressured source: Flink says 990 ms/s soft, 10 ms/s idle.
        let metrics = SubtaskMetrics {
            soft_back_pressured_ms: Some(990.0),
            idle_ms: Some(10.0),
            ..Default::default()
        };
        let m = merge_subtask(&counts(0, 100, 0), &metrics);
        assert_eq!((m.soft, m.idle), (99, 1));
        assert_eq!(m.level, Some(Level::High));
        assert_eq!(m.split, SplitRule::SoftIdleTime);

        // An idle sink waits in the very same frames, and stays OK.
        let metrics = SubtaskMetrics {
            soft_back_pressured_ms: Some(0.0),
            idle_ms: Some(1000.0),
            ..Default::default()
        };
        let m = merge_subtask(&counts(0, 100, 0), &metrics);
        assert_eq!((m.soft, m.idle), (0, 100));
        assert_eq!(m.level, Some(Level::Ok));
    }

    #[test]
    fn flink_1_13_back_pressured_time_excludes_what_the_samples_saw_blocked() {
        // 600 ms/s back-pressured overall, of which the samples saw 40% (400 ms/s) hard.
        let metrics = SubtaskMetrics {
            back_pressured_ms: Some(600.0),
            idle_ms: Some(200.0),
            ..Default::default()
        };
        let m = merge_subtask(&counts(40, 40, 20), &metrics);
        // Soft 200 vs idle 200: half of the 40 waiting samples.
        assert_eq!((m.soft, m.idle), (20, 20));
        assert!((m.ratio - 0.6).abs() < 1e-9);
        assert_eq!(m.level, Some(Level::High));
        assert_eq!(m.split, SplitRule::BackPressuredIdleTime);
    }

    #[test]
    fn a_sliver_of_waiting_time_does_not_split_the_waiting_samples() {
        // Measured on Flink 2.3, a hard-back-pressured source in its first seconds.
        let metrics = SubtaskMetrics {
            idle_ms: Some(22.0),
            soft_back_pressured_ms: Some(0.0),
            hard_back_pressured_ms: Some(1000.0),
            out_pool_usage: Some(1.0),
            ..Default::default()
        };
        let m = merge_subtask(&counts(20, 20, 0), &metrics);
        assert_eq!((m.soft, m.idle), (20, 0));
        assert_eq!(m.split, SplitRule::OutputExhausted);
        assert_eq!(m.level, Some(Level::High));
        // The same sliver on a task whose output is free: idle, as before.
        let free = SubtaskMetrics {
            out_pool_usage: Some(0.1),
            ..metrics
        };
        let m = merge_subtask(&counts(20, 20, 0), &free);
        assert_eq!(
            (m.soft, m.idle, m.split),
            (0, 20, SplitRule::OutputAvailable)
        );
        // Enough waiting for the split to speak: it does.
        let waits = SubtaskMetrics {
            idle_ms: Some(150.0),
            ..metrics
        };
        let m = merge_subtask(&counts(20, 20, 0), &waits);
        assert_eq!((m.soft, m.idle, m.split), (0, 20, SplitRule::SoftIdleTime));
    }

    #[test]
    fn exhausted_output_pool_means_back_pressured() {
        let full = SubtaskMetrics {
            out_pool_usage: Some(1.0),
            ..Default::default()
        };
        let m = merge_subtask(&counts(0, 30, 70), &full);
        assert_eq!((m.soft, m.idle), (30, 0));
        assert_eq!(m.level, Some(Level::Low));
        assert_eq!(m.split, SplitRule::OutputExhausted);

        let flag = SubtaskMetrics {
            is_back_pressured: Some(true),
            out_pool_usage: Some(0.4),
            ..Default::default()
        };
        assert_eq!(merge_subtask(&counts(0, 30, 70), &flag).soft, 30);

        let free = SubtaskMetrics {
            out_pool_usage: Some(0.2),
            is_back_pressured: Some(false),
            ..Default::default()
        };
        let m = merge_subtask(&counts(0, 30, 70), &free);
        assert_eq!((m.soft, m.idle), (0, 30));
        assert_eq!(m.split, SplitRule::OutputAvailable);
    }

    #[test]
    fn no_samples_has_no_level() {
        let m = merge_subtask(&SampleCounts::default(), &SubtaskMetrics::default());
        assert!(m.ratio.is_nan());
        assert_eq!(m.level, None);
        assert_eq!(m.split, SplitRule::NothingWaiting);
    }

    #[test]
    fn vertex_takes_its_worst_subtask() {
        let ok = merge_subtask(&counts(0, 0, 100), &SubtaskMetrics::default());
        let high = merge_subtask(&counts(80, 0, 20), &SubtaskMetrics::default());
        let none = merge_subtask(&SampleCounts::default(), &SubtaskMetrics::default());
        let (level, ratio) = vertex_level(&[ok, high, none]);
        assert_eq!(level, Some(Level::High));
        assert!((ratio - 0.8).abs() < 1e-9);
        assert_eq!(vertex_level(&[none]).0, None);
    }

    #[test]
    fn counts_are_conserved_and_ratios_bounded() {
        let metric_choices = [None, Some(0.0), Some(10.0), Some(500.0), Some(1000.0)];
        for (b, w, u) in [
            (0, 0, 0),
            (0, 7, 0),
            (3, 5, 11),
            (100, 0, 0),
            (1, 99, 1),
            (33, 33, 34),
        ] {
            for soft in metric_choices {
                for idle in metric_choices {
                    for out in [None, Some(0.5), Some(1.0), Some(2.7)] {
                        let c = counts(b, w, u);
                        let m = merge_subtask(
                            &c,
                            &SubtaskMetrics {
                                soft_back_pressured_ms: soft,
                                idle_ms: idle,
                                out_pool_usage: out,
                                ..Default::default()
                            },
                        );
                        assert_eq!(m.blocked + m.soft + m.idle + m.busy, c.samples);
                        if c.samples > 0 {
                            assert!((0.0..=1.0).contains(&m.ratio), "{m:?}");
                            assert!(m.level.is_some());
                        }
                    }
                }
            }
        }
    }
}
