//! `agent.toml`: the agent's settings. Every key is optional; command-line flags override it.
//! `packaging/agent.toml` is the documented example.

use std::path::Path;
use std::time::Duration;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Samples per run (Flink's monitor: 100).
    pub samples: u32,
    /// Time between samples (Flink's monitor: 50 ms).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
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
