//! The database's schema: the migrations, applied in order when a database is opened, and the
//! version check that refuses a database written by a newer build (`PRAGMA user_version`).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::{sql, StoreError};

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
    // 2: what the agent saw besides the counts (issue 12), JSON; NULL when it said nothing.
    "ALTER TABLE windows ADD COLUMN evidence TEXT;",
    // 3: stacks at every n-th sample only (issue 13, continuous watching).
    "ALTER TABLE settings ADD COLUMN stacks_every INTEGER NOT NULL DEFAULT 1;",
    // 4: back-pressure episodes per vertex (issue 13).
    "
    CREATE TABLE episodes (
        job_id        TEXT NOT NULL,
        vertex_id     TEXT NOT NULL,
        vertex        TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms   INTEGER,
        peak_level    TEXT NOT NULL,
        peak_ratio    REAL NOT NULL,
        peak_at_ms    INTEGER NOT NULL,
        bottleneck    TEXT,
        PRIMARY KEY (job_id, vertex_id, started_at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX episodes_open ON episodes (ended_at_ms) WHERE ended_at_ms IS NULL;
    ",
    // 5: the busy samples' folded stacks per window, for flame graphs (issue 14). Each distinct
    // stack is stored once (48 frames are a few KB, and a busy task shows the same few stacks
    // window after window); a window lists its stacks' ids and samples in a column of its own
    // row, so storing a window stays one row (a table of its own, with its indexes, cost 44 %
    // of the insert rate). `last_used_ms` lets retention find the stacks no window names.
    "
    ALTER TABLE windows ADD COLUMN stacks TEXT;
    CREATE TABLE stacks (
        id           INTEGER PRIMARY KEY,
        hash         INTEGER NOT NULL,
        folded       TEXT NOT NULL,
        last_used_ms INTEGER NOT NULL
    );
    CREATE INDEX stacks_by_hash ON stacks (hash);
    CREATE INDEX stacks_by_use ON stacks (last_used_ms);
    ",
];

/// The first schema, for tests that migrate a database the first release wrote.
#[cfg(test)]
pub(super) fn first_schema_for_tests() -> &'static str {
    MIGRATIONS[0]
}

/// The schema version this build writes.
pub const DB_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

pub(super) fn check_version(found: i64, path: &Path) -> Result<(), StoreError> {
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
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
