//! Why an attach failed: one case per thing an operator can do something about, with the
//! short label logs and metrics use and whether trying again can help.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Why an attach failed. Each case says what an operator can do about it.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("JVM pid {pid} is gone (it exited, or the pid now belongs to another process)")]
    Gone { pid: u32 },
    #[error("pid {pid} is not a Java process")]
    NotAJvm { pid: u32 },
    #[error(
        "JVM pid {pid} is not a HotSpot JVM ({vm}); bpmon speaks HotSpot's attach protocol only"
    )]
    NotHotSpot { pid: u32, vm: String },
    #[error("no permission to attach to JVM pid {pid}: it runs as uid {jvm_uid}, bpmon-agent as uid {our_uid}; run the agent as root or as that user ({detail})")]
    PermissionDenied {
        pid: u32,
        jvm_uid: u32,
        our_uid: u32,
        detail: String,
    },
    #[error("JVM pid {pid} has attach disabled (-XX:+DisableAttachMechanism)")]
    AttachDisabled { pid: u32 },
    #[error("refusing to signal JVM pid {pid}: it has no SIGQUIT handler yet (still starting, or run with -Xrs), and SIGQUIT would terminate it")]
    NoSignalHandler { pid: u32 },
    #[error("JVM pid {pid} did not start its attach listener within {waited:?} (not answering: busy at a safepoint, stopped, or not a HotSpot JVM)")]
    ListenerTimeout { pid: u32, waited: Duration },
    #[error("JVM pid {pid} did not answer `{command}` within {waited:?} (stuck in GC or unable to reach a safepoint, or stopped)")]
    Timeout {
        pid: u32,
        command: String,
        waited: Duration,
    },
    #[error("refusing attach socket {path}: {reason}")]
    UntrustedSocket { path: PathBuf, reason: String },
    #[error("JVM pid {pid}: {detail}")]
    Unsupported { pid: u32, detail: String },
    #[error("JVM pid {pid} rejected `{command}` with status {status}: {message}")]
    Command {
        pid: u32,
        command: String,
        status: i32,
        message: String,
    },
    #[error("JVM pid {pid}: attach protocol error: {detail}")]
    Protocol { pid: u32, detail: String },
    #[error("JVM pid {pid}: {context}: {source}")]
    Io {
        pid: u32,
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

impl AttachError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AttachError::Gone { .. } => "gone",
            AttachError::NotAJvm { .. } => "not_a_jvm",
            AttachError::NotHotSpot { .. } => "not_hotspot",
            AttachError::PermissionDenied { .. } => "permission",
            AttachError::AttachDisabled { .. } => "disabled",
            AttachError::NoSignalHandler { .. } => "no_signal_handler",
            AttachError::ListenerTimeout { .. } | AttachError::Timeout { .. } => "timeout",
            AttachError::UntrustedSocket { .. } => "untrusted_socket",
            AttachError::Unsupported { .. } => "unsupported",
            AttachError::Command { .. } => "command",
            AttachError::Protocol { .. } => "protocol",
            AttachError::Io { .. } => "io",
        }
    }

    /// Whether trying again later cannot help (the sampling loop stops on these).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            AttachError::Gone { .. }
                | AttachError::NotAJvm { .. }
                | AttachError::NotHotSpot { .. }
                | AttachError::PermissionDenied { .. }
                | AttachError::AttachDisabled { .. }
                | AttachError::NoSignalHandler { .. }
                | AttachError::UntrustedSocket { .. }
                | AttachError::Unsupported { .. }
        )
    }
}
