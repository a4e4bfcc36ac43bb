//! The busy samples' folded stacks of each window, kept for flame graphs. Each distinct stack
//! is stored once in `stacks`; a window names its stacks in its own row's `stacks` column as
//! `id:samples` pairs (so storing a window stays one row). A vertex's flame graph sums those
//! over its subtasks' windows of a period.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};

use crate::clock::now_ms;
use crate::merge::FoldedStack;

use super::columns::to_i64;
use super::connection::Store;
use super::error::{sql, StoreError};

/// The most distinct stacks a flame graph query answers; the rest are summed into one
/// [`OTHER_STACKS`](bpmon_proto::report::OTHER_STACKS) entry, so a week of a busy vertex stays a
/// few MB.
pub const MAX_FLAME_STACKS: usize = 2_000;
/// Stack ids kept in memory before the cache is emptied.
const MAX_CACHED_STACKS: usize = 50_000;
/// A stack's `last_used_ms` is brought up to date at most this often (ms), not at every window
/// that names it; retention keeps stacks this much longer than the windows for it.
pub(super) const TOUCH_EVERY_MS: u64 = 3_600_000;

/// A vertex's busy stacks over a period, most samples first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlameStacks {
    pub stacks: Vec<FoldedStack>,
    /// All busy samples with a stack, the summed ones included.
    pub samples: u64,
}

/// What the store remembers of a stack it has written: its id, and when its `last_used_ms`
/// was last written.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedStack {
    id: i64,
    touched_ms: u64,
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
                "SELECT w.stacks
                 FROM job_keys k
                 CROSS JOIN windows w ON w.job_key = k.id
                       AND w.window_start_ms >= ?2 AND w.window_start_ms < ?3
                 CROSS JOIN subtasks s ON s.id = w.subtask_id
                 WHERE k.job_id = ?1 AND s.vertex_id = ?4 AND w.stacks IS NOT NULL",
            )
            .map_err(sql("read stacks", path))?;
        let mut sums: HashMap<i64, u64> = HashMap::new();
        let mut rows = stmt
            .query(params![
                job_id,
                to_i64("since_ms", since_ms)?,
                to_i64("until_ms", until_ms)?,
                vertex_id
            ])
            .map_err(sql("read stacks", path))?;
        while let Some(row) = rows.next().map_err(sql("read stacks", path))? {
            let text = row.get_ref(0).map_err(sql("read stacks", path))?;
            if let Ok(text) = text.as_str() {
                for (id, n) in decode(text) {
                    *sums.entry(id).or_default() += n;
                }
            }
        }
        let mut ranked: Vec<(i64, u64)> = sums.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut lookup = self
            .conn
            .prepare_cached("SELECT folded FROM stacks WHERE id = ?1")
            .map_err(sql("read stacks", path))?;
        let mut named = Vec::with_capacity(ranked.len().min(MAX_FLAME_STACKS + 1));
        let mut unnamed = 0;
        for (i, (id, n)) in ranked.into_iter().enumerate() {
            if i >= MAX_FLAME_STACKS {
                unnamed += n;
                continue;
            }
            let folded: Option<String> = lookup
                .query_row(params![id], |r| r.get(0))
                .optional()
                .map_err(sql("read stacks", path))?;
            match folded {
                Some(f) => named.push((f, n)),
                // Not expected (retention keeps stacks longer than their windows): counted.
                None => unnamed += n,
            }
        }
        if unnamed > 0 {
            named.push((bpmon_proto::report::OTHER_STACKS.to_string(), unnamed));
        }
        Ok(bounded(named))
    }
}

/// `id:samples` pairs, space-separated: a window's stacks in its row.
pub(super) fn encode(ids: &[(i64, u32)]) -> Option<String> {
    use std::fmt::Write as _;
    if ids.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(ids.len() * 12);
    for (i, (id, n)) in ids.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{id}:{n}");
    }
    Some(out)
}

/// The pairs of [`encode`]; a malformed pair (not written by this store) is skipped.
pub(super) fn decode(text: &str) -> impl Iterator<Item = (i64, u64)> + '_ {
    text.split(' ').filter_map(|pair| {
        let (id, n) = pair.split_once(':')?;
        Some((id.parse().ok()?, n.parse().ok()?))
    })
}

/// Stacks summed by their text (several ids may hold one text after a hash change), most
/// samples first, the [`OTHER_STACKS`](bpmon_proto::report::OTHER_STACKS) entries (the
/// agents' and the query's) summed into one, last.
fn bounded(rows: Vec<(String, u64)>) -> FlameStacks {
    let other_name = bpmon_proto::report::OTHER_STACKS;
    let mut by_text: HashMap<String, u64> = HashMap::new();
    let mut out = FlameStacks::default();
    let mut other: u64 = 0;
    for (folded, n) in rows {
        out.samples += n;
        if folded == other_name {
            other += n;
        } else {
            *by_text.entry(folded).or_default() += n;
        }
    }
    let mut stacks: Vec<(String, u64)> = by_text.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.stacks = stacks
        .into_iter()
        .map(|(folded, n)| FoldedStack {
            folded,
            samples: u32::try_from(n).unwrap_or(u32::MAX),
        })
        .collect();
    if other > 0 {
        out.stacks.push(FoldedStack {
            folded: other_name.to_string(),
            samples: u32::try_from(other).unwrap_or(u32::MAX),
        });
    }
    out
}

/// The ids and samples of one window's stacks, each stack stored first when new (called in the
/// window's transaction).
pub(super) fn stack_ids(
    tx: &Transaction<'_>,
    cache: &mut HashMap<String, CachedStack>,
    stacks: &[FoldedStack],
    path: &Path,
) -> Result<Vec<(i64, u32)>, StoreError> {
    let mut out = Vec::with_capacity(stacks.len());
    let now = now_ms();
    for s in stacks {
        out.push((stack_id(tx, cache, &s.folded, now, path)?, s.samples));
    }
    Ok(out)
}

/// The id of a folded stack, stored first when new. Looked up by a hash of the text, then
/// compared whole, so a collision only costs a second row.
fn stack_id(
    tx: &Transaction<'_>,
    cache: &mut HashMap<String, CachedStack>,
    folded: &str,
    now: u64,
    path: &Path,
) -> Result<i64, StoreError> {
    let now_i = to_i64("now", now)?;
    if let Some(c) = cache.get_mut(folded) {
        if now.saturating_sub(c.touched_ms) >= TOUCH_EVERY_MS {
            touch(tx, c.id, now_i, path)?;
            c.touched_ms = now;
        }
        return Ok(c.id);
    }
    let hash = stack_hash(folded);
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM stacks WHERE hash = ?1 AND folded = ?2")
        .and_then(|mut s| s.query_row(params![hash, folded], |r| r.get(0)).optional())
        .map_err(sql("look up a stack", path))?;
    let id = match found {
        Some(id) => {
            touch(tx, id, now_i, path)?;
            id
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO stacks (hash, folded, last_used_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![hash, folded, now_i]))
            .map_err(sql("store a stack", path))?;
            tx.last_insert_rowid()
        }
    };
    if cache.len() >= MAX_CACHED_STACKS {
        cache.clear();
    }
    cache.insert(
        folded.to_string(),
        CachedStack {
            id,
            touched_ms: now,
        },
    );
    Ok(id)
}

/// Marks a stack as used now, for retention.
fn touch(tx: &Transaction<'_>, id: i64, now_ms: i64, path: &Path) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE stacks SET last_used_ms = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, now_ms]))
        .map(|_| ())
        .map_err(sql("store a stack", path))
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

    #[test]
    fn a_windows_stacks_are_written_and_read_as_pairs() {
        assert_eq!(encode(&[]), None);
        let text = encode(&[(3, 70), (12, 30)]).unwrap();
        assert_eq!(text, "3:70 12:30");
        assert_eq!(decode(&text).collect::<Vec<_>>(), [(3, 70), (12, 30)]);
        assert_eq!(
            decode("3:70 x:1 4 5:").collect::<Vec<_>>(),
            [(3, 70)],
            "malformed pairs are skipped"
        );
    }

    #[test]
    fn stacks_are_ranked_and_the_other_entries_summed_last() {
        let other = bpmon_proto::report::OTHER_STACKS.to_string();
        let f = bounded(vec![
            ("a;b".into(), 2),
            (other.clone(), 7),
            ("a;c".into(), 5),
            ("a;b".into(), 4),
            (other.clone(), 1),
        ]);
        assert_eq!(f.samples, 19);
        let got: Vec<_> = f
            .stacks
            .iter()
            .map(|s| (s.folded.as_str(), s.samples))
            .collect();
        assert_eq!(got, [("a;b", 6), ("a;c", 5), (other.as_str(), 8)]);
    }
}
