//! Everything the CLI prints goes through here, so a reader that goes away
//! (`factotum status | head`) is not a panic.
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe fails with `EPIPE`, and `print!` panics on
//! that (exit 101 and a backtrace). Here a failed write instead marks its stream closed: the rest
//! of what would have gone to it is dropped, silently, and the command carries on to its usual
//! exit code (not 141: nothing was killed). We chose this over restoring SIGPIPE's default
//! action because `factotum run` must not die while its tasks run: with stdout closed the job
//! keeps running, its tasks are still reported on stderr, to webhooks and in the exit code, and
//! only the lines nobody can read are dropped. `submit --wait` follows its run to the end the same
//! way; `watch`, which only looks, stops at once ([`stdout_closed`]). Any other write error
//! (a full disk) also closes the stream, with one line on stderr saying so.
//!
//! The live progress line ([`crate::progress`]) is drawn here too, on stderr, and erased before
//! any other line is written (to stderr, or to stdout when stdout is the terminal too).

use std::fmt;
use std::io::{ErrorKind, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
/// A progress line is on the terminal (stderr) now.
static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Carriage return, then erase the whole line.
const ERASE: &str = "\r\x1b[2K";

/// Writes to stdout (see the module's comment for what a closed stdout does).
pub fn stdout(args: fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    // Only when both go to the terminal is the progress line in the way of stdout's lines.
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    if *TERMINAL.get_or_init(|| std::io::stdout().is_terminal()) {
        progress_clear();
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != ErrorKind::BrokenPipe {
            stderr(format_args!("Error: cannot write to stdout: {e}\n"));
        }
    }
}

/// Writes to stderr; a failure closes it quietly (there is nowhere left to say so).
pub fn stderr(args: fmt::Arguments) {
    progress_clear();
    raw_stderr(args);
}

fn raw_stderr(args: fmt::Arguments) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    // Formatted first, then written at once: stderr is unbuffered, and writing the arguments
    // as they come would cost a `write` per piece (a line and its newline: two per line).
    let text = match args.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(fmt::format(args)),
    };
    let mut err = std::io::stderr().lock();
    if err
        .write_all(text.as_bytes())
        .and_then(|()| err.flush())
        .is_err()
    {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Draws `line` as the progress line, in place of the one before (stderr must be a terminal:
/// the caller, [`crate::progress::Progress`], checks).
pub fn progress(line: &str) {
    PROGRESS_SHOWN.store(true, Ordering::Relaxed);
    raw_stderr(format_args!("{ERASE}{line}"));
}

/// Erases the progress line, if one is shown.
pub fn progress_clear() {
    if PROGRESS_SHOWN.swap(false, Ordering::Relaxed) {
        raw_stderr(format_args!("{ERASE}"));
    }
}

/// Whether a write to stdout failed: nobody reads what we print any more.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `print!` that cannot panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// `println!` that cannot panic.
macro_rules! outln {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that cannot panic.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, out, outln};
