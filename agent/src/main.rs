//! `bpmon-agent`: the command line of bpmon's TaskManager-side sampler.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bpmon_agent::attach::{AttachOptions, Attacher};
use bpmon_agent::config::AgentConfig;
use bpmon_agent::discovery::ProcFs;
use bpmon_agent::render;
use bpmon_agent::sampler::{self, Backend, BackendKind, SampleSettings};
use bpmon_stacks::classify::Classifier;
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpmon-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = match &cli.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
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
            let mut backend = Backend::open(kind, &jvm, &proc, AttachOptions::from(&config.attach))
                .with_context(|| {
                    format!("cannot sample pid {pid} with the {} backend", kind.as_str())
                })?;
            let report = sampler::sample(&jvm, &mut backend, &classifier, &settings);
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
    }
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
