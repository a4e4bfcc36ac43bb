//! bpmon's agent: it finds Flink TaskManager JVMs on its host ([`discovery`]) and describes where
//! each lives on the network from inside its namespaces ([`whereabouts`]), samples their task
//! threads through HotSpot's attach protocol ([`attach`]), the JDK's `jcmd` ([`jcmd`]) or the
//! in-process JVMTI sampler ([`jvmti`]), and turns each run of samples into per-task counts
//! ([`sampler`], [`tally`]).
//!
//! Data flows one way: dump text → `bpmon_stacks` parse and classify → tally → report.
//!
//! `bpmon-agent run` is the [`daemon`]: discovery, per-job windows ([`schedule`]), the spool
//! ([`spool`], [`seq`]) and the [`shipper`].

pub mod access;
pub mod attach;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod discovery;
pub mod host;
pub mod hsperf;
pub mod inroot;
pub mod jcmd;
pub mod jvmti;
pub mod metrics;
pub mod render;
pub mod sampler;
pub mod schedule;
pub mod seq;
pub mod shipper;
pub mod spool;
pub mod tally;
pub mod whereabouts;
