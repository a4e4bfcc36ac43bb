//! The Java test jobs (`tests/flink-jobs/src`): building them and describing what they do.
//!
//! [`TestJobs::build`] compiles the sources with `javac --release 17` against the
//! distribution's `lib/*.jar` and packages them with `jar`. The jar is cached under
//! [`work_dir`]`/jobs/`, keyed by Flink version and a hash of the sources, so only the first
//! run per version pays for javac. The same sources compile against Flink 1.18, 1.20 and 2.x,
//! plus the classes of `flink-jobs/src-flink<major>` whose API differs between 1.x and 2.x (the
//! legacy `SourceFunction`, and the Sink V2 "discard" sink, which 1.18 lacks and 1.x gets from
//! its own copy).
//!
//! [`JobMode`] lists the behaviours, and [`JobMode::vertices`] the vertex names Flink gives
//! them (identical on 1.18, 1.20 and 2.3), with the expected back-pressure behaviour of each
//! and the user-code frames a stack sampler should see in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::flink_dist::{work_dir, FlinkDist};
use crate::rest::FlinkRest;

/// What a vertex does, as Flink's time metrics will show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Behaviour {
    /// Blocked in `LocalBufferPool.requestBufferBuilderBlocking`: `hardBackPressuredTimeMsPerSecond` high.
    HardBackPressured,
    /// Waiting in the mailbox for output availability: `softBackPressuredTimeMsPerSecond` high.
    SoftBackPressured,
    /// Waiting for input: `idleTimeMsPerSecond` high.
    Idle,
    /// Busy in user code that sleeps (busy for Flink, off-CPU for a sampler).
    BusySleeping,
    /// Busy in user code spinning on CPU.
    BusyCpu,
}

/// A vertex of a test job.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExpectedVertex {
    /// The vertex name in `GET /jobs/:jid` (and in task thread names).
    pub name: &'static str,
    pub parallelism: u32,
    pub behaviour: Behaviour,
    /// `class.method` of the user code the task thread spends its time in (empty if none).
    pub user_frames: &'static [&'static str],
}

/// The test jobs' behaviours. Submitting the same mode twice (with different job names) gives
/// two jobs with identical vertex names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobMode {
    /// `Source: numbers -> explode` hard back-pressured by `slow consumer -> discard: Writer`.
    Hard,
    /// `Source: numbers` soft back-pressured by `slow consumer -> discard: Writer`.
    Soft,
    /// `idle sink -> discard: Writer` idle behind `Source: numbers -> throttle` (~10 records/s per subtask).
    Idle,
    /// `spin -> discard: Writer` busy on CPU (one subtask); `Source: numbers` soft back-pressured.
    Busy,
    /// `Source: legacy numbers`, a legacy `SourceFunction` whose Legacy Source Thread is hard
    /// back-pressured by `slow consumer -> discard: Writer`. Not in [`JobMode::ALL`].
    Legacy,
    /// `async lookup -> discard: Writer` waiting for async capacity in `MailboxExecutorImpl.yield`
    /// (busy for Flink); `Source: numbers` soft back-pressured. Not in [`JobMode::ALL`].
    Async,
    /// `skewed consumer -> discard: Writer` slow in subtask 0 only (busy there, idle in
    /// subtask 1); `Source: numbers` soft back-pressured. Not in [`JobMode::ALL`].
    Skew,
    /// [`JobMode::Hard`]'s behaviour under [`JobMode::Idle`]'s vertex names: `Source: numbers ->
    /// throttle` hard back-pressured by `idle sink -> discard: Writer` (busy). Beside an idle job,
    /// same-named threads behave in opposite ways. Not in [`JobMode::ALL`].
    Mimic,
}

pub const EXPLODE_FLATMAP: &str = "bpmon.testjobs.Explode.flatMap";
pub const SLOW_MAP: &str = "bpmon.testjobs.Slow.map";
pub const THROTTLE_MAP: &str = "bpmon.testjobs.Throttle.map";
pub const SPIN_MAP: &str = "bpmon.testjobs.Spin.map";
pub const SPIN_BURN: &str = "bpmon.testjobs.Spin.burn";
pub const SKEWED_SLOW_MAP: &str = "bpmon.testjobs.SkewedSlow.map";

const MIMIC_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers -> throttle",
        parallelism: 2,
        behaviour: Behaviour::HardBackPressured,
        user_frames: &[EXPLODE_FLATMAP],
    },
    ExpectedVertex {
        name: "idle sink -> discard: Writer",
        parallelism: 2,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[SLOW_MAP],
    },
];

const SKEW_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers",
        parallelism: 2,
        behaviour: Behaviour::SoftBackPressured,
        user_frames: &[],
    },
    ExpectedVertex {
        // Subtask 0 busy (sleeping), subtask 1 idle.
        name: "skewed consumer -> discard: Writer",
        parallelism: 2,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[SKEWED_SLOW_MAP],
    },
];

const HARD_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers -> explode",
        parallelism: 2,
        behaviour: Behaviour::HardBackPressured,
        user_frames: &[EXPLODE_FLATMAP],
    },
    ExpectedVertex {
        name: "slow consumer -> discard: Writer",
        parallelism: 2,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[SLOW_MAP],
    },
];

const SOFT_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers",
        parallelism: 2,
        behaviour: Behaviour::SoftBackPressured,
        user_frames: &[],
    },
    ExpectedVertex {
        name: "slow consumer -> discard: Writer",
        parallelism: 2,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[SLOW_MAP],
    },
];

const IDLE_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers -> throttle",
        parallelism: 2,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[THROTTLE_MAP],
    },
    ExpectedVertex {
        name: "idle sink -> discard: Writer",
        parallelism: 2,
        behaviour: Behaviour::Idle,
        user_frames: &[],
    },
];

const BUSY_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers",
        parallelism: 1,
        behaviour: Behaviour::SoftBackPressured,
        user_frames: &[],
    },
    ExpectedVertex {
        name: "spin -> discard: Writer",
        parallelism: 1,
        behaviour: Behaviour::BusyCpu,
        user_frames: &[SPIN_BURN, SPIN_MAP],
    },
];

const LEGACY_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: legacy numbers",
        parallelism: 1,
        behaviour: Behaviour::HardBackPressured,
        user_frames: &[],
    },
    ExpectedVertex {
        name: "slow consumer -> discard: Writer",
        parallelism: 1,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[SLOW_MAP],
    },
];

const ASYNC_VERTICES: &[ExpectedVertex] = &[
    ExpectedVertex {
        name: "Source: numbers",
        parallelism: 1,
        behaviour: Behaviour::SoftBackPressured,
        user_frames: &[],
    },
    ExpectedVertex {
        name: "async lookup -> discard: Writer",
        parallelism: 1,
        behaviour: Behaviour::BusySleeping,
        user_frames: &[],
    },
];

impl JobMode {
    pub const ALL: [JobMode; 4] = [JobMode::Hard, JobMode::Soft, JobMode::Idle, JobMode::Busy];

    pub fn as_str(self) -> &'static str {
        match self {
            JobMode::Hard => "hard",
            JobMode::Soft => "soft",
            JobMode::Idle => "idle",
            JobMode::Busy => "busy",
            JobMode::Legacy => "legacy",
            JobMode::Async => "async",
            JobMode::Skew => "skew",
            JobMode::Mimic => "mimic",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "hard" => JobMode::Hard,
            "soft" => JobMode::Soft,
            "idle" => JobMode::Idle,
            "busy" => JobMode::Busy,
            "legacy" => JobMode::Legacy,
            "async" => JobMode::Async,
            "skew" => JobMode::Skew,
            "mimic" => JobMode::Mimic,
            other => bail!(
                "unknown job mode {other:?} (expected hard, soft, idle, busy, legacy, async, skew or mimic)"
            ),
        })
    }

    /// The job's vertices, upstream first.
    pub fn vertices(self) -> &'static [ExpectedVertex] {
        match self {
            JobMode::Hard => HARD_VERTICES,
            JobMode::Soft => SOFT_VERTICES,
            JobMode::Idle => IDLE_VERTICES,
            JobMode::Busy => BUSY_VERTICES,
            JobMode::Legacy => LEGACY_VERTICES,
            JobMode::Async => ASYNC_VERTICES,
            JobMode::Skew => SKEW_VERTICES,
            JobMode::Mimic => MIMIC_VERTICES,
        }
    }

    /// The vertex whose behaviour the mode is named after.
    pub fn subject(self) -> &'static ExpectedVertex {
        let want = match self {
            JobMode::Hard => Behaviour::HardBackPressured,
            JobMode::Soft => Behaviour::SoftBackPressured,
            JobMode::Idle => Behaviour::Idle,
            JobMode::Busy => Behaviour::BusyCpu,
            JobMode::Legacy => Behaviour::HardBackPressured,
            JobMode::Async => Behaviour::BusySleeping,
            JobMode::Skew => Behaviour::BusySleeping,
            JobMode::Mimic => Behaviour::HardBackPressured,
        };
        self.vertices()
            .iter()
            .find(|v| v.behaviour == want)
            .expect("every mode has its subject vertex")
    }

    /// Task slots the job occupies (default slot sharing: the maximum parallelism).
    pub fn slots(self) -> usize {
        self.vertices()
            .iter()
            .map(|v| v.parallelism as usize)
            .max()
            .unwrap_or(1)
    }
}

impl std::fmt::Display for JobMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Builds and submits the Java test jobs.
pub struct TestJobs;

impl TestJobs {
    /// The main class; arguments: `<mode> <job name>`.
    pub const MAIN_CLASS: &'static str = "bpmon.testjobs.TestJobs";

    /// The Java sources' root directory.
    pub fn source_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("flink-jobs/src")
    }

    /// Compiles and packages the jobs for `dist` (cached by Flink version + source hash).
    pub fn build(dist: &FlinkDist) -> Result<PathBuf> {
        let src_root = Self::source_dir();
        let mut sources = Vec::new();
        collect_java(&src_root, &mut sources)?;
        // Classes whose Flink API differs by major version (the legacy SourceFunction, the
        // discarding Sink V2).
        let version_root = src_root.with_file_name(format!("src-flink{}", dist.major()));
        if version_root.is_dir() {
            collect_java(&version_root, &mut sources)?;
        }
        sources.sort();
        ensure!(
            !sources.is_empty(),
            "no .java files under {}",
            src_root.display()
        );
        let mut hash = Fnv64::new();
        hash.write(dist.version().as_bytes());
        for s in &sources {
            hash.write(
                s.strip_prefix(src_root.parent().unwrap_or(&src_root))
                    .unwrap_or(s)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hash.write(&std::fs::read(s).with_context(|| format!("reading {}", s.display()))?);
        }
        let jobs_dir = work_dir().join("jobs");
        std::fs::create_dir_all(&jobs_dir)
            .with_context(|| format!("creating {}", jobs_dir.display()))?;
        let jar = jobs_dir.join(format!(
            "bpmon-testjobs-{}-{:016x}.jar",
            dist.version(),
            hash.finish()
        ));
        if jar.is_file() {
            return Ok(jar);
        }

        // Build in a private dir and rename into place, so concurrent builds cannot clash.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let build = jobs_dir.join(format!("build-{}-{nanos}", std::process::id()));
        let classes = build.join("classes");
        std::fs::create_dir_all(&classes)?;
        let classpath = dist
            .lib_jars()?
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let result = (|| -> Result<()> {
            run_tool(
                Command::new(jdk_tool("javac"))
                    .args([
                        "--release",
                        "17",
                        "-Xlint:all,-options,-serial",
                        "-encoding",
                        "UTF-8",
                        "-cp",
                    ])
                    .arg(&classpath)
                    .arg("-d")
                    .arg(&classes)
                    .args(&sources),
                "javac",
            )?;
            let tmp_jar = build.join("jobs.jar");
            run_tool(
                Command::new(jdk_tool("jar"))
                    .arg("--create")
                    .arg("--file")
                    .arg(&tmp_jar)
                    .arg("-C")
                    .arg(&classes)
                    .arg("."),
                "jar",
            )?;
            std::fs::rename(&tmp_jar, &jar)
                .with_context(|| format!("moving jar to {}", jar.display()))?;
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&build);
        result.with_context(|| format!("building the test jobs for Flink {}", dist.version()))?;
        Ok(jar)
    }

    /// Submits `mode` as a job called `job_name`; returns the job id.
    pub fn submit(rest: &FlinkRest, jar: &Path, mode: JobMode, job_name: &str) -> Result<String> {
        rest.submit_job(jar, Self::MAIN_CLASS, &[mode.as_str(), job_name])
            .with_context(|| format!("submitting {mode} job {job_name:?}"))
    }

    /// The job whose back-pressure comes and goes: "Source: numbers -> pace" back-pressured by
    /// "phased consumer -> discard: Writer" in every other period of `period_ms` (the periods
    /// with `(epoch ms / period_ms) % 2 == 1`), free in the others.
    pub fn submit_phases(
        rest: &FlinkRest,
        jar: &Path,
        job_name: &str,
        period_ms: u64,
    ) -> Result<String> {
        rest.submit_job(
            jar,
            Self::MAIN_CLASS,
            &["phases", job_name, &period_ms.to_string()],
        )
        .with_context(|| format!("submitting phases job {job_name:?}"))
    }

    /// Many task threads: "Source: numbers", `depth - 2` identity stages and "discard", each its
    /// own task with `parallelism` subtasks (forward edges, chaining disabled).
    pub fn submit_wide(
        rest: &FlinkRest,
        jar: &Path,
        job_name: &str,
        parallelism: u32,
        depth: u32,
    ) -> Result<String> {
        rest.submit_job(
            jar,
            Self::MAIN_CLASS,
            &[
                "wide",
                job_name,
                &parallelism.to_string(),
                &depth.to_string(),
            ],
        )
        .with_context(|| format!("submitting wide job {job_name:?}"))
    }

    /// The benchmark's bounded job: `records` numbers with a fixed amount of CPU work each
    /// ("Source: numbers -> work"), shuffled to "discard: Writer"; it finishes by itself.
    pub fn submit_throughput(
        rest: &FlinkRest,
        jar: &Path,
        job_name: &str,
        records: u64,
    ) -> Result<String> {
        rest.submit_job(
            jar,
            Self::MAIN_CLASS,
            &["throughput", job_name, &records.to_string()],
        )
        .with_context(|| format!("submitting throughput job {job_name:?}"))
    }
}

/// `$JAVA_HOME/bin/<tool>` if JAVA_HOME is set, else `<tool>` from PATH.
fn jdk_tool(tool: &str) -> PathBuf {
    match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        Some(home) if Path::new(&home).join("bin").join(tool).is_file() => {
            Path::new(&home).join("bin").join(tool)
        }
        _ => PathBuf::from(tool),
    }
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn collect_java(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_java(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "java") {
            out.push(path);
        }
    }
    Ok(())
}

/// FNV-1a: a hash that is stable across Rust releases (std's hasher is not promised to be).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_have_subjects() {
        for m in JobMode::ALL {
            assert_eq!(JobMode::parse(m.as_str()).unwrap(), m);
            assert!(m.vertices().iter().any(|v| v.name == m.subject().name));
        }
        assert_eq!(JobMode::Busy.slots(), 1);
        assert_eq!(JobMode::Hard.slots(), 2);
        assert!(JobMode::parse("nope").is_err());
    }
}
