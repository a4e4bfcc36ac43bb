//! Locating a Flink distribution: `FlinkDist::install` runs `scripts/setup-flink <version>`,
//! which installs the PyPI wheels into a cached venv and prints FLINK_HOME (the `pyflink`
//! package dir, with `bin/`, `conf/` and `lib/`).
//!
//! Also home to the path helpers every other module needs: the repository root and the
//! harness's work directory (cluster dirs, compiled job jars).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Used when `BPMON_FLINK_VERSION` is not set.
pub const DEFAULT_FLINK_VERSION: &str = "2.3.0";

/// An installed Flink distribution.
#[derive(Debug, Clone)]
pub struct FlinkDist {
    home: PathBuf,
    version: String,
}

impl FlinkDist {
    /// Installs (or finds the cached) Flink `version` via `scripts/setup-flink`.
    pub fn install(version: &str) -> Result<Self> {
        let script = repo_root().join("scripts/setup-flink");
        let out = Command::new(&script)
            .arg(version)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "{} {version} failed ({}): {}",
            script.display(),
            out.status,
            stderr.trim()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(home) = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
            bail!(
                "{} {version} printed no FLINK_HOME (stderr: {})",
                script.display(),
                stderr.trim()
            );
        };
        Self::from_home(home, version)
    }

    /// Installs the version named by `BPMON_FLINK_VERSION`, or [`DEFAULT_FLINK_VERSION`].
    pub fn from_env() -> Result<Self> {
        Self::install(&Self::default_version())
    }

    /// `BPMON_FLINK_VERSION` if set and non-empty, else [`DEFAULT_FLINK_VERSION`].
    pub fn default_version() -> String {
        std::env::var("BPMON_FLINK_VERSION")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| DEFAULT_FLINK_VERSION.to_string())
    }

    /// Wraps an existing FLINK_HOME (checked for `bin/jobmanager.sh` and `lib/flink-dist*.jar`).
    pub fn from_home(home: impl Into<PathBuf>, version: &str) -> Result<Self> {
        let home = home.into();
        ensure!(
            home.join("bin/jobmanager.sh").is_file() && home.join("bin/taskmanager.sh").is_file(),
            "{} is not a Flink home (no bin/jobmanager.sh / bin/taskmanager.sh)",
            home.display()
        );
        let dist_jar = std::fs::read_dir(home.join("lib"))
            .with_context(|| format!("listing {}/lib", home.display()))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("flink-dist"));
        ensure!(dist_jar, "{}/lib has no flink-dist*.jar", home.display());
        Ok(Self {
            home,
            version: version.to_string(),
        })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Major version number (1 for 1.20.3, 2 for 2.3.0).
    pub fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.home.join("bin")
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.home.join("conf")
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.home.join("lib")
    }

    /// The jars in `lib/`, sorted (the classpath to compile jobs against).
    pub fn lib_jars(&self) -> Result<Vec<PathBuf>> {
        let mut jars: Vec<PathBuf> = std::fs::read_dir(self.lib_dir())
            .with_context(|| format!("listing {}", self.lib_dir().display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        Ok(jars)
    }
}

/// The workspace root (parent of this crate's manifest dir).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the harness keeps cluster dirs and built jars: `$BPMON_E2E_DIR`, else
/// `$CARGO_TARGET_DIR/bpmon-e2e`, else `<repo>/target/bpmon-e2e`.
pub fn work_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BPMON_E2E_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // A relative CARGO_TARGET_DIR is relative to the workspace, not to the test's cwd.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| repo_root().join(d))
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("bpmon-e2e")
}
