//! One thread's stack as the classifier wants it: `GetStackTrace` → `jmethodID`s → the same
//! [`Frame`]s a thread dump would have printed (`class.method(File.java:LINE)`).
//!
//! Resolving a `jmethodID` (name, declaring class, class signature, source file, line table)
//! costs several JVMTI calls and allocations, so each method is resolved once and kept in a
//! [`MethodCache`], keyed by the `jmethodID` pointer; so is each frame (method and bytecode
//! index) once rendered, so that a sample of a steady TaskManager allocates no frame at all.
//! HotSpot never reuses a `jmethodID` for another method (unloading a class only invalidates
//! its ids), so a cached entry cannot be wrong, only unused; the cache is capped and simply
//! cleared, between samples, when over its cap.

use std::collections::HashMap;

use bpmon_stacks::threaddump::Frame;
use jni::objects::JObject;
use jni::Env;

use crate::jvmti::{Jvmti, JvmtiError, MethodId};
use crate::sys::{self, jlocation, jmethodID};

/// Methods kept before the cache is cleared (a TaskManager runs a few thousand distinct methods
/// on its task threads; an entry is ~200 bytes).
pub const METHOD_CACHE_CAP: usize = 100_000;

/// What a stack needs of a method, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Dotted class name, as a thread dump prints it (`com.example.Foo$Inner`,
    /// `java.lang.invoke.LambdaForm$DMH/0x…` for a hidden class).
    pub class: String,
    pub method: String,
    pub native: bool,
    /// The class's `SourceFile` attribute, when known.
    pub source_file: Option<String>,
    /// (first bytecode index, line), sorted by index; empty when unknown.
    pub lines: Vec<(jlocation, u32)>,
}

impl MethodInfo {
    /// The frame's location as HotSpot prints it: `Native Method`, `File.java:LINE`,
    /// `File.java` (no line for that bytecode) or `Unknown Source`.
    pub fn location(&self, bci: jlocation) -> String {
        if self.native {
            return "Native Method".to_string();
        }
        match (&self.source_file, line_at(&self.lines, bci)) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file.clone(),
            (None, _) => "Unknown Source".to_string(),
        }
    }

    pub fn frame(&self, bci: jlocation) -> Frame {
        Frame::new(&self.class, &self.method, &self.location(bci))
    }
}

/// The line of bytecode index `bci`: the entry with the greatest start not after it (the last
/// such entry when starts repeat), as `Method::line_number_from_bci` picks it.
pub fn line_at(lines: &[(jlocation, u32)], bci: jlocation) -> Option<u32> {
    if bci < 0 {
        return None;
    }
    let after = lines.partition_point(|(start, _)| *start <= bci);
    after.checked_sub(1).map(|i| lines[i].1)
}

/// Sorts a line number table for [`line_at`] (JVMTI gives no order).
pub fn sort_lines(mut lines: Vec<(jlocation, u32)>) -> Vec<(jlocation, u32)> {
    lines.sort_by_key(|(start, _)| *start); // stable: equal starts keep table order
    lines
}

/// `Lcom/example/Foo$Bar;` → `com.example.Foo$Bar`. A hidden class's signature,
/// `Ljava/lang/invoke/LambdaForm$DMH.0x0000000801001000;`, becomes
/// `java.lang.invoke.LambdaForm$DMH/0x0000000801001000`, its `Class.getName()` and what dumps
/// print. `None` for anything that is not a class signature (arrays and primitives declare no
/// methods).
pub fn class_name_from_signature(sig: &str) -> Option<String> {
    let body = sig.strip_prefix('L')?.strip_suffix(';')?;
    if body.is_empty() {
        return None;
    }
    // A normal class's binary name has no `.`; a hidden class's has one, before its suffix.
    Some(
        body.chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
    )
}

/// A frame of a stack: the method (its `jmethodID` as an integer) and the bytecode index.
pub type FrameKey = (usize, jlocation);

/// Rendered frames kept per method resolved (a method shows up at a few call sites).
const FRAMES_PER_METHOD: usize = 4;

/// `jmethodID` → [`MethodInfo`], and frame → [`Frame`], capped at `cap` methods.
#[derive(Debug)]
pub struct MethodCache {
    map: HashMap<usize, MethodInfo>,
    frames: HashMap<FrameKey, Frame>,
    cap: usize,
    clears: u64,
}

impl Default for MethodCache {
    fn default() -> Self {
        MethodCache::new(METHOD_CACHE_CAP)
    }
}

impl MethodCache {
    pub fn new(cap: usize) -> MethodCache {
        MethodCache {
            map: HashMap::new(),
            frames: HashMap::new(),
            cap: cap.max(1),
            clears: 0,
        }
    }

    pub fn get(&self, method: jmethodID) -> Option<&MethodInfo> {
        self.map.get(&(method as usize))
    }

    /// Adds a method. The cap is enforced by [`Self::trim`], between samples, so that the keys
    /// of a sample in progress stay valid.
    pub fn insert(&mut self, method: jmethodID, info: MethodInfo) {
        self.map.insert(method as usize, info);
    }

    /// The frame `key` names, rendered once (`None` when its method was never resolved).
    pub fn frame(&mut self, key: FrameKey) -> Option<&Frame> {
        if !self.frames.contains_key(&key) {
            let frame = self.map.get(&key.0)?.frame(key.1);
            self.frames.insert(key, frame);
        }
        self.frames.get(&key)
    }

    /// Frames already rendered by [`Self::frame`], in the order of `keys`.
    pub fn frames(&self, keys: &[FrameKey]) -> Vec<&Frame> {
        keys.iter().filter_map(|k| self.frames.get(k)).collect()
    }

    /// Empties the cache when it holds more than its cap (cheaper and simpler than an LRU, and
    /// an overfull cache means the working set changed: classes were unloaded).
    pub fn trim(&mut self) {
        if self.map.len() > self.cap || self.frames.len() > self.cap * FRAMES_PER_METHOD {
            self.map.clear();
            self.frames.clear();
            self.clears += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many times the cache was emptied for being full.
    pub fn clears(&self) -> u64 {
        self.clears
    }
}

/// Why a stack could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The thread ended (`JVMTI_ERROR_THREAD_NOT_ALIVE`): not an error, tasks finish.
    #[error("thread ended")]
    Gone,
    #[error(transparent)]
    Jvmti(#[from] JvmtiError),
}

/// Reads stacks, reusing one frame buffer.
#[derive(Debug)]
pub struct StackReader {
    jvmti: Jvmti,
    buf: Vec<sys::jvmtiFrameInfo>,
    /// Whether `can_get_source_file_name` and `can_get_line_numbers` were granted.
    locations: bool,
}

impl StackReader {
    pub fn new(jvmti: Jvmti, locations: bool) -> StackReader {
        StackReader {
            jvmti,
            buf: Vec::new(),
            locations,
        }
    }

    /// The top `max_depth` frames of `thread`, top first.
    /// Each frame's method is resolved and its frame rendered in `methods`
    /// ([`MethodCache::frames`] turns the keys into frames).
    pub fn read(
        &mut self,
        env: &Env,
        methods: &mut MethodCache,
        thread: &JObject,
        max_depth: usize,
    ) -> Result<Vec<FrameKey>, StackError> {
        if self.buf.len() < max_depth {
            self.buf.resize(max_depth, sys::jvmtiFrameInfo::default());
        }
        let n = match self.jvmti.stack_trace(thread, &mut self.buf[..max_depth]) {
            Ok(n) => n,
            Err(e) if e.is(sys::JVMTI_ERROR_THREAD_NOT_ALIVE) => return Err(StackError::Gone),
            Err(e) => return Err(e.into()),
        };
        let mut frames = Vec::with_capacity(n);
        for info in &self.buf[..n] {
            if methods.get(info.method).is_none() {
                // SAFETY: GetStackTrace just handed this jmethodID out.
                let method = unsafe { MethodId::from_raw(info.method) };
                let resolved = resolve(env, self.jvmti, method, self.locations)?;
                methods.insert(info.method, resolved);
            }
            let key = (info.method as usize, info.location);
            if methods.frame(key).is_some() {
                frames.push(key);
            }
        }
        Ok(frames)
    }
}

/// Resolves a method with JVMTI. The declaring class arrives as a JNI local reference, deleted
/// here so that resolving thousands of methods in one sample never piles references up.
pub fn resolve(
    env: &Env,
    jvmti: Jvmti,
    method: MethodId,
    locations: bool,
) -> Result<MethodInfo, JvmtiError> {
    let name = jvmti.method_name(method)?;
    let native = jvmti.is_method_native(method)?;
    let class = jvmti.method_declaring_class(env, method)?;
    let signature = jvmti.class_signature(&class);
    // Location details are best-effort: a class without them prints `Unknown Source` in dumps too.
    let source_file = if locations {
        jvmti.source_file_name(&class).ok().flatten()
    } else {
        None
    };
    env.delete_local_ref(class);
    let signature = signature?;
    let class = class_name_from_signature(&signature).unwrap_or(signature);
    let lines = if locations && !native {
        jvmti
            .line_number_table(method)
            .ok()
            .flatten()
            .map(sort_lines)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(MethodInfo {
        class,
        method: name,
        native,
        source_file,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(native: bool, source: Option<&str>, lines: &[(i64, u32)]) -> MethodInfo {
        MethodInfo {
            class: "com.example.Slow".into(),
            method: "map".into(),
            native,
            source_file: source.map(String::from),
            lines: sort_lines(lines.to_vec()),
        }
    }

    #[test]
    fn signatures_become_the_names_dumps_print() {
        assert_eq!(
            class_name_from_signature("Ljava/lang/Thread;").as_deref(),
            Some("java.lang.Thread")
        );
        assert_eq!(
            class_name_from_signature("Lorg/apache/flink/Foo$Bar$1;").as_deref(),
            Some("org.apache.flink.Foo$Bar$1")
        );
        assert_eq!(
            class_name_from_signature("LTopLevel;").as_deref(),
            Some("TopLevel")
        );
        assert_eq!(
            class_name_from_signature("Ljava/lang/invoke/LambdaForm$DMH.0x0000000801001000;")
                .as_deref(),
            Some("java.lang.invoke.LambdaForm$DMH/0x0000000801001000")
        );
        assert_eq!(
            class_name_from_signature("Lcom/x/Job$$Lambda.0x00007f0001234;").as_deref(),
            Some("com.x.Job$$Lambda/0x00007f0001234")
        );
        assert_eq!(class_name_from_signature("[Ljava/lang/Object;"), None);
        assert_eq!(class_name_from_signature("I"), None);
        assert_eq!(class_name_from_signature("L;"), None);
    }

    #[test]
    fn the_line_is_the_last_entry_starting_at_or_before_the_bytecode() {
        // Out of order, with a repeated start (a loop's condition), as javac can emit.
        let lines = sort_lines(vec![(10, 12), (0, 10), (4, 11), (10, 13), (20, 15)]);
        assert_eq!(line_at(&lines, 0), Some(10));
        assert_eq!(line_at(&lines, 3), Some(10));
        assert_eq!(line_at(&lines, 4), Some(11));
        assert_eq!(line_at(&lines, 10), Some(13));
        assert_eq!(line_at(&lines, 19), Some(13));
        assert_eq!(line_at(&lines, 1000), Some(15));
        assert_eq!(line_at(&lines, -1), None);
        assert_eq!(line_at(&[], 5), None);
        assert_eq!(line_at(&[(3, 7)], 2), None);
    }

    #[test]
    fn locations_read_like_a_thread_dump() {
        let m = info(false, Some("Slow.java"), &[(0, 17), (8, 18)]);
        assert_eq!(m.location(9), "Slow.java:18");
        assert_eq!(m.frame(0).as_str(), "com.example.Slow.map(Slow.java:17)");
        assert_eq!(info(false, Some("Slow.java"), &[]).location(3), "Slow.java");
        assert_eq!(info(false, None, &[(0, 1)]).location(3), "Unknown Source");
        let native = info(true, Some("Slow.java"), &[]);
        assert_eq!(native.location(-1), "Native Method");
        assert!(native.frame(-1).is_native());
    }

    #[test]
    fn the_cache_renders_each_frame_once_and_is_emptied_between_samples_when_over_its_cap() {
        let mut cache = MethodCache::new(3);
        let id = |n: usize| n as jmethodID;
        for n in 1..=3 {
            cache.insert(id(n), info(false, Some("Slow.java"), &[(0, 17), (8, 18)]));
        }
        assert_eq!(cache.len(), 3);
        // Replacing an entry of a full cache keeps the others.
        cache.insert(id(2), info(true, None, &[]));
        cache.trim();
        assert_eq!((cache.len(), cache.clears()), (3, 0));
        assert!(cache.get(id(2)).is_some_and(|m| m.native));
        // Frames: rendered once, then handed out by reference, in the keys' order.
        let a = cache.frame((1, 9)).map(|f| f.as_str().to_string());
        assert_eq!(a.as_deref(), Some("com.example.Slow.map(Slow.java:18)"));
        assert!(
            cache.frame((9, 0)).is_none(),
            "an unresolved method has no frame"
        );
        let keys = [(2, -1), (1, 9), (1, 0)];
        for k in keys {
            cache.frame(k);
        }
        let frames: Vec<&str> = cache.frames(&keys).iter().map(|f| f.as_str()).collect();
        assert_eq!(
            frames,
            [
                "com.example.Slow.map(Native Method)",
                "com.example.Slow.map(Slow.java:18)",
                "com.example.Slow.map(Slow.java:17)"
            ]
        );
        // A fourth method goes in (a sample in progress keeps its keys) until the next trim.
        cache.insert(id(4), info(false, None, &[]));
        assert_eq!((cache.len(), cache.clears()), (4, 0));
        cache.trim();
        assert_eq!((cache.len(), cache.clears()), (0, 1));
        assert!(cache.frames(&keys).is_empty());
        assert_eq!(MethodCache::default().cap, METHOD_CACHE_CAP);
    }
}
