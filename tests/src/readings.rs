//! Flink's own view of a running job, per subtask: the time metrics (hard/soft back-pressure,
//! idle, busy), the buffer pool usages, and the `/backpressure` endpoint. This is the ground
//! truth the e2e tests and the benchmark compare bpmon against.

use std::fmt::Write as _;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::jobs::{Behaviour, JobMode};
use crate::rest::FlinkRest;

/// How long Flink may take to show every behaviour in its (60 s sliding) time metrics.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(150);

/// Waits until Flink's own time metrics show each job's subject vertex behaving as its mode
/// says, in every subtask; `jobs` are (mode, name, job id). Returns how long that took.
pub fn wait_settled(rest: &FlinkRest, jobs: &[(JobMode, String, String)]) -> Result<Duration> {
    let settle = Instant::now();
    loop {
        let mut pending = Vec::new();
        for (mode, name, jid) in jobs {
            // Right after a job starts, Flink's /backpressure can answer 500 (no metrics yet:
            // NoSuchElementException in JobVertexBackPressureHandler): not settled yet.
            let rows = match read_job(rest, jid) {
                Ok(rows) => rows,
                Err(e) => {
                    pending.push(format!("{name}: {e:#}"));
                    continue;
                }
            };
            for r in rows.iter().filter(|r| r.vertex_name == mode.subject().name) {
                let ok = match mode.subject().behaviour {
                    Behaviour::HardBackPressured => r.hard_ms.is_some_and(|v| v >= 500.0),
                    Behaviour::SoftBackPressured => r.soft_ms.is_some_and(|v| v >= 500.0),
                    Behaviour::Idle => r.idle_ms.is_some_and(|v| v >= 700.0),
                    Behaviour::BusySleeping | Behaviour::BusyCpu => {
                        r.busy_ms.is_some_and(|v| v >= 700.0)
                    }
                };
                if !ok {
                    pending.push(format!("{name}/{}#{}", r.vertex_name, r.subtask));
                }
            }
        }
        if pending.is_empty() {
            return Ok(settle.elapsed());
        }
        ensure!(
            settle.elapsed() < SETTLE_DEADLINE,
            "Flink never showed the expected behaviour of {pending:?}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

pub const HARD_BP_MS: &str = "hardBackPressuredTimeMsPerSecond";
pub const SOFT_BP_MS: &str = "softBackPressuredTimeMsPerSecond";
pub const IDLE_MS: &str = "idleTimeMsPerSecond";
pub const BUSY_MS: &str = "busyTimeMsPerSecond";
pub const OUT_POOL_USAGE: &str = "Shuffle.Netty.Output.Buffers.outPoolUsage";
pub const IN_POOL_USAGE: &str = "Shuffle.Netty.Input.Buffers.inPoolUsage";
pub const RECORDS_IN_PER_SECOND: &str = "numRecordsInPerSecond";
pub const RECORDS_OUT_PER_SECOND: &str = "numRecordsOutPerSecond";

/// The metric ids read for every subtask.
pub const SUBTASK_METRICS: [&str; 8] = [
    HARD_BP_MS,
    SOFT_BP_MS,
    IDLE_MS,
    BUSY_MS,
    OUT_POOL_USAGE,
    IN_POOL_USAGE,
    RECORDS_IN_PER_SECOND,
    RECORDS_OUT_PER_SECOND,
];

/// One subtask as Flink reports it. Metric fields are `None` when absent or `NaN`.
#[derive(Debug, Clone, Serialize)]
pub struct SubtaskReading {
    pub job_name: String,
    pub job_id: String,
    pub vertex_id: String,
    pub vertex_name: String,
    pub subtask: u32,
    pub attempt: u32,
    pub taskmanager_id: Option<String>,
    pub hard_ms: Option<f64>,
    pub soft_ms: Option<f64>,
    pub idle_ms: Option<f64>,
    pub busy_ms: Option<f64>,
    pub out_pool_usage: Option<f64>,
    pub in_pool_usage: Option<f64>,
    /// Record rates. Like the time metrics they are "views" updated every 5 s on the
    /// TaskManager, so a rate > 0 also proves the time metrics are no longer at their initial
    /// 0 (which makes a fresh task read busy = 1000 - 0 - 0 for its first seconds).
    pub records_in_per_s: Option<f64>,
    pub records_out_per_s: Option<f64>,
    /// From `/backpressure`: the subtask's level and ratios.
    pub bp_level: Option<String>,
    pub bp_ratio: Option<f64>,
    pub bp_idle_ratio: Option<f64>,
    pub bp_busy_ratio: Option<f64>,
    /// From `/backpressure`: the vertex level (max over subtasks).
    pub vertex_bp_level: Option<String>,
}

/// Reads every subtask of every vertex of job `jid`.
pub fn read_job(rest: &FlinkRest, jid: &str) -> Result<Vec<SubtaskReading>> {
    let job = rest.job(jid)?;
    let mut out = Vec::new();
    for v in &job.vertices {
        out.extend(read_vertex(rest, jid, &job.name, &v.id, &v.name)?);
    }
    Ok(out)
}

/// Reads every subtask of one vertex.
pub fn read_vertex(
    rest: &FlinkRest,
    jid: &str,
    job_name: &str,
    vid: &str,
    vertex_name: &str,
) -> Result<Vec<SubtaskReading>> {
    let details = rest.vertex(jid, vid)?;
    let bp = rest.backpressure(jid, vid)?;
    let mut out = Vec::new();
    for s in &details.subtasks {
        let m = rest
            .subtask_metrics(jid, vid, s.subtask, &SUBTASK_METRICS)
            .with_context(|| format!("metrics of {vertex_name} #{}", s.subtask))?;
        let sbp = bp.subtask(s.subtask);
        out.push(SubtaskReading {
            job_name: job_name.to_string(),
            job_id: jid.to_string(),
            vertex_id: vid.to_string(),
            vertex_name: vertex_name.to_string(),
            subtask: s.subtask,
            attempt: s.attempt,
            taskmanager_id: s.taskmanager_id.clone(),
            hard_ms: m.f64(HARD_BP_MS),
            soft_ms: m.f64(SOFT_BP_MS),
            idle_ms: m.f64(IDLE_MS),
            busy_ms: m.f64(BUSY_MS),
            out_pool_usage: m.f64(OUT_POOL_USAGE),
            in_pool_usage: m.f64(IN_POOL_USAGE),
            records_in_per_s: m.f64(RECORDS_IN_PER_SECOND),
            records_out_per_s: m.f64(RECORDS_OUT_PER_SECOND),
            bp_level: sbp.and_then(|b| b.level().map(str::to_string)),
            bp_ratio: sbp.and_then(|b| b.ratio),
            bp_idle_ratio: sbp.and_then(|b| b.idle_ratio),
            bp_busy_ratio: sbp.and_then(|b| b.busy_ratio),
            vertex_bp_level: bp.level().map(str::to_string),
        });
    }
    Ok(out)
}

/// A fixed-width text table of readings (one line per subtask).
pub fn format_table(readings: &[SubtaskReading]) -> String {
    let name_w = readings
        .iter()
        .map(|r| r.vertex_name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let job_w = readings
        .iter()
        .map(|r| r.job_name.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:job_w$}  {:name_w$}  {:>2}  {:>6} {:>6} {:>6} {:>6}  {:>7} {:>6}  {:>7} {:>7}  | {:>6} {:>5} {:>5} {:>5}  {:>6}",
        "job", "vertex", "st", "hard", "soft", "idle", "busy", "outPool", "inPool", "in/s", "out/s",
        "level", "ratio", "idleR", "busyR", "vertex"
    );
    for r in readings {
        let _ = writeln!(
            s,
            "{:job_w$}  {:name_w$}  {:>2}  {:>6} {:>6} {:>6} {:>6}  {:>7} {:>6}  {:>7} {:>7}  | {:>6} {:>5} {:>5} {:>5}  {:>6}",
            r.job_name,
            r.vertex_name,
            r.subtask,
            num(r.hard_ms, 0),
            num(r.soft_ms, 0),
            num(r.idle_ms, 0),
            num(r.busy_ms, 0),
            num(r.out_pool_usage, 2),
            num(r.in_pool_usage, 2),
            num(r.records_in_per_s, 0),
            num(r.records_out_per_s, 0),
            r.bp_level.as_deref().unwrap_or("-"),
            num(r.bp_ratio, 2),
            num(r.bp_idle_ratio, 2),
            num(r.bp_busy_ratio, 2),
            r.vertex_bp_level.as_deref().unwrap_or("-"),
        );
    }
    s
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    }
}

/// Every subtask of a `bpmon-collector status --output json` answer.
pub fn status_subtasks(status: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    status["vertices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["subtasks"].as_array().into_iter().flatten())
}

/// Prints bpmon's level (from `status` answers, by job name) and Flink's `/backpressure` level
/// side by side, subtask by subtask; returns (agreeing, compared). A subtask Flink does not list
/// is an error.
pub fn agreement<'a>(
    statuses: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    flink: &[SubtaskReading],
) -> Result<(usize, usize)> {
    let (mut agree, mut total) = (0, 0);
    eprintln!(
        "{:<20} {:<36} {:>2}  {:<6} {:>6}  {:<6} {:>6}  {:>4} {:>4} {:>4} {:>4}  taskmanager",
        "job", "vertex", "#", "bpmon", "ratio", "flink", "ratio", "blk", "soft", "idle", "busy"
    );
    for (name, s) in statuses {
        for v in s["vertices"].as_array().context("vertices")? {
            let vname = v["name"].as_str().unwrap_or_default();
            for st in v["subtasks"].as_array().context("subtasks")? {
                let i = st["subtask"].as_u64().unwrap_or(0) as u32;
                let f = flink
                    .iter()
                    .find(|r| r.job_name == name && r.vertex_name == vname && r.subtask == i)
                    .with_context(|| format!("Flink has no {name}/{vname}#{i}"))?;
                let ours = st["level"].as_str().unwrap_or("-");
                let theirs = f.bp_level.as_deref().unwrap_or("-");
                total += 1;
                if ours == theirs {
                    agree += 1;
                }
                eprintln!(
                    "{:<20} {:<36} {:>2}  {:<6} {:>6.2}  {:<6} {:>6.2}  {:>4} {:>4} {:>4} {:>4}  {}{}",
                    name,
                    vname,
                    i,
                    ours,
                    st["ratio"].as_f64().unwrap_or(f64::NAN),
                    theirs,
                    f.bp_ratio.unwrap_or(f64::NAN),
                    st["blocked"],
                    st["soft"],
                    st["idle"],
                    st["busy"],
                    st["taskmanager_id"].as_str().unwrap_or("?"),
                    if ours == theirs { "" } else { "   <- differs" }
                );
            }
        }
    }
    Ok((agree, total))
}
