//! Factotum Server 0.3's HTTP API on the coordinator's HTTP port (issue 16 item 1), against
//! the responses `../shared/COMPAT.md` documents: help, pretty, status, settings run|drain
//! (gRPC refused while draining, on every coordinator of one etcd, read back by a new
//! leader), submit → check QUEUED/WORKING/DONE with a real agent, the factfile root, the
//! duplicate refusal, and two coordinators racing the same job.

#[path = "support/server_http.rs"]
mod server_http;
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use server_http::{request, HttpCoordinator};
use support::fleet::{agent, sibling, Etcd};
use support::*;

const JSON: &str = "application/json; charset=UTF-8";

/// Factotum Server's `/help`, byte for byte (COMPAT.md).
const HELP: &str = r#"{"/check":{"function":"Fetches the state of a job by the ID.","params":"pretty=1, id=[id string]"},"/help":{"function":"Returns this message!","params":"pretty=1"},"/settings":{"body":{"state":"run|drain"},"function":"Updates settings within the server.","params":"pretty=1"},"/status":{"function":"Returns general information about the server and host system.","params":"pretty=1"},"/submit":{"body":{"factfileArgs":"[ --start step-2 ]","factfilePath":"/com.acme-main/factfile","jobName":"com.acme-main"},"function":"Submits a job to the queue.","params":"pretty=1"}}"#;

/// A factfile whose one task waits for `gate` to exist, then exits `code`.
fn gated(name: &str, gate: &str, code: i32) -> String {
    let script = format!("while [ ! -e {gate} ]; do sleep 0.1; done; exit {code}");
    factfile(name, vec![task("wait", "sh", &["-c", &script], &[])])
}

fn submit_body(path: &str, args: &[&str]) -> String {
    json!({"jobName": "echotest", "factfilePath": path, "factfileArgs": args}).to_string()
}

/// The job id a `/submit` answer names.
fn job_id(message: &str) -> String {
    let id = message
        .strip_prefix("SUBMITTING JOB REQ jobId:[")
        .and_then(|m| m.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a submit answer: {message}"));
    assert_eq!(id.len(), 64, "{id}");
    id.to_string()
}

fn wait_check(c: &HttpCoordinator, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), || {
        last = c.get(&format!("/check?id={id}")).json();
        last["state"] == state
    });
    assert!(ok, "never {state}: {last}");
    last
}

#[test]
fn help_status_pretty_and_drain_on_one_coordinator() {
    let d = Dir::new();
    let root = d.path().canonicalize().unwrap();
    let c = HttpCoordinator::start(&[
        "--server-factfile-root",
        root.to_str().unwrap(),
        "--max-pending-submits",
        "7",
    ]);
    let _agent = agent(&c.url, "a1", None, &["--slots", "3"]);
    support::fleet::wait_for_agents(&c.url, 1);

    for path in ["/", "/help"] {
        let a = c.get(path);
        assert_eq!(
            (a.status, a.content_type.as_str(), a.body.as_str()),
            (200, JSON, HELP)
        );
    }
    let pretty = c.get("/help?pretty=1");
    assert!(pretty.body.contains("\n  \"/check\": {"), "{}", pretty.body);
    assert_eq!(pretty.json(), serde_json::from_str::<Value>(HELP).unwrap());

    let s = c.get("/status");
    assert_eq!((s.status, s.content_type.as_str()), (200, JSON));
    let keys: Vec<&str> = [
        "\"version\"",
        "\"server\"",
        "\"startTime\"",
        "\"upTime\"",
        "\"state\"",
        "\"dispatcher\"",
        "\"workers\"",
        "\"total\"",
        "\"idle\"",
        "\"active\"",
        "\"jobs\"",
        "\"maxQueueSize\"",
        "\"inQueue\"",
    ]
    .to_vec();
    let at: Vec<usize> = keys.iter().map(|k| s.body.find(k).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "key order: {}", s.body);
    let s = s.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["server"]["state"], "run");
    let start = s["server"]["startTime"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(start, "%Y-%m-%d %H:%M:%S UTC").is_ok(),
        "{start}"
    );
    let up = s["server"]["upTime"].as_str().unwrap();
    assert!(
        up.starts_with("0 Days, 0 Hours, 0 Minutes, ") && up.ends_with(" Seconds"),
        "{up}"
    );
    assert_eq!(
        s["dispatcher"]["workers"],
        json!({"total": 3, "idle": 3, "active": 0})
    );
    assert_eq!(
        s["dispatcher"]["jobs"],
        json!({"maxQueueSize": 7, "inQueue": 0})
    );
    assert!(c.get("/status?pretty=1").body.contains("\n  \"server\": {"));

    let bad = c.post("/settings", r#"{"state":"sleep"}"#);
    assert_eq!(
        (bad.status, bad.message().as_str()),
        (
            400,
            "Validation Error: Invalid 'state', must be one of (run|drain)"
        )
    );
    let drained = c.post("/settings", r#"{"state":"drain"}"#);
    assert_eq!(
        (drained.status, drained.body.as_str()),
        (200, r#"{"message":"Update acknowledged: [state: drain]"}"#)
    );
    assert_eq!(c.get("/status").json()["server"]["state"], "drain");
    let path = d.write(
        "echo.factfile",
        &factfile("echo", vec![task("e", "echo", &["hi"], &[])]),
    );
    let refused = c.post("/submit", &submit_body(&path, &[]));
    assert_eq!(
        (refused.status, refused.message().as_str()),
        (400, "Server in [drain] state - cannot submit job")
    );
    // gRPC submissions are refused too: FAILED_PRECONDITION, DRAINING.
    let o = run(&["submit", &path, "--coordinator", &c.url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("draining"), "{}", stderr(&o));

    let resumed = c.post("/settings?pretty=1", r#"{"state":"run"}"#);
    assert_eq!(
        resumed.body,
        "{\n  \"message\": \"Update acknowledged: [state: run]\"\n}"
    );
    let ok = c.post("/submit", &submit_body(&path, &[]));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let id = job_id(&ok.message());
    let done = wait_check(&c, &id, "DONE");
    assert_eq!(done["lastOutcome"], "SUCCEEDED");
    assert_eq!(done["lastRunFrom"], "a1");
}

#[test]
fn submit_then_check_queued_working_done_and_duplicates() {
    let d = Dir::new();
    let root = d.path().canonicalize().unwrap();
    let c = HttpCoordinator::start(&["--server-factfile-root", root.to_str().unwrap()]);
    let gate = d.file("gate");
    let path = d.write("gated.factfile", &gated("gated", gate.to_str().unwrap(), 0));
    let args = ["--tag", "env,prod", "--env", r#"{"k":"secret-value"}"#];

    // No agent yet: the run waits, QUEUED.
    let a = c.post("/submit", &submit_body(&path, &args));
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (200, JSON),
        "{}",
        a.body
    );
    let id = job_id(&a.message());
    let q = c.get(&format!("/check?id={id}")).json();
    assert_eq!(
        q,
        json!({
            "state": "QUEUED",
            "jobRequest": {"jobId": id, "jobName": "echotest", "factfilePath": path,
                "factfileArgs": ["--tag", "env,prod", "--env", "[redacted]"]},
            "lastRunFrom": "",
            "lastOutcome": "WAITING",
        })
    );
    assert_eq!(c.get("/status").json()["dispatcher"]["jobs"]["inQueue"], 1);
    // The same job (another --env: the id ignores templating) is refused while active.
    let dup = c.post("/submit", &submit_body(&path, &["--tag", "env,prod"]));
    assert_eq!(
        (dup.status, dup.message().as_str()),
        (400, "Job is already being processed")
    );

    let _agent = agent(&c.url, "worker-1", None, &[]);
    let w = wait_check(&c, &id, "WORKING");
    assert_eq!(
        (&w["lastOutcome"], &w["lastRunFrom"]),
        (&json!("RUNNING"), &json!("worker-1"))
    );
    std::fs::write(&gate, "").unwrap();
    let done = wait_check(&c, &id, "DONE");
    assert_eq!(done["lastOutcome"], "SUCCEEDED");

    // Our run reference (or a prefix of it) works as an id too.
    let o = run(&["runs", "--coordinator", &c.url, "-o", "json"]);
    let runs: Value = serde_json::from_slice(&o.stdout).unwrap();
    let run_id = runs[0]["runId"].as_str().unwrap().to_string();
    let by_run = c.get(&format!("/check?id={}", &run_id[..12])).json();
    assert_eq!(by_run["jobRequest"]["jobId"], id.as_str());

    // A DONE job may be submitted again; a failing one ends DONE/FAILED.
    let failing = d.write("fail.factfile", &gated("fail", gate.to_str().unwrap(), 1));
    let f = c.post("/submit", &submit_body(&failing, &[]));
    let fid = job_id(&f.message());
    assert_eq!(wait_check(&c, &fid, "DONE")["lastOutcome"], "FAILED");
    let again = c.post("/submit", &submit_body(&path, &["--tag", "env,prod"]));
    assert_eq!(job_id(&again.message()), id);

    let no_id = c.get("/check");
    assert_eq!(
        (no_id.status, no_id.message().as_str()),
        (400, "Error: No 'id' found in URL query parameters")
    );
    let unknown = c.get("/check?id=nope");
    assert_eq!(unknown.message(), "Error: No job entry found for id='nope'");
}

#[test]
fn submit_validation_messages_and_the_factfile_root() {
    let d = Dir::new();
    let root_dir = Dir::new();
    let root = root_dir.path().canonicalize().unwrap();
    let c = HttpCoordinator::start(&["--server-factfile-root", root.to_str().unwrap()]);
    let text = factfile("echo", vec![task("e", "echo", &["hi"], &[])]);
    let inside = root_dir.write("echo.factfile", &text);
    let outside = d.write("outside.factfile", &text);
    std::os::unix::fs::symlink(&outside, root.join("escape.factfile")).unwrap();
    let escape = root.join("escape.factfile").to_string_lossy().into_owned();

    let msg = |body: &str| {
        let a = c.post("/submit", body);
        assert_eq!(
            (a.status, a.content_type.as_str()),
            (400, JSON),
            "{}",
            a.body
        );
        a.message()
    };
    assert_eq!(msg(""), "Error: No body found in POST request");
    assert!(msg("{nope").starts_with("Error decoding JSON string: "));
    assert_eq!(
        msg(r#"{"jobName":"","factfilePath":"/x","factfileArgs":[]}"#),
        "Validation Error: No valid value found: field 'jobName' cannot be empty"
    );
    assert_eq!(
        msg(r#"{"jobName":"j","factfileArgs":[]}"#),
        "Validation Error: No valid value found: field 'factfilePath' cannot be empty"
    );
    for path in [
        outside.as_str(),
        escape.as_str(),
        "/etc/passwd",
        "../x",
        "/no/such",
    ] {
        assert_eq!(
            msg(&submit_body(path, &[])),
            format!("Validation Error: Value does not exist on host for 'factfilePath':'{path}'")
        );
    }
    assert_eq!(msg(&submit_body(&inside, &["--nope"])), format!(
        "Validation Error: Failed to execute command: [factotum run {inside} --nope] - unexpected argument '--nope' found"));
    let bad_start = msg(&submit_body(&inside, &["--start", "zz"]));
    assert!(
        bad_start.starts_with(&format!(
            "Validation Error: Failed to execute command: [factotum run {inside} --start zz] - "
        )),
        "{bad_start}"
    );
    let huge = "x".repeat(2 << 20);
    let a = request(&c.http, "POST", "/submit", None, Some(huge.as_bytes()));
    assert_eq!(a.status, 413);
    // Relative to the root works; so does every run flag.
    let ok = c.post(
        "/submit",
        &submit_body(
            "echo.factfile",
            &[
                "--dry-run",
                "--no-colour",
                "--max-stdouterr-size",
                "100",
                "--tag",
                "a,b",
                "--constraint",
                "host,*",
                "--no-redact",
            ],
        ),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);

    // Without the flag every path is refused, and the log says why.
    let bare = HttpCoordinator::start(&[]);
    let a = bare.post("/submit", &submit_body(&inside, &[]));
    assert_eq!(
        a.message(),
        format!("Validation Error: Value does not exist on host for 'factfilePath':'{inside}'")
    );
    assert!(
        bare.log_text().contains("no --server-factfile-root is set"),
        "{}",
        bare.log_text()
    );
}

fn add_token(file: &str, name: &str, scope: &str) -> String {
    let o = std::process::Command::new(sibling("factotum-coordinator"))
        .args([
            "tokens", "add", "--file", file, "--name", name, "--scope", scope,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn scopes_guard_the_endpoints_when_tokens_are_configured() {
    let d = Dir::new();
    let file = d.file("tokens").to_string_lossy().into_owned();
    let reader = add_token(&file, "reader", "read");
    let admin = add_token(&file, "boss", "admin");
    let c = HttpCoordinator::start(&["--tokens", &file]);
    let call = |method, path, token, body: Option<&str>| {
        request(&c.http, method, path, token, body.map(str::as_bytes))
    };
    let none = call("GET", "/status", None, None);
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(
        none.message().contains("a token is needed"),
        "{}",
        none.body
    );
    assert_eq!(call("GET", "/help", Some("fct_wrong"), None).status, 401);
    assert_eq!(call("GET", "/status", Some(&reader), None).status, 200);
    assert_eq!(call("GET", "/", Some(&reader), None).body, HELP);
    let denied = call(
        "POST",
        "/settings",
        Some(&reader),
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(denied.status, 403);
    assert!(
        denied.message().contains("'admin' scope"),
        "{}",
        denied.body
    );
    assert_eq!(
        call("POST", "/submit", Some(&reader), Some("{}")).status,
        403
    );
    let ok = call(
        "POST",
        "/settings",
        Some(&admin),
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn drain_and_duplicates_hold_across_coordinators_on_one_etcd() {
    let etcd = Etcd::start();
    let d = Dir::new();
    let root = d.path().canonicalize().unwrap();
    let flags = [
        "--etcd",
        etcd.endpoint.as_str(),
        "--server-factfile-root",
        root.to_str().unwrap(),
        "--lease-ttl",
        "3",
    ];
    let first = HttpCoordinator::start(&flags);
    assert!(eventually(Duration::from_secs(20), || first.leads()));
    let second = HttpCoordinator::start(&flags);
    assert!(eventually(Duration::from_secs(20), || {
        second.get("/status").status == 200
    }));

    // Drain set through the follower holds on the leader, for gRPC too.
    assert_eq!(second.post("/settings", r#"{"state":"drain"}"#).status, 200);
    assert_eq!(first.get("/status").json()["server"]["state"], "drain");
    let path = d.write(
        "echo.factfile",
        &factfile("echo", vec![task("e", "echo", &["hi"], &[])]),
    );
    let o = run(&["submit", &path, "--coordinator", &first.url]);
    assert!(stderr(&o).contains("draining"), "{}", stderr(&o));
    assert_eq!(
        second.post("/submit", &submit_body(&path, &[])).message(),
        "Server in [drain] state - cannot submit job"
    );
    assert_eq!(first.post("/settings", r#"{"state":"run"}"#).status, 200);

    // Two coordinators, one job, at once: exactly one is accepted (no agent: it stays active).
    let gate = d.file("gate");
    let gated_path = d.write("gated.factfile", &gated("gated", gate.to_str().unwrap(), 0));
    let body = submit_body(&gated_path, &[]);
    let answers: Vec<_> = std::thread::scope(|s| {
        let a = s.spawn(|| first.post("/submit", &body));
        let b = s.spawn(|| second.post("/submit", &body));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let accepted = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(accepted, 1, "{answers:?}");
    let refused = answers.iter().find(|a| a.status != 200).unwrap();
    assert_eq!(
        (refused.status, refused.message().as_str()),
        (400, "Job is already being processed")
    );

    // The web UI and its JSON API behind the VIP: the follower serves them from the leader.
    let listed = second.get("/api/runs?job=gated");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let runs = listed.json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(runs.len(), 1, "{}", listed.body);
    let page = second.get("/ui/");
    assert_eq!(page.status, 200);
    assert!(page.body.to_lowercase().contains("<html"), "{}", page.body);

    // A new leader reads drain back.
    assert_eq!(second.post("/settings", r#"{"state":"drain"}"#).status, 200);
    drop(first);
    assert!(eventually(Duration::from_secs(30), || second.leads()));
    assert!(eventually(Duration::from_secs(30), || {
        let s = second.get("/status");
        s.status == 200 && s.json()["server"]["state"] == "drain"
    }));
    let o = run(&["submit", &path, "--coordinator", &second.url]);
    assert!(stderr(&o).contains("draining"), "{}", stderr(&o));
}
