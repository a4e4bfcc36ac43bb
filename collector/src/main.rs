//! `bpmon-collector`: the central service (`serve`) and the command line that queries it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bpmon_collector::api::ConfigUpdate;
use bpmon_collector::client::CollectorClient;
use bpmon_collector::render::{self, DiagnosisReport};
use bpmon_collector::service::{self, ServeArgs};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "bpmon-collector",
    version,
    about = "bpmon's collector: merges agents' samples with Flink's network metrics (serve), \
             and the command line that asks it which task is the bottleneck, and why"
)]
struct Cli {
    /// The collector to query.
    #[arg(
        long,
        global = true,
        env = "BPMON_COLLECTOR",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    collector: String,
    /// Output format: a table, or the API's JSON view.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,
    /// How long to wait for each answer of the collector.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector service.
    Serve(ServeArgs),
    /// List the jobs the collector knows, with their level.
    Jobs,
    /// A job's level, per vertex and subtask.
    Status {
        /// Job id or name.
        job: String,
    },
    /// Which vertex is the bottleneck of a job, and why.
    Diagnose {
        /// Job id or name.
        job: String,
    },
    /// A job's merged windows over a past period.
    History {
        /// Job id or name.
        job: String,
        /// Only this vertex (id or name).
        #[arg(long)]
        vertex: Option<String>,
        /// How far back, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
    },
    /// Sampling settings, per job or the default.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The agents that have sent batches.
    Agents,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Show the settings a job samples with.
    Get {
        /// Job id or name, or `default` (also `*`) for the default of every job.
        job: String,
    },
    /// Change some of a job's settings (the others keep their value).
    #[command(group(ArgGroup::new("change").required(true).multiple(true)))]
    Set {
        /// Job id or name, or `default` (also `*`) for the default of every job.
        job: String,
        /// Samples per window.
        #[arg(long, group = "change")]
        samples: Option<u32>,
        /// Time between samples, e.g. 50ms.
        #[arg(long, group = "change", value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Time from one window's start to the next, e.g. 60s.
        #[arg(long, group = "change", value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
    },
    /// Drop a job's own settings: it follows the default again.
    Reset {
        /// Job id or name, or `default` (also `*`) for the default of every job.
        job: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs what it does; the CLI only what went wrong.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && no_color_unset())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpmon-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Serve(args) = cli.command {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(service::serve(args));
    }
    let client = CollectorClient::new(&cli.collector, cli.timeout)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(query(&client, cli.command, cli.output))
}

async fn query(client: &CollectorClient, command: Command, output: Output) -> Result<()> {
    let color = output == Output::Table && std::io::stdout().is_terminal() && no_color_unset();
    let now = now_ms();
    let (json, table) = match command {
        Command::Serve(_) => unreachable!("serve is handled before"),
        Command::Jobs => {
            let v = client.jobs().await?;
            (to_json(&v)?, render::jobs(&v, color, now))
        }
        Command::Status { job } => {
            let v = client.status(&job).await?;
            (to_json(&v)?, render::status(&v, color, now))
        }
        Command::Diagnose { job } => {
            let v = client.status(&job).await?;
            (
                to_json(&DiagnosisReport::of(&v))?,
                render::diagnosis(&v, color, now),
            )
        }
        Command::History { job, vertex, since } => {
            let since_ms = now.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            let v = client.history(&job, vertex.as_deref(), since_ms).await?;
            (to_json(&v)?, render::history(&v, color, now))
        }
        Command::Config(c) => {
            let v = match c {
                ConfigCommand::Get { job } => client.config_get(config_scope(&job)).await?,
                ConfigCommand::Set {
                    job,
                    samples,
                    delay,
                    interval,
                } => {
                    let update = ConfigUpdate {
                        samples,
                        delay_ms: delay.map(|d| whole_ms("--delay", d)).transpose()?,
                        interval_ms: interval.map(|d| whole_ms("--interval", d)).transpose()?,
                    };
                    client
                        .config_set_checked(config_scope(&job), &update)
                        .await?
                }
                ConfigCommand::Reset { job } => client.config_reset(config_scope(&job)).await?,
            };
            (to_json(&v)?, render::config(&v, color))
        }
        Command::Agents => {
            let v = client.agents().await?;
            (to_json(&v)?, render::agents(&v, color, now))
        }
    };
    print(match output {
        Output::Json => json,
        Output::Table => table,
    })
}

/// <https://no-color.org>: a `NO_COLOR` that is set and not empty turns colour off.
fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `default` and `*` both name the default settings (`*` in the API).
fn config_scope(job: &str) -> &str {
    if job == "default" {
        "*"
    } else {
        job
    }
}

fn whole_ms(flag: &str, d: Duration) -> Result<u64> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        bail!(
            "{flag} must be a whole number of milliseconds, not {}",
            humantime::format_duration(d)
        );
    }
    u64::try_from(d.as_millis()).with_context(|| format!("{flag} is too long"))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print(text: String) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
