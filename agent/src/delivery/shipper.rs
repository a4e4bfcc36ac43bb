//! Shipping report batches to the collector through the spool: every batch is written to disk
//! first, sent oldest first, and removed only once the collector acknowledged it. A collector that
//! is down or failing gets retries with exponential backoff; a batch it refuses as invalid (a 4xx)
//! is moved aside to `rejected/` and logged, never silently lost. A 401 or 403 refuses the agent's
//! credentials, not the batch: the batch stays in the spool, the cause is logged as an error and
//! the shipper backs off until the token is fixed.
//!
//! [`Shipper::ship_one`] makes one attempt and says what it did ([`ShipOutcome`]);
//! [`ship_loop`], the daemon's shipping task, decides once what each outcome means for the
//! metrics, the log and the next attempt, while running and in the shutdown grace period.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bpmon_proto::ReportBatch;
use thiserror::Error;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::access::{is_auth_refusal, AccessError, CollectorAccess};
use super::collector::{BatchAnswer, CollectorClient};
use super::spool::{Spool, SpoolError};
use crate::backoff::Backoff;
use crate::metrics::AgentMetrics;

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

    /// Batches waiting in the spool (0 when it cannot be read).
    pub fn pending(&self) -> usize {
        self.lock().entries().map(|e| e.len()).unwrap_or(0)
    }

    /// Gives the metrics the spool's size and drops.
    pub fn observe(&self, metrics: &AgentMetrics) {
        let spool = self.lock();
        if let Ok(entries) = spool.entries() {
            metrics.observe_spool(&entries, spool.dropped());
        }
    }
}

pub struct Shipper {
    client: CollectorClient,
    /// Whether the last attempt was refused for its credentials (logged once until it is not).
    refused: bool,
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
        let client = CollectorClient::new(collector_url, timeout, access)?;
        Ok(Shipper::with_client(client, spool, spool_dir, backoff))
    }

    /// A shipper sending through `client` (shared with the agent's other requests).
    pub fn with_client(
        client: CollectorClient,
        spool: Spool,
        spool_dir: PathBuf,
        backoff: Backoff,
    ) -> Shipper {
        Shipper {
            client,
            refused: false,
            queue: SpoolQueue {
                spool: Arc::new(Mutex::new(spool)),
            },
            rejected_dir: spool_dir.join("rejected"),
            backoff,
        }
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
        let answer = match self.client.send_batch(body.clone()).await {
            Ok(a) => a,
            Err(e) => return Ok(self.retry(seq, e.to_string())),
        };
        if let Some(refused) = self.check_credentials(seq, &answer) {
            return Ok(refused);
        }
        if answer.status.is_success() {
            self.backoff.reset();
            self.queue.lock().remove(seq)?;
            let duplicate = serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("duplicate").and_then(|d| d.as_bool()))
                .unwrap_or(false);
            return Ok(ShipOutcome::Sent { seq, duplicate });
        }
        let status = answer.status;
        let reason = format!("HTTP {status}: {}", answer.body.trim());
        // 408 and 429 are "later", like 5xx; any other 4xx says the batch itself is wrong.
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            return self.reject(seq, &body, reason);
        }
        Ok(self.retry(seq, reason))
    }

    /// A try that failed for now: backs off.
    fn retry(&mut self, seq: u64, reason: String) -> ShipOutcome {
        let after = self.backoff.fail();
        // The ship loop says once that the collector is down, and when it is back.
        tracing::debug!(seq, ?after, %reason, "collector did not take the batch; will retry");
        ShipOutcome::Retry { seq, after, reason }
    }

    /// `Some` when the collector refused the agent's credentials (said once until it accepts
    /// them again); the batch stays in the spool.
    fn check_credentials(&mut self, seq: u64, answer: &BatchAnswer) -> Option<ShipOutcome> {
        if is_auth_refusal(answer.status) {
            let after = self.backoff.fail();
            let reason = self.client.batch_refusal(answer).to_string();
            if !self.refused {
                self.refused = true;
                let pending = self.queue.pending();
                tracing::error!(seq, pending, %reason,
                    "the collector refuses the agent's credentials; report batches stay in the spool until it accepts them");
            }
            return Some(ShipOutcome::Unauthorized { seq, after, reason });
        }
        if self.refused {
            self.refused = false;
            tracing::info!(seq, "the collector accepts the agent's credentials again");
        }
        None
    }

    /// A batch the collector refused for good: moved to `rejected/`, logged, bounded.
    fn reject(&mut self, seq: u64, body: &[u8], reason: String) -> Result<ShipOutcome, ShipError> {
        std::fs::create_dir_all(&self.rejected_dir).map_err(|source| SpoolError::Io {
            path: self.rejected_dir.clone(),
            source,
        })?;
        let path = self.rejected_dir.join(format!("{seq:020}.batch"));
        std::fs::write(&path, body).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        self.queue.lock().remove(seq)?;
        tracing::error!(seq, %reason, kept = %path.display(), "collector rejected a report batch");
        bound_rejected(&self.rejected_dir, REJECTED_MAX);
        Ok(ShipOutcome::Rejected { seq, reason })
    }
}

/// Most batches kept in `rejected/`: past it the oldest go, logged (a collector that refuses
/// everything must not fill the disk).
pub const REJECTED_MAX: usize = 1_000;

/// Removes the oldest rejected batches past `max`, saying how many.
fn bound_rejected(dir: &Path, max: usize) {
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

/// Whether the daemon is running or in its shutdown grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Ship what is there, but never wait on a collector that is down.
    Draining,
}

/// What comes after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Send the next batch at once.
    Again,
    /// The spool is empty: wait for a new batch.
    Idle,
    /// The collector did not take it: wait this long.
    Wait(Duration),
}

/// The ship loop's account: what it shipped and whether the collector is down.
struct Delivery {
    metrics: Arc<AgentMetrics>,
    queue: SpoolQueue,
    shipped: u64,
    down: bool,
}

impl Delivery {
    /// What one attempt's outcome means, written once for both phases: the metrics, the log
    /// (the collector going down and coming back said once each) and what comes next.
    fn settle(&mut self, outcome: Result<ShipOutcome, ShipError>, phase: Phase) -> Next {
        let running = phase == Phase::Running;
        match outcome {
            Ok(ShipOutcome::Empty) => Next::Idle,
            Ok(ShipOutcome::Sent { seq, duplicate }) => {
                self.shipped += 1;
                self.metrics.batch_sent();
                self.queue.observe(&self.metrics);
                if running {
                    if self.down {
                        self.down = false;
                        let pending = self.queue.pending();
                        tracing::info!(
                            seq,
                            pending,
                            "collector is back; sending the spooled report batches"
                        );
                    }
                    tracing::debug!(seq, duplicate, "report batch delivered");
                }
                Next::Again
            }
            Ok(ShipOutcome::Rejected { .. }) => {
                self.metrics.batch_rejected();
                self.queue.observe(&self.metrics);
                Next::Again
            }
            Ok(ShipOutcome::Retry { seq, after, reason }) => {
                self.metrics.batch_failed();
                if !running {
                    tracing::warn!(%reason, "collector unreachable at shutdown");
                } else if !self.down {
                    self.down = true;
                    let pending = self.queue.pending();
                    tracing::warn!(seq, pending, %reason,
                        "collector unreachable; report batches wait in the spool and are retried with backoff");
                }
                Next::Wait(after)
            }
            // The shipper logged the cause; the batches wait in the spool.
            Ok(ShipOutcome::Unauthorized { after, .. }) => {
                self.metrics.batch_failed();
                Next::Wait(after)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot ship from the spool");
                Next::Wait(Duration::from_secs(1))
            }
        }
    }
}

/// Sends the spool, oldest first, until told to drain (`drain` carries the deadline; a new
/// batch rings `notify`); then ships until the spool is empty, the collector fails, or the
/// deadline. Returns the batches the collector acknowledged.
pub async fn ship_loop(
    mut shipper: Shipper,
    notify: Arc<Notify>,
    mut drain: oneshot::Receiver<Instant>,
    metrics: Arc<AgentMetrics>,
) -> u64 {
    let mut delivery = Delivery {
        metrics,
        queue: shipper.queue(),
        shipped: 0,
        down: false,
    };
    let deadline = ship_until_drained(&mut shipper, &mut delivery, &notify, &mut drain).await;
    ship_until_deadline(&mut shipper, &mut delivery, deadline).await;
    delivery.shipped
}

/// Ships while the daemon runs; returns the deadline once told to drain.
async fn ship_until_drained(
    shipper: &mut Shipper,
    delivery: &mut Delivery,
    notify: &Notify,
    drain: &mut oneshot::Receiver<Instant>,
) -> Instant {
    let drained = |d: Result<Instant, _>| d.unwrap_or_else(|_| Instant::now());
    loop {
        let outcome = tokio::select! {
            biased;
            d = &mut *drain => return drained(d),
            o = shipper.ship_one() => o,
        };
        match delivery.settle(outcome, Phase::Running) {
            Next::Again => {}
            Next::Idle => tokio::select! {
                biased;
                d = &mut *drain => return drained(d),
                _ = notify.notified() => {}
            },
            Next::Wait(after) => tokio::select! {
                biased;
                d = &mut *drain => return drained(d),
                _ = tokio::time::sleep(after) => {}
            },
        }
    }
}

/// The shutdown grace period: ships what is there, but never waits on a collector that is down.
async fn ship_until_deadline(shipper: &mut Shipper, delivery: &mut Delivery, deadline: Instant) {
    loop {
        let Ok(outcome) = tokio::time::timeout_at(deadline, shipper.ship_one()).await else {
            tracing::warn!("shutdown grace period over while shipping");
            return;
        };
        if delivery.settle(outcome, Phase::Draining) != Next::Again {
            return;
        }
    }
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
}
