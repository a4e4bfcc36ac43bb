//! The client: one cluster's base URL, its HTTP client and request bound, and the snapshot
//! walk (`/config`, `/jobs/overview`, each job, each vertex and its metrics), with TaskManager
//! host names resolved (and cached) at poll time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::clock::now_ms;
use crate::model::{ClusterSnapshot, JobSnapshot, TaskManagerRef, VertexSnapshot};

use super::decode::{decode_json, flink_error_message};
use super::errors::{classify_reqwest_error, ClientError, FetchError};
use super::limits::{
    DEFAULT_MAX_IN_FLIGHT, MAX_PARALLELISM, MAX_REQUEST_TARGET_LEN, MAX_RESPONSE_BYTES,
};
use super::metrics::{group_by_subtask, metric_queries, requested_metric_ids};
use super::topology::{plan_edges, taskmanager_ref, topological};
use super::wire::{
    valid_time, ConfigWire, JobDetailsWire, JobListEntry, JobListWire, JobVertexWire, MetricWire,
    PlanResponseWire, PlanWire, TaskManagersWire, VertexDetailsWire,
};

/// How long a TaskManager host name's addresses are trusted.
pub(super) const HOST_LOOKUP_TTL: Duration = Duration::from_secs(60);
/// How long one host name lookup may take.
pub(super) const HOST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) type HostCache = std::sync::Mutex<HashMap<String, (Instant, Vec<std::net::IpAddr>)>>;

pub(super) fn lock_hosts(
    cache: &HostCache,
) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<std::net::IpAddr>)>> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Job states that need no monitoring: globally or locally terminal.
const TERMINAL_JOB_STATES: [&str; 4] = ["FINISHED", "CANCELED", "FAILED", "SUSPENDED"];

/// Async client for one Flink cluster's REST API.
#[derive(Debug)]
pub struct FlinkRestClient {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:8081` or `https://gw/flink`.
    base: String,
    /// Bytes the base URL's path adds to every request target (counts against the line limit).
    pub(super) base_path_len: usize,
    http: reqwest::Client,
    timeout: Duration,
    in_flight: Semaphore,
    /// TaskManager host name → its addresses, and when they were looked up.
    host_cache: HostCache,
    /// User and password from the URL, sent as HTTP basic authentication.
    pub(super) credentials: Option<(String, Option<String>)>,
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
                return self.finish(None, Vec::new(), vec![e]);
            }
            Err(e) => {
                errors.push(e);
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
                // Without the list nothing is known of the jobs, and a snapshot without them
                // would say every job stopped (a connection cut between `/config` and
                // `/jobs/overview` did). No jobs and no TaskManagers: the poll failed, and the
                // last good snapshot stays.
                errors.extend(errs);
                return self.finish(flink_version, Vec::new(), errors);
            }
        };
        let taskmanagers_unread = taskmanagers.is_err();
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
                errors.push(e);
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
        snapshot.taskmanagers_unread = taskmanagers_unread;
        snapshot
    }

    fn finish(
        &self,
        flink_version: Option<String>,
        jobs: Vec<JobSnapshot>,
        errors: Vec<FetchError>,
    ) -> ClusterSnapshot {
        ClusterSnapshot {
            flink_url: self.base.clone(),
            flink_version,
            fetched_at_ms: now_ms(),
            jobs,
            taskmanagers: Vec::new(),
            taskmanagers_unread: false,
            // What an operator reads in `status`: `GET <url>: <what happened>`.
            errors: errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// `/jobs/overview` (names, states); `/jobs` (ids and states only) if a gateway lacks it.
    async fn list_jobs(&self) -> Result<Vec<JobListEntry>, Vec<FetchError>> {
        match self.get::<JobListWire>("/jobs/overview").await {
            Ok(list) => Ok(list.jobs),
            Err(e @ FetchError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                match self.get::<JobListWire>("/jobs").await {
                    Ok(list) => {
                        tracing::debug!(error = %e, "using /jobs instead of /jobs/overview");
                        Ok(list.jobs)
                    }
                    Err(e2) => Err(vec![e, e2]),
                }
            }
            Err(e) => Err(vec![e]),
        }
    }

    /// One job: details, plan (if not embedded), and all its vertices concurrently.
    async fn job(&self, entry: &JobListEntry) -> (JobSnapshot, Vec<FetchError>) {
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
                return (job, vec![e]);
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
                errors.push(e);
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
    async fn vertex(&self, jid: &str, v: &JobVertexWire) -> (VertexSnapshot, Vec<FetchError>) {
        let vid = v.id.as_str();
        let details_path = format!("/jobs/{jid}/vertices/{vid}");
        let metrics_path = format!("/jobs/{jid}/vertices/{vid}/metrics");
        // Flink's own ceiling is 32768: a larger claim is a broken endpoint, and would have
        // the collector build requests without bound. Its metrics are not asked for.
        let mut bound_errors = Vec::new();
        let parallelism = if v.parallelism > MAX_PARALLELISM {
            bound_errors.push(FetchError::ParallelismTooHigh {
                url: format!("{}{details_path}", self.base),
                vertex: vid.to_string(),
                claimed: v.parallelism,
                max: MAX_PARALLELISM,
            });
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
                Err(e) => errors.push(e),
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
                errors.push(e);
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
