//! bpmon-agent against a real Flink session cluster: two TaskManagers running jobs of known
//! behaviour (hard and soft back-pressure, idle, busy on CPU and busy sleeping, plus a second job
//! with identical vertex names). The agent samples each TaskManager (100 × 50 ms) through the native attach
//! backend; its per-subtask classes must agree with Flink's own time metrics for the same
//! subtasks. The agreement is printed: it is bpmon's accuracy figure.

use std::collections::HashMap;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::{Backend, BackendKind};
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::sampling::{self as sampler, SampleSettings};
use bpmon_e2e::jvmti;
use bpmon_e2e::readings::{self, SubtaskReading};
use bpmon_e2e::{
    jdk25_home, one_cluster_at_a_time, Behaviour, ClusterOptions, FlinkCluster, FlinkDist, JobMode,
    TestJobs,
};
use bpmon_proto::{SampleReport, TaskSamples};
use bpmon_stacks::classify::Classifier;

use bpmon_e2e::readings::SETTLE_DEADLINE;

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// What the agent should see in a task of each behaviour: the class (an index into
/// [`agent_classes`]) and its minimum share of the samples.
fn agent_expectation(b: Behaviour) -> (&'static str, usize, f64) {
    match b {
        Behaviour::HardBackPressured => ("blocked", 0, 0.5),
        Behaviour::SoftBackPressured | Behaviour::Idle => ("waiting", 1, 0.7),
        Behaviour::BusySleeping | Behaviour::BusyCpu => ("busy", 2, 0.7),
    }
}

/// Flink's reading as the three classes a stack sample can tell apart. A legacy source's busy
/// time is NaN (Flink does not measure it): it is what the other three leave.
fn flink_classes(r: &SubtaskReading) -> Option<[f64; 3]> {
    let hard = r.hard_ms.unwrap_or(0.0) / 1000.0;
    let waiting = (r.soft_ms.unwrap_or(0.0) + r.idle_ms?) / 1000.0;
    let busy = match r.busy_ms {
        Some(b) => b / 1000.0,
        None => (1.0 - hard - waiting).max(0.0),
    };
    Some([hard, waiting, busy])
}

fn agent_classes(t: &TaskSamples) -> [f64; 3] {
    let n = f64::from(t.samples.max(1));
    [
        f64::from(t.blocked) / n,
        f64::from(t.waiting) / n,
        f64::from(t.busy) / n,
    ]
}

fn dominant(c: &[f64; 3]) -> usize {
    (0..3).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap_or(0)
}

#[test]
fn agent_agrees_with_flink_2_3() -> Result<()> {
    let _one = one_cluster_at_a_time();
    agent_agrees_with_flink("2.3.0")
}

#[test]
fn agent_agrees_with_flink_1_20() -> Result<()> {
    let _one = one_cluster_at_a_time();
    agent_agrees_with_flink("1.20.3")
}

fn agent_agrees_with_flink(version: &str) -> Result<()> {
    let t0 = Instant::now();
    let dist = FlinkDist::install(version)?;
    let jar = TestJobs::build(&dist)?;
    // hard 2 + soft 2 + idle 2 + busy 1 + hard twin 2 + legacy 1 + async 1 = 11 slots.
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 6,
            ..ClusterOptions::default()
        },
    )?;
    log(
        t0,
        format!(
            "Flink {} cluster up at {}",
            dist.version(),
            cluster.rest_url()
        ),
    );
    let rest = cluster.rest().clone();
    let mut jobs: Vec<(JobMode, String, String)> = Vec::new();
    for (mode, name) in [
        (JobMode::Hard, "bpmon-hard"),
        (JobMode::Soft, "bpmon-soft"),
        (JobMode::Idle, "bpmon-idle"),
        (JobMode::Busy, "bpmon-busy"),
        (JobMode::Hard, "bpmon-hard-twin"),
        (JobMode::Legacy, "bpmon-legacy"),
        (JobMode::Async, "bpmon-async"),
    ] {
        let jid = TestJobs::submit(&rest, &jar, mode, name)?;
        jobs.push((mode, name.to_string(), jid));
    }
    for (_, name, jid) in &jobs {
        rest.wait_job_running(jid, Duration::from_secs(120))
            .with_context(|| format!("{name} running"))?;
    }
    log(t0, "all jobs RUNNING");

    // Let Flink's windows fill with steady-state behaviour: every subject vertex must show it.
    let settled = readings::wait_settled(&rest, &jobs)?;
    log(
        t0,
        format!(
            "Flink's metrics settled after {:.0}s",
            settled.as_secs_f64()
        ),
    );

    // Sample both TaskManagers at once, as the agent daemon would.
    let tms = cluster.taskmanagers();
    // Flink's own monitor: 100 samples, 50 ms apart.
    let settings = SampleSettings {
        samples: 100,
        delay: Duration::from_millis(50),
        top_frames: 3,
    };
    let reports: Vec<(String, SampleReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = tms
            .iter()
            .map(|tm| {
                let settings = settings.clone();
                s.spawn(move || -> Result<(String, SampleReport)> {
                    let proc = ProcFs::default();
                    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;
                    ensure!(jvm.is_taskmanager(), "pid {} is not a TaskManager", tm.pid);
                    let mut backend = Backend::open(
                        BackendKind::Attach,
                        &jvm,
                        &proc,
                        AttachOptions::default(),
                        &Default::default(),
                    )?;
                    let report = sampler::sample(&jvm, &mut backend, &Classifier::new(), &settings);
                    Ok((tm.resource_id.clone(), report))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sampler thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    // Flink's readings right after, for the same subtasks.
    let mut flink: Vec<SubtaskReading> = Vec::new();
    for (_, _, jid) in &jobs {
        flink.extend(readings::read_job(&rest, jid)?);
    }
    log(t0, "sampled both TaskManagers");

    let registered = rest.taskmanagers()?;
    for (tm, r) in &reports {
        // What lets the collector find this JVM in Flink's REST API.
        ensure!(
            r.jvm.resource_id.as_deref() == Some(tm.as_str()),
            "{tm}: {:?}",
            r.jvm
        );
        let info = registered
            .iter()
            .find(|t| &t.id == tm)
            .context("TM registered")?;
        ensure!(
            r.jvm.listen_ports.contains(&(info.data_port as u16)),
            "{tm}: data port {} not among the JVM's listening ports {:?}",
            info.data_port,
            r.jvm.listen_ports
        );
        ensure!(r.errors.is_empty(), "{tm}: sampling errors {:?}", r.errors);
        ensure!(
            r.cost.dumps == settings.samples,
            "{tm}: {} dumps",
            r.cost.dumps
        );
        ensure!(
            r.cost.skipped_lines == 0,
            "{tm}: parser skipped {} lines",
            r.cost.skipped_lines
        );
        ensure!(
            r.jvm.flink_version.as_deref() == Some(dist.version()),
            "{tm}: {:?}",
            r.jvm
        );
    }

    // Match every Flink subtask to the agent's entry for it: same vertex name and subtask, on
    // the TaskManager Flink placed it on. Same-named tasks of two jobs on one TaskManager are
    // both there (distinct thread ids); the twin jobs' expectations are the same, so either may
    // stand for either here (the collector resolves them exactly).
    let mut table = String::from(
        "job                  vertex                            st  tm   agent blk/wait/busy   flink hard/wait/busy  agree\n",
    );
    let (mut compared, mut agreed, mut tvd_sum) = (0, 0, 0.0);
    let mut used: HashMap<(String, String, u32), usize> = HashMap::new();
    for r in &flink {
        let tm = r
            .taskmanager_id
            .as_deref()
            .context("subtask without a TaskManager")?;
        let (_, report) = reports
            .iter()
            .find(|(id, _)| id == tm)
            .with_context(|| format!("no report for TaskManager {tm}"))?;
        let candidates: Vec<&TaskSamples> = report
            .tasks
            .iter()
            .filter(|t| t.identity.task == r.vertex_name && t.identity.subtask == r.subtask)
            .filter(|t| t.identity.attempt == Some(r.attempt))
            .collect();
        ensure!(
            !candidates.is_empty(),
            "{} {}#{}: the agent on {tm} saw no such task thread",
            r.job_name,
            r.vertex_name,
            r.subtask
        );
        // Same-named twins: each Flink subtask takes the next entry not yet taken.
        let taken = used
            .entry((tm.to_string(), r.vertex_name.clone(), r.subtask))
            .or_insert(0);
        let t = candidates[(*taken).min(candidates.len() - 1)];
        *taken += 1;
        let f = flink_classes(r).with_context(|| {
            format!(
                "{} {}#{}: Flink has no time metrics ({r:?})",
                r.job_name, r.vertex_name, r.subtask
            )
        })?;
        let a = agent_classes(t);
        let tvd = 0.5 * (0..3).map(|i| (a[i] - f[i]).abs()).sum::<f64>();
        let agree = dominant(&a) == dominant(&f);
        compared += 1;
        agreed += usize::from(agree);
        tvd_sum += tvd;
        table.push_str(&format!(
            "{:<20} {:<33} {:>2}  {:<4} {:>5.2} {:>5.2} {:>5.2}     {:>5.2} {:>5.2} {:>5.2}    {}\n",
            r.job_name,
            r.vertex_name,
            r.subtask,
            &tm[tm.len().saturating_sub(3)..],
            a[0],
            a[1],
            a[2],
            f[0],
            f[1],
            f[2],
            if agree { "yes" } else { "NO" }
        ));
        // The subject vertex of each job: the agent must show the behaviour clearly.
        let (mode, _, _) = jobs.iter().find(|j| j.1 == r.job_name).unwrap();
        if let Some(v) = mode.vertices().iter().find(|v| v.name == r.vertex_name) {
            let (class, index, min) = agent_expectation(v.behaviour);
            ensure!(
                a[index] >= min,
                "{} {}#{}: agent {class} = {:.2} < {min} ({t:?})",
                r.job_name,
                r.vertex_name,
                r.subtask,
                a[index]
            );
            let busy = matches!(v.behaviour, Behaviour::BusyCpu | Behaviour::BusySleeping);
            if busy && !v.user_frames.is_empty() {
                let top = t.top_frames.first().map(|f| f.frame.as_str()).unwrap_or("");
                ensure!(
                    v.user_frames.iter().any(|u| top.starts_with(u)),
                    "{} {}: top frame {top:?}, want one of {:?}",
                    r.job_name,
                    r.vertex_name,
                    v.user_frames
                );
            }
        }
    }
    eprintln!("\n{table}");
    let mean_tvd = tvd_sum / compared.max(1) as f64;
    eprintln!(
        "accuracy (Flink {version}): dominant class agrees with Flink's time metrics on {agreed}/{compared} subtasks ({:.0}%), mean total-variation distance {:.3}",
        100.0 * agreed as f64 / compared.max(1) as f64,
        mean_tvd
    );
    ensure!(compared >= 22, "compared only {compared} subtasks");
    // The legacy source is seen through its Legacy Source Thread.
    let legacy = reports
        .iter()
        .flat_map(|(_, r)| &r.tasks)
        .find(|t| t.identity.task == "Source: legacy numbers")
        .context("the legacy source task")?;
    ensure!(legacy.legacy_source_thread, "{legacy:?}");
    ensure!(
        agreed == compared,
        "the agent disagreed with Flink on {} subtasks",
        compared - agreed
    );
    ensure!(
        mean_tvd <= 0.2,
        "mean distance {mean_tvd:.3} from Flink's readings"
    );

    // Two jobs with identical vertex names: separate entries, told apart by thread id.
    let explode: Vec<&TaskSamples> = reports
        .iter()
        .flat_map(|(_, r)| &r.tasks)
        .filter(|t| t.identity.task == "Source: numbers -> explode")
        .collect();
    ensure!(
        explode.len() == 4,
        "2 jobs x 2 subtasks of explode, got {}",
        explode.len()
    );
    let mut ids: Vec<_> = explode
        .iter()
        .map(|t| (t.thread.clone(), t.thread_id))
        .collect();
    ids.sort();
    ids.dedup();
    ensure!(ids.len() == 4, "same-named tasks were merged: {ids:?}");

    // The in-process backend on this Flink version: every task thread of a TaskManager, the
    // legacy source's included, with the exact ids Flink's REST API places there.
    let tm = &tms[0];
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;
    let lib = jvmti::library()?;
    let mut backend = Backend::open(
        BackendKind::Jvmti,
        &jvm,
        &proc,
        AttachOptions::default(),
        &jvmti::options(&lib),
    )?;
    let report = sampler::sample(&jvm, &mut backend, &Classifier::new(), &settings);
    ensure!(report.errors.is_empty(), "{:?}", report.errors);
    let named = jvmti::exact_of(&report)?;
    let placed = jvmti::placed_on(&rest, jobs.iter().map(|j| &j.2), &tm.resource_id)?;
    ensure!(
        named == placed,
        "Flink {}: jvmti ids {named:?} differ from Flink's placement {placed:?}",
        dist.version()
    );
    log(
        t0,
        format!(
            "jvmti on Flink {}: {} tasks with their exact ids; {} samples, {:?} safepoints",
            dist.version(),
            named.len(),
            report.cost.dumps,
            report.cost.safepoints
        ),
    );

    cluster.stop()?;
    log(t0, "cluster stopped");
    Ok(())
}

/// A TaskManager on Temurin 25: the agent speaks attach protocol v2 (non-streaming dumps) and
/// sees the hard back-pressure Flink reports.
#[test]
fn agent_samples_a_taskmanager_on_jdk25() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let t0 = Instant::now();
    let jdk = jdk25_home()?;
    let dist = FlinkDist::install("2.3.0")?;
    let jar = TestJobs::build(&dist)?;
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: 2,
            java_home: Some(jdk),
            ..ClusterOptions::default()
        },
    )?;
    let rest = cluster.rest().clone();
    let jid = TestJobs::submit(&rest, &jar, JobMode::Hard, "bpmon-hard-jdk25")?;
    rest.wait_job_running(&jid, Duration::from_secs(120))?;
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let rows = readings::read_job(&rest, &jid)?;
        let hard = rows
            .iter()
            .filter(|r| r.vertex_name == JobMode::Hard.subject().name)
            .all(|r| r.hard_ms.is_some_and(|v| v >= 500.0));
        if hard {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "Flink on JDK 25 never showed hard back-pressure"
        );
        sleep(Duration::from_secs(3));
    }
    log(t0, "hard back-pressure shows in Flink on JDK 25");

    let tm = &cluster.taskmanagers()[0];
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;
    ensure!(
        jvm.java_version
            .as_deref()
            .is_some_and(|v| v.starts_with("25")),
        "{jvm:?}"
    );
    let mut attacher =
        bpmon_agent::backends::attach::Attacher::new(&jvm, proc.clone(), AttachOptions::default())?;
    attacher.thread_dump()?;
    ensure!(
        attacher.protocol()
            == Some(bpmon_agent::backends::attach::Protocol::V2 { streaming: true }),
        "JDK 25 should speak attach v2 with the streaming option: {:?}",
        attacher.protocol()
    );
    let mut backend = Backend::Attach(Box::new(attacher));
    let settings = SampleSettings {
        samples: 40,
        delay: Duration::from_millis(50),
        top_frames: 3,
    };
    let report = sampler::sample(&jvm, &mut backend, &Classifier::new(), &settings);
    ensure!(report.errors.is_empty(), "{:?}", report.errors);
    ensure!(
        report.cost.skipped_lines == 0,
        "skipped {} lines",
        report.cost.skipped_lines
    );
    let explode: Vec<&TaskSamples> = report
        .tasks
        .iter()
        .filter(|t| t.identity.task == JobMode::Hard.subject().name)
        .collect();
    ensure!(explode.len() == 2, "{:?}", report.tasks);
    for t in explode {
        let blocked = f64::from(t.blocked) / f64::from(t.samples);
        ensure!(blocked >= 0.5, "{}: blocked {blocked:.2}", t.thread);
    }
    // Two safepoints per dump on JDK 18+ (no separate PrintJNI): the non-streamed dump keeps the
    // pause to the plain dump's own.
    if let Some(sp) = report.cost.safepoints {
        ensure!(
            sp <= 3 * u64::from(report.cost.dumps),
            "{sp} safepoints for {} dumps",
            report.cost.dumps
        );
        log(
            t0,
            format!(
                "JDK 25: {sp} safepoints, {:?} ms paused over {} dumps",
                report.cost.safepoint_ms_total, report.cost.dumps
            ),
        );
    }
    cluster.stop()?;
    Ok(())
}
