//! What the agent's integration tests share. Each test binary uses part of it.
#![allow(dead_code)]

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
    let lib = target
        .join("debug")
        .join(bpmon_agent::backends::jvmti::LIBRARY_NAME);
    assert!(lib.is_file(), "no {}", lib.display());
    lib
}

/// The JDKs the tests run JVMs on: the machine's JDK 17 and a JDK 25 (attach protocol v2).
/// `BPMON_JDK17` / `BPMON_JDK25` point elsewhere; a missing JDK fails the test, loudly.
pub fn jdk17() -> String {
    jdk("BPMON_JDK17", "/usr/lib/jvm/java-17-openjdk-amd64")
}

pub fn jdk25() -> String {
    jdk("BPMON_JDK25", "/usr/lib/jvm/temurin-25-jdk-amd64")
}

fn jdk(var: &str, default: &str) -> String {
    let home = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        Path::new(&home).join("bin/java").is_file(),
        "no JDK at {home}: install it or set {var} to a JDK home"
    );
    home
}

/// Compiles `tests/java/<name>.java` with JDK 17 into `CARGO_TARGET_TMPDIR/<dir>` and returns
/// that directory (a class path). Call it once per test binary (behind a `OnceLock`): two
/// compilations into one directory at once would race.
pub fn compile_java(name: &str, dir: &str) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&out).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/java/{name}.java"));
    let status = Command::new(format!("{}/bin/javac", jdk17()))
        .args(["--release", "17", "-d"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("javac runs");
    assert!(status.success(), "javac {} failed", src.display());
    out
}
