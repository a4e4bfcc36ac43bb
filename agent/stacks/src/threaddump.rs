//! A streaming, line-oriented parser of HotSpot thread dumps: the text of the attach `threaddump`
//! command, `jcmd <pid> Thread.print` (which starts with a `<pid>:` line) and `jstack <pid>`, as
//! printed by JDK 8 to 25.
//!
//! The agent takes a dump every few tens of milliseconds and only needs the frames of a handful of
//! Flink task threads out of ~80, so the parser is built for that:
//!
//! * [`Parser`] takes one line at a time ([`Parser::feed_line`]) and hands back each thread as soon
//!   as it is complete, so a dump can be parsed while it is still being read from the socket.
//! * A `keep` predicate decides, per thread, whether its frames are stored. The frames of threads
//!   it rejects are checked but never allocated.
//! * Every line is either understood or counted in [`DumpSummary::skipped_lines`]; nothing panics,
//!   whatever the input (garbage, truncated or spliced dumps, binary junk).
//!
//! [`parse`] and [`parse_filtered`] wrap the parser for a dump that is already in memory.
//!
//! Layout of a dump (JDK 17; older and newer JDKs differ in details handled below). Frame and
//! lock lines start with a tab, shown here as spaces:
//!
//! ```text
//! 2026-11-24 14:23:41
//! Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing):
//!
//! Threads class SMR info:
//! _java_thread_list=0x00007fd0ec002670, length=25, elements={
//! 0x00007fd170017f10, 0x00007fd170095c40,
//! }
//!
//! "Source: a "quoted" (x) -> map (1/2)#0" #12 daemon prio=5 os_prio=0 cpu=0.46ms elapsed=1.92s tid=0x00007fd1700ba310 nid=0x1ad7 waiting on condition  [0x00007fd149cfd000]
//!    java.lang.Thread.State: TIMED_WAITING (parking)
//!         at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)
//!         - parking to wait for  <0x00000000ffd522e0> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)
//!         at org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:15)
//!
//! "VM Thread" os_prio=0 cpu=0.54ms elapsed=1.93s tid=0x00007fd170091cb0 nid=0x1acb runnable
//!
//! JNI global refs: 12, weak refs: 0
//!
//! Found one Java-level deadlock:
//! ...
//! ```
//!
//! Details worth knowing:
//!
//! * Thread names are printed raw: they may contain `"`, parentheses, `->`, `#`, `/` and even
//!   newlines. The header is anchored on the last `"` that is followed by ` #<id>`, ` daemon`,
//!   ` prio=`, ` os_prio=` or ` tid=`; a header whose name spans several lines is joined back.
//! * A thread ends at the next header, at `JNI global refs:` (the end of the thread list), at a
//!   deadlock report or at the end of input, not at a blank line: `jstack -l` prints the
//!   `Locked ownable synchronizers:` block after one, and carriers of virtual threads may too.
//! * Everything after `Found one Java-level deadlock:` up to `Found N deadlock(s).` is accepted
//!   but not parsed into threads: it repeats stacks already seen, in another format.
//! * Virtual threads (JDK 21+): a carrier with a mounted virtual thread prints
//!   `   Carrying virtual thread #N` instead of a state line. JDK 24+ then prints the carrier's own
//!   frames (`Continuation.run` … `ForkJoinWorkerThread.run`), `   Mounted virtual thread #N` and
//!   the virtual thread's frames. Such a thread's [`ThreadInfo::frames`] are the virtual thread's
//!   frames followed by the carrier's, i.e. the real stack top first, so the top frame is what the
//!   CPU runs; [`ThreadInfo::virtual_frames`] says where the split is.

use std::fmt;

/// Longest multi-line thread name (in lines) that is joined back before giving up.
const MAX_NAME_LINES: usize = 8;
/// Longest multi-line thread name (in bytes) that is joined back before giving up.
const MAX_NAME_BYTES: usize = 4096;
/// How many skipped lines are kept as examples in [`DumpSummary::skipped_examples`].
const MAX_SKIPPED_EXAMPLES: usize = 4;
/// Longest skipped-line example kept, in bytes.
const MAX_SKIPPED_EXAMPLE_BYTES: usize = 160;

/// The value of the `   java.lang.Thread.State: …` line (`java_lang_Thread::thread_status_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadState {
    /// `NEW`
    New,
    /// `RUNNABLE` (also a thread in native code, e.g. blocked in `accept()`).
    Runnable,
    /// `BLOCKED (on object monitor)`: waiting to enter a `synchronized` block.
    Blocked,
    /// `WAITING (on object monitor)`: in `Object.wait()`.
    Waiting,
    /// `TIMED_WAITING (on object monitor)`: in `Object.wait(timeout)`.
    TimedWaiting,
    /// `WAITING (parking)`: in `LockSupport.park`.
    Parked,
    /// `TIMED_WAITING (parking)`: in `LockSupport.parkNanos`.
    TimedParked,
    /// `TIMED_WAITING (sleeping)`: in `Thread.sleep`.
    Sleeping,
    /// `TERMINATED`
    Terminated,
    /// A value this parser does not know (e.g. `UNKNOWN`).
    Other,
}

impl ThreadState {
    /// Parses the text after `java.lang.Thread.State: `.
    pub fn parse(text: &str) -> ThreadState {
        match text.trim() {
            "NEW" => ThreadState::New,
            "RUNNABLE" => ThreadState::Runnable,
            "BLOCKED (on object monitor)" => ThreadState::Blocked,
            "WAITING (on object monitor)" => ThreadState::Waiting,
            "TIMED_WAITING (on object monitor)" => ThreadState::TimedWaiting,
            "WAITING (parking)" => ThreadState::Parked,
            "TIMED_WAITING (parking)" => ThreadState::TimedParked,
            "TIMED_WAITING (sleeping)" => ThreadState::Sleeping,
            "TERMINATED" => ThreadState::Terminated,
            // Tolerate a future JDK adding or changing the detail in parentheses.
            t if t.starts_with("BLOCKED") => ThreadState::Blocked,
            t if t.starts_with("TIMED_WAITING") => ThreadState::TimedWaiting,
            t if t.starts_with("WAITING") => ThreadState::Waiting,
            _ => ThreadState::Other,
        }
    }

    /// The text HotSpot prints for this state (`UNKNOWN` for [`ThreadState::Other`]).
    pub fn as_java_str(self) -> &'static str {
        match self {
            ThreadState::New => "NEW",
            ThreadState::Runnable => "RUNNABLE",
            ThreadState::Blocked => "BLOCKED (on object monitor)",
            ThreadState::Waiting => "WAITING (on object monitor)",
            ThreadState::TimedWaiting => "TIMED_WAITING (on object monitor)",
            ThreadState::Parked => "WAITING (parking)",
            ThreadState::TimedParked => "TIMED_WAITING (parking)",
            ThreadState::Sleeping => "TIMED_WAITING (sleeping)",
            ThreadState::Terminated => "TERMINATED",
            ThreadState::Other => "UNKNOWN",
        }
    }
}

impl fmt::Display for ThreadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_java_str())
    }
}

/// What the header line of a thread (and the state line under it) says.
///
/// Every field but `name` is optional: which tokens are printed depends on the JDK version and
/// on whether the thread is a Java thread at all (`"VM Thread"`, `"GC Thread#0"` … have no
/// `#id`, no `prio=` and no state line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadHeader {
    /// The thread name exactly as printed (may contain `"`, `(`, `#`, `/`, `->` and newlines).
    pub name: String,
    /// The Java thread id, `#12` (`Thread.getId()`, `threadId()`); JDK 8+.
    pub java_id: Option<u64>,
    /// The OS thread id: `nid=` (hex up to JDK 17, decimal from JDK 18), or the `[21601]` token
    /// after `#id` (JDK 21+) when `nid=` is absent (carriers of virtual threads).
    pub os_tid: Option<u64>,
    /// `daemon` was printed.
    pub daemon: bool,
    /// Java priority, `prio=5`; only Java threads have one.
    pub prio: Option<i32>,
    /// OS priority, `os_prio=0` (JDK 8+).
    pub os_prio: Option<i32>,
    /// CPU time consumed, `cpu=1.18ms` (JDK 11+).
    pub cpu_ms: Option<f64>,
    /// Time since the thread started, `elapsed=5.05s` (JDK 11+).
    pub elapsed_s: Option<f64>,
    /// Address of the VM's C++ thread object, `tid=0x…` (not the Java thread id).
    pub tid: Option<u64>,
    /// From the `   java.lang.Thread.State:` line under the header; `None` for non-Java threads
    /// and for carriers of a mounted virtual thread, which print `Carrying virtual thread` instead.
    pub state: Option<ThreadState>,
    /// The id of the virtual thread mounted on this carrier thread (JDK 21+), from
    /// `   Carrying virtual thread #N` or `   Mounted virtual thread #N`.
    pub carrying_virtual_thread: Option<u64>,
}

impl ThreadHeader {
    /// Whether this is a Java thread (it has a Java priority or id) rather than a VM-internal one.
    pub fn is_java_thread(&self) -> bool {
        self.prio.is_some() || self.java_id.is_some()
    }

    /// Whether this thread is a carrier with a mounted virtual thread.
    pub fn is_virtual_thread_carrier(&self) -> bool {
        self.carrying_virtual_thread.is_some()
    }
}

/// One `\tat <class>.<method>(<location>)` line.
///
/// Stored as a single string, `class.method(location)` with the module prefix
/// (`java.base@17.0.15/`) removed from the location, plus two offsets, so the fully qualified
/// method and the rendered frame are both free to get.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    text: String,
    /// Index of the `.` between class and method.
    dot: usize,
    /// Index of the `(` opening the location.
    paren: usize,
}

impl Frame {
    /// Builds a frame from its parts. A `module@version/` or `module/` prefix of `location` is
    /// removed, as in dumps.
    pub fn new(class: &str, method: &str, location: &str) -> Frame {
        let location = strip_module(location);
        let mut text = String::with_capacity(class.len() + method.len() + location.len() + 3);
        text.push_str(class);
        text.push('.');
        text.push_str(method);
        text.push('(');
        text.push_str(location);
        text.push(')');
        Frame {
            dot: class.len(),
            paren: class.len() + 1 + method.len(),
            text,
        }
    }

    /// Parses a frame as printed in a dump: `\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)`.
    /// Leading whitespace and the `at ` are optional. `None` if the text is not a frame.
    pub fn parse(line: &str) -> Option<Frame> {
        let s = line.trim();
        let s = s.strip_prefix("at ").unwrap_or(s);
        split_frame(s).map(|(class, method, location)| Frame::new(class, method, location))
    }

    /// The class, e.g. `java.lang.Thread`, `NamedThreads$$Lambda/0x0000000041041c00`.
    pub fn class(&self) -> &str {
        &self.text[..self.dot]
    }

    /// The method, e.g. `run`, `<init>`, `lambda$main$0`.
    pub fn method(&self) -> &str {
        &self.text[self.dot + 1..self.paren]
    }

    /// `class.method`, the string the classifier's patterns match.
    pub fn qualified_method(&self) -> &str {
        &self.text[..self.paren]
    }

    /// The location without module prefix: `Thread.java:840`, `Thread.java`, `Native Method`,
    /// `Unknown Source`, `Redefined`.
    pub fn location(&self) -> &str {
        &self.text[self.paren + 1..self.text.len() - 1]
    }

    /// The line number, when the location has one.
    pub fn line_number(&self) -> Option<u32> {
        let (_, line) = self.location().rsplit_once(':')?;
        line.parse().ok()
    }

    /// Whether the location is `Native Method`.
    pub fn is_native(&self) -> bool {
        self.location() == "Native Method"
    }

    /// The frame rendered as `class.method(location)`, e.g. `com.example.Slow.map(Slow.java:17)`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({:?})", self.text)
    }
}

/// Parses `at …` lines (as in a dump, or without the tab/`at `) into frames, top first, ignoring
/// lines that are not frames (lock lines, state lines). Handy for tests and tools that build
/// stacks by hand.
pub fn frames_from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Frame> {
    lines.into_iter().filter_map(Frame::parse).collect()
}

/// The kind of a lock line (`\t- …`) under a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// `- locked <0x…> (a …)`
    Locked,
    /// `- waiting on <0x…> (a …)` (in `Object.wait()`)
    WaitingOn,
    /// `- waiting to lock <0x…> (a …)` (BLOCKED)
    WaitingToLock,
    /// `- waiting to re-lock in wait() <0x…> (a …)` (JDK 17+)
    WaitingToRelock,
    /// `- parking to wait for  <0x…> (a …)`
    ParkingToWaitFor,
    /// `- eliminated <owner is scalar replaced> (a …)` / `- eliminated <0x…> (a …)`
    Eliminated,
    /// `- waiting on the Class initialization monitor for com.foo.Bar`
    WaitingOnClassInit,
}

/// A lock line, stored for threads whose frames are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// Index into [`ThreadInfo::frames`] of the frame the line belongs to (it follows that frame).
    pub frame: usize,
    pub kind: LockKind,
    /// The rest of the line: `<0x00000000ffd522e0> (a java.lang.Object)`, or the class name for
    /// [`LockKind::WaitingOnClassInit`].
    pub object: String,
}

/// One thread of a dump.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadInfo {
    pub header: ThreadHeader,
    /// Frames, top first; empty when the `keep` predicate rejected the thread. For a carrier of a
    /// mounted virtual thread (JDK 24+): the virtual thread's frames, then the carrier's own.
    pub frames: Vec<Frame>,
    /// Lock lines under the frames (empty when the frames were not kept).
    pub locks: Vec<LockLine>,
    /// Whether the `keep` predicate accepted the thread (always true for a thread without frames,
    /// for which it is not asked).
    pub frames_kept: bool,
    /// Number of frame lines seen, whether kept or not.
    pub frame_count: usize,
    /// How many of the leading frames belong to the mounted virtual thread (0 unless the dump
    /// printed `Mounted virtual thread #N`, JDK 24+).
    pub virtual_frames: usize,
}

impl ThreadInfo {
    /// The frames of the mounted virtual thread (empty if none or not kept).
    pub fn virtual_thread_frames(&self) -> &[Frame] {
        &self.frames[..self.virtual_frames.min(self.frames.len())]
    }

    /// The thread's frames without those of a mounted virtual thread.
    pub fn own_frames(&self) -> &[Frame] {
        &self.frames[self.virtual_frames.min(self.frames.len())..]
    }
}

/// What a dump says besides its threads, and how well it was understood.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DumpSummary {
    /// The `<pid>:` line `jcmd` prints first.
    pub pid: Option<u32>,
    /// The date line, e.g. `2026-11-24 13:52:52`.
    pub timestamp: Option<String>,
    /// The JVM version from the `Full thread dump … (<version> mixed mode, sharing):` line, e.g.
    /// `17.0.15+6-Debian-1deb12u1` (for JDK 8 the HotSpot version, `25.412-b08`).
    pub jvm_version: Option<String>,
    /// The whole banner after `Full thread dump `, e.g.
    /// `OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing)`.
    pub vm_banner: Option<String>,
    /// Lines fed.
    pub lines: usize,
    /// Lines not understood (not counted: blank lines, lines of known sections).
    pub skipped_lines: usize,
    /// The first few skipped lines (truncated), to show in diagnostics.
    pub skipped_examples: Vec<String>,
    /// Thread headers seen (Java and VM threads).
    pub threads: usize,
    /// Of those, Java threads.
    pub java_threads: usize,
    /// Whether the end of the thread list (`JNI global refs:` or a deadlock report) was seen; a
    /// dump without it was probably truncated.
    pub complete: bool,
    /// Whether the JVM reported a Java-level deadlock.
    pub deadlock: bool,
}

/// A whole parsed dump.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadDump {
    /// Threads in dump order.
    pub threads: Vec<ThreadInfo>,
    pub summary: DumpSummary,
}

impl ThreadDump {
    /// The first thread with this exact name.
    pub fn thread(&self, name: &str) -> Option<&ThreadInfo> {
        self.threads.iter().find(|t| t.header.name == name)
    }
}

/// Parses a whole dump, keeping the frames of every thread.
pub fn parse(text: &str) -> ThreadDump {
    parse_filtered(text, |_| true)
}

/// Parses a whole dump, keeping the frames of the threads `keep` accepts (see [`Parser::new`]).
pub fn parse_filtered(text: &str, keep: impl FnMut(&ThreadHeader) -> bool) -> ThreadDump {
    let mut parser = Parser::new(keep);
    let mut threads = Vec::new();
    for line in text.lines() {
        if let Some(t) = parser.feed_line(line) {
            threads.push(t);
        }
    }
    let (last, summary) = parser.finish();
    threads.extend(last);
    ThreadDump { threads, summary }
}

/// Where in the dump the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before or among thread blocks.
    Threads,
    /// Inside `Threads class SMR info:` … `}`.
    Smr,
    /// After `JNI global refs:`.
    Trailer,
    /// Inside a deadlock report, up to `Found N deadlock(s).`.
    Deadlock,
}

/// The thread being read.
struct Current {
    info: ThreadInfo,
    /// `None` until the first frame, when the `keep` predicate is asked.
    keep: Option<bool>,
    /// Frames printed before `Mounted virtual thread #N` (the carrier's own), when that line came.
    mounted_after: Option<usize>,
    /// Inside `   Locked ownable synchronizers:` (until a blank line).
    in_ownable: bool,
}

/// The streaming parser. Feed it lines (without the line terminator; a trailing `\r` is ignored)
/// and collect the threads it returns, then call [`Parser::finish`] for the last one.
///
/// ```
/// use bpmon_stacks::threaddump::Parser;
///
/// let dump = "\"main\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 waiting on condition [0x3]\n   java.lang.Thread.State: TIMED_WAITING (sleeping)\n\tat java.lang.Thread.sleep(Native Method)\n\n\"VM Thread\" os_prio=0 tid=0x4 nid=0x5 runnable\n";
/// let mut parser = Parser::new(|h| h.name == "main");
/// let mut threads = Vec::new();
/// for line in dump.lines() {
///     threads.extend(parser.feed_line(line));
/// }
/// let (last, summary) = parser.finish();
/// threads.extend(last);
/// assert_eq!(threads.len(), 2);
/// assert_eq!(threads[0].frames[0].qualified_method(), "java.lang.Thread.sleep");
/// assert_eq!(summary.skipped_lines, 0);
/// ```
pub struct Parser<F> {
    keep: F,
    section: Section,
    current: Option<Current>,
    /// First lines of a header whose name contains newlines, waiting for the rest.
    pending_name: String,
    pending_lines: usize,
    summary: DumpSummary,
}

impl<F: FnMut(&ThreadHeader) -> bool> Parser<F> {
    /// A parser that keeps the frames of the threads for which `keep` returns true.
    ///
    /// `keep` is called at most once per thread, at its first frame line, so the header it sees
    /// already has the state line and the `Carrying virtual thread` line applied (on JDK 24+ a
    /// carrier is only known as such from `Carrying virtual thread`, which comes first). Threads
    /// without frames never reach it.
    pub fn new(keep: F) -> Self {
        Parser {
            keep,
            section: Section::Threads,
            current: None,
            pending_name: String::new(),
            pending_lines: 0,
            summary: DumpSummary::default(),
        }
    }

    /// What has been learnt so far.
    pub fn summary(&self) -> &DumpSummary {
        &self.summary
    }

    /// Feeds one line. Returns the previous thread when this line completes it.
    pub fn feed_line(&mut self, line: &str) -> Option<ThreadInfo> {
        self.summary.lines += 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if self.pending_lines > 0 {
            return self.continue_name(line);
        }
        match self.section {
            Section::Threads => self.thread_line(line),
            Section::Smr => self.smr_line(line),
            Section::Trailer => self.trailer_line(line),
            Section::Deadlock => {
                self.deadlock_line(line);
                None
            }
        }
    }

    /// Ends the input: returns the last thread (if any) and the summary.
    pub fn finish(mut self) -> (Option<ThreadInfo>, DumpSummary) {
        // A header cut short at the end of the input was not understood.
        if self.pending_lines > 0 {
            let pending = std::mem::take(&mut self.pending_name);
            for part in pending.split('\n') {
                self.note_skipped(part);
            }
            self.pending_lines = 0;
        }
        let last = self.complete();
        (last, self.summary)
    }

    fn thread_line(&mut self, line: &str) -> Option<ThreadInfo> {
        let Some(&first) = line.as_bytes().first() else {
            self.blank_line();
            return None;
        };
        match first {
            b'\t' => {
                self.tab_line(&line[1..], line);
                None
            }
            b' ' => {
                self.indented_line(line);
                None
            }
            b'"' => self.header_line(line),
            _ => self.top_level_line(line),
        }
    }

    fn blank_line(&mut self) {
        if let Some(cur) = &mut self.current {
            cur.in_ownable = false;
        }
    }

    /// A line that starts with a tab: a frame, a lock line or an ownable-synchronizer entry.
    fn tab_line(&mut self, rest: &str, line: &str) {
        let Some(cur) = &mut self.current else {
            self.note_skipped(line);
            return;
        };
        if let Some(frame) = rest.strip_prefix("at ") {
            let Some((class, method, location)) = split_frame(frame) else {
                self.note_skipped(line);
                return;
            };
            cur.info.frame_count += 1;
            let keep = match cur.keep {
                Some(k) => k,
                None => {
                    let k = (self.keep)(&cur.info.header);
                    cur.keep = Some(k);
                    cur.info.frames_kept = k;
                    k
                }
            };
            if keep {
                cur.info.frames.push(Frame::new(class, method, location));
            }
        } else if let Some(lock) = rest.strip_prefix("- ") {
            if cur.in_ownable {
                // `\t- None` or `\t- <0x…> (a java.util.concurrent.locks.ReentrantLock$NonfairSync)`.
                return;
            }
            let Some((kind, object)) = parse_lock(lock) else {
                self.note_skipped(line);
                return;
            };
            if cur.keep == Some(true) {
                cur.info.locks.push(LockLine {
                    frame: cur.info.frames.len().saturating_sub(1),
                    kind,
                    object: object.to_owned(),
                });
            }
        } else {
            self.note_skipped(line);
        }
    }

    /// A line indented with spaces: the state line and friends.
    fn indented_line(&mut self, line: &str) {
        let t = line.trim();
        if t.is_empty() {
            self.blank_line();
            return;
        }
        let Some(cur) = &mut self.current else {
            self.note_skipped(line);
            return;
        };
        if let Some(state) = t.strip_prefix("java.lang.Thread.State:") {
            cur.info.header.state = Some(ThreadState::parse(state));
        } else if let Some(id) = t.strip_prefix("Carrying virtual thread #") {
            match id.trim().parse() {
                Ok(id) => cur.info.header.carrying_virtual_thread = Some(id),
                Err(_) => self.note_skipped(line),
            }
        } else if let Some(id) = t.strip_prefix("Mounted virtual thread #") {
            match id.trim().parse() {
                Ok(id) => {
                    cur.info.header.carrying_virtual_thread.get_or_insert(id);
                    cur.mounted_after = Some(cur.info.frame_count);
                }
                Err(_) => self.note_skipped(line),
            }
        } else if t == "Locked ownable synchronizers:" {
            cur.in_ownable = true;
        } else if t == "No compile task" || t.starts_with("Compiling:") {
            // Compiler threads say what they compile.
        } else {
            self.note_skipped(line);
        }
    }

    fn header_line(&mut self, line: &str) -> Option<ThreadInfo> {
        match parse_header(line, false) {
            Some(header) => self.start_thread(header),
            None => {
                // Maybe a name with a newline in it: wait for the rest of the header.
                self.pending_name.clear();
                self.pending_name.push_str(line);
                self.pending_lines = 1;
                None
            }
        }
    }

    /// The line after the first line(s) of a header whose name spans lines.
    fn continue_name(&mut self, line: &str) -> Option<ThreadInfo> {
        // Only a tail with the usual tokens closes the name; anything else is more name.
        let mut joined = std::mem::take(&mut self.pending_name);
        joined.push('\n');
        joined.push_str(line);
        if let Some(header) = parse_header(&joined, true) {
            self.pending_lines = 0;
            return self.start_thread(header);
        }
        let structural = line.starts_with('\t')
            || line.starts_with("   ")
            || line.is_empty()
            || is_section_start(line);
        if structural || self.pending_lines >= MAX_NAME_LINES || joined.len() > MAX_NAME_BYTES {
            // Not a header after all: the pending lines were junk; re-read this one normally.
            let pending_len = joined.len() - line.len() - 1;
            joined.truncate(pending_len);
            for part in joined.split('\n') {
                self.note_skipped(part);
            }
            self.pending_lines = 0;
            self.summary.lines -= 1;
            return self.feed_line(line);
        }
        self.pending_name = joined;
        self.pending_lines += 1;
        None
    }

    fn start_thread(&mut self, header: ThreadHeader) -> Option<ThreadInfo> {
        let done = self.complete();
        self.summary.threads += 1;
        if header.is_java_thread() {
            self.summary.java_threads += 1;
        }
        self.current = Some(Current {
            info: ThreadInfo {
                header,
                frames: Vec::new(),
                locks: Vec::new(),
                frames_kept: true,
                frame_count: 0,
                virtual_frames: 0,
            },
            keep: None,
            mounted_after: None,
            in_ownable: false,
        });
        done
    }

    /// Closes the current thread, putting a mounted virtual thread's frames first.
    fn complete(&mut self) -> Option<ThreadInfo> {
        let cur = self.current.take()?;
        let mut info = cur.info;
        if let Some(carrier) = cur.mounted_after {
            let carrier = carrier.min(info.frame_count);
            info.virtual_frames = info.frame_count - carrier;
            if cur.keep == Some(true) {
                let carrier = carrier.min(info.frames.len());
                info.frames.rotate_left(carrier);
                let virt = info.frames.len() - carrier;
                for lock in &mut info.locks {
                    lock.frame = if lock.frame < carrier {
                        lock.frame + virt
                    } else {
                        lock.frame - carrier
                    };
                }
                info.locks.sort_by_key(|l| l.frame);
            }
        }
        Some(info)
    }

    /// A line at column 0 that is not a header: the dump's own lines.
    fn top_level_line(&mut self, line: &str) -> Option<ThreadInfo> {
        if let Some(banner) = line.strip_prefix("Full thread dump ") {
            let done = self.complete();
            self.banner(banner);
            return done;
        }
        if line.starts_with("Threads class SMR info:") {
            let done = self.complete();
            self.section = Section::Smr;
            return done;
        }
        // More of the SMR block after its first list closed: a `_to_delete_list=… elements={`
        // (a thread list still in use while threads come and go, which can last a whole sampling
        // run) or `-XX:+EnableThreadSMRStatistics` counters. They all come before any thread.
        if line.starts_with('_') && self.summary.threads == 0 && self.current.is_none() {
            if line.trim_end().ends_with('{') {
                self.section = Section::Smr;
            }
            return None;
        }
        // `JNI global refs: 12, weak refs: 0` (JDK 11+), `JNI global references: 6` (JDK 8).
        if line.starts_with("JNI global ref") {
            let done = self.complete();
            self.section = Section::Trailer;
            self.summary.complete = true;
            return done;
        }
        if is_deadlock_start(line) {
            let done = self.complete();
            self.enter_deadlock();
            return done;
        }
        if self.preamble_line(line) {
            return None;
        }
        self.note_skipped(line);
        None
    }

    /// The date line, and the `<pid>:` line of jcmd before any thread.
    fn preamble_line(&mut self, line: &str) -> bool {
        if is_timestamp(line) {
            self.summary.timestamp = Some(line.trim().to_owned());
            return true;
        }
        if self.current.is_none() && self.summary.threads == 0 {
            // jcmd prints `<pid>:`; a raw attach reply starts with its status code (`0`).
            let t = line.trim();
            let digits = t.strip_suffix(':').unwrap_or(t);
            if !digits.is_empty()
                && digits.len() <= 10
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                if t.ends_with(':') {
                    self.summary.pid = digits.parse().ok();
                }
                return true;
            }
        }
        false
    }

    fn banner(&mut self, banner: &str) {
        self.section = Section::Threads;
        let banner = banner.trim_end();
        let banner = banner.strip_suffix(':').unwrap_or(banner);
        if self.summary.vm_banner.is_none() {
            self.summary.vm_banner = Some(banner.to_owned());
        }
        if self.summary.jvm_version.is_none() {
            self.summary.jvm_version = banner
                .find('(')
                .map(|i| &banner[i + 1..])
                .and_then(|v| v.split([' ', ',', ')']).next())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
        }
    }

    fn smr_line(&mut self, line: &str) -> Option<ThreadInfo> {
        let t = line.trim();
        if t == "}" || t.is_empty() {
            // A blank line means the block was cut short; either way it is over.
            self.section = Section::Threads;
        } else if t.starts_with('"') || is_section_start(line) {
            // The block was cut short.
            self.section = Section::Threads;
            return self.thread_line(line);
        } else if !(t.starts_with('_') || t.starts_with("0x")) {
            self.note_skipped(line);
        }
        None
    }

    fn trailer_line(&mut self, line: &str) -> Option<ThreadInfo> {
        let t = line.trim();
        if t.is_empty() || is_timestamp(t) {
            return None;
        }
        if is_deadlock_start(line) {
            self.enter_deadlock();
            return None;
        }
        if line.starts_with("Full thread dump ") || line.starts_with('"') {
            // Another dump follows (concatenated output).
            self.section = Section::Threads;
            return self.thread_line(line);
        }
        self.note_skipped(line);
        None
    }

    fn enter_deadlock(&mut self) {
        self.section = Section::Deadlock;
        self.summary.deadlock = true;
        self.summary.complete = true;
    }

    fn deadlock_line(&mut self, line: &str) {
        // The report repeats stacks of threads already read; all of it is accepted as is.
        let t = line.trim();
        if t.starts_with("Found ") && (t.ends_with(" deadlock.") || t.ends_with(" deadlocks.")) {
            self.section = Section::Trailer;
        } else if let Some(banner) = line.strip_prefix("Full thread dump ") {
            self.banner(banner);
        }
    }

    fn note_skipped(&mut self, line: &str) {
        self.summary.skipped_lines += 1;
        if self.summary.skipped_examples.len() < MAX_SKIPPED_EXAMPLES {
            let mut end = line.len().min(MAX_SKIPPED_EXAMPLE_BYTES);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            self.summary.skipped_examples.push(line[..end].to_owned());
        }
    }
}

/// `Found one Java-level deadlock:` / `Found 2 Java-level deadlocks:`.
fn is_deadlock_start(line: &str) -> bool {
    line.starts_with("Found ") && line.contains("Java-level deadlock")
}

/// Lines that start a section of their own, which never continue a thread name.
fn is_section_start(line: &str) -> bool {
    line.starts_with("Full thread dump ")
        || line.starts_with("JNI global ref")
        || line.starts_with("Threads class SMR info:")
        || is_deadlock_start(line)
}

/// `2026-11-24 13:52:52`
fn is_timestamp(line: &str) -> bool {
    let b = line.trim().as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// Splits `class.method(location)` (no `at `); the location keeps its module prefix.
fn split_frame(s: &str) -> Option<(&str, &str, &str)> {
    // One pass over the bytes up to `(`: this runs for every frame line of every dump.
    let bytes = s.as_bytes();
    let mut dot = None;
    let mut open = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => {
                open = Some(i);
                break;
            }
            b'.' => dot = Some(i),
            0..=b' ' => return None,
            _ => {}
        }
    }
    let (dot, open) = (dot?, open?);
    if dot == 0 || dot + 1 == open {
        return None;
    }
    let rest = &s[open + 1..];
    // Tolerate a line cut short before its `)`.
    let location = match rest.as_bytes().last() {
        Some(b')') => &rest[..rest.len() - 1],
        _ => rest.rfind(')').map_or(rest, |i| &rest[..i]),
    };
    Some((&s[..dot], &s[dot + 1..open], location))
}

/// `java.base@17.0.15/Thread.java:840` → `Thread.java:840`; `jdk.foo/X.java` → `X.java`.
fn strip_module(location: &str) -> &str {
    location.rfind('/').map_or(location, |i| &location[i + 1..])
}

/// Parses the text after `\t- `.
fn parse_lock(s: &str) -> Option<(LockKind, &str)> {
    // Longer prefixes first: `waiting on the Class…` before `waiting on`.
    const KINDS: &[(&str, LockKind)] = &[
        (
            "waiting on the Class initialization monitor for ",
            LockKind::WaitingOnClassInit,
        ),
        ("waiting on ", LockKind::WaitingOn),
        ("waiting to lock ", LockKind::WaitingToLock),
        ("waiting to re-lock in wait() ", LockKind::WaitingToRelock),
        ("parking to wait for ", LockKind::ParkingToWaitFor),
        ("locked ", LockKind::Locked),
        ("eliminated ", LockKind::Eliminated),
    ];
    KINDS
        .iter()
        .find_map(|(prefix, kind)| s.strip_prefix(prefix).map(|rest| (*kind, rest.trim())))
}

/// Parses a header line. With `strict`, the closing quote must be followed by one of the usual
/// tokens; without, a quote followed by a space or the end of the line also closes the name.
fn parse_header(line: &str, strict: bool) -> Option<ThreadHeader> {
    let body = line.strip_prefix('"')?;
    let close = find_name_end(body, strict)?;
    let mut header = ThreadHeader {
        name: body[..close].to_owned(),
        ..ThreadHeader::default()
    };
    let mut bracket_id = None;
    for token in body[close + 1..].split_ascii_whitespace() {
        if let Some(id) = token.strip_prefix('#') {
            if header.java_id.is_none() {
                header.java_id = id.parse().ok();
            }
        } else if token == "daemon" {
            header.daemon = true;
        } else if let Some(v) = token.strip_prefix("prio=") {
            header.prio = v.parse().ok();
        } else if let Some(v) = token.strip_prefix("os_prio=") {
            header.os_prio = v.parse().ok();
        } else if let Some(v) = token.strip_prefix("cpu=") {
            header.cpu_ms = v.strip_suffix("ms").and_then(|v| v.parse().ok());
        } else if let Some(v) = token.strip_prefix("elapsed=") {
            header.elapsed_s = v.strip_suffix('s').and_then(|v| v.parse().ok());
        } else if let Some(v) = token.strip_prefix("tid=") {
            header.tid = parse_int(v);
        } else if let Some(v) = token.strip_prefix("nid=") {
            header.os_tid = parse_int(v);
        } else if let Some(v) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            // `[21601]` (OS thread id, JDK 21+); `[0x…]` is the stack address, ignored.
            if !v.starts_with("0x") && bracket_id.is_none() {
                bracket_id = v.parse::<u64>().ok();
            }
        }
        // Anything else: OS state words (`waiting on condition`), `allocated=`, SMR info …
    }
    if header.os_tid.is_none() {
        header.os_tid = bracket_id;
    }
    Some(header)
}

/// Index in `body` (the header after its opening quote) of the quote that closes the name.
fn find_name_end(body: &str, strict: bool) -> Option<usize> {
    const ANCHORS: &[&str] = &[" daemon", " prio=", " os_prio=", " tid="];
    let anchored = |tail: &str| {
        ANCHORS.iter().any(|a| tail.starts_with(a))
            || tail
                .strip_prefix(" #")
                .is_some_and(|t| t.as_bytes().first().is_some_and(u8::is_ascii_digit))
    };
    let mut search = body;
    while let Some(i) = search.rfind('"') {
        if anchored(&body[i + 1..]) {
            return Some(i);
        }
        search = &body[..i];
    }
    if strict {
        return None;
    }
    // Fallback for an unusual tail: the last quote, if it ends a word.
    let i = body.rfind('"')?;
    let tail = &body[i + 1..];
    (tail.is_empty() || tail.starts_with(' ')).then_some(i)
}

/// `0x48ad` (hex) or `21601` (decimal).
fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(lines: &[&str]) -> String {
        lines.join("\n")
    }

    fn header(line: &str) -> ThreadHeader {
        let d = parse(line);
        assert_eq!(
            d.summary.skipped_lines, 0,
            "{:?}",
            d.summary.skipped_examples
        );
        assert_eq!(d.threads.len(), 1, "{line}");
        d.threads.into_iter().next().map(|t| t.header).unwrap()
    }

    #[test]
    fn jdk8_header_has_id_prio_and_hex_nid_but_no_cpu() {
        let h = header("\"main\" #1 prio=5 os_prio=0 tid=0x00007f7e4c00a800 nid=0x1a03 waiting on condition [0x00007f7e55d5c000]");
        assert_eq!(h.name, "main");
        assert_eq!(h.java_id, Some(1));
        assert_eq!(h.os_tid, Some(0x1a03));
        assert_eq!(h.prio, Some(5));
        assert_eq!(h.os_prio, Some(0));
        assert_eq!(h.tid, Some(0x00007f7e4c00a800));
        assert_eq!((h.cpu_ms, h.elapsed_s), (None, None));
        assert!(!h.daemon);
        assert!(h.is_java_thread());
    }

    #[test]
    fn jdk7_header_has_no_id_and_no_os_prio() {
        let h = header("\"Attach Listener\" daemon prio=10 tid=0x00007f0b18001000 nid=0x4004 waiting on condition [0x0000000000000000]");
        assert_eq!(h.name, "Attach Listener");
        assert_eq!(h.java_id, None);
        assert!(h.daemon);
        assert_eq!(h.prio, Some(10));
        assert_eq!(h.os_prio, None);
        assert_eq!(h.os_tid, Some(0x4004));
        assert!(h.is_java_thread(), "a Java priority makes it a Java thread");
    }

    #[test]
    fn jdk17_header_has_cpu_elapsed_and_hex_nid() {
        let h = header("\"Source: Custom Source -> Map (1/200)#0\" #12 daemon prio=5 os_prio=0 cpu=1.18ms elapsed=5.05s tid=0x00007f33b0130920 nid=0x48ad waiting on condition  [0x00007f33885f7000]");
        assert_eq!(h.name, "Source: Custom Source -> Map (1/200)#0");
        assert_eq!(h.java_id, Some(12));
        assert_eq!(h.os_tid, Some(0x48ad));
        assert!(h.daemon);
        assert_eq!(h.cpu_ms, Some(1.18));
        assert_eq!(h.elapsed_s, Some(5.05));
    }

    #[test]
    fn jdk21_and_25_headers_have_bracketed_and_decimal_os_ids() {
        let h = header("\"Source: Custom Source -> Map (1/200)#0\" #21 [21601] daemon prio=5 os_prio=0 cpu=3.77ms elapsed=4.37s tid=0x00007f264c0e9720 nid=21601 waiting on condition  [0x00007f261f2f9000]");
        assert_eq!(h.java_id, Some(21));
        assert_eq!(h.os_tid, Some(21601));
        assert_eq!(h.cpu_ms, Some(3.77));
        // `-e` adds tokens in the middle.
        let h = header("\"main\" #3 [21583] prio=5 os_prio=0 cpu=63.02ms elapsed=5.11s allocated=837K defined_classes=48 tid=0x00007f264c02ad20 nid=21583 waiting on condition  [0x00007f2651f1e000]");
        assert_eq!(
            (h.java_id, h.os_tid, h.elapsed_s),
            (Some(3), Some(21583), Some(5.11))
        );
        assert_eq!(h.tid, Some(0x00007f264c02ad20));
    }

    #[test]
    fn nid_wins_over_the_bracketed_id_and_is_used_without_it() {
        let h = header("\"x\" #5 [7] prio=5 os_prio=0 tid=0x1 nid=8 runnable  [0x0]");
        assert_eq!(h.os_tid, Some(8));
        // A carrier prints no nid and no OS state.
        let h = header("\"ForkJoinPool-1-worker-1\" #23 [22203] daemon prio=5 os_prio=0 cpu=2085.83ms elapsed=2.25s tid=0x00007f24d80e62d0  [0x00007f24b8e42000]");
        assert_eq!(h.os_tid, Some(22203));
        assert_eq!(h.cpu_ms, Some(2085.83));
    }

    #[test]
    fn vm_threads_are_not_java_threads() {
        let h = header("\"G1 Conc#0\" os_prio=0 cpu=0.07ms elapsed=5.12s tid=0x00007f33b004fd60 nid=0x4897 runnable  ");
        assert_eq!(h.name, "G1 Conc#0");
        assert_eq!((h.java_id, h.prio), (None, None));
        assert_eq!(h.os_tid, Some(0x4897));
        assert!(!h.is_java_thread());
        let h = header("\"VM Thread\" os_prio=0 tid=0x00007f7e4c070800 nid=0x1a08 runnable ");
        assert_eq!(h.name, "VM Thread");
        assert!(!h.is_java_thread());
    }

    #[test]
    fn names_with_quotes_parentheses_arrows_hashes_and_slashes() {
        let h = header("\"Source: a \"quoted\" (x) -> map (1/2)#0\" #12 daemon prio=5 os_prio=0 tid=0x1 nid=0x2 waiting on condition  [0x3]");
        assert_eq!(h.name, "Source: a \"quoted\" (x) -> map (1/2)#0");
        // A name that ends in a quote, and one that contains what looks like a header tail.
        let h = header("\"say \"hi\"\" #5 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]");
        assert_eq!(h.name, "say \"hi\"");
        let h =
            header("\"a\" #3 b/c\" #12 daemon prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]");
        assert_eq!(h.name, "a\" #3 b/c");
        assert_eq!(h.java_id, Some(12));
        let h = header("\"\" #4 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]");
        assert_eq!(h.name, "");
    }

    #[test]
    fn unusual_header_tail_falls_back_to_the_last_quote() {
        let h = header("\"odd\" something new=1");
        assert_eq!(h.name, "odd");
        assert_eq!(h.java_id, None);
    }

    #[test]
    fn multi_line_names_are_joined() {
        let text = dump(&[
            "\"Map: multi",
            "line",
            "name (1/1)#0\" #17 daemon prio=5 os_prio=0 cpu=0.17ms elapsed=1.91s tid=0x1 nid=0x1adc waiting on condition  [0x2]",
            "   java.lang.Thread.State: TIMED_WAITING (parking)",
            "\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        ]);
        let d = parse(&text);
        assert_eq!(d.summary.skipped_lines, 0);
        assert_eq!(d.summary.threads, 1);
        let t = &d.threads[0];
        assert_eq!(t.header.name, "Map: multi\nline\nname (1/1)#0");
        assert_eq!(t.header.java_id, Some(17));
        assert_eq!(t.frames.len(), 1);
    }

    #[test]
    fn an_unterminated_name_is_skipped_not_joined_with_a_stack() {
        let text = dump(&[
            "\"broken",
            "\tat a.B.c(B.java:1)",
            "\"ok\" #2 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "\"cut at the end",
        ]);
        let d = parse(&text);
        // `"broken`, the frame without a thread, and `"cut at the end`.
        assert_eq!(
            d.summary.skipped_lines, 3,
            "{:?}",
            d.summary.skipped_examples
        );
        assert_eq!(d.summary.skipped_examples[0], "\"broken");
        assert_eq!(d.threads.len(), 1);
        assert_eq!(d.threads[0].header.name, "ok");
        assert_eq!(d.summary.lines, 4);
    }

    #[test]
    fn every_state_line_value() {
        let cases = [
            ("NEW", ThreadState::New),
            ("RUNNABLE", ThreadState::Runnable),
            ("BLOCKED (on object monitor)", ThreadState::Blocked),
            ("WAITING (on object monitor)", ThreadState::Waiting),
            (
                "TIMED_WAITING (on object monitor)",
                ThreadState::TimedWaiting,
            ),
            ("WAITING (parking)", ThreadState::Parked),
            ("TIMED_WAITING (parking)", ThreadState::TimedParked),
            ("TIMED_WAITING (sleeping)", ThreadState::Sleeping),
            ("TERMINATED", ThreadState::Terminated),
        ];
        for (text, state) in cases {
            let d = parse(&dump(&[
                "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
                &format!("   java.lang.Thread.State: {text}"),
            ]));
            assert_eq!(d.threads[0].header.state, Some(state), "{text}");
            assert_eq!(state.as_java_str(), text);
        }
        assert_eq!(ThreadState::parse("UNKNOWN"), ThreadState::Other);
        assert_eq!(
            ThreadState::parse("WAITING (on a new thing)"),
            ThreadState::Waiting
        );
    }

    #[test]
    fn frame_locations_lose_their_module_prefix() {
        let cases = [
            ("\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)", "java.lang.Thread", "run", "Thread.java:840"),
            ("\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)", "jdk.internal.misc.Unsafe", "park", "Native Method"),
            ("\tat java.lang.VirtualThread$$Lambda/0x000000004100c138.run(java.base@25.0.3/Unknown Source)", "java.lang.VirtualThread$$Lambda/0x000000004100c138", "run", "Unknown Source"),
            ("\tat org.example.Mod.m(org.example.mod/Mod.java:3)", "org.example.Mod", "m", "Mod.java:3"),
            ("\tat sun.misc.Unsafe.park(Native Method)", "sun.misc.Unsafe", "park", "Native Method"),
            ("\tat com.example.Gen.apply(Unknown Source)", "com.example.Gen", "apply", "Unknown Source"),
            ("\tat com.example.Hot.swap(Redefined)", "com.example.Hot", "swap", "Redefined"),
            ("\tat com.example.NoLines.f(NoLines.java)", "com.example.NoLines", "f", "NoLines.java"),
            ("\tat Main$$Lambda$7/0x00007f3b2c00a448.run(Unknown Source)", "Main$$Lambda$7/0x00007f3b2c00a448", "run", "Unknown Source"),
            ("\tat Main$$Lambda/0x0000000041041c00.run(Unknown Source)", "Main$$Lambda/0x0000000041041c00", "run", "Unknown Source"),
            ("\tat com.example.Res.<init>(Res.java:9)", "com.example.Res", "<init>", "Res.java:9"),
            ("\tat com.example.Res.<clinit>(Res.java:2)", "com.example.Res", "<clinit>", "Res.java:2"),
            ("\tat Main.lambda$main$0(Main.java:12)", "Main", "lambda$main$0", "Main.java:12"),
        ];
        for (line, class, method, location) in cases {
            let d = parse(&dump(&[
                "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
                line,
            ]));
            assert_eq!(d.summary.skipped_lines, 0, "{line}");
            let f = &d.threads[0].frames[0];
            assert_eq!(
                (f.class(), f.method(), f.location()),
                (class, method, location),
                "{line}"
            );
            assert_eq!(f.qualified_method(), format!("{class}.{method}"));
            assert_eq!(f.to_string(), format!("{class}.{method}({location})"));
            assert_eq!(f.as_str(), f.to_string());
        }
    }

    #[test]
    fn frame_accessors() {
        let f =
            Frame::parse("\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)").unwrap();
        assert_eq!(f.line_number(), Some(840));
        assert!(!f.is_native());
        let f = Frame::parse("at jdk.internal.misc.Unsafe.park(Native Method)").unwrap();
        assert_eq!(f.line_number(), None);
        assert!(f.is_native());
        assert_eq!(
            Frame::parse("com.example.Slow.map(Slow.java:17)")
                .unwrap()
                .line_number(),
            Some(17)
        );
        let built = Frame::new("com.example.Slow", "map", "app@1.0/Slow.java:17");
        assert_eq!(built.as_str(), "com.example.Slow.map(Slow.java:17)");
        assert_eq!(
            format!("{built:?}"),
            "Frame(\"com.example.Slow.map(Slow.java:17)\")"
        );
        // A line cut before its `)` keeps what it has.
        let cut = Frame::parse("\tat a.B.c(B.ja").unwrap();
        assert_eq!(cut.location(), "B.ja");
    }

    #[test]
    fn non_frames_are_rejected() {
        for bad in [
            "",
            "at ",
            "\tat no_parens",
            "\tat (x)",
            "\tat .m(x)",
            "\tat C.(x)",
            "\tat NoDot(x)",
            "\tat a b.c(x)",
        ] {
            assert_eq!(Frame::parse(bad), None, "{bad:?}");
        }
        let d = parse(&dump(&[
            "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "\tat broken",
            "\tat ok.Frame.f(F.java:1)",
        ]));
        assert_eq!(d.summary.skipped_lines, 1);
        assert_eq!(d.threads[0].frame_count, 1);
    }

    #[test]
    fn frames_from_lines_skips_lock_lines() {
        let frames = frames_from_lines([
            "\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
            "\t- parking to wait for  <0x1> (a java.lang.Object)",
            "at a.B.c(B.java:1)",
        ]);
        let names: Vec<_> = frames.iter().map(Frame::qualified_method).collect();
        assert_eq!(names, ["jdk.internal.misc.Unsafe.park", "a.B.c"]);
    }

    #[test]
    fn every_lock_line_kind() {
        let text = dump(&[
            "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "   java.lang.Thread.State: WAITING (on object monitor)",
            "\tat java.lang.Object.wait(java.base@17.0.15/Native Method)",
            "\t- waiting on <0x00000000ffd02f40> (a java.lang.ref.ReferenceQueue$Lock)",
            "\t- waiting on <no object reference available>",
            "\tat a.B.one(B.java:1)",
            "\t- waiting to re-lock in wait() <0x00000000ffd02f40> (a java.lang.Object)",
            "\t- waiting to lock <0x00000000ffd1dfb8> (a java.lang.Object)",
            "\t- locked <0x00000000ffd1dfa8> (a java.lang.Class for com.foo.Bar)",
            "\tat a.B.two(B.java:2)",
            "\t- parking to wait for  <0x00000000ffd522e0> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)",
            "\t- eliminated <owner is scalar replaced> (a java.lang.Object)",
            "\t- eliminated <0x00000000ffd1dfa8> (a java.lang.Object)",
            "\t- waiting on the Class initialization monitor for com.foo.Bar",
        ]);
        let d = parse(&text);
        assert_eq!(
            d.summary.skipped_lines, 0,
            "{:?}",
            d.summary.skipped_examples
        );
        let got: Vec<(usize, LockKind, &str)> = d.threads[0]
            .locks
            .iter()
            .map(|l| (l.frame, l.kind, l.object.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0, LockKind::WaitingOn, "<0x00000000ffd02f40> (a java.lang.ref.ReferenceQueue$Lock)"),
                (0, LockKind::WaitingOn, "<no object reference available>"),
                (1, LockKind::WaitingToRelock, "<0x00000000ffd02f40> (a java.lang.Object)"),
                (1, LockKind::WaitingToLock, "<0x00000000ffd1dfb8> (a java.lang.Object)"),
                (1, LockKind::Locked, "<0x00000000ffd1dfa8> (a java.lang.Class for com.foo.Bar)"),
                (2, LockKind::ParkingToWaitFor, "<0x00000000ffd522e0> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)"),
                (2, LockKind::Eliminated, "<owner is scalar replaced> (a java.lang.Object)"),
                (2, LockKind::Eliminated, "<0x00000000ffd1dfa8> (a java.lang.Object)"),
                (2, LockKind::WaitingOnClassInit, "com.foo.Bar"),
            ]
        );
    }

    #[test]
    fn unknown_lock_and_indented_lines_are_counted() {
        let d = parse(&dump(&[
            "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "\tat a.B.c(B.java:1)",
            "\t- frobnicating <0x1> (a java.lang.Object)",
            "   Something new",
            "\tnot a frame",
        ]));
        assert_eq!(d.summary.skipped_lines, 3);
        assert!(d.threads[0].locks.is_empty());
    }

    #[test]
    fn a_second_smr_list_is_not_skipped() {
        // Seen on a Flink 2.3 TaskManager on JDK 25 while threads came and went.
        let text = "2026-11-24 13:52:52
Full thread dump OpenJDK 64-Bit Server VM (25.0.3+9-LTS mixed mode, sharing):

Threads class SMR info:
_java_thread_list=0x00007f3318007b70, length=3, elements={
0x00007f33b0018440, 0x00007f33b00f8930,
0x00007f33b00f9a10
}
_to_delete_list=0x00007f3318001230, length=2, elements={
0x00007f33b0018440, 0x00007f33b00f8930
}
_java_thread_list_alloc_cnt=2, _java_thread_list_free_cnt=1, _java_thread_list_max=3, _nested_thread_list_max=0

\"main\" #3 [21583] prio=5 os_prio=0 cpu=63.02ms elapsed=5.11s tid=0x00007f264c02ad20 nid=21583 waiting on condition  [0x00007f2651f1e000]
   java.lang.Thread.State: TIMED_WAITING (sleeping)
\tat java.lang.Thread.sleep0(java.base@25.0.3/Native Method)
\tat Main.main(Main.java:170)

JNI global refs: 4, weak refs: 0
";
        let dump = parse(text);
        assert_eq!(
            dump.summary.skipped_lines, 0,
            "{:?}",
            dump.summary.skipped_examples
        );
        assert_eq!(dump.summary.threads, 1);
        assert_eq!(dump.threads[0].frames.len(), 2);
        assert!(dump.summary.complete);
    }

    /// A JDK 17 `jcmd Thread.print` dump with every top-level section.
    const JDK17_JCMD: &str = "4242:
2026-11-24 13:52:52
Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing):

Threads class SMR info:
_java_thread_list=0x00007f3318007b70, length=3, elements={
0x00007f33b0018440, 0x00007f33b00f8930,
0x00007f33b00f9a10
}

\"main\" #1 prio=5 os_prio=0 cpu=36.96ms elapsed=1.94s tid=0x00007fd170017f10 nid=0x1ac5 waiting on condition  [0x00007fd17471e000]
   java.lang.Thread.State: TIMED_WAITING (sleeping)
\tat java.lang.Thread.sleep(java.base@17.0.15/Native Method)
\tat Main.main(Main.java:170)

\"C2 CompilerThread0\" #7 daemon prio=9 os_prio=0 cpu=3.45ms elapsed=1.93s tid=0x00007fd1700a2bf0 nid=0x1ad1 waiting on condition  [0x0000000000000000]
   java.lang.Thread.State: RUNNABLE
   No compile task

\"C1 CompilerThread0\" #8 daemon prio=9 os_prio=0 cpu=11.24ms elapsed=1.93s tid=0x00007fd1700a4120 nid=0x1ad2 waiting on condition  [0x0000000000000000]
   java.lang.Thread.State: RUNNABLE
   Compiling: 1234       3       java.lang.String::hashCode (60 bytes)

\"deadlock-A\" #19 daemon prio=5 os_prio=0 cpu=0.32ms elapsed=1.91s tid=0x00007fd1700e2d20 nid=0x1ade waiting for monitor entry  [0x00007fd1495fd000]
   java.lang.Thread.State: BLOCKED (on object monitor)
\tat Main.lambda$main$8(Main.java:124)
\t- waiting to lock <0x00000000ffd1dfb8> (a java.lang.Object)
\t- locked <0x00000000ffd1dfa8> (a java.lang.Object)
\tat Main$$Lambda$9/0x00007fd0fc004658.run(Unknown Source)
\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)

\"VM Thread\" os_prio=0 cpu=0.54ms elapsed=1.93s tid=0x00007fd170091cb0 nid=0x1acb runnable  

\"GC Thread#0\" os_prio=0 cpu=0.07ms elapsed=1.94s tid=0x00007fd170038820 nid=0x1ac6 runnable  

JNI global refs: 12, weak refs: 0


Found one Java-level deadlock:
=============================
\"deadlock-A\":
  waiting to lock monitor 0x00007fd13c001700 (object 0x00000000ffd1dfb8, a java.lang.Object),
  which is held by \"deadlock-B\"

Java stack information for the threads listed above:
===================================================
\"deadlock-A\":
\tat Main.lambda$main$8(Main.java:124)
\t- waiting to lock <0x00000000ffd1dfb8> (a java.lang.Object)
\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)

Found 1 deadlock.
";

    #[test]
    fn a_whole_jdk17_jcmd_dump() {
        let d = parse(JDK17_JCMD);
        let s = &d.summary;
        assert_eq!(s.skipped_lines, 0, "{:?}", s.skipped_examples);
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.timestamp.as_deref(), Some("2026-11-24 13:52:52"));
        assert_eq!(s.jvm_version.as_deref(), Some("17.0.15+6-Debian-1deb12u1"));
        assert_eq!(
            s.vm_banner.as_deref(),
            Some("OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing)")
        );
        assert_eq!((s.threads, s.java_threads), (6, 4));
        assert!(s.complete && s.deadlock);
        assert_eq!(s.lines, JDK17_JCMD.lines().count());
        let names: Vec<_> = d.threads.iter().map(|t| t.header.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "main",
                "C2 CompilerThread0",
                "C1 CompilerThread0",
                "deadlock-A",
                "VM Thread",
                "GC Thread#0"
            ]
        );
        // The deadlock report's copy of the stack is not appended to any thread.
        let a = d.thread("deadlock-A").unwrap();
        assert_eq!(a.frames.len(), 3);
        assert_eq!(a.locks.len(), 2);
        assert!(d.thread("GC Thread#0").unwrap().frames.is_empty());
    }

    #[test]
    fn jdk8_and_jdk25_banners() {
        let d = parse("Full thread dump OpenJDK 64-Bit Server VM (25.412-b08 mixed mode):\n\nJNI global references: 6\n");
        assert_eq!(d.summary.jvm_version.as_deref(), Some("25.412-b08"));
        assert!(
            d.summary.complete,
            "JDK 8 spells it `JNI global references:`"
        );
        assert_eq!(d.summary.skipped_lines, 0);
        let d =
            parse("Full thread dump OpenJDK 64-Bit Server VM (25.0.3+9-LTS mixed mode, sharing):");
        assert_eq!(d.summary.jvm_version.as_deref(), Some("25.0.3+9-LTS"));
        assert!(!d.summary.complete);
    }

    #[test]
    fn a_raw_attach_reply_starts_with_its_status() {
        let d = parse("0\n2026-11-24 13:52:52\nFull thread dump OpenJDK 64-Bit Server VM (17.0.15+6 mixed mode):\n");
        assert_eq!(d.summary.skipped_lines, 0);
        assert_eq!(d.summary.pid, None);
        // Digits after the first thread are not a preamble.
        let d = parse("\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]\n1234:");
        assert_eq!(d.summary.skipped_lines, 1);
    }

    #[test]
    fn truncated_smr_block_ends_at_the_next_header() {
        let d = parse(&dump(&[
            "Threads class SMR info:",
            "_java_thread_list=0x00007f3318007b70, length=216, elements={",
            "0x00007f33b0018440, 0x00007f33b00f8930,",
            "\"main\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "\tat a.B.c(B.java:1)",
        ]));
        assert_eq!(d.summary.skipped_lines, 0);
        assert_eq!(d.threads.len(), 1);
        assert_eq!(d.threads[0].frames.len(), 1);
    }

    #[test]
    fn plural_deadlocks_and_lines_after_the_report() {
        let d = parse(&dump(&[
            "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "\tat a.B.c(B.java:1)",
            "Found 2 Java-level deadlocks:",
            "\tat x.Y.z(Y.java:1)",
            "garbage inside the report is part of it",
            "Found 2 deadlocks.",
            "",
            "garbage after it is not",
        ]));
        assert!(d.summary.deadlock);
        assert_eq!(d.threads[0].frames.len(), 1);
        assert_eq!(d.summary.skipped_lines, 1);
    }

    #[test]
    fn ownable_synchronizers_are_understood_and_not_locks() {
        let d = parse(&dump(&[
            "\"t\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]",
            "   java.lang.Thread.State: RUNNABLE",
            "\tat a.B.c(B.java:1)",
            "",
            "   Locked ownable synchronizers:",
            "\t- <0x00000000ffde5dc8> (a java.util.concurrent.locks.ReentrantLock$NonfairSync)",
            "\t- None",
            "",
        ]));
        assert_eq!(d.summary.skipped_lines, 0);
        assert!(d.threads[0].locks.is_empty());
    }

    #[test]
    fn jdk21_carrier_without_mounted_frames() {
        let d = parse(&dump(&[
            "\"ForkJoinPool-1-worker-1\" #23 [22203] daemon prio=5 os_prio=0 cpu=2085.83ms elapsed=2.25s tid=0x00007f24d80e62d0  [0x00007f24b8e42000]",
            "   Carrying virtual thread #22",
            "\tat jdk.internal.vm.Continuation.run(java.base@21.0.5/Continuation.java:248)",
            "\tat java.lang.VirtualThread.runContinuation(java.base@21.0.5/VirtualThread.java:223)",
        ]));
        assert_eq!(d.summary.skipped_lines, 0);
        let t = &d.threads[0];
        assert_eq!(t.header.carrying_virtual_thread, Some(22));
        assert!(t.header.is_virtual_thread_carrier());
        assert_eq!(t.header.state, None);
        assert_eq!(t.virtual_frames, 0);
        assert_eq!(t.frames.len(), 2);
    }

    const JDK25_CARRIER: &[&str] = &[
        "\"ForkJoinPool-1-worker-1\" #36 [11496] daemon prio=5 os_prio=0 cpu=0.37ms elapsed=2.15s tid=0x00007f8f34121350  [0x00007f8f0d9fd000]",
        "   Carrying virtual thread #35",
        "\tat jdk.internal.vm.Continuation.run(java.base@25.0.3/Continuation.java:251)",
        "\tat java.util.concurrent.ForkJoinWorkerThread.run(java.base@25.0.3/ForkJoinWorkerThread.java:187)",
        "   Mounted virtual thread #35",
        "\tat java.io.FileInputStream.readBytes(java.base@25.0.3/Native Method)",
        "\tat java.io.BufferedInputStream.read(java.base@25.0.3/BufferedInputStream.java:308)",
        "\t- locked <0x00000000ffd048e0> (a java.io.BufferedInputStream)",
        "\tat jdk.internal.vm.Continuation.enter(java.base@25.0.3/Continuation.java:316)",
        "",
        "\"next\" #37 [11497] daemon prio=5 os_prio=0 tid=0x1 nid=11497 waiting on condition  [0x2]",
    ];

    #[test]
    fn jdk25_mounted_virtual_thread_frames_come_first() {
        let d = parse(&dump(JDK25_CARRIER));
        assert_eq!(d.summary.skipped_lines, 0);
        let t = &d.threads[0];
        assert_eq!(t.header.carrying_virtual_thread, Some(35));
        let names: Vec<_> = t.frames.iter().map(Frame::qualified_method).collect();
        assert_eq!(
            names,
            [
                "java.io.FileInputStream.readBytes",
                "java.io.BufferedInputStream.read",
                "jdk.internal.vm.Continuation.enter",
                "jdk.internal.vm.Continuation.run",
                "java.util.concurrent.ForkJoinWorkerThread.run",
            ]
        );
        assert_eq!(t.virtual_frames, 3);
        assert_eq!(t.virtual_thread_frames().len(), 3);
        assert_eq!(t.own_frames()[0].method(), "run");
        assert_eq!(t.locks.len(), 1);
        assert_eq!(
            t.frames[t.locks[0].frame].qualified_method(),
            "java.io.BufferedInputStream.read"
        );
        // Not kept: still counted, nothing stored.
        let lean = parse_filtered(&dump(JDK25_CARRIER), |_| false);
        assert_eq!(lean.threads[0].virtual_frames, 3);
        assert_eq!(lean.threads[0].frame_count, 5);
        assert!(lean.threads[0].frames.is_empty());
    }

    #[test]
    fn keep_is_asked_once_per_thread_with_frames_after_the_state_line() {
        let mut asked = Vec::new();
        let d = parse_filtered(JDK17_JCMD, |h| {
            asked.push((h.name.clone(), h.state));
            h.name.starts_with("deadlock")
        });
        assert_eq!(
            asked,
            [
                ("main".to_owned(), Some(ThreadState::Sleeping)),
                ("deadlock-A".to_owned(), Some(ThreadState::Blocked)),
            ]
        );
        let main = d.thread("main").unwrap();
        assert!(!main.frames_kept);
        assert!(main.frames.is_empty() && main.locks.is_empty());
        assert_eq!(main.frame_count, 2);
        let a = d.thread("deadlock-A").unwrap();
        assert!(a.frames_kept);
        assert_eq!((a.frames.len(), a.locks.len()), (3, 2));
        assert_eq!(d.summary, parse(JDK17_JCMD).summary);
    }

    #[test]
    fn streaming_returns_each_thread_when_the_next_begins() {
        let mut p = Parser::new(|_: &ThreadHeader| true);
        assert!(p
            .feed_line("\"a\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]")
            .is_none());
        assert!(p.feed_line("\tat a.B.c(B.java:1)").is_none());
        assert!(
            p.feed_line("").is_none(),
            "a blank line does not end a thread"
        );
        let a = p
            .feed_line("\"b\" #2 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]")
            .unwrap();
        assert_eq!((a.header.name.as_str(), a.frames.len()), ("a", 1));
        assert_eq!(p.summary().threads, 2);
        let (last, summary) = p.finish();
        assert_eq!(last.unwrap().header.name, "b");
        assert_eq!(summary.lines, 4);
        // The end of the thread list completes the last thread too.
        let mut p = Parser::new(|_: &ThreadHeader| true);
        p.feed_line("\"a\" #1 prio=5 os_prio=0 tid=0x1 nid=0x2 runnable  [0x3]");
        assert_eq!(
            p.feed_line("JNI global refs: 4, weak refs: 0")
                .unwrap()
                .header
                .name,
            "a"
        );
        assert!(p.finish().0.is_none());
    }

    #[test]
    fn crlf_line_endings() {
        let text = JDK17_JCMD.replace('\n', "\r\n");
        let d = parse(&text);
        assert_eq!(d.summary.skipped_lines, 0);
        assert_eq!(d.threads.len(), 6);
        assert_eq!(d.threads[0].frames[1].as_str(), "Main.main(Main.java:170)");
    }

    #[test]
    fn garbage_is_counted_and_examples_are_cut_at_char_boundaries() {
        let long = "é".repeat(200);
        let text = dump(&[
            "garbage",
            "\tat a.B.c(B.java:1)",
            &long,
            "   java.lang.Thread.State: RUNNABLE",
            "x",
            "y",
        ]);
        let d = parse(&text);
        assert_eq!(d.summary.skipped_lines, 6);
        assert_eq!(d.summary.skipped_examples.len(), MAX_SKIPPED_EXAMPLES);
        assert_eq!(d.summary.skipped_examples[0], "garbage");
        assert_eq!(
            d.summary.skipped_examples[2].len(),
            MAX_SKIPPED_EXAMPLE_BYTES
        );
        assert!(d.threads.is_empty());
    }

    #[test]
    fn empty_input() {
        let d = parse("");
        assert_eq!(d, ThreadDump::default());
    }

    #[test]
    fn concatenated_dumps_are_both_read() {
        let text = format!("{JDK17_JCMD}\n{}", JDK17_JCMD.replace("4242:\n", ""));
        let d = parse(&text);
        assert_eq!(
            d.summary.skipped_lines, 0,
            "{:?}",
            d.summary.skipped_examples
        );
        assert_eq!(d.threads.len(), 12);
    }
}
