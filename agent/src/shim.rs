//! The task supervisor ("shim") that lets a task outlive its agent.
//!
//! With `--state-dir`, the agent does not run `sh -c` itself: it starts `factotum-agent --shim
//! <attempt dir>`, which runs the command, appends every output line to `<dir>/output` and
//! writes the exit code to `<dir>/exit` when the task ends — whether or not the agent is still
//! there. A restarted agent finds the attempt directories, reports the recorded results and
//! adopts the tasks still running (re-attaching them to the coordinator), so a restart neither
//! loses nor duplicates a task.
//!
//! The agent starts the shim in the task's working directory and with the task's environment,
//! which its `sh -c` inherits as they are; so the attempt directory is always given as an
//! absolute path (a relative one would be taken against the task's directory).
//!
//! Framing, on the shim's stdout and in `<dir>/output`: one line per event, `1<line>` for the
//! task's stdout, `2<line>` for its stderr; stdout also ends with `X<code> <nanos>`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use factotum_common::run::Stream;
use factotum_common::tail::Tail;

use crate::executor::{exit_code, strip_newline};

/// Files of one attempt directory.
pub const LEASE: &str = "lease";
pub const OUTPUT: &str = "output";
pub const EXIT: &str = "exit";
pub const PID: &str = "pid";

/// What the shim recorded when the task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub code: i32,
    pub duration: Duration,
}

/// `<code> <nanos>`: how the exit is written, in `<dir>/exit` and after `X`.
fn parse_exit(text: &str) -> Option<Recorded> {
    let mut parts = text.split_whitespace();
    let code = parts.next()?.parse().ok()?;
    let nanos: u64 = parts.next()?.parse().ok()?;
    Some(Recorded {
        code,
        duration: Duration::from_nanos(nanos),
    })
}

/// Reads `<dir>/exit`, if the task has ended.
pub fn read_exit(dir: &Path) -> Option<Recorded> {
    parse_exit(&fs::read_to_string(dir.join(EXIT)).ok()?)
}

/// One line of the framing (see the module's documentation).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Line(Stream, &'a str),
    Exit(Recorded),
}

/// Reads one framed line; `None` for anything else.
pub fn parse_frame(line: &str) -> Option<Frame<'_>> {
    match line.split_at_checked(1)? {
        ("1", rest) => Some(Frame::Line(Stream::Stdout, rest)),
        ("2", rest) => Some(Frame::Line(Stream::Stderr, rest)),
        ("X", rest) => parse_exit(rest).map(Frame::Exit),
        _ => None,
    }
}

/// The last `max` characters of each stream in `<dir>/output`.
pub fn read_tails(dir: &Path, max: usize) -> (String, String) {
    let (mut out, mut err) = (Tail::new(max), Tail::new(max));
    if let Ok(f) = File::open(dir.join(OUTPUT)) {
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            match parse_frame(&line) {
                Some(Frame::Line(Stream::Stdout, text)) => out.push_line(text),
                Some(Frame::Line(Stream::Stderr, text)) => err.push_line(text),
                _ => {}
            }
        }
    }
    (out.as_str().to_string(), err.as_str().to_string())
}

/// Whether `pid` is a live shim for `dir` (not a zombie, not a recycled pid of something else:
/// its command line names the attempt directory). The agent names it by an absolute path; a
/// relative one (from an older agent) is taken against the shim's own working directory.
pub fn shim_alive(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    !zombie
        && cmdline.split(|b| *b == 0).any(|arg| {
            let arg = Path::new(std::ffi::OsStr::from_bytes(arg));
            arg == dir
                || (!arg.as_os_str().is_empty()
                    && arg.is_relative()
                    && cwd.as_ref().is_some_and(|cwd| cwd.join(arg) == dir))
        })
}

/// The shim's main: runs `command_line` with `sh -c` in this process group and records it in
/// `dir`. Returns the process exit code for the shim itself.
pub fn run(dir: &Path, command_line: &str) -> i32 {
    // A TERM or INT sent to the task's process group must not stop the shim before it has
    // recorded the exit code: handle them (handlers, unlike an ignored disposition, are reset
    // for the task by exec).
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        let _ =
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
    let begun = Instant::now();
    // One write per line (`writeln!` on a file can take two, the text and the newline).
    let record = |line: &str| {
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(OUTPUT))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    };
    let stdout = Mutex::new(std::io::stdout());
    let emit = |line: &str| {
        // Under the lock: the stdout and stderr readers must not interleave in the file either.
        let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
        record(line);
        // The agent may be gone: its pipe then fails, and the file is what counts.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // Neither the environment nor the working directory is touched: the task gets the lease's,
    // which the agent gave the shim.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command_line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let (code, ok) = match child {
        Ok(mut child) => {
            let pipes = [
                child
                    .stdout
                    .take()
                    .map(|p| (Box::new(p) as Box<dyn Read + Send>, '1')),
                child
                    .stderr
                    .take()
                    .map(|p| (Box::new(p) as Box<dyn Read + Send>, '2')),
            ];
            std::thread::scope(|scope| {
                for (pipe, tag) in pipes.into_iter().flatten() {
                    let emit = &emit;
                    scope.spawn(move || {
                        let mut reader = BufReader::new(pipe);
                        let mut buf = Vec::new();
                        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                            strip_newline(&mut buf);
                            emit(&format!("{tag}{}", String::from_utf8_lossy(&buf)));
                            buf.clear();
                        }
                    });
                }
            });
            match child.wait() {
                Ok(s) => (exit_code(s), true),
                Err(_) => (-1, false),
            }
        }
        Err(e) => {
            emit(&format!("2Error executing process - {e}"));
            (-1, false)
        }
    };
    let nanos = u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let tmp = dir.join(format!("{EXIT}.tmp"));
    let _ = fs::write(&tmp, format!("{code} {nanos}\n"))
        .and_then(|()| fs::rename(&tmp, dir.join(EXIT)));
    emit(&format!("X{code} {nanos}"));
    i32::from(!ok)
}

/// The shim's entry point: reads the lease in `dir` and runs it (see [`run`]).
pub fn main(dir: &Path) -> i32 {
    let lease = fs::read(dir.join(LEASE))
        .ok()
        .and_then(|b| <factotum_proto::Lease as prost::Message>::decode(b.as_slice()).ok());
    match lease {
        Some(lease) => run(dir, &lease.command_line),
        None => {
            eprintln!("factotum-shim: no readable lease in {}", dir.display());
            3
        }
    }
}

/// `<state dir>/attempts/<run>-<task>-<attempt>`.
pub fn attempt_dir(state_dir: &Path, run: &str, task: u32, attempt: u32) -> PathBuf {
    state_dir
        .join("attempts")
        .join(format!("{run}-{task}-{attempt}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_output_lines_or_the_exit_never_both() {
        assert_eq!(
            parse_frame("1hello"),
            Some(Frame::Line(Stream::Stdout, "hello"))
        );
        assert_eq!(
            parse_frame("2oops"),
            Some(Frame::Line(Stream::Stderr, "oops"))
        );
        assert_eq!(
            parse_frame("X3 1500"),
            Some(Frame::Exit(Recorded {
                code: 3,
                duration: Duration::from_nanos(1500)
            }))
        );
        assert_eq!(parse_frame("Xjunk"), None);
        assert_eq!(parse_frame(""), None);
    }

    #[test]
    fn a_shim_is_recognised_by_an_absolute_or_a_relative_directory() {
        let base = std::env::temp_dir().join(format!("factotum-shim-alive-{}", std::process::id()));
        let dir = base.join("attempts").join("run-0-1");
        fs::create_dir_all(&dir).unwrap();
        // Stand-ins for shims: one named by the absolute path, one (from an older agent) by a
        // path relative to its working directory. `; :` keeps sh from exec'ing sleep.
        let mut children = [
            (dir.clone(), None),
            (PathBuf::from("attempts/run-0-1"), Some(&base)),
        ]
        .map(|(arg, cwd)| {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "sleep 30; :", "shim"]).arg(arg);
            if let Some(cwd) = cwd {
                c.current_dir(cwd);
            }
            c.spawn().unwrap()
        });
        for child in &children {
            let pid = i32::try_from(child.id()).unwrap();
            // Right after the spawn, exec may not have set up the command line yet.
            for _ in 0..200 {
                if fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"\0")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(shim_alive(pid, &dir));
            assert!(!shim_alive(pid, &base.join("attempts").join("run-0-2")));
        }
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
            assert!(!shim_alive(i32::try_from(child.id()).unwrap(), &dir));
        }
        let _ = fs::remove_dir_all(base);
    }
}
