use super::*;

const OUT: Stream = Stream::Stdout;
const ERR: Stream = Stream::Stderr;

fn rate(n: u64) -> StreamRate {
    StreamRate(NonZeroU64::new(n).unwrap())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A throttle at `n` bytes/s from `t0`, with room in the queue unless said otherwise.
struct Clocked {
    t0: Instant,
    throttle: Throttle,
}

impl Clocked {
    fn new(n: u64) -> Clocked {
        let t0 = Instant::now();
        Clocked {
            t0,
            throttle: Throttle::new(rate(n), t0),
        }
    }

    /// A piece of `len` bytes at `at` after the start.
    fn offer(&mut self, at: Duration, stream: Stream, len: usize, continued: bool) -> Verdict {
        self.throttle.offer(self.t0 + at, stream, len, continued, 2)
    }

    fn line(&mut self, at: Duration, len: usize) -> Verdict {
        self.offer(at, OUT, len, false)
    }
}

fn notice(bytes: u64, n: u64) -> Notice {
    Notice {
        bytes,
        over_rate: true,
        queue_full: false,
        rate: rate(n),
    }
}

#[test]
fn output_under_the_rate_is_all_streamed_and_needs_no_notice() {
    let mut c = Clocked::new(1000);
    // 100 bytes (99 and a newline) every 100 ms: exactly the rate, for ten seconds.
    for i in 0..100 {
        assert_eq!(c.line(ms(100 * i), 99), Verdict::Stream(None), "piece {i}");
    }
    // Bursts of 900 bytes a second apart, under the one second's worth the bucket holds.
    for i in 0..5 {
        for j in 0..9 {
            assert_eq!(c.line(ms(20_000 + 1000 * i + j), 99), Verdict::Stream(None));
        }
    }
    assert_eq!(c.throttle.finish(), None);
}

#[test]
fn a_second_s_worth_passes_at_once_then_pieces_are_dropped_and_told_at_the_end() {
    let mut c = Clocked::new(1000);
    for _ in 0..10 {
        assert_eq!(c.line(ms(0), 99), Verdict::Stream(None));
    }
    assert_eq!(c.line(ms(0), 99), Verdict::Skip);
    assert_eq!(
        c.line(ms(500), 49),
        Verdict::Skip,
        "a gap waits for a full bucket"
    );
    assert_eq!(c.throttle.finish(), Some(notice(150, 1000)));
    assert_eq!(c.throttle.finish(), None, "one notice per gap");
}

#[test]
fn a_flood_is_streamed_at_the_rate_with_one_notice_per_gap_and_every_byte_counted() {
    let mut c = Clocked::new(1000);
    let (mut printed, mut streamed, mut notices) = (0, 0, vec![]);
    // 100 bytes a millisecond for five seconds: 100 times the rate.
    for i in 0..5000 {
        printed += 100;
        match c.line(ms(i), 99) {
            Verdict::Stream(told) => {
                streamed += 100;
                notices.extend(told);
            }
            Verdict::Skip => {}
        }
    }
    notices.extend(c.throttle.finish());
    let told: u64 = notices.iter().map(|n| n.bytes).sum();
    assert_eq!(streamed + told, printed, "every byte streamed or told");
    // The first second's worth at once, then one second's worth per full bucket.
    assert!(streamed <= 1000 * 6, "{streamed}");
    assert!(streamed >= 1000 * 4, "{streamed}");
    // A gap lasts until a second's worth is saved: about one notice a second, not one a line.
    assert!((4..=6).contains(&notices.len()), "{notices:?}");
    assert!(notices.iter().all(|n| n.over_rate && !n.queue_full));
}

#[test]
fn a_piece_larger_than_the_bucket_passes_a_full_bucket_and_is_paid_for_after() {
    let mut c = Clocked::new(1000);
    // 5,000 bytes at 1,000 bytes/s: streamed whole, not dropped forever.
    assert_eq!(c.line(ms(0), 4999), Verdict::Stream(None));
    // 4,000 bytes owed: after a second, still 3,000.
    assert_eq!(c.line(ms(1000), 9), Verdict::Skip);
    assert_eq!(c.line(ms(4999), 9), Verdict::Skip, "not yet full");
    assert_eq!(
        c.line(ms(5000), 9),
        Verdict::Stream(Some(notice(20, 1000))),
        "full again five seconds on"
    );
    // A huge piece again, once the bucket is full: the average stays at the rate.
    assert_eq!(c.line(ms(6000), 999_999), Verdict::Stream(None));
}

#[test]
fn after_a_dropped_piece_the_rest_of_its_line_is_dropped_and_a_gap_ends_at_a_line_start() {
    let mut c = Clocked::new(1000);
    // A long line: its first piece streamed, its second dropped (the bucket is empty).
    assert_eq!(c.offer(ms(0), OUT, 999, false), Verdict::Stream(None));
    assert_eq!(c.offer(ms(0), OUT, 99, true), Verdict::Skip);
    // The bucket is full again, but a continued piece after a gap would glue the line's end
    // onto its start: dropped.
    assert_eq!(c.offer(ms(3000), OUT, 99, true), Verdict::Skip);
    // The next line's start ends the gap, its notice first.
    assert_eq!(
        c.offer(ms(3000), OUT, 9, false),
        Verdict::Stream(Some(notice(200, 1000)))
    );
    assert_eq!(c.offer(ms(3000), OUT, 9, true), Verdict::Stream(None));
    assert_eq!(c.throttle.finish(), None);
}

#[test]
fn a_notice_cuts_the_stderr_line_it_interrupts_and_those_bytes_go_in_the_next_notice() {
    let mut c = Clocked::new(1000);
    // A long stderr line begins; stdout floods.
    assert_eq!(c.offer(ms(0), ERR, 99, false), Verdict::Stream(None));
    assert_eq!(c.offer(ms(0), OUT, 899, false), Verdict::Stream(None));
    assert_eq!(c.offer(ms(0), OUT, 99, false), Verdict::Skip);
    // Stdout resumes: the notice goes on stderr, in the middle of the stderr line.
    assert_eq!(
        c.offer(ms(2000), OUT, 9, false),
        Verdict::Stream(Some(notice(100, 1000)))
    );
    // So the rest of that stderr line is dropped: shown after the notice it would read as the
    // notice's end. No second notice for it until the end (or the next gap's).
    assert_eq!(c.offer(ms(2000), ERR, 49, true), Verdict::Skip);
    assert_eq!(c.offer(ms(2000), OUT, 9, false), Verdict::Stream(None));
    assert_eq!(c.offer(ms(2000), ERR, 9, false), Verdict::Stream(None));
    let last = c.throttle.finish().unwrap();
    assert_eq!(
        last,
        Notice {
            bytes: 50,
            over_rate: false,
            queue_full: false,
            rate: rate(1000)
        }
    );
    assert!(
        last.to_string().contains("over --max-stream-rate"),
        "{last}"
    );
}

#[test]
fn a_stderr_line_resuming_after_a_gap_is_not_cut_by_its_own_notice() {
    let mut c = Clocked::new(1000);
    assert_eq!(c.offer(ms(0), ERR, 999, false), Verdict::Stream(None));
    assert_eq!(c.offer(ms(0), ERR, 99, false), Verdict::Skip);
    assert_eq!(
        c.offer(ms(1000), ERR, 99, false),
        Verdict::Stream(Some(notice(100, 1000)))
    );
    assert_eq!(c.offer(ms(1000), ERR, 99, true), Verdict::Stream(None));
}

#[test]
fn a_full_queue_drops_without_waiting_and_the_notice_says_so() {
    let t0 = Instant::now();
    let mut t = Throttle::new(rate(1000), t0);
    assert_eq!(t.offer(t0, OUT, 9, false, 0), Verdict::Skip);
    // Room for the piece but not for the notice before it: still in the gap.
    assert_eq!(t.offer(t0, OUT, 9, false, 1), Verdict::Skip);
    let Verdict::Stream(Some(n)) = t.offer(t0, OUT, 9, false, 2) else {
        panic!("room for both: the gap ends")
    };
    assert_eq!((n.bytes, n.over_rate, n.queue_full), (20, false, true));
    assert_eq!(
        n.to_string(),
        "[factotum] 20 bytes of output not streamed (the coordinator was not keeping up); \
         the task's result keeps its tail"
    );
}

#[test]
fn the_notice_names_the_flag_and_the_rate_as_written() {
    let n = Notice {
        bytes: 123_456,
        over_rate: true,
        queue_full: false,
        rate: rate(1 << 20),
    };
    assert_eq!(
        n.to_string(),
        "[factotum] 123456 bytes of output not streamed (over --max-stream-rate 1MiB/s); \
         the task's result keeps its tail"
    );
    let both = Notice {
        queue_full: true,
        ..n
    };
    assert!(both
        .to_string()
        .contains("(over --max-stream-rate 1MiB/s, and the coordinator was not keeping up)"));
    assert_eq!(rate(64 << 10).to_string(), "64KiB/s");
    assert_eq!(rate(3 << 30).to_string(), "3GiB/s");
    assert_eq!(rate(1000).to_string(), "1000 bytes/s");
}

#[test]
fn frequent_refills_lose_no_fraction_of_a_byte() {
    let t0 = Instant::now();
    let mut b = Bucket::new(rate(1000), t0);
    assert!(b.take(t0, 1000));
    // Every 1.5 ms (1.5 bytes' worth) for 600 ms: 600 bytes, not 400.
    for i in 1..=400 {
        b.refill(t0 + Duration::from_micros(1500 * i));
    }
    assert_eq!(b.tokens, 600);
    // Time going backwards changes nothing.
    b.refill(t0);
    assert_eq!(b.tokens, 600);
}
