//! A native client of HotSpot's dynamic attach mechanism (Linux), so the agent needs no JDK tools.
//!
//! The conversation: if the JVM's `/tmp/.java_pid<nspid>` socket is missing, create the trigger file
//! `.attach_pid<nspid>` in its working directory (or its `/tmp`) and send SIGQUIT; the JVM's signal
//! thread sees the trigger and starts the Attach Listener, which binds the socket. Each command is
//! one connection: a request, then a decimal status line and the output until EOF. JDK 24+ also
//! speaks protocol v2, which carries options; bpmon uses it to ask for `streaming=0`, because a
//! streamed thread dump writes to the socket while the whole JVM waits at the safepoint.
//!
//! Everything is reached through `/proc/<pid>/root` and `/proc/<pid>/cwd`, so JVMs in containers
//! need no `setns`. Inside, paths are resolved with `openat2` ([`crate::discovery::inroot`]): within the JVM's
//! root and through no symlink at all. The socket is opened as an `O_PATH` fd, checked with
//! `fstat` (a socket, owned by the JVM's user) and connected through `/proc/self/fd/N`, so what is
//! connected is exactly what was checked. The trigger file is created the same way, relative to
//! the directory fd it was checked in.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::discovery::inroot;
use crate::discovery::{JvmProcess, ProcFs};

pub mod credentials;
mod error;

pub use error::AttachError;

/// Timeouts of the attach conversation.
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// How long to wait for the listener to come up after SIGQUIT (the JDK's own client: 10 s).
    pub listener_timeout: Duration,
    /// How long one command may take, connect to EOF.
    pub io_timeout: Duration,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            listener_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// Which request format the JVM understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `1\0cmd\0arg\0arg\0arg\0`: every HotSpot since JDK 6.
    V1,
    /// `2\0size\0cmd opts\0args…`: JDK 24+; `streaming` tells whether the streaming option exists.
    V2 { streaming: bool },
}

/// A reply: the status line and the output.
#[derive(Debug)]
pub struct Reply {
    pub status: i32,
    pub body: Vec<u8>,
}

/// The attach client for one JVM. Requests are serialized (the listener is single-threaded anyway).
#[derive(Debug)]
pub struct Attacher {
    pid: u32,
    nspid: u32,
    uid: u32,
    gid: u32,
    proc: ProcFs,
    /// Start time of the process (`/proc/PID/stat` field 22): detects pid reuse.
    start_ticks: u64,
    /// Whether discovery found HotSpot perf data for it (OpenJ9 never publishes any).
    has_perf_data: bool,
    protocol: Option<Protocol>,
    options: AttachOptions,
}

/// Bytes a thread dump reply is expected to start from; grows as needed.
const INITIAL_REPLY_CAPACITY: usize = 256 * 1024;

impl Attacher {
    pub fn new(
        jvm: &JvmProcess,
        proc: ProcFs,
        options: AttachOptions,
    ) -> Result<Self, AttachError> {
        let pid = jvm.pid;
        let start_ticks = start_ticks(&proc, pid).ok_or(AttachError::Gone { pid })?;
        if let Some(vm) = &jvm.vm_name {
            if !vm.contains("HotSpot") && !vm.contains("OpenJDK") {
                return Err(AttachError::NotHotSpot {
                    pid,
                    vm: vm.clone(),
                });
            }
        }
        if jvm.attach_enabled == Some(false) {
            return Err(AttachError::AttachDisabled { pid });
        }
        let our_uid = nix::unistd::geteuid().as_raw();
        if our_uid != 0 && our_uid != jvm.uid {
            return Err(AttachError::PermissionDenied {
                pid,
                jvm_uid: jvm.uid,
                our_uid,
                detail: "a non-root agent can attach only to its own user's JVMs".into(),
            });
        }
        Ok(Attacher {
            pid,
            nspid: jvm.nspid,
            uid: jvm.uid,
            gid: jvm.gid,
            proc,
            start_ticks,
            has_perf_data: jvm.perf_file.is_some(),
            protocol: None,
            options,
        })
    }

    /// Convenience: find the JVM behind `pid` and build its client.
    pub fn for_pid(pid: u32, options: AttachOptions) -> Result<Self, AttachError> {
        let proc = ProcFs::default();
        if !proc.pid_dir(pid).exists() {
            return Err(AttachError::Gone { pid });
        }
        let jvm = proc.jvm(pid).ok_or(AttachError::NotAJvm { pid })?;
        Attacher::new(&jvm, proc, options)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The protocol in use, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// One thread dump (`jstack`'s text), without lock details (they walk the heap in the pause),
    /// and not streamed (a streamed dump holds the safepoint while it writes to us).
    pub fn thread_dump(&mut self) -> Result<Vec<u8>, AttachError> {
        let reply = match self.detect_protocol()? {
            Protocol::V2 { streaming: true } => self.request_v2("threaddump streaming=0", &[])?,
            Protocol::V2 { streaming: false } => self.request_v2("threaddump", &[])?,
            Protocol::V1 => self.request_v1("threaddump", &[])?,
        };
        self.expect_ok("threaddump", reply)
    }

    /// Runs a diagnostic command (what `jcmd <pid> <line>` sends), e.g. `VM.version`.
    pub fn jcmd(&mut self, line: &str) -> Result<Vec<u8>, AttachError> {
        let reply = self.request_v1("jcmd", &[line])?;
        self.expect_ok("jcmd", reply)
    }

    /// Loads a native agent library into the JVM (`load <path> true <options>`, which runs its
    /// `Agent_OnAttach`); `library` is the path as the JVM sees it. HotSpot answers
    /// `return code: N` with the agent's result (JDK 9+); JDK 21+ answers a failure to load with
    /// status 0 and a bare message, so anything but `return code: 0` is a failure.
    pub fn load_agent(&mut self, library: &str, options: &str) -> Result<(), AttachError> {
        let reply = self.request_v1("load", &[library, "true", options])?;
        let body = String::from_utf8_lossy(&reply.body).trim().to_string();
        let agent_rc = body
            .strip_prefix("return code:")
            .and_then(|rc| rc.trim().parse::<i32>().ok());
        match (reply.status, agent_rc) {
            (0, Some(0)) => Ok(()),
            (status, _) => Err(AttachError::Command {
                pid: self.pid,
                command: "load".into(),
                status,
                message: body,
            }),
        }
    }

    /// Connects to a UNIX socket the JVM made in its own `/tmp` under `name` (checked: a socket,
    /// owned by the JVM's uid, reached through no symlink), as the JVM's user; `Ok(None)` when
    /// there is no such socket.
    pub fn connect_tmp_socket(&mut self, name: &str) -> Result<Option<UnixStream>, AttachError> {
        self.check_same_process()?;
        let tmp = self.open_tmp()?;
        let Some(socket) = self.find_socket_named(&tmp, name)? else {
            return Ok(None);
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", socket.as_raw_fd()));
        let (uid, gid) = (self.uid, self.gid);
        let result = credentials::as_user(uid, gid, || UnixStream::connect(&via));
        drop(socket);
        match result {
            Ok(stream) => Ok(Some(stream)),
            // A socket file nobody listens on: its library stopped, or the JVM died.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                self.check_same_process()?;
                Ok(None)
            }
            Err(e) => Err(AttachError::Io {
                pid: self.pid,
                context: "connecting to a socket in the JVM's /tmp",
                source: e,
            }),
        }
    }

    /// Whether `path` (absolute, as this host sees it) names the very same file inside the
    /// JVM's mount namespace, resolved as the JVM would (symlinks within its root): then the JVM
    /// opens that file by that path. A container's own root, or a `/tmp` of its own, hides it.
    pub fn sees_same_file(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ours) = std::fs::metadata(path) else {
            return false;
        };
        let Ok(relative) = path.strip_prefix("/") else {
            return false;
        };
        let Ok(root) = inroot::open_dir_path(&self.proc.pid_dir(self.pid).join("root")) else {
            return false;
        };
        let Ok(fd) = inroot::openat2(root.as_fd(), relative, libc::O_PATH, 0, inroot::READ) else {
            return false;
        };
        inroot::fstat(fd.as_fd()).is_ok_and(|st| st.st_dev == ours.dev() && st.st_ino == ours.ino())
    }

    /// Writes `bytes` as `name` into the JVM's `/tmp`, as the JVM's user, mode 0644, unless a
    /// regular file of the JVM's user with the same size is there already; returns the path as
    /// the JVM sees it (`/tmp/<name>`). Never follows a symlink.
    pub fn install_in_tmp(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf, AttachError> {
        self.check_same_process()?;
        let tmp = self.open_tmp()?;
        let shown = self.jvm_tmp().join(name);
        let (uid, gid) = (self.uid, self.gid);
        let written = credentials::as_user(uid, gid, || {
            if let Ok(fd) = inroot::openat2(
                tmp.as_fd(),
                Path::new(name),
                libc::O_RDONLY | libc::O_NOFOLLOW,
                0,
                inroot::STRICT,
            ) {
                let st = inroot::fstat(fd.as_fd())?;
                if inroot::file_type(&st) == libc::S_IFREG
                    && st.st_uid == uid
                    && st.st_size as usize == bytes.len()
                {
                    return Ok(());
                }
                return Err(io::Error::other(format!(
                    "{} is there already: {} of uid {}, {} bytes",
                    name,
                    inroot::type_name(&st),
                    st.st_uid,
                    st.st_size
                )));
            }
            let fd = inroot::openat2(
                tmp.as_fd(),
                Path::new(name),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o644,
                inroot::STRICT,
            )?;
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()
        });
        written.map_err(|e| self.resolve_error(&shown, e))?;
        Ok(Path::new("/tmp").join(name))
    }

    /// Learns once whether the JVM speaks v2 (`getversion options`, which JDK ≤ 23 does not know).
    pub fn detect_protocol(&mut self) -> Result<Protocol, AttachError> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        let reply = self.request_v1("getversion", &["options"])?;
        let body = String::from_utf8_lossy(&reply.body);
        let mut words = body.split_whitespace();
        let protocol = match (reply.status, words.next()) {
            (0, Some(v)) if v.parse::<u32>().is_ok_and(|v| v >= 2) => Protocol::V2 {
                streaming: words.any(|w| w == "streaming"),
            },
            _ => Protocol::V1,
        };
        self.protocol = Some(protocol);
        Ok(protocol)
    }

    fn expect_ok(&self, command: &str, reply: Reply) -> Result<Vec<u8>, AttachError> {
        if reply.status == 0 {
            Ok(reply.body)
        } else {
            Err(AttachError::Command {
                pid: self.pid,
                command: command.into(),
                status: reply.status,
                message: String::from_utf8_lossy(&reply.body).trim().to_string(),
            })
        }
    }

    /// A v1 request: the command and exactly three arguments.
    pub fn request_v1(&mut self, command: &str, args: &[&str]) -> Result<Reply, AttachError> {
        let mut req = Vec::with_capacity(64);
        req.extend_from_slice(b"1\0");
        push_cstr(&mut req, command);
        for i in 0..3 {
            push_cstr(&mut req, args.get(i).copied().unwrap_or(""));
        }
        self.round_trip(command, &req)
    }

    /// A v2 request: `size` counts every byte after its own field.
    pub fn request_v2(&mut self, command: &str, args: &[&str]) -> Result<Reply, AttachError> {
        let mut body = Vec::with_capacity(64);
        push_cstr(&mut body, command);
        for a in args {
            push_cstr(&mut body, a);
        }
        let mut req = Vec::with_capacity(body.len() + 16);
        req.extend_from_slice(b"2\0");
        push_cstr(&mut req, &body.len().to_string());
        req.extend_from_slice(&body);
        self.round_trip(command, &req)
    }

    fn round_trip(&mut self, command: &str, request: &[u8]) -> Result<Reply, AttachError> {
        let mut stream = self.connect()?;
        let pid = self.pid;
        let io_err = |context: &'static str| {
            move |source: io::Error| AttachError::Io {
                pid,
                context,
                source,
            }
        };
        let timeout_err = || AttachError::Timeout {
            pid,
            command: command.to_string(),
            waited: self.options.io_timeout,
        };
        let deadline = Instant::now() + self.options.io_timeout;
        stream
            .set_write_timeout(Some(self.options.io_timeout))
            .map_err(io_err("setting the write timeout"))?;
        stream.write_all(request).map_err(|e| {
            if is_timeout(&e) {
                timeout_err()
            } else {
                io_err("sending the request")(e)
            }
        })?;
        // Drain as fast as the JVM writes: a slow reader lengthens a streamed dump's pause.
        let mut buf = Vec::with_capacity(INITIAL_REPLY_CAPACITY);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout_err());
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(io_err("setting the read timeout"))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(timeout_err()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(io_err("reading the reply")(e)),
            }
        }
        parse_reply(pid, &buf)
    }

    /// Connects to the listener, starting it first if needed. The socket is connected through the
    /// fd it was checked on.
    fn connect(&mut self) -> Result<UnixStream, AttachError> {
        self.check_same_process()?;
        let tmp = self.open_tmp()?;
        let socket = match self.find_socket(&tmp)? {
            Some(fd) => fd,
            None => self.start_listener(&tmp)?,
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", socket.as_raw_fd()));
        let (pid, uid, gid) = (self.pid, self.uid, self.gid);
        let shown = self.socket_path();
        let result = credentials::as_user(uid, gid, || UnixStream::connect(&via));
        // The checked fd had to stay open until the connection was made through it.
        drop(socket);
        result.map_err(|e| match e.raw_os_error() {
            Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => {
                if self.check_same_process().is_err() {
                    AttachError::Gone { pid }
                } else {
                    AttachError::Protocol {
                        pid,
                        detail: format!(
                            "{} refuses connections (a stale socket of a dead listener?)",
                            shown.display()
                        ),
                    }
                }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => AttachError::PermissionDenied {
                pid,
                jvm_uid: uid,
                our_uid: nix::unistd::geteuid().as_raw(),
                detail: format!("connecting {}: {e}", shown.display()),
            },
            _ => AttachError::Io {
                pid,
                context: "connecting to the attach socket",
                source: e,
            },
        })
    }

    /// `/proc/<pid>/root/tmp/.java_pid<nspid>`: the socket in the JVM's own mount namespace (as
    /// shown in messages; it is never opened by this path).
    fn socket_path(&self) -> PathBuf {
        self.jvm_tmp().join(self.socket_name())
    }

    fn socket_name(&self) -> String {
        format!(".java_pid{}", self.nspid)
    }

    fn jvm_tmp(&self) -> PathBuf {
        self.proc.pid_dir(self.pid).join("root/tmp")
    }

    /// An `openat2` failure, as an attach error about `shown`.
    fn resolve_error(&self, shown: &Path, e: io::Error) -> AttachError {
        if inroot::is_unsupported(&e) {
            return AttachError::Unsupported {
                pid: self.pid,
                detail: inroot::UNSUPPORTED.into(),
            };
        }
        match e.raw_os_error() {
            Some(libc::ELOOP) => AttachError::UntrustedSocket {
                path: self.socket_path(),
                reason: format!(
                    "{} is reached through a symlink; bpmon never follows symlinks in a JVM's root",
                    shown.display()
                ),
            },
            Some(libc::EACCES) | Some(libc::EPERM) => {
                self.permission_denied(format!("opening {}: {e}", shown.display()))
            }
            _ => AttachError::Io {
                pid: self.pid,
                context: "resolving a path in the JVM's root",
                source: e,
            },
        }
    }

    /// The JVM's `/tmp`, as an `O_PATH` fd: a real directory of its root, not a symlink.
    fn open_tmp(&self) -> Result<OwnedFd, AttachError> {
        let pid = self.pid;
        let root_path = self.proc.pid_dir(pid).join("root");
        let root = inroot::open_dir_path(&root_path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => AttachError::Gone { pid },
            Some(libc::EACCES) | Some(libc::EPERM) => {
                self.permission_denied(format!("opening {}: {e}", root_path.display()))
            }
            _ => AttachError::Io {
                pid,
                context: "opening the JVM's root",
                source: e,
            },
        })?;
        // The fd is this JVM's root only if the pid still is this JVM once it is open.
        self.check_same_process()?;
        let shown = self.jvm_tmp();
        let tmp = inroot::openat2(
            root.as_fd(),
            Path::new("tmp"),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            inroot::STRICT,
        )
        .map_err(|e| self.resolve_error(&shown, e))?;
        let st = inroot::fstat(tmp.as_fd()).map_err(|e| self.resolve_error(&shown, e))?;
        if inroot::file_type(&st) != libc::S_IFDIR {
            return Err(AttachError::UntrustedSocket {
                path: self.socket_path(),
                reason: format!(
                    "the JVM's /tmp is {}{}, not a directory",
                    inroot::type_name(&st),
                    link_suffix(&tmp, &st)
                ),
            });
        }
        Ok(tmp)
    }

    /// The attach socket in `tmp`, checked: `None` when there is none yet; an error when
    /// something else is in its place (a symlink, a file, a socket of another user).
    fn find_socket(&self, tmp: &OwnedFd) -> Result<Option<OwnedFd>, AttachError> {
        self.find_socket_named(tmp, &self.socket_name())
    }

    /// A socket named `name` in the JVM's `tmp`, checked as [`Self::find_socket`] does.
    fn find_socket_named(&self, tmp: &OwnedFd, name: &str) -> Result<Option<OwnedFd>, AttachError> {
        let shown = self.jvm_tmp().join(name);
        let fd = match inroot::openat2(
            tmp.as_fd(),
            Path::new(name),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            inroot::STRICT,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(self.resolve_error(&shown, e)),
        };
        let st = inroot::fstat(fd.as_fd()).map_err(|e| self.resolve_error(&shown, e))?;
        let untrusted = |reason: String| AttachError::UntrustedSocket {
            path: shown.clone(),
            reason,
        };
        if inroot::file_type(&st) != libc::S_IFSOCK {
            return Err(untrusted(format!(
                "it is {}{} owned by uid {}, not the JVM's socket; bpmon never follows symlinks \
                 in a JVM's root (remove it to let the JVM create its socket)",
                inroot::type_name(&st),
                link_suffix(&fd, &st),
                st.st_uid
            )));
        }
        if st.st_uid != self.uid {
            return Err(untrusted(format!(
                "owned by uid {}, but the JVM runs as uid {}",
                st.st_uid, self.uid
            )));
        }
        Ok(Some(fd))
    }

    /// Starts the attach listener (trigger file, SIGQUIT) and returns its checked socket.
    fn start_listener(&mut self, tmp: &OwnedFd) -> Result<OwnedFd, AttachError> {
        let pid = self.pid;
        // OpenJ9 attaches through files under /tmp/.com_ibm_tools_attach, and answers SIGQUIT
        // with a javacore file: say what it is instead of signalling it, whatever the state of
        // its signal handlers (first, so the answer does not depend on when we looked).
        if is_dir_at(tmp, ".com_ibm_tools_attach") && !self.has_perf_data {
            return Err(AttachError::NotHotSpot {
                pid,
                vm: "OpenJ9 (it publishes /tmp/.com_ibm_tools_attach)".into(),
            });
        }
        // Re-read now: a JVM that has not installed its handler yet would die of SIGQUIT.
        let status = self
            .proc
            .status(pid)
            .map_err(|_| AttachError::Gone { pid })?
            .ok_or(AttachError::Gone { pid })?;
        if !status.catches_sigquit() {
            return Err(AttachError::NoSignalHandler { pid });
        }
        let trigger = self.create_trigger(tmp)?;
        let result = self.signal_and_wait(tmp);
        let (uid, gid) = (self.uid, self.gid);
        let _ = credentials::as_user(uid, gid, || {
            inroot::unlink_at(trigger.dir.as_fd(), Path::new(&trigger.name))
        });
        result
    }

    /// Creates `.attach_pid<nspid>` as the JVM's user, in its working directory, else its `/tmp`:
    /// relative to the directory's fd, through no symlink, never truncating an existing file.
    fn create_trigger(&self, tmp: &OwnedFd) -> Result<Trigger, AttachError> {
        let name = format!(".attach_pid{}", self.nspid);
        let cwd_path = self.proc.pid_dir(self.pid).join("cwd");
        let mut last_err = None;
        // The cwd magic link leads to the JVM's exact working directory (following that link is
        // the point); /tmp was opened and checked already.
        let cwd = inroot::open_dir_path(&cwd_path);
        self.check_same_process()?;
        let tmp_copy = tmp.try_clone().map_err(|source| AttachError::Io {
            pid: self.pid,
            context: "duplicating the /tmp fd",
            source,
        })?;
        let candidates = [
            (cwd, cwd_path.join(&name)),
            (Ok(tmp_copy), self.jvm_tmp().join(&name)),
        ];
        for (dir, shown) in candidates {
            let dir = match dir {
                Ok(d) => d,
                Err(e) => {
                    last_err = Some((shown, e));
                    continue;
                }
            };
            let (uid, gid) = (self.uid, self.gid);
            let created = credentials::as_user(uid, gid, || {
                let fd = inroot::openat2(
                    dir.as_fd(),
                    Path::new(&name),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NOCTTY,
                    0o660,
                    inroot::STRICT,
                )?;
                // The JVM ignores a trigger owned by anyone but itself or root (some mounts remap).
                let st = inroot::fstat(fd.as_fd())?;
                if inroot::file_type(&st) != libc::S_IFREG || (st.st_uid != uid && st.st_uid != 0) {
                    return Err(io::Error::other(format!(
                        "it is {} owned by uid {}",
                        inroot::type_name(&st),
                        st.st_uid
                    )));
                }
                Ok(())
            });
            match created {
                Ok(()) => {
                    return Ok(Trigger {
                        dir,
                        name: name.clone(),
                    })
                }
                Err(e) if inroot::is_unsupported(&e) => {
                    return Err(AttachError::Unsupported {
                        pid: self.pid,
                        detail: inroot::UNSUPPORTED.into(),
                    })
                }
                Err(e) => last_err = Some((shown, e)),
            }
        }
        let (path, e) = last_err.expect("two candidates were tried");
        self.check_same_process()?;
        if e.kind() == io::ErrorKind::PermissionDenied {
            Err(self.permission_denied(format!("creating {}: {e}", path.display())))
        } else {
            Err(AttachError::Io {
                pid: self.pid,
                context: "creating the attach trigger file",
                source: e,
            })
        }
    }

    fn signal_and_wait(&self, tmp: &OwnedFd) -> Result<OwnedFd, AttachError> {
        let pid = self.pid;
        self.sigquit()?;
        let start = Instant::now();
        let timeout = self.options.listener_timeout;
        let mut resent = false;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(socket) = self.find_socket(tmp)? {
                return Ok(socket);
            }
            self.check_same_process()?;
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(AttachError::ListenerTimeout { pid, waited });
            }
            // Like the JDK's client, signal once more halfway: the first may have raced start-up.
            if !resent && waited >= timeout / 2 {
                self.sigquit()?;
                resent = true;
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn sigquit(&self) -> Result<(), AttachError> {
        self.check_same_process()?;
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(self.pid as i32), Signal::SIGQUIT).map_err(|e| match e {
            nix::errno::Errno::ESRCH => AttachError::Gone { pid: self.pid },
            nix::errno::Errno::EPERM => self.permission_denied(format!("sending SIGQUIT: {e}")),
            e => AttachError::Io {
                pid: self.pid,
                context: "sending SIGQUIT",
                source: e.into(),
            },
        })
    }

    fn check_same_process(&self) -> Result<(), AttachError> {
        match start_ticks(&self.proc, self.pid) {
            Some(t) if t == self.start_ticks => Ok(()),
            _ => Err(AttachError::Gone { pid: self.pid }),
        }
    }

    fn permission_denied(&self, detail: String) -> AttachError {
        AttachError::PermissionDenied {
            pid: self.pid,
            jvm_uid: self.uid,
            our_uid: nix::unistd::geteuid().as_raw(),
            detail,
        }
    }
}

/// A trigger file we created: its directory (held open) and name.
struct Trigger {
    dir: OwnedFd,
    name: String,
}

/// Whether `name` in `dir` is a directory (not reached through a symlink).
fn is_dir_at(dir: &OwnedFd, name: &str) -> bool {
    inroot::openat2(
        dir.as_fd(),
        Path::new(name),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        inroot::STRICT,
    )
    .and_then(|fd| inroot::fstat(fd.as_fd()))
    .is_ok_and(|st| inroot::file_type(&st) == libc::S_IFDIR)
}

/// ` to <target>` for a symlink's fd, else nothing.
fn link_suffix(fd: &OwnedFd, st: &libc::stat) -> String {
    if inroot::file_type(st) != libc::S_IFLNK {
        return String::new();
    }
    match inroot::link_target(fd.as_fd()) {
        Ok(t) => format!(" to {}", Path::new(&t).display()),
        Err(_) => String::new(),
    }
}

fn push_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// Whether a socket read or write ran out of its time limit (also the in-process backend's).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Splits `<status>\n<output>`.
pub fn parse_reply(pid: u32, buf: &[u8]) -> Result<Reply, AttachError> {
    if buf.is_empty() {
        return Err(AttachError::Protocol {
            pid,
            detail: "the JVM closed the connection without a reply (request not understood)".into(),
        });
    }
    let nl = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = std::str::from_utf8(&buf[..nl]).unwrap_or("").trim();
    let status = line.parse::<i32>().map_err(|_| AttachError::Protocol {
        pid,
        detail: format!(
            "reply does not start with a status code: {:?}",
            String::from_utf8_lossy(&buf[..nl.min(80)])
        ),
    })?;
    let body = buf.get(nl + 1..).unwrap_or(&[]).to_vec();
    Ok(Reply { status, body })
}

/// Process start time in clock ticks since boot (`/proc/PID/stat` field 22), or `None` when the
/// process is gone or a zombie (dead, not yet reaped: nothing there will ever answer).
fn start_ticks(proc: &ProcFs, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc.pid_dir(pid).join("stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from its closing ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_status_and_body() {
        let r = parse_reply(1, b"0\nFull thread dump\n").unwrap();
        assert_eq!(r.status, 0);
        assert_eq!(r.body, b"Full thread dump\n");
        let r = parse_reply(1, b"-1\nOperation getversion not recognized!").unwrap();
        assert_eq!(r.status, -1);
        let r = parse_reply(1, b"101\n").unwrap();
        assert_eq!(r.status, 101);
        assert!(r.body.is_empty());
    }

    #[test]
    fn reply_errors_are_protocol_errors() {
        assert!(matches!(
            parse_reply(1, b""),
            Err(AttachError::Protocol { .. })
        ));
        assert!(matches!(
            parse_reply(1, b"garbage\n"),
            Err(AttachError::Protocol { .. })
        ));
    }

    #[test]
    fn start_ticks_of_this_process() {
        let proc = ProcFs::default();
        let t = start_ticks(&proc, std::process::id());
        assert!(t.is_some());
        assert_eq!(t, start_ticks(&proc, std::process::id()));
    }

    fn attacher_for_this_process() -> Attacher {
        let proc = ProcFs::default();
        let pid = std::process::id();
        Attacher {
            pid,
            nspid: pid,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            start_ticks: start_ticks(&proc, pid).unwrap(),
            proc,
            has_perf_data: false,
            protocol: None,
            options: AttachOptions::default(),
        }
    }

    #[test]
    fn a_kernel_without_openat2_is_a_clear_permanent_error() {
        let a = attacher_for_this_process();
        let e = a.resolve_error(
            Path::new("/proc/1/root/tmp"),
            io::Error::from_raw_os_error(libc::ENOSYS),
        );
        assert!(matches!(e, AttachError::Unsupported { .. }), "{e}");
        assert!(e.is_permanent());
        assert_eq!(e.reason(), "unsupported");
        assert!(
            e.to_string().contains("openat2") && e.to_string().contains("jcmd"),
            "{e}"
        );
        let e = a.resolve_error(
            Path::new("/proc/1/root/tmp"),
            io::Error::from_raw_os_error(libc::ELOOP),
        );
        assert!(matches!(e, AttachError::UntrustedSocket { .. }), "{e}");
    }

    #[test]
    fn this_process_tmp_is_opened_and_checked() {
        // Our own root's /tmp is a real directory; no socket of ours is in it.
        let a = attacher_for_this_process();
        let tmp = a.open_tmp().unwrap();
        assert!(a.find_socket(&tmp).unwrap().is_none());
    }

    #[test]
    fn a_non_java_process_is_refused_without_a_signal() {
        let err = Attacher::for_pid(std::process::id(), AttachOptions::default()).unwrap_err();
        assert!(matches!(err, AttachError::NotAJvm { .. }), "{err}");
        let err = Attacher::for_pid(u32::MAX - 1, AttachOptions::default()).unwrap_err();
        assert!(matches!(err, AttachError::Gone { .. }), "{err}");
    }
}
