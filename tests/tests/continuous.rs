//! Continuous watching on a real Flink 2.3 cluster started by its own scripts: a job whose
//! back-pressure comes and goes on the wall clock (`phases`: slow for 20 s, free for 20 s),
//! watched with `config set <job> --continuous` by an agent that samples in-process.
//!
//! - `status` (the API) follows each phase change within seconds, every ratio from Flink's own
//!   task timers;
//! - `/metrics` shows the source HIGH while it is, with its episode under way;
//! - `episodes` lists each slow phase as an episode of the source, its start and end within
//!   4 s of the phase's (its times are the first and last back-pressured samples'), with the
//!   consumer as the bottleneck and its cause (sleep); a free phase (20 s) is longer than the
//!   quiet time an episode waits for before it ends, so each slow phase is one episode.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpmon_e2e::one_cluster_at_a_time;
use bpmon_e2e::phases::{self, PhasesRig, CONSUMER, SOURCE};
use serde_json::Value;

/// Short phases keep the test short; `scripts/bench onset` runs 40 s ones.
const PERIOD_MS: u64 = 20_000;
/// Phase changes followed: two slow phases and the free ones after them.
const CHANGES: usize = 4;
/// What the test allows for a change to show (the benchmark measures it: about 3 s).
const MAX_ONSET_MS: u64 = 12_000;
/// How far after the phase change an episode may start or end: its times are those of the
/// first and last back-pressured samples (100 ms apart), and the source's buffers take about a
/// second to fill once the consumer slows.
const EPISODE_SLACK_MS: u64 = 4_000;

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

#[test]
fn continuous_watching_follows_back_pressure_that_comes_and_goes() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let t0 = Instant::now();
    let rig = PhasesRig::start("continuous", PERIOD_MS)?;
    let (collector, jid) = (&rig.collector, rig.job_id.as_str());
    log(t0, format!("phases job {jid} running"));
    let set = &rig.config;
    ensure!(
        set["settings"]["samples"] == 20
            && set["settings"]["delay_ms"] == 100
            && set["settings"]["interval_ms"] == 2000
            && set["settings"]["stacks_every"] == 10,
        "config set --continuous: {set}"
    );
    let shown = collector.cli(&["config", "get", jid])?;
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    ensure!(shown.contains("continuous"), "config get: {shown}");
    let watch = rig.watch()?;
    log(t0, "first level from timers; following the phases");

    let mut metrics_seen = false;
    let mut progress = |f: &phases::Followed| {
        log(
            t0,
            format!(
                "{} phase at {}: bpmon {:?} ms (window ended at {:+?} ms; timers: {}), Flink \
                 {:?} ms",
                if f.slow { "slow" } else { "free" },
                f.at_ms,
                f.bpmon_ms,
                f.window_end_ms,
                f.from_timers,
                f.flink_ms
            ),
        );
        // While the source is HIGH, /metrics says so, with its episode under way.
        if f.slow && f.bpmon_ms.is_some() && !metrics_seen {
            metrics_seen = metrics_show_high(&collector.url, jid).unwrap_or(false);
        }
    };
    let mut followed = watch.follow(CHANGES, &mut progress)?;
    // Every slow phase followed is followed to its end.
    if let Some(last) = followed.last().filter(|f| f.slow) {
        let next = last.at_ms + PERIOD_MS;
        followed.extend(watch.follow_from(next, 1, &mut progress)?);
    }
    for f in &followed {
        let ms = f.bpmon_ms.with_context(|| {
            format!(
                "bpmon never showed the {} phase at {}: {followed:?}",
                if f.slow { "slow" } else { "free" },
                f.at_ms
            )
        })?;
        ensure!(
            ms <= MAX_ONSET_MS,
            "the change at {} took {ms} ms: {followed:?}",
            f.at_ms
        );
        ensure!(f.from_timers, "a level not from timers: {followed:?}");
    }
    ensure!(
        metrics_seen,
        "/metrics never showed the source HIGH with an episode under way"
    );

    // Each slow phase followed is an episode of the source that started and ended with it.
    // An episode is announced as ended once the source has stayed OK for the quiet time (6 s):
    // the last one, a few seconds after `status` showed the source OK.
    let episodes = bpmon_e2e::wait_for(
        "every episode of the source to end",
        Duration::from_secs(30),
        || {
            let e = collector.cli_json(&["episodes", jid, "--since", "10m"])?;
            let open = e["episodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["vertex"] == SOURCE && e["ended_at_ms"].is_null());
            Ok((!open).then_some(e))
        },
    )?;
    let text = collector.cli(&["episodes", jid, "--since", "10m"])?;
    log(
        t0,
        format!("episodes:\n{}", String::from_utf8_lossy(&text.stdout)),
    );
    let list: Vec<&Value> = episodes["episodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["vertex"] == SOURCE)
        .collect();
    for slow in followed.iter().filter(|f| f.slow) {
        let (start, end) = (slow.at_ms, slow.at_ms + PERIOD_MS);
        let e = list
            .iter()
            .find(|e| {
                e["started_at_ms"]
                    .as_u64()
                    .is_some_and(|s| s + 500 >= start && s <= start + EPISODE_SLACK_MS)
            })
            .with_context(|| {
                format!("no episode of the source starting near {start}: {episodes}")
            })?;
        let ended = e["ended_at_ms"]
            .as_u64()
            .with_context(|| format!("the episode from {start} did not end: {e}"))?;
        ensure!(
            ended + 500 >= end && ended <= end + EPISODE_SLACK_MS,
            "the episode from {start} ended at {ended}, the phase at {end}: {e}"
        );
        log(
            t0,
            format!(
                "slow phase {start}..{end}: episode {}..{ended} ({:+} ms, {:+} ms)",
                e["started_at_ms"],
                e["started_at_ms"].as_u64().unwrap_or(0) as i64 - start as i64,
                ended as i64 - end as i64
            ),
        );
        ensure!(
            e["peak_level"] == "high",
            "the episode from {start} peaked at {}",
            e["peak_level"]
        );
        ensure!(
            e["bottleneck"]["vertex"] == CONSUMER && e["bottleneck"]["cause"] == "sleep",
            "the episode from {start}: bottleneck {}",
            e["bottleneck"]
        );
    }
    // The collector said so in its log too.
    let logged = collector.daemon.log_tail(400);
    for what in [
        "back-pressure episode started",
        "back-pressure episode ended",
    ] {
        ensure!(logged.contains(what), "no {what:?} in the collector's log");
    }

    let onsets: Vec<u64> = followed.iter().filter_map(|f| f.bpmon_ms).collect();
    let flink: Vec<u64> = followed.iter().filter_map(|f| f.flink_ms).collect();
    log(
        t0,
        format!(
            "ONSET over {} changes: bpmon p50 {:?} ms, max {:?} ms; Flink's /backpressure p50 {:?} \
             ms ({} of {} changes seen within their phase)",
            onsets.len(),
            phases::quantile(&onsets, 0.5),
            onsets.iter().max(),
            phases::quantile(&flink, 0.5),
            flink.len(),
            followed.len()
        ),
    );
    Ok(())
}

/// Whether `/metrics` shows the source at level 2 (HIGH) with an episode under way.
fn metrics_show_high(collector_url: &str, jid: &str) -> Result<bool> {
    let text = reqwest::blocking::get(format!("{collector_url}/metrics"))?.text()?;
    let level = text.lines().any(|l| {
        l.starts_with("bpmon_vertex_backpressure_level{")
            && l.contains(jid)
            && l.trim_end().ends_with(" 2")
    });
    let episode = text.lines().any(|l| {
        l.starts_with("bpmon_backpressure_episode_started_timestamp_seconds{") && l.contains(jid)
    });
    Ok(level && episode)
}
