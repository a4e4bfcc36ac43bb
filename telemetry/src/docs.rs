//! Shell completions and man pages, generated from a binary's clap definition: what the .deb
//! packages install (`scripts/package` runs each binary's hidden `generate-completions` and
//! `generate-man` commands).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes `cmd`'s completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)?;
    out.flush()
}

/// Writes a man page (section 1) for `cmd` and one for each of its visible subcommands, nested
/// ones too (`bpmon-collector-config-set.1`), into `dir`. Returns the files written, sorted.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let before: Vec<PathBuf> = pages_in(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut written: Vec<PathBuf> = pages_in(dir)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    written.sort();
    Ok(written)
}

/// `generate-completions`, as a binary's command: the script on stdout (a closed pipe is not
/// an error), any other failure said on stderr under the binary's name.
pub fn print_completions(cmd: clap::Command, shell: Shell) -> std::process::ExitCode {
    let name = cmd.get_name().to_string();
    match completions(cmd, shell, &mut io::stdout().lock()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

/// `generate-man`, as a binary's command: the pages into `dir`, a failure said on stderr under
/// the binary's name.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::process::ExitCode {
    let name = cmd.get_name().to_string();
    match man_pages(cmd, dir) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: cannot write man pages to {}: {e}", dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}

fn pages_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "1") {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo")
            .version("1.0")
            .subcommand(
                clap::Command::new("run")
                    .about("Runs")
                    .arg(clap::Arg::new("fast").long("fast")),
            )
            .subcommand(
                clap::Command::new("config").subcommand(clap::Command::new("set").about("Sets")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn a_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("bpmon-man-{}", std::process::id()));
        let files = man_pages(cli(), &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["demo-config-set.1", "demo-config.1", "demo-run.1", "demo.1"]
        );
        let run = std::fs::read_to_string(dir.join("demo-run.1")).unwrap();
        assert!(run.contains("demo\\-run") && run.contains("fast"), "{run}");
        let top = std::fs::read_to_string(dir.join("demo.1")).unwrap();
        assert!(!top.contains("secret"), "{top}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(cli(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("run") && text.contains("config"), "{shell}");
        }
    }
}
