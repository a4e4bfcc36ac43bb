//! The names this host goes by, for the collector to find its TaskManagers in Flink's REST API
//! (which names a TaskManager by host name or address): the host name and every non-loopback
//! IP address of its interfaces.

use std::net::IpAddr;

/// The host name (`uname -n`), when it can be read.
pub fn host_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

/// The host name, then the host's non-loopback, non-link-local addresses (IPv4 first), without
/// duplicates. Interfaces that cannot be listed only make the list shorter.
pub fn host_names() -> Vec<String> {
    let mut out: Vec<String> = host_name().into_iter().collect();
    let mut addrs: Vec<IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(ifaces) => ifaces
            .filter_map(|i| {
                let a = i.address?;
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .filter(|ip| useful(*ip))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list network interfaces");
            Vec::new()
        }
    };
    addrs.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addrs.dedup();
    for ip in addrs {
        let s = ip.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Whether an address can name this host to others.
fn useful(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified() && !v4.is_link_local(),
        // fe80::/10 needs an interface scope to mean anything.
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_are_left_out() {
        assert!(!useful("127.0.0.1".parse().unwrap()));
        assert!(!useful("::1".parse().unwrap()));
        assert!(!useful("fe80::1".parse().unwrap()));
        assert!(!useful("169.254.3.4".parse().unwrap()));
        assert!(useful("10.1.2.3".parse().unwrap()));
        assert!(useful("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn this_host_has_a_name_first_and_no_loopback() {
        let names = host_names();
        assert_eq!(names.first(), host_name().as_ref());
        assert!(
            !names.iter().any(|n| n == "127.0.0.1" || n == "::1"),
            "{names:?}"
        );
    }
}
