//! `factotum-coordinator`: owns runs, leases their tasks to agents, sends webhooks.
//! Thin: flags, logging and signals here; everything else in the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use factotum_coordinator::{api, Engine, EngineConfig, MemoryStore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// The Factotum coordinator: accepts runs over gRPC and leases their tasks to agents.
///
/// It listens on loopback by default. There is no authentication yet, so it refuses any other
/// address unless `--insecure` is given: anyone who can reach the port can run shell commands on
/// every agent. State is kept in memory (a single node): runs do not survive a restart.
#[derive(Debug, Parser)]
#[command(name = "factotum-coordinator", version)]
struct Args {
    /// Address for the gRPC API (clients and agents).
    #[arg(long, env = "FACTOTUM_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// The address other replicas and clients should use for this one (default: --listen).
    #[arg(long, env = "FACTOTUM_ADVERTISE")]
    advertise: Option<String>,
    /// Allow listening on a non-loopback address without authentication.
    #[arg(long, env = "FACTOTUM_INSECURE")]
    insecure: bool,
    /// POST every transition of every run to this URL (repeatable; comma-separated in the env var).
    #[arg(long, env = "FACTOTUM_WEBHOOK", value_delimiter = ',')]
    webhook: Vec<String>,
    /// An agent silent this long (seconds) is lost; its running tasks fail.
    #[arg(long, env = "FACTOTUM_LOST_AFTER", default_value_t = 15.0)]
    lost_after: f64,
    /// How often (seconds) agents send a heartbeat.
    #[arg(long, env = "FACTOTUM_HEARTBEAT_INTERVAL", default_value_t = 2.0)]
    heartbeat_interval: f64,
    /// On cancel, seconds between TERM and KILL of a task's process group.
    #[arg(long, env = "FACTOTUM_KILL_GRACE", default_value_t = 10.0)]
    kill_grace: f64,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(
        long,
        env = "FACTOTUM_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(0.01..1e9).contains(&v) {
        bail!("--{name} must be a number of seconds from 0.01 up, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    if !api::is_loopback(&args.listen) && !args.insecure {
        bail!(
            "refusing to listen on {} without authentication: anyone reaching it could run commands on every agent. \
             Listen on loopback, or pass --insecure if the network is trusted",
            args.listen
        );
    }
    for url in &args.webhook {
        factotum_coordinator::spec::check_webhook_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let config = EngineConfig {
        webhooks: args.webhook.clone(),
        lost_after: Some(seconds("lost-after", args.lost_after)?),
        agent_heartbeat: seconds("heartbeat-interval", args.heartbeat_interval)?,
        kill_grace: seconds("kill-grace", args.kill_grace)?,
        ..EngineConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(config, MemoryStore::new(), shutdown.clone());
    tracing::warn!(
        "no --etcd: runs are kept in memory on this single node and are lost on restart"
    );
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("listening on {addr}");
    tracing::info!(%addr, advertise = args.advertise.as_deref().unwrap_or(""), "coordinator ready");
    let server = tokio::spawn(api::serve(engine, listener, shutdown.clone()));
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e).context("the gRPC server failed"),
        Ok(Err(e)) => Err(e).context("the gRPC server task failed"),
        Err(_) => {
            tracing::warn!("open streams did not close within 10 s; exiting anyway");
            Ok(())
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
