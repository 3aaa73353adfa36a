#![cfg(feature = "etcd")]
//! The coordinator as a library, mini-redis style: `server::run` on a listener bound to port 0,
//! in this process, and the same `run` following and leading through a real etcd.

mod support;

use std::time::Duration;

use clap::Parser;
use factotum_coordinator::server::{self, Config, ServeError};
use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::jobs::ListAgentsRequest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn config(extra: &[&str]) -> Config {
    let mut args = vec!["factotum-coordinator", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

async fn client(addr: std::net::SocketAddr) -> JobsClient<tonic::transport::Channel> {
    JobsClient::connect(format!("http://{addr}")).await.unwrap()
}

#[tokio::test]
async fn run_serves_until_shutdown_then_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(server::run(config(&[]), listener, shutdown.clone()));
    let agents = client(addr)
        .await
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap();
    assert!(agents.into_inner().agents.is_empty());
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("run did not return after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn run_leads_through_etcd_and_resigns_on_shutdown() {
    let etcd = support::Etcd::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let cfg = config(&["--etcd", &etcd.endpoint, "--lease-ttl", "2s"]);
    let served = tokio::spawn(server::run(cfg, listener, shutdown.clone()));
    // Until it is elected it answers as a follower; then the engine answers.
    let mut jobs = client(addr).await;
    let mut led = false;
    for _ in 0..100 {
        if jobs.list_agents(ListAgentsRequest {}).await.is_ok() {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(led, "the only coordinator never led");
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("run did not return after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    // It resigned: the election holds no leader.
    let client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let leader = factotum_coordinator::leader::current(&client, "/factotum/leader").await;
    assert_eq!(leader, None);
}

#[test]
fn flags_are_checked_before_anything_starts() {
    let public = Config::try_parse_from(["c", "--listen", "0.0.0.0:7400"]).unwrap();
    assert!(matches!(public.check(), Err(ServeError::Insecure(_))));
    let trusted = Config::try_parse_from(["c", "--listen", "0.0.0.0:7400", "--insecure"]).unwrap();
    assert!(trusted.check().is_ok());
    let bad = Config::try_parse_from(["c", "--webhook", "ftp://x"]).unwrap();
    assert!(matches!(bad.check(), Err(ServeError::BadWebhook(_))));
    // Durations take units; a bare number is seconds.
    let units = Config::try_parse_from(["c", "--lost-after", "1m30s", "--lease-ttl", "2"]).unwrap();
    assert_eq!(units.lost_after, Duration::from_secs(90));
    assert_eq!(units.lease_ttl, Duration::from_secs(2));
    let e = Config::try_parse_from(["c", "--lease-ttl", "500ms"]).unwrap_err();
    assert!(e.to_string().contains("from 1s up"), "{e}");
    let e = Config::try_parse_from(["c", "--lost-after", "5x"]).unwrap_err();
    assert!(e.to_string().contains("'5x' is not a duration"), "{e}");
}

#[tokio::test]
async fn submissions_past_max_tasks_or_max_factfile_size_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let cfg = config(&["--max-tasks", "1", "--max-factfile-size", "2KiB"]);
    let served = tokio::spawn(server::run(cfg, listener, shutdown.clone()));
    let task = |n: &str| {
        serde_json::json!({"name": n, "executor": "shell", "command": "true", "arguments": [],
            "dependsOn": [], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}})
    };
    let ff = |tasks: Vec<serde_json::Value>| {
        serde_json::json!({"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
            "data": {"name": "limits", "tasks": tasks}})
        .to_string()
    };
    let mut jobs = client(addr).await;
    let submit = |factfile: String| factotum_proto::jobs::SubmitRunRequest {
        factfile,
        factfile_name: "f".into(),
        ..Default::default()
    };
    let two = jobs
        .submit_run(submit(ff(vec![task("a"), task("b")])))
        .await
        .unwrap_err();
    assert_eq!(two.code(), tonic::Code::InvalidArgument);
    assert!(two.message().contains("--max-tasks"), "{}", two.message());
    let big = jobs
        .submit_run(submit(ff(vec![task(&"x".repeat(3000))])))
        .await
        .unwrap_err();
    assert_eq!(big.code(), tonic::Code::InvalidArgument);
    assert!(
        big.message().contains("--max-factfile-size"),
        "{}",
        big.message()
    );
    jobs.submit_run(submit(ff(vec![task("a")]))).await.unwrap();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), served).await;
}
