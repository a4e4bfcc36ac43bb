//! Flink configuration files for private clusters.
//!
//! Flink 1.19+ reads `config.yaml` (standard YAML, nested or flat keys); older releases read
//! `flink-conf.yaml` (flat `key: value` lines). A flat `key: value` file is valid for both, so
//! the harness flattens the distribution's file, applies its overrides, and writes the result
//! under the file name the distribution uses.
//!
//! The flattener only understands what Flink's shipped files contain: nested maps of scalars,
//! comments and blank lines. Anything else (lists, multi-line scalars) is an error rather than a
//! silent misread.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A flat Flink configuration: key → raw YAML scalar (kept exactly as written, quotes included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlinkConf {
    entries: BTreeMap<String, String>,
}

/// The file name the distribution in `conf_dir` uses (`config.yaml` if present).
pub fn conf_file_name(conf_dir: &Path) -> &'static str {
    if conf_dir.join("config.yaml").is_file() || !conf_dir.join("flink-conf.yaml").is_file() {
        "config.yaml"
    } else {
        "flink-conf.yaml"
    }
}

impl FlinkConf {
    /// Reads `config.yaml` (or legacy `flink-conf.yaml`) from a conf dir.
    pub fn read_dir(conf_dir: &Path) -> Result<Self> {
        let path = conf_dir.join(conf_file_name(conf_dir));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses nested-or-flat YAML maps of scalars into flat keys.
    pub fn parse(text: &str) -> Result<Self> {
        let mut entries = BTreeMap::new();
        // (indent, key) of the enclosing maps.
        let mut stack: Vec<(usize, String)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = strip_comment(raw);
            if line.trim().is_empty() {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let content = line.trim();
            if content.starts_with("- ")
                || content == "-"
                || content.starts_with('|')
                || content.starts_with('>')
            {
                bail!("line {}: unsupported YAML construct: {raw}", n + 1);
            }
            let Some((key, value)) = split_key_value(content) else {
                bail!("line {}: expected `key:` or `key: value`: {raw}", n + 1);
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let full = stack
                .iter()
                .map(|(_, k)| k.as_str())
                .chain(std::iter::once(key))
                .collect::<Vec<_>>()
                .join(".");
            if value.is_empty() {
                stack.push((indent, key.to_string()));
            } else {
                entries.insert(full, value.to_string());
            }
        }
        Ok(Self { entries })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Sets `key` to a raw YAML scalar (quote it yourself if it contains `: ` or starts with a
    /// YAML indicator).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Flat `key: value` text, sorted by key.
    pub fn render(&self) -> String {
        let mut out = String::from("# Written by bpmon-e2e: a flat copy of the distribution's configuration plus overrides.\n");
        for (k, v) in &self.entries {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push('\n');
        }
        out
    }
}

/// Drops a `#` comment that starts the line or follows whitespace outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && prev_ws => return &line[..i],
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    line
}

/// Splits `key: value` / `key:` at the first `:` followed by whitespace or end of line.
fn split_key_value(content: &str) -> Option<(&str, &str)> {
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t') {
            let key = content[..i].trim();
            if key.is_empty() {
                return None;
            }
            return Some((key, content[i + 1..].trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_and_flat_keys() {
        let text = "\
# comment
env:
  java:
    opts:
      all: --add-opens=java.base/java.lang=ALL-UNNAMED # trailing
jobmanager:
  rpc:
    address: localhost
    port: 6123
  memory:
    process:
      size: 1600m
taskmanager.numberOfTaskSlots: 1
rest:
  address: 'local#host'
";
        let conf = FlinkConf::parse(text).unwrap();
        assert_eq!(
            conf.get("env.java.opts.all"),
            Some("--add-opens=java.base/java.lang=ALL-UNNAMED")
        );
        assert_eq!(conf.get("jobmanager.rpc.address"), Some("localhost"));
        assert_eq!(conf.get("jobmanager.rpc.port"), Some("6123"));
        assert_eq!(conf.get("jobmanager.memory.process.size"), Some("1600m"));
        assert_eq!(conf.get("taskmanager.numberOfTaskSlots"), Some("1"));
        assert_eq!(conf.get("rest.address"), Some("'local#host'"));
        let again = FlinkConf::parse(&conf.render()).unwrap();
        assert_eq!(again, conf);
    }

    /// Flink 1.18 reads `flink-conf.yaml` line by line (`key: value`, `#` starts a comment, no
    /// nesting, quotes kept): what `render` writes must be exactly that.
    #[test]
    fn renders_flat_lines_for_flink_1_18() {
        let dir = std::env::temp_dir().join(format!("bpmon-e2e-conf118-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = "\
#==============================================================================
# Common
#==============================================================================
jobmanager.rpc.address: localhost
jobmanager.rpc.port: 6123
env.java.opts.all: --add-exports=java.base/sun.net.util=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED
taskmanager.numberOfTaskSlots: 1
# high-availability.type: zookeeper
";
        std::fs::write(dir.join("flink-conf.yaml"), shipped).unwrap();
        assert_eq!(conf_file_name(&dir), "flink-conf.yaml");
        let mut conf = FlinkConf::read_dir(&dir).unwrap();
        conf.set("restart-strategy.fixed-delay.delay", "1 s");
        conf.set("taskmanager.host", "198.18.7.1");
        conf.remove("taskmanager.numberOfTaskSlots");
        let text = conf.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once(": ").unwrap();
            assert!(!k.contains(' ') && !k.is_empty() && !v.is_empty(), "{line}");
            assert!(!v.contains('#'), "{line}");
        }
        assert!(text.contains("\njobmanager.rpc.address: localhost\n"));
        assert!(text.contains("\nrestart-strategy.fixed-delay.delay: 1 s\n"));
        assert!(text.contains("\ntaskmanager.host: 198.18.7.1\n"));
        assert!(!text.contains("numberOfTaskSlots") && !text.contains("high-availability"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_lists() {
        assert!(FlinkConf::parse("a:\n  - x\n").is_err());
    }
}
