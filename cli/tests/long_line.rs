//! One enormous output line must not take the runner's memory with it (issue 10): a task printing
//! 64 MB with no newline at all runs through `factotum run` to SUCCEEDED, its output passed on in
//! pieces of at most 1 MiB, and the runner's peak memory stays under a fixed ceiling. Before, the
//! whole line was buffered (and copied) at once: ~330 MB of peak RSS for a 100 MB line.

mod support;

use std::io::{BufRead, BufReader, Read};
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
    let mut child = spawn_piped(factotum().args(["run", &ff]));
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

/// The shim's piece size: a framed piece (`+`, the stream's tag, the text, a newline) fits in one
/// of the agent's lines.
const SHIM_PIECE: usize = MAX_LINE - 3;

/// A factfile whose task prints `len` bytes of `a` on one line, then `end`, and runs a little
/// longer (for heartbeats).
fn long_line_factfile(d: &Dir, len: usize) -> String {
    let command = format!("head -c {len} /dev/zero | tr '\\0' a; printf '\\nend\\n'; sleep 1.2");
    d.write(
        "pieces.factfile",
        &factfile("pieces", vec![task("big", &command, &[], &[])]),
    )
}

/// The task's last 10,000 characters (the default tail) of output, as written.
fn tail_of(len: usize) -> String {
    let whole = format!("{}\nend", "a".repeat(len));
    whole[whole.len() - 10_000..].to_string()
}

/// Every heartbeat after the line was printed, and the result, carry the tail as written.
fn assert_tails(p: &[serde_json::Value], want: &str) -> usize {
    let stdout_of = |x: &serde_json::Value| x["data"]["taskStates"][0]["stdout"].clone();
    let beats: Vec<&serde_json::Value> = p
        .iter()
        .filter(|x| transitions(std::slice::from_ref(x))[0] == "big RUNNING->RUNNING")
        .filter(|x| stdout_of(x).as_str().is_some_and(|s| s.ends_with("end")))
        .collect();
    for beat in &beats {
        assert_eq!(
            stdout_of(beat).as_str(),
            Some(want),
            "a heartbeat's tail, assembled by the engine from the pieces"
        );
    }
    let last = &p.last().unwrap()["data"]["taskStates"][0];
    assert_eq!(last["stdout"].as_str(), Some(want), "the result's tail");
    beats.len()
}

/// The bytes of `a` printed on `[big]` console lines.
fn printed(o: &std::process::Output) -> usize {
    stdout(o)
        .lines()
        .filter_map(|l| l.strip_prefix("[big] "))
        .filter(|l| l.starts_with('a'))
        .map(str::len)
        .sum()
}

#[test]
fn a_long_line_keeps_its_bytes_in_heartbeat_and_result_tails() {
    let d = Dir::new();
    let rx = Receiver::start();
    // Cut twice, the second cut 100 bytes before the line's end: well inside a 10,000-character
    // tail, where a newline added at a cut would show.
    let len = 2 * MAX_LINE + 100;
    let ff = long_line_factfile(&d, len);
    let o = run(&[
        "run",
        &ff,
        "--webhook",
        &rx.url,
        "--heartbeat-interval",
        "0.3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let beats = assert_tails(&rx.payloads(), &tail_of(len));
    assert!(beats > 0, "{:?}", transitions(&rx.payloads()));
    assert_eq!(printed(&o), len, "printed in pieces, each a console line");
}

#[test]
fn a_long_line_through_a_state_dir_agent_keeps_its_bytes_in_the_result_tail() {
    use support::fleet::{agent, wait_for_agents, Coordinator};
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let state = d.file("state");
    let _a = agent(
        &c.url,
        "keeper",
        None,
        // Every piece streamed: the pieces are the subject here, not the stream rate.
        &[
            "--state-dir",
            &state.to_string_lossy(),
            "--max-stream-rate",
            "unlimited",
        ],
    );
    wait_for_agents(&c.url, 1);
    let rx = Receiver::start();
    // Cut twice by the shim, the second cut 100 bytes before the line's end.
    let len = 2 * SHIM_PIECE + 100;
    let ff = long_line_factfile(&d, len);
    let args = [
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--wait",
        "--webhook",
        &rx.url,
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_tails(&rx.payloads(), &tail_of(len));
    assert_eq!(printed(&o), len);
}
