//! The backend switch: which way one JVM's thread dumps are taken ([`BackendKind`], the
//! `backend` setting), the open backend itself ([`Backend`]: attach, `jcmd`, or the in-process
//! JVMTI sampler) and the errors of all three ([`DumpError`]). The sampling loop asks a
//! [`Backend`] for one dump at a time and never needs to know which it is.

use super::attach::{AttachError, AttachOptions, Attacher};
use super::dump::ClassifiedDump;
use super::jcmd::{JcmdClient, JcmdError};
use super::jvmti::{JvmtiClient, JvmtiError, JvmtiOptions};
use crate::discovery::{JvmProcess, ProcFs};
use std::time::Duration;
use thiserror::Error;

/// How thread dumps are taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Native HotSpot attach from the agent itself: no JDK tools, a few ms per dump.
    Attach,
    /// The JDK's `jcmd Thread.print` (or `jstack`) as a child process: slow, for fallback.
    Jcmd,
    /// bpmon's JVMTI library inside the TaskManager (loaded through attach): task threads only,
    /// one thread at a time, no global pause; exact job ids. The daemon falls back to `attach`
    /// when the JVM will not load it.
    Jvmti,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Attach => "attach",
            BackendKind::Jcmd => "jcmd",
            BackendKind::Jvmti => "jvmti",
        }
    }
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Jcmd(#[from] JcmdError),
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
}

impl DumpError {
    /// A short label for logs and metrics: [`AttachError::reason`], or the jcmd backend's.
    pub fn reason(&self) -> &'static str {
        match self {
            DumpError::Attach(e) => e.reason(),
            DumpError::Jcmd(JcmdError::NotFound { .. }) => "jcmd_not_found",
            DumpError::Jcmd(JcmdError::Spawn { .. }) => "jcmd_spawn",
            DumpError::Jcmd(JcmdError::Failed { .. }) => "jcmd_failed",
            DumpError::Jcmd(JcmdError::Timeout { .. }) => "timeout",
            DumpError::Jvmti(e) => e.reason(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self {
            DumpError::Attach(e) => e.is_permanent(),
            DumpError::Jcmd(JcmdError::NotFound { .. }) => true,
            DumpError::Jcmd(_) => false,
            DumpError::Jvmti(e) => e.is_permanent(),
        }
    }
}

/// A way to take one thread dump of one JVM.
#[derive(Debug)]
pub enum Backend {
    Attach(Box<Attacher>),
    Jcmd(JcmdClient),
    Jvmti(Box<JvmtiClient>),
}

/// What a sample reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleMode {
    /// Every task thread's stack (what a dump always is).
    Stacks,
    /// Flink's timers of each task alone, where the in-process sampler can read them; with
    /// `totals`, their accumulated totals too (a window's first and last sample need them).
    Timers { totals: bool },
    /// Flink's timers, and the stacks of the tasks they find busy (the only stacks that add
    /// anything to the timers: what the work is). Dump backends read every stack.
    BusyStacks { totals: bool },
}

/// What one request to a backend gave: dump text to parse, or samples already classified.
pub enum Fetched {
    Text(Vec<u8>),
    Classified(ClassifiedDump),
}

impl Backend {
    pub fn open(
        kind: BackendKind,
        jvm: &JvmProcess,
        proc: &ProcFs,
        options: AttachOptions,
        jvmti: &JvmtiOptions,
    ) -> Result<Backend, DumpError> {
        Ok(match kind {
            BackendKind::Attach => {
                Backend::Attach(Box::new(Attacher::new(jvm, proc.clone(), options)?))
            }
            BackendKind::Jcmd => Backend::Jcmd(JcmdClient::new(jvm, proc, options.io_timeout)?),
            BackendKind::Jvmti => Backend::Jvmti(Box::new(JvmtiClient::open(
                jvm,
                proc,
                options,
                jvmti.clone(),
            )?)),
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Attach(_) => BackendKind::Attach,
            Backend::Jcmd(_) => BackendKind::Jcmd,
            Backend::Jvmti(_) => BackendKind::Jvmti,
        }
    }

    /// One sample of every task thread. By timers, the in-process backend reads Flink's timers
    /// instead of stacks where it can; a dump always has stacks.
    pub fn fetch(&mut self, mode: SampleMode) -> Result<Fetched, DumpError> {
        match self {
            Backend::Attach(a) => Ok(Fetched::Text(a.thread_dump()?)),
            Backend::Jcmd(j) => Ok(Fetched::Text(j.thread_dump()?)),
            Backend::Jvmti(j) => Ok(Fetched::Classified(j.sample_with(mode)?.1)),
        }
    }

    /// Whether timers-only samples can be taken as a run ([`Backend::fetch_run`]).
    pub fn takes_runs(&self) -> bool {
        matches!(self, Backend::Jvmti(j) if j.runs())
    }

    /// Timers-only samples at `at` after now (totals where marked), taken by the in-process
    /// library on its own clock and answered at once; one result per entry. Only where
    /// [`Backend::takes_runs`].
    pub fn fetch_run(&mut self, at: &[(Duration, bool)]) -> Vec<Result<ClassifiedDump, DumpError>> {
        match self {
            Backend::Jvmti(j) => j
                .run(at)
                .into_iter()
                .map(|r| r.map(|(_, dump)| dump).map_err(DumpError::from))
                .collect(),
            Backend::Attach(_) | Backend::Jcmd(_) => at
                .iter()
                .map(|_| {
                    Err(DumpError::Jvmti(JvmtiError::Protocol {
                        pid: 0,
                        detail: "runs of samples need the in-process sampler".into(),
                    }))
                })
                .collect(),
        }
    }

    /// Whether a sample can be taken without stacks (by Flink's timers), far more cheaply.
    pub fn samples_without_stacks(&self) -> bool {
        matches!(self, Backend::Jvmti(_))
    }
}
