//! The collector's history: an embedded SQLite database (`bpmon.sqlite3` in the data directory)
//! that outlives restarts, so `jobs`, `status <name>` and back-pressure history still answer after
//! the collector comes back.
//!
//! It keeps:
//! - every merged window of every subtask ([`WindowRow`]);
//! - the jobs and vertices seen ([`JobRow`], [`VertexRow`]);
//! - the `(agent, seq)` of every accepted report batch, so a retried batch is recognised, and the
//!   highest seq per agent, so gaps show ([`AgentSeq`]);
//! - the sampling settings: a default (scope [`DEFAULT_SCOPE`]) and per-job overrides.
//!
//! The API is synchronous; the server calls it from `spawn_blocking` or a thread of its own. One
//! process writes at a time (the collector owning the data directory); readers in other processes
//! are fine, as the database runs in WAL mode. [`Store::prune`] deletes in short transactions, so a
//! pruning connection delays another connection's writes by one chunk at most.
//!
//! The schema is versioned with `PRAGMA user_version`: opening applies the migrations this build
//! knows and refuses a database written by a newer one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bpmon_proto::{FrameCount, Level, SamplingSettings};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};

use crate::mapping::SubtaskRef;
use crate::merge::{MergedSubtask, SplitRule};
use crate::model::SubtaskMetrics;

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "bpmon.sqlite3";
/// The scope of the default sampling settings; any other scope is a job id.
pub const DEFAULT_SCOPE: &str = "*";
/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows one pruning transaction deletes: small enough that it holds the write lock only for
/// milliseconds.
const PRUNE_CHUNK: usize = 5_000;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: never edit one that
/// has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE jobs (
        job_id       TEXT NOT NULL PRIMARY KEY,
        name         TEXT NOT NULL,
        flink_url    TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_by_name ON jobs (name);

    CREATE TABLE vertices (
        job_id      TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        vertex_id   TEXT NOT NULL,
        -- Order as given (topological when Flink's plan allows), for display.
        position    INTEGER NOT NULL,
        name        TEXT NOT NULL,
        parallelism INTEGER NOT NULL,
        PRIMARY KEY (job_id, vertex_id)
    ) WITHOUT ROWID;

    -- Each job and subtask once, so a window names them with small integers instead of
    -- repeating two 32-hex ids (in the row and in its index entries). Windows do not declare
    -- them as foreign keys: deleting a subtask would then search all windows for its id.
    CREATE TABLE job_keys (
        id     INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE
    );
    CREATE TABLE subtasks (
        id              INTEGER PRIMARY KEY,
        job_key         INTEGER NOT NULL REFERENCES job_keys (id),
        vertex_id       TEXT NOT NULL,
        subtask         INTEGER NOT NULL,
        -- The newest window stored (start, attempt): latest_windows reads these instead of
        -- searching each subtask's history.
        latest_start_ms INTEGER,
        latest_attempt  INTEGER,
        UNIQUE (job_key, vertex_id, subtask)
    );

    CREATE TABLE windows (
        job_key         INTEGER NOT NULL,
        subtask_id      INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        window_start_ms INTEGER NOT NULL,
        window_end_ms   INTEGER NOT NULL,
        taskmanager_id  TEXT,
        host            TEXT,
        samples         INTEGER NOT NULL,
        blocked         INTEGER NOT NULL,
        soft            INTEGER NOT NULL,
        idle            INTEGER NOT NULL,
        busy            INTEGER NOT NULL,
        ratio           REAL,
        level           TEXT CHECK (level IN ('ok', 'low', 'high')),
        split           TEXT NOT NULL,
        metrics         TEXT NOT NULL,
        top_frames      TEXT NOT NULL
    );
    -- Job, then time: a merge round of a job adds to the end of the job's range, touching a few
    -- pages, where a subtask-first index would dirty a page per subtask in every transaction
    -- (measured: 150k rows/s against under 50k once the database had 500k windows). Unique, so
    -- storing a window again replaces it. Serves history and latest_windows.
    CREATE UNIQUE INDEX windows_by_job ON windows (job_key, window_start_ms, subtask_id, attempt);
    -- For retention.
    CREATE INDEX windows_by_time ON windows (window_start_ms);

    CREATE TABLE batches (
        agent_id       TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        PRIMARY KEY (agent_id, seq)
    );
    CREATE INDEX batches_by_time ON batches (received_at_ms);

    -- Outlives the pruned batch records, so gaps are still noticed.
    CREATE TABLE agents (
        agent_id      TEXT NOT NULL PRIMARY KEY,
        highest_seq   INTEGER NOT NULL,
        last_batch_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE settings (
        scope         TEXT NOT NULL PRIMARY KEY,
        samples       INTEGER NOT NULL,
        delay_ms      INTEGER NOT NULL,
        interval_ms   INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
];

/// The schema version this build writes.
pub const DB_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

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

/// One merged window of one subtask, as stored and as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask: u32,
    pub attempt: u32,
    /// ms since the Unix epoch.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub taskmanager_id: Option<String>,
    pub host: Option<String>,
    pub samples: u32,
    pub blocked: u32,
    pub soft: u32,
    pub idle: u32,
    pub busy: u32,
    /// `(blocked + soft) / samples`; `None` without samples.
    pub ratio: Option<f64>,
    /// `None` without samples.
    pub level: Option<Level>,
    pub split: SplitRule,
    /// The subtask's metrics the window was merged with.
    pub metrics: SubtaskMetrics,
    pub top_frames: Vec<FrameCount>,
}

impl WindowRow {
    /// A row for `merged`, without TaskManager and host (set them on the result when known).
    pub fn new(
        at: &SubtaskRef,
        window_start_ms: u64,
        window_end_ms: u64,
        merged: &MergedSubtask,
        metrics: SubtaskMetrics,
        top_frames: Vec<FrameCount>,
    ) -> WindowRow {
        WindowRow {
            job_id: at.job_id.clone(),
            vertex_id: at.vertex_id.clone(),
            subtask: at.subtask,
            attempt: at.attempt,
            window_start_ms,
            window_end_ms,
            taskmanager_id: None,
            host: None,
            samples: merged.samples,
            blocked: merged.blocked,
            soft: merged.soft,
            idle: merged.idle,
            busy: merged.busy,
            ratio: (!merged.ratio.is_nan()).then_some(merged.ratio),
            level: merged.level,
            split: merged.split,
            metrics,
            top_frames,
        }
    }

    pub fn subtask_ref(&self) -> SubtaskRef {
        SubtaskRef {
            job_id: self.job_id.clone(),
            vertex_id: self.vertex_id.clone(),
            subtask: self.subtask,
            attempt: self.attempt,
        }
    }

    /// The merge result again (a missing ratio becomes NaN, as `merge` has it).
    pub fn merged(&self) -> MergedSubtask {
        MergedSubtask {
            samples: self.samples,
            blocked: self.blocked,
            soft: self.soft,
            idle: self.idle,
            busy: self.busy,
            ratio: self.ratio.unwrap_or(f64::NAN),
            level: self.level,
            split: self.split,
        }
    }
}

/// A job seen in a Flink cluster, with its vertices in their stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub job_id: String,
    pub name: String,
    pub flink_url: String,
    pub last_seen_ms: u64,
    pub vertices: Vec<VertexRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexRow {
    pub vertex_id: String,
    pub name: String,
    pub parallelism: u32,
}

/// The newest batch an agent delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeq {
    pub agent_id: String,
    pub highest_seq: u64,
    /// When its last new batch was recorded, ms since the Unix epoch.
    pub last_batch_ms: u64,
}

/// Sampling settings for a scope: [`DEFAULT_SCOPE`] or a job id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRow {
    pub scope: String,
    pub settings: SamplingSettings,
    pub updated_at_ms: u64,
}

/// A job's key and its subtasks' ids by vertex id and subtask index (nested so that lookups
/// borrow `&str`).
#[derive(Debug)]
struct JobIds {
    key: i64,
    subtasks: HashMap<String, HashMap<u32, i64>>,
}

type Ids = HashMap<String, JobIds>;

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

/// Columns of a [`WindowRow`], in the order [`window_from_row`] reads them.
const WINDOW_COLUMNS: &str = "k.job_id, s.vertex_id, s.subtask, w.attempt, w.window_start_ms, \
     w.window_end_ms, w.taskmanager_id, w.host, w.samples, w.blocked, w.soft, w.idle, w.busy, \
     w.ratio, w.level, w.split, w.metrics, w.top_frames";

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

    /// Stores windows in one transaction. A window stored again (same subtask, attempt and start)
    /// replaces the earlier one, so storing is idempotent.
    pub fn insert_windows(&mut self, rows: &[WindowRow]) -> Result<(), StoreError> {
        self.write_windows(None, rows).map(|_| ())
    }

    /// Records batch `(agent_id, seq)` and stores its windows in one transaction: both or
    /// neither, so a crash in between cannot make the agent's retry look like a duplicate. A
    /// batch already recorded stores nothing and returns false.
    pub fn ingest_batch(
        &mut self,
        agent_id: &str,
        seq: u64,
        rows: &[WindowRow],
    ) -> Result<bool, StoreError> {
        self.write_windows(Some((agent_id, seq, now_ms())), rows)
    }

    /// Records and stores several batches in one transaction, so that they cost one commit (one
    /// fsync) together: each as [`ingest_batch`](Self::ingest_batch) would. Returns for each
    /// whether it was new (a batch given twice is new once).
    pub fn ingest_batches(
        &mut self,
        batches: &[(&str, u64, &[WindowRow])],
    ) -> Result<Vec<bool>, StoreError> {
        let path = &self.path;
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin storing windows", path))?;
        let stored = (|| {
            let mut out = Vec::with_capacity(batches.len());
            for (agent_id, seq, rows) in batches {
                let new = insert_batch(&tx, agent_id, *seq, now, path)?;
                if new {
                    insert_rows(&tx, &mut self.ids, rows, path)?;
                }
                out.push(new);
            }
            Ok(out)
        })();
        let result = stored.and_then(|out| {
            tx.commit().map_err(sql("commit windows", path))?;
            Ok(out)
        });
        if result.is_err() {
            // The rolled-back transaction may have created ids the cache now holds.
            self.ids.clear();
        }
        result
    }

    fn write_windows(
        &mut self,
        batch: Option<(&str, u64, u64)>,
        rows: &[WindowRow],
    ) -> Result<bool, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin storing windows", path))?;
        let stored = (|| {
            if let Some((agent_id, seq, now)) = batch {
                if !insert_batch(&tx, agent_id, seq, now, path)? {
                    return Ok(false);
                }
            }
            insert_rows(&tx, &mut self.ids, rows, path)?;
            Ok(true)
        })();
        let result = stored.and_then(|new| {
            tx.commit().map_err(sql("commit windows", path))?;
            Ok(new)
        });
        if result.is_err() {
            // The rolled-back transaction may have created ids the cache now holds.
            self.ids.clear();
        }
        result
    }

    /// The newest window of each subtask of a job (any attempt), by vertex then subtask index.
    pub fn latest_windows(&self, job_id: &str) -> Result<Vec<WindowRow>, StoreError> {
        let sql_text = latest_sql();
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare_cached(&sql_text)
            .map_err(sql("read the latest windows", path))?;
        let rows = stmt
            .query_map(params![job_id], window_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("read the latest windows", path))?;
        Ok(rows)
    }

    /// A job's windows that started at or after `since_ms`, oldest first; only one vertex's when
    /// `vertex` (its id or name) is given. A vertex the job does not have is an error.
    pub fn history(
        &self,
        job_id: &str,
        vertex: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<WindowRow>, StoreError> {
        let path = &self.path;
        if let Some(vertex) = vertex {
            let known: bool = self
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM vertices
                                    WHERE job_id = ?1 AND (vertex_id = ?2 OR name = ?2))
                         OR EXISTS (SELECT 1 FROM job_keys k JOIN subtasks s ON s.job_key = k.id
                                    WHERE k.job_id = ?1 AND s.vertex_id = ?2)",
                )
                .and_then(|mut s| s.query_row(params![job_id, vertex], |r| r.get(0)))
                .map_err(sql("look up the vertex", path))?;
            if !known {
                return Err(StoreError::UnknownVertex {
                    job_id: job_id.to_owned(),
                    vertex: vertex.to_owned(),
                });
            }
        }
        let sql_text = history_sql();
        let since = to_i64("since_ms", since_ms)?;
        let mut stmt = self
            .conn
            .prepare_cached(&sql_text)
            .map_err(sql("read history", path))?;
        let rows = stmt
            .query_map(params![job_id, since, vertex], window_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("read history", path))?;
        Ok(rows)
    }

    /// Records a job, or updates its name, URL and last-seen time (which never goes back).
    pub fn upsert_job(
        &mut self,
        job_id: &str,
        name: &str,
        flink_url: &str,
        last_seen_ms: u64,
    ) -> Result<(), StoreError> {
        let seen = to_i64("last_seen_ms", last_seen_ms)?;
        self.conn
            .prepare_cached(
                "INSERT INTO jobs (job_id, name, flink_url, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job_id) DO UPDATE SET
                     name = excluded.name,
                     flink_url = excluded.flink_url,
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
            )
            .and_then(|mut s| s.execute(params![job_id, name, flink_url, seen]))
            .map_err(sql("store the job", &self.path))?;
        Ok(())
    }

    /// Replaces a job's vertices with `vertices`, keeping their order. The job must have been
    /// recorded with [`Store::upsert_job`].
    pub fn upsert_vertices(
        &mut self,
        job_id: &str,
        vertices: &[VertexRow],
    ) -> Result<(), StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin storing vertices", path))?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?1)",
                params![job_id],
                |r| r.get(0),
            )
            .map_err(sql("look up the job", path))?;
        if !exists {
            return Err(StoreError::UnknownJob {
                job_id: job_id.to_owned(),
                path: path.clone(),
            });
        }
        tx.execute("DELETE FROM vertices WHERE job_id = ?1", params![job_id])
            .map_err(sql("store vertices", path))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO vertices (job_id, vertex_id, position, name, parallelism)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (job_id, vertex_id) DO UPDATE SET
                         name = excluded.name, parallelism = excluded.parallelism",
                )
                .map_err(sql("store vertices", path))?;
            for (position, v) in vertices.iter().enumerate() {
                let position = to_i64("vertex position", position as u64)?;
                stmt.execute(params![
                    job_id,
                    v.vertex_id,
                    position,
                    v.name,
                    v.parallelism
                ])
                .map_err(sql("store vertices", path))?;
            }
        }
        tx.commit().map_err(sql("commit vertices", path))
    }

    /// Every job recorded, most recently seen first.
    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let jobs = self
            .conn
            .prepare_cached(
                "SELECT job_id, name, flink_url, last_seen_ms FROM jobs
                 ORDER BY last_seen_ms DESC, job_id",
            )
            .and_then(|mut s| {
                s.query_map([], job_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read jobs", &self.path))?;
        self.with_vertices(jobs)
    }

    /// The job with this id, else the one job with this name. `None` when neither matches; an
    /// error listing them when several jobs have the name.
    pub fn find_job(&self, id_or_name: &str) -> Result<Option<JobRow>, StoreError> {
        let path = &self.path;
        let by_id = self
            .conn
            .prepare_cached(
                "SELECT job_id, name, flink_url, last_seen_ms FROM jobs WHERE job_id = ?1",
            )
            .and_then(|mut s| s.query_row(params![id_or_name], job_from_row).optional())
            .map_err(sql("look up the job", path))?;
        if let Some(job) = by_id {
            return Ok(self.with_vertices(vec![job])?.pop());
        }
        let by_name = self
            .conn
            .prepare_cached(
                "SELECT job_id, name, flink_url, last_seen_ms FROM jobs WHERE name = ?1
                 ORDER BY last_seen_ms DESC, job_id",
            )
            .and_then(|mut s| {
                s.query_map(params![id_or_name], job_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("look up the job", path))?;
        match by_name.len() {
            0 => Ok(None),
            1 => Ok(self.with_vertices(by_name)?.pop()),
            _ => Err(StoreError::AmbiguousJob {
                name: id_or_name.to_owned(),
                candidates: by_name
                    .into_iter()
                    .map(|j| {
                        let seen = UNIX_EPOCH + Duration::from_millis(j.last_seen_ms);
                        format!(
                            "{} (last seen {})",
                            j.job_id,
                            humantime::format_rfc3339_seconds(seen)
                        )
                    })
                    .collect(),
            }),
        }
    }

    fn with_vertices(&self, mut jobs: Vec<JobRow>) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT vertex_id, name, parallelism FROM vertices WHERE job_id = ?1
                 ORDER BY position",
            )
            .map_err(sql("read vertices", &self.path))?;
        for job in &mut jobs {
            job.vertices = stmt
                .query_map(params![job.job_id], |r| {
                    Ok(VertexRow {
                        vertex_id: r.get(0)?,
                        name: r.get(1)?,
                        parallelism: r.get(2)?,
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql("read vertices", &self.path))?;
        }
        Ok(jobs)
    }

    /// Records an accepted batch; false when `(agent_id, seq)` was recorded before (a retry).
    pub fn record_batch(&mut self, agent_id: &str, seq: u64) -> Result<bool, StoreError> {
        self.record_batch_at(agent_id, seq, now_ms())
    }

    fn record_batch_at(&mut self, agent_id: &str, seq: u64, now: u64) -> Result<bool, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin recording the batch", path))?;
        let new = insert_batch(&tx, agent_id, seq, now, path)?;
        tx.commit().map_err(sql("commit the batch record", path))?;
        Ok(new)
    }

    /// The highest batch seq each agent delivered, by agent id.
    pub fn agent_seqs(&self) -> Result<Vec<AgentSeq>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT agent_id, highest_seq, last_batch_ms FROM agents ORDER BY agent_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(AgentSeq {
                        agent_id: r.get(0)?,
                        highest_seq: get_u64(r, 1)?,
                        last_batch_ms: get_u64(r, 2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read agent sequence numbers", &self.path))
    }

    /// Sets the sampling settings of `scope` ([`DEFAULT_SCOPE`] or a job id), after checking
    /// that they can be used.
    pub fn set_settings(
        &mut self,
        scope: &str,
        settings: SamplingSettings,
    ) -> Result<(), StoreError> {
        let refuse = |reason: String| StoreError::InvalidSettings {
            scope: scope.to_owned(),
            reason,
        };
        if scope.trim().is_empty() {
            return Err(refuse(format!(
                "the scope must be {DEFAULT_SCOPE:?} or a job id"
            )));
        }
        settings.validate().map_err(|e| refuse(e.to_string()))?;
        let delay = to_i64("delay_ms", settings.delay_ms)?;
        let interval = to_i64("interval_ms", settings.interval_ms)?;
        let now = to_i64("now", now_ms())?;
        self.conn
            .prepare_cached(
                "INSERT INTO settings (scope, samples, delay_ms, interval_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (scope) DO UPDATE SET
                     samples = excluded.samples, delay_ms = excluded.delay_ms,
                     interval_ms = excluded.interval_ms, updated_at_ms = excluded.updated_at_ms",
            )
            .and_then(|mut s| s.execute(params![scope, settings.samples, delay, interval, now]))
            .map_err(sql("store sampling settings", &self.path))?;
        Ok(())
    }

    /// Removes the settings of `scope`; false if it had none.
    pub fn remove_settings(&mut self, scope: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM settings WHERE scope = ?1")
            .and_then(|mut s| s.execute(params![scope]))
            .map_err(sql("remove sampling settings", &self.path))?;
        Ok(n > 0)
    }

    /// How to sample `job_id`: its override, else the stored default, else the built-in default.
    pub fn settings_for(&self, job_id: &str) -> Result<SamplingSettings, StoreError> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT scope, samples, delay_ms, interval_ms, updated_at_ms FROM settings
                 WHERE scope IN (?1, ?2)
                 ORDER BY scope = ?2
                 LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![job_id, DEFAULT_SCOPE], settings_from_row)
                    .optional()
            })
            .map_err(sql("read sampling settings", &self.path))?;
        Ok(found.map(|r| r.settings).unwrap_or_default())
    }

    /// Every stored setting: the default first, then the job overrides by job id.
    pub fn all_settings(&self) -> Result<Vec<SettingsRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT scope, samples, delay_ms, interval_ms, updated_at_ms FROM settings
                 ORDER BY scope <> ?1, scope",
            )
            .and_then(|mut s| {
                s.query_map(params![DEFAULT_SCOPE], settings_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read sampling settings", &self.path))
    }

    /// Retention: deletes windows that started before `older_than_ms`, batch records received
    /// before it, and jobs last seen before it that have no windows left. Returns how many of
    /// these rows it deleted. Works in transactions of a few thousand rows.
    pub fn prune(&mut self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.prune_in_chunks(older_than_ms, PRUNE_CHUNK)
    }

    fn prune_in_chunks(&mut self, older_than_ms: u64, chunk: usize) -> Result<usize, StoreError> {
        let cutoff = to_i64("older_than_ms", older_than_ms)?;
        let windows = self.delete_in_chunks(
            "DELETE FROM windows WHERE rowid IN (
                 SELECT rowid FROM windows WHERE window_start_ms < ?1 LIMIT ?2)",
            cutoff,
            chunk,
        )?;
        let batches = self.delete_in_chunks(
            "DELETE FROM batches WHERE rowid IN (
                 SELECT rowid FROM batches WHERE received_at_ms < ?1 LIMIT ?2)",
            cutoff,
            chunk,
        )?;
        // Subtasks and jobs are few (one row per subtask, not per window): one transaction.
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin pruning jobs", path))?;
        // A subtask whose newest window is gone has no windows left.
        tx.execute(
            "UPDATE subtasks SET latest_start_ms = NULL, latest_attempt = NULL
             WHERE latest_start_ms < ?1",
            params![cutoff],
        )
        .map_err(sql("prune subtasks", path))?;
        // Subtasks of jobs still reported keep their ids.
        let subtasks = tx
            .execute(
                "DELETE FROM subtasks
                 WHERE latest_start_ms IS NULL
                   AND job_key NOT IN (SELECT k.id FROM job_keys k JOIN jobs j USING (job_id)
                                       WHERE j.last_seen_ms >= ?1)",
                params![cutoff],
            )
            .map_err(sql("prune subtasks", path))?;
        tx.execute(
            "DELETE FROM job_keys
             WHERE NOT EXISTS (SELECT 1 FROM subtasks WHERE job_key = job_keys.id)",
            [],
        )
        .map_err(sql("prune job keys", path))?;
        let jobs = tx
            .execute(
                "DELETE FROM jobs WHERE last_seen_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM job_keys WHERE job_id = jobs.job_id)",
                params![cutoff],
            )
            .map_err(sql("prune jobs", path))?;
        // Agents silent for the whole retention: their state (and their /metrics series) goes,
        // so ids that come and go cannot pile up without bound.
        let agents = tx
            .execute(
                "DELETE FROM agents WHERE last_batch_ms < ?1",
                params![cutoff],
            )
            .map_err(sql("prune agents", path))?;
        tx.commit().map_err(sql("commit pruning jobs", path))?;
        if subtasks > 0 {
            self.ids.clear();
        }
        tracing::debug!(windows, batches, subtasks, jobs, agents, "pruned");
        Ok(windows + batches + jobs + agents)
    }

    /// Runs `delete` (which takes the cutoff and a row limit) until it deletes fewer than
    /// `chunk` rows, each run in its own transaction.
    fn delete_in_chunks(
        &mut self,
        delete: &str,
        cutoff: i64,
        chunk: usize,
    ) -> Result<usize, StoreError> {
        let chunk_i64 = to_i64("chunk", chunk as u64)?;
        let mut total = 0;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin pruning", &self.path))?;
            let n = tx
                .prepare_cached(delete)
                .and_then(|mut s| s.execute(params![cutoff, chunk_i64]))
                .map_err(sql("prune", &self.path))?;
            tx.commit().map_err(sql("commit pruning", &self.path))?;
            total += n;
            if n < chunk {
                return Ok(total);
            }
        }
    }
}

/// The newest window of each subtask of job `?1`, found from its `latest_*` columns.
fn latest_sql() -> String {
    format!(
        "SELECT {WINDOW_COLUMNS}
         FROM job_keys k
         -- CROSS JOIN fixes the loop order: SQLite would otherwise walk all of the job's
         -- windows and look up each one's subtask.
         CROSS JOIN subtasks s ON s.job_key = k.id
         CROSS JOIN windows w ON w.job_key = k.id AND w.window_start_ms = s.latest_start_ms
                             AND w.subtask_id = s.id AND w.attempt = s.latest_attempt
         LEFT JOIN vertices v ON v.job_id = k.job_id AND v.vertex_id = s.vertex_id
         WHERE k.job_id = ?1
         ORDER BY v.position IS NULL, v.position, s.vertex_id, s.subtask"
    )
}

/// Windows of job `?1` from `?2` on, of vertex `?3` (id or name) or of all when NULL.
fn history_sql() -> String {
    format!(
        "SELECT {WINDOW_COLUMNS}
         FROM job_keys k
         CROSS JOIN windows w ON w.job_key = k.id AND w.window_start_ms >= ?2
         CROSS JOIN subtasks s ON s.id = w.subtask_id
         LEFT JOIN vertices v ON v.job_id = k.job_id AND v.vertex_id = s.vertex_id
         WHERE k.job_id = ?1 AND (?3 IS NULL OR s.vertex_id = ?3 OR v.name = ?3)
         ORDER BY w.window_start_ms, v.position IS NULL, v.position, s.vertex_id,
                  s.subtask, w.attempt"
    )
}

/// Turns a rusqlite error into one that names the operation and the file.
fn sql<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn check_version(found: i64, path: &Path) -> Result<(), StoreError> {
    if found > i64::from(DB_SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: DB_SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies the migrations the database lacks, in one transaction that also holds off another
/// process migrating at the same time.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin the schema migration", path))?;
    // Read again under the lock: another process may have migrated meanwhile.
    let found = user_version(&tx).map_err(sql("read the schema version", path))?;
    check_version(found, path)?;
    let done = usize::try_from(found).unwrap_or(0);
    for (version, migration) in (1_i64..).zip(MIGRATIONS).skip(done) {
        tx.execute_batch(migration)
            .map_err(sql("migrate the schema", path))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(sql("set the schema version", path))?;
        tracing::info!(path = %path.display(), version, "database schema migrated");
    }
    tx.commit()
        .map_err(sql("commit the schema migration", path))
}

/// Inserts a batch record and raises the agent's highest seq; false when already recorded.
fn insert_batch(
    tx: &Transaction<'_>,
    agent_id: &str,
    seq: u64,
    now: u64,
    path: &Path,
) -> Result<bool, StoreError> {
    let seq = to_i64("seq", seq)?;
    let now = to_i64("now", now)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO batches (agent_id, seq, received_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent_id, seq) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![agent_id, seq, now]))
        .map_err(sql("record the batch", path))?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO agents (agent_id, highest_seq, last_batch_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_id) DO UPDATE SET
             highest_seq = max(highest_seq, excluded.highest_seq),
             last_batch_ms = excluded.last_batch_ms",
    )
    .and_then(|mut s| s.execute(params![agent_id, seq, now]))
    .map_err(sql("record the agent's seq", path))?;
    Ok(true)
}

fn insert_rows(
    tx: &Transaction<'_>,
    ids: &mut Ids,
    rows: &[WindowRow],
    path: &Path,
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO windows (job_key, subtask_id, attempt, window_start_ms,
                 window_end_ms, taskmanager_id, host, samples, blocked, soft, idle, busy, ratio,
                 level, split, metrics, top_frames)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )
        .map_err(sql("store windows", path))?;
    let mut latest = tx
        .prepare_cached(
            "UPDATE subtasks SET latest_start_ms = ?2, latest_attempt = ?3
             WHERE id = ?1
               AND (latest_start_ms IS NULL OR (?2, ?3) > (latest_start_ms, latest_attempt))",
        )
        .map_err(sql("store windows", path))?;
    for r in rows {
        let (job_key, subtask_id) = row_ids(tx, ids, r, path)?;
        let start = to_i64("window_start_ms", r.window_start_ms)?;
        let metrics = metrics_json(&r.metrics).map_err(|source| StoreError::Encode {
            what: "subtask metrics",
            source,
        })?;
        let frames = serde_json::to_string(&r.top_frames).map_err(|source| StoreError::Encode {
            what: "top frames",
            source,
        })?;
        insert
            .execute(params![
                job_key,
                subtask_id,
                r.attempt,
                start,
                to_i64("window_end_ms", r.window_end_ms)?,
                r.taskmanager_id,
                r.host,
                r.samples,
                r.blocked,
                r.soft,
                r.idle,
                r.busy,
                r.ratio.filter(|x| !x.is_nan()),
                r.level.map(Level::as_str),
                split_str(r.split),
                metrics,
                frames,
            ])
            .map_err(sql("store windows", path))?;
        latest
            .execute(params![subtask_id, start, r.attempt])
            .map_err(sql("store windows", path))?;
    }
    Ok(())
}

/// The keys of the row's job and subtask, created when new.
fn row_ids(
    tx: &Transaction<'_>,
    ids: &mut Ids,
    r: &WindowRow,
    path: &Path,
) -> Result<(i64, i64), StoreError> {
    if let Some(job) = ids.get(r.job_id.as_str()) {
        if let Some(id) = job
            .subtasks
            .get(r.vertex_id.as_str())
            .and_then(|s| s.get(&r.subtask))
        {
            return Ok((job.key, *id));
        }
    }
    let job_key = match ids.get(r.job_id.as_str()) {
        Some(job) => job.key,
        None => {
            let key = find_or_insert(
                tx,
                "SELECT id FROM job_keys WHERE job_id = ?1",
                "INSERT INTO job_keys (job_id) VALUES (?1)",
                params![r.job_id],
                path,
            )?;
            ids.insert(
                r.job_id.clone(),
                JobIds {
                    key,
                    subtasks: HashMap::new(),
                },
            );
            key
        }
    };
    let id = find_or_insert(
        tx,
        "SELECT id FROM subtasks WHERE job_key = ?1 AND vertex_id = ?2 AND subtask = ?3",
        "INSERT INTO subtasks (job_key, vertex_id, subtask) VALUES (?1, ?2, ?3)",
        params![job_key, r.vertex_id, r.subtask],
        path,
    )?;
    if let Some(job) = ids.get_mut(r.job_id.as_str()) {
        job.subtasks
            .entry(r.vertex_id.clone())
            .or_default()
            .insert(r.subtask, id);
    }
    Ok((job_key, id))
}

/// The rowid `select` finds, or that of the row `insert` (same parameters) creates.
fn find_or_insert(
    tx: &Transaction<'_>,
    select: &str,
    insert: &str,
    key: &[&dyn rusqlite::ToSql],
    path: &Path,
) -> Result<i64, StoreError> {
    let found = tx
        .prepare_cached(select)
        .and_then(|mut s| s.query_row(key, |row| row.get(0)).optional())
        .map_err(sql("look up a job or subtask key", path))?;
    match found {
        Some(id) => Ok(id),
        None => {
            tx.prepare_cached(insert)
                .and_then(|mut s| s.execute(key))
                .map_err(sql("store a job or subtask key", path))?;
            Ok(tx.last_insert_rowid())
        }
    }
}

/// The metrics as JSON without the metrics Flink did not report: they read back as `None`, and
/// most rows are smaller for it.
fn metrics_json(m: &SubtaskMetrics) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(m)?;
    if let serde_json::Value::Object(fields) = &mut v {
        fields.retain(|_, x| !x.is_null());
    }
    serde_json::to_string(&v)
}

/// As serde names the rule (checked by a test), so the column reads back through serde.
fn split_str(s: SplitRule) -> &'static str {
    match s {
        SplitRule::SoftIdleTime => "soft_idle_time",
        SplitRule::BackPressuredIdleTime => "back_pressured_idle_time",
        SplitRule::OutputExhausted => "output_exhausted",
        SplitRule::OutputAvailable => "output_available",
        SplitRule::NoMetrics => "no_metrics",
        SplitRule::NothingWaiting => "nothing_waiting",
    }
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn get_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

/// A text column parsed with serde: `json` for JSON, else as a plain enum name.
fn parse_col<T: serde::de::DeserializeOwned>(
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

fn window_from_row(r: &Row<'_>) -> rusqlite::Result<WindowRow> {
    let level = match r.get_ref(14)?.as_str_or_null()? {
        Some(_) => Some(parse_col::<Level>(r, 14, false)?),
        None => None,
    };
    Ok(WindowRow {
        job_id: r.get(0)?,
        vertex_id: r.get(1)?,
        subtask: r.get(2)?,
        attempt: r.get(3)?,
        window_start_ms: get_u64(r, 4)?,
        window_end_ms: get_u64(r, 5)?,
        taskmanager_id: r.get(6)?,
        host: r.get(7)?,
        samples: r.get(8)?,
        blocked: r.get(9)?,
        soft: r.get(10)?,
        idle: r.get(11)?,
        busy: r.get(12)?,
        ratio: r.get(13)?,
        level,
        split: parse_col(r, 15, false)?,
        metrics: parse_col(r, 16, true)?,
        top_frames: parse_col(r, 17, true)?,
    })
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        job_id: r.get(0)?,
        name: r.get(1)?,
        flink_url: r.get(2)?,
        last_seen_ms: get_u64(r, 3)?,
        vertices: Vec::new(),
    })
}

fn settings_from_row(r: &Row<'_>) -> rusqlite::Result<SettingsRow> {
    Ok(SettingsRow {
        scope: r.get(0)?,
        settings: SamplingSettings {
            samples: r.get(1)?,
            delay_ms: get_u64(r, 2)?,
            interval_ms: get_u64(r, 3)?,
        },
        updated_at_ms: get_u64(r, 4)?,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// The server moves the store into `spawn_blocking` or a thread of its own.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Store>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "bpmon-store-{name}-{}-{}-{}",
                std::process::id(),
                now_ms(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn window(job: &str, vertex: &str, subtask: u32, start_ms: u64) -> WindowRow {
        WindowRow {
            job_id: job.into(),
            vertex_id: vertex.into(),
            subtask,
            attempt: 0,
            window_start_ms: start_ms,
            window_end_ms: start_ms.saturating_add(4_950),
            taskmanager_id: Some("10.0.0.1:6122-abc123".into()),
            host: Some("10.0.0.1".into()),
            samples: 100,
            blocked: 60,
            soft: 10,
            idle: 20,
            busy: 10,
            ratio: Some(0.7),
            level: Some(Level::High),
            split: SplitRule::SoftIdleTime,
            metrics: SubtaskMetrics {
                out_pool_usage: Some(1.0),
                soft_back_pressured_ms: Some(330.0),
                idle_ms: Some(660.0),
                is_back_pressured: Some(true),
                ..Default::default()
            },
            top_frames: vec![FrameCount {
                frame: "com.example.Slow.map(Slow.java:17)".into(),
                samples: 7,
            }],
        }
    }

    fn keys(rows: &[WindowRow]) -> Vec<(String, u32, u64)> {
        rows.iter()
            .map(|r| (r.vertex_id.clone(), r.subtask, r.window_start_ms))
            .collect()
    }

    fn vertex(id: &str, name: &str, parallelism: u32) -> VertexRow {
        VertexRow {
            vertex_id: id.into(),
            name: name.into(),
            parallelism,
        }
    }

    #[test]
    fn a_retried_batch_is_recognised_and_the_highest_seq_kept() {
        let dir = TempDir::new("dedup");
        let mut store = Store::open(&dir.0).unwrap();
        assert!(store.record_batch("tm-1", 1).unwrap());
        assert!(store.record_batch("tm-1", 2).unwrap());
        assert!(
            !store.record_batch("tm-1", 2).unwrap(),
            "a retry is not new"
        );
        assert!(store.record_batch("tm-2", 2).unwrap(), "seqs are per agent");
        // A gap (3 and 4 missing), then a late batch below the highest.
        assert!(store.record_batch("tm-1", 5).unwrap());
        assert!(store.record_batch("tm-1", 3).unwrap());
        drop(store);

        let mut store = Store::open(&dir.0).unwrap();
        assert!(
            !store.record_batch("tm-1", 5).unwrap(),
            "dedup survives restarts"
        );
        let seqs = store.agent_seqs().unwrap();
        let highest: Vec<(&str, u64)> = seqs
            .iter()
            .map(|a| (a.agent_id.as_str(), a.highest_seq))
            .collect();
        assert_eq!(highest, [("tm-1", 5), ("tm-2", 2)]);
        assert!(seqs[0].last_batch_ms > 0);
    }

    #[test]
    fn a_batch_and_its_windows_are_stored_together_or_not_at_all() {
        let dir = TempDir::new("ingest");
        let mut store = Store::open(&dir.0).unwrap();
        assert!(store
            .ingest_batch("tm-1", 1, &[window("j", "v", 0, 1_000)])
            .unwrap());
        // The retry is recognised and stores nothing.
        let mut changed = window("j", "v", 0, 1_000);
        changed.blocked = 1;
        assert!(!store.ingest_batch("tm-1", 1, &[changed]).unwrap());
        assert_eq!(store.latest_windows("j").unwrap()[0].blocked, 60);

        // A window that cannot be stored fails the batch, which stays unrecorded.
        let bad = window("j", "v", 1, u64::MAX);
        let e = store
            .ingest_batch("tm-1", 2, &[window("j", "v", 2, 2_000), bad])
            .unwrap_err();
        assert!(matches!(e, StoreError::OutOfRange { .. }), "{e}");
        assert_eq!(store.latest_windows("j").unwrap().len(), 1);
        assert!(store.agent_seqs().unwrap()[0].highest_seq == 1);
        assert!(store
            .ingest_batch("tm-1", 2, &[window("j", "v", 2, 2_000)])
            .unwrap());
        assert_eq!(store.latest_windows("j").unwrap().len(), 2);
    }

    #[test]
    fn a_checkpoint_from_another_connection_empties_the_log_without_blocking_the_writer() {
        let dir = TempDir::new("checkpoint");
        let mut writer = Store::open(&dir.0).unwrap();
        writer.set_autocheckpoint(100_000).unwrap();
        let other = Store::open(&dir.0).unwrap();
        writer
            .insert_windows(&[window("j", "v", 0, 1_000)])
            .unwrap();
        let (log, copied) = other.checkpoint().unwrap();
        assert!(log > 0 && copied == log, "log {log} copied {copied}");
        // The writer goes on, and what it wrote is there.
        writer
            .insert_windows(&[window("j", "v", 1, 2_000)])
            .unwrap();
        assert_eq!(other.latest_windows("j").unwrap().len(), 2);
    }

    #[test]
    fn batches_stored_as_a_group_are_each_recorded_once() {
        let dir = TempDir::new("group");
        let mut store = Store::open(&dir.0).unwrap();
        let a = [window("j", "v", 0, 1_000)];
        let b = [window("j", "v", 1, 1_000)];
        // The same batch twice in one group (a retry that overtook its original) is new once.
        let news = store
            .ingest_batches(&[("tm-1", 1, &a), ("tm-2", 1, &b), ("tm-1", 1, &a)])
            .unwrap();
        assert_eq!(news, vec![true, true, false]);
        assert_eq!(store.latest_windows("j").unwrap().len(), 2);
        assert_eq!(
            store.ingest_batches(&[("tm-2", 1, &b)]).unwrap(),
            vec![false]
        );
        // One bad batch fails the whole group, which leaves nothing behind.
        let bad = [window("j", "v", 2, u64::MAX)];
        let c = [window("j", "v", 3, 1_000)];
        assert!(store
            .ingest_batches(&[("tm-3", 1, &c), ("tm-3", 2, &bad)])
            .is_err());
        assert_eq!(store.latest_windows("j").unwrap().len(), 2);
        assert!(store.ingest_batch("tm-3", 1, &c).unwrap());
    }

    #[test]
    fn windows_survive_close_and_reopen_unchanged() {
        let dir = TempDir::new("reopen");
        let full = window("job-a", "v1", 0, 60_000);
        let empty = WindowRow {
            samples: 0,
            blocked: 0,
            soft: 0,
            idle: 0,
            busy: 0,
            ratio: None,
            level: None,
            split: SplitRule::NothingWaiting,
            metrics: SubtaskMetrics::default(),
            top_frames: vec![],
            taskmanager_id: None,
            host: None,
            ..window("job-a", "v1", 1, 60_000)
        };
        {
            let mut store = Store::open(&dir.0).unwrap();
            store
                .insert_windows(&[full.clone(), empty.clone()])
                .unwrap();
        }
        assert!(dir.0.join(DB_FILE).is_file());
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.latest_windows("job-a").unwrap(), [full, empty]);
        let version = user_version(&store.conn).unwrap();
        assert_eq!(version, i64::from(DB_SCHEMA_VERSION));
        // Metrics Flink did not report take no room.
        let stored: String = store
            .conn
            .query_row("SELECT metrics FROM windows LIMIT 1", [], |r| r.get(0))
            .unwrap();
        assert!(stored.contains("\"out_pool_usage\":1.0"), "{stored}");
        assert!(!stored.contains("null"), "{stored}");
    }

    #[test]
    fn a_merged_subtask_round_trips_through_a_row() {
        let at = SubtaskRef {
            job_id: "j".into(),
            vertex_id: "v".into(),
            subtask: 3,
            attempt: 2,
        };
        let none = crate::merge::merge_subtask(
            &crate::merge::SampleCounts::default(),
            &SubtaskMetrics::default(),
        );
        let row = WindowRow::new(&at, 1, 2, &none, SubtaskMetrics::default(), vec![]);
        assert_eq!(row.ratio, None, "NaN is stored as NULL");
        assert!(row.merged().ratio.is_nan());
        assert_eq!(row.subtask_ref(), at);
        // Serde round trip too (NaN would not survive JSON).
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(serde_json::from_str::<WindowRow>(&json).unwrap(), row);
    }

    #[test]
    fn storing_a_window_again_replaces_it() {
        let dir = TempDir::new("replace");
        let mut store = Store::open(&dir.0).unwrap();
        store.insert_windows(&[window("j", "v", 0, 1_000)]).unwrap();
        let mut again = window("j", "v", 0, 1_000);
        again.blocked = 5;
        again.level = Some(Level::Low);
        store.insert_windows(&[again.clone()]).unwrap();
        assert_eq!(store.history("j", None, 0).unwrap(), [again]);
    }

    #[test]
    fn latest_windows_picks_the_newest_of_each_subtask() {
        let dir = TempDir::new("latest");
        let mut store = Store::open(&dir.0).unwrap();
        store.upsert_job("j", "job", "http://jm:8081", 1).unwrap();
        // v2 is listed first: the order of the vertices decides the order of the rows.
        store
            .upsert_vertices("j", &[vertex("v2", "Sink", 2), vertex("v1", "Source", 2)])
            .unwrap();
        // Out of time order, across several transactions, with another job in between.
        for start in [3_000, 5_000, 1_000] {
            store
                .insert_windows(&[
                    window("j", "v1", 0, start),
                    window("j", "v1", 1, start + 1),
                    window("other", "v1", 0, start + 10_000),
                ])
                .unwrap();
        }
        store
            .insert_windows(&[window("j", "v2", 0, 4_000), window("j", "v2", 0, 2_000)])
            .unwrap();
        store
            .insert_windows(&[window("j", "v2", 1, 2_000)])
            .unwrap();
        // A redeployed subtask: the new attempt's window is the newest.
        let mut redeployed = window("j", "v2", 1, 6_000);
        redeployed.attempt = 1;
        store.insert_windows(&[redeployed]).unwrap();

        let latest = store.latest_windows("j").unwrap();
        assert_eq!(
            keys(&latest),
            [
                ("v2".into(), 0, 4_000),
                ("v2".into(), 1, 6_000),
                ("v1".into(), 0, 5_000),
                ("v1".into(), 1, 5_001),
            ]
        );
        assert_eq!(latest[1].attempt, 1);
        assert!(store.latest_windows("nope").unwrap().is_empty());
    }

    #[test]
    fn history_filters_by_vertex_id_or_name_and_by_time() {
        let dir = TempDir::new("history");
        let mut store = Store::open(&dir.0).unwrap();
        store.upsert_job("j", "job", "http://jm:8081", 1).unwrap();
        store
            .upsert_vertices("j", &[vertex("v1", "Source", 1), vertex("v2", "Map", 1)])
            .unwrap();
        let mut rows = Vec::new();
        for start in [1_000, 2_000, 3_000] {
            rows.push(window("j", "v2", 0, start));
            rows.push(window("j", "v1", 0, start));
            rows.push(window("j2", "v1", 0, start));
        }
        // A vertex with windows but not (yet) in the vertex table.
        rows.push(window("j", "v3", 0, 2_500));
        store.insert_windows(&rows).unwrap();

        let all = store.history("j", None, 0).unwrap();
        assert_eq!(all.len(), 7);
        assert!(all.iter().all(|r| r.job_id == "j"));
        assert!(
            all.windows(2)
                .all(|w| w[0].window_start_ms <= w[1].window_start_ms),
            "oldest first"
        );
        // Within a window: vertex order.
        assert_eq!(all[0].vertex_id, "v1");

        let by_id = store.history("j", Some("v2"), 0).unwrap();
        assert_eq!(
            keys(&by_id),
            [
                ("v2".into(), 0, 1_000),
                ("v2".into(), 0, 2_000),
                ("v2".into(), 0, 3_000)
            ]
        );
        assert_eq!(store.history("j", Some("Map"), 0).unwrap(), by_id);
        assert_eq!(store.history("j", Some("v3"), 0).unwrap().len(), 1);

        let recent = store.history("j", Some("Source"), 2_000).unwrap();
        assert_eq!(
            keys(&recent),
            [("v1".into(), 0, 2_000), ("v1".into(), 0, 3_000)]
        );
        assert!(store.history("j", None, 3_001).unwrap().is_empty());

        let e = store.history("j", Some("Sink"), 0).unwrap_err();
        assert!(matches!(e, StoreError::UnknownVertex { .. }), "{e}");
        assert!(e.to_string().contains("\"Sink\""), "{e}");
    }

    #[test]
    fn jobs_and_vertices_survive_restarts_and_are_found_by_id_or_name() {
        let dir = TempDir::new("jobs");
        {
            let mut store = Store::open(&dir.0).unwrap();
            store
                .upsert_job("a1", "wordcount", "http://jm:8081", 1_000)
                .unwrap();
            store
                .upsert_vertices("a1", &[vertex("v1", "Source", 2), vertex("v2", "Sink", 1)])
                .unwrap();
            // Rescaled: the vertex list is replaced, not merged.
            store
                .upsert_vertices("a1", &[vertex("v1", "Source", 4)])
                .unwrap();
            store
                .upsert_job("b2", "etl", "http://jm:8081", 2_000)
                .unwrap();
            // An older sighting does not move last_seen back.
            store
                .upsert_job("b2", "etl", "http://jm:8081", 1_500)
                .unwrap();
            let e = store.upsert_vertices("zz", &[]).unwrap_err();
            assert!(matches!(e, StoreError::UnknownJob { .. }), "{e}");
        }
        let mut store = Store::open(&dir.0).unwrap();
        let jobs = store.jobs().unwrap();
        let ids: Vec<(&str, u64)> = jobs
            .iter()
            .map(|j| (j.job_id.as_str(), j.last_seen_ms))
            .collect();
        assert_eq!(ids, [("b2", 2_000), ("a1", 1_000)]);
        assert_eq!(jobs[1].vertices, [vertex("v1", "Source", 4)]);

        assert_eq!(store.find_job("a1").unwrap().unwrap().name, "wordcount");
        let by_name = store.find_job("wordcount").unwrap().unwrap();
        assert_eq!(by_name.job_id, "a1");
        assert_eq!(by_name.vertices.len(), 1);
        assert_eq!(store.find_job("nothing").unwrap(), None);

        // Resubmitted: the name now matches two jobs.
        store
            .upsert_job("c3", "wordcount", "http://jm:8081", 3_000)
            .unwrap();
        let e = store.find_job("wordcount").unwrap_err();
        match &e {
            StoreError::AmbiguousJob { candidates, .. } => {
                assert_eq!(candidates.len(), 2);
                assert!(candidates[0].starts_with("c3 (last seen 1970-01-01T00:00:03Z)"));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("a1 (last seen"), "{e}");
        // The id still finds each.
        assert_eq!(store.find_job("c3").unwrap().unwrap().job_id, "c3");
    }

    #[test]
    fn settings_fall_back_from_job_to_default_to_built_in() {
        let dir = TempDir::new("settings");
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(
            store.settings_for("j1").unwrap(),
            SamplingSettings::default()
        );
        let default = SamplingSettings {
            samples: 50,
            delay_ms: 20,
            interval_ms: 30_000,
        };
        let fast = SamplingSettings {
            samples: 20,
            delay_ms: 10,
            interval_ms: 5_000,
        };
        store.set_settings(DEFAULT_SCOPE, default).unwrap();
        assert_eq!(store.settings_for("j1").unwrap(), default);
        store.set_settings("j1", fast).unwrap();
        drop(store);

        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(store.settings_for("j1").unwrap(), fast);
        assert_eq!(store.settings_for("j2").unwrap(), default);
        let all = store.all_settings().unwrap();
        let scopes: Vec<&str> = all.iter().map(|s| s.scope.as_str()).collect();
        assert_eq!(scopes, ["*", "j1"]);
        assert_eq!(all[1].settings, fast);
        assert!(all[1].updated_at_ms > 0);

        assert!(store.remove_settings("j1").unwrap());
        assert!(!store.remove_settings("j1").unwrap());
        assert_eq!(store.settings_for("j1").unwrap(), default);
    }

    #[test]
    fn invalid_settings_are_refused_and_not_stored() {
        let dir = TempDir::new("bad-settings");
        let mut store = Store::open(&dir.0).unwrap();
        let too_long = SamplingSettings {
            samples: 100,
            delay_ms: 50,
            interval_ms: 4_000,
        };
        let e = store.set_settings("j1", too_long).unwrap_err();
        assert!(matches!(e, StoreError::InvalidSettings { .. }), "{e}");
        assert!(e.to_string().contains("4950 ms"), "{e}");
        let e = store
            .set_settings(" ", SamplingSettings::default())
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidSettings { .. }), "{e}");
        assert!(store.all_settings().unwrap().is_empty());
        assert_eq!(
            store.settings_for("j1").unwrap(),
            SamplingSettings::default()
        );
    }

    #[test]
    fn prune_removes_old_rows_only() {
        let dir = TempDir::new("prune");
        let mut store = Store::open(&dir.0).unwrap();
        // "old" was last seen long ago and only has old windows; "live" is still reported.
        store
            .upsert_job("old", "old", "http://jm:8081", 500)
            .unwrap();
        store
            .upsert_vertices("old", &[vertex("v", "Map", 1)])
            .unwrap();
        store
            .upsert_job("live", "live", "http://jm:8081", 9_000)
            .unwrap();
        let mut rows = Vec::new();
        for start in (1_000..=5_000).step_by(1_000) {
            rows.push(window("live", "v", 0, start));
            rows.push(window("live", "v", 1, start));
        }
        rows.push(window("old", "v", 0, 1_000));
        store.insert_windows(&rows).unwrap();
        for (seq, at) in [(1, 1_000), (2, 2_000), (3, 4_000)] {
            assert!(store.record_batch_at("tm-1", seq, at).unwrap());
        }
        // An agent silent since before the cutoff.
        assert!(store.record_batch_at("gone", 1, 2_500).unwrap());

        // Chunks of 3 rows, so several transactions run.
        let removed = store.prune_in_chunks(3_000, 3).unwrap();
        // 4 + 1 windows, 3 batch records, job "old", agent "gone".
        assert_eq!(removed, 10);
        let agents: Vec<String> = store
            .agent_seqs()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(agents, vec!["tm-1"]);
        let left = store.history("live", None, 0).unwrap();
        assert_eq!(left.len(), 6);
        assert!(left.iter().all(|r| r.window_start_ms >= 3_000));
        assert_eq!(store.latest_windows("live").unwrap().len(), 2);
        let jobs: Vec<String> = store
            .jobs()
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(jobs, ["live"]);
        // Batch records after the cutoff still deduplicate; pruned ones are forgotten, but the
        // agent's highest seq is kept.
        assert!(!store.record_batch_at("tm-1", 3, 9_000).unwrap());
        assert!(store.record_batch_at("tm-1", 1, 9_000).unwrap());
        assert_eq!(store.agent_seqs().unwrap()[0].highest_seq, 3);
        // Nothing more to do, and windows of a pruned subtask can be stored again.
        assert_eq!(store.prune(3_000).unwrap(), 0);
        store
            .insert_windows(&[window("old", "v", 0, 9_000)])
            .unwrap();
        assert_eq!(store.latest_windows("old").unwrap().len(), 1);
    }

    #[test]
    fn a_database_from_a_newer_schema_is_refused() {
        let dir = TempDir::new("future");
        Store::open(&dir.0).unwrap();
        let future = i64::from(DB_SCHEMA_VERSION) + 1;
        {
            let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
            conn.pragma_update(None, "user_version", future).unwrap();
        }
        let e = Store::open(&dir.0).unwrap_err();
        match &e {
            StoreError::NewerSchema { found, .. } => assert_eq!(*found, future),
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.0.join(DB_FILE).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(&format!("schema version {future}")), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_database_names_the_file() {
        let dir = TempDir::new("garbage");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join(DB_FILE), vec![b'x'; 4096]).unwrap();
        let e = Store::open(&dir.0).unwrap_err().to_string();
        assert!(e.contains(DB_FILE) && e.contains("not a database"), "{e}");
    }

    #[test]
    fn split_rules_are_stored_by_their_serde_names() {
        use SplitRule::*;
        for rule in [
            SoftIdleTime,
            BackPressuredIdleTime,
            OutputExhausted,
            OutputAvailable,
            NoMetrics,
            NothingWaiting,
        ] {
            assert_eq!(
                serde_json::to_value(rule).unwrap(),
                serde_json::Value::String(split_str(rule).into())
            );
        }
        for level in [Level::Ok, Level::Low, Level::High] {
            assert_eq!(
                serde_json::to_value(level).unwrap(),
                serde_json::Value::String(level.as_str().into())
            );
        }
    }

    #[test]
    fn queries_use_the_indexes() {
        let dir = TempDir::new("plan");
        let store = Store::open(&dir.0).unwrap();
        // With real values bound: SQLite may plan again once it sees them.
        let plan = |q: &str, params: &[&dyn rusqlite::ToSql]| -> String {
            let mut stmt = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
                .unwrap();
            let rows = stmt
                .query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("\n")
        };
        let prune = plan(
            "SELECT rowid FROM windows WHERE window_start_ms < ?1 LIMIT 10",
            params![5],
        );
        assert!(prune.contains("windows_by_time"), "{prune}");
        // No scan of the windows: they are reached through the job's range of windows_by_job.
        let latest = plan(&latest_sql(), params!["j"]);
        assert!(
            latest.contains(
                "windows_by_job (job_key=? AND window_start_ms=? AND subtask_id=? AND attempt=?)"
            ),
            "{latest}"
        );
        let history = plan(&history_sql(), params!["j", 5, "v"]);
        assert!(
            history.contains("windows_by_job (job_key=? AND window_start_ms>?)"),
            "{history}"
        );
        for p in [latest, history] {
            assert!(!p.contains("SCAN"), "{p}");
        }
    }
}
