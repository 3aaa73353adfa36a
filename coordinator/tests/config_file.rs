//! `--config FILE` on the real coordinator, and packaging/coordinator.toml kept in step with the
//! flags: every key it shows is a flag, and every default it shows is the flag's default.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use factotum_coordinator::server::Config;

const PACKAGED: &str = include_str!("../../packaging/coordinator.toml");

/// `text` in a file of its own, removed when the test's temporary directory is.
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
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

fn parse(config: Option<&std::path::Path>) -> Config {
    let mut args = vec!["factotum-coordinator".into()];
    if let Some(path) = config {
        args.extend(["--config".into(), path.as_os_str().to_owned()]);
    }
    let mut c: Config = factotum_service::config::try_parse_from(args).unwrap();
    c.config = None;
    c
}

#[test]
fn every_key_of_the_packaged_config_is_a_coordinator_flag() {
    let dir = tempfile::tempdir().unwrap();
    let lines = settings(PACKAGED);
    assert!(lines.len() > 30, "{} keys", lines.len());
    let all: Vec<&str> = lines.iter().map(|(_, l)| *l).collect();
    let path = file(&dir, "all.toml", &all.join("\n"));
    let c = parse(Some(&path));
    assert_eq!(c.store.etcd, ["http://127.0.0.1:2379"]);
}

#[test]
fn the_packaged_config_shows_the_coordinators_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = <Config as clap::CommandFactory>::command();
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
    assert!(defaults.len() > 20, "{defaults:?}");
    let path = file(&dir, "defaults.toml", &defaults.join("\n"));
    assert_eq!(
        format!("{:?}", parse(Some(&path))),
        format!("{:?}", parse(None)),
        "a default in packaging/coordinator.toml is not the flag's"
    );
}

#[cfg(feature = "etcd")]
#[test]
fn the_coordinator_starts_from_a_config_file_and_its_variable_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        &dir,
        "coordinator.toml",
        "listen = \"127.0.0.1:0\"\nlost-after = \"20s\"\nheartbeat-interval = 1\n",
    );
    let start = |config: &PathBuf, env: &[(&str, &str)]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
            .env("FACTOTUM_CONFIG", config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        line
    };
    let line = start(&path, &[]);
    let port = line.trim().strip_prefix("listening on 127.0.0.1:");
    assert!(port.is_some_and(|port| port != "0"), "{line:?}");
    // This file's address would be refused (not loopback, no TLS); the variable's wins.
    let elsewhere = file(&dir, "elsewhere.toml", "listen = \"192.0.2.1:7400\"\n");
    let line = start(&elsewhere, &[("FACTOTUM_LISTEN", "127.0.0.1:0")]);
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line:?}");
}

#[cfg(feature = "etcd")]
#[test]
fn a_bad_config_file_stops_the_coordinator_with_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, says) in [
        (
            "listen = \"127.0.0.1:0\"\nlost_after = 20\n",
            "unknown key 'lost_after' in",
        ),
        ("lost-after = \"soon\"\n", "key 'lost-after' in"),
        ("listen = \n", "is not valid TOML (line 1, column 10)"),
    ] {
        let path = file(&dir, "bad.toml", text);
        let out = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(says), "{text}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "{text}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{text}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[cfg(feature = "etcd")]
#[test]
fn the_coordinators_tools_still_run_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(&dir, "coordinator.toml", "tokens = \"/nonexistent\"\n");
    let tokens = dir.path().join("tokens");
    let out = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
        .arg("--config")
        .arg(&config)
        .args(["tokens", "add", "--name", "ci", "--scope", "read", "--file"])
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&tokens).unwrap();
    assert!(written.contains(" read ci"), "{written}");
}
