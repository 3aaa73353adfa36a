//! Template bombs (issue 10): three nested sections over a 1,000-item `--env` list are 10⁹
//! bytes of command. Before the rendered-size limits, `factotum run` of this 300-byte factfile
//! grew to 4.27 GB and a submitted one took the coordinator to 1.19 GB. Now rendering stops at
//! `--max-rendered-size`: an invalid factfile (exit 1, INVALID_ARGUMENT for `submit`) naming the
//! task, the field and the limit, found quickly and in bounded memory.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::fleet::Coordinator;
use support::*;

const BOMB: &str = "{{#xs}}{{#xs}}{{#xs}}x{{/xs}}{{/xs}}{{/xs}}";

/// `--env` with `xs` = [1, …, n].
fn env(n: usize) -> String {
    let xs: Vec<usize> = (1..=n).collect();
    serde_json::json!({ "xs": xs }).to_string()
}

fn bomb(dir: &Dir) -> String {
    dir.write(
        "bomb.factfile",
        &factfile(
            "bomb",
            vec![
                task("ok", "echo", &[], &[]),
                task("bomb", BOMB, &[], &["ok"]),
            ],
        ),
    )
}

/// `factotum <args>` with its address space capped at 1 GiB (`ulimit -v`): the bomb's 10⁹
/// bytes cannot fit, so a renderer that builds them aborts instead of eating the machine.
fn bounded(args: &[&str]) -> (Output, Duration) {
    let mut all = vec![
        "-c",
        "ulimit -v 1048576 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_factotum"),
    ];
    all.extend_from_slice(args);
    let started = Instant::now();
    let o = std::process::Command::new("sh")
        .args(&all)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (o, started.elapsed())
}

#[test]
fn run_and_validate_refuse_a_template_bomb_quickly_in_bounded_memory() {
    let dir = Dir::new();
    let ff = bomb(&dir);
    let env = env(1000);
    let expected = format!(
        "'{ff}' is not a valid factotum factfile: task 'bomb': the rendered command is larger \
         than --max-rendered-size (1 MiB)"
    );
    for command in ["validate", "run"] {
        let (o, took) = bounded(&[command, &ff, "--env", &env]);
        assert_eq!(o.status.code(), Some(1), "{command}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim(), expected, "{command}");
        assert!(took < Duration::from_secs(10), "{command} took {took:?}");
        // Nothing ran: not even the task before the bomb.
        assert!(
            !stdout(&o).contains("Task Name"),
            "{command}: {}",
            stdout(&o)
        );
    }
}

#[test]
fn the_limits_are_flags() {
    let dir = Dir::new();
    let ff = bomb(&dir);
    // 20³ = 8,000 bytes: under the default, over 4KiB.
    let small = env(20);
    let o = run(&["validate", &ff, "--env", &small]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&[
        "validate",
        &ff,
        "--env",
        &small,
        "--max-rendered-size",
        "4KiB",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "task 'bomb': the rendered command is larger than --max-rendered-size (4 KiB)"
        ),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "validate",
        &ff,
        "--env",
        &small,
        "--max-rendered-size",
        "8000",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The total: two arguments of 8,000 bytes, each under the field limit.
    let two = dir.write(
        "two.factfile",
        &factfile("two", vec![task("pair", "echo", &[BOMB, BOMB], &[])]),
    );
    let o = run(&[
        "validate",
        &two,
        "--env",
        &small,
        "--max-rendered-total",
        "15000",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "task 'pair': the rendered argument 2 takes the factfile's templated fields past \
             --max-rendered-total (15000 bytes)"
        ),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "validate",
        &two,
        "--env",
        &small,
        "--max-rendered-total",
        "16000",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The same through `run --dry-run`, and through the variable.
    let o = factotum()
        .args(["run", &ff, "--dry-run", "--env", &small])
        .env("FACTOTUM_MAX_RENDERED_SIZE", "1KiB")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--max-rendered-size (1 KiB)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["validate", &ff, "--max-rendered-size", "lots"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));
}

/// The coordinator's own flags bound what is submitted to it: INVALID_ARGUMENT (exit 1, as
/// `run`), with `run`'s words, and the coordinator's memory stays small.
#[test]
fn submit_of_a_template_bomb_is_refused() {
    let c = Coordinator::start(&["--max-rendered-size", "512KiB"]);
    let dir = Dir::new();
    let ff = bomb(&dir);
    let o = run(&["submit", &ff, "--env", &env(700), "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "'{ff}' is not a valid factotum factfile: task 'bomb': the rendered command is \
             larger than --max-rendered-size (512 KiB)"
        )
    );
    let peak_kib = peak_rss_kib(c.proc.pid());
    assert!(
        peak_kib < 256 * 1024,
        "the coordinator peaked at {peak_kib} KiB"
    );
    // Still serving: a factfile under the limit is accepted (no agent needed to accept it).
    let small = env(10);
    let o = run(&["submit", &ff, "--env", &small, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
