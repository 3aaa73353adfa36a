//! The web UI and its JSON API on the coordinator's HTTP port (issue 16 item 2): the API over
//! plain HTTP (paging, `%2F` in task names, errors, server-sent events resumed with
//! `Last-Event-ID`), and the pages in headless Chromium through chromedriver (the runs list, a
//! run's DAG updating live, its log followed, the cancel button, the agents page; the login
//! and CSRF with `--tokens`). Screenshots go to `target/ui-screenshots/`; with
//! `FACTOTUM_UPDATE_DOCS=1` the run page's is copied to `docs/ui-run.png` (the README's).

mod support;
#[path = "support/web.rs"]
mod web;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::fleet::{agent, sibling, wait_for_agents};
use support::*;
use web::*;

const LIMIT: Duration = Duration::from_secs(30);

fn submit(c: &WebCoordinator, ff: &str) {
    let o = run(&["submit", ff, "--coordinator", &c.url, "--allow-concurrent"]);
    assert!(o.status.success(), "submit: {}", stderr(&o));
}

fn runs(c: &WebCoordinator, query: &str) -> Vec<Value> {
    let a = get(&format!("{}/api/runs?{query}", c.http));
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["runs"].as_array().unwrap().clone()
}

/// The newest run of `job`, once there is one.
fn newest(c: &WebCoordinator, job: &str) -> String {
    let q = format!("job={}&page_size=1", job.replace(' ', "+"));
    wait_for(LIMIT, "a run", || {
        let r = runs(c, &q);
        r.first().map(|r| r["run_id"].as_str().unwrap().to_string())
    })
}

fn wait_run_state(c: &WebCoordinator, id: &str, state: &str) -> Value {
    wait_for(LIMIT, state, || {
        let r = get(&format!("{}/api/runs/{id}", c.http)).json();
        (r["state"] == state).then_some(r)
    })
}

#[test]
fn the_json_api_pages_runs_decodes_task_names_and_maps_errors() {
    let c = WebCoordinator::start(&[]);
    let _a = agent(&c.url, "api-agent", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "slash.factfile",
        &factfile(
            "slashes",
            vec![
                task("load/part 1", "echo", &["from-the-slash-task"], &[]),
                task("after", "echo", &["after"], &["load/part 1"]),
            ],
        ),
    );
    submit(&c, &ff);
    let id = newest(&c, "slashes");
    let run = wait_run_state(&c, &id, "SUCCEEDED");
    assert_eq!(run["tasks"][1]["dependencies"], json!(["load/part 1"]));
    assert_eq!(run["tasks"][0]["agent"], "api-agent");

    let log = get(&format!(
        "{}/api/runs/{id}/tasks/load%2Fpart%201/log",
        c.http
    ));
    assert_eq!(log.status, 200, "{}", log.body);
    assert_eq!(log.body, "from-the-slash-task\n");
    assert_eq!(
        log.header("x-factotum-log"),
        Some("full"),
        "the agent's own log"
    );
    assert_eq!(log.header("x-factotum-attempt"), Some("1"));
    let tail = get(&format!(
        "{}/api/runs/{id}/tasks/load%2Fpart%201/log?tail=5",
        c.http
    ));
    assert_eq!(tail.body, "task\n");
    let error = |path: &str, status: u16, reason: &str| {
        let a = get(&format!("{}{path}", c.http));
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_eq!(a.json()["reason"], reason, "{path}: {}", a.body);
    };
    error("/api/runs/ffffffffffff", 404, "RUN_NOT_FOUND");
    error(
        &format!("/api/runs/{id}/tasks/load/part%201/log"),
        404,
        "NOT_FOUND",
    );
    error(
        &format!("/api/runs/{id}/tasks/nope/log"),
        404,
        "TASK_NOT_FOUND",
    );
    let attempt = format!("/api/runs/{id}/tasks/after/log?attempt=7");
    error(&attempt, 404, "LOG_NOT_FOUND");
    error("/api/runs?state=SLEEPING", 400, "INVALID_ARGUMENT");
    error("/api/runs?page_token=junk", 400, "INVALID_ARGUMENT");
    error("/api/runs?since=yesterday", 400, "INVALID_ARGUMENT");
    let rerun = request(
        "POST",
        &format!("{}/api/runs/{id}/rerun?from_failed=1", c.http),
        &[("X-Factotum-CSRF", "1")],
        "",
    );
    assert_eq!(
        (rerun.status, rerun.json()["reason"].clone()),
        (409, json!("NOTHING_TO_RERUN")),
        "{}",
        rerun.body
    );
    let forged = request("POST", &format!("{}/api/runs/{id}/rerun", c.http), &[], "");
    assert_eq!(
        forged.status, 403,
        "a POST without the CSRF header: {}",
        forged.body
    );

    // Server-side paging: 24 runs, 10 a page.
    let many = d.write(
        "many.factfile",
        &factfile("many", vec![task("t", "true", &[], &[])]),
    );
    for _ in 0..24 {
        submit(&c, &many);
    }
    wait_for(Duration::from_secs(60), "24 runs to succeed", || {
        (runs(&c, "job=many&state=SUCCEEDED&page_size=100").len() == 24).then_some(())
    });
    let (mut seen, mut token, mut sizes) = (vec![], String::new(), vec![]);
    loop {
        let a = get(&format!(
            "{}/api/runs?job=many&page_size=10&page_token={token}",
            c.http
        ))
        .json();
        let page = a["runs"].as_array().unwrap().clone();
        sizes.push(page.len());
        seen.extend(page.iter().map(|r| {
            (
                r["start_time"].as_str().unwrap().to_string(),
                r["run_id"].clone(),
            )
        }));
        token = a["next_page_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(sizes, [10, 10, 4]);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0));
    sorted.dedup_by(|a, b| a.1 == b.1);
    assert_eq!(sorted.len(), 24, "every run once");
    assert_eq!(runs(&c, "job=many&since=1h&page_size=100").len(), 24);
    assert_eq!(runs(&c, "job=many&since=2999-01-01T00:00:00Z").len(), 0);
    assert_eq!(runs(&c, "state=failed,cancelled").len(), 0);
}

#[test]
fn server_sent_events_are_numbered_and_resume_after_last_event_id() {
    let c = WebCoordinator::start(&[]);
    // An agent that keeps no full logs: the log is the coordinator's tail.
    let _a = agent(&c.url, "sse-agent", None, &["--log-dir", "off"]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "slow.factfile",
        &factfile(
            "slow",
            vec![
                task("slow", "sleep", &["3"], &[]),
                task("next", "echo", &["done"], &["slow"]),
            ],
        ),
    );
    submit(&c, &ff);
    let id = newest(&c, "slow");
    let url = format!("{}/api/runs/{id}/events", c.http);
    let mut r = stream(&url, &[]);
    let (status, headers) = head(&mut r);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "text/event-stream"));
    let mut last = 0;
    loop {
        let (id, name, data) = next_event(&mut r).expect("events until the slow task runs");
        assert_eq!(id, last + 1, "ids count up from 1");
        last = id;
        let running = |c: &Value| c["name"] == "slow" && c["state"] == "RUNNING";
        if name == "tasks" && data["changes"].as_array().unwrap().iter().any(running) {
            break;
        }
    }
    drop(r);

    // The browser's reconnection: Last-Event-ID resumes with a gap, then a snapshot.
    let mut r = stream(&url, &[("Last-Event-ID", &last.to_string())]);
    assert_eq!(head(&mut r).0, 200);
    let mut names = vec![];
    let mut snapshot = Value::Null;
    let mut end = Value::Null;
    while let Some((id, name, data)) = next_event(&mut r) {
        assert_eq!(id, last + 1, "numbering goes on from Last-Event-ID");
        last = id;
        if name == "snapshot" {
            snapshot = data.clone();
        }
        names.push(name.clone());
        if name == "end" {
            end = data;
            break;
        }
    }
    assert_eq!(names[..2], ["gap", "snapshot"], "{names:?}");
    assert_eq!(snapshot["tasks"][0]["name"], "slow");
    assert_eq!(end["state"], "SUCCEEDED", "{names:?}");
    let log = get(&format!("{}/api/runs/{id}/tasks/next/log?follow=1", c.http));
    assert_eq!(log.body, "done\n", "{log:?}");
    assert_eq!(log.header("x-factotum-log"), Some("tail"));
    assert!(log.header("x-factotum-log-note").is_some());
    let a = request("GET", &url, &[("Last-Event-ID", "junk")], "");
    assert_eq!(
        a.status, 200,
        "a junk Last-Event-ID starts from the beginning"
    );
}

/// A page's text with every element's text (innerText of the body).
fn page_text(b: &Browser) -> String {
    b.js("return document.body.innerText;", json!([]))
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn node_class(b: &Browser, task: &str) -> String {
    let script = "const g = [...document.querySelectorAll('#dag g.node')].find(n => n.getAttribute('data-task') === arguments[0]); return g ? g.getAttribute('class') : '';";
    b.js(script, json!([task]))
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn the_ui_lists_runs_follows_a_live_run_and_its_log_cancels_it_and_shows_agents() {
    let b = Browser::start();
    let c = WebCoordinator::start(&[]);
    let _a = agent(
        &c.url,
        "ui-agent",
        None,
        &["--label", "zone=blue", "--slots", "4"],
    );
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let nightly = d.write(
        "n.factfile",
        &factfile("nightly", vec![task("only", "echo", &["hi"], &[])]),
    );
    for _ in 0..3 {
        submit(&c, &nightly);
    }
    wait_for(LIMIT, "3 finished runs", || {
        (runs(&c, "job=nightly&state=SUCCEEDED").len() == 3).then_some(())
    });
    let live = d.write(
        "live.factfile",
        &factfile(
            "live dag",
            vec![
                task(
                    "extract",
                    "echo '<img src=x onerror=\"window.__xss=1\">'; sleep 4",
                    &[],
                    &[],
                ),
                task(
                    "transform/clean",
                    "for i in $(seq 1 300); do echo working-$i; sleep 0.2; done",
                    &[],
                    &["extract"],
                ),
                task("side", "true", &[], &["extract"]),
                task("load", "echo", &["loaded"], &["transform/clean", "side"]),
            ],
        ),
    );
    submit(&c, &live);
    let id = newest(&c, "live dag");

    b.goto(&format!("{}/ui/#/runs", c.http));
    wait_for(LIMIT, "4 runs listed", || {
        let n = b.js(
            "return document.querySelectorAll('#runs-table tbody tr').length;",
            json!([]),
        );
        (n.as_u64() == Some(4)).then_some(())
    });
    let text = page_text(&b);
    assert!(
        text.contains("nightly") && text.contains("live dag"),
        "{text}"
    );
    b.screenshot("runs");

    b.goto(&format!("{}/ui/#/run/{id}", c.http));
    b.js("window.__same_page = true;", json!([]));
    b.wait_text("#run-job", LIMIT, |t| t == "live dag");
    wait_for(LIMIT, "the DAG", || {
        (!node_class(&b, "load").is_empty()).then_some(())
    });
    let before = node_class(&b, "transform/clean");
    assert!(before.contains("state-WAITING"), "{before}");
    // The extract task's output is shown as text, never as markup.
    b.click("#tasks-table tr[data-task='extract']");
    b.wait_text("#log", LIMIT, |t| t.contains("<img src=x"));
    let script =
        "return [document.querySelectorAll('#log img').length, window.__xss === undefined];";
    assert_eq!(b.js(script, json!([])), json!([0, true]));
    // A transition while the page is open: the node changes without a reload.
    wait_for(LIMIT, "transform/clean to run", || {
        node_class(&b, "transform/clean")
            .contains("state-RUNNING")
            .then_some(())
    });
    assert!(node_class(&b, "side").contains("state-SUCCEEDED"));
    assert_eq!(
        b.js("return window.__same_page === true;", json!([])),
        json!(true),
        "no reload"
    );
    b.click("#tasks-table tr[data-task='transform/clean']");
    b.wait_text("#log", LIMIT, |t| t.contains("working-3"));
    let followed = b.wait_text("#log", LIMIT, |t| t.contains("working-12"));
    assert!(!followed.contains("<img"), "the log is the selected task's");
    let status = b.text("#log-status");
    assert!(status.contains("full log, following"), "{status}");
    b.wait_text("#log-attempts", LIMIT, |t| t == "1");
    b.wait_text(
        "#tasks-table tr[data-task='transform/clean'] td:nth-child(4)",
        LIMIT,
        |t| t == "ui-agent",
    );
    let shot = b.screenshot("run");
    // The README's picture, when asked for (a test run leaves the checkout as it found it).
    if std::env::var_os("FACTOTUM_UPDATE_DOCS").is_some() {
        std::fs::copy(&shot, repo().join("docs/ui-run.png")).unwrap();
    }

    // The agents page: the task the agent runs, and why a run nobody can take waits.
    let red = d.write(
        "red.factfile",
        &factfile("red only", vec![task("r", "true", &[], &[])]),
    );
    let o = run(&[
        "submit",
        &red,
        "--coordinator",
        &c.url,
        "--constraint",
        "label,zone=red",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    b.goto(&format!("{}/ui/#/agents", c.http));
    let row = b.wait_text("#agents-table tbody", LIMIT, |t| {
        t.contains("live dag / transform/clean")
    });
    assert!(
        row.contains("ui-agent") && row.contains("zone=blue") && row.contains("1/4 in use"),
        "{row}"
    );
    assert!(row.contains("connected"), "{row}");
    let why = b.wait_text("#waiting-table tbody", LIMIT, |t| t.contains("red only"));
    assert!(why.contains("zone=red"), "{why}");
    b.screenshot("agents");
    b.goto(&format!("{}/ui/#/run/{id}", c.http));
    b.wait_text("#run-live", LIMIT, |t| t == "live");

    b.click("#run-cancel-button");
    assert_eq!(b.text("#run-cancel-button"), "Really cancel?");
    b.click("#run-cancel-button");
    b.wait_text("#run-state", LIMIT, |t| t == "CANCELLED");
    wait_for(LIMIT, "load skipped", || {
        node_class(&b, "load")
            .contains("state-SKIPPED")
            .then_some(())
    });
    b.wait_text("#run-cancel", LIMIT, |t| t.contains("from the web UI"));
    b.screenshot("run-cancelled");
}

fn add_token(file: &str, name: &str, scope: &str) -> String {
    let o = Command::new(sibling("factotum-coordinator"))
        .args([
            "tokens", "add", "--file", file, "--name", name, "--scope", scope,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn with_tokens_the_ui_logs_in_with_a_cookie_and_posts_need_the_csrf_header() {
    let b = Browser::start();
    let d = Dir::new();
    let file = d.file("tokens").to_string_lossy().into_owned();
    let token = add_token(&file, "viewer", "read,cancel");
    let c = WebCoordinator::start(&["--tokens", &file]);
    let api = format!("{}/api/runs", c.http);

    let a = get(&api);
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (401, json!("UNAUTHENTICATED"))
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        request("GET", &api, &[("Authorization", &bearer)], "").status,
        200
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let bad = request(
        "POST",
        &format!("{}/ui/login", c.http),
        &form,
        "token=fct_nope",
    );
    assert_eq!(bad.status, 401, "{}", bad.body);
    let login = request(
        "POST",
        &format!("{}/ui/login", c.http),
        &form,
        &format!("token={token}"),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let cookies = login.all("set-cookie");
    let session = cookies
        .iter()
        .find(|c| c.starts_with("factotum_token="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let jar = format!(
        "{}; factotum_csrf={csrf}",
        session.split(';').next().unwrap()
    );
    assert_eq!(
        request("GET", &api, &[("Cookie", &jar)], "").status,
        200,
        "the cookie is a credential"
    );
    let cancel = format!("{}/api/runs/ffffffffffff/cancel", c.http);
    let post = |headers: &[(&str, &str)]| {
        let a = request("POST", &cancel, headers, "{}");
        (
            a.status,
            a.json()["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(post(&[("Cookie", &jar)]), (403, "CSRF".into()));
    assert_eq!(
        post(&[("Cookie", &jar), ("X-Factotum-CSRF", "wrong")]),
        (403, "CSRF".into())
    );
    assert_eq!(
        post(&[("Cookie", &jar), ("X-Factotum-CSRF", &csrf)]),
        (404, "RUN_NOT_FOUND".into())
    );
    assert_eq!(
        post(&[("Authorization", &bearer)]),
        (404, "RUN_NOT_FOUND".into())
    );

    // In the browser: the API answers 401, so the page asks for a token.
    b.goto(&format!("{}/ui/", c.http));
    b.find("#login-token");
    b.screenshot("login");
    b.type_into("#login-token", "fct_not-a-token");
    b.click("#login-submit");
    b.wait_text("#login-error", LIMIT, |t| {
        t.contains("not one this coordinator knows")
    });
    b.type_into("#login-token", &token);
    b.click("#login-submit");
    b.find("#runs-table");
    b.wait_text("#runs-empty", LIMIT, |t| t == "No runs.");
    let cookie = b.js("return document.cookie;", json!([]));
    let cookie = cookie.as_str().unwrap();
    assert!(
        cookie.contains("factotum_csrf=") && !cookie.contains("factotum_token"),
        "{cookie}"
    );
    let script = "const done = arguments[arguments.length - 1];
        const url = '/api/runs/ffffffffffff/cancel';
        Promise.all([
          fetch(url, {method: 'POST'}).then(r => r.status),
          fetch(url, {method: 'POST', headers: {'X-Factotum-CSRF': document.cookie.match(/factotum_csrf=([^;]*)/)[1]}}).then(r => r.status),
        ]).then(done);";
    assert_eq!(b.js_async(script, json!([])), json!([403, 404]));
    b.click("#logout");
    b.find("#login-token");
    assert_eq!(get(&api).status, 401);
}
