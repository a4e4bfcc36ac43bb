//! What travels between agents and the collector: a batch of sample reports (`POST
//! /api/v1/reports`) and the per-job sampling settings agents pull back.

use serde::{Deserialize, Serialize};

use crate::report::SampleReport;

/// The batch format's version. The collector refuses versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// One window's reports from one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportBatch {
    pub schema_version: u32,
    /// Stable id of the agent (e.g. its host name, or configured).
    pub agent_id: String,
    /// Per-agent sequence number, increasing by one per batch: the collector drops a batch it has
    /// already stored (a retry after a lost answer) and notices gaps.
    pub seq: u64,
    /// Names and addresses of the agent's host, to find its TaskManagers in Flink's REST API.
    pub host_names: Vec<String>,
    /// When the batch was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Batches the agent had to drop since it started (its spool was full).
    #[serde(default)]
    pub dropped_before: u64,
    pub reports: Vec<SampleReport>,
}

/// How an agent samples one job (or every job, as the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingSettings {
    /// Samples per window (Flink's monitor: 100).
    pub samples: u32,
    /// Time between samples, ms (Flink's monitor: 50).
    pub delay_ms: u64,
    /// Time from one window's start to the next, ms.
    pub interval_ms: u64,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        SamplingSettings {
            samples: 100,
            delay_ms: 50,
            interval_ms: 60_000,
        }
    }
}

impl SamplingSettings {
    /// Why these settings cannot be used, if they cannot: a window must fit in its interval.
    pub fn validate(&self) -> Result<(), String> {
        if self.samples == 0 {
            return Err("samples must be at least 1".into());
        }
        let window = u64::from(self.samples - 1) * self.delay_ms;
        if window >= self.interval_ms {
            return Err(format!(
                "{} samples {} ms apart take {window} ms, longer than the {} ms interval",
                self.samples, self.delay_ms, self.interval_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flinks_defaults_fit_a_minute() {
        assert_eq!(SamplingSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_window_longer_than_its_interval_is_refused() {
        let s = SamplingSettings {
            samples: 100,
            delay_ms: 50,
            interval_ms: 4_000,
        };
        let e = s.validate().unwrap_err();
        assert!(e.contains("4950 ms"), "{e}");
        assert!(SamplingSettings { samples: 0, ..s }.validate().is_err());
    }

    #[test]
    fn batch_round_trips() {
        let b = ReportBatch {
            schema_version: SCHEMA_VERSION,
            agent_id: "tm-host-1".into(),
            seq: 7,
            host_names: vec!["tm-host-1".into(), "10.0.0.1".into()],
            created_at_ms: 1,
            dropped_before: 0,
            reports: vec![],
        };
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<ReportBatch>(&json).unwrap(), b);
    }
}
