//! The agent's batch sequence number, kept in a file next to the spool so that it keeps
//! increasing across restarts even when the spool is empty: the collector drops a batch whose
//! `(agent_id, seq)` it has already stored, so a number used twice would lose data.
//!
//! Each number is written to disk (temporary file, fsync, rename) *before* it is handed out; a
//! crash can skip a number, never repeat one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::spool::SpoolError;
use bpmon_proto::time::now_ms;

const SEQ_FILE: &str = "seq";

#[derive(Debug)]
pub struct SeqCounter {
    path: PathBuf,
    last: u64,
}

impl SeqCounter {
    /// Opens the counter in `dir`. `floor` is the highest sequence number known to be used
    /// otherwise (the newest spooled batch): the counter never hands out one at or below it.
    pub fn open(dir: &Path, floor: u64) -> Result<SeqCounter, SpoolError> {
        let path = dir.join(SEQ_FILE);
        let stored = match fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    tracing::warn!(
                        path = %path.display(),
                        "unreadable sequence file; continuing from the clock"
                    );
                    clock_floor()
                }
            },
            // A new agent, or one whose file was lost: numbers from the clock (ms since the
            // epoch) lie above any this agent id used before, which the collector would take
            // for duplicates and drop.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => clock_floor(),
            Err(source) => return Err(SpoolError::Io { path, source }),
        };
        Ok(SeqCounter {
            path,
            last: stored.max(floor),
        })
    }

    /// The last number handed out (or the floor).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next number, durably recorded first.
    pub fn claim(&mut self) -> Result<u64, SpoolError> {
        let next = self.last + 1;
        let tmp = self.path.with_extension("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(next.to_string().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        self.last = next;
        Ok(next)
    }
}

/// The clock as a floor: ms since the epoch lie above any number an earlier run handed out.
fn clock_floor() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bpmon-seq-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn numbers_survive_reopening_without_any_batch_left() {
        let d = dir("reopen");
        let before = clock_floor();
        let mut c = SeqCounter::open(&d, 0).unwrap();
        let (a, b) = (c.claim().unwrap(), c.claim().unwrap());
        // A new counter starts from the clock, so a lost file never brings back used numbers.
        assert!(a > before && a <= clock_floor() + 1, "{a} vs {before}");
        assert_eq!(b, a + 1);
        drop(c);
        let mut c = SeqCounter::open(&d, 0).unwrap();
        assert_eq!(c.claim().unwrap(), a + 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_spooled_batch_above_the_file_wins_and_garbage_is_not_fatal() {
        let d = dir("floor");
        fs::write(d.join(SEQ_FILE), "5").unwrap();
        assert_eq!(SeqCounter::open(&d, 9).unwrap().claim().unwrap(), 10);
        assert_eq!(SeqCounter::open(&d, 0).unwrap().claim().unwrap(), 11);
        fs::write(d.join(SEQ_FILE), "not a number").unwrap();
        assert!(SeqCounter::open(&d, 4).unwrap().claim().unwrap() > 11);
        let _ = fs::remove_dir_all(&d);
    }
}
