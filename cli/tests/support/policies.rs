//! Scenarios of the extended factfile's task and job policies, each run through a `Runner`:
//! `factotum run` locally, or `factotum submit --wait` to a coordinator with agents. The same
//! assertions hold for both, because the same engine decides.
#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub const EXTENDED: &str = "iglu:io.factotum/factfile/jsonschema/1-0-0";

/// Runs a factfile to its end with extra arguments (`--webhook`, `--start`, ...).
pub trait Runner {
    fn run(&self, factfile: &str, extra: &[&str]) -> Output;
}

/// `factotum run`.
pub struct Local;

impl Runner for Local {
    fn run(&self, factfile: &str, extra: &[&str]) -> Output {
        let mut args = vec!["run", factfile];
        args.extend_from_slice(extra);
        run(&args)
    }
}

/// `factotum submit --wait` to this coordinator.
pub struct Fleet<'a>(pub &'a str);

impl Runner for Fleet<'_> {
    fn run(&self, factfile: &str, extra: &[&str]) -> Output {
        let mut args = vec!["submit", factfile, "--coordinator", self.0, "--wait"];
        args.extend_from_slice(extra);
        run(&args)
    }
}

/// A task of the extended schema: `task(..)` plus `extra` fields.
pub fn ext_task(name: &str, command: &str, deps: &[&str], extra: Value) -> Value {
    let mut t = task(name, command, &[], deps);
    for (k, v) in extra.as_object().into_iter().flatten() {
        t[k] = v.clone();
    }
    t
}

/// An extended factfile with `job` fields added to `data`.
pub fn ext_factfile(name: &str, tasks: Vec<Value>, job: Value) -> String {
    let mut data = json!({"name": name, "tasks": tasks});
    for (k, v) in job.as_object().into_iter().flatten() {
        data[k] = v.clone();
    }
    serde_json::to_string_pretty(&json!({"schema": EXTENDED, "data": data})).unwrap()
}

/// Every payload validates against the upstream Iglu schemas (`../shared/tools/iglu-validate`).
pub fn assert_iglu_valid(payloads: &[Value]) {
    assert!(!payloads.is_empty(), "no payloads");
    let d = Dir::new();
    let lines: Vec<String> = payloads.iter().map(|p| p.to_string()).collect();
    let file = d.write("payloads.jsonl", &(lines.join("\n") + "\n"));
    let o = std::process::Command::new("python3")
        .arg(shared("tools/iglu-validate"))
        .arg(&file)
        .output()
        .expect("python3 runs iglu-validate");
    assert!(
        o.status.success(),
        "payloads do not validate: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Waits for the receiver to hold the run's last `job_update` and returns the payloads.
pub fn all_payloads(rx: &Receiver) -> Vec<Value> {
    let done = |p: &Vec<Value>| {
        p.iter().any(|p| {
            matches!(
                p["data"]["jobTransition"]["currentState"].as_str(),
                Some("SUCCEEDED" | "FAILED")
            )
        })
    };
    eventually(Duration::from_secs(15), || done(&rx.payloads()));
    rx.payloads()
}

fn counter_command(counter: &std::path::Path, succeed_from: u32) -> String {
    format!(
        "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; echo \"attempt $n\"; [ $n -ge {succeed_from} ]",
        c = counter.display()
    )
}

/// A task that fails twice then succeeds, under `retry.attempts: 3`: the job succeeds, the
/// command ran three times, and the webhooks show RUNNING → WAITING with each failed attempt.
pub fn retry_until_success(r: &dyn Runner) {
    let d = Dir::new();
    let counter = d.file("counter");
    let ff = d.write(
        "retry.factfile",
        &ext_factfile(
            "retry",
            vec![
                ext_task(
                    "flaky",
                    &counter_command(&counter, 3),
                    &[],
                    json!({"retry": {"attempts": 3, "delaySeconds": 0.2, "backoff": 2}}),
                ),
                ext_task("after", "echo after flaky", &["flaky"], json!({})),
            ],
            json!({}),
        ),
    );
    let rx = Receiver::start();
    let o = r.run(&ff, &["--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let err = stderr(&o);
    assert_eq!(err.matches("will retry").count(), 2, "{err}");
    assert!(err.contains("attempt 1 of 3 failed"), "{err}");
    assert!(stdout(&o).contains("[after] after flaky"), "{}", stdout(&o));
    let p = all_payloads(&rx);
    let flaky: Vec<String> = transitions(&p)
        .into_iter()
        .filter(|t| t.starts_with("flaky "))
        .collect();
    assert_eq!(
        flaky,
        [
            "flaky WAITING->RUNNING",
            "flaky RUNNING->WAITING",
            "flaky WAITING->RUNNING",
            "flaky RUNNING->WAITING",
            "flaky WAITING->RUNNING",
            "flaky RUNNING->SUCCEEDED"
        ]
    );
    // The retry transition carries the failed attempt's code and when the next one starts.
    let retry = p
        .iter()
        .find(|p| p["data"]["taskTransitions"][0]["currentState"] == "WAITING")
        .unwrap();
    let state = &retry["data"]["taskStates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskName"] == "flaky")
        .unwrap();
    assert_eq!(state["returnCode"], 1);
    let msg = state["errorMessage"].as_str().unwrap();
    assert!(
        msg.starts_with("attempt 1 of 3 failed: ") && msg.contains("; attempt 2 starts at "),
        "{msg}"
    );
    assert_iglu_valid(&p);
}

/// `onReturnCodes` that does not list the code: no retry.
pub fn retry_codes_that_do_not_match(r: &dyn Runner) {
    let d = Dir::new();
    let counter = d.file("counter");
    let ff = d.write(
        "codes.factfile",
        &ext_factfile(
            "codes",
            vec![ext_task(
                "fails with 1",
                &counter_command(&counter, 99),
                &[],
                json!({"retry": {"attempts": 3, "onReturnCodes": [75]}}),
            )],
            json!({}),
        ),
    );
    let o = r.run(&ff, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "1");
    assert!(!stderr(&o).contains("will retry"), "{}", stderr(&o));
}

/// A `sleep 60` with `timeout: 1` ends FAILED within seconds, and its process is gone.
pub fn task_timeout(r: &dyn Runner) {
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "timeout.factfile",
        &ext_factfile(
            "timeout",
            vec![
                ext_task(
                    "sleeper",
                    &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                    &[],
                    json!({"timeout": 1}),
                ),
                ext_task("after", "echo never", &["sleeper"], json!({})),
            ],
            json!({}),
        ),
    );
    let rx = Receiver::start();
    let o = r.run(&ff, &["--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("Task 'sleeper': failed after")
            && err.contains("Reason: the task timed out after 1s"),
        "{err}"
    );
    let pid = read_pid(&pidfile);
    assert!(
        eventually(Duration::from_secs(5), || gone(pid)),
        "the sleep {pid} survived the timeout"
    );
    let p = all_payloads(&rx);
    assert!(
        transitions(&p).contains(&"sleeper RUNNING->FAILED | after WAITING->SKIPPED".to_string())
    );
    // The attempt's recorded duration: the timeout and the TERM, not the 60 s sleep. It is
    // measured from the spawn, a little after the lease the timeout counts from: under 1 s is fine.
    let sleeper = &p.last().unwrap()["data"]["taskStates"][0];
    let secs: f64 = sleeper["duration"]
        .as_str()
        .and_then(|d| d.strip_prefix("PT")?.strip_suffix('S')?.parse().ok())
        .unwrap_or_else(|| panic!("{sleeper}"));
    assert!((0.5..10.0).contains(&secs), "{sleeper}");
    assert_iglu_valid(&p);
}

/// A job timeout: the running attempt is killed and FAILED, the rest SKIPPED, all with
/// `job timed out`.
pub fn job_timeout(r: &dyn Runner) {
    let d = Dir::new();
    let pidfile = d.file("pid");
    let ff = d.write(
        "job-timeout.factfile",
        &ext_factfile(
            "job timeout",
            vec![
                ext_task(
                    "long",
                    &format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
                    &[],
                    json!({}),
                ),
                ext_task("next", "echo never", &["long"], json!({})),
            ],
            json!({"timeout": 1}),
        ),
    );
    let rx = Receiver::start();
    let o = r.run(&ff, &["--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Reason: job timed out"),
        "{}",
        stderr(&o)
    );
    let pid = read_pid(&pidfile);
    assert!(eventually(Duration::from_secs(5), || gone(pid)));
    let p = all_payloads(&rx);
    let last = p.last().unwrap();
    assert_eq!(last["data"]["jobTransition"]["currentState"], "FAILED");
    for t in last["data"]["taskStates"].as_array().unwrap() {
        assert_eq!(t["errorMessage"], "job timed out", "{t}");
    }
    assert_iglu_valid(&p);
}

/// `continueOnFailure`: the dependent runs, the job still ends FAILED.
pub fn continue_on_failure(r: &dyn Runner) {
    let d = Dir::new();
    let ff = d.write(
        "continue.factfile",
        &ext_factfile(
            "continue",
            vec![
                ext_task(
                    "optional",
                    "exit 4",
                    &[],
                    json!({"continueOnFailure": true}),
                ),
                ext_task("report", "echo report ran", &["optional"], json!({})),
            ],
            json!({}),
        ),
    );
    let rx = Receiver::start();
    let o = r.run(&ff, &["--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stdout(&o).contains("[report] report ran"), "{}", stdout(&o));
    let p = all_payloads(&rx);
    assert!(transitions(&p).contains(&"report RUNNING->SUCCEEDED".to_string()));
    assert_eq!(
        p.last().unwrap()["data"]["jobTransition"]["currentState"],
        "FAILED"
    );
    assert_iglu_valid(&p);
}

/// `--start A --start B`: both sub-trees (and the join below them), nothing else.
pub fn several_starts(r: &dyn Runner) {
    let d = Dir::new();
    let ff = d.write(
        "starts.factfile",
        &ext_factfile(
            "starts",
            vec![
                ext_task("root", "echo root", &[], json!({})),
                ext_task("a", "echo a", &["root"], json!({})),
                ext_task("b", "echo b", &["root"], json!({})),
                ext_task("join", "echo join", &["a", "b"], json!({})),
                ext_task("other", "echo other", &["root"], json!({})),
            ],
            json!({}),
        ),
    );
    let o = r.run(&ff, &["--start", "a", "--start", "b"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for ran in ["[a] a", "[b] b", "[join] join"] {
        assert!(out.contains(ran), "{out}");
    }
    for not in ["[root]", "[other]"] {
        assert!(!out.contains(not), "{out}");
    }
    assert!(out.contains("3/3 tasks run"), "{out}");
    // One start alone would trigger the join without b: Factotum's rule refuses it.
    let o = r.run(&ff, &["--start", "a"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("The job cannot be started from 'a' because the job cannot be started here without triggering prior tasks"),
        "{}",
        stderr(&o)
    );
}

/// `env` (templated) and `cwd` reach the process.
pub fn env_and_cwd(r: &dyn Runner) {
    let d = Dir::new();
    let workdir = d.path().canonicalize().unwrap();
    let ff = d.write(
        "env.factfile",
        &ext_factfile(
            "env",
            vec![ext_task(
                "show",
                "echo \"$GREETING from $(pwd)\"",
                &[],
                json!({"env": {"GREETING": "hello {{who}}"}, "cwd": workdir.to_string_lossy()}),
            )],
            json!({}),
        ),
    );
    let o = r.run(&ff, &["--env", "{\"who\": \"world\"}", "--no-redact"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("[show] hello world from {}", workdir.display())),
        "{}",
        stdout(&o)
    );
    // By default the env value (and the `--env` value in it) shows redacted.
    let o = r.run(&ff, &["--env", "{\"who\": \"world\"}"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("[show] [redacted] from {}", workdir.display())),
        "{}",
        stdout(&o)
    );
}

/// `maxParallel: 1` runs independent tasks one at a time.
pub fn max_parallel(r: &dyn Runner) {
    let d = Dir::new();
    let log = d.file("log");
    let step = |n: &str| {
        ext_task(
            n,
            &format!(
                "echo start >> '{l}'; sleep 0.2; echo end >> '{l}'",
                l = log.display()
            ),
            &[],
            json!({}),
        )
    };
    let ff = d.write(
        "parallel.factfile",
        &ext_factfile(
            "parallel",
            vec![step("one"), step("two"), step("three")],
            json!({"maxParallel": 1}),
        ),
    );
    let o = r.run(&ff, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["start", "end", "start", "end", "start", "end"],
        "tasks overlapped"
    );
}
