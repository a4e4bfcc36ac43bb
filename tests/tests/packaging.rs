//! The Debian packages as an operator gets them: `scripts/package` builds `bpmon-agent` and
//! `bpmon-collector` (.deb, with cargo-deb, installed first if missing); then
//! 1. `systemd-analyze verify` finds nothing to say about either unit, in the installed tree;
//! 2. the packages hold what they should (binaries, units, conffiles, completions, man pages,
//!    maintainer scripts that enable/stop the units the Debian way, dependencies);
//! 3. unpacked into a scratch root (`dpkg -x`), the binaries run with exactly their units'
//!    `ExecStartPre=`/`ExecStart=` lines (paths moved into the scratch root), as systemd would
//!    run them (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, SIGTERM), against a real Flink cluster running
//!    a hard back-pressured job: its HIGH level shows in `bpmon-collector status`, in `/metrics`
//!    and in the collector's log; an agent with a wrong token is refused (401, in its log and in
//!    the collector's counter); with `log_format = "auto"` and `JOURNAL_STREAM` naming stderr,
//!    the collector logs to the journal (or says why it cannot).
//!
//! `cargo test -p bpmon-e2e --test packaging -- --nocapture`. Needs dpkg-deb and systemd-analyze
//! (Debian's `dpkg` and `systemd` packages).

use bpmon_proto::time::now_ms;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpmon_e2e::services::{AgentProc, CollectorProc};
use bpmon_e2e::{
    one_cluster_at_a_time, repo_root, wait_for, work_dir, ClusterOptions, FlinkCluster, FlinkDist,
    JobMode, TestJobs,
};
use serde_json::Value;

const UNITS: [&str; 2] = ["bpmon-agent.service", "bpmon-collector.service"];
/// The hard job's back-pressured vertex.
const SOURCE: &str = "Source: numbers -> explode";

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// Runs `cmd`; fails with its output unless it exits 0.
fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two .deb files, built once per test binary.
struct Debs {
    agent: PathBuf,
    collector: PathBuf,
}

impl Debs {
    fn both(&self) -> [&Path; 2] {
        [&self.agent, &self.collector]
    }

    /// Both packages unpacked into a fresh directory, as `dpkg -i` would lay them out.
    fn unpack(&self, name: &str) -> Result<PathBuf> {
        let root = work_dir().join("packaging").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&root)?;
        for deb in self.both() {
            run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
        }
        Ok(root)
    }
}

fn debs() -> Result<&'static Debs> {
    static DEBS: OnceLock<std::result::Result<Debs, String>> = OnceLock::new();
    DEBS.get_or_init(|| build_debs().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn build_debs() -> Result<Debs> {
    let t0 = Instant::now();
    let root = repo_root();
    // Packaged from the profile this test was built with: a debug test run packages the debug
    // binaries it has already compiled instead of building the workspace again for release.
    let mut package = Command::new(root.join("scripts/package"));
    let release = std::env::current_exe()?
        .ancestors()
        .any(|d| d.file_name().is_some_and(|n| n == "release"));
    if !release {
        package.args(["--profile", "dev"]);
    }
    run(package.current_dir(&root)).context("scripts/package")?;
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture"))?)
        .trim()
        .to_string();
    let version = env!("CARGO_PKG_VERSION");
    let deb = |pkg: &str| -> Result<PathBuf> {
        let p = root
            .join("target/debian")
            .join(format!("{pkg}_{version}-1_{arch}.deb"));
        ensure!(p.exists(), "scripts/package did not make {}", p.display());
        Ok(p)
    };
    let debs = Debs {
        agent: deb("bpmon-agent")?,
        collector: deb("bpmon-collector")?,
    };
    log(t0, "scripts/package built both packages");
    Ok(debs)
}

// ------------------------------------------------------------------------------------------
// 1. systemd-analyze verify

#[test]
fn units_pass_systemd_analyze_verify_in_the_installed_tree() -> Result<()> {
    let debs = debs()?;
    let root = debs.unpack("verify")?;
    let unit_dir = root.join("usr/lib/systemd/system");
    // verify loads the units' dependencies (sysinit.target, …) from the same root: give it the
    // host's stock units beside ours.
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if Path::new(host).is_dir() {
            run(Command::new("cp")
                .arg("-an")
                .arg(format!("{host}/."))
                .arg(&unit_dir))?;
            break;
        }
    }
    let files: Vec<PathBuf> = UNITS.iter().map(|u| unit_dir.join(u)).collect();
    // With --root, ExecStart= binaries are looked up in the root; Documentation=man: pages
    // through man(1), which MANPATH points at the root's pages. Clean = exit 0 and not a word
    // (a setting it cannot parse is only a warning).
    let verify = |what: &str| -> Result<()> {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(&files)
            .env("MANPATH", root.join("usr/share/man"))
            .output()
            .context("running systemd-analyze (apt-get install systemd)")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "systemd-analyze verify ({what}): {}, output: {said:?}",
            out.status
        );
        ensure!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify ({what}) is not clean ({}):\n{said}",
            out.status
        );
        Ok(())
    };
    verify("the units")?;

    // The drop-in examples, installed as the README says, are clean too.
    for (unit, examples) in [
        (
            "bpmon-agent.service",
            &["run-as-flink.conf", "jcmd-backend.conf"][..],
        ),
        ("bpmon-collector.service", &["credentials.conf"][..]),
    ] {
        let pkg = unit.trim_end_matches(".service");
        let dir = root.join("etc/systemd/system").join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir)?;
        for e in examples {
            std::fs::copy(
                root.join("usr/share/doc")
                    .join(pkg)
                    .join("examples")
                    .join(e),
                dir.join(e),
            )?;
        }
    }
    verify("the units with the drop-in examples")?;
    std::fs::remove_dir_all(root.join("etc/systemd/system"))?;

    // It does look in the root: without the agent's binary there, it complains.
    std::fs::rename(
        root.join("usr/bin/bpmon-agent"),
        root.join("bpmon-agent.moved"),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&files[0])
        .env("MANPATH", root.join("usr/share/man"))
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/bin/bpmon-agent is not executable"),
        "verify did not miss the binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(
        root.join("bpmon-agent.moved"),
        root.join("usr/bin/bpmon-agent"),
    )?;

    // The sandboxing, as systemd rates it (0 = locked down, 10 = exposed).
    for (unit, most) in [(UNITS[0], 4.0), (UNITS[1], 2.0)] {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit))?;
        let text = stdout(&out);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for")
                    .and_then(|(_, rest)| rest.split(':').nth(1))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .with_context(|| format!("no exposure level in:\n{text}"))?;
        eprintln!("systemd-analyze security {unit}: {exposure}");
        ensure!(
            exposure <= most,
            "{unit}: exposure {exposure} > {most}\n{text}"
        );
    }
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. What the packages hold

/// `dpkg-deb -c`: path → (mode string, size).
fn contents(deb: &Path) -> Result<BTreeMap<String, String>> {
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(stdout(&out)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields.get(5)?.trim_start_matches('.').to_string();
            Some((path, fields[0].to_string()))
        })
        .collect())
}

/// One control file of a package (`dpkg-deb -I DEB FILE`).
fn control_file(deb: &Path, name: &str) -> Result<String> {
    Ok(stdout(&run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg(name))?))
}

#[test]
fn packages_hold_binaries_units_conffiles_docs_and_scripts() -> Result<()> {
    let debs = debs()?;
    for (deb, pkg, config, man_sub) in [
        (&debs.agent, "bpmon-agent", "agent.toml", "run"),
        (
            &debs.collector,
            "bpmon-collector",
            "collector.toml",
            "serve",
        ),
    ] {
        let files = contents(deb)?;
        eprintln!("{pkg}: {} entries", files.len());
        let expect = |path: &str, mode: &str| -> Result<()> {
            let got = files
                .get(path)
                .with_context(|| format!("{pkg} lacks {path}; it has {:#?}", files.keys()))?;
            ensure!(got == mode, "{pkg}: {path} is {got}, not {mode}");
            Ok(())
        };
        expect(&format!("/usr/bin/{pkg}"), "-rwxr-xr-x")?;
        expect(
            &format!("/usr/lib/systemd/system/{pkg}.service"),
            "-rw-r--r--",
        )?;
        expect(&format!("/etc/bpmon/{config}"), "-rw-r--r--")?;
        expect(
            &format!("/usr/share/bash-completion/completions/{pkg}"),
            "-rw-r--r--",
        )?;
        expect(
            &format!("/usr/share/zsh/vendor-completions/_{pkg}"),
            "-rw-r--r--",
        )?;
        expect(
            &format!("/usr/share/fish/vendor_completions.d/{pkg}.fish"),
            "-rw-r--r--",
        )?;
        expect(&format!("/usr/share/man/man1/{pkg}.1.gz"), "-rw-r--r--")?;
        expect(
            &format!("/usr/share/man/man1/{pkg}-{man_sub}.1.gz"),
            "-rw-r--r--",
        )?;
        expect(
            &format!("/usr/share/man/man1/{pkg}-check-config.1.gz"),
            "-rw-r--r--",
        )?;
        expect(&format!("/usr/share/doc/{pkg}/copyright"), "-rw-r--r--")?;
        if pkg == "bpmon-agent" {
            // The in-process sampler, where `backend = "jvmti"` finds it.
            expect("/usr/lib/bpmon/libbpmon_jvmti.so", "-rw-r--r--")?;
        }
        // Hidden packaging commands get no page.
        ensure!(
            !files.keys().any(|f| f.contains("generate-")),
            "{pkg}: {:?}",
            files.keys()
        );

        let info = stdout(&run(Command::new("dpkg-deb").arg("-I").arg(deb))?);
        let field = |name: &str| -> Option<String> {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
                .map(str::to_string)
        };
        ensure!(field("Package").as_deref() == Some(pkg), "{info}");
        ensure!(field("Section").as_deref() == Some("admin"), "{info}");
        let depends = field("Depends").unwrap_or_default();
        ensure!(
            depends.starts_with("libc6 (>= "),
            "{pkg} depends on {depends:?}"
        );
        ensure!(
            control_file(deb, "conffiles")?.trim() == format!("/etc/bpmon/{config}"),
            "{pkg} conffiles"
        );
        // The unit in the package is the one in the repository.
        let unit = pkg.to_string() + ".service";
        let packaged = unpacked_file(deb, &format!("./usr/lib/systemd/system/{unit}"))?;
        ensure!(
            packaged == std::fs::read(repo_root().join("packaging/systemd").join(&unit))?,
            "{unit} differs from packaging/systemd/{unit}"
        );

        // Maintainer scripts: debhelper's systemd handling, and the purge of the state.
        let postinst = control_file(deb, "postinst")?;
        let prerm = control_file(deb, "prerm")?;
        let postrm = control_file(deb, "postrm")?;
        for (name, script) in [
            ("postinst", &postinst),
            ("prerm", &prerm),
            ("postrm", &postrm),
        ] {
            let mut sh = Command::new("sh")
                .arg("-n")
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            sh.stdin
                .take()
                .context("stdin")?
                .write_all(script.as_bytes())?;
            let checked = sh.wait_with_output()?;
            ensure!(
                checked.status.success(),
                "{pkg} {name} is not valid sh: {}\n{script}",
                String::from_utf8_lossy(&checked.stderr)
            );
            ensure!(!script.contains("#DEBHELPER#"), "{pkg} {name}: {script}");
        }
        // Installed disabled and stopped (it needs configuring), remembered by
        // deb-systemd-helper, restarted on upgrade if it runs, stopped on removal.
        ensure!(postinst.contains(&format!("deb-systemd-helper update-state {unit}")));
        ensure!(postinst.contains(&format!("deb-systemd-invoke try-restart {unit}")));
        ensure!(!postinst.contains(&format!("deb-systemd-invoke start {unit}")));
        ensure!(prerm.contains(&format!("deb-systemd-invoke stop {unit}")));
        ensure!(postrm.contains(&format!("deb-systemd-helper purge {unit}")));
        ensure!(postrm.contains(&format!("deb-systemd-helper mask {unit}")));
        let state = match pkg {
            "bpmon-agent" => "rm -rf /var/lib/bpmon-agent",
            _ => "rm -rf /var/lib/private/bpmon-collector /var/lib/bpmon-collector",
        };
        ensure!(postrm.contains(state), "{pkg} postrm: {postrm}");
    }
    // The agent's examples: the drop-in that runs it as the TaskManagers' user.
    let agent_files = contents(&debs.agent)?;
    for f in ["run-as-flink.conf", "jcmd-backend.conf"] {
        ensure!(agent_files.contains_key(&format!("/usr/share/doc/bpmon-agent/examples/{f}")));
    }
    // The collector's examples, and what Prometheus and Grafana load.
    let collector_files = contents(&debs.collector)?;
    for f in [
        "/usr/share/doc/bpmon-collector/examples/credentials.conf",
        "/usr/share/bpmon-collector/prometheus/bpmon-alerts.yml",
        "/usr/share/bpmon-collector/grafana/bpmon-dashboard.json",
        "/usr/share/doc/bpmon-collector/examples/grafana-dashboards.yml",
    ] {
        ensure!(
            collector_files.contains_key(f),
            "the collector package lacks {f}"
        );
    }
    Ok(())
}

/// One file of a package's data, as bytes.
fn unpacked_file(deb: &Path, path: &str) -> Result<Vec<u8>> {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xOf - '{path}'",
        deb.display()
    )))?;
    Ok(out.stdout)
}

// ------------------------------------------------------------------------------------------
// 3. The installed binaries, run as their units say, on Flink

/// A unit's `KEY=` command lines, split into words. The units use no quoting, specifiers or
/// variables in them (checked), so a split on whitespace is what systemd would do.
fn exec_lines(unit: &str, key: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for line in unit.lines() {
        let Some(cmd) = line.strip_prefix(&format!("{key}=")) else {
            continue;
        };
        ensure!(
            !cmd.contains(['"', '\'', '%', '$', '\\']),
            "{key}= uses quoting, specifiers or variables; the test would need to expand them: {cmd}"
        );
        out.push(cmd.split_whitespace().map(str::to_string).collect());
    }
    Ok(out)
}

/// A unit's command line with its absolute paths moved: `/usr/bin/…` into `bin_root`,
/// `/etc/bpmon/…` into `etc_root`. Nothing else is added: no flag, no environment but what the
/// caller sets (`RUST_LOG` is removed, so the config file's level applies).
fn command(argv: &[String], bin_root: &Path, etc_root: &Path) -> Command {
    let moved: Vec<PathBuf> = argv
        .iter()
        .map(|a| {
            if a.starts_with("/usr/bin/") {
                bin_root.join(a.trim_start_matches('/'))
            } else if a.starts_with("/etc/bpmon/") {
                etc_root.join(a.trim_start_matches('/'))
            } else {
                PathBuf::from(a)
            }
        })
        .collect();
    let mut cmd = Command::new(&moved[0]);
    cmd.args(&moved[1..]).env_remove("RUST_LOG");
    cmd
}

/// What a daemon tells systemd, as systemd's notification socket would receive it.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(text);
            }
        });
        Ok(NotifySocket { path, messages })
    }

    /// Sets what systemd sets for `Type=notify` with `WatchdogSec=2s`.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("NOTIFY_SOCKET", &self.path)
            .env("WATCHDOG_USEC", "2000000");
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn count(&self, line: &str) -> usize {
        self.all()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    fn wait_for(&self, line: &str, timeout: Duration) -> Result<()> {
        self.wait_for_n(line, 1, timeout)
    }

    fn wait_for_n(&self, line: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count(line) < n {
            ensure!(
                Instant::now() < deadline,
                "no {line} within {timeout:?}; got {:?}",
                self.all()
            );
            sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// JSON log lines of a daemon's stderr; fails on a line that is not JSON.
fn json_log(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: not a JSON log line: {l}", path.display()))
        })
        .collect()
}

#[test]
fn installed_packages_run_as_their_units_say_on_flink() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let t0 = Instant::now();
    let debs = debs()?;
    let root = debs.unpack("installed")?;
    let bin = |name: &str| root.join("usr/bin").join(name);
    let unit = |name: &str| -> Result<String> {
        Ok(std::fs::read_to_string(
            root.join("usr/lib/systemd/system").join(name),
        )?)
    };
    let collector_unit = unit("bpmon-collector.service")?;
    let agent_unit = unit("bpmon-agent.service")?;
    let (collector_pre, collector_start) = (
        exec_lines(&collector_unit, "ExecStartPre")?,
        exec_lines(&collector_unit, "ExecStart")?,
    );
    let (agent_pre, agent_start) = (
        exec_lines(&agent_unit, "ExecStartPre")?,
        exec_lines(&agent_unit, "ExecStart")?,
    );
    ensure!(collector_start.len() == 1 && agent_start.len() == 1);
    log(
        t0,
        format!(
            "units: collector {:?}, agent {:?}",
            collector_start[0], agent_start[0]
        ),
    );

    // Flink, with the hard back-pressured job.
    let dist = FlinkDist::install(&FlinkDist::default_version())?;
    let jar = TestJobs::build(&dist)?;
    let mut cluster = FlinkCluster::start(
        &dist,
        ClusterOptions {
            taskmanagers: 1,
            slots_per_tm: JobMode::Hard.slots().max(2),
            ..ClusterOptions::default()
        },
    )?;
    let rest = cluster.rest().clone();
    let job_name = "bpmon-packaged-hard";
    let jid = TestJobs::submit(&rest, &jar, JobMode::Hard, job_name)?;
    rest.wait_job_running(&jid, Duration::from_secs(120))?;
    log(
        t0,
        format!(
            "Flink {} at {}: {job_name} RUNNING",
            dist.version(),
            cluster.rest_url()
        ),
    );

    // Configuration, as an operator writes it: /etc/bpmon/*.toml and token files.
    let etc = root.join("etc/bpmon");
    let work = root.join("var");
    std::fs::create_dir_all(&work)?;
    let agent_token = "3f1c0c5e9b7d4a21a6f2c0d8e4b9a7c1";
    let cli_token = "8d2e7f4a1b6c9e03d5a7f1c2b4e6a8d0";
    write_private(
        &etc.join("collector.tokens"),
        &format!("# bpmon tokens\npkg-agent:{agent_token}\ncli:{cli_token}\n"),
    )?;
    write_private(&etc.join("agent.token"), &format!("{agent_token}\n"))?;
    write_private(&etc.join("cli.token"), &format!("{cli_token}\n"))?;
    std::fs::write(
        etc.join("collector.toml"),
        format!(
            "log_format = \"auto\"\nlog_level = \"info\"\nlisten = \"127.0.0.1:0\"\n\
             data_dir = \"{}\"\ntoken_file = \"{}\"\n\n[flink]\nurls = [\"{}\"]\n\
             poll_interval = \"1s\"\n",
            work.join("collector").display(),
            etc.join("collector.tokens").display(),
            cluster.rest_url()
        ),
    )?;

    // The collector: ExecStartPre, then ExecStart, under a notification socket.
    for pre in &collector_pre {
        let out = run(&mut command(pre, &root, &root))?;
        ensure!(
            stdout(&out).trim().ends_with("collector.toml: ok"),
            "{out:?}"
        );
    }
    // As under systemd: a journald listens (a real one, in a private mount namespace), stderr is
    // the stream JOURNAL_STREAM names, and log_format = "auto" (as packaged) picks the journal.
    let journal = Journald::start(&work.join("journald"))?;
    log(
        t0,
        format!("systemd-journald (pid {}) listening", journal.pid()),
    );
    let collector_notify = NotifySocket::bind(work.join("collector.notify"))?;
    let collector_log = work.join("collector.log");
    std::fs::File::create(&collector_log)?;
    let stream = std::fs::metadata(&collector_log)?;
    let mut cmd = journal.inside(command(&collector_start[0], &root, &root));
    collector_notify.apply(&mut cmd);
    cmd.env(
        "JOURNAL_STREAM",
        format!("{}:{}", stream.dev(), stream.ino()),
    );
    // CollectorProc::spawn truncates and reopens the same file: same inode.
    let mut collector = CollectorProc::spawn(cmd, &work.join("collector"), collector_log.clone())?;
    ensure!(std::fs::metadata(&collector_log)?.ino() == stream.ino());
    collector_notify.wait_for("READY=1", Duration::from_secs(10))?;
    log(t0, format!("collector READY at {}", collector.url));

    // The CLI, from the scratch root, with its token.
    let cli = |args: &[&str]| -> Result<Output> {
        run(Command::new(bin("bpmon-collector"))
            .arg("--collector")
            .arg(&collector.url)
            .arg("--token-file")
            .arg(etc.join("cli.token"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG"))
    };
    cli(&[
        "config",
        "set",
        "default",
        "--samples",
        "20",
        "--delay",
        "50ms",
        "--interval",
        "3s",
    ])?;

    // The agent, likewise.
    let agent_config = |etc: &Path, token: &Path, id: &str| -> Result<()> {
        std::fs::create_dir_all(etc)?;
        std::fs::write(
            etc.join("agent.toml"),
            format!(
                "log_format = \"json\"\nlog_level = \"info\"\n\n[collector]\nurl = \"{}\"\n\
                 token_file = \"{}\"\n\n[daemon]\nagent_id = \"{id}\"\nspool_dir = \"{}\"\n\
                 discovery_interval = \"2s\"\nplan_refresh_interval = \"2s\"\n",
                collector.url,
                token.display(),
                work.join(id).join("spool").display()
            ),
        )?;
        Ok(())
    };
    agent_config(&etc, &etc.join("agent.token"), "pkg-agent")?;
    for pre in &agent_pre {
        let out = run(&mut command(pre, &root, &root))?;
        ensure!(stdout(&out).trim().ends_with("agent.toml: ok"), "{out:?}");
    }
    let agent_notify = NotifySocket::bind(work.join("agent.notify"))?;
    let mut cmd = command(&agent_start[0], &root, &root);
    agent_notify.apply(&mut cmd);
    let mut agent = AgentProc::spawn(cmd, &work.join("pkg-agent/spool"), work.join("agent.log"))?;
    agent_notify.wait_for("READY=1", Duration::from_secs(10))?;
    log(t0, "agent READY");

    // HIGH, in `status`.
    let status = wait_for(
        "the source's level HIGH in `status`",
        Duration::from_secs(90),
        || {
            let out = cli(&["--output", "json", "status", job_name])?;
            let s: Value = serde_json::from_slice(&out.stdout)?;
            let high = s["vertices"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["name"] == SOURCE && v["level"] == "high");
            Ok(high.then_some(s))
        },
    )
    .with_context(|| {
        format!(
            "agent log:\n{}\ncollector log:\n{}",
            agent.daemon.log_tail(20),
            collector.daemon.log_tail(20)
        )
    })?;
    let source = status["vertices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == SOURCE)
        .context("source vertex")?;
    let vertex_id = source["vertex_id"]
        .as_str()
        .context("vertex_id")?
        .to_string();
    log(
        t0,
        format!(
            "status: {job_name} / {SOURCE} is HIGH (ratio {})",
            source["ratio"]
        ),
    );
    let table = stdout(&cli(&["status", job_name])?);
    eprintln!("{table}");
    ensure!(table.contains(SOURCE) && table.contains("HIGH"), "{table}");

    // HIGH, in /metrics (no token needed there).
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let metrics = http
        .get(format!("{}/metrics", collector.url))
        .send()?
        .error_for_status()?
        .text()?;
    let series =
        format!("bpmon_vertex_backpressure_level{{job_id=\"{jid}\",vertex_id=\"{vertex_id}\"}}");
    let value = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(str::trim)
        .with_context(|| format!("no {series} in /metrics:\n{metrics}"))?;
    ensure!(value == "2", "{series} = {value}");
    log(t0, format!("/metrics: {series} {value}"));

    // HIGH, in the journal: the collector's events with their fields as journal fields.
    let change = wait_for(
        "the level change in the journal",
        Duration::from_secs(10),
        || {
            let entries = journal.entries("bpmon-collector")?;
            Ok(entries.into_iter().find(|e| {
                e["MESSAGE"] == "back-pressure level of a vertex changed"
                    && e["F_BACKPRESSURE"] == "high"
                    && e["F_JOB"] == job_name
                    && e["F_VERTEX"] == SOURCE
            }))
        },
    )?;
    eprintln!("journal entry: {change}");
    // tracing-journald writes INFO as priority 5 (notice); the entry came from the collector's
    // own process over the native protocol, not through stderr.
    ensure!(
        change["PRIORITY"] == "5" && change["_TRANSPORT"] == "journal",
        "{change}"
    );
    ensure!(
        change["_PID"].as_str() == Some(collector.daemon.pid().to_string().as_str()),
        "{change}"
    );
    ensure!(journal
        .entries("bpmon-collector")?
        .iter()
        .any(|e| e["MESSAGE"] == "bpmon-collector serving" && e["F_TOKENS"] == "2"));
    let stderr = std::fs::read_to_string(&collector_log)?;
    ensure!(
        !stderr.contains("level of a vertex changed"),
        "the collector logged to stderr too:\n{stderr}"
    );
    for l in json_log(&work.join("agent.log"))? {
        ensure!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    log(t0, "journal: the change to HIGH, with its fields");

    // An agent with a wrong token is refused: 401 in its log, and counted by the collector.
    let wrong_etc = work.join("wrong/etc/bpmon");
    let wrong_root = work.join("wrong");
    std::fs::create_dir_all(&wrong_etc)?;
    write_private(&wrong_etc.join("agent.token"), "not-the-token-0000000000\n")?;
    agent_config(
        &wrong_etc,
        &wrong_etc.join("agent.token"),
        "pkg-agent-wrong",
    )?;
    let mut wrong = AgentProc::spawn(
        command(&agent_start[0], &root, &wrong_root),
        &work.join("pkg-agent-wrong/spool"),
        work.join("wrong-agent.log"),
    )?;
    let refused = wait_for("the wrong token refused", Duration::from_secs(30), || {
        let lines = json_log(&wrong.daemon.log)?;
        Ok(lines.into_iter().find(|l| l.to_string().contains("401")))
    })
    .with_context(|| wrong.daemon.log_tail(20))?;
    log(t0, format!("wrong token: the agent says {refused}"));
    let unauthorized = wait_for(
        "bpmon_api_unauthorized_total{reason=\"wrong\"} > 0",
        Duration::from_secs(10),
        || {
            let text = http
                .get(format!("{}/metrics", collector.url))
                .send()?
                .text()?;
            Ok(text.lines().find_map(|l| {
                let v: f64 = l
                    .strip_prefix("bpmon_api_unauthorized_total{reason=\"wrong\"}")?
                    .trim()
                    .parse()
                    .ok()?;
                (v > 0.0).then_some(v)
            }))
        },
    )?;
    log(
        t0,
        format!("collector counted {unauthorized} refused requests"),
    );
    let code = wrong.daemon.stop(Duration::from_secs(15))?;
    ensure!(code == Some(0), "wrong agent exit code {code:?}");
    // Its batches wait in the spool for a token that works.
    ensure!(
        std::fs::read_dir(work.join("pkg-agent-wrong/spool"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".batch")),
        "the refused agent's spool is empty"
    );

    // log_format = "auto" (as packaged) under systemd: JOURNAL_STREAM names stderr, so the
    // collector logs to the journal, or, where no journald listens (a container), says so on
    // stderr and logs there.
    journal_stream_behaviour(&root, &collector_start[0], &cluster.rest_url(), &work)?;
    log(t0, "log_format auto follows JOURNAL_STREAM");

    // systemd's view: watchdog pings every half interval (1 s here) all along, STOPPING on
    // SIGTERM, a clean exit.
    for n in [&agent_notify, &collector_notify] {
        n.wait_for_n("WATCHDOG=1", 3, Duration::from_secs(10))?;
    }
    let code = agent.daemon.stop(Duration::from_secs(20))?;
    ensure!(code == Some(0), "agent exit code {code:?}");
    agent_notify.wait_for("STOPPING=1", Duration::from_secs(2))?;
    let code = collector.daemon.stop(Duration::from_secs(20))?;
    ensure!(code == Some(0), "collector exit code {code:?}");
    collector_notify.wait_for("STOPPING=1", Duration::from_secs(2))?;
    for (name, n) in [("agent", &agent_notify), ("collector", &collector_notify)] {
        let pings = n.count("WATCHDOG=1");
        log(t0, format!("{name}: {pings} watchdog pings"));
        ensure!(pings >= 3, "{name}: {:?}", n.all());
    }
    let agent_lines = json_log(&work.join("agent.log"))?;
    ensure!(agent_lines
        .iter()
        .any(|l| l["message"] == "bpmon-agent stopped"));
    ensure!(journal
        .entries("bpmon-collector")?
        .iter()
        .any(|e| e["MESSAGE"] == "bpmon-collector stopped"));
    journal.stop()?;
    cluster.stop()?;
    std::fs::remove_dir_all(&root)?;
    log(t0, "done");
    Ok(())
}

/// A real systemd-journald, in a private mount namespace so that its sockets and files
/// (`/run/systemd/journal`, `/run/log/journal`, `/var/log/journal`) are scratch tmpfs and the
/// host's logging is untouched. Processes join it with `nsenter -m`; stopped by PID.
struct Journald {
    child: std::process::Child,
}

impl Journald {
    const BINARY: &'static str = "/lib/systemd/systemd-journald";

    fn start(dir: &Path) -> Result<Journald> {
        ensure!(
            Path::new(Self::BINARY).exists(),
            "{} is missing (apt-get install systemd)",
            Self::BINARY
        );
        std::fs::create_dir_all(dir)?;
        let script = format!(
            "set -e\n\
             for d in /run/systemd/journal /run/log /var/log/journal; do\n\
               mkdir -p $d && mount -t tmpfs -o mode=0755 bpmon-test $d\n\
             done\n\
             exec {}\n",
            Self::BINARY
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("journald.out"))?)
            .stderr(std::fs::File::create(dir.join("journald.err"))?)
            .spawn()
            .context("starting systemd-journald under unshare (needs root)")?;
        let journald = Journald { child };
        // Ready once its socket exists inside its namespace.
        let socket = format!("/proc/{}/root/run/systemd/journal/socket", journald.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&socket).exists() {
            ensure!(
                Instant::now() < deadline,
                "systemd-journald did not listen within 10 s: {}",
                std::fs::read_to_string(dir.join("journald.err")).unwrap_or_default()
            );
            sleep(Duration::from_millis(50));
        }
        Ok(journald)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `cmd`, run in the journal's mount namespace (same program, arguments and environment).
    fn inside(&self, cmd: Command) -> Command {
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-m")
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    }

    /// Every entry of `identifier`, as `journalctl -o json` gives them.
    fn entries(&self, identifier: &str) -> Result<Vec<Value>> {
        let mut cmd = Command::new("journalctl");
        cmd.args(["-o", "json", "--no-pager", "-t", identifier]);
        let out = run(&mut self.inside(cmd))?;
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("journalctl: {l}")))
            .collect()
    }

    fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the collector's `ExecStart=` with a config of `log_format = "auto"` and stderr a file
/// that `JOURNAL_STREAM` names, as systemd does.
fn journal_stream_behaviour(
    root: &Path,
    exec_start: &[String],
    flink_url: &str,
    work: &Path,
) -> Result<()> {
    let etc_root = work.join("journal");
    let etc = etc_root.join("etc/bpmon");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("collector.toml"),
        format!(
            "log_format = \"auto\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[flink]\n\
             urls = [\"{flink_url}\"]\n",
            work.join("journal/data").display()
        ),
    )?;
    let log_path = work.join("journal.log");
    // stderr is this file: its device and inode go into JOURNAL_STREAM.
    std::fs::File::create(&log_path)?;
    let meta = std::fs::metadata(&log_path)?;
    let mut cmd = command(exec_start, root, &etc_root);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    // CollectorProc::spawn truncates and reopens the same file: same inode.
    let mut c = CollectorProc::spawn(cmd, &work.join("journal/data"), log_path.clone())?;
    ensure!(std::fs::metadata(&log_path)?.ino() == meta.ino());
    let pid = c.daemon.pid();
    sleep(Duration::from_millis(500));
    c.daemon.stop(Duration::from_secs(10))?;
    let stderr = std::fs::read_to_string(&log_path)?;
    if Path::new("/run/systemd/journal/socket").exists() {
        // journald listens: the lines went there, not to stderr.
        ensure!(!stderr.contains("bpmon-collector serving"), "{stderr}");
        let found = wait_for("the journal entry", Duration::from_secs(10), || {
            let out = run(Command::new("journalctl").arg(format!("_PID={pid}")).args([
                "-t",
                "bpmon-collector",
                "-o",
                "json",
                "--no-pager",
            ]))?;
            Ok(stdout(&out)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["MESSAGE"] == "bpmon-collector serving"))
        })?;
        eprintln!("journal: {found}");
        ensure!(found["SYSLOG_IDENTIFIER"] == "bpmon-collector", "{found}");
    } else {
        // No journald here: the collector chose it (JOURNAL_STREAM), found it missing, said so
        // and logged to stderr instead.
        eprintln!("no journald on this machine; the collector said:\n{stderr}");
        ensure!(
            stderr.contains("cannot log to journald") && stderr.contains("bpmon-collector serving"),
            "{stderr}"
        );
    }
    Ok(())
}
