//! The collector's history: an embedded SQLite database (`bpmon.sqlite3` in the data directory)
//! that outlives restarts, so `jobs`, `status <name>` and back-pressure history still answer after
//! the collector comes back.
//!
//! It keeps:
//! - every merged window of every subtask ([`MergedWindow`](crate::merge::MergedWindow)), in
//!   `windows`;
//! - the jobs and vertices seen ([`JobRow`], [`VertexRow`]), in `jobs`;
//! - the `(agent, seq)` of every accepted report batch, so a retried batch is recognised, and the
//!   highest seq per agent, so gaps show ([`AgentSeq`]), in `agents`;
//! - the sampling settings: a default (scope [`DEFAULT_SCOPE`]) and per-job overrides, in
//!   `settings`.
//!
//! The schema and its migrations are in `schema`; deleting what is past the retention
//! in `retention`.
//!
//! The API is synchronous; the server calls it from `spawn_blocking` or a thread of its own. One
//! process writes at a time (the collector owning the data directory); readers in other processes
//! are fine, as the database runs in WAL mode. [`Store::prune`] deletes in short transactions, so a
//! pruning connection delays another connection's writes by one chunk at most.
//!
//! The schema is versioned with `PRAGMA user_version`: opening applies the migrations this build
//! knows and refuses a database written by a newer one.

mod agents;
mod jobs;
mod retention;
mod schema;
mod settings;
mod windows;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, Row};
use serde::de::IntoDeserializer;

pub use agents::AgentSeq;
pub use jobs::{JobRow, VertexRow};
pub use schema::DB_SCHEMA_VERSION;
pub use settings::SettingsRow;

use schema::{check_version, migrate, user_version};
use windows::Ids;

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "bpmon.sqlite3";
/// The scope of the default sampling settings; any other scope is a job id.
pub const DEFAULT_SCOPE: &str = "*";
/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Saves lookups per inserted window. Cleared when a transaction that may have added to it
    /// fails, and when pruning deletes subtasks.
    ids: Ids,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `bpmon.sqlite3` in `data_dir`, creating the directory too, and
    /// brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(sql("open the database", &path))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("set the busy timeout", &path))?;
        // Refuse a newer schema before anything (even the journal mode) is written.
        let found = user_version(&conn).map_err(sql("read the schema version", &path))?;
        check_version(found, &path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(sql("switch to WAL", &path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Works, but readers then block the writer; some network file systems do this.
            tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL journal mode");
        }
        // FULL: an agent deletes a batch from its spool once we acknowledge it, so an
        // acknowledged commit must survive a power loss too (NORMAL would survive only a crash
        // of the process). The cost is one fsync per commit, i.e. per batch or window.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous", &path))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("enable foreign keys", &path))?;
        if found < i64::from(DB_SCHEMA_VERSION) {
            migrate(&mut conn, &path)?;
        }
        Ok(Store {
            conn,
            path,
            ids: HashMap::new(),
        })
    }

    /// Pages the write-ahead log may grow to before a commit checkpoints it (SQLite's default
    /// is 1,000). The service leaves checkpoints to [`Store::checkpoint`] on a connection of
    /// their own, so that no agent waits for one; this bound is the safety net.
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", pages)
            .map_err(sql("set wal_autocheckpoint", &self.path))
    }

    /// Copies what the write-ahead log holds into the database, without blocking writers or
    /// readers (`PASSIVE`). Returns the log's size and the pages copied, in pages.
    pub fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(sql("checkpoint the write-ahead log", &self.path))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A trivial query: the database answers (the service's watchdog asks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(sql("answer a ping", &self.path))
    }

    /// Closes the connection, reporting what SQLite says (the last connection to close
    /// checkpoints the WAL into the database file).
    pub fn close(self) -> Result<(), StoreError> {
        let Store { conn, path, .. } = self;
        conn.close()
            .map_err(|(_, e)| sql("close the database", &path)(e))
    }
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

pub(super) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(super) fn get_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

/// A text column parsed with serde: `json` for JSON, else as a plain enum name.
pub(super) fn parse_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    i: usize,
    json: bool,
) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, Type::Text, e)
    };
    if json {
        serde_json::from_str(text).map_err(|e| bad(Box::new(e)))
    } else {
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            text.into_deserializer();
        T::deserialize(de).map_err(|e| bad(Box::new(e)))
    }
}

// The server moves the store into `spawn_blocking` or a thread of its own.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Store>();
};

#[cfg(test)]
mod tests;
