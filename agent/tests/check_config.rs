//! `bpmon-agent check-config`: the example file passes; a file with many problems gets every
//! one of them, each with its key and line, and exit status 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpmon-agent"));
    cmd.args(args).env_remove("BPMON_AGENT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bpmon-agent runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bpmon-agent-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_packaged_example_is_ok() {
    let path = example();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", path.display()));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // From the environment too.
    let out = run(&["check-config"], &[("BPMON_AGENT_CONFIG", &path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with(": ok\n"));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("bad");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "log_level = \"loud\"\n\
             \n\
             [sampling]\n\
             samples = 100\n\
             delay = \"5 parsecs\"\n\
             backend = \"gdb\"\n\
             \n\
             [collector]\n\
             url = \"collector:7070\"\n\
             token_file = \"{}\"\n\
             \n\
             [daemon]\n\
             spool = \"/tmp/x\"\n\
             metrics_listen = \"localhost\"\n\
             discovery_interval = \"0s\"\n\
             \n\
             [attach]\n\
             io_timeout = 10\n",
            token.display()
        ),
    )
    .unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let lines: Vec<&str> = err.lines().collect();
    let f = path.display().to_string();
    let expected = [
        (1, "log_level: invalid log level \"loud\""),
        (5, "[sampling] delay: invalid duration \"5 parsecs\""),
        (6, "[sampling] backend: unknown variant `gdb`"),
        (9, "[collector] url: invalid URL \"collector:7070\""),
        (10, "[collector] token_file: refusing token file"),
        (13, "[daemon] spool: unknown field `spool`"),
        (14, "[daemon] metrics_listen: invalid socket address"),
        (15, "[daemon] discovery_interval: must be above zero"),
        (
            18,
            "[attach] io_timeout: invalid type: integer `10`, expected a string",
        ),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{err}");
    for ((line, start), got) in expected.iter().zip(&lines) {
        let want = format!("{f}:{line}: {start}");
        assert!(got.starts_with(&want), "want {want:?}, got {got:?}\n{err}");
    }
    assert_eq!(lines[expected.len()], format!("{f}: 9 problems"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_window_longer_than_its_interval_and_a_syntax_error_are_found() {
    let dir = scratch("window");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        "[sampling]\nsamples = 100\ndelay = \"50ms\"\ninterval = \"4s\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.starts_with(&format!(
            "{}:4: [sampling] interval: 100 samples 50 ms apart take 4950 ms, longer than the 4000 ms interval",
            path.display()
        )),
        "{err}"
    );
    std::fs::write(&path, "[sampling]\nsamples = 100\ndelay = \"50ms\n").unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.starts_with(&format!("{}:3: TOML syntax error", path.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_file_or_an_unreadable_one_is_an_error() {
    let out = run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no configuration file to check"));
    let out = run(
        &["check-config", "--config", "/nonexistent/agent.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("/nonexistent/agent.toml: cannot read"));
}

#[test]
fn run_refuses_a_collector_url_that_is_none() {
    let spool = scratch("bad-url-spool");
    for (url, says) in [
        ("not a url", "is not a URL"),
        ("ftp://collector", "must be http:// or https://"),
    ] {
        let out = run(
            &[
                "run",
                "--collector",
                url,
                "--spool-dir",
                spool.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(1), "{url}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(says),
            "{url}: {}",
            text(&out.stderr)
        );
    }
}
