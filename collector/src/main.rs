//! `bpmon-collector`: the central service (`serve`) and the command line that queries it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bpmon_collector::api::ConfigUpdate;
use bpmon_collector::client::{ClientSecurity, CollectorClient};
use bpmon_collector::clock::now_ms;
use bpmon_collector::render::{self, DiagnosisReport};
use bpmon_collector::service::{self, CollectorConfig, ServeArgs};
use bpmon_proto::Scope;
use bpmon_telemetry::logging::{self, LogFormat, LogSettings};
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
    /// Bearer token file. Queries send its one token; `serve` accepts the tokens it lists (one
    /// per line, optionally `name:token`) [serve config: token_file]. Must not be world-readable.
    #[arg(long, global = true, env = "BPMON_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for an https:// collector, besides the public roots.
    #[arg(long, global = true, env = "BPMON_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Log format: auto (journald under systemd, else human), human, json or journald
    /// [default: auto; serve config: log_format].
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
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
    /// Check a configuration file: print every problem with its line, or "ok"; exit 1 if
    /// there is one.
    CheckConfig {
        /// The file to check; see packaging/collector.toml.
        #[arg(long, env = "BPMON_COLLECTOR_CONFIG")]
        config: Option<PathBuf>,
    },
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
    /// A job's back-pressure episodes: per vertex, when it started and ended, how bad it got,
    /// and the bottleneck with its cause at the time.
    Episodes {
        /// Job id or name.
        job: String,
        /// How far back, e.g. 30m, 6h, 2d.
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        since: Duration,
    },
    /// Sampling settings, per job or the default.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The agents that have sent batches.
    Agents,
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
        /// Read stacks at every n-th sample only; the in-process sampler reads Flink's timers
        /// at the others, the dump backends skip them.
        #[arg(long, group = "change")]
        stacks_every: Option<u32>,
        /// Watch continuously: back-to-back 2 s windows, Flink's timers read every 100 ms,
        /// stacks every second (best with `bpmon-agent --backend jvmti`). Other flags given
        /// with it change that.
        #[arg(long, group = "change", conflicts_with = "classic")]
        continuous: bool,
        /// Back to Flink's classic monitor: 100 samples 50 ms apart every minute, stacks at
        /// each. Other flags given with it change that.
        #[arg(long, group = "change")]
        classic: bool,
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
    if let Command::CheckConfig { config } = &cli.command {
        let Some(path) = config else {
            eprintln!("bpmon-collector: no configuration file to check: pass --config FILE or set BPMON_COLLECTOR_CONFIG");
            return ExitCode::FAILURE;
        };
        return match bpmon_telemetry::check::run(path, CollectorConfig::check) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    // `serve` logs as its config file says; a file that does not load is reported by `serve`.
    let config = match &cli.command {
        Command::Serve(args) => args
            .config
            .as_deref()
            .and_then(|p| CollectorConfig::load(p).ok()),
        _ => None,
    };
    logging::init(&LogSettings {
        name: "bpmon-collector",
        format: cli
            .log_format
            .or(config.as_ref().map(|c| c.log_format))
            .unwrap_or_default(),
        level: config.as_ref().and_then(|c| c.log_level.as_deref()),
        default_level,
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpmon-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Serve(mut args) = cli.command {
        args.token_file = cli.token_file;
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(service::serve(args));
    }
    let security = ClientSecurity {
        token: cli
            .token_file
            .as_deref()
            .map(bpmon_collector::auth::read_client_token)
            .transpose()?,
        ca_file: cli.ca_file,
    };
    let client = CollectorClient::with_security(&cli.collector, cli.timeout, &security)?;
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
        Command::CheckConfig { .. } => unreachable!("check-config is handled before"),
        Command::GenerateCompletions { .. } | Command::GenerateMan { .. } => {
            unreachable!("generate-* are handled before")
        }
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
        Command::Episodes { job, since } => {
            let since_ms = now.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            let v = client.episodes(&job, since_ms).await?;
            (to_json(&v)?, render::episodes(&v, color, now))
        }
        Command::Config(c) => {
            let v = match c {
                ConfigCommand::Get { job } => client.config_get(&config_scope(&job)).await?,
                ConfigCommand::Set {
                    job,
                    samples,
                    delay,
                    interval,
                    stacks_every,
                    continuous,
                    classic,
                } => {
                    let update = ConfigUpdate {
                        continuous: match (continuous, classic) {
                            (true, _) => Some(true),
                            (_, true) => Some(false),
                            _ => None,
                        },
                        samples,
                        delay_ms: delay.map(|d| whole_ms("--delay", d)).transpose()?,
                        interval_ms: interval.map(|d| whole_ms("--interval", d)).transpose()?,
                        stacks_every,
                    };
                    client
                        .config_set_checked(&config_scope(&job), &update)
                        .await?
                }
                ConfigCommand::Reset { job } => client.config_reset(&config_scope(&job)).await?,
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

/// `default` and `*` both name the default settings; anything else a job, by id or name.
fn config_scope(job: &str) -> Scope {
    Scope::parse(job)
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
