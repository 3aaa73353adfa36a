//! `factotum-agent`'s life as a library: recover what an earlier process left, connect, run
//! sessions, reconnect, and on shutdown drain and report before returning. Which coordinator to
//! try next and how long to wait is [`crate::reconnect`]'s pure state machine; this loop only
//! performs what it says.

use std::time::Duration;

use anyhow::Context;
use factotum_proto::agents_client::AgentsClient;
use factotum_service::Lifecycle;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::{tls_endpoint, Config, Endpoints, CONNECT_TIMEOUT};
use crate::metrics::metrics;
use crate::notify::{self, Systemd};
use crate::reconnect::{Backoff, Conn, Delay, Event};
use crate::session::{Agent, Link, SessionEnd};

/// After the drain grace, time allowed to report the stopped tasks' results.
const REPORT_GRACE: Duration = Duration::from_secs(10);

/// Runs the agent against `endpoints` until `shutdown` fires and it has drained: running tasks
/// finish (or are stopped after the drain grace) and their results are reported (or the report
/// grace is over). Every task it spawns is tracked and ended before it returns.
pub async fn run(
    config: Config,
    endpoints: Endpoints,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let life = Lifecycle::new();
    let result = serve(config, &endpoints, &shutdown, &life).await;
    if !life.shut_down(Duration::from_secs(2)).await {
        tracing::warn!("some of the agent's tasks did not end in time");
    }
    result
}

async fn serve(
    config: Config,
    endpoints: &Endpoints,
    shutdown: &CancellationToken,
    life: &Lifecycle,
) -> anyhow::Result<()> {
    let Config {
        agent: cfg,
        disconnect_limit,
        max_message,
        tls,
        http_listen,
        logs,
    } = config;
    let m = metrics();
    m.slots.set(i64::from(cfg.slots));
    if let Some(addr) = http_listen {
        let bound = crate::http::serve(addr, life).await?;
        tracing::info!(%bound, "HTTP port (metrics, health) listening");
        // Scripts and tests read this line to learn the port when listening on :0.
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "http listening on {bound}");
    }
    if let Some(dir) = &cfg.state_dir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("attempts"))
            .with_context(|| format!("cannot use --state-dir {}", dir.display()))?;
        // Leases hold the tasks' environments (secrets, often): this agent's user only.
        for d in [dir.clone(), dir.join("attempts")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (0700)", d.display()))?;
        }
    }
    tracing::info!(agent = %cfg.agent_id, host = %cfg.hostname, slots = cfg.slots, coordinators = ?endpoints.as_slice(), "agent starting");
    notify::watchdog(life);
    notify::stopping_on(life, shutdown.clone());
    let mut systemd = Systemd::default();
    let mut agent = Agent::new(cfg);
    // Before `recover`: adopted attempts' logs are followed as live ones.
    agent.set_logs(crate::logs::keep(logs, life)?);
    agent.recover();
    let configured = endpoints.as_slice();
    let backoff = Backoff::default();
    let mut conn = Conn::start(configured);
    let mut link: Option<Link> = None;
    let mut disconnected_since: Option<Instant> = None;
    let mut last_error = String::new();
    loop {
        if shutdown.is_cancelled() {
            agent.start_draining(); // once; a session does it itself when it sees the signal
        }
        if let Some(deadline) = agent.drain_until() {
            if agent.running() > 0 && Instant::now() >= deadline {
                tracing::warn!(
                    running = agent.running(),
                    "drain grace over: stopping the running tasks"
                );
                agent.stop_all().await;
            }
            if agent.running() == 0 && agent.unacked() == 0 {
                break;
            }
            if Instant::now() >= deadline + REPORT_GRACE {
                tracing::warn!(
                    unreported = agent.unacked(),
                    "could not report every result before exiting"
                );
                break;
            }
        }
        if let Some(since) = disconnected_since {
            if agent.running() > 0 && since.elapsed() >= disconnect_limit {
                tracing::warn!(
                    running = agent.running(),
                    "no coordinator for too long: stopping the running tasks"
                );
                agent.stop_all().await;
            }
        }
        let event = match &conn {
            Conn::Connecting { target, .. } => match connect(target, max_message, &tls, life).await
            {
                Ok(l) => {
                    m.sessions.inc();
                    m.connected.set(1);
                    systemd.connected(target);
                    tracing::info!(coordinator = %target, running = agent.running(), "connected");
                    disconnected_since = None;
                    link = Some(l);
                    Event::Connected
                }
                Err(e) => {
                    m.connect_failures.inc();
                    disconnected_since.get_or_insert_with(Instant::now);
                    let leader_hint = e
                        .downcast_ref::<tonic::Status>()
                        .and_then(factotum_proto::leader_hint);
                    tracing::debug!(coordinator = %target, error = %format!("{e:#}"), "no session");
                    systemd.unreachable(target, &format!("{e:#}"));
                    last_error = format!("{target}: {e:#}");
                    Event::Failed { leader_hint }
                }
            },
            Conn::Connected { target, .. } => {
                let welcomed = match link.take() {
                    Some(l) => {
                        // `shutdown` (SIGTERM) drains inside the session: no new leases, tasks
                        // still running after the drain grace stopped, results still reported.
                        let end = agent.session(l, &CancellationToken::new(), shutdown).await;
                        match end {
                            SessionEnd::Closed => {
                                tracing::warn!(coordinator = %target, "the session ended: trying every coordinator again")
                            }
                            // Not welcomed: a failed pass, with its backoff.
                            SessionEnd::Refused => {
                                last_error =
                                    format!("{target}: {}", agent.refused().unwrap_or_default());
                            }
                            SessionEnd::Stopped => {}
                        }
                        agent.welcomed()
                    }
                    None => false,
                };
                m.connected.set(0);
                disconnected_since.get_or_insert_with(Instant::now);
                Event::SessionEnded { welcomed }
            }
            Conn::Waiting { delay, .. } => {
                let pause = draw(*delay).min(until_next_deadline(
                    &agent,
                    disconnected_since.map(|s| s + disconnect_limit),
                ));
                tracing::debug!(?pause, "waiting before the next pass");
                tokio::select! {
                    _ = agent.wait_for_attempts(pause), if agent.running() > 0 => {}
                    _ = tokio::time::sleep(pause), if agent.running() == 0 => {}
                    // Asked to stop while away: drain, and try to report at once.
                    _ = shutdown.cancelled(), if agent.drain_until().is_none() => {}
                }
                Event::Waited
            }
        };
        let was_waiting = matches!(conn, Conn::Waiting { .. });
        conn = conn.on(event, configured, &backoff);
        match &conn {
            Conn::Connecting {
                target,
                via: Some(via),
                ..
            } => tracing::info!(leader = %target, %via, "following the leader"),
            // Every failed pass counts; the log gets the 1st, 2nd, 4th, 8th...
            Conn::Waiting { delay, failed, .. } if !was_waiting && failed.is_power_of_two() => {
                tracing::warn!(failed_passes = *failed, retry_in = ?delay.max, last_error = %last_error, "no coordinator took the session");
            }
            _ => {}
        }
    }
    tracing::info!(unreported = agent.unacked(), "agent stopped");
    Ok(())
}

/// How long until the loop has something to do besides reconnecting: the disconnect limit or
/// the drain grace for running tasks, the report grace once draining.
fn until_next_deadline(agent: &Agent, disconnect_deadline: Option<Instant>) -> Duration {
    let mut next: Vec<Instant> = vec![];
    if agent.running() > 0 {
        next.extend(disconnect_deadline);
        next.extend(agent.drain_until());
    }
    next.extend(agent.drain_until().map(|d| d + REPORT_GRACE));
    next.into_iter().min().map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    })
}

/// A wait drawn uniformly within `delay`.
fn draw(delay: Delay) -> Duration {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (lo, hi) = (ms(delay.min), ms(delay.max).max(ms(delay.min)));
    Duration::from_millis(rand::rng().random_range(lo..=hi))
}

/// What to check when a coordinator refuses this agent's session with `code`; `None` for an
/// answer that is not a refusal of this agent.
fn refusal_hint(code: tonic::Code) -> Option<&'static str> {
    match code {
        tonic::Code::AlreadyExists => Some("give each agent its own --name"),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            Some("check --name, --tls-cert and --tls-key")
        }
        tonic::Code::InvalidArgument => Some("check --name, --label and --slots"),
        _ => None,
    }
}

/// Opens a session stream to `url` and pumps it into a [`Link`] (the pump is tracked by `life`
/// and ends with the stream or with `life`). A follower answers with an error naming the leader.
async fn connect(
    url: &str,
    max_message: usize,
    tls: &tonic::transport::ClientTlsConfig,
    life: &Lifecycle,
) -> anyhow::Result<Link> {
    let endpoint = tls_endpoint(url, tls)?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    let open = async {
        let channel = endpoint.connect().await?;
        let response = AgentsClient::new(channel)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
            .agent_session(ReceiverStream::new(out_rx))
            .await?;
        anyhow::Ok(response.into_inner())
    };
    let mut inbound = tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
    let (in_tx, in_rx) = mpsc::channel(1024);
    let end = life.token.clone();
    life.spawn(async move {
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => if in_tx.send(msg).await.is_err() { return },
                    // Another agent of our name is connected, or our certificate does not
                    // name us: the session tells why.
                    Err(status) if refusal_hint(status.code()).is_some() => {
                        let hint = refusal_hint(status.code()).unwrap_or_default();
                        let reason = format!("{} ({hint})", status.message());
                        let refused = factotum_proto::Refused { reason };
                        let msg = factotum_proto::CoordinatorMessage {
                            msg: Some(factotum_proto::coordinator_message::Msg::Refused(refused)),
                        };
                        let _ = in_tx.send(msg).await;
                        return;
                    }
                    _ => return,
                },
                _ = end.cancelled() => return,
            }
        }
    });
    Ok(Link {
        tx: out_tx,
        rx: in_rx,
    })
}
