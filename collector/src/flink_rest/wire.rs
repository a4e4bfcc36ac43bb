//! Flink's REST responses as this client reads them (serde): only the fields it uses, each
//! tolerant of what differs between versions, and their conversion into the model.

use serde::Deserialize;

use crate::model::{SubtaskMetrics, SubtaskSnapshot};

/// Flink writes -1 for "not yet".
pub(super) fn valid_time(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}

#[derive(Deserialize)]
pub(super) struct TaskManagersWire {
    #[serde(default)]
    pub(super) taskmanagers: Vec<TaskManagerWire>,
}

#[derive(Deserialize)]
pub(super) struct TaskManagerWire {
    pub(super) id: String,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(rename = "dataPort", default)]
    pub(super) data_port: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ConfigWire {
    #[serde(rename = "flink-version", default)]
    pub(super) flink_version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct JobListWire {
    #[serde(default)]
    pub(super) jobs: Vec<JobListEntry>,
}

/// An entry of `/jobs/overview` (`jid`, `name`, `state`, `start-time`) or of `/jobs` (`id`,
/// `status`).
#[derive(Debug, Deserialize)]
pub(super) struct JobListEntry {
    #[serde(alias = "id")]
    pub(super) jid: String,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(alias = "status", default)]
    pub(super) state: Option<String>,
    #[serde(rename = "start-time", default)]
    pub(super) start_time: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct JobDetailsWire {
    #[serde(default)]
    pub(super) jid: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) state: Option<String>,
    #[serde(rename = "start-time", default)]
    pub(super) start_time: Option<i64>,
    #[serde(default)]
    pub(super) vertices: Vec<JobVertexWire>,
    /// Kept raw: a plan of an unexpected shape falls back to `/plan` instead of failing the job.
    #[serde(default)]
    pub(super) plan: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct JobVertexWire {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) parallelism: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct PlanResponseWire {
    pub(super) plan: PlanWire,
}

#[derive(Debug, Deserialize)]
pub(super) struct PlanWire {
    #[serde(default)]
    pub(super) nodes: Vec<PlanNodeWire>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PlanNodeWire {
    pub(super) id: String,
    #[serde(default)]
    pub(super) inputs: Vec<PlanInputWire>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PlanInputWire {
    /// The upstream vertex.
    pub(super) id: String,
    #[serde(default)]
    pub(super) ship_strategy: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct VertexDetailsWire {
    #[serde(default)]
    pub(super) subtasks: Vec<SubtaskWire>,
}

/// One entry of `GET /jobs/:jid/vertices/:vid` → `subtasks`.
#[derive(Debug, Deserialize)]
pub(super) struct SubtaskWire {
    pub(super) subtask: u32,
    #[serde(default)]
    pub(super) attempt: u32,
    #[serde(default)]
    pub(super) status: String,
    #[serde(rename = "taskmanager-id", default)]
    pub(super) taskmanager_id: Option<String>,
    /// ≤ 1.20, e.g. `"localhost"`.
    #[serde(default)]
    pub(super) host: Option<String>,
    /// 1.19+, e.g. `"localhost:36543"`; kept raw to accept an object too.
    #[serde(default)]
    pub(super) endpoint: Option<serde_json::Value>,
    #[serde(rename = "start-time", default)]
    pub(super) start_time: Option<i64>,
    /// The old spelling, still sent alongside `start-time`.
    #[serde(rename = "start_time", default)]
    pub(super) start_time_legacy: Option<i64>,
}

impl SubtaskWire {
    pub(super) fn into_snapshot(self, metrics: SubtaskMetrics) -> SubtaskSnapshot {
        // `endpoint` (host:port) when given: it is all 2.x has, and it tells TaskManagers on
        // one host apart.
        let host = self
            .endpoint
            .as_ref()
            .and_then(endpoint_text)
            .or(self.host.filter(|h| !h.trim().is_empty()));
        SubtaskSnapshot {
            subtask: self.subtask,
            attempt: self.attempt,
            status: self.status,
            taskmanager_id: self.taskmanager_id.filter(|t| !t.trim().is_empty()),
            host,
            start_time_ms: self
                .start_time
                .or(self.start_time_legacy)
                .and_then(valid_time),
            metrics,
        }
    }
}

/// `endpoint` as text: a string as is, an object as `host:port` from its address fields.
pub(super) fn endpoint_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Object(o) => {
            let host = ["address", "host", "hostname", "hostName"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|h| h.as_str()))
                .filter(|h| !h.is_empty())?;
            match o.get("port").and_then(|p| p.as_u64()) {
                Some(port) => Some(format!("{host}:{port}")),
                None => Some(host.to_string()),
            }
        }
        _ => None,
    }
}

/// `{"id": "0.numRecordsIn", "value": "42"}`; values are strings, other scalars are accepted.
#[derive(Debug, Deserialize)]
pub(super) struct MetricWire {
    pub(super) id: String,
    #[serde(default)]
    pub(super) value: Option<serde_json::Value>,
}

impl MetricWire {
    pub(super) fn into_pair(self) -> Option<(String, String)> {
        let value = match self.value? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        Some((self.id, value))
    }
}
