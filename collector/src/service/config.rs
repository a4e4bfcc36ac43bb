//! The collector's configuration file (TOML). Every key is optional; `packaging/collector.toml`
//! documents them all. Flags of `serve` override it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpmon_telemetry::check::{self, Finding, KeyPath, Problem};
use bpmon_telemetry::logging::{self, LogFormat};
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
    /// Log verbosity (tracing directives); `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    /// `auto` (journald under systemd, else human), `human`, `json` or `journald`.
    pub log_format: LogFormat,
    /// Where the API listens. Loopback unless told otherwise.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub flink: FlinkConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub http: HttpConfig,
    /// Bearer tokens the API accepts (one per line, optionally `name:token`); none: no
    /// authentication. Also `[auth] token_file`.
    pub token_file: Option<PathBuf>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
}

/// `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Per-subtask series (`bpmon_subtask_backpressure_*`); off for jobs with many subtasks.
    pub per_subtask: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { per_subtask: true }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The same as the top-level `token_file`.
    pub token_file: Option<PathBuf>,
}

/// HTTPS: both files, or neither (plain HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
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
    /// Windows shorter than a minute (continuous watching) are kept as they came for this
    /// long, then merged into one per subtask and minute; zero keeps them as they came.
    #[serde(with = "humantime_serde")]
    pub full_resolution: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body accepted, as sent (compressed).
    pub max_body_bytes: usize,
    /// Largest body once gzip is undone.
    pub max_decoded_bytes: usize,
}

/// The listener's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections open at once; more are closed on arrival (and counted).
    pub max_connections: usize,
    /// Time a client has to send a request's head; also how long an idle keep-alive connection
    /// stays open.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a request has, body and answer included; past it: 408 (agents retry).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = crate::listen::ConnectionLimits::default();
        HttpConfig {
            max_connections: d.max_connections,
            header_timeout: d.header_timeout,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> crate::listen::ConnectionLimits {
        crate::listen::ConnectionLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            log_level: None,
            log_format: LogFormat::Auto,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("/var/lib/bpmon-collector"),
            flink: FlinkConfig::default(),
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
            http: HttpConfig::default(),
            token_file: None,
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
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
            full_resolution: Duration::from_secs(6 * 3600),
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
    /// The token file, from `token_file` or `[auth] token_file` (an error when both name
    /// different files).
    pub fn token_file(&self) -> Result<Option<&Path>, String> {
        match (&self.token_file, &self.auth.token_file) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "token_file ({}) and [auth] token_file ({}) disagree; set one",
                a.display(),
                b.display()
            )),
            (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
            (None, None) => Ok(None),
        }
    }

    /// Every problem of a config file's text (`check-config`), each with its key and line.
    pub fn check(text: &str) -> Vec<Problem> {
        check::check::<CollectorConfig>(text, CollectorConfig::problems)
    }

    /// What is wrong with settings that parsed: values `serve` cannot use, files it cannot
    /// read.
    pub fn problems(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        self.logging_problems(&mut out);
        self.flink_problems(&mut out);
        self.storage_problems(&mut out);
        self.ingest_problems(&mut out);
        self.http_problems(&mut out);
        self.auth_problems(&mut out);
        self.tls_problems(&mut out);
        out
    }

    /// `log_level` is a directive tracing accepts.
    fn logging_problems(&self, out: &mut Vec<Finding>) {
        if let Some(level) = &self.log_level {
            if let Err(e) = logging::check_level(level) {
                out.push(Finding::new(KeyPath::new(&["log_level"]), e));
            }
        }
    }

    /// `[flink]`: each URL makes a client; polls are not too frequent; requests can time out.
    fn flink_problems(&self, out: &mut Vec<Finding>) {
        for (i, url) in self.flink.urls.iter().enumerate() {
            if let Err(e) = crate::flink_rest::FlinkRestClient::new(url, self.flink.timeout) {
                out.push(Finding::new(
                    KeyPath::new(&["flink", "urls"]).index(i),
                    e.to_string(),
                ));
            }
        }
        if self.flink.poll_interval < MIN_POLL_INTERVAL {
            out.push(Finding::new(
                KeyPath::new(&["flink", "poll_interval"]),
                format!(
                    "{} is too short; at least {}",
                    humantime::format_duration(self.flink.poll_interval),
                    humantime::format_duration(MIN_POLL_INTERVAL)
                ),
            ));
        }
        if self.flink.timeout.is_zero() {
            out.push(Finding::new(
                KeyPath::new(&["flink", "timeout"]),
                "must be above zero",
            ));
        }
    }

    /// `[storage]`: a zero retention would delete every window as it is stored.
    fn storage_problems(&self, out: &mut Vec<Finding>) {
        if self.storage.retention.is_zero() {
            out.push(Finding::new(
                KeyPath::new(&["storage", "retention"]),
                "must be above zero",
            ));
        }
    }

    /// `[ingest]`: a zero body limit would refuse every batch.
    fn ingest_problems(&self, out: &mut Vec<Finding>) {
        for (key, n) in [
            ("max_body_bytes", self.ingest.max_body_bytes),
            ("max_decoded_bytes", self.ingest.max_decoded_bytes),
        ] {
            if n == 0 {
                out.push(Finding::new(
                    KeyPath::new(&["ingest", key]),
                    "must be at least 1",
                ));
            }
        }
    }

    /// `[http]`: connections are allowed, and clients get at least 100ms to send a request.
    fn http_problems(&self, out: &mut Vec<Finding>) {
        if self.http.max_connections == 0 {
            out.push(Finding::new(
                KeyPath::new(&["http", "max_connections"]),
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("header_timeout", self.http.header_timeout),
            ("request_timeout", self.http.request_timeout),
        ] {
            if d < Duration::from_millis(100) {
                out.push(Finding::new(
                    KeyPath::new(&["http", key]),
                    format!(
                        "{} is too short; at least 100ms",
                        humantime::format_duration(d)
                    ),
                ));
            }
        }
    }

    /// The token file: the two keys agree, and the file reads as tokens. Reported at the key
    /// the user set (the top-level one when both are).
    fn auth_problems(&self, out: &mut Vec<Finding>) {
        let token_key = if self.token_file.is_some() {
            KeyPath::new(&["token_file"])
        } else {
            KeyPath::new(&["auth", "token_file"])
        };
        match self.token_file() {
            Err(e) => out.push(Finding::new(token_key, e)),
            Ok(Some(path)) => {
                if let Err(e) = crate::auth::Auth::from_file(path) {
                    out.push(Finding::new(token_key, e.to_string()));
                }
            }
            Ok(None) => {}
        }
    }

    /// `[tls]`: both files or neither, and together they make a server configuration.
    fn tls_problems(&self, out: &mut Vec<Finding>) {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::server_config(cert, key) {
                    out.push(Finding::new(
                        KeyPath::new(&["tls", "cert_file"]),
                        e.to_string(),
                    ));
                }
            }
            (Some(_), None) => out.push(Finding::new(
                KeyPath::new(&["tls", "cert_file"]),
                "needs key_file too",
            )),
            (None, Some(_)) => out.push(Finding::new(
                KeyPath::new(&["tls", "key_file"]),
                "needs cert_file too",
            )),
            (None, None) => {}
        }
    }

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

/// Shortest poll interval `serve` accepts.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Durations written the human way (`5s`, `7d`), for this file's `#[serde(with)]`s; an error
/// names the value.
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
    fn the_example_file_parses_to_the_defaults_plus_its_flink_url() {
        let text = include_str!("../../../packaging/collector.toml");
        let c: CollectorConfig = toml::from_str(text).expect("packaging/collector.toml");
        let d = CollectorConfig::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.flink.poll_interval, d.flink.poll_interval);
        assert_eq!(c.flink.timeout, d.flink.timeout);
        assert_eq!(c.storage.retention, d.storage.retention);
        assert_eq!(c.storage.full_resolution, d.storage.full_resolution);
        assert_eq!(c.flink.urls, vec!["http://localhost:8081".to_string()]);
        assert_eq!(c.token_file(), Ok(None));
        assert!(c.tls.cert_file.is_none() && c.tls.key_file.is_none());
    }

    #[test]
    fn security_keys_parse() {
        let c: CollectorConfig = toml::from_str(
            "token_file = \"/etc/bpmon/tokens\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.token_file(), Ok(Some(Path::new("/etc/bpmon/tokens"))));
        assert_eq!(c.tls.cert_file.as_deref(), Some(Path::new("/c.pem")));
        let c: CollectorConfig =
            toml::from_str("[auth]\ntoken_file = \"/etc/bpmon/tokens\"\n").unwrap();
        assert_eq!(c.token_file(), Ok(Some(Path::new("/etc/bpmon/tokens"))));
        let c: CollectorConfig =
            toml::from_str("token_file = \"/a\"\n[auth]\ntoken_file = \"/b\"\n").unwrap();
        assert!(c.token_file().unwrap_err().contains("disagree"));
    }

    #[test]
    fn the_example_file_passes_check_config() {
        let text = include_str!("../../../packaging/collector.toml");
        assert_eq!(CollectorConfig::check(text), vec![]);
        let c: CollectorConfig = toml::from_str(text).unwrap();
        assert_eq!(c.log_format, LogFormat::Auto);
        assert!(c.metrics.per_subtask);
    }

    #[test]
    fn logging_and_metrics_keys_parse() {
        let c: CollectorConfig = toml::from_str(
            "log_level = \"warn\"\nlog_format = \"journald\"\n[metrics]\nper_subtask = false\n",
        )
        .unwrap();
        assert_eq!(c.log_level.as_deref(), Some("warn"));
        assert_eq!(c.log_format, LogFormat::Journald);
        assert!(!c.metrics.per_subtask);
        assert!(c.problems().is_empty());
    }

    #[test]
    fn check_finds_every_problem_with_its_line() {
        let p = CollectorConfig::check(
            "log_level = \"noisy\"\n[flink]\nurls = [\"http://a:8081\", \"not a url\"]\n\
             poll_interval = \"1ms\"\n[ingest]\nmax_body_bytes = -1\n",
        );
        let got: Vec<String> = p.iter().map(|p| p.render("c.toml")).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].starts_with("c.toml:1: log_level: invalid log level"),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("c.toml:3: [flink] urls[1]: "),
            "{got:#?}"
        );
        assert_eq!(
            got[2],
            "c.toml:4: [flink] poll_interval: 1ms is too short; at least 100ms"
        );
        assert!(
            got[3].starts_with("c.toml:6: [ingest] max_body_bytes: invalid value: integer `-1`"),
            "{got:#?}"
        );
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
