//! The agent's one client of the collector: every request the agent makes goes through
//! [`CollectorClient`], so every one carries the same credentials ([`super::access`]), the same
//! time limit, and fails in the same words.
//!
//! | request | what | who asks |
//! | --- | --- | --- |
//! | `POST /api/v1/reports` | a spooled report batch (gzip JSON) | the shipper |
//! | `POST /api/v1/plan` | the JVMs found → their task threads' settings | the supervisor |
//!
//! The per-job sampling settings come with the plan: the agent asks for nothing else.

use std::time::Duration;

use bpmon_proto::{AgentPlan, PlanRequest};
use reqwest::StatusCode;
use thiserror::Error;

use super::access::{self, AccessError, CollectorAccess};

/// Why a request to the collector gave nothing usable.
#[derive(Debug, Error)]
pub enum RequestError {
    /// No answer at all: cannot connect, timed out, TLS failed.
    #[error("POST {url}: {reason}")]
    NoAnswer { url: String, reason: String },
    /// An answer with an error status; `hint` says what to do when it refused our credentials.
    #[error("POST {url}: HTTP {status}: {body}{hint}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
        hint: String,
    },
    /// A success status whose body is not the plan.
    #[error("POST {url}: not a plan: {source}")]
    NotAPlan {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What the collector answered to a report batch, for the shipper to judge.
#[derive(Debug)]
pub struct BatchAnswer {
    pub status: StatusCode,
    /// The body, as sent (untrimmed).
    pub body: String,
}

/// The agent's HTTP client of one collector. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct CollectorClient {
    http: reqwest::Client,
    access: CollectorAccess,
    reports_url: String,
    plan_url: String,
}

impl CollectorClient {
    /// A client of the collector at `collector_url` (its base URL): `timeout` per request,
    /// `access`'s token on every request, its CA trusted.
    pub fn new(
        collector_url: &str,
        timeout: Duration,
        access: CollectorAccess,
    ) -> Result<CollectorClient, AccessError> {
        let base = collector_url.trim_end_matches('/');
        Ok(CollectorClient {
            http: access::client(timeout, &access)?,
            access,
            reports_url: format!("{base}/api/v1/reports"),
            plan_url: format!("{base}/api/v1/plan"),
        })
    }

    /// Sends one report batch (`body`: gzip-compressed JSON). Any answer is returned, whatever
    /// its status; only a request that got no answer is an error.
    pub async fn send_batch(&self, body: Vec<u8>) -> Result<BatchAnswer, RequestError> {
        let resp = self
            .http
            .post(&self.reports_url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .map_err(|e| self.no_answer(&self.reports_url, &e))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Ok(BatchAnswer { status, body })
    }

    /// Asks for the sampling plan of the JVMs in `request`.
    pub async fn fetch_plan(&self, request: &PlanRequest) -> Result<AgentPlan, RequestError> {
        let resp = self
            .http
            .post(&self.plan_url)
            .json(request)
            .send()
            .await
            .map_err(|e| self.no_answer(&self.plan_url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(self.status_error(&self.plan_url, status, &body));
        }
        resp.json::<AgentPlan>()
            .await
            .map_err(|source| RequestError::NotAPlan {
                url: self.plan_url.clone(),
                source,
            })
    }

    /// An error status of a batch answer, with what to do when it refused our credentials.
    pub fn batch_refusal(&self, answer: &BatchAnswer) -> RequestError {
        self.status_error(&self.reports_url, answer.status, &answer.body)
    }

    fn status_error(&self, url: &str, status: StatusCode, body: &str) -> RequestError {
        let hint = if access::is_auth_refusal(status) {
            format!(": {}", access::auth_refusal_hint(&self.access))
        } else {
            String::new()
        };
        RequestError::Status {
            url: url.to_string(),
            status,
            body: body.trim().to_string(),
            hint,
        }
    }

    fn no_answer(&self, url: &str, e: &reqwest::Error) -> RequestError {
        RequestError::NoAnswer {
            url: url.to_string(),
            reason: describe(e),
        }
    }
}

/// A request that got no answer, in a few words: reqwest's own message leaves out the cause.
fn describe(e: &reqwest::Error) -> String {
    if let Some(tls) = access::tls_advice(e) {
        tls
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect (collector down?)".into()
    } else {
        bpmon_http::error_chain(e)
    }
}
