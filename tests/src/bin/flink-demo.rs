//! `flink-demo`: starts a private Flink session cluster running the bpmon test jobs, prints one
//! JSON line describing it on stdout once everything is RUNNING, holds, then stops the cluster
//! by PID. Progress goes to stderr. Used by the README demo and the benchmark scripts.
//!
//! ```text
//! cargo run -p bpmon-e2e --bin flink-demo -- [--flink-version 2.3.0] [--taskmanagers 2] \
//!     [--jobs hard,soft,idle,busy] [--hold 60s | --until-stdin-closes]
//! ```
//!
//! Without `--hold` or `--until-stdin-closes` it holds until SIGINT/SIGTERM (which also end
//! the other two). A mode listed twice yields two jobs with identical vertex names.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, JobMode, TestJobs};
use clap::Parser;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Start a Flink cluster running bpmon's test jobs, print it as JSON, hold, stop.")]
struct Args {
    /// Flink version to install and run.
    #[arg(long, env = "BPMON_FLINK_VERSION", default_value = bpmon_e2e::DEFAULT_FLINK_VERSION)]
    flink_version: String,
    /// Number of TaskManagers.
    #[arg(long, default_value_t = 2)]
    taskmanagers: usize,
    /// Slots per TaskManager (default: just enough for the jobs, at least 2).
    #[arg(long)]
    slots_per_tm: Option<usize>,
    /// Comma-separated job modes: hard, soft, idle, busy (repeat a mode for same-named vertices).
    #[arg(long, value_delimiter = ',', default_value = "hard,soft,idle,busy")]
    jobs: Vec<JobMode>,
    /// Hold this long after printing the JSON line (e.g. 60s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,
    /// Hold until stdin reaches EOF.
    #[arg(long)]
    until_stdin_closes: bool,
    /// JDK for the cluster's JVMs (default: $JAVA_HOME or java on PATH).
    #[arg(long)]
    java_home: Option<PathBuf>,
    /// Extra Flink configuration, KEY=VALUE (repeatable).
    #[arg(long = "conf", value_parser = parse_kv)]
    conf: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[derive(Serialize)]
struct DemoInfo {
    rest_url: String,
    flink_version: String,
    jobmanager_pid: u32,
    taskmanagers: Vec<TmInfo>,
    jobs: Vec<JobInfo>,
    log_dir: String,
}

#[derive(Serialize)]
struct TmInfo {
    resource_id: String,
    pid: u32,
}

#[derive(Serialize)]
struct JobInfo {
    name: String,
    job_id: String,
    mode: JobMode,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("flink-demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // Installed before the cluster starts so a signal during startup still ends in a clean stop.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }

    eprintln!("flink-demo: installing Flink {}", args.flink_version);
    let dist = FlinkDist::install(&args.flink_version)?;
    eprintln!("flink-demo: building test jobs");
    let jar = TestJobs::build(&dist)?;
    let needed: usize = args.jobs.iter().map(|m| m.slots()).sum();
    let tms = args.taskmanagers.max(1);
    let slots = args
        .slots_per_tm
        .unwrap_or_else(|| needed.div_ceil(tms).max(2));
    eprintln!(
        "flink-demo: starting {tms} TaskManager(s) x {slots} slot(s) from {}",
        dist.home().display()
    );
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: tms,
            slots_per_tm: slots,
            java_home: args.java_home.clone(),
            extra_conf: args.conf.clone(),
            ..ClusterOptions::default()
        },
    )?;
    eprintln!(
        "flink-demo: cluster up at {} (logs in {})",
        cluster.rest_url(),
        cluster.log_dir().display()
    );

    let result = submit_and_hold(&cluster, &args, &dist, &jar);
    eprintln!(
        "flink-demo: stopping the cluster (PIDs {:?})",
        cluster.pids()
    );
    let stopped = cluster.stop();
    result.and(stopped)
}

fn submit_and_hold(
    cluster: &FlinkCluster,
    args: &Args,
    dist: &FlinkDist,
    jar: &std::path::Path,
) -> Result<()> {
    let mut jobs = Vec::new();
    for (i, mode) in args.jobs.iter().enumerate() {
        let dup = args.jobs[..i].iter().filter(|m| *m == mode).count();
        let name = if dup == 0 {
            format!("bpmon-{mode}")
        } else {
            format!("bpmon-{mode}-{}", dup + 1)
        };
        eprintln!("flink-demo: submitting {name}");
        let job_id = TestJobs::submit(cluster.rest(), jar, *mode, &name)?;
        jobs.push(JobInfo {
            name,
            job_id,
            mode: *mode,
        });
        if STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
    for job in &jobs {
        cluster
            .rest()
            .wait_job_running(&job.job_id, Duration::from_secs(90))?;
        eprintln!("flink-demo: {} ({}) RUNNING", job.name, job.job_id);
    }
    let info = DemoInfo {
        rest_url: cluster.rest_url(),
        flink_version: dist.version().to_string(),
        jobmanager_pid: cluster.jobmanager_pid(),
        taskmanagers: cluster
            .taskmanagers()
            .into_iter()
            .map(|t| TmInfo {
                resource_id: t.resource_id,
                pid: t.pid,
            })
            .collect(),
        jobs,
        log_dir: cluster.log_dir().display().to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&info)?)?;
    stdout.flush()?;
    drop(stdout);

    let stdin_closed = if args.until_stdin_closes {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        Some(rx)
    } else {
        None
    };
    let deadline = args.hold.map(|d| Instant::now() + d);
    let mut next_check = Instant::now();
    eprintln!("flink-demo: holding ({})", hold_reason(args));
    loop {
        if STOP.load(Ordering::SeqCst) {
            eprintln!("flink-demo: signal received");
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("flink-demo: hold time over");
            return Ok(());
        }
        if let Some(rx) = &stdin_closed {
            if rx.try_recv().is_ok() {
                eprintln!("flink-demo: stdin closed");
                return Ok(());
            }
        }
        if Instant::now() >= next_check {
            // A dead JVM makes the demo meaningless: say so instead of holding a broken cluster.
            let dead: Vec<u32> = cluster
                .pids()
                .into_iter()
                .filter(|p| !bpmon_e2e::process::is_alive(*p))
                .collect();
            anyhow::ensure!(
                dead.is_empty(),
                "Flink processes {dead:?} died\n{}",
                cluster.log_tails(30)
            );
            next_check = Instant::now() + Duration::from_secs(2);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hold_reason(args: &Args) -> String {
    let mut r = vec!["SIGINT/SIGTERM".to_string()];
    if let Some(h) = args.hold {
        r.push(humantime::format_duration(h).to_string());
    }
    if args.until_stdin_closes {
        r.push("stdin EOF".into());
    }
    format!("until {}", r.join(" or "))
}
