//! The in-process (JVMTI) backend on real TaskManagers, against the attach backend and Flink.
//!
//! On Flink 2.3 with JDK 17 (two TaskManagers) and with Temurin 25 (one), bpmon's JVMTI library
//! is loaded into a running TaskManager through the attach `load` command, and:
//! - its classes agree with the attach backend's for hard, soft, idle and busy tasks (each
//!   thread's dominant class), and with what Flink's own time metrics say;
//! - it names the exact job of same-named tasks of two jobs deployed back to back on one
//!   TaskManager (checked against Flink's REST placement), which the attach backend can only
//!   guess from thread ages;
//! - it takes no global safepoint per sample (the JVM's own counters, hsperfdata);
//! - the TaskManager keeps running through load, stop and re-load, an agent that reconnects to
//!   the running library, and a task restart (a failover after the other TaskManager is
//!   killed): the library sees the new attempt's threads with their new ids.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpmon_agent::backends::attach::AttachOptions;
use bpmon_agent::backends::jvmti::{socket_name, JvmtiClient};
use bpmon_agent::backends::{Backend, BackendKind, DumpThread, SampleMode};
use bpmon_agent::discovery::{JvmProcess, ProcFs};
use bpmon_agent::sampling::{self as sampler, SampleSettings};
use bpmon_e2e::jvmti::{exact_of, library, options, placed_on};
use bpmon_e2e::readings;
use bpmon_e2e::services::{AgentProc, CollectorProc};
use bpmon_e2e::{
    jdk25_home, one_cluster_at_a_time, work_dir, Behaviour, ClusterOptions, FlinkCluster,
    FlinkDist, FlinkRest, JobMode, TestJobs,
};
use bpmon_proto::{SampleReport, TaskSamples, TimerMethod};
use bpmon_stacks::classify::{Classifier, SampleClass};

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

fn window(samples: u32) -> SampleSettings {
    SampleSettings {
        samples,
        delay: Duration::from_millis(50),
        top_frames: 3,
    }
}

fn dominant(t: &TaskSamples) -> SampleClass {
    if t.blocked >= t.waiting && t.blocked >= t.busy {
        SampleClass::Blocked
    } else if t.waiting >= t.busy {
        SampleClass::Waiting
    } else {
        SampleClass::Busy
    }
}

/// The class a thread of `vertex` must show in `mode`'s job; `None` for vertices the test jobs
/// do not pin down.
fn expected(mode: JobMode, vertex: &str) -> Option<SampleClass> {
    let v = mode.vertices().iter().find(|v| v.name == vertex)?;
    Some(match v.behaviour {
        Behaviour::HardBackPressured => SampleClass::Blocked,
        Behaviour::SoftBackPressured | Behaviour::Idle => SampleClass::Waiting,
        Behaviour::BusySleeping | Behaviour::BusyCpu => SampleClass::Busy,
    })
}

/// What Flink's own timers, read in-process, must say of a thread of `behaviour`: the timer that
/// ran in most samples, the exact share of the window it measured, and for waiting threads the
/// split of the waiting samples (soft back-pressure or idleness) that stack frames cannot make.
/// `overcounts`: this Flink's totals count long waits twice (FLINK-35764), so the share may
/// exceed 1; else it is exact, within the milliseconds the two readings' instants differ.
fn check_timers(
    thread: &str,
    behaviour: Behaviour,
    t: &TaskSamples,
    overcounts: bool,
) -> Result<()> {
    let timers = t
        .timers
        .with_context(|| format!("{thread}: no timers from the in-process sampler"))?;
    let totals = timers
        .totals
        .with_context(|| format!("{thread}: no timer totals: {timers:?}"))?;
    ensure!(
        timers.method == TimerMethod::Fields,
        "{thread}: read by {:?}",
        timers.method
    );
    ensure!(
        timers.states.total() == u64::from(t.samples),
        "{thread}: {timers:?} for {} samples",
        t.samples
    );
    let states = timers.states;
    let n = t.samples;
    let (state_ok, share) = match behaviour {
        Behaviour::HardBackPressured => (states.hard * 2 > n, totals.hard_ms as f64),
        Behaviour::SoftBackPressured => (
            states.soft * 2 > n && timers.waiting_soft * 10 >= t.waiting * 8,
            totals.soft_ms as f64,
        ),
        Behaviour::Idle => (
            states.idle * 2 > n && timers.waiting_soft * 10 <= t.waiting,
            totals.idle_ms as f64,
        ),
        Behaviour::BusySleeping | Behaviour::BusyCpu => (
            states.busy * 2 > n,
            totals.busy_share() * totals.span_ms as f64,
        ),
    };
    let share = share / totals.span_ms as f64;
    eprintln!(
        "  timers {thread}: {behaviour:?}: states {states:?}, waiting soft {}/{}, exact share {share:.3} of {} ms",
        timers.waiting_soft, t.waiting, totals.span_ms
    );
    ensure!(state_ok, "{thread}: {behaviour:?} but timers {timers:?}");
    ensure!(share >= 0.5, "{thread}: {behaviour:?} but {totals:?}");
    ensure!(
        overcounts || share <= 1.01,
        "{thread}: a share of {share:.3} from exact totals: {totals:?}"
    );
    Ok(())
}

/// One window of `samples` with `backend`.
fn sample(jvm: &JvmProcess, backend: &mut Backend, samples: u32) -> SampleReport {
    sampler::sample(jvm, backend, &Classifier::new(), &window(samples))
}

/// One window of `samples` with the attach backend, then one with the jvmti backend (which loads
/// the library, or finds it running), of the same JVM; both without errors. The jvmti client
/// stays connected.
fn attach_then_jvmti(
    jvm: &JvmProcess,
    proc: &ProcFs,
    lib: &std::path::Path,
    samples: u32,
) -> Result<(SampleReport, SampleReport, JvmtiClient)> {
    let open = |kind| Backend::open(kind, jvm, proc, AttachOptions::default(), &options(lib));
    let by_attach = sample(jvm, &mut open(BackendKind::Attach)?, samples);
    let mut jvmti = open(BackendKind::Jvmti)?;
    let by_jvmti = sample(jvm, &mut jvmti, samples);
    for r in [&by_attach, &by_jvmti] {
        ensure!(r.errors.is_empty(), "{}: {:?}", r.backend, r.errors);
    }
    ensure!(by_jvmti.backend == "jvmti", "{}", by_jvmti.backend);
    let Backend::Jvmti(client) = jvmti else {
        bail!("not the jvmti backend");
    };
    Ok((by_attach, by_jvmti, *client))
}

/// Compares the two backends' reports of one TaskManager, thread by thread (name and JVM id),
/// and checks both against the jobs' known behaviour. Returns (agreeing, compared).
fn compare(
    attach: &SampleReport,
    jvmti: &SampleReport,
    modes: &BTreeMap<String, JobMode>,
) -> Result<(usize, usize)> {
    let by_key = |r: &SampleReport| -> BTreeMap<(String, Option<u64>), TaskSamples> {
        r.tasks
            .iter()
            .map(|t| ((t.thread.clone(), t.thread_id), t.clone()))
            .collect()
    };
    let (a, j) = (by_key(attach), by_key(jvmti));
    let mut compared = 0;
    let mut agreeing = 0;
    eprintln!(
        "{:<55} {:>8} {:>22} {:>22}",
        "thread", "job", "attach b/w/busy", "jvmti b/w/busy"
    );
    for (key, jt) in &j {
        let exact = jt
            .exact
            .as_ref()
            .with_context(|| format!("{}: no exact ids from the jvmti backend", key.0))?;
        let mode = *modes
            .get(&exact.job_id)
            .with_context(|| format!("{}: job {} is none of ours", key.0, exact.job_id))?;
        let Some(at) = a.get(key) else {
            bail!("{:?} sampled by jvmti but not by attach", key);
        };
        eprintln!(
            "{:<55} {:>8} {:>22} {:>22}",
            key.0,
            mode.as_str(),
            format!("{}/{}/{}", at.blocked, at.waiting, at.busy),
            format!("{}/{}/{}", jt.blocked, jt.waiting, jt.busy)
        );
        let Some(want) = expected(mode, &jt.identity.task) else {
            continue;
        };
        compared += 1;
        if let Some(v) = mode.vertices().iter().find(|v| v.name == jt.identity.task) {
            let overcounts = jvmti
                .jvm
                .flink_version
                .as_deref()
                .is_some_and(bpmon_proto::timers::totals_overcount);
            check_timers(&key.0, v.behaviour, jt, overcounts)?;
        }
        ensure!(
            dominant(jt) == want,
            "{}: jvmti says {:?}, the job's behaviour is {want:?}",
            key.0,
            dominant(jt)
        );
        if dominant(at) == dominant(jt) {
            agreeing += 1;
        }
        // What a busy thread was doing: the library reads stacks shallow first and locations
        // from line tables; its most frequent frame must be one a full thread dump showed.
        if dominant(jt) == SampleClass::Busy {
            let top = &jt
                .top_frames
                .first()
                .context("a busy thread without frames")?
                .frame;
            ensure!(
                at.top_frames.iter().any(|f| &f.frame == top),
                "{}: jvmti's top frame {top} is none of attach's {:?}",
                key.0,
                at.top_frames
            );
            // Its whole stacks, folded for flame graphs: read past the shallow first read
            // (these stacks are over 20 frames deep), from the thread's root to that frame.
            let stacks = jvmti
                .folded_stacks(jt)
                .context("jvmti stacks naming frames the report lacks")?;
            let (stack, _, _) = stacks
                .first()
                .with_context(|| format!("{}: busy, but no folded stack from jvmti", key.0))?;
            let frames: Vec<&str> = stack.split(';').collect();
            let method = top.split('(').next().unwrap_or(top);
            ensure!(
                frames.len() > 10
                    && frames.first() == Some(&"java.lang.Thread.run")
                    && frames.contains(&method),
                "{}: jvmti's busiest stack is not the whole stack down to {method}: {stack}",
                key.0
            );
        }
    }
    Ok((agreeing, compared))
}

/// Submits `modes` back to back (no wait between: same-named tasks deploy in the same instant)
/// and waits until each runs and Flink's metrics show its behaviour.
fn run_jobs(
    rest: &FlinkRest,
    jar: &std::path::Path,
    modes: &[(JobMode, &str)],
) -> Result<Vec<(JobMode, String, String)>> {
    let mut jobs = Vec::new();
    for (mode, name) in modes {
        let jid = TestJobs::submit(rest, jar, *mode, name)?;
        jobs.push((*mode, name.to_string(), jid));
    }
    for (_, name, jid) in &jobs {
        rest.wait_job_running(jid, Duration::from_secs(120))
            .with_context(|| format!("{name} running"))?;
    }
    readings::wait_settled(rest, &jobs)?;
    Ok(jobs)
}

fn socket_exists(jvm: &JvmProcess) -> bool {
    std::fs::symlink_metadata(
        PathBuf::from(format!("/proc/{}/root/tmp", jvm.pid)).join(socket_name(jvm.nspid)),
    )
    .is_ok()
}

#[test]
fn jvmti_backend_on_flink_2_3_jdk17() -> Result<()> {
    // (Run by hand on 1.18.1 too, where the collector must not trust the timers' totals.)
    const VERSION: &str = "2.3.0";
    let _one = one_cluster_at_a_time();
    let t0 = Instant::now();
    let lib = library()?;
    let dist = FlinkDist::install(VERSION)?;
    let jar = TestJobs::build(&dist)?;
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 2,
            slots_per_tm: 5,
            extra_conf: ClusterOptions::restarting_jobs(),
            ..ClusterOptions::default()
        },
    )?;
    let rest = cluster.rest().clone();
    let jobs = run_jobs(
        &rest,
        &jar,
        &[
            (JobMode::Hard, "bpmon-hard"),
            (JobMode::Hard, "bpmon-hard-twin"),
            (JobMode::Soft, "bpmon-soft"),
            (JobMode::Idle, "bpmon-idle"),
            (JobMode::Busy, "bpmon-busy"),
        ],
    )?;
    let modes: BTreeMap<String, JobMode> =
        jobs.iter().map(|(m, _, jid)| (jid.clone(), *m)).collect();
    log(t0, "Flink 2.3 on JDK 17: five jobs running and settled");

    let tm = cluster.taskmanagers()[0].clone();
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;

    // The same threads, attach then jvmti (the library is loaded by the first open).
    let (by_attach, by_jvmti, jvmti) = attach_then_jvmti(&jvm, &proc, &lib, 60)?;
    let hello = jvmti.hello().context("hello")?.clone();
    ensure!(jvmti.loaded_it() && hello.starts == 1, "{hello:?}");
    log(t0, format!("library loaded: {hello:?}"));

    let (agreeing, compared) = compare(&by_attach, &by_jvmti, &modes)?;
    log(
        t0,
        format!("AGREEMENT jvmti vs attach (JDK 17): {agreeing}/{compared} task threads"),
    );
    ensure!(compared >= 8, "only {compared} threads compared");
    ensure!(agreeing == compared, "{agreeing}/{compared}");

    // Timers only (what continuous watching does between its stack samples): each main task
    // thread is classified by its task's timers alone, and as its stacks classified it.
    let mut jvmti = jvmti;
    let mut by_timers: BTreeMap<u64, (String, Option<String>, [u32; 3])> = BTreeMap::new();
    let mut timer_us = Vec::new();
    // Every other sample with the totals, as a window's edges ask for them; a thread the
    // connection knows comes as one letter, with its totals only when asked.
    let mut with_totals = 0;
    // The first ten one request each, the next ten as one run taken on the library's clock.
    let mut taken = Vec::new();
    for i in 0..10 {
        let totals = i % 2 == 0;
        taken.push((totals, jvmti.sample_with(SampleMode::Timers { totals })?));
        sleep(Duration::from_millis(50));
    }
    let at: Vec<(Duration, bool)> = (0..10u32)
        .map(|i| (Duration::from_millis(50) * i, i % 2 == 0))
        .collect();
    let run_started = std::time::Instant::now();
    for (result, (_, totals)) in jvmti.run(&at).into_iter().zip(&at) {
        taken.push((*totals, result?));
    }
    ensure!(
        run_started.elapsed() >= Duration::from_millis(450),
        "a run of 10 samples 50 ms apart answered after {:?}",
        run_started.elapsed()
    );
    let roster_of_run = taken
        .last()
        .and_then(|(_, (_, d))| d.states.as_ref())
        .map(|st| st.roster.clone())
        .context("timer states in the run")?;
    for (totals, (s, dump)) in taken {
        ensure!(s.errors.is_empty(), "timers only: {:?}", s.errors);
        timer_us.push(s.took_us);
        let mut seen: Vec<(&DumpThread, SampleClass)> = Vec::new();
        for t in &dump.threads {
            ensure!(
                t.stackless && t.timers.is_some() && t.top_frame.is_none(),
                "timers only, yet {t:?}"
            );
            seen.push((t, t.class));
        }
        if let Some(states) = &dump.states {
            for ((t, _), r) in states.roster.threads.iter().zip(&states.readings) {
                ensure!(
                    r.totals.is_some() == totals,
                    "{}: totals {:?} when asked {totals}",
                    t.name,
                    r.totals
                );
                if let Some(tot) = r.totals {
                    ensure!(tot.at_ms == states.at_ms && tot.method == TimerMethod::Fields);
                    with_totals += 1;
                }
                seen.push((t, bpmon_proto::timer_class(r.running)));
            }
        }
        for (t, class) in seen {
            let java_id = t.java_id.context("a java id")?;
            let e = by_timers.entry(java_id).or_insert_with(|| {
                let job = t.task.as_ref().map(|r| r.job_id.clone());
                (t.name.clone(), job, [0; 3])
            });
            e.2[match class {
                SampleClass::Blocked => 0,
                SampleClass::Waiting => 1,
                SampleClass::Busy => 2,
            }] += 1;
        }
    }
    ensure!(with_totals > 0, "no timer states came with totals");
    // Stacks of the busy tasks only: the same thread list as the timers-only samples, each busy
    // thread marked in it and sampled with its stack, every other one by a letter.
    let (_, dump) = jvmti.sample_with(SampleMode::BusyStacks { totals: false })?;
    let states = dump
        .states
        .as_ref()
        .context("busy stacks without timer states")?;
    ensure!(
        bpmon_agent::backends::Roster::same(&states.roster, &roster_of_run),
        "a busy-stacks sample changed the thread list"
    );
    let stacked: HashSet<Option<u64>> = dump.stacked_ids().into_iter().collect();
    for t in &dump.threads {
        // A legacy source thread has no timers of its own: its stack is read as before.
        let legacy = t.name.starts_with("Legacy Source Thread");
        ensure!(
            !t.stackless && (legacy || stacked.contains(&t.java_id)),
            "busy stacks: {} came with a stack but is not marked in the list",
            t.name
        );
    }
    ensure!(
        stacked.len() <= dump.threads.len(),
        "{} threads marked as stacked, {} stacks",
        stacked.len(),
        dump.threads.len()
    );
    ensure!(
        by_timers.len() == by_jvmti.tasks.len(),
        "timers only sampled {} threads, stacks {}",
        by_timers.len(),
        by_jvmti.tasks.len()
    );
    let mut timer_checked = 0;
    for (name, job, [b, w, u]) in by_timers.values() {
        let (identity, _) = bpmon_proto::parse_task_thread_name(name).context("a task name")?;
        let Some(mode) = job.as_ref().and_then(|j| modes.get(j)) else {
            continue;
        };
        let Some(want) = expected(*mode, &identity.task) else {
            continue;
        };
        let got = if b >= w && b >= u {
            SampleClass::Blocked
        } else if w >= u {
            SampleClass::Waiting
        } else {
            SampleClass::Busy
        };
        ensure!(
            got == want,
            "{name}: timers say {got:?} ({b}/{w}/{u}), expected {want:?}"
        );
        timer_checked += 1;
    }
    timer_us.sort_unstable();
    log(
        t0,
        format!(
            "timers only: {timer_checked} threads classified as their behaviour; {} µs inside \
             the JVM per sample (p50), against {:?} µs with stacks",
            timer_us[timer_us.len() / 2],
            by_jvmti.cost.inside_us_p50
        ),
    );
    ensure!(timer_checked >= 8, "only {timer_checked} threads checked");

    // Exact ids: every task thread on this TaskManager names its job, vertex, subtask and
    // attempt as Flink's REST placement does, the twins' same-named tasks included.
    let placed = placed_on(&rest, jobs.iter().map(|j| &j.2), &tm.resource_id)?;
    let named = exact_of(&by_jvmti)?;
    ensure!(
        named == placed,
        "jvmti ids differ from Flink's placement:\n only jvmti: {:?}\n only Flink: {:?}",
        named.difference(&placed).collect::<Vec<_>>(),
        placed.difference(&named).collect::<Vec<_>>()
    );
    let explode = JobMode::Hard.subject().name;
    let twins: Vec<&TaskSamples> = by_jvmti
        .tasks
        .iter()
        .filter(|t| t.identity.task == explode)
        .collect();
    let twin_jobs: HashSet<&str> = twins
        .iter()
        .filter_map(|t| t.exact.as_ref().map(|e| e.job_id.as_str()))
        .collect();
    log(
        t0,
        format!(
            "exact ids: {} tasks match Flink's placement; {} '{explode}' threads in {} jobs",
            named.len(),
            twins.len(),
            twin_jobs.len()
        ),
    );
    // Flink spreads or packs slots as it likes; the twins meet on this TaskManager when both
    // have a subtask here, and then the names alone cannot tell them apart.
    let twin_names: HashSet<&str> = twins.iter().map(|t| t.thread.as_str()).collect();
    if twins.len() > twin_names.len() {
        ensure!(twin_jobs.len() == 2, "{twins:?}");
    }

    // Cost: the attach backend stops the JVM for every dump; jvmti does not.
    let (a_sp, j_sp) = (by_attach.cost.safepoints, by_jvmti.cost.safepoints);
    log(
        t0,
        format!(
            "per sample: attach {} µs (p50, {:?} safepoints / {} dumps), jvmti {} µs round trip, \
             {:?} µs inside the JVM ({:?} safepoints / {} samples)",
            by_attach.cost.dump_us_p50,
            a_sp,
            by_attach.cost.dumps,
            by_jvmti.cost.dump_us_p50,
            by_jvmti.cost.inside_us_p50,
            j_sp,
            by_jvmti.cost.dumps
        ),
    );
    // What the collector exports as the in-process sampler's CPU: one thread's, so more than
    // nothing and less than the window's wall time; dumps have none.
    let cpu_ms = by_jvmti
        .cost
        .inside_cpu_ms_total
        .context("the in-process window reports no CPU")?;
    ensure!(
        cpu_ms > 0.0 && cpu_ms <= by_jvmti.elapsed_ms as f64,
        "in-process CPU {cpu_ms} ms over a {} ms window",
        by_jvmti.elapsed_ms
    );
    ensure!(
        by_attach.cost.inside_cpu_ms_total.is_none(),
        "a dump backend claims in-process CPU"
    );
    log(
        t0,
        format!(
            "in-process CPU: {cpu_ms:.1} ms over the {} ms window ({} samples with stacks)",
            by_jvmti.elapsed_ms, by_jvmti.cost.dumps
        ),
    );
    if let (Some(a), Some(j)) = (a_sp, j_sp) {
        ensure!(
            a >= u64::from(by_attach.cost.dumps),
            "attach: {a} safepoints"
        );
        // The JVM's own periodic safepoints (GC, cleanup) may fall in the window: far fewer
        // than one per sample.
        ensure!(
            j * 4 < u64::from(by_jvmti.cost.dumps),
            "jvmti: {j} safepoints in {} samples",
            by_jvmti.cost.dumps
        );
    }

    // Stop, then load again: the library's thread ends and its socket goes; the TaskManager
    // and its jobs run on; a new load starts it again.
    drop(jvmti);
    let client = JvmtiClient::open(&jvm, &proc, AttachOptions::default(), options(&lib))?;
    ensure!(
        !client.loaded_it(),
        "an agent that reconnects must not load again"
    );
    client.stop()?;
    ensure!(!socket_exists(&jvm), "the socket outlived stop");
    ensure!(
        proc.jvm(tm.pid).is_some(),
        "the TaskManager exited after stop"
    );
    for (_, name, jid) in &jobs {
        ensure!(rest.job(jid)?.state == "RUNNING", "{name} after stop");
    }
    let mut again = JvmtiClient::open(&jvm, &proc, AttachOptions::default(), options(&lib))?;
    let hello = again.hello().context("hello")?.clone();
    ensure!(again.loaded_it() && hello.starts == 2, "{hello:?}");
    let (s, _) = again.sample()?;
    ensure!(!s.threads.is_empty(), "no task threads after the re-load");
    log(
        t0,
        format!(
            "stop and re-load: start {}, {} task threads",
            hello.starts,
            s.threads.len()
        ),
    );

    // A task restart: killing the other TaskManager fails every job over; this TaskManager's
    // tasks are cancelled and deployed again as new threads of the next attempt.
    let before: HashSet<String> = s.threads.iter().map(|t| t.name.clone()).collect();
    cluster.restart_taskmanager(1)?;
    log(t0, "TaskManager 1 killed and restarted: failover");
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let mut backend = Backend::Jvmti(Box::new(again));
        let report = sample(&jvm, &mut backend, 10);
        let Backend::Jvmti(b) = backend else {
            bail!("backend changed")
        };
        again = *b;
        let running = jobs
            .iter()
            .try_fold(true, |ok, (_, _, jid)| -> Result<bool> {
                Ok(ok && rest.job(jid)?.state == "RUNNING")
            })?;
        let placed = placed_on(&rest, jobs.iter().map(|j| &j.2), &tm.resource_id)?;
        // Jobs with a subtask on the killed TaskManager restart (a job entirely on this one,
        // like the busy job, may not).
        let restarted = placed.iter().any(|p| p.4 >= 1);
        if running && restarted && exact_of(&report).is_ok_and(|n| n == placed) {
            break report;
        }
        ensure!(
            Instant::now() < deadline,
            "after the failover the library's ids never matched Flink's placement: {:?} vs {:?}",
            exact_of(&report).ok(),
            placed
        );
        sleep(Duration::from_secs(2));
    };
    // The ids equal Flink's placement, so no thread of an old attempt is counted; the
    // restarted tasks are new threads.
    let after: HashSet<String> = report.tasks.iter().map(|t| t.thread.clone()).collect();
    let new_threads = after.difference(&before).count();
    ensure!(new_threads > 0, "no new task threads after the failover");
    ensure!(proc.jvm(tm.pid).is_some(), "TaskManager 0 exited");
    log(
        t0,
        format!(
            "after the failover: {} task threads ({new_threads} new, of the next attempts), \
             exact ids match Flink's placement",
            report.tasks.len()
        ),
    );
    again.stop()?;

    // The product: `bpmon-agent run --backend jvmti` beside a collector. It loads the library
    // into both TaskManagers (again into this one: start 3), and the collector places every
    // task by its exact ids: the twins' same-named subtasks all get a level, none is ambiguous.
    let dir = work_dir()
        .join("jvmti")
        .join(format!("{}", std::process::id()));
    let mut collector = CollectorProc::start(
        &[cluster.rest_url()],
        &dir.join("collector"),
        0,
        &["--poll-interval", "1s"],
    )?;
    collector.cli_json(&[
        "config",
        "set",
        "default",
        "--samples",
        "20",
        "--delay",
        "50ms",
        "--interval",
        "2s",
    ])?;
    let mut agent = AgentProc::start(
        &collector.url,
        "jvmti-agent",
        &dir.join("spool"),
        &[
            "--backend",
            "jvmti",
            "--discovery-interval",
            "2s",
            "--plan-refresh-interval",
            "2s",
        ],
    )?;
    let placed_all: usize = jobs
        .iter()
        .map(|(_, _, jid)| -> Result<usize> {
            let job = rest.job(jid)?;
            Ok(job.vertices.iter().map(|v| v.parallelism as usize).sum())
        })
        .sum::<Result<usize>>()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut with_level = 0;
        let mut why = Vec::new();
        for (_, name, _) in &jobs {
            // Until the collector's first poll, it knows no job by that name.
            let s = match collector.cli_json(&["status", name]) {
                Ok(s) => s,
                Err(e) => {
                    why.push(format!("{e:#}"));
                    continue;
                }
            };
            for v in s["vertices"].as_array().into_iter().flatten() {
                for st in v["subtasks"].as_array().into_iter().flatten() {
                    if st["level"].is_string() {
                        with_level += 1;
                    } else {
                        why.push(format!(
                            "{name}/{}#{}: {}",
                            v["name"], st["subtask"], st["why"]
                        ));
                    }
                }
            }
        }
        if with_level == placed_all {
            // Every subtask read by its timers has its ratio from their totals, unless this
            // Flink counts them wrong (FLINK-35764): then from the samples.
            let expect = if bpmon_proto::timers::totals_overcount(VERSION) {
                "samples"
            } else {
                "timers"
            };
            let mut sources = BTreeMap::new();
            for (_, name, _) in &jobs {
                let s = collector.cli_json(&["status", name])?;
                for st in readings::status_subtasks(&s).filter(|st| st["timers"].is_object()) {
                    *sources
                        .entry(st["ratio_source"].as_str().unwrap_or("none").to_string())
                        .or_insert(0) += 1;
                }
            }
            ensure!(
                sources.keys().all(|k| k == expect) && !sources.is_empty(),
                "Flink {VERSION}: ratio sources {sources:?}, expected all {expect}"
            );
            log(t0, format!("ratio sources on Flink {VERSION}: {sources:?}"));
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{with_level}/{placed_all} subtasks with a level; the others: {why:#?}\nagent log:\n{}",
            agent.daemon.log_tail(30)
        );
        sleep(Duration::from_secs(2));
    }
    let agents = collector.cli_json(&["agents"])?;
    let unresolved = agents["agents"][0]["unresolved"]
        .as_array()
        .map_or(0, Vec::len);
    ensure!(unresolved == 0, "{agents}");
    let agent_log = agent.daemon.log_tail(200);
    ensure!(
        agent_log.contains("sampling with the in-process sampler"),
        "the daemon did not use the jvmti backend:\n{agent_log}"
    );
    log(
        t0,
        format!("bpmon-agent run --backend jvmti: all {placed_all} subtasks of the 5 jobs have a level, none ambiguous"),
    );
    let code = agent.daemon.stop(Duration::from_secs(15))?;
    ensure!(code == Some(0), "agent exit code {code:?}");
    collector.daemon.stop(Duration::from_secs(10))?;
    cluster.stop()?;
    Ok(())
}

#[test]
fn jvmti_backend_on_temurin_25() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let t0 = Instant::now();
    let lib = library()?;
    let jdk = jdk25_home()?;
    let dist = FlinkDist::install("2.3.0")?;
    let jar = TestJobs::build(&dist)?;
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: 6,
            java_home: Some(jdk),
            ..ClusterOptions::default()
        },
    )?;
    let rest = cluster.rest().clone();
    let jobs = run_jobs(
        &rest,
        &jar,
        &[
            (JobMode::Hard, "bpmon-hard-25"),
            (JobMode::Hard, "bpmon-hard-twin-25"),
            (JobMode::Idle, "bpmon-idle-25"),
        ],
    )?;
    let modes: BTreeMap<String, JobMode> =
        jobs.iter().map(|(m, _, jid)| (jid.clone(), *m)).collect();
    let tm = cluster.taskmanagers()[0].clone();
    let proc = ProcFs::default();
    let jvm = proc.jvm(tm.pid).context("TaskManager JVM")?;
    ensure!(
        jvm.java_version
            .as_deref()
            .is_some_and(|v| v.starts_with("25")),
        "{jvm:?}"
    );
    log(
        t0,
        "Flink 2.3 on Temurin 25: three jobs running and settled",
    );

    let (by_attach, by_jvmti, jvmti) = attach_then_jvmti(&jvm, &proc, &lib, 40)?;
    let (agreeing, compared) = compare(&by_attach, &by_jvmti, &modes)?;
    log(
        t0,
        format!("AGREEMENT jvmti vs attach (JDK 25): {agreeing}/{compared} task threads"),
    );
    ensure!(
        compared >= 6 && agreeing == compared,
        "{agreeing}/{compared}"
    );
    // On one TaskManager every same-named twin meets its twin: the ids tell them apart.
    let placed = placed_on(&rest, jobs.iter().map(|j| &j.2), &tm.resource_id)?;
    ensure!(
        exact_of(&by_jvmti)? == placed,
        "ids differ from Flink's placement"
    );
    // JEP 451: JDK 21+ says so when an agent is loaded into a running JVM.
    let out = std::fs::read_to_string(&tm.out_file).unwrap_or_default();
    ensure!(
        out.contains("A JVM TI agent has been loaded dynamically"),
        "no JEP 451 warning in {}",
        tm.out_file.display()
    );
    log(
        t0,
        format!(
            "JDK 25: exact ids for {} tasks; attach {} µs/dump ({:?} safepoints), jvmti {} µs \
             ({:?} µs inside, {:?} safepoints); the JVM printed the JEP 451 warning",
            placed.len(),
            by_attach.cost.dump_us_p50,
            by_attach.cost.safepoints,
            by_jvmti.cost.dump_us_p50,
            by_jvmti.cost.inside_us_p50,
            by_jvmti.cost.safepoints
        ),
    );
    jvmti.stop()?;
    let again = JvmtiClient::open(&jvm, &proc, AttachOptions::default(), options(&lib))?;
    ensure!(again.hello().is_some_and(|h| h.starts == 2));
    again.stop()?;
    ensure!(proc.jvm(tm.pid).is_some(), "the TaskManager exited");
    cluster.stop()?;
    Ok(())
}
