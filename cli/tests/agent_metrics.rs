//! An agent's HTTP port (issue 13): `--http-listen` serves `/metrics` and `/healthz`; after a
//! task ran, the agent reports its session, its slots and the bytes its task wrote.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::fleet::{sibling, wait_for_agents, Coordinator, Proc};
use support::*;

/// A plain HTTP/1.1 GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

/// The value of the sample `name` in a Prometheus text body.
fn value(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

#[test]
fn an_agent_serves_its_metrics_and_health() {
    let c = Coordinator::start(&[]);
    let mut child = Command::new(sibling("factotum-agent"))
        .args([
            "--coordinator",
            &c.url,
            "--name",
            "measured",
            "--slots",
            "3",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--drain-grace", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _agent = Proc(child);
    let addr = line
        .trim()
        .strip_prefix("http listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    wait_for_agents(&c.url, 1);
    let d = Dir::new();
    let ff = d.write(
        "talk.factfile",
        &factfile(
            "talk",
            vec![task(
                "t",
                "head -c 5000 /dev/zero | tr '\\\\0' x; echo",
                &[],
                &[],
            )],
        ),
    );
    let o = run(&["submit", &ff, "--wait", "--coordinator", &c.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (code, health) = get(&addr, "/healthz");
    assert_eq!((code, health.as_str()), (200, "ok: connected\n"));
    let (code, body) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(value(&body, "factotum_agent_connected"), 1.0);
    assert_eq!(value(&body, "factotum_agent_sessions_total"), 1.0);
    assert_eq!(value(&body, "factotum_agent_slots"), 3.0);
    assert_eq!(value(&body, "factotum_agent_attempts_running"), 0.0);
    // 5,000 x and a newline.
    let out = value(
        &body,
        "factotum_agent_output_bytes_total{stream=\"stdout\"}",
    );
    assert!((5000.0..=5001.0).contains(&out), "{out}");
    assert_eq!(get(&addr, "/nope").0, 404);
}
