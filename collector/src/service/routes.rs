//! The query API's routes (see `crate::api` for the contract), on top of [`Collector`].

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::{ConfigUpdate, ErrorBody};

use super::queries::QueryError;
use super::state::Collector;
use super::timeline::{folded_text, period_now};

/// Largest body the query API takes (`PUT /api/v1/config/{job}`).
pub const MAX_QUERY_BODY_BYTES: usize = 64 * 1024;

pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job}/status", get(status))
        .route("/api/v1/jobs/{job}/history", get(history))
        .route("/api/v1/jobs/{job}/episodes", get(episodes))
        .route("/api/v1/jobs/{job}/timeline", get(timeline))
        .route("/api/v1/jobs/{job}/flame", get(flame))
        .route(
            "/api/v1/config/{job}",
            get(config_get).put(config_set).delete(config_reset),
        )
        .route("/api/v1/agents", get(agents))
        .route("/metrics", get(metrics))
        // A settings update is a few dozen bytes; past this, axum answers 413 unread.
        .layer(DefaultBodyLimit::max(MAX_QUERY_BODY_BYTES))
        .with_state(collector)
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "query failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type C = State<Arc<Collector>>;

async fn jobs(State(c): C) -> Response {
    c.jobs().await.map(Json).into_response()
}

async fn status(State(c): C, Path(job): Path<String>) -> Response {
    match c.status_json(job).await {
        Ok(json) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    since_ms: u64,
    vertex: Option<String>,
}

async fn history(State(c): C, Path(job): Path<String>, Query(q): Query<HistoryQuery>) -> Response {
    c.history(job, q.vertex, q.since_ms)
        .await
        .map(Json)
        .into_response()
}

#[derive(Deserialize)]
struct EpisodesQuery {
    #[serde(default)]
    since_ms: u64,
}

async fn episodes(
    State(c): C,
    Path(job): Path<String>,
    Query(q): Query<EpisodesQuery>,
) -> Response {
    c.episodes(job, q.since_ms).await.map(Json).into_response()
}

#[derive(Deserialize)]
struct TimelineQuery {
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    #[serde(default = "default_points")]
    points: u32,
}

fn default_points() -> u32 {
    super::timeline::DEFAULT_POINTS
}

async fn timeline(
    State(c): C,
    Path(job): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Response {
    let period = period_now(q.since_ms, q.until_ms);
    c.timeline(job, period, q.points)
        .await
        .map(Json)
        .into_response()
}

#[derive(Deserialize)]
struct FlameQuery {
    vertex: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    /// `folded` for the text flame graph tools read; JSON otherwise.
    format: Option<String>,
}

async fn flame(State(c): C, Path(job): Path<String>, Query(q): Query<FlameQuery>) -> Response {
    let folded = match q.format.as_deref() {
        None | Some("json") => false,
        Some("folded") => true,
        Some(other) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: format!("format={other:?}: use json or folded"),
                }),
            )
                .into_response()
        }
    };
    let period = period_now(q.since_ms, q.until_ms);
    let view = match c.flame(job, q.vertex, period).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if !folded {
        return Json(view).into_response();
    }
    let name = format!("bpmon-{}-{}.folded", view.job_id, view.vertex_id);
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        folded_text(&view.stacks),
    )
        .into_response()
}

async fn config_get(State(c): C, Path(job): Path<String>) -> Response {
    c.config_get(job).await.map(Json).into_response()
}

async fn config_set(State(c): C, Path(job): Path<String>, body: axum::body::Bytes) -> Response {
    let update: ConfigUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return QueryError::BadUpdate(e).into_response(),
    };
    c.config_set(job, update).await.map(Json).into_response()
}

async fn config_reset(State(c): C, Path(job): Path<String>) -> Response {
    c.config_reset(job).await.map(Json).into_response()
}

async fn agents(State(c): C) -> Response {
    c.agents().await.map(Json).into_response()
}

/// Prometheus's view (see [`super::scrape`]).
async fn metrics(State(c): C, headers: axum::http::HeaderMap) -> Response {
    super::scrape::scrape(&c, &headers).await
}
