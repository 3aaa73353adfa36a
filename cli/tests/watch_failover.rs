//! A watch survives the death of the coordinator serving it (issue 11): `factotum watch`, given
//! both coordinators, watches again through the other one after kill -9 of the leader, prints
//! the transitions it missed from the new leader's snapshot, says output may be missing, and
//! exits with the run's code once the run ends.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::fleet::{agent, wait_for_agents, Coordinator, Etcd};
use support::*;

#[test]
fn a_watch_resumes_through_the_other_coordinator_after_the_leader_dies() {
    let etcd = Etcd::start();
    let args = [
        "--etcd",
        etcd.endpoint.as_str(),
        "--lease-ttl",
        "2",
        "--failover-grace",
        "15",
    ];
    let mut leader = Coordinator::start(&args);
    assert!(eventually(Duration::from_secs(10), || leader.leads()));
    let standby = Coordinator::start(&args);
    let both = format!("{},{}", leader.url, standby.url);
    let _agent = agent(&both, "watched", None, &[]);
    wait_for_agents(&leader.url, 1);
    let d = Dir::new();
    let (a_ran, b_ran) = (d.file("a-ran"), d.file("b-ran"));
    let ff = d.write(
        "chain.factfile",
        &factfile(
            "watched chain",
            vec![
                task(
                    "a",
                    &format!("echo a-out; touch {}", a_ran.display()),
                    &[],
                    &[],
                ),
                // b runs across the failover; c starts after it.
                task(
                    "b",
                    &format!("touch {}; sleep 4; echo b-out", b_ran.display()),
                    &[],
                    &["a"],
                ),
                task("c", "echo c-out", &[], &["b"]),
            ],
        ),
    );
    let o = run(&["submit", &ff, "--coordinator", &leader.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    // The watch goes to the leader first (it is listed first).
    let watch = factotum()
        .args(["watch", &id, "--coordinator", &both])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || b_ran.exists()),
        "b never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    leader.proc.0.kill().unwrap(); // kill -9: the watch's stream breaks
    let _ = leader.proc.0.wait();
    let out = watch.wait_with_output().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(se.contains("Task 'a': succeeded after"), "{se}");
    assert!(se.contains("Task 'b' was started at"), "{se}");
    // Missed or seen live, each transition is printed once.
    assert_eq!(se.matches("Task 'b': succeeded after").count(), 1, "{se}");
    assert_eq!(se.matches("Task 'c' was started at").count(), 1, "{se}");
    assert!(
        se.contains("the watch was resumed through another coordinator"),
        "{se}"
    );
    assert!(so.contains("[a] a-out"), "{so}");
    assert!(so.contains("3/3 tasks run in"), "{so}");
}
