//! Placement wherever Flink runs (issue 9): clusters started the way users start them, on every
//! Flink version bpmon supports (1.18, 1.20, 2.3), and the whole product on each, with both
//! backends, agreeing with Flink's own `/backpressure`.
//!
//! * Cluster A, `[Script, ResourceId]`: the script-started TaskManager registers under Flink's
//!   default id `localhost:<rpcPort>-<6 hex>` at host `localhost`, the other under its explicit
//!   id.
//! * Cluster B, `[OwnNamespaces, Script]`: the namespace TaskManager registers at
//!   `198.18.<n>.2` (the address Flink found itself), its JVM is in PID, network, mount and UTS
//!   namespaces of its own with a `/tmp` of its own; the script-started one announces the host
//!   side of the veth. Restarted (on 2.3), the namespace TaskManager comes back in its namespace
//!   under a new id. The namespace is gone after `stop()`.
//!
//! On each cluster a hard, a soft and an idle job run across both TaskManagers, and two
//! collectors watch it: one fed by an agent with the attach backend that reads no TaskManager
//! log (so each JVM is placed by what its namespaces show: loopback, its address, its ports),
//! one by an agent with the in-process backend (exact ids; the log's resource id for the plan).
//! Every subtask must get a level from each, and ≥ 95 % of them Flink's; `agents` must name
//! each of our JVMs' TaskManager.

use bpmon_proto::time::now_ms;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpmon_e2e::netns;
use bpmon_e2e::process::{cmdline, nspid};
use bpmon_e2e::readings::{self, SubtaskReading};
use bpmon_e2e::rest::TaskManagerInfo;
use bpmon_e2e::services::{AgentProc, CollectorProc};
use bpmon_e2e::{
    one_cluster_at_a_time, wait_for, work_dir, ClusterOptions, FlinkCluster, FlinkDist, JobMode,
    TaskManagerLaunch, TestJobs,
};
use serde_json::Value;

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

#[test]
fn placement_on_flink_1_18() -> Result<()> {
    let _one = one_cluster_at_a_time();
    shapes("1.18.1")
}

#[test]
fn placement_on_flink_1_20() -> Result<()> {
    let _one = one_cluster_at_a_time();
    shapes("1.20.3")
}

#[test]
fn placement_on_flink_2_3() -> Result<()> {
    let _one = one_cluster_at_a_time();
    shapes("2.3.0")
}

fn shapes(version: &str) -> Result<()> {
    let t0 = Instant::now();
    let dist = FlinkDist::install(version)?;
    let jar = TestJobs::build(&dist)?;
    // The in-process backend's library, next to the agent binary.
    bpmon_e2e::jvmti::library()?;
    script_and_resource_id(t0, &dist, &jar).context("cluster A [Script, ResourceId]")?;
    // The harness's restart of a namespace TaskManager is the same on every version: checked
    // once, on the newest.
    let restart = version == "2.3.0";
    own_namespaces_and_script(t0, &dist, &jar, restart)
        .context("cluster B [OwnNamespaces, Script]")?;
    log(t0, format!("Flink {version}: done"));
    Ok(())
}

fn script_and_resource_id(t0: Instant, dist: &FlinkDist, jar: &Path) -> Result<()> {
    let mut cluster = FlinkCluster::start(
        dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 3,
            launch: vec![TaskManagerLaunch::Script, TaskManagerLaunch::ResourceId],
            ..ClusterOptions::default()
        },
    )?;
    let registered = cluster.rest().taskmanagers()?;
    log(
        t0,
        format!("A up at {}: {}", cluster.rest_url(), describe(&registered)),
    );
    let tms = cluster.taskmanagers();

    let script = &tms[0];
    let cmd = cmdline(script.pid).context("Script TaskManager not running")?;
    ensure!(
        cmd.contains("TaskManagerRunner") && !cmd.contains("resource-id"),
        "Script TaskManager's command line: {cmd}"
    );
    let (host, port, suffix) = default_id_parts(&script.resource_id)?;
    ensure!(host == "localhost", "Script id {}", script.resource_id);
    ensure!(
        port > 0 && suffix.len() == 6,
        "Script id {}",
        script.resource_id
    );
    let reg = registration(&registered, &script.resource_id)?;
    ensure!(
        path_host(&reg.path) == Some("localhost"),
        "Script TaskManager's path {}",
        reg.path
    );

    let explicit = &tms[1];
    ensure!(
        explicit.resource_id == explicit.ident && explicit.resource_id.starts_with("bpmon-"),
        "ResourceId TaskManager's id {}",
        explicit.resource_id
    );
    registration(&registered, &explicit.resource_id)?;
    ensure!(
        registered
            .iter()
            .filter(|t| t.id.starts_with("localhost:"))
            .count()
            == 1,
        "{}",
        describe(&registered)
    );

    let jobs = run_jobs(t0, &cluster, jar, "a")?;
    product_agrees(t0, &cluster, &jobs, "a")?;
    cluster.stop()?;
    log(t0, "A stopped");
    Ok(())
}

fn own_namespaces_and_script(
    t0: Instant,
    dist: &FlinkDist,
    jar: &Path,
    restart: bool,
) -> Result<()> {
    let mut cluster = FlinkCluster::start(
        dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 3,
            launch: vec![TaskManagerLaunch::OwnNamespaces, TaskManagerLaunch::Script],
            ..ClusterOptions::default()
        },
    )?;
    let registered = cluster.rest().taskmanagers()?;
    log(
        t0,
        format!("B up at {}: {}", cluster.rest_url(), describe(&registered)),
    );
    let tms = cluster.taskmanagers();
    let ns_tm = &tms[0];
    let info = ns_tm.netns.clone().context("no namespace")?;
    ensure!(
        info.ns_ip.octets()[..2] == [198, 18] && info.ns_ip.octets()[3] == 2,
        "namespace address {}",
        info.ns_ip
    );

    // Registered under the namespace's address, which Flink found itself.
    let reg = registration(&registered, &ns_tm.resource_id)?;
    let ns_ip = info.ns_ip.to_string();
    ensure!(
        path_host(&reg.path) == Some(ns_ip.as_str()),
        "namespace TaskManager's path {} (expected host {ns_ip})",
        reg.path
    );
    let (host, _, suffix) = default_id_parts(&ns_tm.resource_id)?;
    ensure!(
        host == ns_ip && suffix.len() == 6,
        "namespace TaskManager's id {}",
        ns_tm.resource_id
    );
    // The script-started one in the host's namespace announces the host side of the veth.
    let script = &tms[1];
    let host_ip = info.host_ip.to_string();
    let reg = registration(&registered, &script.resource_id)?;
    ensure!(
        path_host(&reg.path) == Some(host_ip.as_str())
            && script.resource_id.starts_with(&format!("{host_ip}:")),
        "Script TaskManager {} at {}",
        script.resource_id,
        reg.path
    );

    // Its JVM, by its host PID: namespaces of its own.
    let pid = ns_tm.pid;
    let ids = nspid(pid).context("no NSpid")?;
    ensure!(ids.len() == 2 && ids[0] == pid, "NSpid of {pid}: {ids:?}");
    log(
        t0,
        format!("namespace TaskManager: host pid {pid}, NSpid {ids:?}"),
    );
    for ns in ["net", "pid", "mnt", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(theirs != ours, "{ns} namespace shared: {}", ours.display());
    }
    let their_tmp = std::fs::metadata(format!("/proc/{pid}/root/tmp"))?;
    let our_tmp = std::fs::metadata("/tmp")?;
    ensure!(
        (their_tmp.dev(), their_tmp.ino()) != (our_tmp.dev(), our_tmp.ino()),
        "the namespace TaskManager's /tmp is ours"
    );
    let out = std::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--uts", "hostname"])
        .output()
        .context("nsenter --uts hostname")?;
    let hostname = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        Some(&hostname) == ns_tm.hostname.as_ref(),
        "host name in its UTS namespace {hostname:?}, expected {:?}",
        ns_tm.hostname
    );
    log(
        t0,
        format!(
            "its /tmp: dev {:#x} (ours {:#x}); host name {:?}",
            their_tmp.dev(),
            our_tmp.dev(),
            hostname
        ),
    );

    let jobs = run_jobs(t0, &cluster, jar, "b")?;
    product_agrees(t0, &cluster, &jobs, "b")?;
    for (_, _, jid) in &jobs {
        cluster.rest().cancel_job(jid)?;
    }

    // Restarted, it comes back in the same network namespace under a new id, PID 1 again.
    if restart {
        let old = ns_tm.clone();
        let new = cluster.restart_taskmanager(0)?;
        let reg = registration(&cluster.rest().taskmanagers()?, &new.resource_id)?.clone();
        ensure!(
            new.resource_id != old.resource_id
                && new.resource_id.starts_with(&format!("{ns_ip}:"))
                && path_host(&reg.path) == Some(ns_ip.as_str())
                && new.netns == old.netns,
            "restarted: {new:?} at {}",
            reg.path
        );
        ensure!(
            new.pid != old.pid && nspid(new.pid).is_some_and(|ids| ids.len() == 2 && ids[1] == 1),
            "restarted JVM {}: NSpid {:?}",
            new.pid,
            nspid(new.pid)
        );
        cluster.verify_identity()?;
        log(
            t0,
            format!(
                "namespace TaskManager restarted: {} (pid {}) at {}",
                new.resource_id, new.pid, reg.path
            ),
        );
    }

    let name = info.name.clone();
    cluster.stop()?;
    ensure!(
        !netns::list()?.contains(&name),
        "namespace {name} still there after stop()"
    );
    ensure!(
        !Path::new("/sys/class/net").join(&info.host_if).exists(),
        "{} still there after stop()",
        info.host_if
    );
    log(t0, format!("B stopped, {name} deleted"));
    Ok(())
}

/// Submits a hard, a soft and an idle job (parallelism 2 each), each running before the next
/// is submitted (hard's and soft's consumers share a name: deployed apart, the attach backend
/// tells them apart by age), and checks that the hard job runs on both TaskManagers. Returns
/// (mode, name, job id) of each.
fn run_jobs(
    t0: Instant,
    cluster: &FlinkCluster,
    jar: &Path,
    tag: &str,
) -> Result<Vec<(JobMode, String, String)>> {
    let rest = cluster.rest();
    let mut jobs = Vec::new();
    for mode in [JobMode::Hard, JobMode::Soft, JobMode::Idle] {
        let name = format!("placement-{tag}-{}", mode.as_str());
        let jid = TestJobs::submit(rest, jar, mode, &name)?;
        rest.wait_job_running(&jid, Duration::from_secs(90))
            .with_context(|| format!("{name}\n{}", cluster.log_tails(30)))?;
        jobs.push((mode, name, jid));
    }
    let hard = &jobs[0].2;
    let mut used = std::collections::BTreeSet::new();
    for v in &rest.job(hard)?.vertices {
        for s in rest.vertex(hard, &v.id)?.subtasks {
            used.insert(s.taskmanager_id.unwrap_or_default());
        }
    }
    let ours: std::collections::BTreeSet<String> = cluster
        .taskmanagers()
        .into_iter()
        .map(|t| t.resource_id)
        .collect();
    ensure!(
        used == ours,
        "the hard job's subtasks run on {used:?}, expected both of {ours:?}"
    );
    log(t0, format!("3 jobs RUNNING, the hard one on {used:?}"));
    Ok(jobs)
}

/// The product on `cluster`: per backend a collector and an agent; once Flink's metrics show
/// each job's behaviour, every subtask gets a fresh level from each collector, ≥ 95 % of them
/// Flink's own, and each collector's `agents` names the TaskManager of each of our JVMs.
fn product_agrees(
    t0: Instant,
    cluster: &FlinkCluster,
    jobs: &[(JobMode, String, String)],
    tag: &str,
) -> Result<()> {
    let dir = work_dir().join("placement").join(format!(
        "{}-{tag}-{}",
        cluster.flink_version(),
        now_ms()
    ));
    let backends: [(&str, &[&str]); 2] = [
        // Placed by what the JVM's namespaces show, not by its log.
        ("attach", &["--no-read-taskmanager-logs"]),
        ("jvmti", &["--backend", "jvmti"]),
    ];
    let mut runs: Vec<(&str, CollectorProc, AgentProc)> = Vec::new();
    for (backend, extra) in backends {
        let collector = CollectorProc::start(
            &[cluster.rest_url()],
            &dir.join(format!("{backend}-collector")),
            0,
            &["--poll-interval", "1s"],
        )?;
        collector.set_test_sampling()?;
        let mut args = vec![
            "--discovery-interval",
            "2s",
            "--plan-refresh-interval",
            "2s",
        ];
        args.extend_from_slice(extra);
        let agent = AgentProc::start(
            &collector.url,
            &format!("placement-{backend}"),
            &dir.join(format!("{backend}-spool")),
            &args,
        )?;
        runs.push((backend, collector, agent));
    }
    let settled = readings::wait_settled(cluster.rest(), jobs)?;
    log(
        t0,
        format!(
            "Flink's metrics settled after {:.0}s",
            settled.as_secs_f64()
        ),
    );
    let settled_ms = now_ms();
    let tms = cluster.taskmanagers();
    let beside_netns = tms.iter().any(|t| t.netns.is_some());
    for (backend, collector, agent) in &runs {
        let mut missing = String::new();
        let statuses: Vec<(String, Value)> = wait_for(
            &format!("{backend}: a fresh level for every subtask"),
            Duration::from_secs(60),
            || {
                missing.clear();
                let mut out = Vec::new();
                for (_, name, jid) in jobs {
                    let s = collector.cli_json(&["status", jid])?;
                    for st in readings::status_subtasks(&s).filter(|st| {
                        !st["level"].is_string()
                            || st["window_start_ms"].as_u64().unwrap_or(0) < settled_ms
                    }) {
                        missing.push_str(&format!("\n  {name} #{}: {}", st["subtask"], st["why"]));
                    }
                    out.push((name.clone(), s));
                }
                Ok(missing.is_empty().then_some(out))
            },
        )
        .with_context(|| {
            format!(
                "{backend}: without a fresh level:{missing}\nagents: {}\nagent log:\n{}\ncollector log:\n{}",
                collector.cli_json(&["agents"]).map(|a| a.to_string()).unwrap_or_default(),
                agent.daemon.log_tail(15),
                collector.daemon.log_tail(20)
            )
        })?;
        let mut flink: Vec<SubtaskReading> = Vec::new();
        for (_, _, jid) in jobs {
            flink.extend(readings::read_job(cluster.rest(), jid)?);
        }
        let (agree, total) =
            readings::agreement(statuses.iter().map(|(n, s)| (n.as_str(), s)), &flink)?;
        log(
            t0,
            format!(
                "AGREEMENT {tag}/{backend}: {agree}/{total} subtasks at Flink's level ({:.0}%)",
                100.0 * agree as f64 / total as f64
            ),
        );
        ensure!(
            total == 12,
            "{backend}: {total} subtasks compared, expected 12"
        );
        ensure!(
            agree * 100 >= total * 95,
            "{backend}: only {agree}/{total} subtasks agree with Flink's /backpressure"
        );
        // In-process, every level comes from Flink's own timers of the task (1.18 to 2.3 have
        // them), read exactly; the other backends merge samples with the REST metrics. Where
        // Flink counts the timers' totals wrong (FLINK-35764: 1.16 to 1.20.0), the ratio comes
        // from the samples, and only their split from the timers.
        let overcount = bpmon_proto::timers::totals_overcount(cluster.flink_version());
        let sources: Vec<String> = statuses
            .iter()
            .flat_map(|(_, s)| readings::status_subtasks(s))
            .map(|st| st["ratio_source"].as_str().unwrap_or("none").to_string())
            .collect();
        let from_timers = sources.iter().filter(|s| *s == "timers").count();
        log(
            t0,
            format!(
                "{tag}/{backend}: {from_timers}/{} ratios from Flink's task timers",
                sources.len()
            ),
        );
        let want = if *backend == "jvmti" && !overcount {
            sources.len()
        } else {
            0
        };
        ensure!(
            from_timers == want,
            "{backend}: {from_timers} of {} ratios from timers, expected {want}: {sources:?}",
            sources.len()
        );
        if *backend == "jvmti" {
            let splits: Vec<String> = statuses
                .iter()
                .flat_map(|(_, s)| readings::status_subtasks(s))
                .map(|st| st["split"].as_str().unwrap_or("none").to_string())
                .collect();
            ensure!(
                splits
                    .iter()
                    .all(|s| s == "task_timers" || s == "nothing_waiting"),
                "{backend}: waiting samples not split by the timers: {splits:?}"
            );
        }
        // Which TaskManager each of our JVMs is, and by what.
        let agents = collector.cli_json(&["agents"])?;
        let jvms: Vec<&Value> = agents["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["jvms"].as_array().into_iter().flatten())
            .collect();
        for tm in &tms {
            let j = jvms
                .iter()
                .find(|j| j["pid"] == tm.pid)
                .with_context(|| format!("{backend}: agents lists no JVM {}: {agents}", tm.pid))?;
            ensure!(
                j["taskmanager_id"] == tm.resource_id.as_str(),
                "{backend}: JVM {} ({:?}) placed as {}: {}",
                tm.pid,
                tm.launch,
                j["taskmanager_id"],
                j["placement"]
            );
            log(
                t0,
                format!(
                    "{backend}: pid {} ({:?}): {}",
                    tm.pid, tm.launch, j["placement"]
                ),
            );
            // The agent that reads no log must have placed each JVM by what its namespaces
            // show. Beside a namespace TaskManager, the script-started one announces the veth's
            // host side instead of localhost.
            let placement = j["placement"].as_str().unwrap_or_default();
            let expected = match (*backend, tm.launch) {
                (_, TaskManagerLaunch::ResourceId) => "by resource id",
                ("attach", _) if beside_netns => "by its address 198.18.",
                ("attach", _) => "by loopback (localhost) and ports",
                _ => "by resource id",
            };
            ensure!(
                placement.contains(expected),
                "{backend}: JVM {} ({:?}) placed {placement:?}, expected {expected:?}",
                tm.pid,
                tm.launch
            );
        }
    }
    for (_, mut collector, mut agent) in runs {
        agent.daemon.stop(Duration::from_secs(10))?;
        collector.daemon.stop(Duration::from_secs(10))?;
    }
    Ok(())
}

fn registration<'a>(registered: &'a [TaskManagerInfo], id: &str) -> Result<&'a TaskManagerInfo> {
    registered
        .iter()
        .find(|t| t.id == id)
        .with_context(|| format!("{id} not in /taskmanagers: {}", describe(registered)))
}

fn describe(registered: &[TaskManagerInfo]) -> String {
    registered
        .iter()
        .map(|t| format!("{} at {}", t.id, t.path))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `host`, `port`, `suffix` of Flink's default resource id `<host>:<port>-<suffix>`.
fn default_id_parts(id: &str) -> Result<(&str, u16, &str)> {
    let (host, rest) = id
        .rsplit_once(':')
        .with_context(|| format!("{id} is not <host>:<port>-<hex>"))?;
    let (port, suffix) = rest
        .split_once('-')
        .with_context(|| format!("{id} is not <host>:<port>-<hex>"))?;
    ensure!(
        suffix.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}: suffix {suffix} is not hex"
    );
    Ok((host, port.parse()?, suffix))
}

/// The host in an RPC path such as `pekko.tcp://flink@198.18.7.2:40123/user/rpc/taskmanager_0`.
fn path_host(path: &str) -> Option<&str> {
    let after = path.split_once('@')?.1;
    let hostport = after.split('/').next()?;
    Some(hostport.rsplit_once(':')?.0)
}
