//! What could not be placed, kept for `status` and `agents`: per subtask why its threads were
//! not placed, per agent its last batch's unplaced threads, which TaskManager each reported JVM
//! is (or why none), and the batches an agent reported dropped. Plain data: the collector holds
//! it behind a lock and calls these methods.

use std::collections::{BTreeMap, HashMap, HashSet};

use bpmon_proto::ReportBatch;

use crate::api::{AgentJvm, AgentStatus};
use crate::merge::MergedWindow;
use crate::model::JobSnapshot;
use crate::store::AgentSeq;

use super::placement::{JvmOutcome, Unplaced};

/// How long a JVM's placement outcome is kept after the last report from it.
const JVM_OUTCOME_TTL_MS: u64 = 10 * 60 * 1000;

/// Placement failures kept for `status` and `agents`.
#[derive(Default)]
pub struct Misplaced {
    /// job id → (vertex id, subtask) → reason.
    by_job: HashMap<String, HashMap<(String, u32), String>>,
    /// agent id → its last batch's unplaced threads.
    by_agent: HashMap<String, Vec<String>>,
    /// agent id → pid → which TaskManager that JVM is (or why none), as of its latest report,
    /// and when that was; a JVM not reported for [`JVM_OUTCOME_TTL_MS`] is forgotten.
    jvms_by_agent: HashMap<String, BTreeMap<u32, (JvmOutcome, u64)>>,
    /// agent id → batches it reported dropped.
    dropped: HashMap<String, u64>,
}

impl Misplaced {
    /// Takes in a stored batch's placement: its JVMs' outcomes, its unplaced threads and the
    /// batches the agent reported dropped, at `now` (ms since the Unix epoch).
    pub fn note(
        &mut self,
        batch: &ReportBatch,
        unplaced: &[Unplaced],
        jvms: Vec<JvmOutcome>,
        now: u64,
    ) {
        for j in jvms.iter().filter(|j| j.taskmanager_id.is_none()) {
            tracing::debug!(agent = %batch.agent_id, pid = j.pid, why = %j.text, "JVM matched no TaskManager");
        }
        let known = self
            .jvms_by_agent
            .entry(batch.agent_id.clone())
            .or_default();
        for j in jvms {
            known.insert(j.pid, (j, now));
        }
        known.retain(|_, (_, at)| now.saturating_sub(*at) < JVM_OUTCOME_TTL_MS);
        if batch.dropped_before > 0 {
            let prev = self
                .dropped
                .insert(batch.agent_id.clone(), batch.dropped_before);
            if prev != Some(batch.dropped_before) {
                tracing::warn!(agent = %batch.agent_id, dropped = batch.dropped_before, "agent reports batches it had to drop (spool full)");
            }
        }
        // Placed windows clear earlier reasons for their subtasks... a new reason replaces.
        for u in unplaced {
            for c in &u.candidates {
                self.by_job
                    .entry(c.job_id.clone())
                    .or_default()
                    .insert((c.vertex_id.clone(), c.subtask), u.why.clone());
            }
        }
        if !unplaced.is_empty() {
            tracing::info!(agent = %batch.agent_id, seq = batch.seq, threads = unplaced.len(), first = %unplaced[0].why, "task threads not placed");
        }
        self.by_agent.insert(
            batch.agent_id.clone(),
            unplaced
                .iter()
                .map(|u| format!("pid {} '{}': {}", u.pid, u.thread, u.why))
                .collect(),
        );
    }

    /// Why subtasks of `job_id` without a window newer than the reason show none: reasons noted
    /// for the job, and for subtasks of the `live` job on a TaskManager no reported JVM matched,
    /// what was compared.
    pub fn unplaced_for(
        &self,
        job_id: &str,
        windows: &[MergedWindow],
        live: Option<&JobSnapshot>,
    ) -> HashMap<(String, u32), String> {
        let has_window = |vertex: &str, subtask: u32| {
            windows
                .iter()
                .any(|w| w.vertex_id == vertex && w.subtask == subtask)
        };
        // Reasons older than the windows stored since no longer apply.
        let mut unplaced: HashMap<(String, u32), String> = self
            .by_job
            .get(job_id)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !has_window(&k.0, k.1))
            .collect();
        // Subtasks on a TaskManager no reported JVM matched: say what was compared.
        if let Some(job) = live {
            let misses = self.misses_by_taskmanager();
            for v in &job.vertices {
                for s in &v.subtasks {
                    let Some(reasons) = s.taskmanager_id.as_ref().and_then(|t| misses.get(t))
                    else {
                        continue;
                    };
                    if has_window(&v.vertex_id, s.subtask) {
                        continue;
                    }
                    unplaced
                        .entry((v.vertex_id.clone(), s.subtask))
                        .or_insert_with(|| {
                            format!(
                                "no JVM an agent reported is TaskManager {}: {}",
                                s.taskmanager_id.as_deref().unwrap_or("?"),
                                reasons.join("; ")
                            )
                        });
                }
            }
        }
        unplaced
    }

    /// TaskManager id → why each JVM that matched no TaskManager is not it.
    fn misses_by_taskmanager(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (agent, jvms) in &self.jvms_by_agent {
            for (j, _) in jvms.values().filter(|(j, _)| j.taskmanager_id.is_none()) {
                for (tm, why) in &j.misses {
                    out.entry(tm.clone()).or_default().push(format!(
                        "JVM {} of agent {agent} ({}): {why}",
                        j.pid, j.clues
                    ));
                }
            }
        }
        out
    }

    /// What `agents` answers for an agent the store knows.
    pub fn agent_status(&self, a: AgentSeq) -> AgentStatus {
        AgentStatus {
            dropped_batches: self.dropped.get(&a.agent_id).copied().unwrap_or(0),
            unresolved: self.by_agent.get(&a.agent_id).cloned().unwrap_or_default(),
            jvms: self
                .jvms_by_agent
                .get(&a.agent_id)
                .map(|js| {
                    js.values()
                        .map(|(j, _)| AgentJvm {
                            pid: j.pid,
                            taskmanager_id: j.taskmanager_id.clone(),
                            placement: j.text.clone(),
                            seen: j.clues.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            agent_id: a.agent_id,
            highest_seq: a.highest_seq,
            last_batch_ms: a.last_batch_ms,
        }
    }

    /// Forgets the agents not in `known` (pruned from the store with their row).
    pub fn keep_agents(&mut self, known: &HashSet<String>) {
        self.by_agent.retain(|a, _| known.contains(a));
        self.jvms_by_agent.retain(|a, _| known.contains(a));
        self.dropped.retain(|a, _| known.contains(a));
    }
}
