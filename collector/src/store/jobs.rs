//! The jobs and vertices the pollers saw, found again by id or name after a restart.

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::clock::timestamp;

use super::columns::{get_u64, to_i64};
use super::connection::Store;
use super::error::{sql, StoreError};

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

impl Store {
    /// Whether the job was recorded before.
    pub fn has_job(&self, job_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?1)")
            .and_then(|mut s| s.query_row(params![job_id], |r| r.get(0)))
            .map_err(sql("look up the job", &self.path))
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
        let by_name = self.named(id_or_name)?;
        match by_name.len() {
            0 => Ok(None),
            1 => Ok(self.with_vertices(by_name)?.pop()),
            _ => Err(StoreError::AmbiguousJob {
                name: id_or_name.to_owned(),
                candidates: by_name
                    .into_iter()
                    .map(|j| format!("{} (last seen {})", j.job_id, timestamp(j.last_seen_ms)))
                    .collect(),
            }),
        }
    }

    /// Every job with this name, the most recently seen first, without their vertices.
    fn named(&self, name: &str) -> Result<Vec<JobRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT job_id, name, flink_url, last_seen_ms FROM jobs WHERE name = ?1
                 ORDER BY last_seen_ms DESC, job_id",
            )
            .and_then(|mut s| {
                s.query_map(params![name], job_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("look up the job", &self.path))
    }

    /// [`Store::find_job`], where a name several jobs share (a job resubmitted under a new id)
    /// means the one of them `is_running` says still runs, if exactly one does: an operator who
    /// redeployed `my-job` means the running one, not the cancelled one before it.
    pub fn find_job_preferring(
        &self,
        id_or_name: &str,
        is_running: impl Fn(&str) -> bool,
    ) -> Result<Option<JobRow>, StoreError> {
        match self.find_job(id_or_name) {
            Err(ambiguous @ StoreError::AmbiguousJob { .. }) => {
                let mut running: Vec<JobRow> = self
                    .named(id_or_name)?
                    .into_iter()
                    .filter(|j| is_running(&j.job_id))
                    .collect();
                if running.len() == 1 {
                    Ok(self.with_vertices(running.split_off(0))?.pop())
                } else {
                    Err(ambiguous)
                }
            }
            other => other,
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
