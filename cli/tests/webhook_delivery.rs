//! Webhook delivery a Snowplow pipeline can trust (issue 14), on `factotum run`: stable event
//! ids, `eid`/`ttm` for the Iglu adapter, Standard Webhooks signatures checked by an independent
//! implementation, outages that lose nothing and block nothing, endpoints that hang or refuse,
//! `Retry-After`, size. Through coordinators (dead letters, replay, filters, failover):
//! `webhook_dead_letters.rs`.

#[path = "support/hooks.rs"]
mod hooks;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hooks::*;
use serde_json::Value;
use support::policies::assert_iglu_valid;
use support::*;

/// A chain of `n` tasks, each `true`.
fn chain(n: usize) -> String {
    let tasks = (0..n)
        .map(|i| {
            let deps: Vec<String> = (i > 0).then(|| format!("t{}", i - 1)).into_iter().collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            task(&format!("t{i}"), "true", &[], &deps)
        })
        .collect();
    factfile("chain", tasks)
}

/// The gaps between one task's end and the next one's start, from the last payload.
fn hops_ms(last: &Value) -> Vec<i64> {
    let ms = |t: &Value| {
        chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let dur_ms = |d: &Value| {
        let s = d.as_str().unwrap();
        let secs: f64 = s
            .trim_start_matches("PT")
            .trim_end_matches('S')
            .parse()
            .unwrap();
        (secs * 1000.0).round() as i64
    };
    let tasks = last["data"]["taskStates"].as_array().unwrap();
    tasks
        .windows(2)
        .map(|w| ms(&w[1]["started"]) - (ms(&w[0]["started"]) + dur_ms(&w[0]["duration"])))
        .collect()
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn an_outage_loses_nothing_repeats_nothing_after_dedup_and_does_not_slow_the_run() {
    let d = Dir::new();
    let file = d.write("chain.factfile", &chain(20));
    // Baseline: a receiver that answers at once.
    let fine = Receiver::start();
    let o = run(&["run", &file, "--webhook", &fine.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let baseline = fine.payloads();
    // A receiver that answers 500 for 20 s from the first request, then 200.
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let down = Receiver::answering(Arc::new(move |_, _| {
        let at = *first.lock().unwrap().get_or_insert_with(Instant::now);
        Answer::Status(
            if at.elapsed() < Duration::from_secs(20) {
                500
            } else {
                200
            },
            vec![],
        )
    }));
    let began = Instant::now();
    let o = run(&[
        "run",
        &file,
        "--webhook",
        &down.url,
        "--webhook-timeout",
        "90",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        began.elapsed() >= Duration::from_secs(20),
        "it waited for delivery"
    );
    let got = deduplicated(&down.received());
    assert_eq!(got.len(), baseline.len(), "every event once after dedup");
    assert_eq!(down.received().len(), got.len(), "nothing delivered twice");
    assert_eq!(sequences(&got), (0..got.len() as u64).collect::<Vec<_>>());
    let payloads: Vec<Value> = got.iter().map(Received::json).collect();
    assert_iglu_valid(&payloads);
    assert!(
        down.requests().len() > got.len(),
        "the outage was real: {} requests",
        down.requests().len()
    );
    // The run's hops did not wait for the webhooks: a retry waits at least 100 ms (the first
    // backoff's floor), so scheduling that waited on delivery would show hops that long. Not a
    // speed figure (those are in docs/BENCHMARKS.md): a check that nothing is blocked.
    let (calm, stormy) = (
        median(hops_ms(baseline.last().unwrap())),
        median(hops_ms(payloads.last().unwrap())),
    );
    assert!(
        stormy < 100,
        "hop p50 {stormy} ms during the outage (without one: {calm} ms): scheduling waited on delivery"
    );
}

#[test]
fn iglu_urls_carry_eid_ttm_and_p_and_retries_repeat_them() {
    let rx = Receiver::at_path(
        "/com.snowplowanalytics.iglu/v1",
        Arc::new(|n, _| Answer::Status(if n <= 2 { 503 } else { 200 }, vec![])),
    );
    let url = format!("{}?aid=nightly", rx.url);
    let o = run(&["run", &echo(), "--webhook", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all = rx.requests();
    for r in &all {
        assert_eq!(
            r.query("eid").as_deref(),
            r.header("webhook-id"),
            "{}",
            r.target
        );
        assert_eq!(r.query("p").as_deref(), Some("srv"));
        assert_eq!(r.query("aid").as_deref(), Some("nightly"));
        assert!(r.target.starts_with("/com.snowplowanalytics.iglu/v1?"));
    }
    // The two failures and the success of the first event carry the same eid and ttm.
    let first: Vec<(Option<String>, Option<String>)> = all[..3]
        .iter()
        .map(|r| (r.query("eid"), r.query("ttm")))
        .collect();
    assert!(first.iter().all(|x| *x == first[0]), "{first:?}");
    let got = rx.received();
    let ttms: Vec<i64> = got
        .iter()
        .map(|r| r.query("ttm").unwrap().parse().unwrap())
        .collect();
    assert!(
        ttms.windows(2).all(|w| w[0] < w[1]),
        "ttm strictly increases: {ttms:?}"
    );
    let now = chrono::Utc::now().timestamp_millis();
    assert!(ttms.iter().all(|t| (now - t).abs() < 60_000), "{ttms:?}");
    // A plain URL gets no extra parameters.
    let plain = Receiver::start();
    let o = run(&["run", &echo(), "--webhook", &plain.url]);
    assert_eq!(o.status.code(), Some(0));
    assert!(plain.received().iter().all(|r| r.target == "/hook"));
    assert_iglu_valid(&rx.payloads());
}

#[test]
fn signatures_verify_with_an_independent_implementation_for_each_secret() {
    let rx = Receiver::start();
    let second = "whsec_c2Vjb25kIHNlY3JldCBmb3Igcm90YXRpb24h";
    let o = run(&[
        "run",
        &echo(),
        "--webhook",
        &rx.url,
        "--webhook-secret",
        SECRET,
        "--webhook-secret",
        second,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = rx.received();
    assert_eq!(got.len(), 9);
    assert!(got
        .iter()
        .all(|r| r.header("webhook-signature").unwrap().split(' ').count() == 2));
    verify_with_python(&got, SECRET);
    verify_with_python(&got, second);
    // A bad secret is refused before anything runs.
    let o = run(&["run", &echo(), "--webhook-secret", "hunter2"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("whsec_"), "{}", stderr(&o));
}

#[test]
fn a_hanging_endpoint_does_not_hold_up_another() {
    let hang = Receiver::answering(Arc::new(|_, _| Answer::Hang));
    let fine = Receiver::start();
    let began = Instant::now();
    let o = run(&[
        "run",
        &echo(),
        "--webhook",
        &hang.url,
        "--webhook",
        &fine.url,
        "--webhook-timeout",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        began.elapsed() < Duration::from_secs(9),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        fine.received().len(),
        9,
        "the other endpoint got everything"
    );
    assert_eq!(
        hang.requests().len(),
        1,
        "one request at a time per run and URL"
    );
    let err = stderr(&o);
    assert!(
        err.contains("9 webhook payload(s)") && err.contains(&hang.url),
        "{err}"
    );
}

#[test]
fn a_refusal_is_not_retried_and_the_run_says_what_was_refused() {
    let rx = Receiver::answering(Arc::new(|_, _| Answer::Status(400, vec![])));
    let o = run(&["run", &echo(), "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(rx.requests().len(), 9, "each event tried once");
    let err = stderr(&o);
    assert!(
        err.contains("9 webhook payload(s) for run ")
            && err.contains(&format!("were given up on for {}", rx.url))
            && err.contains("HTTP 400 Bad Request"),
        "{err}"
    );
}

#[test]
fn retry_after_is_honoured() {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&arrivals);
    let rx = Receiver::answering(Arc::new(move |n, _| {
        seen.lock().unwrap().push(Instant::now());
        match n {
            1 => Answer::Status(429, vec![("Retry-After".into(), "2".into())]),
            _ => Answer::Status(200, vec![]),
        }
    }));
    let o = run(&["run", &echo(), "--webhook", &rx.url]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(rx.received().len(), 9);
    let at = arrivals.lock().unwrap().clone();
    let gap = at[1] - at[0];
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
}

#[test]
fn large_output_is_shortened_so_no_request_passes_a_mebibyte() {
    // Two tasks each print 600 KB to stdout and to stderr: the last events would carry 2 MiB
    // of tails (512 KiB each once kept).
    let big = r"head -c 600000 /dev/zero | tr '\0' x; head -c 600000 /dev/zero | tr '\0' y >&2";
    let tasks = (0..2)
        .map(|i| task(&format!("big{i}"), "sh", &["-c", big], &[]))
        .collect();
    let d = Dir::new();
    let file = d.write("big.factfile", &factfile("big", tasks));
    let rx = Receiver::start();
    let o = run(&[
        "run",
        &file,
        "--webhook",
        &rx.url,
        "--max-stdouterr-size",
        "524288",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = rx.received();
    assert!(got.iter().all(|r| r.body.len() <= 1 << 20));
    // A task's end carries its tails, and later events every ended task's: cut to fit, not
    // dropped, each keeping its end. The longest each
    // task's stdout had in any payload:
    let mut tails: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for p in got.iter().map(Received::json) {
        for t in p["data"]["taskStates"].as_array().unwrap() {
            let Some(out) = t["stdout"].as_str() else {
                continue;
            };
            let e = tails
                .entry(t["taskName"].as_str().unwrap().to_string())
                .or_default();
            if out.len() > e.0 {
                *e = (out.len(), out.ends_with('x'));
            }
        }
    }
    assert_eq!(tails.len(), 2, "each task's tail is sent: {tails:?}");
    assert!(
        tails.values().all(|(n, end)| *n > 100_000 && *end),
        "{tails:?}"
    );
    assert!(
        got.iter().any(|r| r.body.len() > 700_000),
        "cut to fit, not emptied"
    );
    assert_iglu_valid(&rx.payloads());
}

#[test]
fn a_factfile_too_large_for_the_webhook_schema_is_refused_when_webhooks_are_set() {
    // ~880 KB of arguments: over 1,000,000 characters once base64-encoded.
    let chunk = "x".repeat(110_000);
    let args: Vec<&str> = (0..8).map(|_| chunk.as_str()).collect();
    let d = Dir::new();
    let file = d.write(
        "huge.factfile",
        &factfile("huge", vec![task("t", "echo", &args, &[])]),
    );
    let rx = Receiver::start();
    let o = run(&["run", &file, "--webhook", &rx.url]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("over the 1000000 the webhook schemas allow"),
        "{err}"
    );
    assert!(rx.requests().is_empty());
}
