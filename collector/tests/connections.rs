//! The listener's bounds on the real binary (`bpmon-collector serve`, `[http]` in its config
//! file), probed over raw TCP as a careless or hostile client would: a half-sent request head, an
//! idle keep-alive connection, more connections than allowed, a body that trickles in.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::Serve;

/// `bpmon-collector serve` with this `[http]` section, killed when dropped.
struct Collector {
    serve: Serve,
    addr: String,
    dir: PathBuf,
}

impl Collector {
    fn start(name: &str, http: &str) -> Collector {
        let dir = std::env::temp_dir().join(format!("bpmon-conn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!("listen = \"127.0.0.1:0\"\n[http]\n{http}\n"),
        )
        .unwrap();
        let serve = Serve::start(&dir, &["--config", config.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("the collector did not start: {e}"));
        Collector {
            addr: serve.addr.clone(),
            serve,
            dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// `GET /metrics` on a fresh connection (closed after the answer).
    fn metrics(&self) -> Option<String> {
        let mut s = self.connect();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads until the server closes the connection; what came, and how long it took. Panics when
/// the server keeps it open past the read timeout.
fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the connection is still open after {:?} ({e}); got so far: {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_half_sent_head_and_an_idle_keep_alive_connection_are_closed_after_the_header_timeout() {
    let c = Collector::start("header", "header_timeout = \"1s\"");

    let mut half = c.connect();
    half.write_all(b"POST /api/v1/reports HTTP/1.1\r\nHost: t\r\nContent-Le")
        .unwrap();
    let (got, took) = read_until_closed(&mut half);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    assert!(!got.contains("200 OK"), "{got}");

    // A whole request is answered; the connection stays open for the next one only as long as
    // the header timeout.
    let mut idle = c.connect();
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (got, took) = read_until_closed(&mut idle);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("bpmon_http_connections_open"), "{got}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "the idle connection was closed after {took:?}"
    );
}

#[test]
fn connections_beyond_the_bound_are_closed_on_arrival_counted_and_logged() {
    let c = Collector::start("bound", "max_connections = 3\nheader_timeout = \"60s\"");
    let mut held: Vec<TcpStream> = (0..3).map(|_| c.connect()).collect();
    // The collector takes connections from the backlog in order and gives each its slot as it
    // takes it: the fourth finds none.
    let mut extra = c.connect();
    let (got, took) = read_until_closed(&mut extra);
    assert_eq!(got, "");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    // Free a slot: the API answers again and says what happened.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        if let Some(m) = c.metrics() {
            break m;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        std::thread::sleep(Duration::from_millis(100));
    };
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bpmon_http_connections_refused_total "))
        .unwrap_or_else(|| panic!("no refusal counter in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{metrics}");
    assert!(
        c.serve.log_line_with("connection limit reached").is_some(),
        "{}",
        c.serve.log.lock().unwrap()
    );
    drop(held);
}

#[test]
fn a_body_that_trickles_in_gets_408_which_agents_retry() {
    let c = Collector::start("body", "request_timeout = \"1s\"");
    let mut s = c.connect();
    s.write_all(
        b"POST /api/v1/reports HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"schema_version\"",
    )
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
