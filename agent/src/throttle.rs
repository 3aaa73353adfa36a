//! How much of an attempt's output is streamed to the coordinator (`--max-stream-rate`).
//!
//! A task may print far faster than a coordinator, its watchers and the network between should
//! carry. Each attempt's output pieces pass a token bucket: a piece within the rate is streamed,
//! one over it is *dropped* (never waited for: the task's pipes are read at the task's pace) and
//! its bytes are counted; when streaming resumes, or the attempt ends, one notice says how many
//! bytes were not streamed. Only streaming is throttled: the result's tails and the shim's
//! `output` file see every byte.
//!
//! Pure: time is an input ([`Throttle::offer`] takes `now`), and so is whether the queue to the
//! coordinator has room, so every decision can be tested without a clock or a channel.
//!
//! Decisions, and why:
//! - A piece costs its bytes plus one (the newline that ended it, or the cut): what the task
//!   printed, and a flood of empty lines is not free.
//! - The bucket holds one second's worth. When it is full any one piece passes, even one larger
//!   than the rate (a 1 MiB line at `64KiB/s`), and the bucket goes into debt for the excess:
//!   such a line is streamed now and then, never dropped forever, and the average stays at the
//!   rate.
//! - Once a piece is dropped, the throttle keeps dropping until the bucket is full again (a
//!   second's worth of budget saved). So a flood gives one notice per gap, with whole bursts of
//!   consecutive lines between gaps, rather than a notice before every line that squeezes through.
//! - Streaming resumes only at the start of a line, and after a dropped piece the rest of its
//!   line is dropped too: a `continued` piece is never streamed after a gap, so a console or a
//!   client joining pieces never glues a line's end onto another line's start. The notice is a
//!   line of its own on stderr, so a stderr line still open when it is sent is cut there: its
//!   further pieces are dropped (and counted) as well.
//! - A queue with no room counts as over the rate (the notice says which it was): a coordinator
//!   that falls behind must not stall the task either.

use std::fmt;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use factotum_common::run::Stream;

/// Bytes per second, per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRate(pub NonZeroU64);

impl StreamRate {
    pub fn bytes_per_second(self) -> u64 {
        self.0.get()
    }
}

/// As the flag is written: `1MiB/s`, `64KiB/s`, `1000 bytes/s`.
impl fmt::Display for StreamRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.bytes_per_second();
        for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n.is_multiple_of(scale) {
                return write!(f, "{}{unit}/s", n / scale);
            }
        }
        write!(f, "{n} bytes/s")
    }
}

/// A token bucket of bytes: refills at `rate`, holds at most one second's worth, and may go
/// into debt when a piece larger than what it holds passes a full bucket.
#[derive(Debug, Clone)]
struct Bucket {
    rate: i64,
    tokens: i64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    fn new(rate: StreamRate, now: Instant) -> Bucket {
        // Far beyond any pipe, and small enough that no sum below overflows.
        let rate = i64::try_from(rate.bytes_per_second()).map_or(1 << 50, |r| r.min(1 << 50));
        Bucket {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Adds what was earned since the last refill, up to one second's worth.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let rate = self.rate as u128;
        let earned = elapsed.saturating_mul(rate) / 1_000_000_000;
        let room = (self.rate - self.tokens) as u128;
        if earned >= room {
            self.tokens = self.rate;
            self.at = now;
        } else if earned > 0 {
            self.tokens += earned as i64;
            // Only the time those tokens took is used up: no fraction of a byte is lost to
            // frequent refills. Rounded up, it never runs past `now`.
            let used = (earned * 1_000_000_000).div_ceil(rate);
            self.at += Duration::from_nanos(used as u64);
        }
    }

    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
    }

    /// Takes `cost` if the bucket holds it, or if it is full (then possibly into debt).
    fn take(&mut self, now: Instant, cost: u64) -> bool {
        let cost = i64::try_from(cost)
            .unwrap_or(i64::MAX / 2)
            .min(i64::MAX / 2);
        if self.full(now) || self.tokens >= cost {
            self.tokens -= cost;
            return true;
        }
        false
    }
}

/// What to do with one piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stream it; first, when there is one, the notice that ends a gap.
    Stream(Option<Notice>),
    /// Drop it (its bytes count towards the next notice).
    Skip,
}

/// The end of a gap: how many bytes were not streamed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub bytes: u64,
    /// Some were over the rate.
    pub over_rate: bool,
    /// Some found the queue to the coordinator full.
    pub queue_full: bool,
    pub rate: StreamRate,
}

/// The notice's line, shown on the console as one of the task's stderr lines.
impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pieces dropped only because their line was already cut count as over the rate: the
        // throttle (or its notice) cut that line.
        let why = match (self.over_rate, self.queue_full) {
            (false, true) => "the coordinator was not keeping up".to_string(),
            (true, true) => format!(
                "over --max-stream-rate {}, and the coordinator was not keeping up",
                self.rate
            ),
            _ => format!("over --max-stream-rate {}", self.rate),
        };
        write!(
            f,
            "[factotum] {} bytes of output not streamed ({why}); the task's result keeps its tail",
            self.bytes
        )
    }
}

/// Streaming, or in a gap since a piece was dropped over the rate or for want of room.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// `unreported`: bytes of lines cut earlier, dropped since the last notice; they go in the
    /// next one (they are the end of a gap already told, or of a line a notice cut: no new
    /// notice, and no wait for a full bucket, for them).
    Streaming { unreported: u64 },
    Gap {
        bytes: u64,
        over_rate: bool,
        queue_full: bool,
    },
}

/// One attempt's throttle.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate: StreamRate,
    bucket: Bucket,
    state: State,
    /// Per stream (stdout, stderr): its current line lost a piece, or was cut by a notice, so
    /// its further (`continued`) pieces are dropped.
    cut: [bool; 2],
}

impl Throttle {
    /// A throttle whose bucket starts full at `now`.
    pub fn new(rate: StreamRate, now: Instant) -> Throttle {
        Throttle {
            rate,
            bucket: Bucket::new(rate, now),
            state: State::Streaming { unreported: 0 },
            cut: [false; 2],
        }
    }

    /// Decides on a piece of `len` bytes on `stream` (`continued`: more of the stream's current
    /// line) arriving at `now`, when the queue to the coordinator has room for `room` messages
    /// (a notice and its piece need two).
    pub fn offer(
        &mut self,
        now: Instant,
        stream: Stream,
        len: usize,
        continued: bool,
        room: usize,
    ) -> Verdict {
        let cost = len as u64 + 1;
        let s = index(stream);
        if !continued {
            self.cut[s] = false;
        } else if self.cut[s] {
            return self.skip(s, cost, false, false);
        }
        match &self.state {
            State::Streaming { .. } if room == 0 => self.skip(s, cost, false, true),
            State::Streaming { .. } if self.bucket.take(now, cost) => Verdict::Stream(None),
            State::Streaming { .. } => self.skip(s, cost, true, false),
            // A gap ends at a line's start, once a second's worth of budget is saved.
            State::Gap { .. } if continued => self.skip(s, cost, false, false),
            State::Gap { .. } if !self.bucket.full(now) => self.skip(s, cost, true, false),
            State::Gap { .. } if room < 2 => self.skip(s, cost, false, true),
            State::Gap { .. } => {
                self.bucket.take(now, cost);
                let notice = self.finish();
                // The notice is a stderr line: a stderr line it interrupts is cut there.
                if stream != Stream::Stderr {
                    self.cut[index(Stream::Stderr)] = true;
                }
                Verdict::Stream(notice)
            }
        }
    }

    /// Ends the current gap, if any: its notice (at the attempt's end, or when streaming
    /// resumes), also for bytes dropped since the last one.
    pub fn finish(&mut self) -> Option<Notice> {
        match std::mem::replace(&mut self.state, State::Streaming { unreported: 0 }) {
            State::Streaming { unreported: 0 } => None,
            State::Streaming { unreported } => Some(Notice {
                bytes: unreported,
                over_rate: false,
                queue_full: false,
                rate: self.rate,
            }),
            State::Gap {
                bytes,
                over_rate,
                queue_full,
            } => Some(Notice {
                bytes,
                over_rate,
                queue_full,
                rate: self.rate,
            }),
        }
    }

    /// Drops a piece: over the rate, for want of room, or (neither) because its line was cut.
    fn skip(&mut self, s: usize, cost: u64, over_rate: bool, queue_full: bool) -> Verdict {
        self.cut[s] = true;
        match &mut self.state {
            State::Streaming { unreported } if !over_rate && !queue_full => *unreported += cost,
            State::Streaming { unreported } => {
                self.state = State::Gap {
                    bytes: *unreported + cost,
                    over_rate,
                    queue_full,
                }
            }
            State::Gap {
                bytes,
                over_rate: o,
                queue_full: q,
            } => {
                *bytes += cost;
                *o |= over_rate;
                *q |= queue_full;
            }
        }
        Verdict::Skip
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

#[cfg(test)]
mod tests;
