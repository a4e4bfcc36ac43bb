//! `bpmon-collector serve`: the service. It polls each Flink cluster's REST API, takes agents'
//! batches (placing each task thread, merging it with its subtask's metrics, storing the window),
//! answers the query API and prunes old windows. Pure parts: [`placement`], [`plan`], [`status`];
//! state and I/O: [`state`], [`routes`] and this module's wiring.

pub mod config;
pub mod placement;
pub mod plan;
pub mod routes;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::flink_rest::FlinkRestClient;
use crate::server::{self, IngestLimits};
use crate::store::Store;

pub use config::CollectorConfig;
pub use state::{Collector, Service};

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

impl ServeArgs {
    /// The config file's settings with the flags applied.
    pub fn resolve(&self) -> Result<CollectorConfig> {
        let mut c = match &self.config {
            Some(path) => CollectorConfig::load(path)?,
            None => CollectorConfig::default(),
        };
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if !self.flink.is_empty() {
            c.flink.urls = self.flink.clone();
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(p) = self.poll_interval {
            c.flink.poll_interval = p;
        }
        if let Some(r) = self.retention {
            c.storage.retention = r;
        }
        if c.flink.urls.is_empty() {
            bail!("no Flink cluster to watch: give --flink URL or [flink] urls in the config file");
        }
        if c.flink.poll_interval < Duration::from_millis(100) {
            bail!("poll interval {:?} is too short", c.flink.poll_interval);
        }
        Ok(c)
    }
}

/// Builds the collector: opens the store and a client per cluster.
pub fn build(config: &CollectorConfig) -> Result<Arc<Collector>> {
    let writer = Store::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let reader = Store::open(&config.data_dir)?;
    let clients = config
        .flink
        .urls
        .iter()
        .map(|u| FlinkRestClient::new(u, config.flink.timeout))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Collector::new(
        writer,
        reader,
        clients,
        config.flink.poll_interval,
    )?))
}

/// The whole HTTP API: agents' side and the query side.
pub fn app(collector: Arc<Collector>, config: &CollectorConfig) -> axum::Router {
    let limits = IngestLimits {
        max_body_bytes: config.ingest.max_body_bytes,
        max_decoded_bytes: config.ingest.max_decoded_bytes,
    };
    server::router(Service(Arc::clone(&collector)), limits).merge(routes::router(collector))
}

/// Starts the pollers and the pruner in the background.
pub fn spawn_background(collector: &Arc<Collector>, retention: Duration) {
    for i in 0..collector.cluster_count() {
        let c = Arc::clone(collector);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(c.poll_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                c.poll(i).await;
            }
        });
    }
    let c = Arc::clone(collector);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match c.prune(retention).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old windows"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "pruning failed"),
            }
        }
    });
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.resolve()?;
    let collector = build(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    spawn_background(&collector, config.storage.retention);
    tracing::info!(listen = %local, flink = ?config.flink.urls, data_dir = %config.data_dir.display(), "bpmon-collector serving");
    // Tests and scripts read the bound address from here (the port may have been 0).
    println!("listening on {local}");
    axum::serve(listener, app(Arc::clone(&collector), &config))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    tracing::info!("bpmon-collector stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
