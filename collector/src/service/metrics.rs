//! The collector's running counters (batches by outcome, windows stored, polls of each Flink
//! cluster, the API's refusals), kept by [`ServiceMetrics`] where batches are taken and polls
//! happen. [`super::scrape`] exports them with the jobs' levels on `GET /metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::Router;
use bpmon_telemetry::metrics::prometheus_client::metrics::counter::Counter;
use bpmon_telemetry::metrics::prometheus_client::metrics::family::Family;
use bpmon_telemetry::metrics::prometheus_client::metrics::gauge::Gauge;
use bpmon_telemetry::metrics::prometheus_client::metrics::histogram::{
    exponential_buckets, Histogram,
};
use bpmon_telemetry::metrics::prometheus_client::registry::Registry;

use super::episodes::EpisodeChange;

pub(super) type Labels = Vec<(&'static str, String)>;
pub(super) type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// What an agent's batch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Stored (its windows are in the store).
    Stored,
    /// A retry of a batch already stored.
    Duplicate,
    /// Refused as invalid (4xx): the agent sets it aside.
    Rejected,
    /// Not stored now (store or Flink trouble, 5xx): the agent retries.
    Failed,
}

impl BatchOutcome {
    pub const ALL: [BatchOutcome; 4] = [
        BatchOutcome::Stored,
        BatchOutcome::Duplicate,
        BatchOutcome::Rejected,
        BatchOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Stored => "stored",
            BatchOutcome::Duplicate => "duplicate",
            BatchOutcome::Rejected => "rejected",
            BatchOutcome::Failed => "failed",
        }
    }
}

fn poll_histogram() -> Histogram {
    // 5 ms … 20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The collector's counters, updated as batches come in and polls happen.
#[derive(Debug)]
pub struct ServiceMetrics {
    batches: Family<Labels, Counter>,
    windows: Counter,
    unplaced: Counter,
    poll_errors: Family<Labels, Counter>,
    poll_duration: HistogramFamily,
    poll_success: Family<Labels, FloatGauge>,
    per_subtask: AtomicBool,
    /// Episodes that started and ended.
    episodes: Family<Labels, Counter>,
    /// Time the agents' sampling held JVMs at safepoints, s, by agent.
    sampling_pause: Family<Labels, FloatCounter>,
    /// CPU the in-process sampler spent inside the JVMs, s, by agent.
    sampling_cpu: Family<Labels, FloatCounter>,
    /// The API's token check, whose refusals are exported (set when auth is configured).
    auth: std::sync::OnceLock<Arc<crate::auth::Auth>>,
    /// The listener's connection counts (set when it serves).
    connections: std::sync::OnceLock<Arc<crate::listen::ConnectionCounters>>,
}

impl ServiceMetrics {
    /// Counters for clusters at these REST URLs, all at zero.
    pub fn new<'a>(flink_urls: impl IntoIterator<Item = &'a str>) -> ServiceMetrics {
        let m = ServiceMetrics {
            batches: Family::default(),
            windows: Counter::default(),
            unplaced: Counter::default(),
            poll_errors: Family::default(),
            poll_duration: Family::new_with_constructor(poll_histogram as fn() -> Histogram),
            poll_success: Family::default(),
            per_subtask: AtomicBool::new(true),
            episodes: Family::default(),
            sampling_pause: Family::default(),
            sampling_cpu: Family::default(),
            auth: std::sync::OnceLock::new(),
            connections: std::sync::OnceLock::new(),
        };
        for o in BatchOutcome::ALL {
            m.batches.get_or_create(&outcome(o)).inc_by(0);
        }
        for url in flink_urls {
            m.poll_errors.get_or_create(&flink(url)).inc_by(0);
        }
        for change in ["started", "ended"] {
            m.episodes
                .get_or_create(&vec![("change", change.to_string())])
                .inc_by(0);
        }
        m
    }

    /// A back-pressure episode started or ended (a new peak is not counted).
    pub fn episode(&self, change: EpisodeChange) {
        if !matches!(change, EpisodeChange::Peaked { .. }) {
            self.episodes
                .get_or_create(&vec![("change", change.as_str().to_string())])
                .inc();
        }
    }

    /// Whether per-subtask series are exposed (`[metrics] per_subtask`).
    pub fn set_per_subtask(&self, on: bool) {
        self.per_subtask.store(on, Ordering::Relaxed);
    }

    /// Exports `auth`'s refusals as `bpmon_api_unauthorized_total{reason}`.
    pub fn set_auth(&self, auth: Arc<crate::auth::Auth>) {
        let _ = self.auth.set(auth);
    }

    /// Exports the listener's counts as `bpmon_http_connections_open` and
    /// `bpmon_http_connections_refused_total`.
    pub fn set_connections(&self, counters: Arc<crate::listen::ConnectionCounters>) {
        let _ = self.connections.set(counters);
    }

    pub fn per_subtask(&self) -> bool {
        self.per_subtask.load(Ordering::Relaxed)
    }

    pub fn batch(&self, o: BatchOutcome) {
        self.batches.get_or_create(&outcome(o)).inc();
    }

    /// A stored batch's merged windows and the task threads it could not place.
    pub fn stored(&self, windows: usize, unplaced: usize) {
        self.windows.inc_by(windows as u64);
        self.unplaced.inc_by(unplaced as u64);
    }

    /// What an agent's stored windows say their sampling paused the JVMs (the safepoints during
    /// its dumps, from the JVMs' own counters), ms.
    pub fn sampling_paused(&self, agent_id: &str, ms: f64) {
        self.sampling_pause
            .get_or_create(&vec![("agent_id", agent_id.to_string())])
            .inc_by(ms / 1000.0);
    }

    /// What an agent's stored windows say the in-process sampler's thread spent on CPU inside
    /// the JVMs, ms.
    pub fn sampling_cpu(&self, agent_id: &str, ms: f64) {
        self.sampling_cpu
            .get_or_create(&vec![("agent_id", agent_id.to_string())])
            .inc_by(ms / 1000.0);
    }

    /// One poll of a cluster: how long it took, whether it yielded a usable snapshot, and
    /// whether anything in it failed.
    pub fn poll(&self, url: &str, took: Duration, usable: bool, errors: bool, at_ms: u64) {
        let l = flink(url);
        self.poll_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if errors {
            self.poll_errors.get_or_create(&l).inc();
        }
        if usable {
            self.poll_success
                .get_or_create(&l)
                .set(bpmon_telemetry::metrics::seconds(at_ms));
        }
    }

    /// Adds the counters to `r` (the scrape's registry).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "backpressure_episodes",
            "Back-pressure episodes of vertices that started and ended (change = started, ended)",
            self.episodes.clone(),
        );
        r.register(
            "sampling_jvm_pause_seconds",
            "Time agents' sampling held TaskManager JVMs at safepoints (attach and jcmd dumps; the in-process sampler takes none), by agent",
            self.sampling_pause.clone(),
        );
        r.register(
            "sampling_jvm_cpu_seconds",
            "CPU time the in-process sampler spent on samples inside TaskManager JVMs (the attach and jcmd backends' cost is their pauses), by agent",
            self.sampling_cpu.clone(),
        );
        r.register(
            "ingest_batches",
            "Report batches from agents, by outcome (stored, duplicate, rejected, failed)",
            self.batches.clone(),
        );
        r.register(
            "ingest_windows",
            "Merged windows stored from agents' batches",
            self.windows.clone(),
        );
        r.register(
            "ingest_unplaced_threads",
            "Task threads in stored batches that could not be placed on a Flink subtask",
            self.unplaced.clone(),
        );
        r.register(
            "flink_poll_errors",
            "Polls of a Flink cluster's REST API that failed or were partial",
            self.poll_errors.clone(),
        );
        r.register(
            "flink_poll_duration_seconds",
            "Time one poll of a Flink cluster's REST API took",
            self.poll_duration.clone(),
        );
        let refused: Family<Labels, Counter> = Family::default();
        let (missing, wrong) = self
            .auth
            .get()
            .map(|a| (a.unauthorized_missing(), a.unauthorized_wrong()))
            .unwrap_or((0, 0));
        refused
            .get_or_create(&vec![("reason", "missing".to_string())])
            .inc_by(missing);
        refused
            .get_or_create(&vec![("reason", "wrong".to_string())])
            .inc_by(wrong);
        r.register(
            "api_unauthorized",
            "API requests refused with 401, by reason (no token, wrong token)",
            refused,
        );
        let forbidden: Counter = Counter::default();
        forbidden.inc_by(self.auth.get().map_or(0, |a| a.forbidden_total()));
        r.register(
            "api_forbidden",
            "API requests refused with 403: a valid token used beyond its role",
            forbidden,
        );
        if let Some(c) = self.connections.get() {
            let open: Gauge = Gauge::default();
            open.set(c.open.load(Ordering::Relaxed) as i64);
            r.register(
                "http_connections_open",
                "Connections to the API open now",
                open,
            );
            let refused: Counter = Counter::default();
            refused.inc_by(c.refused.load(Ordering::Relaxed));
            r.register(
                "http_connections_refused",
                "Connections closed on arrival because [http] max_connections were open",
                refused,
            );
        }
        r.register(
            "flink_last_poll_success_timestamp_seconds",
            "When a poll of a Flink cluster last gave usable data (Unix time)",
            self.poll_success.clone(),
        );
    }
}

fn outcome(o: BatchOutcome) -> Labels {
    vec![("outcome", o.as_str().to_string())]
}

fn flink(url: &str) -> Labels {
    vec![("flink_url", url.to_string())]
}

/// Counts the report batches `router` refuses as invalid (a 4xx to `POST /api/v1/reports`:
/// malformed, too large, wrong schema); the ingest side counts the others.
pub fn count_rejections(router: Router, metrics: Arc<ServiceMetrics>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        |State(m): State<Arc<ServiceMetrics>>, req: Request, next: Next| async move {
            let is_report = req.method() == Method::POST && req.uri().path() == REPORTS_PATH;
            let response = next.run(req).await;
            if is_report && response.status().is_client_error() {
                m.batch(BatchOutcome::Rejected);
            }
            response
        },
    ))
}

const REPORTS_PATH: &str = "/api/v1/reports";
