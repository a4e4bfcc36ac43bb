//! Following back-pressure that comes and goes: the `phases` test job (slow in every other
//! period of the wall clock, see `TestJobs::submit_phases`) watched by a collector, with Flink's
//! own `/backpressure` beside it. Used by the end-to-end test of continuous watching and by
//! `scripts/bench onset`.
//!
//! At each phase change (a multiple of the period, epoch ms, which the job and this code agree
//! on without talking) the source's level must go to HIGH (slow phase) or OK (free phase). The
//! onset latency is the time from the change to the first poll that shows the new level: of
//! bpmon's `status` (its API, polled every [`POLL`]), and of Flink's `/backpressure`.

use std::time::Duration;

use anyhow::{Context, Result};
use bpmon_proto::time::now_ms;
use serde_json::Value;

use crate::services::{AgentProc, CollectorProc};
use crate::{wait_for, work_dir, ClusterOptions, FlinkCluster, FlinkDist, FlinkRest, TestJobs};

/// How often both sides are polled.
pub const POLL: Duration = Duration::from_millis(250);

/// The vertex that is back-pressured in the slow phases, and the one that causes it.
pub const SOURCE: &str = "Source: numbers -> pace";
pub const CONSUMER: &str = "phased consumer -> discard: Writer";

/// Whether the period containing `epoch_ms` is slow (as `Phased.slow` in the job).
pub fn slow(epoch_ms: u64, period_ms: u64) -> bool {
    (epoch_ms / period_ms) % 2 == 1
}

/// The next phase change after `epoch_ms`.
pub fn next_change(epoch_ms: u64, period_ms: u64) -> u64 {
    (epoch_ms / period_ms + 1) * period_ms
}

/// One phase change and when each side showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Followed {
    /// The change, epoch ms.
    pub at_ms: u64,
    /// Into a slow phase (HIGH expected) or a free one (OK expected).
    pub slow: bool,
    /// ms from the change to bpmon's `status` showing the new level; `None`: not within the
    /// phase.
    pub bpmon_ms: Option<u64>,
    /// The same for Flink's `/backpressure`.
    pub flink_ms: Option<u64>,
    /// ms from the change to Flink's `/backpressure` first showing another level than it did
    /// at the change (its averages over a minute may never reach the new level in a short
    /// phase).
    pub flink_moved_ms: Option<u64>,
    /// The levels Flink's `/backpressure` showed during the phase, in the order first seen.
    pub flink_levels: Vec<String>,
    /// Whether bpmon's ratio then came from Flink's timers (the in-process sampler).
    pub from_timers: bool,
    /// ms from the change to the end of the window that showed the new level: the window's
    /// part of the latency (the rest is delivery, storing and the status cache).
    pub window_end_ms: Option<i64>,
}

/// `vertex` as a status (`GET /api/v1/jobs/{job}/status`) shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub level: String,
    /// Whether every subtask's ratio came from Flink's timers.
    pub timers: bool,
    /// The end of the newest window among its subtasks', epoch ms.
    pub window_end_ms: Option<u64>,
}

fn vertex_level(status: &Value, vertex: &str) -> Option<Shown> {
    let v = status["vertices"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == vertex)?;
    let level = v["level"].as_str()?.to_string();
    let timers = v["subtasks"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|s| s["ratio_source"] == "timers");
    let window_end_ms = v["subtasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["window_end_ms"].as_u64())
        .max();
    Some(Shown {
        level,
        timers,
        window_end_ms,
    })
}

/// The collector's and Flink's views of the source, polled.
pub struct Watch<'a> {
    pub collector_url: String,
    pub flink: &'a FlinkRest,
    pub job_id: String,
    /// Flink's vertex id of [`SOURCE`].
    pub source_vertex_id: String,
    pub period_ms: u64,
    http: reqwest::blocking::Client,
}

impl<'a> Watch<'a> {
    pub fn new(
        collector_url: &str,
        flink: &'a FlinkRest,
        job_id: &str,
        period_ms: u64,
    ) -> Result<Watch<'a>> {
        let job = flink.job(job_id)?;
        let source = job
            .vertices
            .iter()
            .find(|v| v.name == SOURCE)
            .with_context(|| format!("no vertex {SOURCE:?} in {job_id}"))?;
        Ok(Watch {
            collector_url: collector_url.to_string(),
            flink,
            job_id: job_id.to_string(),
            source_vertex_id: source.id.clone(),
            period_ms,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// bpmon's level of the source now, and whether it came from timers.
    pub fn bpmon(&self) -> Result<Option<Shown>> {
        let url = format!("{}/api/v1/jobs/{}/status", self.collector_url, self.job_id);
        let status: Value = self.http.get(&url).send()?.error_for_status()?.json()?;
        Ok(vertex_level(&status, SOURCE))
    }

    /// Flink's level of the source now (`ok`, `low`, `high`), if it has one.
    pub fn flink(&self) -> Option<String> {
        self.flink
            .backpressure(&self.job_id, &self.source_vertex_id)
            .ok()
            .and_then(|b| b.level().map(str::to_string))
    }

    /// Follows the next `changes` phase changes; each is given the whole phase after it.
    pub fn follow(&self, changes: usize, progress: impl FnMut(&Followed)) -> Result<Vec<Followed>> {
        self.follow_from(next_change(now_ms(), self.period_ms), changes, progress)
    }

    /// Follows `changes` phase changes from the one at `at` (epoch ms, a multiple of the
    /// period).
    pub fn follow_from(
        &self,
        mut at: u64,
        changes: usize,
        mut progress: impl FnMut(&Followed),
    ) -> Result<Vec<Followed>> {
        let mut out = Vec::new();
        for _ in 0..changes {
            let slow = slow(at, self.period_ms);
            let want = if slow { "high" } else { "ok" };
            let until = at + self.period_ms;
            while now_ms() < at {
                std::thread::sleep(Duration::from_millis(20));
            }
            let before = self.flink();
            let mut f = Followed {
                at_ms: at,
                slow,
                bpmon_ms: None,
                flink_ms: None,
                flink_moved_ms: None,
                flink_levels: before.iter().cloned().collect(),
                from_timers: false,
                window_end_ms: None,
            };
            while now_ms() < until && (f.bpmon_ms.is_none() || f.flink_ms.is_none()) {
                let flink = self.flink();
                if let Some(l) = &flink {
                    if !f.flink_levels.contains(l) {
                        f.flink_levels.push(l.clone());
                    }
                }
                let polled = now_ms();
                if f.bpmon_ms.is_none() {
                    if let Ok(Some(shown)) = self.bpmon() {
                        if shown.level == want {
                            f.bpmon_ms = Some(polled - at);
                            f.from_timers = shown.timers;
                            f.window_end_ms = shown.window_end_ms.map(|e| e as i64 - at as i64);
                        }
                    }
                }
                if f.flink_ms.is_none() && flink.as_deref() == Some(want) {
                    f.flink_ms = Some(polled - at);
                }
                if f.flink_moved_ms.is_none() && flink.is_some() && flink != before {
                    f.flink_moved_ms = Some(polled - at);
                }
                std::thread::sleep(POLL);
            }
            progress(&f);
            out.push(f);
            at = until;
        }
        Ok(out)
    }
}

/// Everything continuous watching is measured with: a Flink 2.3 cluster started by its own
/// scripts (one TaskManager) running the `phases` job, a collector watching that job with
/// `config set <job> --continuous`, and an agent sampling in-process.
pub struct PhasesRig {
    pub cluster: FlinkCluster,
    pub collector: CollectorProc,
    pub agent: AgentProc,
    pub job_id: String,
    /// What `config set <job> --continuous --output json` answered.
    pub config: Value,
    pub period_ms: u64,
}

impl PhasesRig {
    /// Starts it all; `tag` names the work directory and the agent. Returns once the job runs
    /// and the collector has taken its settings (the agent may not have reported yet).
    pub fn start(tag: &str, period_ms: u64) -> Result<PhasesRig> {
        crate::jvmti::library()?;
        let dist = FlinkDist::install("2.3.0")?;
        let jar = TestJobs::build(&dist)?;
        let cluster = FlinkCluster::start(
            &dist,
            ClusterOptions {
                taskmanagers: 1,
                slots_per_tm: 2,
                ..ClusterOptions::default()
            },
        )?;
        let rest = cluster.rest().clone();
        let job_id = TestJobs::submit_phases(&rest, &jar, &format!("bpmon-{tag}"), period_ms)?;
        rest.wait_job_running(&job_id, Duration::from_secs(120))?;
        let dir = work_dir().join(tag).join(now_ms().to_string());
        let collector = CollectorProc::start(
            &[cluster.rest_url()],
            &dir.join("collector"),
            0,
            &["--poll-interval", "1s"],
        )?;
        // Continuous watching of this job only; the default stays Flink's classic monitor.
        // Settings are set for jobs the collector has seen: after its first poll.
        let config = wait_for(
            "the collector to know the job",
            Duration::from_secs(30),
            || {
                Ok(collector
                    .cli_json(&["config", "set", &job_id, "--continuous"])
                    .ok())
            },
        )?;
        let agent = AgentProc::start(
            &collector.url,
            tag,
            &dir.join("agent-spool"),
            &[
                "--backend",
                "jvmti",
                "--discovery-interval",
                "2s",
                "--plan-refresh-interval",
                "2s",
            ],
        )?;
        Ok(PhasesRig {
            cluster,
            collector,
            agent,
            job_id,
            config,
            period_ms,
        })
    }

    /// A watch of the source, once the collector shows its first level from Flink's timers.
    pub fn watch(&self) -> Result<Watch<'_>> {
        let watch = Watch::new(
            &self.collector.url,
            self.cluster.rest(),
            &self.job_id,
            self.period_ms,
        )?;
        wait_for(
            "the source's first level from Flink's timers",
            Duration::from_secs(90),
            || Ok(watch.bpmon()?.filter(|shown| shown.timers)),
        )
        .with_context(|| {
            format!(
                "agent log:\n{}\ncollector log:\n{}",
                self.agent.daemon.log_tail(20),
                self.collector.daemon.log_tail(20)
            )
        })?;
        Ok(watch)
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_alternate_on_the_wall_clock() {
        assert!(!slow(0, 20_000));
        assert!(slow(20_000, 20_000));
        assert!(!slow(40_001, 20_000));
        assert_eq!(next_change(39_999, 20_000), 40_000);
        assert_eq!(next_change(40_000, 20_000), 60_000);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [5, 1, 4, 2, 3, 6];
        assert_eq!(quantile(&v, 0.5), Some(3));
        assert_eq!(quantile(&v, 0.9), Some(6));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
