#![cfg(feature = "etcd")]
//! etcd faults against coordinators in this process (`server::run` on port 0): a 3-member
//! cluster losing a member, a coordinator started with a dead endpoint in its list, and a
//! leader cut off from etcd through a proxy the test controls.

mod support;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use factotum_coordinator::server::{self, Config, ServeError};
use factotum_proto::agents_client::AgentsClient;
use factotum_proto::jobs::jobs_client::JobsClient;
use factotum_proto::{agent_message, AgentMessage, Hello};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The coordinators' logs on stderr when `RUST_LOG` is set (with `--nocapture`).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        factotum_service::logging::init(factotum_service::logging::LogFormat::Pretty);
    }
}

/// One member of a 3-member etcd cluster on loopback.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
}

/// A real 3-member etcd cluster: ephemeral client and peer ports, a temp data dir each.
struct Cluster {
    members: Vec<Member>,
    initial: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // Six distinct ports: every listener is held until all are chosen.
        let held: Vec<StdListener> = (0..6)
            .map(|_| StdListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members,
            initial,
            dir,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_ready(i).await;
        }
        c
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let c = m.endpoint();
        let p = format!("http://127.0.0.1:{}", m.peer);
        let data: &Path = self.dir.path();
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(data.join(&m.name))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "factotum-etcd-faults"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.join(format!("{}.log", m.name))).unwrap())
            .spawn()
            .expect("etcd must be installed (apt-get install etcd-server; `make test` does it)");
        self.members[i].child = Some(child);
    }

    async fn wait_ready(&mut self, i: usize) {
        let endpoint = self.members[i].endpoint();
        for _ in 0..400 {
            if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
                if c.get("health-probe", None).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "etcd member {endpoint} did not come up within 20 s; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Whether member `i` is etcd's (raft) leader now.
    async fn is_raft_leader(&self, i: usize) -> bool {
        let Ok(mut c) =
            etcd_client::Client::connect([self.members[i].endpoint().as_str()], None).await
        else {
            return false;
        };
        let Ok(s) = c.status().await else {
            return false;
        };
        s.header().is_some_and(|h| h.member_id() == s.leader())
    }

    /// Member `i`'s raft id, if it answers.
    async fn member_id(&self, i: usize) -> Option<u64> {
        let mut c = etcd_client::Client::connect([self.members[i].endpoint().as_str()], None)
            .await
            .ok()?;
        Some(c.status().await.ok()?.header()?.member_id())
    }

    /// From `since`, how long until a live member other than `dead` reports a leader that is
    /// not `dead_id`: etcd's own re-election after its leader died.
    async fn reelection(&self, dead: usize, dead_id: u64, since: Instant) -> Duration {
        while since.elapsed() < Duration::from_secs(30) {
            for i in (0..self.members.len()).filter(|&i| i != dead) {
                let ep = self.members[i].endpoint();
                let opts = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_millis(200))
                    .with_connect_timeout(Duration::from_millis(200));
                let Ok(mut c) = etcd_client::Client::connect([ep.as_str()], Some(opts)).await
                else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.leader() != 0 && s.leader() != dead_id {
                        return since.elapsed();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("etcd elected no new leader in 30 s");
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again on its ports and data (it rejoins the cluster).
    async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// An in-process coordinator.
struct Coordinator {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), ServeError>>,
}

impl Coordinator {
    async fn start(etcd: &[String], ttl: &str) -> Coordinator {
        logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoints = etcd.join(",");
        let cfg = Config::try_parse_from([
            "factotum-coordinator",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &endpoints,
            "--lease-ttl",
            ttl,
        ])
        .unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(server::run(cfg, listener, shutdown.clone()));
        Coordinator {
            addr,
            shutdown,
            served,
        }
    }

    /// Whether this replica leads now (its engine answers).
    /// Whether it leads: its health service `factotum.v1.Leader` is SERVING (a follower
    /// answers client calls too, by forwarding them).
    async fn leads(&self) -> bool {
        support::leads(self.addr).await
    }

    fn running(&self) -> bool {
        !self.served.is_finished()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.served)
            .await
            .expect("the coordinator did not return after shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A one-task factfile; each job name once (a job already running is not submitted twice).
fn factfile(job: &str) -> String {
    FACTFILE.replace("probe", job)
}

const FACTFILE: &str = r#"{"schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
  "data": {"name": "probe", "tasks": [{"name": "t", "executor": "shell", "command": "true",
  "arguments": [], "dependsOn": [], "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}}]}}"#;

/// From `since`, how long until a run submitted to whichever coordinator leads is recorded
/// (a durable write through the leader's store): the write stall after an etcd fault.
async fn write_stall(coordinators: &[&Coordinator], since: Instant, job: &str) -> Duration {
    let mut n = 0;
    while since.elapsed() < Duration::from_secs(30) {
        for c in coordinators {
            n += 1;
            let Ok(mut jobs) = JobsClient::connect(format!("http://{}", c.addr)).await else {
                continue;
            };
            let submit = jobs.submit_run(factotum_proto::jobs::SubmitRunRequest {
                // A new job name each try: an abandoned try may still be recorded.
                factfile: factfile(&format!("{job}-{n}")),
                factfile_name: "probe.factfile".into(),
                ..Default::default()
            });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), submit).await {
                return since.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no run could be submitted for 30 s");
}

/// Waits until one of `coordinators` leads; its index.
async fn leader_within(coordinators: &[&Coordinator], limit: Duration) -> Option<usize> {
    let start = Instant::now();
    while start.elapsed() < limit {
        for (i, c) in coordinators.iter().enumerate() {
            assert!(c.running(), "coordinator {i} exited: {:?}", c.addr);
            if c.leads().await {
                return Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_any_member_of_three_kills_no_coordinator_and_the_standby_still_campaigns() {
    let mut cluster = Cluster::start().await;
    let endpoints = cluster.endpoints();
    // The default lease TTL: etcd's own re-election (about a second) is well inside it.
    let a = Coordinator::start(&endpoints, "5s").await;
    let b = Coordinator::start(&endpoints, "5s").await;
    leader_within(&[&a, &b], Duration::from_secs(15))
        .await
        .expect("no coordinator led");
    // Each member in turn: whichever member a campaign or a keep-alive stream was on dies once.
    for i in 0..3 {
        let raft_leader = cluster.is_raft_leader(i).await;
        let id = cluster.member_id(i).await.expect("a live member has an id");
        cluster.kill(i);
        let killed = Instant::now();
        let (both, job) = ([&a, &b], format!("probe-{i}"));
        let (stall, elected) = tokio::join!(write_stall(&both, killed, &job), async {
            if raft_leader {
                Some(cluster.reelection(i, id, killed).await)
            } else {
                None
            }
        });
        eprintln!(
            "member {i} killed (etcd's leader: {raft_leader}): a run was recorded {stall:?} later; etcd re-elected after {elected:?}"
        );
        let led = leader_within(&[&a, &b], Duration::from_secs(15)).await;
        assert!(led.is_some(), "no coordinator led after member {i} died");
        // Long enough for a broken campaign to have ended its coordinator (it did at once).
        while killed.elapsed() < Duration::from_secs(3) {
            assert!(
                a.running() && b.running(),
                "a coordinator exited after member {i} died"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.restart(i).await;
        // A healthy cluster again before the next loss (a member that just rejoined is slow
        // to take part in an election).
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // The standby still campaigns: stopping the leader hands leadership over.
    let (leader, standby) = match leader_within(&[&a, &b], Duration::from_secs(15)).await {
        Some(0) => (a, b),
        Some(_) => (b, a),
        None => panic!("no coordinator led after the members came back"),
    };
    leader.stop().await;
    assert!(
        leader_within(&[&standby], Duration::from_secs(10))
            .await
            .is_some(),
        "the standby never took over: it stopped campaigning"
    );
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_starts_and_leads_with_one_endpoint_of_three_dead() {
    let mut cluster = Cluster::start().await;
    cluster.kill(0);
    // The dead endpoint first in the list, as an operator's list would have it.
    let endpoints = cluster.endpoints();
    for round in 0..4 {
        let a = Coordinator::start(&endpoints, "2s").await;
        let b = Coordinator::start(&endpoints, "2s").await;
        let led = leader_within(&[&a, &b], Duration::from_secs(15)).await;
        assert!(led.is_some(), "round {round}: no coordinator led");
        let killed_soon = Instant::now();
        while killed_soon.elapsed() < Duration::from_secs(1) {
            assert!(
                a.running() && b.running(),
                "round {round}: a coordinator exited"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.stop().await;
        b.stop().await;
    }
}

/// A TCP proxy whose traffic the test can black-hole: after `cut`, nothing passes in either
/// direction on old or new connections (they stay open, as in a network partition).
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut_rx = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, cut) = (upstream.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let mut held = vec![];
                    if !*cut.borrow() {
                        if let Ok(up) = TcpStream::connect(&upstream).await {
                            let (dr, dw) = down.into_split();
                            let (ur, uw) = up.into_split();
                            tokio::spawn(pump(dr, uw, cut.clone()));
                            tokio::spawn(pump(ur, dw, cut.clone()));
                            return;
                        }
                    }
                    // Accepted but never answered.
                    held.push(down);
                    std::future::pending::<()>().await;
                });
            }
        });
        Proxy { port, cut }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *cut.borrow() {
            // Black hole: hold both halves, pass nothing.
            std::future::pending::<()>().await;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.changed() => continue,
        };
        if *cut.borrow() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_from_etcd_steps_down_before_its_lease_expires_and_lets_its_agents_go() {
    let etcd = support::Etcd::start().await;
    let proxy = Proxy::start(etcd.endpoint.trim_start_matches("http://").to_string()).await;
    let ttl = Duration::from_secs(3);
    let old = Coordinator::start(&[proxy.url()], "3s").await;
    assert_eq!(
        leader_within(&[&old], Duration::from_secs(15)).await,
        Some(0),
        "the first coordinator never led"
    );
    let standby = Coordinator::start(std::slice::from_ref(&etcd.endpoint), "3s").await;
    // An agent session on the old leader.
    let (agent_tx, agent_rx) = tokio::sync::mpsc::channel(16);
    agent_tx
        .send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_id: "cut-agent".into(),
                hostname: "cut-host".into(),
                slots: 1,
                instance_id: "i-1".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut agents = AgentsClient::connect(format!("http://{}", old.addr))
        .await
        .unwrap();
    let mut session = agents
        .agent_session(tokio_stream::wrappers::ReceiverStream::new(agent_rx))
        .await
        .expect("the leader refused the session")
        .into_inner();
    let welcome = tokio::time::timeout(Duration::from_secs(5), session.message())
        .await
        .expect("no welcome")
        .expect("the session failed");
    assert!(welcome.is_some(), "the session ended before a welcome");
    // The standby cannot lead while the old leader holds the lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!standby.leads().await, "two leaders before the cut");

    proxy.cut();
    let cut = Instant::now();
    // The old leader's agent session ends before the lease TTL has passed since the cut.
    let ended = tokio::time::timeout(ttl, async {
        loop {
            match session.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the old leader still held its agent session {:?} after the cut (lease TTL {ttl:?})",
        cut.elapsed()
    );
    let let_go = cut.elapsed();
    assert!(
        !old.leads().await,
        "the old leader still answers as a leader {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        let_go < ttl,
        "stepped down after {let_go:?}, not before the lease TTL {ttl:?}"
    );
    // The standby takes over once etcd lets the old lease go, and the agent gets in there.
    let took_over = leader_within(&[&standby], Duration::from_secs(10)).await;
    assert!(took_over.is_some(), "the standby never took over");
    let new_leader_at = cut.elapsed();
    let (tx2, rx2) = tokio::sync::mpsc::channel(16);
    tx2.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "cut-agent".into(),
            hostname: "cut-host".into(),
            slots: 1,
            instance_id: "i-1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut agents2 = AgentsClient::connect(format!("http://{}", standby.addr))
        .await
        .unwrap();
    let mut session2 = agents2
        .agent_session(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .expect("the new leader refused the agent")
        .into_inner();
    let welcome2 = tokio::time::timeout(Duration::from_secs(5), session2.message())
        .await
        .expect("no welcome from the new leader")
        .expect("the new leader's session failed");
    assert!(welcome2.is_some());
    eprintln!(
        "partition: old leader let go of its agents {let_go:?} after the cut; new leader at {new_leader_at:?}"
    );
    assert!(old.running(), "the cut-off coordinator exited");
    standby.stop().await;
    old.shutdown.cancel();
    drop(agent_tx);
    drop(tx2);
}
