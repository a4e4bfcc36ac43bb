//! When a job's bottleneck appears, clears, moves to another vertex, or its first-ranked cause
//! changes kind, the collector says so in its log, once: alert on the cause, not on the
//! back-pressured vertices upstream (its victims). `journalctl -u bpmon-collector
//! F_BOTTLENECK=appeared`, or the `bottleneck` field of `--log-format json`. The bottleneck
//! followed is the job's first, as `jobs` shows it. Pure: [`bottleneck_of`] reads a status,
//! [`BottleneckLog::observe`] returns the change, the caller logs it.
//!
//! **Where findings are computed.** Only with a job's status (`status::status_view`): the newest
//! window of every subtask, from the store, with the live topology. A batch carries one agent's
//! windows, a part of a job, so the diagnosis cannot be made from the batch, and making it for
//! every batch would cost a store read and a diagnosis per batch and job. Instead ingest marks
//! the jobs a stored batch touched ([`Pending`], a set insert), and a background task every
//! [`CHECK_EVERY`] computes the status of each marked job once, however many batches came
//! (jobs without new windows cost nothing), and diffs it here. That status is computed afresh,
//! not taken from the query cache (a query may have computed it before the batch was stored),
//! and goes into the cache, so queries in the next second reuse it. A job that Flink no longer
//! runs sends no windows: those with a bottleneck logged are checked too, and clear.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::api::StatusView;
use crate::cause::CauseKind;
use crate::diagnosis::first_bottleneck;

use super::status::vertex_name;

/// How often the jobs with new windows are checked: events lag windows by at most this.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A job's bottleneck as the events show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bottleneck {
    pub vertex_id: String,
    pub vertex: String,
    /// The first-ranked cause; `unknown` when the diagnosis gave none.
    pub cause: CauseKind,
    /// The share of the time it explains; `None` for `unknown` and `network`.
    pub share: Option<f64>,
    pub summary: String,
    /// The back-pressured vertices upstream that wait for it, by name.
    pub victims: Vec<String>,
}

/// The job's first bottleneck in its status, if any.
pub fn bottleneck_of(s: &StatusView) -> Option<Bottleneck> {
    let f = first_bottleneck(&s.diagnosis)?;
    let first = f.causes.first();
    Some(Bottleneck {
        vertex_id: f.vertex_id.clone(),
        vertex: vertex_name(s, &f.vertex_id),
        cause: first.map_or(CauseKind::Unknown, |c| c.kind),
        share: first.and_then(|c| c.share),
        summary: first.map_or_else(String::new, |c| c.summary.clone()),
        victims: f.victims.iter().map(|v| vertex_name(s, v)).collect(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Appeared,
    /// Now on another vertex.
    Moved,
    /// Same vertex, another first-ranked cause kind.
    CauseChanged,
    Cleared,
}

impl Change {
    /// The `bottleneck` field of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Appeared => "appeared",
            Change::Moved => "moved",
            Change::CauseChanged => "cause_changed",
            Change::Cleared => "cleared",
        }
    }
}

/// One change of a job's bottleneck.
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckEvent {
    pub job_id: String,
    pub job_name: String,
    pub change: Change,
    /// `None` when cleared.
    pub now: Option<Bottleneck>,
    /// `None` when it appeared.
    pub previous: Option<Bottleneck>,
}

/// Each job's bottleneck as last logged; jobs without one are not kept.
#[derive(Debug, Default)]
pub struct BottleneckLog {
    jobs: HashMap<String, (String, Bottleneck)>,
}

impl BottleneckLog {
    /// Takes in a job's bottleneck as just computed; returns the change from the last one
    /// logged, if it is news. Shares and summaries move with every window: only the vertex and
    /// the cause kind make news.
    pub fn observe(
        &mut self,
        job_id: &str,
        job_name: &str,
        now: Option<Bottleneck>,
    ) -> Option<BottleneckEvent> {
        let previous = match &now {
            Some(b) => self
                .jobs
                .insert(job_id.to_string(), (job_name.to_string(), b.clone())),
            None => self.jobs.remove(job_id),
        }
        .map(|(_, b)| b);
        let change = match (&previous, &now) {
            (None, None) => return None,
            (None, Some(_)) => Change::Appeared,
            (Some(_), None) => Change::Cleared,
            (Some(p), Some(n)) if p.vertex_id != n.vertex_id => Change::Moved,
            (Some(p), Some(n)) if p.cause != n.cause => Change::CauseChanged,
            (Some(_), Some(_)) => return None,
        };
        Some(BottleneckEvent {
            job_id: job_id.to_string(),
            job_name: job_name.to_string(),
            change,
            now,
            previous,
        })
    }

    /// A job the store no longer has: its bottleneck, if one was logged, clears.
    pub fn forget(&mut self, job_id: &str) -> Option<BottleneckEvent> {
        let (job_name, previous) = self.jobs.remove(job_id)?;
        Some(BottleneckEvent {
            job_id: job_id.to_string(),
            job_name,
            change: Change::Cleared,
            now: None,
            previous: Some(previous),
        })
    }

    /// The jobs with a bottleneck logged, in id order.
    pub fn tracked(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.jobs.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }
}

/// The jobs with windows stored since the last check.
#[derive(Debug, Default)]
pub struct Pending {
    jobs: BTreeSet<String>,
}

impl Pending {
    pub fn mark(&mut self, jobs: impl IntoIterator<Item = String>) {
        self.jobs.extend(jobs);
    }

    /// The jobs marked, in id order; none are left marked.
    pub fn take(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::Cause;
    use crate::diagnosis::{Finding, FindingKind};
    use bpmon_proto::SamplingSettings;

    fn b(vertex: &str, cause: CauseKind, share: f64) -> Option<Bottleneck> {
        Some(Bottleneck {
            vertex_id: vertex.into(),
            vertex: vertex.to_uppercase(),
            cause,
            share: Some(share),
            summary: format!("{:.0}% {}", share * 100.0, cause.as_str()),
            victims: vec!["SOURCE".into()],
        })
    }

    fn change(e: Option<BottleneckEvent>) -> Option<Change> {
        e.map(|e| e.change)
    }

    #[test]
    fn appeared_then_the_same_again_is_no_news() {
        let mut log = BottleneckLog::default();
        assert_eq!(log.observe("j", "job", None), None);
        let e = log
            .observe("j", "job", b("map", CauseKind::Cpu, 0.71))
            .expect("appeared");
        assert_eq!((e.change, e.previous.as_ref()), (Change::Appeared, None));
        assert_eq!(e.job_name, "job");
        assert_eq!(e.now.as_ref().map(|n| n.vertex.as_str()), Some("MAP"));
        // Every poll after: nothing, even as the share moves.
        assert_eq!(
            log.observe("j", "job", b("map", CauseKind::Cpu, 0.71)),
            None
        );
        assert_eq!(
            log.observe("j", "job", b("map", CauseKind::Cpu, 0.64)),
            None
        );
        // Another job is another story.
        assert_eq!(
            change(log.observe("k", "other", b("map", CauseKind::Cpu, 0.5))),
            Some(Change::Appeared)
        );
    }

    #[test]
    fn a_new_first_cause_is_news_with_the_previous_one() {
        let mut log = BottleneckLog::default();
        log.observe("j", "job", b("map", CauseKind::Cpu, 0.71));
        let e = log
            .observe("j", "job", b("map", CauseKind::Gc, 0.55))
            .expect("cause changed");
        assert_eq!(e.change, Change::CauseChanged);
        assert_eq!(e.previous.map(|p| p.cause), Some(CauseKind::Cpu));
        assert_eq!(e.now.map(|n| n.cause), Some(CauseKind::Gc));
        assert_eq!(log.observe("j", "job", b("map", CauseKind::Gc, 0.6)), None);
    }

    #[test]
    fn a_move_to_another_vertex_is_news_whatever_the_cause() {
        let mut log = BottleneckLog::default();
        log.observe("j", "job", b("map", CauseKind::Cpu, 0.71));
        let e = log
            .observe("j", "job", b("sink", CauseKind::Cpu, 0.8))
            .expect("moved");
        assert_eq!(e.change, Change::Moved);
        assert_eq!(e.previous.map(|p| p.vertex_id), Some("map".to_string()));
        assert_eq!(e.now.map(|n| n.vertex_id), Some("sink".to_string()));
    }

    #[test]
    fn cleared_once_then_nothing_until_it_comes_back() {
        let mut log = BottleneckLog::default();
        log.observe("j", "job", b("map", CauseKind::Lock, 0.4));
        let e = log.observe("j", "job", None).expect("cleared");
        assert_eq!(e.change, Change::Cleared);
        assert_eq!(e.now, None);
        assert_eq!(e.previous.map(|p| p.cause), Some(CauseKind::Lock));
        assert!(log.tracked().is_empty());
        assert_eq!(log.observe("j", "job", None), None);
        assert_eq!(
            change(log.observe("j", "job", b("map", CauseKind::Lock, 0.4))),
            Some(Change::Appeared)
        );
        // A job the store forgot clears under the name it was logged with.
        let e = log.forget("j").expect("cleared");
        assert_eq!((e.change, e.job_name.as_str()), (Change::Cleared, "job"));
        assert_eq!(log.forget("j"), None);
    }

    #[test]
    fn marked_jobs_are_taken_once() {
        let mut p = Pending::default();
        p.mark(["b".to_string(), "a".to_string()]);
        p.mark(["b".to_string()]);
        assert_eq!(p.take().into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(p.take().is_empty());
    }

    fn status(diagnosis: Vec<Finding>) -> StatusView {
        let vertex = |id: &str, name: &str| crate::api::VertexStatus {
            vertex_id: id.into(),
            name: name.into(),
            parallelism: 1,
            level: None,
            ratio: None,
            subtasks: Vec::new(),
        };
        StatusView {
            job_id: "j".into(),
            job_name: "job".into(),
            flink_url: "http://f".into(),
            state: Some("RUNNING".into()),
            level: None,
            updated_at_ms: 0,
            stale: false,
            stale_reasons: Vec::new(),
            metrics_fetched_at_ms: None,
            settings: SamplingSettings::default(),
            vertices: vec![vertex("v1", "Source: Kafka"), vertex("v2", "Map")],
            edges: Vec::new(),
            diagnosis,
        }
    }

    fn finding(kind: FindingKind, vertex: &str, causes: Vec<Cause>) -> Finding {
        Finding {
            kind,
            vertex_id: vertex.into(),
            subtasks: vec![0],
            message: String::new(),
            top_frames: Vec::new(),
            causes,
            victims: vec!["v1".into()],
        }
    }

    #[test]
    fn the_first_bottleneck_is_read_with_names_and_its_first_cause() {
        let cause = |kind, share| Cause {
            kind,
            area: None,
            share,
            summary: format!("{} it is", kind.as_str()),
            evidence: Vec::new(),
            advice: String::new(),
        };
        let s = status(vec![
            finding(FindingKind::Reading, "v1", Vec::new()),
            finding(
                FindingKind::Bottleneck,
                "v2",
                vec![
                    cause(CauseKind::Cpu, Some(0.71)),
                    cause(CauseKind::Gc, Some(0.2)),
                ],
            ),
        ]);
        let got = bottleneck_of(&s).expect("a bottleneck");
        assert_eq!(
            got,
            Bottleneck {
                vertex_id: "v2".into(),
                vertex: "Map".into(),
                cause: CauseKind::Cpu,
                share: Some(0.71),
                summary: "cpu it is".into(),
                victims: vec!["Source: Kafka".into()],
            }
        );
        // Without causes it is unknown; readings alone are no bottleneck.
        let s = status(vec![finding(FindingKind::Bottleneck, "v2", Vec::new())]);
        assert_eq!(bottleneck_of(&s).map(|b| b.cause), Some(CauseKind::Unknown));
        let s = status(vec![finding(FindingKind::Reading, "v1", Vec::new())]);
        assert_eq!(bottleneck_of(&s), None);
    }
}
