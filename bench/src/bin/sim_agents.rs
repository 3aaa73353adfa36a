//! Simulated agents for the scale benchmark: N sessions against one coordinator, each saying
//! Hello, heartbeating at the interval the coordinator asks for, and answering every lease at once
//! with exit code 0 (nothing is run). Sessions share a few HTTP/2 connections.
//!
//! `sim-agents --coordinator http://127.0.0.1:7400 --agents 5000 --seconds 30`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use factotum_proto::agents_client::AgentsClient;
use factotum_proto::{
    agent_message, attempt_result, coordinator_message, AgentMessage, AttemptResult, Heartbeat,
    Hello,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    coordinator: String,
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Sessions per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// How long to hold the sessions once all are up.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut channel = None;
    for i in 0..args.agents {
        if i % args.per_connection.max(1) == 0 {
            channel = Some(
                tonic::transport::Endpoint::from_shared(args.coordinator.clone())?
                    .connect()
                    .await?,
            );
        }
        let Some(ch) = channel.clone() else { continue };
        let connected = connected.clone();
        tokio::spawn(async move {
            if let Err(e) = session(ch, i, connected).await {
                eprintln!("agent sim-{i}: {e}");
            }
        });
    }
    let start = std::time::Instant::now();
    while connected.load(Ordering::Relaxed) < args.agents {
        if start.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "only {} of {} agents connected",
                connected.load(Ordering::Relaxed),
                args.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "connected {} agents in {:.1}s",
        args.agents,
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    println!("done");
    Ok(())
}

async fn session(
    channel: tonic::transport::Channel,
    i: usize,
    connected: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut client = AgentsClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        agent_id: format!("sim-{i}"),
        hostname: format!("sim-{i}"),
        slots: 1,
        version: "sim".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = client
        .agent_session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut beat = tokio::time::interval(Duration::from_secs(2));
    let mut counted = false;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg?.and_then(|m| m.msg) {
                Some(coordinator_message::Msg::Welcome(w)) => {
                    if !counted {
                        counted = true;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    if w.heartbeat_ms > 0 {
                        beat = tokio::time::interval(Duration::from_millis(u64::from(w.heartbeat_ms)));
                    }
                }
                Some(coordinator_message::Msg::Lease(l)) => {
                    let done = AttemptResult { lease: l.lease, outcome: Some(attempt_result::Outcome::ExitCode(0)), ..Default::default() };
                    tx.send(AgentMessage { msg: Some(agent_message::Msg::AttemptResult(done)) }).await?;
                }
                Some(_) => {}
                None => anyhow::bail!("the coordinator closed the session"),
            },
            _ = beat.tick() => {
                tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat { draining: false })) }).await?;
            }
        }
    }
}
