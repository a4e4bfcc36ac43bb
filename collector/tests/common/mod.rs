//! What the collector's integration tests share: the real `bpmon-collector serve` as a child
//! process, with its log collected as it comes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `bpmon-collector serve`, killed when dropped; its log is collected as it comes.
pub struct Serve {
    child: Child,
    /// Where it listens (`host:port`).
    pub addr: String,
    /// Its stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Serve {
    /// `serve --flink http://127.0.0.1:9 --data-dir DIR/data` and `extra`; the error is its exit
    /// status and stderr when it does not start.
    pub fn start(dir: &Path, extra: &[&str]) -> Result<Serve, String> {
        Serve::watching(dir, "http://127.0.0.1:9", "warn", extra)
    }

    /// `serve --flink FLINK --data-dir DIR/data` and `extra`, logging at `rust_log`.
    pub fn watching(
        dir: &Path,
        flink: &str,
        rust_log: &str,
        extra: &[&str],
    ) -> Result<Serve, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bpmon-collector"))
            .args(["serve", "--flink", flink, "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env_remove("BPMON_TOKEN_FILE")
            .env_remove("BPMON_COLLECTOR_CONFIG")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait().unwrap();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(format!("{status}: {err}"));
        };
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Ok(Serve {
            addr: addr.to_string(),
            log,
            child,
        })
    }

    /// The first log line containing `needle`, waiting up to 10 s for it.
    pub fn log_line_with(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
            {
                return Some(l.to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
