//! Simple commands, run without a shell.
//!
//! A task's command line runs as `sh -c "<line>"`. When the line is a plain list of words —
//! nothing the shell would expand, quote, redirect or treat as syntax, and a first word that is
//! neither a shell keyword nor a builtin that a program cannot stand in for — `sh` would only
//! split it at blanks and run the program found in `PATH`. The executor then runs the program
//! itself, as `make` and `ninja` do, saving a shell per task (and a second process: dash forks
//! for the command). Should that spawn fail (not found, not executable, a script without `#!`),
//! the line goes to `sh` after all, which says why in its own words (`sh: 1: x: not found`,
//! exit 127), exactly as before. The program gets the environment `sh` would have given it:
//! the same, plus `PWD` (dash exports it).
//!
//! Like `make`, the executor also finds the program in `PATH` itself, once for all the tasks
//! started within a second ([`locate`]), rather than leaving the search to the spawn: `execvp`
//! tries every `PATH` directory in turn, in the child, while the agent waits for it (eight
//! failed `execve`s per task before `/usr/bin/true` with this machine's `PATH`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Characters that may appear in a simple command's words: nothing here means anything to
/// `sh` (no quoting, expansion, globbing, redirection, comments, tilde, operators).
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '-' | '.' | '/' | ',' | ':' | '+' | '@' | '%' | '=')
}

/// Shell keywords and builtins that change the shell itself or have no program of the same
/// behaviour (GNU make's list for POSIX shells, the reserved words, and `echo`, `printf` and
/// `kill`, whose programs read options dash's builtins print or refuse: `echo -e x`).
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "{", "}", "alias", "bg", "break", "case", "cd", "command",
    "continue", "do", "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export",
    "fc", "fg", "fi", "for", "function", "getopts", "hash", "if", "in", "jobs", "kill", "local",
    "login", "logout", "newgrp", "printf", "pwd", "read", "readonly", "return", "select", "set",
    "shift", "source", "test", "then", "time", "times", "trap", "type", "ulimit", "umask",
    "unalias", "unset", "until", "wait", "while",
];

/// The program and its arguments when `line` is a simple command, else `None` (run it with
/// `sh -c`). Words are plain characters and double-quoted parts without `$`, `` ` `` or `\`
/// (Factotum quotes every argument so); a first word with a `/` must be an absolute path (a
/// relative one depends on which directory it is looked up from), one with `=` would be an
/// assignment.
pub fn argv(line: &str) -> Option<Vec<String>> {
    let mut words = vec![];
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' | '\\' => return None,
                        c => w.push(c),
                    }
                }
            }
            c if plain(c) => word.get_or_insert_with(String::new).push(c),
            _ => return None,
        }
    }
    words.extend(word);
    let first = words.first()?;
    let relative_path = first.contains('/') && !first.starts_with('/');
    if first.is_empty()
        || first.contains('=')
        || relative_path
        || SHELL_WORDS.contains(&first.as_str())
    {
        return None;
    }
    Some(words)
}

/// The `PWD` to give the program when the inherited one is not what `sh` would export: `sh`
/// keeps an inherited `PWD` that names this directory (a path through a symlink stays as it
/// was) and sets the directory's real path otherwise. `None`: the inherited one is right (the
/// usual case; the environment then passes on as it is, with nothing to copy per task).
/// Worked out once: the agent never changes its directory.
pub fn pwd_to_set() -> Option<&'static Path> {
    static PWD: OnceLock<Option<PathBuf>> = OnceLock::new();
    PWD.get_or_init(|| {
        let here = std::fs::metadata(".").ok()?;
        let inherited = std::env::var_os("PWD").map(PathBuf::from);
        let same = |p: &PathBuf| {
            p.is_absolute()
                && std::fs::metadata(p)
                    .is_ok_and(|m| (m.dev(), m.ino()) == (here.dev(), here.ino()))
        };
        match inherited {
            Some(p) if same(&p) => None,
            _ => std::env::current_dir().ok(),
        }
    })
    .as_deref()
}

/// How long a program's place in `PATH` is remembered at most; everything is forgotten sooner,
/// whenever a task ends ([`task_ended`]). So a task that depends on another (it starts after
/// that one ended) always looks its program up afresh and runs what its dependency installed,
/// as `sh -c` would; only tasks started together, a wide DAG's burst, share a lookup. A program
/// installed meanwhile by anything else is run this long later at worst; one removed fails to
/// start, goes to `sh` (which finds whatever `PATH` holds now) and is looked up afresh
/// ([`forget`]).
const REMEMBER: Duration = Duration::from_secs(1);

/// Programs remembered at most (all are dropped past that: a bound, not a policy).
const MAX_REMEMBERED: usize = 1024;

static LOCATOR: LazyLock<Mutex<Locator>> = LazyLock::new(Mutex::default);

/// Where this process's `PATH` finds `program`, a bare name (see [`Locator::locate`]).
pub fn locate(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    LOCATOR.lock().ok()?.locate(program, &path, Instant::now())
}

/// Forgets where `program` was found: starting it from there failed.
pub fn forget(program: &str) {
    if let Ok(mut l) = LOCATOR.lock() {
        l.found.remove(program);
    }
}

/// A task has ended: it may have installed or removed programs, so nothing found so far holds.
pub fn task_ended() {
    if let Ok(mut l) = LOCATOR.lock() {
        l.found.clear();
    }
}

/// Programs found in `PATH`, each with the `PATH` it was found in and when.
#[derive(Debug, Default)]
struct Locator {
    found: HashMap<String, (PathBuf, OsString, Instant)>,
}

impl Locator {
    /// The first file of that name in `path`'s directories that has an execute bit, as
    /// `execvp` would run it. `None` (leave the search to the spawn) for a name with a `/`,
    /// when nothing is found, or when `path` has a relative or empty directory (those depend
    /// on the working directory). A file we may not run after all fails to start, and the
    /// command goes to `sh`, which searches on past it as `execvp` does.
    fn locate(&mut self, program: &str, path: &OsStr, now: Instant) -> Option<PathBuf> {
        if program.is_empty() || program.contains('/') {
            return None;
        }
        let found = &mut self.found;
        if let Some((exe, in_path, at)) = found.get(program) {
            if in_path == path && now.duration_since(*at) < REMEMBER {
                return Some(exe.clone());
            }
        }
        let exe = search(program, path)?;
        if found.len() >= MAX_REMEMBERED {
            found.clear();
        }
        found.insert(program.to_string(), (exe.clone(), path.to_owned(), now));
        Some(exe)
    }
}

fn search(program: &str, path: &OsStr) -> Option<PathBuf> {
    for dir in std::env::split_paths(path) {
        if !dir.is_absolute() {
            return None;
        }
        let candidate = dir.join(program);
        if std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::argv;

    fn of(w: &[&str]) -> Option<Vec<String>> {
        Some(w.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn plain_words_run_without_a_shell() {
        assert_eq!(argv("true"), of(&["true"]));
        assert_eq!(argv("  sleep\t0.1 "), of(&["sleep", "0.1"]));
        assert_eq!(
            argv("/usr/bin/env python3 -m http.server 8000"),
            of(&["/usr/bin/env", "python3", "-m", "http.server", "8000"])
        );
        assert_eq!(
            argv("dd if=/dev/zero of=/dev/null count=1"),
            of(&["dd", "if=/dev/zero", "of=/dev/null", "count=1"])
        );
    }

    #[test]
    fn double_quoted_arguments_without_expansions_are_literal() {
        // Factotum's command lines: `command "arg1" "arg2"`.
        assert_eq!(
            argv(r#"python3 "job.py" "a b" "*.txt" "" "it's!" x"y"z"#),
            of(&["python3", "job.py", "a b", "*.txt", "", "it's!", "xyz"])
        );
        for line in [
            r#"echo "$HOME""#,
            r#"ls "a`b`""#,
            r#"ls "a\"b""#,
            r#"ls "open"#,
            r#""" x"#,
        ] {
            assert_eq!(argv(line), None, "{line:?}");
        }
    }

    #[test]
    fn anything_the_shell_would_interpret_goes_to_the_shell() {
        for line in [
            "",
            "   ",
            "echo $HOME",
            "echo 'a b'",
            "echo \"a\"",
            "echo a\\ b",
            "ls *.txt",
            "ls file?",
            "ls [ab]",
            "echo {a,b}",
            "true && false",
            "true; false",
            "true | cat",
            "echo a > f",
            "cat < f",
            "echo `date`",
            "(true)",
            "echo # comment",
            "ls ~",
            "echo a\nb",
            "sleep 1 &",
            "! true",
        ] {
            assert_eq!(argv(line), None, "{line:?}");
        }
    }

    #[test]
    fn keywords_builtins_assignments_and_relative_paths_go_to_the_shell() {
        for line in [
            "cd /tmp",
            "exit 3",
            "export A=b",
            "A=b env",
            "if true",
            "test -f x",
            "[ -f x ]",
            ". ./env.sh",
            ": nothing",
            "exec sleep 1",
            "wait",
            "ulimit -n",
            "echo -e x",
            "printf %s x",
            "kill -l",
            "./run.sh",
            "bin/run",
        ] {
            assert_eq!(argv(line), None, "{line:?}");
        }
    }

    mod locate {
        use std::ffi::OsString;
        use std::os::unix::fs::PermissionsExt;
        use std::path::Path;
        use std::time::{Duration, Instant};

        use super::super::{Locator, REMEMBER};

        fn program(dir: &Path, name: &str, mode: u32) {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn path_of(dirs: &[&Path]) -> OsString {
            std::env::join_paths(dirs).unwrap()
        }

        #[test]
        fn the_first_executable_file_in_path_order_is_found() {
            let (a, b) = (tempdir("a"), tempdir("b"));
            program(&a, "tool", 0o644); // not executable: passed over, as execvp does
            program(&b, "tool", 0o755);
            std::fs::create_dir(a.join("dir")).unwrap();
            program(&b, "dir", 0o755); // a directory of that name is passed over too
            let mut l = Locator::default();
            let path = path_of(&[&a, &b]);
            let now = Instant::now();
            assert_eq!(l.locate("tool", &path, now), Some(b.join("tool")));
            assert_eq!(l.locate("dir", &path, now), Some(b.join("dir")));
            assert_eq!(l.locate("missing", &path, now), None);
            assert_eq!(l.locate("b/tool", &path, now), None);
            // A relative or empty directory depends on where the search runs: left to exec.
            let relative = std::env::join_paths([Path::new("bin"), &b]).unwrap();
            assert_eq!(l.locate("tool", &relative, now), None);
            let empty = OsString::from(format!(":{}", b.display()));
            assert_eq!(l.locate("tool", &empty, now), None);
        }

        #[test]
        fn a_place_is_remembered_for_a_while_and_per_path() {
            let (a, b) = (tempdir("c"), tempdir("d"));
            program(&b, "tool", 0o755);
            let mut l = Locator::default();
            let path = path_of(&[&a, &b]);
            let t0 = Instant::now();
            assert_eq!(l.locate("tool", &path, t0), Some(b.join("tool")));
            // Installed earlier in PATH: seen once the remembered place is old enough.
            program(&a, "tool", 0o755);
            let soon = t0 + REMEMBER - Duration::from_millis(1);
            assert_eq!(l.locate("tool", &path, soon), Some(b.join("tool")));
            assert_eq!(l.locate("tool", &path, t0 + REMEMBER), Some(a.join("tool")));
            // Another PATH is searched afresh.
            assert_eq!(l.locate("tool", &path_of(&[&b]), t0), Some(b.join("tool")));
            // Forgotten, it is searched afresh at once.
            assert_eq!(l.locate("tool", &path, t0), Some(a.join("tool")));
            std::fs::remove_file(a.join("tool")).unwrap();
            l.found.clear(); // what task_ended does
            assert_eq!(l.locate("tool", &path, t0), Some(b.join("tool")));
        }

        fn tempdir(tag: &str) -> std::path::PathBuf {
            let d =
                std::env::temp_dir().join(format!("factotum-locate-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    }
}
