//! Why a request to Flink failed: each failure kind with the URL, in the words an operator
//! reads in `status` (`GET <url>: <what happened>`), and how a reqwest error is told apart.

use std::time::Duration;

use reqwest::StatusCode;

use bpmon_http::{causes, root_cause};

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid Flink REST URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Why one REST request failed. The `Display` text is what goes into
/// [`ClusterSnapshot::errors`](crate::model::ClusterSnapshot::errors): `GET <url>: <what happened>`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: connection refused")]
    ConnectionRefused { url: String },
    #[error("GET {url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("GET {url}: timed out after {}", humantime::format_duration(*after))]
    Timeout { url: String, after: Duration },
    /// `status` displays as e.g. `404 Not Found`; `message` is Flink's `errors` list or the
    /// start of the body.
    #[error("GET {url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// The body is not JSON at all (syntax error or cut short).
    #[error("GET {url}: invalid JSON at line {line} column {column}: {reason} (body starts {body_start:?})")]
    InvalidJson {
        url: String,
        line: usize,
        column: usize,
        reason: String,
        body_start: String,
    },
    /// Well-formed JSON without the fields this client needs.
    #[error("GET {url}: unexpected JSON at line {line} column {column}: {reason}")]
    UnexpectedJson {
        url: String,
        line: usize,
        column: usize,
        reason: String,
    },
    /// Anything else on the wire (connection reset mid-response, …).
    #[error("GET {url}: {reason}")]
    Transport { url: String, reason: String },
    /// A vertex claims a parallelism above Flink's ceiling: a broken endpoint. Its metrics are
    /// not asked for, so that requests stay bounded.
    #[error("GET {url}: vertex {vertex} claims parallelism {claimed}, above Flink's maximum {max}; its metrics are not read")]
    ParallelismTooHigh {
        url: String,
        vertex: String,
        claimed: u32,
        max: u32,
    },
    /// The body ran past [`MAX_RESPONSE_BYTES`](super::limits::MAX_RESPONSE_BYTES); reading stopped there.
    #[error("GET {url}: response larger than {limit} bytes; not read further")]
    TooLarge { url: String, limit: usize },
}

impl FetchError {
    /// The URL that failed.
    pub fn url(&self) -> &str {
        match self {
            FetchError::ConnectionRefused { url }
            | FetchError::Connect { url, .. }
            | FetchError::Timeout { url, .. }
            | FetchError::Status { url, .. }
            | FetchError::InvalidJson { url, .. }
            | FetchError::UnexpectedJson { url, .. }
            | FetchError::Transport { url, .. }
            | FetchError::TooLarge { url, .. }
            | FetchError::ParallelismTooHigh { url, .. } => url,
        }
    }

    /// Whether the server could not be reached or did not answer at all: nothing else on the
    /// same server is worth asking for in this poll.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            FetchError::ConnectionRefused { .. }
                | FetchError::Connect { .. }
                | FetchError::Timeout { .. }
        )
    }
}

/// Maps a reqwest error to what happened, judged by its source chain (reqwest's own
/// `Display` for these is just "error sending request").
pub(super) fn classify_reqwest_error(
    url: &str,
    e: &reqwest::Error,
    timeout: Duration,
) -> FetchError {
    let url = url.to_string();
    if e.is_timeout() {
        return FetchError::Timeout {
            url,
            after: timeout,
        };
    }
    let io_kind =
        causes(e).find_map(|s| s.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
    if io_kind == Some(std::io::ErrorKind::TimedOut) {
        return FetchError::Timeout {
            url,
            after: timeout,
        };
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        return FetchError::ConnectionRefused { url };
    }
    let reason = root_cause(e);
    if e.is_connect() {
        FetchError::Connect { url, reason }
    } else {
        FetchError::Transport { url, reason }
    }
}
