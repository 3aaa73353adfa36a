//! Redaction (issue 14 item 4): `--env` string values and task `env` values never show in what
//! `factotum` prints or sends — the console, webhooks (tails and the `factfile` field), `status`,
//! `watch` — unless `--no-redact`. Real processes: the CLI, a coordinator and an agent.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fleet::{agent, wait_for_agents, Coordinator};
use support::*;

/// Passed with `--env` and templated into a task's command.
const TOKEN: &str = "s3cr3t-value";
/// A task's own `env` value, echoed through `$API_KEY`.
const KEY: &str = "task-env-k3y";
const ENV: &str = r#"{"token": "s3cr3t-value", "nested": {"n": 1, "short": "ab"}}"#;

/// Tasks that print both secrets, on stdout and stderr, and a short value left alone.
fn leaky_factfile(d: &Dir) -> String {
    let mut with_env = task(
        "env var",
        "sh",
        &["-c", "echo key=$API_KEY; echo $API_KEY >&2"],
        &[],
    );
    with_env["env"] = json!({"API_KEY": KEY});
    let tasks = vec![
        task(
            "templated",
            "echo",
            &["token={{token}}", "short={{nested.short}}"],
            &[],
        ),
        with_env,
    ];
    let mut ff: Value = serde_json::from_str(&factfile("leaky", tasks)).unwrap();
    ff["schema"] = json!(support::policies::EXTENDED);
    d.write("leaky.factfile", &ff.to_string())
}

/// Standard base64, decoded (the payloads' `factfile`).
fn unbase64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = A.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn shows_a_secret(text: &str) -> bool {
    text.contains(TOKEN) || text.contains(KEY)
}

/// Every payload's body and its decoded `factfile`, as text.
fn everything_received(rx: &Receiver) -> (Vec<String>, Vec<String>) {
    let received = rx.received();
    let bodies: Vec<String> = received.iter().map(|r| r.body.clone()).collect();
    let factfiles = received
        .iter()
        .map(|r| {
            let ff = r.json()["data"]["factfile"].as_str().unwrap().to_string();
            String::from_utf8(unbase64(&ff)).unwrap()
        })
        .collect();
    (bodies, factfiles)
}

#[test]
fn run_redacts_the_console_and_webhooks_and_no_redact_shows_all() {
    let d = Dir::new();
    let ff = leaky_factfile(&d);
    let rx = Receiver::start();
    let o = run(&["run", &ff, "--env", ENV, "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let console = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!shows_a_secret(&console), "{console}");
    assert!(
        console.contains("[templated] token=[redacted] short=ab"),
        "{console}"
    );
    assert!(console.contains("[env var] key=[redacted]\n"), "{console}");
    let (bodies, factfiles) = everything_received(&rx);
    assert_eq!(bodies.len(), 6, "{bodies:?}");
    for b in bodies.iter().chain(&factfiles) {
        assert!(!shows_a_secret(b), "{b}");
    }
    let last: Value = serde_json::from_str(bodies.last().unwrap()).unwrap();
    let state = |name: &str| {
        let states = last["data"]["taskStates"].as_array().unwrap();
        states
            .iter()
            .find(|t| t["taskName"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state("templated")["stdout"], "token=[redacted] short=ab");
    assert_eq!(state("env var")["stdout"], "key=[redacted]");
    assert_eq!(state("env var")["stderr"], "[redacted]");
    // The factfile shown is the one submitted, untemplated, its env values redacted.
    let shown: Value = serde_json::from_str(&factfiles[0]).unwrap();
    assert_eq!(shown["data"]["tasks"][0]["arguments"][0], "token={{token}}");
    assert_eq!(
        shown["data"]["tasks"][1]["env"],
        json!({"API_KEY": "[redacted]"})
    );
    let reference = last["data"]["jobReference"].clone();

    // --no-redact: Factotum's bodies, the templated factfile, the same jobReference.
    let rx = Receiver::start();
    let o = run(&[
        "run",
        &ff,
        "--env",
        ENV,
        "--webhook",
        &rx.url,
        "--no-redact",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("[templated] token=s3cr3t-value"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains(&format!("[env var] key={KEY}\n")));
    let (bodies, factfiles) = everything_received(&rx);
    let last: Value = serde_json::from_str(bodies.last().unwrap()).unwrap();
    let states = last["data"]["taskStates"].to_string();
    assert!(states.contains("token=s3cr3t-value short=ab"), "{states}");
    assert!(factfiles[0].contains(TOKEN) && factfiles[0].contains(KEY));
    assert!(!factfiles[0].contains("{{token}}"));
    assert_eq!(last["data"]["jobReference"], reference);

    // --dry-run prints the templated command lines: redacted too.
    let o = run(&["run", &ff, "--env", ENV, "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!shows_a_secret(&stdout(&o)), "{}", stdout(&o));
    assert!(stdout(&o).contains("token=[redacted]"), "{}", stdout(&o));
}

#[test]
fn a_fleet_run_shows_no_secret_in_status_watch_or_webhooks() {
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "solo", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = leaky_factfile(&d);
    let rx = Receiver::start();
    let submit = |extra: &[&str]| {
        let mut args = vec!["submit", &ff, "--coordinator", &c.url, "--env", ENV];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = submit(&["--wait", "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let waited = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!shows_a_secret(&waited), "{waited}");
    assert!(waited.contains("token=[redacted]"), "{waited}");

    let o = submit(&[]);
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64, "{}", stderr(&o));
    let done = eventually(Duration::from_secs(20), || {
        stdout(&run(&["status", &id, "--coordinator", &c.url])).contains("SUCCEEDED")
    });
    assert!(done, "the run did not end");
    for args in [
        vec!["status", &id, "--coordinator", &c.url],
        vec!["status", &id, "--coordinator", &c.url, "-o", "json"],
        vec!["watch", &id, "--coordinator", &c.url],
        vec!["watch", &id, "--coordinator", &c.url, "-o", "json"],
    ] {
        let o = run(&args);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!shows_a_secret(&all), "{args:?}: {all}");
    }
    // A late watcher gets the run's output from the start: redacted.
    let o = run(&["watch", &id, "--coordinator", &c.url]);
    assert!(stdout(&o).contains("token=[redacted]"), "{}", stdout(&o));
    assert!(eventually(Duration::from_secs(10), || rx.received().len() >= 6));
    let (bodies, factfiles) = everything_received(&rx);
    for b in bodies.iter().chain(&factfiles) {
        assert!(!shows_a_secret(b), "{b}");
    }

    // `submit --no-redact` travels with the request.
    let o = submit(&["--wait", "--no-redact"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("token=s3cr3t-value"), "{}", stdout(&o));
}

/// Every key and value under etcd's root (its JSON gateway), decoded.
fn etcd_dump(endpoint: &str) -> Vec<(String, Vec<u8>)> {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://");
    let body = r#"{"key": "AA==", "range_end": "AA=="}"#;
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let request = format!(
        "POST /v3/kv/range HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let json = answer.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(json).unwrap();
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let key = unbase64(kv["key"].as_str().unwrap());
            let value = unbase64(kv["value"].as_str().unwrap_or(""));
            (String::from_utf8_lossy(&key).into_owned(), value)
        })
        .collect()
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn with_a_store_key_etcd_holds_no_secret_and_a_restart_reads_the_runs_back() {
    let etcd = support::fleet::Etcd::start();
    let d = Dir::new();
    // 32 bytes (0, 1, …, 31) in base64, as `head -c32 /dev/urandom | base64` writes a key.
    let key = d.write(
        "store.key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    );
    let start = || {
        let c = Coordinator::start(&["--etcd", &etcd.endpoint, "--store-key", &key]);
        assert!(
            eventually(Duration::from_secs(15), || c.leads()),
            "no leader"
        );
        c
    };
    let c = start();
    let a = agent(&c.url, "solo", None, &[]);
    wait_for_agents(&c.url, 1);
    let ff = leaky_factfile(&d);
    let o = run(&[
        "submit",
        &ff,
        "--coordinator",
        &c.url,
        "--env",
        ENV,
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let runs = stdout(&run(&["runs", "--coordinator", &c.url, "-o", "json"]));
    let id = serde_json::from_str::<Value>(&runs).unwrap()[0]["runId"]
        .as_str()
        .unwrap()
        .to_string();

    let dump = etcd_dump(&etcd.endpoint);
    assert!(
        dump.iter()
            .any(|(k, _)| k.ends_with(&format!("runs/{id}/spec"))),
        "{:?}",
        dump.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for (k, v) in &dump {
        for secret in [TOKEN, KEY] {
            assert!(
                !holds(v, secret) && !k.contains(secret),
                "{k} holds a secret"
            );
        }
    }
    // A new coordinator with the same key reads the sealed records back.
    drop(a);
    drop(c);
    let c = start();
    let o = run(&["status", &id, "--coordinator", &c.url]);
    assert!(
        stdout(&o).contains("SUCCEEDED"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}
