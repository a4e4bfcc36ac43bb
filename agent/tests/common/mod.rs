//! What the agent's integration tests share.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The in-process sampler library, built for this test run (`cargo build -p bpmon-jvmti`, a
/// no-op when current).
pub fn jvmti_library() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "bpmon-jvmti"])
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p bpmon-jvmti failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug").join(bpmon_agent::jvmti::LIBRARY_NAME);
    assert!(lib.is_file(), "no {}", lib.display());
    lib
}
