//! What went wrong in the store, naming the database file and the operation.

use std::path::{Path, PathBuf};

/// What went wrong, naming the database file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot start the store writer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot create data directory {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} in {}: {source}", .path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{} has schema version {found}, newer than version {supported} that this bpmon-collector \
         knows: run a newer bpmon-collector, or use another data directory",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: u32,
    },
    #[error("sampling settings for scope {scope:?} refused: {reason}")]
    InvalidSettings { scope: String, reason: String },
    #[error(
        "job name {name:?} matches {} jobs, give a job id: {}",
        .candidates.len(),
        .candidates.join(", ")
    )]
    AmbiguousJob {
        name: String,
        /// `<job id> (last seen <time>)`, newest first.
        candidates: Vec<String>,
    },
    #[error("unknown job {job_id} in {}", .path.display())]
    UnknownJob { job_id: String, path: PathBuf },
    #[error("job {job_id} has no vertex with id or name {vertex:?}")]
    UnknownVertex { job_id: String, vertex: String },
    #[error("{what} = {value} does not fit SQLite's 64-bit signed integer")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Turns a rusqlite error into one that names the operation and the file.
pub(super) fn sql<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        op,
        path: path.to_path_buf(),
        source,
    }
}
