//! Types shared by `bpmon-agent` and `bpmon-collector`, pure data and pure functions only (no
//! I/O but reading the wall clock in [`time`], and no dependency on any agent crate):
//! - the back-pressure [`Level`] and the [`SampleClass`] of one stack sample;
//! - the evidence a bottleneck's cause is named from ([`evidence`]);
//! - the identity a Flink task thread carries in its name ([`identity`]);
//! - the JSON report the agent emits ([`report`]) and what agents and the collector exchange
//!   ([`ingest`], [`plan`], [`token`]);
//! - how a job is sampled, and the one rule for it ([`settings`]);
//! - where a TaskManager JVM lives on the network ([`whereabouts`]);
//! - what the agent and the in-process sampler inside a TaskManager exchange ([`inprocess`]),
//!   and Flink's own per-task timers the sampler reads there ([`timers`]).

pub mod class;
pub mod evidence;
pub mod identity;
pub mod ingest;
pub mod inprocess;
pub mod level;
pub mod plan;
pub mod report;
pub mod settings;
pub mod time;
pub mod timers;
pub mod token;
pub mod whereabouts;

pub use class::SampleClass;
pub use evidence::{Activity, ActivityCounts, CgroupCpu, JvmResources, LockCount, ThreadCpu};
pub use identity::{parse_task_thread_name, TaskIdentity, ThreadRole};
pub use ingest::{BatchProblem, ReportBatch, SCHEMA_VERSION};
pub use level::Level;
pub use plan::{AgentPlan, JvmPlan, PlanIndex, PlanJvm, PlanRequest, TaskPlan};
pub use report::{
    ExactTask, FrameCount, JvmInfo, SampleCost, SampleReport, StackCount, TaskSamples, OTHER_STACKS,
};
pub use settings::{SamplingSettings, Scope, SettingsProblem};
pub use timers::{
    timer_class, RunningTimer, TimerCounts, TimerMethod, TimerReading, TimerTotals, TimerWindow,
};
pub use whereabouts::{JvmNetwork, ResourceIdSource};
