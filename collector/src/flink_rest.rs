//! The collector's client for the Flink REST API: one [`FlinkRestClient::snapshot`] call reads a
//! cluster's version, its active jobs, their vertices in topological order with the edges
//! between them, where every subtask runs, and each subtask's network and time metrics, into a
//! [`ClusterSnapshot`].
//!
//! Works against Flink 1.13 – 2.x. What differs between versions and how it is handled:
//!
//! * Metric names: the same figure has several ids (`Shuffle.Netty.Output.Buffers.outPoolUsage`,
//!   the legacy `buffers.outPoolUsage` of 1.9 – 1.20, …). Every alias is requested at once and
//!   the first one present in a fixed preference order wins ([`metrics_from_pairs`]).
//! * Placement: subtasks carry `host` (≤ 1.20) and/or `endpoint` (1.19+; a `"host:port"` string
//!   on 1.20.3 and 2.3.0, an object is accepted too). `start-time` is -1 before the task starts.
//! * The plan is embedded in `GET /jobs/:jid` on every version seen; `GET /jobs/:jid/plan` is
//!   only asked when it is not.
//!
//! Requests per snapshot: `/config`, `/jobs/overview`, then per job `/jobs/:jid`, and per vertex
//! `/jobs/:jid/vertices/:vid` plus the vertex-level metrics endpoint
//! `/jobs/:jid/vertices/:vid/metrics?get=0.<id>,…,1.<id>,…` (ids prefixed with the subtask
//! index), which answers for all subtasks and all metrics at once. Flink's REST server rejects
//! request lines over 4096 bytes (answering `404 /bad-request`), so a vertex with many subtasks
//! gets its list split over a few requests ([`MAX_REQUEST_TARGET_LEN`]). At most
//! [`DEFAULT_MAX_IN_FLIGHT`] requests run at once, each bounded by the client's timeout.
//!
//! Failures never abort the snapshot: each failed request adds one message naming the URL and
//! the kind of failure ([`FetchError`]) to [`ClusterSnapshot::errors`], and everything else is
//! still returned. Only an unreachable cluster (connection refused, timeout on `/config`)
//! ends the poll early, with an empty snapshot and that one error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::model::{
    ClusterSnapshot, Edge, JobSnapshot, SubtaskMetrics, SubtaskSnapshot, TaskManagerRef,
    VertexSnapshot,
};

/// How long a TaskManager host name's addresses are trusted.
const HOST_LOOKUP_TTL: Duration = Duration::from_secs(60);
/// How long one host name lookup may take.
const HOST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

type HostCache = std::sync::Mutex<HashMap<String, (Instant, Vec<std::net::IpAddr>)>>;

fn lock_hosts(
    cache: &HostCache,
) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<std::net::IpAddr>)>> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// Flink's largest parallelism (`maxParallelism` ≤ 2^15).
pub const MAX_PARALLELISM: u32 = 1 << 15;

/// Largest Flink response body read: a 1,000-vertex job's details are a few MB.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// `url` with any password replaced by `***`, for logs and messages.
pub fn redact_credentials(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.as_str().trim_end_matches('/').to_string()
        }
        Ok(_) => url.trim().to_string(),
        // Not a URL: whatever sits between "://" and "@" may be a secret.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(a), Some(b)) if b > a => format!("{}***{}", &url[..a + 3], &url[b..]),
            _ => url.to_string(),
        },
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests in flight at once per client (Flink's REST server has a small thread pool).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Longest request target (path + query) this client sends. Flink's Netty HTTP codec rejects
/// request lines over 4096 bytes (`GET <target> HTTP/1.1`), measured on 1.20.3 and 2.3.0:
/// a 4079-byte target works, 4096 gets `404 Unable to load requested file /bad-request`.
/// The margin leaves room for proxies that add a prefix.
pub const MAX_REQUEST_TARGET_LEN: usize = 3800;

/// Job states that need no monitoring: globally or locally terminal.
const TERMINAL_JOB_STATES: [&str; 4] = ["FINISHED", "CANCELED", "FAILED", "SUSPENDED"];

/// How much of an error body goes into a message.
const BODY_SNIPPET_CHARS: usize = 200;

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid Flink REST URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Why one REST request failed. The `Display` text is what goes into
/// [`ClusterSnapshot::errors`]: `GET <url>: <what happened>`.
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
    /// The body ran past [`MAX_RESPONSE_BYTES`]; reading stopped there.
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
            | FetchError::TooLarge { url, .. } => url,
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

/// Async client for one Flink cluster's REST API.
#[derive(Debug)]
pub struct FlinkRestClient {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:8081` or `https://gw/flink`.
    base: String,
    /// Bytes the base URL's path adds to every request target (counts against the line limit).
    base_path_len: usize,
    http: reqwest::Client,
    timeout: Duration,
    in_flight: Semaphore,
    /// TaskManager host name → its addresses, and when they were looked up.
    host_cache: HostCache,
    /// User and password from the URL, sent as HTTP basic authentication.
    credentials: Option<(String, Option<String>)>,
}

impl FlinkRestClient {
    /// A client for the cluster at `base_url` (`http://host:8081`, optionally with a path
    /// prefix); every request is bounded by `timeout`, connecting included.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_max_in_flight(base_url, timeout, DEFAULT_MAX_IN_FLIGHT)
    }

    /// Like [`new`](Self::new), with at most `max_in_flight` concurrent requests (min 1).
    pub fn with_max_in_flight(
        base_url: &str,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: redact_credentials(base_url),
            reason: reason.to_string(),
        };
        let trimmed = base_url.trim().trim_end_matches('/');
        let mut url = Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
        // Credentials in the URL go into an Authorization header and nowhere else: the base
        // URL is the cluster's name in logs, the API and /metrics.
        let credentials = (!url.username().is_empty()).then(|| {
            (
                percent_decode(url.username()),
                url.password().map(percent_decode),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let clean = url.as_str().trim_end_matches('/').to_string();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or fragment"));
        }
        let base_path_len = url.path().trim_end_matches('/').len();
        let max_in_flight = max_in_flight.max(1);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(max_in_flight)
            .user_agent(concat!("bpmon-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            base: clean,
            credentials,
            base_path_len,
            http,
            timeout,
            in_flight: Semaphore::new(max_in_flight),
            host_cache: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Resolves the host names TaskManagers registered under (an FQDN, an alias), so that they
    /// can be compared with the addresses an agent sees inside a JVM. IP literals and loopback
    /// names need no lookup; answers are kept for [`HOST_LOOKUP_TTL`], and a name that does not
    /// resolve in time stays unresolved (the TaskManager is then matched by other evidence).
    async fn resolve_hosts(&self, tms: &mut [TaskManagerRef]) {
        for tm in tms.iter_mut() {
            let Some(host) = tm.host.clone() else {
                continue;
            };
            if host.parse::<std::net::IpAddr>().is_ok() || crate::locate::is_loopback_name(&host) {
                continue;
            }
            let cached = lock_hosts(&self.host_cache)
                .get(&host)
                .filter(|(at, _)| at.elapsed() < HOST_LOOKUP_TTL)
                .map(|(_, a)| a.clone());
            let addresses = match cached {
                Some(a) => a,
                None => {
                    let looked_up = tokio::time::timeout(
                        HOST_LOOKUP_TIMEOUT,
                        tokio::net::lookup_host((host.as_str(), 0)),
                    )
                    .await;
                    let mut a: Vec<std::net::IpAddr> = match looked_up {
                        Ok(Ok(addrs)) => addrs.map(|s| s.ip()).collect(),
                        Ok(Err(e)) => {
                            tracing::debug!(host = %host, error = %e, "TaskManager host does not resolve");
                            Vec::new()
                        }
                        Err(_) => {
                            tracing::debug!(host = %host, "TaskManager host lookup timed out");
                            Vec::new()
                        }
                    };
                    a.sort();
                    a.dedup();
                    lock_hosts(&self.host_cache).insert(host.clone(), (Instant::now(), a.clone()));
                    a
                }
            };
            tm.addresses = addresses;
        }
    }

    /// The base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The bound on each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Polls the cluster once. Never fails: what could not be read is listed in `errors`.
    pub async fn snapshot(&self) -> ClusterSnapshot {
        let started = Instant::now();
        let mut errors = Vec::new();
        let flink_version = match self.get::<ConfigWire>("/config").await {
            Ok(config) => config.flink_version,
            // Down or hanging: every other request would fail the same way, one timeout each.
            Err(e) if e.is_unreachable() => {
                tracing::debug!(error = %e, "Flink REST unreachable");
                return self.finish(None, Vec::new(), vec![e.to_string()]);
            }
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };

        let (listed, taskmanagers) = futures_util::join!(
            self.list_jobs(),
            self.get::<TaskManagersWire>("/taskmanagers")
        );
        let listed = match listed {
            Ok(jobs) => jobs,
            Err(errs) => {
                errors.extend(errs);
                Vec::new()
            }
        };
        let taskmanagers = match taskmanagers {
            Ok(list) => {
                let mut tms: Vec<TaskManagerRef> = list
                    .taskmanagers
                    .into_iter()
                    .map(|t| taskmanager_ref(&t.id, t.path.as_deref(), t.data_port))
                    .collect();
                self.resolve_hosts(&mut tms).await;
                tms
            }
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        let active: Vec<&JobListEntry> = listed
            .iter()
            .filter(|j| {
                j.state
                    .as_deref()
                    .is_none_or(|s| !TERMINAL_JOB_STATES.contains(&s))
            })
            .collect();

        let mut jobs = Vec::with_capacity(active.len());
        for (job, job_errors) in join_all(active.into_iter().map(|j| self.job(j))).await {
            jobs.push(job);
            errors.extend(job_errors);
        }
        jobs.sort_by(|a, b| (a.start_time_ms, &a.job_id).cmp(&(b.start_time_ms, &b.job_id)));
        tracing::debug!(
            jobs = jobs.len(),
            errors = errors.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Flink REST snapshot"
        );
        let mut snapshot = self.finish(flink_version, jobs, errors);
        snapshot.taskmanagers = taskmanagers;
        snapshot
    }

    fn finish(
        &self,
        flink_version: Option<String>,
        jobs: Vec<JobSnapshot>,
        errors: Vec<String>,
    ) -> ClusterSnapshot {
        ClusterSnapshot {
            flink_url: self.base.clone(),
            flink_version,
            fetched_at_ms: now_ms(),
            jobs,
            taskmanagers: Vec::new(),
            errors,
        }
    }

    /// `/jobs/overview` (names, states); `/jobs` (ids and states only) if a gateway lacks it.
    async fn list_jobs(&self) -> Result<Vec<JobListEntry>, Vec<String>> {
        match self.get::<JobListWire>("/jobs/overview").await {
            Ok(list) => Ok(list.jobs),
            Err(e @ FetchError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                match self.get::<JobListWire>("/jobs").await {
                    Ok(list) => {
                        tracing::debug!(error = %e, "using /jobs instead of /jobs/overview");
                        Ok(list.jobs)
                    }
                    Err(e2) => Err(vec![e.to_string(), e2.to_string()]),
                }
            }
            Err(e) => Err(vec![e.to_string()]),
        }
    }

    /// One job: details, plan (if not embedded), and all its vertices concurrently.
    async fn job(&self, entry: &JobListEntry) -> (JobSnapshot, Vec<String>) {
        let jid = entry.jid.as_str();
        let details = match self.get::<JobDetailsWire>(&format!("/jobs/{jid}")).await {
            Ok(d) => d,
            Err(e) => {
                // The job exists (it was listed); say so, with what the list told us.
                let job = JobSnapshot {
                    job_id: jid.to_string(),
                    name: entry.name.clone().unwrap_or_default(),
                    state: entry.state.clone().unwrap_or_default(),
                    start_time_ms: entry.start_time.and_then(valid_time),
                    vertices: Vec::new(),
                    edges: Vec::new(),
                };
                return (job, vec![e.to_string()]);
            }
        };
        let mut errors = Vec::new();

        let embedded = details
            .plan
            .as_ref()
            .and_then(|p| PlanWire::deserialize(p).ok());
        let plan_fut = async {
            match embedded {
                Some(plan) => Ok(plan),
                None => self
                    .get::<PlanResponseWire>(&format!("/jobs/{jid}/plan"))
                    .await
                    .map(|r| r.plan),
            }
        };
        let vertices_fut = join_all(details.vertices.iter().map(|v| self.vertex(jid, v)));
        let (plan, vertex_results) = futures_util::join!(plan_fut, vertices_fut);

        let mut vertices = Vec::with_capacity(vertex_results.len());
        for (vertex, vertex_errors) in vertex_results {
            vertices.push(vertex);
            errors.extend(vertex_errors);
        }
        let edges = match plan {
            Ok(plan) => plan_edges(&plan),
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        let (vertices, edges) = topological(vertices, edges);
        let job = JobSnapshot {
            job_id: details.jid.unwrap_or_else(|| jid.to_string()),
            name: details.name.or(entry.name.clone()).unwrap_or_default(),
            state: details.state.or(entry.state.clone()).unwrap_or_default(),
            start_time_ms: details.start_time.or(entry.start_time).and_then(valid_time),
            vertices,
            edges,
        };
        (job, errors)
    }

    /// One vertex: subtask placement and all subtasks' metrics, concurrently. The metric
    /// request needs only the parallelism, known from the job details.
    async fn vertex(&self, jid: &str, v: &JobVertexWire) -> (VertexSnapshot, Vec<String>) {
        let vid = v.id.as_str();
        let details_path = format!("/jobs/{jid}/vertices/{vid}");
        let metrics_path = format!("/jobs/{jid}/vertices/{vid}/metrics");
        // Flink's own ceiling is 32768: a larger claim is a broken endpoint, and would have
        // the collector build requests without bound. Its metrics are not asked for.
        let mut bound_errors = Vec::new();
        let parallelism = if v.parallelism > MAX_PARALLELISM {
            bound_errors.push(format!(
                "GET {}{details_path}: vertex {vid} claims parallelism {}, above Flink's maximum {MAX_PARALLELISM}; its metrics are not read",
                self.base, v.parallelism
            ));
            0
        } else {
            v.parallelism
        };
        let queries = metric_queries(
            &metrics_path,
            parallelism,
            &requested_metric_ids(),
            MAX_REQUEST_TARGET_LEN.saturating_sub(self.base_path_len),
        );
        let details_fut = self.get::<VertexDetailsWire>(&details_path);
        let metrics_fut = join_all(queries.iter().map(|q| self.get::<Vec<MetricWire>>(q)));
        let (details, metric_results) = futures_util::join!(details_fut, metrics_fut);

        let mut errors = bound_errors;
        let mut pairs = Vec::new();
        for r in metric_results {
            match r {
                Ok(entries) => pairs.extend(entries.into_iter().filter_map(MetricWire::into_pair)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let mut by_subtask = group_by_subtask(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        let subtasks = match details {
            Ok(d) => d
                .subtasks
                .into_iter()
                .map(|s| {
                    let metrics = by_subtask.remove(&s.subtask).unwrap_or_default();
                    s.into_snapshot(metrics)
                })
                .collect(),
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        let vertex = VertexSnapshot {
            vertex_id: v.id.clone(),
            name: v.name.clone(),
            parallelism: v.parallelism,
            subtasks,
        };
        (vertex, errors)
    }

    /// GET `base + target`, bounded by the in-flight limit and the timeout, decoded as JSON.
    async fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, FetchError> {
        let url = format!("{}{target}", self.base);
        // The semaphore is never closed, so acquiring only fails if it were; then go unbounded.
        let _permit = self.in_flight.acquire().await.ok();
        let started = Instant::now();
        let result = self.fetch(&url).await;
        tracing::debug!(
            %url,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "GET"
        );
        decode_json(&url, result?.as_ref())
    }

    async fn fetch(&self, url: &str) -> Result<impl AsRef<[u8]>, FetchError> {
        let mut request = self.http.get(url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, password.as_deref());
        }
        let mut resp = request.send().await.map_err(|e| self.classify(url, &e))?;
        let status = resp.status();
        // A broken or hostile endpoint must not make the collector buffer without bound.
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(url, &e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
                message: flink_error_message(&body),
            });
        }
        Ok(body)
    }

    fn classify(&self, url: &str, e: &reqwest::Error) -> FetchError {
        classify_reqwest_error(url, e, self.timeout)
    }
}

/// Maps a reqwest error to what happened, judged by its source chain (reqwest's own
/// `Display` for these is just "error sending request").
fn classify_reqwest_error(url: &str, e: &reqwest::Error, timeout: Duration) -> FetchError {
    let url = url.to_string();
    if e.is_timeout() {
        return FetchError::Timeout {
            url,
            after: timeout,
        };
    }
    let io_kind =
        source_chain(e).find_map(|s| s.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
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

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn std::error::Error + 'static)| {
        (*e).source()
    })
}

/// The innermost message of an error chain (the useful one: "Connection reset by peer", …).
fn root_cause(e: &reqwest::Error) -> String {
    source_chain(e)
        .last()
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// Decodes a body, telling a body that is not JSON from JSON of an unexpected shape.
fn decode_json<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| {
        // A type mismatch can be hit before a syntax error further on (`{oops` where a list
        // is expected): report the body as invalid JSON whenever it is.
        let e = if e.is_data() {
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(syntax) => syntax,
                Ok(_) => e,
            }
        } else {
            e
        };
        let text = e.to_string();
        // serde_json appends " at line L column C"; the position is reported separately.
        let reason = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let (url, line, column) = (url.to_string(), e.line(), e.column());
        if e.is_data() {
            FetchError::UnexpectedJson {
                url,
                line,
                column,
                reason,
            }
        } else {
            FetchError::InvalidJson {
                url,
                line,
                column,
                reason,
                body_start: snippet(&String::from_utf8_lossy(body)),
            }
        }
    })
}

/// Flink's error bodies are `{"errors":["…", …]}`; anything else is quoted in part.
fn flink_error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => snippet(&e.errors.join("; ")),
        _ => {
            let text = String::from_utf8_lossy(body);
            if text.trim().is_empty() {
                "(empty body)".to_string()
            } else {
                snippet(text.trim())
            }
        }
    }
}

fn snippet(s: &str) -> String {
    match s.char_indices().nth(BODY_SNIPPET_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Flink writes -1 for "not yet".
fn valid_time(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Where a metric goes in [`SubtaskMetrics`].
#[derive(Clone, Copy)]
enum Slot {
    Number(fn(&mut SubtaskMetrics) -> &mut Option<f64>),
    Flag(fn(&mut SubtaskMetrics) -> &mut Option<bool>),
}

/// Every figure with its ids, preferred first. The legacy `buffers.*` ids (1.9 – 1.20) are the
/// same gauges registered twice; the short names come from the 2019 network-stack blog post
/// (no Flink release seen registers them, but asking costs nothing: unknown ids are omitted).
const METRICS: &[(Slot, &[&str])] = &[
    (
        Slot::Number(|m| &mut m.out_pool_usage),
        &[
            "Shuffle.Netty.Output.Buffers.outPoolUsage",
            "buffers.outPoolUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.in_pool_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inPoolUsage",
            "buffers.inPoolUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.input_floating_buffers_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inputFloatingBuffersUsage",
            "buffers.inputFloatingBuffersUsage",
            "floatingBuffersUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.input_exclusive_buffers_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inputExclusiveBuffersUsage",
            "buffers.inputExclusiveBuffersUsage",
            "exclusiveBuffersUsage",
        ],
    ),
    (Slot::Number(|m| &mut m.num_records_in), &["numRecordsIn"]),
    (Slot::Number(|m| &mut m.num_records_out), &["numRecordsOut"]),
    (Slot::Number(|m| &mut m.num_bytes_in), &["numBytesIn"]),
    (Slot::Number(|m| &mut m.num_bytes_out), &["numBytesOut"]),
    (
        Slot::Number(|m| &mut m.num_bytes_in_local),
        &["Shuffle.Netty.Input.numBytesInLocal", "numBytesInLocal"],
    ),
    (
        Slot::Number(|m| &mut m.num_bytes_in_remote),
        &["Shuffle.Netty.Input.numBytesInRemote", "numBytesInRemote"],
    ),
    (Slot::Number(|m| &mut m.num_buffers_out), &["numBuffersOut"]),
    (
        Slot::Number(|m| &mut m.soft_back_pressured_ms),
        &["softBackPressuredTimeMsPerSecond"],
    ),
    (
        Slot::Number(|m| &mut m.hard_back_pressured_ms),
        &["hardBackPressuredTimeMsPerSecond"],
    ),
    (
        Slot::Number(|m| &mut m.back_pressured_ms),
        &["backPressuredTimeMsPerSecond"],
    ),
    (Slot::Number(|m| &mut m.idle_ms), &["idleTimeMsPerSecond"]),
    (Slot::Number(|m| &mut m.busy_ms), &["busyTimeMsPerSecond"]),
    (
        Slot::Flag(|m| &mut m.is_back_pressured),
        &["isBackPressured"],
    ),
];

/// Every subtask-scope metric id the client asks for (all aliases), in a fixed order.
/// A TaskManager from its `GET /taskmanagers` entry. The host and RPC port come from `path`
/// (`pekko.tcp://flink@HOST:PORT/user/rpc/taskmanager_0`, `akka.tcp://…` before 1.18), else from
/// a default resource id (`HOST:PORT-xxxxxx`).
pub fn taskmanager_ref(id: &str, path: Option<&str>, data_port: Option<u32>) -> TaskManagerRef {
    fn host_port(s: &str) -> Option<(String, Option<u16>)> {
        let (host, port) = match s.strip_prefix('[') {
            // [v6::addr]:port
            Some(rest) => {
                let (h, after) = rest.split_once(']')?;
                (h, after.strip_prefix(':'))
            }
            None => match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            },
        };
        (!host.is_empty()).then(|| (host.to_string(), port.and_then(|p| p.parse().ok())))
    }
    let from_path = path
        .and_then(|p| p.split_once('@'))
        .and_then(|(_, rest)| host_port(rest.split('/').next().unwrap_or("")));
    let from_id = id
        .rsplit_once('-')
        .and_then(|(hp, _)| hp.contains(':').then_some(hp))
        .and_then(host_port);
    let (host, rpc_port) = match from_path.or(from_id) {
        Some((h, p)) => (Some(h), p),
        None => (None, None),
    };
    TaskManagerRef {
        id: id.to_string(),
        host,
        rpc_port,
        data_port: data_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0),
        addresses: Vec::new(),
    }
}

pub fn requested_metric_ids() -> Vec<&'static str> {
    METRICS
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect()
}

/// A subtask's metrics from `(id, value)` pairs as Flink's subtask-scope metric endpoints
/// return them (unprefixed ids, string values). For each figure the first of its ids present
/// decides (aliases are the same gauge, so a `NaN` there is not second-guessed); `"NaN"` and
/// unparseable values give `None`, `isBackPressured` is `"true"`/`"false"`. Unknown ids are
/// ignored.
pub fn metrics_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> SubtaskMetrics {
    let values: HashMap<&str, &str> = pairs.into_iter().collect();
    let mut m = SubtaskMetrics::default();
    for (slot, ids) in METRICS {
        let Some(raw) = ids.iter().find_map(|id| values.get(id)) else {
            continue;
        };
        match slot {
            Slot::Number(field) => *field(&mut m) = parse_number(raw),
            Slot::Flag(field) => *field(&mut m) = parse_flag(raw),
        }
    }
    m
}

fn parse_number(raw: &str) -> Option<f64> {
    raw.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn parse_flag(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Splits the vertex-level endpoint's `<subtask>.<id>` pairs per subtask and turns each group
/// into [`SubtaskMetrics`]. Ids without a numeric prefix are ignored.
pub fn group_by_subtask<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<u32, SubtaskMetrics> {
    let mut groups: BTreeMap<u32, Vec<(&str, &str)>> = BTreeMap::new();
    for (id, value) in pairs {
        let Some((index, metric)) = id.split_once('.') else {
            continue;
        };
        if let Ok(index) = index.parse::<u32>() {
            groups.entry(index).or_default().push((metric, value));
        }
    }
    groups
        .into_iter()
        .map(|(index, pairs)| (index, metrics_from_pairs(pairs)))
        .collect()
}

/// Request targets (`path?get=…`) asking for `ids` of subtasks `0..parallelism`, as few as fit
/// in `max_len` bytes each. A vertex of parallelism 2 needs one; the count grows with
/// parallelism only because Flink caps the request line.
pub fn metric_queries(path: &str, parallelism: u32, ids: &[&str], max_len: usize) -> Vec<String> {
    let mut out = Vec::new();
    let head = format!("{path}?get=");
    let mut current = head.clone();
    for subtask in 0..parallelism {
        for id in ids {
            let token = format!("{subtask}.{id}");
            let empty = current.len() == head.len();
            let added = token.len() + usize::from(!empty);
            if !empty && current.len() + added > max_len {
                out.push(std::mem::replace(&mut current, head.clone()));
            }
            if current.len() > head.len() {
                current.push(',');
            }
            current.push_str(&token);
        }
    }
    if current.len() > head.len() {
        out.push(current);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Topology

/// Edges from the plan: each node's inputs flow into the node.
fn plan_edges(plan: &PlanWire) -> Vec<Edge> {
    plan.nodes
        .iter()
        .flat_map(|node| {
            node.inputs.iter().map(move |input| Edge {
                source: input.id.clone(),
                target: node.id.clone(),
                ship_strategy: input.ship_strategy.clone().filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

/// Orders vertices sources first (Kahn's algorithm; among ready vertices, the one listed first
/// by Flink goes first) and sorts edges by the positions of their ends. Vertices on a cycle or
/// left unordered keep Flink's order at the end; edges to unknown vertices are kept, last.
pub fn topological(
    vertices: Vec<VertexSnapshot>,
    mut edges: Vec<Edge>,
) -> (Vec<VertexSnapshot>, Vec<Edge>) {
    let index: HashMap<&str, usize> = vertices
        .iter()
        .enumerate()
        .map(|(i, v)| (v.vertex_id.as_str(), i))
        .collect();
    let n = vertices.len();
    let mut indegree = vec![0usize; n];
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen = BTreeSet::new();
    for e in &edges {
        let (Some(&s), Some(&t)) = (index.get(e.source.as_str()), index.get(e.target.as_str()))
        else {
            continue;
        };
        // Two inputs from the same vertex (e.g. a self-union) count once.
        if s != t && seen.insert((s, t)) {
            indegree[t] += 1;
            downstream[s].push(t);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &t in &downstream[i] {
            indegree[t] -= 1;
            if indegree[t] == 0 {
                ready.insert(t);
            }
        }
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..n).filter(|i| !placed.contains(i)));

    let mut position = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let rank = |id: &str| index.get(id).map_or(usize::MAX, |&i| position[i]);
    // Stable: inputs of one target keep the plan's order.
    edges.sort_by_key(|e| (rank(&e.source), rank(&e.target)));

    let mut slots: Vec<Option<VertexSnapshot>> = vertices.into_iter().map(Some).collect();
    let sorted = order.into_iter().filter_map(|i| slots[i].take()).collect();
    (sorted, edges)
}

// ---------------------------------------------------------------------------------------------
// Wire types: only the fields used; unknown fields are ignored everywhere.

#[derive(Deserialize)]
struct TaskManagersWire {
    #[serde(default)]
    taskmanagers: Vec<TaskManagerWire>,
}

#[derive(Deserialize)]
struct TaskManagerWire {
    id: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(rename = "dataPort", default)]
    data_port: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ConfigWire {
    #[serde(rename = "flink-version", default)]
    flink_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JobListWire {
    #[serde(default)]
    jobs: Vec<JobListEntry>,
}

/// An entry of `/jobs/overview` (`jid`, `name`, `state`, `start-time`) or of `/jobs` (`id`,
/// `status`).
#[derive(Debug, Deserialize)]
struct JobListEntry {
    #[serde(alias = "id")]
    jid: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(alias = "status", default)]
    state: Option<String>,
    #[serde(rename = "start-time", default)]
    start_time: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct JobDetailsWire {
    #[serde(default)]
    jid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(rename = "start-time", default)]
    start_time: Option<i64>,
    #[serde(default)]
    vertices: Vec<JobVertexWire>,
    /// Kept raw: a plan of an unexpected shape falls back to `/plan` instead of failing the job.
    #[serde(default)]
    plan: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct JobVertexWire {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    parallelism: u32,
}

#[derive(Debug, Deserialize)]
struct PlanResponseWire {
    plan: PlanWire,
}

#[derive(Debug, Deserialize)]
struct PlanWire {
    #[serde(default)]
    nodes: Vec<PlanNodeWire>,
}

#[derive(Debug, Deserialize)]
struct PlanNodeWire {
    id: String,
    #[serde(default)]
    inputs: Vec<PlanInputWire>,
}

#[derive(Debug, Deserialize)]
struct PlanInputWire {
    /// The upstream vertex.
    id: String,
    #[serde(default)]
    ship_strategy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct VertexDetailsWire {
    #[serde(default)]
    subtasks: Vec<SubtaskWire>,
}

/// One entry of `GET /jobs/:jid/vertices/:vid` → `subtasks`.
#[derive(Debug, Deserialize)]
struct SubtaskWire {
    subtask: u32,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    status: String,
    #[serde(rename = "taskmanager-id", default)]
    taskmanager_id: Option<String>,
    /// ≤ 1.20, e.g. `"localhost"`.
    #[serde(default)]
    host: Option<String>,
    /// 1.19+, e.g. `"localhost:36543"`; kept raw to accept an object too.
    #[serde(default)]
    endpoint: Option<serde_json::Value>,
    #[serde(rename = "start-time", default)]
    start_time: Option<i64>,
    /// The old spelling, still sent alongside `start-time`.
    #[serde(rename = "start_time", default)]
    start_time_legacy: Option<i64>,
}

impl SubtaskWire {
    fn into_snapshot(self, metrics: SubtaskMetrics) -> SubtaskSnapshot {
        // `endpoint` (host:port) when given: it is all 2.x has, and it tells TaskManagers on
        // one host apart.
        let host = self
            .endpoint
            .as_ref()
            .and_then(endpoint_text)
            .or(self.host.filter(|h| !h.trim().is_empty()));
        SubtaskSnapshot {
            subtask: self.subtask,
            attempt: self.attempt,
            status: self.status,
            taskmanager_id: self.taskmanager_id.filter(|t| !t.trim().is_empty()),
            host,
            start_time_ms: self
                .start_time
                .or(self.start_time_legacy)
                .and_then(valid_time),
            metrics,
        }
    }
}

/// `endpoint` as text: a string as is, an object as `host:port` from its address fields.
fn endpoint_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Object(o) => {
            let host = ["address", "host", "hostname", "hostName"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|h| h.as_str()))
                .filter(|h| !h.is_empty())?;
            match o.get("port").and_then(|p| p.as_u64()) {
                Some(port) => Some(format!("{host}:{port}")),
                None => Some(host.to_string()),
            }
        }
        _ => None,
    }
}

/// `{"id": "0.numRecordsIn", "value": "42"}`; values are strings, other scalars are accepted.
#[derive(Debug, Deserialize)]
struct MetricWire {
    id: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
}

impl MetricWire {
    fn into_pair(self) -> Option<(String, String)> {
        let value = match self.value? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        Some((self.id, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_for_a_header() {
        let c = FlinkRestClient::new(
            "http://admin:s%40cret@127.0.0.1:8081/",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8081");
        assert_eq!(
            c.credentials,
            Some(("admin".to_string(), Some("s@cret".to_string())))
        );
        assert_eq!(
            redact_credentials("https://u:p@flink:8081/x"),
            "https://u:***@flink:8081/x"
        );
        assert_eq!(redact_credentials("http://flink:8081"), "http://flink:8081");
        let e = FlinkRestClient::new("ftp://u:pw@flink", Duration::from_secs(1)).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn taskmanager_host_and_ports_come_from_path_or_id() {
        let t = taskmanager_ref(
            "bpmon-1-tm0",
            Some("pekko.tcp://flink@127.0.0.1:36265/user/rpc/taskmanager_0"),
            Some(40001),
        );
        assert_eq!(t.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(t.ports(), vec![36265, 40001]);
        assert_eq!((t.rpc_port, t.data_port), (Some(36265), Some(40001)));
        let t = taskmanager_ref("10.0.0.7:41233-6e0c2a", None, Some(0));
        assert_eq!(t.host.as_deref(), Some("10.0.0.7"));
        assert_eq!(t.ports(), vec![41233]);
        let t = taskmanager_ref(
            "x",
            Some("akka.tcp://flink@[::1]:6122/user/rpc/taskmanager_0"),
            None,
        );
        assert_eq!(t.host.as_deref(), Some("::1"));
        assert_eq!(t.ports(), vec![6122]);
        let t = taskmanager_ref("my-tm", Some("pekko://flink/user/rpc/tm"), None);
        assert_eq!((t.host.clone(), t.ports()), (None, vec![]));
    }

    #[test]
    fn metrics_prefer_first_alias_and_parse_values() {
        let m = metrics_from_pairs([
            ("buffers.outPoolUsage", "0.25"),
            ("Shuffle.Netty.Output.Buffers.outPoolUsage", "1.0"),
            ("buffers.inPoolUsage", "0.5"),
            ("exclusiveBuffersUsage", "0.75"),
            ("busyTimeMsPerSecond", "NaN"),
            ("idleTimeMsPerSecond", "12"),
            ("hardBackPressuredTimeMsPerSecond", "not a number"),
            ("softBackPressuredTimeMsPerSecond", " 998 "),
            ("isBackPressured", "true"),
            ("numBytesInLocal", "100"),
            ("Shuffle.Netty.Input.numBytesInRemote", "7"),
            ("numBytesInRemote", "8"),
            ("Source__numbers.numRecordsOut", "5"),
        ]);
        assert_eq!(
            m.out_pool_usage,
            Some(1.0),
            "Shuffle.Netty wins over buffers.*"
        );
        assert_eq!(m.in_pool_usage, Some(0.5), "legacy alias when alone");
        assert_eq!(m.input_exclusive_buffers_usage, Some(0.75));
        assert_eq!(m.input_floating_buffers_usage, None);
        assert_eq!(m.busy_ms, None, "NaN");
        assert_eq!(m.idle_ms, Some(12.0));
        assert_eq!(m.hard_back_pressured_ms, None, "unparseable");
        assert_eq!(m.soft_back_pressured_ms, Some(998.0));
        assert_eq!(m.is_back_pressured, Some(true));
        assert_eq!(m.num_bytes_in_local, Some(100.0));
        assert_eq!(m.num_bytes_in_remote, Some(7.0));
        assert_eq!(
            m.num_records_out, None,
            "operator-scoped ids are not the task's"
        );
        assert_eq!(
            metrics_from_pairs([("isBackPressured", "false")]).is_back_pressured,
            Some(false)
        );
        assert_eq!(
            metrics_from_pairs([("isBackPressured", "maybe")]).is_back_pressured,
            None
        );
        assert_eq!(metrics_from_pairs([]), SubtaskMetrics::default());
    }

    #[test]
    fn first_present_alias_decides_even_when_nan() {
        let m = metrics_from_pairs([
            ("Shuffle.Netty.Output.Buffers.outPoolUsage", "NaN"),
            ("buffers.outPoolUsage", "0.5"),
        ]);
        assert_eq!(m.out_pool_usage, None);
    }

    #[test]
    fn every_field_has_an_alias() {
        let pairs: Vec<(&str, &str)> = METRICS
            .iter()
            .map(|(slot, ids)| {
                (
                    ids[0],
                    if matches!(slot, Slot::Flag(_)) {
                        "true"
                    } else {
                        "1"
                    },
                )
            })
            .collect();
        let m = metrics_from_pairs(pairs);
        let json = serde_json::to_value(&m).expect("serializable");
        let obj = json.as_object().expect("object");
        for (field, value) in obj {
            assert!(!value.is_null(), "{field} is filled by no metric id");
        }
    }

    #[test]
    fn groups_prefixed_ids_by_subtask() {
        let g = group_by_subtask([
            ("0.isBackPressured", "true"),
            ("1.Shuffle.Netty.Output.Buffers.outPoolUsage", "0.5"),
            ("12.idleTimeMsPerSecond", "3"),
            ("x.idleTimeMsPerSecond", "3"),
            ("noprefix", "1"),
        ]);
        assert_eq!(g.keys().copied().collect::<Vec<_>>(), vec![0, 1, 12]);
        assert_eq!(g[&0].is_back_pressured, Some(true));
        assert_eq!(g[&1].out_pool_usage, Some(0.5));
        assert_eq!(g[&12].idle_ms, Some(3.0));
    }

    #[test]
    fn metric_queries_fit_the_limit_and_cover_everything() {
        let ids = requested_metric_ids();
        let path = "/jobs/0123456789abcdef0123456789abcdef/vertices/0123456789abcdef0123456789abcdef/metrics";
        let small = metric_queries(path, 2, &ids, MAX_REQUEST_TARGET_LEN);
        assert_eq!(small.len(), 1, "parallelism 2: one request");
        for p in [1u32, 2, 5, 17, 128] {
            let qs = metric_queries(path, p, &ids, MAX_REQUEST_TARGET_LEN);
            let mut got = Vec::new();
            for q in &qs {
                assert!(q.len() <= MAX_REQUEST_TARGET_LEN, "{} > limit", q.len());
                let (head, list) = q.split_once("?get=").expect("query");
                assert_eq!(head, path);
                got.extend(list.split(',').map(str::to_string));
            }
            let want: Vec<String> = (0..p)
                .flat_map(|s| ids.iter().map(move |id| format!("{s}.{id}")))
                .collect();
            assert_eq!(got, want, "parallelism {p}");
            let total: usize = want.iter().map(|t| t.len() + 1).sum();
            assert!(qs.len() <= total / (MAX_REQUEST_TARGET_LEN - path.len() - 5) + 1);
        }
        assert!(metric_queries(path, 0, &ids, MAX_REQUEST_TARGET_LEN).is_empty());
    }

    fn vertex(id: &str) -> VertexSnapshot {
        VertexSnapshot {
            vertex_id: id.into(),
            name: id.to_uppercase(),
            parallelism: 1,
            subtasks: Vec::new(),
        }
    }

    fn edge(s: &str, t: &str) -> Edge {
        Edge {
            source: s.into(),
            target: t.into(),
            ship_strategy: None,
        }
    }

    fn ids(vs: &[VertexSnapshot]) -> Vec<&str> {
        vs.iter().map(|v| v.vertex_id.as_str()).collect()
    }

    #[test]
    fn topological_order_sources_first() {
        // Plan order as Flink gives it: sinks first.
        let (vs, es) = topological(
            vec![
                vertex("sink"),
                vertex("map"),
                vertex("src2"),
                vertex("src1"),
            ],
            vec![
                edge("map", "sink"),
                edge("src1", "map"),
                edge("src2", "map"),
                edge("src1", "sink"),
            ],
        );
        assert_eq!(ids(&vs), vec!["src2", "src1", "map", "sink"]);
        assert_eq!(
            es,
            vec![
                edge("src2", "map"),
                edge("src1", "map"),
                edge("src1", "sink"),
                edge("map", "sink")
            ]
        );
        // A cycle and an unknown end do not lose anything.
        let (vs, es) = topological(
            vec![vertex("a"), vertex("b"), vertex("c")],
            vec![edge("b", "c"), edge("c", "b"), edge("zz", "a")],
        );
        assert_eq!(ids(&vs), vec!["a", "b", "c"]);
        assert_eq!(es.len(), 3);
        assert_eq!(es[2], edge("zz", "a"));
    }

    #[test]
    fn plan_edges_from_inputs() {
        let plan: PlanWire = serde_json::from_str(
            r#"{"jid":"j","name":"n","type":"STREAMING","nodes":[
              {"id":"b","parallelism":2,"operator":"","description":"x","optimizer_properties":{},
               "inputs":[{"num":0,"id":"a","ship_strategy":"REBALANCE","exchange":"pipelined_bounded"},
                         {"num":1,"id":"c","ship_strategy":""}]},
              {"id":"a","parallelism":2}]}"#,
        )
        .expect("plan");
        let es = plan_edges(&plan);
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].source, "a");
        assert_eq!(es[0].target, "b");
        assert_eq!(es[0].ship_strategy.as_deref(), Some("REBALANCE"));
        assert_eq!(es[1].ship_strategy, None);
    }

    fn subtask(json: &str) -> SubtaskSnapshot {
        serde_json::from_str::<SubtaskWire>(json)
            .expect("subtask")
            .into_snapshot(SubtaskMetrics::default())
    }

    #[test]
    fn subtask_placement_across_versions() {
        // 1.20.3: host and endpoint.
        let s = subtask(
            r#"{"subtask":0,"status":"RUNNING","attempt":0,"host":"localhost","endpoint":"localhost:36543",
                "start-time":1795534845225,"end-time":-1,"duration":30502,"metrics":{},
                "taskmanager-id":"tm1","status-duration":{"RUNNING":1},"start_time":1795534845225}"#,
        );
        assert_eq!(s.host.as_deref(), Some("localhost:36543"));
        assert_eq!(s.taskmanager_id.as_deref(), Some("tm1"));
        assert_eq!(s.start_time_ms, Some(1795534845225));
        assert_eq!(s.status, "RUNNING");
        // 2.3.0: endpoint only.
        let s = subtask(
            r#"{"subtask":1,"status":"RUNNING","attempt":2,"endpoint":"localhost:44901","start-time":5}"#,
        );
        assert_eq!((s.subtask, s.attempt), (1, 2));
        assert_eq!(s.host.as_deref(), Some("localhost:44901"));
        // ≤ 1.18: host only; no taskmanager-id; not started.
        let s = subtask(
            r#"{"subtask":0,"status":"CREATED","attempt":0,"host":"(unassigned)","start-time":-1}"#,
        );
        assert_eq!(s.host.as_deref(), Some("(unassigned)"));
        assert_eq!(s.taskmanager_id, None);
        assert_eq!(s.start_time_ms, None);
        // An endpoint object; legacy start_time only.
        let s = subtask(
            r#"{"subtask":0,"endpoint":{"address":"10.0.0.5","port":6121},"start_time":7}"#,
        );
        assert_eq!(s.host.as_deref(), Some("10.0.0.5:6121"));
        assert_eq!(s.start_time_ms, Some(7));
    }

    #[test]
    fn job_lists_of_both_endpoints() {
        let o: JobListWire = serde_json::from_str(
            r#"{"jobs":[{"jid":"a","name":"n","state":"RUNNING","start-time":1,"tasks":{}}]}"#,
        )
        .expect("overview");
        assert_eq!(o.jobs[0].jid, "a");
        assert_eq!(o.jobs[0].state.as_deref(), Some("RUNNING"));
        let j: JobListWire =
            serde_json::from_str(r#"{"jobs":[{"id":"b","status":"FINISHED"}]}"#).expect("jobs");
        assert_eq!(j.jobs[0].jid, "b");
        assert_eq!(j.jobs[0].state.as_deref(), Some("FINISHED"));
    }

    #[test]
    fn metric_values_of_any_scalar_type() {
        let entries: Vec<MetricWire> = serde_json::from_str(
            r#"[{"id":"0.a","value":"NaN"},{"id":"0.b","value":3.5},{"id":"0.c","value":true},{"id":"0.d"}]"#,
        )
        .expect("metrics");
        let pairs: Vec<(String, String)> = entries
            .into_iter()
            .filter_map(MetricWire::into_pair)
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("0.a".to_string(), "NaN".to_string()),
                ("0.b".to_string(), "3.5".to_string()),
                ("0.c".to_string(), "true".to_string())
            ]
        );
    }

    #[test]
    fn json_errors_are_told_apart() {
        let e = decode_json::<ConfigWire>("http://x/config", b"<html>oops</html>").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("GET http://x/config: invalid JSON at line 1 column 1: expected value"),
            "{msg}"
        );
        assert!(msg.contains("<html>"), "{msg}");
        let e =
            decode_json::<JobListWire>("http://x/jobs", br#"{"jobs":[{"name":1}]}"#).unwrap_err();
        assert!(matches!(e, FetchError::UnexpectedJson { .. }), "{e}");
        let e = decode_json::<JobListWire>("http://x/jobs", br#"{"jobs":[{"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid JSON at line 1 column 10: EOF"),
            "{e}"
        );
        // A list expected, a broken object sent: the syntax error is what counts.
        let e = decode_json::<Vec<MetricWire>>("http://x/m", b"{not json").unwrap_err();
        assert!(
            matches!(
                e,
                FetchError::InvalidJson {
                    line: 1,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn flink_error_bodies() {
        assert_eq!(
            flink_error_message(br#"{"errors":["Not found: /jobs/x"]}"#),
            "Not found: /jobs/x"
        );
        assert_eq!(flink_error_message(b""), "(empty body)");
        assert_eq!(flink_error_message(b"plain text"), "plain text");
        assert!(flink_error_message(&[b'x'; 1000]).ends_with('…'));
    }

    #[test]
    fn timeout_message_format() {
        let e = FetchError::Timeout {
            url: "http://h/config".into(),
            after: Duration::from_secs(5),
        };
        assert_eq!(e.to_string(), "GET http://h/config: timed out after 5s");
        assert!(e.is_unreachable());
    }

    #[test]
    fn rejects_bad_base_urls() {
        let t = Duration::from_secs(1);
        assert!(FlinkRestClient::new("localhost:8081", t).is_err());
        assert!(FlinkRestClient::new("ftp://h:1", t).is_err());
        assert!(FlinkRestClient::new("http://h:1/?x=1", t).is_err());
        let c = FlinkRestClient::new("http://h:1/flink/", t).expect("valid");
        assert_eq!(c.base_url(), "http://h:1/flink");
        assert_eq!(c.base_path_len, "/flink".len());
    }
}
