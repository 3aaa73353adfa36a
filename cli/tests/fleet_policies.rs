//! Task and job policies in the fleet: the scenarios `factotum run` passes (`policies.rs`) through
//! a real coordinator and agent, plus what only a fleet has: per-task placement across agents,
//! `onLost: retry`, `factotum rerun --from-failed`, cancel, and timers across a failover.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fleet::{agent, wait_for_agents, Coordinator};
use support::policies::{self, ext_factfile, ext_task, Fleet};
use support::*;

/// A coordinator (memory store) with one agent.
fn fleet() -> (Coordinator, support::fleet::Proc) {
    let c = Coordinator::start(&[]);
    let a = agent(&c.url, "a1", None, &["--kill-grace", "1"]);
    wait_for_agents(&c.url, 1);
    (c, a)
}

#[test]
fn a_task_that_fails_twice_then_succeeds_under_three_attempts() {
    let (c, _a) = fleet();
    policies::retry_until_success(&Fleet(&c.url));
}

#[test]
fn on_return_codes_that_do_not_match_are_not_retried() {
    let (c, _a) = fleet();
    policies::retry_codes_that_do_not_match(&Fleet(&c.url));
}

#[test]
fn a_task_timeout_kills_the_remote_process_and_fails_the_task() {
    let (c, _a) = fleet();
    policies::task_timeout(&Fleet(&c.url));
}

#[test]
fn a_job_timeout_fails_the_run() {
    let (c, _a) = fleet();
    policies::job_timeout(&Fleet(&c.url));
}

#[test]
fn continue_on_failure_runs_the_dependents() {
    let (c, _a) = fleet();
    policies::continue_on_failure(&Fleet(&c.url));
}

#[test]
fn several_start_tasks() {
    let (c, _a) = fleet();
    policies::several_starts(&Fleet(&c.url));
}

#[test]
fn env_and_cwd_reach_the_remote_process() {
    let (c, _a) = fleet();
    policies::env_and_cwd(&Fleet(&c.url));
}

#[test]
fn max_parallel_runs_one_at_a_time() {
    let (c, _a) = fleet();
    policies::max_parallel(&Fleet(&c.url));
}

#[test]
fn per_task_host_constraints_place_tasks_across_two_agents() {
    let c = Coordinator::start(&[]);
    let _a1 = agent(&c.url, "a1", Some("etl-1"), &[]);
    let _a2 = agent(&c.url, "a2", Some("etl-2"), &[]);
    wait_for_agents(&c.url, 2);
    let d = Dir::new();
    let on = |name: &str, host: &str, deps: &[&str]| {
        ext_task(
            name,
            "hostname",
            deps,
            json!({"constraints": {"host": host}}),
        )
    };
    let ff = d.write(
        "placed.factfile",
        &ext_factfile(
            "placed",
            vec![
                on("extract", "etl-1", &[]),
                on("load", "etl-2", &["extract"]),
                on("report", "etl-1", &["load"]),
            ],
            json!({}),
        ),
    );
    let rx = Receiver::start();
    let o = run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--wait",
        "--webhook",
        &rx.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for line in ["[extract] etl-1", "[load] etl-2", "[report] etl-1"] {
        assert!(out.contains(line), "{out}");
    }
    policies::assert_iglu_valid(&policies::all_payloads(&rx));
    // A task whose constraint no agent meets waits, and says why.
    let ff = d.write(
        "nowhere.factfile",
        &ext_factfile(
            "nowhere",
            vec![ext_task(
                "t",
                "true",
                &[],
                json!({"constraints": {"labels": {"gpu": "yes"}}}),
            )],
            json!({}),
        ),
    );
    let id = stdout(&run(&["submit", &ff, "--coordinator", &c.url]))
        .trim()
        .to_string();
    assert!(eventually(Duration::from_secs(5), || stdout(&run(&[
        "status",
        &id,
        "--coordinator",
        &c.url
    ]))
    .contains(
        "waiting   task 't': no connected agent has label gpu=yes"
    )));
}

#[test]
fn a_lost_agent_with_on_lost_retry_runs_the_task_again_elsewhere() {
    let c = Coordinator::start(&["--lost-after", "2", "--heartbeat-interval", "0.5"]);
    let mut a1 = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let audit = d.file("audit");
    let ff = d.write(
        "lost.factfile",
        &ext_factfile(
            "lost",
            vec![ext_task(
                "slow",
                &format!(
                    "echo started >> '{}'; [ -e '{}' ] || sleep 30",
                    audit.display(),
                    d.file("second").display()
                ),
                &[],
                json!({"onLost": "retry"}),
            )],
            json!({}),
        ),
    );
    let id = stdout(&run(&["submit", &ff, "--coordinator", &c.url]))
        .trim()
        .to_string();
    assert!(eventually(Duration::from_secs(10), || audit.exists()));
    std::fs::write(d.file("second"), "").unwrap(); // the next attempt ends at once
    let _a2 = agent(&c.url, "a2", None, &[]);
    a1.0.kill().unwrap();
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    assert!(status.contains("SUCCEEDED  2"), "attempt 2 ran: {status}");
    assert!(status.contains(" a2 "), "on the other agent: {status}");
    assert_eq!(std::fs::read_to_string(&audit).unwrap().lines().count(), 2);
}

#[test]
fn cancel_fails_running_tasks_and_skips_the_rest_with_job_cancelled() {
    let (c, _a) = fleet();
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "cancel.factfile",
        &ext_factfile(
            "cancel",
            vec![
                ext_task(
                    "sleeper",
                    &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                    &[],
                    json!({}),
                ),
                ext_task("next", "echo never", &["sleeper"], json!({})),
            ],
            json!({}),
        ),
    );
    let rx = Receiver::start();
    let id = stdout(&run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--webhook",
        &rx.url,
    ]))
    .trim()
    .to_string();
    let pid = read_pid(&pidfile);
    let o = run(&["cancel", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(5), || gone(pid)));
    let p = policies::all_payloads(&rx);
    let last = p.last().unwrap();
    assert_eq!(last["data"]["jobTransition"]["currentState"], "FAILED");
    let states = last["data"]["taskStates"].as_array().unwrap();
    assert_eq!(states[0]["state"], "FAILED");
    assert_eq!(states[1]["state"], "SKIPPED");
    for t in states {
        assert_eq!(t["errorMessage"], "job cancelled");
    }
    policies::assert_iglu_valid(&p);
}

#[test]
fn rerun_from_failed_runs_exactly_the_failed_branch() {
    let (c, _a) = fleet();
    let d = Dir::new();
    let audit = d.file("audit");
    let fixed = d.file("fixed");
    let log = |name: &str| format!("echo {name} >> '{}'", audit.display());
    let ff = d.write(
        "branches.factfile",
        &ext_factfile(
            "branches",
            vec![
                ext_task("setup", &log("setup"), &[], json!({})),
                ext_task(
                    "flaky",
                    &format!("{}; [ -e '{}' ]", log("flaky"), fixed.display()),
                    &["setup"],
                    json!({}),
                ),
                ext_task("after flaky", &log("after-flaky"), &["flaky"], json!({})),
                ext_task("steady", &log("steady"), &["setup"], json!({})),
            ],
            json!({"tags": {"team": "data"}}),
        ),
    );
    let o = run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--wait",
        "--tag",
        "env,prod",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let first = stdout(&run(&["runs", "--coordinator", &c.url]))
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    std::fs::write(&fixed, "").unwrap();
    std::fs::write(&audit, "").unwrap();
    let o = run(&[
        "rerun",
        &first,
        "--from-failed",
        "--coordinator",
        &c.url,
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["flaky", "after-flaky"],
        "only the branch that did not succeed"
    );
    let second = stdout(&run(&["runs", "--coordinator", &c.url]))
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let status = stdout(&run(&["status", &second, "--coordinator", &c.url]));
    assert!(status.contains(&format!("rerun of  {first}")), "{status}");
    assert!(
        status.contains("tags      env=prod, team=data"),
        "same tags: {status}"
    );
    // Nothing left to re-run in a run that succeeded; a run still going is refused too.
    let o = run(&["rerun", &second, "--from-failed", "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("nothing to re-run"), "{}", stderr(&o));
    let o = run(&["rerun", "no-such-run", "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("no run 'no-such-run'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_retry_delay_survives_a_coordinator_failover() {
    let etcd = support::fleet::Etcd::start();
    let first = Coordinator::start(&["--etcd", &etcd.endpoint, "--failover-grace", "10"]);
    let port = first.port();
    let _a = agent(&first.url, "steady", None, &[]);
    wait_for_agents(&first.url, 1);
    let d = Dir::new();
    let counter = d.file("counter");
    let ff = d.write(
        "delayed.factfile",
        &ext_factfile(
            "delayed",
            vec![ext_task(
                "flaky",
                &format!(
                    "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; [ $n -ge 2 ]",
                    c = counter.display()
                ),
                &[],
                json!({"retry": {"attempts": 2, "delaySeconds": 3}}),
            )],
            json!({}),
        ),
    );
    let id = stdout(&run(&["submit", &ff, "--coordinator", &first.url]))
        .trim()
        .to_string();
    // The first attempt failed and its retry time is recorded: the leader dies during the delay.
    assert!(eventually(Duration::from_secs(10), || stdout(&run(&[
        "status",
        &id,
        "--coordinator",
        &first.url
    ]))
    .contains("attempt 2 starts at")));
    drop(first);
    let second = Coordinator::start(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--etcd",
        &etcd.endpoint,
    ]);
    let o = run(&["watch", &id, "--coordinator", &second.url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "2");
}

#[test]
fn a_task_timeout_that_passes_during_a_failover_still_kills_the_task() {
    let etcd = support::fleet::Etcd::start();
    let first = Coordinator::start(&["--etcd", &etcd.endpoint]);
    let port = first.port();
    let _a = agent(&first.url, "steady", None, &[]);
    wait_for_agents(&first.url, 1);
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "timeout.factfile",
        &ext_factfile(
            "timeout across a failover",
            vec![ext_task(
                "sleeper",
                &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                &[],
                json!({"timeout": 2}),
            )],
            json!({}),
        ),
    );
    let id = stdout(&run(&["submit", &ff, "--coordinator", &first.url]))
        .trim()
        .to_string();
    let pid = read_pid(&pidfile);
    drop(first); // the leader dies before the deadline
    std::thread::sleep(Duration::from_secs(3)); // the deadline passes with no leader
    let second = Coordinator::start(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--etcd",
        &etcd.endpoint,
    ]);
    // Killed once the agent re-attaches to the new leader, long before the sleep's 60 s.
    assert!(
        eventually(Duration::from_secs(20), || gone(pid)),
        "the timed-out task outlived the failover"
    );
    let o = run(&["watch", &id, "--coordinator", &second.url]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("Reason: the task timed out after 2s"),
        "{}",
        stderr(&o)
    );
}
