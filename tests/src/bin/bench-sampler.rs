//! `bench-sampler`: what one sample of a TaskManager costs, by each way of taking it, measured in
//! one run on one real TaskManager so the ratios are fair on a noisy machine.
//!
//! Methods, interleaved round by round: bpmon's native attach (dump + parse + classify), the JDK's
//! `jcmd <pid> Thread.print` and `jstack <pid>` (run + parse + classify). For each: wall time per
//! sample, and the safepoints and pause it caused in the TaskManager (hsperfdata counters read
//! around each sample). Then the peak RSS of a `bpmon-agent sample` run and of one `jcmd`.
//!
//!   scripts/bench            (builds in release mode and runs this)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpmon_agent::backends::attach::{AttachOptions, Attacher};
use bpmon_agent::discovery::hsperf::{PerfData, SafepointCounters};
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::sampling::tally::Tally;
use bpmon_agent::sampling::tally_dump;
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, JobMode, TestJobs};
use bpmon_stacks::classify::Classifier;

/// Rounds; each takes `NATIVE_PER_ROUND` native samples, one jcmd and one jstack.
const ROUNDS: usize = 20;
const NATIVE_PER_ROUND: usize = 10;

#[derive(Default)]
struct Series {
    wall_us: Vec<f64>,
    safepoints: Vec<f64>,
    pause_ms: Vec<f64>,
}

impl Series {
    fn record(&mut self, wall: Duration, sp: Option<(u64, f64)>) {
        self.wall_us.push(wall.as_secs_f64() * 1e6);
        if let Some((n, ms)) = sp {
            self.safepoints.push(n as f64);
            self.pause_ms.push(ms);
        }
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn main() -> Result<()> {
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
    let rest = cluster.rest().clone();
    // Busy-on-CPU is left out: a spinning task would steal one of the two cores from the
    // measurement itself. Hard, soft and idle tasks give the TaskManager its usual thread count.
    for mode in [JobMode::Hard, JobMode::Soft, JobMode::Idle] {
        let jid = TestJobs::submit(&rest, &jar, mode, &format!("bench-{mode}"))?;
        rest.wait_job_running(&jid, Duration::from_secs(120))?;
    }
    std::thread::sleep(Duration::from_secs(5));
    let tm = cluster.taskmanagers()[0].clone();
    let result = measure(tm.pid);
    cluster.stop()?;
    result
}

fn measure(pid: u32) -> Result<()> {
    let proc = ProcFs::default();
    let jvm = proc.jvm(pid).context("the TaskManager JVM")?;
    let perf = jvm
        .perf_file
        .clone()
        .context("the TaskManager publishes no hsperfdata")?;
    let counters = || -> Option<SafepointCounters> { PerfData::read(&perf).ok()?.safepoints() };
    let java_bin = std::fs::read_link(format!("/proc/{pid}/exe"))?
        .parent()
        .map(Path::to_path_buf)
        .context("java home")?;
    let classifier = Classifier::new();
    let mut attacher = Attacher::new(&jvm, proc.clone(), AttachOptions::default())?;
    // Warm up: start the listener, learn the protocol, fault in the parser.
    let first = attacher.thread_dump()?;
    let threads = bpmon_stacks::threaddump::parse(&String::from_utf8_lossy(&first))
        .summary
        .threads;
    let mut tasks = Tally::new();
    tally_dump(&first, &classifier, &mut tasks);
    let task_count = tasks.into_tasks(0).len();
    eprintln!(
        "bench: TaskManager pid {pid}: {threads} threads, {task_count} task threads, dump {} KiB",
        first.len() / 1024
    );

    let (mut native, mut jcmd, mut jstack) =
        (Series::default(), Series::default(), Series::default());
    let run_tool = |tool: &str, args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(java_bin.join(tool)).args(args).output()?;
        if !out.status.success() {
            bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let pid_s = pid.to_string();
    for round in 0..ROUNDS {
        for _ in 0..NATIVE_PER_ROUND {
            let before = counters();
            let t0 = Instant::now();
            let text = attacher.thread_dump()?;
            tally_dump(&text, &classifier, &mut Tally::new());
            let wall = t0.elapsed();
            native.record(wall, before.zip(counters()).map(|(b, a)| b.delta(&a)));
            std::thread::sleep(Duration::from_millis(20));
        }
        for (series, tool, args) in [
            (&mut jcmd, "jcmd", vec![pid_s.as_str(), "Thread.print"]),
            (&mut jstack, "jstack", vec![pid_s.as_str()]),
        ] {
            let before = counters();
            let t0 = Instant::now();
            let text = run_tool(tool, &args)?;
            tally_dump(&text, &classifier, &mut Tally::new());
            let wall = t0.elapsed();
            series.record(wall, before.zip(counters()).map(|(b, a)| b.delta(&a)));
        }
        eprint!("\rbench: round {}/{ROUNDS}", round + 1);
    }
    eprintln!();

    // Peak RSS: a full default run of the agent (100 samples, here 10 ms apart), and one jcmd.
    let agent = agent_binary()?;
    let agent_rss = peak_rss_kib(Command::new(&agent).args([
        "sample",
        "--pid",
        &pid_s,
        "--samples",
        "100",
        "--delay",
        "10ms",
        "--output",
        "json",
    ]))?;
    let jcmd_rss =
        peak_rss_kib(Command::new(java_bin.join("jcmd")).args([pid_s.as_str(), "Thread.print"]))?;

    let jcmd_p50 = quantile(&jcmd.wall_us, 0.5);
    println!("\nOne sample of a Flink TaskManager ({threads} threads, {task_count} task threads, {} KiB dump); {ROUNDS} rounds interleaved\n", first.len() / 1024);
    println!("| method | samples | wall p50 | wall p90 | jcmd p50 / this p50 | safepoints per sample | JVM pause per sample p50 | p90 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, s) in [
        ("bpmon native attach + parse + classify", &native),
        ("jcmd Thread.print + parse + classify", &jcmd),
        ("jstack + parse + classify", &jstack),
    ] {
        println!(
            "| {name} | {} | {:.2} ms | {:.2} ms | {:.1}x | {:.1} | {:.3} ms | {:.3} ms |",
            s.wall_us.len(),
            quantile(&s.wall_us, 0.5) / 1000.0,
            quantile(&s.wall_us, 0.9) / 1000.0,
            jcmd_p50 / quantile(&s.wall_us, 0.5),
            quantile(&s.safepoints, 0.5),
            quantile(&s.pause_ms, 0.5),
            quantile(&s.pause_ms, 0.9),
        );
    }
    println!("\n| process | peak RSS |\n| --- | --- |");
    println!(
        "| bpmon-agent sample (100 samples) | {:.1} MiB |",
        agent_rss as f64 / 1024.0
    );
    println!(
        "| jcmd Thread.print (one dump) | {:.1} MiB |",
        jcmd_rss as f64 / 1024.0
    );
    Ok(())
}

/// The release `bpmon-agent` next to this binary (scripts/bench builds both).
fn agent_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.parent().context("exe dir")?.join("bpmon-agent");
    if !path.is_file() {
        bail!(
            "{} not found: build it first (scripts/bench does)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs a command to completion and returns its peak resident set size, KiB (`wait4` rusage).
fn peak_rss_kib(cmd: &mut Command) -> Result<i64> {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(usage.ru_maxrss)
}
