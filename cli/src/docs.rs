//! `factotum completions` and the hidden `factotum man`: shell completion scripts and manual
//! pages for the three programs, made from their clap definitions (so they cannot drift from
//! `--help`). The coordinator's and the agent's flags live in their libraries, which this crate
//! already links, so one command serves all three and their binaries need no extra subcommand.
//! The coordinator's flags exist in its library only with its etcd store: a `factotum` built
//! without the `coordinator-docs` feature leaves the coordinator out, and says so.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::exit;
use crate::out::errln;

/// The clap definition of one of [`crate::cli::BINARIES`] (`None`: not built in).
fn command(bin: &str) -> Option<clap::Command> {
    match bin {
        "factotum-coordinator" => coordinator(),
        "factotum-agent" => Some(factotum_agent::AgentArgs::command()),
        _ => Some(Cli::command()),
    }
}

#[cfg(feature = "coordinator-docs")]
fn coordinator() -> Option<clap::Command> {
    Some(factotum_coordinator::server::Config::command())
}

#[cfg(not(feature = "coordinator-docs"))]
fn coordinator() -> Option<clap::Command> {
    None
}

fn not_built_in(bin: &str) -> String {
    format!(
        "{bin}'s flags are not built into this factotum (build it with --features factotum/coordinator-docs)"
    )
}

pub fn completions(args: CompletionsArgs) -> u8 {
    let Some(mut cmd) = command(&args.bin) else {
        errln!("Error: {}", not_built_in(&args.bin));
        return exit::BAD_ARGUMENTS;
    };
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, args.bin.as_str(), &mut script);
    crate::out::stdout(format_args!("{}", String::from_utf8_lossy(&script)));
    exit::OK
}

pub fn man(args: ManArgs) -> u8 {
    match write_pages(&args.out) {
        Ok(files) => {
            for f in files {
                crate::out::outln!("{f}");
            }
            exit::OK
        }
        Err(e) => {
            errln!(
                "Error: cannot write the manual pages to '{}': {e}",
                args.out.display()
            );
            exit::BAD_ARGUMENTS
        }
    }
}

/// Writes `<program>.1` for each program and `<program>-<subcommand>.1` for each visible
/// subcommand (recursively); returns the file names written, sorted.
fn write_pages(dir: &Path) -> std::io::Result<Vec<String>> {
    fn pages(cmd: clap::Command, dir: &Path, names: &mut Vec<String>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), dir, names)?;
        }
        let file = clap_mangen::Man::new(cmd).generate_to(dir)?;
        names.extend(file.file_name().map(|n| n.to_string_lossy().into_owned()));
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::new();
    for bin in crate::cli::BINARIES {
        let Some(cmd) = command(bin) else {
            errln!("Warn: {}: no pages for it", not_built_in(bin));
            continue;
        };
        // Built, so each subcommand is named `<program>-<subcommand>`; `help` is not a page.
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        pages(cmd, dir, &mut names)?;
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_has_a_page_and_each_subcommand_its_own() {
        let dir = tempfile_dir();
        let names = write_pages(&dir).unwrap();
        for page in [
            "factotum.1",
            "factotum-run.1",
            "factotum-submit.1",
            "factotum-status.1",
            "factotum-completions.1",
            "factotum-agent.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        let coordinator = names.iter().any(|n| n == "factotum-coordinator.1");
        assert_eq!(coordinator, cfg!(feature = "coordinator-docs"), "{names:?}");
        assert!(!names.iter().any(|n| n == "factotum-man.1"), "hidden");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("factotum-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
