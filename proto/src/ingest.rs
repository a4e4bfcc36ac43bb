//! What travels between agents and the collector: a batch of sample reports (`POST
//! /api/v1/reports`) and the per-job sampling settings agents pull back.

use serde::{Deserialize, Serialize};

use crate::report::SampleReport;

/// The batch format's version. The collector refuses versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// One window's reports from one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportBatch {
    pub schema_version: u32,
    /// Stable id of the agent (e.g. its host name, or configured).
    pub agent_id: String,
    /// Per-agent sequence number, increasing by one per batch: the collector drops a batch it has
    /// already stored (a retry after a lost answer) and notices gaps.
    pub seq: u64,
    /// Names and addresses of the agent's host, to find its TaskManagers in Flink's REST API.
    pub host_names: Vec<String>,
    /// When the batch was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Batches the agent had to drop since it started (its spool was full).
    #[serde(default)]
    pub dropped_before: u64,
    pub reports: Vec<SampleReport>,
}

/// Bounds a batch must keep to be stored: each protects the collector's memory, its SQLite
/// integers, or the meaning of `status` (a window from the future would stay the newest forever).
pub mod bounds {
    /// Longest `agent_id`, in bytes.
    pub const AGENT_ID_MAX: usize = 128;
    /// Most host names per batch, and the longest, in bytes.
    pub const HOST_NAMES_MAX: usize = 64;
    pub const HOST_NAME_MAX: usize = 255;
    /// Most reports (JVMs) per batch.
    pub const REPORTS_MAX: usize = 1_000;
    /// Most task threads per report, and per batch.
    pub const TASKS_PER_REPORT_MAX: usize = 10_000;
    pub const TASKS_PER_BATCH_MAX: usize = 100_000;
    /// Most samples in one window.
    pub const SAMPLES_MAX: u32 = 100_000;
    /// How far a window's end may lie ahead of the collector's clock.
    pub const CLOCK_SKEW_MAX_MS: u64 = 5 * 60 * 1000;
    /// Most distinct stack frames per report, the longest frame in bytes, the most stacks per
    /// task thread and the deepest stack.
    pub const STACK_FRAMES_MAX: usize = 100_000;
    pub const STACK_FRAME_MAX: usize = 4_096;
    pub const STACKS_PER_TASK_MAX: usize = 64;
    pub const STACK_DEPTH_MAX: usize = 1_024;
    /// Largest number SQLite stores (its integers are signed 64-bit).
    pub const SQL_INT_MAX: u64 = i64::MAX as u64;
}

/// Why a well-formed batch is refused: the agent's fault, never worth a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProblem(pub String);

impl std::fmt::Display for BatchProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BatchProblem {}

impl ReportBatch {
    /// Checks every bound of [`bounds`] and that counts add up, against the collector's clock
    /// `now_ms`. The first problem found is named with where it is.
    pub fn validate(&self, now_ms: u64) -> Result<(), BatchProblem> {
        self.check_agent_id()?;
        self.check_header_integers()?;
        self.check_host_names()?;
        self.check_sizes()?;
        let latest_end = now_ms.saturating_add(bounds::CLOCK_SKEW_MAX_MS);
        for (i, r) in self.reports.iter().enumerate() {
            check_report(i, r, now_ms, latest_end)?;
        }
        Ok(())
    }

    /// `agent_id` is 1 to [`bounds::AGENT_ID_MAX`] bytes without control characters: it is a
    /// key in the store and shows in logs.
    fn check_agent_id(&self) -> Result<(), BatchProblem> {
        use bounds::*;
        if self.agent_id.is_empty() || self.agent_id.len() > AGENT_ID_MAX {
            return bad(format!(
                "agent_id must be 1 to {AGENT_ID_MAX} bytes, not {}",
                self.agent_id.len()
            ));
        }
        if self.agent_id.chars().any(char::is_control) {
            return bad("agent_id contains control characters".into());
        }
        Ok(())
    }

    /// The header's counters fit SQLite's signed integers.
    fn check_header_integers(&self) -> Result<(), BatchProblem> {
        use bounds::*;
        for (what, v) in [
            ("seq", self.seq),
            ("created_at_ms", self.created_at_ms),
            ("dropped_before", self.dropped_before),
        ] {
            if v > SQL_INT_MAX {
                return bad(format!("{what} {v} exceeds {SQL_INT_MAX}"));
            }
        }
        Ok(())
    }

    /// Few enough host names, each short enough, to keep the collector's memory bounded.
    fn check_host_names(&self) -> Result<(), BatchProblem> {
        use bounds::*;
        if self.host_names.len() > HOST_NAMES_MAX
            || self.host_names.iter().any(|h| h.len() > HOST_NAME_MAX)
        {
            return bad(format!(
                "at most {HOST_NAMES_MAX} host names of at most {HOST_NAME_MAX} bytes"
            ));
        }
        Ok(())
    }

    /// Few enough reports, and task threads over all of them, for one batch.
    fn check_sizes(&self) -> Result<(), BatchProblem> {
        use bounds::*;
        if self.reports.len() > REPORTS_MAX {
            return bad(format!(
                "{} reports in one batch; at most {REPORTS_MAX}",
                self.reports.len()
            ));
        }
        let tasks: usize = self.reports.iter().map(|r| r.tasks.len()).sum();
        if tasks > TASKS_PER_BATCH_MAX {
            return bad(format!(
                "{tasks} task threads in one batch; at most {TASKS_PER_BATCH_MAX}"
            ));
        }
        Ok(())
    }
}

/// A refusal with message `m`.
fn bad(m: String) -> Result<(), BatchProblem> {
    Err(BatchProblem(m))
}

/// Report `i`: its size, its sample count, that its window does not end in the future (past
/// `latest_end`), its delay, then each of its task threads.
fn check_report(
    i: usize,
    r: &SampleReport,
    now_ms: u64,
    latest_end: u64,
) -> Result<(), BatchProblem> {
    use bounds::*;
    let at = format!("report {i} (pid {})", r.pid);
    if r.tasks.len() > TASKS_PER_REPORT_MAX {
        return bad(format!(
            "{at}: {} task threads; at most {TASKS_PER_REPORT_MAX}",
            r.tasks.len()
        ));
    }
    if r.samples == 0 || r.samples > SAMPLES_MAX {
        return bad(format!(
            "{at}: samples {} not in 1..={SAMPLES_MAX}",
            r.samples
        ));
    }
    let end = r.started_at_ms.checked_add(r.elapsed_ms);
    match end {
        Some(end) if end <= latest_end => {}
        _ => {
            return bad(format!(
                "{at}: the window ends at {} ms, past the collector's clock ({now_ms} ms) by more than {CLOCK_SKEW_MAX_MS} ms",
                r.started_at_ms.saturating_add(r.elapsed_ms)
            ))
        }
    }
    if r.delay_ms > SQL_INT_MAX {
        return bad(format!(
            "{at}: delay_ms {} exceeds {SQL_INT_MAX}",
            r.delay_ms
        ));
    }
    if r.stack_frames.len() > STACK_FRAMES_MAX
        || r.stack_frames.iter().any(|f| f.len() > STACK_FRAME_MAX)
    {
        return bad(format!(
            "{at}: at most {STACK_FRAMES_MAX} stack frames of at most {STACK_FRAME_MAX} bytes"
        ));
    }
    check_tasks(&at, r)
}

/// Each task thread of report `r` (named `at`) counts no more states than its samples, nor more
/// samples than the report took.
fn check_tasks(at: &str, r: &SampleReport) -> Result<(), BatchProblem> {
    for t in &r.tasks {
        let sum = u64::from(t.blocked) + u64::from(t.waiting) + u64::from(t.busy);
        if t.samples > r.samples || sum > u64::from(t.samples) {
            return bad(format!(
                "{at}, thread {:?}: blocked {} + waiting {} + busy {} must not exceed its samples {}, nor those the report's {}",
                t.thread, t.blocked, t.waiting, t.busy, t.samples, r.samples
            ));
        }
        check_stacks(at, r, t)?;
    }
    Ok(())
}

/// A task's stacks are few and bounded, name only frames the report holds, and count no more
/// samples than the task's busy ones.
fn check_stacks(at: &str, r: &SampleReport, t: &crate::TaskSamples) -> Result<(), BatchProblem> {
    use bounds::*;
    if t.stacks.len() > STACKS_PER_TASK_MAX
        || t.stacks.iter().any(|s| s.frames.len() > STACK_DEPTH_MAX)
    {
        return bad(format!(
            "{at}, thread {:?}: at most {STACKS_PER_TASK_MAX} stacks of at most {STACK_DEPTH_MAX} frames",
            t.thread
        ));
    }
    let frames = r.stack_frames.len();
    if let Some(i) = t
        .stacks
        .iter()
        .flat_map(|s| &s.frames)
        .find(|&&i| i as usize >= frames)
    {
        return bad(format!(
            "{at}, thread {:?}: a stack names frame {i}, but the report holds {frames}",
            t.thread
        ));
    }
    let samples: u64 = t.stacks.iter().map(|s| u64::from(s.samples)).sum();
    if samples > u64::from(t.busy) {
        return bad(format!(
            "{at}, thread {:?}: its stacks count {samples} samples, more than its {} busy ones",
            t.thread, t.busy
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> ReportBatch {
        let text = r#"{"schema_version":1,"agent_id":"a","seq":1,"host_names":["h"],"created_at_ms":1000,
            "reports":[{"pid":1,"backend":"attach","jvm":{"version":null,"main_class":"M"},"samples":10,"delay_ms":50,
            "started_at_ms":1000,"elapsed_ms":500,"cost":COST,"errors":[],
            "tasks":[{"thread":"Map (1/2)#0","thread_id":1,"elapsed_s":1.0,"task":"Map","subtask":0,"parallelism":2,
                      "attempt":0,"samples":10,"blocked":4,"waiting":6,"busy":0,"top_frames":[]}]}]}"#;
        let cost = serde_json::to_string(&crate::SampleCost::default()).unwrap();
        serde_json::from_str(&text.replace("COST", &cost)).unwrap()
    }

    #[test]
    fn bad_batches_are_named_with_where_they_are_bad() {
        let now = 2_000;
        assert_eq!(sample_batch().validate(now), Ok(()));
        let refuse = |f: &dyn Fn(&mut ReportBatch), says: &str| {
            let mut b = sample_batch();
            f(&mut b);
            let e = b.validate(now).unwrap_err().0;
            assert!(e.contains(says), "{e}");
        };
        refuse(&|b| b.agent_id = "x".repeat(129), "agent_id");
        refuse(&|b| b.agent_id.clear(), "agent_id");
        refuse(&|b| b.agent_id = "a\nb".into(), "control");
        refuse(&|b| b.seq = 1 << 63, "seq");
        refuse(
            &|b| b.reports[0].started_at_ms = now + 10 * 60 * 1000,
            "past the collector's clock",
        );
        refuse(
            &|b| b.reports[0].elapsed_ms = u64::MAX,
            "past the collector's clock",
        );
        refuse(
            &|b| b.reports[0].tasks[0].blocked = u32::MAX,
            "must not exceed",
        );
        refuse(&|b| b.reports[0].tasks[0].samples = 11, "must not exceed");
        refuse(&|b| b.reports[0].samples = 0, "samples 0");
        refuse(&|b| b.host_names = vec!["h".into(); 65], "host names");
        let stack = |frames: Vec<u32>, samples| crate::StackCount {
            frames,
            samples,
            activity: None,
        };
        refuse(
            &|b| b.reports[0].tasks[0].stacks = vec![stack(vec![0], 0)],
            "names frame 0, but the report holds 0",
        );
        refuse(
            &|b| {
                b.reports[0].stack_frames = vec!["a.B.c".into()];
                b.reports[0].tasks[0].stacks = vec![stack(vec![0], 1)];
            },
            "more than its 0 busy ones",
        );
        refuse(
            &|b| b.reports[0].stack_frames = vec!["x".repeat(5000)],
            "stack frames",
        );
        let mut ok = sample_batch();
        ok.reports[0].stack_frames = vec!["java.lang.Thread.run".into(), "a.B.c".into()];
        ok.reports[0].tasks[0].busy = 2;
        ok.reports[0].tasks[0].waiting = 4;
        ok.reports[0].tasks[0].stacks = vec![stack(vec![0, 1], 2)];
        assert_eq!(ok.validate(now), Ok(()));
        assert_eq!(
            ok.reports[0].folded_stacks(&ok.reports[0].tasks[0]),
            Some(vec![("java.lang.Thread.run;a.B.c".to_string(), None, 2)])
        );
    }

    #[test]
    fn batch_round_trips() {
        let b = ReportBatch {
            schema_version: SCHEMA_VERSION,
            agent_id: "tm-host-1".into(),
            seq: 7,
            host_names: vec!["tm-host-1".into(), "10.0.0.1".into()],
            created_at_ms: 1,
            dropped_before: 0,
            reports: vec![],
        };
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<ReportBatch>(&json).unwrap(), b);
    }
}
