//! The store's writing side: one connection for every write, a writer thread that commits
//! agents' batches in groups (`group_commit`), and a checkpoint thread that keeps the
//! write-ahead log short (`checkpoints`). The store is synchronous (SQLite), so it is used on
//! threads of its own or from `spawn_blocking`.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::merge::MergedWindow;
use crate::store::{Store, StoreError};

use super::locks::lock;

/// How often the write-ahead log is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// A commit checkpoints the log itself only past this many pages (~400 MiB): when the
/// checkpoint thread cannot keep up.
const CHECKPOINT_SAFETY_PAGES: u32 = 100_000;

/// At most this many batches, or about this many rows, share a transaction.
const GROUP_MAX_BATCHES: usize = 512;
const GROUP_MAX_ROWS: usize = 5_000;

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The writer thread is gone (the service is stopping, or it died).
    #[error("the store writer has stopped")]
    Stopped,
    /// The store refused or failed the transaction.
    #[error(transparent)]
    Store(StoreError),
}

/// The writing connection and its threads.
pub struct StoreWriter {
    store: Arc<Mutex<Store>>,
    /// Batches on their way to the writer thread (`group_commit`).
    writes: Sender<WriteJob>,
    /// The store writer thread, joined by [`StoreWriter::finish`].
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Dropped with the writer, which ends the checkpoint thread.
    _stop_checkpoints: Sender<()>,
}

/// A batch for the writer thread, and where its outcome goes.
struct WriteJob {
    agent: String,
    seq: u64,
    windows: Vec<MergedWindow>,
    done: tokio::sync::oneshot::Sender<Result<bool, WriteError>>,
}

impl StoreWriter {
    /// Takes over `store` for writing and starts the writer and checkpoint threads.
    pub fn start(store: Store) -> Result<StoreWriter, StoreError> {
        // Checkpoints on a connection of their own, off the agents' path (see `checkpoints`).
        store.set_autocheckpoint(CHECKPOINT_SAFETY_PAGES)?;
        let checkpointer = Store::open(store.path().parent().unwrap_or(Path::new(".")))?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoints(&checkpointer, &stopped))
            .map_err(StoreError::Thread)?;
        let store = Arc::new(Mutex::new(store));
        let (writes, queue) = std::sync::mpsc::channel::<WriteJob>();
        let thread = {
            let store = Arc::clone(&store);
            // Ends when the writer (the sender) is dropped.
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || group_commit(&store, &queue))
                .map_err(StoreError::Thread)?
        };
        Ok(StoreWriter {
            store,
            writes,
            thread: Mutex::new(Some(thread)),
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// The writing connection, for writes other than batches (jobs, settings, pruning).
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Whether the writer thread still runs.
    pub fn is_running(&self) -> bool {
        lock(&self.thread)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stores an agent's batch with its windows; true when new, false for a retry. Returns once
    /// the batch's transaction has committed.
    pub async fn store_batch(
        &self,
        agent: String,
        seq: u64,
        windows: Vec<MergedWindow>,
    ) -> Result<bool, WriteError> {
        let (done, stored) = tokio::sync::oneshot::channel();
        self.writes
            .send(WriteJob {
                agent,
                seq,
                windows,
                done,
            })
            .map_err(|_| WriteError::Stopped)?;
        stored.await.map_err(|_| WriteError::Stopped)?
    }

    /// Lets the writer thread commit what it was given and end, and hands back the connection
    /// to close (`None` if it is still shared, which cannot happen once the thread is joined:
    /// it is closed when dropped).
    pub fn finish(self) -> Option<Store> {
        let StoreWriter {
            store,
            writes,
            thread,
            ..
        } = self;
        drop(writes);
        let thread = thread.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = thread {
            let _ = t.join();
        }
        Arc::try_unwrap(store)
            .ok()
            .map(|w| w.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The checkpoint thread: copies the write-ahead log into the database twice a second. With
/// SQLite's default, a commit that finds the log past 1,000 pages checkpoints it itself, and the
/// batches behind it wait; here the writer only appends to the log.
fn checkpoints(store: &Store, stop: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = store.checkpoint() {
            tracing::warn!(error = %e, "checkpoint failed; the next one retries");
        }
    }
}

/// The writer thread: takes every batch waiting (at least one) and stores them in one
/// transaction, so N concurrent batches cost one commit and one fsync instead of N, and no
/// thread waits on the writer's lock per batch. Each batch is answered only once its
/// transaction has committed. If the group fails, each batch is tried alone, so one bad batch
/// does not fail the others.
fn group_commit(writer: &Mutex<Store>, queue: &Receiver<WriteJob>) {
    while let Ok(first) = queue.recv() {
        let mut rows = first.windows.len();
        let mut group = vec![first];
        while group.len() < GROUP_MAX_BATCHES && rows < GROUP_MAX_ROWS {
            match queue.try_recv() {
                Ok(job) => {
                    rows += job.windows.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let input: Vec<(&str, u64, &[MergedWindow])> = group
            .iter()
            .map(|j| (j.agent.as_str(), j.seq, j.windows.as_slice()))
            .collect();
        let mut store = lock(writer);
        let outcomes: Vec<Result<bool, WriteError>> = match store.ingest_batches(&input) {
            Ok(news) => news.into_iter().map(Ok).collect(),
            Err(e) if input.len() == 1 => vec![Err(WriteError::Store(e))],
            Err(_) => input
                .iter()
                .map(|(agent, seq, rows)| {
                    store
                        .ingest_batch(agent, *seq, rows)
                        .map_err(WriteError::Store)
                })
                .collect(),
        };
        drop(store);
        drop(input);
        for (job, outcome) in group.into_iter().zip(outcomes) {
            // The request may have gone (client hung up): its batch is stored all the same.
            let _ = job.done.send(outcome);
        }
    }
}
