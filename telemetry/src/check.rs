//! `check-config`: every problem of a TOML configuration file, each with its key and line.
//!
//! serde stops at the first error, so the file is taken apart instead:
//! 1. syntax: `toml_edit` parses it keeping spans (a syntax error ends the check: nothing after
//!    it can be read);
//! 2. each key alone: the configuration type is deserialized from a table holding only that key
//!    (every key is optional), which finds unknown keys and sections, wrong types and bad
//!    values; an array is tried element by element, so each bad element is named;
//! 3. the whole file, with the keys that failed left out, then the caller's semantic checks
//!    (a window longer than its interval, a URL that does not parse, …), except those about or
//!    using a key that already failed, where a default would stand in for what the user wrote.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};
use toml_edit::{ImDocument, Item};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a problem is: a key path into the file (`["sampling", "delay"]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn new(keys: &[&str]) -> KeyPath {
        KeyPath(keys.iter().map(|k| Seg::Key(k.to_string())).collect())
    }

    pub fn index(mut self, i: usize) -> KeyPath {
        self.0.push(Seg::Index(i));
        self
    }

    fn key(mut self, k: &str) -> KeyPath {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    /// Whether one path lies within the other (`[a]` and `[a] b`, or equal).
    fn overlaps(&self, other: &KeyPath) -> bool {
        let n = self.0.len().min(other.0.len());
        self.0[..n] == other.0[..n]
    }
}

/// A semantic problem: its key (where it is reported) and the other keys its check read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: KeyPath,
    pub message: String,
    pub uses: Vec<KeyPath>,
}

impl Finding {
    pub fn new(key: KeyPath, message: impl Into<String>) -> Finding {
        Finding {
            key,
            message: message.into(),
            uses: Vec::new(),
        }
    }

    /// The check also read these keys.
    pub fn using(mut self, keys: &[&[&str]]) -> Finding {
        self.uses.extend(keys.iter().map(|k| KeyPath::new(k)));
        self
    }
}

impl From<&[&str]> for KeyPath {
    fn from(keys: &[&str]) -> KeyPath {
        KeyPath::new(keys)
    }
}

/// `[sampling] delay`, `listen`, `[flink] urls[1]`, `[classify] rules[0]`.
impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let n = self.0.len();
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 && n > 1 && matches!(self.0[1], Seg::Key(_)) => {
                    out.push_str(&format!("[{k}]"));
                }
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push(if out.ends_with(']') && i == 1 {
                            ' '
                        } else {
                            '.'
                        });
                    }
                    out.push_str(k);
                }
                Seg::Index(j) => out.push_str(&format!("[{j}]")),
            }
        }
        f.write_str(&out)
    }
}

/// One problem of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; `None` when the key is not in the file (a default that does not fit).
    pub line: Option<usize>,
    /// Where, as `[section] key`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl Problem {
    /// `file:line: [section] key: message`.
    pub fn render(&self, file: &str) -> String {
        let at = match self.line {
            Some(l) => format!("{file}:{l}"),
            None => file.to_string(),
        };
        if self.key.is_empty() {
            format!("{at}: {}", self.message)
        } else {
            format!("{at}: {}: {}", self.key, self.message)
        }
    }
}

/// `check-config`: checks the file at `path`, prints `FILE: ok` to stdout or every problem to
/// stderr (`FILE:LINE: [section] key: message`, then a count), and returns whether it passed.
pub fn run(path: &Path, check: impl FnOnce(&str) -> Vec<Problem>) -> bool {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: cannot read: {e}");
            return false;
        }
    };
    let problems = check(&text);
    if problems.is_empty() {
        println!("{file}: ok");
        return true;
    }
    for p in &problems {
        eprintln!("{}", p.render(&file));
    }
    let n = problems.len();
    eprintln!("{file}: {n} problem{}", if n == 1 { "" } else { "s" });
    false
}

/// Every problem of `text` as a configuration of type `T`, ordered by line. `semantic` checks a
/// configuration that deserialized, naming the key each problem is about.
pub fn check<T: DeserializeOwned>(
    text: &str,
    semantic: impl FnOnce(&T) -> Vec<Finding>,
) -> Vec<Problem> {
    let (doc, table) = match parse(text) {
        Ok(parsed) => parsed,
        Err(p) => return vec![p],
    };
    let mut pass = KeyPass {
        lines: Lines { text, doc: &doc },
        problems: Vec::new(),
        failed: Vec::new(),
        pruned: Table::new(),
    };
    for (key, value) in &table {
        match value {
            Value::Table(section) => pass.check_section::<T>(key, section),
            v => pass.check_top_key::<T>(key, v),
        }
    }
    let KeyPass {
        lines,
        mut problems,
        failed,
        pruned,
    } = pass;
    check_semantics(&lines, pruned, &failed, semantic, &mut problems);
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    problems
}

/// Step 1, syntax: the document with its spans, and the same as a plain table. A syntax error
/// is the only problem reported, since nothing after it can be read.
fn parse(text: &str) -> Result<(ImDocument<&str>, Table), Problem> {
    let doc = ImDocument::parse(text).map_err(|e| Problem {
        line: e.span().map(|s| line_of(text, s.start)),
        key: String::new(),
        message: format!("TOML syntax error: {}", one_line(e.message())),
    })?;
    let table: Table = toml::from_str(text).map_err(|e| Problem {
        line: e.span().map(|s| line_of(text, s.start)),
        key: String::new(),
        message: one_line(e.message()),
    })?;
    Ok((doc, table))
}

/// Step 2, each key alone: what was found so far.
struct KeyPass<'a> {
    lines: Lines<'a>,
    problems: Vec<Problem>,
    /// Keys (or sections) that failed: left out of what the semantic checks see.
    failed: Vec<KeyPath>,
    /// What passed, for the semantic checks.
    pruned: Table,
}

impl KeyPass<'_> {
    /// A section: whether it is known at all (an unknown one fails as a whole, reported as
    /// `[key]`), then each of its keys alone.
    fn check_section<T: DeserializeOwned>(&mut self, key: &str, section: &Table) {
        let path = KeyPath::new(&[key]);
        let mut empty = Table::new();
        empty.insert(key.to_string(), Value::Table(Table::new()));
        if let Err(e) = try_as::<T>(empty) {
            let mut p = self.lines.problem(&path, e);
            p.key = format!("[{key}]");
            self.problems.push(p);
            self.failed.push(path);
            return;
        }
        let mut kept = Table::new();
        for (k, v) in section {
            let wrap = |v: Value| {
                let mut s = Table::new();
                s.insert(k.clone(), v);
                let mut root = Table::new();
                root.insert(key.to_string(), Value::Table(s));
                root
            };
            let key_path = path.clone().key(k);
            match check_value::<T>(&self.lines, key_path.clone(), v, &wrap, &mut self.problems) {
                Some(v) => {
                    kept.insert(k.clone(), v);
                }
                None => self.failed.push(key_path),
            }
        }
        self.pruned.insert(key.to_string(), Value::Table(kept));
    }

    /// A key outside any section, alone.
    fn check_top_key<T: DeserializeOwned>(&mut self, key: &str, value: &Value) {
        let path = KeyPath::new(&[key]);
        let wrap = |v: Value| {
            let mut root = Table::new();
            root.insert(key.to_string(), v);
            root
        };
        match check_value::<T>(&self.lines, path.clone(), value, &wrap, &mut self.problems) {
            Some(v) => {
                self.pruned.insert(key.to_string(), v);
            }
            None => self.failed.push(path),
        }
    }
}

/// Step 3, the whole file without the keys that `failed`: the caller's semantic checks, except
/// findings about or using a failed key (a default would stand in for what the user wrote).
fn check_semantics<T: DeserializeOwned>(
    lines: &Lines<'_>,
    pruned: Table,
    failed: &[KeyPath],
    semantic: impl FnOnce(&T) -> Vec<Finding>,
    problems: &mut Vec<Problem>,
) {
    match try_as::<T>(pruned) {
        Ok(config) => {
            for f in semantic(&config) {
                let judged_on_defaults = std::iter::once(&f.key)
                    .chain(&f.uses)
                    .any(|k| failed.iter().any(|x| x.overlaps(k)));
                if !judged_on_defaults {
                    problems.push(lines.problem(&f.key, f.message));
                }
            }
        }
        // Keys that pass alone but not together: say what serde says.
        Err(e) if problems.is_empty() => problems.push(Problem {
            line: None,
            key: String::new(),
            message: e,
        }),
        Err(_) => {}
    }
}

/// Checks one key's value (an array element by element). Returns what of it passed (`None`
/// when it failed as a whole).
fn check_value<T: DeserializeOwned>(
    lines: &Lines<'_>,
    path: KeyPath,
    value: &Value,
    wrap: &dyn Fn(Value) -> Table,
    problems: &mut Vec<Problem>,
) -> Option<Value> {
    let Err(whole) = try_as::<T>(wrap(value.clone())) else {
        return Some(value.clone());
    };
    if let Value::Array(items) = value {
        let mut kept = Vec::new();
        let mut bad = 0;
        for (i, item) in items.iter().enumerate() {
            match try_as::<T>(wrap(Value::Array(vec![item.clone()]))) {
                Ok(_) => kept.push(item.clone()),
                Err(e) => {
                    bad += 1;
                    problems.push(lines.problem(&path.clone().index(i), e));
                }
            }
        }
        if bad > 0 {
            return None;
        }
    }
    problems.push(lines.problem(&path, whole));
    None
}

fn try_as<T: DeserializeOwned>(table: Table) -> Result<T, String> {
    Value::Table(table)
        .try_into::<T>()
        .map_err(|e| one_line(e.message()))
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

struct Lines<'a> {
    text: &'a str,
    doc: &'a ImDocument<&'a str>,
}

impl Lines<'_> {
    fn problem(&self, path: &KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            line: span_of(self.doc, path).map(|s| line_of(self.text, s.start)),
            key: path.to_string(),
            message: message.into(),
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Where a key path is written: the key itself, an array element, or (for a key the file does
/// not set) its nearest written ancestor.
fn span_of(doc: &ImDocument<&str>, path: &KeyPath) -> Option<Range<usize>> {
    let mut item: Option<&Item> = None;
    let mut best: Option<Range<usize>> = None;
    for seg in &path.0 {
        let next: Option<(Option<Range<usize>>, &Item)> = match (seg, item) {
            (Seg::Key(k), None) => doc
                .as_table()
                .get_key_value(k)
                .map(|(key, it)| (key.span().or_else(|| it.span()), it)),
            (Seg::Key(k), Some(Item::Table(t))) => t
                .get_key_value(k)
                .map(|(key, it)| (key.span().or_else(|| it.span()), it)),
            (Seg::Key(k), Some(Item::Value(toml_edit::Value::InlineTable(t)))) => t
                .get_key_value(k)
                .map(|(key, it)| (key.span().or_else(|| it.span()), it)),
            // An element ends the walk: bpmon's paths never go deeper.
            (Seg::Index(i), Some(Item::ArrayOfTables(a))) => {
                return a.get(*i).and_then(|t| t.span()).or(best);
            }
            (Seg::Index(i), Some(Item::Value(toml_edit::Value::Array(a)))) => {
                return a.get(*i).and_then(|v| v.span()).or(best);
            }
            _ => None,
        };
        let Some((span, it)) = next else {
            return best;
        };
        if span.is_some() {
            best = span;
        }
        item = Some(it);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        name: String,
        a: A,
        rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct A {
        n: u32,
        urls: Vec<String>,
        max: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        at: String,
    }

    fn semantic(c: &Conf) -> Vec<Finding> {
        let mut out = Vec::new();
        if c.a.n > c.a.max {
            out.push(
                Finding::new(KeyPath::new(&["a", "n"]), format!("{} is above max", c.a.n))
                    .using(&[&["a", "max"]]),
            );
        }
        for (i, u) in c.a.urls.iter().enumerate() {
            if !u.starts_with("http") {
                out.push(Finding::new(
                    KeyPath::new(&["a", "urls"]).index(i),
                    "not a URL",
                ));
            }
        }
        out
    }

    fn render(text: &str) -> Vec<String> {
        check::<Conf>(text, semantic)
            .iter()
            .map(|p| p.render("c.toml"))
            .collect()
    }

    #[test]
    fn a_good_file_has_no_problems() {
        assert!(render("name = \"x\"\n[a]\nn = 1\nmax = 2\n").is_empty());
        assert!(render("").is_empty());
    }

    #[test]
    fn every_key_error_is_found_with_its_line() {
        let text = "name = 3\n\
                    [a]\n\
                    n = \"many\"\n\
                    nn = 1\n\
                    urls = [\"http://a\", 4]\n\
                    [b]\n\
                    x = 1\n\
                    [[rules]]\n\
                    at = \"x\"\n\
                    [[rules]]\n\
                    ta = \"y\"\n";
        let out = render(text);
        assert_eq!(out.len(), 6, "{out:#?}");
        assert!(
            out[0].starts_with("c.toml:1: name: invalid type: integer `3`"),
            "{out:#?}"
        );
        assert!(
            out[1].starts_with("c.toml:3: [a] n: invalid type: string \"many\""),
            "{out:#?}"
        );
        assert!(
            out[2].starts_with("c.toml:4: [a] nn: unknown field `nn`"),
            "{out:#?}"
        );
        assert!(
            out[3].starts_with("c.toml:5: [a] urls[1]: invalid type: integer `4`"),
            "{out:#?}"
        );
        assert!(
            out[4].starts_with("c.toml:6: [b]: unknown field `b`"),
            "{out:#?}"
        );
        assert!(
            out[5].starts_with("c.toml:10: rules[1]: unknown field `ta`"),
            "{out:#?}"
        );
    }

    #[test]
    fn semantic_problems_point_at_their_key_or_section() {
        let out = render("[a]\nmax = 1\nn = 5\nurls = [\"http://a\", \"ftp\"]\n");
        assert_eq!(
            out,
            vec![
                "c.toml:3: [a] n: 5 is above max",
                "c.toml:4: [a] urls[1]: not a URL"
            ]
        );
        // A check that read a key that failed is not judged on its default; the others are.
        let out = render("[a]\nmax = \"one\"\nn = 5\nurls = [\"ftp\"]\n");
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(
            out[0].starts_with("c.toml:2: [a] max: invalid type"),
            "{out:#?}"
        );
        assert_eq!(out[1], "c.toml:4: [a] urls[0]: not a URL");
        // An unknown section does not hide the checks of the others.
        let out = render("[zz]\nq = 1\n[a]\nmax = 1\nn = 2\n");
        assert_eq!(out.len(), 2, "{out:#?}");
    }

    #[test]
    fn a_syntax_error_stops_the_check_with_its_line() {
        let out = render("name = \"x\"\n[a]\nn = = 2\n");
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("c.toml:3: TOML syntax error"),
            "{out:#?}"
        );
        let out = render("[a]\nn = 1\n[a]\n");
        assert!(
            out[0].starts_with("c.toml:3: TOML syntax error"),
            "{out:#?}"
        );
    }

    #[test]
    fn key_paths_read_like_the_file() {
        assert_eq!(KeyPath::new(&["listen"]).to_string(), "listen");
        assert_eq!(KeyPath::new(&["a", "b"]).to_string(), "[a] b");
        assert_eq!(KeyPath::new(&["a", "b", "c"]).to_string(), "[a] b.c");
        assert_eq!(KeyPath::new(&["a", "u"]).index(2).to_string(), "[a] u[2]");
        assert_eq!(KeyPath::new(&["rules"]).index(0).to_string(), "rules[0]");
    }
}
