#![cfg(feature = "etcd")]
//! The HTTP port (issue 13), real processes: `/healthz`, `/readyz` and `/leader` on a leader
//! and a follower, `/metrics` in Prometheus' text format, needing a `read` token once
//! `--tokens` is set, and the same port over TLS without a client certificate.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Coordinator {
    child: Child,
    /// `http://ADDR` (or https) of the HTTP port.
    http: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `--http-listen 127.0.0.1:0` and reads both `listening on` lines.
fn coordinator(args: &[&str], scheme: &str) -> Coordinator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut grpc, mut http) = (String::new(), String::new());
    out.read_line(&mut grpc).unwrap();
    out.read_line(&mut http).unwrap();
    assert!(grpc.starts_with("listening on "), "{grpc:?}");
    let addr = http
        .trim()
        .strip_prefix("http listening on ")
        .unwrap_or_else(|| panic!("unexpected second line {http:?}"));
    Coordinator {
        http: format!("{scheme}://{addr}"),
        child,
    }
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_leader_and_a_follower_answer_probes_and_export_metrics() {
    let etcd = support::Etcd::start().await;
    let args = ["--etcd", etcd.endpoint.as_str(), "--lease-ttl", "2"];
    let first = coordinator(&args, "http");
    let client = reqwest::Client::new();
    let mut led = false;
    for _ in 0..100 {
        if get(&client, &format!("{}/leader", first.http), None)
            .await
            .0
            == 200
        {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(led, "the first coordinator never said it leads on /leader");
    let second = coordinator(&args, "http");
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = get(&client, &format!("{}/readyz", second.http), None).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(
        ready.1.starts_with("ready: following http://"),
        "{}",
        ready.1
    );
    let (code, body) = get(&client, &format!("{}/leader", second.http), None).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("follower: the leader is http://"),
        "{body}"
    );
    for c in [&first, &second] {
        assert_eq!(
            get(&client, &format!("{}/healthz", c.http), None).await.0,
            200
        );
    }
    assert_eq!(
        get(&client, &format!("{}/readyz", first.http), None).await,
        (200, "ready: leading\n".to_string())
    );
    // The engine's gauges are sampled every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, leader_metrics) = get(&client, &format!("{}/metrics", first.http), None).await;
    assert_eq!(code, 200);
    assert!(
        leader_metrics.contains("\nfactotum_leader 1\n"),
        "{leader_metrics}"
    );
    assert!(leader_metrics.contains("# TYPE factotum_task_start_latency_seconds histogram"));
    assert!(leader_metrics.ends_with("# EOF\n"));
    let (_, follower_metrics) = get(&client, &format!("{}/metrics", second.http), None).await;
    assert!(
        follower_metrics.contains("\nfactotum_leader 0\n"),
        "{follower_metrics}"
    );
}

#[tokio::test]
async fn metrics_need_a_read_token_and_the_port_speaks_tls_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let made = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
        .args([
            "certs",
            "--out",
            pki.to_str().unwrap(),
            "--host",
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let tokens = dir.path().join("tokens");
    let token = |name: &str, scope: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
            .args(["tokens", "add", "--file", tokens.to_str().unwrap()])
            .args(["--name", name, "--scope", scope])
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let (reader, canceller) = (token("prometheus", "read"), token("ops", "cancel"));
    let path = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
    let c = coordinator(
        &[
            "--tls-cert",
            &path("server/tls.crt"),
            "--tls-key",
            &path("server/tls.key"),
            "--tls-client-ca",
            &path("ca.crt"),
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        "https",
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", c.http);
    // Probes need no credential (and have no client certificate).
    assert_eq!(
        get(&client, &url("/healthz"), None).await,
        (200, "ok\n".into())
    );
    assert_eq!(get(&client, &url("/leader"), None).await.0, 200);
    let (code, body) = get(&client, &url("/metrics"), None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("a token is needed"), "{body}");
    assert_eq!(get(&client, &url("/metrics"), Some("nope")).await.0, 401);
    let (code, body) = get(&client, &url("/metrics"), Some(&canceller)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("needs the 'read' scope"), "{body}");
    let (code, body) = get(&client, &url("/metrics"), Some(&reader)).await;
    assert_eq!(code, 200);
    assert!(body.contains("factotum_leader"), "{body}");
    // Plain HTTP on the TLS port is not served.
    let plain = format!("http://{}/healthz", c.http.trim_start_matches("https://"));
    assert!(reqwest::Client::new().get(&plain).send().await.is_err());
}
