//! How fast the store takes merged windows, and how much disk they need.
//!
//! Stores `WINDOWS` windows of a job with `SUBTASKS` subtasks (default 50 × 1,000) into a fresh
//! store in a temp dir, `ROWS_PER_TX` rows per transaction (default: a whole window, as when the
//! collector stores one merge round; an agent's batch covers fewer subtasks), each with a few
//! busy stacks, then times the queries `status`, `history` and the web view's timeline and
//! flame graph make, the rollup of windows shorter than a minute (with `INTERVAL_MS` under a
//! minute: continuous watching), and a retention prune of the older half.
//!
//! ```text
//! cargo run --release -p bpmon-collector --example store_insert [WINDOWS] [SUBTASKS] [ROWS_PER_TX] [INTERVAL_MS]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpmon_collector::mapping::SubtaskRef;
use bpmon_collector::merge::MergedWindow;
use bpmon_collector::merge::{merge_subtask, SampleCounts};
use bpmon_collector::model::SubtaskMetrics;
use bpmon_collector::store::{Store, VertexRow, DB_FILE, ROLLUP_SPAN_MS};
use bpmon_proto::FrameCount;

const VERTICES: u32 = 5;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let windows: u64 = args.next().map_or(Ok(50), |a| a.parse())?;
    let subtasks: u32 = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let per_tx: usize = args.next().map_or(Ok(subtasks as usize), |a| a.parse())?;
    // Classic windows (5 s of samples) a minute apart; continuous ones 2 s long, back to back.
    let interval: u64 = args.next().map_or(Ok(60_000), |a| a.parse())?;
    let parallelism = subtasks.div_ceil(VERTICES);

    let dir = std::env::temp_dir().join(format!("bpmon-store-bench-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let mut store = Store::open(&dir)?;
    let job = "5b8b7a3e2c1d4f6a9e0b1c2d3e4f5a6b";
    store.upsert_job(job, "bench", "http://localhost:8081", 0)?;
    let vertices: Vec<VertexRow> = (0..VERTICES)
        .map(|v| VertexRow {
            vertex_id: format!("{v:032x}"),
            name: format!("Vertex {v}"),
            parallelism,
        })
        .collect();
    store.upsert_vertices(job, &vertices)?;

    // Made up front: the benchmark times the store, not the row building.
    let t0 = 1_700_000_000_000;
    let all: Vec<MergedWindow> = (0..windows)
        .flat_map(|w| (0..subtasks).map(move |i| (w, i)))
        .map(|(w, i)| row(job, &vertices, parallelism, i, t0 + w * interval, interval))
        .collect();
    let batches: Vec<&[MergedWindow]> = all.chunks(per_tx.max(1)).collect();
    let rows = all.len();

    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for batch in &batches {
        let t = Instant::now();
        store.insert_windows(batch)?;
        slowest = slowest.max(t.elapsed());
    }
    let took = start.elapsed();
    println!(
        "inserted {rows} windows ({windows} × {subtasks} subtasks, {} rows per transaction) in \
         {:.2} s: {:.0} rows/s; slowest transaction {:.1} ms",
        per_tx.max(1),
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    let (db, wal) = sizes(&dir);
    println!(
        "on disk: {} (database {db} + WAL {wal}), {:.0} bytes/row",
        mib(db + wal),
        (db + wal) as f64 / rows as f64
    );

    let data_before = data_bytes(&dir)?;
    let t = Instant::now();
    let latest = store.latest_windows(job)?;
    println!(
        "latest_windows: {} rows in {:.1} ms",
        latest.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let since = t0 + windows.saturating_sub(10) * interval;
    let t = Instant::now();
    let history = store.history(job, Some("Vertex 2"), since)?;
    println!(
        "history of one vertex, last 10 windows: {} rows in {:.1} ms",
        history.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let history = store.history(job, Some("Vertex 2"), 0)?;
    println!(
        "history of one vertex, all windows: {} rows in {:.1} ms",
        history.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let until = t0 + windows * interval;
    let bucket = (windows * interval).div_ceil(240).max(1_000);
    let timeline = store.timeline(job, t0, until, bucket)?;
    println!(
        "timeline of the whole job, all windows in 240 buckets: {} points in {:.1} ms",
        timeline.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let flame = store.flame_stacks(job, &vertices[2].vertex_id, t0, until)?;
    println!(
        "flame graph of one vertex, all windows: {} stacks of {} samples in {:.1} ms",
        flame.stacks.len(),
        flame.samples,
        t.elapsed().as_secs_f64() * 1e3
    );
    if interval < ROLLUP_SPAN_MS {
        let t = Instant::now();
        let r = store.roll_up(t0, until + ROLLUP_SPAN_MS, ROLLUP_SPAN_MS)?;
        println!(
            "rollup: {} windows merged into {} in {:.2} s ({:.0} windows/s); data {} before, {} after",
            r.windows,
            r.merged,
            t.elapsed().as_secs_f64(),
            r.windows as f64 / t.elapsed().as_secs_f64(),
            mib(data_before),
            mib(data_bytes(&dir)?)
        );
        let t = Instant::now();
        let timeline = store.timeline(job, t0, until, bucket)?;
        println!(
            "after the rollup, the timeline: {} points in {:.1} ms",
            timeline.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        let t = Instant::now();
        let flame = store.flame_stacks(job, &vertices[2].vertex_id, t0, until)?;
        println!(
            "after the rollup, the flame graph: {} samples in {:.1} ms",
            flame.samples,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let t = Instant::now();
    let pruned = store.prune(t0 + windows / 2 * interval)?;
    println!(
        "prune of the older half: {pruned} rows in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    drop(store);
    let (db, wal) = sizes(&dir);
    println!("after close: database {}, WAL {wal} bytes", mib(db));
    Ok(())
}

/// A subtask's window: mostly realistic Flink 1.15+ metrics, a few busy frames.
fn row(
    job: &str,
    vertices: &[VertexRow],
    parallelism: u32,
    i: u32,
    start: u64,
    interval: u64,
) -> MergedWindow {
    let v = &vertices[(i / parallelism) as usize];
    let subtask = i % parallelism;
    let x = f64::from((i * 7 + (start / interval) as u32) % 100) / 100.0;
    let blocked = (x * 60.0) as u32;
    let waiting = ((1.0 - x) * 30.0) as u32;
    let counts = SampleCounts {
        samples: 100,
        blocked,
        waiting,
        busy: 100 - blocked - waiting,
        timers: None,
    };
    let metrics = SubtaskMetrics {
        out_pool_usage: Some(x),
        in_pool_usage: Some(1.0 - x),
        input_floating_buffers_usage: Some(0.5 * x),
        input_exclusive_buffers_usage: Some(0.25),
        num_records_in: Some(1.234e9 + f64::from(i)),
        num_records_out: Some(1.234e9 + f64::from(i)),
        num_bytes_in: Some(9.87e11),
        num_bytes_out: Some(9.87e11),
        num_buffers_out: Some(3.2e7),
        soft_back_pressured_ms: Some(300.0 * x),
        hard_back_pressured_ms: Some(600.0 * x),
        idle_ms: Some(100.0 * (1.0 - x)),
        busy_ms: Some(1000.0 - 1000.0 * x),
        is_back_pressured: Some(x > 0.5),
        ..Default::default()
    };
    let merged = merge_subtask(&counts, &metrics);
    let top_frames = (0..(i % 3))
        .map(|k| FrameCount {
            frame: format!(
                "com.example.pipeline.Enricher.lookup{k}(Enricher.java:{})",
                40 + k
            ),
            samples: counts.busy / (k + 1),
            activity: None,
        })
        .collect();
    let at = SubtaskRef {
        job_id: job.into(),
        vertex_id: v.vertex_id.clone(),
        subtask,
        attempt: 0,
    };
    let mut r = MergedWindow::new(
        &at,
        start,
        start + 4_950.min(interval - 100),
        &merged,
        metrics,
        top_frames,
    );
    // Three of 24 distinct stacks, 40 frames deep, as a busy task shows window after window.
    let base: Vec<String> = (0..38)
        .map(|d| format!("org.apache.flink.Frame{d}.run"))
        .collect();
    r.stacks = (0..3u32)
        .map(|k| {
            let leaf = (i + k * 5 + (start / interval) as u32 % 2) % 24;
            bpmon_collector::merge::FoldedStack {
                folded: format!(
                    "{};com.example.Enricher.lookup;com.example.Leaf{leaf}.call",
                    base.join(";")
                ),
                samples: counts.busy / (k + 1) + 1,
            }
        })
        .collect();
    r.taskmanager_id = Some(format!("10.0.{}.{}:6122-{:06x}", i / 250, i % 250, i));
    r.host = Some(format!("10.0.{}.{}", i / 250, i % 250));
    r
}

fn sizes(dir: &Path) -> (u64, u64) {
    let len = |name: String| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    (len(DB_FILE.to_owned()), len(format!("{DB_FILE}-wal")))
}

/// The database's pages in use (a deleted row's page is kept for reuse, not given back).
fn data_bytes(dir: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE))?;
    let pragma = |name: &str| -> anyhow::Result<u64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok((pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
