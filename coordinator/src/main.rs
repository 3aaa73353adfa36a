//! `factotum-coordinator`: owns runs, leases their tasks to agents, sends webhooks.
//! Thin: flags, logging and signals here; everything else in the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use factotum_coordinator::etcd::{EtcdConfig, EtcdStore};
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
    /// etcd client URLs (comma-separated): runs are recorded there and survive restarts.
    /// Without it, runs live in this process's memory only.
    #[arg(long, env = "FACTOTUM_ETCD", value_delimiter = ',', value_name = "URL")]
    etcd: Vec<String>,
    /// Key prefix in etcd (coordinators sharing it share their runs).
    #[arg(long, env = "FACTOTUM_ETCD_PREFIX", default_value = "/factotum")]
    etcd_prefix: String,
    /// etcd user (with --etcd-password).
    #[arg(long, env = "FACTOTUM_ETCD_USER")]
    etcd_user: Option<String>,
    #[arg(long, env = "FACTOTUM_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// CA certificate (PEM) to trust for https:// etcd URLs.
    #[arg(long, env = "FACTOTUM_ETCD_CA")]
    etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for etcd mutual TLS.
    #[arg(long, env = "FACTOTUM_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "FACTOTUM_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
    /// After taking over runs from etcd, seconds agents have to re-attach running tasks before
    /// those count as lost.
    #[arg(long, env = "FACTOTUM_FAILOVER_GRACE", default_value_t = 30.0)]
    failover_grace: f64,
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
        failover_grace: seconds("failover-grace", args.failover_grace)?,
        ..EngineConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let engine = if args.etcd.is_empty() {
        tracing::warn!(
            "no --etcd: runs are kept in memory on this single node and are lost on restart"
        );
        Engine::start(config, MemoryStore::new(), shutdown.clone())
    } else {
        let etcd = EtcdConfig {
            endpoints: args.etcd.clone(),
            prefix: args.etcd_prefix.clone(),
            user: args
                .etcd_user
                .clone()
                .map(|u| (u, args.etcd_password.clone().unwrap_or_default())),
            ca: args.etcd_ca.clone(),
            cert: args.etcd_cert.clone().zip(args.etcd_key.clone()),
        };
        let store = EtcdStore::connect(&etcd)
            .await
            .with_context(|| format!("cannot reach etcd at {}", args.etcd.join(",")))?;
        let engine = Engine::start(config, store, shutdown.clone());
        let taken = engine
            .recover()
            .await
            .context("cannot load the runs recorded in etcd")?;
        tracing::info!(runs = taken, prefix = %args.etcd_prefix, "runs taken over from etcd");
        engine
    };
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
