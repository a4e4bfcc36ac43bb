//! Shipping report batches to the collector through the spool: every batch is written to disk
//! first, sent oldest first, and removed only once the collector acknowledged it. A collector that
//! is down or failing gets retries with exponential backoff; a batch it refuses as invalid (a 4xx)
//! is moved aside to `rejected/` and logged, never silently lost. A 401 or 403 refuses the agent's
//! credentials, not the batch: the batch stays in the spool, the cause is logged as an error and
//! the shipper backs off until the token is fixed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bpmon_proto::ReportBatch;
use thiserror::Error;

use crate::access::{self, AccessError, CollectorAccess};
use crate::spool::{Spool, SpoolError};

#[derive(Debug, Error)]
pub enum ShipError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("encoding batch {seq}: {source}")]
    Encode {
        seq: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// What one attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum ShipOutcome {
    /// Nothing to send.
    Empty,
    /// The collector stored it (or already had it).
    Sent { seq: u64, duplicate: bool },
    /// The collector refused it for good; it was moved to `rejected/`.
    Rejected { seq: u64, reason: String },
    /// Try again after `after`.
    Retry {
        seq: u64,
        after: Duration,
        reason: String,
    },
    /// The collector refused the agent's token (401/403): the batch stays in the spool; try again
    /// after `after` (the token file may be fixed meanwhile).
    Unauthorized {
        seq: u64,
        after: Duration,
        reason: String,
    },
}

/// Exponential backoff: base, 2×base, 4×base … up to max.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn fail(&mut self) -> Duration {
        let wait = self
            .base
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A handle on the shipper's spool that can enqueue batches while the shipper is sending
/// (the daemon's sampling side holds one; the shipping task owns the [`Shipper`]).
#[derive(Clone)]
pub struct SpoolQueue {
    spool: Arc<Mutex<Spool>>,
}

impl SpoolQueue {
    /// The spool, locked. A panic elsewhere while it was held leaves files, not memory, in an
    /// unknown state, and the spool reads its state from the files: the lock is taken anyway.
    pub fn lock(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a batch to the spool, gzip-compressed JSON, ready to send.
    pub fn enqueue(&self, batch: &ReportBatch) -> Result<(), ShipError> {
        let seq = batch.seq;
        let json = serde_json::to_vec(batch).map_err(|e| ShipError::Encode {
            seq,
            source: e.into(),
        })?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let body = gz
            .write_all(&json)
            .and_then(|_| gz.finish())
            .map_err(|source| ShipError::Encode { seq, source })?;
        Ok(self.lock().push(seq, &body)?)
    }
}

pub struct Shipper {
    client: reqwest::Client,
    access: CollectorAccess,
    /// Whether the last attempt was refused for its credentials (logged once until it is not).
    refused: bool,
    reports_url: String,
    queue: SpoolQueue,
    rejected_dir: PathBuf,
    backoff: Backoff,
}

impl Shipper {
    pub fn new(
        collector_url: &str,
        spool: Spool,
        spool_dir: PathBuf,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<Shipper, ShipError> {
        Shipper::with_access(
            collector_url,
            spool,
            spool_dir,
            timeout,
            backoff,
            CollectorAccess::default(),
        )
    }

    /// [`Shipper::new`] sending `access`'s token and trusting its CA.
    pub fn with_access(
        collector_url: &str,
        spool: Spool,
        spool_dir: PathBuf,
        timeout: Duration,
        backoff: Backoff,
        access: CollectorAccess,
    ) -> Result<Shipper, ShipError> {
        let client = access::client(timeout, &access)?;
        Ok(Shipper {
            client,
            access,
            refused: false,
            reports_url: format!("{}/api/v1/reports", collector_url.trim_end_matches('/')),
            queue: SpoolQueue {
                spool: Arc::new(Mutex::new(spool)),
            },
            rejected_dir: spool_dir.join("rejected"),
            backoff,
        })
    }

    /// The spool, locked.
    pub fn spool(&self) -> MutexGuard<'_, Spool> {
        self.queue.lock()
    }

    /// A handle that enqueues into this shipper's spool.
    pub fn queue(&self) -> SpoolQueue {
        self.queue.clone()
    }

    /// Writes a batch to the spool, gzip-compressed JSON, ready to send.
    pub fn enqueue(&mut self, batch: &ReportBatch) -> Result<(), ShipError> {
        self.queue.enqueue(batch)
    }

    /// Sends the oldest spooled batch once. The spool is locked only to read and to remove the
    /// batch, never while the request is under way.
    pub async fn ship_one(&mut self) -> Result<ShipOutcome, ShipError> {
        let oldest = self.queue.lock().oldest()?;
        let Some((seq, body)) = oldest else {
            return Ok(ShipOutcome::Empty);
        };
        let sent = self
            .client
            .post(&self.reports_url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body.clone())
            .send()
            .await;
        let retry = |me: &mut Shipper, reason: String| {
            let after = me.backoff.fail();
            // The daemon says once that the collector is down, and when it is back.
            tracing::debug!(seq, ?after, %reason, "collector did not take the batch; will retry");
            Ok(ShipOutcome::Retry { seq, after, reason })
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let reason = if let Some(tls) = access::tls_failure(&e) {
                    format!("POST {}: {tls}", self.reports_url)
                } else if e.is_timeout() {
                    format!("POST {}: timed out", self.reports_url)
                } else if e.is_connect() {
                    format!(
                        "POST {}: cannot connect (collector down?)",
                        self.reports_url
                    )
                } else {
                    format!("POST {}: {}", self.reports_url, access::error_chain(&e))
                };
                return retry(self, reason);
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if access::is_auth_refusal(status) {
            let after = self.backoff.fail();
            let reason = format!(
                "POST {}: HTTP {status}: {}: {}",
                self.reports_url,
                text.trim(),
                access::auth_refusal_hint(&self.access)
            );
            if !self.refused {
                self.refused = true;
                let pending = self.queue.lock().entries().map(|e| e.len()).unwrap_or(0);
                tracing::error!(seq, pending, %reason,
                    "the collector refuses the agent's credentials; report batches stay in the spool until it accepts them");
            }
            return Ok(ShipOutcome::Unauthorized { seq, after, reason });
        }
        if self.refused {
            self.refused = false;
            tracing::info!(seq, "the collector accepts the agent's credentials again");
        }
        if status.is_success() {
            self.backoff.reset();
            self.queue.lock().remove(seq)?;
            let duplicate = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("duplicate").and_then(|d| d.as_bool()))
                .unwrap_or(false);
            return Ok(ShipOutcome::Sent { seq, duplicate });
        }
        let reason = format!("HTTP {status}: {}", text.trim());
        // 408 and 429 are "later", like 5xx; any other 4xx says the batch itself is wrong.
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            std::fs::create_dir_all(&self.rejected_dir).map_err(|source| SpoolError::Io {
                path: self.rejected_dir.clone(),
                source,
            })?;
            let path = self.rejected_dir.join(format!("{seq:020}.batch"));
            std::fs::write(&path, &body).map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
            self.queue.lock().remove(seq)?;
            tracing::error!(seq, %reason, kept = %path.display(), "collector rejected a report batch");
            bound_rejected(&self.rejected_dir, REJECTED_MAX);
            return Ok(ShipOutcome::Rejected { seq, reason });
        }
        retry(self, reason)
    }
}

/// Most batches kept in `rejected/`: past it the oldest go, logged (a collector that refuses
/// everything must not fill the disk).
pub const REJECTED_MAX: usize = 1_000;

/// Removes the oldest rejected batches past `max`, saying how many.
fn bound_rejected(dir: &std::path::Path, max: usize) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = read
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .collect();
    if names.len() <= max {
        return;
    }
    // Names are zero-padded sequence numbers: sorted is oldest first.
    names.sort();
    let excess = names.len() - max;
    let removed = names[..excess]
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count();
    tracing::warn!(removed, kept = max, dir = %dir.display(),
        "too many rejected report batches kept; removed the oldest");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_batches_are_bounded_oldest_first() {
        let dir = std::env::temp_dir().join(format!("bpmon-rejected-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for seq in 1..=5u64 {
            std::fs::write(dir.join(format!("{seq:020}.batch")), b"x").unwrap();
        }
        bound_rejected(&dir, 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            (3..=5u64)
                .map(|s| format!("{s:020}.batch"))
                .collect::<Vec<_>>()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6).map(|_| b.fail().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }
}
