//! When a vertex's back-pressure level changes, the collector says so in its log: one line per
//! change, not one per window (`journalctl -u bpmon-collector F_BACKPRESSURE=high`, or the
//! `backpressure` field of `--log-format json`). A vertex's level is its worst subtask's, each
//! subtask taken at its newest window, as `status` computes it. A vertex first seen OK is not
//! news; first seen LOW or HIGH is. Pure: [`LevelLog::observe`] returns the changes, the caller
//! logs them.

use std::collections::HashMap;

use bpmon_proto::Level;

use crate::merge::MergedWindow;

/// One merged window's level.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub job_id: String,
    pub vertex_id: String,
    pub subtask: u32,
    pub window_start_ms: u64,
    pub level: Level,
    pub ratio: f64,
}

/// The windows of a batch that have a level.
pub fn observations(rows: &[MergedWindow]) -> Vec<Observation> {
    rows.iter()
        .filter_map(|r| {
            Some(Observation {
                job_id: r.job_id.clone(),
                vertex_id: r.vertex_id.clone(),
                subtask: r.subtask,
                window_start_ms: r.window_start_ms,
                level: r.level?,
                ratio: r.ratio.unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// A vertex whose level changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub job_id: String,
    pub vertex_id: String,
    pub level: Level,
    /// `None`: the vertex was not known.
    pub previous: Option<Level>,
    /// The worst subtask's ratio.
    pub ratio: f64,
    /// The subtasks at `level`.
    pub subtasks: Vec<u32>,
}

/// Vertices not heard of for this long (by their windows' clock) are forgotten.
const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;

#[derive(Default)]
struct VertexLevels {
    /// subtask → (window start, level, ratio) of its newest window.
    subtasks: HashMap<u32, (u64, Level, f64)>,
    /// The level last reported (or taken silently).
    reported: Option<Level>,
    newest_ms: u64,
}

/// Each vertex's level as last reported.
#[derive(Default)]
pub struct LevelLog {
    vertices: HashMap<(String, String), VertexLevels>,
    swept_at_ms: u64,
}

impl LevelLog {
    /// Takes in a batch's windows; returns the vertices whose level changed, in a stable order.
    pub fn observe(&mut self, observations: Vec<Observation>) -> Vec<Change> {
        let mut touched: Vec<(String, String)> = Vec::new();
        let mut newest = 0;
        for o in observations {
            newest = newest.max(o.window_start_ms);
            let key = (o.job_id, o.vertex_id);
            let v = self.vertices.entry(key.clone()).or_default();
            let entry = v.subtasks.entry(o.subtask).or_insert((0, o.level, o.ratio));
            if o.window_start_ms >= entry.0 {
                *entry = (o.window_start_ms, o.level, o.ratio);
            }
            v.newest_ms = v.newest_ms.max(o.window_start_ms);
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        let mut changes = Vec::new();
        for key in touched {
            let Some(v) = self.vertices.get_mut(&key) else {
                continue;
            };
            let Some(worst) = v.subtasks.values().map(|s| s.1).max() else {
                continue;
            };
            let previous = v.reported;
            v.reported = Some(worst);
            if previous == Some(worst) || (previous.is_none() && worst == Level::Ok) {
                continue;
            }
            let mut subtasks: Vec<u32> = v
                .subtasks
                .iter()
                .filter(|(_, s)| s.1 == worst)
                .map(|(i, _)| *i)
                .collect();
            subtasks.sort_unstable();
            let ratio = v
                .subtasks
                .values()
                .filter(|s| s.1 == worst)
                .map(|s| s.2)
                .fold(f64::NAN, f64::max);
            changes.push(Change {
                job_id: key.0,
                vertex_id: key.1,
                level: worst,
                previous,
                ratio,
                subtasks,
            });
        }
        if newest >= self.swept_at_ms + 60_000 {
            self.swept_at_ms = newest;
            let cutoff = newest.saturating_sub(FORGET_AFTER_MS);
            self.vertices.retain(|_, v| v.newest_ms >= cutoff);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(vertex: &str, subtask: u32, start: u64, level: Level) -> Observation {
        Observation {
            job_id: "j".into(),
            vertex_id: vertex.into(),
            subtask,
            window_start_ms: start,
            level,
            ratio: match level {
                Level::Ok => 0.0,
                Level::Low => 0.3,
                Level::High => 0.9,
            },
        }
    }

    #[test]
    fn a_change_is_reported_once() {
        let mut log = LevelLog::default();
        // First seen OK: nothing to say. First seen HIGH: said.
        let c = log.observe(vec![
            obs("a", 0, 1_000, Level::Ok),
            obs("b", 0, 1_000, Level::High),
            obs("b", 1, 1_000, Level::Ok),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].vertex_id.as_str(), c[0].level, c[0].previous),
            ("b", Level::High, None)
        );
        assert_eq!(c[0].subtasks, [0]);
        assert_eq!(c[0].ratio, 0.9);
        // The same again: nothing.
        assert!(log
            .observe(vec![obs("b", 0, 2_000, Level::High)])
            .is_empty());
        // Vertex a goes LOW; b drops to OK only once both subtasks are OK.
        let c = log.observe(vec![
            obs("a", 0, 3_000, Level::Low),
            obs("b", 1, 3_000, Level::Ok),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].level, c[0].previous), (Level::Low, Some(Level::Ok)));
        let c = log.observe(vec![obs("b", 0, 4_000, Level::Ok)]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].level, c[0].previous), (Level::Ok, Some(Level::High)));
    }

    #[test]
    fn an_older_window_arriving_late_does_not_win() {
        let mut log = LevelLog::default();
        log.observe(vec![obs("a", 0, 5_000, Level::High)]);
        // A window from the spool of an agent that was cut off, older than the one known.
        assert!(log.observe(vec![obs("a", 0, 1_000, Level::Ok)]).is_empty());
    }

    #[test]
    fn vertices_not_heard_of_for_a_day_are_forgotten() {
        let mut log = LevelLog::default();
        log.observe(vec![obs("old", 0, 1_000, Level::High)]);
        log.observe(vec![obs(
            "new",
            0,
            1_000 + FORGET_AFTER_MS + 120_000,
            Level::Ok,
        )]);
        assert_eq!(log.vertices.len(), 1);
        // Seen again: news again.
        let c = log.observe(vec![obs(
            "old",
            0,
            2_000 + FORGET_AFTER_MS + 120_000,
            Level::High,
        )]);
        assert_eq!(c.len(), 1);
    }
}
