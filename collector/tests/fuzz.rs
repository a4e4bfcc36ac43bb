//! Fuzzing of what comes from outside the collector, with proptest: random and mutated inputs
//! for the report batch decoder (and its bounds, and placing what it accepts), the Flink REST
//! helpers that read Flink's strings, and the in-process sampler's wire protocol. Each target
//! must never panic, and what it accepts must keep its invariants.
//!
//! CI runs the default number of cases; a long run is one command:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p bpmon-collector --test fuzz
//! ```
//!
//! Seeds are the real shapes: a batch as the agent ships it, Flink's RPC paths and metric ids.

use bpmon_collector::flink_rest::{metrics_from_pairs, taskmanager_ref};
use bpmon_collector::model::{ClusterSnapshot, JobSnapshot, SubtaskSnapshot, VertexSnapshot};
use bpmon_collector::server::parse_batch;
use bpmon_collector::service::placement::place_batch;
use bpmon_proto::inprocess::{InProcessSample, Known, Request, Response};
use proptest::prelude::*;

/// A batch as the agent ships it (one report, one task), as JSON text.
fn seed_batch(samples: u64, blocked: u64, waiting: u64, start: u64, seq: u64) -> String {
    format!(
        r#"{{"schema_version":1,"agent_id":"tm-host-1","seq":{seq},"host_names":["tm-host-1","10.0.0.1"],
"created_at_ms":1000,"reports":[{{"pid":4242,"backend":"attach",
"jvm":{{"version":"17.0.15","main_class":"org.apache.flink.runtime.taskexecutor.TaskManagerRunner","listen_ports":[6121,6122],
"network":{{"addresses":["127.0.0.1","10.0.0.1"],"listen":["0.0.0.0:6122"],"host_name":"tm-host-1","host_netns":true}}}},
"samples":{samples},"delay_ms":50,"started_at_ms":{start},"elapsed_ms":4950,
"cost":{{"dumps":{samples},"dump_us_p50":1000,"dump_us_max":2000,"parse_us_p50":80,"safepoints":null,"safepoint_ms_total":null,"skipped_lines":0}},
"errors":[],"tasks":[{{"thread":"Map (1/2)#0","thread_id":64,"elapsed_s":12.5,"task":"Map","subtask":0,"parallelism":2,
"attempt":0,"samples":{samples},"blocked":{blocked},"waiting":{waiting},"busy":0,"top_frames":[]}}]}}]}}"#
    )
}

fn cluster() -> ClusterSnapshot {
    ClusterSnapshot {
        flink_url: "http://flink:8081".into(),
        taskmanagers_unread: false,
        flink_version: Some("2.3.0".into()),
        fetched_at_ms: 0,
        jobs: vec![JobSnapshot {
            job_id: "j".into(),
            name: "job".into(),
            state: "RUNNING".into(),
            start_time_ms: Some(0),
            vertices: vec![VertexSnapshot {
                vertex_id: "v".into(),
                name: "Map".into(),
                parallelism: 2,
                subtasks: (0..2)
                    .map(|i| SubtaskSnapshot {
                        subtask: i,
                        attempt: 0,
                        status: "RUNNING".into(),
                        taskmanager_id: Some("10.0.0.1:6122-abcdef".into()),
                        host: Some("10.0.0.1".into()),
                        start_time_ms: Some(0),
                        metrics: Default::default(),
                    })
                    .collect(),
            }],
            edges: vec![],
        }],
        taskmanagers: vec![taskmanager_ref(
            "10.0.0.1:6122-abcdef",
            Some("pekko.tcp://flink@10.0.0.1:6122/user/rpc/taskmanager_0"),
            Some(6121),
        )],
        errors: vec![],
    }
}

const NOW_MS: u64 = 2_000_000_000_000;

proptest! {
    /// Any bytes: a decoded batch or a 4xx, never a panic.
    #[test]
    fn batch_decoder_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match parse_batch(&bytes) {
            Ok(b) => { let _ = b.validate(NOW_MS); }
            Err((status, message)) => {
                prop_assert!(status.is_client_error(), "{status}: {message}");
            }
        }
    }

    /// The real batch with bytes flipped, cut or inserted.
    #[test]
    fn batch_decoder_takes_mutated_batches(
        at in 0usize..1500,
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = seed_batch(100, 40, 60, NOW_MS - 10_000, 7).into_bytes();
        let at = at.min(bytes.len().saturating_sub(1));
        match how {
            0 => bytes[at] = byte,
            1 => bytes.truncate(at),
            _ => bytes.insert(at, byte),
        }
        if let Err((status, _)) = parse_batch(&bytes) {
            prop_assert!(status.is_client_error());
        }
    }

    /// Extreme numbers: whatever the bounds let through keeps its invariants, and placing and
    /// merging it neither panics nor gives a ratio outside [0, 1].
    #[test]
    fn accepted_batches_keep_their_invariants(
        samples in prop_oneof![Just(0u64), 1u64..200, Just(u32::MAX as u64), Just(u64::MAX)],
        blocked in prop_oneof![0u64..200, Just(u32::MAX as u64)],
        waiting in prop_oneof![0u64..200, Just(u32::MAX as u64)],
        start in prop_oneof![Just(0u64), Just(NOW_MS), Just(NOW_MS + 3_600_000), Just(i64::MAX as u64), Just(u64::MAX - 1)],
        seq in prop_oneof![Just(1u64), Just(i64::MAX as u64), Just(1u64 << 63), Just(u64::MAX)],
    ) {
        let text = seed_batch(samples, blocked, waiting, start, seq);
        let Ok(batch) = parse_batch(text.as_bytes()) else {
            return Ok(());
        };
        if batch.validate(NOW_MS).is_err() {
            return Ok(());
        }
        let r = &batch.reports[0];
        let t = &r.tasks[0];
        prop_assert!(u64::from(t.blocked) + u64::from(t.waiting) + u64::from(t.busy) <= u64::from(t.samples));
        prop_assert!(r.started_at_ms + r.elapsed_ms <= NOW_MS + 5 * 60 * 1000);
        prop_assert!(batch.seq <= i64::MAX as u64);
        let c = cluster();
        let placed = place_batch(&batch, &[&c]);
        for w in &placed.windows {
            if let Some(ratio) = w.ratio {
                prop_assert!((0.0..=1.0).contains(&ratio), "ratio {ratio}");
            }
        }
    }

    /// Flink's RPC paths, resource ids and ports, any strings: never a panic.
    #[test]
    fn taskmanager_refs_take_any_strings(id in ".{0,64}", path in proptest::option::of(".{0,96}"), port in proptest::option::of(any::<u32>())) {
        let t = taskmanager_ref(&id, path.as_deref(), port);
        prop_assert_eq!(t.id, id);
    }

    /// Metric ids and values as Flink sends them, and garbage.
    #[test]
    fn metric_values_take_any_strings(pairs in proptest::collection::vec(("(0\\.)?(outPoolUsage|inPoolUsage|isBackPressured|busyTimeMsPerSecond|.{0,12})", ".{0,16}"), 0..12)) {
        let m = metrics_from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(u) = m.out_pool_usage {
            prop_assert!(!u.is_nan());
        }
    }

    /// The in-process protocol: any line is a request, a response or an error, never a panic;
    /// a sample naming threads never introduced is an error, not a panic.
    #[test]
    fn inprocess_lines_take_any_text(line in ".{0,256}") {
        let _ = serde_json::from_str::<Request>(&line);
        if let Ok(Response::Sample(mut s)) = serde_json::from_str::<Response>(&line) {
            let _ = Known::default().expand(&mut s);
        }
        if let Ok(mut s) = serde_json::from_str::<InProcessSample>(&line) {
            let _ = Known::default().expand(&mut s);
        }
    }
}

/// The seed itself goes all the way: the targets above are not vacuous.
#[test]
fn the_seed_batch_is_accepted_and_placed() {
    let batch = parse_batch(seed_batch(100, 40, 60, NOW_MS - 10_000, 7).as_bytes()).unwrap();
    batch.validate(NOW_MS).unwrap();
    let placed = place_batch(&batch, &[&cluster()]);
    assert_eq!(placed.windows.len(), 1, "{:?}", placed.unplaced);
    assert_eq!(placed.windows[0].ratio, Some(0.4));
    assert!(
        placed.jvms[0].text.contains("its address 10.0.0.1"),
        "{:?}",
        placed.jvms
    );
}
