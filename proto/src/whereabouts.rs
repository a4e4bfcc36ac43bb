//! Where a TaskManager JVM lives on the network, as the agent reads it inside the JVM's own
//! namespaces: what the collector compares with Flink's `GET /taskmanagers` to tell which
//! TaskManager the JVM is.
//!
//! A TaskManager registers under whatever address it was configured with or found (`localhost`,
//! a container's own IP, an FQDN), which the agent's host often does not share. So the agent
//! describes the JVM from the inside: the addresses of *its* network namespace, the sockets it
//! listens on there, the host name of *its* UTS namespace, and its resource id when the command
//! line or its own log names it.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Where a JVM's `taskmanager.resource-id` was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceIdSource {
    /// `-D taskmanager.resource-id=…` on its command line (YARN, Kubernetes, or set by hand).
    CommandLine,
    /// The YARN container id in its environment (`CONTAINER_ID`), which
    /// `YarnTaskExecutorRunner` makes the resource id.
    Environment,
    /// The `Starting TaskManager with ResourceID: …` line of the log file it writes: Flink's
    /// generated id (`host:rpcPort-xxxxxx`), whose random suffix no other TaskManager shares.
    Log,
}

/// A JVM's network namespace, seen from inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JvmNetwork {
    /// Every interface address of its network namespace, loopback included.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Its listening TCP sockets (bound address and port).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// The host name of its UTS namespace (a container's own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Whether it shares the agent's network namespace; the agent's host names are then its own.
    #[serde(default)]
    pub host_netns: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_missing_fields() {
        let n = JvmNetwork {
            addresses: vec!["127.0.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()],
            listen: vec![
                "0.0.0.0:6122".parse().unwrap(),
                "[::]:6121".parse().unwrap(),
            ],
            host_name: Some("tm-0".into()),
            host_netns: false,
        };
        let text = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<JvmNetwork>(&text).unwrap(), n);
        assert_eq!(
            serde_json::from_str::<JvmNetwork>("{}").unwrap(),
            JvmNetwork::default()
        );
        assert_eq!(
            serde_json::to_string(&ResourceIdSource::CommandLine).unwrap(),
            "\"command_line\""
        );
    }
}
