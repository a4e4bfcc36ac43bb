//! A sampling worker: one TaskManager JVM's windows, on a thread of its own (a dump blocks).
//!
//! It groups the JVM's task threads by their settings (the collector's plan, else the default)
//! and runs each group's windows on the [`Scheduler`]'s timetable; one dump serves every window
//! due at that moment. Each finished window becomes a [`SampleReport`] sent to the batcher. The
//! supervisor talks to it with [`Control`] orders; it ends with a [`WorkerEnd`].

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpmon_proto::inprocess::MAX_RUN_SAMPLES;
use bpmon_proto::{JvmPlan, PlanIndex, SampleReport, SamplingSettings, TaskIdentity};
use bpmon_stacks::classify::Classifier;
use tokio::sync::mpsc as tmpsc;

use crate::backends::attach::{AttachError, AttachOptions};
use crate::backends::jvmti::{JvmtiError, JvmtiOptions};
use crate::backends::{Backend, BackendKind, DumpError, DumpThread, Roster, SampleMode};
use crate::discovery::hsperf::SafepointProbe;
use crate::discovery::{JvmProcess, ProcFs};
use crate::metrics::AgentMetrics;
use crate::resources::{ResourceProbe, ResourceReading};
use crate::sampling::schedule::{self, Scheduler, Slot, WindowId};
use crate::sampling::{take_run, take_sample, Progress, TakenDump, Window};

/// What a worker is told.
#[derive(Debug)]
pub(super) enum Control {
    /// New plan for this JVM (`None`: the plan does not place it) and the default settings.
    Plan {
        plan: Option<JvmPlan>,
        default: SamplingSettings,
    },
    /// Fresh discovery data (its listening ports may have changed).
    Jvm(Box<JvmProcess>),
    /// End every window now and exit.
    Stop(StopReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    /// The agent is stopping.
    Shutdown,
    /// Discovery no longer sees the JVM.
    Vanished,
}

/// How a worker ended.
#[derive(Debug)]
pub(super) enum WorkerEnd {
    /// Told to stop.
    Stopped,
    /// The JVM went away.
    Gone,
    /// It could not sample the JVM (a permanent error), after `dumps` successful dumps.
    Failed { error: String, dumps: u64 },
}

/// A thread's key within a window: its name and JVM thread id.
type ThreadKey = (String, Option<u64>);

fn key_of(t: &DumpThread) -> ThreadKey {
    (t.name.clone(), t.java_id)
}

struct OpenWindow {
    window: Window,
    settings: SamplingSettings,
    /// Threads counted so far: a thread whose settings change mid-window stays in the window it
    /// started in until that window ends (and joins its new group's windows too).
    members: HashSet<ThreadKey>,
    /// Which threads of a roster of timer states the window counts, for the roster and plan it
    /// was worked out for.
    states_mask: Option<(Arc<Roster>, u64, Vec<bool>)>,
}

/// Everything a worker needs, given by the supervisor.
pub(super) struct Worker {
    pub(super) jvm: JvmProcess,
    pub(super) backend: BackendKind,
    pub(super) attach: AttachOptions,
    pub(super) jvmti: JvmtiOptions,
    pub(super) proc: ProcFs,
    pub(super) classifier: Arc<Classifier>,
    pub(super) top_frames: usize,
    pub(super) plan: Option<JvmPlan>,
    pub(super) default: SamplingSettings,
    pub(super) reports: tmpsc::UnboundedSender<SampleReport>,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) metrics: Arc<AgentMetrics>,
}

/// A running worker's state: its open backend, the timetable and the windows it keeps.
struct Session {
    backend: Backend,
    probe: Option<SafepointProbe>,
    /// The timetable's zero.
    origin: Instant,
    sched: Scheduler,
    windows: HashMap<WindowId, OpenWindow>,
    /// The task threads of the last good dump.
    threads: Vec<TaskIdentity>,
    /// The roster of timer states `threads` was last taken from (unchanged: nothing to replan).
    threads_roster: Option<Arc<Roster>>,
    /// The plan, indexed; `plan_epoch` counts its changes.
    index: Option<PlanIndex>,
    plan_epoch: u64,
    /// Each thread's settings of the last roster of timer states, under `plan_epoch`.
    roster_settings: Option<(Arc<Roster>, u64, Vec<SamplingSettings>)>,
    /// Good dumps so far.
    dumps: u64,
    /// The JVM's resource probe, and when it was opened: reopened when the JVM moved to
    /// another cgroup, and every [`PROBE_REOPEN`] (its perf data file may have been replaced).
    resources: Option<(Instant, Arc<ResourceProbe>)>,
    /// The resource reading each settings group's last window closed with: the next window of
    /// a continuous group starts from it.
    closing: Vec<(SamplingSettings, Arc<ResourceProbe>, ResourceReading)>,
}

impl Session {
    /// The resource probe for a window of `settings` opening now, and the reading it starts
    /// from: the JVM's probe (reopened when the JVM moved to another cgroup or every
    /// [`PROBE_REOPEN`]); a window that follows its group's last one at once starts from that
    /// one's closing reading.
    fn resources_for(
        &mut self,
        jvm: &JvmProcess,
        settings: SamplingSettings,
    ) -> (Arc<ResourceProbe>, Option<ResourceReading>) {
        let probe = match &self.resources {
            Some((opened, probe)) if opened.elapsed() < PROBE_REOPEN && probe.still_placed() => {
                probe.clone()
            }
            _ => {
                let probe = Arc::new(ResourceProbe::open(jvm));
                self.resources = Some((Instant::now(), probe.clone()));
                probe
            }
        };
        let delay = Duration::from_millis(settings.delay_ms);
        let start = self
            .closing
            .iter()
            .position(|(s, ..)| *s == settings)
            .map(|i| self.closing.swap_remove(i))
            .filter(|(_, p, r)| Arc::ptr_eq(p, &probe) && r.at.elapsed() <= delay * 2)
            .map(|(_, _, r)| r);
        (probe, start)
    }
}

/// How long one resource probe serves a JVM's windows.
const PROBE_REOPEN: Duration = Duration::from_secs(60);

impl Worker {
    /// Samples the JVM until told to stop, the JVM goes away, or a permanent error.
    pub(super) fn run(mut self) -> WorkerEnd {
        let backend = match self.open_backend() {
            Ok(b) => b,
            Err(e) => return self.cannot_open(e),
        };
        let mut s = self.start(backend);
        loop {
            if let Some(end) = self.obey_until_due(&mut s) {
                return end;
            }
            let slots = s.sched.take(s.origin.elapsed());
            if slots.is_empty() {
                continue;
            }
            if let Some(end) = self.serve(&mut s, &slots) {
                return end;
            }
        }
    }

    /// The configured backend; for the in-process one, the attach backend when the JVM cannot
    /// run it (an old JDK, dynamic loading forbidden, no library), said once in the log and
    /// counted as that failure.
    fn open_backend(&self) -> Result<Backend, DumpError> {
        let open = |kind| Backend::open(kind, &self.jvm, &self.proc, self.attach, &self.jvmti);
        match open(self.backend) {
            Err(e)
                if self.backend == BackendKind::Jvmti
                    && !matches!(
                        e,
                        DumpError::Jvmti(JvmtiError::Attach(AttachError::Gone { .. }))
                    ) =>
            {
                self.metrics.dump_failed(e.reason());
                tracing::warn!(
                    pid = self.jvm.pid,
                    error = %e,
                    "in-process sampler unavailable; sampling this JVM with the attach backend"
                );
                open(BackendKind::Attach)
            }
            other => {
                if let Ok(Backend::Jvmti(client)) = &other {
                    if let Some(h) = client.hello() {
                        tracing::info!(
                            pid = self.jvm.pid,
                            loaded = client.loaded_it(),
                            library = %h.library_version,
                            vm = %h.vm_version,
                            starts = h.starts,
                            "sampling with the in-process sampler"
                        );
                    }
                }
                other
            }
        }
    }

    /// No backend: ends the worker, and (unless the JVM is gone) says why in a report too, so
    /// the collector shows why this JVM has no samples.
    fn cannot_open(&self, e: DumpError) -> WorkerEnd {
        self.metrics.dump_failed(e.reason());
        let end = ended_by(&e, 0);
        if !matches!(end, WorkerEnd::Gone) {
            let mut w = Window::new(
                &self.jvm,
                self.default.samples,
                Duration::from_millis(self.default.delay_ms),
                self.top_frames,
            );
            w.error(format!("cannot sample JVM pid {}: {e}", self.jvm.pid));
            self.send(w.finish(&self.jvm, self.backend));
        }
        end
    }

    /// A fresh session: the timetable of the settings known before the first dump.
    fn start(&self, backend: Backend) -> Session {
        let probe = self
            .jvm
            .perf_file
            .as_deref()
            .and_then(|p| SafepointProbe::open(p).ok());
        let mut s = Session {
            backend,
            probe,
            origin: Instant::now(),
            sched: Scheduler::default(),
            windows: HashMap::new(),
            threads: Vec::new(),
            threads_roster: None,
            index: self.plan.as_ref().map(PlanIndex::new),
            plan_epoch: 0,
            roster_settings: None,
            dumps: 0,
            resources: None,
            closing: Vec::new(),
        };
        self.replan(&mut s, Duration::ZERO);
        s
    }

    /// Tells the timetable which settings groups the known threads want now, and the tasks the
    /// plan places on this JVM: a job deployed since the last dump gets its own schedule at
    /// once (its first sample finds its threads) instead of waiting for the next window of a
    /// group that already runs, up to a minute with the default settings.
    fn replan(&self, s: &mut Session, now: Duration) {
        let planned = self.plan.iter().flat_map(|p| &p.tasks);
        let threads: Vec<TaskIdentity> = s
            .threads
            .iter()
            .cloned()
            .chain(planned.map(|t| t.identity.clone()))
            .collect();
        let wanted = schedule::wanted_groups(&threads, s.index.as_ref(), self.default);
        s.sched.set_wanted(now, &wanted);
    }

    /// Carries out orders until the next dump is due; `Some` when told to stop.
    fn obey_until_due(&mut self, s: &mut Session) -> Option<WorkerEnd> {
        loop {
            let order = match self.next_order(s) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return None,
                // The supervisor is gone: the agent is stopping.
                Err(RecvTimeoutError::Disconnected) => Control::Stop(StopReason::Shutdown),
            };
            match order {
                Control::Plan { plan, default } => {
                    s.index = plan.as_ref().map(PlanIndex::new);
                    s.plan_epoch += 1;
                    self.plan = plan;
                    self.default = default;
                    self.replan(s, s.origin.elapsed());
                }
                Control::Jvm(j) => self.jvm = *j,
                Control::Stop(reason) => {
                    let why = match reason {
                        StopReason::Shutdown => "agent stopped",
                        StopReason::Vanished => "JVM no longer running: stopped",
                    };
                    self.end_all(s, |served, samples| {
                        format!("{why} after {served} of {samples} samples")
                    });
                    return Some(WorkerEnd::Stopped);
                }
            }
        }
    }

    /// The next order, waiting no longer than until the next due dump (`Timeout`: it is due).
    fn next_order(&self, s: &Session) -> Result<Control, RecvTimeoutError> {
        let Some(due) = s.sched.next_due() else {
            return self
                .control
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected);
        };
        let now = s.origin.elapsed();
        if due > now {
            return self.control.recv_timeout(due - now);
        }
        self.control.try_recv().map_err(|e| match e {
            mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
            mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
        })
    }

    /// Takes one dump for the `slots` due now and records it in their windows; `Some` when a
    /// permanent error ends the worker.
    fn serve(&self, s: &mut Session, slots: &[Slot]) -> Option<WorkerEnd> {
        for slot in slots.iter().filter(|slot| slot.opens) {
            let delay = Duration::from_millis(slot.settings.delay_ms);
            let (probe, start) = s.resources_for(&self.jvm, slot.settings);
            s.windows.insert(
                slot.window,
                OpenWindow {
                    window: Window::with_probe(
                        &self.jvm,
                        slot.settings.samples,
                        delay,
                        self.top_frames,
                        probe,
                        start,
                    ),
                    settings: slot.settings,
                    members: HashSet::new(),
                    states_mask: None,
                },
            );
        }
        // Stacks when any window due wants them at this sample; else Flink's timers, which only
        // the in-process backend reads: a dump backend skips the sample.
        let stacks = slots
            .iter()
            .any(|slot| slot.settings.reads_stacks(slot.index));
        if !stacks && !s.backend.samples_without_stacks() {
            self.skip(s, slots);
            return None;
        }
        // A window's exact totals run from its first sample to its last.
        let totals = slots.iter().any(|slot| slot.opens || slot.closes);
        let mode = if !stacks {
            SampleMode::Timers { totals }
        } else if slots.iter().all(|slot| slot.settings.stacks_every > 1) {
            // Only windows that watch by timers are due: the stacks of busy tasks are enough.
            SampleMode::BusyStacks { totals }
        } else {
            SampleMode::Stacks
        };
        if matches!(mode, SampleMode::Timers { .. }) && s.backend.takes_runs() {
            // The timers-only samples up to the next stack sample or window edge, as one run.
            let run = plan_run(&mut s.sched, s.origin.elapsed(), slots, totals);
            if run.len() > 1 {
                let at: Vec<(Duration, bool)> = run.iter().map(|(d, t, _)| (*d, *t)).collect();
                let dumps = take_run(s.probe.as_ref(), &mut s.backend, &at);
                for (dump, (_, _, slots)) in dumps.iter().zip(&run) {
                    if let Some(end) = self.taken(s, slots, dump) {
                        return Some(end);
                    }
                }
                return None;
            }
        }
        let dump = take_sample(s.probe.as_ref(), &mut s.backend, &self.classifier, mode);
        self.taken(s, slots, &dump)
    }

    /// Counts a sample taken for `slots`, records it in their windows and replans when its
    /// threads changed; `Some` when a permanent error ends the worker.
    fn taken(&self, s: &mut Session, slots: &[Slot], dump: &TakenDump) -> Option<WorkerEnd> {
        match &dump.result {
            Ok(_) => self.metrics.dump_taken(dump.took + dump.parse),
            Err(e) => self.metrics.dump_failed(e.reason()),
        }
        self.record(s, slots, dump);
        match &dump.result {
            Ok(d) => {
                s.dumps += 1;
                let roster = d.states.as_ref().map(|st| &st.roster);
                let unchanged = matches!((roster, &s.threads_roster), (Some(a), Some(b)) if Roster::same(a, b))
                    && d.threads_all_listed();
                if !unchanged {
                    s.threads = d
                        .threads
                        .iter()
                        .filter_map(DumpThread::identity)
                        .chain(
                            roster
                                .into_iter()
                                .flat_map(|r| r.threads.iter().filter_map(|(_, id)| id.clone())),
                        )
                        .collect();
                    s.threads_roster = roster.cloned();
                    self.replan(s, s.origin.elapsed());
                }
                None
            }
            Err(e) if e.is_permanent() => {
                let message = e.to_string();
                self.end_all(s, |served, samples| {
                    format!("stopped after {served} of {samples} samples: {message}")
                });
                Some(ended_by(e, s.dumps))
            }
            Err(_) => None,
        }
    }

    /// Records the dump in each slot's window (each counting the threads of its settings
    /// group), and sends the windows it finished.
    fn record(&self, s: &mut Session, slots: &[Slot], dump: &TakenDump) {
        // Each task thread's settings, once per dump.
        let thread_settings: HashMap<ThreadKey, SamplingSettings> = match &dump.result {
            Ok(d) => d
                .threads
                .iter()
                .filter_map(|t| {
                    let id = t.identity()?;
                    Some((
                        key_of(t),
                        schedule::settings_of(&id, s.index.as_ref(), self.default),
                    ))
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        // The roster's settings, worked out once per roster and plan.
        let states = dump.result.as_ref().ok().and_then(|d| d.states.as_ref());
        if let Some(st) = states {
            let fresh = matches!(&s.roster_settings,
                Some((r, epoch, _)) if Roster::same(r, &st.roster) && *epoch == s.plan_epoch);
            if !fresh {
                let settings = st
                    .roster
                    .threads
                    .iter()
                    .map(|(_, id)| match id {
                        Some(id) => schedule::settings_of(id, s.index.as_ref(), self.default),
                        None => self.default,
                    })
                    .collect();
                s.roster_settings = Some((st.roster.clone(), s.plan_epoch, settings));
            }
        }
        for slot in slots {
            let Some(open) = s.windows.get_mut(&slot.window) else {
                continue;
            };
            let joining: Vec<ThreadKey> = thread_settings
                .iter()
                .filter(|(_, st)| **st == open.settings)
                .map(|(k, _)| k.clone())
                .collect();
            open.members.extend(joining);
            if let (Some(st), Some((_, _, settings))) = (states, &s.roster_settings) {
                let fresh = matches!(&open.states_mask,
                    Some((r, epoch, _)) if Roster::same(r, &st.roster) && *epoch == s.plan_epoch);
                if !fresh {
                    let mask = st
                        .roster
                        .threads
                        .iter()
                        .zip(settings)
                        .map(|((t, _), settings)| {
                            let key = key_of(t);
                            if *settings == open.settings {
                                open.members.insert(key);
                                true
                            } else {
                                open.members.contains(&key)
                            }
                        })
                        .collect();
                    open.states_mask = Some((st.roster.clone(), s.plan_epoch, mask));
                }
            }
            let mask = match (&open.states_mask, states) {
                (Some((_, _, mask)), Some(_)) => mask.as_slice(),
                _ => &[],
            };
            let members = &open.members;
            let progress = open
                .window
                .record(dump, |t| members.contains(&key_of(t)), mask);
            if slot.closes || progress == Progress::Stop {
                if !slot.closes {
                    s.sched.abort(slot.window);
                }
                if let Some(done) = s.windows.remove(&slot.window) {
                    let probe = done.window.probe().clone();
                    let (report, end) = done.window.finish_reading(&self.jvm, s.backend.kind());
                    s.closing
                        .retain(|(settings, ..)| *settings != done.settings);
                    s.closing.push((done.settings, probe, end));
                    self.send(report);
                }
            }
        }
    }

    /// Passes over a sample no dump is taken for: the windows it closes are sent as they are.
    fn skip(&self, s: &mut Session, slots: &[Slot]) {
        for slot in slots.iter().filter(|slot| slot.closes) {
            if let Some(done) = s.windows.remove(&slot.window) {
                self.send(done.window.finish(&self.jvm, s.backend.kind()));
            }
        }
    }

    /// Ends every open window with an error saying why, and sends their reports.
    fn end_all(&self, s: &mut Session, why: impl Fn(u32, u32) -> String) {
        let kind = s.backend.kind();
        for (id, _, served) in s.sched.abort_all() {
            if let Some(mut open) = s.windows.remove(&id) {
                open.window.error(why(served, open.settings.samples));
                self.send(open.window.finish(&self.jvm, kind));
            }
        }
        // Windows the scheduler no longer knew of (none expected): still reported.
        for (_, mut open) in s.windows.drain() {
            open.window
                .error(why(open.window.slots(), open.settings.samples));
            self.send(open.window.finish(&self.jvm, kind));
        }
    }

    fn send(&self, report: SampleReport) {
        if self.reports.send(report).is_err() {
            tracing::debug!(pid = self.jvm.pid, "report dropped: the batcher has ended");
        }
    }
}

/// Longest run of timers-only samples the library is asked for at once: the worker hears its
/// orders (a new plan, stop) only between requests.
const MAX_RUN_SPAN: Duration = Duration::from_secs(1);

/// The samples of a run that starts with the timers-only sample of `first` (due now): each one
/// after it the timetable has due within [`MAX_RUN_SPAN`], up to the first that reads stacks or
/// opens a window, and ending with one that closes a window (its report goes out at once). Each
/// entry: when, after the first; whether it reads the totals; the slots it serves (taken from
/// the timetable).
fn plan_run(
    sched: &mut Scheduler,
    start: Duration,
    first: &[Slot],
    totals: bool,
) -> Vec<(Duration, bool, Vec<Slot>)> {
    let mut run = vec![(Duration::ZERO, totals, first.to_vec())];
    if first.iter().any(|slot| slot.closes) {
        return run;
    }
    while run.len() < MAX_RUN_SAMPLES {
        let Some(due) = sched.next_due() else {
            break;
        };
        let offset = due.saturating_sub(start);
        if offset > MAX_RUN_SPAN {
            break;
        }
        let mut ahead = sched.clone();
        let next = ahead.take(due);
        let timers_only = !next.is_empty()
            && next
                .iter()
                .all(|slot| !slot.opens && !slot.settings.reads_stacks(slot.index));
        if !timers_only {
            break;
        }
        *sched = ahead;
        let closes = next.iter().any(|slot| slot.closes);
        run.push((offset, closes, next));
        if closes {
            break;
        }
    }
    run
}

fn ended_by(e: &DumpError, dumps: u64) -> WorkerEnd {
    match e {
        DumpError::Attach(AttachError::Gone { .. }) => WorkerEnd::Gone,
        _ => WorkerEnd::Failed {
            error: e.to_string(),
            dumps,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots of the timetable's next sample, as the worker's loop takes them.
    fn next(sched: &mut Scheduler) -> (Duration, Vec<Slot>) {
        let due = sched.next_due().expect("a sample due");
        (due, sched.take(due))
    }

    #[test]
    fn a_run_spans_the_timers_only_samples_up_to_the_next_stacks_or_window_edge() {
        // Continuous watching: 20 samples 100 ms apart, stacks at 0 and 10.
        let mut sched = Scheduler::default();
        sched.set_wanted(Duration::ZERO, &[SamplingSettings::CONTINUOUS]);
        let (_, first) = next(&mut sched);
        assert!(first[0].opens, "sample 0 opens the window with stacks");
        let (at, slots) = next(&mut sched);
        assert_eq!((at, slots[0].index), (Duration::from_millis(100), 1));
        let run = plan_run(&mut sched, at, &slots, false);
        // Samples 1..=9, 100 ms apart, none with totals; sample 10 reads stacks.
        let offsets: Vec<u64> = run.iter().map(|(d, _, _)| d.as_millis() as u64).collect();
        assert_eq!(offsets, (0..9).map(|i| i * 100).collect::<Vec<_>>());
        assert!(run.iter().all(|(_, totals, _)| !totals));
        let indices: Vec<u32> = run.iter().map(|(_, _, s)| s[0].index).collect();
        assert_eq!(indices, (1..=9).collect::<Vec<_>>());
        let (at, slots) = next(&mut sched);
        assert_eq!((at, slots[0].index), (Duration::from_millis(1000), 10));
        // After the second stack sample, the run ends with the window's last sample, its totals
        // read there.
        let (at, slots) = next(&mut sched);
        let run = plan_run(&mut sched, at, &slots, false);
        assert_eq!(run.len(), 9);
        let (_, totals, last) = run.last().unwrap();
        assert!(*totals && last[0].closes && last[0].index == 19);
        // The next window opens with stacks, outside any run.
        let (_, slots) = next(&mut sched);
        assert!(slots[0].opens && slots[0].index == 0);
    }

    #[test]
    fn a_run_stops_at_a_classic_window_and_at_its_span() {
        // A classic group (stacks at every sample) beside a continuous one: no sample of the
        // classic window may go into a run.
        let mut sched = Scheduler::default();
        let classic = SamplingSettings {
            samples: 100,
            delay_ms: 250,
            interval_ms: 60_000,
            stacks_every: 1,
        };
        sched.set_wanted(Duration::ZERO, &[SamplingSettings::CONTINUOUS, classic]);
        let (_, first) = next(&mut sched);
        assert_eq!(first.len(), 2);
        let (at, slots) = next(&mut sched);
        assert_eq!(at, Duration::from_millis(100));
        let run = plan_run(&mut sched, at, &slots, false);
        // 100 (given) and 200 ms; the classic group's 250 ms sample reads stacks.
        assert_eq!(run.len(), 2);
        let (at, slots) = next(&mut sched);
        assert_eq!(at, Duration::from_millis(250));
        assert!(slots.iter().all(|s| s.settings == classic));
        // A timers-only group whose samples go on for more than a second: runs of a second.
        let slow_stacks = SamplingSettings {
            samples: 200,
            delay_ms: 50,
            interval_ms: 10_000,
            stacks_every: 100,
        };
        let mut sched = Scheduler::default();
        sched.set_wanted(Duration::ZERO, &[slow_stacks]);
        next(&mut sched);
        let (at, slots) = next(&mut sched);
        let run = plan_run(&mut sched, at, &slots, false);
        assert_eq!(run.last().unwrap().0, MAX_RUN_SPAN);
        assert_eq!(run.len(), 21);
    }
}
