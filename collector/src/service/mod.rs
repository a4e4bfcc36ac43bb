//! `bpmon-collector serve`: the service. Work in progress.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `serve`; each overrides the config file's value.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see packaging/collector.toml.
    #[arg(long, env = "BPMON_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A Flink cluster's REST URL; repeat for several clusters.
    #[arg(long = "flink", value_name = "URL")]
    pub flink: Vec<String>,
    /// Where the database lives [default: /var/lib/bpmon-collector].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How often each Flink cluster is polled [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// How long merged windows are kept [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("serve is not implemented yet")
}
