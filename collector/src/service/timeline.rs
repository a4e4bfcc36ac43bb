//! A job over a period, for the web view and the API: each vertex's back-pressure as a bounded
//! series of points with the episodes in it ([`TimelineView`]), and a vertex's busy stacks
//! summed for a flame graph ([`FlameView`]). The period arithmetic is plain functions.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::api::{FlameView, TimelinePoint, TimelineView, VertexTimeline};
use crate::clock::now_ms;
use crate::diagnosis::first_bottleneck;
use crate::merge::FoldedStack;

use super::locks::lock;
use super::queries::QueryError;
use super::state::Collector;

/// The period when none is given: the last 15 minutes.
pub const DEFAULT_SPAN_MS: u64 = 15 * 60 * 1000;
/// Points per vertex when none are asked for, and the most that may be.
pub const DEFAULT_POINTS: u32 = 300;
pub const MAX_POINTS: u32 = 2_000;
/// No bucket is shorter than a second: windows are not.
pub const MIN_BUCKET_MS: u64 = 1_000;

/// A period as asked: `until` defaults to now, `since` to 15 minutes before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub since_ms: u64,
    pub until_ms: u64,
}

impl Period {
    pub fn from_query(since_ms: Option<u64>, until_ms: Option<u64>, now_ms: u64) -> Period {
        let until_ms = until_ms.unwrap_or(now_ms);
        let since_ms = since_ms
            .unwrap_or_else(|| until_ms.saturating_sub(DEFAULT_SPAN_MS))
            .min(until_ms);
        Period { since_ms, until_ms }
    }

    /// The bucket that splits the period into at most `points` (within 1..=[`MAX_POINTS`]),
    /// at least [`MIN_BUCKET_MS`].
    pub fn bucket_ms(&self, points: u32) -> u64 {
        let points = u64::from(points.clamp(1, MAX_POINTS));
        (self.until_ms - self.since_ms)
            .div_ceil(points)
            .max(MIN_BUCKET_MS)
    }
}

/// The folded text flame graph tools read (`flamegraph.pl`, speedscope, Pyroscope): one stack
/// per line, its samples after a space.
pub fn folded_text(stacks: &[FoldedStack]) -> String {
    let mut out = String::with_capacity(stacks.iter().map(|s| s.folded.len() + 8).sum());
    for s in stacks {
        // Flame graph tools split a line at its last space; frames never hold one as the agent
        // folds them, and a stray one would only shift the split.
        let _ = writeln!(out, "{} {}", s.folded, s.samples);
    }
    out
}

impl Collector {
    pub async fn timeline(
        self: &Arc<Self>,
        job: String,
        period: Period,
        points: u32,
    ) -> Result<TimelineView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            let bucket_ms = period.bucket_ms(points);
            let buckets =
                store.timeline(&row.job_id, period.since_ms, period.until_ms, bucket_ms)?;
            let mut by_vertex: HashMap<String, Vec<TimelinePoint>> = HashMap::new();
            for b in buckets {
                by_vertex
                    .entry(b.vertex_id)
                    .or_default()
                    .push(TimelinePoint {
                        at_ms: b.start_ms,
                        ratio: b.ratio,
                        level: b.level,
                        windows: b.windows,
                    });
            }
            let mut vertices: Vec<VertexTimeline> = row
                .vertices
                .iter()
                .map(|v| VertexTimeline {
                    vertex_id: v.vertex_id.clone(),
                    name: v.name.clone(),
                    points: by_vertex.remove(&v.vertex_id).unwrap_or_default(),
                })
                .collect();
            // Windows of vertices the stored topology lacks (none in practice), last.
            let mut rest: Vec<_> = by_vertex.into_iter().collect();
            rest.sort_by(|a, b| a.0.cmp(&b.0));
            vertices.extend(rest.into_iter().map(|(id, points)| VertexTimeline {
                name: id.clone(),
                vertex_id: id,
                points,
            }));
            let episodes = store
                .episodes(&row.job_id, period.since_ms)?
                .into_iter()
                .filter(|e| e.started_at_ms < period.until_ms)
                .collect();
            let watched_since_ms = store.watched_since(&row.job_id)?;
            Ok(TimelineView {
                job_id: row.job_id,
                job_name: row.name,
                since_ms: period.since_ms,
                until_ms: period.until_ms,
                bucket_ms,
                vertices,
                episodes,
                watched_since_ms,
            })
        })
        .await?
    }

    /// A vertex's busy stacks over the period; the job's bottleneck when `vertex` (id or name)
    /// is not given.
    pub async fn flame(
        self: &Arc<Self>,
        job: String,
        vertex: Option<String>,
        period: Period,
    ) -> Result<FlameView, QueryError> {
        self.blocking(move |me| {
            let store = lock(&me.reader);
            let row = me.find_job(&store, &job)?;
            let vertex_id = match vertex {
                Some(v) => row
                    .vertices
                    .iter()
                    .find(|r| r.vertex_id == v || r.name == v)
                    .map(|r| r.vertex_id.clone())
                    .ok_or_else(|| {
                        QueryError::Store(crate::store::StoreError::UnknownVertex {
                            job_id: row.job_id.clone(),
                            vertex: v.clone(),
                        })
                    })?,
                None => {
                    let status = me.cached_status(row.clone(), &store)?;
                    first_bottleneck(&status.view.diagnosis)
                        .map(|f| f.vertex_id.clone())
                        .ok_or_else(|| QueryError::NoBottleneck(row.job_id.clone()))?
                }
            };
            let vertex_name = row
                .vertices
                .iter()
                .find(|v| v.vertex_id == vertex_id)
                .map_or_else(|| vertex_id.clone(), |v| v.name.clone());
            let flame =
                store.flame_stacks(&row.job_id, &vertex_id, period.since_ms, period.until_ms)?;
            Ok(FlameView {
                job_id: row.job_id,
                job_name: row.name,
                vertex_id,
                vertex: vertex_name,
                since_ms: period.since_ms,
                until_ms: period.until_ms,
                samples: flame.samples,
                stacks: flame.stacks,
            })
        })
        .await?
    }
}

/// For callers that want the current time's period.
pub fn period_now(since_ms: Option<u64>, until_ms: Option<u64>) -> Period {
    Period::from_query(since_ms, until_ms, now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_defaults_to_the_last_15_minutes_and_never_runs_backwards() {
        let now = 10_000_000;
        assert_eq!(
            Period::from_query(None, None, now),
            Period {
                since_ms: now - DEFAULT_SPAN_MS,
                until_ms: now
            }
        );
        assert_eq!(
            Period::from_query(Some(5), Some(2), now),
            Period {
                since_ms: 2,
                until_ms: 2
            }
        );
        assert_eq!(Period::from_query(Some(7), None, now).until_ms, now);
    }

    #[test]
    fn buckets_split_the_period_into_at_most_the_points_asked_and_no_less_than_a_second() {
        let day = Period {
            since_ms: 0,
            until_ms: 86_400_000,
        };
        assert_eq!(day.bucket_ms(300), 288_000);
        assert_eq!(day.bucket_ms(0), 86_400_000, "at least one point");
        assert_eq!(day.bucket_ms(1_000_000), 43_200, "at most MAX_POINTS");
        let minute = Period {
            since_ms: 0,
            until_ms: 60_000,
        };
        assert_eq!(minute.bucket_ms(300), MIN_BUCKET_MS);
        let odd = Period {
            since_ms: 0,
            until_ms: 1_001_000,
        };
        assert!(odd.bucket_ms(1_000) * 1_000 >= 1_001_000, "rounded up");
    }

    #[test]
    fn folded_text_is_one_stack_per_line_with_its_samples() {
        let text = folded_text(&[
            FoldedStack {
                folded: "a;b;c".into(),
                samples: 3,
            },
            FoldedStack {
                folded: "a;d".into(),
                samples: 1,
            },
        ]);
        assert_eq!(text, "a;b;c 3\na;d 1\n");
    }
}
