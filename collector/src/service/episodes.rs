//! Back-pressure episodes: a vertex's level changes, turned into spans an operator paged at
//! 03:00 can read — when it started, how bad it got, what the bottleneck was and why, when it
//! ended. An episode opens with the first status that shows the vertex LOW or HIGH and closes
//! once the vertex has stayed OK for [`QUIET_MS`]; its times are those of the windows that
//! showed it (with continuous watching, 2 s windows: to about a second).
//!
//! The quiet time is what keeps a vertex near a threshold from opening an episode every few
//! seconds (each one logged and counted): a dip to OK shorter than that is part of the episode.
//! The end is still the moment back-pressure stopped, in the first OK window; it is *announced*
//! once the quiet time has passed.
//!
//! Pure: [`EpisodeLog::observe`] takes a job's status (computed where the bottleneck events are,
//! see `bottlenecks`) and returns what changed; the caller stores and logs it. The open episodes
//! survive a restart: the collector resumes them from the store ([`EpisodeLog::resume`]).

use std::collections::{BTreeMap, HashMap};

use bpmon_proto::Level;

use crate::api::{Episode, EpisodeBottleneck, StatusView, VertexStatus};

use super::bottlenecks::Bottleneck;

/// What happened to an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeChange {
    Started,
    /// Worse than ever in this episode (a higher ratio); said in the log when the level rose.
    Peaked {
        level_rose: bool,
    },
    Ended,
}

impl EpisodeChange {
    /// The `episode` field of the log event.
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeChange::Started => "started",
            EpisodeChange::Peaked { .. } => "peaked",
            EpisodeChange::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeEvent {
    pub change: EpisodeChange,
    /// The episode as it is after the change.
    pub episode: Episode,
}

/// How long a vertex stays OK before its episode ends: the OK window must start at least this
/// long after the last window that showed the vertex back-pressured. With continuous watching
/// (2 s windows) that is three OK windows in a row; with Flink's classic sampling, windows a
/// minute apart, the first OK window ends it.
pub const QUIET_MS: u64 = 6_000;

/// An episode under way, and what its end waits for.
#[derive(Debug, Clone)]
struct Open {
    episode: Episode,
    /// The start of the newest window that showed the vertex LOW or HIGH.
    last_back_pressured_ms: u64,
    /// Where the vertex went OK, while the quiet time runs: when back-pressure stopped.
    relief_ms: Option<u64>,
}

/// The open episode of each vertex, by (job id, vertex id).
#[derive(Debug, Default)]
pub struct EpisodeLog {
    open: HashMap<(String, String), Open>,
}

impl EpisodeLog {
    /// Picks up the episodes a previous run left open.
    pub fn resume(open: Vec<Episode>) -> EpisodeLog {
        EpisodeLog {
            open: open
                .into_iter()
                .filter(|e| e.ended_at_ms.is_none())
                .map(|e| {
                    let open = Open {
                        // The last back-pressure this run knows of.
                        last_back_pressured_ms: e.peak_at_ms.max(e.started_at_ms),
                        relief_ms: None,
                        episode: e,
                    };
                    (
                        (open.episode.job_id.clone(), open.episode.vertex_id.clone()),
                        open,
                    )
                })
                .collect(),
        }
    }

    /// The episodes under way, oldest first.
    pub fn open(&self) -> Vec<Episode> {
        let mut v: Vec<Episode> = self.open.values().map(|o| o.episode.clone()).collect();
        v.sort_by(|a, b| {
            (a.started_at_ms, &a.job_id, &a.vertex_id).cmp(&(
                b.started_at_ms,
                &b.job_id,
                &b.vertex_id,
            ))
        });
        v
    }

    /// Takes in a job's status and its bottleneck; returns the episodes that started, peaked
    /// or ended, in the order of the job's vertices.
    pub fn observe(
        &mut self,
        status: &StatusView,
        bottleneck: Option<&Bottleneck>,
    ) -> Vec<EpisodeEvent> {
        let mut events = Vec::new();
        for v in &status.vertices {
            let key = (status.job_id.clone(), v.vertex_id.clone());
            let Some((level, ratio)) = v.level.zip(v.ratio) else {
                // No samples now: neither a start nor an end.
                continue;
            };
            match (level, self.open.get_mut(&key)) {
                (Level::Ok, Some(open)) => {
                    let relief_ms = *open.relief_ms.get_or_insert_with(|| relief(v));
                    if newest_window_start(v) >= open.last_back_pressured_ms + QUIET_MS {
                        events.extend(self.end(&key, relief_ms));
                    }
                }
                (Level::Ok, None) => {}
                (_, None) => {
                    let at = onset(v);
                    let e = Episode {
                        job_id: status.job_id.clone(),
                        vertex_id: v.vertex_id.clone(),
                        vertex: v.name.clone(),
                        started_at_ms: at,
                        ended_at_ms: None,
                        peak_level: level,
                        peak_ratio: ratio,
                        peak_at_ms: at,
                        bottleneck: bottleneck.map(episode_bottleneck),
                    };
                    self.open.insert(
                        key,
                        Open {
                            episode: e.clone(),
                            last_back_pressured_ms: newest_window_start(v),
                            relief_ms: None,
                        },
                    );
                    events.push(EpisodeEvent {
                        change: EpisodeChange::Started,
                        episode: e,
                    });
                }
                (_, Some(open)) => {
                    // Back-pressured again within the quiet time: the same episode.
                    open.relief_ms = None;
                    open.last_back_pressured_ms =
                        open.last_back_pressured_ms.max(newest_window_start(v));
                    let e = &mut open.episode;
                    let mut changed = false;
                    let level_rose = level > e.peak_level;
                    if ratio > e.peak_ratio {
                        e.peak_ratio = ratio;
                        e.peak_level = e.peak_level.max(level);
                        e.peak_at_ms = worst_window_start(v).max(e.started_at_ms);
                        // The bottleneck at the worst moment says most about the episode.
                        if let Some(b) = bottleneck {
                            e.bottleneck = Some(episode_bottleneck(b));
                        }
                        changed = true;
                    } else if e.bottleneck.is_none() && bottleneck.is_some() {
                        e.bottleneck = bottleneck.map(episode_bottleneck);
                        changed = true;
                    }
                    if changed {
                        events.push(EpisodeEvent {
                            change: EpisodeChange::Peaked { level_rose },
                            episode: e.clone(),
                        });
                    }
                }
            }
        }
        // A vertex no longer in the job's graph (a new job version) ends with what was seen.
        let vertices: Vec<&str> = status
            .vertices
            .iter()
            .map(|v| v.vertex_id.as_str())
            .collect();
        let gone: Vec<(String, String)> = self
            .open
            .keys()
            .filter(|(j, v)| *j == status.job_id && !vertices.contains(&v.as_str()))
            .cloned()
            .collect();
        for key in gone {
            events.extend(self.end(&key, status.updated_at_ms));
        }
        events
    }

    /// The job is no longer known or no longer runs: its open episodes end at `at_ms` (where
    /// the vertex went OK if it had; at their peak, if later).
    pub fn forget(&mut self, job_id: &str, at_ms: u64) -> Vec<EpisodeEvent> {
        let keys: Vec<(String, String)> = self
            .open
            .keys()
            .filter(|(j, _)| j == job_id)
            .cloned()
            .collect();
        // Stable order: by vertex id.
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (k.1.clone(), k)).collect();
        keys.values().flat_map(|k| self.end(k, at_ms)).collect()
    }

    /// The jobs with an episode open.
    pub fn jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self.open.keys().map(|(j, _)| j.clone()).collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }

    /// Ends an episode at `at_ms`, or where the vertex went OK if it had (and at its peak at
    /// the earliest).
    fn end(&mut self, key: &(String, String), at_ms: u64) -> Option<EpisodeEvent> {
        let open = self.open.remove(key)?;
        let mut e = open.episode;
        e.ended_at_ms = Some(open.relief_ms.unwrap_or(at_ms).max(e.peak_at_ms));
        Some(EpisodeEvent {
            change: EpisodeChange::Ended,
            episode: e,
        })
    }
}

fn episode_bottleneck(b: &Bottleneck) -> EpisodeBottleneck {
    EpisodeBottleneck {
        vertex_id: b.vertex_id.clone(),
        vertex: b.vertex.clone(),
        cause: b.cause,
        share: b.share,
        summary: b.summary.clone(),
    }
}

/// When back-pressure began in the windows that first show the vertex LOW or HIGH: the first
/// back-pressured sample of its back-pressured subtasks where Flink's timers tell it (to the
/// sample: 100 ms when watching continuously), else their windows' start.
fn onset(v: &VertexStatus) -> u64 {
    v.subtasks
        .iter()
        .filter(|s| s.level.is_some_and(|l| l > Level::Ok))
        .filter_map(|s| {
            let from = s.timers.and_then(|t| t.back_pressured_from_ms);
            from.or(s.window_start_ms)
        })
        .min()
        .unwrap_or_else(|| worst_window_start(v))
}

/// When back-pressure ended, seen in the windows that show the vertex OK again: the last
/// back-pressured sample in them where the timers tell it, else their start.
fn relief(v: &VertexStatus) -> u64 {
    v.subtasks
        .iter()
        .filter_map(|s| {
            let until = s.timers.and_then(|t| t.back_pressured_until_ms);
            until.max(s.window_start_ms)
        })
        .max()
        .unwrap_or(0)
}

/// When the window that shows the vertex at its worst started: its worst subtask's newest.
fn worst_window_start(v: &VertexStatus) -> u64 {
    v.subtasks
        .iter()
        .filter(|s| s.ratio.is_some())
        .max_by(|a, b| {
            a.ratio
                .unwrap_or(0.0)
                .total_cmp(&b.ratio.unwrap_or(0.0))
                .then(b.window_start_ms.cmp(&a.window_start_ms))
        })
        .and_then(|s| s.window_start_ms)
        .unwrap_or_else(|| newest_window_start(v))
}

/// When the vertex's newest window started (all its subtasks are at the level shown by then).
fn newest_window_start(v: &VertexStatus) -> u64 {
    v.subtasks
        .iter()
        .filter_map(|s| s.window_start_ms)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SubtaskStatus;
    use crate::cause::CauseKind;
    use bpmon_proto::SamplingSettings;

    fn subtask(i: u32, ratio: f64, start: u64) -> SubtaskStatus {
        SubtaskStatus {
            subtask: i,
            level: Level::from_ratio(ratio),
            ratio: Some(ratio),
            samples: 20,
            blocked: 0,
            soft: 0,
            idle: 0,
            busy: 0,
            split: None,
            ratio_source: None,
            timers: None,
            taskmanager_id: None,
            host: None,
            attempt: Some(0),
            window_start_ms: Some(start),
            window_end_ms: Some(start + 1_900),
            metrics: Default::default(),
            top_frames: vec![],
            why: None,
        }
    }

    /// A job of two vertices, `src` (two subtasks) and `sink`, at the given ratios, with
    /// windows starting at `start`.
    fn status(src: [f64; 2], sink: f64, start: u64) -> StatusView {
        let vertex = |id: &str, subtasks: Vec<SubtaskStatus>| {
            let worst = subtasks
                .iter()
                .filter_map(|s| s.ratio)
                .fold(f64::NAN, f64::max);
            VertexStatus {
                vertex_id: id.into(),
                name: format!("{id} name"),
                parallelism: subtasks.len() as u32,
                level: Level::from_ratio(worst),
                ratio: Some(worst),
                subtasks,
            }
        };
        StatusView {
            job_id: "j".into(),
            job_name: "job".into(),
            flink_url: "http://f".into(),
            state: Some("RUNNING".into()),
            level: None,
            updated_at_ms: start + 1_900,
            stale: false,
            stale_reasons: vec![],
            metrics_fetched_at_ms: None,
            settings: SamplingSettings::CONTINUOUS,
            edges: Vec::new(),
            vertices: vec![
                vertex(
                    "src",
                    vec![subtask(0, src[0], start), subtask(1, src[1], start + 50)],
                ),
                vertex("sink", vec![subtask(0, sink, start)]),
            ],
            diagnosis: vec![],
        }
    }

    fn sink_bottleneck(cause: CauseKind) -> Bottleneck {
        Bottleneck {
            vertex_id: "sink".into(),
            vertex: "sink name".into(),
            cause,
            share: Some(0.8),
            summary: "80 % on CPU".into(),
            victims: vec!["src name".into()],
        }
    }

    #[test]
    fn an_episode_starts_peaks_and_ends_with_the_windows_that_showed_it() {
        let mut log = EpisodeLog::default();
        assert!(log.observe(&status([0.0, 0.0], 0.0, 0), None).is_empty());
        // The source goes LOW at t=2 s (its second subtask's window started 50 ms later).
        let b = sink_bottleneck(CauseKind::Cpu);
        let e = log.observe(&status([0.1, 0.3], 0.0, 2_000), Some(&b));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].change, EpisodeChange::Started);
        let ep = &e[0].episode;
        assert_eq!((ep.vertex_id.as_str(), ep.started_at_ms), ("src", 2_050));
        assert_eq!((ep.peak_level, ep.ended_at_ms), (Level::Low, None));
        assert_eq!(ep.bottleneck.as_ref().unwrap().cause, CauseKind::Cpu);
        // Worse at t=4 s, now HIGH, the cause is GC by then.
        let e = log.observe(
            &status([0.9, 0.4], 0.0, 4_000),
            Some(&sink_bottleneck(CauseKind::Gc)),
        );
        assert_eq!(e[0].change, EpisodeChange::Peaked { level_rose: true });
        assert_eq!(
            (e[0].episode.peak_level, e[0].episode.peak_at_ms),
            (Level::High, 4_000)
        );
        assert_eq!(
            e[0].episode.bottleneck.as_ref().unwrap().cause,
            CauseKind::Gc
        );
        // Less bad: nothing to say.
        assert!(log
            .observe(&status([0.6, 0.0], 0.0, 6_000), None)
            .is_empty());
        assert_eq!(log.open().len(), 1);
        // OK again from t=8 s: the episode ends once the quiet time has passed (the window
        // from t=12 s starts 6 s after the last back-pressured one), at t=8 s; the peak and its
        // cause stay.
        for t in [8_000, 10_000] {
            assert!(log.observe(&status([0.0, 0.05], 0.0, t), None).is_empty());
            assert_eq!(log.open().len(), 1);
        }
        let e = log.observe(&status([0.0, 0.05], 0.0, 12_000), None);
        assert_eq!(e[0].change, EpisodeChange::Ended);
        assert_eq!(e[0].episode.started_at_ms, 2_050);
        assert_eq!(e[0].episode.ended_at_ms, Some(8_050));
        assert_eq!(e[0].episode.peak_ratio, 0.9);
        assert!(log.open().is_empty());
    }

    #[test]
    fn with_timers_an_episode_starts_and_ends_at_the_back_pressured_samples() {
        use bpmon_proto::{TimerMethod, TimerWindow};
        let timers = |from: Option<u64>, until: Option<u64>| TimerWindow {
            method: TimerMethod::Fields,
            states: Default::default(),
            waiting_soft: 0,
            totals: None,
            back_pressured_from_ms: from,
            back_pressured_until_ms: until,
        };
        let mut log = EpisodeLog::default();
        // The window from t=2 s shows the source LOW: back-pressure began at its sample of
        // 3.3 s (subtask 1); subtask 0 is OK.
        let mut s = status([0.0, 0.35], 0.0, 2_000);
        s.vertices[0].subtasks[1].timers = Some(timers(Some(3_300), Some(3_950)));
        let e = log.observe(&s, None);
        assert_eq!(e[0].episode.started_at_ms, 3_300);
        // OK again in the window from t=6 s, whose first sample at 6.05 s was still
        // back-pressured.
        let mut s = status([0.0, 0.05], 0.0, 6_000);
        s.vertices[0].subtasks[1].timers = Some(timers(Some(6_050), Some(6_050)));
        assert!(log.observe(&s, None).is_empty());
        // Still OK 6 s after the last back-pressured window: it ended at that sample.
        let e = log.observe(&status([0.0, 0.0], 0.0, 8_000), None);
        assert_eq!(e[0].episode.ended_at_ms, Some(6_050));
    }

    #[test]
    fn a_dip_shorter_than_the_quiet_time_is_part_of_the_episode() {
        let mut log = EpisodeLog::default();
        let e = log.observe(&status([0.9, 0.9], 0.0, 0), None);
        assert_eq!(e.len(), 1);
        // OK for one window, then HIGH again: no end, no new start.
        assert!(log
            .observe(&status([0.0, 0.0], 0.0, 2_000), None)
            .is_empty());
        assert!(log
            .observe(&status([0.8, 0.8], 0.0, 4_000), None)
            .is_empty());
        assert_eq!(log.open()[0].started_at_ms, 0);
        // OK from t=6 s: the quiet time counts from the window of t=4 s.
        for t in [6_000, 8_000] {
            assert!(log.observe(&status([0.0, 0.0], 0.0, t), None).is_empty());
        }
        let e = log.observe(&status([0.0, 0.0], 0.0, 10_000), None);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].change, EpisodeChange::Ended);
        assert_eq!(
            (e[0].episode.started_at_ms, e[0].episode.ended_at_ms),
            (0, Some(6_050))
        );
        assert!(log.open().is_empty());
    }

    #[test]
    fn windows_a_minute_apart_end_an_episode_at_the_first_ok_one() {
        let mut log = EpisodeLog::default();
        log.observe(&status([0.9, 0.9], 0.0, 0), None);
        let e = log.observe(&status([0.0, 0.0], 0.0, 60_000), None);
        assert_eq!(e[0].change, EpisodeChange::Ended);
        assert_eq!(e[0].episode.ended_at_ms, Some(60_050));
    }

    #[test]
    fn a_job_that_goes_during_the_quiet_time_ends_where_it_went_ok() {
        let mut log = EpisodeLog::default();
        log.observe(&status([0.9, 0.9], 0.0, 0), None);
        assert!(log
            .observe(&status([0.0, 0.0], 0.0, 2_000), None)
            .is_empty());
        let e = log.forget("j", 30_000);
        assert_eq!(e[0].episode.ended_at_ms, Some(2_050));
    }

    #[test]
    fn a_resumed_episode_ends_and_a_vanished_job_ends_its_episodes() {
        let mut log = EpisodeLog::default();
        let started = log.observe(&status([0.9, 0.9], 0.7, 0), None);
        assert_eq!(started.len(), 2);
        // A restart: the open episodes come back from the store and end as before.
        let mut log = EpisodeLog::resume(log.open());
        assert_eq!(log.jobs(), ["j"]);
        let e = log.observe(&status([0.0, 0.0], 0.7, 10_000), None);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].episode.vertex_id, "src");
        let e = log.forget("j", 20_000);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].episode.vertex_id.as_str(), e[0].episode.ended_at_ms),
            ("sink", Some(20_000))
        );
        assert!(log.jobs().is_empty());
    }

    #[test]
    fn a_vertex_without_samples_neither_starts_nor_ends_an_episode() {
        let mut log = EpisodeLog::default();
        log.observe(&status([0.9, 0.9], 0.0, 0), None);
        let mut s = status([0.0, 0.0], 0.0, 2_000);
        for st in &mut s.vertices[0].subtasks {
            st.level = None;
            st.ratio = None;
        }
        s.vertices[0].level = None;
        s.vertices[0].ratio = None;
        assert!(log.observe(&s, None).is_empty());
        assert_eq!(log.open().len(), 1);
    }
}
