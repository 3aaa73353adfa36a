//! `--config FILE` on the real agent, and packaging/agent.toml kept in step with the flags:
//! every key it shows is a flag, and every default it shows is the flag's default.

use std::path::PathBuf;
use std::process::Command;

use factotum_agent::AgentArgs;

const PACKAGED: &str = include_str!("../../packaging/agent.toml");

/// `text` in a file of its own in the system's temporary directory.
fn file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "factotum-agent-config-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `# key = value` lines of a commented config file, uncommented, with their keys.
fn settings(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| {
            let (key, _) = l.split_once(" = ")?;
            let is_key = key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            is_key.then_some((key, l))
        })
        .collect()
}

fn parse(config: Option<&std::path::Path>) -> AgentArgs {
    let mut args = vec!["factotum-agent".into()];
    if let Some(path) = config {
        args.extend(["--config".into(), path.as_os_str().to_owned()]);
    }
    let mut a: AgentArgs = factotum_service::config::try_parse_from(args).unwrap();
    a.config = None;
    a
}

#[test]
fn every_key_of_the_packaged_config_is_an_agent_flag() {
    let lines = settings(PACKAGED);
    assert!(lines.len() > 10, "{} keys", lines.len());
    let all: Vec<&str> = lines.iter().map(|(_, l)| *l).collect();
    let path = file("all", &all.join("\n"));
    let a = parse(Some(&path));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(a.labels, ["zone=a", "gpu=none"]);
}

#[test]
fn the_packaged_config_shows_the_agents_defaults() {
    let mut cmd = <AgentArgs as clap::CommandFactory>::command();
    cmd.build();
    let with_default = |key: &str| {
        cmd.get_arguments()
            .find(|a| {
                a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|n| n.contains(&key))
            })
            .is_some_and(|a| !a.get_default_values().is_empty())
    };
    let defaults: Vec<&str> = settings(PACKAGED)
        .into_iter()
        .filter(|(key, _)| with_default(key))
        .map(|(_, l)| l)
        .collect();
    assert!(defaults.len() > 5, "{defaults:?}");
    let path = file("defaults", &defaults.join("\n"));
    let from_file = parse(Some(&path));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        format!("{from_file:?}"),
        format!("{:?}", parse(None)),
        "a default in packaging/agent.toml is not the flag's"
    );
}

#[test]
fn an_unknown_key_stops_the_agent_with_exit_code_2_naming_the_key_and_the_file() {
    let path = file(
        "unknown",
        "slots = 2\ncoordinators = [\"http://127.0.0.1:1\"]\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_factotum-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err,
        format!(
            "error: unknown key 'coordinators' in {} (line 2)\n",
            path.display()
        )
    );
}

#[test]
fn the_agent_takes_its_settings_from_the_file_its_variable_names() {
    // The file's coordinator reaches the agent's checks: a bad one stops it (exit 1), which a
    // flag then overrides into a bad value of its own.
    let path = file(
        "variable",
        "coordinator = [\"not a url\"]\nkill-grace = \"2s\"\n",
    );
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_factotum-agent"))
            .env("FACTOTUM_CONFIG", &path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("'not a url' is not a coordinator URL"),
        "{err}"
    );
    let out = run(&["--coordinator", "also not a url"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'also not a url' is not a coordinator URL"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}
