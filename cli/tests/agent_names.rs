//! One live session per agent name, with real processes: a second `factotum-agent` with the
//! same `--name` (a cloned machine) is refused and says why; the first keeps its task.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::fleet::{agent, sibling, wait_for_agents, Coordinator, Proc};
use support::*;

#[test]
fn a_second_agent_with_the_same_name_is_refused_and_the_first_finishes_its_task_once() {
    let c = Coordinator::start(&["--lost-after", "10"]);
    let _first = agent(&c.url, "same", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    let ff = d.write(
        "clash.factfile",
        &factfile(
            "clash",
            vec![
                task("slow", &format!("echo slow >> '{a}'; sleep 4"), &[], &[]),
                task("after", &format!("echo after >> '{a}'"), &[], &["slow"]),
            ],
        ),
    );
    let o = run(&["submit", &ff, "--coordinator", &c.url]);
    let id = stdout(&o).trim().to_string();
    assert!(!id.is_empty(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.contains("slow"))
    }));
    // The clone: the same name, another process, no shared state.
    let log = d.file("clone.log");
    let _clone = Proc(
        Command::new(sibling("factotum-agent"))
            .args(["--coordinator", &c.url, "--name", "same"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the clone starts"),
    );
    let clone_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || clone_log()
            .contains("agent name 'same' is already connected from host")),
        "the clone says why it is refused: {}",
        clone_log()
    );
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let mut lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["after", "slow"], "every task ran exactly once");
    // The clone kept trying (with backoff) and logged the clash once.
    let coordinator_log = std::fs::read_to_string(&c.log).unwrap();
    let refusals = coordinator_log.matches("refused a session").count();
    assert!(refusals >= 2, "the clone retried: {coordinator_log}");
    assert!(refusals < 40, "not a tight loop: {refusals} refusals");
    assert_eq!(
        coordinator_log.matches("agent connected").count(),
        1,
        "no takeover: {coordinator_log}"
    );
    assert_eq!(
        clone_log()
            .matches("the coordinator refused this agent")
            .count(),
        1,
        "{}",
        clone_log()
    );
    let agents = stdout(&run(&["agents", "--coordinator", &c.url]));
    assert_eq!(agents.lines().count(), 2, "one agent: {agents}");
}
