//! `factotum validate` and `factotum dot`.

mod support;

use support::*;

#[test]
fn validate_accepts_every_upstream_sample() {
    let dir = std::fs::read_dir(shared("factotum-samples")).unwrap();
    let mut n = 0;
    for entry in dir.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "factfile") {
            let o = run(&["validate", &p.to_string_lossy()]);
            assert_eq!(o.status.code(), Some(0), "{}: {}", p.display(), stderr(&o));
            assert_eq!(
                stdout(&o).trim(),
                format!("'{}' is a valid Factfile!", p.display())
            );
            n += 1;
        }
    }
    assert!(n >= 10, "found only {n} samples");
}

#[test]
fn validate_rejects_every_upstream_invalid_sample() {
    for entry in std::fs::read_dir(shared("factotum-samples/invalid"))
        .unwrap()
        .flatten()
    {
        let p = entry.path().to_string_lossy().into_owned();
        let o = run(&["validate", &p]);
        assert_eq!(o.status.code(), Some(1), "{p}");
        assert!(
            stderr(&o).starts_with(&format!("'{p}' is not a valid factotum factfile: ")),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn validate_messages_are_factotums() {
    let d = Dir::new();
    let mut t = task("continue", "x", &[], &[]);
    t["onResult"]["continueJob"] = serde_json::json!([]);
    let ff = d.write("nc.factfile", &factfile("j", vec![t]));
    let o = run(&["validate", &ff]);
    assert_eq!(
        stderr(&o).trim(),
        format!("'{ff}' is not a valid factotum factfile: the task 'continue' has no way to continue successfully.")
    );
    let mut t = task("ambi", "x", &[], &[]);
    t["onResult"]["continueJob"] = serde_json::json!([3]);
    let ff = d.write("ambi.factfile", &factfile("j", vec![t]));
    assert_eq!(
        stderr(&run(&["validate", &ff])).trim(),
        format!(
            "'{ff}' is not a valid factotum factfile: the task 'ambi' has conflicting actions."
        )
    );
    let ff = d.write("bad.factfile", "fasdfasdf\nnot json");
    let o = run(&["validate", &ff]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a valid factotum factfile: invalid JSON - "),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).trim().ends_with("at line 1, column 3"),
        "{}",
        stderr(&o)
    );
    let ff = d.write(
        "dup.factfile",
        &factfile(
            "j",
            vec![task("a", "x", &[], &[]), task("a", "x", &[], &[])],
        ),
    );
    assert!(stderr(&run(&["validate", &ff]))
        .contains("the task name 'a' is used by more than one task"));
    let ff = d.write(
        "fwd.factfile",
        &factfile(
            "j",
            vec![task("b", "x", &[], &["a"]), task("a", "x", &[], &[])],
        ),
    );
    assert_eq!(
        run(&["validate", &ff]).status.code(),
        Some(0),
        "forward references are fine"
    );
}

#[test]
fn dot_prints_factotums_layout() {
    let d = Dir::new();
    let ff = d.write(
        "g.factfile",
        &factfile(
            "graph \"q\"",
            vec![
                task("a", "x", &[], &[]),
                task("b", "x", &[], &["a"]),
                task("c", "x", &[], &["a", "b"]),
            ],
        ),
    );
    let o = run(&["dot", &ff]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "digraph \"graph \\\"q\\\"\" {\n    \"a\"\n    \"b\"\n    \"c\"\n    \"a\" -> \"b\"\n    \"a\" -> \"c\"\n    \"b\" -> \"c\"\n}"
    );
    let o = run(&["dot", &ff, "--start", "b"]);
    assert_eq!(o.status.code(), Some(3), "c also depends on a");
    let o = run(&["dot", &ff, "--start", "c"]);
    assert_eq!(stdout(&o), "digraph \"graph \\\"q\\\"\" {\n    \"c\"\n}");
    let o = run(&["dot", &ff, "--start", "c2"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn dot_output_file_needs_overwrite() {
    let d = Dir::new();
    let ff = d.write("g.factfile", &factfile("g", vec![task("a", "x", &[], &[])]));
    let out = d.file("g.dot");
    let o = run(&["dot", &ff, "--output", &out.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "File written successfully");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "digraph \"g\" {\n    \"a\"\n}"
    );
    let o = run(&["dot", &ff, "--output", &out.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with(&format!(
            "Error: couldn't create file '{}' (",
            out.display()
        )),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "dot",
        &ff,
        "--output",
        &out.to_string_lossy(),
        "--overwrite",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let bad = d.write("bad.factfile", "{");
    assert_eq!(
        run(&["dot", &bad]).status.code(),
        Some(3),
        "every dot error is exit 3"
    );
}
