//! The whole product on a real Flink session cluster with two TaskManagers: `bpmon-agent run`
//! samples both TaskManagers and ships to `bpmon-collector serve`, which reads Flink's REST API
//! (through a proxy the test can take down), merges, stores and answers the CLI.
//!
//! Checked, in one cluster's life:
//! 1. levels per subtask agree with Flink's own `/backpressure` (printed: the accuracy figure),
//!    for hard and soft back-pressure, idle, busy, skew, and two jobs with identically named
//!    vertices;
//! 2. the diagnosis names the bottleneck, and says skew when only one subtask is slow;
//! 3. the CLI: `jobs`, `status`, `diagnose`, `history`, `config get/set`; `config set` changes what
//!    the agent does within one interval;
//! 4. faults: Flink REST unreachable (status says stale, then recovers); the collector restarted
//!    while the agent runs (nothing lost: windows of the downtime arrive later); the agent killed
//!    mid-window and restarted; a TaskManager restarted (subtasks show the new attempt).

use bpmon_proto::time::now_ms;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_e2e::proxy::TcpProxy;
use bpmon_e2e::readings::{self, SubtaskReading};
use bpmon_e2e::services::{AgentProc, CollectorProc};
use bpmon_e2e::{
    one_cluster_at_a_time, wait_for, work_dir, Behaviour, ClusterOptions, FlinkCluster, FlinkDist,
    JobMode, TestJobs,
};
use serde_json::Value;

/// How long Flink may take to show every behaviour in its (60 s sliding) time metrics.
const SETTLE_DEADLINE: Duration = Duration::from_secs(150);
/// Default sampling for the test: 40 × 50 ms every 5 s.
const INTERVAL: Duration = Duration::from_secs(5);

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

struct Job {
    mode: JobMode,
    name: &'static str,
    jid: String,
}

#[test]
fn pipeline_on_flink_2_3() -> Result<()> {
    let _one = one_cluster_at_a_time();
    pipeline_on_flink("2.3.0")
}

#[test]
fn pipeline_on_flink_1_20() -> Result<()> {
    let _one = one_cluster_at_a_time();
    pipeline_on_flink("1.20.3")
}

fn pipeline_on_flink(version: &str) -> Result<()> {
    let t0 = Instant::now();
    let dist = FlinkDist::install(version)?;
    let jar = TestJobs::build(&dist)?;
    // 6 jobs × 2 slots; restarts allowed so that a TaskManager restart fails jobs over.
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 6,
            extra_conf: ClusterOptions::restarting_jobs(),
            ..ClusterOptions::default()
        },
    )?;
    log(
        t0,
        format!("Flink {} up at {}", dist.version(), cluster.rest_url()),
    );
    let rest = cluster.rest().clone();

    let mut jobs: Vec<Job> = Vec::new();
    for (mode, name) in [
        (JobMode::Hard, "bpmon-hard"),
        (JobMode::Soft, "bpmon-soft"),
        (JobMode::Idle, "bpmon-idle"),
        // Right after bpmon-idle, with its vertex names and the opposite behaviour: told apart
        // by thread creation order.
        (JobMode::Mimic, "bpmon-mimic"),
        (JobMode::Skew, "bpmon-skew"),
        (JobMode::Hard, "bpmon-hard-twin"),
    ] {
        if name == "bpmon-hard-twin" {
            // Same vertex names as bpmon-hard; deployed a few seconds later, so the threads'
            // ages tell the two apart.
            sleep(Duration::from_secs(4));
        }
        let jid = TestJobs::submit(&rest, &jar, mode, name)?;
        // Each job runs before the next is submitted: jobs with equal vertex names (hard and
        // soft share their consumer's) are then deployed in order, which is what creation order
        // pairing needs. Submitted together, they may deploy in the same instant, and the
        // collector rightly calls their threads ambiguous.
        rest.wait_job_running(&jid, Duration::from_secs(120))
            .with_context(|| format!("{name} running"))?;
        jobs.push(Job { mode, name, jid });
    }
    log(t0, "all jobs RUNNING");

    // The collector reads Flink through a proxy the test can take down.
    let rest_addr = SocketAddr::from(([127, 0, 0, 1], cluster.rest_port()));
    let mut proxy = TcpProxy::start(rest_addr)?;
    let dir = work_dir().join("pipeline").join(format!("{}", now_ms()));
    let data_dir = dir.join("collector");
    let serve_args = ["--poll-interval", "1s"];
    let mut collector = CollectorProc::start(&[proxy.url()], &data_dir, 0, &serve_args)?;
    log(t0, format!("collector at {}", collector.url));
    collector.set_test_sampling()?;

    let spool = dir.join("agent-spool");
    let agent_args = [
        "--discovery-interval",
        "2s",
        "--plan-refresh-interval",
        "2s",
    ];
    let mut agent = AgentProc::start(&collector.url, "e2e-agent", &spool, &agent_args)?;

    // Let Flink's windows fill with steady-state behaviour.
    let settle = Instant::now();
    loop {
        let mut pending = Vec::new();
        for j in &jobs {
            // Right after a job starts, Flink's /backpressure can answer 500 (no metrics yet:
            // NoSuchElementException in JobVertexBackPressureHandler): not settled yet.
            let rows = match readings::read_job(&rest, &j.jid) {
                Ok(rows) => rows,
                Err(e) => {
                    pending.push(format!("{}: {e:#}", j.name));
                    continue;
                }
            };
            for r in rows
                .iter()
                .filter(|r| r.vertex_name == j.mode.subject().name)
            {
                let ok = match (j.mode, j.mode.subject().behaviour, r.subtask) {
                    // Only subtask 0 is slow; 1 idles.
                    (JobMode::Skew, _, 1) => r.idle_ms.is_some_and(|v| v >= 500.0),
                    (_, Behaviour::HardBackPressured, _) => r.hard_ms.is_some_and(|v| v >= 500.0),
                    (_, Behaviour::SoftBackPressured, _) => r.soft_ms.is_some_and(|v| v >= 500.0),
                    (_, Behaviour::Idle, _) => r.idle_ms.is_some_and(|v| v >= 700.0),
                    (_, Behaviour::BusySleeping | Behaviour::BusyCpu, _) => {
                        r.busy_ms.is_some_and(|v| v >= 700.0)
                    }
                };
                if !ok {
                    pending.push(format!("{}/{}#{}", j.name, r.vertex_name, r.subtask));
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if settle.elapsed() > SETTLE_DEADLINE {
            bail!(
                "Flink never showed the expected behaviour of {pending:?}\nagent log:\n{}",
                agent.daemon.log_tail(40)
            );
        }
        sleep(Duration::from_secs(3));
    }
    log(
        t0,
        format!(
            "Flink's metrics settled after {:.0}s",
            settle.elapsed().as_secs_f64()
        ),
    );

    // --- 1. Levels against Flink's /backpressure -------------------------------------------
    // Windows that started after Flink settled, for every subtask of every job.
    let settled_ms = now_ms();
    let mut missing = String::new();
    let statuses: BTreeMap<&str, Value> = wait_for(
        "a fresh level for every subtask",
        Duration::from_secs(60),
        || {
            let mut out = BTreeMap::new();
            missing.clear();
            for j in &jobs {
                let s = collector.cli_json(&["status", &j.jid])?;
                for st in readings::status_subtasks(&s).filter(|st| {
                    !st["level"].is_string()
                        || st["window_start_ms"].as_u64().unwrap_or(0) < settled_ms
                }) {
                    missing.push_str(&format!("\n  {} #{}: {}", j.name, st["subtask"], st["why"]));
                }
                out.insert(j.name, s);
            }
            Ok(missing.is_empty().then_some(out))
        },
    )
    .with_context(|| {
        format!(
            "without a fresh level:{missing}\nagent log:\n{}\ncollector log:\n{}",
            agent.daemon.log_tail(10),
            collector.daemon.log_tail(30)
        )
    })?;
    let mut flink: Vec<SubtaskReading> = Vec::new();
    for j in &jobs {
        flink.extend(readings::read_job(&rest, &j.jid)?);
    }
    let (agree, total) = readings::agreement(statuses.iter().map(|(n, s)| (*n, s)), &flink)?;
    log(
        t0,
        format!(
            "ACCURACY: {agree}/{total} subtasks have the level Flink's /backpressure shows ({:.0}%)",
            100.0 * agree as f64 / total as f64
        ),
    );
    ensure!(total == 24, "{total} subtasks compared");
    // Every subtask whose behaviour the job was built for must agree.
    for j in &jobs {
        let s = &statuses[j.name];
        let expect = |vertex: &str, subtask: u32| -> &'static str {
            match (j.mode, vertex, subtask) {
                (JobMode::Hard, "Source: numbers -> explode", _) => "high",
                (JobMode::Soft, "Source: numbers", _) => "high",
                (JobMode::Skew, "Source: numbers", _) => "high",
                (JobMode::Mimic, "Source: numbers -> throttle", _) => "high",
                _ => "ok",
            }
        };
        for v in s["vertices"].as_array().context("vertices")? {
            let name = v["name"].as_str().unwrap_or_default();
            for st in v["subtasks"].as_array().context("subtasks")? {
                let i = st["subtask"].as_u64().unwrap_or(99) as u32;
                ensure!(
                    st["level"] == expect(name, i),
                    "{} / {name} #{i}: bpmon says {} (ratio {}), expected {}; the window: {}",
                    j.name,
                    st["level"],
                    st["ratio"],
                    expect(name, i),
                    serde_json::json!({
                        "samples": st["samples"], "blocked": st["blocked"], "soft": st["soft"],
                        "idle": st["idle"], "busy": st["busy"], "split": st["split"],
                        "metrics": st["metrics"], "window_start_ms": st["window_start_ms"],
                    })
                );
            }
        }
        ensure!(
            s["stale"] == false,
            "{}: stale {}",
            j.name,
            s["stale_reasons"]
        );
    }
    ensure!(
        agree as f64 >= 0.9 * total as f64,
        "only {agree}/{total} subtasks agree with Flink"
    );
    // Same-named vertices were told apart (by age for the twin, by creation order for the
    // mimic): every subtask has its own windows, and the levels above prove the pairing.
    for name in ["bpmon-hard", "bpmon-hard-twin", "bpmon-idle", "bpmon-mimic"] {
        ensure!(
            readings::status_subtasks(&statuses[name]).all(|st| st["why"].is_null()),
            "{name}"
        );
    }

    // --- 2. Diagnosis -----------------------------------------------------------------------
    let bottleneck = |name: &str| -> Result<Value> {
        let s = &statuses[name];
        let f = s["diagnosis"]
            .as_array()
            .context("diagnosis")?
            .iter()
            .find(|f| f["kind"] == "bottleneck")
            .cloned()
            .with_context(|| format!("{name}: no bottleneck in {}", s["diagnosis"]))?;
        Ok(f)
    };
    let vertex_name = |name: &str, vid: &Value| -> String {
        statuses[name]["vertices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| &v["vertex_id"] == vid)
            .and_then(|v| v["name"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let hard = bottleneck("bpmon-hard")?;
    ensure!(vertex_name("bpmon-hard", &hard["vertex_id"]) == "slow consumer -> discard: Writer");
    ensure!(hard["subtasks"] == serde_json::json!([0, 1]), "{hard}");
    ensure!(
        hard["top_frames"][0]["frame"]
            .as_str()
            .is_some_and(|f| f.contains("Slow.map")),
        "{hard}"
    );
    let skew = bottleneck("bpmon-skew")?;
    ensure!(vertex_name("bpmon-skew", &skew["vertex_id"]) == "skewed consumer -> discard: Writer");
    ensure!(skew["subtasks"] == serde_json::json!([0]), "{skew}");
    ensure!(
        skew["message"].as_str().is_some_and(|m| m.contains("skew")),
        "{skew}"
    );
    ensure!(
        !statuses["bpmon-idle"]["diagnosis"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["kind"] == "bottleneck"),
        "idle job has a bottleneck: {}",
        statuses["bpmon-idle"]["diagnosis"]
    );
    log(t0, format!("diagnosis: {}", hard["message"]));
    log(t0, format!("diagnosis: {}", skew["message"]));

    // --- 3. CLI -------------------------------------------------------------------------------
    let text = |args: &[&str]| -> Result<String> {
        let out = collector.cli(args)?;
        ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let jobs_table = text(&["jobs"])?;
    eprintln!("{jobs_table}");
    for j in &jobs {
        ensure!(jobs_table.contains(j.name), "jobs lists {}", j.name);
    }
    ensure!(
        jobs_table.contains("HIGH") && !jobs_table.contains('\u{1b}'),
        "{jobs_table}"
    );
    let status_table = text(&["status", "bpmon-skew"])?;
    eprintln!("{status_table}");
    ensure!(status_table.contains("skewed consumer -> discard: Writer"));
    let diagnose = text(&["diagnose", "bpmon-hard"])?;
    eprintln!("{diagnose}");
    ensure!(diagnose.contains("bottleneck"), "{diagnose}");
    let history = collector.cli_json(&[
        "history",
        "bpmon-hard",
        "--vertex",
        "slow consumer -> discard: Writer",
        "--since",
        "10m",
    ])?;
    let windows = history["windows"].as_array().context("windows")?;
    ensure!(windows.len() >= 4, "{} windows", windows.len());
    ensure!(windows
        .iter()
        .all(|w| w["vertex_name"] == "slow consumer -> discard: Writer" && w["level"] == "ok"));
    // Two jobs share the name prefix, not the name: both resolve; an unknown one is an error.
    let unknown = collector.cli(&["status", "no-such-job"])?;
    ensure!(!unknown.status.success());
    ensure!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-job"));

    // config set changes what the agent does within one interval.
    let set_at = now_ms();
    collector.cli_json(&[
        "config",
        "set",
        "bpmon-soft",
        "--samples",
        "20",
        "--delay",
        "20ms",
        "--interval",
        "3s",
    ])?;
    let got = collector.cli_json(&["config", "get", "bpmon-soft"])?;
    ensure!(
        got["settings"]["samples"] == 20 && got["inherited"] == false,
        "{got}"
    );
    let first_new = wait_for(
        "a window with the new settings",
        Duration::from_secs(30),
        || {
            let h = collector.cli_json(&["history", "bpmon-soft", "--since", "1m"])?;
            Ok(h["windows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["samples"] == 20)
                .filter_map(|w| w["window_start_ms"].as_u64())
                .min())
        },
    )?;
    let took = first_new.saturating_sub(set_at);
    log(
        t0,
        format!("config set: first 20-sample window started {took} ms after the change"),
    );
    ensure!(
        took <= INTERVAL.as_millis() as u64,
        "the new settings took {took} ms to apply (interval {INTERVAL:?})"
    );
    // Other jobs keep the default.
    let other = collector.cli_json(&["history", "bpmon-idle", "--since", "20s"])?;
    ensure!(other["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|w| w["samples"] == 40));

    // --- 4. Faults ----------------------------------------------------------------------------
    // Flink REST unreachable: status says stale, then recovers.
    proxy.down();
    let down_at = Instant::now();
    let stale = wait_for("status to say stale", Duration::from_secs(20), || {
        let s = collector.cli_json(&["status", "bpmon-hard"])?;
        Ok((s["stale"] == true).then_some(s))
    })?;
    let reasons = stale["stale_reasons"].to_string();
    log(
        t0,
        format!(
            "Flink REST down: stale after {:.1}s: {reasons}",
            down_at.elapsed().as_secs_f64()
        ),
    );
    ensure!(reasons.contains(&proxy.url()), "{reasons}");
    proxy.up()?;
    wait_for("status fresh again", Duration::from_secs(20), || {
        let s = collector.cli_json(&["status", "bpmon-hard"])?;
        Ok((s["stale"] == false).then_some(()))
    })?;
    log(t0, "Flink REST back: status fresh");

    // Collector restarted while the agent runs: the windows of the downtime arrive later.
    let port = collector.port();
    let code = collector.daemon.stop(Duration::from_secs(10))?;
    ensure!(code == Some(0), "collector exit code {code:?}");
    let down_from = now_ms();
    sleep(2 * INTERVAL);
    let down_until = now_ms();
    collector = CollectorProc::start(&[proxy.url()], &data_dir, port, &serve_args)?;
    log(t0, "collector restarted");
    let replayed = wait_for("the downtime's windows", Duration::from_secs(60), || {
        let h = collector.cli_json(&["history", "bpmon-idle", "--since", "2m"])?;
        let n = h["windows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| {
                w["window_start_ms"]
                    .as_u64()
                    .is_some_and(|s| s >= down_from && s < down_until)
            })
            .count();
        // 2 intervals down × 4 subtasks: at least one window per subtask.
        Ok((n >= 4).then_some(n))
    })?;
    log(
        t0,
        format!(
            "{replayed} windows sampled while the collector was down arrived after it came back"
        ),
    );
    ensure!(
        !agent.daemon.log_tail(200).contains("dropped"),
        "{}",
        agent.daemon.log_tail(50)
    );

    // Agent killed mid-window, restarted: it goes on, and its new batches are not mistaken for
    // duplicates of old ones.
    sleep(Duration::from_millis(1_300));
    agent.daemon.kill()?;
    let killed_at = now_ms();
    agent = AgentProc::start(&collector.url, "e2e-agent", &spool, &agent_args)?;
    wait_for(
        "windows from the restarted agent",
        Duration::from_secs(40),
        || {
            let h = collector.cli_json(&["history", "bpmon-hard", "--since", "1m"])?;
            let n = h["windows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["window_start_ms"].as_u64().is_some_and(|s| s > killed_at))
                .count();
            Ok((n >= 4).then_some(()))
        },
    )?;
    let agents = collector.cli_json(&["agents"])?;
    log(t0, format!("agent restarted after SIGKILL: {agents}"));

    // A TaskManager restarted: the jobs fail over and the subtasks show their new attempt.
    // Failover redeploys every job in the same instant, so jobs sharing vertex names with
    // bpmon-hard (its twin; bpmon-soft's consumer) would leave its threads rightly ambiguous
    // by name and age (the in-process backend's exact ids settle that: jvmti_on_flink). They
    // are cancelled first.
    for j in jobs
        .iter()
        .filter(|j| matches!(j.name, "bpmon-hard-twin" | "bpmon-soft"))
    {
        rest.cancel_job(&j.jid)?;
    }
    jobs.retain(|j| !matches!(j.name, "bpmon-hard-twin" | "bpmon-soft"));
    let restarted = cluster.restart_taskmanager(1)?;
    log(
        t0,
        format!(
            "TaskManager {} restarted as pid {}",
            restarted.resource_id, restarted.pid
        ),
    );
    for j in &jobs {
        rest.wait_job_running(&j.jid, Duration::from_secs(120))?;
    }
    let s = wait_for(
        "subtasks at their new attempt",
        Duration::from_secs(90),
        || {
            let s = collector.cli_json(&["status", "bpmon-hard"])?;
            let readings = readings::read_job(&rest, &jobs[0].jid)?;
            let all = readings::status_subtasks(&s).all(|st| {
                readings.iter().any(|r| {
                    r.attempt > 0
                        && Some(r.subtask as u64) == st["subtask"].as_u64()
                        && st["attempt"].as_u64() == Some(u64::from(r.attempt))
                        && st["level"].is_string()
                })
            });
            Ok(all.then_some(s))
        },
    )
    .with_context(|| agent.daemon.log_tail(30))?;
    log(
        t0,
        format!(
            "after the TaskManager restart bpmon-hard is {} with attempts {:?}",
            s["level"],
            readings::status_subtasks(&s)
                .map(|st| st["attempt"].clone())
                .collect::<Vec<_>>()
        ),
    );

    let code = agent.daemon.stop(Duration::from_secs(15))?;
    ensure!(code == Some(0), "agent exit code {code:?}");
    collector.daemon.stop(Duration::from_secs(10))?;
    cluster.stop()?;
    log(t0, "done");
    Ok(())
}
