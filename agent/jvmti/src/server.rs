//! The UNIX socket the agent talks to and the protocol of `bpmon_proto::inprocess` over it: one
//! connection at a time, newline-delimited JSON, one response per request.
//!
//! * [`Listener::bind`] runs on the thread that loads the library, so that a path that cannot be
//!   bound fails the load (non-zero return code) rather than a background thread. A stale
//!   socket file is replaced; any other file, or a socket someone still listens on, is not.
//!   The file is made mode 0600 right after `bind`. What actually keeps strangers out is the
//!   peer check on every connection: `SO_PEERCRED` must say uid 0 or the JVM's own euid.
//! * [`serve`] polls the listener and reads with short timeouts so that a stop asked from
//!   outside (a `load` with another socket, `Agent_OnUnload`) is seen within
//!   [`POLL_INTERVAL`] even while a client sits idle on the connection.
//! * The sampling itself is behind [`Backend`], so this module knows nothing of the JVM (and its
//!   unit tests run without one).

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bpmon_proto::inprocess::{
    Hello, InProcessSample, Introduced, Request, Response, RunReply, SampleRequest, SampleRun,
    INPROCESS_PROTOCOL_VERSION, MAX_LINE_BYTES,
};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// How often a waiting sampler looks at its stop flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// A client that stops reading our answers is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is listening on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// The bound socket, and the identity of its file so that only our own file is ever unlinked.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Listener {
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let io_err = |what: &'static str| {
            move |source: io::Error| BindError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                // A live listener answers; only a dead socket file is ours to replace.
                if is_listened_on(path) {
                    return Err(BindError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing the stale socket")(e)),
                }
            }
            Ok(_) => {
                return Err(BindError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat")(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
        let bound = Listener {
            dev_ino: (0, 0),
            path: path.to_path_buf(),
            listener,
        };
        // From here on, a failure unlinks the file again (via `unlink_if_ours`).
        let finish = |mut bound: Listener| -> Result<Listener, BindError> {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(io_err("chmod 0600"))?;
            let meta = fs::symlink_metadata(path).map_err(io_err("stat"))?;
            bound.dev_ino = (meta.dev(), meta.ino());
            bound
                .listener
                .set_nonblocking(true)
                .map_err(io_err("set non-blocking"))?;
            Ok(bound)
        };
        let path_for_cleanup = path.to_path_buf();
        finish(bound).inspect_err(|_| {
            let _ = fs::remove_file(&path_for_cleanup);
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (st_dev, st_ino) of the socket file as bound.
    pub fn dev_ino(&self) -> (u64, u64) {
        self.dev_ino
    }

    /// Removes the socket file if it is still the one this listener created.
    pub fn unlink_if_ours(&self) {
        unlink_if(&self.path, self.dev_ino);
    }
}

/// Whether some process accepts connections on the socket at `path`. The probe never blocks
/// (a listener with a full backlog counts as listening): a load must not hang on it.
fn is_listened_on(path: &Path) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => true,
        Err(Errno::EAGAIN | Errno::EINPROGRESS) => true,
        // ECONNREFUSED: nobody listens, the file is stale.
        Err(_) => false,
    }
}

/// Removes `path` if it is still the file identified by `dev_ino` (another sampler may have
/// bound the same path since).
pub fn unlink_if(path: &Path, dev_ino: (u64, u64)) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if (m.dev(), m.ino()) == dev_ino {
            let _ = fs::remove_file(path);
        }
    }
}

/// What the server asks of the sampler.
pub trait Backend {
    fn hello(&mut self) -> Hello;
    /// One sample of every task thread (`stacks`: false reads Flink's timers instead where it
    /// can); `Err` only when no sample could be taken at all.
    /// `known`: the threads this connection was introduced to (see [`SampleRequest::states`]).
    fn sample(
        &mut self,
        request: SampleRequest,
        known: &Introduced,
    ) -> Result<InProcessSample, String>;
    /// A client asked to stop: called after the socket file is gone and before `stopping` is
    /// answered, so that by the time the client reads the answer a new `load` starts afresh.
    fn stopping(&mut self);
}

/// Why [`serve`] returned.
#[derive(Debug)]
pub enum Exit {
    /// A client sent `stop`.
    StopRequested,
    /// The stop flag was raised from outside.
    Stopped,
    /// The listener failed for good.
    Failed(io::Error),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::StopRequested => f.write_str("stop requested"),
            Exit::Stopped => f.write_str("stopped by the JVM or a new load"),
            Exit::Failed(e) => write!(f, "listener failed: {e}"),
        }
    }
}

/// Accepts and serves connections, one at a time, until a `stop` request or the stop flag.
/// The socket file is unlinked before this returns.
pub fn serve(listener: &Listener, backend: &mut dyn Backend, stop: &AtomicBool) -> Exit {
    let exit = accept_loop(listener, backend, stop);
    listener.unlink_if_ours();
    exit
}

fn accept_loop(listener: &Listener, backend: &mut dyn Backend, stop: &AtomicBool) -> Exit {
    let allowed_uid = nix::unistd::geteuid().as_raw();
    let mut consecutive_errors = 0u32;
    loop {
        if stop.load(Ordering::Acquire) {
            return Exit::Stopped;
        }
        let mut fds = [PollFd::new(listener.listener.as_fd(), PollFlags::POLLIN)];
        let timeout = POLL_INTERVAL.as_millis() as u16;
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Exit::Failed(e.into()),
        }
        match listener.listener.accept() {
            Ok((stream, _)) => {
                consecutive_errors = 0;
                match serve_connection(listener, stream, backend, stop, allowed_uid) {
                    Connection::Closed => {}
                    Connection::StopRequested => return Exit::StopRequested,
                    Connection::Stopped => return Exit::Stopped,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // EMFILE and friends: the JVM may recover; wait instead of spinning.
                consecutive_errors += 1;
                if consecutive_errors > 50 {
                    return Exit::Failed(e);
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

enum Connection {
    Closed,
    StopRequested,
    Stopped,
}

/// Serves one client until it leaves, asks to stop, or the stop flag is raised.
fn serve_connection(
    listener: &Listener,
    mut stream: UnixStream,
    backend: &mut dyn Backend,
    stop: &AtomicBool,
    allowed_uid: u32,
) -> Connection {
    if !set_timeouts(&stream) || !peer_allowed(&mut stream, allowed_uid) {
        return Connection::Closed;
    }
    let mut lines = LineReader::new(MAX_LINE_BYTES);
    let mut session = Session {
        listener,
        backend,
        stop,
        greeted: false,
        introduced: Introduced::default(),
    };
    loop {
        let request = match next_request(&mut lines, &mut stream, stop) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(end) => return end,
        };
        let (response, after) = session.answer(request);
        let sent = send(&mut stream, &response);
        match after {
            Some(after) => return after,
            None if sent.is_err() => return Connection::Closed,
            None => {}
        }
    }
}

/// Blocking reads with [`POLL_INTERVAL`] timeouts (so the stop flag is seen) and writes with
/// [`WRITE_TIMEOUT`]. `false`: the connection is to be closed.
fn set_timeouts(stream: &UnixStream) -> bool {
    // accept() does not pass O_NONBLOCK on, but be explicit: reads rely on timeouts.
    stream.set_nonblocking(false).is_ok()
        && stream.set_read_timeout(Some(POLL_INTERVAL)).is_ok()
        && stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok()
}

/// The peer check that keeps strangers out: only root and the JVM's own user (`allowed_uid`).
/// Anyone else is told why before the connection is closed (`false`).
fn peer_allowed(stream: &mut UnixStream, allowed_uid: u32) -> bool {
    let message = match getsockopt(&*stream, PeerCredentials) {
        Ok(cred) if cred.uid() == 0 || cred.uid() == allowed_uid => return true,
        Ok(cred) => format!(
            "uid {} may not use this socket (only root and the JVM's user, uid {allowed_uid}); closing",
            cred.uid()
        ),
        Err(e) => format!("cannot read the peer's credentials: {e}; closing"),
    };
    let _ = send(stream, &Response::Error { message });
    false
}

/// Reads the next request. `Ok(None)`: a line that is not a request, already answered with an
/// error; `Err`: how the connection ends (an over-long line is answered first).
fn next_request(
    lines: &mut LineReader,
    stream: &mut UnixStream,
    stop: &AtomicBool,
) -> Result<Option<Request>, Connection> {
    let line = match lines.next_line(stream, stop) {
        Next::Line(line) => line,
        Next::Eof | Next::Failed => return Err(Connection::Closed),
        Next::Stopped => return Err(Connection::Stopped),
        Next::TooLong => {
            let message =
                format!("request longer than {MAX_LINE_BYTES} bytes; closing the connection");
            let _ = send(stream, &Response::Error { message });
            return Err(Connection::Closed);
        }
    };
    match serde_json::from_slice(&line) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            let message = format!("not a request: {e}");
            match send(stream, &Response::Error { message }) {
                Ok(()) => Ok(None),
                Err(_) => Err(Connection::Closed),
            }
        }
    }
}

/// What one connection remembers between requests.
struct Session<'a> {
    listener: &'a Listener,
    backend: &'a mut dyn Backend,
    /// Watched while a run sleeps between its samples.
    stop: &'a AtomicBool,
    /// Whether the client said a supported `hello`: nothing else is answered before.
    greeted: bool,
    /// Names and tasks cross once per connection.
    introduced: Introduced,
}

impl Session<'_> {
    /// The response to one request, and how the connection ends after it is sent (`None`: it
    /// goes on, unless sending fails).
    fn answer(&mut self, request: Request) -> (Response, Option<Connection>) {
        match request {
            Request::Hello { protocol } if protocol != INPROCESS_PROTOCOL_VERSION => (
                Response::Error {
                    message: format!(
                        "protocol {protocol} is not supported (this library speaks protocol \
                         {INPROCESS_PROTOCOL_VERSION}); closing the connection"
                    ),
                },
                Some(Connection::Closed),
            ),
            Request::Hello { .. } => {
                self.greeted = true;
                (Response::Hello(self.backend.hello()), None)
            }
            _ if !self.greeted => (
                Response::Error {
                    message: "say hello first".to_string(),
                },
                None,
            ),
            Request::Sample(request) => match self.backend.sample(request, &self.introduced) {
                Ok(mut sample) => {
                    self.introduced.compact(&mut sample);
                    (Response::Sample(sample), None)
                }
                Err(message) => (Response::Error { message }, None),
            },
            Request::Run(run) => match run.check() {
                Ok(()) => self.run(&run),
                Err(message) => (
                    Response::Error {
                        message: format!("not taken: {message}"),
                    },
                    None,
                ),
            },
            Request::Stop => {
                self.listener.unlink_if_ours();
                self.backend.stopping();
                (Response::Stopping, Some(Connection::StopRequested))
            }
        }
    }
}

impl Session<'_> {
    /// Takes a run's samples on its timetable (sleeping in between, the stop flag watched) and
    /// answers them together. A sample that cannot be taken ends the run: what was taken is
    /// answered, with the reason.
    fn run(&mut self, run: &SampleRun) -> (Response, Option<Connection>) {
        let start = std::time::Instant::now();
        let mut reply = RunReply {
            samples: Vec::with_capacity(run.at_us.len()),
            error: None,
        };
        for (i, at_us) in run.at_us.iter().enumerate() {
            let due = start + Duration::from_micros(*at_us);
            loop {
                if self.stop.load(Ordering::Acquire) {
                    return (
                        Response::Error {
                            message: "the sampler is stopping".into(),
                        },
                        Some(Connection::Stopped),
                    );
                }
                let now = std::time::Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(POLL_INTERVAL));
            }
            match self.backend.sample(run.request(i), &self.introduced) {
                Ok(mut sample) => {
                    self.introduced.compact(&mut sample);
                    reply.samples.push(sample);
                }
                Err(message) => {
                    reply.error = Some(message);
                    break;
                }
            }
        }
        (Response::Run(reply), None)
    }
}

/// Writes one response line.
fn send(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// What reading the next line gave.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Line(Vec<u8>),
    Eof,
    TooLong,
    Stopped,
    Failed,
}

/// Splits a stream into lines of at most `max` bytes (without the newline), reading in chunks
/// and never holding more than one over-long line's worth of bytes.
struct LineReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
}

impl LineReader {
    fn new(max: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            scanned: 0,
            max,
        }
    }

    fn next_line(&mut self, stream: &mut impl io::Read, stop: &AtomicBool) -> Next {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop(); // the newline
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                if line.len() > self.max {
                    return Next::TooLong;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Next::Line(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Next::TooLong;
            }
            if stop.load(Ordering::Acquire) {
                return Next::Stopped;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Next::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Next::Failed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;

    struct Fake {
        samples: u32,
        stopped: bool,
    }

    impl Backend for Fake {
        fn hello(&mut self) -> Hello {
            Hello {
                protocol: INPROCESS_PROTOCOL_VERSION,
                library_version: "test".into(),
                pid: 1,
                vm_version: "vm".into(),
                jvmti_version: "17.0.0".into(),
                started_at_ms: 2,
                starts: 1,
                runs: true,
            }
        }
        fn sample(
            &mut self,
            request: SampleRequest,
            _known: &Introduced,
        ) -> Result<InProcessSample, String> {
            let max_depth = request.max_depth;
            self.samples += 1;
            if max_depth == 999 {
                return Err("no".into());
            }
            Ok(InProcessSample {
                took_us: u64::from(max_depth),
                // What a run asked of each sample, and when it was taken.
                taken_at_ms: bpmon_proto::time::now_ms(),
                cpu_us: (request.states && !request.stacks).then_some(u64::from(request.totals)),
                ..Default::default()
            })
        }
        fn stopping(&mut self) {
            self.stopped = true;
        }
    }

    /// Serves `listener` with a fresh [`Fake`] on a thread of its own until a stop; gives back
    /// how it ended and the fake, for what it was asked.
    fn serve_fake(
        listener: Listener,
        stop: &Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(Exit, Fake)> {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut fake = Fake {
                samples: 0,
                stopped: false,
            };
            let exit = serve(&listener, &mut fake, &stop);
            (exit, fake)
        })
    }

    /// A directory of the test's own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("bpmon-jvmti-unit-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    struct Client {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl Client {
        fn connect(path: &Path) -> Client {
            let s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Client {
                reader: BufReader::new(s.try_clone().unwrap()),
                writer: s,
            }
        }
        fn ask(&mut self, line: &str) -> Option<Response> {
            // A write may fail once the server has closed on an over-long line; its answer is
            // still there to read.
            let _ = self.writer.write_all(line.as_bytes());
            let _ = self.writer.write_all(b"\n");
            self.read()
        }
        fn read(&mut self) -> Option<Response> {
            let mut answer = String::new();
            match self.reader.read_line(&mut answer) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(serde_json::from_str(&answer).unwrap()),
            }
        }
    }

    fn error_text(r: Option<Response>) -> String {
        match r {
            Some(Response::Error { message }) => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn the_protocol_over_a_real_socket() {
        let dir = TempDir::new("proto");
        let path = dir.join("proto.sock");
        let listener = Listener::bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve_fake(listener, &stop);

        // Hello first; garbage keeps the connection; a sample answers.
        let mut c = Client::connect(&path);
        assert_eq!(
            error_text(c.ask(r#"{"op":"sample","max_depth":8}"#)),
            "say hello first"
        );
        assert!(error_text(c.ask("{not json")).starts_with("not a request"));
        assert!(matches!(
            c.ask(r#"{"op":"hello","protocol":1}"#),
            Some(Response::Hello(h)) if h.jvmti_version == "17.0.0"
        ));
        assert!(matches!(
            c.ask(r#"{"op":"sample","max_depth":8}"#),
            Some(Response::Sample(s)) if s.took_us == 8
        ));
        assert_eq!(
            error_text(c.ask(r#"{"op":"sample","max_depth":999}"#)),
            "no"
        );
        // Blank lines are skipped; CRLF is accepted.
        assert!(matches!(
            c.ask("\r\n\n{\"op\":\"sample\",\"max_depth\":3}\r"),
            Some(Response::Sample(s)) if s.took_us == 3
        ));
        drop(c);

        // Another protocol version: refused, connection closed.
        let mut c = Client::connect(&path);
        let message = error_text(c.ask(r#"{"op":"hello","protocol":2}"#));
        assert!(message.contains("protocol 2 is not supported"), "{message}");
        assert!(c.read().is_none(), "the connection is closed");

        // An over-long line: refused, connection closed, server still up.
        let mut c = Client::connect(&path);
        let long = format!(
            r#"{{"op":"hello","protocol":1,"pad":"{}"}}"#,
            "x".repeat(MAX_LINE_BYTES)
        );
        let message = error_text(c.ask(&long));
        assert!(message.starts_with("request longer than"), "{message}");
        assert!(c.read().is_none());

        // Stop: answered, the file is gone before the answer, the server returns.
        let mut c = Client::connect(&path);
        assert!(matches!(
            c.ask(r#"{"op":"hello","protocol":1}"#),
            Some(Response::Hello(_))
        ));
        assert_eq!(c.ask(r#"{"op":"stop"}"#), Some(Response::Stopping));
        assert!(!path.exists());
        let (exit, fake) = server.join().unwrap();
        assert!(matches!(exit, Exit::StopRequested), "{exit}");
        assert_eq!(fake.samples, 3);
        assert!(fake.stopped);
    }

    #[test]
    fn a_run_is_taken_on_its_timetable_and_answered_at_once() {
        let dir = TempDir::new("run");
        let path = dir.join("run.sock");
        let listener = Listener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve_fake(listener, &stop);
        let mut c = Client::connect(&path);
        assert!(matches!(
            c.ask(r#"{"op":"hello","protocol":1}"#),
            Some(Response::Hello(h)) if h.runs
        ));
        let t0 = std::time::Instant::now();
        let sent_ms = bpmon_proto::time::now_ms();
        let reply =
            match c.ask(r#"{"op":"run","max_depth":7,"at_us":[0,40000,80000],"totals":[2]}"#) {
                Some(Response::Run(r)) => r,
                other => panic!("expected a run, got {other:?}"),
            };
        assert!(
            t0.elapsed() >= Duration::from_millis(80),
            "answered once, after the last"
        );
        assert_eq!(reply.error, None);
        assert_eq!(reply.samples.len(), 3);
        // Timers-only samples with states, totals only where asked.
        let totals: Vec<_> = reply.samples.iter().map(|s| s.cpu_us).collect();
        assert_eq!(totals, [Some(0), Some(0), Some(1)]);
        let at: Vec<u64> = reply.samples.iter().map(|s| s.taken_at_ms).collect();
        // Each sample no earlier than its slot after the request. Slots are kept from the run's
        // start, not from the previous sample, so a late sample does not push the next one.
        assert!(
            at[0] >= sent_ms && at[1] >= sent_ms + 40 && at[2] >= sent_ms + 80,
            "sent at {sent_ms}, taken at {at:?}"
        );
        // A sample that fails ends the run with the reason; nothing after it is taken.
        let reply = match c.ask(r#"{"op":"run","max_depth":999,"at_us":[0,10000]}"#) {
            Some(Response::Run(r)) => r,
            other => panic!("expected a run, got {other:?}"),
        };
        assert_eq!(
            (reply.samples.len(), reply.error.as_deref()),
            (0, Some("no"))
        );
        // Runs the library will not take are refused, and the connection goes on.
        for (run, why) in [
            (
                r#"{"op":"run","max_depth":7,"at_us":[]}"#,
                "a run of 0 samples",
            ),
            (
                r#"{"op":"run","max_depth":7,"at_us":[50,10]}"#,
                "out of order",
            ),
            (
                r#"{"op":"run","max_depth":7,"at_us":[0,9000000]}"#,
                "a run over",
            ),
            (
                r#"{"op":"run","max_depth":7,"at_us":[0],"totals":[1]}"#,
                "totals at sample 1",
            ),
        ] {
            let message = error_text(c.ask(run));
            assert!(
                message.starts_with("not taken: ") && message.contains(why),
                "{message}"
            );
        }
        assert!(matches!(
            c.ask(r#"{"op":"sample","max_depth":8}"#),
            Some(Response::Sample(s)) if s.took_us == 8
        ));
        // A stop raised mid-run ends it without waiting for its last sample.
        let raise = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Release);
            })
        };
        let t0 = std::time::Instant::now();
        let r = c.ask(r#"{"op":"run","max_depth":7,"at_us":[0,4000000]}"#);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(error_text(r).contains("stopping"));
        raise.join().unwrap();
        assert_eq!(server.join().unwrap().1.samples, 3 + 1 + 1 + 1);
    }

    #[test]
    fn the_stop_flag_ends_an_idle_connection_and_unlinks() {
        let dir = TempDir::new("flag");
        let path = dir.join("flag.sock");
        let listener = Listener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve_fake(listener, &stop);
        let mut c = Client::connect(&path);
        assert!(matches!(
            c.ask(r#"{"op":"hello","protocol":1}"#),
            Some(Response::Hello(_))
        ));
        stop.store(true, Ordering::Release);
        let (exit, _) = server.join().unwrap();
        assert!(matches!(exit, Exit::Stopped));
        assert!(c.read().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn binding_replaces_only_dead_sockets() {
        let dir = TempDir::new("bind");
        // A regular file is never removed.
        let path = dir.join("file.sock");
        fs::write(&path, "keep me").unwrap();
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::NotASocket { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");

        // A socket someone listens on is not taken over.
        let path = dir.join("live.sock");
        let _ = fs::remove_file(&path);
        let live = UnixListener::bind(&path).unwrap();
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::InUse { .. })
        ));
        drop(live);

        // Once nobody listens, the stale file is replaced.
        let ours = Listener::bind(&path).unwrap();
        // Unlinking spares a file that is not the listener's own.
        let other_path = dir.join("other.sock");
        let _ = fs::remove_file(&other_path);
        let other = UnixListener::bind(&other_path).unwrap();
        unlink_if(&other_path, ours.dev_ino());
        assert!(other_path.exists(), "another listener's file stays");
        drop(other);
        ours.unlink_if_ours();
        assert!(!path.exists());

        // A missing directory is an error naming the path.
        let e = Listener::bind(Path::new("/nonexistent-bpmon/x.sock")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent-bpmon/x.sock: bind"),
            "{e}"
        );
    }

    #[test]
    fn lines_are_split_and_capped() {
        let stop = AtomicBool::new(false);
        let mut r = LineReader::new(5);
        let mut input: &[u8] = b"ab\n\n12345\n123456\nx";
        assert_eq!(r.next_line(&mut input, &stop), Next::Line(b"ab".to_vec()));
        assert_eq!(
            r.next_line(&mut input, &stop),
            Next::Line(b"12345".to_vec())
        );
        assert_eq!(r.next_line(&mut input, &stop), Next::TooLong);
        let mut r = LineReader::new(5);
        let mut input: &[u8] = b"x";
        assert_eq!(r.next_line(&mut input, &stop), Next::Eof);
        let mut r = LineReader::new(5);
        let mut input: &[u8] = b"1234567890";
        assert_eq!(r.next_line(&mut input, &stop), Next::TooLong);
    }
}
