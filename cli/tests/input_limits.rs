//! Input limits (issue 10): `--max-factfile-size` and `--max-tasks` on `run`, `validate` and
//! `dot` (exit 1 with Factotum's invalid-factfile prefix naming the limit, before anything is
//! templated, planned or run), and job names with control characters.

mod support;

use support::fleet::Coordinator;
use support::*;

fn tasks(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| task(&format!("t{i}"), "echo", &[], &[]))
        .collect()
}

#[test]
fn a_factfile_past_max_factfile_size_is_refused_before_it_is_read() {
    let dir = Dir::new();
    let ff = dir.write("big.factfile", &factfile("big", tasks(40)));
    let size = std::fs::metadata(&ff).unwrap().len();
    assert!(size > 2048, "{size}");
    let expected = format!(
        "'{ff}' is not a valid factotum factfile: it is {size} bytes, more than the 2048 \
         --max-factfile-size allows"
    );
    for command in ["validate", "run", "dot"] {
        let o = run(&[command, &ff, "--max-factfile-size", "2KiB"]);
        let code = if command == "dot" { 3 } else { 1 };
        assert_eq!(o.status.code(), Some(code), "{command}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim(), expected, "{command}");
        assert!(!stdout(&o).contains("Task Name"), "{command}");
        // Within the default (32 MiB) it is valid.
        let o = run(&[command, &ff]);
        assert_eq!(o.status.code(), Some(0), "{command}: {}", stderr(&o));
    }
    // A limit below 1 KiB is a bad argument.
    let o = run(&["validate", &ff, "--max-factfile-size", "100"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 1024 bytes"), "{}", stderr(&o));
}

#[test]
fn a_factfile_past_max_tasks_is_refused_naming_the_count_and_the_limit() {
    let dir = Dir::new();
    let ff = dir.write("many.factfile", &factfile("many", tasks(5)));
    let expected = format!(
        "'{ff}' is not a valid factotum factfile: it has 5 tasks, more than the 4 --max-tasks \
         allows"
    );
    for command in ["validate", "run"] {
        let o = run(&[command, &ff, "--max-tasks", "4"]);
        assert_eq!(o.status.code(), Some(1), "{command}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim(), expected, "{command}");
        assert!(!stdout(&o).contains("Task Name"), "{command}");
        let o = run(&[command, &ff, "--max-tasks", "5"]);
        assert_eq!(o.status.code(), Some(0), "{command}: {}", stderr(&o));
    }
}

#[test]
fn a_job_name_with_a_control_character_is_refused() {
    let dir = Dir::new();
    let ff = dir.write(
        "forged.factfile",
        &factfile("job\nTask Name: forged", tasks(1)),
    );
    for command in ["validate", "run"] {
        let o = run(&[command, &ff]);
        assert_eq!(o.status.code(), Some(1), "{command}: {}", stderr(&o));
        assert_eq!(
            stderr(&o).trim(),
            format!(
                "'{ff}' is not a valid factotum factfile: '/data/name' - Pattern condition is \
                 not met (the value must not contain control characters; it contains U+000A)"
            ),
            "{command}"
        );
    }
}

#[test]
fn a_coordinator_refuses_a_job_name_with_a_control_character() {
    let c = Coordinator::start(&[]);
    let dir = Dir::new();
    let ff = dir.write("forged.factfile", &factfile("job\u{1b}[2J", tasks(1)));
    let o = run(&["submit", &ff, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "'{ff}' is not a valid factotum factfile: '/data/name' - Pattern condition is not \
             met (the value must not contain control characters; it contains U+001B)"
        )
    );
}
