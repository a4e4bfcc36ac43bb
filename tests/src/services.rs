//! bpmon's own daemons as child processes for end-to-end tests: `bpmon-collector serve` and
//! `bpmon-agent run`, built from this workspace, with private data dirs and log files, stopped by
//! their PID (SIGTERM, or SIGKILL to play a crash). Plus the collector's CLI.

use bpmon_proto::time::now_ms;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The path of a binary of this workspace, built first (a no-op when it is fresh). The tests
/// run under `cargo test`, which sets `$CARGO`; the binary lands next to the test's `deps/`.
/// A benchmark binary (`target/release/bench-…`) finds them beside itself.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("an executable without a directory")?;
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .context("test executable outside a target dir")?
    } else {
        dir
    }
    .to_path_buf();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "bpmon-agent",
            "-p",
            "bpmon-collector",
            "--bins",
        ])
        .current_dir(crate::repo_root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the bpmon binaries failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        bail!("{e}");
    }
    let path = profile_dir.join(name);
    ensure!(path.exists(), "{} was not built", path.display());
    Ok(path)
}

/// A daemon child process with its log file.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    name: String,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `grace` for it to exit; its exit code (None if killed).
    pub fn stop(&mut self, grace: Duration) -> Result<Option<i32>> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s.code());
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()?;
        bail!(
            "{} did not stop within {grace:?} of SIGTERM; killed",
            self.name
        )
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
            self.child.wait()?;
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `bpmon-collector serve`.
#[derive(Debug)]
pub struct CollectorProc {
    pub daemon: Daemon,
    pub url: String,
    pub data_dir: PathBuf,
}

impl CollectorProc {
    /// Starts a collector on `port` (0: any free port) watching `flink_urls`, storing in
    /// `data_dir`, and waits until it listens.
    pub fn start(
        flink_urls: &[String],
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<CollectorProc> {
        let bin = binary("bpmon-collector")?;
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.with_extension(format!("log.{}", now_ms()));
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info,bpmon_collector=debug");
        for u in flink_urls {
            cmd.arg("--flink").arg(u);
        }
        CollectorProc::spawn(cmd, data_dir, log)
    }

    /// Sets the default sampling of the end-to-end tests: 40 samples 50 ms apart every 5 s
    /// (`config set default`), and checks the collector took it.
    pub fn set_test_sampling(&self) -> Result<()> {
        let set = self.cli_json(&[
            "config",
            "set",
            "default",
            "--samples",
            "40",
            "--delay",
            "50ms",
            "--interval",
            "5s",
        ])?;
        ensure!(
            set["settings"]["samples"] == 40 && set["scope"] == "*",
            "config set default: {set}"
        );
        Ok(())
    }

    /// Runs `cmd`, a `bpmon-collector serve` command line of the caller's making (e.g. a
    /// packaged binary with a config file), with stderr to `log`, and waits until it says where
    /// it listens. `data_dir` is what its configuration says.
    pub fn spawn(mut cmd: Command, data_dir: &Path, log: PathBuf) -> Result<CollectorProc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        let mut child = cmd.spawn().context("starting bpmon-collector")?;
        let stdout = child.stdout.take().context("collector stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let daemon = Daemon {
            child,
            log,
            name: "bpmon-collector".into(),
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
            format!(
                "bpmon-collector did not say where it listens; log:\n{}",
                daemon.log_tail(30)
            )
        })?;
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        Ok(CollectorProc {
            url: format!("http://{addr}"),
            daemon,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Runs the CLI against this collector: `bpmon-collector --collector URL <args>`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        cli(&self.url, args)
    }

    /// The CLI's JSON output (`--output json`), failing on a non-zero exit.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cli(&all)?;
        ensure!(
            out.status.success(),
            "bpmon-collector {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "bpmon-collector {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// `bpmon-collector --collector URL <args>`.
pub fn cli(url: &str, args: &[&str]) -> Result<Output> {
    let bin = binary("bpmon-collector")?;
    Command::new(bin)
        .arg("--collector")
        .arg(url)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .context("running the bpmon-collector CLI")
}

/// `bpmon-agent run`.
#[derive(Debug)]
pub struct AgentProc {
    pub daemon: Daemon,
    pub spool_dir: PathBuf,
}

impl AgentProc {
    pub fn start(
        collector_url: &str,
        agent_id: &str,
        spool_dir: &Path,
        extra: &[&str],
    ) -> Result<AgentProc> {
        let bin = binary("bpmon-agent")?;
        std::fs::create_dir_all(spool_dir)?;
        let log = spool_dir.with_extension(format!("log.{}", now_ms()));
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--collector")
            .arg(collector_url)
            .arg("--agent-id")
            .arg(agent_id)
            .arg("--spool-dir")
            .arg(spool_dir)
            .args(extra)
            .env("RUST_LOG", "info,bpmon_agent=debug");
        AgentProc::spawn(cmd, spool_dir, log)
    }

    /// Runs `cmd`, a `bpmon-agent run` command line of the caller's making, with stderr to `log`
    /// (stdout next to it). `spool_dir` is what its configuration says.
    pub fn spawn(mut cmd: Command, spool_dir: &Path, log: PathBuf) -> Result<AgentProc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(log.with_extension("out"))?)
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting bpmon-agent")?;
        Ok(AgentProc {
            daemon: Daemon {
                child,
                log,
                name: "bpmon-agent".into(),
            },
            spool_dir: spool_dir.to_path_buf(),
        })
    }
}

/// A real Prometheus (Debian's `prometheus`) scraping collectors every second and evaluating
/// the shipped alerting rules (`packaging/prometheus/bpmon-alerts.yml`) every second, on a free
/// loopback port with its own storage; killed by PID when dropped.
pub struct PrometheusProc {
    pub daemon: Daemon,
    pub url: String,
}

impl PrometheusProc {
    /// Starts it scraping `targets` (`host:port` of collectors) into `dir`.
    pub fn start(dir: &Path, targets: &[&str]) -> Result<PrometheusProc> {
        std::fs::create_dir_all(dir)?;
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/prometheus/bpmon-alerts.yml")
            .canonicalize()?;
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: bpmon-collector\n    static_configs: [{{targets: [{}]}}]\n",
                rules.display(),
                targets.join(", ")
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(dir.join("prometheus.err"))?)
            .spawn()
            .context(
                "starting prometheus (Debian's prometheus package; scripts/test installs it)",
            )?;
        let p = PrometheusProc {
            daemon: Daemon {
                child,
                log: dir.join("prometheus.err"),
                name: "prometheus".into(),
            },
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", p.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success()) {
                return Ok(p);
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s: {}",
                p.daemon.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The alerts as its API lists them: labels and state (`pending`, `firing`) each.
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value =
            reqwest::blocking::get(format!("{}/api/v1/alerts", self.url))?.json()?;
        Ok(v["data"]["alerts"].as_array().cloned().unwrap_or_default())
    }
}
