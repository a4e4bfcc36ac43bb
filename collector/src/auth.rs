//! Bearer tokens on the collector's API.
//!
//! With a token file configured, every `/api/v1/*` request (the agents' side and the query side)
//! must carry `Authorization: Bearer <token>` with one of the file's tokens; anything else is
//! answered 401 with a JSON `{"error": …}` that never repeats what was sent, and counted. Tokens
//! are compared in constant time. Without a token file there is no authentication at all (the
//! collector then listens on loopback by default, and warns when told to listen elsewhere).
//!
//! Each token has a role ([`Role`]): `agent` may post reports and plans and read the settings,
//! `reader` may read the query API, `admin` may do all and change settings. A token used
//! beyond its role gets 403, naming the role needed.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bpmon_proto::token::{self, NamedToken, Role, TokenFileError};

use crate::api::ErrorBody;

/// The paths that need a token.
pub const PROTECTED_PREFIX: &str = "/api/v1/";

/// The accepted tokens and what was refused. Shared by every request.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Vec<NamedToken>,
    missing: AtomicU64,
    wrong: AtomicU64,
    forbidden: AtomicU64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is none of the configured ones (or a malformed header).
    Wrong,
}

/// Who a request was accepted as: the token's name. Put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(pub String);

impl Auth {
    /// No tokens: every request passes.
    pub fn disabled() -> Auth {
        Auth::default()
    }

    pub fn with_tokens(tokens: Vec<NamedToken>) -> Auth {
        Auth {
            tokens,
            ..Auth::default()
        }
    }

    /// The tokens of a collector's token file (several, one per line, optionally `name:token`).
    pub fn from_file(path: &Path) -> Result<Auth, TokenFileError> {
        let (mode, text) = read_token_file(path)?;
        Ok(Auth::with_tokens(token::token_list(path, mode, &text)?))
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// How many tokens are accepted.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Requests refused with 401 so far, for any reason (for the metrics endpoint).
    pub fn unauthorized_total(&self) -> u64 {
        self.unauthorized_missing() + self.unauthorized_wrong()
    }

    /// Requests refused because they carried no bearer token.
    pub fn unauthorized_missing(&self) -> u64 {
        self.missing.load(Ordering::Relaxed)
    }

    /// Requests refused because their token is not one of ours.
    pub fn unauthorized_wrong(&self) -> u64 {
        self.wrong.load(Ordering::Relaxed)
    }

    /// Requests refused with 403: a valid token used beyond its role.
    pub fn forbidden_total(&self) -> u64 {
        self.forbidden.load(Ordering::Relaxed)
    }

    /// Checks an `Authorization` header. `Ok(None)` when authentication is off, else the token
    /// that matched. Every configured token is compared, in constant time each, so the
    /// time taken does not say which token (or which prefix of one) was close.
    pub fn check(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Option<&NamedToken>, Refusal> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let Some(value) = authorization else {
            return Err(Refusal::Missing);
        };
        let Some(presented) = bearer(value.as_bytes()) else {
            return Err(Refusal::Missing);
        };
        let mut matched = None;
        for t in &self.tokens {
            if token::constant_time_eq(t.secret().as_bytes(), presented) && matched.is_none() {
                matched = Some(t);
            }
        }
        matched.map(Some).ok_or(Refusal::Wrong)
    }

    fn count(&self, refusal: Refusal) -> u64 {
        let counter = match refusal {
            Refusal::Missing => &self.missing,
            Refusal::Wrong => &self.wrong,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.unauthorized_total()
    }
}

/// The role a request needs: agents' routes, changes to settings, and reading.
pub fn role_needed(method: &Method, path: &str) -> Role {
    match (method, path) {
        (&Method::POST, "/api/v1/reports" | "/api/v1/plan")
        | (&Method::GET, "/api/v1/settings") => Role::Agent,
        (&Method::GET | &Method::HEAD, _) => Role::Reader,
        _ => Role::Admin,
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    // At least one separating space, and something after it.
    (token.len() < rest.len() && !token.is_empty()).then(|| token.trim_ascii_end())
}

pub use bpmon_http::{read_client_token, read_token_file};

/// Puts every `/api/v1/*` route of `router` behind the token check (a no-op without tokens).
pub fn protect(router: Router, auth: Arc<Auth>) -> Router {
    if !auth.enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(auth, require_token))
}

async fn require_token(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(PROTECTED_PREFIX) {
        return next.run(req).await;
    }
    match auth.check(req.headers().get(header::AUTHORIZATION)) {
        Ok(Some(t)) if !t.role.allows(role_needed(req.method(), req.uri().path())) => {
            let needed = role_needed(req.method(), req.uri().path());
            let n = auth.forbidden.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(token = %t.name, role = t.role.as_str(), needed = needed.as_str(),
                    method = %req.method(), path = %req.uri().path(), refused_so_far = n,
                    "request refused: token used beyond its role");
            }
            (
                StatusCode::FORBIDDEN,
                Json(ErrorBody {
                    error: format!(
                        "token '{}' has role {}; {} {} needs {} (or admin)",
                        t.name,
                        t.role.as_str(),
                        req.method(),
                        req.uri().path(),
                        needed.as_str()
                    ),
                }),
            )
                .into_response()
        }
        Ok(token) => {
            if let Some(t) = token {
                req.extensions_mut().insert(TokenName(t.name.clone()));
            }
            next.run(req).await
        }
        Err(refusal) => {
            let total = auth.count(refusal);
            let (message, challenge) = match refusal {
                Refusal::Missing => (
                    "this collector requires a bearer token (Authorization: Bearer <token>)",
                    "Bearer realm=\"bpmon\"",
                ),
                Refusal::Wrong => (
                    "the bearer token is not one this collector accepts",
                    "Bearer realm=\"bpmon\", error=\"invalid_token\"",
                ),
            };
            // Logged at 1, 2, 4, 8… refusals: a flood of bad requests cannot flood the log.
            if total.is_power_of_two() {
                tracing::warn!(
                    method = %req.method(),
                    path = %req.uri().path(),
                    reason = ?refusal,
                    refused_so_far = total,
                    "request refused: no valid bearer token"
                );
            }
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(ErrorBody {
                    error: message.to_string(),
                }),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::with_tokens(vec![
            NamedToken::new("agent-a", "aaaa1111"),
            NamedToken::new("cli", "cccc3333"),
        ])
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn tokens_are_checked_and_refusals_counted() {
        let a = auth();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        let name = |r: Result<Option<&NamedToken>, Refusal>| r.map(|t| t.map(|t| t.name.clone()));
        assert_eq!(
            name(a.check(Some(&h("Bearer cccc3333")))),
            Ok(Some("cli".into()))
        );
        assert_eq!(
            name(a.check(Some(&h("Bearer aaaa1111")))),
            Ok(Some("agent-a".into()))
        );
        assert_eq!(a.check(Some(&h("Bearer aaaa111"))), Err(Refusal::Wrong));
        assert_eq!(a.check(Some(&h("Basic aaaa1111"))), Err(Refusal::Missing));
        assert_eq!(a.check(None), Err(Refusal::Missing));
        assert_eq!(a.count(Refusal::Wrong), 1);
        assert_eq!(a.count(Refusal::Missing), 2);
        assert_eq!((a.unauthorized_missing(), a.unauthorized_wrong()), (1, 1));
        assert_eq!(Auth::disabled().check(None), Ok(None));
        assert_eq!(role_needed(&Method::POST, "/api/v1/reports"), Role::Agent);
        assert_eq!(role_needed(&Method::GET, "/api/v1/settings"), Role::Agent);
        assert_eq!(
            role_needed(&Method::GET, "/api/v1/jobs/x/status"),
            Role::Reader
        );
        assert_eq!(role_needed(&Method::PUT, "/api/v1/config/x"), Role::Admin);
        assert_eq!(
            role_needed(&Method::DELETE, "/api/v1/config/x"),
            Role::Admin
        );
        assert!(!Auth::disabled().enabled());
    }
}
