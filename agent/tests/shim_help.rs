//! `factotum-shim --help` explains itself and exits 0 (issue 13); with no attempt directory it
//! prints the same text and exits 3.

use std::process::Command;

#[test]
fn the_shim_explains_itself() {
    let shim = env!("CARGO_BIN_EXE_factotum-shim");
    let help = Command::new(shim).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.starts_with("usage: factotum-shim <attempt dir>"),
        "{text}"
    );
    assert!(text.contains("--state-dir"), "{text}");
    let version = Command::new(shim).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    let bare = Command::new(shim).output().unwrap();
    assert_eq!(bare.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bare.stderr).starts_with("usage: factotum-shim"));
}
