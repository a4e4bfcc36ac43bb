//! The agent's on-disk spool: report batches the collector has not acknowledged yet, kept in
//! sequence order, so that a collector that is down loses nothing. It is bounded; when the bound
//! is hit the oldest batches go first and are counted, and the count is kept across restarts so
//! the agent can always say how many it dropped.
//!
//! One file per batch, `<seq, 20 digits>.batch`, written to a temporary name and renamed into
//! place (a crash never leaves half a batch under a real name).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Limits of the spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    pub max_batches: usize,
    pub max_bytes: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    dropped: u64,
}

const SUFFIX: &str = ".batch";
const DROPPED_FILE: &str = "dropped";
/// What an entry that could not be read is renamed to end with.
const UNREADABLE_SUFFIX: &str = ".unreadable";

/// fsync of a directory: makes the renames and creations in it durable.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

impl Spool {
    /// Opens (or creates, mode 0700) the spool in `dir`, and clears temporaries a crash left.
    pub fn open(dir: impl Into<PathBuf>, limits: SpoolLimits) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let dropped = fs::read_to_string(dir.join(DROPPED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Spool {
            dir,
            limits,
            dropped,
        })
    }

    /// Batches dropped because the spool was full, since it was first created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Stores a batch; if that exceeds the limits, drops the oldest batches (never this one).
    pub fn push(&mut self, seq: u64, body: &[u8]) -> Result<(), SpoolError> {
        let path = self.path_of(seq);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        // The rename is durable only once the directory is: a power loss must not lose a
        // batch the agent already counts as spooled.
        sync_dir(&self.dir)?;
        self.enforce_limits(seq)
    }

    /// The oldest stored batch.
    pub fn oldest(&self) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        for (seq, _) in self.entries()? {
            let path = self.path_of(seq);
            match fs::read(&path) {
                Ok(body) => return Ok(Some((seq, body))),
                // Gone between listing and reading (removed by the limits): the next one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // One entry that cannot be read must not hold up every batch behind it: it is
                // set aside under another name, said in the log, and kept for a person.
                Err(e) => {
                    let aside = self.dir.join(format!("{seq:020}{UNREADABLE_SUFFIX}"));
                    tracing::error!(path = %path.display(), error = %e, aside = %aside.display(),
                        "spooled batch cannot be read; set aside, delivering the next");
                    fs::rename(&path, &aside).map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(None)
    }

    /// Forgets a batch (the collector acknowledged it).
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        let path = self.path_of(seq);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(SpoolError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Stored batches: (sequence number, size), oldest first.
    pub fn entries(&self) -> Result<Vec<(u64, u64)>, SpoolError> {
        let read = fs::read_dir(&self.dir).map_err(|source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out: Vec<(u64, u64)> = read
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let seq = name.to_str()?.strip_suffix(SUFFIX)?.parse().ok()?;
                // A directory or other non-file under a batch's name is not a batch (oldest()
                // sets it aside); it counts with no bytes.
                let len = e
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map_or(0, |m| m.len());
                Some((seq, len))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    fn enforce_limits(&mut self, keep: u64) -> Result<(), SpoolError> {
        let mut entries = self.entries()?;
        let mut bytes: u64 = entries.iter().map(|e| e.1).sum();
        let mut dropped_now = 0;
        while entries.len() > self.limits.max_batches || bytes > self.limits.max_bytes {
            let Some(&(seq, size)) = entries.first() else {
                break;
            };
            if seq == keep {
                break;
            }
            self.remove(seq)?;
            entries.remove(0);
            bytes -= size;
            dropped_now += 1;
        }
        if dropped_now > 0 {
            self.dropped += dropped_now;
            // Written aside and renamed over: a crash leaves the old count or the new one,
            // never a torn file.
            let path = self.dir.join(DROPPED_FILE);
            let tmp = self.dir.join(format!("{DROPPED_FILE}.tmp"));
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| SpoolError::Io { path, source }
            };
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(self.dropped.to_string().as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&self.dir)?;
            tracing::warn!(
                dropped_now,
                dropped_total = self.dropped,
                "spool full: dropped the oldest report batches"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bpmon-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    const ROOMY: SpoolLimits = SpoolLimits {
        max_batches: 100,
        max_bytes: 1 << 20,
    };

    #[test]
    fn an_unreadable_entry_is_set_aside_and_the_next_delivered() {
        let d = dir("unreadable");
        let mut s = Spool::open(&d, ROOMY).unwrap();
        s.push(2, b"batch 2").unwrap();
        // A directory under the oldest batch's name: cannot be read as a batch.
        fs::create_dir_all(d.join(format!("{:020}{SUFFIX}", 1))).unwrap();
        assert_eq!(s.oldest().unwrap(), Some((2, b"batch 2".to_vec())));
        assert!(d.join(format!("{:020}{UNREADABLE_SUFFIX}", 1)).is_dir());
        assert_eq!(
            s.entries().unwrap().iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![2]
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn replays_in_sequence_order_and_survives_reopening() {
        let d = dir("order");
        let mut s = Spool::open(&d, ROOMY).unwrap();
        for seq in [3, 1, 2] {
            s.push(seq, format!("batch {seq}").as_bytes()).unwrap();
        }
        drop(s);
        let mut s = Spool::open(&d, ROOMY).unwrap();
        let mut seen = Vec::new();
        while let Some((seq, body)) = s.oldest().unwrap() {
            assert_eq!(body, format!("batch {seq}").as_bytes());
            seen.push(seq);
            s.remove(seq).unwrap();
        }
        assert_eq!(seen, vec![1, 2, 3]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them_for_good() {
        let d = dir("bound");
        let limits = SpoolLimits {
            max_batches: 3,
            max_bytes: 1 << 20,
        };
        let mut s = Spool::open(&d, limits).unwrap();
        for seq in 1..=5 {
            s.push(seq, b"x").unwrap();
        }
        assert_eq!(
            s.entries().unwrap().iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(s.dropped(), 2);
        drop(s);
        assert_eq!(Spool::open(&d, limits).unwrap().dropped(), 2);
        // A byte bound too: 10-byte batches under a 25-byte limit keep two.
        let mut s = Spool::open(
            &d,
            SpoolLimits {
                max_batches: 100,
                max_bytes: 25,
            },
        )
        .unwrap();
        for seq in 6..=8 {
            s.push(seq, &[0u8; 10]).unwrap();
        }
        assert_eq!(
            s.entries().unwrap().iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert_eq!(s.dropped(), 2 + 4);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn leftover_temporaries_are_cleared_and_never_replayed() {
        let d = dir("tmp");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("00000000000000000009.tmp"), b"half").unwrap();
        let s = Spool::open(&d, ROOMY).unwrap();
        assert!(s.oldest().unwrap().is_none());
        assert!(!d.join("00000000000000000009.tmp").exists());
        let _ = fs::remove_dir_all(&d);
    }
}
