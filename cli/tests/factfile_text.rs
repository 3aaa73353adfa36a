//! What a factfile's text may not hold (issue 10), end to end: a key written twice, a task name
//! with a control character, a NUL in a command. `validate` and `run` exit 1 naming the task's
//! JSON path; `submit` is refused the same way.

mod support;

use serde_json::json;
use support::fleet::Coordinator;
use support::*;

/// The factfiles, each with what its refusal must say.
fn refused(d: &Dir) -> Vec<(String, String)> {
    let dup = factfile("j", vec![task("a", "echo", &[], &[])]).replacen(
        "\"command\": \"echo\"",
        "\"command\": \"echo\", \"command\": \"rm -rf /tmp/nothing\"",
        1,
    );
    assert!(dup.contains("rm -rf"));
    let forged = factfile("j", vec![task("a\n[b] forged line", "echo", &[], &[])]);
    let nul = factfile("j", vec![task("n", "echo \u{0}", &[], &[])]);
    vec![
        (
            d.write("dup.factfile", &dup),
            r#"'/data/tasks/0' - duplicate key "command" (a key may appear only once in an object)"#.into(),
        ),
        (
            d.write("forged.factfile", &forged),
            r"'/data/tasks/0/name' - Pattern condition is not met (the value must not contain control characters; it contains U+000A) (task 'a\n[b] forged line')".into(),
        ),
        (
            d.write("nul.factfile", &nul),
            "'/data/tasks/0/command' - Pattern condition is not met (the value must not contain a NUL character, which no process can be given) (task 'n')".into(),
        ),
    ]
}

#[test]
fn validate_and_run_refuse_them_naming_the_path() {
    let d = Dir::new();
    for (ff, why) in refused(&d) {
        for cmd in ["validate", "run"] {
            let o = run(&[cmd, &ff]);
            assert_eq!(o.status.code(), Some(1), "{cmd} {ff}: {}", stderr(&o));
            assert_eq!(
                stderr(&o).trim_end(),
                format!("'{ff}' is not a valid factotum factfile: {why}"),
                "{cmd}"
            );
        }
    }
    // A newline brought in by templating is refused too.
    let ff = d.write(
        "templated.factfile",
        &factfile("j", vec![task("a {{x}}", "echo", &[], &[])]),
    );
    let env = json!({"x": "1\n[b] forged"}).to_string();
    let o = run(&["validate", &ff, "--env", &env]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'/data/tasks/0/name' - Pattern condition"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn submit_refuses_them_too() {
    let c = Coordinator::start(&[]);
    let d = Dir::new();
    for (ff, why) in refused(&d) {
        let o = run(&["submit", &ff, "--coordinator", &c.url]);
        assert_eq!(o.status.code(), Some(1), "{ff}: {}", stderr(&o));
        assert!(stderr(&o).contains(&why), "{ff}: {}", stderr(&o));
    }
}
