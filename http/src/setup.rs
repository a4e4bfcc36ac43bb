//! Setting a client up: the token from its file, sent on every request as a bearer token marked
//! sensitive so that it is never logged, and the certificates of a private CA to trust besides
//! the public roots.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bpmon_proto::token::{self, TokenFileError};

/// The token cannot be sent in an HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token cannot be sent in an HTTP header (it must be visible ASCII)")]
pub struct TokenNotAHeader;

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA certificate {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
}

/// Reads a token file's permission bits (from the open file: the bits of what is read) and its
/// text, which is left unread when every user may read the file: the parsers of
/// [`bpmon_proto::token`] refuse such a file by its mode. The collector's token list and every
/// client's single token are read here.
pub fn read_token_file(path: &Path) -> Result<(u32, String), TokenFileError> {
    let read_err = |source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    let mut text = String::new();
    if mode & 0o004 == 0 {
        file.read_to_string(&mut text).map_err(read_err)?;
    }
    Ok((mode, text))
}

/// A client's single token from its token file (the agent's and the CLI's).
pub fn read_client_token(path: &Path) -> Result<String, TokenFileError> {
    let (mode, text) = read_token_file(path)?;
    token::single_token(path, mode, &text)
}

/// Default headers carrying `Authorization: Bearer <token>`, marked sensitive (never logged).
pub fn bearer_headers(token: &str) -> Result<reqwest::header::HeaderMap, TokenNotAHeader> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| TokenNotAHeader)?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// The PEM certificates of a CA file (at least one).
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| CaError::Bad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(CaError::Bad {
            path: path.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_is_sensitive_and_a_bad_token_is_refused() {
        let h = bearer_headers("abc").unwrap();
        let v = &h[reqwest::header::AUTHORIZATION];
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer abc");
        assert_eq!(bearer_headers("a\nb"), Err(TokenNotAHeader));
    }

    #[test]
    fn a_ca_file_without_certificates_or_absent_is_an_error() {
        let dir = std::env::temp_dir().join(format!("bpmon-http-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = ca_certificates(&empty).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = ca_certificates(&dir.join("absent.pem")).unwrap_err();
        assert!(matches!(e, CaError::Read { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
