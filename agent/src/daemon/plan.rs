//! The collector's plan as the agent applies it. Settings that break the one rule
//! ([`SamplingSettings::validate`]: a window longer than its interval, sampling more often than
//! once a second, …) are refused here, one by one, and logged: the configured default stands in
//! for them. The collector refuses the same settings before it stores them, so this only happens
//! with an older or foreign collector.

use bpmon_proto::{AgentPlan, SamplingSettings};

/// The plan as the agent applies it: a default that can be used (the configured one otherwise),
/// and only task entries whose settings can be used (the others fall back to the default).
pub fn sanitize_plan(mut plan: AgentPlan, configured: SamplingSettings) -> AgentPlan {
    if let Err(e) = plan.default.validate() {
        tracing::warn!(error = %e, "the collector's default settings cannot be used; keeping the configured ones");
        plan.default = configured;
    }
    for jvm in &mut plan.jvms {
        jvm.tasks.retain(|t| match t.settings.validate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job = %t.job_id, task = %t.identity.task, error = %e,
                    "the collector's settings for a task cannot be used; it gets the default");
                false
            }
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpmon_proto::{JvmPlan, TaskIdentity, TaskPlan};

    fn s(samples: u32, delay_ms: u64, interval_ms: u64) -> SamplingSettings {
        SamplingSettings {
            samples,
            delay_ms,
            interval_ms,
            stacks_every: 1,
        }
    }

    #[test]
    fn unusable_plan_settings_fall_back_to_the_default() {
        let configured = s(10, 100, 10_000);
        let task = |settings| TaskPlan {
            job_id: "j".into(),
            identity: TaskIdentity {
                task: "Map".into(),
                subtask: 0,
                parallelism: 1,
                attempt: Some(0),
            },
            settings,
        };
        let plan = AgentPlan {
            // A window longer than its interval.
            default: s(100, 50, 1_000),
            jvms: vec![JvmPlan {
                pid: 1,
                taskmanager_id: None,
                why: None,
                tasks: vec![
                    task(s(5, 10, 2_000)),
                    task(s(1, 0, 10)),
                    task(s(0, 10, 5_000)),
                ],
            }],
        };
        let p = sanitize_plan(plan, configured);
        assert_eq!(p.default, configured);
        assert_eq!(p.jvms[0].tasks.len(), 1);
        assert_eq!(p.jvms[0].tasks[0].settings, s(5, 10, 2_000));
    }
}
