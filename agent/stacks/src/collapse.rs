//! A stack in the folded ("collapsed") form flame graphs read: frames root first, each
//! `class.method` without its line (so that the samples of one method merge), joined by `;`.
//! A deep stack keeps its innermost frames, where the time is spent; the root side it drops is
//! replaced by one `…` frame, so that every stack stays bounded.
//!
//! Java names cannot contain `;` (JVMS §4.2.2), so the separator is unambiguous.

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
        out.push_str(f.borrow().qualified_method());
    }
    out
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
    fn deep_stacks_keep_their_innermost_frames() {
        let f = frames(&["a.F.top", "a.F.mid", "a.F.low", "a.F.root"]);
        assert_eq!(collapse(&f, 2), "…;a.F.mid;a.F.top");
        assert_eq!(collapse(&f, 4), "a.F.root;a.F.low;a.F.mid;a.F.top");
        assert_eq!(collapse::<Frame>(&[], 4), "");
    }
}
