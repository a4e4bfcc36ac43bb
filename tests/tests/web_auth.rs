//! The web view behind tokens, in a real browser (issue 14): with a token file configured, a
//! headless Chromium opening the collector's address sees a token form and no data; an agent's
//! token is refused with the reason, a wrong one as refused, a reader's opens the jobs page. The
//! token stays in the tab's `sessionStorage` (no cookie, not in the address), survives a reload
//! and is gone after "Forget token".
//!
//! No Flink is needed: the collector watches a closed port, so its jobs page is empty but real.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bpmon_e2e::browser::Browser;
use bpmon_e2e::services::CollectorProc;
use bpmon_e2e::webview::{self, PAGE_DEADLINE};
use bpmon_e2e::work_dir;
use serde_json::Value;

const ADMIN: &str = "c2f0a7d1e4b94e6f8a1d3c5b7e9f0a2b";
const READER: &str = "5e8d1c0b3a2f4e6d9c8b7a6f5e4d3c2b";
const AGENT: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

/// The page's state as a person would see it: is the form up, what does it say, is there a
/// jobs table, and what does the tab keep.
fn seen(browser: &Browser) -> Result<Value> {
    browser.eval(
        "const form = document.getElementById('login');
         const err = document.getElementById('login-error');
         return {
           form: !form.hidden,
           error: err.hidden ? '' : err.textContent,
           table: !!document.getElementById('jobs'),
           main: document.getElementById('main').innerText,
           forget: !document.getElementById('forget').hidden,
           stored: sessionStorage.getItem('bpmon.token'),
           cookie: document.cookie,
           href: location.href,
         };",
    )
}

fn submit(browser: &Browser, token: &str) -> Result<()> {
    browser.eval(&format!(
        "document.getElementById('token').value = '{token}';
         document.querySelector('#login button[type=submit]').click();
         return true;"
    ))?;
    Ok(())
}

/// Waits until the jobs page is shown and the token form hidden.
fn jobs_shown(browser: &Browser, what: &str) -> Result<()> {
    browser.wait_for(
        what,
        "return !!document.getElementById('jobs') && document.getElementById('login').hidden;",
        PAGE_DEADLINE,
    )?;
    Ok(())
}

/// Waits until the token form is up again with an error containing `words`.
fn refused(browser: &Browser, words: &str) -> Result<Value> {
    browser.wait_for(
        &format!("the token form saying {words:?}"),
        &format!(
            "const form = document.getElementById('login');
             const err = document.getElementById('login-error');
             return !form.hidden && !err.hidden && err.textContent.includes('{words}')
                 ? err.textContent : null;"
        ),
        PAGE_DEADLINE,
    )
}

#[test]
fn the_web_view_asks_for_a_reader_token() -> Result<()> {
    let dir = work_dir().join(format!("web-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("ops@admin:{ADMIN}\ngrafana@reader:{READER}\nhost1@agent:{AGENT}\n"),
    )?;
    std::fs::set_permissions(
        &tokens,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )?;
    let tokens_arg = tokens.to_string_lossy().into_owned();
    let mut collector = CollectorProc::start(
        &["http://127.0.0.1:1".to_string()],
        &dir.join("data"),
        0,
        &["--token-file", &tokens_arg],
    )?;
    let base = format!("{}/", collector.url);
    let browser = Browser::start(1200, 800)?;

    // No token: the form, and nothing read.
    browser.open(&base)?;
    browser.wait_for(
        "the token form",
        "return !document.getElementById('login').hidden;",
        PAGE_DEADLINE,
    )?;
    let s = seen(&browser)?;
    ensure!(
        s["table"] == false && s["main"] == "" && s["forget"] == false,
        "without a token the page shows data or offers to forget one: {s}"
    );

    // An agent's token is valid but may not read: refused, saying why.
    submit(&browser, AGENT)?;
    let why = refused(&browser, "may not read")?;
    ensure!(
        why.as_str().unwrap_or("").contains("agent") && seen(&browser)?["table"] == false,
        "an agent's token: {why}"
    );

    // A token the collector does not know.
    submit(&browser, "not-a-token")?;
    refused(&browser, "that token was refused")?;
    ensure!(
        seen(&browser)?["table"] == false,
        "a wrong token shows data"
    );

    // A reader's token opens the jobs page (empty: the watched Flink is a closed port).
    submit(&browser, READER)?;
    jobs_shown(&browser, "the jobs page after a reader's token")?;
    let s = seen(&browser)?;
    ensure!(
        s["stored"] == READER && s["cookie"] == "" && s["forget"] == true,
        "the token is kept in the tab's sessionStorage only, with a way to forget it: {s}"
    );
    ensure!(
        !s["href"].as_str().unwrap_or("").contains(READER),
        "the token is in the address: {s}"
    );
    ensure!(
        s["main"].as_str().unwrap_or("").contains("No jobs yet"),
        "the jobs page: {s}"
    );

    // A reload in the same tab keeps it; "Forget token" drops it and asks again.
    browser.open(&base)?;
    jobs_shown(&browser, "the jobs page after a reload")?;
    browser.eval("document.getElementById('forget').click(); return true;")?;
    browser.wait_for(
        "the token form after forgetting the token",
        "return !document.getElementById('login').hidden && !document.getElementById('jobs')
             && sessionStorage.getItem('bpmon.token') === null;",
        PAGE_DEADLINE,
    )?;

    // The console has only the refusals this test asked for (the browser logs each 401/403).
    let errors = webview::console_errors(&browser)?;
    let other: Vec<&String> = errors
        .iter()
        .filter(|m| !(m.contains("401") || m.contains("403")))
        .collect();
    ensure!(
        other.is_empty(),
        "console errors besides 401/403: {other:#?}"
    );
    ensure!(
        errors.iter().any(|m| m.contains("403")),
        "the agent token's 403 never reached the browser: {errors:#?}"
    );

    // The collector counted the refusals it sent.
    let metrics = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", collector.url))
        .bearer_auth(ADMIN)
        .timeout(Duration::from_secs(10))
        .send()?
        .text()?;
    let forbidden = metrics
        .lines()
        .find(|l| l.starts_with("bpmon_api_forbidden_total"))
        .context("no bpmon_api_forbidden_total in /metrics")?;
    ensure!(!forbidden.ends_with(" 0"), "no 403 counted: {forbidden}");
    collector.daemon.stop(Duration::from_secs(10))?;
    Ok(())
}
