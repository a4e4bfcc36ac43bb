//! The batcher: finished reports into a [`ReportBatch`] with the next sequence number
//! ([`crate::delivery::seq`]), each written to the spool at once and the shipper woken.

use std::sync::Arc;

use bpmon_proto::{ReportBatch, SampleReport, SCHEMA_VERSION};
use tokio::sync::{mpsc as tmpsc, oneshot, Notify};

use crate::delivery::seq::SeqCounter;
use crate::delivery::shipper::{ShipError, SpoolQueue};
use crate::metrics::AgentMetrics;
use bpmon_proto::time::now_ms;

/// What every batch says about its agent, and where its spooling is counted.
pub(super) struct BatchIds {
    pub(super) agent_id: String,
    pub(super) host_names: Vec<String>,
    pub(super) metrics: Arc<AgentMetrics>,
}

/// Turns finished reports into batches and spools each at once. Ends when every sender is gone,
/// or, once flushed, when the channel holds nothing more. Returns the batches spooled.
pub(super) async fn batch_loop(
    mut rx: tmpsc::UnboundedReceiver<SampleReport>,
    mut flush: oneshot::Receiver<()>,
    mut seq: SeqCounter,
    queue: SpoolQueue,
    ids: BatchIds,
    notify: Arc<Notify>,
) -> u64 {
    let ids = Arc::new(ids);
    let mut flushing = false;
    let mut batches = 0;
    loop {
        let first = if flushing {
            rx.recv().await
        } else {
            tokio::select! {
                r = rx.recv() => r,
                _ = &mut flush => {
                    // No new reports; what is buffered is still received.
                    flushing = true;
                    rx.close();
                    continue;
                }
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut reports = vec![first];
        while let Ok(r) = rx.try_recv() {
            reports.push(r);
        }
        let queue2 = queue.clone();
        let ids2 = ids.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = spool_batch(&mut seq, &queue2, &ids2, reports);
            (seq, result)
        })
        .await;
        match joined {
            Ok((s, result)) => {
                seq = s;
                match result {
                    Ok(n) => {
                        batches += 1;
                        tracing::debug!(seq = n, "report batch spooled");
                        notify.notify_one();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot spool a report batch; its reports are lost")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spooling task failed; stopping the batcher");
                break;
            }
        }
    }
    batches
}

fn spool_batch(
    seq: &mut SeqCounter,
    queue: &SpoolQueue,
    ids: &BatchIds,
    reports: Vec<SampleReport>,
) -> Result<u64, ShipError> {
    let n = seq.claim()?;
    let batch = ReportBatch {
        schema_version: SCHEMA_VERSION,
        agent_id: ids.agent_id.clone(),
        seq: n,
        host_names: ids.host_names.clone(),
        created_at_ms: now_ms(),
        dropped_before: queue.lock().dropped(),
        reports,
    };
    queue.enqueue(&batch)?;
    queue.observe(&ids.metrics);
    Ok(n)
}
