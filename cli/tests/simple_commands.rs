//! Simple commands (plain words, no shell syntax) run without `sh -c`, with what the shell
//! would have given them; anything else, and anything the program cannot be run for, goes to
//! the shell as before.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use support::*;

/// The lines a task printed on stdout (`[task] line`), without the prefix.
fn lines_of<'a>(out: &'a str, task: &str) -> Vec<&'a str> {
    let prefix = format!("[{task}] ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect()
}

#[test]
fn a_simple_command_is_the_task_process_and_sees_what_sh_would_show_it() {
    let d = Dir::new();
    // A script without `#!`: exec refuses it, so the shell runs it, as it always did.
    let script = d.write("no-shebang", "echo run by the shell\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ff = d.write(
        "f.factfile",
        &factfile(
            "simple",
            vec![
                task("stat", "/bin/cat", &["/proc/self/stat"], &[]),
                task("env direct", "/usr/bin/env", &[], &[]),
                task("env sh", "/usr/bin/env | /usr/bin/cat", &[], &[]),
                task("script", &script, &[], &[]),
                task("missing", "no-such-program-here", &["x"], &[]),
            ],
        ),
    );
    let child = spawn_piped(factotum().args(["run", &ff]).current_dir(d.path()));
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(2), "only 'missing' fails: {err}");

    // `cat` is the task's own process: its parent is factotum, not a shell.
    let stat = lines_of(&out, "stat");
    let ppid: u32 = stat[0]
        .split(") ")
        .nth(1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, pid, "{stat:?}");

    // The same environment as under `sh -c`, PWD included.
    let direct: BTreeSet<&str> = lines_of(&out, "env direct").into_iter().collect();
    let shell: BTreeSet<&str> = lines_of(&out, "env sh").into_iter().collect();
    assert_eq!(direct, shell);
    let here = d.path().canonicalize().unwrap();
    assert!(
        direct.contains(format!("PWD={}", here.display()).as_str()),
        "{direct:?}"
    );

    assert_eq!(lines_of(&out, "script"), ["run by the shell"]);
    assert!(
        err.contains("[missing] /bin/sh: 1: no-such-program-here: not found"),
        "the shell's word for it: {err}"
    );
    assert!(err.contains("continue_job - 127"), "{err}");
}
