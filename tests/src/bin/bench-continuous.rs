//! `bench-continuous`: what continuous watching costs a TaskManager with many task threads.
//!
//! One Flink 2.3 TaskManager runs the `wide` job: `--parallelism` subtasks of each of `--depth`
//! unchained tasks (320 task threads by default), its source paced (~900 records/s per subtask)
//! so that the TaskManager has CPU to spare and the sampler's cost shows as CPU.
//! Rounds alternate (order rotating) between no sampling and continuous watching as the agent
//! does it with `config set --continuous` and the in-process backend, here at `--hz` samples a
//! second with stacks once a second and Flink's timers alone at the others. Per mode: the job's
//! throughput (records into its sink, from Flink's counters), the TaskManager's CPU, its
//! safepoints; for continuous watching also the CPU of the library's thread inside the JVM and of
//! the agent's sampling thread, per second of wall time.
//!
//!   scripts/bench continuous [--parallelism 32] [--depth 10] [--hz 20] [--rounds 3] [--seconds 20]

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::jvmti::JvmtiOptions;
use bpmon_agent::backends::{Backend, BackendKind, SampleMode};
use bpmon_agent::discovery::hsperf::SafepointProbe;
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::sampling::{take_sample, Window};
use bpmon_e2e::bench::{library_beside_me, thread_cpu_us};
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, FlinkRest, TestJobs};
use bpmon_stacks::classify::Classifier;

struct Args {
    parallelism: u32,
    depth: u32,
    hz: u32,
    rounds: usize,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        parallelism: 32,
        depth: 10,
        hz: 20,
        rounds: 3,
        seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--parallelism" => a.parallelism = value()?.parse()?,
            "--depth" => a.depth = value()?.parse()?,
            "--hz" => a.hz = value()?.parse()?,
            "--rounds" => a.rounds = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "scripts/bench continuous [--parallelism 32] [--depth 10] [--hz 20] \
                     [--rounds 3] [--seconds 20]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    ensure!(a.depth >= 2 && a.hz >= 1, "--depth ≥ 2, --hz ≥ 1");
    Ok(a)
}

/// utime + stime of a process, ms.
fn process_cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1000.0 / hz)
}

/// Records into the job's sink so far, over all its subtasks.
fn sink_records(rest: &FlinkRest, jid: &str, sink: &str) -> Result<f64> {
    let m = rest.aggregated_subtask_metrics(jid, sink, &["numRecordsIn"], &["sum"])?;
    m.first()
        .and_then(|m| m.sum)
        .context("no numRecordsIn of the sink yet")
}

#[derive(Default)]
struct Round {
    records_per_s: f64,
    tm_cpu_ms_per_s: f64,
    safepoints_per_s: f64,
    /// Continuous only: CPU per second of wall time, ms.
    library_cpu_ms_per_s: f64,
    agent_cpu_ms_per_s: f64,
    samples: usize,
    windows: usize,
    encoded_bytes: usize,
    /// Agent CPU, µs, by whether the sample read stacks: taking it, recording it in the window;
    /// and making and encoding the windows' reports.
    agent_fetch_us: std::collections::BTreeMap<bool, f64>,
    agent_record_us: std::collections::BTreeMap<bool, f64>,
    agent_finish_us: f64,
    timers_inside_us: Vec<f64>,
    stacks_inside_us: Vec<f64>,
    task_threads: usize,
}

fn main() -> Result<()> {
    let a = args()?;
    let lib = library_beside_me()?;
    let dist = FlinkDist::install("2.3.0")?;
    let jar = TestJobs::build(&dist)?;
    let conf = [
        ("taskmanager.memory.process.size", "3g"),
        ("taskmanager.memory.network.fraction", "0.3"),
        ("taskmanager.memory.network.max", "1gb"),
    ];
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: a.parallelism as usize,
            extra_conf: conf
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ClusterOptions::default()
        },
    )?;
    let result = run(&cluster, &jar, &lib, &a);
    cluster.stop()?;
    result
}

fn run(
    cluster: &FlinkCluster,
    jar: &std::path::Path,
    lib: &std::path::Path,
    a: &Args,
) -> Result<()> {
    let rest = cluster.rest().clone();
    let jid = TestJobs::submit_wide(&rest, jar, "bench-wide", a.parallelism, a.depth)?;
    rest.wait_job_running(&jid, Duration::from_secs(180))?;
    let sink = rest
        .job(&jid)?
        .vertices
        .iter()
        .find(|v| v.name.starts_with("discard"))
        .map(|v| v.id.clone())
        .context("the sink vertex")?;
    let tm = cluster.taskmanagers()[0].clone();
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("the TaskManager JVM")?;
    let mut backend = Backend::open(
        BackendKind::Jvmti,
        &jvm,
        &proc,
        AttachOptions::default(),
        &JvmtiOptions {
            library: lib.to_path_buf(),
            ..JvmtiOptions::default()
        },
    )?;
    let probe = SafepointProbe::open(jvm.perf_file.as_ref().context("no hsperfdata")?)?;
    let classifier = Classifier::new();
    // Warm up: every task deployed, the job's records flowing and counted, the library's
    // methods resolved.
    bpmon_e2e::wait_for("the sink's record count", Duration::from_secs(180), || {
        Ok(sink_records(&rest, &jid, &sink).ok().filter(|n| *n > 0.0))
    })?;
    std::thread::sleep(Duration::from_secs(10));
    for _ in 0..5 {
        take_sample(Some(&probe), &mut backend, &classifier, SampleMode::Stacks)
            .result
            .context("a warm-up sample")?;
    }
    // Flink's counters reach the REST API every few seconds: each round's first reading must be
    // as late as its last one is (below).
    std::thread::sleep(Duration::from_secs(11));
    let delay = Duration::from_micros(1_000_000 / u64::from(a.hz));
    let stacks_every = a.hz as usize;
    let window_samples = a.hz as usize;
    let mut none = Vec::new();
    let mut continuous = Vec::new();
    for round in 0..a.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for watching in order {
            let mut r = Round::default();
            let records0 = sink_records(&rest, &jid, &sink)?;
            let cpu0 = process_cpu_ms(tm.pid)?;
            let sp0 = probe.read().context("safepoint counters")?;
            let t0 = Instant::now();
            let (mut library_us, mut agent_us) = (0.0, 0.0);
            let mut i = 0usize;
            let mut window: Option<Window> = None;
            while t0.elapsed() < Duration::from_secs(a.seconds) {
                if watching {
                    // As the agent's worker does: windows of `hz` samples (one a second), the
                    // stacks of busy tasks at the first, the timers' totals at the first and
                    // last, each sample recorded in the window's tally, and the report made and
                    // encoded.
                    let index = i % window_samples;
                    let stacks = index.is_multiple_of(stacks_every);
                    let totals = index == 0 || index == window_samples - 1;
                    let mode = if stacks {
                        SampleMode::BusyStacks { totals }
                    } else {
                        SampleMode::Timers { totals }
                    };
                    let c = thread_cpu_us();
                    let w = window
                        .get_or_insert_with(|| Window::new(&jvm, window_samples as u32, delay, 5));
                    let taken = take_sample(None, &mut backend, &classifier, mode);
                    let c_fetched = thread_cpu_us();
                    *r.agent_fetch_us.entry(stacks).or_default() += c_fetched - c;
                    w.record(&taken, |_| true, &taken.every_state());
                    let c_recorded = thread_cpu_us();
                    *r.agent_record_us.entry(stacks).or_default() += c_recorded - c_fetched;
                    if index == window_samples - 1 {
                        if let Some(done) = window.take() {
                            let report = done.finish(&jvm, BackendKind::Jvmti);
                            r.encoded_bytes += serde_json::to_vec(&report)?.len();
                            r.windows += 1;
                        }
                        r.agent_finish_us += thread_cpu_us() - c_recorded;
                    }
                    agent_us += thread_cpu_us() - c;
                    let d = taken.result.context("a sample")?;
                    let threads =
                        d.threads.len() + d.states.as_ref().map_or(0, |st| st.readings.len());
                    r.task_threads = r.task_threads.max(threads);
                    library_us += d.inside_cpu_us.unwrap_or(0) as f64;
                    let inside = d.inside_us.unwrap_or(0) as f64;
                    if stacks {
                        r.stacks_inside_us.push(inside);
                    } else {
                        r.timers_inside_us.push(inside);
                    }
                    r.samples += 1;
                }
                i += 1;
                // On the schedule, not after each sample: as the agent does.
                let next = t0 + delay * i as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            // Flink's counters reach the REST API every few seconds: wait for them to move on.
            std::thread::sleep(Duration::from_secs(11));
            let records1 = sink_records(&rest, &jid, &sink)?;
            let span = t0.elapsed().as_secs_f64();
            let cpu1 = process_cpu_ms(tm.pid)?;
            let sp1 = probe.read().context("safepoint counters")?;
            r.records_per_s = (records1 - records0) / span;
            r.tm_cpu_ms_per_s = (cpu1 - cpu0) / span;
            r.safepoints_per_s = sp0.delta(&sp1).0 as f64 / span;
            r.library_cpu_ms_per_s = library_us / 1000.0 / secs;
            r.agent_cpu_ms_per_s = agent_us / 1000.0 / secs;
            eprintln!(
                "bench: round {} {}: {:.0} records/s, TaskManager {:.0} ms CPU/s{}",
                round + 1,
                if watching { "continuous" } else { "none" },
                r.records_per_s,
                r.tm_cpu_ms_per_s,
                if watching {
                    format!(
                        ", library {:.2} + agent {:.2} ms CPU/s over {} samples",
                        r.library_cpu_ms_per_s, r.agent_cpu_ms_per_s, r.samples
                    )
                } else {
                    String::new()
                }
            );
            if watching {
                continuous.push(r);
            } else {
                none.push(r);
            }
        }
    }
    rest.cancel_job(&jid)?;
    report(a, &none, &continuous);
    Ok(())
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn p50(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(a: &Args, none: &[Round], cont: &[Round]) {
    let threads = cont.iter().map(|r| r.task_threads).max().unwrap_or(0);
    println!(
        "\n## Continuous watching at {} Hz (stacks once a second) of a TaskManager with {threads} \
         task threads; {} rounds of {} s, interleaved\n",
        a.hz, a.rounds, a.seconds
    );
    println!("| mode | records/s mean | vs none | TaskManager CPU | safepoints/s |");
    println!("| --- | --- | --- | --- | --- |");
    let base = mean(none.iter().map(|r| r.records_per_s));
    for (label, rounds) in [("none", none), ("continuous", cont)] {
        let rps = mean(rounds.iter().map(|r| r.records_per_s));
        println!(
            "| {label} | {rps:.0} | {:+.2} % | {:.0} ms/s | {:.2} |",
            (rps / base - 1.0) * 100.0,
            mean(rounds.iter().map(|r| r.tm_cpu_ms_per_s)),
            mean(rounds.iter().map(|r| r.safepoints_per_s)),
        );
    }
    let library = mean(cont.iter().map(|r| r.library_cpu_ms_per_s));
    let agent = mean(cont.iter().map(|r| r.agent_cpu_ms_per_s));
    println!(
        "\nSampling CPU per second of wall time: library (inside the JVM) {library:.2} ms + agent \
         {agent:.2} ms = {:.2} % of one core",
        (library + agent) / 10.0
    );
    let per_s =
        |f: &dyn Fn(&Round) -> f64| mean(cont.iter().map(|r| f(r) / 1000.0 / a.seconds as f64));
    println!(
        "Agent CPU per second: taking samples with stacks {:.2} ms, timers only {:.2} ms; \
         recording them {:.2} ms + {:.2} ms; reports (made and encoded, {:.0} KB/s) {:.2} ms",
        per_s(&|r| r.agent_fetch_us.get(&true).copied().unwrap_or(0.0)),
        per_s(&|r| r.agent_fetch_us.get(&false).copied().unwrap_or(0.0)),
        per_s(&|r| r.agent_record_us.get(&true).copied().unwrap_or(0.0)),
        per_s(&|r| r.agent_record_us.get(&false).copied().unwrap_or(0.0)),
        per_s(&|r| r.encoded_bytes as f64),
        per_s(&|r| r.agent_finish_us),
    );
    println!(
        "Inside the JVM per sample (p50): timers only {:.0} µs, with stacks {:.0} µs",
        p50(cont.iter().flat_map(|r| r.timers_inside_us.iter().copied())),
        p50(cont.iter().flat_map(|r| r.stacks_inside_us.iter().copied())),
    );
}
