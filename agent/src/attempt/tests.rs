use super::*;
use crate::frame;
use crate::frame::Recorded;
use factotum_common::run::Stream;
use std::process::Command;

#[test]
fn a_shim_is_recognised_by_an_absolute_or_a_relative_directory() {
    let base = std::env::temp_dir().join(format!("factotum-shim-alive-{}", std::process::id()));
    let dir = base.join("attempts").join("run-0-1");
    fs::create_dir_all(&dir).unwrap();
    // Stand-ins for shims: one named by the absolute path, one (from an older agent) by a
    // path relative to its working directory. `; :` keeps sh from exec'ing sleep.
    let mut children = [
        (dir.clone(), None),
        (PathBuf::from("attempts/run-0-1"), Some(&base)),
    ]
    .map(|(arg, cwd)| {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "sleep 30; :", "shim"]).arg(arg);
        if let Some(cwd) = cwd {
            c.current_dir(cwd);
        }
        c.spawn().unwrap()
    });
    for child in &children {
        let pid = i32::try_from(child.id()).unwrap();
        // Right after the spawn, exec may not have set up the command line yet.
        for _ in 0..200 {
            if fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"\0")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(shim_alive(pid, &dir));
        assert!(!shim_alive(pid, &base.join("attempts").join("run-0-2")));
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
        assert!(!shim_alive(i32::try_from(child.id()).unwrap(), &dir));
    }
    let _ = fs::remove_dir_all(base);
}

#[test]
fn a_result_carries_at_most_max_tail_bytes_of_each_stream() {
    let r = LeaseRef {
        run_id: "run".into(),
        task: 0,
        attempt: 1,
        epoch: 0,
    };
    // 2 MiB of two-byte characters: within a 1 Mi-character tail, but over MAX_TAIL bytes.
    let big = "é".repeat(1 << 20);
    let f = result_msg(
        &r,
        attempt_result::Outcome::ExitCode(0),
        big.clone(),
        "small".into(),
        Duration::from_secs(1),
    );
    assert!(f.stdout_tail.len() <= MAX_TAIL, "{}", f.stdout_tail.len());
    assert!(f.stdout_tail.len() >= MAX_TAIL - 1);
    assert!(big.ends_with(&f.stdout_tail));
    assert_eq!(f.stderr_tail, "small");
    assert!(prost::Message::encoded_len(&f) < factotum_common::run::MIN_MAX_MESSAGE / 2);
    // A spawn error is cut too.
    let f = result_msg(
        &r,
        attempt_result::Outcome::SpawnError("é".repeat(1 << 20)),
        String::new(),
        String::new(),
        Duration::from_secs(1),
    );
    let Some(attempt_result::Outcome::SpawnError(e)) = f.outcome else {
        panic!("not a spawn error");
    };
    assert!(e.len() <= MAX_TAIL / 8 + 3, "{}", e.len());
    // A lease asking for more keeps MAX_TAIL characters.
    assert_eq!(clamp_max_output(10_000_000), MAX_TAIL);
}

#[test]
fn an_attempt_directory_reads_back_its_exit_and_tails() {
    let dir = std::env::temp_dir().join(format!("factotum-attempt-dir-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let lines = [
        frame::line(Stream::Stdout, "one", false),
        frame::line(Stream::Stderr, "two", false),
        frame::line(Stream::Stdout, "thr", false),
        frame::line(Stream::Stderr, "-and-", true),
        frame::line(Stream::Stdout, "ee", true),
    ];
    fs::write(dir.join(shim::OUTPUT), lines.join("\n") + "\n").unwrap();
    assert_eq!(read_exit(&dir), None);
    fs::write(
        dir.join(shim::EXIT),
        frame::exit(4, Duration::from_secs(1)) + "\n",
    )
    .unwrap();
    assert_eq!(
        read_exit(&dir),
        Some(Recorded {
            code: 4,
            duration: Duration::from_secs(1)
        })
    );
    assert_eq!(
        read_tails(&dir, 100, &Redactor::default()),
        ("one\nthree".to_string(), "two-and-".to_string())
    );
    let _ = fs::remove_dir_all(dir);
}
