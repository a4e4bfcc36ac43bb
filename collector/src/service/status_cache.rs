//! Each job's last computed status, with its JSON, reused for [`STATUS_TTL`], so that many
//! clients asking about a big job cost one computation a second, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::api::StatusView;

use super::locks::lock;

/// How long a computed status is served again. Windows arrive seconds apart, so a status at
/// most this old shows nothing a fresh one would not.
pub const STATUS_TTL: Duration = Duration::from_secs(1);

/// A job's status and its JSON, as computed at `at`.
#[derive(Clone)]
pub struct CachedStatus {
    at: Instant,
    pub view: Arc<StatusView>,
    pub json: Bytes,
}

/// Job id → its last status.
#[derive(Default)]
pub struct StatusCache {
    entries: Mutex<HashMap<String, CachedStatus>>,
}

impl StatusCache {
    /// The status of `job_id` computed less than [`STATUS_TTL`] ago.
    pub fn fresh(&self, job_id: &str) -> Option<CachedStatus> {
        lock(&self.entries)
            .get(job_id)
            .filter(|c| c.at.elapsed() < STATUS_TTL)
            .cloned()
    }

    /// Keeps a status just computed and returns it as kept.
    pub fn insert(&self, job_id: String, view: StatusView, json: Bytes) -> CachedStatus {
        let c = CachedStatus {
            at: Instant::now(),
            view: Arc::new(view),
            json,
        };
        let mut cache = lock(&self.entries);
        // Jobs come and go: forget what has not been asked for a while.
        cache.retain(|_, old| old.at.elapsed() < 60 * STATUS_TTL);
        cache.insert(job_id, c.clone());
        c
    }

    /// Forgets every status (the settings they show changed).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }
}
