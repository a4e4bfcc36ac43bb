//! systemd's service protocol (`Type=notify`): READY, STATUS, STOPPING and the watchdog.
//!
//! Everything here is a no-op when the process was not started by systemd with a notification
//! socket (`NOTIFY_SOCKET` unset), and the watchdog only runs when systemd asked for one
//! (`WatchdogSec=` sets `WATCHDOG_USEC`, and `WATCHDOG_PID`, if set, is this process).
//!
//! The watchdog does not ping from a timer alone, which would prove only that a timer fires: each
//! ping follows a [`Probe`] of the daemon's own making (its main loop's [`Heartbeat`] is recent,
//! its database answers). A probe that fails, or does not answer within half the interval, skips
//! the ping; systemd then kills and restarts the service once `WatchdogSec` passes without one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use sd_notify::NotifyState;

/// Whether systemd listens for notifications (`NOTIFY_SOCKET` is set).
pub fn notify_socket() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

fn send(states: &[NotifyState<'_>]) {
    if !notify_socket() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1`: the service is up (for `Type=notify`, `systemctl start` returns now), with a
/// one-line status for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=…`: what `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1`: shutdown has begun (systemd shows "deactivating" and waits for the exit).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    if !notify_socket() {
        return None;
    }
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// A main loop's proof of life: the loop calls [`Heartbeat::beat`] each time round, the watchdog
/// checks [`Heartbeat::age`].
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// ms since `origin` of the last beat.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// A probe that fails when the last beat is older than `max_age`.
    pub fn probe(self: &Arc<Self>, what: &'static str, max_age: Duration) -> Probe {
        let me = Arc::clone(self);
        Box::new(move || {
            let age = me.age();
            Box::pin(async move {
                if age <= max_age {
                    Ok(())
                } else {
                    Err(format!(
                        "{what} has not come round for {:.1}s",
                        age.as_secs_f64()
                    ))
                }
            })
        })
    }
}

/// A liveness check run before each watchdog ping: `Ok` lets the ping go.
pub type Probe =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// Starts the watchdog task when systemd asked for one (else returns `None`): every half
/// interval it runs the probe `make_probe` built for that interval (given half the interval to
/// answer) and sends `WATCHDOG=1` when it succeeds. Abort the task on shutdown.
pub fn spawn_watchdog(
    make_probe: impl FnOnce(Duration) -> Probe,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    tracing::debug!(interval = ?interval, "systemd watchdog enabled");
    let probe = make_probe(interval);
    Some(tokio::spawn(watchdog_loop(interval / 2, probe, || {
        send(&[NotifyState::Watchdog])
    })))
}

/// The watchdog's loop, with the ping as a parameter (tests count pings).
pub async fn watchdog_loop(every: Duration, mut probe: Probe, mut ping: impl FnMut() + Send) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let outcome = match tokio::time::timeout(every, probe()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the liveness check did not answer within {every:?}"
            )),
        };
        match outcome {
            Ok(()) => {
                if failing {
                    tracing::info!("liveness check passes again; watchdog pings resume");
                    failing = false;
                }
                ping();
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e,
                        "liveness check failed: not pinging the systemd watchdog (systemd restarts the service if this lasts)");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn heartbeat_age_grows_until_the_next_beat() {
        let hb = Heartbeat::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(hb.age() >= Duration::from_millis(30));
        hb.beat();
        assert!(hb.age() < Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_only_while_the_probe_passes() {
        let hb = Arc::new(Heartbeat::new());
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&pings);
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(1),
            hb.probe("the test loop", Duration::from_millis(1500)),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // Beating every 500 ms: a ping every second (the first at once).
        for _ in 0..6 {
            hb.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let while_alive = pings.load(Ordering::SeqCst);
        assert!((3..=4).contains(&while_alive), "{while_alive} pings");
        // Silent: at most one more ping (the beat is young for 1.5 s), then none.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = pings.load(Ordering::SeqCst);
        assert!(after - while_alive <= 2, "{after} vs {while_alive}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pings.load(Ordering::SeqCst), after, "no pings while silent");
        // Alive again: pings resume.
        for _ in 0..4 {
            hb.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(pings.load(Ordering::SeqCst) > after);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_counts_as_failed() {
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&pings);
        let probe: Probe = Box::new(|| Box::pin(std::future::pending()));
        let task = tokio::spawn(watchdog_loop(Duration::from_secs(1), probe, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 0);
        task.abort();
    }
}
