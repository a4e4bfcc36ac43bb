//! `bench-onset`: how soon a back-pressure episode shows, bpmon against Flink's own
//! `/backpressure`, in one run on one job.
//!
//! A Flink 2.3 cluster started by its own scripts runs the `phases` job (its consumer slow for a
//! period, free for the next, on the wall clock); a collector watches it with `config set <job>
//! --continuous`, an agent samples in-process. At each phase change both sides are polled every
//! 250 ms until they show the new level (HIGH in a slow phase, OK in a free one); the time from
//! the change is the onset latency. Prints p50/p90 of each side and their ratio.
//!
//!   scripts/bench onset [--period-seconds 40] [--changes 6]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bpmon_e2e::phases::{quantile, Followed, PhasesRig};

struct Args {
    period_ms: u64,
    changes: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        period_ms: 40_000,
        changes: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--period-seconds" => a.period_ms = value()?.parse::<u64>()? * 1000,
            "--changes" => a.changes = value()?.parse()?,
            "--help" | "-h" => {
                println!("scripts/bench onset [--period-seconds 40] [--changes 6]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    let t0 = Instant::now();
    let say = |msg: String| eprintln!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
    let rig = PhasesRig::start("bench-onset", a.period_ms)?;
    let watch = rig.watch()?;
    say(format!(
        "following {} phase changes, {} s apart",
        a.changes,
        a.period_ms / 1000
    ));
    let followed = watch.follow(a.changes, |f: &Followed| {
        say(format!(
            "{} at {}: bpmon {:?} ms (its window ended at {:+?} ms), Flink {:?} ms (moved after \
             {:?} ms; showed {:?})",
            if f.slow { "slow" } else { "free" },
            f.at_ms,
            f.bpmon_ms,
            f.window_end_ms,
            f.flink_ms,
            f.flink_moved_ms,
            f.flink_levels
        ))
    })?;
    let bpmon: Vec<u64> = followed.iter().filter_map(|f| f.bpmon_ms).collect();
    // The latency in two parts: until the window that showed the change ended, and from there
    // to `status` (delivery, storing, the status cache, the 250 ms poll).
    let windows: Vec<u64> = followed
        .iter()
        .filter_map(|f| f.window_end_ms.map(|e| e.max(0) as u64))
        .collect();
    let delivery: Vec<u64> = followed
        .iter()
        .filter_map(|f| Some((f.bpmon_ms? as i64 - f.window_end_ms?).max(0) as u64))
        .collect();
    let flink: Vec<u64> = followed.iter().filter_map(|f| f.flink_ms).collect();
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0));
    println!(
        "onset latency over {} phase changes ({} s phases, polled every 250 ms):",
        followed.len(),
        a.period_ms / 1000
    );
    println!(
        "  bpmon (continuous, in-process timers): p50 {}  p90 {}  max {}  ({} of {} seen)",
        ms(quantile(&bpmon, 0.5)),
        ms(quantile(&bpmon, 0.9)),
        ms(bpmon.iter().max().copied()),
        bpmon.len(),
        followed.len()
    );
    println!(
        "    of which until its window ended:     p50 {}  p90 {}; then to `status`: p50 {}  p90 {}",
        ms(quantile(&windows, 0.5)),
        ms(quantile(&windows, 0.9)),
        ms(quantile(&delivery, 0.5)),
        ms(quantile(&delivery, 0.9)),
    );
    println!(
        "  Flink /backpressure:                   p50 {}  p90 {}  max {}  ({} of {} seen within their phase)",
        ms(quantile(&flink, 0.5)),
        ms(quantile(&flink, 0.9)),
        ms(flink.iter().max().copied()),
        flink.len(),
        followed.len()
    );
    let moved: Vec<u64> = followed.iter().filter_map(|f| f.flink_moved_ms).collect();
    println!(
        "  Flink /backpressure, first move:       p50 {}  p90 {}  max {}  ({} of {} moved within their phase)",
        ms(quantile(&moved, 0.5)),
        ms(quantile(&moved, 0.9)),
        ms(moved.iter().max().copied()),
        moved.len(),
        followed.len()
    );
    if let (Some(b), Some(f)) = (quantile(&bpmon, 0.5), quantile(&flink, 0.5)) {
        println!(
            "  p50 ratio Flink / bpmon: {:.1}x",
            f as f64 / b.max(1) as f64
        );
    }
    Ok(())
}
