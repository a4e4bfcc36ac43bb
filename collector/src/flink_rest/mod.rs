//! The collector's client for the Flink REST API: one [`FlinkRestClient::snapshot`] call reads a
//! cluster's version, its active jobs, their vertices in topological order with the edges
//! between them, where every subtask runs, and each subtask's network and time metrics, into a
//! [`ClusterSnapshot`](crate::model::ClusterSnapshot).
//!
//! Works against Flink 1.13 – 2.x. What differs between versions and how it is handled:
//!
//! * Metric names: the same figure has several ids (`Shuffle.Netty.Output.Buffers.outPoolUsage`,
//!   the legacy `buffers.outPoolUsage` of 1.9 – 1.20, …). Every alias is requested at once and
//!   the first one present in a fixed preference order wins ([`metrics_from_pairs`]).
//! * Placement: subtasks carry `host` (≤ 1.20) and/or `endpoint` (1.19+; a `"host:port"` string
//!   on 1.20.3 and 2.3.0, an object is accepted too). `start-time` is -1 before the task starts.
//! * The plan is embedded in `GET /jobs/:jid` on every version seen; `GET /jobs/:jid/plan` is
//!   only asked when it is not.
//!
//! Requests per snapshot: `/config`, `/jobs/overview`, then per job `/jobs/:jid`, and per vertex
//! `/jobs/:jid/vertices/:vid` plus the vertex-level metrics endpoint
//! `/jobs/:jid/vertices/:vid/metrics?get=0.<id>,…,1.<id>,…` (ids prefixed with the subtask
//! index), which answers for all subtasks and all metrics at once. Flink's REST server rejects
//! request lines over 4096 bytes (answering `404 /bad-request`), so a vertex with many subtasks
//! gets its list split over a few requests ([`MAX_REQUEST_TARGET_LEN`]). At most
//! [`DEFAULT_MAX_IN_FLIGHT`] requests run at once, each bounded by the client's timeout.
//!
//! Failures never abort the snapshot: each failed request adds one message naming the URL and
//! the kind of failure ([`FetchError`]) to [`ClusterSnapshot::errors`](crate::model::ClusterSnapshot::errors), and everything else is
//! still returned. Only an unreachable cluster (connection refused, timeout on `/config`)
//! ends the poll early, with an empty snapshot and that one error.

mod client;
mod decode;
mod errors;
mod limits;
mod metrics;
mod topology;
mod wire;

pub use client::{redact_credentials, FlinkRestClient};
pub use errors::{ClientError, FetchError};
pub use limits::{
    DEFAULT_MAX_IN_FLIGHT, MAX_PARALLELISM, MAX_REQUEST_TARGET_LEN, MAX_RESPONSE_BYTES,
};
pub use metrics::{group_by_subtask, metric_queries, metrics_from_pairs, requested_metric_ids};
pub use topology::{taskmanager_ref, topological};

#[cfg(test)]
mod tests;
