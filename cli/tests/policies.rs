//! Task and job policies of the extended factfile with `factotum run` (the fleet runs the same
//! scenarios in `fleet_policies.rs`).

mod support;

use serde_json::json;
use support::policies::{self, ext_factfile, ext_task, Local};
use support::*;

#[test]
fn a_task_that_fails_twice_then_succeeds_under_three_attempts() {
    policies::retry_until_success(&Local);
}

#[test]
fn on_return_codes_that_do_not_match_are_not_retried() {
    policies::retry_codes_that_do_not_match(&Local);
}

#[test]
fn a_task_timeout_kills_the_process_and_fails_the_task() {
    policies::task_timeout(&Local);
}

#[test]
fn a_job_timeout_fails_the_run() {
    policies::job_timeout(&Local);
}

#[test]
fn continue_on_failure_runs_the_dependents() {
    policies::continue_on_failure(&Local);
}

#[test]
fn several_start_tasks() {
    policies::several_starts(&Local);
}

#[test]
fn env_and_cwd_reach_the_process() {
    policies::env_and_cwd(&Local);
}

#[test]
fn max_parallel_runs_one_at_a_time() {
    policies::max_parallel(&Local);
}

#[test]
fn a_task_constraint_this_machine_does_not_meet_is_refused_before_anything_runs() {
    let d = Dir::new();
    let marker = d.file("ran");
    let ff = d.write(
        "placed.factfile",
        &ext_factfile(
            "placed",
            vec![
                ext_task(
                    "here",
                    &format!("touch '{}'", marker.display()),
                    &[],
                    json!({}),
                ),
                ext_task(
                    "elsewhere",
                    "echo",
                    &[],
                    json!({"constraints": {"host": "no-such-host.invalid"}}),
                ),
            ],
            json!({}),
        ),
    );
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("the task 'elsewhere' may only run where host=no-such-host.invalid holds"),
        "{}",
        stderr(&o)
    );
    assert!(!marker.exists());
}

#[test]
fn factfile_tags_merge_with_the_command_line_which_wins() {
    let rx = Receiver::start();
    let d = Dir::new();
    let ff = d.write(
        "tags.factfile",
        &ext_factfile(
            "tags {{tag:env}}",
            vec![ext_task("t", "echo {{tag:team}}", &[], json!({}))],
            json!({"tags": {"env": "dev", "team": "data"}}),
        ),
    );
    let o = run(&["run", &ff, "--tag", "env,prod", "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("[t] data"), "{}", stdout(&o));
    let p = policies::all_payloads(&rx);
    assert_eq!(p[0]["data"]["jobName"], "tags prod");
    assert_eq!(p[0]["data"]["tags"], json!({"env": "prod", "team": "data"}));
    policies::assert_iglu_valid(&p);
}

#[test]
fn extension_fields_are_refused_under_the_snowplow_schema_and_errors_name_the_task() {
    let d = Dir::new();
    let mut t = task("t", "echo", &[], &[]);
    t["timeout"] = json!(5);
    let ff = d.write("snowplow.factfile", &factfile("x", vec![t]));
    let o = run(&["validate", &ff]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("'/data/tasks/0/timeout' - Additional properties are not allowed"),
        "{}",
        stderr(&o)
    );
    let ff = d.write(
        "bad.factfile",
        &ext_factfile(
            "x",
            vec![ext_task(
                "load",
                "echo",
                &[],
                json!({"retry": {"delaySeconds": 1}, "onLost": "maybe"}),
            )],
            json!({"maxParallel": 0}),
        ),
    );
    let o = run(&["validate", &ff]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for want in [
        "'/data/tasks/0/retry/attempts' - This property is required (task 'load')",
        "'/data/tasks/0/onLost' - Enum conditions are not met (the value must be one of \"fail\", \"retry\") (task 'load')",
        "'/data/maxParallel' - Minimum condition is not met (the value must be at least 1)",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let o = run(&[
        "validate",
        &repo().join("samples/policies.factfile").to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
