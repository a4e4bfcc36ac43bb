//! A client of the collector's query API (see [`crate::api`]), as the CLI uses it.
//!
//! Every failure says what was asked of whom and what went wrong: the collector could not be
//! reached, did not answer in time, answered an error (with its `{"error": …}` message), or
//! answered something that is not the expected JSON.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    AgentsView, ConfigUpdate, ConfigView, EpisodesView, ErrorBody, HistoryView, JobsView,
    StatusView,
};
use bpmon_http::{error_chain, root_cause, tls_failure};
use bpmon_proto::Scope;

/// What stays literal in a path segment: RFC 3986's unreserved characters. Everything else
/// (spaces, `->`, `:`, `/`, `*`, non-ASCII…) is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How much of a non-JSON error body is quoted in a message.
const QUOTED_BODY_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid collector URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("collector at {url} is not reachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot set up the connection to {url}: {reason}")]
    Setup { url: String, reason: String },
    #[error("TLS with the collector at {url} failed: {reason}{}", if *.no_ca { " (a private CA? pass --ca-file or set BPMON_CA_FILE)" } else { "" })]
    Tls {
        url: String,
        reason: String,
        /// No CA file was given: the likely fix.
        no_ca: bool,
    },
    #[error("{method} {path}: the collector refused the request (401): {message}; {}", if *.sent_token { "the token in --token-file is not one it accepts" } else { "it requires a token: pass --token-file FILE or set BPMON_TOKEN_FILE" })]
    Unauthorized {
        method: Method,
        path: String,
        message: String,
        sent_token: bool,
    },
    #[error(
        "collector at {url} did not answer {method} {path} within {}",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        url: String,
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("{method} {path} failed with {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{method} {path}: the collector's answer is not a valid {what}: {reason}")]
    BadJson {
        method: Method,
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error("refusing the new settings for {job}: {reason}; nothing was changed")]
    InvalidSettings { job: String, reason: String },
    #[error("{method} {path}: {reason}")]
    Other {
        method: Method,
        path: String,
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status the collector answered, for an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }
}

/// What the client proves and trusts: the bearer token it sends, and a CA to trust besides the
/// public roots (for an `https://` collector with a private CA).
#[derive(Clone, Default)]
pub struct ClientSecurity {
    pub token: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

/// Talks to one collector.
#[derive(Debug, Clone)]
pub struct CollectorClient {
    base: String,
    timeout: Duration,
    http: reqwest::Client,
    sends_token: bool,
    has_ca: bool,
}

impl CollectorClient {
    /// `base_url` is the collector's root (`http://host:7070`, optionally with a path prefix);
    /// `timeout` bounds each request, connecting included.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_security(base_url, timeout, &ClientSecurity::default())
    }

    /// [`CollectorClient::new`], sending `security.token` as a bearer token on every request and
    /// trusting `security.ca_file`'s certificates.
    pub fn with_security(
        base_url: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let url = reqwest::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "it must start with http:// or https://, e.g. http://127.0.0.1:7070",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it may not have a query or fragment"));
        }
        if timeout.is_zero() {
            return Err(bad("the timeout must be more than zero"));
        }
        let setup = |reason: String| ClientError::Setup {
            url: base_url.to_string(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("bpmon-collector/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &security.token {
            builder = builder.default_headers(
                bpmon_http::bearer_headers(token).map_err(|e| setup(e.to_string()))?,
            );
        }
        if let Some(ca) = &security.ca_file {
            for cert in bpmon_http::ca_certificates(ca).map_err(|e| setup(e.to_string()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| bad(&error_chain(&e)))?;
        Ok(CollectorClient {
            base: base_url.trim_end_matches('/').to_string(),
            timeout,
            http,
            sends_token: security.token.is_some(),
            has_ca: security.ca_file.is_some(),
        })
    }

    /// The collector's root URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/jobs`.
    pub async fn jobs(&self) -> Result<JobsView, ClientError> {
        self.call(
            Method::GET,
            "/api/v1/jobs".into(),
            &[],
            None::<&()>,
            "jobs view",
        )
        .await
    }

    /// `GET /api/v1/jobs/{job}/status`; `job` is an id or a name.
    pub async fn status(&self, job: &str) -> Result<StatusView, ClientError> {
        let path = format!("/api/v1/jobs/{}/status", segment(job));
        self.call(Method::GET, path, &[], None::<&()>, "status view")
            .await
    }

    /// `GET /api/v1/jobs/{job}/history`: windows since `since_ms` (ms since the Unix epoch),
    /// of one vertex (id or name) or of all.
    pub async fn history(
        &self,
        job: &str,
        vertex: Option<&str>,
        since_ms: u64,
    ) -> Result<HistoryView, ClientError> {
        let path = format!("/api/v1/jobs/{}/history", segment(job));
        let mut query = vec![("since_ms", since_ms.to_string())];
        if let Some(v) = vertex {
            query.push(("vertex", v.to_string()));
        }
        self.call(Method::GET, path, &query, None::<&()>, "history view")
            .await
    }

    /// `GET /api/v1/jobs/{job}/episodes`: episodes under way at or after `since_ms`.
    pub async fn episodes(&self, job: &str, since_ms: u64) -> Result<EpisodesView, ClientError> {
        let path = format!("/api/v1/jobs/{}/episodes", segment(job));
        let query = vec![("since_ms", since_ms.to_string())];
        self.call(Method::GET, path, &query, None::<&()>, "episodes view")
            .await
    }

    /// `GET /api/v1/config/{job}`: the default's, or a job's (by id or name).
    pub async fn config_get(&self, job: &Scope) -> Result<ConfigView, ClientError> {
        self.call(
            Method::GET,
            config_path(job),
            &[],
            None::<&()>,
            "config view",
        )
        .await
    }

    /// `PUT /api/v1/config/{job}`.
    pub async fn config_set(
        &self,
        job: &Scope,
        update: &ConfigUpdate,
    ) -> Result<ConfigView, ClientError> {
        self.call(
            Method::PUT,
            config_path(job),
            &[],
            Some(update),
            "config view",
        )
        .await
    }

    /// Reads the job's settings, applies `update` and checks the result with
    /// [`bpmon_proto::SamplingSettings::validate`] before `PUT`ting it: a combination that
    /// cannot work is refused here, and nothing is sent.
    pub async fn config_set_checked(
        &self,
        job: &Scope,
        update: &ConfigUpdate,
    ) -> Result<ConfigView, ClientError> {
        let current = self.config_get(job).await?;
        update
            .apply(current.settings)
            .validate()
            .map_err(|reason| ClientError::InvalidSettings {
                job: match (&current.job_name, &current.scope) {
                    (_, Scope::Default) => "the default".to_string(),
                    (Some(name), Scope::Job(id)) => format!("job {name:?} ({id})"),
                    (None, Scope::Job(id)) => format!("job {id}"),
                },
                reason: reason.to_string(),
            })?;
        self.config_set(job, update).await
    }

    /// `DELETE /api/v1/config/{job}`: the job falls back to the default.
    pub async fn config_reset(&self, job: &Scope) -> Result<ConfigView, ClientError> {
        self.call(
            Method::DELETE,
            config_path(job),
            &[],
            None::<&()>,
            "config view",
        )
        .await
    }

    /// `GET /api/v1/agents`.
    pub async fn agents(&self) -> Result<AgentsView, ClientError> {
        self.call(
            Method::GET,
            "/api/v1/agents".into(),
            &[],
            None::<&()>,
            "agents view",
        )
        .await
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: String,
        query: &[(&str, String)],
        body: Option<&B>,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        tracing::debug!(%method, %path, ?query, "collector request");
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&method, &path, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&method, &path, &e))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                method,
                path,
                message: error_message(&bytes),
                sent_token: self.sends_token,
            });
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                method,
                path,
                status,
                message: error_message(&bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadJson {
            method,
            path,
            what,
            reason: e.to_string(),
        })
    }

    fn transport_error(&self, method: &Method, path: &str, e: &reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout {
                url: self.base.clone(),
                method: method.clone(),
                path: path.to_string(),
                timeout: self.timeout,
            }
        } else if let Some(reason) = tls_failure(e) {
            ClientError::Tls {
                url: self.base.clone(),
                reason,
                no_ca: !self.has_ca,
            }
        } else if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
                reason: root_cause(e),
            }
        } else {
            ClientError::Other {
                method: method.clone(),
                path: path.to_string(),
                reason: error_chain(e),
            }
        }
    }
}

/// One path segment, percent-encoded.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn config_path(job: &Scope) -> String {
    format!("/api/v1/config/{}", segment(job.as_str()))
}

/// The server's `{"error": …}` message, or else what the body says, or else that it is empty.
fn error_message(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no message)".into();
    }
    let mut quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    if text.chars().count() > QUOTED_BODY_CHARS {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode_everything_but_unreserved() {
        assert_eq!(
            segment("Source: Kafka -> Map"),
            "Source%3A%20Kafka%20-%3E%20Map"
        );
        assert_eq!(segment("*"), "%2A");
        assert_eq!(segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(segment("abc-1.2_x~"), "abc-1.2_x~");
        assert_eq!(segment("zählen"), "z%C3%A4hlen");
    }

    #[test]
    fn error_messages_prefer_the_error_body() {
        assert_eq!(
            error_message(br#"{"error":"no job named x"}"#),
            "no job named x"
        );
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(no message)");
        let long = "x".repeat(500);
        assert_eq!(
            error_message(long.as_bytes()).chars().count(),
            QUOTED_BODY_CHARS + 1
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        let t = Duration::from_secs(1);
        assert!(CollectorClient::new("127.0.0.1:7070", t).is_err());
        assert!(CollectorClient::new("ftp://host", t).is_err());
        assert!(CollectorClient::new("http://host/?a=b", t).is_err());
        assert!(CollectorClient::new("http://host", Duration::ZERO).is_err());
        let c = CollectorClient::new("http://host:7070/prefix/", t).unwrap();
        assert_eq!(c.base_url(), "http://host:7070/prefix");
    }
}
