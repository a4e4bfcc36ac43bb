//! `bench-jvmti`: what continuous sampling costs a real Flink TaskManager, per backend, measured
//! in one run so the ratios are fair on a noisy machine.
//!
//! 1. **One sample** of a TaskManager running hard, soft and idle jobs, interleaved round by
//!    round: the in-process sampler (`jvmti`: request, `GetStackTrace` of every task thread,
//!    classification, reply), native attach (dump + parse + classify) and `jcmd Thread.print`
//!    (+ parse + classify). For each: agent-side wall time, time inside the JVM (jvmti), and the
//!    safepoints and pause it caused (hsperfdata counters around each sample).
//! 2. **Throughput**: a bounded job (fixed CPU work per record, then a shuffle) run to completion
//!    again and again, with no sampling and with each backend sampling continuously at Flink's
//!    100 × 50 ms schedule (one sample every 50 ms, back to back); records/s from the job's own
//!    running time. Modes rotate each round; the spread of the rounds is printed beside the mean.
//!
//!   scripts/bench jvmti [--rounds N] [--job-seconds S]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::jvmti::JvmtiOptions;
use bpmon_agent::backends::{Backend, BackendKind, SampleMode};
use bpmon_agent::discovery::hsperf::SafepointProbe;
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::sampling::{take_dump, take_sample};
use bpmon_e2e::bench::{library_beside_me, thread_cpu_us};
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, FlinkRest, JobMode, TestJobs};
use bpmon_stacks::classify::Classifier;

const COST_ROUNDS: usize = 20;
const JVMTI_PER_ROUND: usize = 10;
const ATTACH_PER_ROUND: usize = 10;

struct Args {
    rounds: usize,
    job_seconds: f64,
    /// Only the one-sample part.
    cost_only: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rounds: 3,
        job_seconds: 15.0,
        cost_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse()?,
            "--job-seconds" => a.job_seconds = value()?.parse()?,
            "--cost-only" => a.cost_only = true,
            "--help" | "-h" => {
                println!("bench-jvmti [--rounds N (3)] [--job-seconds S (15)] [--cost-only]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (--help)"),
        }
    }
    ensure!(a.rounds >= 1, "--rounds must be at least 1");
    Ok(a)
}

#[derive(Default)]
struct Series {
    wall_us: Vec<f64>,
    /// CPU time of the agent's sampling thread per sample.
    cpu_us: Vec<f64>,
    inside_us: Vec<f64>,
    inside_cpu_us: Vec<f64>,
    safepoints: Vec<f64>,
    pause_ms: Vec<f64>,
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() -> Result<()> {
    let args = args()?;
    let lib = library_beside_me()?;
    let dist = FlinkDist::from_env()?;
    let jar = TestJobs::build(&dist)?;
    eprintln!(
        "bench: Flink {} — starting a 1-TaskManager cluster",
        dist.version()
    );
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: 6,
            ..ClusterOptions::default()
        },
    )?;
    let result = run(&cluster, &jar, &lib, &args);
    cluster.stop()?;
    result
}

fn run(cluster: &FlinkCluster, jar: &Path, lib: &Path, args: &Args) -> Result<()> {
    let rest = cluster.rest().clone();
    let tm = cluster.taskmanagers()[0].clone();
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("the TaskManager JVM")?;
    let jvmti_options = JvmtiOptions {
        library: lib.to_path_buf(),
        ..JvmtiOptions::default()
    };
    let open = |kind| {
        Backend::open(kind, &jvm, &proc, AttachOptions::default(), &jvmti_options)
            .with_context(|| format!("opening the {kind:?} backend"))
    };

    // 1. One sample, by each backend, beside hard, soft and idle jobs.
    let mut jids = Vec::new();
    for mode in [JobMode::Hard, JobMode::Soft, JobMode::Idle] {
        let jid = TestJobs::submit(&rest, jar, mode, &format!("bench-{mode}"))?;
        rest.wait_job_running(&jid, Duration::from_secs(120))?;
        jids.push(jid);
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut backends = [
        (
            BackendKind::Jvmti,
            open(BackendKind::Jvmti)?,
            Series::default(),
        ),
        (
            BackendKind::Attach,
            open(BackendKind::Attach)?,
            Series::default(),
        ),
        (
            BackendKind::Jcmd,
            open(BackendKind::Jcmd)?,
            Series::default(),
        ),
    ];
    let perf = jvm.perf_file.clone().context("no hsperfdata")?;
    let probe = SafepointProbe::open(&perf)?;
    let counters = || probe.read();
    let classifier = Classifier::new();
    let mut task_threads = 0;
    // The in-process sampler's timers-only samples (continuous watching between its stack
    // samples), taken in the same rounds as its stack samples.
    let mut timers_only = Series::default();
    for round in 0..COST_ROUNDS {
        for (kind, backend, series) in backends.iter_mut() {
            let n = match kind {
                BackendKind::Jvmti => 2 * JVMTI_PER_ROUND,
                BackendKind::Attach => ATTACH_PER_ROUND,
                BackendKind::Jcmd => 1,
            };
            for i in 0..n {
                // jvmti: stacks and timers only, alternately.
                let stacks = *kind != BackendKind::Jvmti || i % 2 == 0;
                let series = if stacks {
                    &mut *series
                } else {
                    &mut timers_only
                };
                let before = counters();
                let cpu = thread_cpu_us();
                let mode = if stacks {
                    SampleMode::Stacks
                } else {
                    // What continuous watching asks between a window's edges.
                    SampleMode::Timers { totals: false }
                };
                let dump = take_sample(Some(&probe), backend, &classifier, mode);
                let cpu = thread_cpu_us() - cpu;
                let after = counters();
                let classified = dump.result.with_context(|| format!("{kind:?} sample"))?;
                task_threads = task_threads.max(
                    classified.threads.len()
                        + classified.states.as_ref().map_or(0, |s| s.readings.len()),
                );
                series
                    .wall_us
                    .push((dump.took + dump.parse).as_secs_f64() * 1e6);
                series.cpu_us.push(cpu);
                if let Some(us) = classified.inside_us {
                    series.inside_us.push(us as f64);
                }
                if let Some(us) = classified.inside_cpu_us {
                    series.inside_cpu_us.push(us as f64);
                }
                if let Some((n, ms)) = before.zip(after).map(|(b, a)| b.delta(&a)) {
                    series.safepoints.push(n as f64);
                    series.pause_ms.push(ms);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprint!("\rbench: one-sample round {}/{COST_ROUNDS}", round + 1);
    }
    eprintln!();
    for jid in &jids {
        rest.cancel_job(jid)?;
    }
    let threads = std::fs::read_dir(format!("/proc/{}/task", tm.pid))?.count();
    println!(
        "\n## One sample of a TaskManager ({threads} threads, {task_threads} task threads); \
         {COST_ROUNDS} rounds interleaved\n"
    );
    println!("| backend | samples | agent wall p50 | p90 | agent CPU p50 | in-JVM sampler wall p50 / CPU p50 | safepoints per sample | JVM pause per sample p50 | p90 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let rows = backends
        .iter()
        .map(|(kind, _, s)| (kind.as_str(), s))
        .chain([("jvmti, timers only", &timers_only)]);
    for (label, s) in rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {:.2} | {:.3} ms | {:.3} ms |",
            label,
            s.wall_us.len(),
            quantile(&s.wall_us, 0.5),
            quantile(&s.wall_us, 0.9),
            quantile(&s.cpu_us, 0.5),
            if s.inside_us.is_empty() {
                "—".to_string()
            } else {
                format!(
                    "{:.0} µs / {:.0} µs",
                    quantile(&s.inside_us, 0.5),
                    quantile(&s.inside_cpu_us, 0.5)
                )
            },
            mean(&s.safepoints),
            quantile(&s.pause_ms, 0.5),
            quantile(&s.pause_ms, 0.9),
        );
    }

    if args.cost_only {
        return Ok(());
    }

    // 2. Throughput of a bounded job, with and without continuous sampling.
    std::thread::sleep(Duration::from_secs(3));
    let records = calibrate(&rest, jar, args.job_seconds)?;
    let modes: [Option<BackendKind>; 4] = [
        None,
        Some(BackendKind::Jvmti),
        Some(BackendKind::Attach),
        Some(BackendKind::Jcmd),
    ];
    let mut results: Vec<(Option<BackendKind>, Vec<f64>, Vec<f64>)> =
        modes.iter().map(|m| (*m, Vec::new(), Vec::new())).collect();
    for round in 0..args.rounds {
        // Rotate the order so that drift over the run does not favour one mode.
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            let mode = modes[i];
            let sampler = match mode {
                None => None,
                Some(kind) => {
                    let entry = backends
                        .iter_mut()
                        .find(|(k, _, _)| *k == kind)
                        .context("backend")?;
                    Some(Sampler {
                        backend: &mut entry.1,
                    })
                }
            };
            let (rate, pause) = throughput_run(
                &rest,
                jar,
                records,
                sampler,
                &perf,
                &format!("bench-throughput-{round}-{i}"),
            )?;
            eprintln!(
                "bench: round {} {:<6} {:>10.0} records/s, JVM pause {:.1} ms",
                round + 1,
                mode.map_or("none", |m| m.as_str()),
                rate,
                pause
            );
            results[i].1.push(rate);
            results[i].2.push(pause);
        }
    }
    let base = mean(&results[0].1);
    println!(
        "\n## Throughput with continuous sampling (100 × 50 ms), {records} records per run, {} rounds\n",
        args.rounds
    );
    println!("| sampling | records/s mean | min | max | vs none | JVM safepoint time per run |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (mode, rates, pauses) in &results {
        let (lo, hi) = (
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:+.2} % | {:.1} ms |",
            mode.map_or("none", |m| m.as_str()),
            mean(rates),
            lo,
            hi,
            (mean(rates) / base - 1.0) * 100.0,
            mean(pauses)
        );
    }
    let spread = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x / m - 1.0).abs()).fold(0.0, f64::max) * 100.0
    };
    println!(
        "\nRound-to-round spread of the baseline (no sampling): ±{:.2} %",
        spread(&results[0].1)
    );
    Ok(())
}

/// What samples the TaskManager during a throughput run.
struct Sampler<'a> {
    backend: &'a mut Backend,
}

/// A record count whose run takes about `seconds` without sampling.
fn calibrate(rest: &FlinkRest, jar: &Path, seconds: f64) -> Result<u64> {
    let probe = 2_000_000u64;
    let jid = TestJobs::submit_throughput(rest, jar, "bench-calibrate", probe)?;
    let ms = wait_finished(rest, &jid)?;
    let rate = probe as f64 / (ms / 1000.0);
    let records = (rate * seconds) as u64;
    eprintln!("bench: calibration {rate:.0} records/s → {records} records per run");
    Ok(records.max(probe))
}

/// Runs the bounded job once, sampling it continuously with `sampling` while it runs;
/// returns records/s and the JVM pause (ms) over the run.
fn throughput_run(
    rest: &FlinkRest,
    jar: &Path,
    records: u64,
    sampling: Option<Sampler<'_>>,
    perf: &Path,
    name: &str,
) -> Result<(f64, f64)> {
    let probe = &SafepointProbe::open(perf)?;
    let counters = || probe.read();
    let before = counters();
    let jid = TestJobs::submit_throughput(rest, jar, name, records)?;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| -> Result<()> {
        let sampler = sampling.map(|Sampler { backend }| {
            let stop = stop.clone();
            s.spawn(move || {
                let classifier = Classifier::new();
                let start = Instant::now();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Flink's schedule: one sample every 50 ms, on an absolute clock.
                    let due = start + Duration::from_millis(50) * i;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = take_dump(Some(probe), backend, &classifier);
                    i += 1;
                }
            })
        });
        let finished = wait_finished(rest, &jid);
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = sampler {
            h.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
        }
        finished.map(|_| ())
    })?;
    // Every safepoint of the run, the JVM's own (GC) included: the same for every mode but
    // what the sampling adds.
    let pause = before
        .zip(counters())
        .map_or(f64::NAN, |(b, a)| b.delta(&a).1);
    let ms = vertex_duration_ms(rest, &jid)?;
    Ok((records as f64 / (ms / 1000.0), pause))
}

/// Waits for the job to finish; its duration, ms.
fn wait_finished(rest: &FlinkRest, jid: &str) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job = rest.get_json(&format!("/jobs/{jid}"))?;
        match job["state"].as_str() {
            Some("FINISHED") => {
                return job["duration"]
                    .as_f64()
                    .context("no duration in the finished job")
            }
            Some("FAILED") | Some("CANCELED") => bail!("job {jid} ended {}", job["state"]),
            _ => {}
        }
        ensure!(Instant::now() < deadline, "job {jid} did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The working vertex's running time (its subtasks' deployment to their end), ms: the job's
/// own duration also counts scheduling, which sampling does not slow down.
fn vertex_duration_ms(rest: &FlinkRest, jid: &str) -> Result<f64> {
    let job = rest.get_json(&format!("/jobs/{jid}"))?;
    job["vertices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "Source: numbers -> work")
        .and_then(|v| v["duration"].as_f64())
        .context("no 'Source: numbers -> work' duration")
}
