//! Which Flink TaskManager a JVM is: the agent's view of the JVM (its resource id, the sockets
//! it listens on, the addresses and host name of its own namespaces) against what
//! `GET /taskmanagers` says (id, the host and RPC port of `path`, `dataPort`) for every watched
//! cluster. Pure.
//!
//! A TaskManager registers under whatever address it was configured with or found: `localhost`
//! on a one-machine setup, a container's own IP, an FQDN. None of those need be a name of the
//! agent's host, so the JVM is described from the inside and matched by what identifies it:
//!
//! 1. **Resource id** (certain): the JVM's id, from its command line or its own log, equals the
//!    TaskManager's. A JVM whose id is known and differs is *not* that TaskManager, whatever
//!    else matches.
//! 2. **Address and ports**: the JVM listens on the TaskManager's RPC port and data port, and
//!    the host it registered under is one of the JVM's own addresses (its network namespace),
//!    its own host name, a name resolving to one of those, or one of the agent host's names
//!    (ports published from a container).
//! 3. **Loopback and ports**: a TaskManager registered as `localhost` is reachable only on its
//!    JobManager's host, by the JVM that listens on its ports there.
//!
//! Why two TaskManagers on different hosts with the same ports are never confused: a JobManager
//! reaches each TaskManager at (registered host, RPC port), so two TaskManagers of the watched
//! clusters with equal ports have different registered hosts, and a JVM matches by address only
//! the one whose host is its own. The exception is loopback, which every namespace has: there
//! the resource id decides (Flink's generated id ends in a random suffix, and the agent reads it
//! from the JVM's log), and when it is unknown and several loopback TaskManagers fit, the JVM is
//! reported as matching several, never guessed.

use std::net::IpAddr;

use bpmon_proto::{JvmInfo, JvmNetwork, PlanJvm, ResourceIdSource};

use crate::model::{ClusterSnapshot, TaskManagerRef};

/// What the collector knows of a JVM that sent a report or asked for a plan.
#[derive(Debug, Clone, Copy)]
pub struct JvmClues<'a> {
    pub resource_id: Option<&'a str>,
    pub resource_id_source: Option<ResourceIdSource>,
    pub listen_ports: &'a [u16],
    /// Absent from agents older than this evidence.
    pub network: Option<&'a JvmNetwork>,
    /// Names and addresses of the agent's host.
    pub agent_hosts: &'a [String],
}

impl<'a> JvmClues<'a> {
    pub fn of_report(jvm: &'a JvmInfo, agent_hosts: &'a [String]) -> Self {
        JvmClues {
            resource_id: jvm.resource_id.as_deref(),
            resource_id_source: jvm.resource_id_source,
            listen_ports: &jvm.listen_ports,
            network: jvm.network.as_ref(),
            agent_hosts,
        }
    }

    pub fn of_plan(jvm: &'a PlanJvm, agent_hosts: &'a [String]) -> Self {
        JvmClues {
            resource_id: jvm.resource_id.as_deref(),
            resource_id_source: jvm.resource_id_source,
            listen_ports: &jvm.listen_ports,
            network: jvm.network.as_ref(),
            agent_hosts,
        }
    }

    /// The JVM's evidence in one line, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.resource_id, self.resource_id_source) {
            (Some(id), Some(ResourceIdSource::Log)) => {
                parts.push(format!("resource id {id} (from its log)"))
            }
            (Some(id), _) => parts.push(format!("resource id {id}")),
            (None, _) => parts.push("no resource id".to_string()),
        }
        parts.push(format!("listening on {:?}", self.listen_ports));
        match self.network {
            Some(n) => {
                parts.push(format!(
                    "addresses {:?}",
                    n.addresses
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                ));
                if let Some(h) = &n.host_name {
                    parts.push(format!("host name {h}"));
                }
                if !n.host_netns {
                    parts.push("own network namespace".to_string());
                }
            }
            None => parts.push("no network view (older agent)".to_string()),
        }
        parts.push(format!("agent host {:?}", self.agent_hosts));
        parts.join(", ")
    }
}

/// How strongly a JVM was matched to a TaskManager (stronger first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    ResourceId,
    Address,
    Loopback,
}

/// A JVM found to be a TaskManager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Index into the clusters the caller passed.
    pub cluster: usize,
    pub taskmanager_id: String,
    pub evidence: Evidence,
    /// How, in words: `resource id …`, `address 198.18.0.2 and ports 6122/6121`, ….
    pub how: String,
}

/// A JVM matched to no TaskManager, or to several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLocated {
    /// The whole reason: what the JVM showed and what each TaskManager did not match.
    pub why: String,
    /// Several TaskManagers fit equally well (rather than none).
    pub several: bool,
    /// Per TaskManager id, why this JVM is not it (for the subtasks placed there).
    pub per_taskmanager: Vec<(String, String)>,
}

/// One TaskManager judged against a JVM.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Match(Evidence, String),
    No(String),
}

/// Finds the one TaskManager of `clusters` that the JVM is.
pub fn locate(clues: &JvmClues<'_>, clusters: &[&ClusterSnapshot]) -> Result<Located, NotLocated> {
    if clusters.is_empty() {
        return Err(NotLocated {
            why: "no Flink cluster has been read yet".into(),
            several: false,
            per_taskmanager: Vec::new(),
        });
    }
    let mut matches: Vec<Located> = Vec::new();
    let mut misses: Vec<String> = Vec::new();
    let mut per_taskmanager: Vec<(String, String)> = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        if c.taskmanagers.is_empty() {
            misses.push(format!("{}: no TaskManagers listed", c.flink_url));
        }
        for tm in &c.taskmanagers {
            match judge(clues, tm) {
                Verdict::Match(evidence, how) => matches.push(Located {
                    cluster: i,
                    taskmanager_id: tm.id.clone(),
                    evidence,
                    how,
                }),
                Verdict::No(why) => {
                    misses.push(format!("{} {}: {why}", c.flink_url, tm.id));
                    per_taskmanager.push((tm.id.clone(), why));
                }
            }
        }
    }
    let Some(best) = matches.iter().map(|m| m.evidence).min() else {
        return Err(NotLocated {
            why: format!(
                "no TaskManager of the watched clusters is this JVM ({}); compared with: {}",
                clues.describe(),
                misses.join("; ")
            ),
            several: false,
            per_taskmanager,
        });
    };
    matches.retain(|m| m.evidence == best);
    if matches.len() == 1 {
        return Ok(matches.remove(0));
    }
    Err(NotLocated {
        why: format!(
            "several TaskManagers fit this JVM equally ({}): {}",
            clues.describe(),
            matches
                .iter()
                .map(|m| format!(
                    "{} ({}: {})",
                    m.taskmanager_id, clusters[m.cluster].flink_url, m.how
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        several: true,
        per_taskmanager: matches
            .iter()
            .map(|m| {
                (
                    m.taskmanager_id.clone(),
                    format!("fits as well as others ({})", m.how),
                )
            })
            .collect(),
    })
}

fn judge(clues: &JvmClues<'_>, tm: &TaskManagerRef) -> Verdict {
    if let Some(id) = clues.resource_id {
        if id == tm.id {
            return Verdict::Match(Evidence::ResourceId, format!("resource id {id}"));
        }
        // The id is the TaskManager's identity in Flink: another id is another TaskManager.
        return Verdict::No(format!("the JVM's resource id is {id}"));
    }
    let ports = tm.ports();
    if ports.is_empty() {
        return Verdict::No("Flink names no port for it".into());
    }
    let missing: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| !clues.listen_ports.contains(p))
        .collect();
    if !missing.is_empty() {
        return Verdict::No(format!(
            "the JVM does not listen on {}",
            join_ports(&missing)
        ));
    }
    let ports_text = join_ports(&ports);
    let Some(host) = tm.host.as_deref() else {
        return Verdict::No(format!(
            "it names no host; ports {ports_text} alone do not tell hosts apart"
        ));
    };
    if is_loopback_name(host) {
        // Reachable as `localhost` only if the RPC socket listens on loopback (or everywhere).
        let rpc_binds: Vec<&std::net::SocketAddr> = clues
            .network
            .map(|n| {
                n.listen
                    .iter()
                    .filter(|a| Some(a.port()) == tm.rpc_port)
                    .collect()
            })
            .unwrap_or_default();
        if !rpc_binds.is_empty()
            && !rpc_binds
                .iter()
                .any(|a| a.ip().is_loopback() || a.ip().is_unspecified())
        {
            return Verdict::No(format!(
                "registered at {host}, but the JVM's RPC port listens only on {}",
                rpc_binds
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Verdict::Match(
            Evidence::Loopback,
            format!("loopback ({host}) and ports {ports_text}"),
        );
    }
    match host_evidence(clues, tm, host) {
        Some(how) => Verdict::Match(Evidence::Address, format!("{how} and ports {ports_text}")),
        None => Verdict::No(format!(
            "registered at {host}{}, which is none of the JVM's addresses or names",
            if tm.addresses.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    tm.addresses
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )),
    }
}

/// Why `host` (what the TaskManager registered under) is this JVM's, if it is.
fn host_evidence(clues: &JvmClues<'_>, tm: &TaskManagerRef, host: &str) -> Option<String> {
    let own: &[IpAddr] = clues.network.map_or(&[], |n| n.addresses.as_slice());
    if let Ok(ip) = host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        if own.contains(&ip) {
            return Some(format!("its address {ip}"));
        }
    } else {
        if let Some(name) = clues.network.and_then(|n| n.host_name.as_deref()) {
            if same_host_name(host, name) {
                return Some(format!("its host name {name}"));
            }
        }
        if let Some(ip) = tm
            .addresses
            .iter()
            .find(|a| !a.is_loopback() && own.contains(a))
        {
            return Some(format!("{host} resolving to its address {ip}"));
        }
    }
    // The agent host's own names: a JVM in the host's network, or a container whose ports the
    // host publishes under the same numbers.
    let agent_match = clues.agent_hosts.iter().find(|h| {
        same_host_name(host, h)
            || tm
                .addresses
                .iter()
                .any(|a| !a.is_loopback() && h.parse::<IpAddr>().ok() == Some(*a))
    });
    agent_match.map(|h| format!("the agent host's {h}"))
}

/// `localhost`, `127.x.y.z`, `::1` and the usual aliases: every network namespace's own.
pub fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    matches!(
        h.as_str(),
        "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback"
    ) || h.ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Host names are case-insensitive, and an FQDN names the same host as its first label
/// (`tm-1.flink.svc.cluster.local` and `tm-1`).
fn same_host_name(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('.').to_ascii_lowercase();
    let b = b.trim_end_matches('.').to_ascii_lowercase();
    if a == b {
        return true;
    }
    if a.parse::<IpAddr>().is_ok() || b.parse::<IpAddr>().is_ok() {
        return false;
    }
    let first = |s: &str| s.split('.').next().unwrap_or("").to_string();
    (!a.contains('.') || !b.contains('.')) && first(&a) == first(&b)
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(id: &str, host: &str, rpc: u16, data: u16) -> TaskManagerRef {
        TaskManagerRef {
            id: id.into(),
            host: Some(host.into()),
            rpc_port: Some(rpc),
            data_port: Some(data),
            addresses: Vec::new(),
        }
    }

    fn cluster(url: &str, tms: Vec<TaskManagerRef>) -> ClusterSnapshot {
        ClusterSnapshot {
            flink_url: url.into(),
            taskmanagers_unread: false,
            flink_version: None,
            fetched_at_ms: 0,
            jobs: Vec::new(),
            taskmanagers: tms,
            errors: Vec::new(),
        }
    }

    fn net(addrs: &[&str], host_name: &str, host_netns: bool) -> JvmNetwork {
        JvmNetwork {
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            listen: Vec::new(),
            host_name: Some(host_name.into()),
            host_netns,
        }
    }

    fn clues<'a>(
        ports: &'a [u16],
        network: Option<&'a JvmNetwork>,
        hosts: &'a [String],
    ) -> JvmClues<'a> {
        JvmClues {
            resource_id: None,
            resource_id_source: None,
            listen_ports: ports,
            network,
            agent_hosts: hosts,
        }
    }

    #[test]
    fn a_script_started_taskmanager_registered_as_localhost() {
        // Flink's own scripts with `taskmanager.host: localhost`: the registered host is no name
        // of the agent's host, the ports are.
        let c = cluster(
            "http://localhost:18082",
            vec![tm("localhost:36151-3b680b", "localhost", 36151, 34863)],
        );
        let hosts = vec!["vm".to_string(), "192.0.2.2".to_string()];
        let mut n = net(&["127.0.0.1", "192.0.2.2"], "vm", true);
        n.listen = vec![
            "127.0.0.1:36151".parse().unwrap(),
            "127.0.0.1:34863".parse().unwrap(),
        ];
        let ports = [34863, 35239, 36151];
        let found = locate(&clues(&ports, Some(&n), &hosts), &[&c]).unwrap();
        assert_eq!(found.taskmanager_id, "localhost:36151-3b680b");
        assert_eq!(found.evidence, Evidence::Loopback);
        // An older agent (no network view) gets the same answer: loopback needs none.
        let found = locate(&clues(&ports, None, &hosts), &[&c]).unwrap();
        assert_eq!(found.taskmanager_id, "localhost:36151-3b680b");
        // The JVM's id read from its log makes it certain.
        let mut with_id = clues(&ports, Some(&n), &hosts);
        with_id.resource_id = Some("localhost:36151-3b680b");
        with_id.resource_id_source = Some(ResourceIdSource::Log);
        assert_eq!(
            locate(&with_id, &[&c]).unwrap().evidence,
            Evidence::ResourceId
        );
        // A JVM whose RPC port listens only on another address cannot be reached as localhost.
        let mut far = n.clone();
        far.listen = vec!["198.18.3.2:36151".parse().unwrap()];
        let e = locate(&clues(&ports, Some(&far), &hosts), &[&c]).unwrap_err();
        assert!(
            e.why.contains("listens only on 198.18.3.2:36151"),
            "{}",
            e.why
        );
    }

    #[test]
    fn a_taskmanager_in_its_own_network_namespace() {
        let c = cluster(
            "http://127.0.0.1:8081",
            vec![
                tm("198.18.3.2:6122-aaaaaa", "198.18.3.2", 6122, 6121),
                tm("198.18.3.1:41000-bbbbbb", "198.18.3.1", 41000, 41001),
            ],
        );
        let hosts = vec![
            "vm".to_string(),
            "192.0.2.2".to_string(),
            "198.18.3.1".to_string(),
        ];
        let n = net(&["127.0.0.1", "198.18.3.2"], "tm-3", false);
        let ports = [6121, 6122];
        let found = locate(&clues(&ports, Some(&n), &hosts), &[&c]).unwrap();
        assert_eq!(found.taskmanager_id, "198.18.3.2:6122-aaaaaa");
        assert_eq!(found.evidence, Evidence::Address);
        assert!(
            found.how.contains("its address 198.18.3.2"),
            "{}",
            found.how
        );
    }

    #[test]
    fn same_ports_on_two_hosts_are_never_confused() {
        // Kubernetes: every pod uses 6122/6121. Only the pod whose address Flink names matches.
        let c = cluster(
            "http://flink-rest:8081",
            vec![
                tm("pod-a", "10.1.0.5", 6122, 6121),
                tm("pod-b", "10.1.0.6", 6122, 6121),
            ],
        );
        let hosts = vec!["node-1".to_string(), "10.0.0.1".to_string()];
        let ports = [6121, 6122];
        let b = net(&["127.0.0.1", "10.1.0.6"], "pod-b", false);
        assert_eq!(
            locate(&clues(&ports, Some(&b), &hosts), &[&c])
                .unwrap()
                .taskmanager_id,
            "pod-b"
        );
        // A pod of a third, unwatched TaskManager with the same ports: no match, and why.
        let x = net(&["127.0.0.1", "10.1.0.9"], "pod-x", false);
        let e = locate(&clues(&ports, Some(&x), &hosts), &[&c]).unwrap_err();
        assert!(!e.several);
        assert!(e.why.contains("registered at 10.1.0.5"), "{}", e.why);
        assert!(
            e.why.contains("addresses [\"127.0.0.1\", \"10.1.0.9\"]"),
            "{}",
            e.why
        );
        // Without a network view (older agent), the host names of the agent decide, as before.
        let e = locate(&clues(&ports, None, &hosts), &[&c]).unwrap_err();
        assert!(!e.several, "{}", e.why);
    }

    #[test]
    fn loopback_twins_in_two_clusters_are_several_unless_the_id_decides() {
        // Two one-machine clusters on two hosts, both `localhost:6122`, fixed ports.
        let a = cluster(
            "http://host-a:8081",
            vec![tm("localhost:6122-aaaaaa", "localhost", 6122, 6121)],
        );
        let b = cluster(
            "http://host-b:8081",
            vec![tm("localhost:6122-bbbbbb", "localhost", 6122, 6121)],
        );
        let hosts = vec!["host-b".to_string()];
        let ports = [6121, 6122];
        let n = net(&["127.0.0.1"], "host-b", true);
        let e = locate(&clues(&ports, Some(&n), &hosts), &[&a, &b]).unwrap_err();
        assert!(e.several, "{}", e.why);
        let mut c = clues(&ports, Some(&n), &hosts);
        c.resource_id = Some("localhost:6122-bbbbbb");
        c.resource_id_source = Some(ResourceIdSource::Log);
        let found = locate(&c, &[&a, &b]).unwrap();
        assert_eq!(
            (found.cluster, found.taskmanager_id.as_str()),
            (1, "localhost:6122-bbbbbb")
        );
    }

    #[test]
    fn a_known_resource_id_rules_out_every_other_taskmanager() {
        let c = cluster(
            "http://x:8081",
            vec![tm("localhost:6122-aaaaaa", "localhost", 6122, 6121)],
        );
        let ports = [6121, 6122];
        let mut cl = clues(&ports, None, &[]);
        cl.resource_id = Some("localhost:6122-ffffff");
        let e = locate(&cl, &[&c]).unwrap_err();
        assert!(
            e.why
                .contains("the JVM's resource id is localhost:6122-ffffff"),
            "{}",
            e.why
        );
    }

    #[test]
    fn names_match_by_host_name_resolution_or_the_agent_host() {
        let mut fqdn = tm("tm-1", "tm-1.flink.svc.cluster.local", 6122, 6121);
        let c = cluster("http://x:8081", vec![fqdn.clone()]);
        let ports = [6121, 6122];
        let n = net(&["127.0.0.1", "10.1.0.7"], "tm-1", false);
        let found = locate(&clues(&ports, Some(&n), &[]), &[&c]).unwrap();
        assert!(found.how.contains("its host name tm-1"), "{}", found.how);
        // An alias the collector resolved to the JVM's address.
        fqdn.host = Some("worker-alias".into());
        fqdn.addresses = vec!["10.1.0.7".parse().unwrap()];
        let c = cluster("http://x:8081", vec![fqdn.clone()]);
        let found = locate(&clues(&ports, Some(&n), &[]), &[&c]).unwrap();
        assert!(
            found.how.contains("resolving to its address 10.1.0.7"),
            "{}",
            found.how
        );
        // A container whose ports the host publishes: registered under the host's address.
        let published = tm("tm-p", "192.0.2.2", 6122, 6121);
        let c = cluster("http://x:8081", vec![published]);
        let hosts = vec!["vm".to_string(), "192.0.2.2".to_string()];
        let found = locate(&clues(&ports, Some(&n), &hosts), &[&c]).unwrap();
        assert!(
            found.how.contains("agent host's 192.0.2.2"),
            "{}",
            found.how
        );
    }

    #[test]
    fn ports_must_all_match() {
        let c = cluster("http://x:8081", vec![tm("t", "localhost", 6122, 6121)]);
        let e = locate(&clues(&[6122], None, &[]), &[&c]).unwrap_err();
        assert!(e.why.contains("does not listen on 6121"), "{}", e.why);
        assert!(locate(&clues(&[6122], None, &[]), &[])
            .unwrap_err()
            .why
            .contains("no Flink cluster"));
    }

    #[test]
    fn loopback_and_host_names() {
        for h in [
            "localhost",
            "LOCALHOST.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "localhost.localdomain",
        ] {
            assert!(is_loopback_name(h), "{h}");
        }
        for h in ["vm", "10.0.0.1", "localhostx"] {
            assert!(!is_loopback_name(h), "{h}");
        }
        assert!(same_host_name("TM-1.example.org", "tm-1"));
        assert!(!same_host_name("tm-1.a.org", "tm-1.b.org"));
        assert!(!same_host_name("10.0.0.1", "10"));
    }
}
