//! The collector's Flink REST client against real Flink clusters (2.3.0 and 1.20.3, one at a
//! time) running the e2e harness's hard and soft jobs, and against tiny local servers that
//! time out, refuse, answer 404 or send broken JSON.
//!
//! `cargo test -p bpmon-collector --test flink_rest -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_collector::flink_rest::FlinkRestClient;
use bpmon_collector::model::{ClusterSnapshot, JobSnapshot, VertexSnapshot};
use bpmon_e2e::readings::read_job;
use bpmon_e2e::{ClusterOptions, FlinkCluster, FlinkDist, JobMode, TestJobs};

/// How long the time metrics may take to show the jobs' behaviour once they run. A fresh task
/// reports 0 for its timers until the TaskManager first updates its metric views.
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Real clusters

#[test]
fn snapshot_of_flink_2_3_0() -> Result<()> {
    real_cluster_snapshot("2.3.0")
}

#[test]
fn snapshot_of_flink_1_20_3() -> Result<()> {
    real_cluster_snapshot("1.20.3")
}

fn real_cluster_snapshot(version: &str) -> Result<()> {
    let _one_at_a_time = bpmon_e2e::one_cluster_at_a_time();
    let t0 = Instant::now();
    let dist = FlinkDist::install(version)?;
    let jar = TestJobs::build(&dist)?;
    // hard (2 slots) + soft (2 slots), spread over two TaskManagers.
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 2,
            ..ClusterOptions::default()
        },
    )?;
    log(t0, format!("Flink {version} up at {}", cluster.rest_url()));
    let rest = cluster.rest().clone();
    let mut jobs = BTreeMap::new();
    for mode in [JobMode::Hard, JobMode::Soft] {
        let name = format!("bpmon-rest-{mode}");
        let jid = TestJobs::submit(&rest, &jar, mode, &name)?;
        jobs.insert(jid, (mode, name));
    }
    for jid in jobs.keys() {
        rest.wait_job_running(jid, Duration::from_secs(90))?;
    }
    log(t0, "both jobs RUNNING");

    let rt = runtime()?;
    let client = FlinkRestClient::new(&cluster.rest_url(), Duration::from_secs(5))?;
    let known_tms: BTreeSet<String> = rest.taskmanagers()?.into_iter().map(|t| t.id).collect();

    // Topology and placement: as soon as the snapshot shows both jobs fully running.
    let snap = poll(&rt, &client, t0, "both jobs in the snapshot", |s| {
        jobs.keys().all(|jid| {
            job_of(s, jid).is_some_and(|j| {
                j.vertices.len() == 2
                    && j.vertices.iter().all(|v| {
                        !v.subtasks.is_empty() && v.subtasks.iter().all(|st| st.status == "RUNNING")
                    })
            })
        })
    })?;
    ensure!(
        snap.flink_version.as_deref() == Some(version),
        "version {:?}",
        snap.flink_version
    );
    ensure!(snap.flink_url == cluster.rest_url());
    ensure!(
        snap.jobs.len() == 2,
        "jobs: {:?}",
        snap.jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
    );
    for (jid, (mode, name)) in &jobs {
        let job = job_of(&snap, jid).context("job vanished")?;
        check_topology(job, *mode, name)?;
        check_placement(job, &known_tms)?;
    }
    // Placement agrees with the harness's own (blocking) reading of the same subtasks.
    for jid in jobs.keys() {
        let job = job_of(&snap, jid).context("job vanished")?;
        for r in read_job(&rest, jid)? {
            let s = subtask_of(job, &r.vertex_name, r.subtask)?;
            ensure!(
                s.taskmanager_id == r.taskmanager_id && s.attempt == r.attempt,
                "{} #{}: ours {:?}/{} vs harness {:?}/{}",
                r.vertex_name,
                r.subtask,
                s.taskmanager_id,
                s.attempt,
                r.taskmanager_id,
                r.attempt
            );
        }
    }
    log(t0, "topology and placement as expected");
    check_raw_version_differences(&rest, &snap, dist.major())?;

    // Metrics: poll until Flink's time metrics show the jobs' behaviour (bounded).
    let (hard_jid, soft_jid) = (jid_of(&jobs, JobMode::Hard)?, jid_of(&jobs, JobMode::Soft)?);
    let settled = poll_for(&rt, &client, t0, SETTLE_DEADLINE, "metrics settled", |s| {
        let (Some(hard), Some(soft)) = (job_of(s, &hard_jid), job_of(s, &soft_jid)) else {
            return false;
        };
        metrics_settled(hard, soft).is_ok()
    });
    let snap = match settled {
        Ok(s) => s,
        Err(e) => {
            let last = rt.block_on(client.snapshot());
            eprintln!("{}", metrics_table(&last));
            return Err(e);
        }
    };
    eprintln!("{}", metrics_table(&snap));
    ensure!(snap.errors.is_empty(), "errors: {:?}", snap.errors);
    let (hard, soft) = (
        job_of(&snap, &hard_jid).context("hard job")?,
        job_of(&snap, &soft_jid).context("soft job")?,
    );
    metrics_settled(hard, soft)?;
    // Flink's own per-subtask view agrees: the harness reads the same metric per subtask.
    for r in read_job(&rest, &hard_jid)?
        .iter()
        .filter(|r| r.vertex_name == "Source: numbers -> explode")
    {
        ensure!(
            r.hard_ms.is_some_and(|v| v >= 500.0),
            "harness: hard #{} {:?}",
            r.subtask,
            r.hard_ms
        );
    }

    // Request count: via a counting proxy, one snapshot of this 2-job cluster.
    let proxy = CountingProxy::start(SocketAddr::from(([127, 0, 0, 1], cluster.rest_port())))?;
    let counted = FlinkRestClient::new(&proxy.url, Duration::from_secs(5))?;
    let snap = rt.block_on(counted.snapshot());
    ensure!(
        snap.errors.is_empty(),
        "errors via proxy: {:?}",
        snap.errors
    );
    let requests = proxy.requests();
    let vertices: usize = snap.jobs.iter().map(|j| j.vertices.len()).sum();
    let metric_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/metrics?get="))
        .collect();
    log(
        t0,
        format!(
            "one snapshot: {} requests for {} jobs / {vertices} vertices ({} metrics requests)",
            requests.len(),
            snap.jobs.len(),
            metric_requests.len()
        ),
    );
    for r in &requests {
        eprintln!("    {}", shorten(r, 140));
    }
    ensure!(vertices == 4);
    ensure!(
        metric_requests.len() <= vertices,
        "more than one metrics request per vertex: {}",
        metric_requests.len()
    );
    // The TaskManagers, found by resource id, each with its host and RPC + data ports.
    let tm_ids: BTreeSet<String> = snap.taskmanagers.iter().map(|t| t.id.clone()).collect();
    let started: BTreeSet<String> = cluster
        .taskmanagers()
        .iter()
        .map(|t| t.resource_id.clone())
        .collect();
    ensure!(tm_ids == started, "taskmanagers {tm_ids:?} vs {started:?}");
    for t in &snap.taskmanagers {
        ensure!(
            t.host.as_deref() == Some("127.0.0.1") || t.host.as_deref() == Some("localhost"),
            "{t:?}"
        );
        ensure!(t.ports().len() == 2, "rpc and data port: {t:?}");
    }
    // /config + /jobs/overview + /taskmanagers + per job (details + per vertex (placement +
    // metrics)).
    ensure!(
        requests.len() == 3 + snap.jobs.len() + 2 * vertices,
        "{} requests",
        requests.len()
    );
    ensure!(
        requests.iter().all(|r| r.len() < 4096),
        "a request line over Flink's limit"
    );

    cluster.stop()?;
    ensure!(!cluster.any_running(), "cluster still running after stop");
    log(t0, format!("Flink {version}: done"));
    Ok(())
}

fn check_topology(job: &JobSnapshot, mode: JobMode, name: &str) -> Result<()> {
    ensure!(job.name == name, "name {:?} != {name:?}", job.name);
    ensure!(job.state == "RUNNING", "{name}: state {}", job.state);
    ensure!(
        job.start_time_ms.is_some_and(|t| t > 0),
        "{name}: start {:?}",
        job.start_time_ms
    );
    let expected = mode.vertices();
    let got: Vec<(&str, u32)> = job
        .vertices
        .iter()
        .map(|v| (v.name.as_str(), v.parallelism))
        .collect();
    let want: Vec<(&str, u32)> = expected.iter().map(|v| (v.name, v.parallelism)).collect();
    ensure!(
        got == want,
        "{name}: vertices (topological order) {got:?}, want {want:?}"
    );
    for v in &job.vertices {
        ensure!(
            v.vertex_id.len() == 32 && v.vertex_id.chars().all(|c| c.is_ascii_hexdigit()),
            "vertex id {:?}",
            v.vertex_id
        );
        ensure!(
            v.subtasks.len() == v.parallelism as usize,
            "{}: {} subtasks",
            v.name,
            v.subtasks.len()
        );
    }
    // One edge, source → consumer, with the plan's ship strategy.
    ensure!(job.edges.len() == 1, "{name}: edges {:?}", job.edges);
    let e = &job.edges[0];
    ensure!(
        e.source == job.vertices[0].vertex_id && e.target == job.vertices[1].vertex_id,
        "{name}: edge {e:?}"
    );
    ensure!(
        e.ship_strategy.as_deref().is_some_and(|s| !s.is_empty()),
        "{name}: ship strategy {:?}",
        e.ship_strategy
    );
    Ok(())
}

fn check_placement(job: &JobSnapshot, known_tms: &BTreeSet<String>) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    for v in &job.vertices {
        let indexes: Vec<u32> = v.subtasks.iter().map(|s| s.subtask).collect();
        ensure!(
            indexes == (0..v.parallelism).collect::<Vec<_>>(),
            "{}: subtasks {indexes:?}",
            v.name
        );
        for s in &v.subtasks {
            let what = format!("{} #{}", v.name, s.subtask);
            ensure!(s.status == "RUNNING", "{what}: {}", s.status);
            ensure!(s.attempt == 0, "{what}: attempt {}", s.attempt);
            ensure!(
                s.taskmanager_id
                    .as_ref()
                    .is_some_and(|t| known_tms.contains(t)),
                "{what}: taskmanager {:?} not in /taskmanagers {known_tms:?}",
                s.taskmanager_id
            );
            // Both versions give `endpoint` "localhost:<port>" (1.20 also `host` "localhost").
            ensure!(
                s.host
                    .as_deref()
                    .is_some_and(|h| h.starts_with("localhost:")),
                "{what}: host {:?}",
                s.host
            );
            let start = job.start_time_ms.unwrap_or(0);
            ensure!(
                s.start_time_ms.is_some_and(|t| t >= start && t <= now),
                "{what}: start {:?} (job {start}, now {now})",
                s.start_time_ms
            );
        }
    }
    // Slots are spread: each job has subtasks on both TaskManagers.
    let used: BTreeSet<&String> = job
        .vertices
        .iter()
        .flat_map(|v| &v.subtasks)
        .filter_map(|s| s.taskmanager_id.as_ref())
        .collect();
    ensure!(used.len() == 2, "{}: TaskManagers used {used:?}", job.name);
    Ok(())
}

/// What the client copes with, seen in the raw responses: 1.20 sends `host` and `endpoint`
/// (a string), 2.x `endpoint` only; 1.20 has the legacy `buffers.*` ids, 2.x not; neither has
/// the blog's short names.
fn check_raw_version_differences(
    rest: &bpmon_e2e::FlinkRest,
    snap: &ClusterSnapshot,
    major: u32,
) -> Result<()> {
    let job = snap.jobs.first().context("no job")?;
    let v = job.vertices.first().context("no vertex")?;
    let base = format!("/jobs/{}/vertices/{}", job.job_id, v.vertex_id);
    let details = rest.get_json(&base)?;
    let s0 = details
        .get("subtasks")
        .and_then(|s| s.get(0))
        .context("no subtask 0")?;
    ensure!(
        s0.get("endpoint").is_some_and(|e| e.is_string()),
        "endpoint: {s0}"
    );
    ensure!(
        s0.get("host").is_some() == (major == 1),
        "host on Flink {major}: {s0}"
    );
    let ids = "0.Shuffle.Netty.Output.Buffers.outPoolUsage,0.buffers.outPoolUsage,0.floatingBuffersUsage,0.exclusiveBuffersUsage";
    let present: BTreeSet<String> = rest
        .get_json(&format!("{base}/metrics?get={ids}"))?
        .as_array()
        .context("metrics not a list")?
        .iter()
        .filter_map(|m| m.get("id")?.as_str().map(str::to_string))
        .collect();
    let mut want = BTreeSet::from(["0.Shuffle.Netty.Output.Buffers.outPoolUsage".to_string()]);
    if major == 1 {
        want.insert("0.buffers.outPoolUsage".to_string());
    }
    ensure!(present == want, "metric ids on Flink {major}: {present:?}");
    Ok(())
}

/// The hard job's source is hard back-pressured with a full output pool, the soft job's source
/// soft back-pressured, and the consumers report their input pools.
fn metrics_settled(hard: &JobSnapshot, soft: &JobSnapshot) -> Result<()> {
    for s in &vertex_of(hard, "Source: numbers -> explode")?.subtasks {
        let m = &s.metrics;
        ensure!(
            m.hard_back_pressured_ms.is_some_and(|v| v >= 500.0),
            "hard #{}: hard {:?}",
            s.subtask,
            m.hard_back_pressured_ms
        );
        ensure!(
            m.out_pool_usage.is_some_and(|v| v >= 0.9),
            "hard #{}: outPoolUsage {:?}",
            s.subtask,
            m.out_pool_usage
        );
        ensure!(
            m.is_back_pressured == Some(true),
            "hard #{}: isBackPressured",
            s.subtask
        );
    }
    for s in &vertex_of(soft, "Source: numbers")?.subtasks {
        ensure!(
            s.metrics.soft_back_pressured_ms.is_some_and(|v| v >= 500.0),
            "soft #{}: soft {:?}",
            s.subtask,
            s.metrics.soft_back_pressured_ms
        );
    }
    for job in [hard, soft] {
        for s in &vertex_of(job, "slow consumer -> discard: Writer")?.subtasks {
            let m = &s.metrics;
            ensure!(
                m.in_pool_usage.is_some(),
                "{} consumer #{}: no inPoolUsage",
                job.name,
                s.subtask
            );
            ensure!(
                m.num_records_in.is_some() && m.busy_ms.is_some(),
                "{} consumer #{}",
                job.name,
                s.subtask
            );
        }
    }
    Ok(())
}

fn metrics_table(s: &ClusterSnapshot) -> String {
    let mut out = String::new();
    for j in &s.jobs {
        for v in &j.vertices {
            for st in &v.subtasks {
                let m = &st.metrics;
                let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
                out.push_str(&format!(
                    "  {:18} {:34} #{} tm={:?} hard={} soft={} idle={} busy={} out={} in={} float={} excl={} bp={:?} recIn={} local={} remote={}\n",
                    j.name,
                    v.name,
                    st.subtask,
                    st.taskmanager_id.as_deref().unwrap_or("-"),
                    f(m.hard_back_pressured_ms),
                    f(m.soft_back_pressured_ms),
                    f(m.idle_ms),
                    f(m.busy_ms),
                    f(m.out_pool_usage),
                    f(m.in_pool_usage),
                    f(m.input_floating_buffers_usage),
                    f(m.input_exclusive_buffers_usage),
                    m.is_back_pressured,
                    f(m.num_records_in),
                    f(m.num_bytes_in_local),
                    f(m.num_bytes_in_remote),
                ));
            }
        }
    }
    if !s.errors.is_empty() {
        out.push_str(&format!("  errors: {:?}\n", s.errors));
    }
    out
}

fn poll(
    rt: &tokio::runtime::Runtime,
    client: &FlinkRestClient,
    t0: Instant,
    what: &str,
    done: impl Fn(&ClusterSnapshot) -> bool,
) -> Result<ClusterSnapshot> {
    poll_for(rt, client, t0, Duration::from_secs(60), what, done)
}

fn poll_for(
    rt: &tokio::runtime::Runtime,
    client: &FlinkRestClient,
    t0: Instant,
    deadline: Duration,
    what: &str,
    done: impl Fn(&ClusterSnapshot) -> bool,
) -> Result<ClusterSnapshot> {
    let start = Instant::now();
    loop {
        let snap = rt.block_on(client.snapshot());
        if done(&snap) {
            log(
                t0,
                format!("{what} after {:.1}s", start.elapsed().as_secs_f64()),
            );
            return Ok(snap);
        }
        if start.elapsed() > deadline {
            bail!("{what}: not within {deadline:?}; errors {:?}", snap.errors);
        }
        thread::sleep(Duration::from_secs(2));
    }
}

fn job_of<'a>(s: &'a ClusterSnapshot, jid: &str) -> Option<&'a JobSnapshot> {
    s.jobs.iter().find(|j| j.job_id == jid)
}

fn jid_of(jobs: &BTreeMap<String, (JobMode, String)>, mode: JobMode) -> Result<String> {
    jobs.iter()
        .find(|(_, (m, _))| *m == mode)
        .map(|(jid, _)| jid.clone())
        .context("no such job")
}

fn vertex_of<'a>(job: &'a JobSnapshot, name: &str) -> Result<&'a VertexSnapshot> {
    job.vertices
        .iter()
        .find(|v| v.name == name)
        .with_context(|| format!("{}: no vertex {name:?}", job.name))
}

fn subtask_of<'a>(
    job: &'a JobSnapshot,
    vertex: &str,
    index: u32,
) -> Result<&'a bpmon_collector::model::SubtaskSnapshot> {
    vertex_of(job, vertex)?
        .subtasks
        .iter()
        .find(|s| s.subtask == index)
        .with_context(|| format!("{vertex}: no subtask {index}"))
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Failures, against local servers

#[test]
fn timeout_is_reported_and_bounded() -> Result<()> {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    thread::spawn(move || {
        // Holding the streams keeps the connections open and silent.
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let client = FlinkRestClient::new(&base, Duration::from_secs(1))?;
    let start = Instant::now();
    let snap = runtime()?.block_on(client.snapshot());
    let took = start.elapsed();
    ensure!(
        snap.errors == vec![format!("GET {base}/config: timed out after 1s")],
        "{:?}",
        snap.errors
    );
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    ensure!(snap.jobs.is_empty() && snap.flink_version.is_none());
    ensure!(snap.flink_url == base && snap.fetched_at_ms > 0);
    Ok(())
}

#[test]
fn connection_refused_gives_an_empty_snapshot() -> Result<()> {
    // A port that was just free: nothing listens there now.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let client = FlinkRestClient::new(&base, Duration::from_secs(2))?;
    let start = Instant::now();
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.errors == vec![format!("GET {base}/config: connection refused")],
        "{:?}",
        snap.errors
    );
    ensure!(snap.jobs.is_empty() && snap.flink_version.is_none());
    ensure!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}

#[test]
fn http_404_is_reported_and_the_rest_is_returned() -> Result<()> {
    let server =
        CannedServer::start(vec![
        ("/config".into(), 200, r#"{"flink-version":"2.3.0","features":{}}"#.into()),
        ("/taskmanagers".into(), 200, r#"{"taskmanagers":[]}"#.into()),
        (
            "/jobs/overview".into(),
            200,
            r#"{"jobs":[{"jid":"j1","name":"gone","state":"RUNNING","start-time":1700000000000},
                        {"jid":"j2","name":"old","state":"FINISHED","start-time":1}]}"#
                .into(),
        ),
    ])?;
    let client = FlinkRestClient::new(&server.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.errors
            == vec![format!(
                "GET {}/jobs/j1: HTTP 404 Not Found: Not found: /jobs/j1",
                server.url
            )],
        "{:?}",
        snap.errors
    );
    ensure!(snap.flink_version.as_deref() == Some("2.3.0"));
    // The listed job is still there, from the list; the finished one is not monitored.
    ensure!(snap.jobs.len() == 1, "{:?}", snap.jobs);
    let j = &snap.jobs[0];
    ensure!(j.job_id == "j1" && j.name == "gone" && j.state == "RUNNING" && j.vertices.is_empty());
    ensure!(j.start_time_ms == Some(1_700_000_000_000));
    ensure!(
        sorted(server.paths()) == ["/config", "/jobs/j1", "/jobs/overview", "/taskmanagers"],
        "{:?}",
        server.paths()
    );
    Ok(())
}

#[test]
fn malformed_json_is_reported_and_the_rest_is_returned() -> Result<()> {
    let (a, b) = ("a".repeat(32), "b".repeat(32));
    // Plan not embedded: the client must ask /plan. Vertices listed sink first.
    let details = format!(
        r#"{{"jid":"j1","name":"job","state":"RUNNING","start-time":5,"unknown":{{"x":1}},
            "vertices":[{{"id":"{b}","name":"sink","parallelism":1,"status":"RUNNING"}},
                        {{"id":"{a}","name":"src","parallelism":2,"status":"RUNNING"}}]}}"#
    );
    let plan = format!(
        r#"{{"plan":{{"jid":"j1","nodes":[{{"id":"{b}","inputs":[{{"num":0,"id":"{a}","ship_strategy":"HASH"}}]}},{{"id":"{a}"}}]}}}}"#
    );
    let src = r#"{"id":"x","subtasks":[
        {"subtask":0,"status":"RUNNING","attempt":0,"endpoint":"h1:1","taskmanager-id":"tm0","start-time":10},
        {"subtask":1,"status":"DEPLOYING","attempt":1,"host":"h2","start-time":-1}]}"#;
    let sink = r#"{"subtasks":[{"subtask":0,"status":"RUNNING","attempt":0,"endpoint":"h1:1","taskmanager-id":"tm0","start-time":11}]}"#;
    let sink_metrics = r#"[{"id":"0.Shuffle.Netty.Input.Buffers.inPoolUsage","value":"1.0"},
                           {"id":"0.buffers.inPoolUsage","value":"0.1"},
                           {"id":"0.busyTimeMsPerSecond","value":"NaN"},
                           {"id":"0.isBackPressured","value":"false"}]"#;
    let server = CannedServer::start(vec![
        (
            "/config".into(),
            200,
            r#"{"flink-version":"1.20.3"}"#.into(),
        ),
        (
            "/jobs/overview".into(),
            200,
            r#"{"jobs":[{"jid":"j1","name":"job","state":"RUNNING"}]}"#.into(),
        ),
        ("/jobs/j1".into(), 200, details),
        ("/jobs/j1/plan".into(), 200, plan),
        (
            "/taskmanagers".into(),
            200,
            r#"{"taskmanagers":[{"id":"tm0","path":"akka.tcp://flink@h1:6122/user/rpc/taskmanager_0","dataPort":1,"slotsNumber":2}]}"#.into(),
        ),
        (format!("/jobs/j1/vertices/{a}"), 200, src.into()),
        (format!("/jobs/j1/vertices/{b}"), 200, sink.into()),
        (
            format!("/jobs/j1/vertices/{a}/metrics"),
            200,
            "{not json".into(),
        ),
        (
            format!("/jobs/j1/vertices/{b}/metrics"),
            200,
            sink_metrics.into(),
        ),
    ])?;
    let client = FlinkRestClient::new(&server.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());

    ensure!(snap.errors.len() == 1, "{:?}", snap.errors);
    let e = &snap.errors[0];
    let prefix = format!("GET {}/jobs/j1/vertices/{a}/metrics?get=0.", server.url);
    ensure!(e.starts_with(&prefix), "{e}");
    ensure!(
        e.contains(": invalid JSON at line 1 column 2: key must be a string"),
        "{e}"
    );

    ensure!(snap.flink_version.as_deref() == Some("1.20.3"));
    let j = &snap.jobs[0];
    let names: Vec<&str> = j.vertices.iter().map(|v| v.name.as_str()).collect();
    ensure!(names == ["src", "sink"], "topological order: {names:?}");
    ensure!(j.edges.len() == 1 && j.edges[0].source == a && j.edges[0].target == b);
    ensure!(j.edges[0].ship_strategy.as_deref() == Some("HASH"));
    // The source's placement is there, without metrics.
    let src = &j.vertices[0];
    ensure!(src.subtasks.len() == 2);
    ensure!(
        src.subtasks[0].host.as_deref() == Some("h1:1")
            && src.subtasks[0].taskmanager_id.as_deref() == Some("tm0")
    );
    ensure!(
        src.subtasks[1].host.as_deref() == Some("h2") && src.subtasks[1].taskmanager_id.is_none()
    );
    ensure!(src.subtasks[1].start_time_ms.is_none() && src.subtasks[1].attempt == 1);
    ensure!(src.subtasks[0].metrics == Default::default());
    // The sink's metrics, first alias winning, NaN as None.
    let m = &j.vertices[1].subtasks[0].metrics;
    ensure!(
        m.in_pool_usage == Some(1.0) && m.busy_ms.is_none() && m.is_back_pressured == Some(false),
        "{m:?}"
    );

    // One metrics request per vertex; every id for every subtask in it.
    let paths = server.requests();
    let metric_reqs: Vec<&String> = paths
        .iter()
        .filter(|p| p.contains("/metrics?get="))
        .collect();
    ensure!(metric_reqs.len() == 2, "{paths:?}");
    let src_req = metric_reqs
        .iter()
        .find(|p| p.contains(&a))
        .context("no source metrics request")?;
    for id in bpmon_collector::flink_rest::requested_metric_ids() {
        ensure!(
            src_req.contains(&format!("0.{id}")) && src_req.contains(&format!("1.{id}")),
            "{id}"
        );
    }
    ensure!(paths.len() == 9, "{paths:?}");
    ensure!(
        snap.taskmanagers
            == vec![bpmon_collector::model::TaskManagerRef {
                id: "tm0".into(),
                host: Some("h1".into()),
                rpc_port: Some(6122),
                data_port: Some(1),
                addresses: vec![],
            }],
        "{:?}",
        snap.taskmanagers
    );
    Ok(())
}

/// A connection cut between `/config` and `/jobs/overview` (a restarting JobManager, a proxy)
/// once left a snapshot with the TaskManagers and no jobs, which `status` read as "the job is not
/// running in Flink any more". Without the job list the poll has failed.
#[test]
fn a_poll_without_the_job_list_has_failed() -> Result<()> {
    let server = CannedServer::start(vec![
        ("/config".into(), 200, r#"{"flink-version":"2.3.0"}"#.into()),
        (
            "/taskmanagers".into(),
            200,
            r#"{"taskmanagers":[{"id":"tm0","path":"pekko.tcp://flink@h1:6122/user/rpc/taskmanager_0","dataPort":1}]}"#.into(),
        ),
        ("/jobs/overview".into(), 500, r#"{"errors":["Internal server error."]}"#.into()),
    ])?;
    let client = FlinkRestClient::new(&server.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.outcome() == bpmon_collector::model::PollOutcome::Failed,
        "{:?} from {snap:?}",
        snap.outcome()
    );
    ensure!(snap.jobs.is_empty() && snap.taskmanagers.is_empty());
    ensure!(
        snap.errors.len() == 1
            && snap.errors[0].starts_with(&format!("GET {}/jobs/overview: HTTP 500", server.url)),
        "{:?}",
        snap.errors
    );
    Ok(())
}

/// `/taskmanagers` failing leaves the list empty for want of an answer, and says so: the
/// collector then keeps the TaskManagers it knew, or every agent's JVM would go unplaced.
#[test]
fn unread_taskmanagers_are_told_from_none() -> Result<()> {
    let routes = |tm_status: u16, tm_body: &str| {
        vec![
            ("/config".into(), 200, r#"{"flink-version":"2.3.0"}"#.into()),
            ("/taskmanagers".into(), tm_status, tm_body.to_string()),
            (
                "/jobs/overview".into(),
                200,
                r#"{"jobs":[{"jid":"j1","name":"old","state":"FINISHED","start-time":1}]}"#.into(),
            ),
        ]
    };
    let failing = CannedServer::start(routes(500, r#"{"errors":["boom"]}"#))?;
    let client = FlinkRestClient::new(&failing.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.taskmanagers_unread && snap.taskmanagers.is_empty(),
        "{snap:?}"
    );
    ensure!(
        snap.errors.len() == 1 && snap.errors[0].contains("/taskmanagers"),
        "{:?}",
        snap.errors
    );

    let empty = CannedServer::start(routes(200, r#"{"taskmanagers":[]}"#))?;
    let client = FlinkRestClient::new(&empty.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        !snap.taskmanagers_unread && snap.errors.is_empty(),
        "{snap:?}"
    );
    Ok(())
}

#[test]
fn jobs_list_falls_back_to_jobs() -> Result<()> {
    let server = CannedServer::start(vec![
        ("/config".into(), 200, "{}".into()),
        ("/taskmanagers".into(), 200, r#"{"taskmanagers":[]}"#.into()),
        (
            "/jobs".into(),
            200,
            r#"{"jobs":[{"id":"j9","status":"CANCELED"}]}"#.into(),
        ),
    ])?;
    let client = FlinkRestClient::new(&server.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(snap.errors.is_empty(), "{:?}", snap.errors);
    ensure!(snap.flink_version.is_none() && snap.jobs.is_empty());
    ensure!(
        sorted(server.paths()) == ["/config", "/jobs", "/jobs/overview", "/taskmanagers"],
        "{:?}",
        server.paths()
    );
    Ok(())
}

#[test]
fn requests_run_concurrently_within_the_bound() -> Result<()> {
    // One job of six vertices: twelve vertex requests are ready at once.
    let ids: Vec<String> = (0..6).map(|i| format!("{i:032x}")).collect();
    let vertices: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id":"{id}","name":"v{id}","parallelism":1}}"#))
        .collect();
    let mut routes = vec![
        (
            "/config".to_string(),
            200,
            r#"{"flink-version":"2.3.0"}"#.to_string(),
        ),
        (
            "/jobs/overview".into(),
            200,
            r#"{"jobs":[{"jid":"j","state":"RUNNING"}]}"#.into(),
        ),
        ("/taskmanagers".into(), 200, r#"{"taskmanagers":[]}"#.into()),
        (
            "/jobs/j".into(),
            200,
            format!(
                r#"{{"jid":"j","name":"n","state":"RUNNING","vertices":[{}],"plan":{{"nodes":[]}}}}"#,
                vertices.join(",")
            ),
        ),
    ];
    for id in &ids {
        routes.push((
            format!("/jobs/j/vertices/{id}"),
            200,
            r#"{"subtasks":[{"subtask":0}]}"#.into(),
        ));
        routes.push((format!("/jobs/j/vertices/{id}/metrics"), 200, "[]".into()));
    }
    let server = CannedServer::start_slow(routes, Duration::from_millis(150))?;
    let client = FlinkRestClient::with_max_in_flight(&server.url, Duration::from_secs(5), 3)?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(snap.errors.is_empty(), "{:?}", snap.errors);
    ensure!(snap.jobs[0].vertices.len() == 6);
    ensure!(server.requests().len() == 4 + 12, "{:?}", server.paths());
    ensure!(
        server.max_in_flight() == 3,
        "max in flight {}",
        server.max_in_flight()
    );
    Ok(())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A tiny HTTP/1.1 server answering canned bodies by path (query ignored), 404 with Flink's
/// error body otherwise; one response per connection. Records every request target and how
/// many requests it was answering at once.
struct CannedServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    /// (requests being answered now, the most at once).
    in_flight: Arc<Mutex<(usize, usize)>>,
}

impl CannedServer {
    fn start(routes: Vec<(String, u16, String)>) -> Result<Self> {
        Self::start_slow(routes, Duration::ZERO)
    }

    /// Each answer waits `delay` first, so that concurrent requests overlap.
    fn start_slow(routes: Vec<(String, u16, String)>, delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(Mutex::new((0, 0)));
        let (seen, busy) = (Arc::clone(&requests), Arc::clone(&in_flight));
        let routes = Arc::new(routes);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (routes, seen, busy) =
                    (Arc::clone(&routes), Arc::clone(&seen), Arc::clone(&busy));
                thread::spawn(move || {
                    let _ = answer(conn, &routes, &seen, &busy, delay);
                });
            }
        });
        Ok(Self {
            url,
            requests,
            in_flight,
        })
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Request paths without queries, in the order they came.
    fn paths(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.split('?').next().unwrap_or_default().to_string())
            .collect()
    }

    /// The most requests that were being answered at once.
    fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

fn answer(
    mut conn: TcpStream,
    routes: &[(String, u16, String)],
    seen: &Mutex<Vec<String>>,
    busy: &Mutex<(usize, usize)>,
    delay: Duration,
) -> std::io::Result<()> {
    let head = read_head(&mut conn)?;
    {
        let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
        b.0 += 1;
        b.1 = b.1.max(b.0);
    }
    thread::sleep(delay);
    // Counted out before the answer is written: once the client has it, it may start its next
    // request at once, and this thread must not still count the old one (on a loaded machine it
    // could be descheduled between the write and the count, reading 4 for a bound of 3).
    busy.lock().unwrap_or_else(|e| e.into_inner()).0 -= 1;
    respond(&mut conn, &head, routes, seen)
}

fn respond(
    conn: &mut TcpStream,
    head: &str,
    routes: &[(String, u16, String)],
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target.clone());
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match routes.iter().find(|(p, _, _)| *p == path) {
        Some((_, s, b)) => (*s, b.clone()),
        None => (404, format!(r#"{{"errors":["Not found: {path}"]}}"#)),
    };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A TCP forwarder to a real cluster that records the request line of every HTTP request
/// passing through (keep-alive connections carry several).
struct CountingProxy {
    url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let seen = Arc::clone(&seen);
                thread::spawn(move || pump(client, server, Some(&seen)));
                thread::spawn(move || pump(server2, client2, None));
            }
        });
        Ok(Self { url, lines })
    }

    /// `GET <target> HTTP/1.1` lines seen so far.
    fn requests(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Copies `from` → `to` until EOF; with `record`, notes every request line on the way. GET
/// requests have no body, so every line that starts with a method is a request line.
fn pump(mut from: TcpStream, mut to: TcpStream, record: Option<&Mutex<Vec<String>>>) {
    let mut chunk = [0u8; 16384];
    let mut pending = String::new();
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
        if let Some(record) = record {
            pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
            while let Some(end) = pending.find("\r\n") {
                let line: String = pending.drain(..end + 2).collect();
                if line.starts_with("GET ") {
                    record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(line.trim_end().to_string());
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// One connection's request head, answered by `reply` (which gets the stream to write to).
fn one_shot_server(
    reply: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> Result<(String, Arc<Mutex<String>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let head = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&head);
    thread::spawn(move || {
        if let Some(mut conn) = listener.incoming().flatten().next() {
            if let Ok(h) = read_head(&mut conn) {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = h;
            }
            reply(&mut conn);
        }
    });
    Ok((url, head))
}

#[test]
fn credentials_in_the_url_become_basic_auth_and_are_shown_nowhere() -> Result<()> {
    let (url, head) = one_shot_server(|conn| {
        let _ = write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
    })?;
    let with_secret = url.replace("http://", "http://admin:s3cret@");
    let client = FlinkRestClient::new(&with_secret, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    let head = head.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // base64("admin:s3cret")
    ensure!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("authorization: Basic YWRtaW46czNjcmV0")),
        "{head}"
    );
    ensure!(snap.flink_url == url, "{}", snap.flink_url);
    let shown = format!("{snap:?}");
    ensure!(!shown.contains("s3cret"), "{shown}");
    Ok(())
}

#[test]
fn an_endless_body_is_cut_at_the_bound() -> Result<()> {
    let (url, _) = one_shot_server(|conn| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[\"x\""
        );
        let chunk = vec![b' '; 1 << 20];
        // At most 4x the client's bound, then stop: the test never runs away.
        for _ in 0..((4 * bpmon_collector::flink_rest::MAX_RESPONSE_BYTES) >> 20) {
            if conn.write_all(&chunk).is_err() {
                return;
            }
        }
    })?;
    let client = FlinkRestClient::new(&url, Duration::from_secs(20))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.errors
            .iter()
            .any(|e| e.contains("/config: response larger than")),
        "{:?}",
        snap.errors
    );
    Ok(())
}

#[test]
fn an_absurd_parallelism_is_reported_not_requested() -> Result<()> {
    let a = "a".repeat(32);
    let details = format!(
        r#"{{"jid":"j1","name":"job","state":"RUNNING","start-time":5,
            "vertices":[{{"id":"{a}","name":"src","parallelism":2147483647,"status":"RUNNING"}}]}}"#
    );
    let server = CannedServer::start(vec![
        ("/config".into(), 200, r#"{"flink-version":"2.3.0"}"#.into()),
        (
            "/jobs/overview".into(),
            200,
            r#"{"jobs":[{"jid":"j1","name":"job","state":"RUNNING"}]}"#.into(),
        ),
        ("/jobs/j1".into(), 200, details),
        ("/taskmanagers".into(), 200, r#"{"taskmanagers":[]}"#.into()),
        (
            format!("/jobs/j1/vertices/{a}"),
            200,
            r#"{"subtasks":[]}"#.into(),
        ),
    ])?;
    let client = FlinkRestClient::new(&server.url, Duration::from_secs(2))?;
    let snap = runtime()?.block_on(client.snapshot());
    ensure!(
        snap.errors
            .iter()
            .any(|e| e.contains("claims parallelism 2147483647")),
        "{:?}",
        snap.errors
    );
    // Not one metrics request for it.
    ensure!(
        !server.paths().iter().any(|p| p.ends_with("/metrics")),
        "{:?}",
        server.paths()
    );
    Ok(())
}
