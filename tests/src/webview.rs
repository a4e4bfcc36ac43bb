//! What a person sees on the collector's web view, read off a real browser ([`Browser`]): the
//! jobs page's cards and rows, and a job page's bottleneck card, graph nodes, timeline and flame graph.
//! The tests decide what must be there; `web-shots` keeps screenshots of the same pages.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::browser::Browser;

/// How long a page may take to show its data (it fetches after loading).
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// A row of the jobs page.
#[derive(Debug, Clone, Deserialize)]
pub struct JobRowSeen {
    pub job: String,
    /// The row's text as shown (level, name, bottleneck, cause, since…).
    pub text: String,
}

/// A vertex of a job page's graph.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeSeen {
    pub vertex: String,
    /// `ok`, `low`, `high` or `none`: the node's colour class.
    pub level: String,
    /// The node's text lines, joined by ` | `: name, level word and ratio, role.
    pub text: String,
    pub bottleneck: bool,
}

/// A job page once its data is in.
#[derive(Debug, Clone, Deserialize)]
pub struct JobPageSeen {
    /// The bottleneck card's vertex and cause (empty without a bottleneck).
    pub bottleneck: String,
    pub cause: String,
    /// "Back-pressure since …", when the card says it.
    pub since: Option<String>,
    pub nodes: Vec<NodeSeen>,
    /// Bars in the timeline.
    pub points: u64,
    /// The frames drawn in the flame graph.
    pub frames: Vec<String>,
}

/// Opens the jobs page and returns its rows once there are `at_least` of them.
pub fn jobs_page(browser: &Browser, collector: &str, at_least: usize) -> Result<Vec<JobRowSeen>> {
    browser.open(&format!("{collector}/"))?;
    let v = browser.wait_for(
        "the jobs page's rows",
        &format!(
            "const rows = [...document.querySelectorAll('#jobs tr.job')];
             return rows.length >= {at_least}
                 ? rows.map(r => ({{job: r.dataset.job, text: r.innerText}})) : null;"
        ),
        PAGE_DEADLINE,
    )?;
    serde_json::from_value(v).context("the jobs page's rows")
}

/// The jobs page's cards of back-pressured jobs, as shown now (the page must be open).
pub fn trouble_cards(browser: &Browser) -> Result<Vec<JobRowSeen>> {
    let v = browser.eval(
        "return [...document.querySelectorAll('#trouble a.trouble-card')]
             .map(c => ({job: c.dataset.job, text: c.innerText}));",
    )?;
    serde_json::from_value(v).context("the jobs page's cards")
}

/// Opens a job's page and returns what it shows once the graph, the timeline and the flame
/// graph are drawn.
pub fn job_page(browser: &Browser, collector: &str, job_id: &str) -> Result<JobPageSeen> {
    browser.open(&format!("{collector}/#/job/{job_id}"))?;
    let v = browser.wait_for(
        "the job page's graph, timeline and flame graph",
        r#"const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; };
           const nodes = [...document.querySelectorAll('#graph g.node')];
           const chart = document.querySelector('#timeline svg.chart');
           const frames = [...document.querySelectorAll('#flame g[data-frame]')];
           if (!nodes.length || !chart || !(frames.length || document.querySelector('#flame-empty'))) return null;
           return {
             bottleneck: text('#bottleneck-vertex') || '',
             cause: text('#bottleneck-cause') || '',
             since: text('#bottleneck-since'),
             nodes: nodes.map(g => ({vertex: g.dataset.vertex, level: g.dataset.level,
                text: [...g.querySelectorAll('text')].map(t => t.textContent).join(' | '),
                bottleneck: g.classList.contains('bottleneck')})),
             points: Number(chart.dataset.points),
             frames: frames.map(g => g.dataset.frame),
           };"#,
        PAGE_DEADLINE,
    )?;
    serde_json::from_value(v).context("the job page")
}

/// Clicks the job page's "Download folded stacks" (the page must be open, its flame graph
/// drawn) and returns the file the browser saved into `dir`, a browser started with
/// [`Browser::start_with_downloads`].
pub fn download_folded(browser: &Browser, dir: &Path) -> Result<(String, String)> {
    let before: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    browser.eval(
        "const b = [...document.querySelectorAll('button')]
             .find(b => b.textContent === 'Download folded stacks');
         if (!b) throw new Error('no download button');
         b.click(); return true;",
    )?;
    let t0 = std::time::Instant::now();
    loop {
        for e in std::fs::read_dir(dir)?.flatten() {
            let path = e.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".folded") && !before.contains(&path) {
                let text = std::fs::read_to_string(&path)?;
                return Ok((name, text));
            }
        }
        anyhow::ensure!(
            t0.elapsed() < PAGE_DEADLINE,
            "no .folded file in {} after {PAGE_DEADLINE:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the web view says of a job whose data went stale.
#[derive(Debug, Clone, Deserialize)]
pub struct StaleSeen {
    /// The job page's banner ("Stale: " and the reasons).
    pub banner: String,
    /// The jobs page's row carries the "stale" tag.
    pub row_tagged: bool,
    /// The job's card, if it has one (back-pressured), is drawn as stale.
    pub card: Option<bool>,
}

/// Opens a job's page until its stale banner shows (within `deadline`: the collector waits out
/// a window's interval, length and 30 s of grace), then the jobs page until the job's row is
/// tagged stale.
pub fn stale_job(
    browser: &Browser,
    collector: &str,
    job_id: &str,
    deadline: Duration,
) -> Result<StaleSeen> {
    browser.open(&format!("{collector}/#/job/{job_id}"))?;
    let banner = browser.wait_for(
        "the job page's stale banner",
        "const b = document.getElementById('banner');
         return !b.hidden && b.textContent.startsWith('Stale: ') ? b.textContent : null;",
        deadline,
    )?;
    browser.open(&format!("{collector}/"))?;
    let v = browser.wait_for(
        "the jobs page's stale row",
        &format!(
            "const row = document.querySelector('#jobs tr.job[data-job=\"{job_id}\"]');
             if (!row || !row.querySelector('.tag.stale')) return null;
             const card = document.querySelector('#trouble a.trouble-card[data-job=\"{job_id}\"]');
             return {{row_tagged: true, card: card ? card.classList.contains('stale') : null}};"
        ),
        PAGE_DEADLINE,
    )?;
    Ok(StaleSeen {
        banner: banner.as_str().unwrap_or("").to_string(),
        row_tagged: v["row_tagged"] == true,
        card: v["card"].as_bool(),
    })
}

/// The console's errors since the last look (a failed request, an exception, a CSP refusal).
pub fn console_errors(browser: &Browser) -> Result<Vec<String>> {
    Ok(browser
        .console()?
        .into_iter()
        .filter(|m| m.level == "SEVERE")
        .map(|m| m.message)
        .collect())
}

/// Saves the page as shown now.
pub fn shoot(browser: &Browser, path: &Path) -> Result<()> {
    browser.screenshot(path)
}
