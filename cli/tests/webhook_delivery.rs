//! Webhook delivery a Snowplow pipeline can trust (issue 14): stable event ids, `eid`/`ttm` for
//! the Iglu adapter, Standard Webhooks signatures checked by an independent implementation,
//! outages that lose and slow nothing, endpoints that hang or are gone, dead letters and
//! replay, filters, size, and a new leader delivering the backlog with the same ids.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fleet::{agent, wait_for_agents, Coordinator, Etcd};
use support::policies::assert_iglu_valid;
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn echo() -> String {
    repo()
        .join("samples/echo.factfile")
        .to_string_lossy()
        .into_owned()
}

/// Events after dropping repeats of a `webhook-id`, in arrival order.
fn deduplicated(rs: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    (rs.iter())
        .filter(|r| seen.insert(r.header("webhook-id").unwrap().to_string()))
        .cloned()
        .collect()
}

fn sequences(rs: &[Received]) -> Vec<u64> {
    (rs.iter())
        .map(|r| r.header("factotum-sequence").unwrap().parse().unwrap())
        .collect()
}

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
    // The run's hops did not wait for the webhooks.
    let (calm, stormy) = (
        median(hops_ms(baseline.last().unwrap())),
        median(hops_ms(payloads.last().unwrap())),
    );
    assert!(
        stormy <= calm * 3 + 10,
        "hop p50 {stormy} ms during the outage against {calm} ms without"
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

/// Checks every request's signature with Python's `hmac` (not our code).
fn verify_with_python(requests: &[Received], secret: &str) {
    let items: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "id": r.header("webhook-id"),
                "ts": r.header("webhook-timestamp"),
                "sig": r.header("webhook-signature"),
                "body": r.body,
            })
        })
        .collect();
    let d = Dir::new();
    let file = d.write("signed.json", &Value::Array(items).to_string());
    let script = r#"
import base64, hashlib, hmac, json, sys, time
key = base64.b64decode(sys.argv[2].removeprefix("whsec_"))
for m in json.load(open(sys.argv[1])):
    signed = f"{m['id']}.{m['ts']}.{m['body']}".encode()
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert want in m["sig"].split(" "), (want, m["sig"])
    assert abs(time.time() - int(m["ts"])) < 300
print("ok", end="")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &file, secret])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
