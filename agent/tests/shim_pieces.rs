//! The shim never holds a whole long line (issue 10): it records a line longer than its piece
//! size in pieces (`+`-marked after the first), each framed piece fits in one of the agent's
//! lines, and read back the pieces give the line's bytes as written.

use std::path::{Path, PathBuf};
use std::process::Command;

use factotum_agent::{attempt, executor::MAX_LINE, shim};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("factotum-shim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_long_line_is_recorded_in_bounded_pieces_that_join_up_again() {
    let dir = scratch("pieces");
    let len = MAX_LINE * 5 / 2;
    let lease = factotum_proto::Lease {
        command_line: format!(
            "head -c {len} /dev/zero | tr '\\0' a; printf '\\nshort\\n'; yes é | head -n 600000 | tr -d '\\n' >&2"
        ),
        ..Default::default()
    };
    std::fs::write(dir.join(shim::LEASE), prost::Message::encode_to_vec(&lease)).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_factotum-shim"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let output = std::fs::read(dir.join(shim::OUTPUT)).unwrap();
    let lines: Vec<&[u8]> = output.split(|&b| b == b'\n').collect();
    let longest = lines.iter().map(|l| l.len()).max().unwrap();
    assert!(
        longest < MAX_LINE,
        "a framed piece and its newline fit in one of the agent's lines: {longest}"
    );
    let starts = |prefix: &[u8]| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(starts(b"1"), 2, "two stdout lines begin");
    assert_eq!(starts(b"+1"), 2, "the long one goes on in two more pieces");
    assert_eq!(
        starts(b"2"),
        1,
        "one stderr line, 1.2 MB of two-byte characters"
    );
    assert_eq!(starts(b"+2"), 1);
    // Every piece is valid UTF-8: no character was cut in two.
    assert!(std::str::from_utf8(&output).is_ok());
    // Read back, the tails are the bytes as written.
    let (out, err) = attempt::read_tails(&dir, 20, &Default::default());
    assert_eq!(out, format!("{}\nshort", "a".repeat(14)));
    assert_eq!(err, "é".repeat(20));
    let _ = std::fs::remove_dir_all(dir);
}
