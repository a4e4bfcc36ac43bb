//! Proof that the harness works: a real 2-TaskManager cluster runs the hard, soft, idle and
//! busy test jobs, and Flink's own metrics confirm each behaviour.
//!
//! `cargo test -p bpmon-e2e --test harness -- --nocapture` (Flink from `BPMON_FLINK_VERSION`,
//! default 2.3.0). `--ignored` adds a run of the TaskManagers on Temurin 25.

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpmon_e2e::process::is_alive;
use bpmon_e2e::readings::{self, format_table, SubtaskReading};
use bpmon_e2e::rest::{Overview, TaskManagerInfo};
use bpmon_e2e::{
    verify_cluster_identity, ClusterIdentity, ClusterOptions, FlinkCluster, FlinkDist, FlinkRest,
    JobMode, TestJobs,
};

/// How long Flink's metrics may take to show each behaviour once all jobs run. The time
/// metrics are sliding averages over up to 60 s (1.17+), a fresh task reads 0 for all its
/// timers until the TaskManager first updates its metric views (seen taking up to ~20 s), and
/// the JobManager caches metrics for `metrics.fetcher.update-interval` (2 s in our clusters).
const SETTLE_DEADLINE: Duration = Duration::from_secs(150);

struct Check {
    mode: JobMode,
    metric: &'static str,
    min: f64,
    /// A record rate of the vertex that must be > 0 before the check counts: until its first
    /// view update a task reports busy = 1000 - 0 - 0, which would pass the busy check
    /// vacuously. The rate is a view too, so a non-zero rate shows the readings are live.
    rate: &'static str,
}

const CHECKS: [Check; 4] = [
    Check {
        mode: JobMode::Hard,
        metric: readings::HARD_BP_MS,
        min: 500.0,
        rate: readings::RECORDS_OUT_PER_SECOND,
    },
    Check {
        mode: JobMode::Soft,
        metric: readings::SOFT_BP_MS,
        min: 500.0,
        rate: readings::RECORDS_OUT_PER_SECOND,
    },
    Check {
        mode: JobMode::Idle,
        metric: readings::IDLE_MS,
        min: 700.0,
        rate: readings::RECORDS_IN_PER_SECOND,
    },
    Check {
        mode: JobMode::Busy,
        metric: readings::BUSY_MS,
        min: 700.0,
        rate: readings::RECORDS_IN_PER_SECOND,
    },
];

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

#[test]
fn flink_metrics_prove_each_test_job_behaviour() -> Result<()> {
    let t0 = Instant::now();
    let dist = FlinkDist::from_env()?;
    log(
        t0,
        format!("Flink {} at {}", dist.version(), dist.home().display()),
    );
    let jar = TestJobs::build(&dist)?;
    log(t0, format!("test jobs: {}", jar.display()));

    // hard 2 + soft 2 + idle 2 + busy 1 + second idle 2 = 9 slots.
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 5,
            ..ClusterOptions::default()
        },
    )?;
    log(
        t0,
        format!(
            "cluster up: {} JM pid {} TMs {:?}",
            cluster.rest_url(),
            cluster.jobmanager_pid(),
            cluster.taskmanagers()
        ),
    );
    let rest = cluster.rest().clone();
    check_cluster_is_ours(&cluster)?;

    let mut jobs = Vec::new();
    for mode in JobMode::ALL {
        let name = format!("bpmon-{mode}");
        jobs.push((
            mode,
            name.clone(),
            TestJobs::submit(&rest, &jar, mode, &name)?,
        ));
    }
    // Same mode again under another name: two jobs, identical vertex names.
    let twin = TestJobs::submit(&rest, &jar, JobMode::Idle, "bpmon-idle-twin")?;
    for (mode, name, jid) in &jobs {
        check_job_shape(&rest, *mode, name, jid, &cluster)?;
    }
    rest.wait_job_running(&twin, Duration::from_secs(90))?;
    check_same_names(
        &rest,
        &jobs.iter().find(|j| j.0 == JobMode::Idle).unwrap().2,
        &twin,
    )?;
    log(t0, "all jobs RUNNING, every subtask RUNNING");

    // Poll (aggregated min over subtasks) until every behaviour shows in two consecutive
    // polls (so a start-up transient does not count), bounded.
    let settle_start = Instant::now();
    let mut passes = 0;
    loop {
        let mut pending = Vec::new();
        let mut status = Vec::new();
        for c in &CHECKS {
            let (_, _, jid) = jobs.iter().find(|j| j.0 == c.mode).unwrap();
            let vid = vertex_id(&rest, jid, c.mode.subject().name)?;
            let agg =
                rest.aggregated_subtask_metrics(jid, &vid, &[c.metric, c.rate], &["min", "max"])?;
            let min_of = |id: &str| agg.iter().find(|a| a.id == id).and_then(|a| a.min);
            let (value, rate) = (min_of(c.metric), min_of(c.rate));
            status.push(format!(
                "{} {}={} ({}={})",
                c.mode,
                c.metric,
                value.map_or("-".into(), |v| format!("{v:.0}")),
                c.rate,
                rate.map_or("-".into(), |v| format!("{v:.1}"))
            ));
            if value.is_none_or(|v| v < c.min) || rate.is_none_or(|r| r <= 0.0) {
                pending.push(c.mode);
            }
        }
        log(t0, status.join("  "));
        passes = if pending.is_empty() { passes + 1 } else { 0 };
        if passes >= 2 {
            break;
        }
        if settle_start.elapsed() > SETTLE_DEADLINE {
            let table = full_table(&rest, &jobs)?;
            eprintln!("{table}");
            anyhow::bail!("behaviours {pending:?} not shown by Flink after {SETTLE_DEADLINE:?}");
        }
        sleep(Duration::from_secs(3));
    }
    log(
        t0,
        format!(
            "metrics settled after {:.0}s",
            settle_start.elapsed().as_secs_f64()
        ),
    );

    // Per-subtask proof, printed, then asserted.
    let mut all = Vec::new();
    for (_, _, jid) in &jobs {
        all.extend(readings::read_job(&rest, jid)?);
    }
    eprintln!("\n{}", format_table(&all));
    for c in &CHECKS {
        let subject = c.mode.subject();
        let (_, name, _) = jobs.iter().find(|j| j.0 == c.mode).unwrap();
        let rows: Vec<&SubtaskReading> = all
            .iter()
            .filter(|r| &r.job_name == name && r.vertex_name == subject.name)
            .collect();
        ensure!(
            rows.len() == subject.parallelism as usize,
            "{name}: expected {} subtasks of {}",
            subject.parallelism,
            subject.name
        );
        for r in &rows {
            let v = match c.metric {
                readings::HARD_BP_MS => r.hard_ms,
                readings::SOFT_BP_MS => r.soft_ms,
                readings::IDLE_MS => r.idle_ms,
                _ => r.busy_ms,
            };
            ensure!(
                v.is_some_and(|v| v >= c.min),
                "{name} {} #{}: {} = {v:?}, want ≥ {}",
                r.vertex_name,
                r.subtask,
                c.metric,
                c.min
            );
            let rate = if c.rate == readings::RECORDS_IN_PER_SECOND {
                r.records_in_per_s
            } else {
                r.records_out_per_s
            };
            ensure!(
                rate.is_some_and(|x| x > 0.0),
                "{name} {} #{}: {} = {rate:?}: readings not live yet",
                r.vertex_name,
                r.subtask,
                c.rate
            );
            // Flink's own /backpressure agrees.
            match c.mode {
                JobMode::Hard | JobMode::Soft | JobMode::Legacy | JobMode::Mimic => {
                    ensure!(
                        r.bp_level.as_deref() == Some("high"),
                        "{name} {} #{}: /backpressure level {:?}",
                        r.vertex_name,
                        r.subtask,
                        r.bp_level
                    );
                    ensure!(
                        r.vertex_bp_level.as_deref() == Some("high"),
                        "{name}: vertex level {:?}",
                        r.vertex_bp_level
                    );
                }
                JobMode::Idle => ensure!(
                    r.bp_level.as_deref() == Some("ok")
                        && r.bp_idle_ratio.is_some_and(|x| x >= 0.7),
                    "{name} {} #{}: /backpressure {:?} idleRatio {:?}",
                    r.vertex_name,
                    r.subtask,
                    r.bp_level,
                    r.bp_idle_ratio
                ),
                JobMode::Busy | JobMode::Async | JobMode::Skew => ensure!(
                    r.bp_level.as_deref() == Some("ok")
                        && r.bp_busy_ratio.is_some_and(|x| x >= 0.7),
                    "{name} {} #{}: /backpressure {:?} busyRatio {:?}",
                    r.vertex_name,
                    r.subtask,
                    r.bp_level,
                    r.bp_busy_ratio
                ),
            }
        }
    }
    log(
        t0,
        "every behaviour proven by Flink's metrics and /backpressure",
    );

    // The identity check run against the live cluster rejects someone else's TaskManagers.
    let live_overview = rest.overview()?;
    let live_tms = rest.taskmanagers()?;
    let mut foreign = cluster.identity().clone();
    foreign.resource_ids = vec!["someone-else-tm0".into(), "someone-else-tm1".into()];
    ensure!(
        verify_cluster_identity(&foreign, &live_overview, &live_tms).is_err(),
        "foreign identity accepted"
    );
    verify_cluster_identity(cluster.identity(), &live_overview, &live_tms)?;

    rest.cancel_job(&twin)?;
    let pids = cluster.pids();
    let stop_start = Instant::now();
    cluster.stop()?;
    log(
        t0,
        format!(
            "cluster stopped in {:.1}s",
            stop_start.elapsed().as_secs_f64()
        ),
    );
    for pid in &pids {
        ensure!(!is_alive(*pid), "pid {pid} still alive after stop()");
    }
    ensure!(
        rest.overview().is_err(),
        "REST still answering after stop()"
    );
    log(
        t0,
        format!(
            "done: PIDs {pids:?} gone; total {:.0}s",
            t0.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// The REST endpoint shows exactly our TaskManagers, and our PIDs are live JVMs of this cluster.
fn check_cluster_is_ours(cluster: &FlinkCluster) -> Result<()> {
    cluster.verify_identity()?;
    let registered: BTreeSet<String> = cluster
        .rest()
        .taskmanagers()?
        .into_iter()
        .map(|t| t.id)
        .collect();
    for tm in cluster.taskmanagers() {
        ensure!(
            registered.contains(&tm.resource_id),
            "{} not registered",
            tm.resource_id
        );
        let cmd = bpmon_e2e::process::cmdline(tm.pid).context("TM pid not running")?;
        ensure!(
            // The ident names its log file (`-Dlog.file`) whatever the launch style; a
            // script-started TaskManager's command line has no resource id.
            cmd.contains("TaskManagerRunner") && cmd.contains(&tm.ident),
            "pid {} is not TM {}: {cmd}",
            tm.pid,
            tm.resource_id
        );
    }
    let jm = bpmon_e2e::process::cmdline(cluster.jobmanager_pid()).context("JM pid not running")?;
    ensure!(
        jm.contains("StandaloneSessionClusterEntrypoint"),
        "JM pid is not a JobManager: {jm}"
    );
    Ok(())
}

/// Waits for the job and checks its vertices, edges and subtask placement are as described.
fn check_job_shape(
    rest: &FlinkRest,
    mode: JobMode,
    name: &str,
    jid: &str,
    cluster: &FlinkCluster,
) -> Result<()> {
    let job = rest.wait_job_running(jid, Duration::from_secs(90))?;
    ensure!(job.name == name, "job name {} != {name}", job.name);
    let names: Vec<&str> = job.vertices.iter().map(|v| v.name.as_str()).collect();
    let expected: Vec<&str> = mode.vertices().iter().map(|v| v.name).collect();
    ensure!(
        names == expected,
        "{name}: vertices {names:?}, expected {expected:?}"
    );
    for (v, e) in job.vertices.iter().zip(mode.vertices()) {
        ensure!(
            v.parallelism == e.parallelism,
            "{name} {}: parallelism {}",
            v.name,
            v.parallelism
        );
        let details = rest.vertex(jid, &v.id)?;
        for s in &details.subtasks {
            let tm = s.taskmanager_id.as_deref().unwrap_or("?");
            ensure!(
                cluster.taskmanagers().iter().any(|t| t.resource_id == tm),
                "{name} {} #{} on unknown TM {tm}",
                v.name,
                s.subtask
            );
        }
    }
    // Upstream → downstream: one edge per consecutive vertex pair.
    let edges = rest.job_plan(jid)?.edges();
    ensure!(
        edges.len() + 1 == job.vertices.len(),
        "{name}: edges {edges:?}"
    );
    for (pair, edge) in job.vertices.windows(2).zip(&edges) {
        ensure!(
            edge.source == pair[0].id && edge.target == pair[1].id,
            "{name}: edge {edge:?}"
        );
    }
    Ok(())
}

fn check_same_names(rest: &FlinkRest, a: &str, b: &str) -> Result<()> {
    let (ja, jb) = (rest.job(a)?, rest.job(b)?);
    let na: Vec<&str> = ja.vertices.iter().map(|v| v.name.as_str()).collect();
    let nb: Vec<&str> = jb.vertices.iter().map(|v| v.name.as_str()).collect();
    ensure!(
        a != b && na == nb,
        "same-mode jobs differ in vertex names: {na:?} vs {nb:?}"
    );
    let same_ids = ja
        .vertices
        .iter()
        .zip(&jb.vertices)
        .all(|(x, y)| x.id == y.id);
    eprintln!(
        "same-name jobs {a} and {b}: vertex names identical; vertex ids identical too: {same_ids}"
    );
    Ok(())
}

fn vertex_id(rest: &FlinkRest, jid: &str, name: &str) -> Result<String> {
    let job = rest.job(jid)?;
    Ok(job
        .vertex(name)
        .with_context(|| format!("job {jid} has no vertex {name:?}"))?
        .id
        .clone())
}

fn full_table(rest: &FlinkRest, jobs: &[(JobMode, String, String)]) -> Result<String> {
    let mut all = Vec::new();
    for (_, _, jid) in jobs {
        all.extend(readings::read_job(rest, jid)?);
    }
    Ok(format_table(&all))
}

/// The identity check, offline: a cluster with other TaskManager ids, another version or
/// another size is not ours.
#[test]
fn identity_check_rejects_foreign_cluster() {
    let ours = ClusterIdentity {
        flink_version: "2.3.0".into(),
        resource_ids: vec!["bpmon-1-tm0".into(), "bpmon-1-tm1".into()],
        slots_total: 8,
    };
    let overview = |v: &str, n: u32| Overview {
        taskmanagers: n,
        slots_total: n * 4,
        slots_available: n * 4,
        jobs_running: 0,
        flink_version: v.into(),
        flink_commit: String::new(),
    };
    let tm = |id: &str| TaskManagerInfo {
        id: id.into(),
        path: String::new(),
        data_port: 1,
        slots_number: 4,
        free_slots: 4,
    };
    assert!(verify_cluster_identity(
        &ours,
        &overview("2.3.0", 2),
        &[tm("bpmon-1-tm0"), tm("bpmon-1-tm1")]
    )
    .is_ok());
    // A default standalone cluster: TM ids like "127.0.0.1:43211-6f1c2e".
    assert!(verify_cluster_identity(
        &ours,
        &overview("2.3.0", 2),
        &[tm("127.0.0.1:43211-6f1c2e"), tm("127.0.0.1:40001-aa")]
    )
    .is_err());
    assert!(verify_cluster_identity(
        &ours,
        &overview("1.20.3", 2),
        &[tm("bpmon-1-tm0"), tm("bpmon-1-tm1")]
    )
    .is_err());
    assert!(verify_cluster_identity(
        &ours,
        &overview("2.3.0", 3),
        &[tm("bpmon-1-tm0"), tm("bpmon-1-tm1"), tm("x")]
    )
    .is_err());
}
