//! Webhooks from `factotum run`, received by a real HTTP server.

mod support;

use serde_json::Value;
use support::*;

const ECHO_REFERENCE: &str = "c8abd9c2bb317fdec983bea8707bf01ae72b46d8d2e39317f31a442d360c068a";
const ECHO_TAGGED_REFERENCE: &str =
    "a5cdf01736c054d8ad5f38d750b4a529c5fb03e7ba34a5394314e50bbdd0e3ee";

fn check_common(p: &[Value]) {
    let first = &p[0]["data"];
    for payload in p {
        let d = &payload["data"];
        for k in [
            "jobName",
            "jobReference",
            "runReference",
            "factfile",
            "startTime",
            "tags",
        ] {
            assert_eq!(d[k], first[k], "{k} must not change during a run");
        }
        assert_eq!(d["applicationContext"]["name"], "factotum");
        let dur = d["runDuration"].as_str().unwrap();
        assert!(dur.starts_with("PT") || dur.starts_with('P'), "{dur}");
        for t in d["taskStates"].as_array().unwrap() {
            for (k, v) in t.as_object().unwrap() {
                assert!(!v.is_null(), "optional field {k} sent as null");
            }
        }
    }
}

#[test]
fn echo_payloads_in_factotums_order_with_the_vector_references() {
    let rx = Receiver::start();
    let o = run(&[
        "run",
        &shared("factotum-samples/echo.factfile"),
        "--webhook",
        &rx.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = rx.payloads();
    assert_eq!(
        transitions(&p),
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "echo alpha WAITING->RUNNING",
            "echo alpha RUNNING->SUCCEEDED",
            "echo beta WAITING->RUNNING",
            "echo beta RUNNING->SUCCEEDED",
            "echo omega WAITING->RUNNING",
            "echo omega RUNNING->SUCCEEDED",
            "job RUNNING->SUCCEEDED"
        ]
    );
    check_common(&p);
    assert_eq!(p[0]["data"]["jobReference"], ECHO_REFERENCE);
    assert_eq!(
        p[0]["schema"],
        "iglu:com.snowplowanalytics.factotum/job_update/jsonschema/1-0-0"
    );
    assert_eq!(
        p[2]["schema"],
        "iglu:com.snowplowanalytics.factotum/task_update/jsonschema/1-0-0"
    );
    assert_eq!(
        p[1]["data"]["taskStates"][0]["state"], "RUNNING",
        "the job payload shows the first task running"
    );
    let last = &p[8]["data"]["taskStates"];
    assert_eq!(last[2]["stdout"], "and omega!");
    assert_eq!(last[2]["returnCode"], 0);
    assert!(last[2]["duration"].as_str().unwrap().starts_with("PT0."));
    assert_eq!(p[0]["data"]["runReference"].as_str().unwrap().len(), 64);
    // The factfile field is the templated compact factfile, base64.
    let ff = p[0]["data"]["factfile"].as_str().unwrap();
    assert!(ff.starts_with("eyJzY2hlbWEiOiJpZ2x1OmNvbS5zbm93cGxvd2FuYWx5dGljcy5mYWN0b3R1bS9mYWN0ZmlsZS9qc29uc2NoZW1hLzEtMC0wIiwiZGF0YSI6eyJuYW1lIjoiZWNobyBvcmRlciBkZW1vIiwidGFza3MiOlt7Im5hbWUiOiJlY2hvIGFscGhhIiwiZXhlY3V0b3IiOiJzaGVsbCIsImNvbW1hbmQiOiJlY2hvIiwiYXJndW1lbnRzIjpbImFscGhhIl0s"));
    let ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "event ids are distinct: {ids:?}");
    assert!(rx.received()[0]
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

#[test]
fn tags_change_the_job_reference_like_factotum() {
    let rx = Receiver::start();
    let o = run(&[
        "run",
        &shared("factotum-samples/echo.factfile"),
        "--webhook",
        &rx.url,
        "--tag",
        "env,prod",
        "--tag",
        "client,acme",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let p = rx.payloads();
    assert_eq!(p[0]["data"]["jobReference"], ECHO_TAGGED_REFERENCE);
    assert_eq!(
        p[0]["data"]["tags"],
        serde_json::json!({"client": "acme", "env": "prod"})
    );
}

#[test]
fn failure_payloads_carry_reasons_and_cascades() {
    let rx = Receiver::start();
    let o = run(&[
        "run",
        &repo()
            .join("samples/failure-cascade.factfile")
            .to_string_lossy(),
        "--webhook",
        &rx.url,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let p = rx.payloads();
    check_common(&p);
    let t = transitions(&p);
    assert!(
        t.contains(
            &"flaky RUNNING->FAILED | after flaky WAITING->SKIPPED | report WAITING->SKIPPED"
                .to_string()
        ),
        "{t:?}"
    );
    assert_eq!(t.last().unwrap(), "job RUNNING->FAILED");
    let states = p.last().unwrap()["data"]["taskStates"]
        .as_array()
        .unwrap()
        .clone();
    let flaky = states.iter().find(|s| s["taskName"] == "flaky").unwrap();
    assert_eq!(flaky["returnCode"], 4);
    assert_eq!(flaky["stderr"], "about to fail");
    let report = states.iter().find(|s| s["taskName"] == "report").unwrap();
    assert_eq!(report["state"], "SKIPPED");
    assert_eq!(report["errorMessage"], "the task 'flaky' failed");
    assert!(report.get("returnCode").is_none());
}

#[test]
fn heartbeats_carry_output_so_far_and_tails_are_bounded() {
    let rx = Receiver::start();
    let d = Dir::new();
    let ff = d.write(
        "hb.factfile",
        &factfile(
            "hb",
            vec![task(
                "long",
                "for i in 1 2 3; do echo line$i; sleep 0.6; done",
                &[],
                &[],
            )],
        ),
    );
    let o = run(&[
        "run",
        &ff,
        "--webhook",
        &rx.url,
        "--heartbeat-interval",
        "0.5",
        "--max-stdouterr-size",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = rx.payloads();
    let beats: Vec<&Value> = p
        .iter()
        .filter(|x| transitions(std::slice::from_ref(x))[0] == "long RUNNING->RUNNING")
        .collect();
    assert!(beats.len() >= 2, "{:?}", transitions(&p));
    assert!(
        beats[0]["data"]["taskStates"][0]["stdout"]
            .as_str()
            .unwrap()
            .len()
            <= 8
    );
    let last = &p.last().unwrap()["data"]["taskStates"][0];
    assert_eq!(last["stdout"], "e2\nline3");
}

#[test]
fn a_submitted_run_sends_heartbeats_from_its_coordinator() {
    use support::fleet::{agent, wait_for_agents, Coordinator};
    let rx = Receiver::start();
    let c = Coordinator::start(&[]);
    let _a = agent(&c.url, "beating", None, &[]);
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "hb.factfile",
        &factfile(
            "hb fleet",
            vec![task(
                "long",
                "for i in 1 2 3 4; do echo line$i; sleep 0.5; done",
                &[],
                &[],
            )],
        ),
    );
    let submit = |interval: &str| {
        run(&[
            "submit",
            &ff,
            "--wait",
            "--allow-concurrent",
            "--webhook",
            &rx.url,
            "--heartbeat-interval",
            interval,
            "--coordinator",
            &c.url,
        ])
    };
    let o = submit("0.4");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The coordinator delivers in the background: wait for the run's end to arrive.
    assert!(eventually(std::time::Duration::from_secs(10), || {
        transitions(&rx.payloads()).contains(&"job RUNNING->SUCCEEDED".to_string())
    }));
    let p = rx.payloads();
    let beats: Vec<&Value> = p
        .iter()
        .filter(|x| transitions(std::slice::from_ref(x))[0] == "long RUNNING->RUNNING")
        .collect();
    assert!(beats.len() >= 2, "{:?}", transitions(&p));
    let seen = beats.last().unwrap()["data"]["taskStates"][0]["stdout"]
        .as_str()
        .unwrap();
    assert!(
        seen.starts_with("line1"),
        "a heartbeat carries the output so far: {seen:?}"
    );
    // Too short an interval is refused before anything runs.
    let o = submit("10ms");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("100ms"), "{}", stderr(&o));
}

#[test]
fn deliveries_are_retried_in_order_with_the_same_event_id() {
    let rx = Receiver::failing_first(3);
    let o = run(&[
        "run",
        &shared("factotum-samples/echo.factfile"),
        "--webhook",
        &rx.url,
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(rx.attempts(), 9 + 3);
    let p = rx.payloads();
    assert_eq!(transitions(&p)[0], "job null->WAITING");
    assert_eq!(transitions(&p).len(), 9);
    // Each event's id is a UUID that its retries repeat; its sequence number has a header.
    let ids_of = |rs: &[Received]| -> Vec<(String, String)> {
        rs.iter()
            .map(|r| {
                let id = r.header("webhook-id").unwrap().to_string();
                (r.header("factotum-sequence").unwrap().to_string(), id)
            })
            .collect()
    };
    let got = ids_of(&rx.received());
    let seqs: Vec<String> = got.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(seqs, (0..9).map(|n| n.to_string()).collect::<Vec<_>>());
    let unique: std::collections::HashSet<&String> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), 9, "{got:?}");
    for (_, id) in &got {
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(&id[14..15], "5", "version 5: {id}");
    }
    // The three failed attempts were the first event, with the same id.
    let all = ids_of(&rx.requests());
    assert!(all[..4].iter().all(|x| *x == got[0]), "{all:?}");
}

#[test]
fn undelivered_webhooks_are_named_not_silently_dropped() {
    // Nothing listens on this port (bound then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/down");
    let o = run(&[
        "run",
        &shared("factotum-samples/echo.factfile"),
        "--webhook",
        &url,
        "--webhook-timeout",
        "1",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the job's outcome decides the exit code"
    );
    let err = stderr(&o);
    assert!(err.contains("Warn: 9 webhook payload(s) for run "), "{err}");
    assert!(err.contains(&url), "{err}");
}
