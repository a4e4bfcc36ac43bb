//! Why a bottleneck is slow: its causes, ranked by the share of its time each explains. Pure:
//! it reads the bottleneck vertex's snapshot and what the agents saw of its subtasks, and
//! returns causes with their evidence and advice. The rules, and what is said when the evidence
//! is missing, are in `docs/design.md` ("Causes"); in short:
//!
//! - **where the time goes** (of the slow subtasks): `gc` is the TaskManager's stop-the-world
//!   pause share of wall time; the rest is split by what the busy samples were doing: `lock`,
//!   `io`, `sleep`, and running, which is `cpu` (by code area: user code, serialisation, state
//!   backend, Flink) unless the thread's own CPU time says it wanted the CPU without getting it
//!   while its cgroup was throttled or its host saturated: that part is `host`;
//! - **why only some subtasks** (skew): `skew_data` when the slow subtasks receive clearly more
//!   records per second than their siblings, `skew_resources` when they receive about the same
//!   and are slower anyway (their TaskManager's GC, throttling, or neighbours);
//! - `unknown` when the agent reported no such evidence (an older agent, or a backend that cannot
//!   see it): never a guess.
//!
//! `network` causes are the diagnosis's business (a different finding), and only over remote
//! channels.

use std::collections::{BTreeMap, HashMap};

use bpmon_proto::{Activity, ActivityCounts, CgroupCpu, FrameCount, JvmResources};
use serde::{Deserialize, Serialize};

use crate::merge::{MergedSubtask, WindowEvidence};
use crate::model::VertexSnapshot;

/// Causes explaining less than this share of the time are left out.
pub const MIN_SHARE: f64 = 0.03;
/// Slow subtasks receiving at least this many times their siblings' records per second are
/// skewed by their data.
pub const DATA_SKEW_RATIO: f64 = 1.5;
/// A cgroup throttled for at least this share of the window's wall time is starved of CPU.
pub const THROTTLED_SHARE: f64 = 0.05;
/// Runnable threads waiting for a CPU at least this share of the time (`cpu.pressure`).
pub const PRESSURE_SHARE: f64 = 0.10;
/// A host this busy is saturated.
pub const HOST_BUSY: f64 = 0.90;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    Cpu,
    Gc,
    Lock,
    Io,
    Sleep,
    SkewData,
    SkewResources,
    Host,
    Network,
    Unknown,
}

impl CauseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CauseKind::Cpu => "cpu",
            CauseKind::Gc => "gc",
            CauseKind::Lock => "lock",
            CauseKind::Io => "io",
            CauseKind::Sleep => "sleep",
            CauseKind::SkewData => "skew_data",
            CauseKind::SkewResources => "skew_resources",
            CauseKind::Host => "host",
            CauseKind::Network => "network",
            CauseKind::Unknown => "unknown",
        }
    }
}

/// Where on-CPU time goes, by the frame the samples were in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeArea {
    UserCode,
    Serialization,
    StateBackend,
    Flink,
}

impl CodeArea {
    /// The area of a rendered frame, `class.method(location)`.
    pub fn of_frame(frame: &str) -> CodeArea {
        const SERIALIZATION: &[&str] = &[
            "com.esotericsoftware.kryo.",
            "org.apache.flink.api.common.typeutils.",
            "org.apache.flink.api.java.typeutils.runtime.",
            "org.apache.flink.core.memory.DataOutput",
            "org.apache.flink.core.memory.DataInput",
            "org.apache.avro.",
            "com.fasterxml.jackson.",
            "com.google.protobuf.",
        ];
        const STATE: &[&str] = &[
            "org.rocksdb.",
            "org.apache.flink.contrib.streaming.state.",
            "org.apache.flink.state.",
            "org.apache.flink.runtime.state.",
        ];
        if SERIALIZATION.iter().any(|p| frame.starts_with(p)) {
            CodeArea::Serialization
        } else if STATE.iter().any(|p| frame.starts_with(p)) {
            CodeArea::StateBackend
        } else if frame.starts_with("org.apache.flink.") {
            CodeArea::Flink
        } else {
            CodeArea::UserCode
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CodeArea::UserCode => "user code",
            CodeArea::Serialization => "serialisation",
            CodeArea::StateBackend => "the state backend",
            CodeArea::Flink => "Flink's own code",
        }
    }
}

/// One cause of a bottleneck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    pub kind: CauseKind,
    /// For `cpu`: which code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<CodeArea>,
    /// Share of the slow subtasks' time (or, for skew, of the vertex's input) it explains, 0–1;
    /// `None` for `unknown`.
    pub share: Option<f64>,
    /// One sentence: what it is, with the numbers.
    pub summary: String,
    /// The facts it rests on.
    pub evidence: Vec<String>,
    pub advice: String,
}

impl Cause {
    /// A network bottleneck: the receivers' remote input pools are low while the senders'
    /// output pools are full.
    pub fn network(receivers: usize) -> Cause {
        Cause {
            kind: CauseKind::Network,
            area: None,
            share: None,
            summary: "the network between the vertices".into(),
            evidence: vec![format!(
                "the senders' outPoolUsage is high while all {receivers} receivers, reading over \
                 remote channels, have a low inPoolUsage"
            )],
            advice: "check bandwidth and latency between the TaskManagers; more buffers per \
                     channel (taskmanager.network.memory.buffers-per-channel) help a high \
                     credit round-trip"
                .into(),
        }
    }
}

/// What the agents saw of one subtask of the bottleneck vertex.
#[derive(Debug, Clone, Copy)]
pub struct SubtaskSeen<'a> {
    pub merged: &'a MergedSubtask,
    pub evidence: &'a WindowEvidence,
    pub top_frames: &'a [FrameCount],
}

/// The causes of `v` being the bottleneck, most important first: skew (why these subtasks)
/// before where their time goes. `slow` are the subtasks found slow (busy); `seen` what the
/// agents reported of each subtask, by index.
pub fn causes(
    v: &VertexSnapshot,
    slow: &[u32],
    seen: &HashMap<u32, SubtaskSeen<'_>>,
) -> Vec<Cause> {
    let mut out = Vec::new();
    let parallelism = v.subtasks.len();
    if !slow.is_empty() && slow.len() < parallelism {
        out.push(skew(v, slow, seen));
    }
    let slow_seen: Vec<SubtaskSeen> = slow.iter().filter_map(|i| seen.get(i).copied()).collect();
    out.extend(time_causes(&slow_seen));
    out
}

/// Where the slow subtasks' time goes.
fn time_causes(slow: &[SubtaskSeen<'_>]) -> Vec<Cause> {
    // The activities speak for the samples whose stack was read.
    let samples: u32 = slow
        .iter()
        .map(|s| s.evidence.stack_samples.unwrap_or(s.merged.samples))
        .sum();
    let activity = sum_activity(slow);
    let gc = gc_share(slow);
    let (Some(activity), true) = (activity, samples > 0) else {
        // GC is measured apart from the samples: named when it matters, as everywhere.
        let mut causes: Vec<Cause> = gc
            .filter(|g| *g >= MIN_SHARE)
            .map(|g| gc_cause(g, slow))
            .into_iter()
            .collect();
        causes.push(unknown(
            "the agent did not report what the busy samples were doing (an older agent, or a \
             backend that cannot tell)",
        ));
        return causes;
    };
    let running_time = 1.0 - gc.unwrap_or(0.0);
    let share = |n: u32| running_time * f64::from(n) / f64::from(samples);
    let mut causes = Vec::new();
    causes.extend(gc.map(|g| gc_cause(g, slow)));
    causes.push(lock_cause(share(activity.lock), slow));
    causes.push(io_cause(share(activity.io), slow));
    causes.push(sleep_cause(share(activity.sleep), slow));
    let running = share(activity.running);
    let host = host_share(running, slow);
    if let Some((h, evidence)) = &host {
        causes.push(host_cause(*h, evidence.clone()));
    }
    let on_cpu = running - host.map_or(0.0, |(h, _)| h);
    causes.extend(cpu_causes(on_cpu, slow));
    causes.retain(|c| c.share.is_some_and(|s| s >= MIN_SHARE));
    causes.sort_by(|a, b| b.share.unwrap_or(0.0).total_cmp(&a.share.unwrap_or(0.0)));
    if causes.is_empty() {
        causes.push(unknown(
            "the slow subtasks' busy samples explain too little of their time to name a cause",
        ));
    }
    causes
}

/// The slow subtasks' busy samples by activity; `None` when no subtask reported them.
fn sum_activity(slow: &[SubtaskSeen<'_>]) -> Option<ActivityCounts> {
    let mut total: Option<ActivityCounts> = None;
    for a in slow.iter().filter_map(|s| s.evidence.activity) {
        let t = total.get_or_insert_with(ActivityCounts::default);
        for kind in Activity::ALL {
            t.add(kind, a.get(kind));
        }
    }
    total
}

/// The TaskManagers of the slow subtasks, once each (one report's resources per TaskManager).
fn jvms<'a>(slow: &[SubtaskSeen<'a>]) -> Vec<&'a JvmResources> {
    let mut seen: Vec<&JvmResources> = Vec::new();
    for r in slow.iter().filter_map(|s| s.evidence.resources.as_ref()) {
        if !seen.contains(&r) {
            seen.push(r);
        }
    }
    seen
}

/// Stop-the-world GC time over wall time, over the slow subtasks' TaskManagers.
fn gc_share(slow: &[SubtaskSeen<'_>]) -> Option<f64> {
    let (mut gc, mut wall) = (0.0, 0.0);
    for r in jvms(slow) {
        if let (Some(g), true) = (r.gc_pause_ms, r.wall_ms > 0) {
            gc += g;
            wall += r.wall_ms as f64;
        }
    }
    (wall > 0.0).then(|| (gc / wall).clamp(0.0, 1.0))
}

fn gc_cause(share: f64, slow: &[SubtaskSeen<'_>]) -> Cause {
    let count: u64 = jvms(slow).iter().filter_map(|r| r.gc_count).sum();
    let concurrent: f64 = jvms(slow).iter().filter_map(|r| r.gc_concurrent_ms).sum();
    let mut evidence = vec![format!(
        "{} of wall time in stop-the-world GC pauses ({count} collections)",
        pct(share)
    )];
    if concurrent > 0.0 {
        evidence.push(format!(
            "{concurrent:.0} ms of concurrent GC cycles beside them"
        ));
    }
    Cause {
        kind: CauseKind::Gc,
        area: None,
        share: Some(share),
        summary: format!("{} in GC", pct(share)),
        evidence,
        advice: "the TaskManager's heap is under pressure: give it more memory \
                 (taskmanager.memory.task.heap.size), retain less per record or per key, or \
                 move large state off the heap (RocksDB)"
            .into(),
    }
}

fn lock_cause(share: f64, slow: &[SubtaskSeen<'_>]) -> Cause {
    let mut locks: BTreeMap<(String, Option<String>), u32> = BTreeMap::new();
    for l in slow.iter().flat_map(|s| &s.evidence.locks) {
        *locks.entry((l.class.clone(), l.owner.clone())).or_default() += l.samples;
    }
    let mut ranked: Vec<_> = locks.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    let evidence: Vec<String> = ranked
        .iter()
        .take(3)
        .map(|((class, owner), n)| match owner {
            Some(o) => format!("{n} samples waiting for a {class} held by '{o}'"),
            None => format!("{n} samples waiting for a {class}"),
        })
        .collect();
    let on = ranked
        .first()
        .map_or(String::new(), |((class, _), _)| format!(" on a {class}"));
    Cause {
        kind: CauseKind::Lock,
        area: None,
        share: Some(share),
        summary: format!("{} waiting for a lock{on}", pct(share)),
        evidence,
        advice: "the subtasks serialise on a shared lock: more parallelism makes it worse; \
                 remove the shared state (per-subtask or keyed state, a concurrent structure) \
                 or hold the lock for less work"
            .into(),
    }
}

fn io_cause(share: f64, slow: &[SubtaskSeen<'_>]) -> Cause {
    Cause {
        kind: CauseKind::Io,
        area: None,
        share: Some(share),
        summary: format!("{} in socket or file I/O", pct(share)),
        evidence: frames_of(slow, Activity::Io),
        advice: "the operator waits on an external system or the disk: batch or cache the \
                 calls, use Flink's async I/O (AsyncDataStream), or speed up that system"
            .into(),
    }
}

fn sleep_cause(share: f64, slow: &[SubtaskSeen<'_>]) -> Cause {
    Cause {
        kind: CauseKind::Sleep,
        area: None,
        share: Some(share),
        summary: format!("{} sleeping or waiting in user code", pct(share)),
        evidence: frames_of(slow, Activity::Sleep),
        advice: "the operator sleeps or waits on purpose (a throttle, a rate limiter, a poll \
                 or a future): remove or raise the limit, or make the wait asynchronous"
            .into(),
    }
}

/// The part of the running time that was not on a CPU while the cgroup was throttled or the
/// host saturated, with the evidence; `None` when neither was seen.
fn host_share(running: f64, slow: &[SubtaskSeen<'_>]) -> Option<(f64, Vec<String>)> {
    let mut evidence = Vec::new();
    let mut starved = 0.0_f64;
    for r in jvms(slow) {
        let wall = r.wall_ms as f64;
        if wall <= 0.0 {
            continue;
        }
        if let Some(c) = &r.cgroup {
            if let Some((t, how)) = throttled_share(c, wall) {
                if t >= THROTTLED_SHARE {
                    starved = starved.max(t);
                    let quota = c
                        .quota_cpus
                        .map_or(String::new(), |q| format!(" (quota {q:.2} CPUs)"));
                    evidence.push(format!(
                        "cgroup {} throttled in {} of {how}{quota}",
                        c.path,
                        pct(t)
                    ));
                }
            }
            if let Some(p) = c.pressure_some_ms.map(|p| p as f64 / wall) {
                if p >= PRESSURE_SHARE {
                    starved = starved.max(p.min(1.0));
                    evidence.push(format!("threads waited for a CPU {} of the time", pct(p)));
                }
            }
        }
        if let Some(b) = r.host_busy.filter(|b| *b >= HOST_BUSY) {
            starved = starved.max(b - HOST_BUSY);
            evidence.push(format!("the host's CPUs were {} busy", pct(b)));
        }
    }
    if evidence.is_empty() {
        return None;
    }
    // The thread's own CPU time says how much of "running" really ran.
    let share = match thread_cpu_share(slow) {
        Some(c) => {
            evidence.push(format!(
                "the slow threads were on a CPU {} of the time while runnable {}",
                pct(c),
                pct(running)
            ));
            (running - c).max(0.0)
        }
        None => running * starved,
    };
    Some((share.min(running), evidence))
}

/// How throttled a cgroup was, 0–1, and of what: the share of its CFS periods in which it
/// was throttled; without period counts, throttled time over wall time. (Throttled time is
/// summed over the CPUs the group ran on, so on its own it can exceed the wall time.)
fn throttled_share(c: &CgroupCpu, wall_ms: f64) -> Option<(f64, &'static str)> {
    match (c.throttled_periods, c.periods) {
        (Some(t), Some(p)) if p > 0 => Some(((t as f64 / p as f64).min(1.0), "its periods")),
        _ => c
            .throttled_ms
            .map(|t| ((t as f64 / wall_ms).min(1.0), "the time")),
    }
}

fn host_cause(share: f64, evidence: Vec<String>) -> Cause {
    Cause {
        kind: CauseKind::Host,
        area: None,
        share: Some(share),
        summary: format!(
            "{} wanting a CPU the container or host did not give",
            pct(share)
        ),
        evidence,
        advice: "the TaskManager is starved of CPU: raise its CPU limit (cgroup quota, \
                 Kubernetes limits) or move it off the busy host"
            .into(),
    }
}

/// CPU time of the slow subtasks' threads over their wall time.
fn thread_cpu_share(slow: &[SubtaskSeen<'_>]) -> Option<f64> {
    let (cpu, wall) = slow
        .iter()
        .filter_map(|s| s.evidence.cpu)
        .fold((0u64, 0u64), |(c, w), t| (c + t.cpu_ms, w + t.wall_ms));
    (wall > 0).then(|| (cpu as f64 / wall as f64).clamp(0.0, 1.0))
}

/// On-CPU time split by code area, from the running samples' frames.
fn cpu_causes(on_cpu: f64, slow: &[SubtaskSeen<'_>]) -> Vec<Cause> {
    let mut areas: BTreeMap<CodeArea, (u32, BTreeMap<&str, u32>)> = BTreeMap::new();
    for f in slow.iter().flat_map(|s| s.top_frames) {
        if f.activity.is_some_and(|a| a != Activity::Running) {
            continue;
        }
        let entry = areas.entry(CodeArea::of_frame(&f.frame)).or_default();
        entry.0 += f.samples;
        *entry.1.entry(f.frame.as_str()).or_default() += f.samples;
    }
    let total: u32 = areas.values().map(|(n, _)| n).sum();
    let cpu = thread_cpu_share(slow);
    if total == 0 {
        return vec![cpu_cause(on_cpu, None, &[], cpu)];
    }
    areas
        .into_iter()
        .map(|(area, (n, frames))| {
            let mut frames: Vec<(&str, u32)> = frames.into_iter().collect();
            frames.sort_by_key(|f| std::cmp::Reverse(f.1));
            let share = on_cpu * f64::from(n) / f64::from(total);
            cpu_cause(share, Some(area), &frames, cpu)
        })
        .collect()
}

fn cpu_cause(
    share: f64,
    area: Option<CodeArea>,
    frames: &[(&str, u32)],
    cpu: Option<f64>,
) -> Cause {
    let place = match (frames.first(), area) {
        (Some((frame, _)), Some(a)) => format!(" in {} ({})", method_of(frame), a.describe()),
        _ => String::new(),
    };
    let mut evidence: Vec<String> = frames
        .iter()
        .take(3)
        .map(|(f, n)| format!("{n} running samples in {f}"))
        .collect();
    if let Some(c) = cpu {
        evidence.push(format!("the slow threads used {} of a CPU", pct(c)));
    }
    let advice = match area {
        Some(CodeArea::Serialization) => {
            "records are expensive to (de)serialise: use POJOs or Flink's own types instead of \
             Kryo, register types, or avoid shipping large records between operators"
        }
        Some(CodeArea::StateBackend) => {
            "state access dominates: tune RocksDB (block cache, managed memory), reduce state \
             reads per record, or use the heap backend for small state"
        }
        _ => {
            "the operator is CPU-bound: make the per-record work cheaper (profile the frames \
             above) or raise its parallelism"
        }
    };
    Cause {
        kind: CauseKind::Cpu,
        area,
        share: Some(share),
        summary: format!("{} on CPU{place}", pct(share)),
        evidence,
        advice: advice.into(),
    }
}

/// The frames of the busy samples doing `activity`, most samples first.
fn frames_of(slow: &[SubtaskSeen<'_>], activity: Activity) -> Vec<String> {
    let mut frames: BTreeMap<&str, u32> = BTreeMap::new();
    for f in slow.iter().flat_map(|s| s.top_frames) {
        if f.activity == Some(activity) {
            *frames.entry(f.frame.as_str()).or_default() += f.samples;
        }
    }
    let mut ranked: Vec<_> = frames.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    ranked
        .into_iter()
        .take(3)
        .map(|(f, n)| format!("{n} samples in {f}"))
        .collect()
}

/// Why only some subtasks are slow: the data they receive, or the resources they run on.
fn skew(v: &VertexSnapshot, slow: &[u32], seen: &HashMap<u32, SubtaskSeen<'_>>) -> Cause {
    let rate = |i: u32| {
        v.subtasks
            .iter()
            .find(|s| s.subtask == i)
            .and_then(|s| s.metrics.records_in_per_s)
    };
    let (hot, rest): (Vec<_>, Vec<_>) = v
        .subtasks
        .iter()
        .map(|s| s.subtask)
        .partition(|i| slow.contains(i));
    let hot_rates: Option<Vec<f64>> = hot.iter().map(|&i| rate(i)).collect();
    let rest_rates: Option<Vec<f64>> = rest.iter().map(|&i| rate(i)).collect();
    let names = slow
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (Some(hot_rates), Some(rest_rates)) = (hot_rates, rest_rates) else {
        let mut cause = unknown(&format!(
            "only subtask(s) {names} of {} are slow, but Flink reported no \
             numRecordsInPerSecond to tell data skew from resource skew",
            v.subtasks.len()
        ));
        cause.summary = "skew, in the data or the resources: unknown".into();
        return cause;
    };
    let hot_mean = mean(&hot_rates);
    let rest_mean = mean(&rest_rates);
    let total: f64 = hot_rates.iter().chain(&rest_rates).sum();
    let input_share = if total > 0.0 {
        hot_rates.iter().sum::<f64>() / total
    } else {
        0.0
    };
    let rates = format!(
        "subtask(s) {names} receive {hot_mean:.0} records/s each against {rest_mean:.0} on \
         average for the other {}",
        rest.len()
    );
    if hot_mean >= DATA_SKEW_RATIO * rest_mean && hot_mean > 0.0 {
        return Cause {
            kind: CauseKind::SkewData,
            area: None,
            share: Some(input_share),
            summary: format!(
                "data skew: subtask(s) {names} receive {} of the vertex's records",
                pct(input_share)
            ),
            evidence: vec![rates],
            advice: "a few keys carry most records: spread hot keys (salting, two-phase or \
                     local pre-aggregation) or choose a key with more even values"
                .into(),
        };
    }
    let mut evidence = vec![rates];
    evidence.extend(resource_differences(slow, seen));
    Cause {
        kind: CauseKind::SkewResources,
        area: None,
        share: Some(1.0 - input_share),
        summary: format!(
            "resource skew: subtask(s) {names} receive no more records than the others but are \
             slower"
        ),
        evidence,
        advice: "look at the TaskManagers hosting the slow subtasks (GC, CPU limits, busy \
                 neighbours, a slow disk or host) and move or resize them"
            .into(),
    }
}

/// How the slow subtasks' TaskManagers differ from the others', as sentences.
fn resource_differences(slow: &[u32], seen: &HashMap<u32, SubtaskSeen<'_>>) -> Vec<String> {
    let (hot, rest): (Vec<(&u32, &SubtaskSeen)>, Vec<_>) =
        seen.iter().partition(|(i, _)| slow.contains(i));
    let hot: Vec<SubtaskSeen> = hot.into_iter().map(|(_, s)| *s).collect();
    let rest: Vec<SubtaskSeen> = rest.into_iter().map(|(_, s)| *s).collect();
    let mut out = Vec::new();
    if let (Some(h), Some(r)) = (gc_share(&hot), gc_share(&rest)) {
        out.push(format!(
            "GC takes {} of their TaskManagers' time against {} elsewhere",
            pct(h),
            pct(r)
        ));
    }
    if let (Some(h), Some(r)) = (thread_cpu_share(&hot), thread_cpu_share(&rest)) {
        out.push(format!(
            "their threads use {} of a CPU against {} for the others",
            pct(h),
            pct(r)
        ));
    }
    out
}

fn unknown(why: &str) -> Cause {
    Cause {
        kind: CauseKind::Unknown,
        area: None,
        share: None,
        summary: "cause unknown".into(),
        evidence: vec![why.to_string()],
        advice: "run a current agent with the attach or jcmd backend to see what the slow \
                 subtasks do"
            .into(),
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// `com.acme.Enrich.map` of `com.acme.Enrich.map(Enrich.java:40)`.
fn method_of(frame: &str) -> &str {
    frame.split_once('(').map_or(frame, |(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{RatioSource, SplitRule};
    use crate::model::{SubtaskMetrics, SubtaskSnapshot};
    use bpmon_proto::{CgroupCpu, LockCount, ThreadCpu};

    fn merged(busy: u32) -> MergedSubtask {
        MergedSubtask {
            samples: 100,
            blocked: 0,
            soft: 0,
            idle: 100 - busy,
            busy,
            ratio: 0.0,
            level: None,
            split: SplitRule::NothingWaiting,
            ratio_source: RatioSource::Samples,
        }
    }

    fn vertex(rates: &[Option<f64>]) -> VertexSnapshot {
        VertexSnapshot {
            vertex_id: "v".into(),
            name: "map".into(),
            parallelism: rates.len() as u32,
            subtasks: rates
                .iter()
                .enumerate()
                .map(|(i, r)| SubtaskSnapshot {
                    subtask: i as u32,
                    attempt: 0,
                    status: "RUNNING".into(),
                    taskmanager_id: Some(format!("tm-{i}")),
                    host: None,
                    start_time_ms: None,
                    metrics: SubtaskMetrics {
                        records_in_per_s: *r,
                        ..Default::default()
                    },
                })
                .collect(),
        }
    }

    fn frame(f: &str, n: u32, a: Activity) -> FrameCount {
        FrameCount {
            frame: f.into(),
            samples: n,
            activity: Some(a),
        }
    }

    #[derive(Clone)]
    struct Case {
        merged: Vec<MergedSubtask>,
        evidence: Vec<WindowEvidence>,
        frames: Vec<Vec<FrameCount>>,
    }

    impl Case {
        fn causes(&self, v: &VertexSnapshot, slow: &[u32]) -> Vec<Cause> {
            let seen: HashMap<u32, SubtaskSeen> = (0..self.merged.len())
                .map(|i| {
                    let s = SubtaskSeen {
                        merged: &self.merged[i],
                        evidence: &self.evidence[i],
                        top_frames: &self.frames[i],
                    };
                    (i as u32, s)
                })
                .collect();
            causes(v, slow, &seen)
        }
    }

    fn activity(running: u32, lock: u32, io: u32, sleep: u32) -> Option<ActivityCounts> {
        Some(ActivityCounts {
            running,
            lock,
            io,
            sleep,
        })
    }

    fn kinds(causes: &[Cause]) -> Vec<CauseKind> {
        causes.iter().map(|c| c.kind).collect()
    }

    #[test]
    fn subtasks_serialising_on_a_monitor_rank_lock_first_with_its_class() {
        let ev = WindowEvidence {
            activity: activity(5, 90, 0, 0),
            locks: vec![LockCount {
                class: "com.acme.Shared".into(),
                owner: Some("map (2/2)#0".into()),
                samples: 90,
            }],
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(95), merged(95)],
            evidence: vec![ev.clone(), ev],
            frames: vec![
                vec![frame(
                    "com.acme.Shared.update(Shared.java:9)",
                    90,
                    Activity::Lock
                )];
                2
            ],
        };
        let c = case.causes(&vertex(&[Some(10.0), Some(10.0)]), &[0, 1]);
        assert_eq!(c[0].kind, CauseKind::Lock, "{c:#?}");
        assert!((c[0].share.unwrap() - 0.9).abs() < 1e-9);
        assert!(c[0].summary.contains("com.acme.Shared"), "{}", c[0].summary);
        assert!(c[0].advice.contains("more parallelism makes it worse"));
        assert!(!kinds(&c).contains(&CauseKind::SkewData));
    }

    #[test]
    fn with_stacks_at_some_samples_only_the_activities_speak_for_those() {
        // 100 samples, stacks read at 10 of them (the rest by Flink's timers): 9 of the 10 in
        // a lock is 90 % of the time, not 9 %.
        let ev = WindowEvidence {
            activity: activity(1, 9, 0, 0),
            stack_samples: Some(10),
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(100)],
            evidence: vec![ev],
            frames: vec![vec![]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(c[0].kind, CauseKind::Lock, "{c:#?}");
        assert!((c[0].share.unwrap() - 0.9).abs() < 1e-9, "{c:#?}");
    }

    #[test]
    fn gc_pauses_take_their_share_before_the_samples_split_the_rest() {
        let ev = WindowEvidence {
            activity: activity(95, 0, 0, 0),
            cpu: Some(ThreadCpu {
                cpu_ms: 2000,
                wall_ms: 5000,
            }),
            resources: Some(JvmResources {
                wall_ms: 5000,
                gc_pause_ms: Some(3000.0),
                gc_count: Some(40),
                ..Default::default()
            }),
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(95)],
            evidence: vec![ev],
            frames: vec![vec![frame(
                "com.acme.Alloc.map(Alloc.java:3)",
                95,
                Activity::Running,
            )]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(kinds(&c), vec![CauseKind::Gc, CauseKind::Cpu], "{c:#?}");
        assert!((c[0].share.unwrap() - 0.6).abs() < 1e-9);
        assert!((c[1].share.unwrap() - 0.38).abs() < 1e-9);
        assert_eq!(c[1].area, Some(CodeArea::UserCode));
        assert!(
            c[1].summary.contains("com.acme.Alloc.map"),
            "{}",
            c[1].summary
        );
    }

    #[test]
    fn on_cpu_time_is_split_by_code_area() {
        let ev = WindowEvidence {
            activity: activity(100, 0, 0, 0),
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(100)],
            evidence: vec![ev],
            frames: vec![vec![
                frame("com.acme.Enrich.map(Enrich.java:40)", 70, Activity::Running),
                frame(
                    "com.esotericsoftware.kryo.Kryo.writeObject(Kryo.java:1)",
                    30,
                    Activity::Running,
                ),
            ]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(kinds(&c), vec![CauseKind::Cpu, CauseKind::Cpu]);
        assert_eq!(c[0].area, Some(CodeArea::UserCode));
        assert!((c[0].share.unwrap() - 0.7).abs() < 1e-9);
        assert_eq!(c[1].area, Some(CodeArea::Serialization));
    }

    #[test]
    fn a_throttled_cgroup_turns_runnable_but_not_running_time_into_host() {
        let ev = WindowEvidence {
            activity: activity(100, 0, 0, 0),
            cpu: Some(ThreadCpu {
                cpu_ms: 1000,
                wall_ms: 5000,
            }),
            resources: Some(JvmResources {
                wall_ms: 5000,
                gc_pause_ms: Some(0.0),
                cgroup: Some(CgroupCpu {
                    path: "/tm".into(),
                    quota_cpus: Some(0.2),
                    throttled_ms: Some(4000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(100)],
            evidence: vec![ev],
            frames: vec![vec![frame(
                "com.acme.Spin.map(Spin.java:1)",
                100,
                Activity::Running,
            )]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(c[0].kind, CauseKind::Host, "{c:#?}");
        assert!((c[0].share.unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(c[1].kind, CauseKind::Cpu);
        assert!(
            c[0].evidence[0].contains("throttled in 80% of the time"),
            "{:?}",
            c[0].evidence
        );
    }

    #[test]
    fn throttling_is_the_share_of_throttled_periods_when_the_kernel_counts_them() {
        // cgroup v1 sums throttled time over CPUs: 9 s in a 5 s window on 2 CPUs.
        let c = CgroupCpu {
            path: "/tm".into(),
            periods: Some(50),
            throttled_periods: Some(45),
            throttled_ms: Some(9000),
            ..Default::default()
        };
        assert_eq!(throttled_share(&c, 5000.0), Some((0.9, "its periods")));
        let no_periods = CgroupCpu {
            periods: None,
            ..c.clone()
        };
        assert_eq!(
            throttled_share(&no_periods, 5000.0),
            Some((1.0, "the time"))
        );
        let idle = CgroupCpu {
            periods: Some(0),
            throttled_ms: None,
            ..c
        };
        assert_eq!(throttled_share(&idle, 5000.0), None);
    }

    #[test]
    fn the_hot_subtask_getting_most_records_is_data_skew_and_equal_input_is_resource_skew() {
        let busy = WindowEvidence {
            activity: activity(90, 0, 0, 0),
            ..Default::default()
        };
        let idle = WindowEvidence::default();
        let case = Case {
            merged: vec![merged(90), merged(5), merged(5)],
            evidence: vec![busy, idle.clone(), idle],
            frames: vec![vec![], vec![], vec![]],
        };
        let data = case.causes(&vertex(&[Some(900.0), Some(50.0), Some(50.0)]), &[0]);
        assert_eq!(data[0].kind, CauseKind::SkewData, "{data:#?}");
        assert!((data[0].share.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(data[1].kind, CauseKind::Cpu);
        let resources = case.causes(&vertex(&[Some(100.0), Some(100.0), Some(100.0)]), &[0]);
        assert_eq!(
            resources[0].kind,
            CauseKind::SkewResources,
            "{resources:#?}"
        );
        let unknown = case.causes(&vertex(&[None, Some(100.0), Some(100.0)]), &[0]);
        assert_eq!(unknown[0].kind, CauseKind::Unknown);
        assert!(unknown[0].summary.contains("skew"));
    }

    #[test]
    fn without_evidence_the_cause_is_unknown_not_a_guess() {
        let case = Case {
            merged: vec![merged(100)],
            evidence: vec![WindowEvidence::default()],
            frames: vec![vec![FrameCount {
                frame: "com.acme.Enrich.map(Enrich.java:40)".into(),
                samples: 100,
                activity: None,
            }]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(kinds(&c), vec![CauseKind::Unknown]);
        assert_eq!(c[0].share, None);

        // A TaskManager that did not collect garbage adds no "0% in GC" before the unknown
        // (seen with the in-process backend, which reports resources but not yet activity);
        // one that did, adds its share.
        let gc = |pause_ms: f64| WindowEvidence {
            resources: Some(JvmResources {
                wall_ms: 5000,
                gc_pause_ms: Some(pause_ms),
                gc_count: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (pause_ms, want) in [
            (0.0, vec![CauseKind::Unknown]),
            (2000.0, vec![CauseKind::Gc, CauseKind::Unknown]),
        ] {
            let case = Case {
                evidence: vec![gc(pause_ms)],
                ..case.clone()
            };
            let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
            assert_eq!(kinds(&c), want, "{pause_ms} ms of pauses: {c:#?}");
        }
    }

    #[test]
    fn io_and_sleep_name_their_frames() {
        let ev = WindowEvidence {
            activity: activity(10, 0, 60, 30),
            ..Default::default()
        };
        let case = Case {
            merged: vec![merged(100)],
            evidence: vec![ev],
            frames: vec![vec![
                frame(
                    "org.postgresql.core.PGStream.receive(PGStream.java:1)",
                    60,
                    Activity::Io,
                ),
                frame(
                    "com.acme.Throttle.map(Throttle.java:5)",
                    30,
                    Activity::Sleep,
                ),
            ]],
        };
        let c = case.causes(&vertex(&[Some(10.0)]), &[0]);
        assert_eq!(
            kinds(&c),
            vec![CauseKind::Io, CauseKind::Sleep, CauseKind::Cpu]
        );
        assert!(c[0].evidence[0].contains("PGStream"), "{:?}", c[0].evidence);
        assert!(c[1].evidence[0].contains("Throttle"), "{:?}", c[1].evidence);
    }
}
