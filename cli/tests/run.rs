//! `factotum run` end to end: the real binary, real child processes.

mod support;

use support::*;

#[test]
fn echo_chain_streams_output_in_order_and_exits_0() {
    let o = run(&[
        "run",
        &repo().join("samples/echo.factfile").to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..3],
        [
            "[say hello] hello",
            "[say world] world",
            "[say done] all done!"
        ]
    );
    assert!(lines[3].starts_with("3/3 tasks run in "), "{out}");
    let err = stderr(&o);
    assert!(err.contains("Task 'say hello' was started at "), "{err}");
    assert!(err.contains("Task 'say done': succeeded after "), "{err}");
    assert!(
        err.find("Task 'say hello': succeeded").unwrap()
            < err.find("Task 'say world' was started").unwrap()
    );
}

#[test]
fn failure_cascades_skips_and_exits_2() {
    let o = run(&[
        "run",
        &repo()
            .join("samples/failure-cascade.factfile")
            .to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(
        out.contains("[steady] steady work done"),
        "independent branch keeps going: {out}"
    );
    assert!(out.contains("3/5 tasks run in "), "{out}");
    assert!(
        out.contains("Factotum job executed abnormally as a task ('flaky') failed - the following tasks were not run: 'after flaky', 'report'!"),
        "{out}"
    );
    let err = stderr(&o);
    assert!(
        err.contains("[flaky] about to fail"),
        "stderr lines go to stderr: {err}"
    );
    assert!(err.contains("Task 'flaky': failed after "), "{err}");
    assert!(err.contains("Reason: the task exited with a value not specified in continue_job - 4 (task expects one of the following return codes to continue [0])"), "{err}");
}

#[test]
fn early_finish_prunes_only_its_branch() {
    let o = run(&[
        "run",
        &repo()
            .join("samples/early-finish.factfile")
            .to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("[independent report] this branch still runs"),
        "{out}"
    );
    assert!(!out.contains("[process data]"), "{out}");
    assert!(
        out.contains("Factotum job finished early as a task ('check for new data') requested an early finish. The following tasks were not run: 'process data'."),
        "{out}"
    );
}

#[test]
fn a_dependent_starts_without_waiting_for_a_slow_sibling() {
    // Under a level barrier `b` would wait for `slow`, and `slow` (which checks that `b` already
    // ran) would fail.
    let d = Dir::new();
    let marker = d.file("b-ran");
    let m = marker.to_string_lossy();
    let ff = d.write(
        "nobarrier.factfile",
        &factfile(
            "no barrier",
            vec![
                task("a", "true", &[], &[]),
                task("slow", &format!("sleep 1.5; test -f '{m}'"), &[], &[]),
                task("b", &format!("touch '{m}'"), &[], &["a"]),
            ],
        ),
    );
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn templating_env_tags_and_command() {
    let o = run(&[
        "run",
        &repo().join("samples/variables.factfile").to_string_lossy(),
        "--env",
        r#"{"greeting": "Hello", "who": {"name": "Ada"}, "count": 3}"#,
        "--tag",
        "client, acme ",
        "--no-redact",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("[greet] Hello, Ada!"), "{out}");
    assert!(out.contains("[count] 3 items for acme"), "{out}");
    // Redacted by default: `--env`'s strings of 4 characters or more ("Ada" is left alone).
    let o = run(&[
        "run",
        &repo().join("samples/variables.factfile").to_string_lossy(),
        "--env",
        r#"{"greeting": "Hello", "who": {"name": "Ada"}, "count": 3}"#,
        "--tag",
        "client, acme ",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("[greet] [redacted], Ada!"), "{out}");
}

#[test]
fn arguments_are_double_quoted_and_escaped() {
    let d = Dir::new();
    let ff = d.write(
        "q.factfile",
        &factfile(
            "quotes",
            vec![task(
                "q",
                "printf '%s|' ",
                &["a b", "$((2+3))", "say \"hi\" \\o/"],
                &[],
            )],
        ),
    );
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("[q] a b|5|say \"hi\" \\o/|"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn start_runs_the_sub_tree_only() {
    let d = Dir::new();
    let ff = d.write(
        "s.factfile",
        &factfile(
            "start",
            vec![
                task("a", "echo", &["A"], &[]),
                task("b", "echo", &["B"], &["a"]),
                task("c", "echo", &["C"], &["b"]),
                task("x", "echo", &["X"], &["a"]),
                task("y", "echo", &["Y"], &["x", "b"]),
            ],
        ),
    );
    let o = run(&["run", &ff, "--start", "b"]);
    assert_eq!(o.status.code(), Some(3), "y also needs x: {}", stdout(&o));
    assert_eq!(
        stderr(&o).trim(),
        "The job cannot be started from 'b' because the job cannot be started here without triggering prior tasks"
    );
    let o = run(&["run", &ff, "--start", "x"]);
    assert_eq!(o.status.code(), Some(3));
    let o = run(&["run", &ff, "--start", "nope"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("because the task specified could not be found"));
    let ff2 = d.write(
        "s2.factfile",
        &factfile(
            "start2",
            vec![
                task("a", "echo", &["A"], &[]),
                task("b", "echo", &["B"], &["a"]),
                task("c", "echo", &["C"], &["b"]),
            ],
        ),
    );
    let o = run(&["run", &ff2, "--start", "b"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(
        !out.contains("[a]") && out.contains("[b] B") && out.contains("[c] C"),
        "{out}"
    );
    assert!(out.contains("2/2 tasks run"), "{out}");
}

#[test]
fn dry_run_prints_commands_and_runs_nothing() {
    let d = Dir::new();
    let marker = d.file("ran");
    let ff = d.write(
        "d.factfile",
        &factfile(
            "dry",
            vec![task(
                "touch it",
                &format!("touch '{}'", marker.display()),
                &["x"],
                &[],
            )],
        ),
    );
    let o = run(&["run", &ff, "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("| TASK     | COMMAND"), "{out}");
    assert!(
        out.contains(&format!(
            "| touch it | touch '{}' \"x\" |",
            marker.display()
        )),
        "{out}"
    );
    assert!(!marker.exists(), "dry run executed the task");
    let o = run(&["run", &ff, "--dry-run", "--webhook", "http://127.0.0.1:1/"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).trim(),
        "Error: --webhook cannot be used with the --dry-run option"
    );
}

#[test]
fn bad_arguments_exit_3_with_clear_messages() {
    let ff = repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned();
    let o = run(&["run", &ff, "--webhook", "ftp://example"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o)
            .starts_with("Error: the specifed webhook URL \"ftp://example\" is invalid. Reason: "),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", &ff, "--env", "{not json"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("--env"), "{}", stderr(&o));
    let o = run(&["run", &ff, "--env", "[1,2]"]);
    assert_eq!(o.status.code(), Some(3));
    let o = run(&["run", &ff, "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(3));
    let o = run(&["run", &ff, "--constraint", "rack,7"]);
    assert_eq!(o.status.code(), Some(3));
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Exit codes"));
    let o = run(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--max-stdouterr-size"));
}

#[test]
fn unreadable_or_invalid_factfile_exits_1_naming_the_file() {
    let o = run(&["run", "/nonexistent/x.factfile"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with(
        "'/nonexistent/x.factfile' is not a valid factotum factfile: couldn't read the file ("
    ));
    let d = Dir::new();
    let ff = d.write(
        "cyc.factfile",
        &factfile(
            "cyc",
            vec![
                task("a", "true", &[], &["b"]),
                task("b", "true", &[], &["a"]),
            ],
        ),
    );
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "'{ff}' is not a valid factotum factfile: the tasks form a cycle: 'a' -> 'b' -> 'a'"
        )
    );
}

#[test]
fn host_constraints() {
    let ff = repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned();
    let o = run(&["run", &ff, "--constraint", "host,*"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("[say hello] hello"));
    let host = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let o = run(&["run", &ff, "--constraint", &format!("host,{}", host.trim())]);
    assert!(stdout(&o).contains("[say hello] hello"), "{}", stderr(&o));
    for other in ["no-such-host.invalid", "localhost", "127.0.0.1"] {
        let o = run(&["run", &ff, "--constraint", &format!("host,{other}")]);
        assert_eq!(o.status.code(), Some(0));
        assert!(
            !stdout(&o).contains("[say hello]"),
            "ran despite host,{other}"
        );
        assert!(
            stderr(&o).starts_with(&format!(
                "Warn: the specifed host constraint \"{other}\" did not match, no tasks have been executed. Reason: "
            )),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn empty_job_succeeds() {
    let d = Dir::new();
    let ff = d.write("e.factfile", &factfile("empty", vec![]));
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("0/0 tasks run in "));
}

#[test]
fn task_killed_by_a_signal_fails_with_code_1() {
    let d = Dir::new();
    let ff = d.write(
        "k.factfile",
        &factfile("kill", vec![task("self-kill", "kill -9 $$", &[], &[])]),
    );
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("continue_job - 1 ("), "{}", stderr(&o));
}
