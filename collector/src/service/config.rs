//! The collector's configuration file (TOML). Every key is optional; `packaging/collector.toml`
//! documents them all. Flags of `serve` override it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Where the API listens. Loopback unless told otherwise.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub flink: FlinkConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlinkConfig {
    /// REST URLs of the Flink clusters to watch.
    pub urls: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Merged windows older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body accepted, as sent (compressed).
    pub max_body_bytes: usize,
    /// Largest body once gzip is undone.
    pub max_decoded_bytes: usize,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("/var/lib/bpmon-collector"),
            flink: FlinkConfig::default(),
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
        }
    }
}

impl Default for FlinkConfig {
    fn default() -> Self {
        FlinkConfig {
            urls: Vec::new(),
            poll_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let d = crate::server::IngestLimits::default();
        IngestConfig {
            max_body_bytes: d.max_body_bytes,
            max_decoded_bytes: d.max_decoded_bytes,
        }
    }
}

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<CollectorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_to_the_defaults_plus_its_flink_url() {
        let text = include_str!("../../../packaging/collector.toml");
        let c: CollectorConfig = toml::from_str(text).expect("packaging/collector.toml");
        let d = CollectorConfig::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.flink.poll_interval, d.flink.poll_interval);
        assert_eq!(c.flink.timeout, d.flink.timeout);
        assert_eq!(c.storage.retention, d.storage.retention);
        assert_eq!(c.flink.urls, vec!["http://localhost:8081".to_string()]);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let e = toml::from_str::<CollectorConfig>("listen = \"127.0.0.1:1\"\n[flink]\nurl = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field `url`"), "{e}");
    }
}
