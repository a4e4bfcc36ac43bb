//! Where bpmon's binaries log, and how much.
//!
//! - **journald** when systemd started the process: `JOURNAL_STREAM` (`DEVICE:INODE`) names the
//!   stream systemd connected, and it is stderr itself (a child that inherited the variable but
//!   writes elsewhere is not fooled). Fields travel as journal fields (`journalctl -o verbose`).
//! - **human** (tracing's compact text, coloured on a terminal unless `NO_COLOR` is set)
//!   otherwise.
//! - **json**, one object per line, on request.
//!
//! The level comes from `RUST_LOG` if set, else from the config file's `log_level`, else the
//! binary's default (`info` for the daemons, `warn` for the command line); both take
//! tracing's directives (`info`, `warn,bpmon_collector=debug`).

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The format asked for (`--log-format`, `log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, else human.
    #[default]
    Auto,
    Human,
    Json,
    Journald,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Human => "human",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        }
    }
}

/// What the logs are written as, once `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Human { ansi: bool },
    Json,
}

/// What [`select`] looks at: the process's surroundings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// `JOURNAL_STREAM`.
    pub journal_stream: Option<String>,
    /// stderr's device and inode.
    pub stderr: Option<(u64, u64)>,
    pub stderr_is_terminal: bool,
    /// `NO_COLOR` set and not empty (<https://no-color.org>).
    pub no_color: bool,
}

impl Surroundings {
    /// This process's.
    pub fn current() -> Surroundings {
        Surroundings {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            stderr: stderr_id(),
            stderr_is_terminal: std::io::stderr().is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }
}

fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names stderr.
pub fn journal_stream_is(var: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(var), Some((dev, ino))) = (var, stderr) else {
        return false;
    };
    let Some((d, i)) = var.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The output for a requested format in these surroundings.
pub fn select(format: LogFormat, s: &Surroundings) -> Output {
    let human = Output::Human {
        ansi: s.stderr_is_terminal && !s.no_color,
    };
    match format {
        LogFormat::Human => human,
        LogFormat::Json => Output::Json,
        LogFormat::Journald => Output::Journald,
        LogFormat::Auto if journal_stream_is(s.journal_stream.as_deref(), s.stderr) => {
            Output::Journald
        }
        LogFormat::Auto => human,
    }
}

/// Why a level setting cannot be used, if it cannot. Directives are tracing's: a level
/// (`info`), or `target=level`, comma-separated. A bare word that is not a level is refused
/// (tracing would take it for a target and log nothing else).
pub fn check_level(directives: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if directives.trim().is_empty() {
        return Err("empty log level".into());
    }
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level {d:?}: use one of {} or target=level, comma-separated",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::builder()
        .parse(directives)
        .map(|_| ())
        .map_err(|e| format!("invalid log level {directives:?}: {e}"))
}

/// The directives in force, and warnings about the settings passed over: `RUST_LOG` wins over
/// the config file, which wins over the default; an unusable one is skipped.
pub fn directives(
    rust_log: Option<&str>,
    configured: Option<&str>,
    default: &str,
) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    for (source, value) in [("RUST_LOG", rust_log), ("log_level", configured)] {
        let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        match check_level(v) {
            Ok(()) => return (v.to_string(), warnings),
            Err(e) => warnings.push(format!("{source}: {e}; ignored")),
        }
    }
    (default.to_string(), warnings)
}

/// How a binary wants to log.
#[derive(Debug, Clone)]
pub struct LogSettings<'a> {
    /// The journal's SYSLOG_IDENTIFIER.
    pub name: &'a str,
    pub format: LogFormat,
    /// The config file's `log_level`.
    pub level: Option<&'a str>,
    /// Used when neither `RUST_LOG` nor the config sets a level.
    pub default_level: &'a str,
}

/// Installs the global subscriber (once; later calls change nothing) and returns the output
/// chosen. A journald that cannot be reached falls back to human, with a warning.
pub fn init(settings: &LogSettings<'_>) -> Output {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (directives, mut warnings) =
        directives(rust_log.as_deref(), settings.level, settings.default_level);
    let filter = EnvFilter::builder()
        .parse(&directives)
        .unwrap_or_else(|_| EnvFilter::new(settings.default_level));
    let surroundings = Surroundings::current();
    let mut output = select(settings.format, &surroundings);
    let mut journald = None;
    if output == Output::Journald {
        match tracing_journald::layer() {
            Ok(l) => journald = Some(l.with_syslog_identifier(settings.name.to_string())),
            Err(e) => {
                warnings.push(format!(
                    "cannot log to journald ({e}); logging to stderr instead"
                ));
                output = select(LogFormat::Human, &surroundings);
            }
        }
    }
    let (human, json) = match output {
        Output::Human { ansi } => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            ),
            None,
        ),
        Output::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
        Output::Journald => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(human)
        .with(json)
        .try_init()
        .is_ok();
    if installed {
        for w in warnings {
            tracing::warn!("{w}");
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(journal: Option<&str>, stderr: Option<(u64, u64)>, tty: bool) -> Surroundings {
        Surroundings {
            journal_stream: journal.map(str::to_string),
            stderr,
            stderr_is_terminal: tty,
            no_color: false,
        }
    }

    #[test]
    fn auto_is_journald_only_when_stderr_is_the_journal_stream() {
        let systemd = under(Some("8:123456"), Some((8, 123456)), false);
        assert_eq!(select(LogFormat::Auto, &systemd), Output::Journald);
        // Inherited the variable, but stderr was redirected (a child of a service, a pipe).
        let inherited = under(Some("8:123456"), Some((8, 999)), false);
        assert_eq!(
            select(LogFormat::Auto, &inherited),
            Output::Human { ansi: false }
        );
        let other_dev = under(Some("9:123456"), Some((8, 123456)), false);
        assert_eq!(
            select(LogFormat::Auto, &other_dev),
            Output::Human { ansi: false }
        );
        for junk in ["", "8", "8:", ":123456", "x:y", "8:123456:1"] {
            assert_eq!(
                select(
                    LogFormat::Auto,
                    &under(Some(junk), Some((8, 123456)), false)
                ),
                Output::Human { ansi: false },
                "{junk:?}"
            );
        }
        assert_eq!(
            select(LogFormat::Auto, &under(None, Some((8, 123456)), true)),
            Output::Human { ansi: true }
        );
        assert_eq!(
            select(LogFormat::Auto, &under(Some("8:123456"), None, false)),
            Output::Human { ansi: false }
        );
    }

    #[test]
    fn explicit_formats_win_and_no_color_turns_colour_off() {
        let systemd = under(Some("8:1"), Some((8, 1)), true);
        assert_eq!(select(LogFormat::Json, &systemd), Output::Json);
        assert_eq!(
            select(LogFormat::Human, &systemd),
            Output::Human { ansi: true }
        );
        assert_eq!(
            select(LogFormat::Journald, &under(None, None, true)),
            Output::Journald
        );
        let no_color = Surroundings {
            no_color: true,
            ..under(None, None, true)
        };
        assert_eq!(
            select(LogFormat::Auto, &no_color),
            Output::Human { ansi: false }
        );
    }

    #[test]
    fn rust_log_wins_over_the_config_which_wins_over_the_default() {
        assert_eq!(
            directives(Some("debug"), Some("warn"), "info"),
            ("debug".to_string(), vec![])
        );
        assert_eq!(
            directives(None, Some("warn,bpmon_collector=debug"), "info"),
            ("warn,bpmon_collector=debug".to_string(), vec![])
        );
        assert_eq!(directives(Some(" "), None, "info").0, "info");
        let (d, w) = directives(Some("loud"), Some("error"), "info");
        assert_eq!(d, "error");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("RUST_LOG: invalid log level \"loud\""),
            "{w:?}"
        );
    }

    #[test]
    fn levels_are_checked() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,bpmon_agent=debug",
            "hyper=error",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", "verbose", "info,chatty", "bpmon=loud"] {
            assert!(check_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_parse_from_config_values() {
        #[derive(Deserialize)]
        struct C {
            f: LogFormat,
        }
        let c: C = toml::from_str("f = \"journald\"").unwrap();
        assert_eq!(c.f, LogFormat::Journald);
        assert!(toml::from_str::<C>("f = \"syslog\"").is_err());
    }
}
