//! Webhook delivery through coordinators (issue 14): an endpoint that answers 410 is disabled
//! and its events become dead letters that `factotum webhooks` lists, enables and replays in
//! order with their original ids; `[[webhook]]` filters and per-endpoint secrets from the
//! config file; a new leader delivering the backlog with the same ids.

#[path = "support/hooks.rs"]
mod hooks;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hooks::*;
use serde_json::Value;
use support::fleet::{agent, wait_for_agents, Coordinator, Etcd};
use support::policies::assert_iglu_valid;
use support::*;

/// A receiver whose answer can be switched from `gone` (410) to 200.
fn switchable() -> (Receiver, Arc<AtomicBool>) {
    let ok = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ok);
    let rx = Receiver::answering(Arc::new(move |_, _| {
        Answer::Status(
            if flag.load(Ordering::SeqCst) {
                200
            } else {
                410
            },
            vec![],
        )
    }));
    (rx, ok)
}

#[test]
fn gone_disables_an_endpoint_until_enabled_and_replay_resends_in_order() {
    let (rx, ok) = switchable();
    let c = Coordinator::start(&["--webhook", &rx.url]);
    let _a = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let o = run(&["submit", &echo(), "--coordinator", &c.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed = || {
        let o = run(&["webhooks", "list", "--coordinator", &c.url, "-o", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()
    };
    assert!(eventually(Duration::from_secs(10), || {
        listed()["deadLettersTotal"] == 9
    }));
    let l = listed();
    assert_eq!(rx.requests().len(), 1, "after the 410 nothing more is sent");
    let e = &l["endpoints"][0];
    assert_eq!(
        (e["url"].as_str(), e["state"].as_str()),
        (Some(rx.url.as_str()), Some("disabled"))
    );
    let dead = l["deadLetters"].as_array().unwrap();
    let run_id = dead[0]["runId"].as_str().unwrap().to_string();
    assert!(dead.iter().all(|d| d["runId"] == run_id.as_str()));
    let reasons: HashSet<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, HashSet::from(["disabled"]));
    let text = stdout(&run(&["webhooks", "list", "--coordinator", &c.url]));
    assert!(
        text.contains("disabled since") && text.contains("HTTP 410 Gone"),
        "{text}"
    );

    // A URL that is not the run's is refused; then enable, and replay from sequence 2.
    let o = run(&[
        "webhooks",
        "replay",
        &run_id,
        "--url",
        "http://elsewhere/",
        "--coordinator",
        &c.url,
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("not one of run"), "{}", stderr(&o));
    let o = run(&["webhooks", "enable", &rx.url, "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["webhooks", "enable", &rx.url, "--coordinator", &c.url]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "enabling twice says it is not disabled"
    );
    assert!(stderr(&o).contains("not disabled"), "{}", stderr(&o));
    ok.store(true, Ordering::SeqCst);
    let o = run(&[
        "webhooks",
        "replay",
        &run_id,
        "--from",
        "2",
        "--coordinator",
        &c.url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Replaying 7 event(s)"),
        "{}",
        stdout(&o)
    );
    assert!(eventually(Duration::from_secs(10), || rx.received().len() == 7));
    let got = rx.received();
    assert_eq!(sequences(&got), (2..9).collect::<Vec<u64>>(), "in order");
    let first_ids: BTreeMap<u64, String> = dead
        .iter()
        .map(|d| {
            (
                d["sequence"].as_u64().unwrap(),
                d["eventId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for r in &got {
        let seq: u64 = r.header("factotum-sequence").unwrap().parse().unwrap();
        assert_eq!(
            r.header("webhook-id"),
            Some(first_ids[&seq].as_str()),
            "original ids"
        );
    }
    assert_iglu_valid(&rx.payloads());
    assert!(eventually(Duration::from_secs(5), || listed()
        ["deadLettersTotal"]
        == 2));
}

#[test]
fn filters_and_per_endpoint_secrets_come_from_the_config_file() {
    let (terminal, jobs) = (Receiver::start(), Receiver::start());
    let d = Dir::new();
    let config = d.write(
        "coordinator.toml",
        &format!(
            "[[webhook]]\nurl = '{}'\nfilter = 'terminal'\nsecrets = ['{SECRET}']\n\n\
             [[webhook]]\nurl = '{}'\nfilter = 'job'\n",
            terminal.url, jobs.url
        ),
    );
    let c = Coordinator::start(&["--config", &config]);
    let _a = agent(&c.url, "a1", None, &[]);
    wait_for_agents(&c.url, 1);
    let o = run(&["submit", &echo(), "--coordinator", &c.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(10), || {
        transitions(&jobs.payloads())
            .iter()
            .any(|t| t.contains("SUCCEEDED"))
    }));
    let job_events = transitions(&jobs.payloads());
    assert_eq!(
        job_events,
        [
            "job null->WAITING",
            "job WAITING->RUNNING",
            "job RUNNING->SUCCEEDED"
        ],
        "job events only"
    );
    assert!(jobs
        .received()
        .iter()
        .all(|r| r.header("webhook-signature").is_none()));
    let ends = transitions(&terminal.payloads());
    assert!(ends.iter().all(|t| t.ends_with("SUCCEEDED")), "{ends:?}");
    assert!(
        ends.contains(&"job RUNNING->SUCCEEDED".to_string()),
        "{ends:?}"
    );
    verify_with_python(&terminal.received(), SECRET);
    let l = stdout(&run(&[
        "webhooks",
        "list",
        "--coordinator",
        &c.url,
        "-o",
        "json",
    ]));
    let l: Value = serde_json::from_str(&l).unwrap();
    let filters: BTreeMap<String, (String, bool)> = l["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().to_string(),
                (
                    e["filter"].as_str().unwrap().to_string(),
                    e["signed"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(filters[&terminal.url], ("terminal".to_string(), true));
    assert_eq!(filters[&jobs.url], ("job".to_string(), false));
}

#[test]
fn a_new_leader_delivers_the_backlog_with_the_same_ids() {
    let etcd = Etcd::start();
    // The receiver is down until the leader is killed; then it answers 200.
    let up = Arc::new(AtomicBool::new(false));
    let rx2 = {
        let up = Arc::clone(&up);
        Receiver::answering(Arc::new(move |_, _| {
            Answer::Status(if up.load(Ordering::SeqCst) { 200 } else { 503 }, vec![])
        }))
    };
    let args = [
        "--etcd",
        etcd.endpoint.as_str(),
        "--lease-ttl",
        "2",
        "--failover-grace",
        "5",
        "--webhook",
        rx2.url.as_str(),
    ];
    let mut leader = Coordinator::start(&args);
    assert!(eventually(Duration::from_secs(10), || leader.leads()));
    let standby = Coordinator::start(&args);
    let _a = agent(&format!("{},{}", leader.url, standby.url), "a1", None, &[]);
    wait_for_agents(&leader.url, 1);
    let o = run(&["submit", &echo(), "--coordinator", &leader.url, "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The first event has been tried (and refused) by the first leader.
    assert!(eventually(Duration::from_secs(10), || !rx2
        .requests()
        .is_empty()));
    let tried_id = rx2.requests()[0].header("webhook-id").unwrap().to_string();
    let _ = leader.proc.0.kill();
    let _ = leader.proc.0.wait();
    up.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(40), || deduplicated(&rx2.received())
            .len()
            == 9),
        "the successor delivered the backlog: {} events",
        deduplicated(&rx2.received()).len()
    );
    assert!(standby.leads());
    let got = deduplicated(&rx2.received());
    assert_eq!(sequences(&got), (0..9).collect::<Vec<u64>>());
    assert_eq!(
        got[0].header("webhook-id"),
        Some(tried_id.as_str()),
        "same id"
    );
    assert_iglu_valid(&rx2.payloads());
}
