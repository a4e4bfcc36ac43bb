//! What [`super::run`] needs: the daemon's configuration ([`DaemonConfig`], with the documented
//! defaults) and which TaskManager JVMs it samples ([`JvmSelect`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bpmon_proto::SamplingSettings;
use bpmon_stacks::classify::Classifier;

use crate::backends::attach::AttachOptions;
use crate::backends::jvmti::JvmtiOptions;
use crate::backends::BackendKind;
use crate::backoff::Backoff;
use crate::delivery::access::CollectorAccess;
use crate::delivery::spool::SpoolLimits;
use crate::discovery::{JvmProcess, ProcFs};
use crate::metrics::AgentMetrics;

/// Which TaskManager JVMs the daemon samples.
#[derive(Clone, Default)]
pub enum JvmSelect {
    /// Every TaskManager JVM on the host.
    #[default]
    All,
    /// Only TaskManagers with these host pids.
    Pids(Vec<u32>),
    /// Only TaskManagers the function accepts.
    Matching(Arc<dyn Fn(&JvmProcess) -> bool + Send + Sync>),
}

impl JvmSelect {
    pub fn accepts(&self, jvm: &JvmProcess) -> bool {
        match self {
            JvmSelect::All => true,
            JvmSelect::Pids(pids) => pids.contains(&jvm.pid),
            JvmSelect::Matching(f) => f(jvm),
        }
    }
}

impl std::fmt::Debug for JvmSelect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JvmSelect::All => write!(f, "All"),
            JvmSelect::Pids(p) => write!(f, "Pids({p:?})"),
            JvmSelect::Matching(_) => write!(f, "Matching(..)"),
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Base URL of the collector.
    pub collector_url: String,
    /// The token sent to the collector and the CA trusted for it.
    pub access: CollectorAccess,
    pub agent_id: String,
    /// Host name and addresses, sent with every batch and plan request.
    pub host_names: Vec<String>,
    pub spool_dir: PathBuf,
    pub spool_limits: SpoolLimits,
    pub discovery_interval: Duration,
    pub plan_refresh_interval: Duration,
    /// Time limit of one request to the collector.
    pub request_timeout: Duration,
    /// Settings until the collector's plan answers.
    pub default_settings: SamplingSettings,
    pub top_frames: usize,
    pub backend: BackendKind,
    pub attach: AttachOptions,
    /// The in-process backend's library and depth (`backend = jvmti`).
    pub jvmti: JvmtiOptions,
    pub classifier: Arc<Classifier>,
    pub proc: ProcFs,
    pub select: JvmSelect,
    /// Waits between shipping attempts while the collector is down.
    pub ship_backoff: Backoff,
    /// How long shutdown may take: ending windows, spooling them, shipping.
    pub shutdown_grace: Duration,
    /// What the daemon counts (`GET /metrics` serves it when a listener is configured).
    pub metrics: Arc<AgentMetrics>,
}

impl DaemonConfig {
    /// A configuration with the documented defaults (see `packaging/agent.toml`).
    pub fn new(collector_url: impl Into<String>, agent_id: impl Into<String>) -> DaemonConfig {
        DaemonConfig {
            collector_url: collector_url.into(),
            access: CollectorAccess::default(),
            agent_id: agent_id.into(),
            host_names: Vec::new(),
            spool_dir: PathBuf::from("/var/lib/bpmon-agent/spool"),
            spool_limits: SpoolLimits {
                max_batches: 10_000,
                max_bytes: 256 << 20,
            },
            discovery_interval: Duration::from_secs(10),
            plan_refresh_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            default_settings: SamplingSettings::default(),
            top_frames: 5,
            backend: BackendKind::Attach,
            attach: AttachOptions::default(),
            jvmti: JvmtiOptions::default(),
            classifier: Arc::new(Classifier::new()),
            proc: ProcFs::default(),
            select: JvmSelect::All,
            ship_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(5),
            metrics: Arc::new(AgentMetrics::new()),
        }
    }
}
