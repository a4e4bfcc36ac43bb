//! Network namespaces for TaskManagers that run the way Docker's bridge network runs them.
//!
//! [`Netns::create`] makes the `ip netns` namespace `bpmon-<pid>-<n>` (`<pid>` is the creating
//! process) joined to the host by a veth pair: the host side `bpmon<n>h` has `198.18.<n>.1/30`,
//! the namespace side `eth0` has `198.18.<n>.2/30`, and `lo` is up inside. There is no default
//! route inside: from the namespace only the host side's address is reachable, so nothing a
//! process in it does can reach another address. (198.18.0.0/15 is the benchmarking range of
//! RFC 2544, never routed on the internet.)
//!
//! `<n>` is probed: the first one, counted from a per-process start, whose host interface does
//! not exist and whose /30 holds no host address. Creating the host interface is the atomic
//! claim, so parallel test processes (and leftovers of crashed ones) never share a `<n>`.
//!
//! Dropping a [`Netns`] deletes it (the host-side interface, which takes the pair with it, then
//! `ip netns del`). Stop the processes inside first: the namespace itself only goes away once
//! the last of them has exited. [`prune_leftovers`] deletes namespaces of this naming whose
//! creating process is gone and which no process uses any more.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::process::is_alive;

/// Name prefix of every namespace the harness creates.
pub const NETNS_PREFIX: &str = "bpmon-";

/// A network namespace with a veth pair to the host; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    info: NetnsInfo,
    deleted: bool,
}

/// Where a namespace is: its name and both ends of its veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetnsInfo {
    /// `ip netns` name (`bpmon-<pid>-<n>`).
    pub name: String,
    /// Host side of the veth pair (`bpmon<n>h`).
    pub host_if: String,
    /// `198.18.<n>.1`, on the host side.
    pub host_ip: Ipv4Addr,
    /// `198.18.<n>.2`, on `eth0` inside the namespace.
    pub ns_ip: Ipv4Addr,
}

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// Creates a namespace with a free `<n>` (see the module doc).
    pub fn create() -> Result<Self> {
        let me = std::process::id();
        let start = (me as usize)
            .wrapping_mul(7)
            .wrapping_add(NETNS_COUNTER.fetch_add(1, Ordering::Relaxed) * 13);
        let mut last_error = String::from("every 198.18.<n>.0/30 is taken");
        for k in 0..254 {
            let n = ((start + k) % 254 + 1) as u8;
            let host_if = format!("bpmon{n}h");
            if Path::new("/sys/class/net").join(&host_if).exists() || subnet_in_use(n)? {
                continue;
            }
            let name = format!("{NETNS_PREFIX}{me}-{n}");
            if let Err(e) = ip(&["netns", "add", &name]) {
                last_error = format!("{e:#}");
                continue;
            }
            let mut ns = Netns {
                info: NetnsInfo {
                    name: name.clone(),
                    host_if: host_if.clone(),
                    host_ip: Ipv4Addr::new(198, 18, n, 1),
                    ns_ip: Ipv4Addr::new(198, 18, n, 2),
                },
                deleted: false,
            };
            // The claim: fails if another process created this host interface meanwhile.
            if let Err(e) = ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ]) {
                last_error = format!("{e:#}");
                ns.delete_quietly();
                continue;
            }
            ns.configure()
                .with_context(|| format!("setting up network namespace {name}"))?;
            return Ok(ns);
        }
        bail!("no free 198.18.<n>.0/30 for a TaskManager namespace: {last_error}")
    }

    fn configure(&self) -> Result<()> {
        let NetnsInfo {
            name,
            host_if,
            host_ip,
            ns_ip,
        } = &self.info;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", name, "link", "set", "eth0", "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn info(&self) -> &NetnsInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        self.info.host_ip
    }

    pub fn ns_ip(&self) -> Ipv4Addr {
        self.info.ns_ip
    }

    /// PIDs (as seen from here) of the processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        namespace_pids(&self.info.name)
    }

    /// Deletes the host-side interface (and with it the pair) and the namespace's name. Safe to
    /// call twice.
    pub fn delete(&mut self) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        // Already gone if the namespace died first; that is fine.
        let _ = ip(&["link", "del", &self.info.host_if]);
        ip(&["netns", "del", &self.info.name])?;
        Ok(())
    }

    fn delete_quietly(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("[bpmon-e2e] {e:#}");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete_quietly();
    }
}

/// Runs `ip <args>`; its stderr in the error.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether any host interface has an address in `198.18.<n>.0/30`.
fn subnet_in_use(n: u8) -> Result<bool> {
    let out = ip(&["-4", "-o", "addr", "show"])?;
    Ok(out.split_whitespace().any(|w| {
        let addr = w.split('/').next().unwrap_or("");
        addr.parse::<Ipv4Addr>().is_ok_and(|a| {
            let o = a.octets();
            o[0] == 198 && o[1] == 18 && o[2] == n && o[3] < 4
        })
    }))
}

/// The names `ip netns list` shows.
pub fn list() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// PIDs in namespace `name` (empty if it does not exist).
pub fn namespace_pids(name: &str) -> Vec<u32> {
    ip(&["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The creating PID in a name of ours (`bpmon-<pid>-<n>`).
fn creator(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u8>().ok()?;
    pid.parse().ok()
}

/// Deletes namespaces named `bpmon-<pid>-<n>` whose creator is gone and that no process uses.
pub fn prune_leftovers() {
    let Ok(names) = list() else {
        return;
    };
    for name in names {
        let Some(pid) = creator(&name) else {
            continue;
        };
        if is_alive(pid) || !namespace_pids(&name).is_empty() {
            continue;
        }
        let n = name.rsplit('-').next().unwrap_or("");
        let _ = ip(&["link", "del", &format!("bpmon{n}h")]);
        match ip(&["netns", "del", &name]) {
            Ok(_) => eprintln!("[bpmon-e2e] removed leftover network namespace {name}"),
            Err(e) => eprintln!("[bpmon-e2e] {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_from_name() {
        assert_eq!(creator("bpmon-1234-17"), Some(1234));
        assert_eq!(creator("bpmon-1234-300"), None);
        assert_eq!(creator("bpmon-x-17"), None);
        assert_eq!(creator("docker-1234-17"), None);
    }
}
