//! The collector's HTTP API, agent-facing part: `POST /api/v1/reports` takes a report batch
//! (JSON, optionally gzip-encoded), validates it and hands it to the ingest side, which answers
//! only once the batch is stored, so an acknowledged batch is never lost. `GET /api/v1/settings`
//! tells agents how to sample each job.
//!
//! Bad input gets a 4xx with a message that says what is wrong; nothing here panics on input.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bpmon_proto::{AgentPlan, JvmPlan, PlanRequest, ReportBatch, SamplingSettings, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};

use crate::api::ErrorBody;

/// Limits on what agents may send.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Largest request body as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Largest body after decompression: a small gzip body may not inflate without bound.
    pub max_decoded_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body_bytes: 4 << 20,
            max_decoded_bytes: 32 << 20,
        }
    }
}

/// What became of an accepted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// The batch had already been stored (a retry): nothing was stored twice.
    pub duplicate: bool,
}

/// Why the ingest side cannot serve an agent now. Never the agent's fault: it is answered 503,
/// and the agent keeps its batch and retries.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A thread matched no TaskManager while a cluster cannot be read: accepting now would lose
    /// it for good. Names each such cluster and why.
    #[error("cannot place reports while Flink is not readable ({0})")]
    FlinkUnreadable(String),
    /// The store or the work behind it failed or has stopped.
    #[error("{0}")]
    Unavailable(String),
}

impl IngestError {
    /// The HTTP status an agent gets.
    pub fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Where validated batches go, and where settings come from. The service implements it with the
/// store; tests with memory.
pub trait Ingest: Send + Sync + 'static {
    /// Stores a batch; returns once it is durable.
    fn ingest(
        &self,
        batch: ReportBatch,
    ) -> impl std::future::Future<Output = Result<IngestOutcome, IngestError>> + Send;
    /// The default settings and every per-job override.
    fn settings(
        &self,
    ) -> impl std::future::Future<Output = Result<SettingsView, IngestError>> + Send;
    /// Which settings apply to which task threads of the agent's JVMs. The default answer puts
    /// every thread on the default settings.
    fn plan(
        &self,
        request: PlanRequest,
    ) -> impl std::future::Future<Output = Result<AgentPlan, IngestError>> + Send {
        async move {
            let view = self.settings().await?;
            Ok(AgentPlan {
                default: view.default,
                jvms: request
                    .jvms
                    .iter()
                    .map(|j| JvmPlan {
                        pid: j.pid,
                        taskmanager_id: None,
                        why: Some("this collector does not place JVMs".into()),
                        tasks: Vec::new(),
                    })
                    .collect(),
            })
        }
    }
}

/// What `GET /api/v1/settings` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsView {
    pub default: SamplingSettings,
    /// Per-job overrides, by job id.
    pub jobs: std::collections::BTreeMap<String, SamplingSettings>,
}

/// The reply to a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReply {
    pub accepted: bool,
    pub duplicate: bool,
    pub seq: u64,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

struct AppState<I> {
    ingest: I,
    limits: IngestLimits,
}

/// The agent-facing routes.
pub fn router<I: Ingest>(ingest: I, limits: IngestLimits) -> Router {
    let state = Arc::new(AppState { ingest, limits });
    Router::new()
        .route("/api/v1/reports", post(post_reports::<I>))
        .route("/api/v1/settings", get(get_settings::<I>))
        .route("/api/v1/plan", post(post_plan::<I>))
        // Past this, axum answers 413 before our handler runs.
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

async fn post_reports<I: Ingest>(
    State(state): State<Arc<AppState<I>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let decoded = match decode_body(&headers, &body, state.limits.max_decoded_bytes) {
        Ok(d) => d,
        Err((status, message)) => return error(status, message),
    };
    let batch = match parse_batch(&decoded) {
        Ok(b) => b,
        Err((status, message)) => return error(status, message),
    };
    // Bounds and counts, at the edge: a bad batch is the agent's to fix (4xx, never retried),
    // and never reaches the store.
    if let Err(problem) = batch.validate(crate::clock::now_ms()) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("batch {} refused: {problem}", batch.seq),
        );
    }
    let seq = batch.seq;
    match state.ingest.ingest(batch).await {
        Ok(outcome) => Json(IngestReply {
            accepted: true,
            duplicate: outcome.duplicate,
            seq,
        })
        .into_response(),
        // Not the agent's fault: it keeps the batch and retries.
        Err(e) => error(
            e.status(),
            format!("batch {seq} not stored, retry later: {e}"),
        ),
    }
}

async fn get_settings<I: Ingest>(State(state): State<Arc<AppState<I>>>) -> Response {
    match state.ingest.settings().await {
        Ok(view) => Json(view).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

/// `POST /api/v1/plan`: which settings apply to which task threads of the agent's JVMs.
async fn post_plan<I: Ingest>(State(state): State<Arc<AppState<I>>>, body: Bytes) -> Response {
    let request: PlanRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "not a plan request (line {} column {}): {e}",
                    e.line(),
                    e.column()
                ),
            )
        }
    };
    match state.ingest.plan(request).await {
        Ok(plan) => Json(plan).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

/// The body as JSON bytes: inflated if gzip-encoded, within `max_decoded` bytes.
pub fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    max_decoded: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => {
            if body.len() > max_decoded {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body of {} bytes exceeds {max_decoded}", body.len()),
                ));
            }
            Ok(body.to_vec())
        }
        "gzip" => {
            let mut out = Vec::new();
            let mut reader = flate2::read::GzDecoder::new(body).take(max_decoded as u64 + 1);
            reader.read_to_end(&mut out).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("body is not valid gzip: {e}"),
                )
            })?;
            if out.len() > max_decoded {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("gzip body inflates past {max_decoded} bytes"),
                ));
            }
            Ok(out)
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {other:?}; send identity or gzip"),
        )),
    }
}

/// A batch from JSON bytes, with its schema version checked first, so a newer agent gets told
/// about the version rather than about some field.
pub fn parse_batch(json: &[u8]) -> Result<ReportBatch, (StatusCode, String)> {
    // One pass on the way every good batch takes; the version is checked after it, so a future
    // schema that happens to parse is still refused as such.
    let e = match serde_json::from_slice::<ReportBatch>(json) {
        Ok(b) if b.schema_version == SCHEMA_VERSION => return Ok(b),
        Ok(b) => return Err(unknown_version(u64::from(b.schema_version))),
        Err(e) => e,
    };
    if e.is_syntax() || e.is_eof() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        ));
    }
    // Well-formed but not a batch of ours: say first whether the version is the reason.
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        schema_version: Option<serde_json::Value>,
    }
    let version = serde_json::from_slice::<Head>(json)
        .ok()
        .and_then(|h| h.schema_version)
        .and_then(|v| v.as_u64());
    Err(match version {
        Some(v) if v != u64::from(SCHEMA_VERSION) => unknown_version(v),
        Some(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a valid report batch: {e}"),
        ),
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing schema_version: not a bpmon report batch".to_string(),
        ),
    })
}

fn unknown_version(v: u64) -> (StatusCode, String) {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("unknown schema version {v}; this collector speaks {SCHEMA_VERSION}"),
    )
}
