//! `bench-continuous`: what continuous watching costs a TaskManager with many task threads.
//!
//! One Flink 2.3 TaskManager runs the `wide` job: `--parallelism` subtasks of each of `--depth`
//! unchained tasks (320 task threads by default), its source paced (~900 records/s per subtask)
//! so that the TaskManager has CPU to spare and the sampler's cost shows as CPU.
//! Rounds rotate between no sampling and continuous watching as the agent does it with
//! `config set --continuous` and the in-process backend, here at `--hz` samples a second in
//! windows of `--window-s` seconds, the stacks of busy tasks every `--stacks-s` seconds and
//! Flink's timers alone at the other samples: once with each timers-only sample its own request,
//! once with them taken as runs (what the agent does). Per mode: the job's throughput (records
//! into its sink, from Flink's counters), the TaskManager's CPU, its safepoints, the CPU of the
//! library's thread inside the JVM (all of it, from `/proc`) and of the agent's side, per second
//! of wall time.
//!
//!   scripts/bench continuous [--parallelism 32] [--depth 10] [--hz 20] [--rounds 3]
//!                            [--seconds 20] [--window-s 1] [--stacks-s 1]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::jvmti::JvmtiOptions;
use bpmon_agent::backends::{Backend, BackendKind, SampleMode};
use bpmon_agent::discovery::hsperf::SafepointProbe;
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::resources::ResourceProbe;
use bpmon_agent::sampling::{take_run, take_sample, Window};
use bpmon_e2e::bench::{library_beside_me, thread_cpu_us};
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, FlinkRest, TestJobs};
use bpmon_stacks::classify::Classifier;

struct Args {
    parallelism: u32,
    depth: u32,
    hz: u32,
    rounds: usize,
    seconds: u64,
    /// Seconds per window, and between two stack samples.
    window_s: u64,
    stacks_s: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        parallelism: 32,
        depth: 10,
        hz: 20,
        rounds: 3,
        seconds: 20,
        window_s: 1,
        stacks_s: 1,
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
            "--window-s" => a.window_s = value()?.parse()?,
            "--stacks-s" => a.stacks_s = value()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "scripts/bench continuous [--parallelism 32] [--depth 10] [--hz 20] \
                     [--rounds 3] [--seconds 20] [--window-s 1] [--stacks-s 1]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    ensure!(a.depth >= 2 && a.hz >= 1, "--depth ≥ 2, --hz ≥ 1");
    ensure!(
        a.window_s >= 1 && (1..=a.window_s).contains(&a.stacks_s),
        "--window-s ≥ 1, 1 ≤ --stacks-s ≤ --window-s"
    );
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No sampling.
    None,
    /// Continuous watching, each timers-only sample its own request.
    OneByOne,
    /// Continuous watching, the timers-only samples between two stack samples as one run.
    Runs,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::OneByOne => "continuous, one request per sample",
            Mode::Runs => "continuous, runs",
        }
    }
}

/// The in-process library's thread in the TaskManager.
fn library_thread(pid: u32) -> Result<u32> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "bpmon-jvmti" {
            return entry
                .file_name()
                .to_string_lossy()
                .parse()
                .context("a thread id");
        }
    }
    bail!("no bpmon-jvmti thread in pid {pid}")
}

/// CPU time of one thread so far, ns (`schedstat`: exact, not in clock ticks).
fn thread_cpu_ns(pid: u32, tid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))?;
    s.split_whitespace()
        .next()
        .context("schedstat")?
        .parse()
        .context("schedstat")
}

#[derive(Default)]
struct Round {
    records_per_s: f64,
    tm_cpu_ms_per_s: f64,
    safepoints_per_s: f64,
    /// Continuous only: CPU per second of wall time, ms: the library's thread (all of it), its
    /// samples as it times them, the agent.
    library_cpu_ms_per_s: f64,
    sampling_cpu_ms_per_s: f64,
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
    let window_samples = (a.hz as u64 * a.window_s) as usize;
    let stacks_every = (a.hz as u64 * a.stacks_s) as usize;
    ensure!(
        backend.takes_runs(),
        "the library does not take runs of samples"
    );
    let library_tid = library_thread(tm.pid)?;
    let modes = [Mode::None, Mode::OneByOne, Mode::Runs];
    let mut rounds: Vec<(Mode, Round)> = Vec::new();
    for round in 0..a.rounds {
        // Rotating order, so that no mode always follows the same one.
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            let mut r = Round::default();
            let records0 = sink_records(&rest, &jid, &sink)?;
            let cpu0 = process_cpu_ms(tm.pid)?;
            let lib0 = thread_cpu_ns(tm.pid, library_tid)?;
            let sp0 = probe.read().context("safepoint counters")?;
            let t0 = Instant::now();
            let (mut library_us, mut agent_us) = (0.0, 0.0);
            let mut windows_started = 0u32;
            // One resource probe, each window starting from the reading that closed the last
            // (as the worker does).
            let resources = Arc::new(ResourceProbe::open(&jvm));
            let mut closing = None;
            while t0.elapsed() < Duration::from_secs(a.seconds) {
                let ws = t0 + Duration::from_secs(a.window_s) * windows_started;
                windows_started += 1;
                if let Some(wait) = ws.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if mode == Mode::None {
                    continue;
                }
                // As the agent's worker does: windows of `window_s` seconds, the stacks of busy
                // tasks every `stacks_s` seconds from the first sample, the timers' totals at
                // the first and last, each sample recorded in the window's tally, and the report
                // made and encoded.
                let mut taken = Vec::with_capacity(window_samples);
                let mut w = Window::with_probe(
                    &jvm,
                    window_samples as u32,
                    delay,
                    5,
                    resources.clone(),
                    closing.take(),
                );
                let last = window_samples - 1;
                for segment in (0..window_samples).step_by(stacks_every) {
                    let due = ws + delay * segment as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let c = thread_cpu_us();
                    let first = take_sample(
                        None,
                        &mut backend,
                        &classifier,
                        SampleMode::BusyStacks {
                            totals: segment == 0 || segment == last,
                        },
                    );
                    let c_fetched = thread_cpu_us();
                    *r.agent_fetch_us.entry(true).or_default() += c_fetched - c;
                    w.record(&first, |_| true, &first.every_state());
                    let c_recorded = thread_cpu_us();
                    *r.agent_record_us.entry(true).or_default() += c_recorded - c_fetched;
                    agent_us += c_recorded - c;
                    taken.push((true, first));
                    let rest = segment + 1..(segment + stacks_every).min(window_samples);
                    if rest.is_empty() {
                        continue;
                    }
                    if mode == Mode::Runs {
                        let due = ws + delay * rest.start as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let at: Vec<(Duration, bool)> = rest
                            .clone()
                            .map(|i| (delay * (i - rest.start) as u32, i == last))
                            .collect();
                        let c = thread_cpu_us();
                        let run = take_run(None, &mut backend, &at);
                        let c_fetched = thread_cpu_us();
                        for t in &run {
                            w.record(t, |_| true, &t.every_state());
                        }
                        let c_recorded = thread_cpu_us();
                        *r.agent_fetch_us.entry(false).or_default() += c_fetched - c;
                        *r.agent_record_us.entry(false).or_default() += c_recorded - c_fetched;
                        agent_us += c_recorded - c;
                        taken.extend(run.into_iter().map(|t| (false, t)));
                    } else {
                        for i in rest {
                            let due = ws + delay * i as u32;
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let c = thread_cpu_us();
                            let t = take_sample(
                                None,
                                &mut backend,
                                &classifier,
                                SampleMode::Timers { totals: i == last },
                            );
                            let c_fetched = thread_cpu_us();
                            w.record(&t, |_| true, &t.every_state());
                            let c_recorded = thread_cpu_us();
                            *r.agent_fetch_us.entry(false).or_default() += c_fetched - c;
                            *r.agent_record_us.entry(false).or_default() += c_recorded - c_fetched;
                            agent_us += c_recorded - c;
                            taken.push((false, t));
                        }
                    }
                }
                let c = thread_cpu_us();
                let (report, end) = w.finish_reading(&jvm, BackendKind::Jvmti);
                closing = Some(end);
                r.encoded_bytes += serde_json::to_vec(&report)?.len();
                r.windows += 1;
                let c_done = thread_cpu_us();
                r.agent_finish_us += c_done - c;
                agent_us += c_done - c;
                for (stacks, t) in taken {
                    let d = t.result.context("a sample")?;
                    // A busy thread whose stack was read is in both lists.
                    let threads = d.threads.len()
                        + d.states
                            .as_ref()
                            .map_or(0, |st| st.readings.iter().filter(|r| !r.stacked).count());
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
            }
            let secs = t0.elapsed().as_secs_f64();
            let lib1 = thread_cpu_ns(tm.pid, library_tid)?;
            // Flink's counters reach the REST API every few seconds: wait for them to move on.
            std::thread::sleep(Duration::from_secs(11));
            let records1 = sink_records(&rest, &jid, &sink)?;
            let span = t0.elapsed().as_secs_f64();
            let cpu1 = process_cpu_ms(tm.pid)?;
            let sp1 = probe.read().context("safepoint counters")?;
            r.records_per_s = (records1 - records0) / span;
            r.tm_cpu_ms_per_s = (cpu1 - cpu0) / span;
            r.safepoints_per_s = sp0.delta(&sp1).0 as f64 / span;
            r.sampling_cpu_ms_per_s = library_us / 1000.0 / secs;
            r.library_cpu_ms_per_s = (lib1 - lib0) as f64 / 1e6 / secs;
            r.agent_cpu_ms_per_s = agent_us / 1000.0 / secs;
            eprintln!(
                "bench: round {} {}: {:.0} records/s, TaskManager {:.0} ms CPU/s{}",
                round + 1,
                mode.label(),
                r.records_per_s,
                r.tm_cpu_ms_per_s,
                if mode != Mode::None {
                    format!(
                        ", library thread {:.2} (sampling {:.2}) + agent {:.2} ms CPU/s over {} \
                         samples",
                        r.library_cpu_ms_per_s,
                        r.sampling_cpu_ms_per_s,
                        r.agent_cpu_ms_per_s,
                        r.samples
                    )
                } else {
                    String::new()
                }
            );
            rounds.push((mode, r));
        }
    }
    rest.cancel_job(&jid)?;
    report(a, &rounds);
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

fn report(a: &Args, rounds: &[(Mode, Round)]) {
    let of = |m: Mode| -> Vec<&Round> {
        rounds
            .iter()
            .filter(|(mode, _)| *mode == m)
            .map(|(_, r)| r)
            .collect()
    };
    let threads = rounds
        .iter()
        .map(|(_, r)| r.task_threads)
        .max()
        .unwrap_or(0);
    println!(
        "\n## Continuous watching at {} Hz (windows of {} s, stacks of busy tasks every {} s) of a \
         TaskManager with {threads} task threads; {} rounds of {} s per mode, interleaved\n",
        a.hz, a.window_s, a.stacks_s, a.rounds, a.seconds
    );
    println!(
        "| mode | records/s mean | vs none | TaskManager CPU | safepoints/s | library thread \
         CPU | agent CPU | together | vs one by one |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let base = mean(of(Mode::None).iter().map(|r| r.records_per_s));
    let cost = |m: Mode| {
        let rs = of(m);
        mean(rs.iter().map(|r| r.library_cpu_ms_per_s))
            + mean(rs.iter().map(|r| r.agent_cpu_ms_per_s))
    };
    for mode in [Mode::None, Mode::OneByOne, Mode::Runs] {
        let rs = of(mode);
        let rps = mean(rs.iter().map(|r| r.records_per_s));
        let sampling = if mode == Mode::None {
            "— | — | — | —".to_string()
        } else {
            let library = mean(rs.iter().map(|r| r.library_cpu_ms_per_s));
            let agent = mean(rs.iter().map(|r| r.agent_cpu_ms_per_s));
            format!(
                "{library:.2} ms/s | {agent:.2} ms/s | {:.2} % of a core | {:.2}x",
                (library + agent) / 10.0,
                cost(mode) / cost(Mode::OneByOne)
            )
        };
        println!(
            "| {} | {rps:.0} | {:+.2} % | {:.0} ms/s | {:.2} | {sampling} |",
            mode.label(),
            (rps / base - 1.0) * 100.0,
            mean(rs.iter().map(|r| r.tm_cpu_ms_per_s)),
            mean(rs.iter().map(|r| r.safepoints_per_s)),
        );
    }
    for mode in [Mode::OneByOne, Mode::Runs] {
        let rs = of(mode);
        let per_s =
            |f: &dyn Fn(&Round) -> f64| mean(rs.iter().map(|r| f(r) / 1000.0 / a.seconds as f64));
        println!(
            "\n{}: the library's sampling proper {:.2} ms/s (the rest of its thread's CPU is the \
             socket and the JSON); agent per second: taking samples with stacks {:.2} ms, timers \
             only {:.2} ms; recording them {:.2} ms + {:.2} ms; reports (made and encoded, \
             {:.0} KB/s) {:.2} ms",
            mode.label(),
            mean(rs.iter().map(|r| r.sampling_cpu_ms_per_s)),
            per_s(&|r| r.agent_fetch_us.get(&true).copied().unwrap_or(0.0)),
            per_s(&|r| r.agent_fetch_us.get(&false).copied().unwrap_or(0.0)),
            per_s(&|r| r.agent_record_us.get(&true).copied().unwrap_or(0.0)),
            per_s(&|r| r.agent_record_us.get(&false).copied().unwrap_or(0.0)),
            per_s(&|r| r.encoded_bytes as f64),
            per_s(&|r| r.agent_finish_us),
        );
        println!(
            "Inside the JVM per sample (p50): timers only {:.0} µs, with stacks {:.0} µs",
            p50(rs.iter().flat_map(|r| r.timers_inside_us.iter().copied())),
            p50(rs.iter().flat_map(|r| r.stacks_inside_us.iter().copied())),
        );
    }
}
