//! `--parallel N` (issue 15 item 5): at most N tasks at once on `run` and `submit`, and a local
//! run held to what the machine's process limits leave room for.

mod support;

use std::process::Command;

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

/// `n` independent tasks; each appends `start <ns>` and `end <ns>` lines to `log`.
fn wide(n: usize, log: &str, secs: &str) -> String {
    let line =
        format!("echo start $(date +%s%N) >> {log}; sleep {secs}; echo end $(date +%s%N) >> {log}");
    let tasks = (0..n)
        // The line is the command itself: arguments are double-quoted, so `$(date)` in one
        // would be expanded once, when the command line is built.
        .map(|i| task(&format!("t{i}"), &line, &[], &[]))
        .collect();
    factfile("wide", tasks)
}

/// The most tasks that ran at once, from the log.
fn most_at_once(log: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(' ').unwrap();
            (
                at.trim().parse().unwrap(),
                if what == "start" { 1 } else { -1 },
            )
        })
        .collect();
    // An end before a start at the same instant: a slot freed is not counted twice.
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(now, 0, "every start has its end:\n{text}");
    most as usize
}

#[test]
fn run_starts_at_most_parallel_tasks_at_once() {
    let d = Dir::new();
    let log = d.file("log").to_string_lossy().into_owned();
    let file = d.write("wide.factfile", &wide(8, &log, "0.5"));
    let o = run(&["run", &file, "--parallel", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(most_at_once(&log), 3);
    // Without it, all at once (Factotum's behaviour).
    std::fs::remove_file(&log).unwrap();
    let o = run(&["run", &file]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(most_at_once(&log), 8);
    // Bad values are refused.
    let o = run(&["run", &file, "--parallel", "0"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn submit_sets_the_runs_max_parallel_within_the_factfiles() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "a1", None, &["--slots", "0"]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let log = d.file("log").to_string_lossy().into_owned();
    let file = d.write("wide.factfile", &wide(6, &log, "0.5"));
    let o = run(&[
        "submit",
        &file,
        "--parallel",
        "2",
        "--wait",
        "--coordinator",
        &c.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(most_at_once(&log), 2);
}

/// A local run inside a pids cgroup that allows 80 processes: it holds itself to what is left
/// rather than failing to fork, and says so.
#[test]
fn a_local_run_waits_for_room_under_the_process_limit() {
    let name = format!("factotum-test-{}", std::process::id());
    let cg = std::path::Path::new("/sys/fs/cgroup/pids").join(&name);
    let cg = if std::path::Path::new("/sys/fs/cgroup/pids").is_dir() {
        cg
    } else {
        std::path::Path::new("/sys/fs/cgroup").join(&name)
    };
    std::fs::create_dir(&cg).expect("a pids cgroup can be made (tests run as root)");
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _gone = Gone(cg.clone());
    std::fs::write(cg.join("pids.max"), "80").unwrap();
    let d = Dir::new();
    let log = d.file("log").to_string_lossy().into_owned();
    let file = d.write("wide.factfile", &wide(30, &log, "0.2"));
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" run \"$1\"",
            cg.display()
        ))
        .arg(env!("CARGO_BIN_EXE_factotum"))
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let most = most_at_once(&log);
    assert!((1..=8).contains(&most), "{most} at once under 80 processes");
    assert!(
        stderr(&o).contains("process limits leave room for"),
        "{}",
        stderr(&o)
    );
}
