//! The sampling settings: the default ([`Scope::Default`], `*` in the table) and per-job
//! overrides.

use bpmon_proto::{SamplingSettings, Scope};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

use super::columns::{get_u64, to_i64};
use super::connection::Store;
use super::error::{sql, StoreError};

/// Sampling settings for a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRow {
    pub scope: Scope,
    pub settings: SamplingSettings,
    pub updated_at_ms: u64,
}

impl Store {
    /// Sets the sampling settings of `scope`, after checking
    /// that they can be used.
    pub fn set_settings(
        &mut self,
        scope: &Scope,
        settings: SamplingSettings,
    ) -> Result<(), StoreError> {
        let refuse = |reason: String| StoreError::InvalidSettings {
            scope: scope.to_string(),
            reason,
        };
        if scope.as_str().trim().is_empty() {
            return Err(refuse(format!(
                "the scope must be {:?} or a job id",
                Scope::DEFAULT
            )));
        }
        settings.validate().map_err(|e| refuse(e.to_string()))?;
        let delay = to_i64("delay_ms", settings.delay_ms)?;
        let interval = to_i64("interval_ms", settings.interval_ms)?;
        let now = to_i64("now", now_ms())?;
        self.conn
            .prepare_cached(
                "INSERT INTO settings
                     (scope, samples, delay_ms, interval_ms, updated_at_ms, stacks_every)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (scope) DO UPDATE SET
                     samples = excluded.samples, delay_ms = excluded.delay_ms,
                     interval_ms = excluded.interval_ms, updated_at_ms = excluded.updated_at_ms,
                     stacks_every = excluded.stacks_every",
            )
            .and_then(|mut s| {
                s.execute(params![
                    scope.as_str(),
                    settings.samples,
                    delay,
                    interval,
                    now,
                    settings.stacks_every
                ])
            })
            .map_err(sql("store sampling settings", &self.path))?;
        Ok(())
    }

    /// Removes the settings of `scope`; false if it had none.
    pub fn remove_settings(&mut self, scope: &Scope) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM settings WHERE scope = ?1")
            .and_then(|mut s| s.execute(params![scope.as_str()]))
            .map_err(sql("remove sampling settings", &self.path))?;
        Ok(n > 0)
    }

    /// How to sample `job_id`: its override, else the stored default, else the built-in default.
    pub fn settings_for(&self, job_id: &str) -> Result<SamplingSettings, StoreError> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT scope, samples, delay_ms, interval_ms, updated_at_ms, stacks_every FROM settings
                 WHERE scope IN (?1, ?2)
                 ORDER BY scope = ?2
                 LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![job_id, Scope::DEFAULT], settings_from_row)
                    .optional()
            })
            .map_err(sql("read sampling settings", &self.path))?;
        Ok(found.map(|r| r.settings).unwrap_or_default())
    }

    /// Gives a job seen for the first time the settings of the latest job of the same name on the
    /// same cluster that has settings of its own: a redeployed job (a new job id, from a
    /// savepoint or not) is still the job the operator configured. Returns that job's id, or
    /// `None` when `job_id` has settings already or no namesake has any.
    pub fn inherit_settings(
        &mut self,
        job_id: &str,
        name: &str,
        flink_url: &str,
    ) -> Result<Option<String>, StoreError> {
        let path = &self.path;
        let from: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT s.scope FROM settings s JOIN jobs j ON j.job_id = s.scope
                 WHERE j.name = ?1 AND j.flink_url = ?2 AND j.job_id <> ?3
                   AND NOT EXISTS (SELECT 1 FROM settings WHERE scope = ?3)
                 ORDER BY j.last_seen_ms DESC, s.updated_at_ms DESC
                 LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![name, flink_url, job_id], |r| r.get(0))
                    .optional()
            })
            .map_err(sql("look up a namesake's sampling settings", path))?;
        let Some(from) = from else {
            return Ok(None);
        };
        let now = to_i64("now", now_ms())?;
        self.conn
            .prepare_cached(
                "INSERT INTO settings
                     (scope, samples, delay_ms, interval_ms, updated_at_ms, stacks_every)
                 SELECT ?1, samples, delay_ms, interval_ms, ?3, stacks_every
                 FROM settings WHERE scope = ?2",
            )
            .and_then(|mut s| s.execute(params![job_id, from, now]))
            .map_err(sql("store inherited sampling settings", path))?;
        Ok(Some(from))
    }

    /// Every stored setting: the default first, then the job overrides by job id.
    pub fn all_settings(&self) -> Result<Vec<SettingsRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT scope, samples, delay_ms, interval_ms, updated_at_ms, stacks_every FROM settings
                 ORDER BY scope <> ?1, scope",
            )
            .and_then(|mut s| {
                s.query_map(params![Scope::DEFAULT], settings_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read sampling settings", &self.path))
    }
}

fn settings_from_row(r: &Row<'_>) -> rusqlite::Result<SettingsRow> {
    Ok(SettingsRow {
        scope: Scope::from(r.get::<_, String>(0)?),
        settings: SamplingSettings {
            samples: r.get(1)?,
            delay_ms: get_u64(r, 2)?,
            interval_ms: get_u64(r, 3)?,
            stacks_every: r.get(5)?,
        },
        updated_at_ms: get_u64(r, 4)?,
    })
}
