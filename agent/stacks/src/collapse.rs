//! A stack in the folded ("collapsed") form flame graphs read: frames root first, each
//! `class.method` without its line (so that the samples of one method merge), joined by `;`.
//! A deep stack keeps its innermost frames, where the time is spent; the root side it drops is
//! replaced by one `…` frame, so that every stack stays bounded.
//!
//! Java names cannot contain `;` (JVMS §4.2.2), so the separator is unambiguous.
//!
//! A lambda's class is named per JVM and per run (`Task$$Lambda$953/0x00007fc90b695818`, or
//! `Task$$Lambda/0x…` on JDK 21+); folded, it is `Task$$Lambda`, so that the same code path on
//! two TaskManagers, or before and after a restart, is one path of the flame graph.

use std::borrow::Borrow;

use crate::threaddump::Frame;

/// Frames kept per stack.
pub const MAX_DEPTH: usize = 48;

/// The frame standing for the dropped root side of a deep stack.
pub const TRUNCATED: &str = "…";

/// `frames` (top first, as dumps list them) folded root first, at most `max_depth` of them.
pub fn collapse<F: Borrow<Frame>>(frames: &[F], max_depth: usize) -> String {
    let kept = &frames[..frames.len().min(max_depth)];
    let mut out = String::with_capacity(
        kept.iter()
            .map(|f| f.borrow().qualified_method().len() + 1)
            .sum::<usize>()
            + 4,
    );
    if frames.len() > kept.len() {
        out.push_str(TRUNCATED);
    }
    for f in kept.iter().rev() {
        if !out.is_empty() {
            out.push(';');
        }
        push_stable(&mut out, f.borrow().qualified_method());
    }
    out
}

const LAMBDA: &str = "$$Lambda";

/// Appends `method` (`class.method`) with a lambda class's per-run suffix left out.
fn push_stable(out: &mut String, method: &str) {
    let Some(at) = method.find(LAMBDA) else {
        out.push_str(method);
        return;
    };
    let end = at + LAMBDA.len();
    // The suffix runs to the method's dot: `$953/0x…` or `/0x…` (hex and digits only).
    let rest = &method[end..];
    let suffix = rest
        .find('.')
        .filter(|&dot| rest[..dot].starts_with(['$', '/']))
        .unwrap_or(0);
    out.push_str(&method[..end]);
    out.push_str(&rest[suffix..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| {
                let (class, method) = n.rsplit_once('.').unwrap();
                Frame::new(class, method, "X.java:1")
            })
            .collect()
    }

    #[test]
    fn root_first_without_lines() {
        let f = frames(&["a.Inner.work", "a.Middle.call", "java.lang.Thread.run"]);
        assert_eq!(
            collapse(&f, MAX_DEPTH),
            "java.lang.Thread.run;a.Middle.call;a.Inner.work"
        );
    }

    #[test]
    fn lambda_classes_lose_their_per_run_names() {
        let f = frames(&[
            "org.apache.flink.runtime.taskmanager.Task$$Lambda$953/0x00007fc90b695818.run",
            "org.apache.flink.streaming.runtime.tasks.StreamTask$$Lambda/0x00007f123b60e5.run",
            "a.Plain$$Inner.call",
        ]);
        assert_eq!(
            collapse(&f, MAX_DEPTH),
            "a.Plain$$Inner.call;\
             org.apache.flink.streaming.runtime.tasks.StreamTask$$Lambda.run;\
             org.apache.flink.runtime.taskmanager.Task$$Lambda.run"
        );
    }

    #[test]
    fn deep_stacks_keep_their_innermost_frames() {
        let f = frames(&["a.F.top", "a.F.mid", "a.F.low", "a.F.root"]);
        assert_eq!(collapse(&f, 2), "…;a.F.mid;a.F.top");
        assert_eq!(collapse(&f, 4), "a.F.root;a.F.low;a.F.mid;a.F.top");
        assert_eq!(collapse::<Frame>(&[], 4), "");
    }
}
