//! `factotum-coordinator`: owns runs, leases their tasks to agents, sends webhooks.
//! Thin: flags, logging and signals here; everything else in the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use factotum_coordinator::etcd::{EtcdConfig, EtcdStore};
use factotum_coordinator::{api, leader, Engine, EngineConfig, MemoryStore};
use tokio::sync::watch;
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
    /// Seconds of the leader's etcd lease: a leader that stops renewing it loses leadership
    /// after this long, and a standby takes over.
    #[arg(long, env = "FACTOTUM_LEASE_TTL", default_value_t = 5.0)]
    lease_ttl: f64,
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

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(coordinator(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, never a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn coordinator(args: Args) -> anyhow::Result<()> {
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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        failover_grace: seconds("failover-grace", args.failover_grace)?,
        ..EngineConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let (engine_tx, engine_rx) = watch::channel(None);
    let (leader_tx, leader_rx) = watch::channel(None);
    let role = api::Role {
        engine: engine_rx,
        leader: leader_rx,
    };
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("listening on {addr}");
    tracing::info!(%addr, %advertise, "coordinator listening");
    let server = tokio::spawn(api::serve(role, listener, shutdown.clone()));
    let signal = CancellationToken::new();
    {
        let signal = signal.clone();
        tokio::spawn(async move {
            if wait_for_signal().await.is_ok() {
                signal.cancel();
            }
        });
    }
    let outcome = if args.etcd.is_empty() {
        tracing::warn!(
            "no --etcd: runs are kept in memory on this single node and are lost on restart"
        );
        let _ = engine_tx.send(Some(Engine::start(
            config,
            MemoryStore::new(),
            shutdown.clone(),
        )));
        signal.cancelled().await;
        Ok(())
    } else {
        lead(
            &args, config, &advertise, &engine_tx, &leader_tx, &shutdown, &signal,
        )
        .await
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = engine_tx.send(None);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the gRPC server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "the gRPC server task failed"),
        Err(_) => tracing::warn!("open streams did not close within 10 s; exiting anyway"),
        Ok(Ok(Ok(()))) => {}
    }
    outcome
}

/// With etcd: follow until elected, then lead until a signal (resign: a standby takes over at
/// once) or until leadership is lost (step down: exit with an error, to be restarted as a
/// follower).
async fn lead(
    args: &Args,
    mut config: EngineConfig,
    advertise: &str,
    engine_tx: &watch::Sender<Option<Engine>>,
    leader_tx: &watch::Sender<Option<String>>,
    shutdown: &CancellationToken,
    signal: &CancellationToken,
) -> anyhow::Result<()> {
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
    let client = store.election_client().clone();
    let name = leader::election_name(store.prefix());
    // While following, keep the leader's address at hand for the UNAVAILABLE answers.
    let following = CancellationToken::new();
    {
        let (client, name, leader_tx, following) = (
            client.clone(),
            name.clone(),
            leader_tx.clone(),
            following.clone(),
        );
        tokio::spawn(async move {
            while !following.is_cancelled() {
                let _ = leader_tx.send(leader::current(&client, &name).await);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = following.cancelled() => {}
                }
            }
        });
    }
    let ttl = seconds("lease-ttl", args.lease_ttl)?;
    tracing::info!(election = %name, "campaigning for leadership");
    let leadership = match leader::campaign(&client, &name, advertise, ttl, signal).await {
        Ok(l) => l,
        Err(leader::LeaderError::Stopped) => return Ok(()),
        Err(e) => return Err(e).context("the campaign for leadership failed"),
    };
    following.cancel();
    let _ = leader_tx.send(Some(advertise.to_string()));
    *store.fence().write().unwrap_or_else(|p| p.into_inner()) =
        Some((leadership.key.clone(), leadership.rev));
    config.epoch = u64::try_from(leadership.rev).unwrap_or(0);
    let fenced = config.fenced.clone();
    let engine = Engine::start(config, store, shutdown.clone());
    let taken = engine
        .recover()
        .await
        .context("cannot load the runs recorded in etcd")?;
    tracing::info!(runs = taken, epoch = leadership.rev, "leading");
    let _ = engine_tx.send(Some(engine));
    tokio::select! {
        _ = signal.cancelled() => {
            let _ = engine_tx.send(None);
            match leader::resign(&client, &leadership).await {
                Ok(()) => tracing::info!("resigned leadership"),
                Err(e) => tracing::warn!(error = %e, "could not resign; a standby takes over when the lease expires"),
            }
            Ok(())
        }
        _ = leadership.lost.cancelled() => {
            let _ = engine_tx.send(None);
            bail!("lost leadership (the leader lease expired): stepping down")
        }
        _ = fenced.cancelled() => {
            let _ = engine_tx.send(None);
            bail!("another coordinator leads now (a fenced write failed): stepping down")
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
