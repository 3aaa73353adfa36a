//! Every message bounded by design (issue 10, item 1), with a real coordinator and agent.
//!
//! Before: `submit --max-stdouterr-size 10000000` of a task printing 20 MB made a result of
//! ~10 MB, over the 4 MiB a gRPC message could carry; the coordinator dropped the session, the
//! agent re-sent it forever and the run never ended. Now the tails are clamped (with a warning)
//! to what a result can carry, so the run SUCCEEDS over one session. And a task whose lease
//! cannot fit in a message is refused at submit, naming the task.

mod support;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::fleet::{sibling, wait_for_agents, Coordinator, Proc};
use support::*;

/// What a result carries of each stream, at most (`factotum_common::run::MAX_TAIL`).
const MAX_TAIL: usize = 512 * 1024;

/// Runs `factotum <args>`, killing it and failing after `limit`.
fn run_within(args: &[&str], limit: Duration) -> Output {
    let mut child = factotum()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("factotum {args:?} did not end within {limit:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn a_task_printing_20_mb_with_a_10_mb_tail_succeeds_over_one_session() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let agent_log = d.file("agent.log");
    let _agent = Proc(
        Command::new(sibling("factotum-agent"))
            .args(["--coordinator", &c.url, "--name", "big", "--slots", "4"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .expect("the agent starts"),
    );
    wait_for_agents(&c.url, 1);
    let rx = Receiver::start();
    let ff = d.write(
        "big.factfile",
        &factfile(
            "big",
            vec![
                // 20 lines of 1,000,000 bytes: 20 MB.
                task(
                    "big",
                    "for i in $(seq 20); do head -c 1000000 /dev/zero | tr '\\0' a; echo; done",
                    &[],
                    &[],
                ),
                // Another task of the same agent, at the same time.
                task("other", "sleep 1; echo other-done", &[], &[]),
            ],
        ),
    );
    let o = run_within(
        &[
            "submit",
            &ff,
            "--coordinator",
            &c.url,
            "--wait",
            "--max-stdouterr-size",
            "10000000",
            "--webhook",
            &rx.url,
        ],
        Duration::from_secs(120),
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "Warning: --max-stdouterr-size 10000000 is more than a task's result can carry; keeping the last {MAX_TAIL} characters of each stream"
        )),
        "{err}"
    );
    assert_eq!(
        err.matches("Warning: --max-stdouterr-size").count(),
        1,
        "one line: {err}"
    );
    assert!(out.contains("[other] other-done\n"), "the other task ran");
    // The result carried the clamped tail: the last MAX_TAIL characters of the output.
    assert!(eventually(Duration::from_secs(10), || transitions(
        &rx.payloads()
    )
    .contains(&"job RUNNING->SUCCEEDED".to_string())));
    let p = rx.payloads();
    let last = &p.last().expect("webhooks were sent")["data"]["taskStates"];
    let states = last.as_array().unwrap();
    let of = |name: &str| {
        states
            .iter()
            .find(|t| t["taskName"] == name)
            .unwrap_or_else(|| panic!("no task {name}"))
    };
    assert_eq!(of("big")["state"], "SUCCEEDED");
    assert_eq!(of("other")["state"], "SUCCEEDED");
    assert_eq!(of("other")["stdout"], "other-done");
    let tail = of("big")["stdout"].as_str().unwrap();
    assert_eq!(tail.len(), MAX_TAIL);
    assert!(tail.bytes().all(|b| b == b'a' || b == b'\n'));
    // One session: the agent never had to reconnect.
    let connects = std::fs::read_to_string(&agent_log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("connected") && !l.contains("disconnected"))
        .count();
    assert_eq!(
        connects,
        1,
        "the agent reconnected: {}",
        std::fs::read_to_string(&agent_log).unwrap()
    );
    let coordinator_log = std::fs::read_to_string(&c.log).unwrap();
    assert_eq!(
        coordinator_log.matches("agent connected").count(),
        1,
        "{coordinator_log}"
    );

    // The agent still serves: a later run on it can be cancelled, and another one succeeds.
    let sleeper = d.write(
        "sleeper.factfile",
        &factfile("sleeper", vec![task("nap", "sleep 60", &[], &[])]),
    );
    let o = run_within(
        &["submit", &sleeper, "--coordinator", &c.url],
        Duration::from_secs(20),
    );
    let id = stdout(&o).trim().to_string();
    assert!(!id.is_empty(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(10), || stdout(&run(&[
        "status",
        &id,
        "--coordinator",
        &c.url
    ]))
    .contains("state     RUNNING")));
    let o = run_within(
        &["cancel", &id, "--coordinator", &c.url],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run_within(
        &["watch", &id, "--coordinator", &c.url],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let echo = d.write(
        "echo.factfile",
        &factfile("echo", vec![task("hi", "echo hi", &[], &[])]),
    );
    let o = run_within(
        &["submit", &echo, "--coordinator", &c.url, "--wait"],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("[hi] hi\n"), "{}", stdout(&o));
}

#[test]
fn a_task_whose_lease_cannot_fit_in_a_message_is_refused_at_submit_naming_it() {
    let c = Coordinator::start(&["--max-message-size", "4MiB"]);
    let d = Dir::new();
    // Four arguments of 600 KiB: a 2.4 MB command line, over half of a 4 MiB message.
    let arg = "x".repeat(600 * 1024);
    let ff = d.write(
        "long.factfile",
        &factfile(
            "long",
            vec![
                task("short", "echo", &["hi"], &[]),
                task("long one", "echo", &[&arg, &arg, &arg, &arg], &[]),
            ],
        ),
    );
    let o = run_within(
        &["submit", &ff, "--coordinator", &c.url],
        Duration::from_secs(20),
    );
    let err = stderr(&o);
    // An invalid factfile: exit 1, as for the other rendered-size limits.
    assert_eq!(o.status.code(), Some(1), "{}{err}", stdout(&o));
    assert!(err.contains("task 'long one'"), "{err}");
    assert!(err.contains("--max-message-size"), "{err}");
    assert!(
        stdout(&run(&["runs", "--coordinator", &c.url]))
            .lines()
            .count()
            <= 1,
        "nothing was submitted"
    );
}
