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

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
}
