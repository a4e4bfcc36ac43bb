//! Property tests: the parser never panics and its counts stay sane on any input — arbitrary
//! strings, soups of dump-like lines and binary junk, and real dumps truncated, spliced,
//! duplicated and shuffled.

use bpmon_stacks::classify::classify;
use bpmon_stacks::threaddump::{parse, parse_filtered, ThreadDump};
use proptest::prelude::*;

const FIXTURES: &[&str] = &[
    include_str!("fixtures/jdk17-named-threads.jcmd.txt"),
    include_str!("fixtures/jdk17-named-threads.jstack-l.txt"),
    include_str!("fixtures/jdk25-named-threads.jstack.txt"),
    include_str!("fixtures/jdk25-named-threads.jstack-l.txt"),
];

/// What must hold for any input.
fn check_invariants(text: &str, dump: &ThreadDump) -> Result<(), TestCaseError> {
    let s = &dump.summary;
    prop_assert_eq!(s.lines, text.lines().count());
    prop_assert!(s.skipped_lines <= s.lines);
    prop_assert!(s.skipped_examples.len() <= s.skipped_lines.min(4));
    prop_assert!(s.skipped_examples.iter().all(|e| e.len() <= 160));
    prop_assert_eq!(s.threads, dump.threads.len());
    prop_assert!(s.java_threads <= s.threads);
    // Every header, frame and skipped line is a distinct line of the input.
    let frames: usize = dump.threads.iter().map(|t| t.frame_count).sum();
    prop_assert!(frames + s.threads + s.skipped_lines <= s.lines, "{:?}", s);
    for t in &dump.threads {
        prop_assert_eq!(t.frames.len(), t.frame_count);
        prop_assert!(t.virtual_frames <= t.frame_count);
        prop_assert!(t.locks.iter().all(|l| l.frame < t.frames.len()));
        for f in &t.frames {
            prop_assert_eq!(
                f.as_str(),
                format!("{}.{}({})", f.class(), f.method(), f.location())
            );
        }
        // The classifier takes whatever the parser produced.
        let c = classify(&t.frames);
        prop_assert!(c
            .top_frame
            .is_none_or(|f| t.frames.iter().any(|g| std::ptr::eq(f, g))));
    }
    // Keeping no frames changes nothing that is counted.
    let lean = parse_filtered(text, |_| false);
    prop_assert_eq!(&lean.summary, s);
    prop_assert!(lean
        .threads
        .iter()
        .all(|t| t.frames.is_empty() && t.locks.is_empty()));
    prop_assert_eq!(
        lean.threads
            .iter()
            .map(|t| (t.frame_count, t.virtual_frames))
            .collect::<Vec<_>>(),
        dump.threads
            .iter()
            .map(|t| (t.frame_count, t.virtual_frames))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Lines that look like parts of a dump, and some that are near misses.
fn dump_line() -> impl Strategy<Value = String> {
    let name = "[ -~]{0,12}";
    prop_oneof![
        name.prop_map(|n| format!("\"{n}\" #12 daemon prio=5 os_prio=0 cpu=1.18ms elapsed=5.05s tid=0x00007f33b0130920 nid=0x48ad waiting on condition  [0x00007f33885f7000]")),
        name.prop_map(|n| format!("\"{n}\" #21 [21601] daemon prio=5 os_prio=0 tid=0x1 nid=21601 runnable")),
        name.prop_map(|n| format!("\"{n}\" os_prio=0 tid=0x1 nid=0x2 runnable  ")),
        name.prop_map(|n| format!("\"{n}")),
        name.prop_map(|n| format!("{n}\" #3 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable")),
        Just("   java.lang.Thread.State: WAITING (parking)".to_owned()),
        Just("   java.lang.Thread.State: ".to_owned()),
        Just("   Carrying virtual thread #35".to_owned()),
        Just("   Mounted virtual thread #35".to_owned()),
        Just("   Mounted virtual thread #".to_owned()),
        Just("   Locked ownable synchronizers:".to_owned()),
        Just("\t- None".to_owned()),
        Just("   No compile task".to_owned()),
        "[a-z.$/<>]{0,20}\\.[a-z<>$0-9]{0,8}\\([ -~]{0,20}\\)?".prop_map(|f| format!("\tat {f}")),
        Just("\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)".to_owned()),
        Just("\t- parking to wait for  <0x00000000ffd522e0> (a java.lang.Object)".to_owned()),
        Just("\t- locked <0x1> (a java.lang.Object)".to_owned()),
        Just("\t- waiting on the Class initialization monitor for a.B".to_owned()),
        Just("\t- ".to_owned()),
        Just("Threads class SMR info:".to_owned()),
        Just("_java_thread_list=0x00007f3318007b70, length=3, elements={".to_owned()),
        Just("0x00007f33b0018440, 0x00007f33b00f8930,".to_owned()),
        Just("}".to_owned()),
        Just("Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6 mixed mode, sharing):".to_owned()),
        Just("Full thread dump (".to_owned()),
        Just("2026-11-24 13:52:52".to_owned()),
        Just("4242:".to_owned()),
        Just("JNI global refs: 12, weak refs: 0".to_owned()),
        Just("Found one Java-level deadlock:".to_owned()),
        Just("Found 1 deadlock.".to_owned()),
        Just(String::new()),
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    TruncateAt(prop::sample::Index),
    DeleteLines(prop::sample::Index, usize),
    DuplicateLines(prop::sample::Index, usize, prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    CutLine(prop::sample::Index, prop::sample::Index),
    InsertLine(prop::sample::Index, String),
    SpliceFrom(usize, prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        idx().prop_map(Mutation::TruncateAt),
        (idx(), 1..40usize).prop_map(|(a, n)| Mutation::DeleteLines(a, n)),
        (idx(), 1..40usize, idx()).prop_map(|(a, n, at)| Mutation::DuplicateLines(a, n, at)),
        (idx(), idx()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (idx(), idx()).prop_map(|(a, at)| Mutation::CutLine(a, at)),
        (idx(), dump_line()).prop_map(|(a, l)| Mutation::InsertLine(a, l)),
        (0..FIXTURES.len(), idx(), 1..60usize).prop_map(|(f, a, n)| Mutation::SpliceFrom(f, a, n)),
    ]
}

fn apply(lines: &mut Vec<String>, m: &Mutation) {
    if lines.is_empty() {
        return;
    }
    let len = lines.len();
    match m {
        Mutation::TruncateAt(i) => lines.truncate(i.index(len)),
        Mutation::DeleteLines(a, n) => {
            let a = a.index(len);
            lines.drain(a..(a + n).min(len));
        }
        Mutation::DuplicateLines(a, n, at) => {
            let a = a.index(len);
            let copy: Vec<String> = lines[a..(a + n).min(len)].to_vec();
            let at = at.index(len);
            lines.splice(at..at, copy);
        }
        Mutation::SwapLines(a, b) => lines.swap(a.index(len), b.index(len)),
        Mutation::CutLine(a, at) => {
            let line = &mut lines[a.index(len)];
            let mut cut = at.index(line.len() + 1);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        Mutation::InsertLine(a, l) => lines.insert(a.index(len + 1), l.clone()),
        Mutation::SpliceFrom(f, a, n) => {
            let other: Vec<&str> = FIXTURES[*f].lines().collect();
            let a = a.index(other.len());
            let part = other[a..(a + n).min(other.len())]
                .iter()
                .map(|s| s.to_string());
            let at = (a * 7919) % (len + 1);
            lines.splice(at..at, part);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_invariants(&text, &parse(&text))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let text = String::from_utf8_lossy(&bytes);
        check_invariants(&text, &parse(&text))?;
    }

    #[test]
    fn dump_like_line_soup_never_panics(lines in prop::collection::vec(dump_line(), 0..120), crlf in any::<bool>()) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        check_invariants(&text, &parse(&text))?;
    }

    #[test]
    fn mutated_real_dumps_never_panic(
        fixture in 0..FIXTURES.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut lines: Vec<String> = FIXTURES[fixture].lines().map(str::to_owned).collect();
        for m in &mutations {
            apply(&mut lines, m);
        }
        let text = lines.join("\n");
        check_invariants(&text, &parse(&text))?;
    }

    #[test]
    fn a_dump_cut_at_a_line_boundary_yields_the_same_threads_so_far(
        fixture in 0..FIXTURES.len(),
        cut in any::<prop::sample::Index>(),
    ) {
        let full_text = FIXTURES[fixture];
        let full = parse(full_text);
        let lines: Vec<&str> = full_text.lines().collect();
        let text = lines[..cut.index(lines.len() + 1)].join("\n");
        let part = parse(&text);
        check_invariants(&text, &part)?;
        // At most the first line of a multi-line name, cut before its end, is not understood.
        prop_assert!(part.summary.skipped_lines <= 1, "{:?}", part.summary.skipped_examples);
        let n = part.threads.len();
        prop_assert!(n <= full.threads.len());
        if n > 0 {
            // Threads completed before the cut are exactly as in the whole dump …
            prop_assert_eq!(&part.threads[..n - 1], &full.threads[..n - 1]);
            // … and the one being read when the input stopped has what was read of it.
            let (p, f) = (&part.threads[n - 1], &full.threads[n - 1]);
            prop_assert_eq!(&p.header.name, &f.header.name);
            prop_assert_eq!(p.header.java_id, f.header.java_id);
            prop_assert!(p.frame_count <= f.frame_count);
        }
    }
}
