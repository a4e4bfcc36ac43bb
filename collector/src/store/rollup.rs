//! Rollup: a subtask's short windows, once older than the full-resolution span, merged into one
//! window per minute. Continuous watching stores a window per subtask every 2 s (~800 bytes
//! each): a week of a 50-subtask job is 15 million rows and 12 GB, and a 7-day timeline reads
//! all of them. After the rollup it is 30 times fewer.
//!
//! A merged window keeps what the history and the web view read of old windows: the samples
//! summed (counts, top frames, busy stacks), the *highest* ratio and the worst level (a peak
//! must not be averaged away; the timeline takes the maximum per bucket anyway, so its answer
//! for buckets of a minute or more does not change), and the worst window's metrics, evidence,
//! rule and placement (what the subtask looked like at its peak). Merging is associative, so a
//! window that arrives late (an agent's spool) merges into an already merged one.

use std::collections::{BTreeMap, HashMap};

use bpmon_proto::report::FrameCount;
use rusqlite::{params, Row, TransactionBehavior};

use super::columns::to_i64;
use super::connection::Store;
use super::error::{sql, StoreError};
use super::stacks::{decode, encode};
use super::windows::INSERT_WINDOW;

/// The slot old short windows are merged into: a minute.
pub const ROLLUP_SPAN_MS: u64 = 60_000;

/// What one rollup did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Windows merged away (deleted).
    pub windows: usize,
    /// Windows they were merged into.
    pub merged: usize,
    /// Groups left as they were because a stored column did not decode (not written by this
    /// store).
    pub skipped: usize,
}

/// A window as stored, the columns the rollup reads.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    rowid: i64,
    job_key: i64,
    subtask_id: i64,
    attempt: i64,
    start: i64,
    end: i64,
    taskmanager_id: Option<String>,
    host: Option<String>,
    /// samples, blocked, soft, idle, busy.
    counts: [i64; 5],
    ratio: Option<f64>,
    level: Option<String>,
    split: String,
    metrics: String,
    top_frames: String,
    evidence: Option<String>,
    stacks: Option<String>,
}

impl Stored {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Stored> {
        Ok(Stored {
            rowid: r.get(0)?,
            job_key: r.get(1)?,
            subtask_id: r.get(2)?,
            attempt: r.get(3)?,
            start: r.get(4)?,
            end: r.get(5)?,
            taskmanager_id: r.get(6)?,
            host: r.get(7)?,
            counts: [r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?],
            ratio: r.get(13)?,
            level: r.get(14)?,
            split: r.get(15)?,
            metrics: r.get(16)?,
            top_frames: r.get(17)?,
            evidence: r.get(18)?,
            stacks: r.get(19)?,
        })
    }
}

impl std::ops::AddAssign for Rollup {
    fn add_assign(&mut self, r: Rollup) {
        self.windows += r.windows;
        self.merged += r.merged;
        self.skipped += r.skipped;
    }
}

impl Store {
    /// The start of the oldest window stored, if any.
    pub fn oldest_window_start_ms(&self) -> Result<Option<u64>, StoreError> {
        let path = &self.path;
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MIN(window_start_ms) FROM windows", [], |r| r.get(0))
            .map_err(sql("find the oldest window", path))?;
        Ok(v.map(|v| v.max(0) as u64))
    }

    /// Merges each subtask's windows shorter than `span_ms` that started in the same
    /// `span_ms`-aligned slot (same attempt) into one, for the slots in `[from_ms, before_ms)`
    /// (`from_ms` rounded down, `before_ms` rounded down to a slot). One transaction per slot,
    /// so the write lock is held for one slot's windows at a time.
    pub fn roll_up(
        &mut self,
        from_ms: u64,
        before_ms: u64,
        span_ms: u64,
    ) -> Result<Rollup, StoreError> {
        let span = span_ms.max(1);
        let mut slot = from_ms / span * span;
        let end = before_ms / span * span;
        let mut total = Rollup::default();
        while slot < end {
            total += self.roll_up_slot(slot, span)?;
            slot += span;
        }
        if total.windows > 0 {
            tracing::debug!(
                windows = total.windows,
                merged = total.merged,
                "rolled up old windows"
            );
        }
        Ok(total)
    }

    fn roll_up_slot(&mut self, slot: u64, span: u64) -> Result<Rollup, StoreError> {
        let from = to_i64("slot", slot)?;
        let until = to_i64("slot", slot.saturating_add(span))?;
        let span = to_i64("span", span)?;
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin a rollup", path))?;
        let rows: Vec<Stored> = tx
            .prepare_cached(
                "SELECT rowid, job_key, subtask_id, attempt, window_start_ms, window_end_ms,
                        taskmanager_id, host, samples, blocked, soft, idle, busy, ratio, level,
                        split, metrics, top_frames, evidence, stacks
                 FROM windows
                 WHERE window_start_ms >= ?1 AND window_start_ms < ?2
                   AND window_end_ms - window_start_ms < ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![from, until, span], Stored::from_row)?
                    .collect()
            })
            .map_err(sql("read windows to roll up", path))?;
        let mut groups: BTreeMap<(i64, i64, i64), Vec<Stored>> = BTreeMap::new();
        for r in rows {
            groups
                .entry((r.job_key, r.subtask_id, r.attempt))
                .or_default()
                .push(r);
        }
        let mut out = Rollup::default();
        for group in groups.values().filter(|g| g.len() > 1) {
            let Some(m) = merge(group) else {
                out.skipped += 1;
                continue;
            };
            let mut delete = tx
                .prepare_cached("DELETE FROM windows WHERE rowid = ?1")
                .map_err(sql("roll up windows", path))?;
            for r in group {
                delete
                    .execute(params![r.rowid])
                    .map_err(sql("roll up windows", path))?;
            }
            tx.prepare_cached(INSERT_WINDOW)
                .and_then(|mut s| {
                    s.execute(params![
                        m.job_key,
                        m.subtask_id,
                        m.attempt,
                        m.start,
                        m.end,
                        m.taskmanager_id,
                        m.host,
                        m.counts[0],
                        m.counts[1],
                        m.counts[2],
                        m.counts[3],
                        m.counts[4],
                        m.ratio,
                        m.level,
                        m.split,
                        m.metrics,
                        m.top_frames,
                        m.evidence,
                        m.stacks,
                    ])
                })
                .map_err(sql("roll up windows", path))?;
            // A subtask whose newest window was merged points at the merged one.
            let last = group.iter().map(|r| r.start).max().unwrap_or(m.start);
            tx.prepare_cached(
                "UPDATE subtasks SET latest_start_ms = ?2
                 WHERE id = ?1 AND latest_attempt = ?3
                   AND latest_start_ms > ?2 AND latest_start_ms <= ?4",
            )
            .and_then(|mut s| s.execute(params![m.subtask_id, m.start, m.attempt, last]))
            .map_err(sql("roll up windows", path))?;
            out.windows += group.len();
            out.merged += 1;
        }
        tx.commit().map_err(sql("commit a rollup", path))?;
        Ok(out)
    }
}

fn level_rank(level: Option<&str>) -> u8 {
    match level {
        Some("high") => 3,
        Some("low") => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// One window for a group of the same subtask's windows (see the module's doc); `None` when a
/// column does not decode.
fn merge(group: &[Stored]) -> Option<Stored> {
    // The worst window: highest ratio, then worst level, then the newest.
    let worst = group.iter().max_by(|a, b| {
        a.ratio
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.ratio.unwrap_or(f64::NEG_INFINITY))
            .then(level_rank(a.level.as_deref()).cmp(&level_rank(b.level.as_deref())))
            .then(a.start.cmp(&b.start))
    })?;
    let mut counts = [0i64; 5];
    for r in group {
        for (sum, n) in counts.iter_mut().zip(r.counts) {
            *sum += n;
        }
    }
    let level = group
        .iter()
        .map(|r| r.level.as_deref())
        .max_by_key(|l| level_rank(*l))
        .flatten()
        .map(str::to_string);
    Some(Stored {
        rowid: 0,
        job_key: worst.job_key,
        subtask_id: worst.subtask_id,
        attempt: worst.attempt,
        start: group.iter().map(|r| r.start).min()?,
        end: group.iter().map(|r| r.end).max()?,
        taskmanager_id: worst.taskmanager_id.clone(),
        host: worst.host.clone(),
        counts,
        ratio: group.iter().filter_map(|r| r.ratio).reduce(f64::max),
        level,
        split: worst.split.clone(),
        metrics: worst.metrics.clone(),
        top_frames: merge_frames(group)?,
        evidence: worst.evidence.clone(),
        stacks: merge_stacks(group),
    })
}

/// The top frames summed by frame and activity, most samples first, as many as the longest
/// list had.
fn merge_frames(group: &[Stored]) -> Option<String> {
    let mut sums: HashMap<(String, Option<String>), (u64, Option<FrameCount>)> = HashMap::new();
    let mut longest = 0;
    for r in group {
        let frames: Vec<FrameCount> = serde_json::from_str(&r.top_frames).ok()?;
        longest = longest.max(frames.len());
        for f in frames {
            let activity = serde_json::to_string(&f.activity).ok();
            let e = sums.entry((f.frame.clone(), activity)).or_default();
            e.0 += u64::from(f.samples);
            e.1.get_or_insert(f);
        }
    }
    let mut frames: Vec<FrameCount> = sums
        .into_values()
        .filter_map(|(n, f)| {
            f.map(|mut f| {
                f.samples = u32::try_from(n).unwrap_or(u32::MAX);
                f
            })
        })
        .collect();
    frames.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.frame.cmp(&b.frame))
    });
    frames.truncate(longest);
    serde_json::to_string(&frames).ok()
}

/// The busy stacks summed by id.
fn merge_stacks(group: &[Stored]) -> Option<String> {
    let mut sums: BTreeMap<i64, u64> = BTreeMap::new();
    for text in group.iter().filter_map(|r| r.stacks.as_deref()) {
        for (id, n) in decode(text) {
            *sums.entry(id).or_default() += n;
        }
    }
    let pairs: Vec<(i64, u32)> = sums
        .into_iter()
        .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect();
    encode(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(start: i64, ratio: Option<f64>, level: Option<&str>) -> Stored {
        Stored {
            rowid: start,
            job_key: 1,
            subtask_id: 7,
            attempt: 0,
            start,
            end: start + 1_900,
            taskmanager_id: Some(format!("tm-{start}")),
            host: Some("h".into()),
            counts: [20, 2, 3, 4, 11],
            ratio,
            level: level.map(str::to_string),
            split: "task_timers".into(),
            metrics: format!("{{\"outPoolUsage\":{}}}", ratio.unwrap_or(0.0)),
            top_frames: r#"[{"frame":"a.B.c","samples":5},{"frame":"d.E.f","samples":1}]"#.into(),
            evidence: None,
            stacks: Some("3:4 9:1".into()),
        }
    }

    #[test]
    fn a_merged_window_sums_the_samples_and_keeps_the_peak() {
        let group = [
            stored(0, Some(0.05), Some("ok")),
            stored(2_000, Some(0.9), Some("high")),
            stored(4_000, None, None),
            stored(6_000, Some(0.3), Some("low")),
        ];
        let m = merge(&group).unwrap();
        assert_eq!((m.start, m.end), (0, 7_900));
        assert_eq!(m.counts, [80, 8, 12, 16, 44]);
        assert_eq!((m.ratio, m.level.as_deref()), (Some(0.9), Some("high")));
        // What the subtask looked like at its peak.
        assert_eq!(m.taskmanager_id.as_deref(), Some("tm-2000"));
        assert_eq!(m.metrics, "{\"outPoolUsage\":0.9}");
        let frames: Vec<FrameCount> = serde_json::from_str(&m.top_frames).unwrap();
        let frames: Vec<(&str, u32)> = frames
            .iter()
            .map(|f| (f.frame.as_str(), f.samples))
            .collect();
        assert_eq!(frames, [("a.B.c", 20), ("d.E.f", 4)]);
        assert_eq!(m.stacks.as_deref(), Some("3:16 9:4"));
    }

    #[test]
    fn merging_merged_windows_gives_the_same_window() {
        let all: Vec<Stored> = (0..6)
            .map(|i| stored(i * 2_000, Some(0.1 * i as f64), Some("low")))
            .collect();
        let at_once = merge(&all).unwrap();
        let halves = [merge(&all[..3]).unwrap(), merge(&all[3..]).unwrap()];
        assert_eq!(merge(&halves).unwrap(), at_once);
    }

    #[test]
    fn a_column_that_does_not_decode_leaves_the_group_alone() {
        let mut bad = stored(2_000, Some(0.2), Some("low"));
        bad.top_frames = "not json".into();
        assert!(merge(&[stored(0, None, None), bad]).is_none());
    }
}
