//! The shim's framing: how a task's output and its end travel from the shim to the agent.
//!
//! One line per event, on the shim's stdout and in `<attempt dir>/output`: `1<line>` for the
//! task's stdout, `2<line>` for its stderr; a line longer than the shim's piece size is written
//! in pieces, each after the first marked `+` (`+1<more of the line>`). Stdout also ends with
//! `X<code> <nanos>`, which is also what `<attempt dir>/exit` holds (without the `X`). Every
//! reader goes through [`parse_frame`]; every writer through [`line`] and [`exit`].
//!
//! Output is cut into lines (and long lines into pieces) by [`Splitter`], for the executor and
//! the shim alike.

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
    /// A line of output, or a piece of a long one: `continued` goes on the line the stream's
    /// previous piece began.
    Line {
        stream: Stream,
        text: &'a str,
        continued: bool,
    },
    Exit(Recorded),
}

/// Reads one framed line; `None` for anything else.
pub fn parse_frame(line: &str) -> Option<Frame<'_>> {
    let (continued, line) = match line.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (tag, text) = line.split_at_checked(1)?;
    let stream = match tag {
        "1" => Stream::Stdout,
        "2" => Stream::Stderr,
        "X" if !continued => return parse_exit(text).map(Frame::Exit),
        _ => return None,
    };
    Some(Frame::Line {
        stream,
        text,
        continued,
    })
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

/// The frame of one output line (without its newline), or of a piece of one.
pub fn line(stream: Stream, text: &str, continued: bool) -> String {
    let tag = match stream {
        Stream::Stdout => '1',
        Stream::Stderr => '2',
    };
    let mark = if continued { "+" } else { "" };
    format!("{mark}{tag}{text}")
}

/// What a frame adds to the text it carries, at most: `+`, the stream's tag and the newline.
pub const FRAMING: usize = 3;

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

/// Whether a framed piece from a shim may have been cut for its length (the next piece of its
/// stream may go on its line): the shim cuts at [`SHIM_PIECE`] bytes, less at most three of a
/// character that waits for the next piece. The framing does not say; a shorter piece always
/// ends its line.
pub fn may_continue(text: &str) -> bool {
    text.len() + 3 >= SHIM_PIECE
}

/// The most bytes of one output line held at once. A longer line (or output with no newline at
/// all) is passed on in pieces of at most this size, each after the first flagged `continued`,
/// so what a task prints never costs more than this per pipe. Pieces end on a character
/// boundary; the result's tails keep the line's bytes as written (nothing added between pieces).
pub const MAX_LINE: usize = 1 << 20;

/// The most bytes of a line the shim puts in one frame.
pub const SHIM_PIECE: usize = MAX_LINE - FRAMING;

/// A line, or a piece of one.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    /// Without its newline.
    pub text: String,
    /// It goes on the line the previous piece began.
    pub continued: bool,
    /// The line ends with it.
    pub ends: bool,
}

/// Cuts a byte stream into lines, and a line longer than `max` bytes into pieces of at most
/// `max` bytes, cut on a character boundary (the bytes of a character cut in two wait for the
/// next piece). It holds at most `max` bytes. Pure: the reader hands it what it has buffered.
///
/// [`Splitter::batching`] passes on every whole line the reader holds at once, as one piece
/// whose lines are joined by `\n` (each line's terminator, `\n` or `\r\n`, becomes that `\n`):
/// one event per read instead of one per line, which is what lets short-line output go at
/// millions of lines a second. A consumer that cares about lines splits the piece on `\n`; a
/// tail that joins lines with `\n` gets the same text either way.
#[derive(Debug)]
pub struct Splitter {
    /// Bytes of the line (or piece) being read; kept across reads, so a read cut short (by
    /// `select!`) loses nothing.
    buf: Vec<u8>,
    /// The next piece continues a line whose start was already passed on.
    continues: bool,
    max: usize,
    /// Several whole lines per piece (see [`Splitter::batching`]).
    batch: bool,
}

impl Splitter {
    pub fn new(max: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            continues: false,
            max: max.max(4),
            batch: false,
        }
    }

    /// A splitter whose pieces hold every whole line available at once (at most `max` bytes).
    pub fn batching(max: usize) -> Splitter {
        Splitter {
            batch: true,
            ..Splitter::new(max)
        }
    }

    /// Takes what it can of `available` (what the reader holds, not empty): how many bytes it
    /// consumed, and the piece they completed, if any.
    pub fn feed(&mut self, available: &[u8]) -> (usize, Option<Piece>) {
        let room = self.max - self.buf.len();
        let window = &available[..available.len().min(room)];
        // Batching: up to the last newline (searched from the end, so short lines cost little);
        // but a long line already passed on in part ends at its own newline, in a piece of its
        // own, as without batching.
        let newline = if self.batch && !self.continues {
            window.iter().rposition(|&b| b == b'\n')
        } else {
            window.iter().position(|&b| b == b'\n')
        };
        if let Some(i) = newline {
            self.buf.reserve_exact(i + 1);
            self.buf.extend_from_slice(&window[..=i]);
            return (i + 1, Some(self.take(true)));
        }
        self.buf.extend_from_slice(window);
        let piece = (self.buf.len() >= self.max).then(|| self.take(false));
        (window.len(), piece)
    }

    /// The end of the stream: the last line, if it had no newline.
    pub fn finish(&mut self) -> Option<Piece> {
        (!self.buf.is_empty()).then(|| self.take(true))
    }

    fn take(&mut self, ends: bool) -> Piece {
        let mut bytes = if ends {
            std::mem::take(&mut self.buf)
        } else {
            let rest = self.buf.split_off(utf8_boundary(&self.buf));
            std::mem::replace(&mut self.buf, rest)
        };
        if ends {
            strip_newline(&mut bytes);
            if self.batch && bytes.contains(&b'\r') {
                crlf_to_lf(&mut bytes);
            }
        }
        let continued = std::mem::replace(&mut self.continues, !ends);
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Piece {
            text,
            continued,
            ends,
        }
    }
}

/// Every `\r\n` in `bytes` made `\n` (the lines inside a batch lose their `\r` as a lone
/// line does in [`strip_newline`]).
fn crlf_to_lf(bytes: &mut Vec<u8>) {
    let mut kept = 0;
    for i in 0..bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        bytes[kept] = bytes[i];
        kept += 1;
    }
    bytes.truncate(kept);
}

/// How much of `bytes` ends on a character boundary: all of it, unless it ends inside a UTF-8
/// character (then up to that character's first byte).
fn utf8_boundary(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: the character started further back
        }
        let width = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if width > back {
            bytes.len() - back
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_output_lines_or_the_exit_never_both() {
        assert_eq!(
            parse_frame("1hello"),
            Some(Frame::Line {
                stream: Stream::Stdout,
                text: "hello",
                continued: false
            })
        );
        assert_eq!(
            parse_frame("2oops"),
            Some(Frame::Line {
                stream: Stream::Stderr,
                text: "oops",
                continued: false
            })
        );
        assert_eq!(
            parse_frame("X3 1500"),
            Some(Frame::Exit(Recorded {
                code: 3,
                duration: Duration::from_nanos(1500)
            }))
        );
        assert_eq!(
            parse_frame("+2ops"),
            Some(Frame::Line {
                stream: Stream::Stderr,
                text: "ops",
                continued: true
            })
        );
        assert_eq!(parse_frame("+X3 1500"), None);
        assert_eq!(parse_frame("Xjunk"), None);
        assert_eq!(parse_frame(""), None);
    }

    #[test]
    fn what_is_written_reads_back() {
        for stream in [Stream::Stdout, Stream::Stderr] {
            for continued in [false, true] {
                assert_eq!(
                    parse_frame(&line(stream, "+a 1", continued)),
                    Some(Frame::Line {
                        stream,
                        text: "+a 1",
                        continued
                    })
                );
            }
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

    fn split(input: &[u8], max: usize, read: usize) -> Vec<Piece> {
        split_with(Splitter::new(max), input, read)
    }

    /// Every piece `s` cuts from `input` fed in reads of `read` bytes.
    fn split_with(mut s: Splitter, input: &[u8], read: usize) -> Vec<Piece> {
        let mut pieces = vec![];
        for chunk in input.chunks(read) {
            let mut chunk = chunk;
            while !chunk.is_empty() {
                let (n, piece) = s.feed(chunk);
                chunk = &chunk[n..];
                pieces.extend(piece);
            }
        }
        pieces.extend(s.finish());
        pieces
    }

    fn piece(text: &str, continued: bool, ends: bool) -> Piece {
        Piece {
            text: text.into(),
            continued,
            ends,
        }
    }

    #[test]
    fn lines_come_whole_and_long_ones_in_pieces_whatever_the_reads() {
        for read in [1, 2, 3, 7, 100] {
            assert_eq!(
                split(b"ab\nabcdefghij\r\n\nend", 4, read),
                [
                    piece("ab", false, true),
                    piece("abcd", false, false),
                    piece("efgh", true, false),
                    piece("ij", true, true),
                    piece("", false, true),
                    piece("end", false, true),
                ],
                "reads of {read}"
            );
        }
        // A line of exactly the size: its newline ends it in an empty piece.
        assert_eq!(
            split(b"abcd\n", 4, 10),
            [piece("abcd", false, false), piece("", true, true)]
        );
    }

    #[test]
    fn pieces_end_between_characters() {
        // "é" is two bytes: a cut at 4 bytes falls inside the second.
        let pieces = split("xéééé".as_bytes(), 4, 64);
        assert_eq!(
            pieces,
            [
                piece("xé", false, false),
                piece("éé", true, false),
                piece("é", true, true),
            ]
        );
    }

    /// The lines pieces stand for: a batch's lines split on `\n`, a `continued` piece's first
    /// line going on the previous one.
    fn lines_of(pieces: &[Piece]) -> Vec<String> {
        let mut lines: Vec<String> = vec![];
        for p in pieces {
            let mut parts = p.text.split('\n');
            if p.continued {
                let first = parts.next().unwrap_or_default();
                lines.last_mut().expect("a line to go on").push_str(first);
            }
            lines.extend(parts.map(str::to_string));
        }
        lines
    }

    #[test]
    fn a_batching_splitter_passes_every_whole_line_of_a_read_at_once_and_loses_no_line() {
        let input = b"ab\nabcdefghij\r\n\nx\ry\r\nend";
        let want = ["ab", "abcdefghij", "", "x\ry", "end"];
        for read in [1, 2, 3, 7, 100] {
            for max in [5, 6, 64] {
                let pieces = split_with(Splitter::batching(max), input, read);
                assert_eq!(lines_of(&pieces), want, "reads of {read}, max {max}");
                assert!(pieces.iter().all(|p| p.text.len() <= max), "{pieces:?}");
                if read == 100 && max == 64 {
                    // One read: its whole lines in one piece, the unfinished one at the end.
                    assert_eq!(
                        pieces,
                        [
                            piece("ab\nabcdefghij\n\nx\ry", false, true),
                            piece("end", false, true)
                        ]
                    );
                }
            }
        }
    }
}
