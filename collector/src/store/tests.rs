use super::schema::user_version;
use super::windows::{history_sql, latest_sql, split_str, WATCHED_SINCE_SQL};
use super::*;
use crate::clock::now_ms;
use crate::mapping::SubtaskRef;
use crate::merge::{MergedWindow, SplitRule};
use crate::model::SubtaskMetrics;
use bpmon_proto::{
    FrameCount, Level, SamplingSettings, Scope, TimerCounts, TimerMethod, TimerTotals, TimerWindow,
};
use rusqlite::{params, Connection};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bpmon-store-{name}-{}-{}-{}",
            std::process::id(),
            now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn window(job: &str, vertex: &str, subtask: u32, start_ms: u64) -> MergedWindow {
    MergedWindow {
        job_id: job.into(),
        vertex_id: vertex.into(),
        subtask,
        attempt: 0,
        window_start_ms: start_ms,
        window_end_ms: start_ms.saturating_add(4_950),
        taskmanager_id: Some("10.0.0.1:6122-abc123".into()),
        host: Some("10.0.0.1".into()),
        samples: 100,
        blocked: 60,
        soft: 10,
        idle: 20,
        busy: 10,
        ratio: Some(0.7),
        level: Some(Level::High),
        split: SplitRule::SoftIdleTime,
        metrics: SubtaskMetrics {
            out_pool_usage: Some(1.0),
            soft_back_pressured_ms: Some(330.0),
            idle_ms: Some(660.0),
            is_back_pressured: Some(true),
            ..Default::default()
        },
        top_frames: vec![FrameCount {
            frame: "com.example.Slow.map(Slow.java:17)".into(),
            samples: 7,
            activity: None,
        }],
        evidence: Default::default(),
        stacks: Vec::new(),
    }
}

fn keys(rows: &[MergedWindow]) -> Vec<(String, u32, u64)> {
    rows.iter()
        .map(|r| (r.vertex_id.clone(), r.subtask, r.window_start_ms))
        .collect()
}

fn vertex(id: &str, name: &str, parallelism: u32) -> VertexRow {
    VertexRow {
        vertex_id: id.into(),
        name: name.into(),
        parallelism,
    }
}

#[test]
fn a_retried_batch_is_recognised_and_the_highest_seq_kept() {
    let dir = TempDir::new("dedup");
    let mut store = Store::open(&dir.0).unwrap();
    assert!(store.record_batch("tm-1", 1).unwrap());
    assert!(store.record_batch("tm-1", 2).unwrap());
    assert!(
        !store.record_batch("tm-1", 2).unwrap(),
        "a retry is not new"
    );
    assert!(store.record_batch("tm-2", 2).unwrap(), "seqs are per agent");
    // A gap (3 and 4 missing), then a late batch below the highest.
    assert!(store.record_batch("tm-1", 5).unwrap());
    assert!(store.record_batch("tm-1", 3).unwrap());
    drop(store);

    let mut store = Store::open(&dir.0).unwrap();
    assert!(
        !store.record_batch("tm-1", 5).unwrap(),
        "dedup survives restarts"
    );
    let seqs = store.agent_seqs().unwrap();
    let highest: Vec<(&str, u64)> = seqs
        .iter()
        .map(|a| (a.agent_id.as_str(), a.highest_seq))
        .collect();
    assert_eq!(highest, [("tm-1", 5), ("tm-2", 2)]);
    assert!(seqs[0].last_batch_ms > 0);
}

#[test]
fn a_batch_and_its_windows_are_stored_together_or_not_at_all() {
    let dir = TempDir::new("ingest");
    let mut store = Store::open(&dir.0).unwrap();
    assert!(store
        .ingest_batch("tm-1", 1, &[window("j", "v", 0, 1_000)])
        .unwrap());
    // The retry is recognised and stores nothing.
    let mut changed = window("j", "v", 0, 1_000);
    changed.blocked = 1;
    assert!(!store.ingest_batch("tm-1", 1, &[changed]).unwrap());
    assert_eq!(store.latest_windows("j").unwrap()[0].blocked, 60);

    // A window that cannot be stored fails the batch, which stays unrecorded.
    let bad = window("j", "v", 1, u64::MAX);
    let e = store
        .ingest_batch("tm-1", 2, &[window("j", "v", 2, 2_000), bad])
        .unwrap_err();
    assert!(matches!(e, StoreError::OutOfRange { .. }), "{e}");
    assert_eq!(store.latest_windows("j").unwrap().len(), 1);
    assert!(store.agent_seqs().unwrap()[0].highest_seq == 1);
    assert!(store
        .ingest_batch("tm-1", 2, &[window("j", "v", 2, 2_000)])
        .unwrap());
    assert_eq!(store.latest_windows("j").unwrap().len(), 2);
}

#[test]
fn a_checkpoint_from_another_connection_empties_the_log_without_blocking_the_writer() {
    let dir = TempDir::new("checkpoint");
    let mut writer = Store::open(&dir.0).unwrap();
    writer.set_autocheckpoint(100_000).unwrap();
    let other = Store::open(&dir.0).unwrap();
    writer
        .insert_windows(&[window("j", "v", 0, 1_000)])
        .unwrap();
    let (log, copied) = other.checkpoint().unwrap();
    assert!(log > 0 && copied == log, "log {log} copied {copied}");
    // The writer goes on, and what it wrote is there.
    writer
        .insert_windows(&[window("j", "v", 1, 2_000)])
        .unwrap();
    assert_eq!(other.latest_windows("j").unwrap().len(), 2);
}

#[test]
fn batches_stored_as_a_group_are_each_recorded_once() {
    let dir = TempDir::new("group");
    let mut store = Store::open(&dir.0).unwrap();
    let a = [window("j", "v", 0, 1_000)];
    let b = [window("j", "v", 1, 1_000)];
    // The same batch twice in one group (a retry that overtook its original) is new once.
    let news = store
        .ingest_batches(&[("tm-1", 1, &a), ("tm-2", 1, &b), ("tm-1", 1, &a)])
        .unwrap();
    assert_eq!(news, vec![true, true, false]);
    assert_eq!(store.latest_windows("j").unwrap().len(), 2);
    assert_eq!(
        store.ingest_batches(&[("tm-2", 1, &b)]).unwrap(),
        vec![false]
    );
    // One bad batch fails the whole group, which leaves nothing behind.
    let bad = [window("j", "v", 2, u64::MAX)];
    let c = [window("j", "v", 3, 1_000)];
    assert!(store
        .ingest_batches(&[("tm-3", 1, &c), ("tm-3", 2, &bad)])
        .is_err());
    assert_eq!(store.latest_windows("j").unwrap().len(), 2);
    assert!(store.ingest_batch("tm-3", 1, &c).unwrap());
}

#[test]
fn windows_survive_close_and_reopen_unchanged() {
    let dir = TempDir::new("reopen");
    let full = window("job-a", "v1", 0, 60_000);
    let empty = MergedWindow {
        samples: 0,
        blocked: 0,
        soft: 0,
        idle: 0,
        busy: 0,
        ratio: None,
        level: None,
        split: SplitRule::NothingWaiting,
        metrics: SubtaskMetrics::default(),
        top_frames: vec![],
        taskmanager_id: None,
        host: None,
        ..window("job-a", "v1", 1, 60_000)
    };
    {
        let mut store = Store::open(&dir.0).unwrap();
        store
            .insert_windows(&[full.clone(), empty.clone()])
            .unwrap();
    }
    assert!(dir.0.join(DB_FILE).is_file());
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.latest_windows("job-a").unwrap(), [full, empty]);
    let version = user_version(&store.conn).unwrap();
    assert_eq!(version, i64::from(DB_SCHEMA_VERSION));
    // Metrics Flink did not report take no room.
    let stored: String = store
        .conn
        .query_row("SELECT metrics FROM windows LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert!(stored.contains("\"out_pool_usage\":1.0"), "{stored}");
    assert!(!stored.contains("null"), "{stored}");
}

#[test]
fn a_merged_subtask_round_trips_through_a_row() {
    let at = SubtaskRef {
        job_id: "j".into(),
        vertex_id: "v".into(),
        subtask: 3,
        attempt: 2,
    };
    let none = crate::merge::merge_subtask(
        &crate::merge::SampleCounts::default(),
        &SubtaskMetrics::default(),
    );
    let row = MergedWindow::new(&at, 1, 2, &none, SubtaskMetrics::default(), vec![]);
    assert_eq!(row.ratio, None, "NaN is stored as NULL");
    assert!(row.merged().ratio.is_nan());
    assert_eq!(row.subtask_ref(), at);
    // Serde round trip too (NaN would not survive JSON).
    let json = serde_json::to_string(&row).unwrap();
    assert_eq!(serde_json::from_str::<MergedWindow>(&json).unwrap(), row);
}

#[test]
fn storing_a_window_again_replaces_it() {
    let dir = TempDir::new("replace");
    let mut store = Store::open(&dir.0).unwrap();
    store.insert_windows(&[window("j", "v", 0, 1_000)]).unwrap();
    let mut again = window("j", "v", 0, 1_000);
    again.blocked = 5;
    again.level = Some(Level::Low);
    store.insert_windows(&[again.clone()]).unwrap();
    assert_eq!(store.history("j", None, 0).unwrap(), [again]);
}

#[test]
fn latest_windows_picks_the_newest_of_each_subtask() {
    let dir = TempDir::new("latest");
    let mut store = Store::open(&dir.0).unwrap();
    store.upsert_job("j", "job", "http://jm:8081", 1).unwrap();
    // v2 is listed first: the order of the vertices decides the order of the rows.
    store
        .upsert_vertices("j", &[vertex("v2", "Sink", 2), vertex("v1", "Source", 2)])
        .unwrap();
    // Out of time order, across several transactions, with another job in between.
    for start in [3_000, 5_000, 1_000] {
        store
            .insert_windows(&[
                window("j", "v1", 0, start),
                window("j", "v1", 1, start + 1),
                window("other", "v1", 0, start + 10_000),
            ])
            .unwrap();
    }
    store
        .insert_windows(&[window("j", "v2", 0, 4_000), window("j", "v2", 0, 2_000)])
        .unwrap();
    store
        .insert_windows(&[window("j", "v2", 1, 2_000)])
        .unwrap();
    // A redeployed subtask: the new attempt's window is the newest.
    let mut redeployed = window("j", "v2", 1, 6_000);
    redeployed.attempt = 1;
    store.insert_windows(&[redeployed]).unwrap();

    let latest = store.latest_windows("j").unwrap();
    assert_eq!(
        keys(&latest),
        [
            ("v2".into(), 0, 4_000),
            ("v2".into(), 1, 6_000),
            ("v1".into(), 0, 5_000),
            ("v1".into(), 1, 5_001),
        ]
    );
    assert_eq!(latest[1].attempt, 1);
    assert!(store.latest_windows("nope").unwrap().is_empty());
}

#[test]
fn history_filters_by_vertex_id_or_name_and_by_time() {
    let dir = TempDir::new("history");
    let mut store = Store::open(&dir.0).unwrap();
    store.upsert_job("j", "job", "http://jm:8081", 1).unwrap();
    store
        .upsert_vertices("j", &[vertex("v1", "Source", 1), vertex("v2", "Map", 1)])
        .unwrap();
    let mut rows = Vec::new();
    for start in [1_000, 2_000, 3_000] {
        rows.push(window("j", "v2", 0, start));
        rows.push(window("j", "v1", 0, start));
        rows.push(window("j2", "v1", 0, start));
    }
    // A vertex with windows but not (yet) in the vertex table.
    rows.push(window("j", "v3", 0, 2_500));
    store.insert_windows(&rows).unwrap();

    let all = store.history("j", None, 0).unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.iter().all(|r| r.job_id == "j"));
    assert!(
        all.windows(2)
            .all(|w| w[0].window_start_ms <= w[1].window_start_ms),
        "oldest first"
    );
    // Within a window: vertex order.
    assert_eq!(all[0].vertex_id, "v1");

    let by_id = store.history("j", Some("v2"), 0).unwrap();
    assert_eq!(
        keys(&by_id),
        [
            ("v2".into(), 0, 1_000),
            ("v2".into(), 0, 2_000),
            ("v2".into(), 0, 3_000)
        ]
    );
    assert_eq!(store.history("j", Some("Map"), 0).unwrap(), by_id);
    assert_eq!(store.history("j", Some("v3"), 0).unwrap().len(), 1);

    let recent = store.history("j", Some("Source"), 2_000).unwrap();
    assert_eq!(
        keys(&recent),
        [("v1".into(), 0, 2_000), ("v1".into(), 0, 3_000)]
    );
    assert!(store.history("j", None, 3_001).unwrap().is_empty());

    let e = store.history("j", Some("Sink"), 0).unwrap_err();
    assert!(matches!(e, StoreError::UnknownVertex { .. }), "{e}");
    assert!(e.to_string().contains("\"Sink\""), "{e}");
}

#[test]
fn jobs_and_vertices_survive_restarts_and_are_found_by_id_or_name() {
    let dir = TempDir::new("jobs");
    {
        let mut store = Store::open(&dir.0).unwrap();
        store
            .upsert_job("a1", "wordcount", "http://jm:8081", 1_000)
            .unwrap();
        store
            .upsert_vertices("a1", &[vertex("v1", "Source", 2), vertex("v2", "Sink", 1)])
            .unwrap();
        // Rescaled: the vertex list is replaced, not merged.
        store
            .upsert_vertices("a1", &[vertex("v1", "Source", 4)])
            .unwrap();
        store
            .upsert_job("b2", "etl", "http://jm:8081", 2_000)
            .unwrap();
        // An older sighting does not move last_seen back.
        store
            .upsert_job("b2", "etl", "http://jm:8081", 1_500)
            .unwrap();
        let e = store.upsert_vertices("zz", &[]).unwrap_err();
        assert!(matches!(e, StoreError::UnknownJob { .. }), "{e}");
    }
    let mut store = Store::open(&dir.0).unwrap();
    let jobs = store.jobs().unwrap();
    let ids: Vec<(&str, u64)> = jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.last_seen_ms))
        .collect();
    assert_eq!(ids, [("b2", 2_000), ("a1", 1_000)]);
    assert_eq!(jobs[1].vertices, [vertex("v1", "Source", 4)]);

    assert_eq!(store.find_job("a1").unwrap().unwrap().name, "wordcount");
    let by_name = store.find_job("wordcount").unwrap().unwrap();
    assert_eq!(by_name.job_id, "a1");
    assert_eq!(by_name.vertices.len(), 1);
    assert_eq!(store.find_job("nothing").unwrap(), None);

    // Resubmitted: the name now matches two jobs.
    store
        .upsert_job("c3", "wordcount", "http://jm:8081", 3_000)
        .unwrap();
    let e = store.find_job("wordcount").unwrap_err();
    match &e {
        StoreError::AmbiguousJob { candidates, .. } => {
            assert_eq!(candidates.len(), 2);
            assert!(candidates[0].starts_with("c3 (last seen 1970-01-01T00:00:03Z)"));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("a1 (last seen"), "{e}");
    // Where exactly one of them still runs, the name means that one; else it stays ambiguous.
    let running = |id: &str| id == "a1";
    let found = store.find_job_preferring("wordcount", running).unwrap();
    assert_eq!(
        found.map(|j| (j.job_id, j.vertices.len())),
        Some(("a1".to_string(), 1))
    );
    assert!(store.find_job_preferring("wordcount", |_| true).is_err());
    assert!(store.find_job_preferring("wordcount", |_| false).is_err());
    // The id still finds each.
    assert_eq!(store.find_job("c3").unwrap().unwrap().job_id, "c3");
}

#[test]
fn settings_fall_back_from_job_to_default_to_built_in() {
    let dir = TempDir::new("settings");
    let mut store = Store::open(&dir.0).unwrap();
    assert_eq!(
        store.settings_for("j1").unwrap(),
        SamplingSettings::default()
    );
    let default = SamplingSettings {
        samples: 50,
        delay_ms: 20,
        interval_ms: 30_000,
        stacks_every: 1,
    };
    let fast = SamplingSettings {
        samples: 20,
        delay_ms: 10,
        interval_ms: 5_000,
        stacks_every: 1,
    };
    store.set_settings(&Scope::Default, default).unwrap();
    assert_eq!(store.settings_for("j1").unwrap(), default);
    store.set_settings(&"j1".into(), fast).unwrap();
    drop(store);

    let mut store = Store::open(&dir.0).unwrap();
    assert_eq!(store.settings_for("j1").unwrap(), fast);
    assert_eq!(store.settings_for("j2").unwrap(), default);
    let all = store.all_settings().unwrap();
    let scopes: Vec<&str> = all.iter().map(|s| s.scope.as_str()).collect();
    assert_eq!(scopes, ["*", "j1"]);
    assert_eq!(all[1].settings, fast);
    assert!(all[1].updated_at_ms > 0);

    assert!(store.remove_settings(&"j1".into()).unwrap());
    assert!(!store.remove_settings(&"j1".into()).unwrap());
    assert_eq!(store.settings_for("j1").unwrap(), default);
}

#[test]
fn invalid_settings_are_refused_and_not_stored() {
    let dir = TempDir::new("bad-settings");
    let mut store = Store::open(&dir.0).unwrap();
    let too_long = SamplingSettings {
        samples: 100,
        delay_ms: 50,
        interval_ms: 4_000,
        stacks_every: 1,
    };
    let e = store.set_settings(&"j1".into(), too_long).unwrap_err();
    assert!(matches!(e, StoreError::InvalidSettings { .. }), "{e}");
    assert!(e.to_string().contains("4950 ms"), "{e}");
    let e = store
        .set_settings(&" ".into(), SamplingSettings::default())
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidSettings { .. }), "{e}");
    assert!(store.all_settings().unwrap().is_empty());
    assert_eq!(
        store.settings_for("j1").unwrap(),
        SamplingSettings::default()
    );
}

#[test]
fn prune_removes_old_rows_only() {
    let dir = TempDir::new("prune");
    let mut store = Store::open(&dir.0).unwrap();
    // "old" was last seen long ago and only has old windows; "live" is still reported.
    store
        .upsert_job("old", "old", "http://jm:8081", 500)
        .unwrap();
    store
        .upsert_vertices("old", &[vertex("v", "Map", 1)])
        .unwrap();
    store
        .upsert_job("live", "live", "http://jm:8081", 9_000)
        .unwrap();
    let mut rows = Vec::new();
    for start in (1_000..=5_000).step_by(1_000) {
        rows.push(window("live", "v", 0, start));
        rows.push(window("live", "v", 1, start));
    }
    rows.push(window("old", "v", 0, 1_000));
    store.insert_windows(&rows).unwrap();
    for (seq, at) in [(1, 1_000), (2, 2_000), (3, 4_000)] {
        assert!(store.record_batch_at("tm-1", seq, at).unwrap());
    }
    // An agent silent since before the cutoff.
    assert!(store.record_batch_at("gone", 1, 2_500).unwrap());

    // Chunks of 3 rows, so several transactions run.
    let removed = store.prune_in_chunks(3_000, 3).unwrap();
    // 4 + 1 windows, 3 batch records, job "old", agent "gone".
    assert_eq!(removed, 10);
    let agents: Vec<String> = store
        .agent_seqs()
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(agents, vec!["tm-1"]);
    let left = store.history("live", None, 0).unwrap();
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|r| r.window_start_ms >= 3_000));
    assert_eq!(store.latest_windows("live").unwrap().len(), 2);
    let jobs: Vec<String> = store
        .jobs()
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(jobs, ["live"]);
    // Batch records after the cutoff still deduplicate; pruned ones are forgotten, but the
    // agent's highest seq is kept.
    assert!(!store.record_batch_at("tm-1", 3, 9_000).unwrap());
    assert!(store.record_batch_at("tm-1", 1, 9_000).unwrap());
    assert_eq!(store.agent_seqs().unwrap()[0].highest_seq, 3);
    // Nothing more to do, and windows of a pruned subtask can be stored again.
    assert_eq!(store.prune(3_000).unwrap(), 0);
    store
        .insert_windows(&[window("old", "v", 0, 9_000)])
        .unwrap();
    assert_eq!(store.latest_windows("old").unwrap().len(), 1);
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = TempDir::new("future");
    Store::open(&dir.0).unwrap();
    let future = i64::from(DB_SCHEMA_VERSION) + 1;
    {
        let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", future).unwrap();
    }
    let e = Store::open(&dir.0).unwrap_err();
    match &e {
        StoreError::NewerSchema { found, .. } => assert_eq!(*found, future),
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&dir.0.join(DB_FILE).display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(&format!("schema version {future}")), "{msg}");
}

#[test]
fn a_file_that_is_not_a_database_names_the_file() {
    let dir = TempDir::new("garbage");
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join(DB_FILE), vec![b'x'; 4096]).unwrap();
    let e = Store::open(&dir.0).unwrap_err().to_string();
    assert!(e.contains(DB_FILE) && e.contains("not a database"), "{e}");
}

#[test]
fn split_rules_are_stored_by_their_serde_names() {
    use SplitRule::*;
    for rule in [
        TaskTimers,
        SoftIdleTime,
        BackPressuredIdleTime,
        OutputExhausted,
        OutputAvailable,
        NoMetrics,
        NothingWaiting,
    ] {
        assert_eq!(
            serde_json::to_value(rule).unwrap(),
            serde_json::Value::String(split_str(rule).into())
        );
    }
    for level in [Level::Ok, Level::Low, Level::High] {
        assert_eq!(
            serde_json::to_value(level).unwrap(),
            serde_json::Value::String(level.as_str().into())
        );
    }
}

#[test]
fn queries_use_the_indexes() {
    let dir = TempDir::new("plan");
    let store = Store::open(&dir.0).unwrap();
    // With real values bound: SQLite may plan again once it sees them.
    let plan = |q: &str, params: &[&dyn rusqlite::ToSql]| -> String {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
            .unwrap();
        let rows = stmt
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("\n")
    };
    let prune = plan(
        "SELECT rowid FROM windows WHERE window_start_ms < ?1 LIMIT 10",
        params![5],
    );
    assert!(prune.contains("windows_by_time"), "{prune}");
    // No scan of the windows: they are reached through the job's range of windows_by_job.
    let latest = plan(&latest_sql(), params!["j"]);
    assert!(
        latest.contains(
            "windows_by_job (job_key=? AND window_start_ms=? AND subtask_id=? AND attempt=?)"
        ),
        "{latest}"
    );
    let history = plan(&history_sql(), params!["j", 5, "v"]);
    assert!(
        history.contains("windows_by_job (job_key=? AND window_start_ms>?)"),
        "{history}"
    );
    let watched = plan(WATCHED_SINCE_SQL, params!["j"]);
    assert!(watched.contains("windows_by_job (job_key=?)"), "{watched}");
    for p in [latest, history, watched] {
        assert!(!p.contains("SCAN"), "{p}");
    }
}

#[test]
fn a_job_is_watched_since_its_oldest_window_held_ended() {
    let dir = TempDir::new("watched");
    let mut store = Store::open(&dir.0).unwrap();
    assert_eq!(store.watched_since("j").unwrap(), None);
    store
        .insert_windows(&[
            window("j", "v2", 1, 30_000),
            window("j", "v1", 0, 20_000),
            window("j", "v1", 0, 40_000),
            window("k", "v1", 0, 10_000),
        ])
        .unwrap();
    assert_eq!(store.watched_since("j").unwrap(), Some(24_950));
    assert_eq!(store.watched_since("k").unwrap(), Some(14_950));
    assert_eq!(store.watched_since("nope").unwrap(), None);
}

#[test]
fn evidence_round_trips_and_a_database_of_the_first_schema_is_migrated() {
    use crate::merge::WindowEvidence;
    use bpmon_proto::{ActivityCounts, JvmResources, LockCount, ThreadCpu};
    let dir = TempDir::new("evidence");
    // A database as the first release wrote it.
    {
        fs::create_dir_all(&dir.0).unwrap();
        let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch(super::schema::first_schema_for_tests())
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let mut store = Store::open(&dir.0).unwrap();
    assert_eq!(
        user_version(&store.conn).unwrap(),
        i64::from(DB_SCHEMA_VERSION)
    );
    let mut with = window("job-e", "v1", 0, 60_000);
    with.evidence = WindowEvidence {
        activity: Some(ActivityCounts {
            running: 10,
            lock: 80,
            io: 0,
            sleep: 2,
        }),
        locks: vec![LockCount {
            class: "com.acme.Shared".into(),
            owner: Some("Map (2/4)#0".into()),
            samples: 80,
        }],
        cpu: Some(ThreadCpu {
            cpu_ms: 900,
            wall_ms: 5000,
        }),
        resources: Some(JvmResources {
            wall_ms: 5000,
            gc_pause_ms: Some(12.5),
            ..Default::default()
        }),
        timers: Some(TimerWindow {
            method: TimerMethod::Fields,
            states: TimerCounts {
                idle: 10,
                soft: 80,
                hard: 0,
                busy: 10,
            },
            waiting_soft: 80,
            totals: Some(TimerTotals {
                span_ms: 4950,
                idle_ms: 400,
                soft_ms: 4000,
                hard_ms: 0,
            }),
            back_pressured_from_ms: Some(1_200),
            back_pressured_until_ms: Some(4_900),
        }),
        stack_samples: Some(10),
    };
    let without = window("job-e", "v1", 1, 60_000);
    store
        .insert_windows(&[with.clone(), without.clone()])
        .unwrap();
    assert_eq!(store.latest_windows("job-e").unwrap(), [with, without]);
    let nulls: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM windows WHERE evidence IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(nulls, 1, "a window without evidence stores none");
}

#[test]
fn episodes_are_saved_as_they_change_and_read_back_by_period() {
    use crate::api::{Episode, EpisodeBottleneck};
    use crate::cause::CauseKind;
    let dir = TempDir::new("episodes");
    let mut store = Store::open(&dir.0).unwrap();
    let mut e = Episode {
        job_id: "j".into(),
        vertex_id: "src".into(),
        vertex: "Source: numbers".into(),
        started_at_ms: 10_000,
        ended_at_ms: None,
        peak_level: Level::Low,
        peak_ratio: 0.3,
        peak_at_ms: 10_000,
        bottleneck: None,
    };
    store.save_episode(&e).unwrap();
    // It peaks, with a bottleneck known by then, and ends.
    e.peak_level = Level::High;
    e.peak_ratio = 0.95;
    e.peak_at_ms = 12_000;
    e.bottleneck = Some(EpisodeBottleneck {
        vertex_id: "sink".into(),
        vertex: "sink".into(),
        cause: CauseKind::Gc,
        share: Some(0.7),
        summary: "70 % in GC".into(),
    });
    store.save_episode(&e).unwrap();
    assert_eq!(store.open_episodes().unwrap(), [e.clone()]);
    e.ended_at_ms = Some(20_000);
    store.save_episode(&e).unwrap();
    let other = Episode {
        vertex_id: "map".into(),
        started_at_ms: 30_000,
        ended_at_ms: None,
        bottleneck: None,
        ..e.clone()
    };
    store.save_episode(&other).unwrap();
    assert_eq!(store.episodes("j", 0).unwrap(), [e.clone(), other.clone()]);
    // Since 25 s: the first ended before, the ongoing one stays.
    assert_eq!(
        store.episodes("j", 25_000).unwrap(),
        std::slice::from_ref(&other)
    );
    assert_eq!(store.open_episodes().unwrap(), std::slice::from_ref(&other));
    assert!(store.episodes("k", 0).unwrap().is_empty());
    // Retention removes ended episodes only.
    store.prune(1_000_000).unwrap();
    assert_eq!(store.episodes("j", 0).unwrap(), [other]);
}

#[test]
fn a_redeployed_job_takes_the_settings_of_the_earlier_job_of_its_name() {
    let dir = TempDir::new("inherit");
    let mut store = Store::open(&dir.0).unwrap();
    let url = "http://jm:8081";
    let continuous = SamplingSettings::CONTINUOUS;
    store.upsert_job("old", "etl", url, 1_000).unwrap();
    store
        .set_settings(&Scope::Job("old".into()), continuous)
        .unwrap();
    // The same job deployed again: a new id, the same name, the same cluster.
    store.upsert_job("new", "etl", url, 2_000).unwrap();
    assert_eq!(
        store.inherit_settings("new", "etl", url).unwrap(),
        Some("old".to_string())
    );
    assert_eq!(store.settings_for("new").unwrap(), continuous);
    // Once it has its own, nothing is taken again (a later `config set` or `reset` stands).
    assert_eq!(store.inherit_settings("new", "etl", url).unwrap(), None);
    // Another name, or the same name on another cluster: nothing to take.
    store.upsert_job("other", "ingest", url, 2_000).unwrap();
    assert_eq!(
        store.inherit_settings("other", "ingest", url).unwrap(),
        None
    );
    store
        .upsert_job("elsewhere", "etl", "http://jm2:8081", 2_000)
        .unwrap();
    assert_eq!(
        store
            .inherit_settings("elsewhere", "etl", "http://jm2:8081")
            .unwrap(),
        None
    );
    assert_eq!(
        store.settings_for("elsewhere").unwrap(),
        SamplingSettings::default()
    );
    // Of several namesakes, the one seen last gives its settings.
    let fast = SamplingSettings {
        samples: 10,
        interval_ms: 5_000,
        ..SamplingSettings::default()
    };
    store.set_settings(&Scope::Job("new".into()), fast).unwrap();
    store.upsert_job("newest", "etl", url, 3_000).unwrap();
    assert_eq!(
        store.inherit_settings("newest", "etl", url).unwrap(),
        Some("new".to_string())
    );
    assert_eq!(store.settings_for("newest").unwrap(), fast);
    assert!(store.has_job("newest").unwrap() && !store.has_job("never").unwrap());
}

fn stack(folded: &str, samples: u32) -> crate::merge::FoldedStack {
    crate::merge::FoldedStack {
        folded: folded.into(),
        samples,
    }
}

#[test]
fn stacks_are_stored_once_summed_per_vertex_and_period_and_pruned_with_their_windows() {
    let dir = TempDir::new("stacks");
    let mut store = Store::open(&dir.0).unwrap();
    let hot = "java.lang.Thread.run;com.acme.Enrich.map;com.acme.Cache.get";
    let cold = "java.lang.Thread.run;com.acme.Enrich.map;java.util.HashMap.get";
    let mut rows = Vec::new();
    for (start, subtask) in [(1_000, 0), (1_000, 1), (6_000, 0), (11_000, 0)] {
        let mut w = window("j1", "v2", subtask, start);
        w.stacks = vec![stack(hot, 5), stack(cold, 1)];
        rows.push(w);
    }
    // Another vertex's stacks are not this one's.
    let mut other = window("j1", "v1", 0, 1_000);
    other.stacks = vec![stack("java.lang.Thread.run;com.acme.Source.poll", 9)];
    rows.push(other);
    store.insert_windows(&rows).unwrap();
    // Storing a window again replaces its samples instead of adding them.
    store.insert_windows(&rows[..1]).unwrap();

    let distinct: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM stacks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(distinct, 3, "each distinct stack stored once");

    let all = store.flame_stacks("j1", "v2", 0, u64::MAX >> 2).unwrap();
    assert_eq!(all.samples, 24);
    assert_eq!(all.stacks, [stack(hot, 20), stack(cold, 4)]);
    // The period is [since, until) over the windows' starts.
    let early = store.flame_stacks("j1", "v2", 1_000, 6_000).unwrap();
    assert_eq!(early.stacks, [stack(hot, 10), stack(cold, 2)]);
    assert!(store
        .flame_stacks("j1", "v9", 0, 20_000)
        .unwrap()
        .stacks
        .is_empty());

    // A fresh connection finds the stored ids instead of storing the stacks again.
    drop(store);
    let mut store = Store::open(&dir.0).unwrap();
    let mut w = window("j1", "v2", 0, 16_000);
    w.stacks = vec![stack(hot, 1)];
    store.insert_windows(&[w]).unwrap();
    let count = |store: &Store, table: &str| -> i64 {
        store
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&store, "stacks"), 3);

    // Pruning before 11 000 drops the older windows and so their stacks' samples; the stacks
    // themselves were used just now and stay.
    store.prune(11_000).unwrap();
    assert_eq!(count(&store, "stacks"), 3);
    let left = store.flame_stacks("j1", "v2", 0, u64::MAX >> 2).unwrap();
    assert_eq!(left.stacks, [stack(hot, 6), stack(cold, 1)]);
    // A stack last used more than an hour before the cutoff names no window any more: gone.
    store
        .conn
        .execute(
            "UPDATE stacks SET last_used_ms = 5 WHERE folded LIKE '%Source.poll'",
            [],
        )
        .unwrap();
    store.prune(super::stacks::TOUCH_EVERY_MS + 10).unwrap();
    assert_eq!(count(&store, "stacks"), 2);
    // Stored again after its row went, a stack gets a new one (the cache was emptied).
    let mut w = window("j1", "v1", 0, 20_000);
    w.stacks = vec![stack("java.lang.Thread.run;com.acme.Source.poll", 2)];
    store.insert_windows(&[w]).unwrap();
    assert_eq!(count(&store, "stacks"), 3);
    let src = store.flame_stacks("j1", "v1", 0, u64::MAX >> 2).unwrap();
    assert_eq!(
        src.stacks,
        [stack("java.lang.Thread.run;com.acme.Source.poll", 2)]
    );
}

#[test]
fn the_timeline_sums_windows_into_buckets_per_vertex_keeping_the_worst() {
    let dir = TempDir::new("timeline");
    let mut store = Store::open(&dir.0).unwrap();
    let mut rows = Vec::new();
    // v2: subtask 0 HIGH at 0.7 and subtask 1 OK at 0.05 in the first 10 s bucket; LOW in the
    // second; v1 only in the second. A window outside the period is left out.
    for (vertex, subtask, start, ratio, level) in [
        ("v2", 0, 1_000, 0.7, Level::High),
        ("v2", 1, 6_000, 0.05, Level::Ok),
        ("v2", 0, 12_000, 0.3, Level::Low),
        ("v1", 0, 13_000, 0.0, Level::Ok),
        ("v2", 0, 40_000, 0.9, Level::High),
    ] {
        let mut w = window("j1", vertex, subtask, start);
        w.ratio = Some(ratio);
        w.level = Some(level);
        rows.push(w);
    }
    store.insert_windows(&rows).unwrap();
    let t = store.timeline("j1", 0, 20_000, 10_000).unwrap();
    let got: Vec<_> = t
        .iter()
        .map(|b| {
            (
                b.vertex_id.as_str(),
                b.start_ms,
                b.ratio,
                b.level,
                b.windows,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("v1", 10_000, Some(0.0), Some(Level::Ok), 1),
            ("v2", 0, Some(0.7), Some(Level::High), 2),
            ("v2", 10_000, Some(0.3), Some(Level::Low), 1),
        ]
    );
    assert!(store
        .timeline("nope", 0, 20_000, 10_000)
        .unwrap()
        .is_empty());
}

#[test]
fn old_short_windows_are_rolled_up_per_subtask_and_minute_without_changing_what_is_read() {
    let dir = TempDir::new("rollup");
    let mut store = Store::open(&dir.0).unwrap();
    store.upsert_job("j", "job", "http://jm:8081", 1).unwrap();
    store
        .upsert_vertices("j", &[vertex("v1", "Source", 2)])
        .unwrap();
    let hot = "java.lang.Thread.run;com.acme.Enrich.map";
    // Continuous windows: 2 s each, 3 minutes of two subtasks, a HIGH one at 70 s; then a
    // classic window (5 s, alone in its minute) at 200 s.
    let mut rows = Vec::new();
    for subtask in 0..2 {
        for i in 0..90u64 {
            let start = 600_000 + i * 2_000;
            let mut w = window("j", "v1", subtask, start);
            w.window_end_ms = start + 1_900;
            w.samples = 20;
            w.blocked = 0;
            let high = subtask == 1 && i == 35;
            w.ratio = Some(if high { 0.9 } else { 0.05 });
            w.level = Some(if high { Level::High } else { Level::Ok });
            w.stacks = vec![stack(hot, 2)];
            rows.push(w);
        }
    }
    rows.push(window("j", "v1", 0, 800_000));
    store.insert_windows(&rows).unwrap();
    let count = |store: &Store| -> i64 {
        store
            .conn
            .query_row("SELECT COUNT(*) FROM windows", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&store), 181);
    let timeline = |store: &Store| -> Vec<(u64, Option<f64>, Option<Level>)> {
        store
            .timeline("j", 0, 1_000_000, 60_000)
            .unwrap()
            .iter()
            .map(|b| (b.start_ms, b.ratio, b.level))
            .collect()
    };
    let before = timeline(&store);
    let flame_before = store.flame_stacks("j", "v1", 0, 1_000_000).unwrap();
    assert_eq!(store.oldest_window_start_ms().unwrap(), Some(600_000));

    // Everything before 750 s: the first two minutes and a half... rounded down to whole minutes
    // (600–720 s); the third minute and the classic window stay as they came.
    let r = store.roll_up(600_000, 750_000, 60_000).unwrap();
    assert_eq!(
        r,
        Rollup {
            windows: 120,
            merged: 4,
            skipped: 0
        }
    );
    assert_eq!(count(&store), 181 - 120 + 4);
    assert_eq!(timeline(&store), before);
    assert_eq!(
        store.flame_stacks("j", "v1", 0, 1_000_000).unwrap(),
        flame_before
    );
    let history = store.history("j", Some("v1"), 0).unwrap();
    let first: Vec<_> = history
        .iter()
        .filter(|w| w.window_start_ms < 720_000)
        .map(|w| {
            (
                w.subtask,
                w.window_start_ms,
                w.window_end_ms,
                w.samples,
                w.ratio,
                w.level,
            )
        })
        .collect();
    assert_eq!(
        first,
        [
            (0, 600_000, 659_900, 600, Some(0.05), Some(Level::Ok)),
            (1, 600_000, 659_900, 600, Some(0.05), Some(Level::Ok)),
            (0, 660_000, 719_900, 600, Some(0.05), Some(Level::Ok)),
            (1, 660_000, 719_900, 600, Some(0.9), Some(Level::High)),
        ]
    );
    // Rolling up again changes nothing; the newest windows are still each subtask's newest.
    let again = store.roll_up(0, 750_000, 60_000).unwrap();
    assert_eq!(again.windows, 0);
    let latest = store.latest_windows("j").unwrap();
    assert_eq!(
        keys(&latest),
        [("v1".into(), 0, 800_000), ("v1".into(), 1, 778_000)]
    );
}

#[test]
fn a_subtask_whose_newest_window_was_rolled_up_still_has_one() {
    let dir = TempDir::new("rollup-latest");
    let mut store = Store::open(&dir.0).unwrap();
    let rows: Vec<MergedWindow> = (0..10u64)
        .map(|i| {
            let mut w = window("j", "v1", 0, 60_000 + i * 2_000);
            w.window_end_ms = w.window_start_ms + 1_900;
            w
        })
        .collect();
    store.insert_windows(&rows).unwrap();
    store.roll_up(0, 120_000, 60_000).unwrap();
    let latest = store.latest_windows("j").unwrap();
    assert_eq!(keys(&latest), [("v1".into(), 0, 60_000)]);
    assert_eq!(latest[0].window_end_ms, 79_900);
    assert_eq!(latest[0].samples, 1_000);
}
