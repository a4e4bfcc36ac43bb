//! HotSpot performance data (`/tmp/hsperfdata_<user>/<nspid>`): the 32 KiB memory-mapped file every
//! HotSpot JVM publishes unless `-XX:-UsePerfData`. bpmon reads it for the JVM's version, whether
//! attach is enabled, and the safepoint counters that tell what our own sampling costs the JVM.
//!
//! The file is read, never locked: the JVM holds an `flock` on it, and taking one ourselves would
//! starve a new JVM that reuses the pid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::inroot;

#[derive(Debug, Error)]
pub enum PerfDataError {
    #[error("cannot read perf data {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not HotSpot perf data: {0}")]
    Format(&'static str),
}

/// A value in the perf data.
#[derive(Debug, Clone, PartialEq)]
pub enum PerfValue {
    Long(i64),
    Text(String),
}

/// The counters of one JVM, by name.
#[derive(Debug, Clone, Default)]
pub struct PerfData {
    entries: HashMap<String, PerfValue>,
}

const MAGIC: [u8; 4] = [0xca, 0xfe, 0xc0, 0xc0];
const PROLOGUE_LEN: usize = 32;
const ENTRY_HEADER_LEN: usize = 20;

impl PerfData {
    /// Reads and parses a perf-data file.
    /// A path under `/proc/PID/root/` is resolved inside that root ([`inroot::read_under_proc`]):
    /// a symlink in the JVM's `/tmp` cannot make the agent read a file of the host.
    pub fn read(path: &Path) -> Result<PerfData, PerfDataError> {
        let bytes = inroot::read_under_proc(path).map_err(|source| PerfDataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        PerfData::parse(&bytes)
    }

    /// Parses the binary format (`perfMemory.hpp`): a 32-byte prologue, then entries of
    /// `{length, name_offset, vector_length, type, flags, units, variability, data_offset}`.
    pub fn parse(bytes: &[u8]) -> Result<PerfData, PerfDataError> {
        let layout = Layout::of(bytes)?;
        let mut entries = HashMap::new();
        for e in layout.entries(bytes) {
            let value = match (e.ty, e.vec_len) {
                (b'J', 0) => layout.long_at(bytes, e.data_at).map(PerfValue::Long),
                (b'B', n) if n > 0 => bytes.get(e.data_at..(e.data_at + n).min(e.end)).map(|s| {
                    let s = s.split(|&b| b == 0).next().unwrap_or(&[]);
                    PerfValue::Text(String::from_utf8_lossy(s).into_owned())
                }),
                _ => None,
            };
            if let Some(value) = value {
                entries.insert(String::from_utf8_lossy(e.name).into_owned(), value);
            }
        }
        if entries.is_empty() {
            return Err(PerfDataError::Format("no entries"));
        }
        Ok(PerfData { entries })
    }

    pub fn long(&self, name: &str) -> Option<i64> {
        match self.entries.get(name) {
            Some(PerfValue::Long(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.entries.get(name) {
            Some(PerfValue::Text(v)) => Some(v),
            _ => None,
        }
    }

    /// `java.version` of the JVM, e.g. `17.0.15`.
    pub fn java_version(&self) -> Option<&str> {
        self.text("java.property.java.version")
    }

    /// Whether the JVM accepts dynamic attach (`sun.rt.jvmCapabilities`, first flag).
    pub fn attach_enabled(&self) -> Option<bool> {
        self.text("sun.rt.jvmCapabilities")
            .and_then(|c| c.chars().next())
            .map(|c| c == '1')
    }

    /// The safepoint counters, in a form that subtracts.
    pub fn safepoints(&self) -> Option<SafepointCounters> {
        let freq = self.long("sun.os.hrt.frequency").filter(|&f| f > 0)?;
        Some(SafepointCounters {
            count: self.long("sun.rt.safepoints")?,
            time_ticks: self.long("sun.rt.safepointTime")?,
            sync_ticks: self.long("sun.rt.safepointSyncTime").unwrap_or(0),
            ticks_per_second: freq,
        })
    }
}

/// Where the entries of a perf-data file are, and how its numbers are written.
#[derive(Debug, Clone, Copy)]
struct Layout {
    little: bool,
    first_entry: usize,
    entries: usize,
}

/// One entry's header, resolved to absolute offsets into the file.
struct Entry<'b> {
    name: &'b [u8],
    ty: u8,
    vec_len: usize,
    data_at: usize,
    /// End of the entry.
    end: usize,
}

impl Layout {
    fn of(bytes: &[u8]) -> Result<Layout, PerfDataError> {
        if bytes.len() < PROLOGUE_LEN {
            return Err(PerfDataError::Format("shorter than its prologue"));
        }
        if bytes[..4] != MAGIC {
            return Err(PerfDataError::Format("bad magic"));
        }
        let little = match bytes[4] {
            0 => false,
            1 => true,
            _ => return Err(PerfDataError::Format("bad byte order")),
        };
        let mut layout = Layout {
            little,
            first_entry: 0,
            entries: 0,
        };
        let entry_offset = layout
            .i32_at(bytes, 24)
            .ok_or(PerfDataError::Format("truncated prologue"))?;
        let num_entries = layout
            .i32_at(bytes, 28)
            .ok_or(PerfDataError::Format("truncated prologue"))?;
        layout.first_entry =
            usize::try_from(entry_offset).map_err(|_| PerfDataError::Format("bad entry offset"))?;
        layout.entries = usize::try_from(num_entries).unwrap_or(0);
        Ok(layout)
    }

    fn i32_at(&self, bytes: &[u8], at: usize) -> Option<i32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little {
            i32::from_le_bytes(b)
        } else {
            i32::from_be_bytes(b)
        })
    }

    fn long_at(&self, bytes: &[u8], at: usize) -> Option<i64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(self.long_of(b))
    }

    fn long_of(&self, b: [u8; 8]) -> i64 {
        if self.little {
            i64::from_le_bytes(b)
        } else {
            i64::from_be_bytes(b)
        }
    }

    /// The well-formed entries, in file order; a malformed one ends the walk.
    fn entries<'b>(&self, bytes: &'b [u8]) -> impl Iterator<Item = Entry<'b>> + 'b {
        let layout = *self;
        let mut at = self.first_entry;
        (0..self.entries).map_while(move |_| {
            if at + ENTRY_HEADER_LEN > bytes.len() {
                return None;
            }
            let len = usize::try_from(layout.i32_at(bytes, at)?).ok()?;
            let name_off = usize::try_from(layout.i32_at(bytes, at + 4)?).ok()?;
            let vec_len = usize::try_from(layout.i32_at(bytes, at + 8)?).ok()?;
            let data_off = usize::try_from(layout.i32_at(bytes, at + 16)?).ok()?;
            if len == 0 {
                return None;
            }
            let entry = bytes.get(at..at + len).unwrap_or(&[]);
            let name = entry.get(name_off..)?.split(|&b| b == 0).next()?;
            let e = Entry {
                name,
                ty: bytes[at + 12],
                vec_len,
                data_at: at + data_off,
                end: at + entry.len(),
            };
            at += len;
            Some(e)
        })
    }
}

/// A JVM's safepoint counters, read again and again at the cost of three `pread`s: the file is
/// opened once (inside the JVM's root) and the counters' offsets found once. HotSpot creates
/// its entries once, in place, and updates their values there, so the offsets hold for the
/// JVM's life.
#[derive(Debug)]
pub struct SafepointProbe {
    file: std::fs::File,
    little: bool,
    count_at: u64,
    time_at: u64,
    sync_at: Option<u64>,
    ticks_per_second: i64,
}

impl SafepointProbe {
    pub fn open(path: &Path) -> Result<SafepointProbe, PerfDataError> {
        let io = |source| PerfDataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = inroot::open_under_proc(path).map_err(io)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
        let layout = Layout::of(&bytes)?;
        let (mut count_at, mut time_at, mut sync_at, mut freq) = (None, None, None, None);
        for e in layout
            .entries(&bytes)
            .filter(|e| e.ty == b'J' && e.vec_len == 0)
        {
            let at = Some(e.data_at as u64);
            match e.name {
                b"sun.rt.safepoints" => count_at = at,
                b"sun.rt.safepointTime" => time_at = at,
                b"sun.rt.safepointSyncTime" => sync_at = at,
                b"sun.os.hrt.frequency" => freq = layout.long_at(&bytes, e.data_at),
                _ => {}
            }
        }
        let missing = PerfDataError::Format("no safepoint counters");
        Ok(SafepointProbe {
            file,
            little: layout.little,
            count_at: count_at.ok_or(PerfDataError::Format("no safepoint counters"))?,
            time_at: time_at.ok_or(missing)?,
            sync_at,
            ticks_per_second: freq
                .filter(|&f| f > 0)
                .ok_or(PerfDataError::Format("no timer frequency"))?,
        })
    }

    /// The counters now; `None` when the file cannot be read any more.
    pub fn read(&self) -> Option<SafepointCounters> {
        use std::os::unix::fs::FileExt;
        let long = |at: u64| -> Option<i64> {
            let mut b = [0u8; 8];
            self.file.read_exact_at(&mut b, at).ok()?;
            Some(if self.little {
                i64::from_le_bytes(b)
            } else {
                i64::from_be_bytes(b)
            })
        };
        Some(SafepointCounters {
            count: long(self.count_at)?,
            time_ticks: long(self.time_at)?,
            sync_ticks: self.sync_at.and_then(long).unwrap_or(0),
            ticks_per_second: self.ticks_per_second,
        })
    }
}

/// Chosen long counters of a JVM's perf data, re-read as [`SafepointProbe`] re-reads its own:
/// the file opened once, each counter's offset found once, then one `pread` per counter.
#[derive(Debug)]
pub struct PerfLongs {
    file: std::fs::File,
    layout: Layout,
    names: Vec<String>,
    offsets: Vec<u64>,
}

impl PerfLongs {
    /// Opens a perf-data file (inside the JVM's root, as [`PerfData::read`]) and keeps the
    /// offsets of the long counters whose names `wanted` accepts. The whole file as parsed then
    /// comes back too, for its texts and constants (collector names, the timer frequency).
    pub fn open(
        path: &Path,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(PerfLongs, PerfData), PerfDataError> {
        let io = |source| PerfDataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = inroot::open_under_proc(path).map_err(io)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
        let snapshot = PerfData::parse(&bytes)?;
        let layout = Layout::of(&bytes)?;
        let (mut names, mut offsets) = (Vec::new(), Vec::new());
        for e in layout.entries(&bytes) {
            let name = String::from_utf8_lossy(e.name);
            if e.ty == b'J' && e.vec_len == 0 && wanted(&name) {
                names.push(name.into_owned());
                offsets.push(e.data_at as u64);
            }
        }
        let longs = PerfLongs {
            file,
            layout,
            names,
            offsets,
        };
        Ok((longs, snapshot))
    }

    /// The counters kept, in the order [`PerfLongs::read`] gives their values.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every kept counter's value now; `None` when the file cannot be read any more.
    pub fn read(&self) -> Option<Vec<i64>> {
        use std::os::unix::fs::FileExt;
        self.offsets
            .iter()
            .map(|&at| {
                let mut b = [0u8; 8];
                self.file.read_exact_at(&mut b, at).ok()?;
                Some(self.layout.long_of(b))
            })
            .collect()
    }
}

/// A reading of the JVM's cumulative safepoint counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafepointCounters {
    pub count: i64,
    /// Time spent at safepoints (the pause), in ticks.
    pub time_ticks: i64,
    /// Time spent reaching safepoints, in ticks.
    pub sync_ticks: i64,
    pub ticks_per_second: i64,
}

impl SafepointCounters {
    /// Safepoints and pause milliseconds between `self` (before) and `after`.
    pub fn delta(&self, after: &SafepointCounters) -> (u64, f64) {
        let count = (after.count - self.count).max(0) as u64;
        let ticks = (after.time_ticks - self.time_ticks).max(0) as f64;
        (count, ticks * 1000.0 / self.ticks_per_second as f64)
    }
}

/// Where a JVM's perf data lives, seen from the host: `/proc/<pid>/root/tmp/hsperfdata_*/<nspid>`.
/// The directory is named after the user *inside* the JVM's mount namespace, so it is searched.
/// Everything is resolved inside the JVM's root: its `/tmp` and what is in it may be symlinks only
/// as far as they stay inside.
pub fn find_perf_file(proc_root: &Path, pid: u32, nspid: u32) -> Option<PathBuf> {
    let root = proc_root.join(pid.to_string()).join("root");
    let names = inroot::list_dir_in_root(&root, Path::new("tmp")).ok()?;
    for name in names {
        if name.to_string_lossy().starts_with("hsperfdata_") {
            let rel = Path::new("tmp").join(&name).join(nspid.to_string());
            if inroot::is_file_in_root(&root, &rel) {
                return Some(root.join(rel));
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a perf-data image the way HotSpot lays it out.
    pub(crate) fn image(longs: &[(&str, i64)], texts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut n: i32 = 0;
        let mut push = |name: &str, ty: u8, vec_len: i32, data: Vec<u8>| {
            let name_off = ENTRY_HEADER_LEN;
            let mut name_bytes = name.as_bytes().to_vec();
            name_bytes.push(0);
            let mut data_off = name_off + name_bytes.len();
            data_off = data_off.div_ceil(8) * 8;
            let len = (data_off + data.len()).div_ceil(8) * 8;
            let mut e = vec![0u8; len];
            e[0..4].copy_from_slice(&(len as i32).to_le_bytes());
            e[4..8].copy_from_slice(&(name_off as i32).to_le_bytes());
            e[8..12].copy_from_slice(&vec_len.to_le_bytes());
            e[12] = ty;
            e[16..20].copy_from_slice(&(data_off as i32).to_le_bytes());
            e[name_off..name_off + name_bytes.len()].copy_from_slice(&name_bytes);
            e[data_off..data_off + data.len()].copy_from_slice(&data);
            body.extend(e);
            n += 1;
        };
        for (k, v) in longs {
            push(k, b'J', 0, v.to_le_bytes().to_vec());
        }
        for (k, v) in texts {
            let mut d = v.as_bytes().to_vec();
            d.resize(v.len() + 16, 0);
            push(k, b'B', d.len() as i32, d);
        }
        let mut out = vec![0u8; PROLOGUE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = 1;
        out[5] = 2;
        out[24..28].copy_from_slice(&(PROLOGUE_LEN as i32).to_le_bytes());
        out[28..32].copy_from_slice(&n.to_le_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn parses_longs_and_strings() {
        let img = image(
            &[
                ("sun.rt.safepoints", 12),
                ("sun.rt.safepointTime", 3_000_000),
                ("sun.os.hrt.frequency", 1_000_000_000),
            ],
            &[
                ("java.property.java.version", "17.0.15"),
                ("sun.rt.jvmCapabilities", "1100000000"),
            ],
        );
        let pd = PerfData::parse(&img).unwrap();
        assert_eq!(pd.java_version(), Some("17.0.15"));
        assert_eq!(pd.attach_enabled(), Some(true));
        let sp = pd.safepoints().unwrap();
        assert_eq!(sp.count, 12);
        let later = SafepointCounters {
            count: 15,
            time_ticks: 4_500_000,
            ..sp
        };
        let (n, ms) = sp.delta(&later);
        assert_eq!(n, 3);
        assert!((ms - 1.5).abs() < 1e-9);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(PerfData::parse(b"").is_err());
        assert!(PerfData::parse(&[0u8; 64]).is_err());
        let mut img = image(&[("a", 1)], &[]);
        img.truncate(40);
        assert!(PerfData::parse(&img).is_err());
    }

    #[test]
    fn chosen_longs_are_read_again_in_place() {
        let img = image(
            &[("sun.gc.collector.0.time", 7), ("sun.rt.safepoints", 3)],
            &[("sun.gc.collector.0.name", "G1 young collection pauses")],
        );
        let path = std::env::temp_dir().join(format!("bpmon-perflongs-{}", std::process::id()));
        std::fs::write(&path, &img).unwrap();
        let (longs, snapshot) = PerfLongs::open(&path, |n| n.starts_with("sun.gc.")).unwrap();
        assert_eq!(longs.names(), ["sun.gc.collector.0.time"]);
        assert_eq!(
            snapshot.text("sun.gc.collector.0.name").map(str::len),
            Some(26)
        );
        assert_eq!(longs.read(), Some(vec![7]));
        // The JVM updates the value in place: the same offset gives the new one.
        let mut changed = img.clone();
        let at = longs.offsets[0] as usize;
        changed[at..at + 8].copy_from_slice(&42i64.to_le_bytes());
        std::fs::write(&path, &changed).unwrap();
        assert_eq!(longs.read(), Some(vec![42]));
        let _ = std::fs::remove_file(&path);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut img = image(&[("x", 1)], &[("y", "z")]);
            img.truncate(PROLOGUE_LEN);
            img.extend(tail);
            let _ = PerfData::parse(&img);
        }
    }
}
