//! The sampling loop: N thread dumps of one JVM, D apart on a monotonic schedule, each parsed,
//! classified and added to the tally; plus what it cost, agent side (wall time per dump, parse time)
//! and JVM side (safepoint time, from the JVM's own counters).
//!
//! The pieces are shared: [`take_dump`] takes and classifies one dump, a [`Window`] turns the dumps
//! it is given into a report. The one-shot [`sample`] runs one window; the daemon runs many, one
//! per settings group, feeding each dump to every window it serves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bpmon_proto::{Activity, JvmInfo, SampleCost, SampleReport};
use bpmon_stacks::activity;
use bpmon_stacks::classify::{Classifier, SampleClass};
use bpmon_stacks::collapse::{self, collapse};
use bpmon_stacks::threaddump;

use super::tally::{Tally, ThreadSample};
use crate::backends::dump::AwaitedLock;
use crate::backends::{
    Backend, BackendKind, ClassifiedDump, DumpError, DumpThread, Fetched, SampleMode,
};
use crate::discovery::hsperf::SafepointProbe;
use crate::discovery::JvmProcess;
use crate::resources::{ResourceProbe, ResourceReading};
use bpmon_proto::time::now_ms;

/// How many samples, how far apart.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    pub samples: u32,
    pub delay: Duration,
    /// Busy frames kept per task.
    pub top_frames: usize,
}

impl Default for SampleSettings {
    /// Flink's own back-pressure monitor: 100 samples, 50 ms apart.
    fn default() -> Self {
        SampleSettings {
            samples: 100,
            delay: Duration::from_millis(50),
            top_frames: 5,
        }
    }
}

/// Transient failures in a row after which a window gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// What one dump contributed, after parsing and classifying.
#[derive(Debug, Default)]
pub struct DumpStats {
    pub skipped_lines: u64,
}

/// Parses one dump's text and classifies its task threads: their class, and for busy ones what
/// they were doing and the lock they waited for.
pub fn classify_dump(text: &[u8], classifier: &Classifier) -> ClassifiedDump {
    let text = String::from_utf8_lossy(text);
    let dump = threaddump::parse_filtered(&text, |h| Tally::wants(&h.name));
    let owners = activity::monitor_owners(&dump.threads);
    let threads = dump
        .threads
        .iter()
        // The parser already asked `wants` once per thread; skip the threads it dropped frames
        // of rather than parsing every name again (the tally ignores any non-task left over).
        .filter(|t| t.frames_kept)
        .map(|t| {
            let c = classifier.classify(&t.frames);
            let busy = c.class == SampleClass::Busy;
            let activity = busy.then(|| activity::activity(t.header.state, &t.frames));
            let lock = (activity == Some(Activity::Lock))
                .then(|| activity::awaited_lock(t))
                .flatten()
                .map(|(address, class)| AwaitedLock {
                    class: class.to_string(),
                    owner: owners.get(address).map(|o| o.to_string()),
                });
            DumpThread {
                name: t.header.name.clone(),
                java_id: t.header.java_id,
                os_tid: t.header.os_tid,
                elapsed_s: t.header.elapsed_s,
                class: c.class,
                top_frame: c.top_frame.map(|f| f.to_string()),
                task: None,
                activity,
                lock,
                cpu_ms: t.header.cpu_ms,
                stack: busy.then(|| collapse(&t.frames, collapse::MAX_DEPTH)),
                timers: None,
                stackless: false,
            }
        })
        .collect();
    ClassifiedDump {
        threads,
        skipped_lines: dump.summary.skipped_lines as u64,
        inside_us: None,
        inside_cpu_us: None,
        states: None,
    }
}

/// Parses one dump's text, classifies its task threads and adds them to `tally`.
pub fn tally_dump(text: &[u8], classifier: &Classifier, tally: &mut Tally) -> DumpStats {
    let dump = classify_dump(text, classifier);
    let samples: Vec<ThreadSample> = dump.threads.iter().map(sample_of).collect();
    tally.add_dump(&samples, 0);
    DumpStats {
        skipped_lines: dump.skipped_lines,
    }
}

/// One thread dump as taken: what it cost and what it showed.
#[derive(Debug)]
pub struct TakenDump {
    /// When the request was sent.
    pub at: Instant,
    /// Wall time of the request.
    pub took: Duration,
    /// Safepoints and safepoint ms the JVM recorded during the dump; `None` when its counters
    /// could not be read before and after.
    pub safepoints: Option<(u64, f64)>,
    /// Time to parse and classify it.
    pub parse: Duration,
    pub result: Result<ClassifiedDump, DumpError>,
}

impl TakenDump {
    /// A mask that includes every thread of the dump's timer states (none: an empty mask).
    pub fn every_state(&self) -> Vec<bool> {
        self.result
            .as_ref()
            .ok()
            .and_then(|d| d.states.as_ref())
            .map(|st| vec![true; st.readings.len()])
            .unwrap_or_default()
    }
}

/// Takes one dump, with its cost (the JVM's safepoint counters around it, when `probe` reads
/// them), and classifies it.
pub fn take_dump(
    probe: Option<&SafepointProbe>,
    backend: &mut Backend,
    classifier: &Classifier,
) -> TakenDump {
    take_sample(probe, backend, classifier, SampleMode::Stacks)
}

/// [`take_dump`]; by timers, the in-process backend classifies by Flink's timers where it can.
pub fn take_sample(
    probe: Option<&SafepointProbe>,
    backend: &mut Backend,
    classifier: &Classifier,
    mode: SampleMode,
) -> TakenDump {
    let read_counters = || probe.and_then(SafepointProbe::read);
    let before = read_counters();
    let t0 = Instant::now();
    let result = backend.fetch(mode);
    let took = t0.elapsed();
    let after = before.and_then(|_| read_counters());
    let safepoints = match (before, after) {
        (Some(b), Some(a)) => Some(b.delta(&a)),
        _ => None,
    };
    let p0 = Instant::now();
    let result = result.map(|fetched| match fetched {
        Fetched::Text(text) => classify_dump(&text, classifier),
        Fetched::Classified(dump) => dump,
    });
    TakenDump {
        at: t0,
        took,
        safepoints,
        parse: p0.elapsed(),
        result,
    }
}

/// Timers-only samples at `at` after now (totals where marked), taken as one run by the
/// in-process library ([`Backend::fetch_run`]): one [`TakenDump`] per entry, each timed at its
/// own instant with the library's time for it. The run's safepoints (none are expected: timer
/// reads need none) are counted at its last sample.
pub fn take_run(
    probe: Option<&SafepointProbe>,
    backend: &mut Backend,
    at: &[(Duration, bool)],
) -> Vec<TakenDump> {
    let read_counters = || probe.and_then(SafepointProbe::read);
    let before = read_counters();
    let t0 = Instant::now();
    let results = backend.fetch_run(at);
    let after = before.and_then(|_| read_counters());
    let safepoints = match (before, after) {
        (Some(b), Some(a)) => Some(b.delta(&a)),
        _ => None,
    };
    let n = results.len();
    results
        .into_iter()
        .zip(at)
        .enumerate()
        .map(|(i, (result, (offset, _)))| TakenDump {
            at: t0 + *offset,
            took: result
                .as_ref()
                .ok()
                .and_then(|d| d.inside_us)
                .map_or(Duration::ZERO, Duration::from_micros),
            safepoints: if i + 1 == n {
                safepoints
            } else {
                safepoints.map(|_| (0, 0.0))
            },
            parse: Duration::ZERO,
            result,
        })
        .collect()
}

/// What recording a dump did to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Keep sampling.
    Continue,
    /// The window cannot go on (the JVM is gone or refuses us, or too many failures in a row);
    /// the reason is in its errors.
    Stop,
}

/// One sampling window over one JVM, filled one dump at a time: the tally of its threads, its
/// cost and its errors. The one-shot `sample` command and the daemon both build reports with it.
#[derive(Debug)]
pub struct Window {
    samples: u32,
    delay: Duration,
    top_frames: usize,
    started_at_ms: u64,
    start: Instant,
    tally: Tally,
    errors: Vec<String>,
    /// Sample slots recorded, successful or not.
    slots: u32,
    dump_us: Vec<u64>,
    parse_us: Vec<u64>,
    inside_us: Vec<u64>,
    /// CPU of the in-process sampler on the samples so far, µs (none from dump backends).
    inside_cpu_us: Option<u64>,
    skipped_lines: u64,
    safepoints: Option<(u64, f64)>,
    failures_in_row: u32,
    /// What the JVM, its cgroup and its host spend: read when the window opens and closes.
    resources: Arc<ResourceProbe>,
    resources_at_start: ResourceReading,
}

impl Window {
    /// A window of `samples` dumps `delay` apart, starting now.
    pub fn new(jvm: &JvmProcess, samples: u32, delay: Duration, top_frames: usize) -> Window {
        let resources = Arc::new(ResourceProbe::open(jvm));
        Window::with_probe(jvm, samples, delay, top_frames, resources, None)
    }

    /// [`Window::new`] reading the JVM's resources with a probe opened before, from
    /// `resources_at_start` when given (the reading that closed the previous window of a
    /// continuous series: reading a JVM's CPU time sums all its threads in the kernel, and a
    /// probe's opening finds its cgroup).
    pub fn with_probe(
        jvm: &JvmProcess,
        samples: u32,
        delay: Duration,
        top_frames: usize,
        resources: Arc<ResourceProbe>,
        resources_at_start: Option<ResourceReading>,
    ) -> Window {
        let resources_at_start = resources_at_start.unwrap_or_else(|| resources.read());
        Window {
            samples,
            delay,
            top_frames,
            started_at_ms: now_ms(),
            start: Instant::now(),
            tally: Tally::new(),
            errors: Vec::new(),
            slots: 0,
            dump_us: Vec::with_capacity(samples as usize),
            parse_us: Vec::with_capacity(samples as usize),
            inside_us: Vec::new(),
            inside_cpu_us: None,
            skipped_lines: 0,
            // No perf data: no figure at all; perf data that stops being readable: no figure.
            safepoints: jvm.perf_file.as_ref().map(|_| (0, 0.0)),
            failures_in_row: 0,
            resources,
            resources_at_start,
        }
    }

    /// The probe this window reads the JVM's resources with.
    pub fn probe(&self) -> &Arc<ResourceProbe> {
        &self.resources
    }

    /// Sample slots recorded so far (successful or failed).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Records one dump as this window's next sample, counting only the threads `include`
    /// accepts (a window counts the threads of its own settings group), and of the dump's timer
    /// states those `include_states` marks (by roster index).
    pub fn record(
        &mut self,
        dump: &TakenDump,
        include: impl Fn(&DumpThread) -> bool,
        include_states: &[bool],
    ) -> Progress {
        let index = self.slots;
        self.slots += 1;
        match (&mut self.safepoints, dump.safepoints) {
            (Some(acc), Some((n, ms))) => {
                acc.0 += n;
                acc.1 += ms;
            }
            // Counters unreadable mid-run (JVM gone, file replaced): stop claiming a figure.
            _ => self.safepoints = None,
        }
        match &dump.result {
            Ok(classified) => {
                self.failures_in_row = 0;
                self.dump_us.push(dump.took.as_micros() as u64);
                self.parse_us.push(dump.parse.as_micros() as u64);
                self.inside_us.extend(classified.inside_us);
                if let Some(cpu) = classified.inside_cpu_us {
                    *self.inside_cpu_us.get_or_insert(0) += cpu;
                }
                self.skipped_lines += classified.skipped_lines;
                let samples: Vec<ThreadSample> = classified
                    .threads
                    .iter()
                    .filter(|t| include(t))
                    .map(sample_of)
                    .collect();
                let at_ms = dump.at.saturating_duration_since(self.start).as_millis() as u64;
                self.tally.add_dump(&samples, at_ms);
                if let Some(states) = &classified.states {
                    self.tally.add_states(states, include_states);
                }
                Progress::Continue
            }
            Err(e) => {
                self.failures_in_row += 1;
                self.errors
                    .push(format!("sample {}/{}: {e}", index + 1, self.samples));
                if e.is_permanent() {
                    self.errors.push(format!(
                        "stopped after {} of {} samples",
                        index, self.samples
                    ));
                    return Progress::Stop;
                }
                if self.failures_in_row >= MAX_CONSECUTIVE_FAILURES {
                    self.errors.push(format!(
                        "stopped after {} failed samples in a row ({} of {} taken)",
                        self.failures_in_row,
                        self.dump_us.len(),
                        self.samples
                    ));
                    return Progress::Stop;
                }
                Progress::Continue
            }
        }
    }

    /// Adds an error (why the window ends early, for instance).
    pub fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    /// The window's report.
    pub fn finish(self, jvm: &JvmProcess, backend: BackendKind) -> SampleReport {
        self.finish_reading(jvm, backend).0
    }

    /// The window's report, and the resource reading it ended with.
    pub fn finish_reading(
        mut self,
        jvm: &JvmProcess,
        backend: BackendKind,
    ) -> (SampleReport, ResourceReading) {
        let resources_at_end = self.resources.read();
        let dumps = self.dump_us.len() as u32;
        let cost = SampleCost {
            dumps,
            dump_us_p50: median(&mut self.dump_us),
            dump_us_max: self.dump_us.iter().copied().max().unwrap_or(0),
            parse_us_p50: median(&mut self.parse_us),
            safepoints: self.safepoints.map(|s| s.0),
            safepoint_ms_total: self.safepoints.map(|s| (s.1 * 1000.0).round() / 1000.0),
            skipped_lines: self.skipped_lines,
            inside_us_p50: (!self.inside_us.is_empty()).then(|| median(&mut self.inside_us)),
            inside_cpu_ms_total: self.inside_cpu_us.map(|us| us as f64 / 1000.0),
        };
        let (tasks, stack_frames) = self.tally.into_tasks_and_frames(self.top_frames);
        let resources = Some(self.resources_at_start.delta(&resources_at_end));
        let report = SampleReport {
            pid: jvm.pid,
            backend: backend.as_str().to_string(),
            jvm: JvmInfo {
                version: jvm.java_version.clone(),
                main_class: jvm.main_class.clone(),
                flink_version: jvm.flink_version.clone(),
                resource_id: jvm.resource_id.clone(),
                resource_id_source: jvm.resource_id_source,
                listen_ports: jvm.listen_ports.clone(),
                network: Some(jvm.network.clone()),
            },
            samples: self.samples,
            delay_ms: self.delay.as_millis() as u64,
            started_at_ms: self.started_at_ms,
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            tasks,
            cost,
            errors: self.errors,
            resources,
            stack_frames,
        };
        (report, resources_at_end)
    }
}

/// Samples one JVM once: one window, every task thread. Failures become `errors` in the report;
/// a JVM that goes away, or refuses us for good, ends the run with the samples taken so far.
pub fn sample(
    jvm: &JvmProcess,
    backend: &mut Backend,
    classifier: &Classifier,
    settings: &SampleSettings,
) -> SampleReport {
    let mut window = Window::new(jvm, settings.samples, settings.delay, settings.top_frames);
    let probe = jvm
        .perf_file
        .as_deref()
        .and_then(|p| SafepointProbe::open(p).ok());
    let start = Instant::now();
    for i in 0..settings.samples {
        // Absolute schedule: a slow dump delays the next one, never the rest of the run.
        let due = start + settings.delay * i;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let dump = take_dump(probe.as_ref(), backend, classifier);
        if window.record(&dump, |_| true, &dump.every_state()) == Progress::Stop {
            break;
        }
    }
    window.finish(jvm, backend.kind())
}

/// A classified thread as the tally counts it.
/// A classified dump's thread as the tally takes it.
pub(crate) fn sample_of(t: &DumpThread) -> ThreadSample<'_> {
    ThreadSample {
        name: &t.name,
        java_id: t.java_id,
        os_tid: t.os_tid,
        elapsed_s: t.elapsed_s,
        class: t.class,
        top_frame: t.top_frame.clone(),
        task: t.task.as_ref(),
        activity: t.activity,
        lock: t.lock.as_ref(),
        cpu_ms: t.cpu_ms,
        stack: t.stack.as_deref(),
        timers: t.timers.as_ref(),
        stackless: t.stackless,
    }
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Flink 2.3 TaskManager's dump (JDK 17, the attach backend), whose `Slow` map sleeps.
    const TM0: &str = include_str!("../../stacks/tests/fixtures/flink2_3-jdk17-tm0.attach.txt");

    #[test]
    fn a_real_dump_gives_each_busy_thread_an_activity_and_its_cpu_time() {
        let dump = classify_dump(TM0.as_bytes(), &Classifier::new());
        let writer = dump
            .threads
            .iter()
            .find(|t| t.name == "slow consumer -> discard: Writer (2/2)#0")
            .expect("the slow writer's thread");
        assert_eq!(writer.class, SampleClass::Busy);
        assert_eq!(writer.activity, Some(Activity::Sleep));
        assert_eq!(writer.cpu_ms, Some(584.07));
        assert_eq!(writer.lock, None);
        for t in &dump.threads {
            assert_eq!(
                t.activity.is_some(),
                t.class == SampleClass::Busy,
                "{}",
                t.name
            );
            assert!(t.cpu_ms.is_some(), "{} has cpu= in the dump", t.name);
            assert_eq!(
                t.stack.is_some(),
                t.class == SampleClass::Busy,
                "{}",
                t.name
            );
        }
        // The busy thread's whole stack, folded root first: the thread's entry at the root,
        // the user's map and the sleep it is in at the top.
        let stack = writer.stack.as_deref().expect("a busy sample's stack");
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(frames[0], "java.lang.Thread.run", "{stack}");
        assert!(frames.len() > 10, "{stack}");
        let map = frames
            .iter()
            .position(|f| *f == "bpmon.testjobs.Slow.map")
            .expect("the user's map in the stack");
        assert!(
            frames[map + 1..]
                .iter()
                .any(|f| f.starts_with("java.lang.Thread.sleep")),
            "{stack}"
        );
        assert!(!stack.contains(".java:"), "no lines: {stack}");
    }
}
