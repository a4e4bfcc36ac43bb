//! Flink's metrics: every alias of each figure this client reads, asked for all subtasks in
//! one request per vertex (split when the request line would be too long), and the first alias
//! present taken.

use std::collections::{BTreeMap, HashMap};

use crate::model::SubtaskMetrics;

/// Where a metric goes in [`SubtaskMetrics`].
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Number(fn(&mut SubtaskMetrics) -> &mut Option<f64>),
    Flag(fn(&mut SubtaskMetrics) -> &mut Option<bool>),
}

/// Every figure with its ids, preferred first. The legacy `buffers.*` ids (1.9 – 1.20) are the
/// same gauges registered twice; the short names come from the 2019 network-stack blog post
/// (no Flink release seen registers them, but asking costs nothing: unknown ids are omitted).
pub(super) const METRICS: &[(Slot, &[&str])] = &[
    (
        Slot::Number(|m| &mut m.out_pool_usage),
        &[
            "Shuffle.Netty.Output.Buffers.outPoolUsage",
            "buffers.outPoolUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.in_pool_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inPoolUsage",
            "buffers.inPoolUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.input_floating_buffers_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inputFloatingBuffersUsage",
            "buffers.inputFloatingBuffersUsage",
            "floatingBuffersUsage",
        ],
    ),
    (
        Slot::Number(|m| &mut m.input_exclusive_buffers_usage),
        &[
            "Shuffle.Netty.Input.Buffers.inputExclusiveBuffersUsage",
            "buffers.inputExclusiveBuffersUsage",
            "exclusiveBuffersUsage",
        ],
    ),
    (Slot::Number(|m| &mut m.num_records_in), &["numRecordsIn"]),
    (Slot::Number(|m| &mut m.num_records_out), &["numRecordsOut"]),
    (Slot::Number(|m| &mut m.num_bytes_in), &["numBytesIn"]),
    (Slot::Number(|m| &mut m.num_bytes_out), &["numBytesOut"]),
    (
        Slot::Number(|m| &mut m.num_bytes_in_local),
        &["Shuffle.Netty.Input.numBytesInLocal", "numBytesInLocal"],
    ),
    (
        Slot::Number(|m| &mut m.num_bytes_in_remote),
        &["Shuffle.Netty.Input.numBytesInRemote", "numBytesInRemote"],
    ),
    (Slot::Number(|m| &mut m.num_buffers_out), &["numBuffersOut"]),
    (
        Slot::Number(|m| &mut m.records_in_per_s),
        &["numRecordsInPerSecond"],
    ),
    (
        Slot::Number(|m| &mut m.bytes_in_local_per_s),
        &[
            "Shuffle.Netty.Input.numBytesInLocalPerSecond",
            "numBytesInLocalPerSecond",
        ],
    ),
    (
        Slot::Number(|m| &mut m.bytes_in_remote_per_s),
        &[
            "Shuffle.Netty.Input.numBytesInRemotePerSecond",
            "numBytesInRemotePerSecond",
        ],
    ),
    (
        Slot::Number(|m| &mut m.soft_back_pressured_ms),
        &["softBackPressuredTimeMsPerSecond"],
    ),
    (
        Slot::Number(|m| &mut m.hard_back_pressured_ms),
        &["hardBackPressuredTimeMsPerSecond"],
    ),
    (
        Slot::Number(|m| &mut m.back_pressured_ms),
        &["backPressuredTimeMsPerSecond"],
    ),
    (Slot::Number(|m| &mut m.idle_ms), &["idleTimeMsPerSecond"]),
    (Slot::Number(|m| &mut m.busy_ms), &["busyTimeMsPerSecond"]),
    (
        Slot::Flag(|m| &mut m.is_back_pressured),
        &["isBackPressured"],
    ),
];

pub fn requested_metric_ids() -> Vec<&'static str> {
    METRICS
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect()
}

/// A subtask's metrics from `(id, value)` pairs as Flink's subtask-scope metric endpoints
/// return them (unprefixed ids, string values). For each figure the first of its ids present
/// decides (aliases are the same gauge, so a `NaN` there is not second-guessed); `"NaN"` and
/// unparseable values give `None`, `isBackPressured` is `"true"`/`"false"`. Unknown ids are
/// ignored.
pub fn metrics_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> SubtaskMetrics {
    let values: HashMap<&str, &str> = pairs.into_iter().collect();
    let mut m = SubtaskMetrics::default();
    for (slot, ids) in METRICS {
        let Some(raw) = ids.iter().find_map(|id| values.get(id)) else {
            continue;
        };
        match slot {
            Slot::Number(field) => *field(&mut m) = parse_number(raw),
            Slot::Flag(field) => *field(&mut m) = parse_flag(raw),
        }
    }
    m
}

pub(super) fn parse_number(raw: &str) -> Option<f64> {
    raw.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

pub(super) fn parse_flag(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Splits the vertex-level endpoint's `<subtask>.<id>` pairs per subtask and turns each group
/// into [`SubtaskMetrics`]. Ids without a numeric prefix are ignored.
pub fn group_by_subtask<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<u32, SubtaskMetrics> {
    let mut groups: BTreeMap<u32, Vec<(&str, &str)>> = BTreeMap::new();
    for (id, value) in pairs {
        let Some((index, metric)) = id.split_once('.') else {
            continue;
        };
        if let Ok(index) = index.parse::<u32>() {
            groups.entry(index).or_default().push((metric, value));
        }
    }
    groups
        .into_iter()
        .map(|(index, pairs)| (index, metrics_from_pairs(pairs)))
        .collect()
}

/// Request targets (`path?get=…`) asking for `ids` of subtasks `0..parallelism`, as few as fit
/// in `max_len` bytes each. A vertex of parallelism 2 needs one; the count grows with
/// parallelism only because Flink caps the request line.
pub fn metric_queries(path: &str, parallelism: u32, ids: &[&str], max_len: usize) -> Vec<String> {
    let mut out = Vec::new();
    let head = format!("{path}?get=");
    let mut current = head.clone();
    for subtask in 0..parallelism {
        for id in ids {
            let token = format!("{subtask}.{id}");
            let empty = current.len() == head.len();
            let added = token.len() + usize::from(!empty);
            if !empty && current.len() + added > max_len {
                out.push(std::mem::replace(&mut current, head.clone()));
            }
            if current.len() > head.len() {
                current.push(',');
            }
            current.push_str(&token);
        }
    }
    if current.len() > head.len() {
        out.push(current);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Topology
