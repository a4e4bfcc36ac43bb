//! Paths inside a JVM's root (`/proc/PID/root`), resolved by the kernel so that nothing there can
//! lead the agent elsewhere.
//!
//! A container's `/tmp/x -> /etc/shadow`, read through `/proc/PID/root/tmp/x` by a plain `open`,
//! is the *host's* `/etc/shadow`: symlinks met under `/proc/PID/root` resolve against the reader's
//! root. `openat2(2)` with `RESOLVE_IN_ROOT` resolves them against the directory fd instead, and
//! `RESOLVE_NO_MAGICLINKS` refuses `/proc/*/fd`-style jumps. Where the agent acts (the attach
//! socket, the trigger file) it also refuses every symlink (`RESOLVE_NO_SYMLINKS`), and it works
//! on the file descriptors it checked, never on the path again, so no path race is possible.
//!
//! `openat2` needs Linux 5.6+. On an older kernel (or under a seccomp filter that hides it) the
//! agent refuses with [`is_unsupported`] errors rather than fall back to an unsafe `open`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Resolution for paths the agent acts on: inside the root, no symlinks of any kind.
pub const STRICT: u64 =
    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

/// Resolution for files the agent only reads: symlinks are followed as the JVM would follow them,
/// inside its root, never out of it.
pub const READ: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// `openat2(dir, path, flags, mode, resolve)`; `O_CLOEXEC` is always added. Retries the
/// `EAGAIN` a concurrent rename or mount may cause.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c_path = cstring(path)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    for _ in 0..8 {
        // SAFETY: a valid NUL-terminated path, a valid open_how of the size passed; the result is
        // a new fd we own, or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just gave us this descriptor.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Opens a directory (or a `/proc` magic link to one, such as `/proc/PID/root` or `/proc/PID/cwd`:
/// following that one link is the point) as an `O_PATH` fd.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c_path = cstring(path)?;
    // SAFETY: a valid NUL-terminated path; the result is a new fd we own, or -1.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of an open fd (an `O_PATH` one too).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a stat buffer of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The file type bits of a stat.
pub fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// What a file type is called in messages.
pub fn type_name(st: &libc::stat) -> &'static str {
    match file_type(st) {
        libc::S_IFLNK => "a symlink",
        libc::S_IFSOCK => "a socket",
        libc::S_IFDIR => "a directory",
        libc::S_IFREG => "a regular file",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        _ => "a file of unknown type",
    }
}

/// Where an `O_PATH` fd of a symlink points (`readlinkat(fd, "")`).
pub fn link_target(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a valid fd, an empty NUL-terminated path and a buffer of the length passed.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// `unlinkat(dir, name, 0)`: removes one name from a directory held open.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    let c_name = cstring(name)?;
    // SAFETY: a valid fd and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c_name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an error says the kernel has no `openat2` (Linux < 5.6, or hidden by seccomp).
pub fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSYS)
}

/// What to say when `openat2` is missing.
pub const UNSUPPORTED: &str = "this kernel does not provide openat2 (Linux 5.6 or later, not \
     blocked by a seccomp filter, is needed): bpmon-agent resolves paths inside a JVM's root only \
     with openat2, so that no symlink there can lead it elsewhere; use the jcmd backend instead";

/// Opens a file for reading inside a root (`READ` resolution), e.g. a JVM's perf data.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<std::fs::File> {
    let dir = open_dir_path(root)?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let fd = openat2(dir.as_fd(), rel, libc::O_RDONLY | libc::O_NOCTTY, 0, READ)?;
    Ok(std::fs::File::from(fd))
}

/// Reads a whole file inside a root (`READ` resolution).
pub fn read_in_root(root: &Path, path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    io::Read::read_to_end(&mut open_in_root(root, path)?, &mut out)?;
    Ok(out)
}

/// Opens a file for reading; one under `/proc/<pid>/root/` (any proc mount) is opened inside
/// that root.
pub fn open_under_proc(path: &Path) -> io::Result<std::fs::File> {
    match split_proc_root(path) {
        Some((root, rel)) => open_in_root(&root, &rel),
        None => std::fs::File::open(path),
    }
}

/// Reads a file; one under `/proc/<pid>/root/` (any proc mount) is read inside that root.
pub fn read_under_proc(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    io::Read::read_to_end(&mut open_under_proc(path)?, &mut out)?;
    Ok(out)
}

/// `(…/<pid>/root, rest)` for a path with a `<digits>/root` pair of components.
pub fn split_proc_root(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let parts: Vec<_> = path.components().collect();
    let at = parts.windows(2).position(|w| {
        w[1].as_os_str() == "root"
            && w[0]
                .as_os_str()
                .to_str()
                .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
    })?;
    let root: PathBuf = parts[..at + 2].iter().collect();
    let rest: PathBuf = parts[at + 2..].iter().collect();
    Some((root, rest))
}

/// The names in a directory inside a root (`READ` resolution).
pub fn list_dir_in_root(root: &Path, dir: &Path) -> io::Result<Vec<OsString>> {
    let r = open_dir_path(root)?;
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    let fd = openat2(r.as_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0, READ)?;
    // The fd's own /proc link names exactly the directory that was resolved.
    let names = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    Ok(names)
}

/// Whether `path` inside `root` is a regular file (`READ` resolution).
pub fn is_file_in_root(root: &Path, path: &Path) -> bool {
    let Ok(r) = open_dir_path(root) else {
        return false;
    };
    let rel = path.strip_prefix("/").unwrap_or(path);
    openat2(r.as_fd(), rel, libc::O_PATH, 0, READ)
        .and_then(|fd| fstat(fd.as_fd()))
        .is_ok_and(|st| file_type(&st) == libc::S_IFREG)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::*;

    /// A fake root: `r/tmp/real` (a file), `r/tmp/abs -> /etc/hostname` (absolute, out of the
    /// root if followed naively), `r/tmp/rel -> real`, `r/tmp/up -> ../../../../etc/hostname`,
    /// and `r/link -> tmp` (a symlinked directory).
    fn fake_root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("bpmon-inroot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(r.join("tmp")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("tmp/real"), b"inside").unwrap();
        std::fs::write(r.join("etc/hostname"), b"the root's own").unwrap();
        symlink("/etc/hostname", r.join("tmp/abs")).unwrap();
        symlink("real", r.join("tmp/rel")).unwrap();
        symlink("../../../../etc/hostname", r.join("tmp/up")).unwrap();
        symlink("tmp", r.join("link")).unwrap();
        r
    }

    #[test]
    fn reads_never_leave_the_root() {
        let r = fake_root("read");
        let read = |p: &str| read_in_root(&r, Path::new(p)).map(String::from_utf8);
        assert_eq!(read("/tmp/real").unwrap().unwrap(), "inside");
        assert_eq!(read("tmp/rel").unwrap().unwrap(), "inside");
        // Absolute and `..` links resolve against the fake root, not the host's.
        assert_eq!(read("/tmp/abs").unwrap().unwrap(), "the root's own");
        assert_eq!(read("/tmp/up").unwrap().unwrap(), "the root's own");
        assert_eq!(read("/link/real").unwrap().unwrap(), "inside");
        // Magic links are refused.
        let e = read_in_root(&r, Path::new("/proc/self/root/etc/hostname"));
        assert!(e.is_err());
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn strict_resolution_refuses_every_symlink_and_names_it() {
        let r = fake_root("strict");
        let root = open_dir_path(&r).unwrap();
        let open = |p: &str, flags| openat2(root.as_fd(), Path::new(p), flags, 0, STRICT);
        assert!(open("tmp/real", libc::O_PATH).is_ok());
        // A symlinked directory on the way: ELOOP.
        let e = open("link/real", libc::O_PATH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        // A symlink as the last component, followed: ELOOP; not followed: the link itself.
        let e = open("tmp/abs", libc::O_PATH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let fd = open("tmp/abs", libc::O_PATH | libc::O_NOFOLLOW).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        assert_eq!(type_name(&st), "a symlink");
        assert_eq!(link_target(fd.as_fd()).unwrap(), "/etc/hostname");
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn unlink_at_removes_the_name_only() {
        let r = fake_root("unlink");
        let tmp = open_dir_path(&r.join("tmp")).unwrap();
        unlink_at(tmp.as_fd(), Path::new("abs")).unwrap();
        assert!(!r.join("tmp/abs").exists() && r.join("etc/hostname").exists());
        assert!(std::fs::symlink_metadata(r.join("tmp/abs")).is_err());
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn proc_root_paths_are_split_and_listed_inside() {
        assert_eq!(
            split_proc_root(Path::new("/proc/42/root/tmp/hsperfdata_x/1")),
            Some((
                PathBuf::from("/proc/42/root"),
                PathBuf::from("tmp/hsperfdata_x/1")
            ))
        );
        assert_eq!(split_proc_root(Path::new("/tmp/root/x")), None);
        let r = fake_root("list");
        let mut names = list_dir_in_root(&r, Path::new("/link")).unwrap();
        names.sort();
        assert_eq!(names, ["abs", "real", "rel", "up"]);
        assert!(is_file_in_root(&r, Path::new("/tmp/real")));
        assert!(
            is_file_in_root(&r, Path::new("/tmp/abs")),
            "the root's own /etc/hostname"
        );
        assert!(!is_file_in_root(&r, Path::new("/tmp")));
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn enosys_is_recognised() {
        assert!(is_unsupported(&io::Error::from_raw_os_error(libc::ENOSYS)));
        assert!(!is_unsupported(&io::Error::from_raw_os_error(libc::ELOOP)));
    }
}
