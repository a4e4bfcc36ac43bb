//! `bench-exact`: how exact the in-process timer readings are, per subtask, against Flink's own
//! time metrics over the same minute and against the stack-sampled classes.
//!
//! A Flink 2.3 TaskManager runs the hard, soft, idle and busy test jobs (steady behaviour). Once
//! Flink's metrics show each job's behaviour, the in-process sampler takes one window of 61
//! samples 1 s apart: Flink's timers of every task at each sample (totals: the exact idle, soft,
//! hard and busy shares of the 60 s), and each task's stack. Right after, Flink's
//! `idleTimeMsPerSecond`, `softBackPressuredTimeMsPerSecond`, `hardBackPressuredTimeMsPerSecond`
//! and `busyTimeMsPerSecond` of every subtask are read (Flink's averages over its last minute).
//! Prints each subtask's three readings and the mean absolute difference of the shares.
//!
//!   scripts/bench exact

use std::time::Duration;

use anyhow::{Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::{Backend, BackendKind};
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::sampling::{self as sampler, SampleSettings};
use bpmon_e2e::jvmti::{library, options};
use bpmon_e2e::readings::{self, SubtaskReading};
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, JobMode, TestJobs};
use bpmon_stacks::classify::Classifier;

fn main() -> Result<()> {
    let lib = library()?;
    let dist = FlinkDist::install("2.3.0")?;
    let jar = TestJobs::build(&dist)?;
    let cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: 8,
            ..ClusterOptions::default()
        },
    )?;
    let rest = cluster.rest().clone();
    let mut jobs = Vec::new();
    for mode in [JobMode::Hard, JobMode::Soft, JobMode::Idle, JobMode::Busy] {
        let name = format!("exact-{mode}");
        let jid = TestJobs::submit(&rest, &jar, mode, &name)?;
        jobs.push((mode, name, jid));
    }
    for (_, name, jid) in &jobs {
        rest.wait_job_running(jid, Duration::from_secs(120))
            .with_context(|| format!("{name} running"))?;
    }
    readings::wait_settled(&rest, &jobs)?;
    // A minute more, so that Flink's one-minute averages cover only steady behaviour.
    std::thread::sleep(Duration::from_secs(60));
    let tm = cluster.taskmanagers()[0].clone();
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;
    let mut backend = Backend::open(
        BackendKind::Jvmti,
        &jvm,
        &proc,
        AttachOptions::default(),
        &options(&lib),
    )?;
    eprintln!("bench: one window of 61 samples 1 s apart, in-process");
    let report = sampler::sample(
        &jvm,
        &mut backend,
        &Classifier::new(),
        &SampleSettings {
            samples: 61,
            delay: Duration::from_secs(1),
            top_frames: 1,
        },
    );
    let mut flink: Vec<SubtaskReading> = Vec::new();
    for (_, _, jid) in &jobs {
        flink.extend(readings::read_job(&rest, jid)?);
    }

    println!(
        "\n| subtask | timers idle / soft / hard / busy | Flink's metrics idle / soft / hard / busy | stacks waiting / blocked / busy |"
    );
    println!("| --- | --- | --- | --- |");
    let (mut vs_flink, mut vs_stacks) = (Vec::new(), Vec::new());
    for t in &report.tasks {
        let (Some(exact), Some(timers)) = (&t.exact, &t.timers) else {
            continue;
        };
        let Some(totals) = timers.totals else {
            continue;
        };
        let Some(f) = flink.iter().find(|f| {
            f.job_id == exact.job_id
                && f.vertex_id == exact.vertex_id
                && f.subtask == t.identity.subtask
        }) else {
            continue;
        };
        let span = totals.span_ms as f64;
        let ours = [
            totals.idle_ms as f64 / span,
            totals.soft_ms as f64 / span,
            totals.hard_ms as f64 / span,
            totals.busy_share(),
        ];
        let theirs = [f.idle_ms, f.soft_ms, f.hard_ms, f.busy_ms].map(|m| m.map(|v| v / 1000.0));
        let n = f64::from(t.samples.max(1));
        let stacks = [
            f64::from(t.waiting) / n,
            f64::from(t.blocked) / n,
            f64::from(t.busy) / n,
        ];
        for (o, th) in ours.iter().zip(theirs) {
            if let Some(th) = th {
                vs_flink.push((o - th).abs());
            }
        }
        // Waiting is idle + soft in the timers' terms.
        let ours3 = [ours[0] + ours[1], ours[2], ours[3]];
        for (o, s) in ours3.iter().zip(stacks) {
            vs_stacks.push((o - s).abs());
        }
        let fmt4 = |v: [Option<f64>; 4]| {
            v.iter()
                .map(|x| x.map_or("-".into(), |x| format!("{x:.3}")))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "| {} | {} | {} | {:.3} / {:.3} / {:.3} |",
            t.thread,
            fmt4(ours.map(Some)),
            fmt4(theirs),
            stacks[0],
            stacks[1],
            stacks[2]
        );
    }
    let mad = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "\nmean absolute difference of the shares, over {} subtasks:",
        vs_stacks.len() / 3
    );
    println!(
        "  timers vs Flink's time metrics: {:.4} (max {:.3}; {} shares)",
        mad(&vs_flink),
        max(&vs_flink),
        vs_flink.len()
    );
    println!(
        "  timers vs stack-sampled classes (61 samples): {:.4} (max {:.3}; {} shares)",
        mad(&vs_stacks),
        max(&vs_stacks),
        vs_stacks.len()
    );
    for (_, _, jid) in &jobs {
        rest.cancel_job(jid)?;
    }
    Ok(())
}
