//! bpmon's agent: it runs on every Flink TaskManager host, finds the TaskManager JVMs, samples
//! their task threads, classifies each sample as blocked (hard back-pressure), waiting or busy,
//! and ships the counts to bpmon-collector. Data flows one way:
//!
//! ```text
//! discovery ─▶ backend (dump) ─▶ sampling (classify, tally, window) ─▶ delivery (spool, ship)
//! ```
//!
//! The modules, grouped by concern:
//!
//! - [`discovery`] finds the TaskManager JVMs on this host by scanning `/proc`, and describes
//!   each from the outside: its users, versions and resource id, where it lives on the network
//!   (read inside its own namespaces, [`discovery::whereabouts`]), its HotSpot performance data
//!   ([`discovery::hsperf`]), and paths inside its root resolved safely
//!   ([`discovery::inroot`]).
//!
//! - [`backends`] take one JVM's samples. Three ways, one switch ([`backends::Backend`]):
//!   HotSpot's attach protocol spoken by the agent itself ([`backends::attach`], one thread
//!   dump per sample), the JDK's `jcmd` as a child process ([`backends::jcmd`], the slow
//!   fallback), and the in-process JVMTI sampler ([`backends::jvmti`]): bpmon's library loaded
//!   into the TaskManager, which reads task threads' stacks one thread at a time, with no global
//!   pause, and knows each task's exact job and attempt. Every backend's sample becomes a
//!   [`backends::ClassifiedDump`].
//!
//! - [`resources`] measures what a JVM spent over a window, the evidence for a bottleneck's
//!   cause: its threads' CPU ([`resources::ThreadCpuReader`]), its process CPU and GC pauses,
//!   its cgroup's quota and throttling, and the host's busy share ([`resources::ResourceProbe`]).
//!
//! - [`sampling`] turns samples into reports: a [`sampling::Window`] of N samples D apart with
//!   its per-task tally ([`sampling::tally`]) and its cost, and the daemon's timetable of
//!   windows per settings group ([`sampling::schedule`]).
//!
//! - [`delivery`] gets reports to the collector without losing one: the on-disk
//!   [`delivery::spool`] with its persisted sequence numbers ([`delivery::seq`]), the
//!   [`delivery::shipper`] that sends it with backoff, the one client for every request the
//!   agent makes to the collector ([`delivery::collector`]: report batches, the sampling plan)
//!   and the credentials they carry ([`delivery::access`]).
//!
//! - [`daemon`] is `bpmon-agent run`: the wiring and shutdown of a supervisor (discovery, the
//!   collector's plan, one worker per JVM), the workers (one JVM's windows each), the batcher
//!   (finished reports into spooled batches) and the shipper.
//!
//! Around them: [`config`] (`agent.toml`), [`metrics`] (what `GET /metrics` serves),
//! [`render`] (the CLI's tables), and [`backoff`] (waits that double after each failure).
//! Wall-clock milliseconds come from `bpmon_proto::time`, HTTP client setup and error wording
//! from `bpmon-http`, both shared with the collector.

pub mod backends;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod discovery;
pub mod metrics;
pub mod render;
pub mod resources;
pub mod sampling;
