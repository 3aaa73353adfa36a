//! `-o json` of `status`, `runs`, `agents`, `submit` and `validate`, shell completions and
//! manual pages (issue 13, item 7): real processes, documents parsed with serde_json and
//! checked for their field names and types (docs/CLI-OUTPUT.md describes them).

mod support;

use serde_json::Value;
use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

/// Stdout parsed as exactly one JSON document (nothing before or after it).
fn document(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {:?}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// `keys` and no others, each of the JSON type named: s(tring), n(umber), b(ool), a(rray),
/// o(bject), with `?` when null is allowed too.
fn assert_shape(v: &Value, keys: &[(&str, &str)]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("an object: {v}"));
    let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "{v}");
    for (k, kind) in keys {
        let x = &obj[*k];
        let ok = match kind.trim_end_matches('?') {
            "s" => x.is_string(),
            "n" => x.is_number(),
            "b" => x.is_boolean(),
            "a" => x.is_array(),
            "o" => x.is_object(),
            other => panic!("kind {other}"),
        } || (kind.ends_with('?') && x.is_null());
        assert!(ok, "{k} should be {kind}: {v}");
    }
}

const RUN: &[(&str, &str)] = &[
    ("runId", "s"),
    ("jobName", "s"),
    ("jobReference", "s"),
    ("state", "s"),
    ("startTime", "s?"),
    ("duration", "n?"),
    ("waitingReason", "s?"),
    ("tags", "o"),
    ("rerunOf", "s?"),
    ("cancelledBy", "s?"),
    ("cancelReason", "s?"),
    ("taskCount", "n"),
    ("tasksDone", "n"),
    ("tasks", "a?"),
];

const TASK: &[(&str, &str)] = &[
    ("name", "s"),
    ("state", "s"),
    ("attempt", "n"),
    ("agent", "s?"),
    ("started", "s?"),
    ("duration", "n?"),
    ("returnCode", "n?"),
    ("errorMessage", "s?"),
];

#[test]
fn client_commands_print_one_json_document_with_documented_fields() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "json-agent", None, &["--label", "zone=a"]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "j.factfile",
        &factfile(
            "json job",
            vec![
                task("first", "echo", &["to stdout"], &[]),
                task("second", "false", &[], &["first"]),
            ],
        ),
    );
    // --wait: the run's console goes to stderr, its final status to stdout.
    let o = run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--wait",
        "-o",
        "json",
        "--tag",
        "team,data",
    ]);
    assert_eq!(o.status.code(), Some(2), "a task failed: {}", stderr(&o));
    assert!(stderr(&o).contains("[first] to stdout"), "{}", stderr(&o));
    assert!(stderr(&o).contains("2/2 tasks run"), "{}", stderr(&o));
    let run_doc = document(&o);
    assert_shape(&run_doc, RUN);
    assert_eq!(run_doc["state"], "RUN_STATE_FAILED");
    assert_eq!(run_doc["jobName"], "json job");
    assert_eq!(run_doc["tags"]["team"], "data");
    assert_eq!(run_doc["taskCount"], 2);
    assert_eq!(run_doc["tasksDone"], 2);
    let start = run_doc["startTime"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(start).is_ok(),
        "RFC 3339: {start}"
    );
    let tasks = run_doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_shape(t, TASK);
    }
    assert_eq!(tasks[0]["state"], "TASK_STATE_SUCCEEDED");
    assert_eq!(tasks[0]["returnCode"], 0);
    assert_eq!(tasks[0]["agent"], "json-agent");
    assert_eq!(tasks[1]["state"], "TASK_STATE_FAILED");
    assert!(tasks[1]["duration"].as_f64().unwrap() >= 0.0);
    let id = run_doc["runId"].as_str().unwrap().to_string();

    // status -o json: the same document.
    let o = run(&["status", &id[..10], "--coordinator", &c.url, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let status = document(&o);
    assert_shape(&status, RUN);
    assert_eq!(status["runId"], id.as_str());
    assert_eq!(status["tasks"], run_doc["tasks"]);

    // submit -o json without --wait: the new run's reference.
    let o = run(&["submit", &ff, "--coordinator", &c.url, "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let submitted = document(&o);
    assert_shape(
        &submitted,
        &[("runId", "s"), ("jobReference", "s"), ("existing", "b")],
    );
    assert_eq!(submitted["runId"].as_str().unwrap().len(), 64);

    // runs -o json: an array, newest first, without task lists.
    let o = run(&["runs", "--coordinator", &c.url, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let runs = document(&o);
    let runs = runs.as_array().expect("an array");
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in runs {
        assert_shape(r, RUN);
        assert!(r["tasks"].is_null(), "a listing has no task lists: {r}");
    }
    assert_eq!(runs[1]["runId"], id.as_str());
    let o = run(&[
        "runs",
        "--coordinator",
        &c.url,
        "-o",
        "json",
        "--job",
        "none",
    ]);
    assert_eq!(document(&o), serde_json::json!([]), "an empty list is []");

    // agents -o json.
    let o = run(&["agents", "--coordinator", &c.url, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let agents = document(&o);
    let agents = agents.as_array().expect("an array");
    assert_eq!(agents.len(), 1);
    assert_shape(
        &agents[0],
        &[
            ("agentId", "s"),
            ("hostname", "s"),
            ("ips", "a"),
            ("labels", "o"),
            ("slots", "n?"),
            ("inUse", "n"),
            ("lastHeard", "s?"),
            ("version", "s?"),
            ("connected", "b"),
        ],
    );
    assert_eq!(agents[0]["agentId"], "json-agent");
    assert_eq!(agents[0]["labels"]["zone"], "a");
    assert_eq!(agents[0]["connected"], true);

    // A refusal prints nothing on stdout: the message goes to stderr, the exit code is 4.
    let o = run(&[
        "status",
        "ffffffffff",
        "--coordinator",
        &c.url,
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[test]
fn validate_json_gives_the_verdict_and_the_errors() {
    let d = Dir::new();
    let ok = d.write(
        "ok.factfile",
        &factfile(
            "valid job",
            vec![task("a", "true", &[], &[]), task("b", "true", &[], &["a"])],
        ),
    );
    let o = run(&["validate", &ok, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = document(&o);
    let shape = [
        ("valid", "b"),
        ("factfile", "s"),
        ("jobName", "s?"),
        ("taskCount", "n?"),
        ("errors", "a"),
    ];
    assert_shape(&v, &shape);
    assert_eq!(v["valid"], true);
    assert_eq!(v["jobName"], "valid job");
    assert_eq!(v["taskCount"], 2);
    assert_eq!(v["errors"], serde_json::json!([]));

    let bad = d.write(
        "bad.factfile",
        &factfile("bad job", vec![task("a", "true", &[], &["nowhere"])]),
    );
    let o = run(&["validate", &bad, "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = document(&o);
    assert_shape(&v, &shape);
    assert_eq!(v["valid"], false);
    assert!(v["jobName"].is_null());
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("is not a valid factotum factfile"),
        "{v}"
    );

    // A bad argument is no verdict on the factfile: exit 3, stdout empty.
    let o = run(&["validate", &ok, "--env", "[", "-o", "json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));

    // `dot --output FILE` is Factotum's and still means a file.
    let dot = d.file("g.dot");
    let o = run(&["dot", &ok, "--output", dot.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&dot)
        .unwrap()
        .starts_with("digraph"));
    let o = run(&["run", &ok, "-o", "json"]);
    assert_eq!(o.status.code(), Some(3), "run has no -o: {}", stderr(&o));
}

#[test]
fn completions_name_the_commands_for_each_shell_and_program() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for word in ["submit", "status", "runs", "validate", "coordinator"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        let o = run(&["completions", shell, "--bin", "factotum-agent"]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("factotum-agent"));
        assert!(stdout(&o).contains("drain-grace"), "{shell}");
        let o = run(&["completions", shell, "--bin", "factotum-coordinator"]);
        if cfg!(feature = "coordinator-docs") {
            assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
            assert!(stdout(&o).contains("etcd-prefix"), "{shell}");
        } else {
            assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
            assert!(stderr(&o).contains("coordinator-docs"), "{}", stderr(&o));
        }
    }
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn man_writes_a_page_per_program_and_subcommand() {
    let d = Dir::new();
    let dir = d.file("man1");
    let o = run(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut pages = vec![
        "factotum.1",
        "factotum-run.1",
        "factotum-submit.1",
        "factotum-status.1",
        "factotum-runs.1",
        "factotum-completions.1",
        "factotum-agent.1",
    ];
    if cfg!(feature = "coordinator-docs") {
        pages.extend(["factotum-coordinator.1", "factotum-coordinator-certs.1"]);
    }
    for page in pages {
        let text = std::fs::read_to_string(dir.join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}; wrote {}", stdout(&o)));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        assert!(stdout(&o).lines().any(|l| l == page), "{page} listed");
    }
    assert!(!dir.join("factotum-man.1").exists(), "man is hidden");
    let submit = std::fs::read_to_string(dir.join("factotum-submit.1")).unwrap();
    assert!(
        submit.contains("kill\\-grace"),
        "the local-only flags named"
    );
}
