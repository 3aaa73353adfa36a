//! Agents with `--state-dir`, with real processes: a task outlives `kill -9` of its agent and
//! is reported once, by the restarted agent; a task whose shell is killed while the agent is
//! away is reported failed, once; many short tasks leave nothing pending (issue 15).

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

/// How often the webhook heard `task` leave RUNNING.
fn ends_of(rx: &Receiver, task: &str) -> usize {
    let prefix = format!("{task} RUNNING->");
    transitions(&rx.payloads())
        .iter()
        .flat_map(|t| t.split(" | ").map(String::from).collect::<Vec<_>>())
        .filter(|t| t.starts_with(&prefix))
        .count()
}

/// Names of the attempts the journal holds and has not forgotten.
fn pending(state: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(state.join("journal")).unwrap_or_default();
    let mut left = HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[..] {
            ["L", name, ..] => {
                left.insert(name.to_string());
            }
            ["F", name] => {
                left.remove(name);
            }
            _ => {}
        }
    }
    left
}

/// The pid of the shell running an attempt under `state` (its command line names
/// `<state>/attempts/…`).
fn task_shell(state: &Path) -> Option<i32> {
    let marker = state.join("attempts");
    let marker = marker.to_string_lossy();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: i32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.first().map(String::as_str) == Some("/bin/sh")
            && args.iter().any(|a| a.starts_with(&*marker)))
        .then_some(pid)
    })
}

/// A run whose agent was killed while its task ran.
struct Away {
    c: Coordinator,
    rx: Receiver,
    /// The agent's `--state-dir`.
    state: PathBuf,
    id: String,
}

fn durable_flags(state: &Path) -> [&str; 2] {
    ["--state-dir", state.to_str().unwrap()]
}

/// A coordinator and a durable agent (`phoenix`); `command` submitted as task `name` with a
/// webhook receiver; once `started` exists, the agent is killed with SIGKILL (no drain, no
/// goodbye) while the task runs.
fn run_then_kill_the_agent(d: &Dir, name: &str, command: &str, started: &Path) -> Away {
    let c = Coordinator::start(&["--lost-after", "20", "--heartbeat-interval", "0.5"]);
    let state = d.file("state");
    let mut first = agent(&c.url, "phoenix", None, &durable_flags(&state));
    wait_for_agents(&c.url, 1);
    let rx = Receiver::start();
    let ff = d.write(
        "durable.factfile",
        &factfile("durable", vec![task(name, command, &[], &[])]),
    );
    let o = run(&["submit", &ff, "--coordinator", &c.url, "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    first.0.kill().unwrap();
    let _ = first.0.wait();
    Away { c, rx, state, id }
}

#[test]
fn after_kill_9_of_its_agent_a_task_goes_on_and_the_restarted_agent_reports_it_once() {
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    let command =
        format!("echo ran >> '{a}'; echo before; sleep 1.5; echo after; echo oops >&2; exit 3");
    let Away { c, rx, state, id } = run_then_kill_the_agent(&d, "slow", &command, &audit);
    assert!(task_shell(&state).is_some(), "the task outlives its agent");
    let _second = agent(&c.url, "phoenix", None, &durable_flags(&state));
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    // Exit 3 asks for an early finish (the factfile's `terminateJobWithSuccess`).
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("[slow] after"),
        "output after the restart reaches watchers: {}",
        stdout(&o)
    );
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    let line = status
        .lines()
        .find(|l| l.starts_with("slow "))
        .unwrap_or("");
    assert!(
        line.contains("SUCCEEDED_NO_OP") && line.contains(" 3"),
        "{status}"
    );
    assert_eq!(
        std::fs::read_to_string(&audit).unwrap(),
        "ran\n",
        "ran once"
    );
    assert!(eventually(Duration::from_secs(10), || ends_of(&rx, "slow") == 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ends_of(&rx, "slow"), 1, "{:?}", transitions(&rx.payloads()));
    let p = rx.payloads();
    let states = p.last().unwrap()["data"]["taskStates"].as_array().unwrap();
    let t = states.iter().find(|t| t["taskName"] == "slow").unwrap();
    assert_eq!(
        t["stdout"], "before\nafter",
        "the whole stdout, recorded in its file"
    );
    assert_eq!(t["stderr"], "oops");
    assert!(eventually(Duration::from_secs(5), || pending(&state).is_empty()));
}

#[test]
fn a_task_whose_shell_is_killed_while_its_agent_is_away_is_reported_failed_once() {
    let d = Dir::new();
    let started = d.file("started");
    let command = format!("touch '{}'; sleep 30; echo never", started.display());
    let Away { c, rx, state, id } = run_then_kill_the_agent(&d, "victim", &command, &started);
    // The task's recorder (its shell) and the task, killed before they can record anything.
    let shell = task_shell(&state).expect("the task's shell runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{shell}")])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(eventually(Duration::from_secs(5), || gone(shell)));
    let _second = agent(&c.url, "phoenix", None, &durable_flags(&state));
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("never"));
    assert!(eventually(Duration::from_secs(10), || ends_of(
        &rx, "victim"
    ) == 1));
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    assert!(status.contains("FAILED"), "{status}");
    let p = rx.payloads();
    let text = serde_json::to_string(&p).unwrap();
    assert!(
        text.contains("without recording its exit code"),
        "the failure says why: {text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ends_of(&rx, "victim"),
        1,
        "{:?}",
        transitions(&rx.payloads())
    );
}

#[test]
fn many_short_tasks_under_a_state_dir_all_report_and_leave_nothing_pending() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let state = d.file("state");
    // No full logs: the output goes to files in the state dir, removed once acknowledged.
    let flags = [
        "--state-dir",
        state.to_str().unwrap(),
        "--slots",
        "0",
        "--log-dir",
        "off",
    ];
    let mut first = agent(&c.url, "many", None, &flags);
    wait_for_agents(&c.url, 1);
    let tasks: Vec<_> = (0..300)
        .map(|i| task(&format!("t{i}"), &format!("echo {i}"), &[], &[]))
        .collect();
    let ff = d.write("many.factfile", &factfile("many", tasks));
    let o = run(&["submit", &ff, "--coordinator", &c.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for i in [0, 150, 299] {
        assert!(
            stdout(&o).contains(&format!("[t{i}] {i}\n")),
            "{}",
            stdout(&o)
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || pending(&state).is_empty()),
        "every result acknowledged and forgotten: {:?}",
        pending(&state)
    );
    let outputs = || std::fs::read_dir(state.join("output")).map_or(0, |d| d.count());
    assert!(
        eventually(Duration::from_secs(5), || outputs() == 0),
        "{} output files left",
        outputs()
    );
    // A restart finds nothing to report or adopt, and compacts the journal.
    first.0.kill().unwrap();
    let _ = first.0.wait();
    let _second = agent(&c.url, "many", None, &flags);
    wait_for_agents(&c.url, 1);
    assert!(eventually(Duration::from_secs(5), || std::fs::metadata(
        state.join("journal")
    )
    .is_ok_and(|m| m.len() == 0)));
}
