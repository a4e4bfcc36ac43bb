//! Stack text in, sample classes out. `threaddump` parses HotSpot thread dumps (the text of the
//! attach `threaddump` command, `jcmd Thread.print` and `jstack`); `classify` decides whether one
//! stack of a Flink task thread is blocked on an output buffer, parked in the mailbox, or busy;
//! `activity` says what a busy one was doing (running, a lock, I/O, sleeping); `collapse` folds
//! a busy stack for flame graphs.
//! Nothing here does I/O, so the attach backend, the jcmd backend and the in-process sampler share
//! one implementation.

pub mod activity;
pub mod classify;
pub mod collapse;
pub mod threaddump;
