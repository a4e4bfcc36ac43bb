//! What a JVM's garbage collectors spent, from its hsperfdata (`sun.gc.collector.N.time`, in
//! ticks of `sun.os.hrt.frequency`, and `.invocations`): whether task threads stood still in GC
//! pauses rather than in their own code.
//!
//! Each collector counter is either stop-the-world pauses or concurrent work, by its name
//! ([`collector_kind`]). What real JVMs publish (checked with `jcmd PID PerfCounter.print`):
//!
//! | collector | JDK 17 and 25 names (`sun.gc.collector.N.name`) | kind |
//! |---|---|---|
//! | G1 | 0 `G1 young collection pauses`, 1 `G1 full collection pauses`, 2 `G1 concurrent cycle pauses` | pauses: 2 counts the remark and cleanup pauses of a concurrent cycle, not the cycle |
//! | Parallel | 0 `Parallel young collection pauses`, 1 `Parallel full collection pauses` | pauses |
//! | Serial | 0 `Serial young collection pauses`, 1 `Serial full collection pauses` | pauses |
//! | ZGC | 2 `Z concurrent cycle pauses` (17); 0 `ZGC minor collection pauses`, 2 `ZGC major collection pauses` (25) | pauses (sub-millisecond each) |
//! | Shenandoah | 0 `Shenandoah partial`, 1 `Shenandoah full` | concurrent: its one live counter adds each whole cycle's time to its pauses' |
//!
//! So G1 does not publish the time of its concurrent cycles (only their pauses), and a G1 JVM
//! has no `gc_concurrent_ms`: "unknown", not 0. Shenandoah's counter is mostly cycle time (a
//! 2 s run: 272 ms counted, 8 ms of it pauses), so it is counted as concurrent; its pauses are
//! small by design and are not told apart in hsperfdata.
//!
//! A name not in the table (JDK 8's `PSScavenge`, `Copy`, `G1 incremental collections`,
//! `CMS`, a future collector) counts as pauses: every collector counter HotSpot has published
//! but Shenandoah's times stop-the-world work, and over-stating a pause is the safer error for
//! naming a cause than hiding one. Such names are logged once, at debug level.

use std::path::Path;

use crate::discovery::hsperf::{PerfData, PerfDataError, PerfLongs};

/// What one collector counter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorKind {
    /// Stop-the-world pauses: application threads stood still.
    Pause,
    /// Work beside the application (whole concurrent cycles).
    Concurrent,
}

/// Collector names known to time concurrent work.
const CONCURRENT: &[&str] = &[
    "Shenandoah partial",
    "Shenandoah full",
    // The JDK 8 backport's names.
    "Shenandoah concurrent phases",
];

/// Collector names known to time pauses (the table above, and JDK 8's).
const PAUSES: &[&str] = &[
    "G1 young collection pauses",
    "G1 full collection pauses",
    "G1 concurrent cycle pauses",
    "Parallel young collection pauses",
    "Parallel full collection pauses",
    "Serial young collection pauses",
    "Serial full collection pauses",
    "Z concurrent cycle pauses",
    "ZGC minor collection pauses",
    "ZGC major collection pauses",
    "G1 incremental collections",
    "G1 stop-the-world full collections",
    "PSScavenge",
    "PSParallelCompact",
    "PSMarkSweep",
    "Copy",
    "MarkSweepCompact",
    "ParNew",
    "CMS",
    "Shenandoah pauses",
    "Shenandoah full GC pauses",
];

/// Whether a collector counter times pauses or concurrent work (unknown names: pauses).
pub fn collector_kind(name: &str) -> CollectorKind {
    if CONCURRENT.contains(&name) {
        CollectorKind::Concurrent
    } else {
        CollectorKind::Pause
    }
}

/// Whether a collector name is in the table.
pub fn is_known_collector(name: &str) -> bool {
    CONCURRENT.contains(&name) || PAUSES.contains(&name)
}

/// One collector: its kind and where its two counters are among the values read.
#[derive(Debug, Clone, PartialEq)]
pub struct Collector {
    pub name: String,
    pub kind: CollectorKind,
    time_at: usize,
    invocations_at: usize,
}

/// The collectors of a JVM whose `.name`, `.time` and `.invocations` are all published, with the
/// positions of `.time` and `.invocations` in `counters` (the names of the values read).
pub fn collectors(perf: &PerfData, counters: &[String]) -> Vec<Collector> {
    let position = |name: String| counters.iter().position(|c| *c == name);
    (0..16)
        .filter_map(|n| {
            let prefix = format!("sun.gc.collector.{n}");
            let name = perf.text(&format!("{prefix}.name"))?;
            Some(Collector {
                name: name.to_string(),
                kind: collector_kind(name),
                time_at: position(format!("{prefix}.time"))?,
                invocations_at: position(format!("{prefix}.invocations"))?,
            })
        })
        .collect()
}

/// A JVM's GC counters, summed by kind, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcCounters {
    pub pause_ticks: i64,
    pub pauses: i64,
    /// `None` when no collector of the JVM times concurrent work.
    pub concurrent_ticks: Option<i64>,
    pub ticks_per_second: i64,
}

/// GC over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcDelta {
    pub pause_ms: f64,
    pub count: u64,
    pub concurrent_ms: Option<f64>,
}

impl GcCounters {
    /// Sums `values` (read in the order of the counters `collectors` was built from).
    pub fn sum(collectors: &[Collector], values: &[i64], ticks_per_second: i64) -> Option<Self> {
        let mut c = GcCounters {
            pause_ticks: 0,
            pauses: 0,
            concurrent_ticks: None,
            ticks_per_second,
        };
        for col in collectors {
            let time = *values.get(col.time_at)?;
            let invocations = *values.get(col.invocations_at)?;
            match col.kind {
                CollectorKind::Pause => {
                    c.pause_ticks = c.pause_ticks.saturating_add(time);
                    c.pauses = c.pauses.saturating_add(invocations);
                }
                CollectorKind::Concurrent => {
                    let t = c.concurrent_ticks.unwrap_or(0).saturating_add(time);
                    c.concurrent_ticks = Some(t);
                }
            }
        }
        Some(c)
    }

    /// What happened between `self` and `later`; `None` when a counter went backwards (not the
    /// same JVM) or the frequency is not positive.
    pub fn delta(&self, later: &GcCounters) -> Option<GcDelta> {
        let freq = self.ticks_per_second;
        if freq <= 0 || later.ticks_per_second != freq {
            return None;
        }
        let ms = |ticks: i64| ticks as f64 * 1000.0 / freq as f64;
        let pause = later.pause_ticks.checked_sub(self.pause_ticks)?;
        let count = later.pauses.checked_sub(self.pauses)?;
        if pause < 0 || count < 0 {
            return None;
        }
        let concurrent = match (self.concurrent_ticks, later.concurrent_ticks) {
            (Some(a), Some(b)) => Some(ms(b.checked_sub(a).filter(|&d| d >= 0)?)),
            _ => None,
        };
        Some(GcDelta {
            pause_ms: ms(pause),
            count: u64::try_from(count).ok()?,
            concurrent_ms: concurrent,
        })
    }
}

/// A JVM's GC counters, re-read cheaply ([`PerfLongs`]: one `pread` per counter).
#[derive(Debug)]
pub struct GcProbe {
    longs: PerfLongs,
    collectors: Vec<Collector>,
    ticks_per_second: i64,
}

impl GcProbe {
    /// Opens a JVM's perf-data file (`JvmProcess::perf_file`).
    pub fn open(perf_file: &Path) -> Result<GcProbe, PerfDataError> {
        let (longs, perf) = PerfLongs::open(perf_file, |n| n.starts_with("sun.gc.collector."))?;
        let ticks_per_second = perf
            .long("sun.os.hrt.frequency")
            .filter(|&f| f > 0)
            .ok_or(PerfDataError::Format("no timer frequency"))?;
        let collectors = collectors(&perf, longs.names());
        if collectors.is_empty() {
            return Err(PerfDataError::Format("no GC collector counters"));
        }
        for c in collectors.iter().filter(|c| !is_known_collector(&c.name)) {
            tracing::debug!(collector = %c.name, "unknown GC collector: its time counts as pauses");
        }
        Ok(GcProbe {
            longs,
            collectors,
            ticks_per_second,
        })
    }

    pub fn collectors(&self) -> &[Collector] {
        &self.collectors
    }

    /// The counters now; `None` when the file cannot be read any more.
    pub fn read(&self) -> Option<GcCounters> {
        let values = self.longs.read()?;
        GcCounters::sum(&self.collectors, &values, self.ticks_per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::hsperf::tests::image;

    fn g1_image(young: (i64, i64), full: (i64, i64), remark: (i64, i64)) -> Vec<u8> {
        image(
            &[
                ("sun.os.hrt.frequency", 1_000_000_000),
                ("sun.gc.collector.0.invocations", young.0),
                ("sun.gc.collector.0.time", young.1),
                ("sun.gc.collector.1.invocations", full.0),
                ("sun.gc.collector.1.time", full.1),
                ("sun.gc.collector.2.invocations", remark.0),
                ("sun.gc.collector.2.time", remark.1),
                ("sun.rt.safepoints", 9),
            ],
            &[
                ("sun.gc.collector.0.name", "G1 young collection pauses"),
                ("sun.gc.collector.1.name", "G1 full collection pauses"),
                ("sun.gc.collector.2.name", "G1 concurrent cycle pauses"),
            ],
        )
    }

    fn names() -> Vec<String> {
        (0..3)
            .flat_map(|n| {
                [
                    format!("sun.gc.collector.{n}.invocations"),
                    format!("sun.gc.collector.{n}.time"),
                ]
            })
            .collect()
    }

    #[test]
    fn g1_collectors_are_all_pauses() {
        let perf = PerfData::parse(&g1_image((89, 158_595_027), (0, 0), (0, 0))).unwrap();
        let cols = collectors(&perf, &names());
        assert_eq!(cols.len(), 3);
        assert!(cols.iter().all(|c| c.kind == CollectorKind::Pause));
        let before = GcCounters::sum(&cols, &[89, 158_595_027, 0, 0, 0, 0], 1_000_000_000).unwrap();
        let after = GcCounters::sum(
            &cols,
            &[100, 170_000_000, 1, 50_000_000, 2, 4_000_000],
            1_000_000_000,
        )
        .unwrap();
        let d = before.delta(&after).unwrap();
        assert_eq!(d.count, 11 + 1 + 2);
        assert!(
            (d.pause_ms - (11.404_973 + 50.0 + 4.0)).abs() < 1e-6,
            "{d:?}"
        );
        assert_eq!(d.concurrent_ms, None, "G1 publishes no concurrent time");
    }

    #[test]
    fn shenandoah_counts_as_concurrent_and_unknown_names_as_pauses() {
        assert_eq!(collector_kind("Shenandoah full"), CollectorKind::Concurrent);
        assert_eq!(
            collector_kind("Parallel young collection pauses"),
            CollectorKind::Pause
        );
        assert_eq!(collector_kind("Some future GC"), CollectorKind::Pause);
        assert!(!is_known_collector("Some future GC"));
        let perf = PerfData::parse(&image(
            &[
                ("sun.gc.collector.0.time", 0),
                ("sun.gc.collector.0.invocations", 0),
            ],
            &[("sun.gc.collector.0.name", "Shenandoah full")],
        ))
        .unwrap();
        let names = [
            "sun.gc.collector.0.time".to_string(),
            "sun.gc.collector.0.invocations".into(),
        ];
        let cols = collectors(&perf, &names);
        let a = GcCounters::sum(&cols, &[1_000_000, 3], 1_000_000_000).unwrap();
        let b = GcCounters::sum(&cols, &[3_000_000, 5], 1_000_000_000).unwrap();
        let d = a.delta(&b).unwrap();
        assert_eq!((d.pause_ms, d.count, d.concurrent_ms), (0.0, 0, Some(2.0)));
    }

    #[test]
    fn counters_that_go_backwards_give_none() {
        let perf = PerfData::parse(&g1_image((0, 0), (0, 0), (0, 0))).unwrap();
        let cols = collectors(&perf, &names());
        let a = GcCounters::sum(&cols, &[5, 500, 0, 0, 0, 0], 1000).unwrap();
        let b = GcCounters::sum(&cols, &[1, 100, 0, 0, 0, 0], 1000).unwrap();
        assert_eq!(a.delta(&b), None);
        assert_eq!(
            GcCounters::sum(&cols, &[1, 2], 1000),
            None,
            "too few values"
        );
        let other_clock = GcCounters {
            ticks_per_second: 10,
            ..a
        };
        assert_eq!(a.delta(&other_clock), None);
    }

    #[test]
    fn a_collector_without_its_counters_is_left_out() {
        let perf = PerfData::parse(&g1_image((0, 0), (0, 0), (0, 0))).unwrap();
        let only_young = &names()[..2];
        let cols = collectors(&perf, only_young);
        assert_eq!(cols.len(), 1);
        assert_eq!(cols[0].name, "G1 young collection pauses");
    }

    #[test]
    fn probe_reads_a_perf_file() {
        let path = std::env::temp_dir().join(format!("bpmon-gcprobe-{}", std::process::id()));
        std::fs::write(&path, g1_image((3, 2_000_000), (1, 5_000_000), (0, 0))).unwrap();
        let probe = GcProbe::open(&path).unwrap();
        assert_eq!(probe.collectors().len(), 3);
        let c = probe.read().unwrap();
        assert_eq!((c.pauses, c.pause_ticks), (4, 7_000_000));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, image(&[("sun.os.hrt.frequency", 1)], &[])).unwrap();
        assert!(GcProbe::open(&path).is_err(), "no collectors");
        let _ = std::fs::remove_file(&path);
    }
}
