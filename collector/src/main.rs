//! `bpmon-collector`: the central service. Not built yet: this binary only says so.

use clap::Parser;

/// Merges bpmon agents' samples with Flink's network metrics (not implemented yet).
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("bpmon-collector is not implemented yet; see the project's issues")
}
