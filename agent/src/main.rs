//! `bpmon-agent`: the command line of bpmon's TaskManager-side sampler.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bpmon_agent::backends::attach::{AttachOptions, Attacher};
use bpmon_agent::backends::{Backend, BackendKind};
use bpmon_agent::config::AgentConfig;
use bpmon_agent::daemon::{self, DaemonConfig, JvmSelect};
use bpmon_agent::delivery::spool::SpoolLimits;
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::render;
use bpmon_agent::sampling::{self, SampleSettings};
use bpmon_stacks::classify::Classifier;
use bpmon_telemetry::logging::{self, LogFormat, LogSettings};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "bpmon-agent",
    version,
    about = "Samples Flink TaskManager task threads and classifies each sample as blocked (hard back-pressure), waiting (mailbox) or busy"
)]
struct Cli {
    /// Agent configuration file (TOML); see packaging/agent.toml.
    #[arg(long, global = true, env = "BPMON_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: auto (journald under systemd, else human), human, json or journald
    /// [default: auto; config: log_format].
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List the Flink TaskManager JVMs on this host.
    List {
        /// List every JVM, not only TaskManagers.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Sample one JVM's task threads and print per-task counts.
    Sample {
        /// Host pid of the TaskManager JVM.
        #[arg(long)]
        pid: u32,
        /// Number of samples [default: 100, or the config file's].
        #[arg(long)]
        samples: Option<u32>,
        /// Time between samples, e.g. 50ms [default: 50ms, or the config file's].
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// How dumps are taken [default: attach, or the config file's].
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print one raw thread dump of a JVM, as the attach backend receives it.
    Dump {
        #[arg(long)]
        pid: u32,
    },
    /// Check the configuration file (--config or BPMON_AGENT_CONFIG): print every problem with
    /// its line, or "ok"; exit 1 if there is one.
    CheckConfig,
    /// Run the agent daemon: sample every TaskManager JVM on this host, window after window, with
    /// the collector's per-job settings, and ship the reports to the collector through an
    /// on-disk spool. Stops on SIGTERM/SIGINT, spooling the windows in progress.
    Run(Box<RunArgs>),
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    GenerateCompletions {
        #[arg(value_enum)]
        shell: bpmon_telemetry::docs::Shell,
    },
    /// Write the man pages into a directory (for packaging).
    #[command(hide = true)]
    GenerateMan {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Flags of `run`; each overrides the config file's key of the same name.
#[derive(clap::Args)]
struct RunArgs {
    /// Collector base URL, e.g. http://collector:7070 [config: collector.url; required].
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
    /// File holding the bearer token for the collector; must not be world-readable
    /// [config: collector.token_file].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for an https:// collector [config: collector.ca_file].
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Time limit of one request to the collector [default: 10s; config: collector.request_timeout].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    request_timeout: Option<Duration>,
    /// The agent's id at the collector [default: the host name; config: daemon.agent_id].
    #[arg(long)]
    agent_id: Option<String>,
    /// Where report batches wait for the collector [default: /var/lib/bpmon-agent/spool;
    /// config: daemon.spool_dir].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Most batches kept in the spool [default: 10000; config: daemon.spool_max_batches].
    #[arg(long, value_name = "N")]
    spool_max_batches: Option<usize>,
    /// Most bytes kept in the spool [default: 268435456; config: daemon.spool_max_bytes].
    #[arg(long, value_name = "BYTES")]
    spool_max_bytes: Option<u64>,
    /// How often /proc is scanned for TaskManager JVMs [default: 10s;
    /// config: daemon.discovery_interval].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    discovery_interval: Option<Duration>,
    /// How often the sampling plan is fetched from the collector [default: 10s;
    /// config: daemon.plan_refresh_interval].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    plan_refresh_interval: Option<Duration>,
    /// Do not read TaskManagers' logs for their generated resource id; match them by addresses
    /// and ports alone [config: daemon.read_taskmanager_logs].
    #[arg(long)]
    no_read_taskmanager_logs: bool,
    /// Sample only the TaskManager JVM with this host pid (repeatable) [default: every one].
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 [default: off;
    /// config: daemon.metrics_listen].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How TaskManagers are sampled; `jvmti` falls back to `attach` for a JVM that will not load
    /// the in-process sampler [default: attach; config: sampling.backend].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says what it does (collector down and back, JVMs found); one-shot commands
    // speak only of problems.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    match &cli.command {
        Command::GenerateCompletions { shell } => {
            use clap::CommandFactory;
            return bpmon_telemetry::docs::print_completions(Cli::command(), *shell);
        }
        Command::GenerateMan { out } => {
            use clap::CommandFactory;
            return bpmon_telemetry::docs::write_man_pages(Cli::command(), out);
        }
        _ => {}
    }
    if let Command::CheckConfig = cli.command {
        let Some(path) = &cli.config else {
            eprintln!("bpmon-agent: no configuration file to check: pass --config FILE or set BPMON_AGENT_CONFIG");
            return ExitCode::FAILURE;
        };
        return match bpmon_telemetry::check::run(path, AgentConfig::check) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    let config = match &cli.config {
        Some(path) => AgentConfig::load(path),
        None => Ok(AgentConfig::default()),
    };
    let (format, level) = match &config {
        Ok(c) => (c.log_format, c.log_level.as_deref()),
        Err(_) => (LogFormat::Auto, None),
    };
    logging::init(&LogSettings {
        name: "bpmon-agent",
        format: cli.log_format.unwrap_or(format),
        level,
        default_level,
    });
    let result = config
        .map_err(anyhow::Error::from)
        .and_then(|config| run(cli, config));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpmon-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, config: AgentConfig) -> Result<ExitCode> {
    let proc = ProcFs::default();
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::List { all, output } => {
            let jvms = if all {
                proc.jvms()
            } else {
                proc.taskmanagers()
            };
            match output {
                Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&jvms)?)?,
                Output::Table => write!(stdout, "{}", render::jvm_table(&jvms))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sample {
            pid,
            samples,
            delay,
            backend,
            output,
        } => {
            let settings = SampleSettings {
                samples: samples.unwrap_or(config.sampling.samples),
                delay: delay.unwrap_or(config.sampling.delay),
                top_frames: config.sampling.top_frames,
            };
            if settings.samples == 0 {
                bail!("--samples must be at least 1");
            }
            let kind = backend.unwrap_or(config.sampling.backend);
            let jvm = find_jvm(&proc, pid)?;
            let classifier = Classifier::with_user_rules(config.classify.rules.clone());
            let jvmti = config.jvmti.options(&config.attach);
            let mut backend = Backend::open(
                kind,
                &jvm,
                &proc,
                AttachOptions::from(&config.attach),
                &jvmti,
            )
            .with_context(|| {
                format!("cannot sample pid {pid} with the {} backend", kind.as_str())
            })?;
            let report = sampling::sample(&jvm, &mut backend, &classifier, &settings);
            match output {
                Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?,
                Output::Table => write!(stdout, "{}", render::sample_table(&report))?,
            }
            // No dump at all is a failure; a partial run is reported with its errors.
            Ok(if report.cost.dumps == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Dump { pid } => {
            let jvm = find_jvm(&proc, pid)?;
            let mut attacher = Attacher::new(&jvm, proc, AttachOptions::from(&config.attach))?;
            let text = attacher.thread_dump()?;
            stdout.write_all(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            drop(stdout);
            run_daemon(*args, config, proc)
        }
        Command::CheckConfig => unreachable!("check-config is handled before"),
        Command::GenerateCompletions { .. } | Command::GenerateMan { .. } => {
            unreachable!("generate-* are handled before")
        }
    }
}

/// The daemon's settings: flags over the config file over the defaults.
fn daemon_config(args: RunArgs, config: AgentConfig, proc: ProcFs) -> Result<DaemonConfig> {
    let Some(url) = args.collector.or(config.collector.url) else {
        bail!("no collector: pass --collector URL or set collector.url in the config file");
    };
    // Refused now rather than warned about at every plan refresh.
    match reqwest::Url::parse(url.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(u) => bail!(
            "collector URL {url:?} must be http:// or https:// with a host (scheme {:?})",
            u.scheme()
        ),
        Err(e) => bail!("collector URL {url:?} is not a URL: {e}"),
    }
    let host_names = bpmon_agent::discovery::host::host_names();
    let agent_id = match args.agent_id.or(config.daemon.agent_id) {
        Some(id) => id,
        None => bpmon_agent::discovery::host::host_name()
            .context("cannot read the host name for the agent id; pass --agent-id")?,
    };
    if agent_id.trim().is_empty() {
        bail!("the agent id is empty");
    }
    let default_settings = config
        .sampling
        .settings()
        .map_err(|e| anyhow::anyhow!("[sampling]: {e}"))?;
    let discovery_interval = args
        .discovery_interval
        .unwrap_or(config.daemon.discovery_interval);
    let plan_refresh_interval = args
        .plan_refresh_interval
        .unwrap_or(config.daemon.plan_refresh_interval);
    if discovery_interval.is_zero() || plan_refresh_interval.is_zero() {
        bail!("discovery and plan refresh intervals must be above zero");
    }
    let token = match args.token_file.or(config.collector.token_file) {
        Some(path) => Some(bpmon_agent::delivery::access::Token::from_file(&path)?),
        None => None,
    };
    let mut d = DaemonConfig::new(url, agent_id);
    d.access = bpmon_agent::delivery::access::CollectorAccess {
        token,
        ca_file: args.ca_file.or(config.collector.ca_file),
    };
    d.host_names = host_names;
    d.spool_dir = args.spool_dir.unwrap_or(config.daemon.spool_dir);
    d.spool_limits = SpoolLimits {
        max_batches: args
            .spool_max_batches
            .unwrap_or(config.daemon.spool_max_batches),
        max_bytes: args
            .spool_max_bytes
            .unwrap_or(config.daemon.spool_max_bytes),
    };
    d.discovery_interval = discovery_interval;
    d.plan_refresh_interval = plan_refresh_interval;
    d.request_timeout = args
        .request_timeout
        .unwrap_or(config.collector.request_timeout);
    d.default_settings = default_settings;
    d.top_frames = config.sampling.top_frames;
    d.backend = args.backend.unwrap_or(config.sampling.backend);
    d.attach = AttachOptions::from(&config.attach);
    d.jvmti = config.jvmti.options(&config.attach);
    d.classifier = Arc::new(Classifier::with_user_rules(config.classify.rules.clone()));
    d.proc =
        proc.reading_logs(config.daemon.read_taskmanager_logs && !args.no_read_taskmanager_logs);
    if !args.pids.is_empty() {
        d.select = JvmSelect::Pids(args.pids);
    }
    Ok(d)
}

fn run_daemon(args: RunArgs, config: AgentConfig, proc: ProcFs) -> Result<ExitCode> {
    let metrics_listen = args.metrics_listen.or(config.daemon.metrics_listen);
    let d = daemon_config(args, config, proc)?;
    let registry = d.metrics.registry();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        if let Some(addr) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let local = listener.local_addr()?;
            tracing::info!(listen = %local, "serving Prometheus metrics at /metrics");
            tokio::spawn(async move {
                if let Err(e) = bpmon_telemetry::metrics::serve(listener, registry).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        let shutdown = async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stopping: ending the windows in progress");
        };
        daemon::run(d, shutdown).await.map_err(anyhow::Error::from)
    })?;
    tracing::info!(
        batches = summary.batches,
        shipped = summary.shipped,
        left_in_spool = summary.left_in_spool,
        "bpmon-agent stopped"
    );
    // Let the runtime's blocking threads go without waiting for a dump that hangs.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

fn find_jvm(proc: &ProcFs, pid: u32) -> Result<bpmon_agent::discovery::JvmProcess> {
    if !proc.pid_dir(pid).exists() {
        bail!("no process with pid {pid}");
    }
    match proc.jvm(pid) {
        Some(j) => Ok(j),
        None => bail!("pid {pid} is not a Java process (or its /proc entries are not readable)"),
    }
}
