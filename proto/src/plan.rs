//! What an agent asks the collector before sampling, and the answer: which sampling settings
//! apply to which task threads of each TaskManager JVM on its host.
//!
//! Settings are set per Flink job, but an agent sees threads, not jobs: a thread's name carries
//! no job id. The collector knows where each job's subtasks run (Flink's REST API), so the agent
//! sends the JVMs it found ([`PlanRequest`]) and gets back, per JVM, the tasks placed on it with
//! their job's settings ([`AgentPlan`]). A task the plan does not name is sampled with the
//! default settings.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::settings::SamplingSettings;
use crate::whereabouts::{JvmNetwork, ResourceIdSource};
use crate::TaskIdentity;

/// `POST /api/v1/plan` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub agent_id: String,
    /// Names and addresses of the agent's host.
    pub host_names: Vec<String>,
    pub jvms: Vec<PlanJvm>,
}

/// A TaskManager JVM as the agent found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanJvm {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id_source: Option<ResourceIdSource>,
    #[serde(default)]
    pub listen_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<JvmNetwork>,
}

/// `POST /api/v1/plan` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPlan {
    /// For tasks no job claims, and for JVMs the collector could not place.
    pub default: SamplingSettings,
    pub jvms: Vec<JvmPlan>,
}

/// The plan for one JVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JvmPlan {
    pub pid: u32,
    /// The Flink TaskManager this JVM is, when the collector could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskmanager_id: Option<String>,
    /// Why it could not, otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub tasks: Vec<TaskPlan>,
}

/// One subtask placed on the JVM, with its job's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    pub job_id: String,
    /// The thread name's parts: vertex name, 0-based subtask, parallelism, attempt.
    #[serde(flatten)]
    pub identity: TaskIdentity,
    pub settings: SamplingSettings,
}

impl JvmPlan {
    /// The settings for a thread of this JVM: its task's job's, or `default`. When two jobs'
    /// tasks share the thread's name (same-named vertices), the more frequent sampling wins,
    /// so neither job is sampled less often than it asked.
    pub fn settings_for(
        &self,
        thread: &TaskIdentity,
        default: SamplingSettings,
    ) -> SamplingSettings {
        self.tasks
            .iter()
            .filter(|t| {
                t.identity.task == thread.task
                    && t.identity.subtask == thread.subtask
                    && t.identity.parallelism == thread.parallelism
                    && match (t.identity.attempt, thread.attempt) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
            .map(|t| t.settings)
            .min_by_key(|s| (s.interval_ms, s.delay_ms, std::cmp::Reverse(s.samples)))
            .unwrap_or(default)
    }
}

/// A JVM's plan, looked up by thread in constant time: [`JvmPlan::settings_for`] scans every
/// task, and a sampler asks it for every thread of a sample (at 20 samples a second of 300
/// threads against a plan of 300 tasks, that scan alone was millions of comparisons a second).
#[derive(Debug, Clone, Default)]
pub struct PlanIndex {
    /// Vertex name → (subtask, parallelism) → each planned attempt's settings.
    by_task: HashMap<String, HashMap<(u32, u32), Attempts>>,
}

/// Each planned attempt of one subtask, with its settings.
type Attempts = Vec<(Option<u32>, SamplingSettings)>;

impl PlanIndex {
    pub fn new(plan: &JvmPlan) -> PlanIndex {
        let mut by_task: HashMap<String, HashMap<(u32, u32), Attempts>> = HashMap::new();
        for t in &plan.tasks {
            by_task
                .entry(t.identity.task.clone())
                .or_default()
                .entry((t.identity.subtask, t.identity.parallelism))
                .or_default()
                .push((t.identity.attempt, t.settings));
        }
        PlanIndex { by_task }
    }

    /// What [`JvmPlan::settings_for`] answers, without the scan.
    pub fn settings_for(
        &self,
        thread: &TaskIdentity,
        default: SamplingSettings,
    ) -> SamplingSettings {
        self.by_task
            .get(thread.task.as_str())
            .and_then(|m| m.get(&(thread.subtask, thread.parallelism)))
            .into_iter()
            .flatten()
            .filter(|(attempt, _)| match (attempt, thread.attempt) {
                (Some(a), Some(b)) => *a == b,
                _ => true,
            })
            .map(|(_, s)| *s)
            .min_by_key(|s| (s.interval_ms, s.delay_ms, std::cmp::Reverse(s.samples)))
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(task: &str, subtask: u32, attempt: Option<u32>) -> TaskIdentity {
        TaskIdentity {
            task: task.into(),
            subtask,
            parallelism: 2,
            attempt,
        }
    }

    fn settings(interval_ms: u64) -> SamplingSettings {
        SamplingSettings {
            samples: 10,
            delay_ms: 50,
            interval_ms,
            stacks_every: 1,
        }
    }

    #[test]
    fn a_thread_takes_its_jobs_settings_or_the_default() {
        let plan = JvmPlan {
            pid: 1,
            taskmanager_id: Some("tm".into()),
            why: None,
            tasks: vec![TaskPlan {
                job_id: "a".into(),
                identity: ident("Map", 1, Some(0)),
                settings: settings(5_000),
            }],
        };
        let d = SamplingSettings::default();
        let index = PlanIndex::new(&plan);
        for (thread, expected) in [
            (ident("Map", 1, Some(0)), settings(5_000)),
            // Another attempt is another deployment: not this plan entry.
            (ident("Map", 1, Some(1)), d),
            (ident("Map", 0, Some(0)), d),
            (ident("Filter", 1, Some(0)), d),
            // 1.x thread names carry no attempt: the name decides.
            (ident("Map", 1, None), settings(5_000)),
        ] {
            assert_eq!(plan.settings_for(&thread, d), expected, "{thread:?}");
            assert_eq!(
                index.settings_for(&thread, d),
                expected,
                "index: {thread:?}"
            );
        }
    }

    #[test]
    fn same_named_tasks_of_two_jobs_get_the_more_frequent_settings() {
        let plan = JvmPlan {
            pid: 1,
            taskmanager_id: None,
            why: None,
            tasks: vec![
                TaskPlan {
                    job_id: "a".into(),
                    identity: ident("Map", 0, Some(0)),
                    settings: settings(60_000),
                },
                TaskPlan {
                    job_id: "b".into(),
                    identity: ident("Map", 0, Some(0)),
                    settings: settings(10_000),
                },
            ],
        };
        for found in [
            plan.settings_for(&ident("Map", 0, Some(0)), SamplingSettings::default()),
            PlanIndex::new(&plan)
                .settings_for(&ident("Map", 0, Some(0)), SamplingSettings::default()),
        ] {
            assert_eq!(found, settings(10_000));
        }
    }
}
