//! Retention: deleting windows, batch records, jobs and agents older than the cutoff, in short
//! transactions so that pruning holds the write lock for milliseconds at a time.

use rusqlite::{params, TransactionBehavior};

use super::columns::to_i64;
use super::connection::Store;
use super::error::{sql, StoreError};

/// Rows one pruning transaction deletes: small enough that it holds the write lock only for
/// milliseconds.
const PRUNE_CHUNK: usize = 5_000;

impl Store {
    /// Retention: deletes windows that started before `older_than_ms`, batch records received
    /// before it, jobs last seen before it that have no windows left, and episodes that ended
    /// before it. Returns how many of
    /// these rows it deleted. Works in transactions of a few thousand rows.
    pub fn prune(&mut self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.prune_in_chunks(older_than_ms, PRUNE_CHUNK)
    }

    pub(super) fn prune_in_chunks(
        &mut self,
        older_than_ms: u64,
        chunk: usize,
    ) -> Result<usize, StoreError> {
        let cutoff = to_i64("older_than_ms", older_than_ms)?;
        let windows = self.delete_in_chunks(
            "DELETE FROM windows WHERE rowid IN (
                 SELECT rowid FROM windows WHERE window_start_ms < ?1 LIMIT ?2)",
            cutoff,
            chunk,
        )?;
        // The stacks no window names any more: a stack's `last_used_ms` lags its newest window
        // by less than TOUCH_EVERY_MS, so the stacks last used that much before the cutoff.
        let stacks = self.delete_in_chunks(
            "DELETE FROM stacks WHERE id IN (
                 SELECT id FROM stacks WHERE last_used_ms < ?1 LIMIT ?2)",
            cutoff.saturating_sub(super::stacks::TOUCH_EVERY_MS as i64),
            chunk,
        )?;
        if stacks > 0 {
            self.stack_ids.clear();
        }
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
        // Episodes that ended before the cutoff; an ongoing one stays, however old.
        let episodes = tx
            .execute(
                "DELETE FROM episodes WHERE ended_at_ms < ?1",
                params![cutoff],
            )
            .map_err(sql("prune episodes", path))?;
        tx.commit().map_err(sql("commit pruning jobs", path))?;
        if subtasks > 0 {
            self.ids.clear();
        }
        tracing::debug!(windows, stacks, batches, subtasks, jobs, agents, episodes, "pruned");
        Ok(windows + batches + jobs + agents + episodes)
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
