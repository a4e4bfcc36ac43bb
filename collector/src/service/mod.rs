//! `bpmon-collector serve`: the service. It polls each Flink cluster's REST API, takes agents'
//! batches (placing each task thread, merging it with its subtask's metrics, storing the window),
//! answers the query API and prunes old windows. Pure parts: [`placement`], [`plan`], [`status`],
//! [`levels`], [`bottlenecks`]; the running collector ([`state`]) composes [`writer`] (the store's writing side),
//! [`clusters`] (polling), [`misplaced`], [`settings`] and [`status_cache`]; agents come in
//! through [`ingest`], queries through [`queries`] and [`routes`], Prometheus through
//! [`metrics`] (the counters) and [`scrape`]; this module does the wiring.

pub mod bottlenecks;
pub mod clusters;
pub mod config;
pub mod episodes;
pub mod ingest;
pub mod levels;
mod locks;
pub mod metrics;
pub mod misplaced;
pub mod placement;
pub mod plan;
pub mod queries;
pub mod routes;
pub mod scrape;
pub mod settings;
pub mod state;
pub mod status;
pub mod status_cache;
pub mod timeline;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::auth::Auth;
use crate::flink_rest::FlinkRestClient;
use crate::server::{self, IngestLimits};
use crate::store::Store;

use config::StorageConfig;

pub use config::CollectorConfig;
pub use ingest::Service;
pub use state::Collector;

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
    /// Tokens the API accepts (config: token_file). Set from the global `--token-file`
    /// (`BPMON_TOKEN_FILE`), which `serve` shares with the query commands.
    #[arg(skip)]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key) [config: tls.cert_file].
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [config: tls.key_file].
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
        if let Some(t) = &self.token_file {
            c.token_file = Some(t.clone());
            c.auth.token_file = None;
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            c.tls.cert_file = Some(cert.clone());
            c.tls.key_file = Some(key.clone());
        }
        c.token_file().map_err(anyhow::Error::msg)?;
        if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
            bail!("[tls] needs both cert_file and key_file (or --tls-cert and --tls-key)");
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
    let collector = Arc::new(Collector::new(
        writer,
        reader,
        clients,
        config.flink.poll_interval,
    )?);
    collector
        .metrics()
        .set_per_subtask(config.metrics.per_subtask);
    Ok(collector)
}

/// The whole HTTP API, agents' side and the query side, and the web view on top of it.
pub fn app(collector: Arc<Collector>, config: &CollectorConfig) -> axum::Router {
    let limits = IngestLimits {
        max_body_bytes: config.ingest.max_body_bytes,
        max_decoded_bytes: config.ingest.max_decoded_bytes,
    };
    let agents_side = metrics::count_rejections(
        server::router(Service(Arc::clone(&collector)), limits),
        collector.shared_metrics(),
    );
    // What people and Prometheus read is gzipped for clients that ask (browsers, Prometheus):
    // the page goes from 38.8 KB to about 13 KB. Agents' answers are a few bytes and stay as they
    // are.
    let readers_side = routes::router(collector)
        .merge(crate::web::router())
        .layer(tower_http::compression::CompressionLayer::new());
    agents_side.merge(readers_side)
}

/// How often windows past the full-resolution span are rolled up (each run merges what aged
/// since the last one: ten minutes' worth).
const ROLLUP_EVERY: Duration = Duration::from_secs(600);

/// Starts the pollers, the bottleneck check, the rollup and the pruner in the background; abort
/// them to stop.
pub fn spawn_background(
    collector: &Arc<Collector>,
    storage: &StorageConfig,
) -> Vec<tokio::task::JoinHandle<()>> {
    let retention = storage.retention;
    let mut tasks = Vec::new();
    for i in 0..collector.cluster_count() {
        let c = Arc::clone(collector);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(c.poll_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                c.poll(i).await;
            }
        }));
    }
    let c = Arc::clone(collector);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(bottlenecks::CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            c.check_bottlenecks().await;
        }
    }));
    if !storage.full_resolution.is_zero() {
        let full_resolution = storage.full_resolution;
        let c = Arc::clone(collector);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ROLLUP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match c.roll_up(full_resolution, retention).await {
                    Ok(r) if r.windows > 0 || r.skipped > 0 => tracing::info!(
                        windows = r.windows,
                        into = r.merged,
                        skipped = r.skipped,
                        "rolled up old windows into one per subtask and minute"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "rolling up old windows failed"),
                }
            }
        }));
    }
    let c = Arc::clone(collector);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match c.prune(retention).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old windows"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "pruning failed"),
            }
        }
    }));
    tasks
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.resolve()?;
    let auth = Arc::new(load_auth(&config)?);
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let collector = build(&config)?;
    collector.metrics().set_auth(Arc::clone(&auth));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    warn_if_exposed(local, &auth, tls.is_some());
    let background = spawn_background(&collector, &config.storage);
    let flink: Vec<String> = config
        .flink
        .urls
        .iter()
        .map(|u| crate::flink_rest::redact_credentials(u))
        .collect();
    tracing::info!(listen = %local, flink = ?flink, data_dir = %config.data_dir.display(),
        tls = tls.is_some(), tokens = auth.token_count(), "bpmon-collector serving");
    // Tests and scripts read the bound address from here (the port may have been 0).
    println!("listening on {local}");
    // Under systemd (Type=notify): ready now that it listens; the watchdog pings while the
    // runtime, the store writer and the database answer.
    let watched = Arc::clone(&collector);
    let watchdog = bpmon_telemetry::systemd::spawn_watchdog(move |_| {
        Box::new(move || {
            let c = Arc::clone(&watched);
            Box::pin(async move { c.health().await })
        })
    });
    bpmon_telemetry::systemd::ready(&format!(
        "listening on {local}, watching {} Flink cluster(s)",
        config.flink.urls.len()
    ));
    let app = crate::auth::protect(app(Arc::clone(&collector), &config), Arc::clone(&auth))
        // A client trickling its body (or a store that does not answer) gets 408, which agents
        // retry, instead of holding a connection for ever.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            config.http.request_timeout,
        ));
    let counters = Arc::new(crate::listen::ConnectionCounters::default());
    collector.metrics().set_connections(Arc::clone(&counters));
    crate::listen::serve(
        listener,
        tls,
        app,
        config.http.limits(),
        counters,
        shutdown_signal(),
    )
    .await;
    // In-flight requests are answered; stop the rest and close the database.
    for task in background.into_iter().chain(watchdog) {
        task.abort();
        let _ = task.await;
    }
    match Arc::try_unwrap(collector) {
        Ok(c) => c
            .close()
            .context("closing the database")
            .inspect(|()| tracing::debug!("database closed"))?,
        Err(_) => tracing::warn!("the collector is still in use at shutdown; database not closed"),
    }
    tracing::info!("bpmon-collector stopped");
    Ok(())
}

/// The token check configured (`token_file`), or none.
pub fn load_auth(config: &CollectorConfig) -> Result<Auth> {
    match config.token_file().map_err(anyhow::Error::msg)? {
        Some(path) => Ok(Auth::from_file(path)?),
        None => Ok(Auth::disabled()),
    }
}

/// Says so when the API is reachable from other hosts without tokens, or tokens travel in clear.
fn warn_if_exposed(local: SocketAddr, auth: &Auth, tls: bool) {
    if local.ip().is_loopback() {
        return;
    }
    if !auth.enabled() {
        tracing::warn!(listen = %local,
            "the API listens beyond loopback WITHOUT authentication: anyone who can reach it can \
             send reports and change settings; set token_file (--token-file)");
    } else if !tls {
        tracing::warn!(listen = %local,
            "the API listens beyond loopback over plain HTTP: bearer tokens travel in clear; \
             set [tls] cert_file and key_file (--tls-cert, --tls-key)");
    }
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
    bpmon_telemetry::systemd::stopping("stopping: answering the requests in flight");
}
