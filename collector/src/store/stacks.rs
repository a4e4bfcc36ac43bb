//! The busy samples' folded stacks of each window, kept for flame graphs: storing a window's
//! stacks (each distinct stack once, by id) and summing a vertex's stacks over a period.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};

use crate::merge::FoldedStack;

use super::columns::to_i64;
use super::connection::Store;
use super::error::{sql, StoreError};

/// The most distinct stacks a flame graph query answers; the rest are summed into one
/// [`bpmon_proto::report::OTHER_STACKS`] entry, so a week of a busy vertex stays a few MB.
pub const MAX_FLAME_STACKS: usize = 2_000;
/// Stack ids kept in memory before the cache is emptied.
const MAX_CACHED_STACKS: usize = 50_000;

/// A vertex's busy stacks over a period, most samples first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlameStacks {
    pub stacks: Vec<FoldedStack>,
    /// All busy samples with a stack, the summed ones included.
    pub samples: u64,
}

impl Store {
    /// A vertex's busy stacks from windows that started in `[since_ms, until_ms)`, summed over
    /// its subtasks and windows: the [`MAX_FLAME_STACKS`] with most samples, the rest in one
    /// entry.
    pub fn flame_stacks(
        &self,
        job_id: &str,
        vertex_id: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<FlameStacks, StoreError> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT st.folded, SUM(ws.samples) AS n
                 FROM job_keys k
                 CROSS JOIN window_stacks ws ON ws.job_key = k.id
                       AND ws.window_start_ms >= ?2 AND ws.window_start_ms < ?3
                 CROSS JOIN subtasks s ON s.id = ws.subtask_id
                 JOIN stacks st ON st.id = ws.stack_id
                 WHERE k.job_id = ?1 AND s.vertex_id = ?4
                 GROUP BY ws.stack_id
                 ORDER BY n DESC, st.folded",
            )
            .map_err(sql("read stacks", path))?;
        let rows = stmt
            .query_map(
                params![
                    job_id,
                    to_i64("since_ms", since_ms)?,
                    to_i64("until_ms", until_ms)?,
                    vertex_id
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("read stacks", path))?;
        Ok(bounded(rows))
    }
}

/// The first [`MAX_FLAME_STACKS`] stacks as they are, the rest summed into one entry (itself
/// summed with an [`OTHER_STACKS`](bpmon_proto::report::OTHER_STACKS) entry the agents sent).
fn bounded(rows: Vec<(String, i64)>) -> FlameStacks {
    let other_name = bpmon_proto::report::OTHER_STACKS;
    let mut out = FlameStacks::default();
    let mut other: u64 = 0;
    for (folded, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        out.samples += n;
        if folded == other_name || out.stacks.len() >= MAX_FLAME_STACKS {
            other += n;
        } else {
            out.stacks.push(FoldedStack {
                folded,
                samples: u32::try_from(n).unwrap_or(u32::MAX),
            });
        }
    }
    if other > 0 {
        out.stacks.push(FoldedStack {
            folded: other_name.to_string(),
            samples: u32::try_from(other).unwrap_or(u32::MAX),
        });
    }
    out
}

/// Stores one window's stacks (called in the window's transaction). Storing a window again
/// replaces the samples of the stacks it names.
pub(super) fn insert_stacks(
    tx: &Transaction<'_>,
    stack_ids: &mut HashMap<String, i64>,
    (job_key, start, subtask_id, attempt): (i64, i64, i64, u32),
    stacks: &[FoldedStack],
    path: &Path,
) -> Result<(), StoreError> {
    if stacks.is_empty() {
        return Ok(());
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO window_stacks
                 (job_key, window_start_ms, subtask_id, attempt, stack_id, samples)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(sql("store stacks", path))?;
    for s in stacks {
        let id = stack_id(tx, stack_ids, &s.folded, path)?;
        insert
            .execute(params![job_key, start, subtask_id, attempt, id, s.samples])
            .map_err(sql("store stacks", path))?;
    }
    Ok(())
}

/// The id of a folded stack, stored first when new. Looked up by a hash of the text, then
/// compared whole, so a collision only costs a second row.
fn stack_id(
    tx: &Transaction<'_>,
    stack_ids: &mut HashMap<String, i64>,
    folded: &str,
    path: &Path,
) -> Result<i64, StoreError> {
    if let Some(id) = stack_ids.get(folded) {
        return Ok(*id);
    }
    let hash = stack_hash(folded);
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM stacks WHERE hash = ?1 AND folded = ?2")
        .and_then(|mut s| s.query_row(params![hash, folded], |r| r.get(0)).optional())
        .map_err(sql("look up a stack", path))?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached("INSERT INTO stacks (hash, folded) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![hash, folded]))
                .map_err(sql("store a stack", path))?;
            tx.last_insert_rowid()
        }
    };
    if stack_ids.len() >= MAX_CACHED_STACKS {
        stack_ids.clear();
    }
    stack_ids.insert(folded.to_string(), id);
    Ok(id)
}

/// A 64-bit hash of the text, as SQLite's signed integer. Only an index key: a hash that
/// changes between builds makes lookups miss and store a stack twice, never mix two up.
fn stack_hash(folded: &str) -> i64 {
    let mut h = DefaultHasher::new();
    folded.hash(&mut h);
    h.finish() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<(String, i64)> {
        (0..n)
            .map(|i| (format!("a;b{i}"), (n - i) as i64))
            .collect()
    }

    #[test]
    fn a_few_stacks_come_back_as_they_are() {
        let f = bounded(rows(3));
        assert_eq!(f.samples, 6);
        let names: Vec<_> = f.stacks.iter().map(|s| s.folded.as_str()).collect();
        assert_eq!(names, ["a;b0", "a;b1", "a;b2"]);
    }

    #[test]
    fn past_the_bound_the_rest_is_summed_with_the_agents_other_stacks() {
        let mut r = rows(MAX_FLAME_STACKS + 10);
        r.insert(5, (bpmon_proto::report::OTHER_STACKS.to_string(), 7));
        let total: i64 = r.iter().map(|x| x.1).sum();
        let f = bounded(r);
        assert_eq!(f.stacks.len(), MAX_FLAME_STACKS + 1);
        assert_eq!(f.samples, total as u64);
        let summed: u64 = f.stacks.iter().map(|s| u64::from(s.samples)).sum();
        assert_eq!(summed, total as u64, "no sample lost");
        let last = f.stacks.last().unwrap();
        assert_eq!(last.folded, bpmon_proto::report::OTHER_STACKS);
        // The 10 past the bound (1..=10 samples) and the agents' 7.
        assert_eq!(last.samples, 55 + 7);
    }
}
