#![cfg(feature = "etcd")]
//! Limits on what clients can make one coordinator hold, through `server::run` in-process:
//! `--max-pending-submits` and `--idle-timeout`.

use std::time::{Duration, Instant};

use clap::Parser;
use factotum_coordinator::server::{self, Config};
use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::jobs::{ListAgentsRequest, SubmitRunRequest};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Coordinator {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl Coordinator {
    async fn start(extra: &[&str]) -> Coordinator {
        let mut args = vec!["factotum-coordinator", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(server::run(config, listener, shutdown.clone()));
        Coordinator {
            addr,
            shutdown,
            served,
        }
    }

    async fn client(&self) -> JobsClient<tonic::transport::Channel> {
        JobsClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.served)
            .await
            .expect("run did not return after shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A factfile of `tasks` chained tasks: slow enough to prepare that concurrent submissions overlap.
fn factfile(tasks: usize) -> String {
    let tasks: Vec<_> = (0..tasks)
        .map(|i| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![format!("task {}", i - 1)]
            };
            serde_json::json!({
                "name": format!("task {i}"),
                "executor": "shell",
                "command": "echo",
                "arguments": [format!("{{{{ $.config.word }}}} {i}")],
                "dependsOn": deps,
                "onResult": { "terminateJobWithSuccess": [3], "continueJob": [0] }
            })
        })
        .collect();
    serde_json::json!({
        "schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
        "data": { "name": "big", "tasks": tasks }
    })
    .to_string()
}

fn submit(factfile: &str) -> SubmitRunRequest {
    SubmitRunRequest {
        factfile: factfile.to_string(),
        env_json: r#"{"word": "hello"}"#.into(),
        allow_concurrent: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_over_max_pending_submits_are_refused_at_once() {
    let coordinator = Coordinator::start(&["--max-pending-submits", "1"]).await;
    let big = factfile(3000);
    // Bursts of concurrent submissions of a slow-to-prepare factfile: with one permit, some
    // overlap and are refused by name; every other one succeeds; nothing else happens.
    let mut refused = 0;
    let mut accepted = 0;
    for _ in 0..5 {
        let mut calls = Vec::new();
        for _ in 0..16 {
            let (mut client, request) = (coordinator.client().await, submit(&big));
            calls.push(tokio::spawn(
                async move { client.submit_run(request).await },
            ));
        }
        for call in calls {
            match call.await.unwrap() {
                Ok(r) => {
                    assert!(!r.into_inner().run_id.is_empty());
                    accepted += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert_eq!(
                        status.message(),
                        "too many submissions in progress (--max-pending-submits 1); retry shortly"
                    );
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "no submission was ever refused ({accepted} accepted)"
    );
    assert!(accepted > 0, "every submission was refused");
    // Once the burst is over the permit is free again.
    let small = factfile(1);
    let mut client = coordinator.client().await;
    client.submit_run(submit(&small)).await.unwrap();
    coordinator.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_idle_timeout() {
    let coordinator = Coordinator::start(&["--idle-timeout", "1s"]).await;
    let mut silent = TcpStream::connect(coordinator.addr).await.unwrap();
    let opened = Instant::now();
    let mut buf = vec![0u8; 1024];
    // The server may send its HTTP/2 preface first; it then closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent connection was still open after 10 s"
    );
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed too early: {after:?}"
    );
    // A live HTTP/2 client answers the keepalive pings and is not closed while idle.
    let mut client = coordinator.client().await;
    client.list_agents(ListAgentsRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.list_agents(ListAgentsRequest {}).await.unwrap();
    coordinator.stop().await;
}
