//! The fleet end to end: a real coordinator, real agents (several hostnames through UTS
//! namespaces), the real CLI, real child processes.

mod support;

use std::time::Duration;

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

/// Waits up to `secs` for `factotum status RUN` to show `text`.
fn status_shows(url: &str, run_id: &str, text: &str, secs: u64) -> bool {
    eventually(Duration::from_secs(secs), || {
        stdout(&run(&["status", run_id, "--coordinator", url])).contains(text)
    })
}

fn submit(url: &str, ff: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["submit", ff, "--coordinator", url];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn submit_wait_streams_like_run_and_exits_with_its_codes() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "solo", None, &[]);
    wait_for_agents(&c.url, 1);
    let echo = repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned();
    let o = submit(&c.url, &echo, &["--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(
            "[say hello] hello\n[say world] world\n[say done] all done!\n3/3 tasks run in "
        ),
        "{out}"
    );
    assert!(
        stderr(&o).contains("Task 'say done': succeeded after "),
        "{}",
        stderr(&o)
    );

    let failing = repo()
        .join("samples/failure-cascade.factfile")
        .to_string_lossy()
        .into_owned();
    let o = submit(&c.url, &failing, &["--wait"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).contains("Factotum job executed abnormally as a task ('flaky') failed"),
        "{}",
        stdout(&o)
    );

    let d = Dir::new();
    let bad = d.write("bad.factfile", "{");
    let o = submit(&c.url, &bad, &["--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a valid factotum factfile: invalid JSON"),
        "{}",
        stderr(&o)
    );
    let o = submit(&c.url, &echo, &["--start", "nope"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("because the task specified could not be found"));
    let o = submit(&c.url, &echo, &["--env", "[1]"]);
    assert_eq!(o.status.code(), Some(3));

    // Without --wait: the run reference, then status shows it done.
    let o = submit(&c.url, &echo, &[]);
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(eventually(Duration::from_secs(10), || stdout(&run(&[
        "status",
        &id,
        "--coordinator",
        &c.url
    ]))
    .contains("state     SUCCEEDED")));
    assert!(stdout(&run(&["runs", "--coordinator", &c.url])).contains(&id));
    assert_eq!(
        run(&["status", "no-such-run", "--coordinator", &c.url])
            .status
            .code(),
        Some(4)
    );

    let o = run(&["submit", &echo, "--coordinator", "http://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("cannot reach the coordinator at http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn host_and_label_constraints_route_tasks() {
    let c = Coordinator::start(&[]);
    let _a1 = agent(&c.url, "a1", Some("etl-1"), &["--label", "zone=eu"]);
    let _a2 = agent(&c.url, "a2", Some("etl-2"), &["--label", "zone=us"]);
    let _a3 = agent(
        &c.url,
        "a3",
        Some("etl-3"),
        &["--label", "zone=us", "--label", "gpu=yes"],
    );
    wait_for_agents(&c.url, 3);
    let d = Dir::new();
    let ff = d.write(
        "where.factfile",
        &factfile("where", vec![task("where", "hostname", &[], &[])]),
    );
    for (constraint, host) in [
        ("host,etl-2", "etl-2"),
        ("host,etl-3", "etl-3"),
        ("label,zone=eu", "etl-1"),
        ("label,gpu=yes", "etl-3"),
    ] {
        let o = submit(&c.url, &ff, &["--wait", "--constraint", constraint]);
        assert_eq!(o.status.code(), Some(0), "{constraint}: {}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("[where] {host}\n")),
            "{constraint}: {}",
            stdout(&o)
        );
    }
    let o = submit(
        &c.url,
        &ff,
        &[
            "--wait",
            "--constraint",
            "label,zone=us",
            "--constraint",
            "host,etl-2",
        ],
    );
    assert!(stdout(&o).contains("[where] etl-2\n"), "{}", stdout(&o));
    let agents = stdout(&run(&["agents", "--coordinator", &c.url]));
    assert!(
        agents.contains("a3") && agents.contains("etl-3") && agents.contains("gpu=yes,zone=us"),
        "{agents}"
    );
}

#[test]
fn a_run_nobody_can_take_waits_with_its_reason_then_runs() {
    let c = Coordinator::start(&[]);
    let _a1 = agent(&c.url, "a1", Some("etl-1"), &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "where.factfile",
        &factfile("where", vec![task("where", "hostname", &[], &[])]),
    );
    let id = stdout(&submit(&c.url, &ff, &["--constraint", "host,etl-9"]))
        .trim()
        .to_string();
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    assert!(status.contains("state     WAITING"), "{status}");
    assert!(
        status.contains("waiting   no connected agent has host=etl-9"),
        "{status}"
    );
    let _a9 = agent(&c.url, "a9", Some("etl-9"), &[]);
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert!(stdout(&o).contains("[where] etl-9"), "{}", stdout(&o));
    assert!(stdout(&run(&["status", &id, "--coordinator", &c.url])).contains("state     SUCCEEDED"));
}

#[test]
fn sticky_keeps_a_run_on_one_agent_and_spread_uses_several() {
    let c = Coordinator::start(&[]);
    let _a1 = agent(&c.url, "a1", Some("etl-1"), &["--slots", "2"]);
    let _a2 = agent(&c.url, "a2", Some("etl-2"), &["--slots", "2"]);
    wait_for_agents(&c.url, 2);
    let d = Dir::new();
    let tasks = (0..6)
        .map(|i| task(&format!("t{i}"), "sleep 0.3; hostname", &[], &[]))
        .collect();
    let ff = d.write("many.factfile", &factfile("many", tasks));
    let hosts = |o: &std::process::Output| {
        let mut h: Vec<String> = stdout(o)
            .lines()
            .filter(|l| l.starts_with("[t"))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect();
        h.sort();
        h.dedup();
        h
    };
    let o = submit(&c.url, &ff, &["--wait"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(hosts(&o).len(), 1, "sticky: {}", stdout(&o));
    let o = submit(&c.url, &ff, &["--wait", "--placement", "spread"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(hosts(&o), ["etl-1", "etl-2"], "spread: {}", stdout(&o));
}

#[test]
fn a_killed_agent_fails_its_tasks_after_lost_after() {
    let c = Coordinator::start(&["--lost-after", "2", "--heartbeat-interval", "0.5"]);
    let mut a = agent(&c.url, "doomed", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "slow.factfile",
        &factfile(
            "slow",
            vec![
                task("slow", "sleep 30", &[], &[]),
                task("after", "echo", &["no"], &["slow"]),
            ],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    assert!(status_shows(&c.url, &id, "RUNNING", 10));
    // SIGKILL; the run fails within --lost-after (2 s) plus a few seconds.
    a.0.kill().unwrap();
    let failed = eventually(Duration::from_secs(6), || {
        stdout(&run(&["status", &id, "--coordinator", &c.url])).contains("state     FAILED")
    });
    assert!(
        failed,
        "{}",
        stdout(&run(&["status", &id, "--coordinator", &c.url]))
    );
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("Task 'slow': failed after 0.0s. Reason: agent doomed lost"),
        "{}",
        stderr(&o)
    );
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    assert!(status.contains("state     FAILED"), "{status}");
    assert!(status.contains("the task 'slow' failed"), "{status}");
}

#[test]
fn cancel_kills_the_remote_process_group() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "a1", None, &["--kill-grace", "0.5"]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "c.factfile",
        &factfile(
            "cancel me",
            vec![task(
                "sleeper",
                &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                &[],
                &[],
            )],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    let pid = read_pid(&pidfile);
    let o = run(&["cancel", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(2));
    let ended = eventually(Duration::from_secs(5), || gone(pid));
    assert!(ended, "the task's child {pid} survived the cancel");
}

#[test]
fn webhooks_from_the_coordinator_and_the_run() {
    let global = Receiver::start();
    let own = Receiver::start();
    let c = Coordinator::start(&["--webhook", &global.url]);
    let _a = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let o = submit(
        &c.url,
        &shared("factotum-samples/echo.factfile"),
        &[
            "--wait",
            "--webhook",
            &own.url,
            "--tag",
            "env,prod",
            "--tag",
            "client,acme",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    for rx in [&global, &own] {
        assert!(eventually(Duration::from_secs(10), || rx.payloads().len() == 9));
        let p = rx.payloads();
        assert_eq!(transitions(&p)[0], "job null->WAITING");
        assert_eq!(transitions(&p)[8], "job RUNNING->SUCCEEDED");
        assert_eq!(
            p[0]["data"]["jobReference"],
            "a5cdf01736c054d8ad5f38d750b4a529c5fb03e7ba34a5394314e50bbdd0e3ee"
        );
    }
}

#[test]
fn an_agent_cut_off_mid_task_reattaches_without_running_it_twice() {
    let c = Coordinator::start(&["--lost-after", "10", "--heartbeat-interval", "0.5"]);
    let proxy = support::fleet::Proxy::start(c.url.trim_start_matches("http://"));
    let _a = agent(&proxy.url(), "flaky-net", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    // `long` outlives the outage; `short` ends during it, so its result waits for the reconnect.
    let ff = d.write(
        "cut.factfile",
        &factfile(
            "cut",
            vec![
                task("long", &format!("echo long >> '{a}'; sleep 2.5"), &[], &[]),
                task(
                    "short",
                    &format!("echo short >> '{a}'; sleep 0.5"),
                    &[],
                    &[],
                ),
                task(
                    "after",
                    &format!("echo after >> '{a}'"),
                    &[],
                    &["long", "short"],
                ),
            ],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.lines().count() == 2)
    }));
    proxy.cut();
    let agents = || stdout(&run(&["agents", "--coordinator", &c.url]));
    assert!(
        eventually(Duration::from_secs(5), || agents().contains("disconnected")),
        "{}",
        agents()
    );
    std::thread::sleep(Duration::from_millis(1000));
    proxy.restore();
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let mut lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["after", "long", "short"],
        "every task ran exactly once"
    );
}

#[test]
fn the_coordinator_refuses_a_public_address_without_insecure() {
    let o = std::process::Command::new(support::fleet::sibling("factotum-coordinator"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "{err}");
    let help = std::process::Command::new(support::fleet::sibling("factotum-coordinator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        stdout(&help).contains("--insecure") && stdout(&help).contains("FACTOTUM_LISTEN"),
        "{}",
        stdout(&help)
    );
}

#[test]
fn a_draining_agent_stops_a_task_still_running_after_the_drain_grace_and_reports_it() {
    let c = Coordinator::start(&[]);
    let mut a = agent(
        &c.url,
        "leaving",
        None,
        &["--drain-grace", "1", "--kill-grace", "0.5"],
    );
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "long.factfile",
        &factfile(
            "long",
            vec![task(
                "long",
                &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                &[],
                &[],
            )],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    let pid = read_pid(&pidfile);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || gone(pid)),
        "the task outlived the drain grace"
    );
    assert!(eventually(Duration::from_secs(10), || matches!(
        a.0.try_wait(),
        Ok(Some(_))
    )));
    assert!(
        status_shows(&c.url, &id, "state     FAILED", 5),
        "the stopped task was reported: {}",
        stdout(&run(&["status", &id, "--coordinator", &c.url]))
    );
}

#[test]
fn sigterm_drains_an_agent_its_running_task_finishes_and_nothing_new_starts() {
    let c = Coordinator::start(&[]);
    let mut a = agent(&c.url, "leaving", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "drain.factfile",
        &factfile(
            "drain",
            vec![
                task("running", "sleep 1.5; echo finished", &[], &[]),
                task("next", "echo", &["next"], &["running"]),
            ],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    assert!(status_shows(&c.url, &id, "RUNNING", 10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        matches!(a.0.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the draining agent did not exit");
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    let row = |task: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{task} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("running").contains("SUCCEEDED"),
        "the running task finished and was reported: {status}"
    );
    assert!(
        row("next").contains("WAITING"),
        "nothing new went to the draining agent: {status}"
    );
    assert!(
        status.contains("waiting   no agent is connected"),
        "{status}"
    );
    // Another agent picks the run up.
    let _b = agent(&c.url, "arriving", None, &[]);
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_agent_cut_off_too_long_stops_its_tasks_and_reports_them_when_back() {
    let c = Coordinator::start(&["--lost-after", "30", "--heartbeat-interval", "0.5"]);
    let proxy = support::fleet::Proxy::start(c.url.trim_start_matches("http://"));
    let _a = agent(
        &proxy.url(),
        "isolated",
        None,
        &["--disconnect-limit", "0.5", "--kill-grace", "0.2"],
    );
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "long.factfile",
        &factfile(
            "long",
            vec![task(
                "long",
                &format!("echo $$ > '{}'; sleep 30", pidfile.display()),
                &[],
                &[],
            )],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    let pid = read_pid(&pidfile);
    proxy.cut();
    let killed = eventually(Duration::from_secs(10), || gone(pid));
    assert!(killed, "the agent did not stop its task while cut off");
    proxy.restore();
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Task 'long': failed after"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_agent_restarted_mid_task_adopts_its_tasks_without_running_them_twice() {
    let c = Coordinator::start(&["--lost-after", "20", "--heartbeat-interval", "0.5"]);
    let d = Dir::new();
    let state = d.file("state");
    let state_arg = state.to_string_lossy().into_owned();
    let mut first = agent(&c.url, "phoenix", None, &["--state-dir", &state_arg]);
    wait_for_agents(&c.url, 1);
    // The state dir holds leases and their environments: the agent's user only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let audit = d.file("audit");
    let a = audit.display();
    // `long` still runs when the agent comes back; `short` ends while it is away.
    let ff = d.write(
        "restart.factfile",
        &factfile(
            "restart",
            vec![
                task(
                    "long",
                    &format!(
                        "echo long >> '{a}'; sleep 2.5; echo long-out; echo long-end >> '{a}'"
                    ),
                    &[],
                    &[],
                ),
                task(
                    "short",
                    &format!("echo short >> '{a}'; sleep 0.3; echo short-end >> '{a}'; exit 3"),
                    &[],
                    &[],
                ),
                task("after", &format!("echo after >> '{a}'"), &[], &["long"]),
            ],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &["--placement", "spread"]))
        .trim()
        .to_string();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.lines().count() == 2)
    }));
    first.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    let _ = first.0.wait();
    std::thread::sleep(Duration::from_millis(800));
    let _second = agent(&c.url, "phoenix", None, &["--state-dir", &state_arg]);
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("[long] long-out"),
        "output of the adopted task reaches watchers: {}",
        stdout(&o)
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["after", "long", "long-end", "short", "short-end"],
        "every task ran exactly once"
    );
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    let short = status
        .lines()
        .find(|l| l.starts_with("short "))
        .unwrap_or_default()
        .to_string();
    assert!(
        short.contains("SUCCEEDED_NO_OP") && short.contains(" 3"),
        "the result recorded while away counts: {status}"
    );
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_dir(
            state.join("attempts")
        )
        .map(|d| d.count())
        .unwrap_or(1)
            == 0),
        "acknowledged attempts are cleaned up"
    );
}

#[test]
fn a_coordinator_killed_mid_run_is_replaced_from_etcd_and_nothing_runs_twice() {
    let etcd = support::fleet::Etcd::start();
    let hooks = Receiver::start();
    let first = Coordinator::start(&[
        "--etcd",
        &etcd.endpoint,
        "--webhook",
        &hooks.url,
        "--failover-grace",
        "20",
    ]);
    let port = first.port();
    let _a = agent(&first.url, "steady", None, &[]);
    wait_for_agents(&first.url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    let ff = d.write(
        "durable.factfile",
        &factfile(
            "durable",
            vec![
                task("one", &format!("echo one >> '{a}'; sleep 2"), &[], &[]),
                task("two", &format!("echo two >> '{a}'"), &[], &["one"]),
            ],
        ),
    );
    let quick = d.write(
        "quick.factfile",
        &factfile("quick", vec![task("q", "true", &[], &[])]),
    );
    let done_before = stdout(&submit(&first.url, &quick, &["--wait"]));
    assert!(done_before.contains("1/1 tasks run"), "{done_before}");
    let finished_id = stdout(&run(&["runs", "--coordinator", &first.url]))
        .lines()
        .find(|l| l.contains(" quick "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let id = stdout(&submit(&first.url, &ff, &[])).trim().to_string();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.contains("one"))
    }));
    drop(first); // SIGKILL, mid-task
    let second = Coordinator::start(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--etcd",
        &etcd.endpoint,
        "--webhook",
        &hooks.url,
    ]);
    let o = run(&["watch", &id, "--coordinator", &second.url]);
    let log = std::fs::read_to_string(&second.log).unwrap_or_default();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}\nthe new coordinator's log:\n{log}",
        stdout(&o),
        stderr(&o)
    );
    let lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        ["one", "two"],
        "the running task was adopted, not restarted"
    );
    let status = stdout(&run(&["status", &id, "--coordinator", &second.url]));
    assert!(status.contains("state     SUCCEEDED"), "{status}");
    let before = stdout(&run(&[
        "status",
        &finished_id,
        "--coordinator",
        &second.url,
    ]));
    assert!(
        before.contains("state     SUCCEEDED"),
        "a run finished before the failover is still known: {before}"
    );
    // Every transition reached the webhook at least once; in order once deduplicated by event id.
    assert!(eventually(Duration::from_secs(10), || transitions(
        &rx_dedup(&hooks)
    )
    .last()
    .is_some_and(|t| t == "job RUNNING->SUCCEEDED")));
    let t = transitions(&rx_dedup_run(&hooks, &id));
    assert_eq!(
        t,
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "one WAITING->RUNNING",
            "one RUNNING->SUCCEEDED",
            "two WAITING->RUNNING",
            "two RUNNING->SUCCEEDED",
            "job RUNNING->SUCCEEDED"
        ]
    );
}

/// Payloads deduplicated by their `webhook-id`, in arrival order.
fn rx_dedup(rx: &Receiver) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    rx.received()
        .into_iter()
        .filter(|r| seen.insert(r.header("webhook-id").unwrap_or_default().to_string()))
        .map(|r| r.json())
        .collect()
}

/// The same, for one run only.
fn rx_dedup_run(rx: &Receiver, run: &str) -> Vec<serde_json::Value> {
    rx_dedup(rx)
        .into_iter()
        .filter(|p| p["data"]["runReference"] == run)
        .collect()
}

/// Three coordinators on one etcd: which one leads.
fn the_leader(cs: &[Coordinator]) -> usize {
    let mut found = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            found = cs.iter().position(Coordinator::leads);
            found.is_some()
        }),
        "no coordinator became the leader"
    );
    found.unwrap()
}

fn three_coordinators(etcd: &support::fleet::Etcd, extra: &[&str]) -> Vec<Coordinator> {
    let mut args = vec![
        "--etcd",
        etcd.endpoint.as_str(),
        "--lease-ttl",
        "2",
        "--failover-grace",
        "15",
    ];
    args.extend_from_slice(extra);
    let first = Coordinator::start(&args);
    assert!(
        eventually(Duration::from_secs(10), || first.leads()),
        "the first coordinator did not lead"
    );
    vec![first, Coordinator::start(&args), Coordinator::start(&args)]
}

#[test]
fn killing_the_leader_of_three_mid_run_loses_and_duplicates_nothing() {
    let etcd = support::fleet::Etcd::start();
    let hooks = Receiver::start();
    let mut cs = three_coordinators(&etcd, &["--webhook", &hooks.url]);
    let leader = the_leader(&cs);
    let follower = (leader + 1) % 3;
    // The agent and the client both start at a follower: they are sent to the leader.
    let _a = agent(&cs[follower].url, "loyal", None, &[]);
    wait_for_agents(&cs[follower].url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    let ff = d.write(
        "chain.factfile",
        &factfile(
            "chain of sleeps",
            vec![
                task("s1", &format!("echo s1 >> '{a}'; sleep 1.5"), &[], &[]),
                task("s2", &format!("echo s2 >> '{a}'; sleep 1.5"), &[], &["s1"]),
                task("s3", &format!("echo s3 >> '{a}'"), &[], &["s2"]),
            ],
        ),
    );
    let id = stdout(&submit(&cs[follower].url, &ff, &[]))
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.contains("s1"))
    }));
    let dead = cs.remove(leader); // kill -9 of the leader, mid-task
    drop(dead);
    let o = run(&["watch", &id, "--coordinator", &cs[0].url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(cs.iter().any(Coordinator::leads), "a standby took over");
    let lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        ["s1", "s2", "s3"],
        "each task's process started exactly once"
    );
    assert!(eventually(Duration::from_secs(15), || {
        transitions(&rx_dedup(&hooks))
            .last()
            .is_some_and(|t| t == "job RUNNING->SUCCEEDED")
    }));
    assert_eq!(
        transitions(&rx_dedup(&hooks)),
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "s1 WAITING->RUNNING",
            "s1 RUNNING->SUCCEEDED",
            "s2 WAITING->RUNNING",
            "s2 RUNNING->SUCCEEDED",
            "s3 WAITING->RUNNING",
            "s3 RUNNING->SUCCEEDED",
            "job RUNNING->SUCCEEDED"
        ],
        "every transition, in order once deduplicated by event id"
    );
}

#[test]
fn sigterm_on_the_leader_hands_over_to_a_standby_at_once() {
    let etcd = support::fleet::Etcd::start();
    let mut cs = three_coordinators(&etcd, &[]);
    let leader = the_leader(&cs);
    let pid = nix::unistd::Pid::from_raw(cs[leader].proc.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let old = cs.remove(leader);
    // Well under the 2 s lease: the leader resigned instead of letting its lease expire.
    assert!(
        eventually(Duration::from_millis(1500), || cs
            .iter()
            .any(Coordinator::leads)),
        "no quick handover"
    );
    let mut old = old;
    let exited = eventually(Duration::from_secs(10), || {
        matches!(old.proc.0.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the old leader did not exit");
    assert_eq!(
        old.proc.0.try_wait().unwrap().and_then(|s| s.code()),
        Some(0)
    );
    let o = run(&[
        "runs",
        "--coordinator",
        &old.url
            .replace(&old.port().to_string(), &cs[0].port().to_string()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_paused_leader_steps_down_when_it_wakes_up_and_follows_again() {
    let etcd = support::fleet::Etcd::start();
    let mut cs = three_coordinators(&etcd, &[]);
    let leader = the_leader(&cs);
    let pid = nix::unistd::Pid::from_raw(cs[leader].proc.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut paused = cs.remove(leader);
    assert!(
        eventually(Duration::from_secs(10), || cs
            .iter()
            .any(Coordinator::leads)),
        "no standby took over"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // It notices it no longer leads and campaigns again as a follower: it does not exit.
    let log = || std::fs::read_to_string(&paused.log).unwrap_or_default();
    let following = eventually(Duration::from_secs(10), || {
        let log = log();
        log.contains("stepping down to follow")
            && log.matches("campaigning for leadership").count() >= 2
    });
    assert!(
        following,
        "the deposed leader did not follow again: {}",
        log()
    );
    assert!(
        matches!(paused.proc.0.try_wait(), Ok(None)),
        "the deposed leader exited: {}",
        log()
    );
    // As a follower it still answers: the CLI is sent on to the new leader.
    let o = run(&["runs", "--coordinator", &paused.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_second_run_of_an_active_job_is_refused_and_idempotency_keys_return_the_first() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "slow.factfile",
        &factfile("slow", vec![task("slow", "sleep 3", &[], &[])]),
    );
    let first = stdout(&submit(&c.url, &ff, &["--tag", "env,prod"]))
        .trim()
        .to_string();
    let o = submit(&c.url, &ff, &["--tag", "env,prod"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains(&format!("still active: {first}")),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--allow-concurrent"), "{}", stderr(&o));
    // Other tags make another job; --allow-concurrent starts a second run anyway.
    let other = stdout(&submit(&c.url, &ff, &["--tag", "env,dev"]))
        .trim()
        .to_string();
    assert_eq!(other.len(), 64);
    let second = stdout(&submit(
        &c.url,
        &ff,
        &["--tag", "env,prod", "--allow-concurrent"],
    ))
    .trim()
    .to_string();
    assert!(second.len() == 64 && second != first);
    // The same idempotency key twice: one run.
    let ff2 = d.write(
        "once.factfile",
        &factfile("once", vec![task("once", "sleep 1", &[], &[])]),
    );
    let k1 = stdout(&submit(
        &c.url,
        &ff2,
        &["--idempotency-key", "nightly-2026-11-23"],
    ))
    .trim()
    .to_string();
    let k2 = stdout(&submit(
        &c.url,
        &ff2,
        &["--idempotency-key", "nightly-2026-11-23"],
    ))
    .trim()
    .to_string();
    assert_eq!(k1.len(), 64);
    assert_eq!(k1, k2, "a repeated key returns the first run");
    let runs = stdout(&run(&["runs", "--coordinator", &c.url]));
    assert_eq!(
        runs.lines().filter(|l| l.contains(" once ")).count(),
        1,
        "{runs}"
    );
}

#[test]
fn an_etcd_outage_refuses_submissions_pauses_dispatch_and_loses_nothing() {
    let mut etcd = support::fleet::Etcd::start();
    let c = Coordinator::start(&["--etcd", &etcd.endpoint, "--lease-ttl", "20"]);
    assert!(eventually(Duration::from_secs(10), || c.leads()));
    let _a = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let a = audit.display();
    let ff = d.write(
        "pair.factfile",
        &factfile(
            "pair",
            vec![
                task("first", &format!("echo first >> '{a}'; sleep 1"), &[], &[]),
                task("second", &format!("echo second >> '{a}'"), &[], &["first"]),
            ],
        ),
    );
    let id = stdout(&submit(&c.url, &ff, &[])).trim().to_string();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).is_ok_and(|s| s.contains("first"))
    }));
    etcd.kill();
    let other = d.write(
        "other.factfile",
        &factfile("other", vec![task("x", "true", &[], &[])]),
    );
    let o = submit(&c.url, &other, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    assert!(stderr(&o).contains("unavailable"), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(2000)); // `first` ends meanwhile
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        lines.trim(),
        "first",
        "nothing is dispatched while its lease cannot be recorded"
    );
    etcd.restart();
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines, ["first", "second"]);
    let o = submit(&c.url, &other, &["--wait"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "submissions are accepted again: {}",
        stderr(&o)
    );
}
