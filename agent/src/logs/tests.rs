use std::os::unix::fs::PermissionsExt;

use super::*;

fn book(max_age: Duration, max_bytes: u64) -> (LogBook, PathBuf) {
    let dir = std::env::temp_dir().join(format!("factotum-logs-test-{:x}", rand::random::<u64>()));
    let s = LogSettings {
        dir: dir.clone(),
        max_age,
        max_bytes,
    };
    (LogBook::open(s).unwrap(), dir)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn run_ids_become_safe_directory_names() {
    assert_eq!(run_dir("0a1b-c_D").as_deref(), Some("0a1b-c_D"));
    assert_eq!(run_dir("../x").as_deref(), Some("x2e2e2f78"));
    assert_eq!(run_dir(""), None);
    assert_eq!(run_dir(&"/".repeat(101)), None);
}

#[test]
fn files_are_private_and_retention_removes_the_oldest_first_but_never_a_live_one() {
    let (b, dir) = book(Duration::from_secs(3600), 10);
    assert_eq!(mode(&dir), 0o700);
    let one = b.begin("r1", 0, 1).unwrap();
    assert_eq!(mode(one.base.parent().unwrap()), 0o700);
    assert_eq!(mode(&one.stdout()), 0o600);
    let mut w = LogWriter::open(one.stdout());
    w.push(b"0123456789");
    drop(w);
    assert_eq!(fs::read(one.stdout()).unwrap(), b"0123456789");
    let earlier = SystemTime::now() - Duration::from_secs(10);
    for f in [one.stdout(), one.stderr()] {
        fs::File::options()
            .append(true)
            .open(f)
            .unwrap()
            .set_modified(earlier)
            .unwrap();
    }
    let two = b.begin("r1", 0, 2).unwrap();
    let mut w = LogWriter::open(two.stderr());
    w.push(b"abcdef");
    drop(w);
    // Both over the size bound, but both live.
    assert_eq!(b.sweep(SystemTime::now()), 0);
    b.end("r1", 0, 1);
    b.end("r1", 0, 2);
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(b.sweep(later), 1, "the oldest goes until 6 <= 10 bytes");
    assert!(!one.stdout().exists() && two.stderr().exists());
    let why = removal(&one, later).unwrap();
    assert!(why.contains("--log-max-bytes 10"), "{why}");
    assert_eq!(b.sweep(later + Duration::from_secs(7200)), 1, "too old");
    assert!(removal(&two, later).unwrap().contains("--log-max-age 1h"));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_default_dir_is_per_agent_without_a_state_dir() {
    let s = default_dir(Some(Path::new("/var/lib/x")), "a");
    assert_eq!(s, Path::new("/var/lib/x/logs"));
    let d = default_dir(None, "../evil/name");
    assert!(d.ends_with("_evil_name"), "{}", d.display());
}
