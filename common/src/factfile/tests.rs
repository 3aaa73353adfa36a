use super::*;
use crate::constraint::Placement;
use crate::template::Vars;
use serde_json::{json, Value};

mod schema_agreement;

fn task(name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "executor": "shell", "command": "echo", "arguments": [name],
           "dependsOn": deps, "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}})
}

fn doc(tasks: Vec<Value>) -> String {
    json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j", "tasks": tasks}}).to_string()
}

fn parse(text: &str) -> Result<Factfile, FactfileError> {
    Factfile::parse(text, &Vars::new(&Value::Null, &Tags::new()).unwrap())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn forward_references_are_allowed() {
    let ff = parse(&doc(vec![task("b", &["a"]), task("a", &[])])).unwrap();
    assert_eq!(ff.data.tasks.len(), 2);
}

#[test]
fn empty_task_list_is_valid() {
    assert!(parse(&doc(vec![])).unwrap().data.tasks.is_empty());
}

#[test]
fn invalid_json_message() {
    assert_eq!(
        err("xyz\nmore"),
        "invalid JSON - expected value at line 1, column 1"
    );
}

#[test]
fn factotum_rule_messages() {
    let mut t = task("continue", &[]);
    t["onResult"]["continueJob"] = json!([]);
    assert_eq!(
        err(&doc(vec![t])),
        "the task 'continue' has no way to continue successfully."
    );
    let mut t = task("ambi", &[]);
    t["onResult"] = json!({"terminateJobWithSuccess": [0], "continueJob": [0]});
    assert_eq!(
        err(&doc(vec![t])),
        "the task 'ambi' has conflicting actions."
    );
}

#[test]
fn graph_errors_are_clear() {
    assert_eq!(
        err(&doc(vec![task("a", &[]), task("a", &[])])),
        "the task name 'a' is used by more than one task"
    );
    assert_eq!(
        err(&doc(vec![task("a", &["a"])])),
        "the task 'a' depends on itself"
    );
    assert_eq!(
        err(&doc(vec![task("a", &["zz"])])),
        "the task 'a' depends on 'zz', which is not a task in this factfile"
    );
    let e = err(&doc(vec![
        task("a", &["c"]),
        task("b", &["a"]),
        task("c", &["b"]),
        task("d", &[]),
    ]));
    assert!(e.starts_with("the tasks form a cycle: "), "{e}");
    for n in ["'a'", "'b'", "'c'"] {
        assert!(e.contains(n), "{e}");
    }
    assert!(!e.contains("'d'"), "{e}");
}

#[test]
fn schema_errors_name_the_path() {
    let mut t = task("a", &[]);
    t["onResult"]["terminateJobWithSuccess"] = json!(["this isn't a number!"]);
    assert_eq!(
        err(&doc(vec![t])),
        "'/data/tasks/0/onResult/terminateJobWithSuccess/0' - Type of the value is wrong (The value must be integer)"
    );
    let no_name = json!({"schema": SNOWPLOW_SCHEMA, "data": {"tasks": []}}).to_string();
    assert_eq!(err(&no_name), "'/data/name' - This property is required");
    let mut t = task("a", &[]);
    t["timeout"] = json!(5);
    assert!(err(&doc(vec![t]))
        .starts_with("'/data/tasks/0/timeout' - Additional properties are not allowed"));
    let mut t = task("a", &[]);
    t["onResult"]["continueJob"] = json!([0, 40000, -1]);
    let e = err(&doc(vec![t]));
    assert!(
        e.contains("'/data/tasks/0/onResult/continueJob/1' - Maximum"),
        "{e}"
    );
    assert!(
        e.contains("'/data/tasks/0/onResult/continueJob/2' - Minimum"),
        "{e}"
    );
    assert!(err("[1]").starts_with("'/' - Type of the value is wrong"));
    let other = json!({"schema": "iglu:com.acme/factfile/jsonschema/1-0-0", "data": {"name": "x", "tasks": []}});
    assert!(err(&other.to_string()).starts_with("'/schema' - Unsupported schema"));
}

#[test]
fn templating_applies_to_names_args_deps_and_command() {
    let text = json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "job {{ tag:env }}", "tasks": [
        {"name": "a {{x}}", "executor": "shell", "command": "echo {{x}}", "arguments": ["{{ x }}"],
         "dependsOn": [], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}},
        {"name": "b", "executor": "shell", "command": "echo", "arguments": [],
         "dependsOn": ["a {{x}}"], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}]}})
    .to_string();
    let tags = Tags::from([("env".to_string(), "prod".to_string())]);
    let ff = Factfile::parse(&text, &Vars::new(&json!({"x": "1"}), &tags).unwrap()).unwrap();
    assert_eq!(ff.data.name, "job prod");
    assert_eq!(ff.data.tasks[0].name, "a 1");
    assert_eq!(ff.data.tasks[0].command, "echo 1");
    assert_eq!(ff.data.tasks[0].arguments, vec!["1"]);
    assert_eq!(ff.data.tasks[1].depends_on, vec!["a 1"]);
}

#[test]
fn the_extension_parses_and_round_trips_through_its_compact_json() {
    let mut t = task("load", &[]);
    t["timeout"] = json!(30);
    t["retry"] = json!({"attempts": 3, "delaySeconds": 1.5, "onReturnCodes": [75]});
    t["env"] = json!({"TARGET": "{{ tag:env }}"});
    t["cwd"] = json!("/tmp");
    t["constraints"] = json!({"host": "etl-1", "labels": {"disk": "ssd"}});
    t["onLost"] = json!("retry");
    t["continueOnFailure"] = json!(true);
    let text = json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t],
        "tags": {"env": "{{ not templated }}"}, "timeout": 600, "placement": "spread",
        "maxParallel": 4}})
    .to_string();
    let raw = Factfile::read(&text).unwrap();
    assert_eq!(
        raw.data.tags.as_ref().unwrap()["env"],
        "{{ not templated }}"
    );
    let tags = Tags::from([("env".to_string(), "prod".to_string())]);
    let ff = raw
        .finish(&Vars::new(&Value::Null, &tags).unwrap())
        .unwrap();
    let load = &ff.data.tasks[0];
    assert_eq!(load.ext().env.as_ref().unwrap()["TARGET"], "prod");
    assert_eq!(load.ext().retry.as_ref().unwrap().delay_seconds, Some(1.5));
    assert_eq!(ff.data.placement, Some(Placement::Spread));
    assert_eq!(Factfile::parse_compact(&ff.compact_json()).unwrap(), ff);
    // A Snowplow factfile's compact JSON has none of the extension's fields.
    let plain = parse(&doc(vec![task("a", &[])])).unwrap();
    assert!(!plain.compact_json().contains("timeout"));
}

#[test]
fn extension_values_out_of_range_are_named() {
    let mut t = task("t", &[]);
    t["timeout"] = json!(0);
    t["retry"] = json!({"attempts": 2, "backoff": 0.5});
    t["cwd"] = json!("");
    let text = json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t]}}).to_string();
    let e = err(&text);
    for want in [
        "'/data/tasks/0/timeout' - Minimum condition is not met (the value must be at least 1) (task 't')",
        "'/data/tasks/0/retry/backoff' - Minimum condition is not met (the value must be at least 1) (task 't')",
        "'/data/tasks/0/cwd' - MinLength condition is not met (the value must not be empty) (task 't')",
    ] {
        assert!(e.contains(want), "missing {want:?} in {e}");
    }
}

#[test]
fn compact_json_is_factotums_and_gives_the_vector_references() {
    let text = doc(vec![task("echo alpha", &[])]);
    let ff = parse(&text).unwrap();
    assert!(ff.compact_json().starts_with(
        "{\"schema\":\"iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0\",\"data\":{\"name\":\"j\",\"tasks\":[{\"name\":\"echo alpha\",\"executor\":\"shell\",\"command\":\"echo\",\"arguments\":[\"echo alpha\"],\"dependsOn\":[],\"onResult\":{\"terminateJobWithSuccess\":[3],\"continueJob\":[0]}}"
    ));
}

/// `doc` with `from` (which must occur once) replaced by `to`: a key written twice can't be built
/// with `json!`.
fn edited(tasks: Vec<Value>, from: &str, to: &str) -> String {
    let text = doc(tasks);
    assert_eq!(text.matches(from).count(), 1, "{from} in {text}");
    text.replace(from, to)
}

#[test]
fn a_key_written_twice_is_refused_naming_it_and_its_object() {
    let t = || vec![task("a", &[])];
    assert_eq!(
        err(&edited(
            t(),
            r#""command":"echo""#,
            r#""command":"echo","command":"rm -rf /""#
        )),
        r#"'/data/tasks/0' - duplicate key "command" (a key may appear only once in an object)"#
    );
    assert_eq!(
        err(&edited(t(), r#""schema":"#, r#""schema":"x","schema":"#)),
        r#"'/' - duplicate key "schema" (a key may appear only once in an object)"#
    );
    let e = err(&edited(
        t(),
        r#""continueJob":[0]"#,
        r#""continueJob":[0],"continueJob":[1],"continueJob":[2]"#,
    ));
    assert_eq!(
        e.lines().collect::<Vec<_>>(),
        [r#"'/data/tasks/0/onResult' - duplicate key "continueJob" (a key may appear only once in an object)"#;
            2]
    );
    // In the extension's maps too, which the fast path reads as maps.
    let mut t = task("a", &[]);
    t["env"] = json!({"A": "1"});
    let text =
        json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t], "tags": {"k": "v"}}})
            .to_string();
    for (from, to, want) in [
        (
            r#""A":"1""#,
            r#""A":"1","A":"2""#,
            r#"'/data/tasks/0/env' - duplicate key "A""#,
        ),
        (
            r#""k":"v""#,
            r#""k":"v","k":"w""#,
            r#"'/data/tags' - duplicate key "k""#,
        ),
    ] {
        let e = err(&text.replace(from, to));
        assert!(e.starts_with(want), "{e}");
    }
    let mut t = task("a", &[]);
    t["constraints"] = json!({"labels": {"disk": "ssd"}});
    let text = json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t]}}).to_string();
    let e = err(&text.replace(r#""disk":"ssd""#, r#""disk":"ssd","disk":"hdd""#));
    assert!(
        e.starts_with(r#"'/data/tasks/0/constraints/labels' - duplicate key "disk""#),
        "{e}"
    );
    // The same key in different objects is fine.
    assert!(parse(&doc(vec![task("a", &[]), task("b", &["a"])])).is_ok());
}

#[test]
fn a_task_name_with_a_control_character_is_refused() {
    for (name, code, shown) in [
        ("a\nb", "U+000A", "a\\nb"),
        ("a\0b", "U+0000", "a\\0b"),
        ("tab\there", "U+0009", "tab\\there"),
        ("del\u{7f}", "U+007F", "del\\u{7f}"),
        ("c1\u{85}", "U+0085", "c1\\u{85}"),
    ] {
        let mut t = task(name, &[]);
        t["arguments"] = json!([]);
        assert_eq!(
            err(&doc(vec![task("ok", &[]), t])),
            format!("'/data/tasks/1/name' - Pattern condition is not met (the value must not contain control characters; it contains {code}) (task '{shown}')")
        );
    }
    // Templating can't bring one in either.
    let text = doc(vec![task("a {{x}}", &[])]);
    let vars = Vars::new(&json!({"x": "1\n[b] forged"}), &Tags::new()).unwrap();
    let e = Factfile::parse(&text, &vars).unwrap_err().to_string();
    assert!(
        e.starts_with("'/data/tasks/0/name' - Pattern condition is not met (the value must not contain control characters; it contains U+000A)"),
        "{e}"
    );
    // Other characters are fine.
    assert!(parse(&doc(vec![task("ünï cödé ✓ 'x' \"y\"", &[])])).is_ok());
}

#[test]
fn a_job_name_with_a_control_character_is_refused() {
    for (name, code) in [("a\nb", "U+000A"), ("esc\u{1b}[2J", "U+001B")] {
        let text =
            json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": name, "tasks": [task("a", &[])]}})
                .to_string();
        assert_eq!(
            err(&text),
            format!("'/data/name' - Pattern condition is not met (the value must not contain control characters; it contains {code})")
        );
    }
    // Templating can't bring one in either.
    let text =
        json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j {{x}}", "tasks": [task("a", &[])]}})
            .to_string();
    let vars = Vars::new(&json!({"x": "1\n[b] forged"}), &Tags::new()).unwrap();
    let e = Factfile::parse(&text, &vars).unwrap_err().to_string();
    assert!(
        e.starts_with("'/data/name' - Pattern condition is not met"),
        "{e}"
    );
    assert!(parse(
        &json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "ünï ✓", "tasks": [task("a", &[])]}})
            .to_string()
    )
    .is_ok());
}

#[test]
fn a_nul_in_what_a_process_is_given_is_refused_naming_the_task() {
    let nul = "Pattern condition is not met (the value must not contain a NUL character, which no process can be given)";
    let mut t = task("a", &[]);
    t["command"] = json!("echo \u{0} hi");
    assert_eq!(
        err(&doc(vec![t])),
        format!("'/data/tasks/0/command' - {nul} (task 'a')")
    );
    let mut t = task("b", &[]);
    t["arguments"] = json!(["fine", "not\u{0}fine"]);
    assert_eq!(
        err(&doc(vec![task("a", &[]), t])),
        format!("'/data/tasks/1/arguments/1' - {nul} (task 'b')")
    );
    let mut t = task("c", &[]);
    t["env"] = json!({"X": "a\u{0}"});
    t["cwd"] = json!("/tmp/\u{0}");
    let text = json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t]}}).to_string();
    assert_eq!(
        err(&text),
        format!("'/data/tasks/0/env/X' - {nul} (task 'c')\n'/data/tasks/0/cwd' - {nul} (task 'c')")
    );
    // Through templating too (the command is templated).
    let mut t = task("d", &[]);
    t["command"] = json!("echo {{{x}}}");
    let vars = Vars::new(&json!({"x": "\u{0}"}), &Tags::new()).unwrap();
    let e = Factfile::parse(&doc(vec![t]), &vars)
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("'/data/tasks/0/command' - {nul} (task 'd')"));
}

#[test]
fn a_name_longer_than_a_name_may_be_is_refused_and_shown_by_its_start() {
    use super::reading::MAX_NAME;
    let long = "n".repeat(MAX_NAME + 1);
    let mut t = task(&long, &[]);
    t["arguments"] = json!([]);
    let e = err(&doc(vec![task("ok", &[]), t]));
    let shown = format!("{}…", "n".repeat(80));
    assert_eq!(
        e,
        format!(
            "'/data/tasks/1/name' - the value is {} bytes long, more than the {MAX_NAME} a name may be (task '{shown}')",
            MAX_NAME + 1
        )
    );
    // Exactly the limit is fine.
    assert!(parse(&doc(vec![task(&"n".repeat(MAX_NAME), &[])])).is_ok());
}
