//! Client commands given several coordinators, and duration flags with units.

mod support;

use support::fleet::Coordinator;
use support::*;

/// Nothing listens on port 1 of loopback: connection refused at once.
const NOWHERE: &str = "http://127.0.0.1:1";

fn echo() -> String {
    repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn submit_passes_an_unreachable_coordinator_for_the_next_one() {
    let c = Coordinator::start(&[]);
    let o = run(&[
        "submit",
        &echo(),
        "--coordinator",
        NOWHERE,
        "--coordinator",
        &c.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run_id = stdout(&o).trim().to_string();
    assert!(!run_id.is_empty());
    let runs = stdout(&run(&["runs", "--coordinator", &c.url]));
    assert!(runs.contains(&run_id), "{runs}");
}

#[test]
fn the_variable_takes_coordinators_separated_by_commas() {
    let c = Coordinator::start(&[]);
    let o = factotum()
        .args(["agents"])
        .env("FACTOTUM_COORDINATOR", format!("{NOWHERE},{}", c.url))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("NAME"), "{}", stdout(&o));
}

#[test]
fn no_coordinator_reachable_names_each_and_exits_4() {
    let other = "http://127.0.0.1:2";
    let o = run(&["runs", "--coordinator", NOWHERE, "--coordinator", other]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("Error: cannot reach any of the coordinators: ")
            && err.contains(NOWHERE)
            && err.contains(other),
        "{err}"
    );
    // One address: the message it always had.
    let o = run(&["runs", "--coordinator", NOWHERE]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).starts_with(&format!(
            "Error: cannot reach the coordinator at {NOWHERE}: "
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_takes_durations_with_units() {
    let o = run(&[
        "run",
        &echo(),
        "--webhook-timeout",
        "500ms",
        "--heartbeat-interval",
        "1s",
        "--kill-grace",
        "2.5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("3/3 tasks run in "), "{}", stdout(&o));
}

#[test]
fn a_duration_that_is_not_one_is_refused_naming_the_flag() {
    let o = run(&["run", &echo(), "--heartbeat-interval", "5x"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--heartbeat-interval") && err.contains("500ms"),
        "{err}"
    );
    // Zero would spin: an interval starts at 10ms.
    let o = run(&["run", &echo(), "--heartbeat-interval", "0"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}
