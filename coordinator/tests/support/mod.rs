//! A real etcd for the tests: its own process, ephemeral client and peer ports, a temp data dir.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    child: Child,
    pub endpoint: String,
    peer: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers. Fails loudly when etcd is not installed.
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let mut e = Etcd {
            child: spawn(dir.path(), client, peer),
            endpoint: format!("http://127.0.0.1:{client}"),
            peer: format!("http://127.0.0.1:{peer}"),
            dir,
        };
        e.wait_ready().await;
        e
    }

    async fn wait_ready(&mut self) {
        for _ in 0..400 {
            if let Ok(mut c) = etcd_client::Client::connect([self.endpoint.as_str()], None).await {
                if c.get("health-probe", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "etcd exited at start-up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd at {} did not come up within 20 s", self.endpoint);
    }

    /// Stops etcd (SIGKILL) and starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        self.child = spawn(self.dir.path(), port(&self.endpoint), port(&self.peer));
        self.wait_ready().await;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, client: u16, peer: u16) -> Child {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    Command::new("etcd")
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("test={p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd must be installed (apt-get install etcd-server; `make test` does it)")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the coordinator at `addr` leads: its health service `factotum.v1.Leader` is
/// SERVING (a follower answers client calls too, by forwarding them to the leader).
#[allow(dead_code)]
pub async fn leads(addr: std::net::SocketAddr) -> bool {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut health = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: factotum_coordinator::api::LEADER_HEALTH.into(),
        };
        let status = health.check(request).await.ok()?.into_inner().status;
        Some(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A factfile of one task that exits 0.
#[allow(dead_code)]
pub const ONE_TASK: &str = r#"{"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
  "data": {"name": "one", "tasks": [{"name": "t", "executor": "shell", "command": "true",
  "arguments": [], "dependsOn": [], "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}}]}}"#;
