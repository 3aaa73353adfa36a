use super::*;

const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";
use factotum_proto::Lease;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("factotum-recorded-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command` the recorded way; its status and what the journal got.
fn run(dir: &Path, command: &str) -> (Option<i32>, Option<i32>) {
    let _ = fs::remove_file(dir.join(JOURNAL));
    let name = name("run 1", 2, 3);
    let status = Command::new("/bin/sh")
        .args(argv(command, dir, &name))
        .stdout(fs::File::create(dir.join(STDOUT)).unwrap())
        .stderr(fs::File::create(dir.join(STDERR)).unwrap())
        .status()
        .unwrap();
    (status.code(), find_exit(&dir.join(JOURNAL), &name))
}

#[test]
fn the_shell_records_the_exit_code_of_any_command() {
    let dir = scratch("codes").join("it's a dir");
    fs::create_dir_all(&dir).unwrap();
    for (command, code) in [
        ("true", 0),
        ("exit 3", 3),
        ("false", 1),
        ("set -e; false; echo no", 1),
        ("syntax error (", 2),
        // `exec` would take the trap's shell away: run in a subshell instead.
        ("exec sh -c 'exit 4'", 4),
        ("trap 'echo own' EXIT; exit 5", 5),
        ("sh -c 'kill -9 $$'", 137),
        ("echo \"quote ' and $HOME\"", 0),
    ] {
        assert_eq!(run(&dir, command), (Some(code), Some(code)), "{command}");
    }
    // No positional parameters, and `$0` as under a plain `sh -c`.
    run(&dir, "echo $# $0; echo err >&2");
    assert_eq!(fs::read_to_string(dir.join(STDOUT)).unwrap(), "0 /bin/sh\n");
    assert_eq!(fs::read_to_string(dir.join(STDERR)).unwrap(), "err\n");
    run(&dir, "trap 'echo own' EXIT");
    assert_eq!(fs::read_to_string(dir.join(STDOUT)).unwrap(), "own\n");
    let _ = fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn a_follower_reads_lines_as_they_come_and_keeps_redacted_tails() {
    let dir = scratch("follow");
    let paths = [dir.join(STDOUT), dir.join(STDERR)];
    fs::write(&paths[0], "one\ntw").unwrap();
    let redact = Redactor::new(&["s3cret".to_string()]);
    let mut f = Follower::new(paths.clone(), redact.clone(), 100, false);
    let mut out = vec![];
    assert!(f.read(&mut out));
    assert_eq!(out, [(Stream::Stdout, "one".to_string(), false)]);
    out.clear();
    assert!(!f.read(&mut out));
    use std::io::Write;
    let append = |i: usize, s: &str| {
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&paths[i])
            .unwrap()
            .write_all(s.as_bytes())
            .unwrap()
    };
    append(0, "o\nthe s3cret\nend");
    append(1, "err\n");
    assert!(f.read(&mut out));
    assert!(!f.read(&mut out));
    let tails = f.finish(&mut out);
    assert_eq!(
        out,
        [
            (Stream::Stdout, "two".to_string(), false),
            (Stream::Stdout, "the [redacted]".to_string(), false),
            (Stream::Stderr, "err".to_string(), false),
            // A line without its newline waits for the end.
            (Stream::Stdout, "end".to_string(), false),
        ]
    );
    assert_eq!(
        tails,
        ("one\ntwo\nthe [redacted]\nend".into(), "err".into())
    );
    assert_eq!(read_tails(paths.clone(), 100, &redact), tails);
    // Adopted: from the end.
    let mut f = Follower::new(paths, redact, 100, true);
    assert!(!f.read(&mut out));
    let _ = fs::remove_dir_all(dir);
}

/// The lease of attempt 1 of `task` in run `r`.
fn lease_of(task: u32) -> Lease {
    Lease {
        lease: Some(factotum_proto::LeaseRef {
            run_id: "r".into(),
            task,
            attempt: 1,
            epoch: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn the_journal_keeps_what_is_pending_across_compaction() {
    let dir = scratch("journal");
    let lease = |task| Lease {
        command_line: "echo 'x y'".into(),
        ..lease_of(task)
    };
    let outs = [dir.join("o"), dir.join("e")];
    let (mut j, pending) = Journal::open(&dir).unwrap();
    assert!(pending.is_empty());
    for task in 0..3 {
        j.lease(&name("r", task, 1), &lease(task), &outs).unwrap();
    }
    j.forget(&name("r", 0, 1));
    // A shell's record, and a record torn by a crash.
    let mut f = fs::OpenOptions::new().append(true).open(j.path()).unwrap();
    use std::io::Write;
    write!(f, "\nX {} 7\n\nL torn", name("r", 1, 1)).unwrap();
    drop(j);
    let (_, pending) = Journal::open(&dir).unwrap();
    let got: Vec<_> = pending.iter().map(|e| (e.name.clone(), e.exit)).collect();
    assert_eq!(got, [(name("r", 1, 1), Some(7)), (name("r", 2, 1), None)]);
    assert_eq!(pending[1].lease, lease(2));
    assert_eq!(pending[1].outputs, outs);
    // Compacted: reading it again gives the same.
    let (_, again) = Journal::open(&dir).unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].exit, Some(7));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn an_exit_appended_to_the_file_a_compaction_replaced_is_carried_over() {
    use std::io::Write;
    let dir = scratch("journal-late");
    let outs = [dir.join("o"), dir.join("e")];
    let (mut j, _) = Journal::open(&dir).unwrap();
    for task in 0..3 {
        j.lease(&name("r", task, 1), &lease_of(task), &outs)
            .unwrap();
    }
    // A task's shell opens the journal to append its exit, just before a compaction renames a
    // new file over it, and writes only after the compaction has read it.
    let mut shell = fs::OpenOptions::new().append(true).open(j.path()).unwrap();
    j.compact();
    write!(shell, "\nX {} 3\n", name("r", 1, 1)).unwrap();
    drop(shell);
    j.forget(&name("r", 0, 1)); // any later write of the agent's carries it over
    drop(j);
    let (_, pending) = Journal::open(&dir).unwrap();
    let got: Vec<_> = pending.iter().map(|e| (e.name.clone(), e.exit)).collect();
    assert_eq!(got, [(name("r", 1, 1), Some(3)), (name("r", 2, 1), None)]);
    let _ = fs::remove_dir_all(dir);
}
