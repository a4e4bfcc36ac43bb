//! Classifies one stack sample of a Flink task thread as hard back-pressure ([`SampleClass::Blocked`]),
//! a wait in the task's mailbox ([`SampleClass::Waiting`]: idle or soft back-pressure, which no
//! stack can tell apart) or anything else ([`SampleClass::Busy`]), and names the frame a busy
//! sample was in.
//!
//! The decision is data: an ordered table of [`Rule`]s, first match wins, default busy. A rule
//! looks at the **topmost non-JDK frame** of the stack and at its **caller**, the next non-JDK
//! frame below. Anchoring on the first non-JDK frame makes the JDK's own waiting frames irrelevant;
//! they differ between versions (`sun.misc.Unsafe.park` vs `jdk.internal.misc.Unsafe.park`,
//! `Object.wait` vs `Object.wait0`, `CompletableFuture$Signaller.block`,
//! `ForkJoinPool.managedBlock`/`unmanagedBlock`…).
//!
//! The built-in table ([`builtin_rules`]) covers Flink 1.8 to 2.x:
//!
//! | class | topmost non-JDK frame | its caller |
//! | --- | --- | --- |
//! | blocked | `LocalBufferPool.requestBufferBuilderBlocking` | |
//! | blocked | `LocalBufferPool.requestMemorySegmentBlocking` (1.10+) | |
//! | blocked | `LocalBufferPool.requestMemorySegment` (1.8–1.9: `Object.wait(2000)` in it) | `requestBufferBuilderBlocking` or `requestMemorySegmentBlocking` |
//! | blocked | `TieredStorageMemoryManagerImpl.requestBufferBlocking` (hybrid shuffle) | |
//! | waiting | `TaskMailboxImpl.take` | `MailboxProcessor.processMailsWhenDefaultActionUnavailable` or `MailboxProcessor.processMail`, not `MailboxExecutorImpl.yield` |
//!
//! A mailbox `take` under `MailboxExecutorImpl.yield` (e.g. `AsyncWaitOperator` waiting for
//! capacity) is busy, as Flink's own busy-time metric counts it.
//!
//! Users add rules in the agent's configuration; they are evaluated before the built-in ones:
//!
//! ```toml
//! [[classify.rules]]
//! class = "blocked"                                  # blocked | waiting | busy
//! at = "com.example.sink.RateLimiter.acquire"        # `package.Class.method`, or a prefix ending in `*`
//! caller_any = ["com.example.sink.*"]                # optional: the caller must match one of these
//! caller_none = ["com.example.sink.Warmup.run"]      # optional: the caller must match none of these
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::threaddump::Frame;

// The class is part of the wire (reports, the in-process protocol), so it lives in `bpmon-proto`.
pub use bpmon_proto::SampleClass;

/// Why a frame pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty frame pattern")]
    Empty,
    #[error("frame pattern {0:?} matches every frame")]
    MatchesEverything(String),
    #[error("frame pattern {0:?}: `*` is only allowed once, at the end (a prefix match)")]
    MisplacedWildcard(String),
    #[error("frame pattern {pattern:?}: character {ch:?} cannot occur in `package.Class.method`")]
    InvalidChar { pattern: String, ch: char },
    #[error(
        "frame pattern {0:?} must be a fully qualified method, `package.Class.method` \
         (or a prefix ending in `*`)"
    )]
    NotQualified(String),
}

/// Matches the fully qualified method of a frame (`org.apache.flink.….LocalBufferPool.requestMemorySegment`):
/// exactly, or as a prefix when written with a trailing `*` (`org.apache.flink.runtime.io.*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FramePattern {
    /// The pattern without its `*`.
    text: String,
    prefix: bool,
}

impl FramePattern {
    /// Parses and checks a pattern.
    pub fn new(pattern: &str) -> Result<FramePattern, PatternError> {
        let trimmed = pattern.trim();
        if trimmed.is_empty() {
            return Err(PatternError::Empty);
        }
        let (text, prefix) = match trimmed.strip_suffix('*') {
            Some(text) => (text, true),
            None => (trimmed, false),
        };
        if prefix && text.is_empty() {
            return Err(PatternError::MatchesEverything(pattern.to_owned()));
        }
        if text.contains('*') {
            return Err(PatternError::MisplacedWildcard(pattern.to_owned()));
        }
        // `(`, `)` and `:` would mean a location was pasted along with the method.
        if let Some(ch) = text
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '(' | ')' | ':' | '"' | ','))
        {
            return Err(PatternError::InvalidChar {
                pattern: pattern.to_owned(),
                ch,
            });
        }
        if !prefix {
            let qualified = text
                .rsplit_once('.')
                .is_some_and(|(class, method)| !class.is_empty() && !method.is_empty());
            if !qualified {
                return Err(PatternError::NotQualified(pattern.to_owned()));
            }
        }
        Ok(FramePattern {
            text: text.to_owned(),
            prefix,
        })
    }

    /// Whether `qualified_method` (`class.method`) matches.
    pub fn matches(&self, qualified_method: &str) -> bool {
        if self.prefix {
            qualified_method.starts_with(&self.text)
        } else {
            qualified_method == self.text
        }
    }
}

impl fmt::Display for FramePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl FromStr for FramePattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FramePattern::new(s)
    }
}

impl TryFrom<String> for FramePattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        FramePattern::new(&s)
    }
}

impl From<FramePattern> for String {
    fn from(p: FramePattern) -> String {
        p.to_string()
    }
}

/// One classification rule: a sample whose topmost non-JDK frame matches `at`, and whose caller
/// (the next non-JDK frame below it) passes `caller_any` and `caller_none`, is of class `class`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub class: SampleClass,
    /// Pattern for the topmost non-JDK frame.
    pub at: FramePattern,
    /// If not empty, the caller must exist and match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_any: Vec<FramePattern>,
    /// The caller, if any, must match none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_none: Vec<FramePattern>,
}

impl Rule {
    /// A rule from pattern strings (for tables written in code).
    pub fn new(
        class: SampleClass,
        at: &str,
        caller_any: &[&str],
        caller_none: &[&str],
    ) -> Result<Rule, PatternError> {
        let patterns = |ps: &[&str]| -> Result<Vec<FramePattern>, PatternError> {
            ps.iter().map(|p| FramePattern::new(p)).collect()
        };
        Ok(Rule {
            class,
            at: FramePattern::new(at)?,
            caller_any: patterns(caller_any)?,
            caller_none: patterns(caller_none)?,
        })
    }

    /// Whether the rule applies to a stack whose topmost non-JDK frame is `at` (`class.method`)
    /// and whose caller is `caller`.
    pub fn matches(&self, at: &str, caller: Option<&str>) -> bool {
        if !self.at.matches(at) {
            return false;
        }
        if !self.caller_any.is_empty() {
            match caller {
                Some(c) if self.caller_any.iter().any(|p| p.matches(c)) => {}
                _ => return false,
            }
        }
        match caller {
            Some(c) => !self.caller_none.iter().any(|p| p.matches(c)),
            None => true,
        }
    }
}

/// The rules section of a configuration file (`[[classify.rules]]` in the agent's TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Rules evaluated before the built-in ones.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

const LOCAL_BUFFER_POOL: &str = "org.apache.flink.runtime.io.network.buffer.LocalBufferPool";
const MAILBOX: &str = "org.apache.flink.streaming.runtime.tasks.mailbox";

/// The built-in table, as (class, at, caller_any, caller_none) with `LocalBufferPool.` and
/// `mailbox.` shorthands expanded by [`builtin_rules`].
const BUILTIN: &[(SampleClass, &str, &[&str], &[&str])] = &[
    // Flink 1.5+: the request for an output buffer, the frame Flink 1.8's own sampler looked for.
    (
        SampleClass::Blocked,
        "LocalBufferPool.requestBufferBuilderBlocking",
        &[],
        &[],
    ),
    // Flink 1.10+: waits in `CompletableFuture.get()` inside it.
    (
        SampleClass::Blocked,
        "LocalBufferPool.requestMemorySegmentBlocking",
        &[],
        &[],
    ),
    // Flink 1.8–1.9 wait in `Object.wait(2000)` here; 1.10+ pass through it on each retry of the
    // blocking request, which Flink's hard back-pressure timer also counts.
    (
        SampleClass::Blocked,
        "LocalBufferPool.requestMemorySegment",
        &[
            "LocalBufferPool.requestBufferBuilderBlocking",
            "LocalBufferPool.requestMemorySegmentBlocking",
        ],
        &[],
    ),
    // Hybrid shuffle (Flink 1.18+).
    (
        SampleClass::Blocked,
        "org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManagerImpl.requestBufferBlocking",
        &[],
        &[],
    ),
    // Flink 1.10+: the mailbox loop waits for mail (idle or soft back-pressure). A `take` under
    // `MailboxExecutorImpl.yield` is an operator waiting inside its own processing: busy.
    (
        SampleClass::Waiting,
        "mailbox.TaskMailboxImpl.take",
        &[
            "mailbox.MailboxProcessor.processMailsWhenDefaultActionUnavailable",
            "mailbox.MailboxProcessor.processMail",
        ],
        &["mailbox.MailboxExecutorImpl.yield"],
    ),
];

fn expand(short: &str) -> String {
    if let Some(rest) = short.strip_prefix("LocalBufferPool.") {
        format!("{LOCAL_BUFFER_POOL}.{rest}")
    } else if let Some(rest) = short.strip_prefix("mailbox.") {
        format!("{MAILBOX}.{rest}")
    } else {
        short.to_owned()
    }
}

/// The built-in rules, in evaluation order.
pub fn builtin_rules() -> Vec<Rule> {
    let patterns = |ps: &[&str]| -> Vec<FramePattern> {
        ps.iter()
            .filter_map(|p| FramePattern::new(&expand(p)).ok())
            .collect()
    };
    BUILTIN
        .iter()
        .filter_map(|(class, at, any, none)| {
            // The table is checked by a unit test; a bad entry can only drop itself.
            Some(Rule {
                class: *class,
                at: FramePattern::new(&expand(at)).ok()?,
                caller_any: patterns(any),
                caller_none: patterns(none),
            })
        })
        .collect()
}

/// Whether a class belongs to the JDK; its frames are looked through when matching rules.
pub fn is_jdk_class(class: &str) -> bool {
    const JDK: &[&str] = &["java.", "javax.", "jdk.", "sun.", "com.sun."];
    JDK.iter().any(|p| class.starts_with(p))
}

/// Whether a class belongs to Flink (including Flink's shaded dependencies).
pub fn is_flink_class(class: &str) -> bool {
    class.starts_with("org.apache.flink.")
}

/// The result of classifying one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification<'f> {
    pub class: SampleClass,
    /// For busy samples, what the task was doing: the topmost user frame (neither JDK nor
    /// `org.apache.flink.`), else the topmost non-JDK frame, else the top frame; `None` for
    /// blocked and waiting samples and for an empty stack. `Frame::as_str` renders it as
    /// `class.method(location)`, e.g. `com.example.Slow.map(Slow.java:17)`.
    pub top_frame: Option<&'f Frame>,
    /// Index into [`Classifier::rules`] of the rule that matched; `None` for the default.
    pub rule: Option<usize>,
}

/// An ordered rule table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new()
    }
}

impl Classifier {
    /// The built-in rules only.
    pub fn new() -> Classifier {
        Classifier {
            rules: builtin_rules(),
        }
    }

    /// `user` rules first (they take precedence), then the built-in ones.
    pub fn with_user_rules(user: impl IntoIterator<Item = Rule>) -> Classifier {
        let mut rules: Vec<Rule> = user.into_iter().collect();
        rules.extend(builtin_rules());
        Classifier { rules }
    }

    /// Exactly these rules, without the built-in ones.
    pub fn from_rules(rules: Vec<Rule>) -> Classifier {
        Classifier { rules }
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Classifies one stack, top frame first: frames, or references to frames kept elsewhere
    /// (the in-process sampler's cache).
    pub fn classify<'f, F: Borrow<Frame>>(&self, frames: &'f [F]) -> Classification<'f> {
        let mut non_jdk = frames
            .iter()
            .map(Borrow::borrow)
            .filter(|f| !is_jdk_class(f.class()));
        if let Some(at) = non_jdk.next() {
            let caller = non_jdk.next().map(Frame::qualified_method);
            let at = at.qualified_method();
            if let Some(i) = self.rules.iter().position(|r| r.matches(at, caller)) {
                let class = self.rules[i].class;
                let top_frame = (class == SampleClass::Busy)
                    .then(|| busy_frame(frames))
                    .flatten();
                return Classification {
                    class,
                    top_frame,
                    rule: Some(i),
                };
            }
        }
        Classification {
            class: SampleClass::Busy,
            top_frame: busy_frame(frames),
            rule: None,
        }
    }
}

/// Classifies with the built-in rules.
pub fn classify<F: Borrow<Frame>>(frames: &[F]) -> Classification<'_> {
    static BUILTIN_CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    BUILTIN_CLASSIFIER
        .get_or_init(Classifier::new)
        .classify(frames)
}

/// The frame reported for a busy sample.
fn busy_frame<F: Borrow<Frame>>(frames: &[F]) -> Option<&Frame> {
    let mut all = frames.iter().map(Borrow::borrow);
    all.clone()
        .find(|f| !is_jdk_class(f.class()) && !is_flink_class(f.class()))
        .or_else(|| all.clone().find(|f| !is_jdk_class(f.class())))
        .or_else(|| all.next())
}

#[cfg(test)]
mod tests {
    //! Stacks below are shaped like those of real Flink task threads (§4 of the Flink brief):
    //! frames and callers as in the Flink sources of each version, line numbers illustrative.
    //! To add a case, paste the `at …` lines of a thread from a dump.

    use super::*;
    use crate::threaddump::frames_from_lines;

    /// Classifies a stack given as `at …` lines (top first) with the built-in rules; returns the
    /// class and, for busy samples, the reported frame.
    fn classify_frames(lines: &[&str]) -> (SampleClass, Option<String>) {
        classify_frames_with(&Classifier::new(), lines)
    }

    fn classify_frames_with(c: &Classifier, lines: &[&str]) -> (SampleClass, Option<String>) {
        let frames = frames_from_lines(lines.iter().copied());
        assert_eq!(
            frames.len(),
            lines
                .iter()
                .filter(|l| l.trim_start().starts_with("at "))
                .count(),
            "a test line is not a frame"
        );
        let r = c.classify(&frames);
        (r.class, r.top_frame.map(|f| f.to_string()))
    }

    /// Flink 1.20 on JDK 17: the output buffer pool is exhausted (hard back-pressure).
    const FLINK_1_20_HARD: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        "- parking to wait for  <0x00000000e1d5b5a8> (a java.util.concurrent.CompletableFuture$Signaller)",
        "at java.util.concurrent.locks.LockSupport.park(java.base@17.0.15/LockSupport.java:211)",
        "at java.util.concurrent.CompletableFuture$Signaller.block(java.base@17.0.15/CompletableFuture.java:1864)",
        "at java.util.concurrent.ForkJoinPool.unmanagedBlock(java.base@17.0.15/ForkJoinPool.java:3465)",
        "at java.util.concurrent.ForkJoinPool.managedBlock(java.base@17.0.15/ForkJoinPool.java:3436)",
        "at java.util.concurrent.CompletableFuture.waitingGet(java.base@17.0.15/CompletableFuture.java:1898)",
        "at java.util.concurrent.CompletableFuture.get(java.base@17.0.15/CompletableFuture.java:2072)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegmentBlocking(LocalBufferPool.java:384)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking(LocalBufferPool.java:356)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.requestNewBufferBuilderFromPool(BufferWritingResultPartition.java:414)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.requestNewUnicastBufferBuilder(BufferWritingResultPartition.java:390)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.appendUnicastDataForNewRecord(BufferWritingResultPartition.java:328)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.emitRecord(BufferWritingResultPartition.java:161)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:110)",
        "at org.apache.flink.runtime.io.network.api.writer.ChannelSelectorRecordWriter.emit(ChannelSelectorRecordWriter.java:55)",
        "at org.apache.flink.streaming.runtime.io.RecordWriterOutput.pushToRecordWriter(RecordWriterOutput.java:140)",
        "at org.apache.flink.streaming.runtime.io.RecordWriterOutput.collect(RecordWriterOutput.java:101)",
        "at org.apache.flink.streaming.api.operators.CountingOutput.collect(CountingOutput.java:60)",
        "at org.apache.flink.streaming.api.operators.TimestampedCollector.collect(TimestampedCollector.java:52)",
        "at com.example.Explode.flatMap(Explode.java:21)",
        "at org.apache.flink.streaming.api.operators.StreamFlatMap.processElement(StreamFlatMap.java:47)",
        "at org.apache.flink.streaming.runtime.tasks.OneInputStreamTask$StreamTaskNetworkOutput.emitRecord(OneInputStreamTask.java:238)",
        "at org.apache.flink.streaming.runtime.io.AbstractStreamTaskNetworkInput.processElement(AbstractStreamTaskNetworkInput.java:157)",
        "at org.apache.flink.streaming.runtime.io.AbstractStreamTaskNetworkInput.emitNext(AbstractStreamTaskNetworkInput.java:114)",
        "at org.apache.flink.streaming.runtime.io.StreamOneInputProcessor.processInput(StreamOneInputProcessor.java:65)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.processInput(StreamTask.java:638)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMailboxLoop(MailboxProcessor.java:231)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.runMailboxLoop(StreamTask.java:973)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.invoke(StreamTask.java:917)",
        "at org.apache.flink.runtime.taskmanager.Task.runWithSystemExitMonitoring(Task.java:970)",
        "at org.apache.flink.runtime.taskmanager.Task.restoreAndInvoke(Task.java:949)",
        "at org.apache.flink.runtime.taskmanager.Task.doRun(Task.java:763)",
        "at org.apache.flink.runtime.taskmanager.Task.run(Task.java:575)",
        "at java.lang.Thread.run(java.base@17.0.15/Thread.java:840)",
    ];

    /// Flink 2.x on JDK 21: same wait, newer JDK frames (`Thread.runWith`), broadcast emit.
    const FLINK_2_HARD_JDK21: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@21.0.5/Native Method)",
        "at java.util.concurrent.locks.LockSupport.park(java.base@21.0.5/LockSupport.java:221)",
        "at java.util.concurrent.CompletableFuture$Signaller.block(java.base@21.0.5/CompletableFuture.java:1864)",
        "at java.util.concurrent.ForkJoinPool.unmanagedBlock(java.base@21.0.5/ForkJoinPool.java:3780)",
        "at java.util.concurrent.ForkJoinPool.managedBlock(java.base@21.0.5/ForkJoinPool.java:3725)",
        "at java.util.concurrent.CompletableFuture.waitingGet(java.base@21.0.5/CompletableFuture.java:1898)",
        "at java.util.concurrent.CompletableFuture.get(java.base@21.0.5/CompletableFuture.java:2072)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegmentBlocking(LocalBufferPool.java:390)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking(LocalBufferPool.java:362)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.requestNewBufferBuilderFromPool(BufferWritingResultPartition.java:420)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.requestNewBroadcastBufferBuilder(BufferWritingResultPartition.java:405)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.broadcastRecord(BufferWritingResultPartition.java:176)",
        "at org.apache.flink.runtime.io.network.api.writer.BroadcastRecordWriter.emit(BroadcastRecordWriter.java:50)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.runMailboxLoop(StreamTask.java:1010)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.invoke(StreamTask.java:953)",
        "at org.apache.flink.runtime.taskmanager.Task.run(Task.java:568)",
        "at java.lang.Thread.runWith(java.base@21.0.5/Thread.java:1596)",
        "at java.lang.Thread.run(java.base@21.0.5/Thread.java:1583)",
    ];

    /// Flink 1.9 on JDK 8: `Object.wait(2000)` in `requestMemorySegment`, caller `ResultPartition.getBufferBuilder`.
    const FLINK_1_9_HARD_JDK8: &[&str] = &[
        "at java.lang.Object.wait(Native Method)",
        "- waiting on <0x00000000f6c1c3a8> (a java.util.ArrayDeque)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:261)",
        "- locked <0x00000000f6c1c3a8> (a java.util.ArrayDeque)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking(LocalBufferPool.java:224)",
        "at org.apache.flink.runtime.io.network.partition.ResultPartition.getBufferBuilder(ResultPartition.java:194)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.requestNewBufferBuilder(RecordWriter.java:264)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.copyFromSerializerToTargetChannel(RecordWriter.java:192)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:162)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:128)",
        "at org.apache.flink.streaming.runtime.io.RecordWriterOutput.pushToRecordWriter(RecordWriterOutput.java:107)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.performDefaultAction(StreamTask.java:276)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.run(StreamTask.java:298)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.invoke(StreamTask.java:403)",
        "at org.apache.flink.runtime.taskmanager.Task.run(Task.java:705)",
        "at java.lang.Thread.run(Thread.java:748)",
    ];

    /// Flink 1.8 with JDK 21's `Object.wait0` (and the 1.8 caller `RecordWriter.requestNewBufferBuilder`).
    const FLINK_1_8_HARD_WAIT0: &[&str] = &[
        "at java.lang.Object.wait0(java.base@21.0.5/Native Method)",
        "at java.lang.Object.wait(java.base@21.0.5/Object.java:366)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:251)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking(LocalBufferPool.java:218)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.requestNewBufferBuilder(RecordWriter.java:213)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:144)",
    ];

    /// Hybrid shuffle (Flink 1.18+).
    const HYBRID_HARD: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        "at java.util.concurrent.locks.LockSupport.parkNanos(java.base@17.0.15/LockSupport.java:252)",
        "at java.util.concurrent.CompletableFuture$Signaller.block(java.base@17.0.15/CompletableFuture.java:1866)",
        "at java.util.concurrent.ForkJoinPool.unmanagedBlock(java.base@17.0.15/ForkJoinPool.java:3465)",
        "at java.util.concurrent.ForkJoinPool.managedBlock(java.base@17.0.15/ForkJoinPool.java:3436)",
        "at java.util.concurrent.CompletableFuture.timedGet(java.base@17.0.15/CompletableFuture.java:1939)",
        "at java.util.concurrent.CompletableFuture.get(java.base@17.0.15/CompletableFuture.java:2095)",
        "at org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManagerImpl.requestBufferBlocking(TieredStorageMemoryManagerImpl.java:194)",
        "at org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.HashBufferAccumulator.requestBuffer(HashBufferAccumulator.java:107)",
        "at org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredResultPartition.emitRecord(TieredResultPartition.java:121)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:110)",
    ];

    /// A legacy `SourceFunction` emitting from its own thread, blocked on the output.
    const LEGACY_SOURCE_HARD: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        "at java.util.concurrent.locks.LockSupport.park(java.base@17.0.15/LockSupport.java:211)",
        "at java.util.concurrent.CompletableFuture$Signaller.block(java.base@17.0.15/CompletableFuture.java:1864)",
        "at java.util.concurrent.ForkJoinPool.managedBlock(java.base@17.0.15/ForkJoinPool.java:3436)",
        "at java.util.concurrent.CompletableFuture.waitingGet(java.base@17.0.15/CompletableFuture.java:1898)",
        "at java.util.concurrent.CompletableFuture.get(java.base@17.0.15/CompletableFuture.java:2072)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegmentBlocking(LocalBufferPool.java:384)",
        "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking(LocalBufferPool.java:356)",
        "at org.apache.flink.runtime.io.network.partition.BufferWritingResultPartition.requestNewBufferBuilderFromPool(BufferWritingResultPartition.java:414)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:110)",
        "at org.apache.flink.streaming.api.operators.StreamSourceContexts$ManualWatermarkContext.processAndCollect(StreamSourceContexts.java:418)",
        "at org.apache.flink.streaming.api.operators.StreamSourceContexts$WatermarkContext.collect(StreamSourceContexts.java:513)",
        "at com.example.NumbersSource.run(NumbersSource.java:30)",
        "at org.apache.flink.streaming.api.operators.StreamSource.run(StreamSource.java:114)",
        "at org.apache.flink.streaming.runtime.tasks.SourceStreamTask$LegacySourceFunctionThread.run(SourceStreamTask.java:338)",
    ];

    /// Flink 1.13+ on JDK 17: the mailbox is empty and the default action suspended.
    const FLINK_1_20_MAILBOX: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        "- parking to wait for  <0x00000000e0f8b370> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)",
        "at java.util.concurrent.locks.LockSupport.parkNanos(java.base@17.0.15/LockSupport.java:252)",
        "at java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject.await(java.base@17.0.15/AbstractQueuedSynchronizer.java:1757)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:149)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.processMailsWhenDefaultActionUnavailable(MailboxProcessor.java:363)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.processMail(MailboxProcessor.java:352)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMailboxLoop(MailboxProcessor.java:229)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.runMailboxLoop(StreamTask.java:973)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.invoke(StreamTask.java:917)",
        "at org.apache.flink.runtime.taskmanager.Task.runWithSystemExitMonitoring(Task.java:970)",
        "at org.apache.flink.runtime.taskmanager.Task.restoreAndInvoke(Task.java:949)",
        "at org.apache.flink.runtime.taskmanager.Task.doRun(Task.java:763)",
        "at org.apache.flink.runtime.taskmanager.Task.run(Task.java:575)",
        "at java.lang.Thread.run(java.base@17.0.15/Thread.java:840)",
    ];

    /// Flink 1.10–1.12 on JDK 8: untimed `await()`, called straight from `processMail`.
    const FLINK_1_11_MAILBOX_JDK8: &[&str] = &[
        "at sun.misc.Unsafe.park(Native Method)",
        "- parking to wait for  <0x00000000d2f7e5a0> (a java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject)",
        "at java.util.concurrent.locks.LockSupport.park(LockSupport.java:175)",
        "at java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject.await(AbstractQueuedSynchronizer.java:2039)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:146)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.processMail(MailboxProcessor.java:298)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMailboxLoop(MailboxProcessor.java:183)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.runMailboxLoop(StreamTask.java:569)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.invoke(StreamTask.java:534)",
        "at org.apache.flink.runtime.taskmanager.Task.doRun(Task.java:721)",
        "at org.apache.flink.runtime.taskmanager.Task.run(Task.java:546)",
        "at java.lang.Thread.run(Thread.java:748)",
    ];

    /// `AsyncWaitOperator` at capacity yields to the mailbox: Flink counts this as busy.
    const ASYNC_YIELD: &[&str] = &[
        "at jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)",
        "at java.util.concurrent.locks.LockSupport.park(java.base@17.0.15/LockSupport.java:211)",
        "at java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject.await(java.base@17.0.15/AbstractQueuedSynchronizer.java:1623)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:149)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxExecutorImpl.yield(MailboxExecutorImpl.java:98)",
        "at org.apache.flink.streaming.api.operators.async.AsyncWaitOperator.waitInFlightInputsFinished(AsyncWaitOperator.java:366)",
        "at org.apache.flink.streaming.api.operators.async.AsyncWaitOperator.processElement(AsyncWaitOperator.java:228)",
        "at org.apache.flink.streaming.runtime.tasks.OneInputStreamTask$StreamTaskNetworkOutput.emitRecord(OneInputStreamTask.java:238)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMailboxLoop(MailboxProcessor.java:231)",
    ];

    /// User code running.
    const BUSY_USER: &[&str] = &[
        "at java.lang.Math.floorMod(java.base@17.0.15/Math.java:1277)",
        "at com.example.Slow.map(Slow.java:17)",
        "at com.example.Slow.map(Slow.java:9)",
        "at org.apache.flink.streaming.api.operators.StreamMap.processElement(StreamMap.java:38)",
        "at org.apache.flink.streaming.runtime.tasks.OneInputStreamTask$StreamTaskNetworkOutput.emitRecord(OneInputStreamTask.java:238)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMailboxLoop(MailboxProcessor.java:231)",
    ];

    /// Flink serializing a record: no user frame at all.
    const BUSY_SERIALIZING: &[&str] = &[
        "at java.lang.String.getBytes(java.base@17.0.15/String.java:1683)",
        "at org.apache.flink.types.StringValue.writeString(StringValue.java:777)",
        "at org.apache.flink.api.common.typeutils.base.StringSerializer.serialize(StringSerializer.java:73)",
        "at org.apache.flink.runtime.io.network.api.serialization.RecordSerializer.serializeRecord(RecordSerializer.java:55)",
        "at org.apache.flink.runtime.io.network.api.writer.RecordWriter.emit(RecordWriter.java:108)",
    ];

    /// A mail running (here a checkpoint): busy, even though it sits under the mailbox loop.
    const BUSY_CHECKPOINT_MAIL: &[&str] = &[
        "at org.apache.flink.runtime.state.heap.HeapSnapshotStrategy.asyncSnapshot(HeapSnapshotStrategy.java:140)",
        "at org.apache.flink.streaming.runtime.tasks.StreamTask.performCheckpoint(StreamTask.java:1383)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.Mail.run(Mail.java:90)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.runMail(MailboxProcessor.java:398)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.processMailsWhenDefaultActionUnavailable(MailboxProcessor.java:367)",
        "at org.apache.flink.streaming.runtime.tasks.mailbox.MailboxProcessor.processMail(MailboxProcessor.java:352)",
    ];

    #[test]
    fn hard_back_pressure_across_flink_and_jdk_versions() {
        for (name, stack) in [
            ("1.20/JDK17", FLINK_1_20_HARD),
            ("2.x/JDK21", FLINK_2_HARD_JDK21),
            ("1.9/JDK8", FLINK_1_9_HARD_JDK8),
            ("1.8/JDK21 wait0", FLINK_1_8_HARD_WAIT0),
            ("hybrid shuffle", HYBRID_HARD),
            ("legacy source", LEGACY_SOURCE_HARD),
        ] {
            assert_eq!(
                classify_frames(stack),
                (SampleClass::Blocked, None),
                "{name}"
            );
        }
    }

    #[test]
    fn mailbox_waits_across_flink_and_jdk_versions() {
        assert_eq!(
            classify_frames(FLINK_1_20_MAILBOX),
            (SampleClass::Waiting, None)
        );
        assert_eq!(
            classify_frames(FLINK_1_11_MAILBOX_JDK8),
            (SampleClass::Waiting, None)
        );
    }

    #[test]
    fn a_mailbox_yield_is_busy() {
        assert_eq!(
            classify_frames(ASYNC_YIELD),
            (
                SampleClass::Busy,
                Some("org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:149)".into())
            )
        );
    }

    #[test]
    fn busy_samples_report_the_topmost_user_frame() {
        assert_eq!(
            classify_frames(BUSY_USER),
            (
                SampleClass::Busy,
                Some("com.example.Slow.map(Slow.java:17)".into())
            )
        );
        // Hard-blocked under user code still counts as blocked.
        assert_eq!(classify_frames(FLINK_1_20_HARD).0, SampleClass::Blocked);
    }

    #[test]
    fn busy_samples_without_user_code_fall_back_to_flink_then_jdk_frames() {
        assert_eq!(
            classify_frames(BUSY_SERIALIZING),
            (
                SampleClass::Busy,
                Some("org.apache.flink.types.StringValue.writeString(StringValue.java:777)".into())
            )
        );
        assert_eq!(
            classify_frames(BUSY_CHECKPOINT_MAIL),
            (
                SampleClass::Busy,
                Some("org.apache.flink.runtime.state.heap.HeapSnapshotStrategy.asyncSnapshot(HeapSnapshotStrategy.java:140)".into())
            )
        );
        assert_eq!(
            classify_frames(&[
                "at java.lang.Thread.sleep(java.base@17.0.15/Native Method)",
                "at java.lang.Thread.run(java.base@17.0.15/Thread.java:840)",
            ]),
            (
                SampleClass::Busy,
                Some("java.lang.Thread.sleep(Native Method)".into())
            )
        );
        assert_eq!(classify_frames(&[]), (SampleClass::Busy, None));
    }

    #[test]
    fn request_memory_segment_counts_only_inside_a_blocking_request() {
        let retry = [
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:402)",
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegmentBlocking(LocalBufferPool.java:380)",
        ];
        assert_eq!(classify_frames(&retry).0, SampleClass::Blocked);
        let non_blocking = [
            "at java.util.ArrayDeque.poll(java.base@17.0.15/ArrayDeque.java:376)",
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:402)",
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilder(LocalBufferPool.java:330)",
        ];
        assert_eq!(
            classify_frames(&non_blocking),
            (
                SampleClass::Busy,
                Some("org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:402)".into())
            )
        );
        // Without any caller the 1.8 rule cannot apply.
        assert_eq!(classify_frames(&retry[..1]).0, SampleClass::Busy);
    }

    #[test]
    fn only_the_topmost_non_jdk_frame_is_matched() {
        // The mailbox take deeper in the stack does not make a busy mail a wait.
        assert_eq!(classify_frames(BUSY_CHECKPOINT_MAIL).0, SampleClass::Busy);
        // A take called from something else is busy.
        let other_caller = [
            "at org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take(TaskMailboxImpl.java:149)",
            "at com.example.Weird.call(Weird.java:1)",
        ];
        assert_eq!(classify_frames(&other_caller).0, SampleClass::Busy);
    }

    #[test]
    fn the_matching_rule_is_reported() {
        let c = Classifier::new();
        let frames = frames_from_lines(FLINK_1_20_MAILBOX.iter().copied());
        let r = c.classify(&frames);
        let rule = &c.rules()[r.rule.unwrap()];
        assert_eq!(rule.class, SampleClass::Waiting);
        assert_eq!(
            rule.at.to_string(),
            "org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take"
        );
        assert_eq!(
            c.classify(&frames_from_lines(BUSY_USER.iter().copied()))
                .rule,
            None
        );
    }

    #[test]
    fn builtin_table_is_complete_and_valid() {
        assert_eq!(builtin_rules().len(), BUILTIN.len());
        for (_, at, any, none) in BUILTIN {
            for p in std::iter::once(at).chain(any.iter()).chain(none.iter()) {
                let full = expand(p);
                assert!(full.starts_with("org.apache.flink."), "{full}");
                assert!(FramePattern::new(&full).is_ok(), "{full}");
            }
        }
    }

    #[test]
    fn jdk_classes() {
        for jdk in [
            "java.lang.Object",
            "javax.net.ssl.X",
            "jdk.internal.misc.Unsafe",
            "sun.misc.Unsafe",
            "com.sun.proxy.$Proxy1",
        ] {
            assert!(is_jdk_class(jdk), "{jdk}");
        }
        for not_jdk in [
            "org.apache.flink.X",
            "com.sunrise.X",
            "javalin.Javalin",
            "scala.collection.X",
            "NamedThreads",
        ] {
            assert!(!is_jdk_class(not_jdk), "{not_jdk}");
        }
    }

    #[test]
    fn patterns_exact_and_prefix() {
        let exact = FramePattern::new("com.example.Slow.map").unwrap();
        assert!(exact.matches("com.example.Slow.map"));
        assert!(!exact.matches("com.example.Slow.mapAll"));
        let prefix = FramePattern::new("com.example.*").unwrap();
        assert!(prefix.matches("com.example.Slow.map"));
        assert!(!prefix.matches("com.other.Slow.map"));
        assert_eq!(prefix.to_string(), "com.example.*");
        assert_eq!(
            " com.example.Slow.map ".parse::<FramePattern>().unwrap(),
            exact
        );
        assert!(FramePattern::new("Main$$Lambda/0x0000000041041c00.run").is_ok());
    }

    #[test]
    fn invalid_patterns_are_explained() {
        let cases = [
            ("", PatternError::Empty),
            ("*", PatternError::MatchesEverything("*".into())),
            (
                "com.*.Slow.map",
                PatternError::MisplacedWildcard("com.*.Slow.map".into()),
            ),
            (
                "com.example.*.map*",
                PatternError::MisplacedWildcard("com.example.*.map*".into()),
            ),
            ("map", PatternError::NotQualified("map".into())),
            (".map", PatternError::NotQualified(".map".into())),
            (
                "com.example.Slow.",
                PatternError::NotQualified("com.example.Slow.".into()),
            ),
            (
                "com.example.Slow.map(Slow.java:17)",
                PatternError::InvalidChar {
                    pattern: "com.example.Slow.map(Slow.java:17)".into(),
                    ch: '(',
                },
            ),
            (
                "com.example.Slow map",
                PatternError::InvalidChar {
                    pattern: "com.example.Slow map".into(),
                    ch: ' ',
                },
            ),
        ];
        for (text, err) in cases {
            assert_eq!(FramePattern::new(text), Err(err), "{text:?}");
        }
        assert_eq!(
            PatternError::MisplacedWildcard("a.*.b".into()).to_string(),
            "frame pattern \"a.*.b\": `*` is only allowed once, at the end (a prefix match)"
        );
    }

    #[test]
    fn caller_any_and_caller_none() {
        let rule = Rule::new(SampleClass::Waiting, "a.B.take", &["a.C.*"], &["a.C.yield"]).unwrap();
        assert!(rule.matches("a.B.take", Some("a.C.process")));
        assert!(
            !rule.matches("a.B.take", Some("a.C.yield")),
            "caller_none wins"
        );
        assert!(
            !rule.matches("a.B.take", Some("a.D.process")),
            "not in caller_any"
        );
        assert!(!rule.matches("a.B.take", None), "caller_any needs a caller");
        assert!(!rule.matches("a.B.give", Some("a.C.process")));
        let only_none = Rule::new(SampleClass::Busy, "a.B.take", &[], &["a.C.yield"]).unwrap();
        assert!(only_none.matches("a.B.take", None));
        assert!(!only_none.matches("a.B.take", Some("a.C.yield")));
        assert!(Rule::new(SampleClass::Busy, "a.B.take", &["bad"], &[]).is_err());
    }

    #[derive(Debug, Deserialize)]
    struct AgentConfig {
        classify: ClassifyConfig,
    }

    const USER_RULES: &str = r#"
        [[classify.rules]]
        class = "blocked"
        at = "com.example.sink.RateLimiter.acquire"
        caller_any = ["com.example.sink.*"]

        # Make yields count as waits (not what Flink does, but the user's call).
        [[classify.rules]]
        class = "waiting"
        at = "org.apache.flink.streaming.runtime.tasks.mailbox.TaskMailboxImpl.take"
        caller_any = ["org.apache.flink.streaming.runtime.tasks.mailbox.MailboxExecutorImpl.yield"]

        [[classify.rules]]
        class = "busy"
        at = "org.apache.flink.runtime.io.network.buffer.*"
        caller_none = ["org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestBufferBuilderBlocking"]
    "#;

    #[test]
    fn user_rules_from_toml_take_precedence() {
        let config: AgentConfig = toml::from_str(USER_RULES).unwrap();
        let rules = config.classify.rules;
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].class, SampleClass::Blocked);
        assert_eq!(
            rules[0].caller_any,
            [FramePattern::new("com.example.sink.*").unwrap()]
        );
        assert!(rules[1].caller_none.is_empty());
        let c = Classifier::with_user_rules(rules);
        assert_eq!(c.rules().len(), 3 + BUILTIN.len());

        let throttled = [
            "at java.lang.Thread.sleep(java.base@17.0.15/Native Method)",
            "at com.example.sink.RateLimiter.acquire(RateLimiter.java:40)",
            "at com.example.sink.HttpSink.invoke(HttpSink.java:77)",
        ];
        assert_eq!(
            classify_frames_with(&c, &throttled),
            (SampleClass::Blocked, None)
        );
        assert_eq!(
            classify_frames(&throttled).0,
            SampleClass::Busy,
            "not without the rule"
        );
        assert_eq!(
            classify_frames_with(&c, ASYNC_YIELD),
            (SampleClass::Waiting, None)
        );
        // The third rule shadows built-ins, except where its `caller_none` lets them through.
        let retry = [
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegment(LocalBufferPool.java:402)",
            "at org.apache.flink.runtime.io.network.buffer.LocalBufferPool.requestMemorySegmentBlocking(LocalBufferPool.java:380)",
        ];
        assert_eq!(classify_frames(&retry).0, SampleClass::Blocked);
        assert_eq!(classify_frames_with(&c, &retry).0, SampleClass::Busy);
        let frames = frames_from_lines(FLINK_1_9_HARD_JDK8.iter().copied());
        let r = c.classify(&frames);
        assert_eq!(r.class, SampleClass::Blocked);
        assert!(r.rule.unwrap() >= 3, "matched by a built-in rule");
        // Built-ins are untouched for what the user rules do not cover.
        assert_eq!(
            classify_frames_with(&c, FLINK_1_20_MAILBOX).0,
            SampleClass::Waiting
        );
    }

    #[test]
    fn bad_rules_in_toml_fail_with_a_clear_message() {
        let err = toml::from_str::<AgentConfig>(
            "[[classify.rules]]\nclass = \"blocked\"\nat = \"com.*.Slow.map\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`*` is only allowed once, at the end"),
            "{err}"
        );
        assert!(err.contains("com.*.Slow.map"), "{err}");
        let err = toml::from_str::<AgentConfig>(
            "[[classify.rules]]\nclass = \"stuck\"\nat = \"a.B.c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stuck"), "{err}");
        let err = toml::from_str::<AgentConfig>(
            "[[classify.rules]]\nclass = \"busy\"\nat = \"a.B.c\"\ncaller = [\"a.B.d\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("caller"), "unknown fields are rejected: {err}");
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&SampleClass::Blocked).unwrap(),
            "\"blocked\""
        );
        assert_eq!(
            serde_json::from_str::<SampleClass>("\"waiting\"").unwrap(),
            SampleClass::Waiting
        );
        assert_eq!(SampleClass::Busy.to_string(), "busy");
        let rule = Rule::new(SampleClass::Busy, "a.*", &[], &[]).unwrap();
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(json, r#"{"class":"busy","at":"a.*"}"#);
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
    }

    #[test]
    fn the_shared_builtin_classifier_matches_a_fresh_one() {
        for stack in [FLINK_1_20_HARD, FLINK_1_20_MAILBOX, ASYNC_YIELD, BUSY_USER] {
            let frames = frames_from_lines(stack.iter().copied());
            assert_eq!(classify(&frames), Classifier::default().classify(&frames));
        }
    }
}
