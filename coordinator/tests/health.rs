#![cfg(feature = "etcd")]
//! gRPC health on replicas: the overall service is SERVING on each, `factotum.v1.Leader` only on
//! the leader — what a VIP or a Kubernetes Service routes by.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Coordinator(Child, String);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coordinator(etcd: &str) -> Coordinator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_factotum-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--etcd",
            etcd,
            "--lease-ttl",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Coordinator(child, format!("http://{addr}"))
}

async fn status(url: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(resp.into_inner().status).ok()
}

#[tokio::test]
async fn only_the_leader_serves_the_leader_health_service() {
    let etcd = support::Etcd::start().await;
    let replicas = [coordinator(&etcd.endpoint), coordinator(&etcd.endpoint)];
    for _ in 0..150 {
        let mut leaders = 0;
        for r in &replicas {
            assert_eq!(
                status(&r.1, "").await,
                Some(ServingStatus::Serving),
                "every replica serves"
            );
            if status(&r.1, "factotum.v1.Leader").await == Some(ServingStatus::Serving) {
                leaders += 1;
            }
        }
        assert!(leaders <= 1, "two replicas claim to lead");
        if leaders == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no replica became the leader within 15 s");
}
