//! The collector's history: an embedded SQLite database (`bpmon.sqlite3` in the data directory)
//! that outlives restarts, so `jobs`, `status <name>` and back-pressure history still answer after
//! the collector comes back.
//!
//! It keeps:
//! - every merged window of every subtask ([`MergedWindow`](crate::merge::MergedWindow)), in
//!   `windows`;
//! - the jobs and vertices seen ([`JobRow`], [`VertexRow`]), in `jobs`;
//! - the `(agent, seq)` of every accepted report batch, so a retried batch is recognised, and the
//!   highest seq per agent, so gaps show ([`AgentSeq`]), in `agents`;
//! - the sampling settings: a default (scope [`DEFAULT_SCOPE`]) and per-job overrides, in
//!   `settings`;
//! - each vertex's back-pressure episodes ([`Episode`](crate::api::Episode)), in `episodes`;
//! - the busy samples' folded stacks of each window (for flame graphs), each distinct stack once
//!   in `stacks`, named by `window_stacks`.
//!
//! Opening a connection is in `connection`, the schema and its migrations in `schema`, deleting
//! what is past the retention in `retention`, merging old short windows into one per minute in
//! `rollup`; `error` and `columns` are shared by all of them.
//!
//! The API is synchronous; the server calls it from `spawn_blocking` or a thread of its own. One
//! process writes at a time (the collector owning the data directory); readers in other processes
//! are fine, as the database runs in WAL mode. [`Store::prune`] deletes in short transactions, so a
//! pruning connection delays another connection's writes by one chunk at most.
//!
//! The schema is versioned with `PRAGMA user_version`: opening applies the migrations this build
//! knows and refuses a database written by a newer one.

mod agents;
mod columns;
mod connection;
mod episodes;
mod error;
mod jobs;
mod retention;
mod rollup;
mod schema;
mod settings;
mod stacks;
mod timeline;
mod windows;

pub use agents::AgentSeq;
pub use connection::{Store, DB_FILE};
pub use error::StoreError;
pub use jobs::{JobRow, VertexRow};
pub use rollup::{Rollup, ROLLUP_SPAN_MS};
pub use schema::DB_SCHEMA_VERSION;
pub use settings::SettingsRow;
pub use stacks::{FlameStacks, MAX_FLAME_STACKS};
pub use timeline::TimelineBucket;

#[cfg(test)]
mod tests;
