//! The sampling loop: N thread dumps of one JVM, D apart on a monotonic schedule, each parsed,
//! classified and added to the tally; plus what it cost, agent side (wall time per dump, parse time)
//! and JVM side (safepoint time, from the JVM's own counters).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bpmon_proto::{JvmInfo, SampleCost, SampleReport};
use bpmon_stacks::classify::Classifier;
use bpmon_stacks::threaddump;
use thiserror::Error;

use crate::attach::{AttachError, AttachOptions, Attacher};
use crate::discovery::{JvmProcess, ProcFs};
use crate::hsperf::{PerfData, SafepointCounters};
use crate::jcmd::{JcmdClient, JcmdError};
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
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Attach => "attach",
            BackendKind::Jcmd => "jcmd",
        }
    }
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Jcmd(#[from] JcmdError),
}

impl DumpError {
    pub fn is_permanent(&self) -> bool {
        match self {
            DumpError::Attach(e) => e.is_permanent(),
            DumpError::Jcmd(JcmdError::NotFound { .. }) => true,
            DumpError::Jcmd(_) => false,
        }
    }
}

/// A way to take one thread dump of one JVM.
#[derive(Debug)]
pub enum Backend {
    Attach(Box<Attacher>),
    Jcmd(JcmdClient),
}

impl Backend {
    pub fn open(
        kind: BackendKind,
        jvm: &JvmProcess,
        proc: &ProcFs,
        options: AttachOptions,
    ) -> Result<Backend, DumpError> {
        Ok(match kind {
            BackendKind::Attach => {
                Backend::Attach(Box::new(Attacher::new(jvm, proc.clone(), options)?))
            }
            BackendKind::Jcmd => Backend::Jcmd(JcmdClient::new(jvm, proc, options.io_timeout)?),
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Attach(_) => BackendKind::Attach,
            Backend::Jcmd(_) => BackendKind::Jcmd,
        }
    }

    pub fn dump(&mut self) -> Result<Vec<u8>, DumpError> {
        match self {
            Backend::Attach(a) => Ok(a.thread_dump()?),
            Backend::Jcmd(j) => Ok(j.thread_dump()?),
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

/// Transient failures in a row after which the run gives up.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// What one dump contributed, after parsing and classifying.
#[derive(Debug, Default)]
pub struct DumpStats {
    pub skipped_lines: u64,
}

/// Parses one dump's text, classifies its task threads and adds them to `tally`.
pub fn tally_dump(text: &[u8], classifier: &Classifier, tally: &mut Tally) -> DumpStats {
    let text = String::from_utf8_lossy(text);
    let dump = threaddump::parse_filtered(&text, |h| Tally::wants(&h.name));
    let samples: Vec<ThreadSample> = dump
        .threads
        .iter()
        // The parser already asked `wants` once per thread; skip the threads it dropped frames
        // of rather than parsing every name again (the tally ignores any non-task left over).
        .filter(|t| t.frames_kept)
        .map(|t| {
            let c = classifier.classify(&t.frames);
            ThreadSample {
                name: &t.header.name,
                java_id: t.header.java_id,
                os_tid: t.header.os_tid,
                elapsed_s: t.header.elapsed_s,
                class: c.class,
                top_frame: c.top_frame.map(|f| f.to_string()),
            }
        })
        .collect();
    tally.add_dump(&samples);
    DumpStats {
        skipped_lines: dump.summary.skipped_lines as u64,
    }
}

/// Samples one JVM. Failures become `errors` in the report; a JVM that goes away, or refuses us
/// for good, ends the run with the samples taken so far.
pub fn sample(
    jvm: &JvmProcess,
    backend: &mut Backend,
    classifier: &Classifier,
    settings: &SampleSettings,
) -> SampleReport {
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let start = Instant::now();
    let mut tally = Tally::new();
    let mut errors = Vec::new();
    let mut dump_us = Vec::with_capacity(settings.samples as usize);
    let mut parse_us = Vec::with_capacity(settings.samples as usize);
    let mut skipped_lines = 0;
    let mut safepoints: Option<(u64, f64)> = jvm.perf_file.as_ref().map(|_| (0, 0.0));
    let mut failures_in_row = 0;
    let read_counters = || -> Option<SafepointCounters> {
        PerfData::read(jvm.perf_file.as_deref()?).ok()?.safepoints()
    };
    for i in 0..settings.samples {
        // Absolute schedule: a slow dump delays the next one, never the rest of the run.
        let due = start + settings.delay * i;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let before = safepoints.and(read_counters());
        let t0 = Instant::now();
        let result = backend.dump();
        let took = t0.elapsed();
        let after = before.and(read_counters());
        match (&mut safepoints, before, after) {
            (Some(acc), Some(b), Some(a)) => {
                let (n, ms) = b.delta(&a);
                acc.0 += n;
                acc.1 += ms;
            }
            // Counters unreadable mid-run (JVM gone, file replaced): stop claiming a figure.
            _ => safepoints = None,
        }
        match result {
            Ok(text) => {
                failures_in_row = 0;
                dump_us.push(took.as_micros() as u64);
                let p0 = Instant::now();
                skipped_lines += tally_dump(&text, classifier, &mut tally).skipped_lines;
                parse_us.push(p0.elapsed().as_micros() as u64);
            }
            Err(e) => {
                failures_in_row += 1;
                errors.push(format!("sample {}/{}: {e}", i + 1, settings.samples));
                if e.is_permanent() {
                    errors.push(format!(
                        "stopped after {} of {} samples",
                        i, settings.samples
                    ));
                    break;
                }
                if failures_in_row >= MAX_CONSECUTIVE_FAILURES {
                    errors.push(format!(
                        "stopped after {failures_in_row} failed samples in a row ({} of {} taken)",
                        dump_us.len(),
                        settings.samples
                    ));
                    break;
                }
            }
        }
    }
    let dumps = dump_us.len() as u32;
    let cost = SampleCost {
        dumps,
        dump_us_p50: median(&mut dump_us),
        dump_us_max: dump_us.iter().copied().max().unwrap_or(0),
        parse_us_p50: median(&mut parse_us),
        safepoints: safepoints.map(|s| s.0),
        safepoint_ms_total: safepoints.map(|s| (s.1 * 1000.0).round() / 1000.0),
        skipped_lines,
    };
    SampleReport {
        pid: jvm.pid,
        backend: backend.kind().as_str().to_string(),
        jvm: JvmInfo {
            version: jvm.java_version.clone(),
            main_class: jvm.main_class.clone(),
            flink_version: jvm.flink_version.clone(),
            resource_id: jvm.resource_id.clone(),
            listen_ports: jvm.listen_ports.clone(),
        },
        samples: settings.samples,
        delay_ms: settings.delay.as_millis() as u64,
        started_at_ms,
        elapsed_ms: start.elapsed().as_millis() as u64,
        tasks: tally.into_tasks(settings.top_frames),
        cost,
        errors,
    }
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}
