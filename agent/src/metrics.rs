//! The agent daemon's Prometheus metrics, served at `GET /metrics` when `[daemon] metrics_listen`
//! (or `--metrics-listen`) is set. The daemon updates them as it goes; a scrape only encodes.
//!
//! | name | type | what |
//! | --- | --- | --- |
//! | `bpmon_agent_samples_total` | counter | thread dumps taken and classified |
//! | `bpmon_agent_dumps_failed_total{reason}` | counter | dumps (or attaches) that failed, by [`DumpError::reason`] |
//! | `bpmon_agent_sample_duration_seconds` | histogram | time to take and classify one dump |
//! | `bpmon_agent_jvms` | gauge | TaskManager JVMs being sampled |
//! | `bpmon_agent_spool_batches`, `bpmon_agent_spool_bytes` | gauge | what waits in the spool |
//! | `bpmon_agent_batches_sent_total` | counter | batches the collector acknowledged |
//! | `bpmon_agent_batches_failed_total` | counter | sends that failed and will be retried |
//! | `bpmon_agent_batches_rejected_total` | counter | batches the collector refused as invalid (kept in `rejected/`) |
//! | `bpmon_agent_batches_dropped_total` | counter | batches dropped because the spool was full |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bpmon_telemetry::metrics::prometheus_client::metrics::counter::Counter;
use bpmon_telemetry::metrics::prometheus_client::metrics::family::Family;
use bpmon_telemetry::metrics::prometheus_client::metrics::gauge::Gauge;
use bpmon_telemetry::metrics::prometheus_client::metrics::histogram::{
    exponential_buckets, Histogram,
};
use bpmon_telemetry::metrics::prometheus_client::registry::Registry;

#[cfg(doc)]
use crate::backends::DumpError;

type Reason = [(&'static str, &'static str); 1];

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    samples: Counter,
    dumps_failed: Family<Reason, Counter>,
    sample_duration: Histogram,
    jvms: Gauge,
    spool_batches: Gauge,
    spool_bytes: Gauge,
    batches_sent: Counter,
    batches_failed: Counter,
    batches_rejected: Counter,
    batches_dropped: Counter,
    /// The spool's own drop count when last seen (`u64::MAX`: not yet).
    dropped_seen: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut r = bpmon_telemetry::metrics::registry();
        let samples = Counter::default();
        let dumps_failed = Family::<Reason, Counter>::default();
        // 0.5 ms … 16 s.
        let sample_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let jvms = Gauge::default();
        let spool_batches = Gauge::default();
        let spool_bytes = Gauge::default();
        let batches_sent = Counter::default();
        let batches_failed = Counter::default();
        let batches_rejected = Counter::default();
        let batches_dropped = Counter::default();
        r.register(
            "agent_samples",
            "Thread dumps taken and classified",
            samples.clone(),
        );
        r.register(
            "agent_dumps_failed",
            "Thread dumps, or attaches to a JVM, that failed, by reason",
            dumps_failed.clone(),
        );
        r.register(
            "agent_sample_duration_seconds",
            "Time to take and classify one thread dump",
            sample_duration.clone(),
        );
        r.register("agent_jvms", "TaskManager JVMs being sampled", jvms.clone());
        r.register(
            "agent_spool_batches",
            "Report batches waiting in the spool for the collector",
            spool_batches.clone(),
        );
        r.register(
            "agent_spool_bytes",
            "Bytes of report batches waiting in the spool",
            spool_bytes.clone(),
        );
        r.register(
            "agent_batches_sent",
            "Report batches the collector acknowledged",
            batches_sent.clone(),
        );
        r.register(
            "agent_batches_failed",
            "Attempts to send a report batch that failed and will be retried",
            batches_failed.clone(),
        );
        r.register(
            "agent_batches_rejected",
            "Report batches the collector refused as invalid (kept in the spool's rejected/)",
            batches_rejected.clone(),
        );
        r.register(
            "agent_batches_dropped",
            "Report batches dropped because the spool was full",
            batches_dropped.clone(),
        );
        AgentMetrics {
            registry: Arc::new(r),
            samples,
            dumps_failed,
            sample_duration,
            jvms,
            spool_batches,
            spool_bytes,
            batches_sent,
            batches_failed,
            batches_rejected,
            batches_dropped,
            dropped_seen: AtomicU64::new(u64::MAX),
        }
    }

    /// What `GET /metrics` encodes.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// The metrics as the Prometheus text format.
    pub fn encode(&self) -> String {
        bpmon_telemetry::metrics::encode(&self.registry, false)
    }

    /// A dump was taken and classified in `took`.
    pub fn dump_taken(&self, took: Duration) {
        self.samples.inc();
        self.sample_duration.observe(took.as_secs_f64());
    }

    /// A dump, or the attach before it, failed.
    pub fn dump_failed(&self, reason: &'static str) {
        self.dumps_failed.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn set_jvms(&self, n: usize) {
        self.jvms.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The spool as it stands: its entries (`(seq, bytes)`) and its own count of drops since it
    /// was created; drops before the first call are not counted (they were an earlier run's).
    pub fn observe_spool(&self, entries: &[(u64, u64)], dropped: u64) {
        self.spool_batches
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        let bytes: u64 = entries.iter().map(|e| e.1).sum();
        self.spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let prev = self.dropped_seen.swap(dropped, Ordering::Relaxed);
        if prev != u64::MAX && dropped > prev {
            self.batches_dropped.inc_by(dropped - prev);
        }
    }

    pub fn batch_sent(&self) {
        self.batches_sent.inc();
    }

    pub fn batch_failed(&self) {
        self.batches_failed.inc();
    }

    pub fn batch_rejected(&self) {
        self.batches_rejected.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};

    fn scrape(m: &AgentMetrics) -> Scrape {
        let text = m.encode();
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<Value> {
        s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| x.value.clone())
    }

    #[test]
    fn every_family_is_exposed_and_counts() {
        let m = AgentMetrics::new();
        m.dump_taken(Duration::from_millis(2));
        m.dump_taken(Duration::from_millis(3));
        m.dump_failed("timeout");
        m.dump_failed("permission");
        m.dump_failed("timeout");
        m.set_jvms(2);
        m.observe_spool(&[(1, 100), (2, 50)], 7);
        m.observe_spool(&[(2, 50), (3, 10), (4, 10)], 9);
        m.batch_sent();
        m.batch_failed();
        m.batch_failed();
        m.batch_rejected();
        let s = scrape(&m);
        let counter = |name: &str, label| match value(&s, name, label) {
            Some(Value::Counter(v)) => v,
            other => panic!("{name}: {other:?}\n{}", m.encode()),
        };
        let gauge = |name: &str| match value(&s, name, None) {
            Some(Value::Gauge(v)) => v,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(counter("bpmon_agent_samples_total", None), 2.0);
        assert_eq!(
            counter(
                "bpmon_agent_dumps_failed_total",
                Some(("reason", "timeout"))
            ),
            2.0
        );
        assert_eq!(
            counter(
                "bpmon_agent_dumps_failed_total",
                Some(("reason", "permission"))
            ),
            1.0
        );
        assert_eq!(gauge("bpmon_agent_jvms"), 2.0);
        assert_eq!(gauge("bpmon_agent_spool_batches"), 3.0);
        assert_eq!(gauge("bpmon_agent_spool_bytes"), 70.0);
        assert_eq!(counter("bpmon_agent_batches_sent_total", None), 1.0);
        assert_eq!(counter("bpmon_agent_batches_failed_total", None), 2.0);
        assert_eq!(counter("bpmon_agent_batches_rejected_total", None), 1.0);
        // 7 were dropped before this run; 2 during it.
        assert_eq!(counter("bpmon_agent_batches_dropped_total", None), 2.0);
        match value(&s, "bpmon_agent_sample_duration_seconds", None) {
            Some(Value::Histogram(buckets)) => {
                let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
                assert_eq!(inf.count, 2.0);
                let le_4ms = buckets.iter().find(|b| b.less_than == 0.004).unwrap();
                assert_eq!(le_4ms.count, 2.0);
                let le_2ms = buckets.iter().find(|b| b.less_than == 0.002).unwrap();
                assert_eq!(le_2ms.count, 1.0);
            }
            other => panic!("{other:?}"),
        }
        let text = m.encode();
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with("bpmon_agent_")),
            "{text}"
        );
    }
}
