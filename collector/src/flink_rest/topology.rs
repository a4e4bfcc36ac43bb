//! A job's shape from Flink's answers: the edges of its plan, its vertices in topological
//! order, and where a TaskManager is (host and ports from its id and `path`).

use std::collections::{BTreeSet, HashMap};

use crate::model::{Edge, TaskManagerRef, VertexSnapshot};

use super::wire::PlanWire;

/// Every subtask-scope metric id the client asks for (all aliases), in a fixed order.
/// A TaskManager from its `GET /taskmanagers` entry. The host and RPC port come from `path`
/// (`pekko.tcp://flink@HOST:PORT/user/rpc/taskmanager_0`, `akka.tcp://…` before 1.18), else from
/// a default resource id (`HOST:PORT-xxxxxx`).
pub fn taskmanager_ref(id: &str, path: Option<&str>, data_port: Option<u32>) -> TaskManagerRef {
    fn host_port(s: &str) -> Option<(String, Option<u16>)> {
        let (host, port) = match s.strip_prefix('[') {
            // [v6::addr]:port
            Some(rest) => {
                let (h, after) = rest.split_once(']')?;
                (h, after.strip_prefix(':'))
            }
            None => match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            },
        };
        (!host.is_empty()).then(|| (host.to_string(), port.and_then(|p| p.parse().ok())))
    }
    let from_path = path
        .and_then(|p| p.split_once('@'))
        .and_then(|(_, rest)| host_port(rest.split('/').next().unwrap_or("")));
    let from_id = id
        .rsplit_once('-')
        .and_then(|(hp, _)| hp.contains(':').then_some(hp))
        .and_then(host_port);
    let (host, rpc_port) = match from_path.or(from_id) {
        Some((h, p)) => (Some(h), p),
        None => (None, None),
    };
    TaskManagerRef {
        id: id.to_string(),
        host,
        rpc_port,
        data_port: data_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0),
        addresses: Vec::new(),
    }
}

/// Edges from the plan: each node's inputs flow into the node.
pub(super) fn plan_edges(plan: &PlanWire) -> Vec<Edge> {
    plan.nodes
        .iter()
        .flat_map(|node| {
            node.inputs.iter().map(move |input| Edge {
                source: input.id.clone(),
                target: node.id.clone(),
                ship_strategy: input.ship_strategy.clone().filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

/// Orders vertices sources first (Kahn's algorithm; among ready vertices, the one listed first
/// by Flink goes first) and sorts edges by the positions of their ends. Vertices on a cycle or
/// left unordered keep Flink's order at the end; edges to unknown vertices are kept, last.
pub fn topological(
    vertices: Vec<VertexSnapshot>,
    mut edges: Vec<Edge>,
) -> (Vec<VertexSnapshot>, Vec<Edge>) {
    let index: HashMap<&str, usize> = vertices
        .iter()
        .enumerate()
        .map(|(i, v)| (v.vertex_id.as_str(), i))
        .collect();
    let n = vertices.len();
    let mut indegree = vec![0usize; n];
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen = BTreeSet::new();
    for e in &edges {
        let (Some(&s), Some(&t)) = (index.get(e.source.as_str()), index.get(e.target.as_str()))
        else {
            continue;
        };
        // Two inputs from the same vertex (e.g. a self-union) count once.
        if s != t && seen.insert((s, t)) {
            indegree[t] += 1;
            downstream[s].push(t);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &t in &downstream[i] {
            indegree[t] -= 1;
            if indegree[t] == 0 {
                ready.insert(t);
            }
        }
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..n).filter(|i| !placed.contains(i)));

    let mut position = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let rank = |id: &str| index.get(id).map_or(usize::MAX, |&i| position[i]);
    // Stable: inputs of one target keep the plan's order.
    edges.sort_by_key(|e| (rank(&e.source), rank(&e.target)));

    let mut slots: Vec<Option<VertexSnapshot>> = vertices.into_iter().map(Some).collect();
    let sorted = order.into_iter().filter_map(|i| slots[i].take()).collect();
    (sorted, edges)
}

// ---------------------------------------------------------------------------------------------
// Wire types: only the fields used; unknown fields are ignored everywhere.
