//! The live progress line (issue 13, item 3): drawn in place on stderr when stderr is a
//! terminal, never on a pipe, and never on stdout (whose bytes are Factotum's).

mod support;

use std::io::Read;
use std::process::Stdio;

use support::*;

fn slow_job(d: &Dir) -> String {
    d.write(
        "slow.factfile",
        &factfile(
            "slow",
            vec![
                task("first", "sleep 1.2; echo", &["done first"], &[]),
                task("second", "echo", &["done second"], &["first"]),
            ],
        ),
    )
}

#[test]
fn no_progress_bytes_on_a_pipe() {
    let d = Dir::new();
    let ff = slow_job(&d);
    let o = run(&["run", &ff]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains('\r'), "{name}: {text:?}");
        assert!(!text.contains('\x1b'), "{name}: {text:?}");
        assert!(!text.contains("tasks done"), "{name}: {text:?}");
    }
    assert_eq!(
        stdout(&o).lines().next(),
        Some("[first] done first"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn on_a_terminal_the_line_is_drawn_on_stderr_and_erased() {
    let d = Dir::new();
    let ff = slow_job(&d);
    let pty = nix::pty::openpty(None, None).expect("a pty");
    let mut child = factotum()
        .args(["run", &ff])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // The terminal's side: read until the child (the slave's last holder) is gone.
    let mut master = std::fs::File::from(pty.master);
    let terminal = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let terminal = terminal.join().unwrap();
    assert!(
        terminal.contains("\r\x1b[2K0/2 tasks done, 1 running, 1 waiting"),
        "{terminal:?}"
    );
    // Erased before every other line and at the end: each line starts clean.
    let last = terminal.rsplit("tasks done").next().unwrap();
    assert!(
        last.contains("\r\x1b[2K"),
        "erased at the end: {terminal:?}"
    );
    assert!(
        terminal.contains("\r\x1b[2KTask 'second' was started at"),
        "{terminal:?}"
    );
    // stdout: exactly what a pipe gets.
    assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["[first] done first", "[second] done second"]);
    assert!(lines[2].starts_with("2/2 tasks run in "), "{out:?}");
    assert_eq!(lines.len(), 3, "{out:?}");
}
