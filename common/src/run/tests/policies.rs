//! Task and job policies of the extended factfile: retries, timeouts, continue-on-failure,
//! `maxParallel`, `onLost`, and timers that survive a restore. Time is synthetic throughout.

use super::restore::recorded;
use super::*;
use serde_json::json;

fn kills(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .count()
}

fn lose(h: &mut Harness, name: &str) -> Vec<Action> {
    let id = h.id(name);
    let attempt = h.run.task(id).unwrap().attempt;
    h.apply(Event::AttemptEnded {
        task: id,
        attempt,
        result: result(Outcome::Lost("agent a1 lost".into()), "", Duration::ZERO),
    })
}

#[test]
fn a_task_that_fails_twice_then_succeeds_is_retried_with_backoff() {
    let mut h = Harness::ext(
        &[
            (
                "a",
                &[],
                json!({"retry": {"attempts": 3, "delaySeconds": 2, "backoff": 2}}),
            ),
            ("b", &["a"], json!({})),
        ],
        json!({}),
    );
    assert_eq!(h.lease_ready(), ["a"]);
    h.finish("a", 1); // at 30 ms (start 10, lease 20)
    assert_eq!(h.state("a"), TaskState::Waiting);
    let rec = h.run.task(h.id("a")).unwrap();
    assert_eq!(rec.return_code, Some(1), "the failed attempt's code");
    assert_eq!(rec.retry_at, Some(t(2_030)));
    let msg = rec.error_message.clone().unwrap();
    assert!(
        msg.starts_with(
            "attempt 1 of 3 failed: the task exited with a value not specified in continue_job - 1"
        ),
        "{msg}"
    );
    assert!(
        msg.ends_with("attempt 2 starts at 2026-01-01T00:00:02.030Z"),
        "{msg}"
    );
    assert!(h.run.ready().is_empty(), "not before the delay");
    assert_eq!(h.run.next_deadline(), Some(t(2_030)));
    h.tick_at(2_029);
    assert!(h.run.ready().is_empty());
    h.tick_at(2_030);
    assert_eq!(h.lease_ready(), ["a"]);
    let rec = h.run.task(h.id("a")).unwrap();
    assert_eq!(
        (rec.attempt, rec.return_code, rec.error_message.clone()),
        (2, None, None)
    );
    h.finish("a", 1); // at 2,050 ms: the second delay is 2 s × 2
    assert_eq!(h.run.task(h.id("a")).unwrap().retry_at, Some(t(6_050)));
    h.tick_at(6_050);
    assert_eq!(h.lease_ready(), ["a"]);
    h.finish("a", 0);
    assert_eq!(h.lease_ready(), ["b"]);
    let end = h.finish("b", 0);
    assert_eq!(finished_state(&end), Some(JobState::Succeeded));
    let tr = h.transitions();
    let a: Vec<&String> = tr.iter().filter(|t| t.starts_with("a ")).collect();
    assert_eq!(
        a,
        [
            "a WAITING->RUNNING",
            "a RUNNING->WAITING",
            "a WAITING->RUNNING",
            "a RUNNING->WAITING",
            "a WAITING->RUNNING",
            "a RUNNING->SUCCEEDED"
        ]
    );
}

#[test]
fn retries_run_out_and_the_last_failure_stands() {
    let mut h = Harness::ext(
        &[
            ("a", &[], json!({"retry": {"attempts": 2}})),
            ("b", &["a"], json!({})),
        ],
        json!({}),
    );
    h.lease_ready();
    h.finish("a", 1);
    assert_eq!(h.run.ready(), [h.id("a")], "no delay: ready at once");
    assert_eq!(h.run.next_deadline(), None);
    h.lease_ready();
    let end = h.finish("a", 1);
    assert_eq!(h.state("a"), TaskState::Failed);
    assert!(h
        .reason("a")
        .unwrap()
        .starts_with("the task exited with a value not specified"));
    assert_eq!(h.state("b"), TaskState::Skipped);
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn only_the_listed_return_codes_are_retried() {
    let mut h = Harness::ext(
        &[(
            "a",
            &[],
            json!({"retry": {"attempts": 5, "onReturnCodes": [75]}}),
        )],
        json!({}),
    );
    h.lease_ready();
    h.finish("a", 75);
    assert_eq!(h.state("a"), TaskState::Waiting, "75 is retried");
    h.lease_ready();
    let end = h.finish("a", 1);
    assert_eq!(h.state("a"), TaskState::Failed, "1 is not");
    assert_eq!(h.run.task(h.id("a")).unwrap().attempt, 2);
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn a_task_timeout_kills_the_attempt_and_fails_it() {
    let mut h = Harness::ext(
        &[
            ("slow", &[], json!({"timeout": 1})),
            ("next", &["slow"], json!({})),
        ],
        json!({}),
    );
    h.lease_ready(); // at 20 ms
    assert_eq!(h.run.next_deadline(), Some(t(1_020)));
    assert_eq!(kills(&h.tick_at(1_019)), 0);
    assert_eq!(kills(&h.tick_at(1_020)), 1);
    assert_eq!(h.run.next_deadline(), None, "armed once");
    assert_eq!(kills(&h.tick_at(2_000)), 0, "killed once");
    // TERM makes the shell exit 1 (a signal counts as 1).
    let end = h.finish("slow", 1);
    assert_eq!(h.state("slow"), TaskState::Failed);
    assert_eq!(h.reason("slow").unwrap(), "the task timed out after 1s");
    assert_eq!(h.reason("next").unwrap(), "the task 'slow' failed");
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn a_timed_out_attempt_is_retried_when_any_failure_is() {
    let mut h = Harness::ext(
        &[("slow", &[], json!({"timeout": 1, "retry": {"attempts": 2}}))],
        json!({}),
    );
    h.lease_ready();
    h.tick_at(1_020);
    h.finish("slow", 0); // even a clean exit after the kill is a timeout
    assert_eq!(h.state("slow"), TaskState::Waiting);
    assert!(h
        .reason("slow")
        .unwrap()
        .contains("the task timed out after 1s"));
    h.lease_ready();
    assert_eq!(
        h.run.next_deadline(),
        Some(t(1_000 + h.now)),
        "a fresh deadline"
    );
}

#[test]
fn a_job_timeout_kills_running_attempts_and_skips_the_rest() {
    let mut h = Harness::ext(
        &[
            ("a", &[], json!({})),
            ("b", &["a"], json!({})),
            (
                "r",
                &[],
                json!({"retry": {"attempts": 3, "delaySeconds": 60}}),
            ),
        ],
        json!({"timeout": 5}),
    );
    h.lease_ready();
    h.finish("r", 1); // waits 60 s for its next attempt
    assert_eq!(
        h.run.next_deadline(),
        Some(t(5_000)),
        "the job deadline comes first"
    );
    let actions = h.tick_at(5_000);
    assert_eq!(kills(&actions), 1);
    assert_eq!(h.run.cancelled(), Some("job timed out"));
    for name in ["b", "r"] {
        assert_eq!(h.state(name), TaskState::Skipped);
        assert_eq!(h.reason(name).unwrap(), "job timed out");
    }
    assert_eq!(h.run.next_deadline(), None);
    let end = h.finish("a", 1);
    assert_eq!(h.state("a"), TaskState::Failed);
    assert_eq!(h.reason("a").unwrap(), "job timed out");
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn continue_on_failure_lets_dependents_run_and_the_job_fails() {
    let mut h = Harness::ext(
        &[
            ("optional", &[], json!({"continueOnFailure": true})),
            ("after", &["optional"], json!({})),
            ("strict", &[], json!({})),
            ("below strict", &["strict"], json!({})),
        ],
        json!({}),
    );
    h.lease_ready();
    h.finish("optional", 2);
    h.finish("strict", 2);
    assert_eq!(h.state("below strict"), TaskState::Skipped);
    assert_eq!(h.lease_ready(), ["after"]);
    let end = h.finish("after", 0);
    assert_eq!(h.state("after"), TaskState::Succeeded);
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn max_parallel_bounds_the_running_tasks() {
    let mut h = Harness::ext(
        &[
            ("a", &[], json!({})),
            ("b", &[], json!({})),
            ("c", &[], json!({})),
        ],
        json!({"maxParallel": 2}),
    );
    assert_eq!(h.run.leasable().len(), 2);
    h.apply(Event::Lease {
        tasks: h.run.ready().to_vec(),
    });
    let running: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|n| h.state(n) == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 2, "a third would exceed maxParallel");
    assert!(h.run.leasable().is_empty());
    h.finish(running[0], 0);
    assert_eq!(h.run.leasable().len(), 1);
}

#[test]
fn a_lost_attempt_is_retried_only_with_on_lost_retry() {
    let mut h = Harness::ext(
        &[
            ("again", &[], json!({"onLost": "retry"})),
            ("once", &[], json!({})),
        ],
        json!({}),
    );
    h.lease_ready();
    lose(&mut h, "again");
    lose(&mut h, "once");
    assert_eq!(h.state("again"), TaskState::Waiting);
    assert!(h
        .reason("again")
        .unwrap()
        .starts_with("attempt 1 of 2 failed: agent a1 lost"));
    assert_eq!(h.state("once"), TaskState::Failed);
    assert_eq!(h.reason("once").unwrap(), "agent a1 lost");
    assert_eq!(h.lease_ready(), ["again"]);
    lose(&mut h, "again");
    assert_eq!(
        h.state("again"),
        TaskState::Failed,
        "counted against the budget"
    );
}

#[test]
fn a_lost_attempt_counts_against_retry_attempts() {
    let mut h = Harness::ext(
        &[(
            "a",
            &[],
            json!({"onLost": "retry", "retry": {"attempts": 3, "onReturnCodes": [9]}}),
        )],
        json!({}),
    );
    h.lease_ready();
    lose(&mut h, "a");
    h.lease_ready();
    h.finish("a", 9);
    h.lease_ready();
    lose(&mut h, "a");
    assert_eq!(h.state("a"), TaskState::Failed, "three attempts in all");
}

#[test]
fn a_stale_result_of_a_retried_attempt_is_ignored() {
    let mut h = Harness::ext(&[("a", &[], json!({"retry": {"attempts": 2}}))], json!({}));
    h.lease_ready();
    h.finish("a", 1);
    h.lease_ready();
    let stale = h.apply(Event::AttemptEnded {
        task: h.id("a"),
        attempt: 1,
        result: result(Outcome::Exited(0), "", Duration::ZERO),
    });
    assert!(stale.is_empty());
    assert_eq!(h.state("a"), TaskState::Running);
}

#[test]
fn cancel_during_a_retry_delay_skips_the_task() {
    let mut h = Harness::ext(
        &[(
            "a",
            &[],
            json!({"retry": {"attempts": 2, "delaySeconds": 30}}),
        )],
        json!({}),
    );
    h.lease_ready();
    h.finish("a", 1);
    let end = h.apply(Event::Cancel {
        reason: "job cancelled".into(),
    });
    assert_eq!(h.state("a"), TaskState::Skipped);
    assert_eq!(h.reason("a").unwrap(), "job cancelled");
    assert_eq!(h.run.task(h.id("a")).unwrap().retry_at, None);
    assert_eq!(finished_state(&end), Some(JobState::Failed));
}

#[test]
fn timers_survive_a_restore() {
    let mut h = Harness::ext(
        &[
            (
                "r",
                &[],
                json!({"retry": {"attempts": 2, "delaySeconds": 10}}),
            ),
            ("slow", &[], json!({"timeout": 3})),
        ],
        json!({"timeout": 100}),
    );
    h.lease_ready();
    h.finish("r", 1);
    let records = recorded(&h.run);
    let plan = Arc::clone(h.run.plan());
    let mut run = RunState::restore(
        plan,
        t(0),
        RunOptions::default(),
        JobState::Running,
        None,
        records,
    );
    // The same deadlines, from recorded facts: slow's start + 3 s, r's retry time.
    assert_eq!(run.next_deadline(), Some(t(3_020)));
    assert!(run.ready().is_empty());
    assert_eq!(kills(&run.apply(Event::Tick, t(3_020))), 1);
    assert_eq!(run.next_deadline(), Some(t(10_030)));
    run.apply(Event::Tick, t(10_030));
    assert_eq!(run.ready().len(), 1);
    assert_eq!(run.next_deadline(), Some(t(100_000)), "then the job's own");
}

#[test]
fn a_rerun_from_failed_takes_what_did_not_succeed_and_its_descendants() {
    let plan = Plan::new(&crate::dag::tests::ff(&[
        ("setup", &[]),
        ("flaky", &["setup"]),
        ("after flaky", &["flaky"]),
        ("steady", &["setup"]),
        ("check", &["setup"]),
        ("below check", &["check"]),
        ("cancelled", &["steady"]),
    ]));
    let id = |n: &str| plan.tasks.iter().position(|t| &*t.name == n).unwrap();
    let mut states = vec![TaskState::Succeeded; plan.len()];
    states[id("flaky")] = TaskState::Failed;
    states[id("after flaky")] = TaskState::Skipped;
    states[id("check")] = TaskState::SucceededNoOp;
    states[id("below check")] = TaskState::Skipped; // the early finish stands
    states[id("cancelled")] = TaskState::Skipped;
    let mut names: Vec<&str> = rerun_set(&plan, &states)
        .into_iter()
        .map(|t| &*plan.tasks[t as usize].name)
        .collect();
    names.sort();
    assert_eq!(names, ["after flaky", "cancelled", "flaky"]);
    assert!(rerun_set(&plan, &vec![TaskState::Succeeded; plan.len()]).is_empty());
}
