//! Parses every real thread dump in `tests/fixtures/` (`*.txt`) and checks it against its
//! expectation file.
//!
//! Every fixture must parse with no skipped line, name a JVM version and reach the end of the
//! thread list. A fixture `<run>.<variant>.txt` is also checked against `<run>.expect.toml` when
//! that file exists (one file serves `jstack`, `jstack -l` and `jcmd` dumps of the same JVM);
//! see `tests/fixtures/README.md` for its format. To draft one for a new dump, run
//!
//! ```sh
//! BPMON_PRINT_FIXTURES=1 cargo test -p bpmon-stacks --test fixtures -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bpmon_stacks::classify::{classify, SampleClass};
use bpmon_stacks::threaddump::{parse, parse_filtered, LockKind, ThreadDump, ThreadInfo};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    jvm_version: Option<String>,
    threads: Option<usize>,
    java_threads: Option<usize>,
    deadlock: Option<bool>,
    #[serde(default)]
    thread: Vec<ExpectThread>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectThread {
    name: String,
    java_id: Option<u64>,
    os_tid: Option<u64>,
    daemon: Option<bool>,
    /// As printed: `TIMED_WAITING (parking)`; `none` for a thread without a state line.
    state: Option<String>,
    carrying_virtual_thread: Option<u64>,
    frames: Option<usize>,
    virtual_frames: Option<usize>,
    /// The top frame, rendered `class.method(location)`.
    top: Option<String>,
    /// Frames that must be in the stack, rendered `class.method(location)`.
    #[serde(default)]
    contains: Vec<String>,
    class: Option<SampleClass>,
    /// For busy samples: the frame the classifier reports.
    top_frame: Option<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixtures() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // Dumps are bytes; the agent converts them lossily too.
            let text = String::from_utf8_lossy(&fs::read(&p).expect("read fixture")).into_owned();
            (name, text)
        })
        .collect();
    out.sort();
    out
}

fn fixture(name: &str) -> ThreadDump {
    let text = fs::read_to_string(fixtures_dir().join(name)).expect("read fixture");
    parse(&text)
}

/// `<run>.expect.toml` for `<run>.<variant>.txt`.
fn expectations(fixture: &str) -> Option<(String, Expect)> {
    let run = fixture.split('.').next()?;
    let path = fixtures_dir().join(format!("{run}.expect.toml"));
    let text = fs::read_to_string(&path).ok()?;
    let expect = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some((format!("{run}.expect.toml"), expect))
}

fn print_dump(name: &str, dump: &ThreadDump) {
    println!("== {name}: {:?}", dump.summary);
    for t in &dump.threads {
        let h = &t.header;
        let c = classify(&t.frames);
        println!(
            "{:?} java_id={:?} os_tid={:?} daemon={} state={:?} carrying={:?} frames={} virtual={} top={:?} class={} top_frame={:?}",
            h.name,
            h.java_id,
            h.os_tid,
            h.daemon,
            h.state.map(|s| s.as_java_str()),
            h.carrying_virtual_thread,
            t.frames.len(),
            t.virtual_frames,
            t.frames.first().map(|f| f.as_str()),
            c.class,
            c.top_frame.map(|f| f.as_str()),
        );
    }
}

fn check_thread(ctx: &str, t: &ThreadInfo, e: &ExpectThread) {
    let h = &t.header;
    if let Some(id) = e.java_id {
        assert_eq!(h.java_id, Some(id), "{ctx}: java_id");
    }
    if let Some(id) = e.os_tid {
        assert_eq!(h.os_tid, Some(id), "{ctx}: os_tid");
    }
    if let Some(d) = e.daemon {
        assert_eq!(h.daemon, d, "{ctx}: daemon");
    }
    if let Some(s) = &e.state {
        let got = h.state.map_or("none", |s| s.as_java_str());
        assert_eq!(got, s, "{ctx}: state");
    }
    if let Some(v) = e.carrying_virtual_thread {
        assert_eq!(
            h.carrying_virtual_thread,
            Some(v),
            "{ctx}: carrying_virtual_thread"
        );
    }
    if let Some(n) = e.frames {
        assert_eq!(t.frames.len(), n, "{ctx}: frames");
    }
    if let Some(n) = e.virtual_frames {
        assert_eq!(t.virtual_frames, n, "{ctx}: virtual_frames");
    }
    if let Some(top) = &e.top {
        assert_eq!(
            t.frames.first().map(|f| f.as_str()),
            Some(top.as_str()),
            "{ctx}: top"
        );
    }
    for frame in &e.contains {
        assert!(
            t.frames.iter().any(|f| f.as_str() == frame),
            "{ctx}: no frame {frame:?} in {:#?}",
            t.frames
        );
    }
    let c = classify(&t.frames);
    if let Some(class) = e.class {
        assert_eq!(c.class, class, "{ctx}: class");
    }
    if let Some(top) = &e.top_frame {
        assert_eq!(
            c.top_frame.map(|f| f.as_str()),
            Some(top.as_str()),
            "{ctx}: top_frame"
        );
    }
}

#[test]
fn every_fixture_parses_cleanly_and_meets_its_expectations() {
    let print = std::env::var_os("BPMON_PRINT_FIXTURES").is_some();
    let all = fixtures();
    assert!(
        all.len() >= 7,
        "fixtures missing: {:?}",
        all.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut checked_expectations = 0;
    for (name, text) in &all {
        let dump = parse(text);
        if print {
            print_dump(name, &dump);
        }
        let s = &dump.summary;
        assert_eq!(
            s.skipped_lines, 0,
            "{name}: skipped lines {:?}",
            s.skipped_examples
        );
        assert!(s.complete, "{name}: end of the thread list not found");
        assert!(s.jvm_version.is_some(), "{name}: no JVM version");
        assert_eq!(s.threads, dump.threads.len(), "{name}");
        assert_eq!(s.lines, text.lines().count(), "{name}");
        assert!(
            s.java_threads > 0 && s.java_threads <= s.threads,
            "{name}: {s:?}"
        );
        for t in &dump.threads {
            assert!(!t.header.name.is_empty(), "{name}: unnamed thread");
            assert_eq!(t.frames.len(), t.frame_count, "{name}: {:?}", t.header.name);
            if t.header.is_java_thread() {
                // Every Java thread has a state line, except a carrier, which says what it carries.
                assert!(
                    t.header.state.is_some() || t.header.carrying_virtual_thread.is_some(),
                    "{name}: {:?} has no state",
                    t.header.name
                );
                assert!(
                    t.header.java_id.is_some(),
                    "{name}: {:?} has no id",
                    t.header.name
                );
            } else {
                assert!(
                    t.frames.is_empty(),
                    "{name}: VM thread {:?} has frames",
                    t.header.name
                );
            }
        }
        // Keeping no frames must not change what is counted.
        let lean = parse_filtered(text, |_| false);
        assert_eq!(lean.summary, dump.summary, "{name}");
        assert!(lean
            .threads
            .iter()
            .all(|t| t.frames.is_empty() && t.locks.is_empty()));
        assert_eq!(
            lean.threads
                .iter()
                .map(|t| t.frame_count)
                .collect::<Vec<_>>(),
            dump.threads
                .iter()
                .map(|t| t.frame_count)
                .collect::<Vec<_>>(),
            "{name}"
        );

        let Some((expect_name, expect)) = expectations(name) else {
            continue;
        };
        checked_expectations += 1;
        let ctx = format!("{name} ({expect_name})");
        if let Some(v) = &expect.jvm_version {
            assert_eq!(s.jvm_version.as_ref(), Some(v), "{ctx}");
        }
        if let Some(n) = expect.threads {
            assert_eq!(s.threads, n, "{ctx}: threads");
        }
        if let Some(n) = expect.java_threads {
            assert_eq!(s.java_threads, n, "{ctx}: java_threads");
        }
        if let Some(d) = expect.deadlock {
            assert_eq!(s.deadlock, d, "{ctx}: deadlock");
        }
        for e in &expect.thread {
            let t = dump
                .threads
                .iter()
                .find(|t| {
                    t.header.name == e.name
                        && e.java_id.is_none_or(|id| t.header.java_id == Some(id))
                })
                .unwrap_or_else(|| panic!("{ctx}: no thread {:?}", e.name));
            check_thread(&format!("{ctx}: {:?}", e.name), t, e);
        }
    }
    assert!(checked_expectations >= 7, "expectation files missing");
}

#[test]
fn jcmd_dumps_start_with_the_pid() {
    assert_eq!(
        fixture("jdk17-named-threads.jcmd.txt").summary.pid,
        Some(6851)
    );
    assert_eq!(
        fixture("jdk25-named-threads.jcmd-e.txt").summary.pid,
        Some(11461)
    );
    assert_eq!(fixture("jdk17-named-threads.jstack.txt").summary.pid, None);
}

#[test]
fn headers_carry_cpu_elapsed_and_tid() {
    let dump = fixture("jdk17-named-threads.jstack.txt");
    assert_eq!(
        dump.summary.timestamp.as_deref(),
        Some("2026-11-24 14:23:41")
    );
    let main = dump.thread("main").expect("main");
    assert_eq!(main.header.cpu_ms, Some(36.96));
    assert_eq!(main.header.elapsed_s, Some(1.94));
    assert_eq!(main.header.tid, Some(0x00007fd170017f10));
    assert_eq!(main.header.prio, Some(5));
    assert_eq!(main.header.os_prio, Some(0));
    // `-e` adds `allocated=` and `defined_classes=`, which must not disturb the other tokens.
    let dump = fixture("jdk25-named-threads.jcmd-e.txt");
    let main = dump.thread("main").expect("main");
    assert_eq!(main.header.java_id, Some(3));
    assert_eq!(main.header.os_tid, Some(11463));
    assert_eq!(main.header.cpu_ms, Some(89.54));
    assert_eq!(main.header.tid, Some(0x00007f8f3402a890));
}

#[test]
fn lock_lines_are_attached_to_their_frames() {
    let dump = fixture("jdk17-named-threads.jstack.txt");
    let waiter = dump.thread("object-waiter").expect("object-waiter");
    let kinds: Vec<(usize, LockKind)> = waiter.locks.iter().map(|l| (l.frame, l.kind)).collect();
    assert_eq!(kinds, [(0, LockKind::WaitingOn), (2, LockKind::Locked)]);
    assert_eq!(
        waiter.locks[0].object,
        "<0x00000000ffd97040> (a java.lang.Object)"
    );
    let clinit = dump.thread("clinit-waiter").expect("clinit-waiter");
    assert_eq!(clinit.locks[0].kind, LockKind::WaitingOnClassInit);
    assert_eq!(clinit.locks[0].object, "NamedThreads$SlowInit");
    let parked = dump
        .thread("Source: a \"quoted\" (x) -> map (1/2)#0")
        .expect("task thread");
    assert_eq!(parked.locks[0].kind, LockKind::ParkingToWaitFor);
    assert_eq!(
        parked.locks[0].object,
        "<0x00000000ffd522e0> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)"
    );
}

#[test]
fn ownable_synchronizer_sections_do_not_become_locks() {
    let plain = fixture("jdk17-named-threads.jstack.txt");
    let with_l = fixture("jdk17-named-threads.jstack-l.txt");
    assert_eq!(with_l.summary.skipped_lines, 0);
    assert!(with_l.summary.lines > plain.summary.lines + 50);
    let locks = |d: &ThreadDump| d.threads.iter().map(|t| t.locks.len()).collect::<Vec<_>>();
    assert_eq!(locks(&with_l), locks(&plain));
}

#[test]
fn mounted_virtual_thread_frames_come_first() {
    let dump = fixture("jdk25-named-threads.jstack-l.txt");
    let carrier = dump.thread("ForkJoinPool-1-worker-1").expect("carrier");
    let vframes = carrier.virtual_thread_frames();
    assert_eq!(
        vframes.first().map(|f| f.qualified_method()),
        Some("java.io.FileInputStream.readBytes")
    );
    assert_eq!(
        vframes.last().map(|f| f.qualified_method()),
        Some("jdk.internal.vm.Continuation.enter")
    );
    let own = carrier.own_frames();
    assert_eq!(
        own.first().map(|f| f.qualified_method()),
        Some("jdk.internal.vm.Continuation.run")
    );
    assert_eq!(
        own.last().map(|f| f.qualified_method()),
        Some("java.util.concurrent.ForkJoinWorkerThread.run")
    );
    // The `- locked` line under BufferedInputStream.read moved with its frame.
    assert_eq!(carrier.locks.len(), 1);
    assert_eq!(
        carrier.frames[carrier.locks[0].frame].qualified_method(),
        "java.io.BufferedInputStream.read"
    );
}

#[test]
fn simulated_flink_threads_classify_per_expectations_on_both_jdks() {
    // The expectation files already pin classes per thread; this guards the count, so a renamed
    // thread cannot silently drop out of the check.
    let by_class = |name: &str| {
        let mut counts = BTreeMap::new();
        for t in fixture(name)
            .threads
            .iter()
            .filter(|t| t.header.name.contains(" ("))
        {
            *counts.entry(classify(&t.frames).class).or_insert(0) += 1;
        }
        counts
    };
    for name in [
        "jdk17-named-threads.jstack.txt",
        "jdk25-named-threads.jstack.txt",
    ] {
        let counts = by_class(name);
        assert_eq!(
            counts.get(&SampleClass::Blocked),
            Some(&2),
            "{name}: {counts:?}"
        );
        assert_eq!(
            counts.get(&SampleClass::Waiting),
            Some(&2),
            "{name}: {counts:?}"
        );
        // Async (yield), busy user code, legacy source sleeping, and `Map -> Filter`.
        assert_eq!(
            counts.get(&SampleClass::Busy),
            Some(&3),
            "{name}: {counts:?}"
        );
    }
}
