//! `submit --wait` with no agent says why the run waits, and a cancelled run shows as
//! CANCELLED, with its reason, in `status`, `runs`, `watch` and `submit --wait`'s own end
//! (issue 13, item 8).

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use support::fleet::{Coordinator, Proc};
use support::*;

#[test]
fn a_run_with_no_agent_says_why_it_waits_and_a_cancel_ends_it_as_cancelled() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let ff = d.write(
        "w.factfile",
        &factfile(
            "waiting job",
            vec![task("a", "true", &[], &[]), task("b", "true", &[], &["a"])],
        ),
    );
    let mut child = factotum()
        .args(["submit", &ff, "--coordinator", &c.url, "--wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let submit = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    // The reason comes within a few seconds (bounded: a hang fails the test).
    let mut seen = vec![];
    let waited = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == "Waiting: no agent is connected" => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    assert!(
        waited,
        "no waiting reason within 20 s; stderr so far: {seen:?}"
    );

    let o = run(&["runs", "--coordinator", &c.url, "-o", "json"]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = runs[0]["runId"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["state"], "RUN_STATE_WAITING", "{runs}");
    assert_eq!(runs[0]["waitingReason"], "no agent is connected");
    let o = run(&["status", &id, "--coordinator", &c.url]);
    assert!(
        stdout(&o).contains("waiting   no agent is connected"),
        "{}",
        stdout(&o)
    );

    let o = run(&[
        "cancel",
        &id,
        "--reason",
        "nobody to run it",
        "--coordinator",
        &c.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // submit --wait ends: exit 2, and its last line says the run was cancelled, and why.
    let mut submit = submit;
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            status = submit.0.try_wait().unwrap();
            status.is_some()
        }),
        "submit --wait did not end after the cancel"
    );
    assert_eq!(status.unwrap().code(), Some(2));
    let printed = out.join().unwrap();
    assert!(
        printed.ends_with(
            "0/2 tasks run in 0.0s\nFactotum job was cancelled: nobody to run it - the following tasks were not run: 'a', 'b'.\n"
        ) || printed.contains(
            "Factotum job was cancelled: nobody to run it - the following tasks were not run: 'a', 'b'."
        ),
        "{printed}"
    );
    assert!(!printed.contains("failed"), "{printed}");

    // status, runs and watch say CANCELLED and why; a finished run no longer says it waits.
    let o = run(&["status", &id, "--coordinator", &c.url]);
    let text = stdout(&o);
    assert!(text.contains("state     CANCELLED"), "{text}");
    assert!(
        text.contains("cancelled job cancelled: nobody to run it"),
        "{text}"
    );
    assert!(!text.contains("waiting   "), "{text}");
    let o = run(&["status", &id, "--coordinator", &c.url, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "RUN_STATE_CANCELLED");
    assert_eq!(v["cancelReason"], "job cancelled: nobody to run it");
    assert!(v["waitingReason"].is_null(), "{v}");
    let o = run(&["runs", "--coordinator", &c.url]);
    let line = stdout(&o).lines().nth(1).unwrap_or_default().to_string();
    assert!(
        line.contains("CANCELLED") && line.contains("job cancelled: nobody to run it"),
        "{}",
        stdout(&o)
    );
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Factotum job was cancelled: nobody to run it"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn submit_names_the_run_flags_it_cannot_take() {
    let d = Dir::new();
    let ff = d.write(
        "x.factfile",
        &factfile("x", vec![task("a", "true", &[], &[])]),
    );
    for (flag, value) in [("--kill-grace", "5s"), ("--webhook-timeout", "5s")] {
        // Refused before any coordinator is asked (none listens here).
        let o = run(&[
            "submit",
            &ff,
            flag,
            value,
            "--coordinator",
            "http://127.0.0.1:1",
        ]);
        assert_eq!(o.status.code(), Some(3), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with(&format!("Error: {flag} is for `factotum run` only")),
            "{}",
            stderr(&o)
        );
    }
    let o = run(&["submit", "--help"]);
    assert!(stdout(&o).contains("--kill-grace"), "help names them");
}
