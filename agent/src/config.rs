//! `agent.toml`: the agent's settings. Every key is optional; command-line flags override it.
//! `packaging/agent.toml` is the documented example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bpmon_proto::SamplingSettings;
use bpmon_stacks::classify::ClassifyConfig;
use serde::Deserialize;
use thiserror::Error;

use crate::attach::AttachOptions;
use crate::sampler::{BackendKind, SampleSettings};

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
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub attach: AttachConfig,
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
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            url: None,
            request_timeout: Duration::from_secs(10),
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
    /// nothing else. Errors when a window does not fit its interval.
    pub fn settings(&self) -> Result<SamplingSettings, String> {
        let s = SamplingSettings {
            samples: self.samples,
            delay_ms: self.delay.as_millis() as u64,
            interval_ms: self.interval.as_millis() as u64,
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
}

/// Durations written the human way (`50ms`, `10s`) in TOML.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
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
        assert_eq!(c.collector.request_timeout, Duration::from_secs(10));
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
                interval_ms: 5_000
            })
        );
        let c = AgentConfig::parse("[sampling]\ninterval = \"1s\"\n").unwrap();
        assert!(c.sampling.settings().unwrap_err().contains("interval"));
        assert!(AgentConfig::parse("[daemon]\nspool = \"/x\"\n").is_err());
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
