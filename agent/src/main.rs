//! `factotum-agent`: runs the tasks a coordinator leases to this machine.
//! Thin: flags, logging, signals, systemd notifications and the reconnect loop live here; the
//! session and the executor are the library's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use factotum_agent::{identity, shim, Agent, AgentConfig, Link, SessionEnd};
use factotum_proto::agents_client::AgentsClient;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// The Factotum agent: takes task leases from a coordinator and runs them with `sh -c`, each in
/// its own process group.
///
/// It reconnects with jittered exponential backoff and keeps its tasks running meanwhile; after
/// `--disconnect-limit` without a coordinator it stops them (TERM, then KILL) and reports them
/// once it is back. SIGTERM drains: no new leases, running tasks get `--drain-grace` to finish,
/// then they are stopped and reported.
#[derive(Debug, Parser)]
#[command(name = "factotum-agent", version)]
struct Args {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "FACTOTUM_COORDINATOR",
        default_value = factotum_proto::DEFAULT_COORDINATOR
    )]
    coordinator: String,
    /// This agent's name (default: the hostname).
    #[arg(long, env = "FACTOTUM_NAME")]
    name: Option<String>,
    /// A label `key=value` for label constraints (repeatable; comma-separated in the env var).
    #[arg(
        long = "label",
        env = "FACTOTUM_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    labels: Vec<String>,
    /// Tasks run at once (default: the number of CPUs; 0: no limit).
    #[arg(long, env = "FACTOTUM_SLOTS")]
    slots: Option<u32>,
    /// On SIGTERM, seconds running tasks get to finish before they are stopped.
    #[arg(long, env = "FACTOTUM_DRAIN_GRACE", default_value_t = 60.0)]
    drain_grace: f64,
    /// Seconds without a coordinator after which running tasks are stopped.
    #[arg(long, env = "FACTOTUM_DISCONNECT_LIMIT", default_value_t = 60.0)]
    disconnect_limit: f64,
    /// Seconds between TERM and KILL when a task is stopped.
    #[arg(long, env = "FACTOTUM_KILL_GRACE", default_value_t = 10.0)]
    kill_grace: f64,
    /// Record running tasks here (one directory each) and run them under a small supervisor,
    /// so they outlive the agent: a restarted agent reports what ended meanwhile and re-attaches
    /// what still runs. Without it, tasks are the agent's children and die with it.
    #[arg(long, env = "FACTOTUM_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
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
    if !(0.0..1e9).contains(&v) {
        bail!("--{name} must be a number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn notify(state: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(false, state);
}

fn main() -> std::process::ExitCode {
    match agent_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, never a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn agent_main() -> anyhow::Result<()> {
    // `factotum-agent --shim <attempt dir>`: the per-task supervisor, when the separate
    // `factotum-shim` binary is not installed beside the agent (see factotum_agent::shim).
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == "--shim") {
        let Some(dir) = argv.next().map(std::path::PathBuf::from) else {
            bail!("--shim needs a directory")
        };
        std::process::exit(shim::main(&dir));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(agent())
}

async fn agent() -> anyhow::Result<()> {
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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let mut labels = HashMap::new();
    for l in &args.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => bail!("--label must be key=value, not '{l}'"),
        }
    }
    let me = identity::local(labels.clone());
    let cfg = AgentConfig {
        agent_id: args.name.clone().unwrap_or_else(|| me.hostname.clone()),
        hostname: me.hostname.clone(),
        ips: me.ips.iter().map(|i| i.to_string()).collect(),
        labels,
        slots: args
            .slots
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        kill_grace: seconds("kill-grace", args.kill_grace)?,
        drain_grace: seconds("drain-grace", args.drain_grace)?,
        shim_exe: match &args.state_dir {
            Some(_) => Some(shim_exe()?),
            None => None,
        },
        state_dir: args.state_dir.clone(),
    };
    let disconnect_limit = seconds("disconnect-limit", args.disconnect_limit)?;
    // Fail early on a malformed URL; the endpoint itself is rebuilt for whichever coordinator
    // is the target (a follower names the leader, and the agent goes there).
    endpoint(&args.coordinator)?;
    let mut target = args.coordinator.clone();
    tracing::info!(agent = %cfg.agent_id, host = %cfg.hostname, slots = cfg.slots, coordinator = %args.coordinator, "agent starting");

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            stop.cancel();
        });
    }
    spawn_watchdog(watchdog_interval());
    if let Some(dir) = &args.state_dir {
        std::fs::create_dir_all(dir.join("attempts"))
            .with_context(|| format!("cannot use --state-dir {}", dir.display()))?;
    }
    let mut agent = Agent::new(cfg);
    agent.recover();
    let mut backoff = Duration::from_millis(100);
    let mut disconnected_since: Option<Instant> = None;
    let mut stopping_notified = false;
    let mut ready_sent = false;
    loop {
        if let Some(deadline) = agent.drain_until() {
            if agent.running() > 0 && tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    running = agent.running(),
                    "drain grace over: stopping the running tasks"
                );
                agent.stop_all().await;
            }
            if agent.running() == 0 && agent.unacked() == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline + REPORT_GRACE {
                tracing::warn!(
                    unreported = agent.unacked(),
                    "could not report every result before exiting"
                );
                break;
            }
        }
        // A bad address from a follower must not stop the agent: fall back to the configured one.
        let conn = match endpoint(&target) {
            Ok(ep) => connect(&ep).await,
            Err(e) => {
                target = args.coordinator.clone();
                Err(e)
            }
        };
        match conn {
            Ok(link) => {
                if !ready_sent {
                    notify(&[sd_notify::NotifyState::Ready]);
                    ready_sent = true;
                }
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "connected to {}",
                    args.coordinator
                ))]);
                tracing::info!(coordinator = %args.coordinator, running = agent.running(), "connected");
                disconnected_since = None;
                backoff = Duration::from_millis(100);
                // `stop` (SIGTERM) drains inside the session: no new leases, tasks still running
                // after the drain grace stopped, results still reported.
                let never = CancellationToken::new();
                let end = agent.session(link, &never, &stop).await;
                if end == SessionEnd::Closed {
                    tracing::warn!("the coordinator closed the session");
                }
            }
            Err(e) => {
                // A follower names the leader: go there at once. Otherwise back to the configured
                // address (a VIP, or the one we were sent to may have gone).
                let leader = e
                    .downcast_ref::<tonic::Status>()
                    .and_then(factotum_proto::leader_hint)
                    .flatten();
                if let Some(leader) = leader.filter(|l| *l != target) {
                    tracing::info!(%leader, "following the leader");
                    target = leader;
                    continue;
                }
                target = args.coordinator.clone();
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the coordinator");
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "cannot reach {}: {e}",
                    args.coordinator
                ))]);
            }
        }
        if stop.is_cancelled() && !stopping_notified {
            stopping_notified = true;
            notify(&[sd_notify::NotifyState::Stopping]);
            agent.start_draining();
            continue;
        }
        let since = *disconnected_since.get_or_insert_with(Instant::now);
        if agent.running() > 0 && since.elapsed() >= disconnect_limit {
            tracing::warn!(
                running = agent.running(),
                "no coordinator for too long: stopping the running tasks"
            );
            agent.stop_all().await;
        }
        let pause = jitter(backoff);
        tokio::select! {
            _ = agent.wait_for_attempts(pause), if agent.running() > 0 => {}
            _ = tokio::time::sleep(pause), if agent.running() == 0 => {}
            _ = stop.cancelled(), if !stopping_notified => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    tracing::info!(unreported = agent.unacked(), "agent stopped");
    Ok(())
}

/// The task supervisor: `factotum-shim` beside this binary, else this binary itself (`--shim`).
fn shim_exe() -> anyhow::Result<std::path::PathBuf> {
    let me =
        std::env::current_exe().context("cannot find my own executable for the task supervisor")?;
    let small = me.with_file_name("factotum-shim");
    Ok(if small.exists() { small } else { me })
}

/// After the drain grace, time allowed to report the stopped tasks' results.
const REPORT_GRACE: Duration = Duration::from_secs(10);

fn endpoint(url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("'{url}' is not a coordinator URL (like http://127.0.0.1:7400)"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20)))
}

async fn connect(endpoint: &tonic::transport::Endpoint) -> anyhow::Result<Link> {
    let channel = endpoint.connect().await?;
    let mut client = AgentsClient::new(channel);
    let (out_tx, out_rx) = mpsc::channel(1024);
    let (in_tx, in_rx) = mpsc::channel(1024);
    let response = client.agent_session(ReceiverStream::new(out_rx)).await?;
    let mut inbound = response.into_inner();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            if in_tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(Link {
        tx: out_tx,
        rx: in_rx,
    })
}

fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Half the systemd watchdog period, when the unit asks for one.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Pings the systemd watchdog for the life of the process, when the unit asks for it.
fn spawn_watchdog(every: Option<Duration>) {
    let Some(every) = every else { return };
    tokio::spawn(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    });
}
