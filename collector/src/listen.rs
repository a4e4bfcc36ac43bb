//! The collector's HTTP listener, with its bounds: at most `max_connections` open at once, a
//! request head (or, on an idle keep-alive connection, the next one) must arrive within
//! `header_timeout`, a TLS handshake within `HANDSHAKE_TIMEOUT`. A client that half-sends requests
//! or keeps thousands of idle connections open therefore cannot exhaust the collector's file
//! descriptors or starve the Flink poller of them.
//!
//! HTTP/1.1 only: every client of the API (agents, the CLI, Prometheus) speaks it, and the
//! header timeout exists only there.
//!
//! At the connection bound, a new connection is accepted and closed at once, counted in
//! `bpmon_connections_refused_total` and logged (at most once a minute), rather than left in the
//! kernel's backlog where the client cannot tell a busy collector from a dead one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// How long a TLS client may take over its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections get to finish their requests once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's bounds (`[http]` in the config file).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// Time to receive a whole request head; also how long an idle keep-alive connection stays
    /// open.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(20),
        }
    }
}

/// What the listener counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed on arrival because `max_connections` were open.
    pub refused: AtomicU64,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    app: axum::Router,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(TlsAcceptor::from);
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: the condition passes or it does not;
                    // either way spinning on it helps nobody.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            refusals.note(peer, limits.max_connections);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let counters = Arc::clone(&counters);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::Relaxed);
            match acceptor {
                None => serve_connection(tcp, peer, app, limits, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them"
        );
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(connection).await {
        // Timeouts, resets and malformed heads: the client's business, not an operator's.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Logs refusals at most once a minute, with how many there were since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, max: usize) {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(%peer, refused = self.since_last, max_connections = max,
            "connection limit reached: closing new connections (raise [http] max_connections, \
             or find who holds them)");
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}
