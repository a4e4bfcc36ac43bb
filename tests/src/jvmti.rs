//! What the end-to-end tests of the in-process (JVMTI) backend share: the library built for the
//! test run, and the exact ids it reports set against Flink's own placement of subtasks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use bpmon_agent::backends::jvmti::{JvmtiOptions, LIBRARY_NAME};
use bpmon_proto::SampleReport;

use crate::flink_dist::repo_root;
use crate::rest::FlinkRest;

/// The library, built for this test run (`cargo build -p bpmon-jvmti`, a no-op when current).
pub fn library() -> Result<PathBuf> {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "bpmon-jvmti"])
        .current_dir(&root)
        .output()
        .context("running cargo build -p bpmon-jvmti")?;
    ensure!(
        out.status.success(),
        "cargo build -p bpmon-jvmti failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug").join(LIBRARY_NAME);
    ensure!(lib.is_file(), "no {}", lib.display());
    Ok(lib)
}

/// The jvmti backend's options with `library`.
pub fn options(library: &Path) -> JvmtiOptions {
    JvmtiOptions {
        library: library.to_path_buf(),
        ..JvmtiOptions::default()
    }
}

/// A placed subtask: (job id, vertex id, vertex name, subtask, attempt).
pub type Placement = (String, String, String, u32, u32);

/// The jobs' subtasks Flink placed on TaskManager `tm`.
pub fn placed_on<'a>(
    rest: &FlinkRest,
    jids: impl IntoIterator<Item = &'a String>,
    tm: &str,
) -> Result<HashSet<Placement>> {
    let mut out = HashSet::new();
    for jid in jids {
        let job = rest.job(jid)?;
        for v in &job.vertices {
            for s in rest.vertex(jid, &v.id)?.subtasks {
                if s.taskmanager_id.as_deref() == Some(tm) {
                    out.insert((
                        jid.clone(),
                        v.id.clone(),
                        v.name.clone(),
                        s.subtask,
                        s.attempt,
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Every task of a jvmti report with its exact ids, as `placed_on` lists them.
pub fn exact_of(report: &SampleReport) -> Result<HashSet<Placement>> {
    report
        .tasks
        .iter()
        .map(|t| {
            let e = t
                .exact
                .as_ref()
                .with_context(|| format!("{}: no ids", t.thread))?;
            Ok((
                e.job_id.clone(),
                e.vertex_id.clone(),
                t.identity.task.clone(),
                t.identity.subtask,
                t.identity.attempt.context("attempt")?,
            ))
        })
        .collect()
}
