//! The agent options string: what follows `=` in `-agentpath:/path/libbpmon_jvmti.so=<options>`,
//! or the argument of the attach `load` command (`jcmd <pid> JVMTI.agent_load <lib> <options>`).
//!
//! Comma-separated `key=value` pairs. Keys:
//!
//! | key | meaning |
//! | --- | --- |
//! | `socket` (required) | absolute path of the UNIX socket to listen on, at most 107 bytes; it cannot contain `,` |
//!
//! Anything else (an unknown or repeated key, a pair without `=`) is refused, so that a typo
//! never starts a sampler the operator did not ask for.

use std::path::PathBuf;

/// Longest socket path: `sun_path` is 108 bytes, with the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub socket: PathBuf,
}

/// Why an options string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("missing option socket=/absolute/path (options were {0:?})")]
    MissingSocket(String),
    #[error("unknown option {0:?} (the only option is socket=/absolute/path)")]
    UnknownKey(String),
    #[error("option {0:?} given twice")]
    Repeated(String),
    #[error("option {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("socket path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("socket path {path:?} is {len} bytes long; a UNIX socket path has at most {MAX_SOCKET_PATH}")]
    TooLong { path: String, len: usize },
    #[error("socket path contains a NUL byte")]
    Nul,
}

impl Options {
    /// Parses an options string; `None` (no `=` after the library) is the empty string.
    pub fn parse(text: Option<&str>) -> Result<Options, OptionsError> {
        let text = text.unwrap_or("").trim();
        let mut socket: Option<PathBuf> = None;
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| OptionsError::NotKeyValue(pair.to_string()))?;
            match key.trim() {
                "socket" => {
                    if socket.is_some() {
                        return Err(OptionsError::Repeated("socket".into()));
                    }
                    socket = Some(check_socket_path(value.trim())?);
                }
                other => return Err(OptionsError::UnknownKey(other.to_string())),
            }
        }
        let socket = socket.ok_or_else(|| OptionsError::MissingSocket(text.to_string()))?;
        Ok(Options { socket })
    }
}

fn check_socket_path(path: &str) -> Result<PathBuf, OptionsError> {
    if path.contains('\0') {
        return Err(OptionsError::Nul);
    }
    if !path.starts_with('/') {
        return Err(OptionsError::NotAbsolute(path.to_string()));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(OptionsError::TooLong {
            path: path.to_string(),
            len: path.len(),
        });
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_required_and_absolute() {
        assert_eq!(
            Options::parse(Some("socket=/run/bpmon/tm.sock")).unwrap(),
            Options {
                socket: "/run/bpmon/tm.sock".into()
            }
        );
        assert_eq!(
            Options::parse(Some(" socket = /tmp/x.sock ,"))
                .unwrap()
                .socket,
            PathBuf::from("/tmp/x.sock")
        );
        assert!(matches!(
            Options::parse(None),
            Err(OptionsError::MissingSocket(_))
        ));
        assert!(matches!(
            Options::parse(Some("")),
            Err(OptionsError::MissingSocket(_))
        ));
        assert_eq!(
            Options::parse(Some("socket=relative.sock")),
            Err(OptionsError::NotAbsolute("relative.sock".into()))
        );
        assert_eq!(
            Options::parse(Some("socket=")),
            Err(OptionsError::NotAbsolute("".into()))
        );
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(
            Options::parse(Some("socket=/tmp/a,verbose=1")),
            Err(OptionsError::UnknownKey("verbose".into()))
        );
        assert_eq!(
            Options::parse(Some("sockt=/tmp/a")),
            Err(OptionsError::UnknownKey("sockt".into()))
        );
        assert_eq!(
            Options::parse(Some("socket=/tmp/a,socket=/tmp/b")),
            Err(OptionsError::Repeated("socket".into()))
        );
        assert_eq!(
            Options::parse(Some("/tmp/a")),
            Err(OptionsError::NotKeyValue("/tmp/a".into()))
        );
        let long = format!("socket=/{}", "x".repeat(MAX_SOCKET_PATH));
        assert!(matches!(
            Options::parse(Some(&long)),
            Err(OptionsError::TooLong { len: 108, .. })
        ));
        let just_fits = format!("socket=/{}", "x".repeat(MAX_SOCKET_PATH - 1));
        assert!(Options::parse(Some(&just_fits)).is_ok());
    }

    #[test]
    fn messages_say_what_to_write() {
        let e = Options::parse(Some("port=7")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option \"port\" (the only option is socket=/absolute/path)"
        );
        let e = Options::parse(None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing option socket=/absolute/path (options were \"\")"
        );
    }
}
