//! `bpmon-collector check-config`: the example file passes; a file with many problems gets
//! every one of them, each with its key and line, and exit status 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpmon-collector"));
    cmd.args(args).env_remove("BPMON_COLLECTOR_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bpmon-collector runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bpmon-collector-check-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_packaged_example_is_ok() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/collector.toml");
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", path.display()));
    let out = run(&["check-config"], &[("BPMON_COLLECTOR_CONFIG", &path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with(": ok\n"));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let dir = scratch("bad");
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        "log_format = \"syslog\"\n\
         listen = \"0.0.0.0\"\n\
         token_file = \"/nonexistent/tokens\"\n\
         \n\
         [flink]\n\
         urls = [\"http://jm:8081\", \"ftp://jm2:8081\"]\n\
         poll_interval = \"10ms\"\n\
         timeout = \"5 parsecs\"\n\
         \n\
         [storage]\n\
         retention = \"0s\"\n\
         \n\
         [metrics]\n\
         per_subtask = \"no\"\n\
         per_vertex = true\n\
         \n\
         [tls]\n\
         cert_file = \"/c.pem\"\n\
         \n\
         [webhooks]\n\
         url = \"http://x\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let f = path.display().to_string();
    let expected = [
        (1, "log_format: unknown variant `syslog`"),
        (2, "listen: invalid socket address"),
        (3, "token_file: cannot read token file /nonexistent/tokens"),
        (6, "[flink] urls[1]: "),
        (
            7,
            "[flink] poll_interval: 10ms is too short; at least 100ms",
        ),
        (8, "[flink] timeout: invalid duration \"5 parsecs\""),
        (11, "[storage] retention: must be above zero"),
        (
            14,
            "[metrics] per_subtask: invalid type: string \"no\", expected a boolean",
        ),
        (15, "[metrics] per_vertex: unknown field `per_vertex`"),
        (18, "[tls] cert_file: needs key_file too"),
        (20, "[webhooks]: unknown field `webhooks`"),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{err}");
    for ((line, start), got) in expected.iter().zip(&lines) {
        let want = format!("{f}:{line}: {start}");
        assert!(got.starts_with(&want), "want {want:?}, got {got:?}\n{err}");
    }
    assert!(lines[3].contains("ftp://jm2:8081"), "{err}");
    assert_eq!(lines[expected.len()], format!("{f}: 11 problems"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_file_is_an_error() {
    let out = run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no configuration file to check"));
}
