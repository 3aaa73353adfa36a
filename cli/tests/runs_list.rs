//! `factotum runs` pages through a coordinator's runs with filters, and run references may be
//! given as unique prefixes (issue 11).

mod support;

use std::time::Duration;

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

#[test]
fn runs_filters_and_limits_and_status_takes_a_prefix() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "lister", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ok = d.write(
        "ok.factfile",
        &factfile("ok job", vec![task("t", "true", &[], &[])]),
    );
    let bad = d.write(
        "bad.factfile",
        &factfile("bad job", vec![task("t", "false", &[], &[])]),
    );
    for ff in [&ok, &ok, &bad] {
        let o = run(&[
            "submit",
            ff,
            "--coordinator",
            &c.url,
            "--wait",
            "--allow-concurrent",
        ]);
        assert!(
            o.status.code() == Some(0) || o.status.code() == Some(2),
            "{}",
            stderr(&o)
        );
    }
    let lines = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "--coordinator", c.url.as_str()];
        all.extend_from_slice(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o).lines().skip(1).map(String::from).collect()
    };
    assert_eq!(lines(&[]).len(), 3);
    assert!(lines(&["--job", "ok job"])
        .iter()
        .all(|l| l.contains("ok job")));
    assert_eq!(lines(&["--job", "ok job"]).len(), 2);
    let failed = lines(&["--state", "failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("bad job") && failed[0].contains("FAILED"));
    let newest = lines(&["--limit", "1"]);
    assert_eq!(newest.len(), 1);
    assert!(newest[0].contains("bad job"), "newest first: {newest:?}");
    assert_eq!(lines(&["--since", "1h"]).len(), 3);
    assert_eq!(lines(&["--since", "2999-01-01T00:00:00Z"]).len(), 0);
    let o = run(&["runs", "--coordinator", &c.url, "--since", "whenever"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = run(&["runs", "--coordinator", &c.url, "--state", "sleepy"]);
    assert_eq!(o.status.code(), Some(3), "a bad argument: {}", stderr(&o));
    // A unique start of a run's reference will do.
    let id = failed[0].split_whitespace().next().unwrap().to_string();
    let failed_id = id.clone();
    let o = run(&["status", &id[..8], "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    assert!(stdout(&o).contains("state     FAILED"), "{}", stdout(&o));
    // Too short to be a prefix: not found (exit 4).
    let o = run(&["status", &id[..3], "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    // A cancel with a reason shows on the run; cancelling a run that finished otherwise
    // cancels nothing: one line, exit 4 (issue 13).
    let slow = d.write(
        "slow.factfile",
        &factfile("slow job", vec![task("t", "sleep 30", &[], &[])]),
    );
    let id = stdout(&run(&["submit", &slow, "--coordinator", &c.url]))
        .trim()
        .to_string();
    let o = run(&[
        "cancel",
        &id,
        "--reason",
        "maintenance",
        "--coordinator",
        &c.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(10), || {
        stdout(&run(&["status", &id, "--coordinator", &c.url])).contains("state     CANCELLED")
    }));
    let status = stdout(&run(&["status", &id, "--coordinator", &c.url]));
    assert!(
        status.contains("cancelled job cancelled: maintenance"),
        "{status}"
    );
    // Cancelling it again is what was asked: fine. A run that ended otherwise cannot be.
    let o = run(&["cancel", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["cancel", &failed_id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has already finished: there is nothing to cancel"),
        "{}",
        stderr(&o)
    );
}
