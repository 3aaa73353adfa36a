//! One enormous output line must not take the runner's memory with it (issue 10): a task printing
//! 64 MB with no newline at all runs through `factotum run` to SUCCEEDED, its output passed on in
//! pieces of at most 1 MiB, and the runner's peak memory stays under a fixed ceiling. Before, the
//! whole line was buffered (and copied) at once: ~330 MB of peak RSS for a 100 MB line.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use support::*;

/// The agent's cap on one line's bytes (`factotum_agent::executor::MAX_LINE`).
const MAX_LINE: usize = 1 << 20;

/// What the runner may use at its peak, whatever the line's length.
const CEILING_KIB: u64 = 128 * 1024;

const OUTPUT: usize = 64_000_000;

#[test]
fn a_huge_line_without_a_newline_runs_in_bounded_memory() {
    let d = Dir::new();
    let marker = d.file("probe");
    let ff = d.write(
        "long.factfile",
        &factfile(
            "long",
            vec![
                task(
                    "big",
                    &format!("head -c {OUTPUT} /dev/zero | tr '\\0' a"),
                    &[],
                    &[],
                ),
                // Holds the runner alive once the big task is done, for its memory to be read.
                task(
                    "probe",
                    &format!("touch {}; sleep 3", marker.display()),
                    &[],
                    &["big"],
                ),
            ],
        ),
    );
    let mut child = factotum()
        .args(["run", &ff])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.stdout.take().unwrap();
    // The longest line printed, and the bytes of the task's output that were printed.
    let reader = std::thread::spawn(move || {
        let (mut longest, mut printed) = (0, 0);
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            longest = longest.max(line.len());
            printed += line.iter().filter(|&&b| b == b'a').count();
            line.clear();
        }
        (longest, printed)
    });
    let mut err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let probed = eventually(Duration::from_secs(60), || marker.exists());
    let peak = peak_rss_kib(pid as i32);
    let status = child.wait().unwrap();
    let (longest, printed) = reader.join().unwrap();
    let err = err.join().unwrap();
    assert!(probed, "the big task never ended: {err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("Task 'big': succeeded"), "{err}");
    eprintln!(
        "runner peak RSS {peak} KiB for a {OUTPUT}-byte line; longest line printed {longest} bytes; {printed} bytes of it printed"
    );
    assert!(
        peak < CEILING_KIB,
        "the runner peaked at {peak} KiB (ceiling {CEILING_KIB} KiB) on a {OUTPUT}-byte line"
    );
    // Printed in pieces: `[big] ` and at most MAX_LINE bytes of the line, and a newline.
    assert!(longest <= MAX_LINE + "[big] \n".len(), "{longest}");
    assert!(printed > 0);
}
