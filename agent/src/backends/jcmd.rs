//! The fallback backend: the JDK's own `jcmd <pid> Thread.print` (or `jstack <pid>`) as a child
//! process. It costs a JVM start per sample (hundreds of ms), so it exists for hosts where the
//! native attach client is not allowed or not trusted; its output goes through the same parser.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use thiserror::Error;

use crate::discovery::{JvmProcess, ProcFs};

#[derive(Debug, Error)]
pub enum JcmdError {
    #[error("no jcmd or jstack for JVM pid {pid}: its Java home has none (a JRE?) and none is on PATH; use --backend attach")]
    NotFound { pid: u32 },
    #[error("running {tool}: {source}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} {pid} failed ({status}): {stderr}")]
    Failed {
        tool: PathBuf,
        pid: u32,
        status: String,
        stderr: String,
    },
    #[error("{tool} {pid} did not finish within {waited:?}")]
    Timeout {
        tool: PathBuf,
        pid: u32,
        waited: Duration,
    },
}

/// Which JDK tool to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Jcmd,
    Jstack,
}

/// Runs the JDK's thread-dump tool against one JVM.
#[derive(Debug, Clone)]
pub struct JcmdClient {
    pid: u32,
    tool: Tool,
    path: PathBuf,
    timeout: Duration,
}

impl JcmdClient {
    /// Prefers the target JVM's own `jcmd` (same JDK, same protocol), then `jstack`, then PATH.
    pub fn new(jvm: &JvmProcess, proc: &ProcFs, timeout: Duration) -> Result<Self, JcmdError> {
        let home_bin = (!jvm.containerized)
            .then(|| std::fs::read_link(proc.pid_dir(jvm.pid).join("exe")).ok())
            .flatten()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let mut candidates: Vec<(Tool, PathBuf)> = Vec::new();
        if let Some(bin) = &home_bin {
            candidates.push((Tool::Jcmd, bin.join("jcmd")));
            candidates.push((Tool::Jstack, bin.join("jstack")));
        }
        for (tool, name) in [(Tool::Jcmd, "jcmd"), (Tool::Jstack, "jstack")] {
            if let Some(p) = which(name) {
                candidates.push((tool, p));
            }
        }
        let (tool, path) = candidates
            .into_iter()
            .find(|(_, p)| p.is_file())
            .ok_or(JcmdError::NotFound { pid: jvm.pid })?;
        Ok(JcmdClient {
            pid: jvm.pid,
            tool,
            path,
            timeout,
        })
    }

    pub fn tool_path(&self) -> &Path {
        &self.path
    }

    /// One thread dump's text.
    pub fn thread_dump(&self) -> Result<Vec<u8>, JcmdError> {
        let mut cmd = Command::new(&self.path);
        cmd.arg(self.pid.to_string());
        if self.tool == Tool::Jcmd {
            cmd.arg("Thread.print");
        }
        let tool = self.path.clone();
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| JcmdError::Spawn {
                tool: tool.clone(),
                source,
            })?;
        // Read both pipes on threads so a chatty tool cannot fill one and deadlock us.
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out = std::thread::spawn(move || read_all(stdout.as_mut()));
        let err = std::thread::spawn(move || read_all(stderr.as_mut()));
        let start = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < self.timeout => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(JcmdError::Timeout {
                        tool,
                        pid: self.pid,
                        waited: self.timeout,
                    });
                }
                Err(source) => return Err(JcmdError::Spawn { tool, source }),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        // jcmd reports an unreachable JVM on stdout with exit 1; keep whichever says something.
        if !status.success() {
            let text = if stderr.is_empty() { &stdout } else { &stderr };
            return Err(JcmdError::Failed {
                tool,
                pid: self.pid,
                status: status.to_string(),
                stderr: String::from_utf8_lossy(text)
                    .trim()
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        Ok(stdout)
    }
}

fn read_all<R: std::io::Read>(r: Option<&mut R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
