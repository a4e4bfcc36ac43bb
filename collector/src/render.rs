//! Human-readable tables of the query API's views, for the CLI. Pure: each function takes a
//! view, whether to colour (ANSI; none at all when `color` is false) and the current time (for
//! "12 s ago"), and returns the text. JSON output is the serde form of the views themselves.

use std::fmt::Write;
use std::time::Duration;

use bpmon_proto::{FrameCount, Level, SamplingSettings};
use serde::Serialize;

use crate::api::{
    AgentsView, ConfigView, EpisodesView, HistoryView, JobSummary, JobsView, StatusView,
    SubtaskStatus,
};
use crate::clock::timestamp;
use crate::diagnosis::{Finding, FindingKind};
use crate::merge::{RatioSource, SplitRule};

/// Findings are wrapped at this width (the first line may be longer by the kind's label).
const WRAP: usize = 100;
/// Top frames shown per finding.
const TOP_FRAMES: usize = 3;

/// What `diagnose --output json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosisReport<'a> {
    pub job_id: &'a str,
    pub job_name: &'a str,
    pub diagnosis: &'a [Finding],
}

impl<'a> DiagnosisReport<'a> {
    pub fn of(view: &'a StatusView) -> Self {
        DiagnosisReport {
            job_id: &view.job_id,
            job_name: &view.job_name,
            diagnosis: &view.diagnosis,
        }
    }
}

/// A job's bottleneck and its first cause, `Map: cpu 71%`; `-` without one. A collector older
/// than the cause fields gives the name alone.
fn bottleneck_cell(j: &JobSummary) -> String {
    let Some(name) = &j.bottleneck else {
        return "-".into();
    };
    match (j.cause, j.cause_share) {
        (Some(kind), Some(share)) => format!("{name}: {} {:.0}%", kind.as_str(), share * 100.0),
        (Some(kind), None) => format!("{name}: {}", kind.as_str()),
        (None, _) => name.clone(),
    }
}

/// `jobs`: one line per job.
pub fn jobs(view: &JobsView, color: bool, now_ms: u64) -> String {
    if view.jobs.is_empty() {
        return "(no jobs: the collector has not seen any Flink job yet)\n".into();
    }
    let mut t = Table::new(
        &[
            "JOB",
            "ID",
            "STATE",
            "LEVEL",
            "RATIO",
            "UPDATED",
            "STALE",
            "BOTTLENECK: CAUSE",
            "FLINK",
        ],
        &[4],
    );
    for j in &view.jobs {
        t.row(vec![
            j.job_name.as_str().into(),
            j.job_id.as_str().into(),
            j.state.as_deref().unwrap_or("gone").into(),
            level_cell(j.level),
            ratio(j.ratio).into(),
            j.updated_at_ms
                .map_or("never".into(), |t| ago(t, now_ms))
                .into(),
            stale_cell(j.stale),
            bottleneck_cell(j).into(),
            j.flink_url.as_str().into(),
        ]);
    }
    t.render(color)
}

/// `status`: the job's header, then each vertex and its subtasks.
pub fn status(view: &StatusView, color: bool, now_ms: u64) -> String {
    let mut out = job_header(view, color, now_ms);
    let s = &view.settings;
    let _ = writeln!(
        out,
        "flink {}  metrics read {}  sampling {}",
        view.flink_url,
        view.metrics_fetched_at_ms
            .map_or("never".into(), |t| when(t, now_ms)),
        settings_line(s),
    );
    if view.vertices.is_empty() {
        out.push_str("(no vertices: Flink has not described this job's plan yet)\n");
        return out;
    }
    let header = [
        "SUBTASK",
        "LEVEL",
        "RATIO",
        "BLOCKED",
        "SOFT",
        "IDLE",
        "BUSY",
        "SAMPLES",
        "ATTEMPT",
        "TASKMANAGER",
        "HOST",
        "OUTPOOL",
        "INPOOL",
        "WHY",
    ];
    let mut t = Table::new(&[], &[2, 3, 4, 5, 6, 7, 8, 11, 12]);
    t.indent = 4;
    for v in &view.vertices {
        t.span(String::new());
        let mut line = format!(
            "{}  parallelism {}  level {}",
            paint(&v.name, Paint::Bold, color),
            v.parallelism,
            paint_level(v.level, color),
        );
        if let Some(r) = v.ratio {
            let _ = write!(line, "  ratio {r:.2}");
        }
        t.span(line);
        t.row(header.iter().map(|h| Cell::header(h)).collect());
        for st in &v.subtasks {
            t.row(subtask_row(st));
        }
        if v.subtasks.is_empty() {
            t.span("    (no subtasks known)".into());
        }
    }
    out.push_str(&t.render(color));
    out
}

fn subtask_row(st: &SubtaskStatus) -> Vec<Cell> {
    let why = match (st.level, &st.why) {
        (_, Some(why)) => why.clone(),
        (None, None) => "no samples yet".into(),
        (Some(_), None) if st.split == Some(SplitRule::NoMetrics) => {
            "no Flink metric to split waiting: counted as idle".into()
        }
        (Some(_), None) if st.ratio_source == Some(RatioSource::Timers) => {
            "exact: Flink's task timers".into()
        }
        (Some(_), None) => String::new(),
    };
    vec![
        st.subtask.to_string().into(),
        level_cell(st.level),
        ratio(st.ratio).into(),
        st.blocked.to_string().into(),
        st.soft.to_string().into(),
        st.idle.to_string().into(),
        st.busy.to_string().into(),
        st.samples.to_string().into(),
        st.attempt.map_or("-".into(), |a| a.to_string()).into(),
        st.taskmanager_id.as_deref().unwrap_or("-").into(),
        st.host.as_deref().unwrap_or("-").into(),
        usage(st.metrics.get("outPoolUsage")).into(),
        usage(st.metrics.get("inPoolUsage")).into(),
        why.into(),
    ]
}

/// `diagnose`: the job's header and its findings as sentences.
pub fn diagnosis(view: &StatusView, color: bool, now_ms: u64) -> String {
    let mut out = job_header(view, color, now_ms);
    if view.diagnosis.is_empty() {
        out.push_str(if view.level.is_none() {
            "no findings yet: no vertex has samples\n"
        } else {
            "no findings\n"
        });
        return out;
    }
    let label_width = view
        .diagnosis
        .iter()
        .map(|f| kind_label(f.kind).len())
        .max()
        .unwrap_or(0);
    for f in &view.diagnosis {
        let label = kind_label(f.kind);
        let vertex = view
            .vertices
            .iter()
            .find(|v| v.vertex_id == f.vertex_id)
            .map_or(f.vertex_id.as_str(), |v| v.name.as_str());
        let mut about = format!("'{vertex}'");
        if !f.subtasks.is_empty() {
            let s = if f.subtasks.len() == 1 { "" } else { "s" };
            let _ = write!(about, ", subtask{s} {}", ranges(&f.subtasks));
        }
        let text = format!("{about}: {}", f.message);
        let pad = " ".repeat(label_width - label.chars().count());
        let indent = " ".repeat(label_width + 2);
        let painted = match f.kind {
            FindingKind::Bottleneck => paint(label, Paint::Red, color),
            FindingKind::NetworkBottleneck => paint(label, Paint::Yellow, color),
            FindingKind::Reading => paint(label, Paint::Dim, color),
        };
        for (i, line) in wrap(&text, WRAP).iter().enumerate() {
            if i == 0 {
                let _ = writeln!(out, "{painted}{pad}  {line}");
            } else {
                let _ = writeln!(out, "{indent}{line}");
            }
        }
        for (i, c) in f.causes.iter().enumerate() {
            let text = format!("cause {}: {} ({})", i + 1, c.summary, c.kind.as_str());
            for line in wrap(&text, WRAP) {
                let _ = writeln!(out, "{indent}{line}");
            }
            let deeper = format!("{indent}  ");
            for e in &c.evidence {
                for line in wrap(e, WRAP.saturating_sub(2)) {
                    let _ = writeln!(out, "{deeper}{line}");
                }
            }
            for line in wrap(&format!("advice: {}", c.advice), WRAP.saturating_sub(2)) {
                let _ = writeln!(out, "{deeper}{line}");
            }
        }
        if !f.victims.is_empty() {
            let names: Vec<String> = f
                .victims
                .iter()
                .map(|id| {
                    let name = view.vertices.iter().find(|v| &v.vertex_id == id);
                    format!("'{}'", name.map_or(id.as_str(), |v| v.name.as_str()))
                })
                .collect();
            let text = format!("back-pressured because of it: {}", names.join(", "));
            for line in wrap(&text, WRAP) {
                let _ = writeln!(out, "{indent}{line}");
            }
        }
        if !f.top_frames.is_empty() {
            let _ = writeln!(out, "{indent}top frames: {}", frames(&f.top_frames));
        }
    }
    out
}

/// `history`: one line per merged window, oldest first.
pub fn history(view: &HistoryView, color: bool, now_ms: u64) -> String {
    let mut out = format!(
        "job {}  ({})  since {}\n",
        paint(&view.job_name, Paint::Bold, color),
        view.job_id,
        when(view.since_ms, now_ms)
    );
    if view.windows.is_empty() {
        out.push_str("(no windows in this period)\n");
        return out;
    }
    let mut t = Table::new(
        &[
            "WINDOW START",
            "SECONDS",
            "VERTEX",
            "SUBTASK",
            "ATTEMPT",
            "LEVEL",
            "RATIO",
            "SAMPLES",
            "BLOCKED",
            "SOFT",
            "IDLE",
            "BUSY",
            "TASKMANAGER",
        ],
        &[1, 3, 4, 6, 7, 8, 9, 10, 11],
    );
    for w in &view.windows {
        let secs = w.window_end_ms.saturating_sub(w.window_start_ms) as f64 / 1000.0;
        t.row(vec![
            timestamp(w.window_start_ms).into(),
            format!("{secs:.1}").into(),
            w.vertex_name.as_str().into(),
            w.subtask.to_string().into(),
            w.attempt.to_string().into(),
            level_cell(w.level),
            ratio(w.ratio).into(),
            w.samples.to_string().into(),
            w.blocked.to_string().into(),
            w.soft.to_string().into(),
            w.idle.to_string().into(),
            w.busy.to_string().into(),
            w.taskmanager_id.as_deref().unwrap_or("-").into(),
        ]);
    }
    out.push_str(&t.render(color));
    out
}

/// `config get|set|reset`: the settings that apply and where they come from.
/// `episodes`: one row per episode, oldest first.
pub fn episodes(view: &EpisodesView, color: bool, now_ms: u64) -> String {
    let mut out = format!(
        "job {}  ({})  since {}\n",
        paint(&view.job_name, Paint::Bold, color),
        view.job_id,
        when(view.since_ms, now_ms)
    );
    if view.episodes.is_empty() {
        out.push_str("(no back-pressure episodes in this period)\n");
        return out;
    }
    let mut t = Table::new(
        &[
            "STARTED",
            "ENDED",
            "SECONDS",
            "VERTEX",
            "PEAK",
            "RATIO",
            "BOTTLENECK: CAUSE",
        ],
        &[2, 5],
    );
    for e in &view.episodes {
        let end = e.ended_at_ms.unwrap_or(now_ms);
        let secs = end.saturating_sub(e.started_at_ms) as f64 / 1000.0;
        let bottleneck = e.bottleneck.as_ref().map_or_else(
            || "-".to_string(),
            |b| {
                if b.summary.is_empty() {
                    format!("{}: {}", b.vertex, b.cause.as_str())
                } else {
                    format!("{}: {}", b.vertex, b.summary)
                }
            },
        );
        t.row(vec![
            timestamp(e.started_at_ms).into(),
            e.ended_at_ms
                .map_or_else(|| "ongoing".to_string(), timestamp)
                .into(),
            format!("{secs:.0}").into(),
            e.vertex.as_str().into(),
            level_cell(Some(e.peak_level)),
            ratio(Some(e.peak_ratio)).into(),
            bottleneck.into(),
        ]);
    }
    out.push_str(&t.render(color));
    out
}

pub fn config(view: &ConfigView, color: bool) -> String {
    let scope = if view.scope.is_default() {
        "default (every job without settings of its own)".to_string()
    } else {
        let name = view
            .job_name
            .as_deref()
            .map(|n| format!("{}  ", paint(n, Paint::Bold, color)))
            .unwrap_or_default();
        let from = if view.inherited {
            "follows the default"
        } else {
            "settings of its own"
        };
        format!("job {name}({})  {from}", view.scope)
    };
    let s = &view.settings;
    let mut out = String::new();
    let _ = writeln!(out, "scope     {scope}");
    let _ = writeln!(out, "samples   {}", s.samples);
    let _ = writeln!(out, "delay     {}", millis(s.delay_ms));
    let _ = writeln!(out, "interval  {}", millis(s.interval_ms));
    if s.stacks_every > 1 {
        let _ = writeln!(
            out,
            "stacks    every {} samples (Flink's timers in between)",
            s.stacks_every
        );
    }
    if s.is_continuous() {
        let _ = writeln!(
            out,
            "window    {} windows back to back: continuous",
            millis(s.interval_ms)
        );
    } else {
        let _ = writeln!(
            out,
            "window    {} of sampling every {}",
            millis(window_ms(s)),
            millis(s.interval_ms)
        );
    }
    out
}

/// `agents`: one line per agent, then the task threads each could not place.
pub fn agents(view: &AgentsView, color: bool, now_ms: u64) -> String {
    if view.agents.is_empty() {
        return "(no agents: none has sent a batch yet)\n".into();
    }
    let mut t = Table::new(
        &["AGENT", "LAST BATCH", "SEQ", "DROPPED", "UNRESOLVED"],
        &[2, 3, 4],
    );
    for a in &view.agents {
        let mut dropped = Cell::from(a.dropped_batches.to_string());
        if a.dropped_batches > 0 {
            dropped.paint = Some(Paint::Yellow);
        }
        t.row(vec![
            a.agent_id.as_str().into(),
            ago(a.last_batch_ms, now_ms).into(),
            a.highest_seq.to_string().into(),
            dropped,
            a.unresolved.len().to_string().into(),
        ]);
    }
    let mut out = t.render(color);
    for a in view.agents.iter().filter(|a| !a.jvms.is_empty()) {
        let _ = writeln!(out, "\nTaskManager JVMs of {}:", a.agent_id);
        for j in &a.jvms {
            let _ = writeln!(out, "  pid {}: {}", j.pid, j.placement);
            if j.taskmanager_id.is_none() {
                let _ = writeln!(out, "    seen: {}", j.seen);
            }
        }
    }
    for a in view.agents.iter().filter(|a| !a.unresolved.is_empty()) {
        let _ = writeln!(out, "\nunresolved task threads of {}:", a.agent_id);
        for u in &a.unresolved {
            let _ = writeln!(out, "  {u}");
        }
    }
    out
}

fn job_header(view: &StatusView, color: bool, now_ms: u64) -> String {
    let mut out = format!(
        "job {}  ({})  {}\n",
        paint(&view.job_name, Paint::Bold, color),
        view.job_id,
        view.state.as_deref().unwrap_or("gone from Flink"),
    );
    let updated = if view.updated_at_ms == 0 {
        "no window merged yet".to_string()
    } else {
        format!("updated {}", when(view.updated_at_ms, now_ms))
    };
    let _ = write!(out, "level {}  {updated}", paint_level(view.level, color));
    if view.stale {
        let reasons = if view.stale_reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", view.stale_reasons.join("; "))
        };
        let _ = write!(out, "  {}{reasons}", paint("STALE", Paint::Yellow, color));
    }
    out.push('\n');
    out
}

fn settings_line(s: &SamplingSettings) -> String {
    format!(
        "{} samples {} apart every {}",
        s.samples,
        millis(s.delay_ms),
        millis(s.interval_ms)
    )
}

fn window_ms(s: &SamplingSettings) -> u64 {
    u64::from(s.samples.saturating_sub(1)).saturating_mul(s.delay_ms)
}

fn kind_label(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::Bottleneck => "BOTTLENECK",
        FindingKind::NetworkBottleneck => "NETWORK",
        FindingKind::Reading => "reading",
    }
}

fn frames(frames: &[FrameCount]) -> String {
    let mut s = frames
        .iter()
        .take(TOP_FRAMES)
        .map(|f| format!("{} ({})", f.frame, f.samples))
        .collect::<Vec<_>>()
        .join(", ");
    if frames.len() > TOP_FRAMES {
        let _ = write!(s, ", … {} more", frames.len() - TOP_FRAMES);
    }
    s
}

/// `0, 1, 2, 5` as `0-2, 5`.
fn ranges(indices: &[u32]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// Greedy word wrap; a word longer than `width` gets a line of its own.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

fn usage(u: Option<&f64>) -> String {
    u.map_or("-".into(), |u| format!("{u:.2}"))
}

fn millis(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// `2024-05-01T12:00:03Z (12 s ago)`.
pub fn when(ms: u64, now_ms: u64) -> String {
    format!("{} ({})", timestamp(ms), ago(ms, now_ms))
}

/// `12 s ago`, `3 min ago`, `2 h ago`, `4 d ago`; `in 3 s` for a time ahead of this clock.
pub fn ago(ms: u64, now_ms: u64) -> String {
    let (delta, ahead) = if ms > now_ms {
        (ms - now_ms, true)
    } else {
        (now_ms - ms, false)
    };
    let s = delta / 1000;
    let amount = if s < 120 {
        format!("{s} s")
    } else if s < 2 * 3600 {
        format!("{} min", s / 60)
    } else if s < 2 * 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} d", s / 86_400)
    };
    if ahead {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    Green,
    Yellow,
    Red,
    Bold,
    Dim,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Green => "\x1b[32m",
            Paint::Yellow => "\x1b[33m",
            Paint::Red => "\x1b[31m",
            Paint::Bold => "\x1b[1m",
            Paint::Dim => "\x1b[2m",
        }
    }
}

const RESET: &str = "\x1b[0m";

fn paint(text: &str, p: Paint, color: bool) -> String {
    if color && !text.is_empty() {
        format!("{}{text}{RESET}", p.code())
    } else {
        text.to_string()
    }
}

fn level_paint(level: Option<Level>) -> Option<Paint> {
    level.map(|l| match l {
        Level::Ok => Paint::Green,
        Level::Low => Paint::Yellow,
        Level::High => Paint::Red,
    })
}

fn level_text(level: Option<Level>) -> String {
    level.map_or("-".into(), |l| l.to_string())
}

fn paint_level(level: Option<Level>, color: bool) -> String {
    match level_paint(level) {
        Some(p) => paint(&level_text(level), p, color),
        None => "none".into(),
    }
}

fn level_cell(level: Option<Level>) -> Cell {
    Cell {
        text: level_text(level),
        paint: level_paint(level),
    }
}

fn stale_cell(stale: bool) -> Cell {
    if stale {
        Cell {
            text: "stale".into(),
            paint: Some(Paint::Yellow),
        }
    } else {
        "".into()
    }
}

/// A table cell: its text, which sets the column's width, and how to colour it.
#[derive(Debug, Clone)]
struct Cell {
    text: String,
    paint: Option<Paint>,
}

impl Cell {
    fn header(text: &str) -> Cell {
        Cell {
            text: text.to_string(),
            paint: Some(Paint::Bold),
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell {
            text: text.to_string(),
            paint: None,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, paint: None }
    }
}

enum Row {
    Cells(Vec<Cell>),
    /// A line of its own, already formatted, that does not count for the column widths.
    Span(String),
}

/// Columns aligned on the visible width of their cells, so colour codes never shift them.
struct Table {
    rows: Vec<Row>,
    right: Vec<usize>,
    indent: usize,
}

impl Table {
    fn new(header: &[&str], right_aligned: &[usize]) -> Table {
        let mut t = Table {
            rows: Vec::new(),
            right: right_aligned.to_vec(),
            indent: 0,
        };
        if !header.is_empty() {
            t.row(header.iter().map(|h| Cell::header(h)).collect());
        }
        t
    }

    fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(Row::Cells(cells));
    }

    fn span(&mut self, line: String) {
        self.rows.push(Row::Span(line));
    }

    fn render(&self, color: bool) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            if let Row::Cells(cells) = row {
                if widths.len() < cells.len() {
                    widths.resize(cells.len(), 0);
                }
                for (w, c) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(c.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            match row {
                Row::Span(line) => {
                    out.push_str(line);
                    out.push('\n');
                }
                Row::Cells(cells) => {
                    let mut line = " ".repeat(self.indent);
                    for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                        if i > 0 {
                            line.push_str("  ");
                        }
                        let pad = " ".repeat(w - c.text.chars().count());
                        let text = match c.paint {
                            Some(p) => paint(&c.text, p, color),
                            None => c.text.clone(),
                        };
                        if self.right.contains(&i) {
                            line.push_str(&pad);
                            line.push_str(&text);
                        } else {
                            line.push_str(&text);
                            line.push_str(&pad);
                        }
                    }
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{AgentJvm, AgentStatus, HistoryWindow, JobSummary, VertexStatus};
    use crate::cause::{Cause, CauseKind};

    const NOW: u64 = 1_714_564_815_000; // 2024-05-01T12:00:15Z

    fn subtask(i: u32, level: Option<Level>, ratio: Option<f64>) -> SubtaskStatus {
        SubtaskStatus {
            subtask: i,
            level,
            ratio,
            samples: if level.is_some() { 100 } else { 0 },
            blocked: 80,
            soft: 7,
            idle: 3,
            busy: 10,
            split: Some(SplitRule::SoftIdleTime),
            ratio_source: None,
            timers: None,
            taskmanager_id: Some("10.0.0.5:41234-6f1a2b".into()),
            host: Some("worker-1".into()),
            attempt: Some(0),
            window_start_ms: Some(NOW - 20_000),
            window_end_ms: Some(NOW - 15_000),
            metrics: BTreeMap::from([
                ("outPoolUsage".to_string(), 1.0),
                ("inPoolUsage".to_string(), 0.25),
            ]),
            top_frames: Vec::new(),
            why: None,
        }
    }

    fn status_view() -> StatusView {
        StatusView {
            job_id: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
            job_name: "WordCount -> Sink: out".into(),
            flink_url: "http://jm:8081".into(),
            state: Some("RUNNING".into()),
            level: Some(Level::High),
            updated_at_ms: NOW - 12_000,
            stale: true,
            stale_reasons: vec![
                "no batch from agent worker-2 for 3 min".into(),
                "Flink metrics are 2 min old".into(),
            ],
            metrics_fetched_at_ms: Some(NOW - 14_000),
            settings: SamplingSettings::default(),
            edges: Vec::new(),
            vertices: vec![
                VertexStatus {
                    vertex_id: "v1".into(),
                    name: "Source: Kafka".into(),
                    parallelism: 2,
                    level: Some(Level::High),
                    ratio: Some(0.87),
                    subtasks: vec![
                        subtask(0, Some(Level::High), Some(0.87)),
                        SubtaskStatus {
                            why: Some("no agent on host worker-2".into()),
                            ..subtask(1, None, None)
                        },
                    ],
                },
                VertexStatus {
                    vertex_id: "v2".into(),
                    name: "Map -> Filter".into(),
                    parallelism: 1,
                    level: Some(Level::Ok),
                    ratio: Some(0.02),
                    subtasks: vec![subtask(0, Some(Level::Ok), Some(0.02))],
                },
            ],
            diagnosis: vec![
                Finding {
                    kind: FindingKind::Bottleneck,
                    vertex_id: "v2".into(),
                    subtasks: vec![0],
                    message: "'Map -> Filter' is the bottleneck: 'Source: Kafka' upstream is \
                              back-pressured and it is not; all 1 subtasks are busy"
                        .into(),
                    top_frames: vec![FrameCount {
                        frame: "com.acme.Parse.parse".into(),
                        samples: 412,
                        activity: None,
                    }],
                    causes: vec![Cause {
                        kind: CauseKind::Lock,
                        area: None,
                        share: Some(0.71),
                        summary: "71% waiting for a lock on a com.acme.Shared".into(),
                        evidence: vec!["300 samples waiting for a com.acme.Shared".into()],
                        advice: "more parallelism makes it worse".into(),
                    }],
                    victims: vec!["v1".into()],
                },
                Finding {
                    kind: FindingKind::Reading,
                    vertex_id: "v1".into(),
                    subtasks: vec![0, 1, 2, 5],
                    message: "inPoolUsage 25% / outPoolUsage 100%: back-pressured by its receivers"
                        .into(),
                    top_frames: Vec::new(),
                    causes: Vec::new(),
                    victims: Vec::new(),
                },
            ],
        }
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn episodes_show_start_end_peak_and_the_bottleneck_with_its_cause() {
        use crate::api::{Episode, EpisodeBottleneck};
        let ended = Episode {
            job_id: "j".into(),
            vertex_id: "src".into(),
            vertex: "Source: numbers".into(),
            started_at_ms: NOW - 120_000,
            ended_at_ms: Some(NOW - 80_000),
            peak_level: Level::High,
            peak_ratio: 0.97,
            peak_at_ms: NOW - 110_000,
            bottleneck: Some(EpisodeBottleneck {
                vertex_id: "sink".into(),
                vertex: "sink".into(),
                cause: CauseKind::Cpu,
                share: Some(0.8),
                summary: "80 % on CPU in com.acme.Enrich.map".into(),
            }),
        };
        let ongoing = Episode {
            started_at_ms: NOW - 20_000,
            ended_at_ms: None,
            peak_level: Level::Low,
            peak_ratio: 0.3,
            bottleneck: None,
            ..ended.clone()
        };
        let view = EpisodesView {
            job_id: "j".into(),
            job_name: "job".into(),
            since_ms: NOW - 3_600_000,
            episodes: vec![ended, ongoing],
        };
        let text = episodes(&view, false, NOW);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].contains("HIGH") && rows[0].contains("0.97"),
            "{text}"
        );
        assert!(rows[0].contains(" 40 "), "40 s long: {text}");
        assert!(
            rows[0].contains("sink: 80 % on CPU in com.acme.Enrich.map"),
            "{text}"
        );
        assert!(
            rows[1].contains("ongoing") && rows[1].contains(" 20 "),
            "{text}"
        );
        let empty = EpisodesView {
            episodes: vec![],
            ..view
        };
        assert!(episodes(&empty, false, NOW).contains("no back-pressure episodes"));
    }

    #[test]
    fn levels_are_coloured_only_when_asked() {
        let v = status_view();
        let plain = status(&v, false, NOW);
        assert!(!plain.contains('\x1b'), "{plain}");
        let coloured = status(&v, true, NOW);
        assert!(coloured.contains("\x1b[31mHIGH\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[32mOK\x1b[0m"), "{coloured}");
        // Colour changes nothing but the codes.
        assert_eq!(strip_ansi(&coloured), plain);

        let low = JobsView {
            jobs: vec![JobSummary {
                job_id: "j".into(),
                job_name: "n".into(),
                flink_url: "u".into(),
                state: Some("RUNNING".into()),
                level: Some(Level::Low),
                ratio: Some(0.3),
                updated_at_ms: Some(NOW),
                stale: false,
                bottleneck: None,
                bottleneck_vertex_id: None,
                cause: None,
                cause_share: None,
                cause_summary: None,
                level_since_ms: None,
                watched_since_ms: None,
            }],
        };
        assert!(jobs(&low, true, NOW).contains("\x1b[33mLOW\x1b[0m"));
        assert!(!jobs(&low, false, NOW).contains('\x1b'));
        for text in [
            diagnosis(&v, false, NOW),
            config(
                &ConfigView {
                    scope: bpmon_proto::Scope::Default,
                    job_name: None,
                    settings: SamplingSettings::default(),
                    inherited: false,
                },
                false,
            ),
        ] {
            assert!(!text.contains('\x1b'), "{text}");
        }
    }

    #[test]
    fn a_subtask_without_level_says_why() {
        let text = status(&status_view(), false, NOW);
        let line = text
            .lines()
            .find(|l| l.contains("no agent on host worker-2"))
            .expect(&text);
        assert!(line.trim_start().starts_with("1 "), "{line}");
        assert!(
            line.contains(" - "),
            "no level or ratio shown as '-': {line}"
        );

        let mut v = status_view();
        v.vertices[0].subtasks[1].why = None;
        assert!(status(&v, false, NOW).contains("no samples yet"));
    }

    #[test]
    fn stale_status_shows_its_reasons_and_times() {
        let text = status(&status_view(), false, NOW);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("job WordCount -> Sink: out  (a1b2c3d4e5f60718293a4b5c6d7e8f90)  RUNNING")
        );
        assert_eq!(
            lines.next(),
            Some(
                "level HIGH  updated 2024-05-01T12:00:03Z (12 s ago)  STALE: no batch from agent \
                 worker-2 for 3 min; Flink metrics are 2 min old"
            )
        );
        assert!(text.contains("metrics read 2024-05-01T12:00:01Z (14 s ago)"));
        assert!(
            text.contains("sampling 100 samples 50ms apart every 1m"),
            "{text}"
        );
        assert!(text.contains("Source: Kafka  parallelism 2  level HIGH  ratio 0.87"));

        let mut fresh = status_view();
        fresh.stale = false;
        fresh.stale_reasons.clear();
        assert!(!status(&fresh, false, NOW).contains("STALE"));

        let mut j = JobsView {
            jobs: vec![JobSummary {
                job_id: "j".into(),
                job_name: "n".into(),
                flink_url: "u".into(),
                state: None,
                level: None,
                ratio: None,
                updated_at_ms: None,
                stale: true,
                bottleneck: None,
                bottleneck_vertex_id: None,
                cause: None,
                cause_share: None,
                cause_summary: None,
                level_since_ms: None,
                watched_since_ms: None,
            }],
        };
        let text = jobs(&j, false, NOW);
        assert!(text.lines().nth(1).unwrap().contains("stale"), "{text}");
        j.jobs[0].stale = false;
        assert!(!jobs(&j, false, NOW)
            .lines()
            .nth(1)
            .unwrap()
            .contains("stale"));
    }

    #[test]
    fn subtask_columns_show_counts_placement_and_pools() {
        let text = status(&status_view(), false, NOW);
        let header = text.lines().find(|l| l.contains("SUBTASK")).unwrap();
        assert!(header.starts_with("    SUBTASK  LEVEL  RATIO  BLOCKED  SOFT  IDLE  BUSY"));
        let row = text
            .lines()
            .find(|l| l.contains("0.87") && l.contains("HIGH") && l.starts_with("    "))
            .unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "0",
                "HIGH",
                "0.87",
                "80",
                "7",
                "3",
                "10",
                "100",
                "0",
                "10.0.0.5:41234-6f1a2b",
                "worker-1",
                "1.00",
                "0.25"
            ]
        );
    }

    #[test]
    fn long_names_keep_columns_aligned() {
        let mk = |name: &str, level| JobSummary {
            job_id: format!("id-{}", name.len()),
            job_name: name.into(),
            flink_url: "http://jm:8081".into(),
            state: Some("RUNNING".into()),
            level,
            ratio: Some(0.5),
            updated_at_ms: Some(NOW - 5_000),
            stale: false,
            bottleneck: Some("Map".into()),
            bottleneck_vertex_id: Some("v2".into()),
            cause: Some(CauseKind::Cpu),
            cause_share: Some(0.71),
            cause_summary: Some("71% running user code".into()),
            level_since_ms: None,
            watched_since_ms: None,
        };
        let view = JobsView {
            jobs: vec![
                mk("a", Some(Level::Ok)),
                mk(
                    "Insert into the warehouse: Source: Kafka -> Map -> Filter -> Watermarks",
                    Some(Level::High),
                ),
                mk("zählen", None),
            ],
        };
        for color in [false, true] {
            let text = strip_ansi(&jobs(&view, color, NOW));
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 4);
            // Every column starts at the same character offset on every line.
            let id_col = lines[0].find("ID").unwrap();
            let level_col = lines[0].find("LEVEL").unwrap();
            for l in &lines[1..] {
                let chars: Vec<char> = l.chars().collect();
                assert_eq!(chars[id_col - 1], ' ', "{l}");
                assert_eq!(chars[id_col - 2], ' ', "{l}");
                assert!(
                    chars[id_col..]
                        .iter()
                        .collect::<String>()
                        .starts_with("id-"),
                    "{l}"
                );
                let level: String = chars[level_col..level_col + 5].iter().collect();
                assert!(
                    ["OK   ", "HIGH ", "-    "].contains(&level.as_str()),
                    "{l}: {level:?}"
                );
            }
        }
    }

    #[test]
    fn jobs_show_the_bottleneck_with_its_first_cause() {
        let job =
            |bottleneck: Option<&str>, cause: Option<CauseKind>, share: Option<f64>| JobSummary {
                job_id: "j".into(),
                job_name: "n".into(),
                flink_url: "u".into(),
                state: Some("RUNNING".into()),
                level: Some(Level::High),
                ratio: Some(0.9),
                updated_at_ms: Some(NOW),
                stale: false,
                bottleneck: bottleneck.map(str::to_string),
                bottleneck_vertex_id: bottleneck.map(|_| "v2".to_string()),
                cause,
                cause_share: share,
                cause_summary: cause.map(|c| format!("{} it is", c.as_str())),
                level_since_ms: None,
                watched_since_ms: None,
            };
        // The cell under the header's column, to the end of the cell.
        let cell = |j: JobSummary| {
            let text = jobs(&JobsView { jobs: vec![j] }, false, NOW);
            let lines: Vec<&str> = text.lines().collect();
            let at = lines[0].find("BOTTLENECK: CAUSE").expect(&text);
            let end = lines[0].find("FLINK").expect(&text);
            lines[1].chars().collect::<Vec<_>>()[at..end]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_string()
        };
        assert_eq!(
            cell(job(
                Some("slow consumer"),
                Some(CauseKind::Cpu),
                Some(0.714)
            )),
            "slow consumer: cpu 71%"
        );
        assert_eq!(
            cell(job(Some("Map"), Some(CauseKind::SkewData), Some(0.5))),
            "Map: skew_data 50%"
        );
        // No share (unknown, network): the kind alone.
        assert_eq!(
            cell(job(Some("Map"), Some(CauseKind::Unknown), None)),
            "Map: unknown"
        );
        // A collector without the cause fields: the name alone; no bottleneck: '-'.
        assert_eq!(cell(job(Some("Map"), None, None)), "Map");
        assert_eq!(cell(job(None, None, None)), "-");
    }

    #[test]
    fn jobs_json_is_backward_compatible() {
        // What a collector before the cause fields answered reads, with no cause.
        let old = serde_json::json!({"jobs": [{
            "job_id": "j", "job_name": "n", "flink_url": "u", "state": "RUNNING",
            "level": "high", "ratio": 0.9, "updated_at_ms": NOW, "stale": false,
            "bottleneck": "Map"
        }]});
        let v: JobsView = serde_json::from_value(old).unwrap();
        assert_eq!(v.jobs[0].bottleneck.as_deref(), Some("Map"));
        assert_eq!((v.jobs[0].cause, v.jobs[0].cause_share), (None, None));
        // And the new fields are left out when there is nothing to say.
        let json = serde_json::to_value(&v).unwrap();
        assert!(json["jobs"][0].get("cause").is_none(), "{json}");
        let mut with = v.jobs[0].clone();
        with.cause = Some(CauseKind::Gc);
        with.cause_share = Some(0.4);
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(
            (json["cause"].as_str(), json["cause_share"].as_f64()),
            (Some("gc"), Some(0.4))
        );
    }

    #[test]
    fn diagnosis_reads_as_sentences_with_names_subtasks_and_frames() {
        let text = diagnosis(&status_view(), false, NOW);
        assert!(
            text.contains(
                "BOTTLENECK  'Map -> Filter', subtask 0: 'Map -> Filter' is the bottleneck"
            ),
            "{text}"
        );
        assert!(
            text.contains("top frames: com.acme.Parse.parse (412)"),
            "{text}"
        );
        assert!(
            text.contains("cause 1: 71% waiting for a lock on a com.acme.Shared (lock)"),
            "{text}"
        );
        assert!(
            text.contains("advice: more parallelism makes it worse"),
            "{text}"
        );
        assert!(
            text.contains("back-pressured because of it: 'Source: Kafka'"),
            "{text}"
        );
        assert!(
            text.contains("reading     'Source: Kafka', subtasks 0-2, 5: inPoolUsage 25%"),
            "{text}"
        );
        for l in text.lines().skip(2) {
            assert!(l.chars().count() <= WRAP + 12, "{l}");
        }
        let mut none = status_view();
        none.diagnosis.clear();
        assert!(diagnosis(&none, false, NOW).ends_with("no findings\n"));

        let json = serde_json::to_value(DiagnosisReport::of(&status_view())).unwrap();
        assert_eq!(json["job_name"], "WordCount -> Sink: out");
        assert_eq!(json["diagnosis"][0]["kind"], "bottleneck");
    }

    #[test]
    fn history_config_and_agents_tables() {
        let h = HistoryView {
            job_id: "j1".into(),
            job_name: "Job".into(),
            since_ms: NOW - 3_600_000,
            windows: vec![HistoryWindow {
                vertex_id: "v1".into(),
                vertex_name: "Source: Kafka".into(),
                subtask: 3,
                attempt: 1,
                window_start_ms: NOW - 60_000,
                window_end_ms: NOW - 55_050,
                samples: 100,
                blocked: 60,
                soft: 5,
                idle: 5,
                busy: 30,
                ratio: Some(0.65),
                level: Some(Level::High),
                taskmanager_id: None,
            }],
        };
        let text = history(&h, false, NOW);
        assert!(
            text.starts_with("job Job  (j1)  since 2024-05-01T11:00:15Z (60 min ago)\n"),
            "{text}"
        );
        let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "2024-05-01T11:59:15Z",
                "5.0",
                "Source:",
                "Kafka",
                "3",
                "1",
                "HIGH",
                "0.65",
                "100",
                "60",
                "5",
                "5",
                "30",
                "-"
            ]
        );
        assert!(history(
            &HistoryView {
                windows: vec![],
                ..h
            },
            false,
            NOW
        )
        .contains("no windows"));

        let c = ConfigView {
            scope: "j1".into(),
            job_name: Some("Job".into()),
            settings: SamplingSettings {
                samples: 20,
                delay_ms: 100,
                interval_ms: 30_000,
                stacks_every: 1,
            },
            inherited: true,
        };
        assert_eq!(
            config(&c, false),
            "scope     job Job  (j1)  follows the default\nsamples   20\ndelay     100ms\n\
             interval  30s\nwindow    1s 900ms of sampling every 30s\n"
        );

        let a = AgentsView {
            agents: vec![AgentStatus {
                agent_id: "worker-1".into(),
                highest_seq: 42,
                last_batch_ms: NOW - 3_000,
                dropped_batches: 2,
                unresolved: vec!["Map (1/2)#0: ambiguous between two jobs".into()],
                jvms: vec![
                    AgentJvm {
                        pid: 7,
                        taskmanager_id: Some("localhost:36151-3b680b".into()),
                        placement: "TaskManager localhost:36151-3b680b by resource id localhost:36151-3b680b".into(),
                        seen: "resource id localhost:36151-3b680b (from its log)".into(),
                    },
                    AgentJvm {
                        pid: 8,
                        taskmanager_id: None,
                        placement: "no TaskManager of the watched clusters is this JVM".into(),
                        seen: "no resource id, listening on [9]".into(),
                    },
                ],
            }],
        };
        let text = agents(&a, false, NOW);
        assert!(text.contains("TaskManager JVMs of worker-1:\n  pid 7: TaskManager localhost:36151-3b680b by resource id"), "{text}");
        assert!(text.contains("  pid 8: no TaskManager of the watched clusters is this JVM\n    seen: no resource id, listening on [9]\n"), "{text}");
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .eq(["worker-1", "3", "s", "ago", "42", "2", "1"]),
            "{text}"
        );
        assert!(text.contains("unresolved task threads of worker-1:\n  Map (1/2)#0: ambiguous"));
        assert!(agents(&a, true, NOW).contains("\x1b[33m2\x1b[0m"));
    }

    #[test]
    fn times_read_as_utc_and_as_ago() {
        assert_eq!(timestamp(NOW), "2024-05-01T12:00:15Z");
        assert_eq!(ago(NOW - 12_400, NOW), "12 s ago");
        assert_eq!(ago(NOW - 5 * 60_000, NOW), "5 min ago");
        assert_eq!(ago(NOW - 3 * 3_600_000, NOW), "3 h ago");
        assert_eq!(ago(NOW - 3 * 86_400_000, NOW), "3 d ago");
        assert_eq!(ago(NOW + 2_000, NOW), "in 2 s");
        assert_eq!(ranges(&[5, 0, 1, 2, 2, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(wrap("aaa bbb ccc", 7), ["aaa bbb", "ccc"]);
    }
}
