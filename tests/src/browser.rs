//! A real browser for the web view's tests: Debian's headless Chromium driven through
//! ChromeDriver's W3C WebDriver protocol (plain JSON over HTTP), with the browser console's
//! messages kept so a test can require that a page logged no error. `scripts/setup-chromium`
//! installs both. The ChromeDriver process is stopped by its PID when the browser is dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use reqwest::blocking::Client;
use serde_json::{json, Value};

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client,
}

/// A message of the browser's console.
#[derive(Debug, Clone)]
pub struct ConsoleMessage {
    /// `SEVERE` for errors, `WARNING`, `INFO`…
    pub level: String,
    pub message: String,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and opens a session of a headless Chromium
    /// with a window of `width` × `height`.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        Browser::start_with(width, height, None)
    }

    /// As [`Browser::start`], saving what the page downloads into `downloads` without asking.
    pub fn start_with_downloads(width: u32, height: u32, downloads: &Path) -> Result<Browser> {
        std::fs::create_dir_all(downloads)?;
        Browser::start_with(width, height, Some(downloads))
    }

    fn start_with(width: u32, height: u32, downloads: Option<&Path>) -> Result<Browser> {
        let chromium = which("chromium").context(
            "Chromium is missing (scripts/setup-chromium installs Debian's chromium and chromium-driver)",
        )?;
        let chromedriver = which("chromedriver").context(
            "ChromeDriver is missing (scripts/setup-chromium installs Debian's chromium-driver)",
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let http = Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let t0 = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Some(status) = browser.driver.try_wait()? {
                bail!("chromedriver exited before it was ready: {status}");
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let prefs = match downloads {
            Some(dir) => json!({
                "download.default_directory": dir,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
            }),
            None => json!({}),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={width},{height}")],
                "prefs": prefs,
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = browser.call("POST", "/session", Some(caps))?;
        browser.session = v["sessionId"]
            .as_str()
            .context("no sessionId in the new session's answer")?
            .to_string();
        Ok(browser)
    }

    /// Opens `url` (returns once the page has loaded; its scripts may still be fetching).
    pub fn open(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Evaluates `script` until it returns something other than `null`/`false`, or fails after
    /// `timeout` saying `what` did not appear.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let t0 = Instant::now();
        loop {
            let v = self.eval(script)?;
            if !v.is_null() && v != Value::Bool(false) {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                bail!("{what}: not there after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The page as a PNG, written to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("a screenshot that is not base64 text")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The console's messages since the last call.
    pub fn console(&self) -> Result<Vec<ConsoleMessage>> {
        let v = self.session_call("POST", "/se/log", Some(json!({"type": "browser"})))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| ConsoleMessage {
                        level: m["level"].as_str().unwrap_or("").to_string(),
                        message: m["message"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.clone().unwrap_or(json!({}))),
        };
        let resp = req
            .send()
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .with_context(|| format!("WebDriver {method} {path}: not JSON"))?;
        ensure!(
            status.is_success(),
            "WebDriver {method} {path}: {status}: {}",
            v["value"]["message"].as_str().unwrap_or("")
        );
        Ok(v["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
