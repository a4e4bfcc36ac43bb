//! bpmon's agent: it finds Flink TaskManager JVMs on its host ([`discovery`]), takes their thread
//! dumps through HotSpot's attach protocol ([`attach`]) or the JDK's `jcmd` ([`jcmd`]), and turns
//! each run of dumps into per-task sample counts ([`sampler`], [`tally`]).
//!
//! Data flows one way: dump text → `bpmon_stacks` parse and classify → tally → report.

pub mod attach;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod hsperf;
pub mod jcmd;
pub mod render;
pub mod sampler;
pub mod shipper;
pub mod spool;
pub mod tally;
