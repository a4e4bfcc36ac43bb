//! The open database: one SQLite connection in WAL mode, its schema brought up to date when it
//! opens, and what every connection offers (checkpoints, a ping, closing).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::error::{sql, StoreError};
use super::schema::{check_version, migrate, user_version, DB_SCHEMA_VERSION};

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "bpmon.sqlite3";
/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A job's key and its subtasks' ids by vertex id and subtask index (nested so that lookups
/// borrow `&str`).
#[derive(Debug)]
pub(super) struct JobIds {
    pub(super) key: i64,
    pub(super) subtasks: HashMap<String, HashMap<u32, i64>>,
}

pub(super) type Ids = HashMap<String, JobIds>;

/// The open database.
pub struct Store {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// Saves lookups per inserted window. Cleared when a transaction that may have added to it
    /// fails, and when pruning deletes subtasks.
    pub(super) ids: Ids,
    /// Folded stack → its id in `stacks`, as [`ids`](Self::ids) (emptied when it grows past
    /// a bound, and when pruning deletes stacks).
    pub(super) stack_ids: HashMap<String, super::stacks::CachedStack>,
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
            stack_ids: HashMap::new(),
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

// The server moves the store into `spawn_blocking` or a thread of its own.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Store>();
};
