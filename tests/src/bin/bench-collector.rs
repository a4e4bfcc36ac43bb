//! `bench-collector`: the collector under load. N simulated agents post gzip JSON report batches
//! to a real `bpmon-collector serve` process while K clients ask it for a job's `status`; the
//! job has 1,000 subtasks spread over 200 TaskManagers.
//!
//! * Flink is simulated: an in-process HTTP server (127.0.0.1, any port) answers the REST
//!   endpoints the collector polls (`/config`, `/jobs/overview`, `/taskmanagers`, `/jobs/:jid`,
//!   `/jobs/:jid/vertices/:vid`, `/jobs/:jid/vertices/:vid/metrics?get=…`) for one running job,
//!   with Flink 2.x metric names and plausible values. A 200-TaskManager cluster does not fit on
//!   one machine; the collector cannot tell the difference.
//! * The collector is the release binary, pinned with `taskset` (`--cores`), so its CPU time is
//!   its own and measurable.
//! * Agents are simulated too: batches are built and gzipped before the clock starts, so the load
//!   tool spends its CPU on HTTP only (on a 2-CPU machine it shares the cores with the collector).
//!
//! Reported: subtask-records acknowledged per second, status latency under ingest and idle, and
//! baselines measured in the same run (a no-op round trip to the collector; each ingest stage —
//! gunzip + JSON, placement, store — timed alone in this process), because the machine is noisy.
//!
//!   cargo run --release -p bpmon-e2e --bin bench-collector [-- --help]
//!   scripts/bench collector

use bpmon_proto::time::now_ms;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bpmon_collector::flink_rest::FlinkRestClient;
use bpmon_collector::merge::MergedWindow as WindowRow;
use bpmon_collector::model::ClusterSnapshot;
use bpmon_collector::server::{decode_body, parse_batch};
use bpmon_collector::service::placement::place_batch;
use bpmon_collector::store::{Store, VertexRow};
use bpmon_proto::{
    FrameCount, JvmInfo, ReportBatch, SampleCost, SampleReport, TaskIdentity, TaskSamples,
    SCHEMA_VERSION,
};
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

/// Targets of the issue.
const TARGET_RECORDS_PER_S: f64 = 50_000.0;
const TARGET_STATUS_P99_MS: f64 = 50.0;
/// Sampling interval the simulated agents' windows are apart.
const INTERVAL_MS: u64 = 60_000;
const SAMPLES: u32 = 100;
const FLINK_VERSION: &str = "2.3.0";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench-collector",
    about = "Load benchmark of bpmon-collector: N simulated agents, K status clients, a simulated Flink"
)]
struct Args {
    /// TaskManagers of the simulated cluster (ids tm-000, tm-001, …).
    #[arg(long, default_value_t = 200)]
    taskmanagers: usize,
    /// Subtasks of the job, spread evenly over `--vertices` vertices.
    #[arg(long, default_value_t = 1000)]
    subtasks: u32,
    /// Vertices of the job (a chain); each has parallelism subtasks / vertices.
    #[arg(long, default_value_t = 5)]
    vertices: u32,
    /// Simulated agents; agent a reports TaskManagers a, a+N, a+2N, … (one report each per batch).
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Batches each agent posts, one window each, seq 1, 2, … in order (as the shipper does).
    #[arg(long, default_value_t = 250)]
    batches: u64,
    /// Batches in flight at once, over all agents (each agent has at most one in flight).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Clients calling GET /api/v1/jobs/<job>/status over and over.
    #[arg(long, default_value_t = 4)]
    status_clients: usize,
    /// Pause of each status client between two calls.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// How long the status clients run against the idle collector once ingest is over.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// CPUs the collector process is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0,1")]
    cores: String,
    /// CPUs this load tool is pinned to (the simulated agents, status clients and Flink); empty:
    /// not pinned. Give CPUs other than `--cores` on a machine that has them.
    #[arg(long, default_value = "")]
    load_cores: String,
    /// The collector binary [default: bpmon-collector next to this executable, built first].
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// Where the collector's database goes; must be a real disk, as in production
    /// [default: <target>/bpmon-e2e/bench-collector-<pid>, removed afterwards].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How often the collector polls the simulated Flink.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Batches of the in-process store baseline (each stored as the collector stores a batch).
    #[arg(long, default_value_t = 2000)]
    store_baseline_batches: usize,
    /// Worst batches posted (one after another) while the status clients run; 0: skip.
    #[arg(long, default_value_t = 3)]
    worst_batches: u64,
    /// Record a CPU profile of the collector during ingest with `perf record -g` into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.taskmanagers > 0 && args.agents > 0 && args.batches > 0,
        "nothing to do"
    );
    ensure!(
        args.vertices > 0 && args.subtasks % args.vertices == 0,
        "--subtasks must be a multiple of --vertices"
    );
    ensure!(
        args.agents <= args.taskmanagers,
        "--agents must not exceed --taskmanagers (an agent reports at least one TaskManager)"
    );
    if !args.load_cores.is_empty() {
        // Before the runtime starts its threads: they inherit it.
        pin_self(&args.load_cores)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

// ---------------------------------------------------------------------------------------------
// The simulated job

/// What each vertex does, which fixes its metrics and its sample counts.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// Blocked requesting output buffers most of the time.
    HardBackPressured,
    /// The bottleneck: busy, its input full, its output empty.
    Busy,
    /// Waiting for input.
    Idle,
}

struct Vertex {
    id: String,
    name: String,
    role: Role,
}

struct TaskManager {
    id: String,
    host: String,
    rpc_port: u16,
    data_port: u16,
}

struct Topology {
    job_id: String,
    job_name: String,
    job_start_ms: u64,
    vertices: Vec<Vertex>,
    parallelism: u32,
    taskmanagers: Vec<TaskManager>,
    /// Per TaskManager: its subtasks as (vertex index, subtask index).
    placed: Vec<Vec<(usize, u32)>>,
    /// First window's start; window of batch `seq` starts `(seq - 1) * INTERVAL_MS` later.
    first_window_ms: u64,
}

const VERTEX_NAMES: [(&str, Role); 5] = [
    ("Source: Kafka events", Role::HardBackPressured),
    ("Parse -> Filter", Role::HardBackPressured),
    ("Enrich", Role::Busy),
    (
        "Window(TumblingEventTimeWindows(60000), EventTimeTrigger, CountAggregate)",
        Role::Idle,
    ),
    ("Sink: Writer -> Sink: Committer", Role::Idle),
];

impl Topology {
    fn new(args: &Args) -> Topology {
        let parallelism = args.subtasks / args.vertices;
        let vertices: Vec<Vertex> = (0..args.vertices as usize)
            .map(|v| {
                let (name, role) = VERTEX_NAMES[v % VERTEX_NAMES.len()];
                let name = if v < VERTEX_NAMES.len() {
                    name.to_string()
                } else {
                    format!("{name} #{v}")
                };
                Vertex {
                    id: format!("{:032x}", 0xbc76_4cd8_ddf7_a0cf_u128 * (v as u128 + 1)),
                    name,
                    role,
                }
            })
            .collect();
        let taskmanagers: Vec<TaskManager> = (0..args.taskmanagers)
            .map(|t| TaskManager {
                id: format!("tm-{t:03}"),
                host: format!("10.1.{}.{}", t / 250, t % 250 + 1),
                rpc_port: 6122,
                data_port: 6121,
            })
            .collect();
        let mut placed = vec![Vec::new(); taskmanagers.len()];
        for v in 0..vertices.len() {
            for i in 0..parallelism {
                // Slot sharing puts one subtask of each vertex in a slot: spread round robin.
                let global = v * parallelism as usize + i as usize;
                placed[global % taskmanagers.len()].push((v, i));
            }
        }
        let now = now_ms();
        let first_window_ms = now - args.batches * INTERVAL_MS;
        Topology {
            job_id: "5f3b1c0de0a94e7c8b2d6a1f4c3e2b10".into(),
            job_name: "bench-1000-subtasks".into(),
            job_start_ms: first_window_ms - 3_600_000,
            vertices,
            parallelism,
            taskmanagers,
            placed,
            first_window_ms,
        }
    }

    fn subtasks(&self) -> usize {
        self.vertices.len() * self.parallelism as usize
    }

    fn tm_of(&self, v: usize, i: u32) -> &TaskManager {
        let global = v * self.parallelism as usize + i as usize;
        &self.taskmanagers[global % self.taskmanagers.len()]
    }

    fn subtask_start_ms(&self) -> u64 {
        self.job_start_ms + 120
    }
}

/// A deterministic spread in 0..n, from a few numbers.
fn spread(seed: u64, n: u64) -> u64 {
    // splitmix64
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % n.max(1)
}

/// Flink 2.x metric ids and values of one subtask (strings, as Flink's REST API gives them).
fn flink_metrics(role: Role, v: usize, i: u32) -> Vec<(&'static str, String)> {
    let j = spread((v as u64) << 32 | u64::from(i), 1000) as f64 / 1000.0;
    let (out_pool, in_pool, hard, soft, idle, busy) = match role {
        Role::HardBackPressured => (1.0, 0.2 + 0.2 * j, 820.0 + 60.0 * j, 40.0, 10.0, 0.0),
        Role::Busy => (0.1 + 0.1 * j, 1.0, 0.0, 0.0, 20.0 + 20.0 * j, 0.0),
        Role::Idle => (0.05 * j, 0.02 + 0.05 * j, 0.0, 0.0, 880.0 + 60.0 * j, 0.0),
    };
    let busy = if busy > 0.0 {
        busy
    } else {
        1000.0 - hard - soft - idle
    };
    let records = 1.0e9 + 1.0e7 * j;
    let ms = |x: f64| format!("{x:.1}");
    vec![
        ("Shuffle.Netty.Output.Buffers.outPoolUsage", ms(out_pool)),
        ("Shuffle.Netty.Input.Buffers.inPoolUsage", ms(in_pool)),
        (
            "Shuffle.Netty.Input.Buffers.inputFloatingBuffersUsage",
            ms(in_pool * 0.8),
        ),
        (
            "Shuffle.Netty.Input.Buffers.inputExclusiveBuffersUsage",
            ms(in_pool),
        ),
        ("numRecordsIn", format!("{records:.0}")),
        ("numRecordsOut", format!("{records:.0}")),
        ("numBytesIn", format!("{:.0}", records * 180.0)),
        ("numBytesOut", format!("{:.0}", records * 180.0)),
        (
            "Shuffle.Netty.Input.numBytesInLocal",
            format!("{:.0}", records * 30.0),
        ),
        (
            "Shuffle.Netty.Input.numBytesInRemote",
            format!("{:.0}", records * 150.0),
        ),
        ("numBuffersOut", format!("{:.0}", records / 180.0)),
        ("softBackPressuredTimeMsPerSecond", ms(soft)),
        ("hardBackPressuredTimeMsPerSecond", ms(hard)),
        ("backPressuredTimeMsPerSecond", ms(hard + soft)),
        ("idleTimeMsPerSecond", ms(idle)),
        ("busyTimeMsPerSecond", ms(busy)),
        ("isBackPressured", (out_pool >= 1.0).to_string()),
    ]
}

/// One task thread's counts in one window, consistent with its role.
fn task_samples(topo: &Topology, v: usize, i: u32, seq: u64, thread_id: u64) -> TaskSamples {
    let vertex = &topo.vertices[v];
    let j = spread(seq << 40 ^ (v as u64) << 32 ^ u64::from(i), 7) as u32;
    let (blocked, waiting) = match vertex.role {
        Role::HardBackPressured => (82 + j, 4),
        Role::Busy => (0, 2 + j),
        Role::Idle => (0, 86 + j),
    };
    let busy = SAMPLES - blocked - waiting;
    let frames: &[&str] = match vertex.role {
        Role::HardBackPressured => &["com.example.pipeline.EventParser.parse(EventParser.java:88)"],
        Role::Busy => &[
            "com.example.pipeline.Enricher.lookup(Enricher.java:131)",
            "com.example.pipeline.Enricher.score(Enricher.java:77)",
            "java.util.HashMap.resize(HashMap.java:710)",
        ],
        Role::Idle => &["com.example.pipeline.CountAggregate.add(CountAggregate.java:21)"],
    };
    let mut left = busy;
    let top_frames = frames
        .iter()
        .enumerate()
        .map_while(|(k, f)| {
            let n = if k + 1 == frames.len() {
                left
            } else {
                left * 2 / 3
            };
            left -= n;
            (n > 0).then(|| FrameCount {
                frame: (*f).to_string(),
                samples: n,
                activity: None,
            })
        })
        .collect();
    let identity = TaskIdentity {
        task: vertex.name.clone(),
        subtask: i,
        parallelism: topo.parallelism,
        attempt: Some(0),
    };
    let window_end = topo.first_window_ms + (seq - 1) * INTERVAL_MS + 4_950;
    TaskSamples {
        thread: identity.main_thread_name(),
        thread_id: Some(thread_id),
        os_thread_id: Some(20_000 + thread_id),
        elapsed_s: Some((window_end - topo.subtask_start_ms()) as f64 / 1000.0 - 0.1),
        identity,
        legacy_source_thread: false,
        exact: None,
        samples: SAMPLES,
        stack_samples: None,
        blocked,
        waiting,
        busy,
        top_frames,
        activity: None,
        locks: Vec::new(),
        cpu: None,
        stacks: Vec::new(),
        timers: None,
    }
}

fn agent_id(a: usize) -> String {
    format!("bench-agent-{a:03}")
}

/// Agent `a`'s batch number `seq`: one report per TaskManager it watches.
fn make_batch(topo: &Topology, agents: usize, a: usize, seq: u64) -> ReportBatch {
    let start = topo.first_window_ms + (seq - 1) * INTERVAL_MS;
    let mut host_names = vec![format!("bench-host-{a:03}")];
    let reports = (a..topo.taskmanagers.len())
        .step_by(agents)
        .map(|t| {
            let tm = &topo.taskmanagers[t];
            host_names.push(tm.host.clone());
            SampleReport {
                pid: 40_000 + t as u32,
                backend: "attach".into(),
                jvm: JvmInfo {
                    version: Some("17.0.12".into()),
                    main_class: "org.apache.flink.runtime.taskexecutor.TaskManagerRunner".into(),
                    flink_version: Some(FLINK_VERSION.into()),
                    resource_id: Some(tm.id.clone()),
                    resource_id_source: Some(bpmon_proto::ResourceIdSource::CommandLine),
                    listen_ports: vec![tm.rpc_port, tm.data_port],
                    network: None,
                },
                samples: SAMPLES,
                delay_ms: 50,
                started_at_ms: start,
                elapsed_ms: 4_950 + spread(seq ^ t as u64, 40),
                tasks: topo.placed[t]
                    .iter()
                    .enumerate()
                    .map(|(k, &(v, i))| task_samples(topo, v, i, seq, 70 + k as u64))
                    .collect(),
                cost: SampleCost {
                    dumps: SAMPLES,
                    dump_us_p50: 1_050,
                    dump_us_max: 2_900,
                    parse_us_p50: 85,
                    safepoints: Some(300),
                    safepoint_ms_total: Some(96.5),
                    skipped_lines: 0,
                    inside_us_p50: None,
                    inside_cpu_ms_total: None,
                },
                errors: Vec::new(),
                resources: None,
                stack_frames: Vec::new(),
            }
        })
        .collect();
    ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: agent_id(a),
        seq,
        host_names,
        created_at_ms: start + 5_000,
        dropped_before: 0,
        reports,
    }
}

/// The worst batch the collector accepts: as many reports and task threads as its bounds allow
/// (`bpmon_proto::ingest::bounds`), each thread named like one of the job's subtasks, so every
/// one of them goes through placement and matching. The TaskManagers it claims exist, so the
/// threads are matched, not set aside.
fn worst_batch(topo: &Topology, seq: u64, threads: usize) -> ReportBatch {
    use bpmon_proto::ingest::bounds;
    let per_report = bounds::TASKS_PER_REPORT_MAX;
    let reports = threads.div_ceil(per_report).min(topo.taskmanagers.len());
    let all: Vec<(usize, u32)> = (0..topo.vertices.len())
        .flat_map(|v| (0..topo.parallelism).map(move |i| (v, i)))
        .collect();
    let mut batch = make_batch(topo, topo.taskmanagers.len(), 0, 1);
    batch.agent_id = "bench-worst-agent".into();
    batch.seq = seq;
    batch.reports.truncate(1);
    let template = batch.reports.pop().expect("agent 0 watches a TaskManager");
    batch.reports = (0..reports)
        .map(|t| {
            let tm = &topo.taskmanagers[t];
            let mut r = template.clone();
            r.pid = 50_000 + t as u32;
            r.jvm.resource_id = Some(tm.id.clone());
            r.jvm.listen_ports = vec![tm.rpc_port, tm.data_port];
            r.tasks = (0..per_report.min(threads - t * per_report))
                .map(|k| {
                    let (v, i) = all[(t * per_report + k) % all.len()];
                    task_samples(topo, v, i, 1, 1_000_000 + (t * per_report + k) as u64)
                })
                .collect();
            r
        })
        .collect();
    batch.host_names = topo.taskmanagers[..reports]
        .iter()
        .map(|tm| tm.host.clone())
        .collect();
    batch
}

/// As the agent's spool writes it: gzip (fast) JSON.
fn gzip_json(batch: &ReportBatch) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    serde_json::to_writer(&mut gz, batch)?;
    Ok(gz.finish()?)
}

// ---------------------------------------------------------------------------------------------
// The simulated Flink REST API

struct SimFlink {
    topo: Arc<Topology>,
    config: String,
    overview: String,
    taskmanagers: String,
    job: String,
    vertex_details: Vec<String>,
    /// Per vertex, per subtask: metric id → value.
    metrics: Vec<Vec<BTreeMap<&'static str, String>>>,
    requests: AtomicU64,
    metric_requests: AtomicU64,
}

impl SimFlink {
    fn new(topo: Arc<Topology>) -> SimFlink {
        use serde_json::json;
        let t = &topo;
        let config = json!({"flink-version": FLINK_VERSION, "flink-revision": "bench", "refresh-interval": 3000, "timezone-name": "UTC", "timezone-offset": 0, "features": {}}).to_string();
        let overview = json!({"jobs": [{
            "jid": t.job_id, "name": t.job_name, "state": "RUNNING",
            "start-time": t.job_start_ms, "end-time": -1, "duration": now_ms() - t.job_start_ms,
            "last-modification": t.job_start_ms,
            "tasks": {"total": t.subtasks(), "running": t.subtasks()}
        }]})
        .to_string();
        let taskmanagers = json!({"taskmanagers": t.taskmanagers.iter().map(|tm| json!({
            "id": tm.id,
            "path": format!("pekko.tcp://flink@{}:{}/user/rpc/taskmanager_0", tm.host, tm.rpc_port),
            "dataPort": tm.data_port, "jmxPort": -1, "timeSinceLastHeartbeat": now_ms(),
            "slotsNumber": t.placed.iter().map(Vec::len).max().unwrap_or(1), "freeSlots": 0,
        })).collect::<Vec<_>>()})
        .to_string();
        let nodes: Vec<_> = t
            .vertices
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let inputs = if k == 0 {
                    json!([])
                } else {
                    json!([{"num": 0, "id": t.vertices[k - 1].id, "ship_strategy": "HASH", "exchange": "pipelined_bounded"}])
                };
                json!({"id": v.id, "parallelism": t.parallelism, "operator": "", "operator_strategy": "",
                       "description": v.name, "inputs": inputs, "optimizer_properties": {}})
            })
            .collect();
        let job = json!({
            "jid": t.job_id, "name": t.job_name, "isStoppable": false, "state": "RUNNING",
            "job-type": "STREAMING", "start-time": t.job_start_ms, "end-time": -1,
            "duration": now_ms() - t.job_start_ms, "maxParallelism": -1, "now": now_ms(),
            "timestamps": {}, "status-counts": {"RUNNING": t.vertices.len()},
            "vertices": t.vertices.iter().map(|v| json!({
                "id": v.id, "name": v.name, "maxParallelism": 128, "parallelism": t.parallelism,
                "status": "RUNNING", "start-time": t.job_start_ms + 100, "end-time": -1,
                "duration": now_ms() - t.job_start_ms, "tasks": {"RUNNING": t.parallelism}, "metrics": {}
            })).collect::<Vec<_>>(),
            "plan": {"jid": t.job_id, "name": t.job_name, "type": "STREAMING", "nodes": nodes},
        })
        .to_string();
        let vertex_details = t
            .vertices
            .iter()
            .enumerate()
            .map(|(v, vx)| {
                json!({
                    "id": vx.id, "name": vx.name, "parallelism": t.parallelism, "maxParallelism": 128,
                    "now": now_ms(),
                    "subtasks": (0..t.parallelism).map(|i| {
                        let tm = t.tm_of(v, i);
                        json!({"subtask": i, "status": "RUNNING", "attempt": 0,
                               "endpoint": format!("{}:{}", tm.host, tm.data_port),
                               "start-time": t.subtask_start_ms(), "end-time": -1,
                               "duration": now_ms() - t.subtask_start_ms(), "metrics": {},
                               "taskmanager-id": tm.id, "status-duration": {}})
                    }).collect::<Vec<_>>(),
                })
                .to_string()
            })
            .collect();
        let metrics = t
            .vertices
            .iter()
            .enumerate()
            .map(|(v, vx)| {
                (0..t.parallelism)
                    .map(|i| flink_metrics(vx.role, v, i).into_iter().collect())
                    .collect()
            })
            .collect();
        SimFlink {
            topo,
            config,
            overview,
            taskmanagers,
            job,
            vertex_details,
            metrics,
            requests: AtomicU64::new(0),
            metric_requests: AtomicU64::new(0),
        }
    }

    fn vertex_index(&self, jid: &str, vid: &str) -> Option<usize> {
        if jid != self.topo.job_id {
            return None;
        }
        self.topo.vertices.iter().position(|v| v.id == vid)
    }
}

fn json_response(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"errors": [format!("Not found: {what}")]}).to_string(),
    )
        .into_response()
}

fn sim_router(sim: Arc<SimFlink>) -> Router {
    type S = State<Arc<SimFlink>>;
    async fn config(State(s): S) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        json_response(&s.config)
    }
    async fn overview(State(s): S) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        json_response(&s.overview)
    }
    async fn taskmanagers(State(s): S) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        json_response(&s.taskmanagers)
    }
    async fn job(State(s): S, UrlPath(jid): UrlPath<String>) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        if jid == s.topo.job_id {
            json_response(&s.job)
        } else {
            not_found(&format!("/jobs/{jid}"))
        }
    }
    async fn vertex(State(s): S, UrlPath((jid, vid)): UrlPath<(String, String)>) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        match s.vertex_index(&jid, &vid) {
            Some(v) => json_response(&s.vertex_details[v]),
            None => not_found(&format!("/jobs/{jid}/vertices/{vid}")),
        }
    }
    async fn metrics(
        State(s): S,
        UrlPath((jid, vid)): UrlPath<(String, String)>,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> Response {
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.metric_requests.fetch_add(1, Ordering::Relaxed);
        let Some(v) = s.vertex_index(&jid, &vid) else {
            return not_found(&format!("/jobs/{jid}/vertices/{vid}/metrics"));
        };
        // Like Flink: ids it does not have are left out of the answer.
        let list: Vec<serde_json::Value> = q
            .get("get")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter_map(|id| {
                let (index, metric) = id.split_once('.')?;
                let index: usize = index.parse().ok()?;
                let value = s.metrics[v].get(index)?.get(metric)?;
                Some(serde_json::json!({"id": id, "value": value}))
            })
            .collect();
        json_response(&serde_json::Value::Array(list).to_string())
    }
    Router::new()
        .route("/config", get(config))
        .route("/jobs/overview", get(overview))
        .route("/taskmanagers", get(taskmanagers))
        .route("/jobs/{jid}", get(job))
        .route("/jobs/{jid}/vertices/{vid}", get(vertex))
        .route("/jobs/{jid}/vertices/{vid}/metrics", get(metrics))
        .with_state(sim)
}

// ---------------------------------------------------------------------------------------------
// The collector process

struct CollectorProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl CollectorProcess {
    fn start(bin: &Path, flink: &str, data_dir: &Path, args: &Args) -> Result<CollectorProcess> {
        std::fs::create_dir_all(data_dir)?;
        // Next to the data dir's parent, so that it outlives the data (removed afterwards).
        let log = bpmon_e2e::work_dir().join(format!("bench-collector-{}.log", std::process::id()));
        std::fs::create_dir_all(bpmon_e2e::work_dir())?;
        let mut cmd = if args.cores.is_empty() {
            Command::new(bin)
        } else {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(&args.cores).arg(bin);
            c
        };
        cmd.arg("serve")
            .arg("--flink")
            .arg(flink)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--poll-interval")
            .arg(humantime::format_duration(args.poll_interval).to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (through taskset: {:?})",
                bin.display(),
                args.cores
            )
        })?;
        let stdout = child.stdout.take().context("collector stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let mut me = CollectorProcess {
            child,
            url: String::new(),
            log,
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
            format!(
                "bpmon-collector did not say where it listens; log:\n{}",
                std::fs::read_to_string(&me.log).unwrap_or_default()
            )
        })?;
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        me.url = format!("http://{addr}");
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait()?;
        bail!("bpmon-collector did not stop within 10 s of SIGTERM; killed")
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The collector binary next to this executable (same profile), built first unless given.
fn collector_binary(args: &Args) -> Result<PathBuf> {
    if let Some(b) = &args.collector_bin {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable without a directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "bpmon-collector",
        "--bin",
        "bpmon-collector",
    ])
    .current_dir(bpmon_e2e::repo_root());
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    } else {
        eprintln!("bench-collector: WARNING: not a release build; figures mean little");
    }
    let status = cmd.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build of bpmon-collector failed: {status}"
    );
    let bin = dir.join("bpmon-collector");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

/// User + system CPU time of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("odd /proc/pid/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 / hz as f64)
}

fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
}

/// Filesystem type of the mount holding `path`.
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), ty.to_string()))
        })
        .max()
        .map(|(_, t)| t)
        .unwrap_or_else(|| "?".into())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn pin_self(cores: &str) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get a
    // valid pointer and the set's size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in parse_cpu_list(cores)? {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({cores}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// `0,1`, `2-5`, `0,2-3`.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => out.push(part.parse()?),
        }
    }
    ensure!(!out.is_empty(), "empty CPU list {list:?}");
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default, Clone)]
struct Latencies(Vec<f64>);

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    fn q(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut s = self.0.clone();
        s.sort_by(f64::total_cmp);
        // Nearest rank: p99 of 100 values is the 99th.
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Deserialize)]
struct IngestReply {
    accepted: bool,
    duplicate: bool,
    seq: u64,
}

#[derive(Default)]
struct IngestTally {
    acked: u64,
    records: u64,
    duplicates: u64,
    rejected: Vec<String>,
    latency: Latencies,
}

/// One agent: posts its batches in seq order, one at a time, within the global limit.
async fn play_agent(
    http: reqwest::Client,
    url: String,
    batches: Vec<(Vec<u8>, u64)>,
    limit: Arc<tokio::sync::Semaphore>,
) -> IngestTally {
    let mut t = IngestTally::default();
    for (seq0, (body, records)) in batches.into_iter().enumerate() {
        let seq = seq0 as u64 + 1;
        let _permit = limit.acquire().await.ok();
        let started = Instant::now();
        let resp = http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(body)
            .send()
            .await;
        let outcome = match resp {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) if status.is_success() => {
                        match serde_json::from_slice::<IngestReply>(&b) {
                            Ok(reply) if reply.accepted && reply.seq == seq => Ok(reply.duplicate),
                            Ok(_) => Err(format!("seq {seq}: {}", String::from_utf8_lossy(&b))),
                            Err(e) => Err(format!("seq {seq}: bad reply {e}")),
                        }
                    }
                    Ok(b) => Err(format!(
                        "seq {seq}: HTTP {status}: {}",
                        String::from_utf8_lossy(&b)
                    )),
                    Err(e) => Err(format!("seq {seq}: {e}")),
                }
            }
            Err(e) => Err(format!("seq {seq}: {e}")),
        };
        t.latency.push(started.elapsed());
        match outcome {
            Ok(duplicate) => {
                t.acked += 1;
                t.records += records;
                t.duplicates += u64::from(duplicate);
            }
            Err(e) => t.rejected.push(e),
        }
    }
    t
}

struct StatusTally {
    latency: Latencies,
    errors: Vec<String>,
    bytes: u64,
}

/// One status client until `stop`.
async fn status_client(
    http: reqwest::Client,
    url: String,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> StatusTally {
    let mut t = StatusTally {
        latency: Latencies::default(),
        errors: Vec::new(),
        bytes: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match http.get(&url).send().await {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) if status.is_success() => {
                        t.latency.push(started.elapsed());
                        t.bytes = b.len() as u64;
                    }
                    Ok(b) => t
                        .errors
                        .push(format!("HTTP {status}: {}", String::from_utf8_lossy(&b))),
                    Err(e) => t.errors.push(e.to_string()),
                }
            }
            Err(e) => t.errors.push(e.to_string()),
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    t
}

fn start_status_clients(
    args: &Args,
    http: &reqwest::Client,
    url: &str,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<StatusTally>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..args.status_clients)
        .map(|_| {
            tokio::spawn(status_client(
                http.clone(),
                url.to_string(),
                args.status_interval,
                Arc::clone(&stop),
            ))
        })
        .collect();
    (stop, handles)
}

async fn stop_status_clients(
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<StatusTally>>,
) -> Result<StatusTally> {
    stop.store(true, Ordering::Relaxed);
    let mut all = StatusTally {
        latency: Latencies::default(),
        errors: Vec::new(),
        bytes: 0,
    };
    for h in handles {
        let t = h.await?;
        all.latency.extend(t.latency);
        all.errors.extend(t.errors);
        all.bytes = all.bytes.max(t.bytes);
    }
    Ok(all)
}

/// What the status clients saw while the worst batches went in.
struct WorstBatchPhase {
    threads: usize,
    json_bytes: usize,
    gzip_bytes: usize,
    post: Latencies,
    errors: Vec<String>,
    status: StatusTally,
}

/// Posts `--worst-batches` worst batches, one after the other, while the status clients call as
/// before: whether queries keep answering while the collector ingests the worst it accepts.
async fn worst_batch_phase(
    args: &Args,
    topo: &Topology,
    http: &reqwest::Client,
    collector_url: &str,
    status_url: &str,
) -> Result<Option<WorstBatchPhase>> {
    if args.worst_batches == 0 {
        return Ok(None);
    }
    let mut bodies = Vec::new();
    let (mut threads, mut json_bytes, mut gzip_bytes) = (0, 0, 0);
    // As many threads as the bounds allow, as long as the JSON fits the collector's decoded-size
    // limit (its default, as the bench runs it).
    let max_json = bpmon_collector::server::IngestLimits::default().max_decoded_bytes;
    let mut budget = bpmon_proto::ingest::bounds::TASKS_PER_BATCH_MAX;
    loop {
        let len = serde_json::to_vec(&worst_batch(topo, 1, budget))?.len();
        if len <= max_json {
            break;
        }
        budget = budget * max_json / len * 99 / 100;
    }
    for seq in 1..=args.worst_batches {
        let batch = worst_batch(topo, seq, budget);
        threads = batch.reports.iter().map(|r| r.tasks.len()).sum();
        json_bytes = serde_json::to_vec(&batch)?.len();
        let gz = gzip_json(&batch)?;
        gzip_bytes = gz.len();
        bodies.push(gz);
    }
    let url = format!("{collector_url}/api/v1/reports");
    let (stop, handles) = start_status_clients(args, http, status_url);
    // Let the clients settle before the first batch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut post = Latencies::default();
    let mut errors = Vec::new();
    for body in bodies {
        let started = Instant::now();
        let r = http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(body)
            .send()
            .await?;
        let code = r.status();
        let text = r.text().await?;
        post.push(started.elapsed());
        if !code.is_success() {
            errors.push(format!("HTTP {code}: {text}"));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = stop_status_clients(stop, handles).await?;
    Ok(Some(WorstBatchPhase {
        threads,
        json_bytes,
        gzip_bytes,
        post,
        errors,
        status,
    }))
}

// ---------------------------------------------------------------------------------------------
// Baselines in this process: each ingest stage alone

struct StageTimes {
    batches: usize,
    records: usize,
    decode_parse: Duration,
    typed_parse: Duration,
    place: Duration,
    store_batches: usize,
    store_records: usize,
    store: Duration,
    store_big_rows: usize,
    store_big: Duration,
}

/// Times what the collector does per batch, stage by stage, on one thread: gunzip + JSON
/// (`decode_body` + `parse_batch`, the collector's own functions), placement (`place_batch`
/// against a snapshot the real Flink REST client read from the simulated Flink), and the store
/// (`ingest_batch`, one transaction per batch, in a fresh store on the same disk).
fn stage_times(
    bodies: &[&[u8]],
    snapshot: &ClusterSnapshot,
    topo: &Topology,
    store_dir: &Path,
    store_batches: usize,
) -> Result<StageTimes> {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::CONTENT_ENCODING, "gzip".parse()?);
    let t = Instant::now();
    let mut parsed = Vec::with_capacity(bodies.len());
    for b in bodies {
        let json = decode_body(&headers, b, 32 << 20).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        parsed.push(parse_batch(&json).map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    let decode_parse = t.elapsed();
    // For comparison: the same bodies straight into `ReportBatch`, without the collector's
    // detour through `serde_json::Value` (which it takes to check the version first).
    let t = Instant::now();
    for b in bodies {
        let json = decode_body(&headers, b, 32 << 20).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let batch: ReportBatch = serde_json::from_slice(&json)?;
        ensure!(batch.schema_version == SCHEMA_VERSION, "odd batch");
    }
    let typed_parse = t.elapsed();

    let t = Instant::now();
    let mut placed: Vec<Vec<WindowRow>> = Vec::with_capacity(parsed.len());
    for b in &parsed {
        let p = place_batch(b, &[snapshot]);
        ensure!(
            p.unplaced.is_empty(),
            "placement failed: {:?}",
            p.unplaced.first()
        );
        placed.push(p.windows);
    }
    let place = t.elapsed();
    let records: usize = placed.iter().map(Vec::len).sum();

    let mut store = Store::open(store_dir)?;
    store.upsert_job(&topo.job_id, &topo.job_name, "http://sim", now_ms())?;
    let vertices: Vec<VertexRow> = topo
        .vertices
        .iter()
        .map(|v| VertexRow {
            vertex_id: v.id.clone(),
            name: v.name.clone(),
            parallelism: topo.parallelism,
        })
        .collect();
    store.upsert_vertices(&topo.job_id, &vertices)?;
    let n = store_batches.min(parsed.len());
    let t = Instant::now();
    for (b, rows) in parsed.iter().zip(&placed).take(n) {
        ensure!(
            store.ingest_batch(&b.agent_id, b.seq, rows)?,
            "duplicate in baseline"
        );
    }
    let store_time = t.elapsed();
    let store_records = placed.iter().take(n).map(Vec::len).sum();
    // The same rows again, shifted a day on, in transactions of a whole job's worth.
    let per_tx = topo.subtasks();
    let mut big: Vec<WindowRow> = placed.iter().take(n).flatten().cloned().collect();
    for r in &mut big {
        r.window_start_ms += 86_400_000;
        r.window_end_ms += 86_400_000;
    }
    let t = Instant::now();
    for chunk in big.chunks(per_tx) {
        store.insert_windows(chunk)?;
    }
    let store_big = t.elapsed();
    Ok(StageTimes {
        batches: parsed.len(),
        records,
        decode_parse,
        typed_parse,
        place,
        store_batches: n,
        store_records,
        store: store_time,
        store_big_rows: big.len(),
        store_big,
    })
}

// ---------------------------------------------------------------------------------------------

async fn run(args: Args) -> Result<()> {
    let topo = Arc::new(Topology::new(&args));
    let sim = Arc::new(SimFlink::new(Arc::clone(&topo)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let flink_url = format!("http://{}", listener.local_addr()?);
    let router = sim_router(Arc::clone(&sim));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "bench-collector: simulated Flink {FLINK_VERSION} REST at {flink_url}: 1 job, {} vertices × {} = {} subtasks on {} TaskManagers",
        topo.vertices.len(),
        topo.parallelism,
        topo.subtasks(),
        topo.taskmanagers.len()
    );

    let bin = collector_binary(&args)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        bpmon_e2e::work_dir().join(format!("bench-collector-{}", std::process::id()))
    });
    ensure!(
        !data_dir.join("collector").exists(),
        "{} holds an earlier run",
        data_dir.display()
    );
    std::fs::create_dir_all(&data_dir)?;
    let _cleanup = (args.data_dir.is_none()).then(|| RemoveOnDrop(data_dir.clone()));
    let fs = fs_type(&data_dir);

    // Every batch, built and gzipped before the clock starts.
    let t = Instant::now();
    let mut per_agent: Vec<Vec<(Vec<u8>, u64)>> = Vec::with_capacity(args.agents);
    let mut json_bytes = 0usize;
    let mut gz_bytes = 0usize;
    for a in 0..args.agents {
        let mut list = Vec::with_capacity(args.batches as usize);
        for seq in 1..=args.batches {
            let batch = make_batch(&topo, args.agents, a, seq);
            let records: usize = batch.reports.iter().map(|r| r.tasks.len()).sum();
            if seq == 1 {
                json_bytes += serde_json::to_vec(&batch)?.len();
            }
            let gz = gzip_json(&batch)?;
            if seq == 1 {
                gz_bytes += gz.len();
            }
            list.push((gz, records as u64));
        }
        per_agent.push(list);
    }
    let total_batches = args.agents as u64 * args.batches;
    let total_records: u64 = per_agent.iter().flatten().map(|b| b.1).sum();
    eprintln!(
        "bench-collector: built {total_batches} batches ({total_records} subtask-records; ~{} B JSON, ~{} B gzip each) in {:.1} s",
        json_bytes / args.agents,
        gz_bytes / args.agents,
        t.elapsed().as_secs_f64()
    );

    // Baselines: each stage alone, on this process's threads, before the collector runs.
    let probe = FlinkRestClient::new(&flink_url, Duration::from_secs(10))?;
    let snapshot = probe.snapshot().await;
    ensure!(
        snapshot.errors.is_empty(),
        "the simulated Flink is not read cleanly: {:?}",
        snapshot.errors
    );
    let sample: Vec<&[u8]> = per_agent
        .iter()
        .flat_map(|list| list.iter().take(10))
        .map(|(b, _)| b.as_slice())
        .collect();
    let store_dir = data_dir.join("store-baseline");
    let stages = {
        let topo = Arc::clone(&topo);
        let n = args.store_baseline_batches;
        let sample: Vec<Vec<u8>> = sample.iter().map(|b| b.to_vec()).collect();
        let dir = store_dir.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = sample.iter().map(Vec::as_slice).collect();
            stage_times(&refs, &snapshot, &topo, &dir, n)
        })
        .await??
    };
    let _ = std::fs::remove_dir_all(&store_dir);

    // The collector.
    let collector_dir = data_dir.join("collector");
    let mut collector = CollectorProcess::start(&bin, &flink_url, &collector_dir, &args)?;
    let pid = collector.pid();
    let affinity = proc_status_field(pid, "Cpus_allowed_list").unwrap_or_else(|| "?".into());
    eprintln!(
        "bench-collector: {} (pid {pid}, CPUs {affinity}) at {}, data in {} ({fs})",
        bin.display(),
        collector.url,
        collector_dir.display()
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(args.concurrency + args.status_clients + 4)
        .build()?;
    let status_url = format!("{}/api/v1/jobs/{}/status", collector.url, topo.job_id);
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http.get(&status_url).send().await?;
        if r.status().is_success() {
            break;
        }
        ensure!(
            Instant::now() < ready_by,
            "the collector did not learn the job within 60 s: HTTP {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Baseline: the cheapest round trip to the same process.
    let settings_url = format!("{}/api/v1/settings", collector.url);
    let mut noop = Latencies::default();
    for _ in 0..1000 {
        let t = Instant::now();
        let r = http.get(&settings_url).send().await?;
        ensure!(r.status().is_success(), "settings: HTTP {}", r.status());
        r.bytes().await?;
        noop.push(t.elapsed());
    }

    // Ingest, with status clients running alongside.
    let reports_url = format!("{}/api/v1/reports", collector.url);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let perf = match &args.perf {
        Some(path) => Some(
            Command::new("perf")
                .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                .arg(path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?,
        ),
        None => None,
    };
    let (stop, status_handles) = start_status_clients(&args, &http, &status_url);
    let cpu0 = cpu_seconds(pid)?;
    let self0 = cpu_seconds(std::process::id())?;
    let polls0 = sim.requests.load(Ordering::Relaxed);
    let started = Instant::now();
    let agents: Vec<_> = per_agent
        .into_iter()
        .map(|batches| {
            tokio::spawn(play_agent(
                http.clone(),
                reports_url.clone(),
                batches,
                Arc::clone(&limit),
            ))
        })
        .collect();
    let mut ingest = IngestTally::default();
    for a in agents {
        let t = a.await?;
        ingest.acked += t.acked;
        ingest.records += t.records;
        ingest.duplicates += t.duplicates;
        ingest.rejected.extend(t.rejected);
        ingest.latency.extend(t.latency);
    }
    let ingest_wall = started.elapsed();
    let collector_cpu = cpu_seconds(pid)? - cpu0;
    let self_cpu = cpu_seconds(std::process::id())? - self0;
    let flink_requests = sim.requests.load(Ordering::Relaxed) - polls0;
    let loaded = stop_status_clients(stop, status_handles).await?;
    if let Some(mut p) = perf {
        let _ = kill(Pid::from_raw(p.id() as i32), Signal::SIGINT);
        p.wait()?;
    }

    // Everything stored? Every subtask has a level, every agent's last seq is known.
    let status: serde_json::Value = http.get(&status_url).send().await?.json().await?;
    let mut with_level = 0;
    let mut subtasks = 0;
    for v in status["vertices"]
        .as_array()
        .context("status without vertices")?
    {
        for s in v["subtasks"]
            .as_array()
            .context("vertex without subtasks")?
        {
            subtasks += 1;
            with_level += usize::from(!s["level"].is_null());
        }
    }
    let agents_view: serde_json::Value = http
        .get(format!("{}/api/v1/agents", collector.url))
        .send()
        .await?
        .json()
        .await?;
    let complete_agents = agents_view["agents"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|x| x["highest_seq"].as_u64() == Some(args.batches))
            .count()
    });

    // Idle: status alone.
    let db_bytes = dir_bytes(&collector_dir);
    let idle_cpu0 = cpu_seconds(pid)?;
    let (stop, status_handles) = start_status_clients(&args, &http, &status_url);
    tokio::time::sleep(args.duration).await;
    let idle = stop_status_clients(stop, status_handles).await?;
    let idle_cpu = cpu_seconds(pid)? - idle_cpu0;
    // What one status call costs the collector, from the idle phase (polls included, which
    // makes it an upper bound), and so what ingest alone cost it.
    let cpu_per_status =
        (!idle.latency.0.is_empty()).then(|| idle_cpu / idle.latency.0.len() as f64);
    let ingest_cpu = collector_cpu - cpu_per_status.unwrap_or(0.0) * loaded.latency.0.len() as f64;
    let worst = worst_batch_phase(&args, &topo, &http, &collector.url, &status_url).await?;
    let rss = proc_status_field(pid, "VmHWM").unwrap_or_else(|| "?".into());
    collector.stop()?;

    // ---- Report
    let rate = ingest.records as f64 / ingest_wall.as_secs_f64();
    let status_ok = loaded.latency.q(0.99) <= TARGET_STATUS_P99_MS;
    let status_verdict = if loaded.latency.0.is_empty() {
        "not measured"
    } else {
        pass(status_ok)
    };
    let all_in = ingest.rejected.is_empty()
        && ingest.duplicates == 0
        && ingest.acked == total_batches
        && with_level == topo.subtasks()
        && subtasks == topo.subtasks()
        && complete_agents == args.agents;
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "Flink is SIMULATED (in-process REST server, Flink {FLINK_VERSION} endpoints and metric names); the collector is the real `bpmon-collector serve` ({}).",
        bin.display()
    )?;
    writeln!(
        out,
        "Job: {} vertices × parallelism {} = {} subtasks on {} TaskManagers; {} agents × {} batches (one window each, {} subtask-records per batch on average, gzip JSON {} B).",
        topo.vertices.len(),
        topo.parallelism,
        topo.subtasks(),
        topo.taskmanagers.len(),
        args.agents,
        args.batches,
        total_records / total_batches,
        gz_bytes / args.agents
    )?;
    writeln!(
        out,
        "Machine: {cpus} CPUs. Collector pinned to CPUs {affinity}{}; this load tool on CPUs {}. Data dir on {fs}. Concurrency {}, {} status clients ({} pause).",
        if args.cores.is_empty() { " (not pinned)" } else { " (taskset)" },
        if args.load_cores.is_empty() { "any".to_string() } else { args.load_cores.clone() },
        args.concurrency,
        args.status_clients,
        humantime::format_duration(args.status_interval)
    )?;
    writeln!(out)?;
    writeln!(out, "| figure | measured | target | result |")?;
    writeln!(out, "| --- | --- | --- | --- |")?;
    writeln!(
        out,
        "| ingest, subtask-records/s acknowledged | {} | ≥ {} | {} |",
        thousands(rate),
        thousands(TARGET_RECORDS_PER_S),
        pass(rate >= TARGET_RECORDS_PER_S)
    )?;
    writeln!(
        out,
        "| `status` p99 under ingest | {:.1} ms | ≤ {TARGET_STATUS_P99_MS:.0} ms | {} |",
        loaded.latency.q(0.99),
        status_verdict
    )?;
    writeln!(
        out,
        "| all batches stored once, every subtask has a level | {}/{} acked, {} rejected, {} duplicates; {with_level}/{} subtasks with a level; {complete_agents}/{} agents at seq {} | all | {} |",
        ingest.acked,
        total_batches,
        ingest.rejected.len(),
        ingest.duplicates,
        topo.subtasks(),
        args.agents,
        args.batches,
        pass(all_in)
    )?;
    writeln!(out)?;
    writeln!(out, "| ingest | |")?;
    writeln!(out, "| --- | --- |")?;
    writeln!(
        out,
        "| batches / subtask-records | {} / {} in {:.2} s = {} batches/s |",
        thousands(ingest.acked as f64),
        thousands(ingest.records as f64),
        ingest_wall.as_secs_f64(),
        thousands(ingest.acked as f64 / ingest_wall.as_secs_f64())
    )?;
    writeln!(
        out,
        "| POST latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        ingest.latency.q(0.5),
        ingest.latency.q(0.99),
        ingest.latency.max()
    )?;
    writeln!(
        out,
        "| collector CPU | {:.2} s = {:.2} CPUs busy; {} subtask-records per CPU-second |",
        collector_cpu,
        collector_cpu / ingest_wall.as_secs_f64(),
        thousands(ingest.records as f64 / collector_cpu.max(1e-9))
    )?;
    if let Some(per_call) = cpu_per_status {
        writeln!(
            out,
            "| collector CPU without the {} status calls ({:.1} ms CPU each, idle phase) | ≈ {:.2} s; {} subtask-records per CPU-second |",
            loaded.latency.0.len(),
            per_call * 1e3,
            ingest_cpu,
            thousands(ingest.records as f64 / ingest_cpu.max(1e-9))
        )?;
    }
    writeln!(
        out,
        "| load tool CPU (agents, status clients, simulated Flink) | {:.2} s = {:.2} CPUs |",
        self_cpu,
        self_cpu / ingest_wall.as_secs_f64()
    )?;
    writeln!(
        out,
        "| Flink REST requests served to the collector | {flink_requests} (polls every {}) |",
        humantime::format_duration(args.poll_interval)
    )?;
    writeln!(out, "| collector peak RSS | {rss} |")?;
    writeln!(
        out,
        "| database after ingest (with WAL) | {:.1} MiB, {:.0} bytes per subtask-record |",
        db_bytes as f64 / (1024.0 * 1024.0),
        db_bytes as f64 / ingest.records.max(1) as f64
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| `GET /api/v1/jobs/<job>/status` ({} subtasks, {} KiB) | calls | p50 | p90 | p99 | max |",
        topo.subtasks(),
        idle.bytes.max(loaded.bytes) / 1024
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- | --- |")?;
    for (what, t) in [("under ingest", &loaded), ("idle", &idle)] {
        writeln!(
            out,
            "| {what} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            t.latency.0.len(),
            t.latency.q(0.5),
            t.latency.q(0.9),
            t.latency.q(0.99),
            t.latency.max()
        )?;
    }
    if let Some(w) = &worst {
        let t = &w.status;
        writeln!(
            out,
            "| while {} worst batches go in | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            w.post.0.len(),
            t.latency.0.len(),
            t.latency.q(0.5),
            t.latency.q(0.9),
            t.latency.q(0.99),
            t.latency.max()
        )?;
    }
    writeln!(
        out,
        "| baseline: `GET /api/v1/settings` (no-op), idle | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        noop.0.len(),
        noop.q(0.5),
        noop.q(0.9),
        noop.q(0.99),
        noop.max()
    )?;
    if let Some(w) = &worst {
        writeln!(out)?;
        writeln!(
            out,
            "Worst batch accepted: {} task threads in {} reports ({:.1} MiB JSON, {:.1} MiB gzip); POST p50 {:.0} ms, max {:.0} ms; {} refused. `status` p99 while it goes in / idle: {:.2}x, max / idle max: {:.2}x.",
            w.threads,
            w.threads.div_ceil(bpmon_proto::ingest::bounds::TASKS_PER_REPORT_MAX),
            w.json_bytes as f64 / (1024.0 * 1024.0),
            w.gzip_bytes as f64 / (1024.0 * 1024.0),
            w.post.q(0.5),
            w.post.max(),
            w.errors.len(),
            w.status.latency.q(0.99) / idle.latency.q(0.99).max(1e-9),
            w.status.latency.max() / idle.latency.max().max(1e-9)
        )?;
    }
    writeln!(out)?;
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let rate_of = |d: Duration, n: usize| n as f64 / d.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "| baseline: each ingest stage alone, one thread of this process | per batch | subtask-records/s |"
    )?;
    writeln!(out, "| --- | --- | --- |")?;
    writeln!(
        out,
        "| gunzip + JSON (`decode_body` + `parse_batch`), {} batches | {:.0} µs | {} |",
        stages.batches,
        per(stages.decode_parse, stages.batches),
        thousands(rate_of(stages.decode_parse, stages.records))
    )?;
    writeln!(
        out,
        "| for comparison: gunzip + `serde_json::from_slice::<ReportBatch>` | {:.0} µs | {} |",
        per(stages.typed_parse, stages.batches),
        thousands(rate_of(stages.typed_parse, stages.records))
    )?;
    writeln!(
        out,
        "| placement + merge (`place_batch`) | {:.0} µs | {} |",
        per(stages.place, stages.batches),
        thousands(rate_of(stages.place, stages.records))
    )?;
    writeln!(
        out,
        "| store, one transaction per batch (`ingest_batch`), {} batches | {:.0} µs | {} |",
        stages.store_batches,
        per(stages.store, stages.store_batches),
        thousands(rate_of(stages.store, stages.store_records))
    )?;
    writeln!(
        out,
        "| store, {} rows per transaction (`insert_windows`) | — | {} |",
        topo.subtasks(),
        thousands(rate_of(stages.store_big, stages.store_big_rows))
    )?;
    out.flush()?;

    if !ingest.rejected.is_empty() {
        eprintln!(
            "bench-collector: {} batches rejected, first: {}",
            ingest.rejected.len(),
            ingest.rejected[0]
        );
    }
    if let Some(w) = &worst {
        ensure!(
            w.errors.is_empty() && w.status.errors.is_empty(),
            "worst batches: {:?}; status calls meanwhile: {:?}; collector log: {}",
            w.errors.first(),
            w.status.errors.first(),
            collector.log.display()
        );
    }
    if !loaded.errors.is_empty() || !idle.errors.is_empty() {
        eprintln!(
            "bench-collector: status errors: {:?}",
            loaded
                .errors
                .iter()
                .chain(&idle.errors)
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    if let Some(p) = &args.perf {
        eprintln!(
            "bench-collector: profile of the collector during ingest in {} (perf report -i …)",
            p.display()
        );
    }
    ensure!(
        all_in,
        "not every batch was stored exactly once (see above); collector log: {}",
        collector.log.display()
    );
    ensure!(
        loaded.errors.is_empty() && idle.errors.is_empty(),
        "status calls failed; collector log: {}",
        collector.log.display()
    );
    let _ = std::fs::remove_file(&collector.log);
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpmon_proto::Level;

    #[test]
    fn cpu_lists_and_figures() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("").is_err());
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        let l = Latencies((1..=100).map(f64::from).collect());
        assert_eq!((l.q(0.5), l.q(0.99), l.max()), (50.0, 99.0, 100.0));
    }

    /// The simulated Flink is read cleanly by the collector's own REST client, and every task
    /// of every simulated batch is placed, with the level its vertex's role implies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_simulation_is_what_the_collector_understands() {
        let args = Args::parse_from([
            "bench-collector",
            "--taskmanagers",
            "4",
            "--subtasks",
            "10",
            "--agents",
            "3",
            "--batches",
            "2",
        ]);
        let topo = Arc::new(Topology::new(&args));
        let sim = Arc::new(SimFlink::new(Arc::clone(&topo)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, sim_router(sim)).await });
        let snap = FlinkRestClient::new(&url, Duration::from_secs(10))
            .unwrap()
            .snapshot()
            .await;
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(snap.taskmanagers.len(), 4);
        let job = &snap.jobs[0];
        assert_eq!(job.vertices.len(), 5);
        assert_eq!(job.edges.len(), 4);
        for v in &job.vertices {
            assert_eq!(v.subtasks.len(), 2);
            for s in &v.subtasks {
                assert!(s.metrics.out_pool_usage.is_some(), "{}: no metrics", v.name);
                assert!(s.metrics.busy_ms.is_some());
            }
        }
        let mut placed = 0;
        for a in 0..args.agents {
            for seq in 1..=args.batches {
                let batch = make_batch(&topo, args.agents, a, seq);
                let body = gzip_json(&batch).unwrap();
                let mut headers = axum::http::HeaderMap::new();
                headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
                let json = decode_body(&headers, &body, 1 << 20).unwrap();
                let parsed = parse_batch(&json).unwrap();
                let p = place_batch(&parsed, &[&snap]);
                assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
                for w in &p.windows {
                    let v = topo.vertices.iter().find(|v| v.id == w.vertex_id).unwrap();
                    let want = match v.role {
                        Role::HardBackPressured => Level::High,
                        Role::Busy | Role::Idle => Level::Ok,
                    };
                    assert_eq!(w.level, Some(want), "{}", v.name);
                }
                placed += p.windows.len();
            }
        }
        assert_eq!(placed, topo.subtasks() * args.batches as usize);
    }
}
