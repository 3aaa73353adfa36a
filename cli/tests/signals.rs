//! SIGINT/SIGTERM on `factotum run`: running tasks are stopped, nothing else is started, and our
//! own process group is never signalled (this test process shares it and must survive).

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

fn run_and_signal(sig: Signal, command: &str, extra: &[&str]) -> (std::process::Output, Dir, i32) {
    let d = Dir::new();
    let pidfile = d.file("task.pid");
    let ff = d.write(
        "s.factfile",
        &factfile(
            "signals",
            vec![
                task(
                    "sleeper",
                    &format!("echo $$ > '{}'; {command}", pidfile.display()),
                    &[],
                    &[],
                ),
                task("after", "echo", &["must not run"], &["sleeper"]),
            ],
        ),
    );
    let rx = Receiver::start();
    let mut args = vec!["run", ff.as_str(), "--webhook", rx.url.as_str()];
    args.extend_from_slice(extra);
    let child = factotum()
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let task_pid = read_pid(&pidfile);
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let o = child.wait_with_output().unwrap();
    let t = transitions(&rx.payloads());
    // The cancel skips what waits at once; the killed task ends FAILED when its process is gone.
    let skipped = t.iter().position(|x| x == "after WAITING->SKIPPED");
    let failed = t.iter().position(|x| x == "sleeper RUNNING->FAILED");
    assert!(skipped.is_some() && skipped < failed, "{t:?}");
    assert_eq!(
        t.last().unwrap(),
        "job RUNNING->FAILED",
        "webhooks flushed before exit"
    );
    (o, d, task_pid)
}

#[test]
fn sigterm_stops_the_running_task_and_skips_the_rest() {
    let (o, _d, pid) = run_and_signal(Signal::SIGTERM, "sleep 30", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(gone(pid), "the task's process survived");
    assert!(!stdout(&o).contains("must not run"));
    assert!(stderr(&o).contains("received SIGTERM"), "{}", stderr(&o));
}

#[test]
fn sigint_kills_a_task_that_ignores_term_after_the_grace() {
    let (o, _d, pid) = run_and_signal(
        Signal::SIGINT,
        "trap '' TERM; sleep 30",
        &["--kill-grace", "0.5"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(gone(pid), "the TERM-ignoring task survived the KILL");
}
