//! A TaskManager JVM's network identity, read inside its own namespaces: the interface addresses
//! of its network namespace (`/proc/PID/net/fib_trie`, `/proc/PID/net/if_inet6`), the TCP sockets
//! it listens on there (`/proc/PID/net/tcp*` × its socket fds), and the host name of its UTS
//! namespace. The collector compares these with the host and ports a TaskManager registered in
//! Flink, so a JVM in a container (its own IP, its own host name) or one registered as
//! `localhost` is found without any configuration. The parsers are pure; the readers only read.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bpmon_proto::JvmNetwork;

/// The addresses the fib trie marks as this namespace's own (`/32 host LOCAL`).
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last.take() {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The addresses of `/proc/net/if_inet6` (32 hex digits first on each line).
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(a) = hex_ipv6(hex) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

fn hex_ipv6(hex: &str) -> Option<Ipv6Addr> {
    (hex.len() == 32).then_some(())?;
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// Listening sockets in a `/proc/PID/net/tcp` or `tcp6` table: (socket inode, bound address).
/// The kernel prints each 32-bit word of an address in host byte order.
pub fn parse_listening_sockets(table: &str) -> Vec<(u64, SocketAddr)> {
    const TCP_LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != TCP_LISTEN {
                return None;
            }
            let (addr, port) = f[1].rsplit_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            // A dual-stack socket shows IPv4 addresses as `::ffff:a.b.c.d`: name them as IPv4.
            let ip = kernel_hex_ip(addr)?.to_canonical();
            let inode = f[9].parse().ok()?;
            Some((inode, SocketAddr::new(ip, port)))
        })
        .collect()
}

fn kernel_hex_ip(hex: &str) -> Option<IpAddr> {
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Reads a JVM's network identity under a `/proc`-like root. Parts that cannot be read leave
/// their field empty: the collector then says which evidence was missing.
pub fn read(proc_root: &Path, pid: u32) -> JvmNetwork {
    let dir = proc_root.join(pid.to_string());
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("net/fib_trie")) {
        addresses.extend(parse_fib_trie_local(&text).into_iter().map(IpAddr::V4));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("net/if_inet6")) {
        addresses.extend(parse_if_inet6(&text).into_iter().map(IpAddr::V6));
    }
    addresses.dedup();
    JvmNetwork {
        addresses,
        listen: listening(&dir),
        host_name: uts_host_name(proc_root, pid),
        host_netns: same_namespace(proc_root, pid, "net"),
    }
}

/// The listening sockets of the namespace that are among `pid`'s open fds.
fn listening(pid_dir: &Path) -> Vec<SocketAddr> {
    let mut listening = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(pid_dir.join(table)) {
            listening.extend(parse_listening_sockets(&text));
        }
    }
    if listening.is_empty() {
        return Vec::new();
    }
    let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut out: Vec<SocketAddr> = listening
        .into_iter()
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(_, a)| a)
        .collect();
    out.sort_by_key(|a| (a.port(), a.is_ipv6(), a.ip()));
    out.dedup();
    out
}

/// Whether `pid` is in this process's namespace of `kind` (`net`, `uts`, …). Unknown counts as no.
fn same_namespace(proc_root: &Path, pid: u32, kind: &str) -> bool {
    let theirs = std::fs::metadata(proc_root.join(pid.to_string()).join("ns").join(kind));
    let ours = std::fs::metadata(Path::new("/proc/self/ns").join(kind));
    match (theirs, ours) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The host name of `pid`'s UTS namespace: ours when shared; else read by joining that namespace
/// on a short-lived thread (needs CAP_SYS_ADMIN; a thread may switch its UTS namespace alone);
/// else its root's `/etc/hostname`.
fn uts_host_name(proc_root: &Path, pid: u32) -> Option<String> {
    if same_namespace(proc_root, pid, "uts") {
        return super::host::host_name();
    }
    let ns = proc_root.join(pid.to_string()).join("ns/uts");
    let joined = std::thread::spawn(move || -> Option<String> {
        let f = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWUTS).ok()?;
        nix::unistd::gethostname().ok()?.into_string().ok()
    })
    .join()
    .ok()
    .flatten();
    joined
        .or_else(|| {
            let root = proc_root.join(pid.to_string()).join("root");
            let text = super::inroot::read_in_root(&root, Path::new("/etc/hostname")).ok()?;
            Some(String::from_utf8_lossy(&text).into_owned())
        })
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_of_a_fib_trie() {
        let trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.18.3.0/30 2 0 2
           |-- 198.18.3.0
              /30 link UNICAST
           |-- 198.18.3.2
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 127.0.0.1
              /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie_local(trie),
            vec![
                Ipv4Addr::LOCALHOST,
                "198.18.3.2".parse::<Ipv4Addr>().unwrap()
            ]
        );
        assert!(parse_fib_trie_local("garbage\n/32 host LOCAL\n").is_empty());
    }

    #[test]
    fn addresses_of_if_inet6() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
zz 1
";
        assert_eq!(
            parse_if_inet6(text),
            vec![Ipv6Addr::LOCALHOST, "fd00::2".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn listening_sockets_with_their_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:17E2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_listening_sockets(table),
            vec![
                (4242, "127.0.0.1:8080".parse().unwrap()),
                (4444, "0.0.0.0:6114".parse().unwrap())
            ]
        );
        let table6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_listening_sockets(table6),
            vec![(77, "[::1]:8080".parse().unwrap())]
        );
        // Java's dual-stack sockets: ::ffff:127.0.0.1 is 127.0.0.1.
        let mapped = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9EF9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_listening_sockets(mapped),
            vec![(78, "127.0.0.1:40697".parse().unwrap())]
        );
        assert!(parse_listening_sockets("garbage\nmore garbage").is_empty());
    }

    #[test]
    fn this_process_is_read_from_the_inside() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let n = read(Path::new("/proc"), std::process::id());
        assert!(n.listen.contains(&addr), "{addr} not in {:?}", n.listen);
        assert!(
            n.addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{n:?}"
        );
        assert!(n.host_netns);
        assert_eq!(n.host_name, crate::discovery::host::host_name());
    }
}
