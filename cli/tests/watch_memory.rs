//! Watchers that stop reading must not grow the coordinator's memory (issue 10): three
//! `factotum watch` processes, stopped with SIGSTOP, on a task printing 24 MB of lines. Before
//! the watch buffer, each stalled watcher held its own copy of every line in the coordinator.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

#[test]
fn three_stalled_watchers_cost_the_coordinator_bounded_memory() {
    let c = Coordinator::start(&["--watch-buffer", "1MiB"]);
    // Every line streamed, however fast: the watch buffer is the subject, not the stream rate.
    let _a = agent(
        &c.url,
        "chatty-host",
        None,
        &["--max-stream-rate", "unlimited"],
    );
    wait_for_agents(&c.url, 1);
    let dir = Dir::new();
    // 24 MB: 240,000 lines of 99 characters and a newline.
    let line = "x".repeat(99);
    let ff = dir.write(
        "chatty.factfile",
        &factfile(
            "chatty",
            vec![task(
                "chatty",
                &format!("sleep 2; yes {line} | head -n 240000"),
                &[],
                &[],
            )],
        ),
    );
    let o = run(&["submit", &ff, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run_id = stdout(&o).trim().to_string();
    let baseline = peak_rss_kib(c.proc.pid());
    let mut watchers = vec![];
    for _ in 0..3 {
        let w = factotum()
            .args(["watch", &run_id, "--coordinator", &c.url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        watchers.push(support::fleet::Proc(w));
    }
    std::thread::sleep(Duration::from_millis(500));
    for w in &watchers {
        let pid = nix::unistd::Pid::from_raw(w.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    let ended = eventually(Duration::from_secs(90), || {
        stdout(&run(&["status", &run_id, "--coordinator", &c.url])).contains("SUCCEEDED")
    });
    assert!(ended, "the run did not end");
    let peak = peak_rss_kib(c.proc.pid());
    for w in &watchers {
        let pid = nix::unistd::Pid::from_raw(w.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }
    eprintln!("coordinator peak RSS: {baseline} KiB before the watchers, {peak} KiB after 24 MB of output");
    // Without a bound each stalled watcher holds the 24 MB (and more in allocation overhead).
    assert!(
        peak < baseline + 60 * 1024,
        "coordinator peak {peak} KiB (baseline {baseline} KiB) with three stalled watchers"
    );
}
