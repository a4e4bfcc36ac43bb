//! Human-readable tables for the CLI. JSON output is the serde form of the same data.

use std::fmt::Write;

use bpmon_proto::SampleReport;

use crate::discovery::JvmProcess;

/// `bpmon-agent list` as a table.
pub fn jvm_table(jvms: &[JvmProcess]) -> String {
    let mut rows = vec![[
        "PID".to_string(),
        "USER".into(),
        "JAVA".into(),
        "FLINK".into(),
        "MAIN CLASS".into(),
    ]];
    for j in jvms {
        rows.push([
            if j.containerized {
                format!("{} (ns {})", j.pid, j.nspid)
            } else {
                j.pid.to_string()
            },
            j.user.clone().unwrap_or_else(|| j.uid.to_string()),
            j.java_version.clone().unwrap_or_else(|| "?".into()),
            j.flink_version.clone().unwrap_or_else(|| "?".into()),
            j.main_class.clone(),
        ]);
    }
    table(&rows)
}

/// `bpmon-agent sample` as a header line and a table of tasks.
pub fn sample_table(r: &SampleReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {}  backend {}  java {}  flink {}  {} samples x {} ms in {:.2} s",
        r.pid,
        r.backend,
        r.jvm.version.as_deref().unwrap_or("?"),
        r.jvm.flink_version.as_deref().unwrap_or("?"),
        r.cost.dumps,
        r.delay_ms,
        r.elapsed_ms as f64 / 1000.0
    );
    let pause = match (r.cost.safepoints, r.cost.safepoint_ms_total) {
        (Some(n), Some(ms)) => format!(
            "{n} safepoints, {ms:.2} ms paused ({:.3} ms per dump)",
            if r.cost.dumps > 0 {
                ms / f64::from(r.cost.dumps)
            } else {
                0.0
            }
        ),
        _ => "safepoint cost unknown (no readable perf data)".into(),
    };
    // The in-process sampler's own time inside the JVM (it stops no other thread).
    let inside = r
        .cost
        .inside_us_p50
        .map(|us| format!("; in-JVM sampler p50 {:.3} ms", us as f64 / 1000.0))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "cost: dump p50 {:.2} ms, max {:.2} ms; parse p50 {:.3} ms{inside}; JVM: {pause}",
        r.cost.dump_us_p50 as f64 / 1000.0,
        r.cost.dump_us_max as f64 / 1000.0,
        r.cost.parse_us_p50 as f64 / 1000.0,
    );
    let mut rows = vec![[
        "TASK".to_string(),
        "SUBTASK".into(),
        "ATTEMPT".into(),
        "TID".into(),
        "SAMPLES".into(),
        "BLOCKED".into(),
        "WAITING".into(),
        "BUSY".into(),
        "TOP FRAME".into(),
    ]];
    let pct = |n: u32, of: u32| {
        if of == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", 100.0 * f64::from(n) / f64::from(of))
        }
    };
    for t in &r.tasks {
        rows.push([
            t.identity.task.clone(),
            format!("{}/{}", t.identity.subtask + 1, t.identity.parallelism),
            t.identity.attempt.map_or("-".into(), |a| a.to_string()),
            t.thread_id.map_or("-".into(), |i| i.to_string()),
            t.samples.to_string(),
            pct(t.blocked, t.samples),
            pct(t.waiting, t.samples),
            pct(t.busy, t.samples),
            t.top_frames
                .first()
                .map(|f| format!("{} ({})", f.frame, f.samples))
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&table(&rows));
    if r.tasks.is_empty() {
        out.push_str("(no Flink task threads: no job is running on this TaskManager)\n");
    }
    for e in &r.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
