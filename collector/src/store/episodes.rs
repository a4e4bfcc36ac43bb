//! Back-pressure episodes (`service::episodes`): one row per episode, keyed by job, vertex and
//! start, written when it starts, peaks and ends.

use rusqlite::{params, Row};

use crate::api::Episode;

use super::columns::{get_u64, parse_col, to_i64};
use super::connection::Store;
use super::error::{sql, StoreError};

const COLUMNS: &str = "job_id, vertex_id, vertex, started_at_ms, ended_at_ms, peak_level, \
                       peak_ratio, peak_at_ms, bottleneck";

impl Store {
    /// Writes an episode as it is now (a new one, or a known one that peaked or ended).
    pub fn save_episode(&mut self, e: &Episode) -> Result<(), StoreError> {
        let bottleneck = e
            .bottleneck
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|source| StoreError::Encode {
                what: "an episode's bottleneck",
                source,
            })?;
        let ended = e
            .ended_at_ms
            .map(|ms| to_i64("ended_at_ms", ms))
            .transpose()?;
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO episodes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (job_id, vertex_id, started_at_ms) DO UPDATE SET
                     vertex = excluded.vertex, ended_at_ms = excluded.ended_at_ms,
                     peak_level = excluded.peak_level, peak_ratio = excluded.peak_ratio,
                     peak_at_ms = excluded.peak_at_ms, bottleneck = excluded.bottleneck"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    e.job_id,
                    e.vertex_id,
                    e.vertex,
                    to_i64("started_at_ms", e.started_at_ms).map_err(to_sql)?,
                    ended,
                    e.peak_level.as_str(),
                    e.peak_ratio,
                    to_i64("peak_at_ms", e.peak_at_ms).map_err(to_sql)?,
                    bottleneck,
                ])
            })
            .map_err(sql("store an episode", &self.path))?;
        Ok(())
    }

    /// The episodes of a job that were under way at or after `since_ms`, oldest first.
    pub fn episodes(&self, job_id: &str, since_ms: u64) -> Result<Vec<Episode>, StoreError> {
        let since = to_i64("since_ms", since_ms)?;
        self.conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM episodes
                 WHERE job_id = ?1 AND (ended_at_ms IS NULL OR ended_at_ms >= ?2)
                 ORDER BY started_at_ms, vertex_id"
            ))
            .and_then(|mut s| {
                s.query_map(params![job_id, since], episode_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read episodes", &self.path))
    }

    /// When the job's last ended episode ended, if it had one.
    pub fn last_episode_end(&self, job_id: &str) -> Result<Option<u64>, StoreError> {
        self.conn
            .prepare_cached("SELECT MAX(ended_at_ms) FROM episodes WHERE job_id = ?1")
            .and_then(|mut s| s.query_row(params![job_id], |r| r.get::<_, Option<i64>>(0)))
            .map(|end| end.and_then(|e| u64::try_from(e).ok()))
            .map_err(sql("read episodes", &self.path))
    }

    /// Every episode not ended, of every job: what a restarted collector resumes.
    pub fn open_episodes(&self) -> Result<Vec<Episode>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM episodes WHERE ended_at_ms IS NULL
                 ORDER BY started_at_ms, job_id, vertex_id"
            ))
            .and_then(|mut s| {
                s.query_map([], episode_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read open episodes", &self.path))
    }
}

fn to_sql(e: StoreError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn episode_from_row(r: &Row<'_>) -> rusqlite::Result<Episode> {
    let ended: Option<i64> = r.get(4)?;
    let bottleneck = match r.get_ref(8)?.as_str_or_null()? {
        Some(_) => Some(parse_col(r, 8, true)?),
        None => None,
    };
    Ok(Episode {
        job_id: r.get(0)?,
        vertex_id: r.get(1)?,
        vertex: r.get(2)?,
        started_at_ms: get_u64(r, 3)?,
        ended_at_ms: ended.map(|v| u64::try_from(v).unwrap_or(0)),
        peak_level: parse_col(r, 5, false)?,
        peak_ratio: r.get(6)?,
        peak_at_ms: get_u64(r, 7)?,
        bottleneck,
    })
}
