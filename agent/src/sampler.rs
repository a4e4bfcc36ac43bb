//! The sampling loop: N thread dumps of one JVM, D apart on a monotonic schedule, each parsed,
//! classified and added to the tally; plus what it cost, agent side (wall time per dump, parse time)
//! and JVM side (safepoint time, from the JVM's own counters).
//!
//! The pieces are shared: [`take_dump`] takes and classifies one dump, a [`Window`] turns the dumps
//! it is given into a report. The one-shot [`sample`] runs one window; the daemon runs many, one
//! per settings group, feeding each dump to every window it serves.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bpmon_proto::inprocess::TaskRef;
use bpmon_proto::{parse_task_thread_name, JvmInfo, SampleCost, SampleReport, TaskIdentity};
use bpmon_stacks::classify::{Classifier, SampleClass};
use bpmon_stacks::threaddump;
use thiserror::Error;

use crate::attach::{AttachError, AttachOptions, Attacher};
use crate::discovery::{JvmProcess, ProcFs};
use crate::hsperf::SafepointProbe;
use crate::jcmd::{JcmdClient, JcmdError};
use crate::jvmti::{JvmtiClient, JvmtiError, JvmtiOptions};
use crate::tally::{Tally, ThreadSample};

/// How thread dumps are taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Native HotSpot attach from the agent itself: no JDK tools, a few ms per dump.
    Attach,
    /// The JDK's `jcmd Thread.print` (or `jstack`) as a child process: slow, for fallback.
    Jcmd,
    /// bpmon's JVMTI library inside the TaskManager (loaded through attach): task threads only,
    /// one thread at a time, no global pause; exact job ids. The daemon falls back to `attach`
    /// when the JVM will not load it.
    Jvmti,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Attach => "attach",
            BackendKind::Jcmd => "jcmd",
            BackendKind::Jvmti => "jvmti",
        }
    }
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Jcmd(#[from] JcmdError),
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
}

impl DumpError {
    /// A short label for logs and metrics: [`AttachError::reason`], or the jcmd backend's.
    pub fn reason(&self) -> &'static str {
        match self {
            DumpError::Attach(e) => e.reason(),
            DumpError::Jcmd(JcmdError::NotFound { .. }) => "jcmd_not_found",
            DumpError::Jcmd(JcmdError::Spawn { .. }) => "jcmd_spawn",
            DumpError::Jcmd(JcmdError::Failed { .. }) => "jcmd_failed",
            DumpError::Jcmd(JcmdError::Timeout { .. }) => "timeout",
            DumpError::Jvmti(e) => e.reason(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self {
            DumpError::Attach(e) => e.is_permanent(),
            DumpError::Jcmd(JcmdError::NotFound { .. }) => true,
            DumpError::Jcmd(_) => false,
            DumpError::Jvmti(e) => e.is_permanent(),
        }
    }
}

/// A way to take one thread dump of one JVM.
#[derive(Debug)]
pub enum Backend {
    Attach(Box<Attacher>),
    Jcmd(JcmdClient),
    Jvmti(Box<JvmtiClient>),
}

/// What one request to a backend gave: dump text to parse, or samples already classified.
pub enum Fetched {
    Text(Vec<u8>),
    Classified(ClassifiedDump),
}

impl Backend {
    pub fn open(
        kind: BackendKind,
        jvm: &JvmProcess,
        proc: &ProcFs,
        options: AttachOptions,
        jvmti: &JvmtiOptions,
    ) -> Result<Backend, DumpError> {
        Ok(match kind {
            BackendKind::Attach => {
                Backend::Attach(Box::new(Attacher::new(jvm, proc.clone(), options)?))
            }
            BackendKind::Jcmd => Backend::Jcmd(JcmdClient::new(jvm, proc, options.io_timeout)?),
            BackendKind::Jvmti => Backend::Jvmti(Box::new(JvmtiClient::open(
                jvm,
                proc,
                options,
                jvmti.clone(),
            )?)),
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Attach(_) => BackendKind::Attach,
            Backend::Jcmd(_) => BackendKind::Jcmd,
            Backend::Jvmti(_) => BackendKind::Jvmti,
        }
    }

    pub fn fetch(&mut self) -> Result<Fetched, DumpError> {
        match self {
            Backend::Attach(a) => Ok(Fetched::Text(a.thread_dump()?)),
            Backend::Jcmd(j) => Ok(Fetched::Text(j.thread_dump()?)),
            Backend::Jvmti(j) => Ok(Fetched::Classified(j.sample()?.1)),
        }
    }
}

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

/// One task thread (main or legacy source thread) of one dump, classified.
#[derive(Debug, Clone)]
pub struct DumpThread {
    pub name: String,
    pub java_id: Option<u64>,
    pub os_tid: Option<u64>,
    pub elapsed_s: Option<f64>,
    pub class: SampleClass,
    /// For busy samples: what the thread was doing.
    pub top_frame: Option<String>,
    /// The task's exact ids (in-process backend only).
    pub task: Option<TaskRef>,
}

impl DumpThread {
    /// The task this thread works for, from its name.
    pub fn identity(&self) -> Option<TaskIdentity> {
        parse_task_thread_name(&self.name).map(|(identity, _)| identity)
    }

    fn as_sample(&self) -> ThreadSample<'_> {
        ThreadSample {
            name: &self.name,
            java_id: self.java_id,
            os_tid: self.os_tid,
            elapsed_s: self.elapsed_s,
            class: self.class,
            top_frame: self.top_frame.clone(),
            task: self.task.as_ref(),
        }
    }
}

/// A dump's task threads, parsed and classified once, ready to be added to any number of tallies.
#[derive(Debug, Clone, Default)]
pub struct ClassifiedDump {
    pub threads: Vec<DumpThread>,
    pub skipped_lines: u64,
    /// Time the in-process sampler spent inside the JVM on this sample, µs.
    pub inside_us: Option<u64>,
    /// CPU time of that, µs.
    pub inside_cpu_us: Option<u64>,
}

/// Parses one dump's text and classifies its task threads.
pub fn classify_dump(text: &[u8], classifier: &Classifier) -> ClassifiedDump {
    let text = String::from_utf8_lossy(text);
    let dump = threaddump::parse_filtered(&text, |h| Tally::wants(&h.name));
    let threads = dump
        .threads
        .iter()
        // The parser already asked `wants` once per thread; skip the threads it dropped frames
        // of rather than parsing every name again (the tally ignores any non-task left over).
        .filter(|t| t.frames_kept)
        .map(|t| {
            let c = classifier.classify(&t.frames);
            DumpThread {
                name: t.header.name.clone(),
                java_id: t.header.java_id,
                os_tid: t.header.os_tid,
                elapsed_s: t.header.elapsed_s,
                class: c.class,
                top_frame: c.top_frame.map(|f| f.to_string()),
                task: None,
            }
        })
        .collect();
    ClassifiedDump {
        threads,
        skipped_lines: dump.summary.skipped_lines as u64,
        inside_us: None,
        inside_cpu_us: None,
    }
}

/// Parses one dump's text, classifies its task threads and adds them to `tally`.
pub fn tally_dump(text: &[u8], classifier: &Classifier, tally: &mut Tally) -> DumpStats {
    let dump = classify_dump(text, classifier);
    let samples: Vec<ThreadSample> = dump.threads.iter().map(DumpThread::as_sample).collect();
    tally.add_dump(&samples);
    DumpStats {
        skipped_lines: dump.skipped_lines,
    }
}

/// One thread dump as taken: what it cost and what it showed.
#[derive(Debug)]
pub struct TakenDump {
    /// Wall time of the request.
    pub took: Duration,
    /// Safepoints and safepoint ms the JVM recorded during the dump; `None` when its counters
    /// could not be read before and after.
    pub safepoints: Option<(u64, f64)>,
    /// Time to parse and classify it.
    pub parse: Duration,
    pub result: Result<ClassifiedDump, DumpError>,
}

/// Takes one dump, with its cost (the JVM's safepoint counters around it, when `probe` reads
/// them), and classifies it.
pub fn take_dump(
    probe: Option<&SafepointProbe>,
    backend: &mut Backend,
    classifier: &Classifier,
) -> TakenDump {
    let read_counters = || probe.and_then(SafepointProbe::read);
    let before = read_counters();
    let t0 = Instant::now();
    let result = backend.fetch();
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
        took,
        safepoints,
        parse: p0.elapsed(),
        result,
    }
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
    skipped_lines: u64,
    safepoints: Option<(u64, f64)>,
    failures_in_row: u32,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Window {
    /// A window of `samples` dumps `delay` apart, starting now.
    pub fn new(jvm: &JvmProcess, samples: u32, delay: Duration, top_frames: usize) -> Window {
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
            skipped_lines: 0,
            // No perf data: no figure at all; perf data that stops being readable: no figure.
            safepoints: jvm.perf_file.as_ref().map(|_| (0, 0.0)),
            failures_in_row: 0,
        }
    }

    /// Sample slots recorded so far (successful or failed).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Records one dump as this window's next sample, counting only the threads `include`
    /// accepts (a window counts the threads of its own settings group).
    pub fn record(&mut self, dump: &TakenDump, include: impl Fn(&DumpThread) -> bool) -> Progress {
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
                self.skipped_lines += classified.skipped_lines;
                let samples: Vec<ThreadSample> = classified
                    .threads
                    .iter()
                    .filter(|t| include(t))
                    .map(DumpThread::as_sample)
                    .collect();
                self.tally.add_dump(&samples);
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
    pub fn finish(mut self, jvm: &JvmProcess, backend: BackendKind) -> SampleReport {
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
        };
        SampleReport {
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
            tasks: self.tally.into_tasks(self.top_frames),
            cost,
            errors: self.errors,
        }
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
        if window.record(&dump, |_| true) == Progress::Stop {
            break;
        }
    }
    window.finish(jvm, backend.kind())
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}
