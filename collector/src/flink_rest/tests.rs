use std::time::Duration;

use super::client::*;
use super::decode::*;
use super::errors::*;
use super::metrics::*;
use super::topology::*;
use super::wire::*;
use super::*;
use crate::model::*;

#[test]
fn credentials_leave_the_url_for_a_header() {
    let c = FlinkRestClient::new(
        "http://admin:s%40cret@127.0.0.1:8081/",
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(c.base_url(), "http://127.0.0.1:8081");
    assert_eq!(
        c.credentials,
        Some(("admin".to_string(), Some("s@cret".to_string())))
    );
    assert_eq!(
        redact_credentials("https://u:p@flink:8081/x"),
        "https://u:***@flink:8081/x"
    );
    assert_eq!(redact_credentials("http://flink:8081"), "http://flink:8081");
    let e = FlinkRestClient::new("ftp://u:pw@flink", Duration::from_secs(1)).unwrap_err();
    assert!(!e.to_string().contains("pw"), "{e}");
}

#[test]
fn taskmanager_host_and_ports_come_from_path_or_id() {
    let t = taskmanager_ref(
        "bpmon-1-tm0",
        Some("pekko.tcp://flink@127.0.0.1:36265/user/rpc/taskmanager_0"),
        Some(40001),
    );
    assert_eq!(t.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(t.ports(), vec![36265, 40001]);
    assert_eq!((t.rpc_port, t.data_port), (Some(36265), Some(40001)));
    let t = taskmanager_ref("10.0.0.7:41233-6e0c2a", None, Some(0));
    assert_eq!(t.host.as_deref(), Some("10.0.0.7"));
    assert_eq!(t.ports(), vec![41233]);
    let t = taskmanager_ref(
        "x",
        Some("akka.tcp://flink@[::1]:6122/user/rpc/taskmanager_0"),
        None,
    );
    assert_eq!(t.host.as_deref(), Some("::1"));
    assert_eq!(t.ports(), vec![6122]);
    let t = taskmanager_ref("my-tm", Some("pekko://flink/user/rpc/tm"), None);
    assert_eq!((t.host.clone(), t.ports()), (None, vec![]));
}

#[test]
fn metrics_prefer_first_alias_and_parse_values() {
    let m = metrics_from_pairs([
        ("buffers.outPoolUsage", "0.25"),
        ("Shuffle.Netty.Output.Buffers.outPoolUsage", "1.0"),
        ("buffers.inPoolUsage", "0.5"),
        ("exclusiveBuffersUsage", "0.75"),
        ("busyTimeMsPerSecond", "NaN"),
        ("idleTimeMsPerSecond", "12"),
        ("hardBackPressuredTimeMsPerSecond", "not a number"),
        ("softBackPressuredTimeMsPerSecond", " 998 "),
        ("isBackPressured", "true"),
        ("numBytesInLocal", "100"),
        ("Shuffle.Netty.Input.numBytesInRemote", "7"),
        ("numBytesInRemote", "8"),
        ("Source__numbers.numRecordsOut", "5"),
    ]);
    assert_eq!(
        m.out_pool_usage,
        Some(1.0),
        "Shuffle.Netty wins over buffers.*"
    );
    assert_eq!(m.in_pool_usage, Some(0.5), "legacy alias when alone");
    assert_eq!(m.input_exclusive_buffers_usage, Some(0.75));
    assert_eq!(m.input_floating_buffers_usage, None);
    assert_eq!(m.busy_ms, None, "NaN");
    assert_eq!(m.idle_ms, Some(12.0));
    assert_eq!(m.hard_back_pressured_ms, None, "unparseable");
    assert_eq!(m.soft_back_pressured_ms, Some(998.0));
    assert_eq!(m.is_back_pressured, Some(true));
    assert_eq!(m.num_bytes_in_local, Some(100.0));
    assert_eq!(m.num_bytes_in_remote, Some(7.0));
    assert_eq!(
        m.num_records_out, None,
        "operator-scoped ids are not the task's"
    );
    assert_eq!(
        metrics_from_pairs([("isBackPressured", "false")]).is_back_pressured,
        Some(false)
    );
    assert_eq!(
        metrics_from_pairs([("isBackPressured", "maybe")]).is_back_pressured,
        None
    );
    assert_eq!(metrics_from_pairs([]), SubtaskMetrics::default());
}

#[test]
fn first_present_alias_decides_even_when_nan() {
    let m = metrics_from_pairs([
        ("Shuffle.Netty.Output.Buffers.outPoolUsage", "NaN"),
        ("buffers.outPoolUsage", "0.5"),
    ]);
    assert_eq!(m.out_pool_usage, None);
}

#[test]
fn every_field_has_an_alias() {
    let pairs: Vec<(&str, &str)> = METRICS
        .iter()
        .map(|(slot, ids)| {
            (
                ids[0],
                if matches!(slot, Slot::Flag(_)) {
                    "true"
                } else {
                    "1"
                },
            )
        })
        .collect();
    let m = metrics_from_pairs(pairs);
    let json = serde_json::to_value(&m).expect("serializable");
    let obj = json.as_object().expect("object");
    for (field, value) in obj {
        assert!(!value.is_null(), "{field} is filled by no metric id");
    }
}

#[test]
fn groups_prefixed_ids_by_subtask() {
    let g = group_by_subtask([
        ("0.isBackPressured", "true"),
        ("1.Shuffle.Netty.Output.Buffers.outPoolUsage", "0.5"),
        ("12.idleTimeMsPerSecond", "3"),
        ("x.idleTimeMsPerSecond", "3"),
        ("noprefix", "1"),
    ]);
    assert_eq!(g.keys().copied().collect::<Vec<_>>(), vec![0, 1, 12]);
    assert_eq!(g[&0].is_back_pressured, Some(true));
    assert_eq!(g[&1].out_pool_usage, Some(0.5));
    assert_eq!(g[&12].idle_ms, Some(3.0));
}

#[test]
fn metric_queries_fit_the_limit_and_cover_everything() {
    let ids = requested_metric_ids();
    let path =
        "/jobs/0123456789abcdef0123456789abcdef/vertices/0123456789abcdef0123456789abcdef/metrics";
    let small = metric_queries(path, 2, &ids, MAX_REQUEST_TARGET_LEN);
    assert_eq!(small.len(), 1, "parallelism 2: one request");
    for p in [1u32, 2, 5, 17, 128] {
        let qs = metric_queries(path, p, &ids, MAX_REQUEST_TARGET_LEN);
        let mut got = Vec::new();
        for q in &qs {
            assert!(q.len() <= MAX_REQUEST_TARGET_LEN, "{} > limit", q.len());
            let (head, list) = q.split_once("?get=").expect("query");
            assert_eq!(head, path);
            got.extend(list.split(',').map(str::to_string));
        }
        let want: Vec<String> = (0..p)
            .flat_map(|s| ids.iter().map(move |id| format!("{s}.{id}")))
            .collect();
        assert_eq!(got, want, "parallelism {p}");
        // Greedy packing: every request but the last is filled to within one token of the limit.
        let total: usize = want.iter().map(|t| t.len() + 1).sum();
        let longest = want.iter().map(|t| t.len() + 1).max().unwrap_or(0);
        let room = MAX_REQUEST_TARGET_LEN - path.len() - "?get=".len() - longest;
        assert!(qs.len() <= total / room + 1, "{} requests", qs.len());
    }
    assert!(metric_queries(path, 0, &ids, MAX_REQUEST_TARGET_LEN).is_empty());
}

fn vertex(id: &str) -> VertexSnapshot {
    VertexSnapshot {
        vertex_id: id.into(),
        name: id.to_uppercase(),
        parallelism: 1,
        subtasks: Vec::new(),
    }
}

fn edge(s: &str, t: &str) -> Edge {
    Edge {
        source: s.into(),
        target: t.into(),
        ship_strategy: None,
    }
}

fn ids(vs: &[VertexSnapshot]) -> Vec<&str> {
    vs.iter().map(|v| v.vertex_id.as_str()).collect()
}

#[test]
fn topological_order_sources_first() {
    // Plan order as Flink gives it: sinks first.
    let (vs, es) = topological(
        vec![
            vertex("sink"),
            vertex("map"),
            vertex("src2"),
            vertex("src1"),
        ],
        vec![
            edge("map", "sink"),
            edge("src1", "map"),
            edge("src2", "map"),
            edge("src1", "sink"),
        ],
    );
    assert_eq!(ids(&vs), vec!["src2", "src1", "map", "sink"]);
    assert_eq!(
        es,
        vec![
            edge("src2", "map"),
            edge("src1", "map"),
            edge("src1", "sink"),
            edge("map", "sink")
        ]
    );
    // A cycle and an unknown end do not lose anything.
    let (vs, es) = topological(
        vec![vertex("a"), vertex("b"), vertex("c")],
        vec![edge("b", "c"), edge("c", "b"), edge("zz", "a")],
    );
    assert_eq!(ids(&vs), vec!["a", "b", "c"]);
    assert_eq!(es.len(), 3);
    assert_eq!(es[2], edge("zz", "a"));
}

#[test]
fn plan_edges_from_inputs() {
    let plan: PlanWire = serde_json::from_str(
        r#"{"jid":"j","name":"n","type":"STREAMING","nodes":[
          {"id":"b","parallelism":2,"operator":"","description":"x","optimizer_properties":{},
           "inputs":[{"num":0,"id":"a","ship_strategy":"REBALANCE","exchange":"pipelined_bounded"},
                     {"num":1,"id":"c","ship_strategy":""}]},
          {"id":"a","parallelism":2}]}"#,
    )
    .expect("plan");
    let es = plan_edges(&plan);
    assert_eq!(es.len(), 2);
    assert_eq!(es[0].source, "a");
    assert_eq!(es[0].target, "b");
    assert_eq!(es[0].ship_strategy.as_deref(), Some("REBALANCE"));
    assert_eq!(es[1].ship_strategy, None);
}

fn subtask(json: &str) -> SubtaskSnapshot {
    serde_json::from_str::<SubtaskWire>(json)
        .expect("subtask")
        .into_snapshot(SubtaskMetrics::default())
}

#[test]
fn subtask_placement_across_versions() {
    // 1.20.3: host and endpoint.
    let s = subtask(
        r#"{"subtask":0,"status":"RUNNING","attempt":0,"host":"localhost","endpoint":"localhost:36543",
            "start-time":1795534845225,"end-time":-1,"duration":30502,"metrics":{},
            "taskmanager-id":"tm1","status-duration":{"RUNNING":1},"start_time":1795534845225}"#,
    );
    assert_eq!(s.host.as_deref(), Some("localhost:36543"));
    assert_eq!(s.taskmanager_id.as_deref(), Some("tm1"));
    assert_eq!(s.start_time_ms, Some(1795534845225));
    assert_eq!(s.status, "RUNNING");
    // 2.3.0: endpoint only.
    let s = subtask(
        r#"{"subtask":1,"status":"RUNNING","attempt":2,"endpoint":"localhost:44901","start-time":5}"#,
    );
    assert_eq!((s.subtask, s.attempt), (1, 2));
    assert_eq!(s.host.as_deref(), Some("localhost:44901"));
    // ≤ 1.18: host only; no taskmanager-id; not started.
    let s = subtask(
        r#"{"subtask":0,"status":"CREATED","attempt":0,"host":"(unassigned)","start-time":-1}"#,
    );
    assert_eq!(s.host.as_deref(), Some("(unassigned)"));
    assert_eq!(s.taskmanager_id, None);
    assert_eq!(s.start_time_ms, None);
    // An endpoint object; legacy start_time only.
    let s =
        subtask(r#"{"subtask":0,"endpoint":{"address":"10.0.0.5","port":6121},"start_time":7}"#);
    assert_eq!(s.host.as_deref(), Some("10.0.0.5:6121"));
    assert_eq!(s.start_time_ms, Some(7));
}

#[test]
fn job_lists_of_both_endpoints() {
    let o: JobListWire = serde_json::from_str(
        r#"{"jobs":[{"jid":"a","name":"n","state":"RUNNING","start-time":1,"tasks":{}}]}"#,
    )
    .expect("overview");
    assert_eq!(o.jobs[0].jid, "a");
    assert_eq!(o.jobs[0].state.as_deref(), Some("RUNNING"));
    let j: JobListWire =
        serde_json::from_str(r#"{"jobs":[{"id":"b","status":"FINISHED"}]}"#).expect("jobs");
    assert_eq!(j.jobs[0].jid, "b");
    assert_eq!(j.jobs[0].state.as_deref(), Some("FINISHED"));
}

#[test]
fn metric_values_of_any_scalar_type() {
    let entries: Vec<MetricWire> = serde_json::from_str(
        r#"[{"id":"0.a","value":"NaN"},{"id":"0.b","value":3.5},{"id":"0.c","value":true},{"id":"0.d"}]"#,
    )
    .expect("metrics");
    let pairs: Vec<(String, String)> = entries
        .into_iter()
        .filter_map(MetricWire::into_pair)
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("0.a".to_string(), "NaN".to_string()),
            ("0.b".to_string(), "3.5".to_string()),
            ("0.c".to_string(), "true".to_string())
        ]
    );
}

#[test]
fn json_errors_are_told_apart() {
    let e = decode_json::<ConfigWire>("http://x/config", b"<html>oops</html>").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("GET http://x/config: invalid JSON at line 1 column 1: expected value"),
        "{msg}"
    );
    assert!(msg.contains("<html>"), "{msg}");
    let e = decode_json::<JobListWire>("http://x/jobs", br#"{"jobs":[{"name":1}]}"#).unwrap_err();
    assert!(matches!(e, FetchError::UnexpectedJson { .. }), "{e}");
    let e = decode_json::<JobListWire>("http://x/jobs", br#"{"jobs":[{"#).unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid JSON at line 1 column 10: EOF"),
        "{e}"
    );
    // A list expected, a broken object sent: the syntax error is what counts.
    let e = decode_json::<Vec<MetricWire>>("http://x/m", b"{not json").unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::InvalidJson {
                line: 1,
                column: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn flink_error_bodies() {
    assert_eq!(
        flink_error_message(br#"{"errors":["Not found: /jobs/x"]}"#),
        "Not found: /jobs/x"
    );
    assert_eq!(flink_error_message(b""), "(empty body)");
    assert_eq!(flink_error_message(b"plain text"), "plain text");
    assert!(flink_error_message(&[b'x'; 1000]).ends_with('…'));
}

#[test]
fn timeout_message_format() {
    let e = FetchError::Timeout {
        url: "http://h/config".into(),
        after: Duration::from_secs(5),
    };
    assert_eq!(e.to_string(), "GET http://h/config: timed out after 5s");
    assert!(e.is_unreachable());
}

#[test]
fn rejects_bad_base_urls() {
    let t = Duration::from_secs(1);
    assert!(FlinkRestClient::new("localhost:8081", t).is_err());
    assert!(FlinkRestClient::new("ftp://h:1", t).is_err());
    assert!(FlinkRestClient::new("http://h:1/?x=1", t).is_err());
    let c = FlinkRestClient::new("http://h:1/flink/", t).expect("valid");
    assert_eq!(c.base_url(), "http://h:1/flink");
    assert_eq!(c.base_path_len, "/flink".len());
}
