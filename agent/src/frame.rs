//! The shim's framing: how a task's output and its end travel from the shim to the agent.
//!
//! One line per event, on the shim's stdout and in `<attempt dir>/output`: `1<line>` for the
//! task's stdout, `2<line>` for its stderr; stdout also ends with `X<code> <nanos>`, which is
//! also what `<attempt dir>/exit` holds (without the `X`). Every reader goes through
//! [`parse_frame`]; every writer through [`line`] and [`exit`].

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use factotum_common::run::Stream;

/// What the shim recorded when the task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub code: i32,
    pub duration: Duration,
}

/// One line of the framing.
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

/// `<code> <nanos>`: how the exit is written, in `<dir>/exit` and after `X`.
pub fn parse_exit(text: &str) -> Option<Recorded> {
    let mut parts = text.split_whitespace();
    let code = parts.next()?.parse().ok()?;
    let nanos: u64 = parts.next()?.parse().ok()?;
    Some(Recorded {
        code,
        duration: Duration::from_nanos(nanos),
    })
}

/// The frame of one output line (without its newline).
pub fn line(stream: Stream, text: &str) -> String {
    let tag = match stream {
        Stream::Stdout => '1',
        Stream::Stderr => '2',
    };
    format!("{tag}{text}")
}

/// The exit as `<dir>/exit` holds it (`X` and this is the closing frame).
pub fn exit(code: i32, duration: Duration) -> String {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    format!("{code} {nanos}")
}

/// A process's exit code as Factotum counts it (and an `X` frame records it): killed by a
/// signal is 1.
pub fn exit_code(s: std::process::ExitStatus) -> i32 {
    s.code()
        .unwrap_or(if s.signal().is_some() { 1 } else { -1 })
}

/// Drops a line's terminator (`\n` or `\r\n`); returns whether there was one.
pub fn strip_newline(line: &mut Vec<u8>) -> bool {
    if line.last() != Some(&b'\n') {
        return false;
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    true
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
    fn what_is_written_reads_back() {
        for stream in [Stream::Stdout, Stream::Stderr] {
            assert_eq!(
                parse_frame(&line(stream, "a 1")),
                Some(Frame::Line(stream, "a 1"))
            );
        }
        let written = format!("X{}", exit(7, Duration::from_millis(2)));
        assert_eq!(
            parse_frame(&written),
            Some(Frame::Exit(Recorded {
                code: 7,
                duration: Duration::from_millis(2)
            }))
        );
    }

    #[test]
    fn newlines_are_dropped_once() {
        let mut l = b"a\r\n".to_vec();
        assert!(strip_newline(&mut l));
        assert_eq!(l, b"a");
        assert!(!strip_newline(&mut l));
    }
}
