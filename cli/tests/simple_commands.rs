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

#[test]
fn a_program_is_found_in_path_order_keeps_its_name_and_is_looked_up_again_after_a_task_ends() {
    let d = Dir::new();
    let dirs = ["a", "b", "c"].map(|n| d.path().join(n));
    for dir in &dirs {
        std::fs::create_dir(dir).unwrap();
    }
    let tool = |dir: &std::path::Path, mode: u32| {
        let p = dir.join("tool");
        std::fs::write(&p, "#!/bin/sh\necho \"$0\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    tool(&dirs[0], 0o644); // not executable: passed over, as execvp does
    let first = tool(&dirs[1], 0o755);
    let last = tool(&dirs[2], 0o755);
    let path = format!(
        "{}:{}:{}:/usr/bin:/bin",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    let first_s = first.display().to_string();
    let last_s = last.display().to_string();
    let first_dir_tool = dirs[0].join("tool").display().to_string();
    let ff = d.write(
        "f.factfile",
        &factfile(
            "located",
            vec![
                task("name", "cat", &["/proc/self/cmdline"], &[]),
                task("tool", "tool", &[], &["name"]),
                task("remove", "/bin/rm", &[&first_s], &["tool"]),
                // Its dependency removed the `tool` found before: looked up afresh.
                task("tool again", "tool", &[], &["remove"]),
                // Found where it is now (and remembered).
                task("tool third", "tool", &[], &["tool again"]),
                // A dependency installs one earlier in PATH: the task after it runs that one.
                task(
                    "install",
                    "/usr/bin/install",
                    &["-m", "755", &last_s, &first_dir_tool],
                    &["tool third"],
                ),
                task("tool last", "tool", &[], &["install"]),
            ],
        ),
    );
    let o = spawn_piped(factotum().args(["run", &ff]).env("PATH", &path))
        .wait_with_output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    // argv[0] is the name as written, not the path it was found at.
    let name = lines_of(&out, "name");
    assert!(name[0].starts_with("cat\0/proc/self/cmdline"), "{name:?}");
    assert_eq!(lines_of(&out, "tool"), [first_s.as_str()]);
    assert_eq!(lines_of(&out, "tool again"), [last_s.as_str()]);
    assert_eq!(lines_of(&out, "tool third"), [last_s.as_str()]);
    assert_eq!(lines_of(&out, "tool last"), [first_dir_tool.as_str()]);
}
