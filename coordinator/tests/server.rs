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
    // TLS is enough to listen on a public address (client calls then need credentials).
    let tls = Config::try_parse_from([
        "c",
        "--listen",
        "0.0.0.0:7400",
        "--tls-cert",
        "s.crt",
        "--tls-key",
        "s.key",
    ])
    .unwrap();
    assert!(tls.check().is_ok());
    assert!(
        Config::try_parse_from(["c", "--tls-cert", "s.crt"]).is_err(),
        "a cert needs its key"
    );
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

/// A coordinator on `etcd`, in this process.
async fn on_etcd(
    etcd: &support::Etcd,
    shutdown: &CancellationToken,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = config(&["--etcd", &etcd.endpoint, "--lease-ttl", "2s"]);
    (
        addr,
        tokio::spawn(server::run(cfg, listener, shutdown.clone())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_client_calls_to_the_leader_and_names_it() {
    use factotum_proto::jobs::{GetRunRequest, SubmitRunRequest, WatchRunRequest};
    let etcd = support::Etcd::start().await;
    let shutdown = CancellationToken::new();
    let (first, served_first) = on_etcd(&etcd, &shutdown).await;
    let mut led = false;
    for _ in 0..100 {
        if support::leads(first).await {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(led, "the first coordinator never led");
    let (follower, served_second) = on_etcd(&etcd, &shutdown).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!support::leads(follower).await);
    let mut jobs = client(follower).await;
    // No agent: the run waits, until it is cancelled through the follower too.
    let submit = jobs.submit_run(SubmitRunRequest {
        factfile: support::ONE_TASK.into(),
        ..Default::default()
    });
    let submitted = tokio::time::timeout(Duration::from_secs(10), submit)
        .await
        .expect("the forwarded submit hung")
        .expect("a submit to a follower is forwarded");
    let leader = submitted
        .metadata()
        .get(factotum_proto::LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(leader.as_deref(), Some(format!("http://{first}").as_str()));
    let run_id = submitted.into_inner().run_id;
    let mut events = jobs
        .watch_run(WatchRunRequest {
            run_id: run_id.clone(),
            resume: false,
        })
        .await
        .expect("a watch through a follower")
        .into_inner();
    let first_event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the forwarded watch sent nothing");
    assert!(matches!(first_event, Ok(Some(_))), "{first_event:?}");
    jobs.cancel_run(factotum_proto::jobs::CancelRunRequest {
        run_id: run_id.clone(),
        reason: "test over".into(),
    })
    .await
    .expect("a cancel through a follower");
    let mut ended = false;
    let until_end = async {
        while let Ok(Some(ev)) = events.message().await {
            if matches!(
                ev.event,
                Some(factotum_proto::jobs::run_event::Event::End(_))
            ) {
                ended = true;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), until_end)
        .await
        .expect("the forwarded watch never ended");
    assert!(ended, "the forwarded watch saw the run end");
    let run = jobs
        .get_run(GetRunRequest {
            run_id: run_id[..8].to_string(),
        })
        .await
        .expect("a status by id prefix through a follower")
        .into_inner();
    assert_eq!(run.run_id, run_id);
    assert_eq!(run.state, factotum_proto::jobs::RunState::Cancelled as i32);
    assert_eq!(run.cancel_reason, "job cancelled: test over");
    // A call already forwarded once is never forwarded again (no loops between coordinators
    // that disagree about who leads): the follower answers it itself, naming the leader.
    let mut again = tonic::Request::new(GetRunRequest { run_id });
    again.metadata_mut().insert(
        factotum_coordinator::api::forward::FORWARDED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let refused = jobs.get_run(again).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        factotum_proto::leader_hint(&refused),
        Some(Some(format!("http://{first}")))
    );
    shutdown.cancel();
    for served in [served_first, served_second] {
        let result = tokio::time::timeout(Duration::from_secs(15), served)
            .await
            .expect("run did not return after shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}
