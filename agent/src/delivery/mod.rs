//! Getting reports to the collector without losing one.
//!
//! - [`access`]: the credentials every request carries (bearer token, private CA) and the
//!   HTTP client built with them.
//! - [`spool`]: report batches on disk until the collector acknowledged them, bounded, oldest
//!   dropped first and counted.
//! - [`seq`]: the batch sequence number, persisted before use so that a restarted agent never
//!   reuses one (the collector drops a `(agent, seq)` it has seen).
//! - [`collector`]: the one client for every request the agent makes to the collector (report
//!   batches, the sampling plan).
//! - [`shipper`]: sends the spool oldest first with backoff, and what each answer means
//!   (accepted, duplicate, rejected, retry later, credentials refused).

pub mod access;
pub mod collector;
pub mod seq;
pub mod shipper;
pub mod spool;
