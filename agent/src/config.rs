//! `agent.toml`: the agent's settings. Every key is optional; command-line flags override it.
//! `packaging/agent.toml` is the documented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpmon_proto::{SamplingSettings, SettingsProblem};
use bpmon_stacks::classify::ClassifyConfig;
use bpmon_telemetry::check::{self, Finding, KeyPath, Problem};
use bpmon_telemetry::logging::{self, LogFormat};
use serde::Deserialize;
use thiserror::Error;

use crate::backends::attach::AttachOptions;
use crate::backends::jvmti::JvmtiOptions;
use crate::backends::BackendKind;
use crate::sampling::SampleSettings;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Log verbosity (tracing directives); `RUST_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// `auto` (journald under systemd, else human), `human`, `json` or `journald`.
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub attach: AttachConfig,
    /// The in-process backend (`backend = "jvmti"`).
    #[serde(default)]
    pub jvmti: JvmtiConfig,
    /// Extra classification rules, tried before the built-in ones.
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// Where `run` sends its reports.
    #[serde(default)]
    pub collector: CollectorConfig,
    /// How `run` finds JVMs and keeps its spool.
    #[serde(default)]
    pub daemon: DaemonSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Base URL of the collector, e.g. `http://collector:7070` (`run` needs it).
    pub url: Option<String>,
    /// Time limit of one request to the collector (a report batch, the plan).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// File holding the bearer token sent to the collector (not world-readable).
    pub token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for an `https://` collector, besides the public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            url: None,
            request_timeout: Duration::from_secs(10),
            token_file: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// The agent's id at the collector; the host name when unset.
    pub agent_id: Option<String>,
    /// Where report batches wait until the collector has them.
    pub spool_dir: PathBuf,
    /// Most batches the spool keeps; past it, the oldest are dropped (and counted).
    pub spool_max_batches: usize,
    /// Most bytes the spool keeps (compressed batches).
    pub spool_max_bytes: u64,
    /// How often `/proc` is scanned for TaskManager JVMs.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// How often the per-job sampling plan is fetched from the collector.
    #[serde(with = "humantime_serde")]
    pub plan_refresh_interval: Duration,
    /// Where `GET /metrics` (Prometheus) listens; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether the head of a TaskManager's own log (`-Dlog.file`) is read for the resource id
    /// Flink generated: the surest way to tell which TaskManager a JVM is when no
    /// `taskmanager.resource-id` is set. Off: matched by addresses and ports alone.
    pub read_taskmanager_logs: bool,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            agent_id: None,
            spool_dir: PathBuf::from("/var/lib/bpmon-agent/spool"),
            spool_max_batches: 10_000,
            spool_max_bytes: 256 << 20,
            discovery_interval: Duration::from_secs(10),
            plan_refresh_interval: Duration::from_secs(10),
            metrics_listen: None,
            read_taskmanager_logs: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Samples per run (Flink's monitor: 100).
    pub samples: u32,
    /// Time between samples (Flink's monitor: 50 ms).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// `run`: time from one window's start to the next, until the collector's plan says
    /// otherwise.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub backend: BackendKind,
    /// Busy frames reported per task.
    pub top_frames: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        let d = SampleSettings::default();
        SamplingConfig {
            samples: d.samples,
            delay: d.delay,
            interval: Duration::from_millis(SamplingSettings::default().interval_ms),
            backend: BackendKind::Attach,
            top_frames: d.top_frames,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachConfig {
    #[serde(with = "humantime_serde")]
    pub listener_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
}

impl Default for AttachConfig {
    fn default() -> Self {
        let d = AttachOptions::default();
        AttachConfig {
            listener_timeout: d.listener_timeout,
            io_timeout: d.io_timeout,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JvmtiConfig {
    /// The library on this host; default: next to the binary, else the packaged one.
    pub library: Option<PathBuf>,
    /// Frames read per thread.
    pub max_depth: u32,
}

impl Default for JvmtiConfig {
    fn default() -> Self {
        JvmtiConfig {
            library: None,
            max_depth: JvmtiOptions::default().max_depth,
        }
    }
}

impl JvmtiConfig {
    /// The options of the in-process backend, with the attach section's I/O timeout.
    pub fn options(&self, attach: &AttachConfig) -> JvmtiOptions {
        JvmtiOptions {
            library: self
                .library
                .clone()
                .unwrap_or_else(JvmtiOptions::default_library),
            io_timeout: attach.io_timeout,
            max_depth: self
                .max_depth
                .clamp(1, bpmon_proto::inprocess::MAX_STACK_DEPTH),
        }
    }
}

impl From<&AttachConfig> for AttachOptions {
    fn from(c: &AttachConfig) -> Self {
        AttachOptions {
            listener_timeout: c.listener_timeout,
            io_timeout: c.io_timeout,
        }
    }
}

impl SamplingConfig {
    /// The default sampling settings `run` uses before (and where) the collector's plan says
    /// nothing else. Errors as [`SamplingSettings::validate`] does (the rule the collector
    /// applies too).
    pub fn settings(&self) -> Result<SamplingSettings, SettingsProblem> {
        let s = SamplingSettings {
            samples: self.samples,
            delay_ms: self.delay.as_millis() as u64,
            interval_ms: self.interval.as_millis() as u64,
            stacks_every: 1,
        };
        s.validate().map(|_| s)
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AgentConfig::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<AgentConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every problem of a config file's text (`check-config`), each with its key and line.
    pub fn check(text: &str) -> Vec<Problem> {
        check::check::<AgentConfig>(text, AgentConfig::problems)
    }

    /// What is wrong with settings that parsed: values no run can use.
    pub fn problems(&self) -> Vec<Finding> {
        let mut window_problem = None;
        let mut out = Vec::new();
        let mut bad =
            |keys: &[&str], message: String| out.push(Finding::new(KeyPath::new(keys), message));
        if let Some(level) = &self.log_level {
            if let Err(e) = logging::check_level(level) {
                bad(&["log_level"], e);
            }
        }
        if let Err(e) = self.sampling.settings() {
            let key = match e {
                SettingsProblem::NoSamples | SettingsProblem::TooManySamples(_) => "samples",
                SettingsProblem::TooLarge {
                    what: "delay_ms", ..
                } => "delay",
                _ => "interval",
            };
            // Reported by itself: the closure above only takes one key.
            let sampling: &[&[&str]] = &[
                &["sampling", "samples"],
                &["sampling", "delay"],
                &["sampling", "interval"],
            ];
            window_problem =
                Some(Finding::new(KeyPath::new(&["sampling", key]), e.to_string()).using(sampling));
        }
        if !self.sampling.delay.subsec_nanos().is_multiple_of(1_000_000) {
            bad(
                &["sampling", "delay"],
                "must be a whole number of milliseconds".into(),
            );
        }
        for (key, d) in [
            ("listener_timeout", self.attach.listener_timeout),
            ("io_timeout", self.attach.io_timeout),
        ] {
            if d.is_zero() {
                bad(&["attach", key], "must be above zero".into());
            }
        }
        out.extend(self.collector_problems());
        out.extend(self.daemon_problems());
        out.extend(window_problem);
        out
    }

    /// The `[collector]` section's problems.
    fn collector_problems(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut bad =
            |keys: &[&str], message: String| out.push(Finding::new(KeyPath::new(keys), message));
        if let Some(url) = &self.collector.url {
            if let Err(e) = check_http_url(url) {
                bad(&["collector", "url"], e);
            }
        }
        if let Some(path) = &self.collector.token_file {
            if let Err(e) = crate::delivery::access::Token::from_file(path) {
                bad(&["collector", "token_file"], e.to_string());
            }
        }
        if let Some(path) = &self.collector.ca_file {
            let access = crate::delivery::access::CollectorAccess {
                token: None,
                ca_file: Some(path.clone()),
            };
            if let Err(e) = crate::delivery::access::client(Duration::from_secs(1), &access) {
                bad(&["collector", "ca_file"], e.to_string());
            }
        }
        if self.collector.request_timeout.is_zero() {
            bad(
                &["collector", "request_timeout"],
                "must be above zero".into(),
            );
        }
        out
    }

    /// The `[daemon]` section's problems.
    fn daemon_problems(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut bad =
            |keys: &[&str], message: String| out.push(Finding::new(KeyPath::new(keys), message));
        if self
            .daemon
            .agent_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            bad(&["daemon", "agent_id"], "must not be empty".into());
        }
        for (key, d) in [
            ("discovery_interval", self.daemon.discovery_interval),
            ("plan_refresh_interval", self.daemon.plan_refresh_interval),
        ] {
            if d.is_zero() {
                bad(&["daemon", key], "must be above zero".into());
            }
        }
        if self.daemon.spool_max_batches == 0 {
            bad(
                &["daemon", "spool_max_batches"],
                "must be at least 1".into(),
            );
        }
        if self.daemon.spool_max_bytes == 0 {
            bad(&["daemon", "spool_max_bytes"], "must be at least 1".into());
        }
        out
    }
}

/// Why `url` cannot be a collector's base URL, if it cannot.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "invalid URL {url:?}: the scheme must be http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL {url:?}: no host"));
    }
    Ok(())
}

/// Durations written the human way (`50ms`, `10s`) in TOML.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../packaging/agent.toml");
        let c = AgentConfig::parse(text).unwrap();
        assert_eq!(c.sampling.samples, 100);
        assert_eq!(c.sampling.delay, Duration::from_millis(50));
        assert_eq!(c.sampling.backend, BackendKind::Attach);
        assert_eq!(c.sampling.interval, Duration::from_secs(60));
        assert_eq!(c.sampling.settings(), Ok(SamplingSettings::default()));
        // Every documented key is there, with the default value.
        let d = DaemonSection::default();
        assert_eq!(c.daemon.spool_dir, d.spool_dir);
        assert_eq!(c.daemon.spool_max_batches, d.spool_max_batches);
        assert_eq!(c.daemon.spool_max_bytes, d.spool_max_bytes);
        assert_eq!(c.daemon.discovery_interval, Duration::from_secs(10));
        assert_eq!(c.daemon.plan_refresh_interval, Duration::from_secs(10));
        assert!(c.daemon.read_taskmanager_logs);
        assert_eq!(c.collector.request_timeout, Duration::from_secs(10));
        assert_eq!(c.collector.token_file, None);
        assert_eq!(c.collector.ca_file, None);
    }

    #[test]
    fn collector_security_keys_parse() {
        let c = AgentConfig::parse(
            "[collector]\nurl = \"https://c:7070\"\ntoken_file = \"/etc/bpmon/agent.token\"\n\
             ca_file = \"/etc/bpmon/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            c.collector.token_file.as_deref(),
            Some(Path::new("/etc/bpmon/agent.token"))
        );
        assert_eq!(
            c.collector.ca_file.as_deref(),
            Some(Path::new("/etc/bpmon/ca.pem"))
        );
    }

    #[test]
    fn daemon_keys_parse_and_a_window_longer_than_its_interval_is_an_error() {
        let c = AgentConfig::parse(
            "[collector]\nurl = \"http://c:7070\"\nrequest_timeout = \"3s\"\n\
             [daemon]\nagent_id = \"tm-a\"\nspool_dir = \"/tmp/s\"\ndiscovery_interval = \"1s\"\n\
             [sampling]\nsamples = 10\ndelay = \"100ms\"\ninterval = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.collector.url.as_deref(), Some("http://c:7070"));
        assert_eq!(c.collector.request_timeout, Duration::from_secs(3));
        assert_eq!(c.daemon.agent_id.as_deref(), Some("tm-a"));
        assert_eq!(c.daemon.discovery_interval, Duration::from_secs(1));
        assert_eq!(
            c.sampling.settings(),
            Ok(SamplingSettings {
                samples: 10,
                delay_ms: 100,
                interval_ms: 5_000,
                stacks_every: 1
            })
        );
        let c = AgentConfig::parse("[sampling]\ninterval = \"1s\"\n").unwrap();
        assert!(c
            .sampling
            .settings()
            .unwrap_err()
            .to_string()
            .contains("interval"));
        assert!(AgentConfig::parse("[daemon]\nspool = \"/x\"\n").is_err());
    }

    #[test]
    fn the_example_config_passes_check_config() {
        let text = include_str!("../../packaging/agent.toml");
        assert_eq!(AgentConfig::check(text), vec![]);
        let c = AgentConfig::parse(text).unwrap();
        assert_eq!(c.log_format, LogFormat::Auto);
        assert_eq!(c.log_level, None);
        assert_eq!(c.daemon.metrics_listen, None);
    }

    #[test]
    fn logging_and_metrics_keys_parse() {
        let c = AgentConfig::parse(
            "log_level = \"debug\"\nlog_format = \"json\"\n\
             [daemon]\nmetrics_listen = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.daemon.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(c.problems().is_empty());
    }

    #[test]
    fn check_finds_every_problem_with_its_line() {
        let p = AgentConfig::check(
            "[sampling]\nsamples = 100\ndelay = \"5 parsecs\"\n\
             [collector]\nurl = \"http://\"\n\
             [daemon]\nspool_max_batches = 0\nagent_id = \" \"\n",
        );
        let got: Vec<String> = p.iter().map(|p| p.render("agent.toml")).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].starts_with("agent.toml:3: [sampling] delay: invalid duration \"5 parsecs\""),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("agent.toml:5: [collector] url: invalid URL \"http://\""),
            "{got:#?}"
        );
        assert_eq!(
            got[2],
            "agent.toml:7: [daemon] spool_max_batches: must be at least 1"
        );
        assert_eq!(got[3], "agent.toml:8: [daemon] agent_id: must not be empty");
    }

    #[test]
    fn empty_config_is_flinks_defaults() {
        let c = AgentConfig::parse("").unwrap();
        assert_eq!(c.sampling.samples, 100);
        assert_eq!(c.attach.io_timeout, Duration::from_secs(10));
        assert!(c.classify.rules.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let e = AgentConfig::parse("[sampling]\nsamplez = 3\n").unwrap_err();
        assert!(e.to_string().contains("samplez"), "{e}");
        let e = AgentConfig::parse("[sampling]\ndelay = \"fast\"\n").unwrap_err();
        assert!(
            e.to_string().contains("delay") || e.to_string().contains("fast"),
            "{e}"
        );
    }

    #[test]
    fn user_rules_parse_and_bad_patterns_are_errors() {
        let c = AgentConfig::parse(
            "[[classify.rules]]\nclass = \"waiting\"\nat = \"com.example.Client.await\"\n",
        )
        .unwrap();
        assert_eq!(c.classify.rules.len(), 1);
        assert!(
            AgentConfig::parse("[[classify.rules]]\nclass = \"waiting\"\nat = \"*\"\n").is_err()
        );
    }
}
