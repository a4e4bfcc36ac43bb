//! `web-shots`: screenshots of a running collector's web view, taken in a headless Chromium:
//! the jobs page, and the page of a job (by default the back-pressured job with a bottleneck
//! that comes first on the jobs page). Used by `scripts/screenshots` on a live demo cluster.
//!
//! ```text
//! cargo run -p bpmon-e2e --bin web-shots -- --collector http://127.0.0.1:7070 --out docs/screenshots
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bpmon_e2e::browser::Browser;
use bpmon_e2e::webview::{console_errors, job_page, jobs_page, shoot};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Screenshots of a collector's web view: the jobs page and a job's page.")]
struct Args {
    /// The collector's address.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Where the PNGs go (jobs.png, job.png).
    #[arg(long, default_value = "docs/screenshots")]
    out: PathBuf,
    /// The job to show (id); default: the first back-pressured job with a bottleneck.
    #[arg(long)]
    job: Option<String>,
    /// How many jobs the jobs page must list before it is taken.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let collector = args.collector.trim_end_matches('/');
    let browser = Browser::start(1400, 900)?;
    let rows = jobs_page(&browser, collector, args.jobs)?;
    shoot(&browser, &args.out.join("jobs.png"))?;
    eprintln!("web-shots: jobs page, {} rows", rows.len());
    let job = match args.job {
        Some(j) => j,
        None => rows
            .iter()
            .find(|r| r.text.contains("HIGH") || r.text.contains("LOW"))
            .or(rows.first())
            .map(|r| r.job.clone())
            .context("the jobs page lists no job")?,
    };
    let tall = Browser::start(1400, 1900)?;
    let page = job_page(&tall, collector, &job)?;
    shoot(&tall, &args.out.join("job.png"))?;
    eprintln!(
        "web-shots: job {job}: bottleneck {:?} ({}), {} timeline points, {} flame frames",
        page.bottleneck,
        page.cause,
        page.points,
        page.frames.len()
    );
    let errors: Vec<String> = console_errors(&browser)?
        .into_iter()
        .chain(console_errors(&tall)?)
        .collect();
    if !errors.is_empty() {
        bail!("the browser console shows errors: {errors:#?}");
    }
    Ok(())
}
