//! How the agent reaches the collector: the bearer token it sends (`[collector] token_file`,
//! `--token-file`) and the CA it trusts for an `https://` collector (`ca_file`, `--ca-file`).
//! Shared by the shipper and the plan requests, so both always carry the same credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bpmon_proto::token::TokenFileError;
use thiserror::Error;

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The one token of a token file; refuses a file every user may read.
    pub fn from_file(path: &Path) -> Result<Token, TokenFileError> {
        bpmon_http::read_client_token(path).map(Token)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token to send and the CA to trust; the default is neither.
#[derive(Debug, Clone, Default)]
pub struct CollectorAccess {
    pub token: Option<Token>,
    /// PEM certificates to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum AccessError {
    #[error(transparent)]
    Ca(#[from] bpmon_http::CaError),
    #[error(transparent)]
    Token(#[from] bpmon_http::TokenNotAHeader),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// An HTTP client for the collector: `timeout` per request, the token on every request (as a
/// sensitive header), the CA file's certificates trusted.
pub fn client(timeout: Duration, access: &CollectorAccess) -> Result<reqwest::Client, AccessError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("bpmon-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(Token(secret)) = &access.token {
        builder = builder.default_headers(bpmon_http::bearer_headers(secret)?);
    }
    if let Some(path) = &access.ca_file {
        for c in bpmon_http::ca_certificates(path)? {
            builder = builder.add_root_certificate(c);
        }
    }
    builder.build().map_err(AccessError::Client)
}

/// Whether an HTTP status says the collector refused our credentials (a configuration problem,
/// not the batch's).
pub fn is_auth_refusal(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN
}

/// What to tell the operator when the collector refuses our credentials.
pub fn auth_refusal_hint(access: &CollectorAccess) -> &'static str {
    if access.token.is_some() {
        "the collector does not accept the agent's token: check [collector] token_file \
         (--token-file) against the collector's token_file"
    } else {
        "the collector requires a token: set [collector] token_file (--token-file)"
    }
}

/// A request that failed in TLS (most often: the collector's certificate is not trusted), in
/// words that say what to do; `None` for other failures.
pub fn tls_advice(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    bpmon_http::tls_failure(e).map(|cause| {
        format!(
            "TLS with the collector failed: {cause} (a private CA? set [collector] ca_file or \
             --ca-file)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_never_shows_in_debug() {
        let a = CollectorAccess {
            token: Some(Token::new("s3cret")),
            ca_file: None,
        };
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn token_files_are_read_and_world_readable_ones_refused() {
        let dir = std::env::temp_dir().join(format!("bpmon-agent-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "# the agents' token\nagents:abc123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = Token::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("readable by every user"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Token::from_file(&path).unwrap(), Token::new("abc123"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_ca_file_is_an_error() {
        let access = CollectorAccess {
            token: None,
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
        };
        let e = client(Duration::from_secs(1), &access).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
