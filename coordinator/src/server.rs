//! A coordinator process: its flags ([`Config`]) and [`run`], which serves the gRPC API on a
//! listener and leads — alone in memory, or in an etcd election ([`crate::node`]) — until
//! `shutdown` fires. The binary parses flags and calls this; tests call it in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use factotum_service::tls::{self, Reloadable, ServerFiles};
use factotum_service::{DurationRange, Lifecycle, LogFormat};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig};
use crate::etcd::EtcdStore;
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::seal::StoreKey;
use crate::store::{MemoryStore, StoreError};
use crate::webhook::endpoint::{EndpointList, EndpointSpec, Endpoints};
use crate::webhook::sign::SigningArgs;
use crate::webhook::DeliveryConfig;
use crate::{api, spec};

mod etcd_args;
mod limit_args;
pub use etcd_args::EtcdArgs;
pub use limit_args::LimitArgs;

/// The Factotum coordinator: accepts runs over gRPC and leases their tasks to agents.
///
/// It listens on loopback by default. Any other address needs TLS (`--tls-cert`, `--tls-key`;
/// `--tls-client-ca` for agents' certificates) or `--insecure`: anyone who can reach a plaintext
/// port can run shell commands on every agent. Until client tokens exist, a non-loopback port
/// serves client calls only with `--insecure`. State is kept in memory (a single node) unless
/// `--etcd` is given. SIGHUP re-reads the TLS files.
///
/// Durations take units (`500ms`, `15s`, `2m`, `1h30m`); a bare number is seconds.
#[derive(Debug, Clone, Parser)]
#[command(name = "factotum-coordinator", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Tool>,
    /// A TOML file of flags: each key a long flag name (`lost-after = "20s"`), an array for a
    /// repeatable flag. Flags and their variables override it.
    #[arg(long, env = "FACTOTUM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the gRPC API (clients and agents).
    #[arg(long, env = "FACTOTUM_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Address for the HTTP port: GET /metrics (Prometheus; needs a `read` credential when
    /// --tokens is set), /healthz, /readyz and /leader (for probes and load balancers). It uses
    /// the gRPC port's TLS when that is configured. `off`: no HTTP port.
    #[arg(long, env = "FACTOTUM_HTTP_LISTEN", value_name = "ADDR|off",
          default_value = "127.0.0.1:7401", value_parser = http_listen)]
    pub http_listen: HttpListen,
    /// The address other replicas and clients should use for this one (default: --listen).
    #[arg(long, env = "FACTOTUM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Allow listening on a non-loopback address without TLS, and serve client calls there
    /// without credentials.
    #[arg(long, env = "FACTOTUM_INSECURE")]
    pub insecure: bool,
    /// This coordinator's TLS certificate (PEM, with its chain): the port speaks TLS only.
    #[arg(
        long,
        env = "FACTOTUM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "FACTOTUM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// CAs (PEM bundle) that sign agents' certificates: an agent session then needs a client
    /// certificate whose name (CN or a DNS name) is the agent's.
    #[arg(
        long,
        env = "FACTOTUM_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Client credentials, one per line: `sha256:<hex of a token> <scopes> <name>` or
    /// `cert:<CN> <scopes> <name>`; scopes read, submit, cancel, admin (comma-separated).
    /// Client calls then need one (everywhere, loopback too). `factotum-coordinator tokens add`
    /// makes tokens; SIGHUP re-reads the file.
    #[arg(long, env = "FACTOTUM_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// The CA (PEM) to verify other coordinators with, when forwarding to the leader over TLS
    /// (this coordinator presents its own certificate to it). Default: --tls-client-ca.
    #[arg(long, env = "FACTOTUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// POST every transition of every run to this URL (repeatable; comma-separated in the env
    /// var). In a config file, `[[webhook]]` tables (`url`, `secrets`, `filter` = all, job or
    /// terminal) give a URL its own secrets and the events it gets.
    #[arg(long, env = "FACTOTUM_WEBHOOK", value_name = "URL")]
    pub webhook: Vec<EndpointList>,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Retry a webhook event that fails (connection errors, timeouts, 408, 429, 5xx) until this
    /// long after its transition; then it becomes a dead letter (`factotum webhooks`).
    #[arg(long, env = "FACTOTUM_WEBHOOK_RETRY_FOR", value_name = "DURATION", default_value = "24h",
          value_parser = DurationRange::POSITIVE.parser())]
    pub webhook_retry_for: Duration,
    /// Dead letters (webhook events given up on) kept in the store, at most; past it the oldest
    /// are dropped.
    #[arg(long, env = "FACTOTUM_WEBHOOK_DEAD_LETTERS", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_dead_letters: u32,
    /// An agent silent this long is lost; its running tasks fail.
    #[arg(long, env = "FACTOTUM_LOST_AFTER", value_name = "DURATION", default_value = "15s",
          value_parser = DurationRange::POSITIVE.parser())]
    pub lost_after: Duration,
    /// How often agents send a heartbeat (the old name, --heartbeat-interval, still works; on
    /// `factotum run` and `submit` that name means the webhook heartbeat).
    #[arg(long, alias = "heartbeat-interval", env = "FACTOTUM_AGENT_HEARTBEAT",
          value_name = "DURATION", default_value = "2s",
          value_parser = DurationRange::POSITIVE.parser())]
    pub agent_heartbeat: Duration,
    #[command(flatten)]
    pub store: EtcdArgs,
    /// A file holding 32 random bytes in base64 (`head -c32 /dev/urandom | base64`): the
    /// records holding a run's secrets (its spec and templated factfile) are sealed with it in
    /// etcd. Every coordinator sharing the etcd prefix needs the same key.
    #[arg(long, env = "FACTOTUM_STORE_KEY", value_name = "FILE")]
    pub store_key: Option<PathBuf>,
    /// The leader's etcd lease (whole seconds, from 1s): a leader that stops renewing it loses
    /// leadership after this long, and a standby takes over.
    #[arg(long, env = "FACTOTUM_LEASE_TTL", value_name = "DURATION", default_value = "5s",
          value_parser = DurationRange::from(Duration::from_secs(1)).parser())]
    pub lease_ttl: Duration,
    /// After taking over runs from etcd, how long agents have to re-attach running tasks
    /// before those count as lost.
    #[arg(long, env = "FACTOTUM_FAILOVER_GRACE", value_name = "DURATION", default_value = "30s",
          value_parser = DurationRange::POSITIVE.parser())]
    pub failover_grace: Duration,
    /// Bytes of output lines queued for one watcher (`watch`, `submit --wait`, WatchRun) and
    /// kept per run for late ones; a watcher that falls behind skips lines and is told how
    /// many. Sizes take units (`512KiB`, `4MiB`); a bare number is bytes.
    #[arg(long, env = "FACTOTUM_WATCH_BUFFER", value_name = "BYTES", default_value = "4MiB",
          value_parser = factotum_service::size::at_least(1024))]
    pub watch_buffer: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Finished runs kept in the store, at most: the oldest are deleted (records, undelivered
    /// webhooks, dead letters and Factotum Server job records). Every one kept is listed by
    /// `factotum runs` and ListRuns.
    #[arg(long, env = "FACTOTUM_HISTORY_MAX_RUNS", value_name = "RUNS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_runs: u64,
    /// Finished runs are deleted from the store this long after they ended.
    #[arg(long, env = "FACTOTUM_HISTORY_MAX_AGE", value_name = "DURATION", default_value = "30d",
          value_parser = DurationRange::from(Duration::from_secs(60)).parser())]
    pub history_max_age: Duration,
    /// Factotum Server's `POST /submit` on the HTTP port reads `factfilePath` only under this
    /// directory (symbolic links resolved); without it, it reads none.
    #[arg(long, env = "FACTOTUM_SERVER_FACTFILE_ROOT", value_name = "DIR")]
    pub server_factfile_root: Option<std::path::PathBuf>,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(
        long,
        env = "FACTOTUM_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without TLS: anyone reaching it could run commands on every agent. Listen on loopback, give --tls-cert and --tls-key (factotum-coordinator certs makes a development CA), or pass --insecure if the network is trusted")]
    Insecure(SocketAddr),
    #[error("{0}")]
    Tokens(String),
    #[error("TLS: {0}")]
    Tls(#[from] factotum_service::tls::TlsError),
    #[error("{0}")]
    BadWebhook(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: StoreError,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    StoreKey(#[from] crate::seal::SealError),
    #[error("the gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// `--http-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

fn http_listen(s: &str) -> Result<HttpListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    s.parse()
        .map(|a| HttpListen(Some(a)))
        .map_err(|e| format!("{e} (an address such as 127.0.0.1:7401, or off)"))
}

/// Tools beside serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Write a development CA and certificates for a fleet into --out, in cert-manager's file
    /// names: ca.crt, server/tls.{crt,key} (one for every coordinator: each --host is a DNS or
    /// IP name of it), agents/<name>/tls.{crt,key} (one per --agent), cli/tls.{crt,key}.
    /// Production uses the operator's PKI (cert-manager, Vault) with the same layout.
    Certs {
        /// The directory to write into (created; keys are written 0600).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A name or address clients and agents use for the coordinators (repeatable).
        #[arg(long = "host", value_name = "NAME_OR_IP", required = true)]
        hosts: Vec<String>,
        /// An agent's name (repeatable): its certificate names it.
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
    },
    /// Manage client tokens (`--tokens FILE`).
    #[command(subcommand)]
    Tokens(TokensTool),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokensTool {
    /// Make a new token: its hash is appended to --file (created 0600) and the token printed,
    /// once. Then `kill -HUP` the coordinators (or `systemctl reload`).
    Add {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Who it is for (one word, shown in logs and refusals).
        #[arg(long)]
        name: String,
        /// What it may do: read, submit, cancel, admin (comma-separated).
        #[arg(long, value_name = "SCOPES")]
        scope: String,
    },
}

/// Runs a tool: what it wrote, one line per file.
pub fn tool(tool: &Tool) -> Result<Vec<String>, ServeError> {
    match tool {
        Tool::Certs { out, hosts, agents } => Ok(tls::certs::generate(out, hosts, agents)?
            .iter()
            .map(|p| p.display().to_string())
            .collect()),
        Tool::Tokens(TokensTool::Add { file, name, scope }) => {
            let token = crate::auth::add(file, name, scope).map_err(ServeError::Tokens)?;
            Ok(vec![token])
        }
    }
}

/// SIGHUP re-reads the TLS files (new connections use them, open ones keep theirs) and the
/// tokens file (a removed token stops working at once).
fn reload_on_sighup(
    tls: Option<Arc<Reloadable>>,
    auth: Option<Arc<crate::auth::Auth>>,
    life: &Lifecycle,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let stop = life.token.clone();
    life.spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = stop.cancelled() => return,
            }
            match &tls {
                Some(tls) => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates and CAs re-read"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: keeping the TLS files in use"),
                },
                None => tracing::info!("SIGHUP: no TLS files to re-read"),
            }
            if let Some(auth) = &auth {
                match auth.reload() {
                    Ok(()) => tracing::info!("SIGHUP: --tokens re-read"),
                    Err(e) => tracing::error!("SIGHUP: keeping the tokens in use: {e}"),
                }
            }
        }
    });
}

impl Config {
    /// How the port is secured: TLS (with agents' certificates) if configured, and whether
    /// client calls are served without credentials (a loopback `addr`, or `--insecure`).
    pub fn security(&self, addr: &SocketAddr) -> Result<api::Security, ServeError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Reloadable::new(ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })?)),
            _ => None,
        };
        let peer_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let ca = self.tls_ca.as_ref().or(self.tls_client_ca.as_ref());
                Some(tls::client_config(
                    ca.map(PathBuf::as_path),
                    Some((cert, key)),
                )?)
            }
            _ => None,
        };
        let auth = match &self.tokens {
            Some(file) => Some(Arc::new(
                crate::auth::Auth::new(file.clone()).map_err(ServeError::Tokens)?,
            )),
            None => None,
        };
        Ok(api::Security {
            auth,
            tls,
            open: api::is_loopback(addr) || self.insecure,
            agent_certs: self.tls_client_ca.is_some(),
            peer_tls,
        })
    }

    /// What is refused before anything starts.
    pub fn check(&self) -> Result<(), ServeError> {
        let addrs = std::iter::once(self.listen).chain(self.http_listen.0);
        for addr in addrs {
            if !api::is_loopback(&addr) && !self.insecure && self.tls_cert.is_none() {
                return Err(ServeError::Insecure(addr));
            }
        }
        for e in self.webhook.iter().flat_map(|l| &l.0) {
            spec::check_webhook_url(&e.url).map_err(|e| ServeError::BadWebhook(e.to_string()))?;
        }
        Ok(())
    }

    /// Binds `--listen` (after [`Config::check`]).
    pub async fn bind(&self) -> Result<TcpListener, ServeError> {
        self.check()?;
        TcpListener::bind(self.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: self.listen,
                source,
            })
    }

    /// Binds `--http-listen`, unless it is `off` (after [`Config::check`]).
    pub async fn bind_http(&self) -> Result<Option<TcpListener>, ServeError> {
        let Some(addr) = self.http_listen.0 else {
            return Ok(None);
        };
        self.check()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        Ok(Some(listener))
    }

    pub fn engine(&self) -> EngineConfig {
        let endpoints: Vec<EndpointSpec> = self
            .webhook
            .iter()
            .flat_map(|l| l.0.iter().cloned())
            .collect();
        EngineConfig {
            webhooks: endpoints.iter().map(|e| e.url.clone()).collect(),
            delivery: DeliveryConfig {
                endpoints: Endpoints::new(self.signing.webhook_secret.clone(), &endpoints),
                retry_for: self.webhook_retry_for,
                dead_letters: self.webhook_dead_letters as usize,
                ..DeliveryConfig::default()
            },
            lost_after: Some(self.lost_after),
            agent_heartbeat: self.agent_heartbeat,
            failover_grace: self.failover_grace,
            watch_buffer: self.watch_buffer,
            history_max_runs: usize::try_from(self.history_max_runs).unwrap_or(usize::MAX),
            history_max_age: self.history_max_age,
            max_queued_calls: self.limits.max_queued_calls as usize,
            ..EngineConfig::default()
        }
    }
}

/// Time open streams get to close once the coordinator stops.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves on `listener` (no HTTP port) and leads (or follows) until `shutdown` fires, then
/// resigns, stops serving and waits (boundedly) for everything it spawned.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    run_with_http(config, listener, None, shutdown).await
}

/// [`run`], with the HTTP port (metrics, health) on `http` if given.
pub async fn run_with_http(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    config.check()?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let security = config.security(&addr)?;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    tracing::info!(%addr, %advertise, "coordinator listening");
    let life = Lifecycle::new();
    let metrics = Arc::new(Metrics::new());
    let engine_config = EngineConfig {
        metrics: Arc::clone(&metrics),
        ..config.engine()
    };
    // A single node leads from the start: its engine is there before the first call is served
    // (a caller that connects as soon as `listening on` is printed must not be told there is
    // no leader).
    let single = config.store.etcd.is_empty().then(|| {
        tracing::warn!(
            "no --etcd: runs are kept in memory on this single node and are lost on restart"
        );
        Engine::start(engine_config.clone(), MemoryStore::new(), life.child())
    });
    let (engine_tx, engine_rx) = watch::channel(single.clone());
    let (leader_tx, leader_rx) = watch::channel(None);
    let routing = api::Routing {
        engine: engine_rx,
        leader: leader_rx,
    };
    reload_on_sighup(security.tls.clone(), security.auth.clone(), &life);
    crate::systemd::notify(&routing, &life);
    let limits = config.limits.serve();
    // One client API for both ports: the HTTP port's handlers call it in-process, so they get
    // its authentication, limits and forwarding to the leader.
    let jobs = api::JobsApi::new(routing.clone(), &limits, &security);
    if let Some(http) = http {
        let port = crate::http::Port {
            routing: routing.clone(),
            metrics: Arc::clone(&metrics),
            auth: security.auth.clone(),
            tls: security.tls.clone(),
            idle_timeout: config.limits.idle_timeout,
            jobs: jobs.clone(),
            server_factfile_root: config.server_factfile_root.clone(),
        };
        life.spawn(crate::http::serve(port, http, life.clone()));
    }
    let server = life.spawn(api::serve(
        routing,
        listener,
        security,
        limits,
        jobs,
        life.clone(),
    ));
    let outcome = if single.is_some() {
        shutdown.cancelled().await;
        Ok(())
    } else {
        lead(
            &config,
            engine_config,
            advertise,
            engine_tx.clone(),
            leader_tx,
            &life,
            &shutdown,
        )
        .await
    };
    tracing::info!("shutting down");
    let _ = engine_tx.send(None);
    drop(single);
    if !life.shut_down(DRAIN).await {
        tracing::warn!("open streams did not close within 10 s; exiting anyway");
    }
    if server.is_finished() {
        if let Ok(Err(e)) = server.await {
            tracing::error!(error = %e, "the gRPC server failed");
        }
    }
    outcome
}

async fn lead(
    config: &Config,
    engine: EngineConfig,
    advertise: String,
    engine_tx: watch::Sender<Option<Engine>>,
    leader_tx: watch::Sender<Option<String>>,
    life: &Lifecycle,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let store = EtcdStore::connect(&config.store.config())
        .await
        .map_err(|source| ServeError::Etcd {
            endpoints: config.store.etcd.join(","),
            source,
        })?;
    let store_key = config
        .store_key
        .as_deref()
        .map(StoreKey::read)
        .transpose()?;
    let node = Node {
        store,
        store_key,
        engine,
        advertise,
        lease_ttl: config.lease_ttl,
        engine_tx,
        leader_tx,
    };
    Ok(node.run(life, shutdown).await?)
}
