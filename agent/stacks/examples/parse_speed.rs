//! Parses a thread dump many times and prints the time per dump, with all frames kept and with
//! only task threads' frames kept (what the agent does).
//!
//! ```sh
//! cargo run --release -p bpmon-stacks --example parse_speed -- [dump.txt] [iterations]
//! ```
//!
//! Defaults: `tests/fixtures/jdk17-tm-sized.jstack.txt` (a TaskManager-sized dump) and 2000.

use std::hint::black_box;
use std::time::Instant;

use bpmon_stacks::classify::{classify, SampleClass};
use bpmon_stacks::collapse::{collapse, MAX_DEPTH};
use bpmon_stacks::threaddump::{parse, parse_filtered, ThreadHeader};

/// Flink task threads are named `<task> (<i>/<n>)` with an optional `#<attempt>`.
fn looks_like_task(h: &ThreadHeader) -> bool {
    let name = h.name.as_str();
    let body = match name.rfind(")#") {
        Some(i) if name[i + 2..].bytes().all(|b| b.is_ascii_digit()) => &name[..=i],
        _ => name,
    };
    body.ends_with(')') && body.contains('/')
}

fn time_per_dump(iterations: u32, mut f: impl FnMut() -> usize) -> f64 {
    // Warm up caches and the allocator first.
    for _ in 0..iterations / 10 + 1 {
        black_box(f());
    }
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jdk17-tm-sized.jstack.txt"
        )
        .to_owned()
    });
    let iterations: u32 = match args.next() {
        Some(n) => n.parse()?,
        None => 2000,
    };
    let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();

    let dump = parse(&text);
    let tasks = dump
        .threads
        .iter()
        .filter(|t| looks_like_task(&t.header))
        .count();
    println!(
        "{path}: {} bytes, {} lines, {} threads ({} task threads), {} skipped lines",
        text.len(),
        dump.summary.lines,
        dump.summary.threads,
        tasks,
        dump.summary.skipped_lines
    );

    let all = time_per_dump(iterations, || parse(&text).threads.len());
    println!("parse, all frames kept:        {all:8.1} µs/dump");
    let filtered = time_per_dump(iterations, || {
        parse_filtered(&text, looks_like_task).threads.len()
    });
    println!("parse, task threads' frames:   {filtered:8.1} µs/dump");
    let classified = time_per_dump(iterations, || {
        let dump = parse_filtered(&text, looks_like_task);
        dump.threads
            .iter()
            .filter(|t| t.frames_kept && !t.frames.is_empty())
            .map(|t| classify(&t.frames).class as usize)
            .sum()
    });
    println!("  + classify every task thread: {classified:8.1} µs/dump");
    // What the agent adds per busy sample for flame graphs: the whole stack, folded.
    let folded = time_per_dump(iterations, || {
        let dump = parse_filtered(&text, looks_like_task);
        dump.threads
            .iter()
            .filter(|t| t.frames_kept && !t.frames.is_empty())
            .map(|t| {
                let c = classify(&t.frames).class as usize;
                let stack = if c == SampleClass::Busy as usize {
                    collapse(&t.frames, MAX_DEPTH).len()
                } else {
                    0
                };
                c + stack
            })
            .sum()
    });
    println!(
        "  + fold every busy one's stack: {folded:8.1} µs/dump ({:.2}x classify)",
        folded / classified
    );
    Ok(())
}
