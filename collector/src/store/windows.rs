//! The merged windows: storing a batch's windows (with its `(agent, seq)` record, in one
//! transaction) and reading back each subtask's newest window and a job's history.

use std::collections::HashMap;
use std::path::Path;

use bpmon_proto::Level;
use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::clock::now_ms;
use crate::merge::{MergedWindow, SplitRule, WindowEvidence};
use crate::model::SubtaskMetrics;

use super::agents::insert_batch;
use super::columns::{get_u64, parse_col, to_i64};
use super::connection::{Ids, JobIds, Store};
use super::error::{sql, StoreError};
use super::stacks::{encode, stack_ids, CachedStack};

/// Stores one window row (replacing the one of the same subtask, attempt and start), its
/// columns in this order.
/// The end of a job's oldest window: the first entry of its range of `windows_by_job`.
pub(super) const WATCHED_SINCE_SQL: &str = "SELECT w.window_end_ms FROM job_keys k
     CROSS JOIN windows w ON w.job_key = k.id
     WHERE k.job_id = ?1 ORDER BY w.window_start_ms LIMIT 1";

pub(super) const INSERT_WINDOW: &str = "INSERT OR REPLACE INTO windows (job_key, subtask_id,
         attempt, window_start_ms, window_end_ms, taskmanager_id, host, samples, blocked, soft,
         idle, busy, ratio, level, split, metrics, top_frames, evidence, stacks)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
         ?19)";

/// Columns of a [`MergedWindow`], in the order [`window_from_row`] reads them.
const WINDOW_COLUMNS: &str = "k.job_id, s.vertex_id, s.subtask, w.attempt, w.window_start_ms, \
     w.window_end_ms, w.taskmanager_id, w.host, w.samples, w.blocked, w.soft, w.idle, w.busy, \
     w.ratio, w.level, w.split, w.metrics, w.top_frames, w.evidence";

impl Store {
    /// Stores windows in one transaction. A window stored again (same subtask, attempt and start)
    /// replaces the earlier one, so storing is idempotent.
    pub fn insert_windows(&mut self, rows: &[MergedWindow]) -> Result<(), StoreError> {
        self.write_windows(None, rows).map(|_| ())
    }

    /// Records batch `(agent_id, seq)` and stores its windows in one transaction: both or
    /// neither, so a crash in between cannot make the agent's retry look like a duplicate. A
    /// batch already recorded stores nothing and returns false.
    pub fn ingest_batch(
        &mut self,
        agent_id: &str,
        seq: u64,
        rows: &[MergedWindow],
    ) -> Result<bool, StoreError> {
        self.write_windows(Some((agent_id, seq, now_ms())), rows)
    }

    /// Records and stores several batches in one transaction, so that they cost one commit (one
    /// fsync) together: each as [`ingest_batch`](Self::ingest_batch) would. Returns for each
    /// whether it was new (a batch given twice is new once).
    pub fn ingest_batches(
        &mut self,
        batches: &[(&str, u64, &[MergedWindow])],
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
                    insert_rows(&tx, &mut self.ids, &mut self.stack_ids, rows, path)?;
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
            // The rolled-back transaction may have created ids the caches now hold.
            self.ids.clear();
            self.stack_ids.clear();
        }
        result
    }

    fn write_windows(
        &mut self,
        batch: Option<(&str, u64, u64)>,
        rows: &[MergedWindow],
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
            insert_rows(&tx, &mut self.ids, &mut self.stack_ids, rows, path)?;
            Ok(true)
        })();
        let result = stored.and_then(|new| {
            tx.commit().map_err(sql("commit windows", path))?;
            Ok(new)
        });
        if result.is_err() {
            // The rolled-back transaction may have created ids the caches now hold.
            self.ids.clear();
            self.stack_ids.clear();
        }
        result
    }

    /// The newest window of each subtask of a job (any attempt), by vertex then subtask index.
    pub fn latest_windows(&self, job_id: &str) -> Result<Vec<MergedWindow>, StoreError> {
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

    /// When the oldest window held of a job ended: bpmon has watched the job since then. A
    /// level that already held in that window may have held before it.
    pub fn watched_since(&self, job_id: &str) -> Result<Option<u64>, StoreError> {
        self.conn
            .prepare_cached(WATCHED_SINCE_SQL)
            .and_then(|mut s| {
                s.query_row(params![job_id], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|end| end.and_then(|e| u64::try_from(e).ok()))
            .map_err(sql("read the oldest window", &self.path))
    }

    /// A job's windows that started at or after `since_ms`, oldest first; only one vertex's when
    /// `vertex` (its id or name) is given. A vertex the job does not have is an error.
    pub fn history(
        &self,
        job_id: &str,
        vertex: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<MergedWindow>, StoreError> {
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
}

/// The newest window of each subtask of job `?1`, found from its `latest_*` columns.
pub(super) fn latest_sql() -> String {
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
pub(super) fn history_sql() -> String {
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

fn insert_rows(
    tx: &Transaction<'_>,
    ids: &mut Ids,
    stack_cache: &mut HashMap<String, CachedStack>,
    rows: &[MergedWindow],
    path: &Path,
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(INSERT_WINDOW)
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
        let evidence =
            match r.evidence.is_empty() {
                true => None,
                false => Some(serde_json::to_string(&r.evidence).map_err(|source| {
                    StoreError::Encode {
                        what: "window evidence",
                        source,
                    }
                })?),
            };
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
                evidence,
                encode(&stack_ids(tx, stack_cache, &r.stacks, path)?),
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
    r: &MergedWindow,
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
pub(super) fn split_str(s: SplitRule) -> &'static str {
    match s {
        SplitRule::TaskTimers => "task_timers",
        SplitRule::SoftIdleTime => "soft_idle_time",
        SplitRule::BackPressuredIdleTime => "back_pressured_idle_time",
        SplitRule::OutputExhausted => "output_exhausted",
        SplitRule::OutputAvailable => "output_available",
        SplitRule::NoMetrics => "no_metrics",
        SplitRule::NothingWaiting => "nothing_waiting",
    }
}

fn window_from_row(r: &Row<'_>) -> rusqlite::Result<MergedWindow> {
    let level = match r.get_ref(14)?.as_str_or_null()? {
        Some(_) => Some(parse_col::<Level>(r, 14, false)?),
        None => None,
    };
    Ok(MergedWindow {
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
        evidence: match r.get_ref(18)?.as_str_or_null()? {
            Some(_) => parse_col(r, 18, true)?,
            None => WindowEvidence::default(),
        },
        stacks: Vec::new(),
    })
}
