//! A reader that goes away (`factotum … | head`) is not a crash (issue 10): every command that
//! prints exits with its usual code, quietly, when its stdout is closed. Before, Rust's `print!`
//! panicked on the closed pipe: exit 101 and a backtrace.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{ExitStatus, Stdio};

use support::fleet::Coordinator;
use support::*;

/// When the test closes the command's stdout.
#[derive(Clone, Copy)]
enum Close {
    /// At once, before the command prints anything.
    AtOnce,
    /// After reading the first line.
    AfterOneLine,
}

/// Runs `factotum <args>` with a stdout the test closes; returns the exit status and stderr.
fn with_closed_stdout(args: &[&str], close: Close) -> (ExitStatus, String) {
    let mut child = factotum()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let out = child.stdout.take().unwrap();
    if let Close::AfterOneLine = close {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "factotum {args:?} printed nothing");
    } else {
        drop(out);
    }
    let mut status = None;
    let done = eventually(std::time::Duration::from_secs(120), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        panic!("factotum {args:?} did not end with its stdout closed");
    }
    (status.unwrap(), err.join().unwrap())
}

fn assert_quiet(args: &[&str], close: Close, code: i32) {
    let (status, err) = with_closed_stdout(args, close);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "factotum {args:?}: {err}"
    );
    assert_eq!(status.code(), Some(code), "factotum {args:?}: {err}");
}

/// `n` tasks, each echoing a line.
fn many_tasks(dir: &Dir, n: usize) -> String {
    let tasks = (0..n)
        .map(|i| task(&format!("task-{i}"), "echo", &[&format!("hello {i}")], &[]))
        .collect();
    dir.write("many.factfile", &factfile("many", tasks))
}

#[test]
fn local_commands_exit_quietly_when_stdout_is_closed() {
    let d = Dir::new();
    // Output far bigger than a pipe's buffer, so the command is still printing when it closes.
    let ff = many_tasks(&d, 3000);
    assert_quiet(&["run", &ff, "--dry-run"], Close::AfterOneLine, 0);
    assert_quiet(&["dot", &ff], Close::AfterOneLine, 0);
    assert_quiet(&["validate", &ff], Close::AtOnce, 0);
    let bad = d.write("bad.factfile", "{");
    assert_quiet(&["validate", &bad], Close::AtOnce, 1);
}

#[test]
fn run_keeps_running_its_job_when_stdout_is_closed() {
    let d = Dir::new();
    let marker = d.file("after");
    // The first task prints far more than a pipe holds; the job goes on after the reader left.
    let ff = d.write(
        "chatty.factfile",
        &factfile(
            "chatty",
            vec![
                task("chatty", "seq 1 200000", &[], &[]),
                task(
                    "after",
                    &format!("echo done > {}", marker.display()),
                    &[],
                    &["chatty"],
                ),
            ],
        ),
    );
    let (status, err) = with_closed_stdout(&["run", &ff], Close::AfterOneLine);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("Task 'chatty': succeeded"), "{err}");
    assert!(err.contains("Task 'after': succeeded"), "{err}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");
}

#[test]
fn client_commands_exit_quietly_when_stdout_is_closed() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let ff = many_tasks(&d, 2000);
    let o = run(&["submit", &ff, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run_id = stdout(&o).trim().to_string();
    assert_quiet(
        &["status", &run_id, "--coordinator", &c.url],
        Close::AfterOneLine,
        0,
    );
    assert_quiet(
        &["status", &run_id, "--coordinator", &c.url],
        Close::AtOnce,
        0,
    );
    assert_quiet(&["runs", "--coordinator", &c.url], Close::AtOnce, 0);
    assert_quiet(&["agents", "--coordinator", &c.url], Close::AtOnce, 0);
    let other = d.write(
        "other.factfile",
        &factfile("other", vec![task("one", "true", &[], &[])]),
    );
    assert_quiet(
        &["submit", &other, "--coordinator", &c.url],
        Close::AtOnce,
        0,
    );
    assert_quiet(
        &["cancel", &run_id, "--coordinator", &c.url],
        Close::AtOnce,
        0,
    );
}
