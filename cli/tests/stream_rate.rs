//! `--max-stream-rate` (issue 12, item 7), with a real coordinator and agent: a task printing
//! 20 MB at once through an agent limited to 64 KiB/s runs to SUCCEEDED; its watcher sees a
//! small part of the output, every byte not streamed counted in a notice (one per gap, not one
//! per line), no line mangled; the result's tail still ends with the task's last line. Output
//! under the rate is streamed whole, without a notice. The same holds for a task the agent
//! adopted after a restart.

mod support;

use std::time::{Duration, Instant};

use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

const RATE: &str = "64KiB";
const RATE_BYTES: f64 = 65536.0;

/// Every line the flood prints but the last: 99 characters and a newline.
fn filler() -> String {
    "x".repeat(99)
}

const LAST: &str = "the-last-line";

/// `yes` the filler `lines` times, then the last line.
fn flood(lines: usize) -> String {
    format!("yes {} | head -n {lines}; echo {LAST}", filler())
}

/// What the console showed of one task: the bytes of its output streamed (each line and its
/// newline), and the byte counts of the notices.
struct Seen {
    streamed: usize,
    notices: Vec<u64>,
}

fn seen(o: &std::process::Output, task: &str) -> Seen {
    let prefix = format!("[{task}] ");
    let mut streamed = 0;
    for line in stdout(o).lines().filter_map(|l| l.strip_prefix(&prefix)) {
        // Whole lines only: no piece of one glued to another.
        assert!(line == filler() || line == LAST, "a mangled line: {line:?}");
        streamed += line.len() + 1;
    }
    let mut notices = vec![];
    for line in stderr(o).lines().filter_map(|l| l.strip_prefix(&prefix)) {
        let Some(rest) = line.strip_prefix("[factotum] ") else {
            panic!("unexpected stderr line {line:?}");
        };
        let want = format!(
            " bytes of output not streamed (over --max-stream-rate {RATE}/s); the task's result keeps its tail"
        );
        let count = rest
            .strip_suffix(&want)
            .unwrap_or_else(|| panic!("unexpected notice {line:?}"));
        notices.push(count.parse().expect("a byte count"));
    }
    Seen { streamed, notices }
}

/// The stdout tail of `task` in the run's last webhook payload.
fn result_tail(rx: &Receiver, task: &str) -> String {
    assert!(eventually(Duration::from_secs(10), || transitions(
        &rx.payloads()
    )
    .iter()
    .any(|t| t.starts_with("job RUNNING->"))));
    let p = rx.payloads();
    let states = p.last().unwrap()["data"]["taskStates"].as_array().unwrap();
    let t = states.iter().find(|t| t["taskName"] == task).unwrap();
    assert_eq!(t["state"], "SUCCEEDED");
    t["stdout"].as_str().unwrap().to_string()
}

/// The console of a flood of `printed` bytes over `took` (at most) at 64 KiB/s: part of it
/// streamed, the rest counted in notices, one per gap of about a second.
fn assert_throttled(s: &Seen, printed: usize, took: Duration) {
    let told: u64 = s.notices.iter().sum();
    eprintln!(
        "{printed} bytes printed in at most {took:?}: {} streamed, {told} told in {} notice(s) {:?}",
        s.streamed,
        s.notices.len(),
        s.notices
    );
    assert!(!s.notices.is_empty(), "no notice");
    assert!(s.notices.iter().all(|&n| n > 0), "{:?}", s.notices);
    assert_eq!(
        s.streamed as u64 + told,
        printed as u64,
        "every byte streamed or counted in a notice"
    );
    // A second's worth at once, then at most the rate.
    let secs = took.as_secs_f64();
    assert!(
        (s.streamed as f64) < RATE_BYTES * (1.0 + secs) + 100.0,
        "{} bytes streamed in {secs:.1} s",
        s.streamed
    );
    assert!(s.streamed < printed / 20, "far fewer than printed");
    // A gap lasts until a second's worth is saved: one notice per second at most, and one at
    // the end.
    assert!(
        (s.notices.len() as f64) <= secs + 1.0,
        "{} notices in {secs:.1} s",
        s.notices.len()
    );
}

#[test]
fn a_task_printing_far_over_the_stream_rate_is_streamed_in_part_with_one_notice_per_gap() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "limited", None, &["--max-stream-rate", RATE]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let rx = Receiver::start();
    let lines = 200_000; // 20 MB
    let ff = d.write(
        "flood.factfile",
        &factfile("flood", vec![task("flood", &flood(lines), &[], &[])]),
    );
    let begun = Instant::now();
    let o = run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--wait",
        "--webhook",
        &rx.url,
    ]);
    let took = begun.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let printed = lines * 100 + LAST.len() + 1;
    assert_throttled(&seen(&o, "flood"), printed, took);
    let tail = result_tail(&rx, "flood");
    assert!(tail.ends_with(&format!("{}\n{LAST}", filler())), "{tail}");
    assert_eq!(tail.len(), 10_000, "the default tail, whole");
}

#[test]
fn output_under_the_stream_rate_is_streamed_whole_without_a_notice() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "limited", None, &["--max-stream-rate", RATE]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    // 120,000 bytes, more than the 64 KiB that may go at once, in three bursts of 40,000 a
    // second apart: under the rate.
    let burst = format!("yes {} | head -n 400", filler());
    let command = format!("{burst}; sleep 1; {burst}; sleep 1; {burst}; echo {LAST}");
    let ff = d.write(
        "calm.factfile",
        &factfile("calm", vec![task("calm", &command, &[], &[])]),
    );
    let o = run(&["submit", &ff, "--coordinator", &c.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = seen(&o, "calm");
    assert_eq!(s.notices, Vec::<u64>::new());
    assert_eq!(s.streamed, 3 * 400 * 100 + LAST.len() + 1, "every line");
    assert!(stdout(&o).contains(&format!("[calm] {LAST}\n")));
}

#[test]
fn a_task_adopted_after_an_agent_restart_is_throttled_too() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    let state = d.file("state").to_string_lossy().into_owned();
    let flags = ["--max-stream-rate", RATE, "--state-dir", &state];
    let mut first = agent(&c.url, "phoenix", None, &flags);
    wait_for_agents(&c.url, 1);
    let rx = Receiver::start();
    let started = d.file("started");
    let lines = 100_000; // 10 MB, printed once the second agent has adopted the task
    let command = format!("touch '{}'; sleep 4; {}", started.display(), flood(lines));
    let ff = d.write(
        "adopted.factfile",
        &factfile("adopted", vec![task("adopted", &command, &[], &[])]),
    );
    let o = run(&["submit", &ff, "--coordinator", &c.url, "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let begun = Instant::now();
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    first.0.kill().unwrap(); // SIGKILL: the task goes on under its shim
    let _ = first.0.wait();
    let _second = agent(&c.url, "phoenix", None, &flags);
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    let took = begun.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let printed = lines * 100 + LAST.len() + 1;
    assert_throttled(&seen(&o, "adopted"), printed, took);
    let tail = result_tail(&rx, "adopted");
    assert!(tail.ends_with(&format!("{}\n{LAST}", filler())), "{tail}");
}
