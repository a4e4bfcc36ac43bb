//! The agents' batches: the `(agent, seq)` of every accepted batch, so a retry is recognised,
//! and each agent's highest seq and last batch time.

use std::path::Path;

use rusqlite::{params, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

use super::columns::{get_u64, to_i64};
use super::connection::Store;
use super::error::{sql, StoreError};

/// The newest batch an agent delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeq {
    pub agent_id: String,
    pub highest_seq: u64,
    /// When its last new batch was recorded, ms since the Unix epoch.
    pub last_batch_ms: u64,
}

impl Store {
    /// Records an accepted batch; false when `(agent_id, seq)` was recorded before (a retry).
    pub fn record_batch(&mut self, agent_id: &str, seq: u64) -> Result<bool, StoreError> {
        self.record_batch_at(agent_id, seq, now_ms())
    }

    pub(super) fn record_batch_at(
        &mut self,
        agent_id: &str,
        seq: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin recording the batch", path))?;
        let new = insert_batch(&tx, agent_id, seq, now, path)?;
        tx.commit().map_err(sql("commit the batch record", path))?;
        Ok(new)
    }

    /// The highest batch seq each agent delivered, by agent id.
    pub fn agent_seqs(&self) -> Result<Vec<AgentSeq>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT agent_id, highest_seq, last_batch_ms FROM agents ORDER BY agent_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(AgentSeq {
                        agent_id: r.get(0)?,
                        highest_seq: get_u64(r, 1)?,
                        last_batch_ms: get_u64(r, 2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("read agent sequence numbers", &self.path))
    }
}

/// Inserts a batch record and raises the agent's highest seq; false when already recorded.
pub(super) fn insert_batch(
    tx: &Transaction<'_>,
    agent_id: &str,
    seq: u64,
    now: u64,
    path: &Path,
) -> Result<bool, StoreError> {
    let seq = to_i64("seq", seq)?;
    let now = to_i64("now", now)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO batches (agent_id, seq, received_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent_id, seq) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![agent_id, seq, now]))
        .map_err(sql("record the batch", path))?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO agents (agent_id, highest_seq, last_batch_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_id) DO UPDATE SET
             highest_seq = max(highest_seq, excluded.highest_seq),
             last_batch_ms = excluded.last_batch_ms",
    )
    .and_then(|mut s| s.execute(params![agent_id, seq, now]))
    .map_err(sql("record the agent's seq", path))?;
    Ok(true)
}
