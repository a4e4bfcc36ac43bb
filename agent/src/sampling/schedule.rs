//! When to take the next thread dump of one JVM, and which sampling windows it serves. Pure: time
//! is a [`Duration`] since an origin the caller picks, and nothing here sleeps or dumps.
//!
//! A JVM's task threads are grouped by their sampling settings (a job's own, or the default).
//! Each distinct settings value is a *group* with its own windows: a window takes `samples` dumps
//! `delay_ms` apart, on an absolute schedule (sample *i* is due at `start + i × delay`, so a slow
//! dump delays the next one, never the rest of the window), and windows start every
//! `interval_ms`. One dump serves every window that is due at that moment, within
//! [`Scheduler::tolerance`], so groups that happen to line up share their dumps.
//!
//! A group the plan no longer wants finishes the window it has in progress and then goes away; a
//! new group opens its first window at once.

use std::time::Duration;

use bpmon_proto::{PlanIndex, SamplingSettings, TaskIdentity};

/// Time since the scheduler's origin.
pub type Time = Duration;

/// How early a dump may serve a sample that is due a little later, so that windows due at
/// nearly the same moment share one dump.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_millis(5);

/// A window, unique within one scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowId(pub u64);

/// One window a dump serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub window: WindowId,
    pub settings: SamplingSettings,
    /// 0-based sample index within the window.
    pub index: u32,
    /// The window opens with this dump.
    pub opens: bool,
    /// The window is complete with this dump.
    pub closes: bool,
}

#[derive(Debug, Clone)]
struct OpenWindow {
    id: WindowId,
    start: Time,
    /// Sample slots served so far.
    served: u32,
}

#[derive(Debug, Clone)]
struct Group {
    settings: SamplingSettings,
    /// Whether the current plan still has threads on these settings. A group that is not
    /// wanted finishes its open window, then is removed.
    wanted: bool,
    /// When the group's next window is scheduled to start.
    next_start: Time,
    open: Option<OpenWindow>,
}

impl Group {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.settings.delay_ms)
    }

    fn interval(&self) -> Duration {
        // validate() keeps it above zero; never loop forever on a bad value anyway.
        Duration::from_millis(self.settings.interval_ms.max(1))
    }

    /// When this group next needs a dump.
    fn next_due(&self) -> Option<Time> {
        match &self.open {
            Some(w) => Some(w.start + self.delay() * w.served),
            None if self.wanted => Some(self.next_start),
            None => None,
        }
    }
}

/// The windows of one JVM.
#[derive(Debug, Clone)]
pub struct Scheduler {
    groups: Vec<Group>,
    next_id: u64,
    tolerance: Duration,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(DEFAULT_TOLERANCE)
    }
}

impl Scheduler {
    pub fn new(tolerance: Duration) -> Self {
        Scheduler {
            groups: Vec::new(),
            next_id: 1,
            tolerance,
        }
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Sets the settings groups the JVM's threads need now. A new group's first window is due
    /// at `now`; a group no longer listed finishes its open window and then goes away; a group
    /// listed again keeps its schedule.
    pub fn set_wanted(&mut self, now: Time, wanted: &[SamplingSettings]) {
        for g in &mut self.groups {
            g.wanted = wanted.contains(&g.settings);
        }
        for s in wanted {
            if !self.groups.iter().any(|g| g.settings == *s) {
                self.groups.push(Group {
                    settings: *s,
                    wanted: true,
                    next_start: now,
                    open: None,
                });
            }
        }
        self.groups.retain(|g| g.wanted || g.open.is_some());
    }

    /// Settings of every group, wanted or finishing, in the order they were added.
    pub fn groups(&self) -> Vec<SamplingSettings> {
        self.groups.iter().map(|g| g.settings).collect()
    }

    /// Windows in progress: (id, settings, samples served).
    pub fn open_windows(&self) -> Vec<(WindowId, SamplingSettings, u32)> {
        self.groups
            .iter()
            .filter_map(|g| g.open.as_ref().map(|w| (w.id, g.settings, w.served)))
            .collect()
    }

    /// When the next dump is due; `None` when no group wants one.
    pub fn next_due(&self) -> Option<Time> {
        self.groups.iter().filter_map(Group::next_due).min()
    }

    /// The windows a dump taken at `now` serves: every open window whose next sample is due by
    /// `now + tolerance`, and every window whose start is due by then (it opens with this dump).
    /// Each served window advances by one sample; complete ones close, and a group that was
    /// no longer wanted goes away with its last window.
    pub fn take(&mut self, now: Time) -> Vec<Slot> {
        let horizon = now + self.tolerance;
        let mut slots = Vec::new();
        for g in &mut self.groups {
            if g.open.is_none() && g.wanted && g.next_start <= horizon {
                // Open on the absolute grid when on time; when the worker is late by more than a
                // sample's delay (a slow dump, a late wake-up), re-anchor at `now` rather than
                // rushing through overdue samples.
                let late_by = now.saturating_sub(g.next_start);
                let start = if late_by <= g.delay().max(self.tolerance) {
                    g.next_start
                } else {
                    now
                };
                // The next start stays on the grid; slots missed entirely are skipped.
                let interval = g.interval();
                let mut next = g.next_start + interval;
                while next <= start {
                    next += interval;
                }
                g.next_start = next;
                g.open = Some(OpenWindow {
                    id: WindowId(self.next_id),
                    start,
                    served: 0,
                });
                self.next_id += 1;
            }
            let delay = g.delay();
            let samples = g.settings.samples;
            let Some(w) = g.open.as_mut() else {
                continue;
            };
            if w.start + delay * w.served > horizon {
                continue;
            }
            let index = w.served;
            w.served += 1;
            let closes = w.served >= samples;
            slots.push(Slot {
                window: w.id,
                settings: g.settings,
                index,
                opens: index == 0,
                closes,
            });
            if closes {
                g.open = None;
            }
        }
        self.groups.retain(|g| g.wanted || g.open.is_some());
        slots
    }

    /// Ends a window before its last sample (its JVM is gone, or it failed too often). Returns
    /// the samples it had served, or `None` if it was not open.
    pub fn abort(&mut self, id: WindowId) -> Option<u32> {
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.open.as_ref().is_some_and(|w| w.id == id))?;
        let served = g.open.take().map(|w| w.served);
        self.groups.retain(|g| g.wanted || g.open.is_some());
        served
    }

    /// Ends every open window (the agent is stopping): (id, settings, samples served).
    pub fn abort_all(&mut self) -> Vec<(WindowId, SamplingSettings, u32)> {
        let open = self.open_windows();
        for g in &mut self.groups {
            g.open = None;
        }
        self.groups.retain(|g| g.wanted);
        open
    }
}

/// The settings groups a JVM needs: one per distinct settings value among its task threads,
/// each thread on its job's settings or `default`. A JVM without task threads keeps the default
/// group, so that its dumps notice new tasks and its windows say it is idle. Sorted, no
/// duplicates.
pub fn wanted_groups(
    threads: &[TaskIdentity],
    plan: Option<&PlanIndex>,
    default: SamplingSettings,
) -> Vec<SamplingSettings> {
    let mut out: Vec<SamplingSettings> = threads
        .iter()
        .map(|t| settings_of(t, plan, default))
        .collect();
    if out.is_empty() {
        out.push(default);
    }
    out.sort_by_key(|s| (s.interval_ms, s.delay_ms, s.samples));
    out.dedup();
    out
}

/// The settings of one task thread.
pub fn settings_of(
    thread: &TaskIdentity,
    plan: Option<&PlanIndex>,
    default: SamplingSettings,
) -> SamplingSettings {
    match plan {
        Some(p) => p.settings_for(thread, default),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpmon_proto::{JvmPlan, TaskPlan};

    fn ms(v: u64) -> Time {
        Duration::from_millis(v)
    }

    fn s(samples: u32, delay_ms: u64, interval_ms: u64) -> SamplingSettings {
        SamplingSettings {
            samples,
            delay_ms,
            interval_ms,
            stacks_every: 1,
        }
    }

    /// Runs the scheduler as a worker would, every dump taking `dump_ms`, until `until`:
    /// (time of the dump, the slots it served).
    fn run(sched: &mut Scheduler, from: Time, until: Time, dump_ms: u64) -> Vec<(Time, Vec<Slot>)> {
        let mut now = from;
        let mut out = Vec::new();
        while let Some(due) = sched.next_due() {
            now = now.max(due);
            if now >= until {
                break;
            }
            let slots = sched.take(now);
            assert!(!slots.is_empty(), "a due dump serves something at {now:?}");
            out.push((now, slots));
            now += ms(dump_ms);
        }
        out
    }

    fn dumps_of(trace: &[(Time, Vec<Slot>)], w: WindowId) -> Vec<(u64, u32)> {
        trace
            .iter()
            .filter_map(|(t, slots)| {
                slots
                    .iter()
                    .find(|s| s.window == w)
                    .map(|s| (t.as_millis() as u64, s.index))
            })
            .collect()
    }

    #[test]
    fn one_group_takes_its_samples_on_an_absolute_grid_and_windows_every_interval() {
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[s(3, 100, 1_000)]);
        // Each dump takes 30 ms: the grid, not the dump's end, sets the next one.
        let trace = run(&mut sched, ms(0), ms(2_500), 30);
        let times: Vec<u64> = trace.iter().map(|(t, _)| t.as_millis() as u64).collect();
        assert_eq!(
            times,
            vec![0, 100, 200, 1_000, 1_100, 1_200, 2_000, 2_100, 2_200]
        );
        let first = trace[0].1[0];
        assert!(first.opens && !first.closes);
        assert_eq!(
            dumps_of(&trace, first.window),
            vec![(0, 0), (100, 1), (200, 2)]
        );
        assert!(trace[2].1[0].closes);
        let second = trace[3].1[0];
        assert_ne!(second.window, first.window);
        assert!(second.opens);
    }

    #[test]
    fn a_slow_dump_delays_only_the_next_sample() {
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[s(4, 100, 10_000)]);
        let mut times = Vec::new();
        let mut now = ms(0);
        for took in [250, 10, 10, 10] {
            now = now.max(sched.next_due().unwrap());
            let slots = sched.take(now);
            assert_eq!(slots.len(), 1);
            times.push(now.as_millis() as u64);
            now += ms(took);
        }
        // Sample 1 was due at 100 but the first dump ran until 250; sample 2, overdue too,
        // follows at once; sample 3 is back on the grid.
        assert_eq!(times, vec![0, 250, 260, 300]);
        assert_eq!(sched.open_windows(), vec![]);
        // And the next window is on the interval grid.
        assert_eq!(sched.next_due(), Some(ms(10_000)));
    }

    #[test]
    fn two_groups_share_the_dumps_that_fall_due_together() {
        let fast = s(5, 100, 1_000);
        let slow = s(3, 200, 2_000);
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[slow, fast]);
        let trace = run(&mut sched, ms(0), ms(2_450), 2);
        let times: Vec<u64> = trace.iter().map(|(t, _)| t.as_millis() as u64).collect();
        // fast: 0,100,200,300,400 and 1000..1400 and 2000..2400; slow: 0,200,400 and 2000,2200,2400.
        assert_eq!(
            times,
            vec![
                0, 100, 200, 300, 400, 1_000, 1_100, 1_200, 1_300, 1_400, 2_000, 2_100, 2_200,
                2_300, 2_400
            ]
        );
        let served = |t: u64| -> Vec<SamplingSettings> {
            trace
                .iter()
                .find(|(at, _)| at.as_millis() as u64 == t)
                .map(|(_, slots)| slots.iter().map(|s| s.settings).collect())
                .unwrap_or_default()
        };
        assert_eq!(served(0).len(), 2, "both windows open with one dump");
        assert_eq!(served(100), vec![fast]);
        assert_eq!(served(200).len(), 2);
        assert_eq!(served(1_100), vec![fast]);
        assert_eq!(served(2_200).len(), 2);
        // Each window got exactly its own samples.
        let mut per_window: std::collections::BTreeMap<WindowId, (SamplingSettings, u32)> =
            Default::default();
        for (_, slots) in &trace {
            for sl in slots {
                per_window.entry(sl.window).or_insert((sl.settings, 0)).1 += 1;
            }
        }
        let complete: Vec<_> = per_window
            .values()
            .filter(|(st, n)| *n == st.samples)
            .collect();
        assert_eq!(complete.len(), 5, "{per_window:?}");
    }

    #[test]
    fn windows_due_within_the_tolerance_share_a_dump() {
        let mut sched = Scheduler::new(ms(5));
        sched.set_wanted(ms(0), &[s(2, 100, 10_000)]);
        sched.take(ms(0));
        // A second group appears 97 ms in: its first sample is due at 97, the first group's
        // second at 100. One dump at 97 serves both.
        sched.set_wanted(ms(97), &[s(2, 100, 10_000), s(3, 50, 10_000)]);
        let slots = sched.take(ms(97));
        assert_eq!(slots.len(), 2, "{slots:?}");
        // 10 ms is outside the tolerance: the fast group's next sample (147) is not served at 130.
        assert_eq!(sched.next_due(), Some(ms(147)));
        assert!(sched.take(ms(130)).is_empty());
    }

    #[test]
    fn a_settings_change_starts_the_new_group_at_once_and_lets_the_old_window_finish() {
        let old = s(4, 100, 1_000);
        let new = s(2, 50, 500);
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[old]);
        let first = sched.take(ms(0));
        sched.take(ms(100));
        // The plan changes mid-window.
        sched.set_wanted(ms(150), &[new]);
        assert_eq!(
            sched.next_due(),
            Some(ms(150)),
            "the new group is due at once"
        );
        let trace = run(&mut sched, ms(150), ms(1_300), 1);
        let times: Vec<(u64, Vec<SamplingSettings>)> = trace
            .iter()
            .map(|(t, sl)| {
                (
                    t.as_millis() as u64,
                    sl.iter().map(|x| x.settings).collect(),
                )
            })
            .collect();
        assert_eq!(
            times,
            vec![
                (150, vec![new]),
                (200, vec![old, new]),
                (300, vec![old]),
                (650, vec![new]),
                (700, vec![new]),
                (1_150, vec![new]),
                (1_200, vec![new]),
            ]
        );
        // The old window completed with all its samples, and no other old window started.
        assert_eq!(dumps_of(&trace, first[0].window), vec![(200, 2), (300, 3)]);
        assert_eq!(sched.groups(), vec![new]);
    }

    #[test]
    fn a_group_wanted_again_keeps_its_grid() {
        let a = s(2, 100, 1_000);
        let b = s(1, 0, 300);
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[a]);
        sched.take(ms(0));
        sched.set_wanted(ms(50), &[b]);
        sched.set_wanted(ms(60), &[a, b]);
        let trace = run(&mut sched, ms(60), ms(1_050), 1);
        let a_dumps: Vec<u64> = trace
            .iter()
            .filter(|(_, sl)| sl.iter().any(|x| x.settings == a))
            .map(|(t, _)| t.as_millis() as u64)
            .collect();
        assert_eq!(a_dumps, vec![100, 1_000]);
    }

    #[test]
    fn a_late_start_reanchors_instead_of_rushing_through_overdue_samples() {
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[s(3, 100, 1_000)]);
        // The worker was stuck (a dump of another window timed out) until 5_430.
        let slots = sched.take(ms(5_430));
        assert!(slots[0].opens);
        assert_eq!(sched.next_due(), Some(ms(5_530)));
        sched.take(ms(5_530));
        sched.take(ms(5_630));
        // The grid is kept for later windows: 6_000 is the next slot after the late start.
        assert_eq!(sched.next_due(), Some(ms(6_000)));
    }

    #[test]
    fn aborting_closes_windows_and_retired_groups_go_away() {
        let a = s(5, 100, 1_000);
        let b = s(5, 100, 2_000);
        let mut sched = Scheduler::default();
        sched.set_wanted(ms(0), &[a, b]);
        let slots = sched.take(ms(0));
        sched.take(ms(100));
        sched.set_wanted(ms(120), &[a]);
        let wb = slots.iter().find(|x| x.settings == b).unwrap().window;
        assert_eq!(sched.abort(wb), Some(2));
        assert_eq!(sched.abort(wb), None);
        assert_eq!(sched.groups(), vec![a]);
        let left = sched.abort_all();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].1, left[0].2), (a, 2));
        assert!(sched.open_windows().is_empty());
        // Still wanted: its next window is on its grid.
        assert_eq!(sched.next_due(), Some(ms(1_000)));
    }

    #[test]
    fn groups_follow_the_plan_and_the_default_stays_for_an_empty_jvm() {
        let id = |task: &str, subtask| TaskIdentity {
            task: task.into(),
            subtask,
            parallelism: 2,
            attempt: Some(0),
        };
        let default = SamplingSettings::default();
        let fast = s(10, 20, 5_000);
        let plan = JvmPlan {
            pid: 1,
            taskmanager_id: None,
            why: None,
            tasks: vec![TaskPlan {
                job_id: "j".into(),
                identity: id("Map", 0),
                settings: fast,
            }],
        };
        let plan = PlanIndex::new(&plan);
        assert_eq!(
            wanted_groups(
                &[id("Map", 0), id("Map", 1), id("Sink", 0)],
                Some(&plan),
                default
            ),
            vec![fast, default]
        );
        assert_eq!(
            wanted_groups(&[id("Map", 0)], Some(&plan), default),
            vec![fast]
        );
        assert_eq!(wanted_groups(&[id("Map", 0)], None, default), vec![default]);
        assert_eq!(wanted_groups(&[], Some(&plan), default), vec![default]);
    }
}
