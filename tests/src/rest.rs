//! A small blocking client for the Flink REST API (1.20 and 2.x): cluster overview, jobs,
//! vertices, per-subtask and aggregated metrics, Flink's own `/backpressure`, and job
//! submission through the jar upload/run endpoints (no `bin/flink` JVM per submission).
//!
//! Parsing is lenient where Flink is: metric values are strings (possibly `"NaN"`), ratios may
//! be `"NaN"` strings, the level appears as both `backpressureLevel` and `backpressure-level`,
//! and subtasks have `host` (≤1.20) and/or `endpoint` (1.19+).

use std::collections::BTreeMap;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::blocking::{Client, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// `GET /overview`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Overview {
    pub taskmanagers: u32,
    #[serde(rename = "slots-total")]
    pub slots_total: u32,
    #[serde(rename = "slots-available")]
    pub slots_available: u32,
    #[serde(rename = "jobs-running")]
    pub jobs_running: u32,
    #[serde(rename = "flink-version")]
    pub flink_version: String,
    #[serde(rename = "flink-commit", default)]
    pub flink_commit: String,
}

/// One entry of `GET /taskmanagers`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TaskManagerInfo {
    /// The resource id (`taskmanager.resource-id`), also `taskmanager-id` in vertex details.
    pub id: String,
    #[serde(default)]
    pub path: String,
    #[serde(rename = "dataPort", default)]
    pub data_port: u32,
    #[serde(rename = "slotsNumber", default)]
    pub slots_number: u32,
    #[serde(rename = "freeSlots", default)]
    pub free_slots: u32,
}

#[derive(Deserialize)]
struct TaskManagersResponse {
    taskmanagers: Vec<TaskManagerInfo>,
}

/// One entry of `GET /jobs/overview`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JobOverview {
    pub jid: String,
    pub name: String,
    pub state: String,
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
}

#[derive(Deserialize)]
struct JobsOverviewResponse {
    jobs: Vec<JobOverview>,
}

/// `GET /jobs/:jid` (the parts bpmon needs).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JobDetails {
    pub jid: String,
    pub name: String,
    pub state: String,
    pub vertices: Vec<VertexInfo>,
}

impl JobDetails {
    /// The vertex with exactly this name.
    pub fn vertex(&self, name: &str) -> Option<&VertexInfo> {
        self.vertices.iter().find(|v| v.name == name)
    }
}

/// A vertex as listed in `GET /jobs/:jid`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VertexInfo {
    pub id: String,
    pub name: String,
    pub parallelism: u32,
    pub status: String,
}

/// `GET /jobs/:jid/plan`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JobPlan {
    pub plan: Plan,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Plan {
    pub jid: String,
    pub name: String,
    pub nodes: Vec<PlanNode>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PlanNode {
    pub id: String,
    pub parallelism: u32,
    #[serde(default)]
    pub inputs: Vec<PlanInput>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PlanInput {
    /// The upstream vertex id.
    pub id: String,
    #[serde(default)]
    pub ship_strategy: String,
}

/// A data edge between two vertices, from `/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanEdge {
    pub source: String,
    pub target: String,
    pub ship_strategy: String,
}

impl JobPlan {
    /// All edges, upstream → downstream.
    pub fn edges(&self) -> Vec<PlanEdge> {
        self.plan
            .nodes
            .iter()
            .flat_map(|n| {
                n.inputs.iter().map(move |i| PlanEdge {
                    source: i.id.clone(),
                    target: n.id.clone(),
                    ship_strategy: i.ship_strategy.clone(),
                })
            })
            .collect()
    }
}

/// `GET /jobs/:jid/vertices/:vid`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VertexDetails {
    pub id: String,
    pub name: String,
    pub parallelism: u32,
    pub subtasks: Vec<SubtaskInfo>,
}

/// One current execution attempt of a subtask.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubtaskInfo {
    /// 0-based (thread names are 1-based).
    pub subtask: u32,
    pub status: String,
    pub attempt: u32,
    #[serde(rename = "taskmanager-id", default)]
    pub taskmanager_id: Option<String>,
    /// ≤1.20 only.
    #[serde(default)]
    pub host: Option<String>,
    /// 1.19+.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
}

/// Metric values from `/subtasks/:i/metrics?get=…`: id → raw string value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricValues(pub BTreeMap<String, String>);

impl MetricValues {
    pub fn raw(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(String::as_str)
    }

    /// The value as a number; `None` if absent, unparsable or `NaN`.
    pub fn f64(&self, id: &str) -> Option<f64> {
        self.raw(id)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| !v.is_nan())
    }
}

#[derive(Deserialize)]
struct MetricEntry {
    id: String,
    #[serde(default)]
    value: Option<String>,
}

/// One entry of `/subtasks/metrics?get=…&agg=…` (absent aggregations are `None`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AggregatedMetric {
    pub id: String,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub min: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub max: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub avg: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub sum: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub skew: Option<f64>,
}

/// `GET /jobs/:jid/vertices/:vid/backpressure` (1.13+ metric-based).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BackPressure {
    /// `"ok"`, or `"deprecated"` while the JM has no metrics for the vertex yet.
    pub status: String,
    /// 1.16+ name.
    #[serde(rename = "backpressureLevel", default)]
    pub backpressure_level: Option<String>,
    /// Legacy name, still serialized in 2.x.
    #[serde(rename = "backpressure-level", default)]
    pub backpressure_level_legacy: Option<String>,
    #[serde(rename = "end-timestamp", default)]
    pub end_timestamp: Option<i64>,
    #[serde(default)]
    pub subtasks: Vec<SubtaskBackPressure>,
}

impl BackPressure {
    /// The vertex level under either field name (`ok`, `low`, `high`).
    pub fn level(&self) -> Option<&str> {
        self.backpressure_level
            .as_deref()
            .or(self.backpressure_level_legacy.as_deref())
    }

    pub fn subtask(&self, index: u32) -> Option<&SubtaskBackPressure> {
        self.subtasks.iter().find(|s| s.subtask == index)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubtaskBackPressure {
    pub subtask: u32,
    #[serde(rename = "attempt-number", default)]
    pub attempt_number: Option<u32>,
    #[serde(rename = "backpressureLevel", default)]
    pub backpressure_level: Option<String>,
    #[serde(rename = "backpressure-level", default)]
    pub backpressure_level_legacy: Option<String>,
    /// back-pressured (soft + hard) / 1000; `None` if absent or `NaN`.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub ratio: Option<f64>,
    #[serde(rename = "idleRatio", default, deserialize_with = "lenient_f64")]
    pub idle_ratio: Option<f64>,
    #[serde(rename = "busyRatio", default, deserialize_with = "lenient_f64")]
    pub busy_ratio: Option<f64>,
}

impl SubtaskBackPressure {
    pub fn level(&self) -> Option<&str> {
        self.backpressure_level
            .as_deref()
            .or(self.backpressure_level_legacy.as_deref())
    }
}

/// Accepts a JSON number, a numeric string or `"NaN"`/null; NaN becomes `None`.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| !x.is_nan()))
}

/// Blocking REST client bound to one cluster.
#[derive(Debug, Clone)]
pub struct FlinkRest {
    base: String,
    http: Client,
}

impl FlinkRest {
    /// `base_url` like `http://127.0.0.1:8081` (no trailing slash needed).
    pub fn new(base_url: &str) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building HTTP client")?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET `path` (starting with `/`) and decode JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .with_context(|| format!("GET {url}"))?;
        decode(resp, &format!("GET {url}"))
    }

    /// GET `path` as untyped JSON (for anything this client has no type for).
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.get(path)
    }

    pub fn overview(&self) -> Result<Overview> {
        self.get("/overview")
    }

    pub fn taskmanagers(&self) -> Result<Vec<TaskManagerInfo>> {
        Ok(self
            .get::<TaskManagersResponse>("/taskmanagers")?
            .taskmanagers)
    }

    pub fn jobs_overview(&self) -> Result<Vec<JobOverview>> {
        Ok(self.get::<JobsOverviewResponse>("/jobs/overview")?.jobs)
    }

    pub fn job(&self, jid: &str) -> Result<JobDetails> {
        self.get(&format!("/jobs/{jid}"))
    }

    pub fn job_plan(&self, jid: &str) -> Result<JobPlan> {
        self.get(&format!("/jobs/{jid}/plan"))
    }

    pub fn vertex(&self, jid: &str, vid: &str) -> Result<VertexDetails> {
        self.get(&format!("/jobs/{jid}/vertices/{vid}"))
    }

    /// Per-subtask metric values. Flink silently omits unknown ids, so missing keys are normal.
    pub fn subtask_metrics(
        &self,
        jid: &str,
        vid: &str,
        subtask: u32,
        ids: &[&str],
    ) -> Result<MetricValues> {
        let path = format!(
            "/jobs/{jid}/vertices/{vid}/subtasks/{subtask}/metrics?get={}",
            ids.join(",")
        );
        let entries: Vec<MetricEntry> = self.get(&path)?;
        Ok(MetricValues(
            entries
                .into_iter()
                .filter_map(|e| e.value.map(|v| (e.id, v)))
                .collect(),
        ))
    }

    /// Aggregated over all subtasks of a vertex; `aggs` from `min,max,avg,sum` (+`skew` on 1.20+).
    pub fn aggregated_subtask_metrics(
        &self,
        jid: &str,
        vid: &str,
        ids: &[&str],
        aggs: &[&str],
    ) -> Result<Vec<AggregatedMetric>> {
        let path = format!(
            "/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={}&agg={}",
            ids.join(","),
            aggs.join(",")
        );
        self.get(&path)
    }

    /// Flink's own back-pressure view of a vertex.
    pub fn backpressure(&self, jid: &str, vid: &str) -> Result<BackPressure> {
        self.get(&format!("/jobs/{jid}/vertices/{vid}/backpressure"))
    }

    /// Uploads a jar (`POST /jars/upload`) and returns its jar id.
    pub fn upload_jar(&self, jar: &Path) -> Result<String> {
        let bytes = std::fs::read(jar).with_context(|| format!("reading {}", jar.display()))?;
        let file_name = jar
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("job.jar")
            .replace('"', "_");
        // Hand-built multipart body: one file part named "jarfile", as the web UI sends it.
        let boundary = format!(
            "bpmon-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"jarfile\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/x-java-archive\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/jars/upload", self.base);
        let resp = self
            .http
            .post(&url)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .with_context(|| format!("POST {url}"))?;
        #[derive(Deserialize)]
        struct Uploaded {
            filename: String,
        }
        let up: Uploaded = decode(resp, &format!("POST {url} ({})", jar.display()))?;
        // The jar id is the stored file's name.
        let id = up
            .filename
            .rsplit('/')
            .next()
            .unwrap_or(&up.filename)
            .to_string();
        Ok(id)
    }

    /// Runs an uploaded jar (`POST /jars/:id/run`): the JobManager executes `main` and submits
    /// the job. Returns the job id.
    pub fn run_jar(&self, jar_id: &str, entry_class: &str, args: &[&str]) -> Result<String> {
        let url = format!("{}/jars/{jar_id}/run", self.base);
        let body = serde_json::json!({ "entryClass": entry_class, "programArgsList": args });
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .with_context(|| format!("POST {url}"))?;
        #[derive(Deserialize)]
        struct Ran {
            jobid: String,
        }
        let ran: Ran = decode(resp, &format!("POST {url} {entry_class} {args:?}"))?;
        Ok(ran.jobid)
    }

    /// Uploads `jar` and runs `main_class` with `args`; returns the job id.
    pub fn submit_job(&self, jar: &Path, main_class: &str, args: &[&str]) -> Result<String> {
        let jar_id = self.upload_jar(jar)?;
        self.run_jar(&jar_id, main_class, args)
    }

    /// Waits until the job is RUNNING and every subtask of every vertex is RUNNING.
    /// Fails early if the job reaches a terminal state (with Flink's root exception).
    pub fn wait_job_running(&self, jid: &str, timeout: Duration) -> Result<JobDetails> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.job(jid) {
                Ok(job) => {
                    if matches!(
                        job.state.as_str(),
                        "FAILED" | "CANCELED" | "FINISHED" | "SUSPENDED"
                    ) {
                        let exc = self.get_json(&format!("/jobs/{jid}/exceptions")).ok();
                        let root = exc
                            .as_ref()
                            .and_then(|e| e.get("root-exception"))
                            .and_then(|r| r.as_str())
                            .unwrap_or("<no root exception>");
                        bail!(
                            "job {jid} ({}) reached {} before running: {root}",
                            job.name,
                            job.state
                        );
                    }
                    if job.state == "RUNNING" {
                        let mut pending = Vec::new();
                        for v in &job.vertices {
                            let details = self.vertex(jid, &v.id)?;
                            for s in details.subtasks.iter().filter(|s| s.status != "RUNNING") {
                                pending.push(format!("{} #{} {}", v.name, s.subtask, s.status));
                            }
                        }
                        if pending.is_empty() {
                            return Ok(job);
                        }
                        last = format!("job RUNNING, subtasks not yet: {}", pending.join(", "));
                    } else {
                        last = format!("job state {}", job.state);
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("job {jid} not fully RUNNING after {timeout:?}: {last}");
            }
            sleep(Duration::from_millis(500));
        }
    }

    /// Cancels a job (`PATCH /jobs/:jid?mode=cancel`) and waits up to 30 s for CANCELED.
    pub fn cancel_job(&self, jid: &str) -> Result<()> {
        let url = format!("{}/jobs/{jid}?mode=cancel", self.base);
        let resp = self
            .http
            .patch(&url)
            .send()
            .with_context(|| format!("PATCH {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "PATCH {url}: HTTP {status}: {}",
                resp.text().unwrap_or_default()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.job(jid)?.state;
            if matches!(state.as_str(), "CANCELED" | "FAILED" | "FINISHED") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("job {jid} still {state} 30 s after cancel");
            }
            sleep(Duration::from_millis(300));
        }
    }
}

fn decode<T: DeserializeOwned>(resp: Response, what: &str) -> Result<T> {
    let status = resp.status();
    let text = resp
        .text()
        .with_context(|| format!("{what}: reading body"))?;
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {}", truncate(&text, 2000));
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{what}: decoding {}", truncate(&text, 2000)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backpressure_both_level_names_and_nan() {
        let json = r#"{"status":"ok","backpressureLevel":"low","backpressure-level":"low","end-timestamp":1700000000000,
          "subtasks":[{"subtask":0,"backpressureLevel":"ok","backpressure-level":"ok","ratio":0.0,"idleRatio":0.93,"busyRatio":"NaN"},
                      {"subtask":1,"attempt-number":1,"backpressure-level":"high","ratio":0.9,"idleRatio":0.1,"busyRatio":0.0}]}"#;
        let bp: BackPressure = serde_json::from_str(json).unwrap();
        assert_eq!(bp.level(), Some("low"));
        assert_eq!(bp.subtask(0).unwrap().busy_ratio, None);
        assert_eq!(bp.subtask(0).unwrap().idle_ratio, Some(0.93));
        assert_eq!(bp.subtask(1).unwrap().level(), Some("high"));
        let deprecated: BackPressure = serde_json::from_str(r#"{"status":"deprecated"}"#).unwrap();
        assert_eq!(deprecated.level(), None);
    }

    #[test]
    fn metric_values_treat_nan_as_missing() {
        let mut m = MetricValues::default();
        m.0.insert("busyTimeMsPerSecond".into(), "NaN".into());
        m.0.insert("idleTimeMsPerSecond".into(), "912".into());
        assert_eq!(m.f64("busyTimeMsPerSecond"), None);
        assert_eq!(m.f64("idleTimeMsPerSecond"), Some(912.0));
        assert_eq!(m.f64("absent"), None);
    }

    #[test]
    fn plan_edges() {
        let json = r#"{"plan":{"jid":"j","name":"n","type":"STREAMING","nodes":[
            {"id":"b","parallelism":2,"operator":"","description":"x","inputs":[{"num":0,"id":"a","ship_strategy":"REBALANCE","exchange":"pipelined_bounded"}]},
            {"id":"a","parallelism":2,"operator":"","description":"y"}]}}"#;
        let plan: JobPlan = serde_json::from_str(json).unwrap();
        assert_eq!(
            plan.edges(),
            vec![PlanEdge {
                source: "a".into(),
                target: "b".into(),
                ship_strategy: "REBALANCE".into()
            }]
        );
    }
}
