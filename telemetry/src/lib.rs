//! What bpmon's two binaries share to be run and watched: [`logging`] (human, JSON or journald),
//! [`metrics`] (Prometheus exposition) and [`check`] (`check-config`: every problem of a
//! configuration file, with its line); [`systemd`] (`Type=notify`: READY, STOPPING, the watchdog)
//! and [`docs`] (shell completions and man pages for the packages).

pub mod check;
pub mod docs;
pub mod logging;
pub mod metrics;
pub mod systemd;
