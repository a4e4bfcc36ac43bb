//! The answer to an agent's `POST /api/v1/plan`: for each of its JVMs, the subtasks Flink placed
//! there and their job's sampling settings. Pure.

use std::collections::BTreeMap;

use bpmon_proto::{AgentPlan, JvmPlan, PlanRequest, SamplingSettings, TaskIdentity, TaskPlan};

use crate::locate::{locate, JvmClues};
use crate::model::ClusterSnapshot;

/// Subtask states in which a task thread exists or is about to.
const LIVE_STATES: [&str; 4] = ["RUNNING", "DEPLOYING", "INITIALIZING", "CREATED"];

pub fn plan_for(
    request: &PlanRequest,
    clusters: &[&ClusterSnapshot],
    default: SamplingSettings,
    jobs: &BTreeMap<String, SamplingSettings>,
) -> AgentPlan {
    let jvms = request
        .jvms
        .iter()
        .map(|j| {
            let (cluster, tm) = match locate(&JvmClues::of_plan(j, &request.host_names), clusters) {
                Ok(l) => (clusters[l.cluster], l.taskmanager_id),
                Err(e) => {
                    return JvmPlan {
                        pid: j.pid,
                        taskmanager_id: None,
                        why: Some(e.why),
                        tasks: Vec::new(),
                    }
                }
            };
            let mut tasks = Vec::new();
            for job in &cluster.jobs {
                let settings = jobs.get(&job.job_id).copied().unwrap_or(default);
                for v in &job.vertices {
                    for s in v.subtasks.iter().filter(|s| {
                        s.taskmanager_id.as_deref() == Some(tm.as_str())
                            && LIVE_STATES.contains(&s.status.as_str())
                    }) {
                        tasks.push(TaskPlan {
                            job_id: job.job_id.clone(),
                            identity: TaskIdentity {
                                task: v.name.clone(),
                                subtask: s.subtask,
                                parallelism: v.parallelism,
                                attempt: Some(s.attempt),
                            },
                            settings,
                        });
                    }
                }
            }
            JvmPlan {
                pid: j.pid,
                taskmanager_id: Some(tm),
                why: None,
                tasks,
            }
        })
        .collect();
    AgentPlan { default, jvms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSnapshot, SubtaskSnapshot, TaskManagerRef, VertexSnapshot};
    use bpmon_proto::PlanJvm;

    #[test]
    fn a_jvm_gets_the_subtasks_placed_on_it_with_their_jobs_settings() {
        let subtask = |i: u32, tm: &str| SubtaskSnapshot {
            subtask: i,
            attempt: 2,
            status: "RUNNING".into(),
            taskmanager_id: Some(tm.into()),
            host: None,
            start_time_ms: None,
            metrics: Default::default(),
        };
        let cluster = ClusterSnapshot {
            flink_url: "http://f".into(),
            taskmanagers_unread: false,
            flink_version: None,
            fetched_at_ms: 0,
            jobs: vec![JobSnapshot {
                job_id: "j1".into(),
                name: "n".into(),
                state: "RUNNING".into(),
                start_time_ms: None,
                vertices: vec![VertexSnapshot {
                    vertex_id: "v".into(),
                    name: "Map".into(),
                    parallelism: 2,
                    subtasks: vec![subtask(0, "tm-a"), subtask(1, "tm-b")],
                }],
                edges: vec![],
            }],
            taskmanagers: vec![
                TaskManagerRef {
                    id: "tm-a".into(),
                    host: Some("h".into()),
                    rpc_port: Some(1),
                    data_port: None,
                    addresses: vec![],
                },
                TaskManagerRef {
                    id: "tm-b".into(),
                    host: Some("h".into()),
                    rpc_port: Some(2),
                    data_port: None,
                    addresses: vec![],
                },
            ],
            errors: vec![],
        };
        let fast = SamplingSettings {
            samples: 5,
            delay_ms: 10,
            interval_ms: 1_000,
            stacks_every: 1,
        };
        let jobs = BTreeMap::from([("j1".to_string(), fast)]);
        let req = PlanRequest {
            agent_id: "a".into(),
            host_names: vec!["h".into()],
            jvms: vec![
                PlanJvm {
                    pid: 10,
                    resource_id: None,
                    resource_id_source: None,
                    network: None,
                    listen_ports: vec![2, 99],
                },
                PlanJvm {
                    pid: 11,
                    resource_id: None,
                    resource_id_source: None,
                    network: None,
                    listen_ports: vec![3],
                },
            ],
        };
        let plan = plan_for(&req, &[&cluster], SamplingSettings::default(), &jobs);
        assert_eq!(plan.jvms[0].taskmanager_id.as_deref(), Some("tm-b"));
        assert_eq!(plan.jvms[0].tasks.len(), 1);
        let t = &plan.jvms[0].tasks[0];
        assert_eq!((t.identity.subtask, t.identity.attempt), (1, Some(2)));
        assert_eq!(t.settings, fast);
        assert!(plan.jvms[1].taskmanager_id.is_none());
        assert!(plan.jvms[1]
            .why
            .as_deref()
            .unwrap()
            .contains("no TaskManager"));
    }
}
