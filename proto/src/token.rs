//! Bearer token files, shared by the collector (which accepts a list of tokens) and its clients,
//! the agent and the CLI (which send one).
//!
//! Parsing only (this crate does no I/O): the caller reads the file and its mode.
//!
//! The format: one token per line, optionally named (`name:token`) and given a role
//! (`name@role:token`, role `agent`, `reader` or `admin`; without one, `admin`, which may do
//! everything, as every token could before roles existed); blank lines and lines starting
//! with `#` are ignored. A token is visible ASCII without spaces (what an `Authorization: Bearer`
//! header can carry). A file that every user may read (`mode & 0o004`) is refused: a token is a
//! password.

use std::fmt;
use std::path::{Path, PathBuf};

/// What a token may do at the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Post reports and plan requests, read the sampling settings: what an agent does.
    Agent,
    /// Read jobs, status, history, config and agents: what the CLI and dashboards do.
    Reader,
    /// Everything, changing sampling settings included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

/// One accepted token and the name it goes by in logs (never the token itself).
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// `name` of a `name:token` line, else `line N`.
    pub name: String,
    pub role: Role,
    secret: String,
}

impl NamedToken {
    /// An admin token.
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> NamedToken {
        NamedToken::with_role(name, Role::Admin, secret)
    }

    pub fn with_role(name: impl Into<String>, role: Role, secret: impl Into<String>) -> NamedToken {
        NamedToken {
            name: name.into(),
            role,
            secret: secret.into(),
        }
    }

    /// The token itself.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// Never prints the secret.
impl fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug)]
pub enum TokenFileError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    WorldReadable {
        path: PathBuf,
        mode: u32,
    },
    Empty {
        path: PathBuf,
    },
    BadLine {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    MoreThanOne {
        path: PathBuf,
        count: usize,
    },
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::Read { path, source } => {
                write!(f, "cannot read token file {}: {source}", path.display())
            }
            TokenFileError::WorldReadable { path, mode } => write!(
                f,
                "refusing token file {}: it is readable by every user (mode {:04o}); \
                 make it private, e.g. `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
            TokenFileError::Empty { path } => {
                write!(f, "token file {} holds no token", path.display())
            }
            TokenFileError::BadLine { path, line, reason } => {
                write!(f, "token file {} line {line}: {reason}", path.display())
            }
            TokenFileError::MoreThanOne { path, count } => write!(
                f,
                "token file {} holds {count} tokens; a client sends one",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokenFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenFileError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Every token of a collector's token file, in file order, from the file's mode and text (read
/// by the caller: this crate does no I/O). Refuses a world-readable file and an empty one.
pub fn token_list(path: &Path, mode: u32, text: &str) -> Result<Vec<NamedToken>, TokenFileError> {
    if mode & 0o004 != 0 {
        return Err(TokenFileError::WorldReadable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let tokens = parse_token_list(text).map_err(|(line, reason)| TokenFileError::BadLine {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    if tokens.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(tokens)
}

/// The one token of a client's token file (a `name:` prefix is allowed and dropped, so a
/// collector's file of a single named token works too).
pub fn single_token(path: &Path, mode: u32, text: &str) -> Result<String, TokenFileError> {
    let mut tokens = token_list(path, mode, text)?;
    if tokens.len() > 1 {
        return Err(TokenFileError::MoreThanOne {
            path: path.to_path_buf(),
            count: tokens.len(),
        });
    }
    Ok(tokens.remove(0).secret)
}

/// Parses the file's text; an error names the (1-based) line and what is wrong with it.
pub fn parse_token_list(text: &str) -> Result<Vec<NamedToken>, (usize, &'static str)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, role, secret) = match line.split_once(':') {
            Some((head, secret)) => {
                let (name, role) = match head.trim().split_once('@') {
                    Some((name, role)) => (
                        name.trim(),
                        match role.trim() {
                            "agent" => Role::Agent,
                            "reader" => Role::Reader,
                            "admin" => Role::Admin,
                            _ => {
                                return Err((n, "unknown role after '@' (agent, reader or admin)"))
                            }
                        },
                    ),
                    None => (head.trim(), Role::Admin),
                };
                if name.is_empty() {
                    return Err((n, "empty name before ':'"));
                }
                (name.to_string(), role, secret.trim())
            }
            None => (format!("line {n}"), Role::Admin, line),
        };
        if secret.is_empty() {
            return Err((n, "empty token"));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                n,
                "a token must be visible ASCII without spaces (e.g. `openssl rand -hex 32`)",
            ));
        }
        out.push(NamedToken {
            name,
            role,
            secret: secret.to_string(),
        });
    }
    Ok(out)
}

/// Compares two secrets in time that depends on their lengths only, never on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_after_the_name() {
        let t =
            parse_token_list("tm-1@agent: a1\ncli@reader:r1\nops@admin: x1\nold: o1\n").unwrap();
        let roles: Vec<Role> = t.iter().map(|t| t.role).collect();
        assert_eq!(roles, [Role::Agent, Role::Reader, Role::Admin, Role::Admin]);
        assert_eq!((t[0].name.as_str(), t[0].secret()), ("tm-1", "a1"));
        assert_eq!(parse_token_list("x@root: s").unwrap_err().0, 1);
        assert!(Role::Admin.allows(Role::Agent) && Role::Admin.allows(Role::Reader));
        assert!(!Role::Agent.allows(Role::Reader) && !Role::Reader.allows(Role::Admin));
        assert!(!Role::Reader.allows(Role::Agent));
    }

    #[test]
    fn named_unnamed_comments_and_blank_lines() {
        let t = parse_token_list("# agents\n\nagent-a: s3cret\nshared-token\n  # x\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].name.as_str(), t[0].secret()), ("agent-a", "s3cret"));
        assert_eq!(
            (t[1].name.as_str(), t[1].secret()),
            ("line 4", "shared-token")
        );
        assert!(!format!("{:?}", t[0]).contains("s3cret"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(parse_token_list("a:\n").unwrap_err().0, 1);
        assert_eq!(parse_token_list("ok\n:tok\n").unwrap_err().0, 2);
        assert_eq!(parse_token_list("two words\n").unwrap_err().0, 1);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn world_readable_files_are_refused_private_ones_read() {
        let p = Path::new("/etc/bpmon/token");
        let e = single_token(p, 0o100644, "name:tok\n").unwrap_err();
        assert!(matches!(e, TokenFileError::WorldReadable { .. }), "{e}");
        assert!(e.to_string().contains("0644"), "{e}");
        assert!(e.to_string().contains("chmod 600 /etc/bpmon/token"), "{e}");
        assert_eq!(single_token(p, 0o100640, "name:tok\n").unwrap(), "tok");
        assert!(matches!(
            single_token(p, 0o600, "a:1\nb:2\n"),
            Err(TokenFileError::MoreThanOne { count: 2, .. })
        ));
        assert_eq!(token_list(p, 0o600, "a:1\nb:2\n").unwrap().len(), 2);
        assert!(matches!(
            token_list(p, 0o600, "# nothing\n"),
            Err(TokenFileError::Empty { .. })
        ));
    }
}
