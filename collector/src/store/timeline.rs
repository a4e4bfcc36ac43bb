//! A job's back-pressure over a period in a bounded number of points: its windows summed in SQL
//! into buckets per vertex, so a week of one-second windows reads as a few hundred points.

use bpmon_proto::Level;
use rusqlite::params;

use super::columns::{get_u64, to_i64};
use super::connection::Store;
use super::error::{sql, StoreError};

/// One vertex's windows that started in one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineBucket {
    pub vertex_id: String,
    /// The bucket's start, ms since the Unix epoch.
    pub start_ms: u64,
    /// The highest ratio of any subtask's window in the bucket: a vertex is as back-pressured
    /// as its worst subtask, and a peak must not be averaged away.
    pub ratio: Option<f64>,
    /// The worst level of those windows.
    pub level: Option<Level>,
    pub windows: u32,
}

impl Store {
    /// The job's windows that started in `[since_ms, until_ms)`, in buckets of `bucket_ms`
    /// (the first starting at `since_ms`), by vertex id then time.
    pub fn timeline(
        &self,
        job_id: &str,
        since_ms: u64,
        until_ms: u64,
        bucket_ms: u64,
    ) -> Result<Vec<TimelineBucket>, StoreError> {
        let path = &self.path;
        let since = to_i64("since_ms", since_ms)?;
        let bucket = to_i64("bucket_ms", bucket_ms.max(1))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.vertex_id, (w.window_start_ms - ?2) / ?4 AS b, MAX(w.ratio),
                        MAX(CASE w.level WHEN 'ok' THEN 0 WHEN 'low' THEN 1 WHEN 'high' THEN 2
                            END),
                        COUNT(*)
                 FROM job_keys k
                 CROSS JOIN windows w ON w.job_key = k.id
                       AND w.window_start_ms >= ?2 AND w.window_start_ms < ?3
                 CROSS JOIN subtasks s ON s.id = w.subtask_id
                 WHERE k.job_id = ?1
                 GROUP BY s.vertex_id, b
                 ORDER BY s.vertex_id, b",
            )
            .map_err(sql("read the timeline", path))?;
        let rows = stmt
            .query_map(
                params![job_id, since, to_i64("until_ms", until_ms)?, bucket],
                |r| {
                    let b = get_u64(r, 1)?;
                    Ok(TimelineBucket {
                        vertex_id: r.get(0)?,
                        start_ms: since_ms.saturating_add(b.saturating_mul(bucket_ms.max(1))),
                        ratio: r.get(2)?,
                        level: match r.get::<_, Option<i64>>(3)? {
                            Some(0) => Some(Level::Ok),
                            Some(1) => Some(Level::Low),
                            Some(_) => Some(Level::High),
                            None => None,
                        },
                        windows: r.get(4)?,
                    })
                },
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("read the timeline", path))?;
        Ok(rows)
    }
}
